"""The missing sequences of one flow: settling them as lost, their runs (RFC 3357 loss periods)
and the ones the receiving host dropped itself. Pure numpy; analysis.FlowStats drives it.

Rules (the whole story is in analysis.py's module rules):
- Every sequence up to ``settled`` is settled: received, or counted lost (or ``local_drops``).
- A run of missing sequences is a burst once it is settled and the sequence after it has
  arrived; ``open_start`` is the start of the run that reaches ``settled`` (-1: none). The
  completed runs still inside the window are kept, so a late packet can split its run.
- Sequences of gaps that opened across socket drops are labelled local when the gap opens and
  counted when they settle; labels and runs below the window are let go.
"""

import numpy as np

from packet_flow.results import Tallies
from packet_flow.ring import DelayRing
from packet_flow.seqspace import highest_before

_NONE = np.zeros(0, np.int64)


def local_part(gap: np.ndarray, drops: np.ndarray, buffers: bool) -> np.ndarray:
    """How many sequences of each gap the receiving host dropped itself, given the socket's
    drops across the gap (module rules): one drop, one datagram -> min(gap, drops), the rest
    was lost on the path; drops of GRO buffers (``buffers``), which hold one datagram or
    several -> the whole gap."""
    return np.where(drops > 0, gap if buffers else np.minimum(gap, drops), 0)


