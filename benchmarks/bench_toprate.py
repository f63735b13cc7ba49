#!/usr/bin/env python3
"""Truth at the top rate: a packet-flow sender process into a packet-flow receiver process on
loopback, pinned to different cores, several runs. Loopback loses nothing on the way, so every
run must show lost = 0; any shortfall must appear as the receiver's local_drops (issue 12.4).

    flock /tmp/pf-heavy.lock python benchmarks/bench_toprate.py [--runs 5] [--seconds 3]
        [--rate 0.000667] [--rcvbuf BYTES]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _proc import free_port, wait_bound


def pf(core, *args):
    cmd = ["taskset", "-c", str(core % os.cpu_count()), sys.executable, "-m", "packet_flow",
           "--log-level", "warning", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def one_run(i, args, tmp):
    port = free_port()
    rout, tout = f"{tmp}/rx-{i}.jsonl", f"{tmp}/tx-{i}.jsonl"
    extra = ["--rcvbuf", args.rcvbuf] if args.rcvbuf else []
    rx = pf(1, "--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration",
            args.seconds + 4, "--output", f"jsonl:{rout}", *extra)
    wait_bound(port)
    tx = pf(0, "--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", args.rate,
            "--size", 64, "--duration", args.seconds, "--output", f"jsonl:{tout}")
    for proc in (tx, rx):
        _, err = proc.communicate(timeout=args.seconds + 60)
        if proc.returncode:
            raise SystemExit(f"packet-flow exited {proc.returncode}: {err.strip()}")
    (s,) = [r for r in records(tout) if r["type"] == "summary"]
    rrecs = records(rout)
    (r,) = [x for x in rrecs if x["type"] == "summary"]
    kernel = sum(x["kernel_drops"] for x in rrecs if x["type"] == "receiver")
    return {"sent": s["sent"], "pps": s["sent"] / s["interval_s"], "received": r["received"],
            "lost": r["lost"], "local": r["local_drops"], "exact": r["local_drops_exact"],
            "kernel": kernel, "coalesced": r["coalesced"], "skipped": s["skipped_slots"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=0.000667, help="ms between packets")
    ap.add_argument("--rcvbuf", type=int, default=0, help="receiver --rcvbuf (0: default)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; --rate {args.rate} "
          f"({1e3 / args.rate:,.0f} packets/s), {args.seconds} s per run, sender on core 0, "
          f"receiver on core 1")
    print(f"{'run':>3} {'sent':>10} {'sent/s':>10} {'received':>10} {'lost':>5} "
          f"{'local_drops':>11} {'exact':>5} {'kernel_drops':>12} {'coalesced':>10} "
          f"{'skipped':>8}")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1, args.runs + 1):
            r = one_run(i, args, tmp)
            ok = r["lost"] == 0 and r["local"] == r["sent"] - r["received"]
            bad += not ok
            print(f"{i:>3} {r['sent']:>10,} {r['pps']:>10,.0f} {r['received']:>10,} "
                  f"{r['lost']:>5} {r['local']:>11,} {str(r['exact']):>5} {r['kernel']:>12,} "
                  f"{r['coalesced']:>10,} {r['skipped']:>8}{'' if ok else '  <- not explained'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
