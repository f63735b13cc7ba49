"""A bounded-memory log-bucket histogram of int64 values, for summary percentiles.

Rules: a bucket is one float64 exponent and 8 mantissa bits, so every value lies within 0.2 %
of its bucket's midpoint; negative values use a mirrored set of buckets and zero has its own
count. Memory grows with the range of values seen, never with their number.
"""

import numpy as np

_HIST_SHIFT = 44  # float64 bits >> 44 keeps the exponent and 8 mantissa bits


class _Buckets:
    """Dense counts over a growing range of bucket indices."""

    def __init__(self):
        self.lo = 0
        self.counts = np.zeros(0, np.int64)

    def add(self, idx: np.ndarray) -> None:
        if not idx.size:
            return
        lo = int(idx.min())
        c = np.bincount(idx - lo)
        self.add_counts(lo, lo + c.size - 1, slice(lo, lo + c.size), c)

    def add_counts(self, lo: int, hi: int, at, counts: np.ndarray) -> None:
        """counts[j] more in bucket at[j] (an index array or a slice), lo..hi their range."""
        if not self.counts.size:
            self.lo, self.counts = lo, np.zeros(hi - lo + 1, np.int64)
        new_lo, new_hi = min(lo, self.lo), max(hi, self.lo + self.counts.size - 1)
        if new_lo < self.lo or new_hi >= self.lo + self.counts.size:
            grown = np.zeros(new_hi - new_lo + 1, np.int64)
            grown[self.lo - new_lo : self.lo - new_lo + self.counts.size] = self.counts
            self.lo, self.counts = new_lo, grown
        if isinstance(at, slice):
            self.counts[at.start - self.lo : at.stop - self.lo] += counts
        else:
            self.counts[at - self.lo] += counts

    def mids(self) -> tuple[np.ndarray, np.ndarray]:
        """(bucket midpoints, counts) of the non-empty buckets, ascending."""
        nz = np.flatnonzero(self.counts)
        i = nz.astype(np.int64) + self.lo
        low = (i << _HIST_SHIFT).view(np.float64)
        high = ((i + 1) << _HIST_SHIFT).view(np.float64)
        return (low + high) / 2, self.counts[nz]


class LogHistogram:
    """Bounded-memory histogram of int64 values (ns) for the summary percentiles.

    A bucket is one float64 exponent and 8 mantissa bits, so its width is at most 2**-8 of its
    lower bound and its midpoint is within 0.2 % of every value in it. Negative values use a
    mirrored set of buckets; zero has its own count.
    """

    def __init__(self):
        self.n = 0
        self.zeros = 0
        self._pos = _Buckets()
        self._neg = _Buckets()

    def add(self, values: np.ndarray) -> None:
        """Count every value of an int64 array."""
        if not values.size:
            return
        idx = values.astype(np.float64).view(np.int64) >> _HIST_SHIFT
        self.n += idx.size
        if idx.min() > 0:
            self._pos.add(idx)
            return
        self._pos.add(idx[idx > 0])
        neg = idx[idx < 0] + (1 << (63 - _HIST_SHIFT))  # sign bit off: the magnitude's bucket
        self._neg.add(neg)
        self.zeros += int(idx.size - np.count_nonzero(idx))

    @staticmethod
    def add_many(hists: list, values: np.ndarray, sizes: list) -> None:
        """hists[i].add() of the next sizes[i] values, for all with one pass over them."""
        idx = values.astype(np.float64).view(np.int64) >> _HIST_SHIFT
        owner = np.repeat(np.arange(len(hists), dtype=np.int64), sizes)
        zero = idx == 0
        neg = idx < 0
        mag = np.where(neg, idx + (1 << (63 - _HIST_SHIFT)), idx)  # below 2**20 either way
        keys, counts = np.unique(((owner << 22) | (neg.astype(np.int64) << 21) | mag)[~zero],
                                 return_counts=True)
        zeros = np.bincount(owner[zero], minlength=len(hists)).tolist()
        cut = np.arange(len(hists) + 1, dtype=np.int64) << 22
        bounds = np.searchsorted(keys, cut).tolist()
        mids = np.searchsorted(keys, cut[:-1] | (1 << 21)).tolist()
        bucket = keys & ((1 << 21) - 1)
        for i, h in enumerate(hists):
            h.n += sizes[i]
            h.zeros += zeros[i]
            for part, a, b in ((h._pos, bounds[i], mids[i]), (h._neg, mids[i], bounds[i + 1])):
                if b > a:
                    part.add_counts(int(bucket[a]), int(bucket[b - 1]), bucket[a:b],
                                    counts[a:b])

    @property
    def nbytes(self) -> int:
        """Bytes of the bucket counts."""
        return self._pos.counts.nbytes + self._neg.counts.nbytes

    def quantiles(self, percents, lo: int, hi: int) -> list:
        """Linear-interpolated percentiles (numpy's default method), clamped to [lo, hi]."""
        if not self.n:
            return [None] * len(percents)
        nv, nc = self._neg.mids()
        pv, pc = self._pos.mids()
        vals = np.concatenate([-nv[::-1], [0.0], pv])
        cum = np.cumsum(np.concatenate([nc[::-1], [self.zeros], pc]))
        out = []
        for p in percents:
            r = p / 100 * (self.n - 1)
            k = np.searchsorted(cum, [int(np.floor(r)), int(np.ceil(r))], side="right")
            a, b = vals[k[0]], vals[k[1]]
            out.append(min(max(a + (r - np.floor(r)) * (b - a), lo), hi))
        return out