class LossRuns:
    """Settled loss, loss runs and local-drop labels of one flow (sequences relative to its
    first)."""

    __slots__ = ("tallies", "settled", "open_start", "run_start", "run_end", "local_start",
                 "local_end")

    def __init__(self, tallies: Tallies):
        self.tallies = tallies
        self.settled = -1
        self.open_start = -1
        self.run_start = self.run_end = _NONE  # completed runs ending inside the window
        self.local_start = self.local_end = _NONE  # sequences the host dropped, as runs

    @property
    def nbytes(self) -> int:
        return (self.run_start.nbytes + self.run_end.nbytes + self.local_start.nbytes
                + self.local_end.nbytes)

    def _lost(self, n: int, lengths: np.ndarray, local: int = 0) -> None:
        """n sequences settled missing, `local` of them dropped by the receiving host; the
        lengths of the missing runs completed."""
        for a in (self.tallies.interval, self.tallies.total):
            a.lost += n - local
            a.local_drops += local
        if lengths.size:
            vals, counts = np.unique(lengths, return_counts=True)
            for v, c in zip(vals.tolist(), counts.tolist(), strict=True):
                self.tallies.burst(v, c)

    def settle(self, upto: int, arrived: np.ndarray, ring: DelayRing, highest: int) -> None:
        """Settle sequences (settled, upto]: the missing ones are lost, completed runs are
        bursts. `arrived`: this batch's unique sequences, sorted; the ring (highest: its
        highest sequence) holds the earlier ones."""
        f0, size = self.settled, ring.size
        if upto <= f0:
            return
        pre = ring.arrived(f0 + 1, min(highest, upto))
        lo, hi = np.searchsorted(arrived, f0, "right"), np.searchsorted(arrived, upto, "right")
        got = arrived[lo:hi]
        if pre.size + got.size == upto - f0:  # nothing lost in the range
            if self.open_start >= 0:
                self.complete(f0)
            self.settled = upto
            return
        rcv = np.concatenate([pre, got])
        if pre.size and got.size and pre[-1] > got[0]:
            rcv.sort()
        edges = np.concatenate([[f0], rcv, [upto + 1]])
        gaps = np.diff(edges) - 1
        local = self._local_in(f0 + 1, upto, rcv)
        if not rcv.size:  # the whole range is lost: the open run goes on
            self.open_start = self.open_start if self.open_start >= 0 else f0 + 1
            self._lost(upto - f0, _NONE, local)
        else:
            lengths, starts, ends = gaps[:-1], edges[:-2] + 1, edges[1:-1] - 1
            if self.open_start >= 0:
                lengths[0] += f0 - self.open_start + 1
                starts[0] = self.open_start
            done = lengths > 0
            self._lost(upto - f0 - int(rcv.size), lengths[done], local)
            inside = done & (ends > upto - size)
            self.run_start = np.concatenate([self.run_start, starts[inside]])
            self.run_end = np.concatenate([self.run_end, ends[inside]])
            self.open_start = int(edges[-2]) + 1 if gaps[-1] > 0 else -1
        self.settled = upto

    def complete(self, end: int) -> None:
        """The open run ends at `end` (the next sequence arrived)."""
        self._lost(0, np.array([end - self.open_start + 1]))
        self.run_start = np.append(self.run_start, self.open_start)
        self.run_end = np.append(self.run_end, end)
        self.open_start = -1

    def lose_tail(self, first: int, last: int) -> None:
        """Sequences first..last were sent and will never come (a goodbye said so): one
        settled run."""
        self._lost(last - first + 1, np.array([last - first + 1]))
        self.run_start = np.append(self.run_start, first)
        self.run_end = np.append(self.run_end, last)
        self.settled = last

    def _local_in(self, lo: int, hi: int, rcv: np.ndarray) -> int:
        """How many sequences in lo..hi labelled local are not in rcv (sorted)."""
        if not self.local_start.size:
            return 0
        s, e = np.maximum(self.local_start, lo), np.minimum(self.local_end, hi)
        ok = s <= e
        if not ok.any():
            return 0
        s, e = s[ok], e[ok]
        n = int((e - s + 1).sum())
        if rcv.size:
            n -= int((np.searchsorted(rcv, e, "right") - np.searchsorted(rcv, s, "left")).sum())
        return n

    def mark_local(self, seq: np.ndarray, highest: int, drops: np.ndarray, buffers: bool,
                   shared: bool) -> None:
        """Label the sequences of gaps that opened while the receiving socket dropped. seq:
        this batch, unwrapped, arrival order (highest: the highest before it); drops: the
        socket's drops between each packet and the flow's previous one."""
        hit = np.flatnonzero(drops > 0)
        if not hit.size:
            return
        before = highest_before(seq, highest)
        gap = seq[hit] - before[hit] - 1
        hit, gap = hit[gap > 0], gap[gap > 0]
        if not hit.size:
            return
        d = drops[hit]
        n = local_part(gap, d, buffers)
        unsure = int(gap[gap > d].sum()) if buffers else 0
        if shared:
            unsure = int(gap.sum())
        start = before[hit] + 1
        keep = n > 0
        self.local_start = np.concatenate([self.local_start, start[keep]])
        self.local_end = np.concatenate([self.local_end, (start + n - 1)[keep]])
        self.tallies.count("unsure", unsure)

    def take_back(self, m: int) -> None:
        """Rare path: sequence m was settled as lost and has now arrived late."""
        k = int(np.searchsorted(self.local_end, m))
        local = k < self.local_end.size and self.local_start[k] <= m
        self.tallies.count("local_drops" if local else "lost", -1)
        if 0 <= self.open_start <= m:  # inside the run still open at the frontier
            parts = [m - self.open_start]
            if m > self.open_start:  # the part below m is a completed run now
                self.run_start = np.append(self.run_start, self.open_start)
                self.run_end = np.append(self.run_end, m - 1)
            self.open_start = m + 1 if m + 1 <= self.settled else -1
        else:  # inside a completed run: split it
            k = int(np.searchsorted(self.run_end, m))
            a, b = int(self.run_start[k]), int(self.run_end[k])
            self.tallies.burst(b - a + 1, -1)
            runs = [(x, y) for x, y in ((a, m - 1), (m + 1, b)) if x <= y]
            s = np.array([x for x, _ in runs], np.int64)
            e = np.array([y for _, y in runs], np.int64)
            self.run_start = np.concatenate([self.run_start[:k], s, self.run_start[k + 1 :]])
            self.run_end = np.concatenate([self.run_end[:k], e, self.run_end[k + 1 :]])
            parts = [y - x + 1 for x, y in runs]
        for p in parts:
            if p > 0:
                self.tallies.burst(p, 1)

    def forget_below(self, low: int) -> None:
        """Runs and labels ending at or below `low` leave (they left the window)."""
        if self.run_end.size and self.run_end[0] <= low:
            k = np.searchsorted(self.run_end, low, side="right")
            self.run_start, self.run_end = self.run_start[k:], self.run_end[k:]
        if self.local_end.size and self.local_end[0] <= low:
            k = np.searchsorted(self.local_end, low, side="right")
            self.local_start, self.local_end = self.local_start[k:], self.local_end[k:]
