"""Endurance: a sender and a receiver (the CLI, two processes, loopback) at the top rate for
10 minutes; the receiver's RSS must stay at most 100 MB and flat.

RSS (VmRSS from /proc) of both processes is sampled every --sample-s seconds and reported
at 1, 5 and 10 minutes (every whole minute for other --minutes). "Flat" means the receiver
grows by at most --flat-mb between the first minute and the end. The run also reports what
was measured: packets sent and received, loss, kernel drops and ring overwrites, skipped
send slots, and each process's CPU time.

--ring-capacity N starts the receiver with defaults.RING_CAPACITY = N (a power of two)
instead of the default, to show what the receive ring costs: its records are 96 bytes, so
a 1 << 20 ring alone would be 96 MiB once written through (the default, 1 << 17, is 12 MiB).
Exit status 1 when a limit is broken. Bounded: the sender stops after --minutes.
Usage: python3 benchmarks/bench_longrun.py [--minutes 10] [--rate 0.000667] [--ring-capacity 0]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from _proc import free_port, proc_stat

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")

RING_PATCH = ("import sys; from packet_flow import defaults; "
              "defaults.RING_CAPACITY = int(sys.argv.pop(1)); "
              "from packet_flow.cli import main; sys.exit(main())")


def socket_drops(pid, port):
    """The kernel's own drop count of the UDP socket on port (/proc/PID/net/udp)."""
    with open(f"/proc/{pid}/net/udp", encoding="ascii") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}"):
                return int(fields[-1])
    return None


def main(argv=None):
    """Run the endurance test; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=0.000667,
                   help="ms between packets (0.000667 = 1.5M/s, the top rate measured here)")
    p.add_argument("--ring-capacity", type=int, default=0, help="0 = packet_flow's default")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--limit-mb", type=float, default=100.0)
    p.add_argument("--flat-mb", type=float, default=5.0)
    a = p.parse_args(argv)
    port, tmp = free_port(), tempfile.mkdtemp(prefix="pf-longrun-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    seconds = a.minutes * 60
    head = [sys.executable, "-m", "packet_flow"]
    if a.ring_capacity:
        head = [sys.executable, "-c", RING_PATCH, str(a.ring_capacity)]
    rx = subprocess.Popen(
        [*head, "--mode", "receiver", "--log-level", "warning", "--local-addr",
         f"127.0.0.1:{port}", "--interval", "1", "--duration", str(seconds + 60),
         "--output", f"jsonl:{tmp}/rx.jsonl"], cwd=ROOT, env=env)
    tx = None
    samples = []                                  # (seconds, rx RSS kB, tx RSS kB)
    try:
        time.sleep(1.5)
        tx = subprocess.Popen(
            [sys.executable, "-m", "packet_flow", "--mode", "sender", "--log-level", "warning",
             "--remote-addr", f"127.0.0.1:{port}", "--rate", str(a.rate), "--duration",
             str(seconds), "--interval", "10", "--output", f"jsonl:{tmp}/tx.jsonl"],
            cwd=ROOT, env=env)
        t0 = time.monotonic()
        while tx.poll() is None and time.monotonic() - t0 < seconds + 30:
            time.sleep(a.sample_s)
            if tx.poll() is None:
                samples.append((time.monotonic() - t0, proc_stat(rx.pid)[0],
                                proc_stat(tx.pid)[0]))
                rss_mb = samples[-1][1] / 1024
                print(f"{samples[-1][0]:7.0f} s  receiver RSS {rss_mb:6.1f} MB  "
                      f"sender RSS {samples[-1][2] / 1024:6.1f} MB", flush=True)
        rx_cpu = proc_stat(rx.pid)[1]
        tx.wait(60)
        time.sleep(1.0)
        drops = socket_drops(rx.pid, port)
        rx.send_signal(signal.SIGTERM)
        rx.wait(60)
    finally:
        for proc in (tx, rx):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    def load(name):
        with open(f"{tmp}/{name}.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    rrecs, trecs = load("rx"), load("tx")
    (tsum,) = [r for r in trecs if r["type"] == "summary"]
    rsums = [r for r in rrecs if r["type"] == "summary"]
    rxr = [r for r in rrecs if r["type"] == "receiver"]
    marks = [1, 5, 10] if a.minutes >= 10 else list(range(1, int(a.minutes) + 1)) or [a.minutes]
    print()
    print("minute  receiver RSS MB  sender RSS MB")
    at = {}
    for m in marks:
        near = min(samples, key=lambda s, m=m: abs(s[0] - 60 * m))
        at[m] = near
        print(f"{m:6}  {near[1] / 1024:15.1f}  {near[2] / 1024:13.1f}")
    got = sum(r["received"] for r in rsums)
    lost = sum(r["lost"] for r in rsums)
    rows = [
        ("rate", f"{1 / a.rate * 1000:,.0f} packets/s for {a.minutes:g} min"),
        ("ring capacity", a.ring_capacity or "default"),
        ("sent, skipped slots", f"{tsum['sent']:,}, {tsum['skipped_slots']:,}"),
        ("received, lost, late, dup", f"{got:,}, {lost:,}, "
         f"{sum(r['late'] for r in rsums)}, {sum(r['duplicates'] for r in rsums)}"),
        ("kernel drops, ring overwritten", f"{sum(r['kernel_drops'] for r in rxr):,}, "
         f"{sum(r['overwritten'] for r in rxr):,}"),
        ("socket drops (/proc/net/udp)", f"{drops:,}" if drops is not None else "-"),
        ("receiver CPU s (of run s)", f"{rx_cpu:.0f} ({seconds:.0f})"),
        ("receiver RSS max MB", f"{max(s[1] for s in samples) / 1024:.1f}"),
    ]
    for key, value in rows:
        print(f"{key:<32}{value}")
    first, last = at[marks[0]][1], samples[-1][1]
    ok = max(s[1] for s in samples) <= a.limit_mb * 1024 and last - first <= a.flat_mb * 1024
    print(f"receiver RSS <= {a.limit_mb:g} MB and flat (+{(last - first) / 1024:.1f} MB after "
          f"minute {marks[0]}): {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
