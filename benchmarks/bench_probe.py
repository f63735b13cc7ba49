#!/usr/bin/env python3
"""The probe on loopback, two tables. The side measured runs in this process through the
Python API (docs/api.md); its peer is a CLI process, so the two never share a GIL:

1. Schedule at --rate 1 (1000 packets/s) for both timer modes: the sender (API) into a
   receiver process; missed slots, timer lateness p50/p99/max, CPU % of one core (this
   process's: the sender's thread and its output thread); irtt client -i 1ms side by side
   where installed.
2. Top end-to-end rate: a sender process at --rate R into a receiver (API), 64-byte packets,
   packets/s reached and loss.

    python benchmarks/bench_probe.py [--seconds 60] [--top-seconds 5] [--skip-schedule]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from _proc import free_port, wait_bound

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import packet_flow  # noqa: E402


def pf(*args, out=None):
    cmd = [sys.executable, "-m", "packet_flow", "--log-level", "warning", *map(str, args)]
    if out:
        cmd += ["--output", f"jsonl:{out}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def summary(path, role):
    with open(path, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    return next(r for r in recs if r["type"] == "summary" and r["role"] == role)


def schedule(timer, seconds, tmp):
    port = free_port()
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}",
            "--duration", seconds + 3, out=f"{tmp}/rx-{timer}.jsonl")
    wait_bound(port)
    c0 = self_cpu()
    t0 = time.monotonic()
    s = packet_flow.probe(mode="sender", remote_addr=f"127.0.0.1:{port}", rate=1, timer=timer,
                          duration=seconds).sender
    wall = time.monotonic() - t0
    cpu = self_cpu() - c0
    rx.wait()
    r = summary(f"{tmp}/rx-{timer}.jsonl", "receiver")
    return {"sent": s["sent"], "missed": s["missed_slots"], "p50": s["timer_late_p50_us"],
            "p99": s["timer_late_p99_us"], "max": s["timer_late_max_us"],
            "cpu": 100 * cpu / wall, "lost": r["lost"]}


def irtt(seconds, tmp):
    if not shutil.which("irtt"):
        return None
    port = free_port()
    srv = subprocess.Popen(["irtt", "server", "-b", f"127.0.0.1:{port}", "-i", "0"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        c0 = child_cpu()
        t0 = time.monotonic()
        subprocess.run(["irtt", "client", "-i", "1ms", "-d", f"{seconds}s", "-q", "-o",
                        f"{tmp}/irtt.json", f"127.0.0.1:{port}"], capture_output=True,
                       timeout=seconds + 30)
        wall = time.monotonic() - t0
        cpu = child_cpu() - c0
        with open(f"{tmp}/irtt.json", encoding="utf-8") as f:
            st = json.load(f)["stats"]
        te = st["timer_error"]
        return {"sent": st["packets_sent"], "missed": st["timer_misses"],
                "miss_pct": st["timer_miss_percent"], "mean": te["mean"] / 1e3,
                "max": te["max"] / 1e3, "cpu": 100 * cpu / wall}
    finally:
        srv.kill()
        srv.wait()


def top_rate(rate_ms, seconds, tmp):
    port = free_port()
    rx = packet_flow.Probe(mode="receiver", local_addr=f"127.0.0.1:{port}",
                           duration=seconds + 4, rcvbuf=64 << 20).start()
    tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", rate_ms,
            "--size", 64, "--duration", seconds, out=f"{tmp}/top-tx-{rate_ms}.jsonl")
    tx.wait()
    (r,) = rx.wait().flows
    s = summary(f"{tmp}/top-tx-{rate_ms}.jsonl", "sender")
    return {"sent": s["sent"], "pps": s["sent"] / s["interval_s"], "received": r["received"],
            "lost": r["lost"], "skipped": s["skipped_slots"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--top-seconds", type=int, default=5)
    ap.add_argument("--rates", default="0.002,0.001,0.000667,0.0005")
    ap.add_argument("--skip-schedule", action="store_true")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_schedule:
            print(f"\nschedule at 1000 packets/s for {args.seconds} s")
            print(f"{'tool':26} {'sent':>7} {'missed':>7} {'late p50':>9} {'late p99':>9} "
                  f"{'late max':>9} {'CPU %':>6}")
            for timer in ("precise", "economy"):
                r = schedule(timer, args.seconds, tmp)
                print(f"{'packet-flow ' + timer:26} {r['sent']:>7} {r['missed']:>7} "
                      f"{r['p50']:>7.1f}µs {r['p99']:>7.1f}µs {r['max']:>7.1f}µs "
                      f"{r['cpu']:>6.1f}")
            r = irtt(args.seconds, tmp)
            if r is None:
                print("irtt client -i 1ms         not installed")
            else:
                print(f"{'irtt client -i 1ms':26} {r['sent']:>7} {r['missed']:>7} "
                      f"{'mean':>4}{r['mean']:>5.1f}µs {'':>9} {r['max']:>7.1f}µs "
                      f"{r['cpu']:>6.1f}   ({r['miss_pct']:.1f} % of slots missed)")
        print(f"\ntop end-to-end rate, 64-byte packets, {args.top_seconds} s per rate")
        print(f"{'--rate ms':>10} {'target pps':>11} {'sent pps':>11} {'received':>10} "
              f"{'lost':>6} {'skipped':>8}")
        for rate in map(float, args.rates.split(",")):
            r = top_rate(rate, args.top_seconds, tmp)
            print(f"{rate:>10} {1e3 / rate:>11,.0f} {r['pps']:>11,.0f} {r['received']:>10} "
                  f"{r['lost']:>6} {r['skipped']:>8}")


if __name__ == "__main__":
    main()
