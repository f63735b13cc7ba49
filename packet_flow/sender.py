"""The send side: schedule, catch-up, final packet, and sender records.

Slots lie on an absolute grid (start + k * interval), so the schedule never drifts. The
Cython Sender sleeps to each deadline (precise: sleep, then spin the last SPIN_NS;
economy: sleep only) and sends due slots in one sendmmsg; intervals shorter than
GSO_BELOW_NS are sent as UDP GSO super-datagrams. Lateness of every send stamp behind its
slot is collected per interval; slots skipped after a stall are counted, never sent late
in a burst larger than one batch.
"""

import logging
import secrets

import numpy as np

from packet_flow import _io, defaults, sockets
from packet_flow.flows import rfc3339

log = logging.getLogger(__name__)

WIRE = {"native": _io.WIRE_NATIVE, "legacy": _io.WIRE_LEGACY, "stamp": _io.WIRE_STAMP}
LATE_BIN_NS = 100           # summary lateness histogram: 100 ns bins up to 100 ms
LATE_BINS = 1_000_000


def _late_stats(lat_ns):
    if not len(lat_ns):
        return {"timer_late_p50_us": None, "timer_late_p99_us": None, "timer_late_max_us": None}
    p50, p99 = np.percentile(lat_ns, [50, 99])
    return {"timer_late_p50_us": round(float(p50) / 1e3, 3),
            "timer_late_p99_us": round(float(p99) / 1e3, 3),
            "timer_late_max_us": round(float(lat_ns.max()) / 1e3, 3)}


class SenderLoop:
    """Sends to cfg.remote on the cfg.rate_ms grid until stop(), the deadline or cfg.count."""

    def __init__(self, cfg, emit, sock=None, size=None):
        self.cfg = cfg
        self.emit = emit
        self.sock = sock or sockets.send_socket(cfg.remote.family, cfg.dscp, cfg.ttl)
        self.session = secrets.randbits(64)
        self.interval_ns = max(1, round(cfg.rate_ms * 1e6))
        segments = 1
        if self.interval_ns < defaults.GSO_BELOW_NS and cfg.wire != "legacy" \
                and sockets.gso_supported(self.sock):
            segments = defaults.GSO_SEGMENTS
        self.tx = _io.Sender(self.sock.fileno(),
                             sockets.dest_tuple(cfg.remote.sockaddr, cfg.remote.family),
                             wire=WIRE[cfg.wire], session=self.session,
                             size=cfg.size if size is None else size,
                             batch=cfg.batch, segments=segments, key=cfg.key)
        self.source = None
        self.stopping = False
        self.skip_pending = 0
        self.hist = np.zeros(LATE_BINS + 1, np.int64)
        self.late_max = 0
        self._last = (0, 0, 0)

    @property
    def session_hex(self):
        return f"{self.session:016x}" if self.cfg.wire != "legacy" else "legacy"

    def stop(self):
        self.stopping = True

    def skip(self):
        """SIGUSR1: leave one sequence number unused (deliberate loss)."""
        self.skip_pending += 1

    def _record(self, kind, now_ns, since_ns, lat):
        if self.source is None:
            self.source = sockets.local_name(self.sock, self.cfg.remote)
        rec = {"type": kind, "role": "sender", "time": rfc3339(now_ns), "source": self.source,
               "destination": str(self.cfg.remote), "session": self.session_hex,
               "wire": self.cfg.wire, "interval_s": round((now_ns - since_ns) / 1e9, 6)}
        return rec

    def _interval(self, now_ns, since_ns):
        lat = self.tx.take_lateness()
        if len(lat):
            self.hist += np.bincount(np.clip(lat // LATE_BIN_NS, 0, LATE_BINS),
                                     minlength=LATE_BINS + 1)
            self.late_max = max(self.late_max, int(lat.max()))
        sent, missed, skipped = self.tx.sent, self.tx.missed_slots, self.tx.skipped_slots
        rec = self._record("sender", now_ns, since_ns, lat)
        rec.update(sent=sent - self._last[0], missed_slots=missed - self._last[1],
                   skipped_slots=skipped - self._last[2], **_late_stats(lat))
        self._last = (sent, missed, skipped)
        self.emit(rec)

    def _summary(self, now_ns, start_ns):
        rec = self._record("summary", now_ns, start_ns, None)
        rec.update(sent=self.tx.sent, missed_slots=self.tx.missed_slots,
                   skipped_slots=self.tx.skipped_slots)
        total = int(self.hist.sum())
        if total:
            cum = np.cumsum(self.hist)
            p50, p99 = (int(np.searchsorted(cum, q * total)) for q in (0.5, 0.99))
            rec.update(timer_late_p50_us=round(p50 * LATE_BIN_NS / 1e3, 3),
                       timer_late_p99_us=round(p99 * LATE_BIN_NS / 1e3, 3),
                       timer_late_max_us=round(self.late_max / 1e3, 3))
        else:
            rec.update(_late_stats(np.zeros(0, np.int64)))
        self.emit(rec)

    def run(self, deadline_ns=0):
        """Follow the schedule; then send the final packet and emit the summary."""
        cfg = self.cfg
        try:
            _io.set_timerslack(defaults.TIMER_SLACK_NS)
        except OSError as exc:
            log.debug("timer slack unchanged: %s", exc)
        interval_ns = int(cfg.interval * 1e9)
        start = _io.now_ns() + 1_000_000
        self.tx.start(start, self.interval_ns, defaults.SPIN_NS)
        precise = cfg.timer == "precise"
        next_tick = start + interval_ns
        last_tick = start
        while not self.stopping:
            until = next_tick if not deadline_ns else min(next_tick, deadline_ns)
            # with --count N the N-th packet is the final one, sent on its own slot below
            limit = cfg.count - 1 - self.tx.sent if cfg.count else 0
            if limit or not cfg.count:
                self.tx.run(until, limit, precise)
            if self.skip_pending:
                self.tx.skip_sequence(self.skip_pending)
                log.info("skipped %d sequence number(s) on request", self.skip_pending)
                self.skip_pending = 0
            now = _io.now_ns()
            if now >= next_tick:
                self._interval(now, last_tick)
                last_tick = now
                next_tick += interval_ns * max(1, (now - next_tick) // interval_ns + 1)
            if (cfg.count and self.tx.sent >= cfg.count - 1) or (deadline_ns and now >= deadline_ns):
                break
        if cfg.count and self.tx.sent == cfg.count - 1 and not self.stopping:
            _io.sleep_until(start + self.tx.k * self.interval_ns, defaults.SPIN_NS)
        self.tx.send(1, final=True)
        now = _io.now_ns()
        self._interval(now, last_tick)
        self._summary(now, start)

    def close(self):
        self.sock.close()
