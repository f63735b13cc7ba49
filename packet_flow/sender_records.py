"""The send side's records: `sender` interval records and the sender's summary.

Rules: counters are the core's (_io.Sender) cumulative ones; an interval record holds their
increments since the last one. Timer lateness (the send stamp behind its slot) comes from
the core's sample buffer, emptied after every schedule slice (collect()) into a Lateness:
this interval's list and the run's LogHistogram, so the summary's percentiles cover the
whole run in fixed memory (a mesh keeps one Lateness per pair). Anomalies the kernel
reports while sending are warned about once.
"""

import logging
import math
import os

import numpy as np

from packet_flow import rtt
from packet_flow.histogram import LogHistogram
from packet_flow.results import percentiles_of

log = logging.getLogger(__name__)


def no_lateness():
    """The timer_late_* fields of an interval or run without samples."""
    return {"timer_late_p50_us": None, "timer_late_p99_us": None, "timer_late_max_us": None}


def warm_up():
    """Run the record path once before the first slot: first calls (lazy imports, allocator
    growth) cost milliseconds, which would make the first tick late."""
    probe = np.arange(1000, dtype=np.int64)
    late = Lateness()
    late.add(probe)
    late.interval()
    late.summary()
    rtt.RttStats().take_interval()


class Lateness:
    """One sender's timer lateness samples (ns): this interval's, and the run's histogram.
    ``prepare`` turns many senders' samples into their interval figures at once (a mesh
    node's pairs at a tick); samples added after it count in the next interval."""

    __slots__ = ("hist", "low", "high", "parts", "ready")

    def __init__(self):
        self.hist = LogHistogram()
        self.low = self.high = None
        self.parts = []
        self.ready = None

    def add(self, lat):
        if len(lat):
            self.parts.append(lat)

    @staticmethod
    def prepare(many):
        """The interval figures of every Lateness in `many` from one sort, and their samples
        into the run's histograms in one pass."""
        stats = percentiles_of([late.parts for late in many], [0, 50, 99, 100]).tolist()
        have = [late for late in many if late.parts]
        if have:
            sizes = [sum(a.size for a in late.parts) for late in have]
            LogHistogram.add_many([late.hist for late in have],
                                  np.concatenate([a for late in have for a in late.parts]),
                                  sizes)
        for late, (low, p50, p99, high) in zip(many, stats, strict=True):
            late.parts = []
            if math.isnan(low):
                late.ready = no_lateness()
                continue
            late.low = int(low) if late.low is None else min(late.low, int(low))
            late.high = int(high) if late.high is None else max(late.high, int(high))
            late.ready = {"timer_late_p50_us": round(p50 / 1e3, 3),
                          "timer_late_p99_us": round(p99 / 1e3, 3),
                          "timer_late_max_us": round(high / 1e3, 3)}

    def interval(self):
        """timer_late_p50/p99/max_us of the samples since the last call."""
        if self.ready is None:
            Lateness.prepare([self])
        stats, self.ready = self.ready, None
        return stats

    def summary(self):
        """timer_late_p50/p99/max_us over the run (None when there were no samples)."""
        if self.parts:
            Lateness.prepare([self])    # (the interval figures stay ready for interval())
        if not self.hist.n:
            return no_lateness()
        p50, p99 = self.hist.quantiles([50, 99], self.low, self.high)
        return {"timer_late_p50_us": round(float(p50) / 1e3, 3),
                "timer_late_p99_us": round(float(p99) / 1e3, 3),
                "timer_late_max_us": round(self.high / 1e3, 3)}


class SenderRecords:
    """Builds and emits one sender's records from its core `tx` (see the module rules);
    `head(kind)` gives the fields every record of this sender carries, `replies` (or None)
    the RTT fields. `goodbye` is 1 once a legacy goodbye (no probe) has been sent."""

    def __init__(self, tx, head, emit, replies=None):
        self.tx = tx
        self.head = head
        self.emit = emit
        self.replies = replies
        self.goodbye = 0
        self.late = Lateness()
        self._last = (0, 0, 0, 0)
        self.gso_warned = False

    @property
    def sent(self):
        """Probe packets sent (a legacy goodbye is not one)."""
        return self.tx.sent - self.goodbye

    def collect(self):
        """Move the core's lateness buffer into this interval's list and the run histogram."""
        self.late.add(self.tx.take_lateness())

    def interval(self, now_ns, since_ns):
        self.collect()
        tx = self.tx
        now = (self.sent, tx.missed_slots, tx.skipped_slots, tx.send_errors)
        rec = self.head("sender", now_ns, since_ns)
        rec.update(sent=now[0] - self._last[0], missed_slots=now[1] - self._last[1],
                   skipped_slots=now[2] - self._last[2], send_errors=now[3] - self._last[3],
                   **self.late.interval())
        if tx.gso_errno and not self.gso_warned:
            self.gso_warned = True
            log.warning("the kernel refused a UDP GSO message (%s): sending one datagram per "
                        "message from now on; the refused packets were sent again",
                        os.strerror(tx.gso_errno))
        if now[3] and not self._last[3]:
            log.warning("the kernel refused to send some packets (a local firewall, no route, "
                        "or too big): counted in send_errors; the receiver sees them as lost")
        if self.replies is not None:
            rec.update(self.replies.take_interval(rec["interval_s"], now[0]))
        self._last = now
        self.emit(rec)

    def summary(self, now_ns, start_ns):
        tx = self.tx
        rec = self.head("summary", now_ns, start_ns)
        rec.update(sent=self.sent, missed_slots=tx.missed_slots,
                   skipped_slots=tx.skipped_slots, send_errors=tx.send_errors,
                   **self.late.summary())
        if self.replies is not None:
            rec.update(self.replies.summary(tx.seq))
        self.emit(rec)

