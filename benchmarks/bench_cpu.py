#!/usr/bin/env python3
"""What the probe costs when it has little to do: CPU % of one core and wake-ups per second
of CLI processes on loopback, measured from /proc/PID/stat between t=3 s and t=13 s after
the process started, and the sender's CPU seconds before its first packet.

Rows: an idle receiver (no traffic); a sender at 1 packet/s (--rate 1000); a receiver at
1000 packets/s (fed by a sender at --rate 1, whose cost is shown too); `both` at 1 packet/s.
Start-up: a sender is started N times; the CPU it used when its first packet arrives.

    python benchmarks/bench_cpu.py [--window 3,13] [--starts 5]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

from _proc import free_port, proc_stat, wait_bound


def pf(*args):
    return subprocess.Popen([sys.executable, "-m", "packet_flow", "--log-level", "warning",
                             *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wakeups(pid):
    """Context switches (voluntary + involuntary) of every thread of pid so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            pass
    return total


def measure(procs, started, window):
    """{name: (CPU % of one core, wake-ups/s)} of procs over window (s after `started`)."""
    t0, t1 = window
    time.sleep(max(0.0, started + t0 - time.monotonic()))
    a = {n: (proc_stat(p.pid)[1], wakeups(p.pid), time.monotonic()) for n, p in procs.items()}
    time.sleep(max(0.0, started + t1 - time.monotonic()))
    out = {}
    for n, p in procs.items():
        cpu, ctx, t = proc_stat(p.pid)[1], wakeups(p.pid), time.monotonic()
        out[n] = (100 * (cpu - a[n][0]) / (t - a[n][2]), (ctx - a[n][1]) / (t - a[n][2]))
    return out


def stop(*procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(10)


def scenario(kind, window):
    port = free_port()
    dur = window[1] + 2
    addr = f"127.0.0.1:{port}"
    if kind == "both":
        started = time.monotonic()
        both = pf("--mode", "both", "--local-addr", addr, "--remote-addr", addr,
                  "--rate", 1000, "--duration", dur)
        try:
            return measure({"both": both}, started, window)
        finally:
            stop(both)
    started = time.monotonic()
    rx = pf("--mode", "receiver", "--local-addr", addr, "--duration", dur + 1)
    wait_bound(port)
    procs = {"receiver": rx}
    if kind != "idle":
        procs["sender"] = pf("--mode", "sender", "--remote-addr", addr, "--rate",
                             1000 if kind == "1pps" else 1, "--duration", dur)
        started = time.monotonic()
    try:
        return measure(procs, started, window)
    finally:
        stop(*procs.values())


def startup_cpu():
    """CPU seconds (user+system) a sender has used when its first packet arrives."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(10)
        tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{s.getsockname()[1]}",
                "--rate", 1000, "--duration", 3)
        t0 = time.monotonic()
        try:
            s.recv(65535)
            return proc_stat(tx.pid)[1], time.monotonic() - t0
        finally:
            stop(tx)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", default="3,13", help="seconds after start: from,to")
    ap.add_argument("--starts", type=int, default=5)
    args = ap.parse_args()
    window = tuple(map(float, args.window.split(",")))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; CPU from "
          f"/proc/PID/stat between t={window[0]:g} s and t={window[1]:g} s")
    print(f"\n{'scenario':34} {'process':9} {'CPU % of a core':>16} {'wake-ups/s':>11}")
    for kind, title in (("idle", "idle receiver"), ("1pps", "1 packet/s (--rate 1000)"),
                        ("1000pps", "1000 packets/s (--rate 1)"),
                        ("both", "both at 1 packet/s")):
        for name, (cpu, ctx) in scenario(kind, window).items():
            print(f"{title:34} {name:9} {cpu:>16.2f} {ctx:>11.0f}")
    runs = [startup_cpu() for _ in range(args.starts)]
    cpu = [c for c, _ in runs]
    wall = [w for _, w in runs]
    print(f"\nsender start-up to its first packet ({args.starts} starts): CPU median "
          f"{statistics.median(cpu):.2f} s (max {max(cpu):.2f} s), wall median "
          f"{statistics.median(wall):.2f} s")


if __name__ == "__main__":
    main()
