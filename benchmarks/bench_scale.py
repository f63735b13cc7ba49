"""1000 concurrent senders into one receiver: exact per-flow statistics and flow expiry.

The senders are 1000 UDP sockets in this process, each with its own _io.Sender and session
id, so each is its own flow. Every tick of an absolute 10 ms grid (_io.sleep_until) sends
one packet on every socket: 100 packets/s per flow, 100k packets/s in all. The senders
start one after another over the first second, as real ones do (--burst-start: all on the
first tick; when each flow still preallocated a 1 MiB window, opening 1000 at once stalled
a loaded receiver for 1.4 s and overflowed its socket buffer). Half of the
senders end with a FINAL packet; the other half just fall silent, and the receiver (the
CLI, in its own process, with a short --stall-timeout/--forget-timeout) must expire them:
their interval records must stop after forget-timeout, before the receiver is stopped (they
shrink to compact records), and their summaries at the stop say `outcome: "unknown"`.

Checks (exit status 1 if any fails): every flow's received == what its socket sent, with
lost, late and duplicates 0; 1000 flows open at the peak; every silent flow expired (last
interval before the stop, summary with stalled=true, closed=false, outcome unknown); kernel
drops 0.
Prints a table with the receiver's peak RSS and CPU time.
Usage: python3 benchmarks/bench_scale.py [--senders 1000] [--pps 100] [--seconds 10]
"""

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from _proc import free_port, proc_stat

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path[:0] = [ROOT]

from packet_flow import _io, sockets  # noqa: E402

STALL_S, FORGET_S = 1.0, 2.0


def parse_time(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC).timestamp()


def main(argv=None):
    """Run the benchmark; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--senders", type=int, default=1000)
    p.add_argument("--pps", type=float, default=100.0, help="packets/s per sender")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--burst-start", action="store_true",
                   help="start every sender on the first tick instead of over one second")
    a = p.parse_args(argv)
    port = free_port()
    out = os.path.join(tempfile.mkdtemp(prefix="pf-scale-"), "rx.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    rx = subprocess.Popen(
        [sys.executable, "-m", "packet_flow", "--mode", "receiver", "--log-level", "error",
         "--local-addr", f"127.0.0.1:{port}", "--interval", "0.5", "--duration", "600",
         "--stall-timeout", str(STALL_S), "--forget-timeout", str(FORGET_S),
         "--rcvbuf", str(64 << 20), "--output", f"jsonl:{out}"], cwd=ROOT, env=env)
    socks, senders = [], []
    dest = sockets.dest_tuple(("127.0.0.1", port), socket.AF_INET)
    try:
        time.sleep(1.0)
        for _ in range(a.senders):
            s = sockets.send_socket(socket.AF_INET, sndbuf=1 << 16)
            socks.append(s)
            senders.append(_io.Sender(s.fileno(), dest, session=int.from_bytes(os.urandom(8))))
        step = int(1e9 / a.pps)
        ticks = int(a.seconds * a.pps)
        start = _io.mono_ns() + 50_000_000
        missed = 0
        peak_rss, cpu0 = 0, proc_stat(rx.pid)[1]
        t0 = time.perf_counter()
        ramp = 1 if a.burst_start else max(1, int(a.pps))
        for k in range(ticks):
            late = _io.sleep_until(start + k * step, 20_000)
            if late is not None and late > step:
                missed += 1
            for tx in senders[:a.senders * min(k + 1, ramp) // ramp]:
                tx.send(1)
            if k % int(a.pps) == 0:
                peak_rss = max(peak_rss, proc_stat(rx.pid)[0])
        send_s = time.perf_counter() - t0
        for tx in senders[::2]:
            tx.send(1, final=True)
        silent_since = time.time()
        # silent flows: stalled after STALL_S, forgotten after FORGET_S (+ one interval)
        while time.time() < silent_since + FORGET_S + 2.0:
            peak_rss = max(peak_rss, proc_stat(rx.pid)[0])
            time.sleep(0.25)
        rss, cpu1 = proc_stat(rx.pid)
        stop_at = time.time()
        rx.send_signal(signal.SIGTERM)
        rx.wait(60)
    finally:
        for s in socks:
            s.close()
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    with open(out, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    sent = {f"{tx.session:016x}": tx.sent for tx in senders}
    closing = {f"{tx.session:016x}" for tx in senders[::2]}
    summaries = {r["session"]: r for r in recs if r["type"] == "summary"}
    exact = sum(1 for s, n in sent.items() if s in summaries
                and summaries[s]["received"] == n
                and summaries[s]["lost"] == summaries[s]["late"] == 0
                and summaries[s]["duplicates"] == 0)
    closed_ok = sum(1 for s in closing if summaries.get(s, {}).get("closed") is True)
    last = {r["session"]: r for r in recs if r["type"] == "interval"}
    silent = [s for s in sent if s not in closing and s in summaries and s in last]
    expired_ok = sum(1 for s in silent if summaries[s]["stalled"] and not summaries[s]["closed"]
                     and summaries[s]["outcome"] == "unknown"
                     and parse_time(last[s]["time"]) < stop_at - 0.25)
    expiry_delay = max((parse_time(last[s]["time"]) - silent_since for s in silent),
                       default=None)
    rx_recs = [r for r in recs if r["type"] == "receiver"]
    peak_flows = max(r["flows"] for r in rx_recs)
    drops = sum(r["kernel_drops"] for r in rx_recs)
    overwritten = sum(r["overwritten"] for r in rx_recs)
    flows_at_stop = rx_recs[-2]["flows"] if len(rx_recs) > 1 else None
    lost = sum(r["lost"] for r in summaries.values())
    total = sum(sent.values())
    rows = [
        ("senders (sockets, flows)", a.senders),
        ("packets/s per flow, total", f"{a.pps:g}, {a.pps * a.senders:,.0f}"),
        ("packets sent", f"{total:,} in {send_s:.1f} s ({total / send_s:,.0f}/s)"),
        ("ticks missed (>1 tick late)", missed),
        ("flows with exact statistics", f"{exact} / {a.senders}"),
        ("flows closed by FINAL", f"{closed_ok} / {len(closing)}"),
        ("silent flows expired", f"{expired_ok} / {a.senders - len(closing)}"),
        ("expiry after silence (s)", f"{expiry_delay:.2f}" if expiry_delay else "-"),
        ("peak open flows", peak_flows),
        ("open flows before stop", flows_at_stop),
        ("kernel drops, ring overwritten", f"{drops}, {overwritten}"),
        ("lost (all flows)", lost),
        ("receiver RSS peak / at end (MB)", f"{peak_rss / 1024:.0f} / {rss / 1024:.0f}"),
        ("receiver CPU (s) while sending+expiring", f"{cpu1 - cpu0:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    ok = (exact == a.senders and closed_ok == len(closing) and peak_flows == a.senders
          and expired_ok == a.senders - len(closing) and drops == 0 and overwritten == 0
          and flows_at_stop == 0)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
