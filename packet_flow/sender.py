"""The send side: schedule, catch-up, final packet, and sender records.

Slots lie on an absolute CLOCK_MONOTONIC grid (start + k * interval), so the schedule
never drifts and a wall-clock step neither stops nor bursts it; packets carry wall-clock
stamps and records wall-clock times (_io.wall_of). The Cython Sender sleeps to each
deadline (precise: sleep, then spin the last SPIN_NS; economy: sleep only) and sends due
slots in one sendmmsg; intervals shorter than GSO_BELOW_NS are sent as UDP GSO messages
sized by gso_segments from the packet size and the route's MTU (a packet over the MTU: one
warning at start, no GSO). A GSO message the kernel refuses anyway is sent again one
datagram per message (the Sender's gso_errno; one warning). Lateness of every send stamp
behind its slot is collected per interval; slots skipped after a stall are counted, never
sent late in a burst larger than one batch.

With --rtt the same socket receives the reflections: an _io.Receiver on the sender's fd is
pumped between schedule slices (slices of at most RTT_SLICE_NS; it waits for replies in
poll() only while no slot is due within PUMP_MARGIN_NS, else it only reads what is queued),
and the replies feed packet_flow.rtt.RttStats. After the final packet the sender waits up to
RTT_WAIT_NS for the last replies (less when the final packet's reply arrives); the constants
are in packet_flow.defaults. Native packets are at least REFLECTED_HEADER bytes then, so
reflections are as long as the test packets.
"""

import logging
import os
import secrets
import socket

import numpy as np

from packet_flow import _io, clock_error, defaults, names, rtt, sockets
from packet_flow.errors import ConfigError
from packet_flow.histogram import LogHistogram

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


def _late_stats(lat_ns):
    if not len(lat_ns):
        return {"timer_late_p50_us": None, "timer_late_p99_us": None, "timer_late_max_us": None}
    p50, p99 = np.percentile(lat_ns, [50, 99])
    return {"timer_late_p50_us": round(float(p50) / 1e3, 3),
            "timer_late_p99_us": round(float(p99) / 1e3, 3),
            "timer_late_max_us": round(float(lat_ns.max()) / 1e3, 3)}


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


