#!/usr/bin/env python3
"""Batch I/O core throughput on loopback: 64-byte packets, sender and receiver in separate
processes pinned to different cores, sendmmsg batch 1/8/64 and UDP GSO; receiver CPU per
packet (core only, and core + flow analysis); the stamp-to-kernel skew by batch size; and
iperf3 / sockperf on the same machine where installed. Prints tables; not a test.

    python benchmarks/bench_io.py [--packets 2000000] [--seconds 4]
"""

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import subprocess
import time

import numpy as np

from packet_flow import _io, defaults, sockets

SIZE = 64


def pin(core):
    try:
        os.sched_setaffinity(0, {core % os.cpu_count()})
    except OSError:
        pass


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def receiver(port_q, done, result_q, analyse):
    pin(1)
    sock, gro = sockets.receive_socket(("127.0.0.1", 0), socket.AF_INET, 64 << 20)
    rx = _io.Receiver(sock.fileno(), capacity=defaults.RING_CAPACITY)
    rx.coalesce_ns = defaults.RECEIVE_COALESCE_NS       # as the probe's receiver does
    table = None
    if analyse:
        from packet_flow.flows import FlowTable
        table = FlowTable("bench", lambda rec: None, 5, 60, defaults.SEQ_WINDOW)
    port_q.put(sock.getsockname()[1])
    got, owd, c0, t_first, t_last = 0, [], None, None, None
    idle_until = None
    while True:
        now = _io.mono_ns()
        rx.pump(now + 20_000_000, defaults.RING_CAPACITY // 4)
        recs = rx.drain()
        if len(recs):
            t_last = time.perf_counter()
            if c0 is None:
                c0, t_first = cpu_s(), t_last
            got += len(recs)
            if table is not None:
                table.ingest(recs, _io.mono_ns())
            owd.append((recs["rx_ns"] - recs["tx_ns"])[::97])
            idle_until = None
        elif done.is_set():
            idle_until = idle_until or time.perf_counter() + 0.3
            if time.perf_counter() > idle_until:
                break
    cpu = cpu_s() - (c0 or cpu_s())
    owd = np.concatenate(owd) if owd else np.zeros(1)
    result_q.put({"received": got, "cpu_s": cpu, "kernel_drops": rx.kernel_drops,
                  "overwritten": rx.overwritten, "gro": gro,
                  "owd_p50_us": float(np.percentile(owd, 50)) / 1e3,
                  "owd_p99_us": float(np.percentile(owd, 99)) / 1e3,
                  "wall_s": (t_last or 0) - (t_first or 0)})


def sender(port, batch, segments, packets, seconds, result_q):
    pin(0)
    sock = sockets.send_socket(socket.AF_INET)
    tx = _io.Sender(sock.fileno(), sockets.dest_tuple(("127.0.0.1", port), socket.AF_INET),
                    session=1, size=SIZE, batch=batch, segments=segments)
    per = batch * segments
    c0, t0 = cpu_s(), time.perf_counter()
    end = t0 + seconds
    while tx.sent < packets and time.perf_counter() < end:
        tx.send(min(per, packets - tx.sent))
    wall = time.perf_counter() - t0
    result_q.put({"sent": tx.sent, "wall_s": wall, "cpu_s": cpu_s() - c0})


def one(batch, segments, packets, seconds, analyse=False):
    port_q, result_q, done = mp.Queue(), mp.Queue(), mp.Event()
    rp = mp.Process(target=receiver, args=(port_q, done, result_q, analyse))
    rp.start()
    port = port_q.get(timeout=10)
    sq = mp.Queue()
    sp = mp.Process(target=sender, args=(port, batch, segments, packets, seconds, sq))
    sp.start()
    s = sq.get(timeout=seconds + 30)
    sp.join()
    done.set()
    r = result_q.get(timeout=30)
    rp.join()
    return s, r


def peer_iperf3(seconds):
    if not shutil.which("iperf3"):
        return None
    port = 15201
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port), "-A", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-b", "0",
                              "-l", str(SIZE), "-t", str(seconds), "-A", "0", "-J"],
                             capture_output=True, text=True, timeout=seconds + 20)
        end = json.loads(out.stdout)["end"]["sum"]
        return {"pps": end["packets"] / end["seconds"], "loss_pct": end["lost_percent"]}
    except (ValueError, KeyError, subprocess.TimeoutExpired):
        return None
    finally:
        srv.kill()
        srv.wait()


def peer_sockperf(seconds):
    if not shutil.which("sockperf"):
        return None
    port = 15202
    srv = subprocess.Popen(["taskset", "-c", "1", "sockperf", "server", "-i", "127.0.0.1",
                            "-p", str(port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = subprocess.run(["taskset", "-c", "0", "sockperf", "throughput", "-i", "127.0.0.1",
                              "-p", str(port), "-m", str(SIZE), "-t", str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 20).stdout
        for line in out.splitlines():
            if "Summary: Message Rate is" in line:
                return {"pps": float(line.split("is")[1].split("[")[0]), "loss_pct": None}
    except subprocess.TimeoutExpired:
        return None
    finally:
        srv.kill()
        srv.wait()
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    print(f"loopback, {SIZE}-byte packets, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'path':24} {'send pps':>10} {'recv pps':>10} {'lost':>7} {'tx µs/pkt':>9} "
          f"{'rx µs/pkt':>9} {'owd p50 µs':>10} {'owd p99 µs':>10}")
    best = 0.0
    rows = [("sendmmsg batch 1", 1, 1, False), ("sendmmsg batch 8", 8, 1, False),
            ("sendmmsg batch 64", 64, 1, False), ("batch 64 + analysis", 64, 1, True),
            ("GSO 64x64 (+GRO)", 4, 64, False), ("GSO + analysis", 4, 64, True)]
    for name, batch, segs, analyse in rows:
        s, r = one(batch, segs, args.packets, args.seconds, analyse)
        lost = s["sent"] - r["received"]
        pps = s["sent"] / s["wall_s"]
        if not segs > 1:
            best = max(best, pps if lost == 0 else 0)
        print(f"{name:24} {pps:>10,.0f} {r['received'] / max(r['wall_s'], 1e-9):>10,.0f} "
              f"{lost:>7} {s['cpu_s'] / s['sent'] * 1e6:>9.3f} "
              f"{r['cpu_s'] / max(r['received'], 1) * 1e6:>9.3f} {r['owd_p50_us']:>10.1f} "
              f"{r['owd_p99_us']:>10.1f}")
    print()
    print("peers on the same machine (same 64-byte payload):")
    for name, fn in (("iperf3 -u -b 0", peer_iperf3), ("sockperf throughput", peer_sockperf)):
        res = fn(int(args.seconds))
        if res is None:
            print(f"  {name:22} not installed or failed")
            continue
        loss = "" if res["loss_pct"] is None else f", loss {res['loss_pct']:.2f} %"
        print(f"  {name:22} {res['pps']:>10,.0f} pps{loss}; packet-flow sendmmsg/64 "
              f"(0 loss) = {best / res['pps']:.2f}x")


if __name__ == "__main__":
    main()
