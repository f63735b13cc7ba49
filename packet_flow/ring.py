"""The delay ring of one flow: what it remembers of the sequences inside its window.

Rules:
- Slot ``s % size`` holds the delay (int64 ns) of sequence ``s`` when it arrived, EMPTY when it
  did not, UNTIMED when it arrived without a timestamp of its own. Sequences are relative to
  the flow's first one, and the ring covers ``highest - size + 1 .. highest``.
- ``known`` is the lowest sequence the ring has history for: below it (and below the window)
  nothing can be said of a sequence; a packet from there is "too old".
- A power-of-two ring starts small and grows (``grow``) to the next power of two >= 4 x the
  need, at most ``max_size``, keeping what it holds for the sequences it covered; it knows
  nothing below its old window after that.
"""

import numpy as np

from packet_flow.seqspace import JUMP_MAX

EMPTY = np.iinfo(np.int64).min  # slot of a sequence not received
UNTIMED = EMPTY + 1  # slot of a sequence received without a timestamp of its own


class DelayRing:
    """Delays of the sequences inside the window, by sequence."""

    __slots__ = ("slots", "size", "max_size", "pow2", "known")

    def __init__(self, size: int, max_size: int):
        self.slots = np.full(size, EMPTY, np.int64)
        self.size, self.max_size = size, max_size
        self.pow2 = size & (size - 1) == 0
        self.known = -JUMP_MAX

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes

    def slot(self, x):
        return x & (self.size - 1) if self.pow2 else x % self.size

    def span(self, lo: int, hi: int):
        """Slices holding sequences lo..hi (hi - lo < size), in order."""
        a, n = self.slot(lo), hi - lo + 1
        if a + n <= self.size:
            return (slice(a, a + n),)
        return slice(a, self.size), slice(0, a + n - self.size)

    def grow(self, need: int, highest: int) -> None:
        """Widen to the next power of two >= 4 * need (at most max_size)."""
        size = min(self.max_size, 1 << max(1, (4 * need - 1).bit_length()))
        if size <= self.size:
            return
        slots = np.full(size, EMPTY, np.int64)
        if highest >= 0:
            s = np.arange(max(0, highest - self.size + 1), highest + 1)
            slots[s & (size - 1)] = self.slots[self.slot(s)]
            self.known = max(self.known, int(s[0]))
        self.slots, self.size, self.pow2 = slots, size, True

    def lookup(self, x: np.ndarray, highest: int) -> np.ndarray:
        """Delays of sequences x (EMPTY where the window does not reach)."""
        if x.size == 1:  # the common case: one neighbour just below the batch
            if highest - self.size < x[0] <= highest:
                return self.slots[self.slot(x)]
            return np.array([EMPTY])
        out = np.full(x.size, EMPTY, np.int64)
        ok = (x <= highest) & (x > highest - self.size)
        out[ok] = self.slots[self.slot(x[ok])]
        return out

    def received(self, x: np.ndarray, highest: int) -> np.ndarray:
        """Whether each sequence x arrived; those the ring cannot tell about (below its window
        or its history) count as received, those above the highest as not."""
        out = x <= highest
        known = out & (x > highest - self.size) & (x >= max(0, self.known))
        out[known] = self.slots[self.slot(x[known])] != EMPTY
        return out

    def arrived(self, lo: int, hi: int) -> np.ndarray:
        """The sequences in lo..hi (inside the window) that arrived, sorted."""
        if hi < lo:
            return np.zeros(0, np.int64)
        got = np.concatenate([self.slots[sl] for sl in self.span(lo, hi)])
        return np.flatnonzero(got != EMPTY) + lo

    def advance(self, old: int, new: int) -> None:
        """The highest moves from old to new: the sequences entering the window start empty."""
        if new > old:
            for sl in (slice(None),) if new - old >= self.size else self.span(old + 1, new):
                self.slots[sl] = EMPTY

    def put_run(self, highest: int, owd: np.ndarray) -> None:
        """The sequences just above the highest, highest+1.. in order, arrived with delays
        owd (at most the ring's size of them): the highest moves up to the last."""
        at = 0
        for sl in self.span(highest + 1, highest + owd.size):
            self.slots[sl] = owd[at : at + sl.stop - sl.start]
            at += sl.stop - sl.start

    def store(self, seq: np.ndarray, owd: np.ndarray, highest: int) -> None:
        """Delays of the sorted sequences seq; those already below the window are left out."""
        k = int(np.searchsorted(seq, highest - self.size, side="right"))
        self.slots[self.slot(seq[k:])] = owd[k:]

    def has(self, s: int) -> bool:
        return bool(self.slots[self.slot(s)] != EMPTY)