class SenderLoop:
    """Sends to cfg.remote on the cfg.rate_ms grid until stop(), the deadline or cfg.count."""

    def __init__(self, cfg, emit, sock=None, size=None, on_rtt=None):
        """`on_rtt(source, destination, rtt_ns)` receives each batch of round-trip times."""
        self.cfg = cfg
        self.emit = emit
        self.on_rtt = on_rtt
        self.sock = sock or sockets.send_socket(cfg.remote.family, cfg.dscp, cfg.ttl)
        self.session = secrets.randbits(64)
        self.interval_ns = max(1, round(cfg.rate_ms * 1e6))
        size = cfg.size if size is None else size
        self.rx = self.rtt = None
        if cfg.rtt:
            if cfg.wire == "legacy":
                raise ConfigError("--rtt needs --wire native or stamp: legacy packets have no "
                                  "room for reflector timestamps")
            if cfg.wire == "native":
                size = max(size, _io.REFLECTED_HEADER + (_io.TAG if cfg.key else 0))
            self._rtt_socket()
        size = packet_bytes(cfg.wire, size, bool(cfg.key))
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
        self.tx = _io.Sender(self.sock.fileno(),
                             sockets.dest_tuple(cfg.remote.sockaddr, cfg.remote.family),
                             wire=_io.KINDS.index(cfg.wire), session=self.session, size=size,
                             batch=cfg.batch, segments=segments, key=cfg.key,
                             name=names.in_band_name(cfg))
        if cfg.wire == "stamp":
            self.tx.error_estimate = clock_error.estimate()
        # lateness of a systematic sample of at most LATENESS_SAMPLES_PER_S slots a second,
        # so the percentiles cost the schedule nothing at a million packets a second
        self.tx.lat_every = max(1, round(1e9 / self.interval_ns / defaults.LATENESS_SAMPLES_PER_S))
        self.tx.catchup_max = max(1, defaults.CATCHUP_NS // self.interval_ns)
        self.source = None
        self.stopping = False
        self.skip_pending = 0
        self.goodbye = 0
        self.hist = LogHistogram()       # the run's lateness, for the summary percentiles
        self.late_min = self.late_max = 0
        self.lat_parts = []
        self._last = (0, 0, 0, 0)
        self.gso_warned = False

    def _rtt_socket(self):
        """Turn on kernel receive timestamps (T4) on the send socket; attach a Receiver."""
        cfg = self.cfg
        self.sock.setsockopt(socket.SOL_SOCKET, _io.SO_TIMESTAMPNS_, 1)
        if cfg.rcvbuf:
            sockets.set_rcvbuf(self.sock, cfg.rcvbuf)
        stamp = cfg.wire == "stamp"
        self.rx = _io.Receiver(self.sock.fileno(), batch=cfg.batch, capacity=defaults.RTT_RING,
                               key=cfg.key if not stamp else None,
                               mode=_io.K_STAMP_REFLECTED if stamp else _io.K_NATIVE)
        self.rtt = rtt.RttStats(seq_bits=32 if stamp else 64)
        self.final_answered = False
        self.unanswered_s = 0.0

    def _pump_replies(self, wait_until_ns=0):
        """Read the queued replies (waiting for more until wait_until_ns when that is in the
        future) and account them. One numpy pass per drained batch."""
        now = _io.mono_ns()
        if wait_until_ns > now:
            self.rx.pump(wait_until_ns, defaults.RTT_RING // 2)
        # a pump whose deadline has passed does one recvmmsg: repeat while batches come full
        for _ in range(defaults.RTT_RING // 2 // self.rx.batch):
            if self.rx.pump(now) < self.rx.batch:
                break
        recs = self.rx.drain()
        if not len(recs):
            return
        if self.cfg.wire == "stamp":
            ok = (recs["kind"] == _io.K_STAMP_REFLECTED) & np.isin(recs["session"], (0, self.session & 0xFFFF))
        else:
            ok = ((recs["kind"] == _io.K_NATIVE) & ((recs["flags"] & _io.FLAG_REFLECTED) != 0)
                  & (recs["session"] == self.session))
        recs = recs[ok]
        if not len(recs):
            return
        self.rtt.update(recs["seq"], recs["r_seq"], recs["tx_ns"], recs["t2_ns"],
                        recs["t3_ns"], recs["rx_ns"], recs["drops"])
        if self.on_rtt is not None:
            self.on_rtt(self.source, str(self.cfg.remote),
                        recs["rx_ns"] - recs["tx_ns"] - (recs["t3_ns"] - recs["t2_ns"]))
        if self.cfg.wire == "native":
            self.final_answered |= bool((recs["flags"] & _io.FLAG_FINAL).any())

    def _last_replies(self):
        """After the final packet: wait for the replies still on their way, then settle."""
        end = _io.mono_ns() + defaults.RTT_WAIT_NS
        while _io.mono_ns() < end:
            # the highest answered sequence is unwrapped from 0, so it compares to tx.seq
            if self.final_answered or self.rtt.highest >= self.tx.seq - 1:
                break
            self._pump_replies(min(end, _io.mono_ns() + defaults.RTT_SLICE_NS))
        self._pump_replies()
        self.rtt.close()

    @property
    def sent(self):
        """Probe packets sent (a legacy goodbye is not one)."""
        return self.tx.sent - self.goodbye

    @property
    def session_hex(self):
        return f"{self.session:016x}" if self.cfg.wire != "legacy" else "legacy"

    def stop(self):
        self.stopping = True

    def skip(self):
        """SIGUSR1: leave one sequence number unused (deliberate loss)."""
        self.skip_pending += 1

    def _record(self, kind, now_ns, since_ns):
        if self.source is None:
            self.source = sockets.local_name(self.sock, self.cfg.remote)
        rec = {"type": kind, "role": "sender", "time": _io.wall_of(now_ns), "source": self.source,
               "destination": str(self.cfg.remote), "source_name": names.node_name(self.cfg),
               "destination_name": self.cfg.remote.host, "session": self.session_hex,
               "wire": self.cfg.wire, "interval_s": round((now_ns - since_ns) / 1e9, 6)}
        return rec

    def _warm_up(self):
        """Run the record path once before the first slot: first calls (lazy imports, route
        lookup, allocator growth) cost milliseconds, which would make the first tick late."""
        self.source = sockets.local_name(self.sock, self.cfg.remote)
        probe = np.arange(1000, dtype=np.int64)
        LogHistogram().add(probe)
        LogHistogram().quantiles([50, 99], 0, 999)
        _late_stats(probe)
        if self.rtt is not None:
            rtt.RttStats().take_interval()

    def _collect(self):
        """Move the core's lateness buffer into this interval's list and the run histogram."""
        lat = self.tx.take_lateness()
        if len(lat):
            self.hist.add(lat)
            self.late_min = min(self.late_min, int(lat.min())) if self.hist.n > len(lat) \
                else int(lat.min())
            self.late_max = max(self.late_max, int(lat.max()))
            self.lat_parts.append(lat)

    def _interval(self, now_ns, since_ns):
        self._collect()
        lat = np.concatenate(self.lat_parts) if self.lat_parts else np.zeros(0, np.int64)
        self.lat_parts = []
        sent, missed, skipped = self.sent, self.tx.missed_slots, self.tx.skipped_slots
        errors = self.tx.send_errors
        rec = self._record("sender", now_ns, since_ns)
        rec.update(sent=sent - self._last[0], missed_slots=missed - self._last[1],
                   skipped_slots=skipped - self._last[2], send_errors=errors - self._last[3],
                   **_late_stats(lat))
        if self.tx.gso_errno and not self.gso_warned:
            self.gso_warned = True
            log.warning("the kernel refused a UDP GSO message (%s): sending one datagram per "
                        "message from now on; the refused packets were sent again",
                        os.strerror(self.tx.gso_errno))
        if errors and not self._last[3]:
            log.warning("the kernel refused to send some packets (a local firewall, no route, "
                        "or too big): counted in send_errors; the receiver sees them as lost")
        if self.rtt is not None:
            rec.update(self.rtt.take_interval())
            self._no_reply_warning(rec["interval_s"])
        self._last = (sent, missed, skipped, errors)
        self.emit(rec)

    def _no_reply_warning(self, interval_s):
        """--rtt: warn once when not a single reply came back within RTT_NO_REPLY_S."""
        self.unanswered_s += interval_s
        if self.rtt.highest >= 0 or self.unanswered_s < defaults.RTT_NO_REPLY_S \
                or self.unanswered_s - interval_s >= defaults.RTT_NO_REPLY_S:
            return
        peer = ("a STAMP reflector (RFC 8762) or `packet-flow --mode reflector --wire stamp`"
                if self.cfg.wire == "stamp" else "`packet-flow --mode reflector`")
        log.warning("--rtt: no reply came back from %s in %.0f s (%d probes sent): the peer "
                    "must be %s, and replies must get through its firewall", self.cfg.remote,
                    self.unanswered_s, self.sent, peer)

    def _summary(self, now_ns, start_ns):
        rec = self._record("summary", now_ns, start_ns)
        rec.update(sent=self.sent, missed_slots=self.tx.missed_slots,
                   skipped_slots=self.tx.skipped_slots, send_errors=self.tx.send_errors)
        if self.hist.n:
            p50, p99 = self.hist.quantiles([50, 99], self.late_min, self.late_max)
            rec.update(timer_late_p50_us=round(p50 / 1e3, 3), timer_late_p99_us=round(p99 / 1e3, 3),
                       timer_late_max_us=round(self.late_max / 1e3, 3))
        else:
            rec.update(_late_stats(np.zeros(0, np.int64)))
        if self.rtt is not None:
            rec.update(self.rtt.summary(self.tx.seq))
        self.emit(rec)

    def run(self, deadline_ns=0):
        """Follow the schedule; then send the final packet and emit the summary."""
        cfg = self.cfg
        try:
            _io.set_timerslack(defaults.TIMER_SLACK_NS)
        except OSError as exc:
            log.debug("timer slack unchanged: %s", exc)
        if self.interval_ns >= defaults.REALTIME_MIN_INTERVAL_NS:
            realtime_priority()
        interval_ns = int(cfg.interval * 1e9)
        self._warm_up()
        start = _io.mono_ns() + 1_000_000
        self.tx.start(start, self.interval_ns, defaults.SPIN_NS)
        precise = cfg.timer == "precise"
        next_tick = start + interval_ns
        last_tick = start
        # A slice ends half a slot after the record tick, so the tick's Python work runs
        # right after a slot is sent, never on top of the next one.
        half = min(self.interval_ns, interval_ns) // 2
        # --count N: the N-th packet is the final one, sent on its own slot below; a legacy
        # FINAL (the Rust original's goodbye) is no probe: it follows N probes and carries
        # the next, unsent sequence
        probes = cfg.count - (cfg.wire != "legacy") if cfg.count else 0
        while not self.stopping:
            until = next_tick + half if not deadline_ns else min(next_tick + half, deadline_ns)
            if self.rx is not None:
                until = min(until, _io.mono_ns() + defaults.RTT_SLICE_NS)
            limit = probes - self.tx.sent if cfg.count else 0
            if limit or not cfg.count:
                self.tx.run(until, limit, precise)
                self._collect()
            if self.rx is not None:
                slot = start + self.tx.k * self.interval_ns
                self._pump_replies(min(until, slot) - defaults.PUMP_MARGIN_NS)
            if self.skip_pending:
                self.tx.skip_sequence(self.skip_pending)
                log.info("skipped %d sequence number(s) on request", self.skip_pending)
                self.skip_pending = 0
            now = _io.mono_ns()
            # wait for the tick only when no slot comes first: tx.run also returns early, on
            # a signal (SIGUSR1) or at --count, and the slots before the tick are then still
            # to be sent
            if now < next_tick <= start + self.tx.k * self.interval_ns and not self.stopping:
                _io.sleep_until(next_tick)
                now = _io.mono_ns()
            if now >= next_tick:
                self._interval(now, last_tick)
                last_tick = now
                next_tick += interval_ns * max(1, (now - next_tick) // interval_ns + 1)
            if (cfg.count and self.tx.sent >= probes) or (deadline_ns and now >= deadline_ns):
                break
        if cfg.count and self.tx.sent == probes and not self.stopping:
            _io.sleep_until(start + self.tx.k * self.interval_ns, defaults.SPIN_NS)
        self.tx.send(1, final=True)
        self.goodbye = int(cfg.wire == "legacy")
        if self.rtt is not None:
            self._last_replies()
        now = _io.mono_ns()
        self._interval(now, last_tick)
        self._summary(now, start)

    def close(self):
        self.sock.close()
