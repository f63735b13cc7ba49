"""A deterministic UDP relay for tests: an impaired link made of one socket and one loop.

Every datagram received on `listen` is forwarded to `forward` from the same socket. The
impairments follow a fixed schedule on the arrival index i (0, 1, 2, ...), never on timing,
so the counts a receiver must report are known exactly in advance (see `plan`):
- delay: datagram i leaves `delay_ns` after its kernel receive timestamp (SO_TIMESTAMPNS);
- reorder: when i % reorder_every == reorder_at, datagram i is held back and sent right
  after datagram i + reorder_by (so it arrives `reorder_by` places late);
- duplicate: when i % dup_every == dup_at (and i is not reordered), datagram i is sent twice.
Precision: the loop waits for each send deadline with packet_flow._io.sleep_until (absolute
CLOCK_MONOTONIC deadline, nanosleep, then a spin of the last SPIN_NS without the GIL), never
time.sleep; its own lateness behind every deadline is part of the statistics it writes.
Run it as a process (`python3 tests/support/relay.py --help`), so no other thread holds the GIL when
a deadline comes; on a busy machine give it `--rt-priority` (SCHED_FIFO, root only), because
a CPU-bound neighbour otherwise delays its wake-ups by whole scheduler slices (measured:
p99 lateness 125 ms with two other processes spinning on the two cores).
It stops after `idle_s` without traffic (once traffic started) or `max_s`. It is a Python
loop per datagram: meant for test rates of a few thousand datagrams per second.
"""

import argparse
import collections
import json
import os
import select
import socket
import struct
import sys

import numpy as np

from packet_flow import _io

SPIN_NS = 200_000           # busy-wait the last 200 µs before a deadline
WAKE_NS = 1_000_000         # stop polling the socket this long before the next deadline
SO_TIMESTAMPNS = 35         # == SCM_TIMESTAMPNS on Linux
MAX_DATAGRAM = 65535


class Schedule(collections.namedtuple(
        "Schedule", "reorder_every reorder_at reorder_by dup_every dup_at", defaults=(0,) * 5)):
    """Which arrival indexes are reordered or duplicated; 0 in *_every turns a rule off."""

    def reordered(self, i):
        return bool(self.reorder_every) and i % self.reorder_every == self.reorder_at

    def duplicated(self, i):
        return bool(self.dup_every) and i % self.dup_every == self.dup_at \
            and not self.reordered(i)

    def check(self):
        if self.reorder_every and not 0 < self.reorder_by < self.reorder_every:
            raise ValueError("reorder_by must be 1..reorder_every-1")
        return self


def plan(n, schedule):
    """Send order (list of arrival indexes, repeats for duplicates) for n arrivals."""
    schedule.check()
    out, held = [], {}
    for i in range(n):
        if schedule.reordered(i):
            held[i + schedule.reorder_by] = i
            continue
        out.append(i)
        if schedule.duplicated(i):
            out.append(i)
        if i in held:
            out.append(held.pop(i))
    out.extend(sorted(held.values()))      # stream ended first: flushed at the end
    return out


def expected(n, schedule):
    """(late, duplicates) a receiver must count when n in-order datagrams, with distinct
    increasing sequence numbers, cross the relay and every held one gets released."""
    order = plan(n, schedule)
    highest, seen, late, dups = -1, set(), 0, 0
    for i in order:
        if i in seen:
            dups += 1
        elif i < highest:
            late += 1
        seen.add(i)
        highest = max(highest, i)
    return late, dups


def _rx_stamp(ancdata, fallback):
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            return sec * 1_000_000_000 + nsec
    return fallback


class Relay:
    """The relay loop on a bound socket; run() returns the statistics dict."""

    def __init__(self, listen, forward, delay_ns=0, schedule=None, idle_s=2.0, max_s=120.0):
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setblocking(False)
        self.sock.bind(listen)
        self.forward = forward
        self.delay_ns = delay_ns
        self.schedule = (schedule or Schedule()).check()
        self.idle_ns = int(idle_s * 1e9)
        self.max_ns = int(max_s * 1e9)

    @property
    def port(self):
        return self.sock.getsockname()[1]

    def run(self):
        """Relay until idle or max_s; returns counters and the lateness of our sends."""
        sched, queue, held = self.schedule, collections.deque(), {}
        lateness = []
        received = sent = 0
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        start = last_rx = _io.mono_ns()
        try:
            _io.set_timerslack(1)
        except OSError:
            pass
        while True:
            now = _io.mono_ns()
            if queue and queue[0][0] - now <= WAKE_NS:
                deadline, data = queue.popleft()
                late = _io.sleep_until(deadline, SPIN_NS)
                self.sock.sendto(data, self.forward)
                sent += 1
                lateness.append(late if late is not None else _io.mono_ns() - deadline)
                continue
            if received and now - last_rx > self.idle_ns and not queue:
                if not held:
                    break
                for i in sorted(held):         # the stream ended before their release
                    queue.append((now, held.pop(i)))
                continue
            if now - start > self.max_ns:
                break
            wait_ns = (queue[0][0] - WAKE_NS - now) if queue else 50_000_000
            if poller.poll(max(0, wait_ns // 1_000_000)):
                for _ in range(16):
                    try:
                        data, anc, _flags, _addr = self.sock.recvmsg(
                            MAX_DATAGRAM, socket.CMSG_SPACE(16))
                    except BlockingIOError:
                        break
                    # the kernel stamp is wall-clock time; deadlines are monotonic
                    wall = _io.wall_ns()
                    deadline = _io.mono_ns() - (wall - _rx_stamp(anc, wall)) + self.delay_ns
                    i = received
                    received += 1
                    last_rx = _io.mono_ns()
                    if sched.reordered(i):
                        held[i + sched.reorder_by] = data
                        continue
                    queue.append((deadline, data))
                    if sched.duplicated(i):
                        queue.append((deadline, data))
                    if i in held:
                        queue.append((deadline, held.pop(i)))
        lat = np.asarray(lateness, np.int64)
        stats = {"received": received, "sent": sent}
        if lat.size:
            p50, p99 = np.percentile(lat, [50, 99])
            stats.update(late_p50_ns=int(p50), late_p99_ns=int(p99), late_max_ns=int(lat.max()))
        return stats

    def close(self):
        self.sock.close()


def _addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv=None):
    """Command line: run one relay, print its port on stdout, then write stats to --stats."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=_addr, default=("127.0.0.1", 0))
    p.add_argument("--forward", type=_addr, required=True)
    p.add_argument("--delay-ms", type=float, default=0.0)
    for name in Schedule._fields:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=0)
    p.add_argument("--idle-s", type=float, default=2.0)
    p.add_argument("--max-s", type=float, default=120.0)
    p.add_argument("--stats", default="-")
    p.add_argument("--rt-priority", type=int, default=0,
                   help="SCHED_FIFO priority (1..99, needs root); 0 = normal scheduling")
    a = p.parse_args(argv)
    if a.rt_priority:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(a.rt_priority))
    schedule = Schedule(*(getattr(a, name) for name in Schedule._fields))
    relay = Relay(a.listen, a.forward, int(a.delay_ms * 1e6), schedule, a.idle_s, a.max_s)
    print(relay.port, flush=True)
    try:
        stats = relay.run()
    finally:
        relay.close()
    text = json.dumps(stats)
    if a.stats == "-":
        print(text, flush=True)
    else:
        with open(a.stats, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
