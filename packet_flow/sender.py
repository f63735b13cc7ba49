"""The send side: schedule, catch-up, and the final packet.

Slots lie on an absolute CLOCK_MONOTONIC grid (start + k * interval), so the schedule
never drifts and a wall-clock step neither stops nor bursts it; packets carry wall-clock
stamps and records wall-clock times (_io.wall_of). The Cython Sender sleeps to each
deadline (precise: sleep, then spin the last SPIN_NS; economy: sleep only) and sends due
slots in one sendmmsg; intervals shorter than GSO_BELOW_NS are sent as UDP GSO messages
sized by gso_segments from the packet size and the route's MTU (a packet over the MTU: one
warning at start, no GSO). A GSO message the kernel refuses anyway is sent again one
datagram per message (the Sender's gso_errno; one warning). Lateness of every send stamp
behind its slot is collected per interval; slots skipped after a stall are counted, never
sent late in a burst larger than one batch. A signal cuts a slice short: the schedule goes
on at the next slot, never at the next record tick. Records: packet_flow.sender_records;
the thread's scheduling policy and timer slack are restored when run() ends.

With --rtt the same socket receives the reflections (packet_flow.sender_replies), pumped
between schedule slices (slices of at most RTT_SLICE_NS; it waits for replies in poll()
only while no slot is due within PUMP_MARGIN_NS, else it only reads what is queued); the
constants are in packet_flow.defaults. Native packets are at least REFLECTED_HEADER bytes
then, so reflections are as long as the test packets.
"""

import contextlib
import ctypes
import logging
import os
import secrets
import socket

from packet_flow import _io, clock_error, defaults, names, records, sockets
from packet_flow.errors import ConfigError
from packet_flow.sender_records import SenderRecords, warm_up
from packet_flow.sender_replies import Replies

log = logging.getLogger(__name__)

UDP_IP_HEADERS = {socket.AF_INET: 8 + 20, socket.AF_INET6: 8 + 40}
IP_MAX = 65535              # an IP datagram's largest length field (IPv6: payload only)


def packet_bytes(wire, size, keyed):
    """The UDP payload of every packet: --size, at least the wire format's header (the
    Cython Sender applies the same floor)."""
    if wire == "legacy":
        return _io.LEGACY_SIZE
    if wire == "stamp":
        return max(size, _io.STAMP_SIZE)
    return max(size, _io.HEADER + (_io.TAG if keyed else 0))


