"""Running the probe as a user would: the CLI in a subprocess on loopback, read back through
its JSON-lines output."""

import json
import os
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pf(*args, env=None):
    full = dict(os.environ, **(env or {}))
    full = {k: v for k, v in full.items() if not k.startswith("PACKET_FLOW_")}
    return subprocess.Popen([sys.executable, "-m", "packet_flow", "--log-level", "warning",
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full)


def records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def summaries(recs, role="receiver"):
    return [r for r in recs if r["type"] == "summary" and r["role"] == role]


def finish(proc, timeout=20):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def bound(port, host=None):
    """True when a UDP socket is bound to `port` (and IPv4 `host`, when given; a wildcard
    bind counts), read from /proc/net/udp and udp6: binding a probe socket would race the
    receiver, which binds its port exclusively."""
    want = {f"{port:04X}"}
    if host is not None:
        packed = socket.inet_aton(host)[::-1].hex().upper()
        want = {f"{packed}:{port:04X}", f"00000000:{port:04X}"}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local = line.split()[1]
            if (local if host is not None else local.split(":")[1]) in want:
                return True
    return False


def wait_bound(port, timeout=5.0):
    """Wait until a receiver has bound UDP port `port`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if bound(port):
            return
        time.sleep(0.02)
    raise AssertionError("receiver did not bind")


def wait_caught(proc, sig, timeout=10.0):
    """Wait until process `proc` has a handler for `sig` (SigCgt in /proc/PID/status): a
    run installs its handlers after its sockets, outputs and loops, so a bound port does
    not mean a signal would be caught (SIGUSR1 uncaught ends the process, -10)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"the process ended ({proc.returncode}) before its handler"
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if mask >> (sig - 1) & 1:
            return
        time.sleep(0.005)
    raise AssertionError(f"no handler for {sig!r} after {timeout} s")


def udp_queue(pid, port):
    """(rx_queue bytes, drops) of the UDP socket on `port` as process pid sees it."""
    with open(f"/proc/{pid}/net/udp", encoding="ascii") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}"):
                return int(fields[4].split(":")[1], 16), int(fields[-1])
    return None
