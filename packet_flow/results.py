"""What turns a flow's counts into records: the tally of an interval and of the flow's life,
their record fields, and the frozen record a forgotten flow keeps (irtt's result.go to the
online bookkeeping of analysis.py, its recorder.go).

Rules (field names of the JSON-lines records in docs/options.md):
- Counters are Python ints; output floats are µs rounded to 3 decimals (ns); no data gives
  None, never NaN. ``loss_percent`` is ``lost / (received + local_drops + lost)``.
- Interval percentiles are exact (numpy's default linear interpolation over the interval's
  delay arrays); summary percentiles come from LogHistogram (at most 0.2 % relative error);
  summary min, max and mean are exact. The interval's delay arrays reach the life's
  histograms when they are read (``fold``: at the end of the interval, or for a summary), not
  batch by batch.
- ``bursts`` maps a loss-burst length to its count; a count that nets to 0 is dropped.
"""

import math
import struct

import numpy as np

from packet_flow.histogram import LogHistogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _us(ns):
    """ns (int or float) to µs rounded to 3 decimals; None stays None."""
    return None if ns is None else round(float(ns / 1000), 3)


TOGETHER_MAX = 1 << 14  # a flow with more values of an interval is sorted/counted alone


def _lerp(srt: np.ndarray, start: np.ndarray, sizes: np.ndarray, percents) -> np.ndarray:
    """numpy's linear percentiles of the sorted runs srt[start[i] : start[i] + sizes[i]]."""
    r = np.asarray(percents, np.float64)[None, :] / 100 * (sizes[:, None] - 1)
    lo, hi = np.floor(r).astype(np.int64), np.ceil(r).astype(np.int64)
    x = srt[start[:, None] + lo].astype(np.float64)
    y = srt[start[:, None] + hi].astype(np.float64)
    t, d = r - lo, y - x
    return np.where(t >= 0.5, y - d * (1 - t), x + d * t)  # numpy's _lerp


def percentiles_of(parts: list, percents) -> np.ndarray:
    """Exact percentiles (numpy's default linear method) of many flows' values: parts[i] is a
    list of arrays, row i of the result the percentiles of their values together (NaN where
    the list holds no value). Small flows share one sort; a big one is partitioned alone
    (linear time, where a sort of millions of values would take a second)."""
    sizes = np.array([sum(a.size for a in p) for p in parts], np.int64)
    out = np.full((len(parts), len(percents)), np.nan)
    for i in np.flatnonzero(sizes > TOGETHER_MAX).tolist():
        a = np.concatenate(parts[i])
        n = a.size
        r = np.asarray(percents, np.float64) / 100 * (n - 1)
        a.partition(np.unique(np.concatenate([np.floor(r), np.ceil(r)]).astype(np.int64)))
        out[i] = _lerp(a, np.zeros(1, np.int64), np.array([n]), percents)[0]
    small = (sizes > 0) & (sizes <= TOGETHER_MAX)
    if small.any():
        which = np.flatnonzero(small)
        flat = np.concatenate([a for i in which.tolist() for a in parts[i]])
        srt = flat[np.lexsort((flat, np.repeat(np.arange(which.size), sizes[which])))]
        out[which] = _lerp(srt, np.cumsum(sizes[which]) - sizes[which], sizes[which], percents)
    return out


def prepare(tallies: list) -> None:
    """Before many flows' interval records: their percentiles, computed together, and their
    delays into the life's histograms (Tallies.fold; small flows in one pass)."""
    intervals = [t.interval for t in tallies]
    owd = percentiles_of([t.owd_parts for t in intervals], PERCENTILES)
    ipdv = percentiles_of([t.ipdv_parts for t in intervals], [99.0])
    for tally, o, i in zip(intervals, owd.tolist(), ipdv[:, 0].tolist(), strict=True):
        tally.ready = (o, i)
    whole = []
    for t in tallies:
        if t.interval.folded != (0, 0) or t.interval.owd_n > TOGETHER_MAX:
            t.fold()            # a big flow, or a summary read part of the interval already
        else:
            whole.append(t)
    for name, hist in (("owd_parts", "owd_hist"), ("ipdv_parts", "ipdv_hist")):
        parts = [getattr(t.interval, name) for t in whole]
        if any(parts):
            LogHistogram.add_many([getattr(t.total, hist) for t in whole],
                                  np.concatenate([a for p in parts for a in p]),
                                  [sum(a.size for a in p) for p in parts])
    for t in whole:
        t.interval.folded = (len(t.interval.owd_parts), len(t.interval.ipdv_parts))


