#!/usr/bin/env python3
"""What a mesh node costs (issue 24 §9): CPU % of one core and RSS of one `--mode mesh`
process probing N peers, measured from /proc/PID/stat over a window, with the counts checked.

The peers are simulated on loopback by one "farm" process (this script's `farm` mode): one
socket per peer bound to 127.77.x.y:Q sends that peer's native packets (its own name and
session, 10 per second by default, spread across the interval) to the node, and one wildcard
socket on port P receives what the node sends to every 127.77.x.y:P. Counts are exact when
every packet the node sent to a peer arrived (per pair session: sequences 0..k, no gap) and
every flow the node received lost nothing. Beside it, the same per-pair load the way it is
done today: separate `--mode sender` processes, one per peer (run for a few peers; their
per-process cost times N is shown for N).

    python benchmarks/bench_mesh.py [--peers 1000,100] [--window 4,14] [--separate 10]
                                    [--interval 10] [--only-mesh]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from _proc import free_port, proc_stat

from packet_flow import _io, sockets


def peer_addr(i):
    return f"127.77.{i // 250}.{i % 250 + 1}"


def farm(n, port, node, rate_pps, seconds, out):
    """Simulated peers (see the module doc); writes 'sent_per_peer received_ok' to out."""
    host, nport = node.rsplit(":", 1)
    dest = (socket.AF_INET, socket.inet_aton(host), int(nport))
    rx_sock, _ = sockets.receive_socket(("0.0.0.0", port), socket.AF_INET, 64 << 20, gro=False)
    rx = _io.Receiver(rx_sock.fileno(), batch=256, capacity=1 << 17)
    socks, txs = [], []
    for i in range(n):
        s = sockets.send_socket(socket.AF_INET, bind=(peer_addr(i), port + 1))
        socks.append(s)
        txs.append(_io.Sender(s.fileno(), dest, session=0xFA000000 + i, lateness_capacity=16,
                              name=f"peer-{i}".encode(), batch=1))
    step_ns = 1_000_000                         # one wake-up per ms: the peers due in it
    per_step = max(1, round(n * rate_pps * step_ns / 1e9))
    start = _io.mono_ns() + 2_000_000_000      # the node starts meanwhile
    end = start + int(seconds * 1e9)
    k = cursor = 0
    seen = []
    while True:
        t = start + k * step_ns
        if t >= end:
            break
        _io.sleep_until(t)
        for _ in range(per_step):
            txs[cursor].send(1)
            cursor = (cursor + 1) % n
        k += 1
        if k % 50 == 0:
            rx.pump(_io.mono_ns())
            seen.append(rx.drain()[["session", "seq"]])
    for tx in txs:                              # every peer ends with a FINAL
        tx.send(1, final=True)
    time.sleep(0.5)
    for _ in range(100):
        rx.pump(_io.mono_ns())
    seen.append(rx.drain()[["session", "seq"]])
    got = np.concatenate(seen)
    sessions, counts = np.unique(got["session"], return_counts=True)
    highest = np.array([got["seq"][got["session"] == s].max() for s in sessions])
    exact = bool(len(sessions) and (counts == highest + 1).all())
    with open(out, "w", encoding="ascii") as f:
        f.write(f"{[int(tx.sent) for tx in txs][0]} {len(sessions)} {int(exact)}\n")


def pf(*args):
    return subprocess.Popen([sys.executable, "-m", "packet_flow", "--log-level", "warning",
                             *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def measure(pids, started, window):
    """(CPU % of one core summed over pids, peak RSS MiB of one) over the window."""
    t0, t1 = window
    time.sleep(max(0.0, started + t0 - time.monotonic()))
    a = [proc_stat(p)[1] for p in pids]
    ta = time.monotonic()
    time.sleep(max(0.0, started + t1 - time.monotonic()))
    stats = [proc_stat(p) for p in pids]
    cpu = 100 * sum(s[1] - c for s, c in zip(stats, a, strict=True)) / (time.monotonic() - ta)
    return cpu, max(s[0] for s in stats) / 1024


def mesh_row(n, rate_ms, timer, window, tmp, interval=10):
    """One mesh node probing n simulated peers; returns its figures and the count check."""
    port, fport = free_port(), free_port()
    node = f"127.76.{os.getpid() % 250}.1:{port}"
    peers = os.path.join(tmp, f"peers{n}-{timer}")
    with open(peers, "w", encoding="ascii") as f:
        f.writelines(f"{peer_addr(i)}:{fport}\n" for i in range(n))
    out = os.path.join(tmp, f"mesh{n}-{timer}.jsonl")
    seconds = window[1] + 2
    farm_out = os.path.join(tmp, f"farm{n}-{timer}")
    fproc = subprocess.Popen([sys.executable, __file__, "farm", str(n), str(fport), node,
                              str(1000 / rate_ms), str(seconds), farm_out])
    time.sleep(0.5)
    proc = pf("--mode", "mesh", "--local-addr", node, "--peers", f"file:{peers}", "--name",
              "node", "--rate", rate_ms, "--timer", timer, "--interval", interval, "--duration",
              seconds, "--output", f"jsonl:{out}", *os.environ.get("PF_EXTRA", "").split())
    started = time.monotonic()
    cpu, rss = measure([proc.pid], started, window)
    proc.wait(seconds + 30)
    fproc.wait(seconds + 30)
    recs = [json.loads(line) for line in open(out, encoding="utf-8")]
    rx = [r for r in recs if r["type"] == "summary" and r["role"] == "receiver"]
    tx = [r for r in recs if r["type"] == "summary" and r["role"] == "sender"]
    with open(farm_out, encoding="ascii") as f:
        _per_peer, farm_sessions, farm_exact = map(int, f.read().split())
    late = sorted(r["timer_late_p99_us"] or 0 for r in tx)
    exact = (len(rx) == n and all(r["lost"] == 0 and r["late"] == 0 for r in rx)
             and farm_sessions == n and bool(farm_exact))
    if not exact:
        bad = [(r["source_name"], r["lost"], r["late"], r["received"]) for r in rx
               if r["lost"] or r["late"]][:5]
        print(f"  not exact: {len(rx)} flows in, farm saw {farm_sessions} sessions "
              f"exact={farm_exact}; flows with loss: {bad}")
    return {"cpu": cpu, "rss": rss, "exact": exact, "late_p99": late[len(late) // 2] if late
            else None, "flows": len(rx), "pairs": len(tx)}


def separate_row(m, rate_ms, window):
    """m separate sender processes at rate_ms each to one receiver (today's way)."""
    port = free_port()
    rxp = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--output",
             "jsonl:/dev/null")
    time.sleep(0.5)
    started = time.monotonic()
    procs = [pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", rate_ms,
                "--output", "jsonl:/dev/null") for _ in range(m)]
    try:
        return measure([p.pid for p in procs], started, window)
    finally:
        for p in [*procs, rxp]:
            p.terminate()
        for p in [*procs, rxp]:
            p.wait(10)


