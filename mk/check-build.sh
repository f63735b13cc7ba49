#!/bin/sh
# What building packet-flow needs, checked before `make run` starts: a C compiler, the Python
# headers, the venv module (with ensurepip) and the OpenSSL headers (the extension links
# libcrypto). Prints nothing and exits 0 when all are there; otherwise names what is missing
# and prints the one apt-get command that installs it, and exits 1.
#
#   PYTHON  the interpreter the venv is made from (default python3)
#   CC      the compiler (default: the one Python's sysconfig names, as setuptools does)
PYTHON=${PYTHON:-python3}
missing=""
need() {  # $1 = Debian packages, $2 = what is missing
    missing="$missing $1"
    echo "missing: $2" >&2
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    need python3 "$PYTHON (Python >= 3.11)"
    PYTHON=""
elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "$PYTHON is Python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); packet-flow needs 3.11 or newer (set PYTHON=...)" >&2
    exit 1
fi

cc=${CC:-}
if [ -z "$cc" ] && [ -n "$PYTHON" ]; then
    cc=$("$PYTHON" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')
fi
cc=${cc:-cc}
if ! command -v "$cc" >/dev/null 2>&1; then
    need "gcc libc6-dev" "a C compiler ($cc)"
    cc=""
fi

if [ -n "$PYTHON" ]; then
    "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || need python3-dev "the Python headers (Python.h)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || need python3-venv "the venv module with ensurepip"
fi

if [ -n "$cc" ]; then
    echo '#include <openssl/hmac.h>' | "$cc" -E -x c - >/dev/null 2>&1 \
        || need libssl-dev "the OpenSSL headers (openssl/hmac.h)"
elif [ ! -f /usr/include/openssl/hmac.h ]; then
    need libssl-dev "the OpenSSL headers (openssl/hmac.h)"
fi

[ -z "$missing" ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo "
echo "install them with:" >&2
echo "  ${sudo}apt-get install -y$missing" >&2
exit 1
