"""Process and port helpers the benchmark scripts share (they run as scripts, so this
folder is on sys.path)."""

import os
import socket
import time


def free_port():
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_bound(port, timeout=5.0):
    """Wait until some process has bound UDP port `port` (read from /proc/net/udp*: binding
    a probe socket would race the receiver, which binds its port exclusively)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table, encoding="ascii") as f:
                if any(line.split()[1].endswith(f":{port:04X}")
                       for line in f.read().splitlines()[1:]):
                    return
        time.sleep(0.02)
    raise RuntimeError(f"nothing bound UDP port {port} within {timeout} s")


def proc_stat(pid):
    """(RSS kB, user+system CPU seconds) of a process."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
