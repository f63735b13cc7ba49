#!/usr/bin/env bash
# Builds the packet-flow image with buildah (chroot isolation; no Docker engine needed) and
# runs it on loopback. `make test-container`; not part of `make test`. Needs root.
#
#  1. static checks of docker-compose.yml, deploy/ and the dashboard (check_deploy.py)
#  2. base image via ../shared/tools/container-base.sh, then `buildah build --isolation chroot`
#  3. image config: non-root numeric USER, ENTRYPOINT ["packet-flow"], no compiler inside
#  4. receiver: `buildah run`, configured only by PACKET_FLOW_* variables, JSON lines to stdout
#     sender: the image's ENTRYPOINT plus arguments, as PID 1 of its own PID namespace, on a
#     read-only root with a tmpfs /tmp and a fresh spool volume (`docker run --read-only
#     --tmpfs /tmp`)
#  5. both run as non-root; SIGTERM ends each with exit status 0 (the sender's final packet
#     closes the flow); the receiver's records show packets received, 0 lost, received == sent
#  6. with victoria-metrics installed (REFERENCE.md §4), both also write to it through the
#     InfluxDB output, reading the token from a mounted secret file (PACKET_FLOW_TOKEN_FILE,
#     as Docker secrets do) that the server checks (Basic auth); the stored points must
#     match the JSON lines
#  7. prints the image size
#
# Environment: IMAGE (tag to build), CONTEXT (build context, default the repository),
# SEND_SECONDS (default 3), BASE_SCRIPT (default ../shared/tools/container-base.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CONTEXT=${CONTEXT:-$ROOT}
IMAGE=${IMAGE:-localhost/packet-flow:test}
SEND_SECONDS=${SEND_SECONDS:-3}
BASE_SCRIPT=${BASE_SCRIPT:-$ROOT/../shared/tools/container-base.sh}
CA=/etc/ssl/certs/ca-certificates.crt

work=$(mktemp -d /tmp/pf-container-test.XXXXXX)
started=()      # PIDs this script started (ended by PID only)
containers=()   # buildah working containers this script created

cleanup() {
  local pid c
  for pid in "${started[@]}"; do
    kill -TERM "$pid" 2>/dev/null && { wait_exit "$pid" 5; [[ $rc != timeout ]] || kill -KILL "$pid"; }
    wait "$pid" 2>/dev/null || true
  done
  for c in "${containers[@]}"; do
    buildah umount "$c" >/dev/null 2>&1 || true
    buildah rm "$c" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# PID of the `packet-flow` process below ancestor $1 (buildah run forks helpers in between).
pf_below() {
  ps -e -o pid=,ppid=,comm= | awk -v top="$1" '
    { parent[$1] = $2; comm[$1] = $3 }
    END { for (p in parent) { q = p
            while (q in parent && q != top && q > 1) q = parent[q]
            if (q == top && comm[p] == "packet-flow") print p } }'
}

# Wait up to $2 seconds for a command (the rest) to succeed.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# Wait up to $2 seconds for background job $1 to end; its exit status goes to $rc.
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { rc=timeout; return 0; }
    sleep 0.1
  done
  rc=0; wait "$1" || rc=$?
  local p keep=()
  for p in "${started[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  started=("${keep[@]}")   # reaped: its PID may be reused, never signal it again
}

non_root() {  # $1 = PID: real, effective, saved and fs uid and gid all non-zero
  local uids gids
  uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$1/status")
  gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$1/status")
  [[ " $uids $gids " != *" 0 "* ]] || fail "process $1 runs with uid/gid 0: Uid $uids Gid $gids"
  echo "$uids"
}

[[ $EUID -eq 0 ]] || fail "needs root (buildah chroot isolation, mount namespaces)"

# 1. static checks
python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml
python3 "$ROOT/tests/container/check_deploy.py" || fail "deployment files"

# 2. image
bash "$BASE_SCRIPT"
echo "building $IMAGE from $CONTEXT ..."
old_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
t0=$SECONDS
buildah build --isolation chroot --pull=never -v "$CA:$CA:ro" \
  -f "$CONTEXT/Dockerfile" -t "$IMAGE" "$CONTEXT" >"$work/build.log" 2>&1 ||
  { tail -40 "$work/build.log"; fail "buildah build"; }
pass "image built in $((SECONDS - t0)) s"
new_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE")
if [[ -n $old_id && $old_id != "$new_id" ]]; then
  buildah rmi "$old_id" >/dev/null 2>&1 || true   # the previous build of this tag, now untagged
fi

