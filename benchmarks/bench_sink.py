"""Points/s the InfluxDB sink sustains to a local VictoriaMetrics; prints a table.

Rows:
- `write, pre-formatted`: pre-joined line protocol (bytes) in chunks of SINK_CHUNK_POINTS,
  one synchronous influxdb-client write per chunk: the sink's writer path alone.
- `sink.packets()`: compat `latency` points end to end (hand-off queue, vectorised
  formatting, chunking, writing), cap off; timed until the counter `written` reaches N.
- `sink.record()`: interval records end to end (per-record formatting in Python).

Starts its own victoria-metrics on a free loopback port (tests/support/vmserver.py) unless --url
is given. Bounded: every row writes a fixed number of points.
- the probe at 1.5M packets/s while its receiver writes to the server (with --compat-points):
  packets sent, received, lost, kernel drops, and the `received` total the server stored.
  The receiver runs in this process through the API (docs/api.md), the sender is a CLI
  process.
Usage: python3 benchmarks/bench_sink.py [--points 2000000] [--url http://127.0.0.1:8428]
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests", "support"), os.path.join(HERE, "..")]

from vmserver import VMServer  # noqa: E402

import packet_flow  # noqa: E402
from packet_flow import config, defaults  # noqa: E402
from packet_flow.sinks.influx import InfluxSink  # noqa: E402
from packet_flow.sinks.lineproto import format_int_points  # noqa: E402


def lines(n: int, flow: int, t0: int) -> bytes:
    """n compat latency lines of one flow, 1 µs apart."""
    prefix = f"latency,destination=10.0.0.2:8000,source=10.0.0.{flow}:4000 value=".encode()
    return format_int_points(prefix, np.arange(n, dtype=np.int64) % 5000,
                             t0 + np.arange(n, dtype=np.int64) * 1000)


def bench_write(url: str, n: int, api: str) -> float:
    """Pre-formatted chunks, synchronous writes through the sink's 1.x or 2.x link: points/s."""
    from packet_flow.sinks.influxlink import V1Link, V2Link

    step = defaults.SINK_CHUNK_POINTS
    t0 = time.time_ns() - 3_600_000_000_000
    chunks = [lines(min(step, n - i), 1, t0 + i * 1000) for i in range(0, n, step)]
    timeout = defaults.SINK_HTTP_TIMEOUT_S
    link = (V1Link(url, "packet_flow", "", None, None, "x", False, timeout) if api == "v1"
            else V2Link(url, "packet_flow", "-", "x", False, timeout))
    start = time.perf_counter()
    for c in chunks:
        answer = link.write(c)
        assert answer.status == 204, answer
    rate = n / (time.perf_counter() - start)
    link.close()
    return rate


def wait_written(sink: InfluxSink, n: int, limit: float) -> None:
    end = time.monotonic() + limit
    while sink.counters["written"] < n and time.monotonic() < end:
        time.sleep(0.01)


def sink_config(url: str, spool: str, *options: str):
    """The sink's configuration as a run builds it (config.load, no environment): every
    option the sink reads has its default, however many the sink comes to read."""
    return config.load(["--influx-url", url, "--database", "packet_flow", "--token", "x",
                        "--flush-interval", "0.05", "--spool-dir", spool, *options], env={})


def bench_packets(url: str, spool: str, n: int, api: str = "auto") -> float:
    """InfluxSink.packets() in batches of 1024, cap off: points/s until all are written."""
    sink = InfluxSink(sink_config(url, spool, "--influx-api", api, "--compat-points",
                                  "--compat-max-pps", "0"))
    t0 = time.time_ns() - 7_200_000_000_000
    rx = t0 + np.arange(n, dtype=np.int64) * 1000
    owd = np.arange(n, dtype=np.int64) % 5_000_000
    start = time.perf_counter()
    for b in range(0, n, 1024):
        sink.packets("10.0.0.9:4000", "10.0.0.2:8000", rx[b:b + 1024], owd[b:b + 1024])
    wait_written(sink, n, 120)
    rate = sink.counters["written"] / (time.perf_counter() - start)
    sink.close()
    return rate