def gso_segments(size, mtu, family, most=defaults.GSO_SEGMENTS):
    """Packets per UDP GSO message: at most `most` (the kernel's UDP_MAX_SEGMENTS is 64 on
    older kernels), at most 64 KiB of payload per message, and 1 (no GSO) when one packet
    with its UDP/IP headers exceeds the path MTU `mtu` (None = unknown): the kernel refuses
    a GSO segment over the MTU, where it fragments a single datagram."""
    headers = UDP_IP_HEADERS[family]
    if mtu and size + headers > mtu:
        return 1
    payload = IP_MAX - (headers if family == socket.AF_INET else 8)
    return max(1, min(most, payload // size))


def realtime_priority():
    """SCHED_FIFO for this thread, so a busy machine cannot delay the wake-up of a slot
    (needs CAP_SYS_NICE; without it the timer stays precise on an idle machine only).
    Used only where the spin is a small share of the interval, so it cannot starve others."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(defaults.REALTIME_PRIORITY))
        log.debug("sender timer: SCHED_FIFO priority %d", defaults.REALTIME_PRIORITY)
        return True
    except (OSError, AttributeError) as exc:
        log.info("sender timer without real-time priority (%s); a busy machine will "
                 "delay some slots", exc)
        return False


_libc = ctypes.CDLL(None, use_errno=True)
PR_GET_TIMERSLACK = 30


@contextlib.contextmanager
def precise_timer(realtime):
    """This thread's timer slack at TIMER_SLACK_NS, and SCHED_FIFO when `realtime`, for the
    block; both as they were afterwards (a library call leaves no trace)."""
    slack = _libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    try:
        _io.set_timerslack(defaults.TIMER_SLACK_NS)
    except OSError as exc:
        log.debug("timer slack unchanged: %s", exc)
        slack = -1
    policy = (os.sched_getscheduler(0), os.sched_getparam(0))
    if realtime:
        realtime_priority()
    try:
        yield
    finally:
        if realtime and os.sched_getscheduler(0) != policy[0]:
            os.sched_setscheduler(0, *policy)
        if slack > 0:
            _io.set_timerslack(slack)


class SenderLoop:
    """Sends to cfg.remote on the cfg.rate_ms grid until stop(), the deadline or cfg.count."""

    def __init__(self, cfg, emit, sock=None, size=None, on_rtt=None):
        """`on_rtt(source, destination, rtt_ns)` receives each batch of round-trip times."""
        self.cfg = cfg
        self.sock = sock or sockets.send_socket(cfg.remote.family, cfg.dscp, cfg.ttl)
        self.session = secrets.randbits(64)
        self.interval_ns = max(1, round(cfg.rate_ms * 1e6))
        size = cfg.size if size is None else size
        self.replies = None
        if cfg.rtt:
            if cfg.wire == "legacy":
                raise ConfigError("--rtt needs --wire native or stamp: legacy packets have no "
                                  "room for reflector timestamps")
            if cfg.wire == "native":
                size = max(size, _io.REFLECTED_HEADER + (_io.TAG if cfg.key else 0))
            self.replies = Replies(self.sock, cfg, self.session, on_rtt)
        self.tx = self._core(packet_bytes(cfg.wire, size, bool(cfg.key)))
        self.source = None
        self.stopping = False
        # the signal handler only raises skips_asked, the loop only skips_done: a signal
        # that lands in the middle of the loop's update cannot be lost
        self.skips_asked = self.skips_done = 0
        self.records = SenderRecords(self.tx, self._head, emit, self.replies)

    def _core(self, size):
        """The Cython Sender: GSO segments from the path MTU, lateness sampling, catch-up."""
        cfg = self.cfg
        self.mtu = sockets.path_mtu(cfg.remote)
        family = cfg.remote.family
        if self.mtu and size + UDP_IP_HEADERS[family] > self.mtu:
            log.warning("--size %d: packets of %d bytes with their UDP/IP headers exceed the "
                        "path MTU %d to %s (%d bytes fit): the kernel fragments every packet",
                        cfg.size, size + UDP_IP_HEADERS[family], self.mtu, cfg.remote,
                        self.mtu - UDP_IP_HEADERS[family])
        segments = 1
        if self.interval_ns < defaults.GSO_BELOW_NS and cfg.wire != "legacy" \
                and sockets.gso_supported(self.sock):
            segments = gso_segments(size, self.mtu, family)
        tx = _io.Sender(self.sock.fileno(),
                        sockets.dest_tuple(cfg.remote.sockaddr, cfg.remote.family),
                        wire=_io.KINDS.index(cfg.wire), session=self.session, size=size,
                        batch=cfg.batch, segments=segments, key=cfg.key,
                        name=names.in_band_name(cfg))
        if cfg.wire == "stamp":
            tx.error_estimate = clock_error.estimate()
        # lateness of a systematic sample of at most LATENESS_SAMPLES_PER_S slots a second,
        # so the percentiles cost the schedule nothing at a million packets a second
        tx.lat_every = max(1, round(1e9 / self.interval_ns / defaults.LATENESS_SAMPLES_PER_S))
        tx.catchup_max = max(1, defaults.CATCHUP_NS // self.interval_ns)
        return tx

    @property
    def sent(self):
        """Probe packets sent (a legacy goodbye is not one)."""
        return self.records.sent

    @property
    def session_hex(self):
        return f"{self.session:016x}" if self.cfg.wire != "legacy" else "legacy"

    def stop(self):
        self.stopping = True

    def skip(self):
        """SIGUSR1: leave one sequence number unused (deliberate loss)."""
        self.skips_asked += 1

    def _head(self, kind, now_ns, since_ns):
        cfg = self.cfg
        return records.header(kind, "sender", _io.wall_of(now_ns), now_ns - since_ns,
                              self.source, str(cfg.remote), self.session_hex,
                              source_name=names.node_name(cfg),
                              destination_name=cfg.remote.host, wire=cfg.wire)

    def run(self, deadline_ns=0):
        """Follow the schedule; then send the final packet and emit the summary."""
        # first calls (route lookup, lazy imports) cost milliseconds: before the first slot
        self.source = sockets.local_name(self.sock, self.cfg.remote)
        if self.replies is not None:
            self.replies.source = self.source
        warm_up()
        with precise_timer(self.interval_ns >= defaults.REALTIME_MIN_INTERVAL_NS):
            start = _io.mono_ns() + 1_000_000
            self.tx.start(start, self.interval_ns, defaults.SPIN_NS)
            ticks = records.TickGrid(start, int(self.cfg.interval * 1e9))
            self._schedule(start, ticks, deadline_ns)
            self._final(start)
        now = _io.mono_ns()
        self.records.interval(now, ticks.last_ns)
        self.records.summary(now, start)

    def _slot(self, start):
        """When the next slot is due."""
        return start + self.tx.k * self.interval_ns

    def _schedule(self, start, ticks, deadline_ns):
        cfg, tx = self.cfg, self.tx
        precise = cfg.timer == "precise"
        # A slice ends half a slot after the record tick, so the tick's Python work runs
        # right after a slot is sent, never on top of the next one.
        half = min(self.interval_ns, ticks.interval_ns) // 2
        probes = self._probes()
        while not self.stopping:
            until = ticks.next_ns + half
            if deadline_ns:
                until = min(until, deadline_ns)
            if self.replies is not None:
                until = min(until, _io.mono_ns() + defaults.RTT_SLICE_NS)
            limit = probes - tx.sent if cfg.count else 0
            if limit or not cfg.count:
                tx.run(until, limit, precise)
                self.records.collect()
            if self.replies is not None:
                self.replies.pump(min(until, self._slot(start)) - defaults.PUMP_MARGIN_NS)
            skips = self.skips_asked - self.skips_done
            if skips:
                self.skips_done += skips
                tx.skip_sequence(skips)
                log.info("skipped %d sequence number(s) on request", skips)
            now = _io.mono_ns()
            # wait for the tick only when no slot comes first: tx.run also returns early, on
            # a signal (SIGUSR1) or at --count, and the slots before the tick are then still
            # to be sent
            if now < ticks.next_ns <= self._slot(start) and not self.stopping:
                _io.sleep_until(ticks.next_ns)
                now = _io.mono_ns()
            if now >= ticks.next_ns:
                self.records.interval(now, ticks.tick(now))
            if (cfg.count and tx.sent >= probes) or (deadline_ns and now >= deadline_ns):
                break

    def _probes(self):
        """--count N: the N-th packet is the final one, sent on its own slot by _final(); a
        legacy FINAL (the Rust original's goodbye) is no probe: it follows N probes and
        carries the next, unsent sequence. 0 without --count."""
        cfg = self.cfg
        return cfg.count - (cfg.wire != "legacy") if cfg.count else 0

    def _final(self, start):
        if self.cfg.count and self.tx.sent == self._probes() and not self.stopping:
            _io.sleep_until(self._slot(start), defaults.SPIN_NS)
        self.tx.send(1, final=True)
        self.records.goodbye = int(self.cfg.wire == "legacy")
        if self.replies is not None:
            self.replies.last(self.tx.seq)

    def close(self):
        self.sock.close()