# 3. image config
user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
entry=$(buildah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$IMAGE")
workdir=$(buildah inspect --type image --format '{{.OCIv1.Config.WorkingDir}}' "$IMAGE")
mapfile -t image_env < <(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
[[ $user =~ ^[1-9][0-9]*:[1-9][0-9]*$ ]] || fail "image USER is '$user', want numeric non-root uid:gid"
[[ $entry == "packet-flow " ]] || fail "ENTRYPOINT is '$entry', want [\"packet-flow\"]"
pass "image USER $user, ENTRYPOINT [\"packet-flow\"]"

rctr=$(buildah from --pull=never "$IMAGE"); containers+=("$rctr")
sctr=$(buildah from --pull=never "$IMAGE"); containers+=("$sctr")
if buildah run --isolation chroot "$rctr" -- sh -c 'command -v gcc || command -v cc || command -v x86_64-linux-gnu-gcc-12' >/dev/null 2>&1; then
  fail "runtime image contains a compiler"
fi
buildah run --isolation chroot "$rctr" -- python3 -c 'import packet_flow._io' ||
  fail "packet_flow._io does not import in the image"
pass "runtime image: no compiler, extension imports"

# 4. optional metrics server: the probes' InfluxDB output, token from a secret file
influx_env=() influx_args=()
if command -v victoria-metrics >/dev/null; then
  vmport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  victoria-metrics -storageDataPath="$work/vm" -httpListenAddr="127.0.0.1:$vmport" \
    -retentionPeriod=100y -search.disableCache -search.latencyOffset=0s -loggerLevel=WARN \
    -httpAuth.username=pf -httpAuth.password=s3cret >"$work/vm.log" 2>&1 &
  vmpid=$!; started+=("$vmpid")
  wait_for 20 curl -sf -o /dev/null -u pf:s3cret "http://127.0.0.1:$vmport/health" ||
    fail "victoria-metrics did not start"
  kill -0 "$vmpid" || fail "victoria-metrics exited (port taken?)"
  mkdir -m 0755 "$work/secrets"
  printf 'pf:s3cret' >"$work/secrets/influxdb_token"
  chmod 0444 "$work/secrets/influxdb_token"   # root-owned, as Docker secrets are
  influx_env=(--env "PACKET_FLOW_OUTPUT=jsonl:-,influx" --env "PACKET_FLOW_INFLUX_URL=http://127.0.0.1:$vmport"
              --env PACKET_FLOW_AUTH_BASIC=true --env PACKET_FLOW_TOKEN_FILE=/run/secrets/influxdb_token
              -v "$work/secrets:/run/secrets:ro")
  influx_args=(--output influx --influx-url "http://127.0.0.1:$vmport" --auth-basic
               --token-file /run/secrets/influxdb_token)
  pass "victoria-metrics on 127.0.0.1:$vmport, token in a secret file"
else
  echo "skip: InfluxDB output (victoria-metrics not installed)"
fi

# 5. receiver (environment only) and sender (entrypoint + arguments, PID 1)
port=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
buildah run --isolation chroot \
  --env PACKET_FLOW_MODE=receiver --env "PACKET_FLOW_LOCAL_ADDR=127.0.0.1:$port" \
  --env PACKET_FLOW_OUTPUT=jsonl:- --env PACKET_FLOW_INTERVAL=0.5 "${influx_env[@]}" \
  "$rctr" -- packet-flow >"$work/receiver.jsonl" 2>"$work/receiver.log" &
rjob=$!; started+=("$rjob")
hexport=$(printf '%04X' "$port")
wait_for 30 grep -q "^ *[0-9]*: 0100007F:$hexport " /proc/net/udp ||
  { cat "$work/receiver.log"; fail "receiver did not bind 127.0.0.1:$port"; }
rpid=$(pf_below "$rjob")
[[ -n $rpid ]] || fail "receiver process not found"
pass "receiver listening on 127.0.0.1:$port (pid $rpid)"

rootfs=$(buildah mount "$sctr")
# shellcheck disable=SC2016,SC2086  # inner shell expands; $entry splits into argv
unshare --pid --fork --kill-child --mount --propagation private sh -c '
  set -e
  root=$1 userspec=$2 workdir=$3 secrets=$4; shift 4
  if [ -n "$secrets" ]; then mkdir -p "$root/run/secrets"; fi
  mount --bind "$root" "$root"
  mount -o remount,bind,ro "$root"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
  mount -t tmpfs -o "mode=0700,uid=${userspec%:*},gid=${userspec#*:}" tmpfs "$root/var/spool/packet-flow"
  mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
  mount --bind /dev "$root/dev"
  if [ -n "$secrets" ]; then mount --bind -o ro "$secrets" "$root/run/secrets"; fi
  exec chroot --userspec="$userspec" --groups= "$root" /usr/bin/env -i -C "$workdir" "$@"
' sh "$rootfs" "$user" "${workdir:-/}" "${influx_args:+$work/secrets}" "${image_env[@]}" $entry \
  --mode sender --remote-addr "127.0.0.1:$port" --local-addr 127.0.0.1:0 \
  --rate 2 --interval 0.5 --duration 60 --output jsonl:- "${influx_args[@]}" \
  >"$work/sender.jsonl" 2>"$work/sender.log" &
sjob=$!; started+=("$sjob")
spid_ok() { spid=$(ps -o pid= --ppid "$sjob" | tr -d ' '); [[ -n $spid && $(cat "/proc/$spid/comm" 2>/dev/null) == packet-flow ]]; }
wait_for 30 spid_ok || { cat "$work/sender.log"; fail "sender did not start"; }
nspid=$(awk '/^NSpid:/ {print $NF}' "/proc/$spid/status")
[[ $nspid == 1 ]] || fail "sender is PID $nspid in its namespace, want 1"
rootopts=$(awk '$5 == "/" {print $6}' "/proc/$spid/mountinfo")
[[ $rootopts == ro,* ]] || fail "sender's root is mounted '$rootopts', want read-only"
pass "sender is PID 1 of its PID namespace (host pid $spid), root file system read-only"

sleep "$SEND_SECONDS"
kill -0 "$rpid" 2>/dev/null || { cat "$work/receiver.log"; fail "receiver died"; }
kill -0 "$spid" 2>/dev/null || { cat "$work/sender.log"; fail "sender died"; }
pass "receiver runs as uid $(non_root "$rpid"); sender runs as uid $(non_root "$spid")"

# 6. SIGTERM: sender first (final packet), then the receiver
kill -TERM "$spid"
wait_exit "$sjob" 15
[[ $rc == 0 ]] || { cat "$work/sender.log"; fail "sender after SIGTERM: exit status $rc, want 0"; }
pass "sender (PID 1) exited 0 on SIGTERM"
sleep 1
kill -TERM "$rpid"
wait_exit "$rjob" 15
[[ $rc == 0 ]] || { cat "$work/receiver.log"; fail "receiver after SIGTERM: exit status $rc, want 0"; }
pass "receiver exited 0 on SIGTERM"

python3 - "$work/receiver.jsonl" "$work/sender.jsonl" <<'EOF' || fail "receiver output"
import json
import sys

rx = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
tx = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
intervals = [r for r in rx if r["type"] == "interval"]
summaries = [r for r in rx if r["type"] == "summary" and r["role"] == "receiver"]
sent = [r for r in tx if r["type"] == "summary" and r["role"] == "sender"]
received = sum(r["received"] for r in intervals)
lost = sum(r["lost"] for r in intervals)
problems = []
if not intervals or received <= 0:
    problems.append(f"no packets received ({len(intervals)} interval records)")
if lost != 0 or any(r["lost"] for r in summaries):
    problems.append(f"{lost} packets lost")
if len(summaries) != 1 or len(sent) != 1:
    problems.append(f"{len(summaries)} receiver and {len(sent)} sender summary records, want 1 each")
else:
    s, t = summaries[0], sent[0]
    if s["received"] != t["sent"] or not s["closed"]:
        problems.append(f"summary received {s['received']} closed {s['closed']}, sender sent {t['sent']}")
    print(f"ok: receiver: {len(intervals)} interval records, {received} packets received, "
          f"{lost} lost, late {s['late']}, duplicates {s['duplicates']}, "
          f"OWD p50 {s['owd_p50_us']} us p99 {s['owd_p99_us']} us; sender sent {t['sent']}, "
          f"timer lateness p99 {t['timer_late_p99_us']} us")
for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems else 0)
EOF

if [[ ${#influx_args[@]} -gt 0 ]]; then
  curl -sf -u pf:s3cret "http://127.0.0.1:$vmport/internal/force_flush" >/dev/null
  python3 - "$work/receiver.jsonl" "$work/sender.jsonl" "http://127.0.0.1:$vmport" <<'EOF' || fail "InfluxDB output"
import base64
import json
import sys
import urllib.parse
import urllib.request


def export(metric):
    url = f"{sys.argv[3]}/api/v1/export?" + urllib.parse.urlencode({"match[]": metric})
    req = urllib.request.Request(url, headers={
        "Authorization": "Basic " + base64.b64encode(b"pf:s3cret").decode()})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line]


rx = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
tx = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
want_rx = sum(r["received"] for r in rx if r["type"] == "interval")
want_tx = sum(r["sent"] for r in tx if r["type"] == "sender")
got_rx = sum(sum(s["values"]) for s in export("packet_flow_received"))
got_lost = sum(sum(s["values"]) for s in export("packet_flow_lost"))
got_tx = sum(sum(s["values"]) for s in export("packet_flow_sender_sent"))
tags = {k for s in export("packet_flow_received") for k in s["metric"]}
ok = got_rx == want_rx and got_tx == want_tx and got_lost == 0 and {
    "source", "destination", "session", "host"} <= tags
print(("ok" if ok else "FAIL") + f": InfluxDB output: packet_flow received {got_rx} (jsonl "
      f"{want_rx}), lost {got_lost}, packet_flow_sender sent {got_tx} (jsonl {want_tx}), "
      f"tags {sorted(tags - {'__name__'})}")
sys.exit(0 if ok else 1)
EOF
fi

# 7. size
size=$(buildah images --format '{{.Size}}' "$IMAGE" | head -1)
base=$(buildah images --format '{{.Size}}' docker.io/library/python:3.11-slim-bookworm | head -1)
echo "image $IMAGE: $size (base image python:3.11-slim-bookworm here: $base)"
echo "test-container: all checks passed"