class Tally:
    """The counts of one interval (raw delay arrays) or of the whole flow (histograms)."""

    def __init__(self, interval: bool):
        self.interval = interval
        self.received = self.lost = self.late = self.duplicates = self.negative_owd = 0
        self.local_drops = self.unsure = self.coalesced = 0
        self.bursts: dict[int, int] = {}
        self.owd_n = self.owd_sum = 0
        self.owd_min = self.owd_max = None
        self.ipdv_n = self.ipdv_sum = 0
        self.jitter_n = 0
        self.parts_bytes = 0  # bytes of the interval's delay arrays
        if interval:
            self.owd_parts: list[np.ndarray] = []
            self.ipdv_parts: list[np.ndarray] = []
            self.folded = (0, 0)  # how many of the parts the life's histograms hold
            self.ready = None  # (percentiles, ipdv p99) computed by prepare()
        else:
            self.owd_hist = LogHistogram()
            self.ipdv_hist = LogHistogram()

    def burst(self, length: int, count: int) -> None:
        c = self.bursts.get(length, 0) + count
        if c:
            self.bursts[length] = c
        else:
            self.bursts.pop(length, None)

    def _percentiles(self):
        """(owd percentiles, ipdv p99), None without values: exact for an interval (those of
        prepare() when it ran), from the histograms for the life."""
        if self.interval:
            if self.ready is None:
                owd = percentiles_of([self.owd_parts], PERCENTILES)[0].tolist()
                self.ready = (owd, percentiles_of([self.ipdv_parts], [99.0])[0, 0])
            pct, ipdv_p99 = self.ready
            return ([None if math.isnan(v) else v for v in pct],
                    None if math.isnan(ipdv_p99) else ipdv_p99)
        pct = self.owd_hist.quantiles(PERCENTILES, self.owd_min, self.owd_max) \
            if self.owd_n else [None] * len(PERCENTILES)
        ipdv_p99 = self.ipdv_hist.quantiles([99.0], 0, 1 << 63)[0] if self.ipdv_n else None
        return pct, ipdv_p99

    def record(self, jitter_ns: float) -> dict:
        lost, rcv, local = self.lost, self.received, self.local_drops
        pct, ipdv_p99 = self._percentiles()
        return {
            "received": rcv,
            "lost": lost,
            "late": self.late,
            "duplicates": self.duplicates,
            "loss_bursts": sum(self.bursts.values()),
            "max_loss_burst": max((k for k, v in self.bursts.items() if v > 0), default=0),
            "loss_burst_hist": {str(k): v for k, v in sorted(self.bursts.items())},
            "loss_percent": round(max(0.0, 100 * lost / (rcv + local + lost)), 3)
            if rcv + local + lost > 0 else 0.0,
            "local_drops": local,
            "local_drops_exact": not self.unsure,
            "coalesced": self.coalesced,
            "owd_min_us": _us(self.owd_min),
            "owd_mean_us": _us(self.owd_sum / self.owd_n) if self.owd_n else None,
            "owd_p50_us": _us(pct[0]),
            "owd_p90_us": _us(pct[1]),
            "owd_p99_us": _us(pct[2]),
            "owd_p999_us": _us(pct[3]),
            "owd_max_us": _us(self.owd_max),
            "negative_owd": self.negative_owd,
            "jitter_us": _us(jitter_ns) if self.jitter_n else None,
            "ipdv_mean_us": _us(self.ipdv_sum / self.ipdv_n) if self.ipdv_n else None,
            "ipdv_p99_us": _us(ipdv_p99),
        }