def wake_lateness(n=2000, period_ns=1_000_000):
    """p50 and p99 (µs) of how late clock_nanosleep wakes for a deadline, as the precise
    timer's send thread (SCHED_FIFO, 1 ns timer slack) sleeps before it spins."""
    from packet_flow.sender import precise_timer
    late = []
    with precise_timer(True):
        t = _io.mono_ns() + period_ns
        for _ in range(n):
            _io.sleep_until(t)
            late.append(_io.mono_ns() - t)
            t += period_ns
    return tuple(float(x) / 1e3 for x in np.percentile(late, [50, 99]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="1000,100")
    ap.add_argument("--window", default="4,14")
    ap.add_argument("--separate", type=int, default=10)
    ap.add_argument("--only-mesh", action="store_true", help="only the economy mesh rows")
    ap.add_argument("--interval", type=float, default=10, help="records every N seconds")
    args = ap.parse_args()
    window = tuple(float(x) for x in args.window.split(","))
    print(f"uptime: {open('/proc/loadavg').read().split()[:3]}")
    wake = wake_lateness()
    print(f"this machine's timer: a sleep to a deadline wakes p50 {wake[0]:.0f} µs, p99 "
          f"{wake[1]:.0f} µs late (the precise timer spins about that long per slot)")
    print(f"{'load':<42}{'CPU %':>8}{'RSS MiB':>9}{'timer p99':>11}  counts")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(int(n), 100.0, "economy") for n in args.peers.split(",")]
        if not args.only_mesh:
            rows += [(1, 1.0, "precise"), (10, 10.0, "precise")]
        for n, rate_ms, timer in rows:
            got = mesh_row(n, rate_ms, timer, window, tmp, args.interval)
            pps = n * 1000 / rate_ms
            name = f"mesh: {n} peers x {1000 / rate_ms:g}/s ({pps:g}/s), {timer}"
            late = f"{got['late_p99']:.1f} µs" if got["late_p99"] is not None else "-"
            print(f"{name:<42}{got['cpu']:>8.2f}{got['rss']:>9.1f}{late:>11}  "
                  f"{'exact' if got['exact'] else 'NOT exact'} ({got['pairs']} pairs out, "
                  f"{got['flows']} flows in)")
        m = args.separate
        if not m:
            return
        cpu, rss = separate_row(m, 100.0, window)
        print(f"{f'today: {m} sender processes x 10/s':<42}{cpu:>8.2f}{rss:>9.1f}"
              f"{'':>11}  per process {cpu / m:.2f} %")
        for n in [int(x) for x in args.peers.split(",")]:
            print(f"{f'today, {n} senders x 10/s (x{n} / {m})':<42}{cpu * n / m:>8.1f}"
                  f"{rss * n:>9.0f}{'':>11}  RSS: {n} processes")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "farm":
        farm(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]),
             float(sys.argv[6]), sys.argv[7])
    else:
        main()
