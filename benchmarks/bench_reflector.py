"""Reflector throughput on loopback: how many packets per second `--mode reflector` answers.

The reflector runs as the real CLI in a subprocess (ReflectorLoop: recvmmsg -> reflect ->
sendmmsg in the Cython core, per-flow accounting in Python per batch). This process blasts test
packets at it with large sendmmsg batches from one socket and counts the replies on the same
socket. The blaster sends UDP GSO super-datagrams (--segments per message) and receives with
UDP GRO, so that its own per-packet cost does not hide the reflector's. Two ways to blast:
- window: at most WINDOW packets outstanding (sent, not yet answered) - sustained throughput
  without overrunning the reflector's socket buffer;
- open: as fast as possible; the excess is dropped by the kernel and shows as lost.
Every run is bounded in time (--seconds) and packets (--max-packets). Reports the load average
and the reflector's CPU share, because the machine is shared.

    python3 benchmarks/bench_reflector.py [--seconds 3] [--wire native stamp] [--batch 256]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from _proc import free_port, wait_bound

from packet_flow import _io, sockets

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def blast(wire, mode, seconds, batch, segments, max_packets, window):
    port = free_port()
    out = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    refl = subprocess.Popen([sys.executable, "-m", "packet_flow", "--mode", "reflector",
                             "--local-addr", f"127.0.0.1:{port}", "--wire", wire,
                             "--duration", str(seconds + 3), "--interval", "1",
                             "--output", f"jsonl:{out}", "--log-level", "warning"], env=env)
    try:
        wait_bound(port)
        sock = sockets.send_socket(socket.AF_INET)
        sockets.set_rcvbuf(sock, 16 << 20)
        sock.setsockopt(socket.IPPROTO_UDP, _io.UDP_GRO_, 1)
        stamp = wire == "stamp"
        tx = _io.Sender(sock.fileno(), sockets.dest_tuple(("127.0.0.1", port), socket.AF_INET),
                        wire=_io.K_STAMP if stamp else _io.K_NATIVE, session=42,
                        size=_io.STAMP_SIZE if stamp else _io.REFLECTED_HEADER,
                        batch=max(1, batch // segments), segments=segments)
        rx = _io.Receiver(sock.fileno(), batch=batch, capacity=1 << 16,
                          mode=_io.K_STAMP_REFLECTED if stamp else _io.K_NATIVE)
        cpu0 = cpu_s(refl.pid)
        replies = 0
        t0 = time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end and tx.sent < max_packets:
            if mode == "open" or tx.sent - replies + tx.per_call <= window:
                tx.send(tx.per_call)
            now = _io.mono_ns()
            # a pump whose deadline has passed does one recvmmsg: repeat while batches come full
            while True:
                got = rx.pump(now)
                replies += got
                if got < batch:
                    break
            rx.drain()
        elapsed = time.monotonic() - t0
        drain_end = _io.mono_ns() + 300_000_000
        while _io.mono_ns() < drain_end and replies < tx.sent:
            replies += rx.pump(min(drain_end, _io.mono_ns() + 20_000_000))
            rx.drain()
        cpu = cpu_s(refl.pid) - cpu0
        sent = tx.sent
        sock.close()
        refl.wait(timeout=seconds + 20)
        with open(out) as f:
            recs = [json.loads(line) for line in f]
        reflected = sum(r.get("reflected", 0) for r in recs if r["type"] == "receiver")
    finally:
        if refl.poll() is None:
            refl.kill()
            refl.wait()
        os.unlink(out)
    return {"wire": wire, "mode": mode, "sent": sent, "reflected": reflected, "replies": replies,
            "seconds": elapsed, "pps": replies / elapsed, "cpu": 100 * cpu / elapsed}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--segments", type=int, default=16, help="GSO segments per message")
    ap.add_argument("--window", type=int, default=8192)
    ap.add_argument("--max-packets", type=int, default=20_000_000)
    ap.add_argument("--wire", nargs="+", default=["native", "stamp"])
    ap.add_argument("--mode", nargs="+", default=["window", "open"])
    args = ap.parse_args()
    load0 = os.getloadavg()
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"{os.cpu_count()} CPUs; blaster: {args.batch} packets per sendmmsg in GSO "
          f"messages of {args.segments}, window {args.window}")
    print(f"{'wire':7} {'mode':7} {'sent':>10} {'reflected':>10} {'replies':>10} "
          f"{'lost %':>7} {'replies/s':>11} {'refl CPU %':>10}")
    for wire in args.wire:
        for mode in args.mode:
            r = blast(wire, mode, args.seconds, args.batch, args.segments, args.max_packets,
                      args.window)
            lost = 100 * (r["sent"] - r["replies"]) / r["sent"] if r["sent"] else 0.0
            print(f"{r['wire']:7} {r['mode']:7} {r['sent']:>10} {r['reflected']:>10} "
                  f"{r['replies']:>10} {lost:>7.2f} {r['pps']:>11,.0f} {r['cpu']:>10.0f}")
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