class Tallies:
    """The current interval's tally and the flow's life tally: every count goes to both."""

    __slots__ = ("interval", "total")

    def __init__(self):
        self.interval, self.total = Tally(True), Tally(False)

    def count(self, name: str, n: int) -> None:
        for t in (self.interval, self.total):
            setattr(t, name, getattr(t, name) + n)

    def burst(self, length: int, count: int) -> None:
        self.interval.burst(length, count)
        self.total.burst(length, count)

    def add(self, owd: np.ndarray, ipdv: np.ndarray) -> None:
        """Delays and |IPDV| values of one batch, kept for the interval (their counts, sums
        and extremes are the caller's)."""
        t = self.interval
        t.ready = None
        if owd.size:
            t.owd_parts.append(owd)
            t.parts_bytes += owd.nbytes
        if ipdv.size:
            t.ipdv_parts.append(ipdv)
            t.parts_bytes += ipdv.nbytes

    def fold(self) -> None:
        """The interval's delay arrays not yet counted go into the life's histograms."""
        t, total = self.interval, self.total
        a, b = t.folded
        if a < len(t.owd_parts):
            parts = t.owd_parts[a:]
            total.owd_hist.add(np.concatenate(parts) if len(parts) > 1 else parts[0])
        if b < len(t.ipdv_parts):
            parts = t.ipdv_parts[b:]
            total.ipdv_hist.add(np.concatenate(parts) if len(parts) > 1 else parts[0])
        t.folded = (len(t.owd_parts), len(t.ipdv_parts))

    def take_interval(self, jitter_ns: float) -> dict:
        """The interval's record fields; a new interval starts."""
        self.fold()
        rec = self.interval.record(jitter_ns)
        self.interval = Tally(True)
        return rec


TOTALS = ("received", "lost", "late", "duplicates", "negative_owd", "local_drops", "unsure",
          "coalesced", "owd_n", "owd_sum", "owd_min", "owd_max", "ipdv_n", "ipdv_sum",
          "jitter_n")
FROZEN_STATS = ("owd_p50_us", "owd_p90_us", "owd_p99_us", "owd_p999_us", "jitter_us",
                "ipdv_p99_us")
_FROZEN = struct.Struct(f"<{len(TOTALS)}q{len(FROZEN_STATS)}d")
_NONE_INT = -(1 << 63)


class Frozen:
    """What a forgotten flow keeps: where its sequence stood and its totals, packed into a
    few hundred bytes instead of its ring and histograms. ``FlowStats.resume`` continues the
    flow from it; ``summary()`` gives the summary of a flow that never came back (its
    percentiles as they were when it was forgotten)."""

    __slots__ = ("bits", "next", "horizon", "packed", "bursts")

    def __init__(self, bits, next_seq, horizon, total: Tally, stats: dict):
        self.bits, self.next, self.horizon = bits, next_seq, horizon
        self.bursts = tuple(sorted(total.bursts.items()))
        values = (getattr(total, k) for k in TOTALS)
        self.packed = _FROZEN.pack(*(_NONE_INT if v is None else v for v in values),
                                   *(math.nan if stats[k] is None else stats[k]
                                     for k in FROZEN_STATS))

    def total(self) -> Tally:
        """The flow's life tally as it was (without its histograms' contents)."""
        t = Tally(False)
        v = _FROZEN.unpack(self.packed)[: len(TOTALS)]
        for k, x in zip(TOTALS, v, strict=True):
            setattr(t, k, None if x == _NONE_INT else x)
        t.bursts = dict(self.bursts)
        return t

    @property
    def stats(self) -> dict:
        """The summary percentiles and jitter when the flow was forgotten."""
        v = _FROZEN.unpack(self.packed)[len(TOTALS) :]
        return {k: None if math.isnan(x) else x for k, x in zip(FROZEN_STATS, v, strict=True)}

    def summary(self) -> dict:
        rec = self.total().record(0.0)
        rec.update(self.stats)
        return rec
