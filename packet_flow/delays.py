"""Delay, jitter and IPDV bookkeeping of one flow, batch by batch: pure numpy.

Rules:
- Delays are ``rx - tx`` in int64 ns, negative kept (``negative_owd``), over unique arrivals
  only (new and late, never duplicates). An arrival without a timestamp of its own (UNTIMED)
  is counted as ``coalesced`` and left out of every statistic here.
- ``jitter`` is the RFC 3550 §6.4.1 interarrival jitter estimator over unique arrivals in
  arrival order across batches: J += (|D| - J) / 16, D the difference of consecutive delays.
- IPDV (RFC 3393/5481) is |D(s) - D(s-1)| for consecutive sequences that both arrived,
  whatever their arrival order; a pair counts when its second packet arrives.
- Sums are exact (Python ints), even over int64 values whose sum would overflow.
"""

import numpy as np

from packet_flow.results import Tallies
from packet_flow.ring import EMPTY, UNTIMED, DelayRing

_JITTER_TAIL = 2000  # (15/16)**2000 < 1e-56: older |D| values no longer change J
_JITTER_W = (15 / 16) ** np.arange(_JITTER_TAIL - 1, -1, -1, dtype=np.float64)


def exact_sum(a: np.ndarray, lo: int, hi: int) -> int:
    """Exact sum of an int64 array whose values lie in [lo, hi]."""
    if max(-lo, hi) * a.size < 1 << 62:
        return int(a.sum())
    total = 0
    for i in range(0, a.size, 1 << 20):
        c = a[i : i + (1 << 20)]
        total += (int((c >> 20).sum()) << 20) + int((c & 0xFFFFF).sum())
    return total


class DelayStats:
    """The delays of a flow's unique arrivals: their tallies, the jitter estimator, IPDV."""

    __slots__ = ("tallies", "jitter", "last_owd")

    def __init__(self, tallies: Tallies):
        self.tallies = tallies
        self.jitter = 0.0
        self.last_owd = None  # delay of the last unique arrival (RFC 3550 D)

    def add(self, owd: np.ndarray) -> None:
        """The delays of this batch's unique arrivals, in arrival order."""
        untimed = owd == UNTIMED
        if untimed.any():
            self.tallies.count("coalesced", int(np.count_nonzero(untimed)))
            owd = owd[~untimed]
        if not owd.size:
            return
        lo, hi = int(owd.min()), int(owd.max())
        total = exact_sum(owd, lo, hi)
        neg = int(np.count_nonzero(owd < 0)) if lo < 0 else 0
        prev = self.last_owd
        n = owd.size - (prev is None)  # new D values
        if n:
            t = owd[-_JITTER_TAIL - 1 :]
            diff = np.diff(t) if prev is None or t.size < owd.size else np.diff(t, prepend=prev)
            tail = np.abs(diff[-_JITTER_TAIL:]).astype(np.float64)
            self.jitter = (15 / 16) ** n * self.jitter + float(_JITTER_W[-tail.size :] @ tail) / 16
        self.last_owd = int(owd[-1])
        for a in (self.tallies.interval, self.tallies.total):
            a.owd_n += int(owd.size)
            a.owd_sum += total
            a.owd_min = lo if a.owd_min is None else min(a.owd_min, lo)
            a.owd_max = hi if a.owd_max is None else max(a.owd_max, hi)
            a.negative_owd += neg
            a.jitter_n += n
        self.tallies.add(owd, owd[:0])

    def extend(self, owd: np.ndarray, steps: np.ndarray, before: int, owd_sum: int, lo: int,
               hi: int, neg: int, weighted: float, step_sum: int) -> None:
        """The fast lane's delays (inorder.py): a flow's next packets in sequence order, none
        coalesced; steps the |IPDV| of consecutive ones (summing to step_sum); before the
        delay of the sequence below the first (EMPTY or UNTIMED: none); the delays' exact
        sum, extremes and negative count; weighted the jitter sum of the differences within
        (module rules), the first one's added here."""
        n, first = owd.size, int(owd[0])
        ipdv_n, ipdv_sum = n - 1, step_sum
        if before not in (EMPTY, UNTIMED):
            step = abs(first - before)
            steps = np.append(steps, step)
            ipdv_n, ipdv_sum = n, step_sum + step
        m = n - 1
        if self.last_owd is not None:
            weighted += abs(first - self.last_owd) * (15 / 16) ** m
            m = n
        self.jitter = (15 / 16) ** m * self.jitter + weighted / 16
        self.last_owd = int(owd[-1])
        for a in (self.tallies.interval, self.tallies.total):
            a.owd_n += n
            a.owd_sum += owd_sum
            a.owd_min = lo if a.owd_min is None else min(a.owd_min, lo)
            a.owd_max = hi if a.owd_max is None else max(a.owd_max, hi)
            a.negative_owd += neg
            a.jitter_n += m
            a.ipdv_n += ipdv_n
            a.ipdv_sum += ipdv_sum
        self.tallies.add(owd, steps)

    def ipdv(self, seq: np.ndarray, owd: np.ndarray, ring: DelayRing, highest: int) -> None:
        """|IPDV| of the pairs (s-1, s) this batch completes: seq its unique sequences sorted,
        owd their delays; the ring (highest: its highest sequence) holds the earlier ones."""
        if int(seq[-1]) - int(seq[0]) == seq.size - 1:  # no hole: every neighbour in the batch
            pairs = [(owd[1:], owd[:-1])]
            sides = ((np.array([0]), -1), (np.array([seq.size - 1]), 1))
        else:
            adj = seq[1:] == seq[:-1] + 1
            pairs = [(owd[1:][adj], owd[:-1][adj])]
            alone_below = np.ones(seq.size, bool)
            alone_below[1:] = ~adj
            alone_above = np.ones(seq.size, bool)
            alone_above[:-1] = ~adj
            sides = ((np.flatnonzero(alone_below), -1), (np.flatnonzero(alone_above), 1))
        for i, step in sides:
            i = i[seq[i] + step <= highest]
            if i.size:
                v = ring.lookup(seq[i] + step, highest)
                ok = v != EMPTY
                pairs.append((owd[i][ok], v[ok]))
        # a packet without a timestamp of its own (UNTIMED) has no delay to compare
        parts = [np.abs(a[k] - b[k]) for a, b in pairs
                 for k in [(a != UNTIMED) & (b != UNTIMED)]]
        ipdv = np.concatenate(parts)
        if not ipdv.size:
            return
        total = exact_sum(ipdv, 0, int(ipdv.max()))
        for a in (self.tallies.interval, self.tallies.total):
            a.ipdv_n += int(ipdv.size)
            a.ipdv_sum += total
        self.tallies.add(ipdv[:0], ipdv)