def bench_records(url: str, spool: str, n: int) -> float:
    """InfluxSink.record() of interval records (1000 flows, 25 fields each): records/s."""
    sink = InfluxSink(sink_config(url, spool))
    rec = {"type": "interval", "role": "receiver", "time": 1767225600_000000000,
           "destination": "10.0.0.2:8000", "session": "00112233aabbccdd", "interval_s": 1.0,
           "received": 1000, "lost": 1, "late": 0, "duplicates": 0, "malformed": 0,
           "loss_bursts": 1, "max_loss_burst": 1, "loss_percent": 0.1, "owd_min_us": 10.0,
           "owd_mean_us": 12.0, "owd_p50_us": 11.0, "owd_p90_us": 14.0, "owd_p99_us": 20.0,
           "owd_p999_us": 30.0, "owd_max_us": 40.0, "negative_owd": 0, "jitter_us": 1.5,
           "ipdv_mean_us": 1.0, "ipdv_p99_us": 5.0, "stalled": False, "closed": False}
    recs = [dict(rec, source=f"10.0.0.{i % 250}:{4000 + i % 4}",
                 time=1767225600_000000000 + i * 1_000_000)
            for i in range(n)]
    start = time.perf_counter()
    for r in recs:
        sink.record(r)
    wait_written(sink, n, 120)
    rate = sink.counters["written"] / (time.perf_counter() - start)
    sink.close()
    return rate


def probe_with_sink(vm, tmp: str, rate_ms: float, seconds: float) -> dict:
    """The probe at a high rate while its receiver writes to the server: interval points
    plus the capped per-packet compat points. The receiver runs here through the API, the
    sender is a CLI process (they share no GIL). Returns what was lost."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tx_out = os.path.join(tmp, "tx.jsonl")
    rx = packet_flow.Probe(mode="receiver", local_addr=f"127.0.0.1:{port}",
                           duration=seconds + 3, rcvbuf=64 << 20, influx_url=vm.url,
                           token="bench", compat_points=True,
                           spool_dir=os.path.join(tmp, "spool"), records=True).start()
    time.sleep(1.0)
    subprocess.run([sys.executable, "-m", "packet_flow", "--log-level", "warning", "--mode",
                    "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", str(rate_ms),
                    "--size", "64", "--duration", str(seconds), "--output", f"jsonl:{tx_out}"],
                   check=True)
    result = rx.wait()
    with open(tx_out, encoding="utf-8") as f:
        tsum = next(r for r in map(json.loads, f) if r["type"] == "summary")
    (rsum,) = result.flows
    n_intervals = sum(1 for r in result.records if r["type"] == "interval")
    stored = vm.export("packet_flow_received", min_samples=n_intervals)
    return {"sent": tsum["sent"], "received": rsum["received"], "lost": rsum["lost"],
            "kernel_drops": sum(r["kernel_drops"] for r in result.records
                                if r["type"] == "receiver"),
            "stored_received": int(sum(sum(x["values"]) for x in stored
                                       if x["metric"].get("destination") == f"127.0.0.1:{port}"))}


def main() -> None:
    """Parse options, run each row, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=2_000_000)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--url", help="an already running server (default: start victoria-metrics)")
    ap.add_argument("--probe-rate", type=float, default=0.000667,
                    help="ms between packets for the probe-while-writing row (1.5M packets/s)")
    ap.add_argument("--probe-seconds", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vm = None
        url = args.url
        if url is None:
            vm = VMServer(os.path.join(tmp, "vmdata"))
            vm.start()
            url = vm.url
        try:
            rows = [
                ("write 2.x, pre-formatted", args.points, bench_write(url, args.points, "v2")),
                ("write 1.x, pre-formatted", args.points, bench_write(url, args.points, "v1")),
                ("sink.packets() 2.x", args.points, bench_packets(url, tmp, args.points, "v2")),
                ("sink.packets() 1.x", args.points, bench_packets(url, tmp, args.points, "v1")),
                ("sink.record()", args.records, bench_records(url, tmp, args.records)),
            ]
            probe = probe_with_sink(vm, tmp, args.probe_rate, args.probe_seconds) if vm else None
        finally:
            if vm is not None:
                vm.stop()
    print(f"{'path':<24}{'points':>12}{'points/s':>14}")
    for name, n, rate in rows:
        print(f"{name:<24}{n:>12,}{rate:>14,.0f}")
    if probe:
        print(f"\nprobe at --rate {args.probe_rate} ms for {args.probe_seconds} s while its "
              f"receiver writes (interval + capped compat points):")
        print("  " + ", ".join(f"{k} {v:,}" for k, v in probe.items()))


if __name__ == "__main__":
    main()
