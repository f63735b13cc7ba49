"""Cost of packet authentication (HMAC-SHA-256, 16-byte tag) per packet, through the extension.

For each packet size, with and without a key:
- send: _io.Sender.send(64) in a loop (build, stamp, tag, one sendmmsg per 64 packets) to a
  loopback socket that is never read (the kernel drops on a full buffer; same for both);
- receive: a socket pre-filled with N keyed packets, emptied by _io.Receiver.pump/drain
  (recvmmsg, parse, and for the keyed receiver: verify the tag);
- Python: wire.tag() (hmac module) on the same bytes, for comparison.
Each figure is the best of --repeat runs, in ns per packet; "cost" is keyed minus unkeyed.
Bounded: --packets per run. Usage: python3 benchmarks/bench_auth.py [--packets 200000]
"""

import argparse
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..")]

from packet_flow import _io, sockets, wire  # noqa: E402

KEY = b"benchmark-key-32-bytes-long-1234"
SIZES = (48, 64, 256, 1400)


def send_ns(size, key, n):
    """ns per packet for Sender.send(64) batches."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = sockets.send_socket(socket.AF_INET)
    try:
        tx = _io.Sender(out.fileno(), sockets.dest_tuple(sink.getsockname(), socket.AF_INET),
                        session=1, size=size, key=key)
        t = time.perf_counter_ns()
        for _ in range(n // 64):
            tx.send(64)
        return (time.perf_counter_ns() - t) / (n // 64 * 64)
    finally:
        sink.close()
        out.close()


def recv_ns(size, key, n):
    """ns per packet for Receiver.pump + drain of n queued keyed packets."""
    rsock, _ = sockets.receive_socket(("127.0.0.1", 0), socket.AF_INET, 512 << 20, gro=False)
    out = sockets.send_socket(socket.AF_INET)
    try:
        tx = _io.Sender(out.fileno(), sockets.dest_tuple(rsock.getsockname(), socket.AF_INET),
                        session=1, size=size, key=KEY)
        for _ in range(n // 64):
            tx.send(64)
        n = n // 64 * 64
        rx = _io.Receiver(rsock.fileno(), capacity=1 << 18, key=key)
        got, bad = 0, 0
        t = time.perf_counter_ns()
        while got < n:
            if not rx.pump(_io.mono_ns() + 200_000_000, 1 << 16):
                break
            recs = rx.drain()
            got += len(recs)
            bad += int((recs["kind"] == _io.K_MALFORMED).sum())
        dt = time.perf_counter_ns() - t
        if got != n or bad:
            raise RuntimeError(f"received {got} of {n}, {bad} rejected (queue too small?)")
        return dt / n
    finally:
        rsock.close()
        out.close()


def python_ns(size, n):
    data = wire.encode_native(1, 2, 3, size=size, key=KEY)[:-wire.TAG]
    n = min(n, 100_000)
    t = time.perf_counter_ns()
    for _ in range(n):
        wire.tag(KEY, data)
    return (time.perf_counter_ns() - t) / n


def main(argv=None):
    """Print the table; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packets", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)

    def best(fn, *args):
        return min(fn(*args) for _ in range(a.repeat))

    print(f"{'bytes':>6} {'send':>8} {'send+key':>9} {'cost':>6} {'recv':>8} "
          f"{'recv+key':>9} {'cost':>6} {'py hmac':>8}   (ns per packet)")
    for size in SIZES:
        s0, s1 = best(send_ns, size, None, a.packets), best(send_ns, size, KEY, a.packets)
        r0, r1 = best(recv_ns, size, None, a.packets), best(recv_ns, size, KEY, a.packets)
        py = best(python_ns, size, a.packets)
        print(f"{size:>6} {s0:8.0f} {s1:9.0f} {s1 - s0:6.0f} {r0:8.0f} {r1:9.0f} {r1 - r0:6.0f} "
              f"{py:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
