"""The Prometheus output under load; prints a table. Run it alone (flock /tmp/pf-heavy.lock).

Rows:
- `render / serve, 1000 flows (in process)`: a PrometheusSink fed one interval of 1000 flows
  (records and per-batch delay arrays): the time a rendering takes (once per interval: the
  snapshot on the output thread, prometheus_client in the rendering process), and the time a
  GET /metrics takes to be served, idle and while renderings run back to back.
- `1000 flows scraped by Prometheus`: the receiver (CLI) with --prometheus-listen, 1000 UDP
  sender sockets in this process (100 packets/s each, started over the first second, FINAL
  at the end), a real Prometheus scraping it every second: its own scrape_duration_seconds
  (max and median; it includes Prometheus parsing and storing the 33k samples), curl's time
  for a whole GET /metrics every 0.5 s meanwhile, series count, received total against the
  run's summaries, lost, drops.
- `1.5M packets/s scraped every second`: a receiver (API, in this process) and a sender
  CLI process as in bench_sink.py at
  --rate 0.000667 ms (64-byte packets) while Prometheus scrapes the receiver every second:
  sent, received, lost, kernel drops, and the received counter Prometheus stored last.
Bounded: fixed packet counts and durations; traffic on 127.0.0.1 only; only the processes
started here are signalled, by PID.
Usage: python3 benchmarks/bench_prometheus.py [--seconds 5] [--flow-seconds 8]
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request

import numpy as np
from _proc import free_port, proc_stat, wait_bound

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path[:0] = [os.path.join(ROOT, "tests", "support"), ROOT]

from promserver import PromServer  # noqa: E402
from servers import free_port as free_tcp_port  # noqa: E402

import packet_flow  # noqa: E402
from packet_flow import _io, sockets  # noqa: E402
from packet_flow.options import parse_addr  # noqa: E402
from packet_flow.sinks.prometheus import PrometheusSink  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
BASE = [sys.executable, "-m", "packet_flow", "--log-level", "error"]


def records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def in_process(flows: int) -> dict:
    """Render and serve times of one interval of `flows` flows."""
    port = free_tcp_port()
    sink = PrometheusSink(types.SimpleNamespace(
        forget_timeout=60.0, sources={}, prometheus_listen=parse_addr(f"127.0.0.1:{port}")))
    rng = np.random.default_rng(1)
    dest = "10.0.0.2:8000"
    for i in range(flows):
        src = f"10.1.{i // 250}.{i % 250}:40000"
        sink.packets(src, dest, None, rng.integers(1_000, 50_000_000, 1000))
        sink.record({"type": "interval", "role": "receiver", "source": src, "destination": dest,
                     "wire": "native", "received": 1000, "lost": i % 3, "late": 1,
                     "duplicates": 0, "malformed": 0, "loss_bursts": i % 2, "stalled": False})
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url) as r:      # the first scrape renders on the spot
        size = len(r.read())
    renders, snaps = [], []
    for _ in range(5):
        t = time.perf_counter()
        sink._render(wait=True)
        renders.append(time.perf_counter() - t)
        t = time.perf_counter()
        with sink.state_lock:
            sink.snapshot()
        snaps.append(time.perf_counter() - t)
    def serve_times():
        times = []
        for _ in range(20):
            t = time.perf_counter()
            with urllib.request.urlopen(url) as r:
                r.read()
            times.append(time.perf_counter() - t)
        return times

    serves = serve_times()
    busy = threading.Event()
    thread = threading.Thread(target=lambda: [sink._render(wait=True) for _ in iter(busy.is_set, True)])
    thread.start()                          # scrapes while the output thread renders
    during = serve_times()
    busy.set()
    thread.join()
    sink.close(0)
    return {"size": size, "render": statistics.median(renders), "snap": statistics.median(snaps),
            "serve": statistics.median(serves), "serve_max": max(serves),
            "during": statistics.median(during), "during_max": max(during)}


def flows_scraped(prom, mport: int, n: int, pps: float, seconds: float, tmp: str) -> dict:
    """n real flows into a receiver that Prometheus scrapes every second."""
    port, out = free_port(), os.path.join(tmp, "flows.jsonl")
    rx = subprocess.Popen(BASE + ["--mode", "receiver", "--local-addr", f"127.0.0.1:{port}",
                                  "--rcvbuf", str(64 << 20), "--forget-timeout", "120",
                                  "--output", f"jsonl:{out}",
                                  "--prometheus-listen", f"127.0.0.1:{mport}"], env=ENV)
    socks, senders = [], []
    try:
        wait_bound(port)
        dest = sockets.dest_tuple(("127.0.0.1", port), socket.AF_INET)
        for _ in range(n):
            s = sockets.send_socket(socket.AF_INET, sndbuf=1 << 16)
            socks.append(s)
            senders.append(_io.Sender(s.fileno(), dest, session=int.from_bytes(os.urandom(8))))
        step, ticks, ramp = int(1e9 / pps), int(seconds * pps), max(1, int(pps))
        gets, done = [], threading.Event()
        url = f"http://127.0.0.1:{mport}/metrics"

        def curl():                         # client-side scrape times, in another process
            while not done.wait(0.5):
                got = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}",
                                      url], capture_output=True, text=True)
                if got.returncode == 0:
                    gets.append(float(got.stdout))

        getter = threading.Thread(target=curl)
        start = _io.mono_ns() + 50_000_000
        cpu0 = proc_stat(rx.pid)[1]
        t0 = time.time()
        getter.start()
        for k in range(ticks):
            _io.sleep_until(start + k * step, 20_000)
            for tx in senders[:n * min(k + 1, ramp) // ramp]:
                tx.send(1)
        for tx in senders:
            tx.send(1, final=True)
        time.sleep(3.0)                     # two more intervals and scrapes
        done.set()
        getter.join()
        cpu = proc_stat(rx.pid)[1] - cpu0
        span = f"[{int(time.time() - t0) + 1}s]"
        inst = f'instance="127.0.0.1:{mport}"'
        q = lambda e: float(prom.query(e)[0]["value"][1])  # noqa: E731
        got = {"series": q(f"count(packet_flow_received_packets_total{{{inst}}})"),
               "stored_received": q(f"sum(packet_flow_received_packets_total{{{inst}}})"),
               "scrape_max_s": q(f"max_over_time(scrape_duration_seconds{{{inst}}}{span})"),
               "scrape_median_s": q(f"quantile_over_time(0.5, scrape_duration_seconds{{{inst}}}"
                                    f"{span})"),
               "samples": q(f"max_over_time(scrape_samples_scraped{{{inst}}}{span})"),
               "curl_get_median_s": statistics.median(gets), "curl_get_max_s": max(gets),
               "receiver_cpu_s": cpu}
        rx.send_signal(signal.SIGTERM)
        rx.wait(60)
    finally:
        for s in socks:
            s.close()
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    recs = records(out)
    sums = [r for r in recs if r["type"] == "summary"]
    got.update(sent=sum(tx.sent for tx in senders), received=sum(r["received"] for r in sums),
               lost=sum(r["lost"] for r in sums),
               kernel_drops=sum(r["kernel_drops"] for r in recs if r["type"] == "receiver"))
    return got


def fast_scraped(prom, mport: int, rate_ms: float, seconds: float, tmp: str) -> dict:
    """One flow at 1/rate_ms packets per ms into a receiver Prometheus scrapes every second.
    The receiver runs here through the API, the sender is a CLI process (no shared GIL)."""
    port = free_port()
    tx_out = os.path.join(tmp, "tx.jsonl")
    rx = packet_flow.Probe(mode="receiver", local_addr=f"127.0.0.1:{port}",
                           duration=seconds + 4, rcvbuf=64 << 20, records=True,
                           prometheus_listen=f"127.0.0.1:{mport}").start()
    time.sleep(1.5)                         # scraped before the first packet
    subprocess.run(BASE + ["--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate",
                           str(rate_ms), "--size", "64", "--duration", str(seconds),
                           "--output", f"jsonl:{tx_out}"], check=True, env=ENV)
    result = rx.wait(60)
    (rsum,) = result.flows
    tsum = next(r for r in records(tx_out) if r["type"] == "summary")
    inst = f'instance="127.0.0.1:{mport}"'
    (series,) = prom.query(f"packet_flow_received_packets_total{{{inst}}}[2m]")
    scrape = prom.query(f"max_over_time(scrape_duration_seconds{{{inst}}}[2m])")
    return {"sent": tsum["sent"], "received": rsum["received"], "lost": rsum["lost"],
            "kernel_drops": sum(r["kernel_drops"] for r in result.records
                                if r["type"] == "receiver"),
            "stored_received": int(float(series["values"][-1][1])),
            "scrapes": len(series["values"]), "scrape_max_s": float(scrape[0]["value"][1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--flow-pps", type=float, default=100.0)
    ap.add_argument("--flow-seconds", type=float, default=8.0)
    ap.add_argument("--rate", type=float, default=0.000667, help="ms between packets (1.5M/s)")
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    proc = in_process(a.flows)
    p1, p2 = free_tcp_port(), free_tcp_port()
    with tempfile.TemporaryDirectory() as tmp, \
            PromServer(os.path.join(tmp, "prom"), [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"]) as prom:
        flows = flows_scraped(prom, p1, a.flows, a.flow_pps, a.flow_seconds, tmp)
        fast = fast_scraped(prom, p2, a.rate, a.seconds, tmp)
    print(f"render / serve, {a.flows} flows (in process): page {proc['size'] / 1e6:.1f} MB, "
          f"render {proc['render'] * 1e3:.0f} ms once per interval (of which the snapshot "
          f"in the probe {proc['snap'] * 1e3:.0f} ms, the rest in the rendering process), "
          f"GET /metrics median {proc['serve'] * 1e3:.1f} ms, max {proc['serve_max'] * 1e3:.1f} ms; "
          f"during a rendering median {proc['during'] * 1e3:.1f} ms, "
          f"max {proc['during_max'] * 1e3:.1f} ms")
    print(f"\n{a.flows} flows at {a.flow_pps:g} packets/s each, scraped by Prometheus every 1 s:")
    print("  " + ", ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v:,}"
                           for k, v in flows.items()))
    print(f"\none flow at --rate {a.rate} ms ({1 / a.rate / 1e3:.2f}M packets/s) for "
          f"{a.seconds:g} s, scraped by Prometheus every 1 s:")
    print("  " + ", ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v:,}"
                           for k, v in fast.items()))


if __name__ == "__main__":
    main()
