# packet-flow container image.
#
# Two stages: `builder` compiles the Cython extension into a wheel and collects the
# wheels of every runtime dependency; the runtime stage installs only those wheels
# (no compiler, no network, no build tools) and runs as an unprivileged user.
#
#   docker build -t packet-flow .
#   buildah build --isolation chroot --pull=never -t packet-flow .   # no Docker engine
#
# ENTRYPOINT is in exec form, so packet-flow itself is PID 1 and receives the SIGTERM
# of `docker stop`: the sender sends its final packet, the sinks flush, exit status 0.
# packet-flow installs its own SIGTERM/SIGINT handlers, which PID 1 needs (the kernel
# applies no default action to signals sent to a namespace's init process).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# The official image ships the Python headers but no compiler; a Debian-built stand-in
# (shared/tools/container-base.sh) needs python3-dev for them too. The extension links
# OpenSSL's libcrypto (libssl-dev here; the runtime image has it for Python's own hashlib).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && { python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
      || apt-get install -y --no-install-recommends python3-dev; } \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# One wheel for packet-flow (with the compiled packet_flow._io) plus the wheels of its
# dependencies, so the runtime stage installs offline from /wheels.
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels . \
 && python3 -c 'import glob, sys, zipfile; w = glob.glob("/wheels/packet_flow-*.whl"); sys.exit(not w or not any(n.startswith("packet_flow/_io") and n.endswith(".so") for n in zipfile.ZipFile(w[0]).namelist()))'

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="packet-flow" \
      org.opencontainers.image.description="UDP packet loss, latency and jitter probe" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PACKET_FLOW_SPOOL_DIR=/var/spool/packet-flow
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        --no-index --find-links=/wheels packet-flow \
 && useradd --user-group --uid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin packetflow \
 && install -d -o 10001 -g 10001 -m 0700 /var/spool/packet-flow
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# InfluxDB output: points that could not be written yet (server down) wait here and are
# replayed on the next start. A volume, so it survives the container and a read-only root;
# Docker gives a new volume the directory's owner (uid 10001).
VOLUME /var/spool/packet-flow
# Default receiver port (PACKET_FLOW_LOCAL_ADDR); publish it as UDP.
EXPOSE 8000/udp
STOPSIGNAL SIGTERM
ENTRYPOINT ["packet-flow"]
