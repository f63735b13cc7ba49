"""The common case across flows: in one receive batch, the parts of the flows that simply
continue (every packet the next sequence, nothing else to decide) are measured together, with
one set of numpy operations over all of them; each flow then takes its figures in a few
scalar steps (FlowStats.extend). A mesh node with a thousand peers pays per batch, not per
flow and batch.

Rules:
- ``Lanes`` works on a batch sorted by flow (``starts``: where each flow's part begins) and
  says, per part, whether it *may* continue its flow: native, no FINAL, no coalesced
  (GRO) packet, consecutive sequences, and no socket drop between its packets. The flow's own
  state decides the rest (FlowStats.extends: the first sequence is the next one, no drop
  before it, no loss run open, the ring big enough); a part that does not qualify takes the
  general path, packet arithmetic and all.
- Per part it gives the delays (a view of one array), their exact sum, extremes and negative
  count, the |IPDV| of consecutive packets, and the RFC 3550 jitter step: with the part's
  delays D_0..D_{n-1} and the flow's previous delay D_-1, J' = (15/16)**m J + S / 16 where
  S = sum_j (15/16)**(n-1-j) |D_j - D_{j-1}| and m the number of differences. These are the
  definitions analysis.py's module rules give; the general path computes the same numbers.
- Sums are exact: a batch whose delays are so large that an int64 sum could overflow is left
  to the general path.
"""

import numpy as np

from packet_flow import _io

_DECAY = 15 / 16
_SAFE = 1 << 61


class Lanes:
    """Which parts of one batch may continue their flows (``ok``) and, once ``measure`` ran,
    the figures of every part (module rules); parts by index 0..k-1."""

    __slots__ = ("ok", "owd", "steps", "step_sums", "sums", "lo", "hi", "neg", "weighted",
                 "starts", "ends", "drops", "safe")

    def __init__(self, srt: np.ndarray, starts: np.ndarray):
        n = len(srt)
        self.starts = starts
        self.ends = np.append(starts[1:], n)
        seq, drops = srt["seq"], srt["drops"]
        self.drops = drops[starts]
        if len(starts) == 1 and srt["coalesced"].any():   # one flow, received with UDP GRO
            self.ok = np.zeros(1, bool)
            return
        bad = (srt["kind"] != _io.K_NATIVE) | (srt["coalesced"] != 0) \
            | ((srt["flags"] & _io.FLAG_FINAL) != 0)
        if len(starts) == 1 and bad.any():  # one flow, not simple (a FINAL, legacy, STAMP)
            self.ok = np.zeros(1, bool)
            return
        link = np.zeros(n, bool)        # a packet that does not follow the one before it
        link[1:] = (seq[1:] - seq[:-1] != 1) | (drops[1:] != drops[:-1])
        link[starts] = False            # a part's first follows its flow's past (FlowStats)
        self.ok = np.logical_or.reduceat(bad | link, starts) == 0

    def measure(self, srt: np.ndarray) -> None:
        """The figures of every part (worth it only when some part is ``ok``)."""
        n, starts = len(srt), self.starts
        owd = srt["rx_ns"] - srt["tx_ns"]
        self.owd = owd
        self.lo = np.minimum.reduceat(owd, starts)
        self.hi = np.maximum.reduceat(owd, starts)
        self.safe = max(-int(self.lo.min()), int(self.hi.max())) * n < _SAFE
        self.sums = np.add.reduceat(owd, starts) if self.safe else None
        self.neg = np.add.reduceat((owd < 0).astype(np.int64), starts)
        steps = np.empty(n, np.int64)
        steps[0] = 0
        np.subtract(owd[1:], owd[:-1], out=steps[1:])
        np.abs(steps, out=steps)
        steps[starts] = 0                  # a part's first difference is to its flow's past
        self.steps = steps
        self.step_sums = np.add.reduceat(steps, starts)
        # (15/16)**(packets after it in its part) weighs each difference into the jitter
        after = np.repeat(self.ends - 1, self.ends - starts) - np.arange(n)
        self.weighted = np.add.reduceat(steps * _DECAY ** after, starts)

    def part(self, i: int):
        """Part i's figures, the arguments of FlowStats.extend: delays, |IPDV| of its
        consecutive packets, delay sum, min, max, negative count, weighted jitter sum (without
        its first difference), |IPDV| sum."""
        a, b = int(self.starts[i]), int(self.ends[i])
        return (self.owd[a:b], self.steps[a + 1 : b], int(self.sums[i]), int(self.lo[i]),
                int(self.hi[i]), int(self.neg[i]), float(self.weighted[i]),
                int(self.step_sums[i]))

