"""Per-flow packet statistics: pure numpy, fed one batch at a time, state kept between batches.

FlowStats here is the online bookkeeping; its parts: seqspace (sequence arithmetic), ring
(DelayRing: what the window remembers), lossruns (LossRuns: settling, loss runs, local drops),
delays (DelayStats: delays, jitter, IPDV) and results (Tallies into records, Frozen).
``update`` is the general path; ``extend`` the fast lane's step for packets that simply
continue the flow (``continues``; their figures computed across flows by inorder.py): the
same state and the same numbers, without the arithmetic the common case does not need.

Rules (the metric names are those of docs/options.md (JSON-lines records) and REFERENCE.md §2):

- Sequences. Only the low ``seq_bits`` bits of a sequence number are meaningful (32 for STAMP,
  64 otherwise). Each batch is unwrapped against the highest sequence so far, so a wrap is just the
  next number. The first packet of the flow is its start: sequences below it are never lost. A
  batch must not jump more than 2**(seq_bits-1) ahead; for 64 bits jumps are clipped to 2**62.
- Classes. With ``h`` the highest sequence when a packet arrives: ``s > h`` is new (``s > h+1``
  opens a gap); ``s <= h`` is a duplicate if it was already received (in an earlier batch or
  earlier in the same batch), else late (RFC 4737 reordered). A packet at or below ``h - window``
  cannot be checked against the window: it counts as ``late`` only (not received, not in the
  delay statistics, takes back no loss).
- Loss settles. A missing sequence becomes lost once it is more than ``horizon`` below ``h``.
  ``horizon`` starts at 0 and grows to the largest reorder displacement ``h - s`` of a late packet
  seen so far (capped at ``window - 1``): without reordering loss is reported at once, and a
  reordering seen once never produces false loss again. ``close()`` settles everything up to ``h``.
- Bursts (RFC 3357 loss periods): maximal runs of consecutive lost sequences, counted once the
  run is settled and the sequence after it has arrived. A late packet for a sequence already
  settled as lost takes it back exactly: lost - 1 and its burst is split in two. Interval values are net (settled minus
  taken back during the interval), so they may be negative in that rare case and always add up to
  the summary.
- Local drops. The caller may say, per packet, how many datagrams the receiving socket dropped
  since the flow's previous packet. A gap that opens across such drops is the host's, not the
  path's: when each drop is one datagram, min(gap, drops) of it is ``local_drops`` and the rest
  ``lost``; when a drop is a socket buffer that may hold several datagrams (UDP GRO), the whole
  gap is ``local_drops``, and if the gap is larger than the buffers dropped (a path loss could
  hide in it) or other flows share the socket (the drops may be theirs), the record says
  ``local_drops_exact: false``. Missing sequences are labelled when their gap opens and
  counted when they settle; a late packet in a labelled gap takes back a local drop.
  ``loss_burst_*`` describe runs of missing sequences whatever the cause, so their sum is
  ``lost + local_drops``; ``loss_percent`` is ``lost / (received + local_drops + lost)``.
- Timestamps. A packet whose receive timestamp is not its own (``timed`` False: one of a UDP
  GRO burst that got one timestamp) counts as received, late or duplicate as any other, but
  stays out of the delay, jitter and IPDV statistics; unique ones are counted as ``coalesced``.
- Delays are ``rx - tx`` in int64 ns, negative kept (``negative_owd``), over unique arrivals only
  (new and late, never duplicates). Interval percentiles are exact (numpy, linear interpolation);
  summary percentiles come from a log-bucket histogram with at most 0.2 % relative error
  (8 mantissa bits per octave, separate buckets for negative values and zero); summary min, max
  and mean are exact.
- ``jitter_us`` is the RFC 3550 §6.4.1 interarrival jitter estimator over unique arrivals in
  arrival order across batches, its value at the end of the interval. ``ipdv_*`` are the mean and
  p99 of |IPDV| (RFC 3393/5481): |D(s) - D(s-1)| for consecutive sequences that both arrived,
  whatever their arrival order; a pair counts when its second packet arrives.
- Counters are Python ints; output floats are µs rounded to 3 decimals (ns); no data gives None,
  never NaN.
- Memory per flow (``nbytes``): one int64 ring of ``window`` entries (8 KiB at first, 1 MiB at
  most by default) plus the lost runs inside the window, the interval's delays and the summary
  histograms. The ring grows (to a power of two >= 4 x the need) only for what the flow itself
  shows: the packets of a batch (its rate) and the depth of the reordering it sees; a jump ahead
  is a gap, not a reason to grow, and the need never exceeds the packets the flow has delivered,
  so a spoofed flow buys at most a few dozen bytes of ring per datagram. A packet from further
  back than the ring reached when it arrived is late only (above); the ring then grows, so the
  same depth is exact next time. ``growable = False`` (the owner's memory budget is spent)
  keeps the ring at its size.
"""

import numpy as np

from packet_flow import defaults
from packet_flow.delays import DelayStats
from packet_flow.lossruns import LossRuns
from packet_flow.results import Frozen, Tallies
from packet_flow.ring import EMPTY, UNTIMED, DelayRing
from packet_flow.seqspace import highest_before, in_order, unwrap


class FlowStats:
    """Loss, reordering, duplicates, delay and jitter of one flow, fed batch by batch: the
    online bookkeeping (sequence classes, settling, taking back) over a DelayRing, LossRuns and
    DelayStats; their Tallies turn into records (packet_flow.results).

    ``update`` takes one batch of packets of this flow in arrival order; ``take_interval``
    returns the record fields since its previous call; ``summary`` the totals of the flow's life.
    """

    def __init__(self, seq_bits: int = 64, window: int = defaults.SEQ_WINDOW,
                 initial_window: int = defaults.SEQ_WINDOW_INITIAL, start: int | None = None):
        """`start`: the flow's first sequence when it is known in advance (a sender's own
        replies start at 0), so a gap right at the beginning counts as loss; by default the
        first packet to arrive starts the flow."""
        if not 2 <= seq_bits <= 64:
            raise ValueError(f"seq_bits must be 2..64, not {seq_bits}")
        if window < 2:
            raise ValueError(f"window must be at least 2, not {window}")
        self._bits = seq_bits
        self._mask = (1 << seq_bits) - 1
        # A power-of-two window starts small and doubles as the flow needs it (fast flows,
        # deep reordering), so a thousand slow flows cost a thousand small rings.
        size = window
        if window & (window - 1) == 0 and initial_window < window:
            size = max(2, initial_window)
        self.ring = DelayRing(size, window)
        self.growable = True  # False: the ring keeps its size (its owner's memory is spent)
        self._first = start  # the first sequence (start of the flow), unwrapped
        self._top = -1  # the highest sequence, relative to _first
        self._horizon = 0
        self.tallies = Tallies()
        self.losses = LossRuns(self.tallies)
        self.delays = DelayStats(self.tallies)
        self._prior = None  # the Frozen state this flow resumed from

    @property
    def nbytes(self) -> int:
        """Bytes of this flow's numpy buffers: the ring, the lost runs inside the window,
        the current interval's delays and the summary histograms."""
        total = self.tallies.total
        return (self.ring.nbytes + self.losses.nbytes + self.tallies.interval.parts_bytes
                + total.owd_hist.nbytes + total.ipdv_hist.nbytes)

    @property
    def window(self) -> int:
        """The ring's size now (it grows up to the window given)."""
        return self.ring.size

    @property
    def horizon(self) -> int:
        """The reorder horizon: how far below the highest a missing sequence may still come."""
        return self._horizon

    @property
    def highest(self) -> int:
        """Highest (unwrapped) sequence seen, -1 if none."""
        return -1 if self._first is None else self._first + self._top

    def update(self, seq: np.ndarray, tx_ns: np.ndarray, rx_ns: np.ndarray, timed=None,
               host_drops=None, buffers: bool = False, shared: bool = False) -> None:
        """Account one batch of this flow's packets, in arrival order.

        ``seq`` uint64 (low ``seq_bits`` bits used), ``tx_ns``/``rx_ns`` int64 ns timestamps.
        ``timed``: bool per packet, False where ``rx_ns`` is not the packet's own (a coalesced
        burst shares one): such packets count everywhere except in the delay statistics.
        ``host_drops``: per packet, how many datagrams the receiving socket dropped between
        the flow's previous packet and this one (``buffers``: socket buffers, each holding one
        datagram or several); ``shared``: other flows use the socket too, so those drops may
        be theirs. Gaps that open across such drops are ``local_drops``, not ``lost``.
        """
        seq = np.asarray(seq, np.uint64)
        if not seq.size:
            return
        owd = np.asarray(rx_ns, np.int64) - np.asarray(tx_ns, np.int64)
        if timed is not None:
            owd = np.where(timed, owd, UNTIMED)
        if self._first is None:
            self._first = int(seq[0]) & self._mask
        useq = self._unwrap(seq)
        top0, ring, losses = self._top, self.ring, self.losses
        ordered = in_order(useq, top0)
        if ring.size < ring.max_size and self.growable:
            need = useq.size if ordered else max(useq.size, self._depth(useq))
            need = min(need, self.tallies.total.received + useq.size)
            if 2 * need > ring.size:
                ring.grow(need, top0)
        if host_drops is not None:
            losses.mark_local(useq, top0, np.asarray(host_drops, np.int64), buffers, shared)
        if ordered:  # everything new, in order: the common case
            uniq_seq = sorted_seq = useq
            uniq_owd = sorted_owd = owd
            horizon, taken_back, late, dups = self._horizon, (), 0, 0
            top = int(useq[-1])
            settle_to = max(losses.settled, top - horizon - 1)
        else:
            uniq_seq, uniq_owd, horizon, settle_to, taken_back, late, dups = classify(
                useq, owd, top0, ring, losses.settled, self._horizon)
            order = np.argsort(uniq_seq, kind="stable")
            sorted_seq, sorted_owd = uniq_seq[order], uniq_owd[order]
            top = max(top0, int(useq.max()))
        for m in taken_back:
            losses.take_back(int(m))
        losses.settle(settle_to, sorted_seq, ring, top0)  # the ring as it was before the batch
        if sorted_seq.size:
            self.delays.ipdv(sorted_seq, sorted_owd, ring, top0)  # idem
        ring.advance(top0, top)
        ring.store(sorted_seq, sorted_owd, top)
        self._top, self._horizon = top, horizon
        if losses.open_start >= 0 and ring.has(losses.settled + 1):
            losses.complete(losses.settled)  # settled+1 arrived: the open run ends there
        losses.forget_below(top - ring.size)
        self.delays.add(uniq_owd)
        for a in (self.tallies.interval, self.tallies.total):
            a.received += int(uniq_seq.size)
            a.late += late
            a.duplicates += dups

    def continues(self, seq0: int, n: int) -> bool:
        """Whether n consecutive packets from raw sequence seq0 on may take the fast lane
        (inorder.py, ``extend``): seq0 is the next sequence, nothing below it is missing or
        in an open loss run, and the ring holds them without growing."""
        ring, losses, top = self.ring, self.losses, self._top
        first = seq0 & self._mask if self._first is None else self._first  # a new flow starts
        if (seq0 - first - top - 1) & self._mask:
            return False
        if losses.open_start >= 0 or n > ring.size or (
                2 * n > ring.size and ring.size < ring.max_size and self.growable):
            return False
        return losses.settled >= top - 1 or \
            ring.arrived(losses.settled + 1, top).size == top - losses.settled

    def extend(self, seq0: int, owd: np.ndarray, steps: np.ndarray, owd_sum: int, lo: int,
               hi: int, neg: int, weighted: float, step_sum: int) -> None:
        """The fast lane's step (``continues`` said yes): this flow's next owd.size packets, in
        order, none coalesced, with their delays, the |IPDV| of consecutive ones (``steps``,
        one fewer, summing to step_sum), the delays' exact sum, extremes and negative count,
        and their weighted jitter sum (inorder.py); seq0 the first one's raw sequence. The
        same state and tallies as update()."""
        if self._first is None:
            self._first = seq0 & self._mask
        n, ring, top0 = owd.size, self.ring, self._top
        top = top0 + n
        before = int(ring.slots[ring.slot(top0)]) if top0 >= 0 else EMPTY
        self.delays.extend(owd, steps, before, owd_sum, lo, hi, neg, weighted, step_sum)
        ring.put_run(top0, owd)
        losses = self.losses
        losses.settled = max(losses.settled, top - self._horizon - 1)
        losses.forget_below(top - ring.size)
        self._top = top
        self.tallies.count("received", n)

    def _depth(self, useq: np.ndarray) -> int:
        """Deepest reordering in a batch: how far below the highest sequence before it a
        packet arrives (0 when none does)."""
        return max(0, int((highest_before(useq, self._top) - useq).max()))

    def _unwrap(self, seq: np.ndarray, first: int | None = None) -> np.ndarray:
        """Sequences relative to the flow's first (see seqspace.unwrap)."""
        first = self._first if first is None else first
        return unwrap(seq, first + self._top, self._bits) + self._top

    def unwrap(self, seq: np.ndarray) -> np.ndarray:
        """The unwrapped (absolute, int64) sequences of a batch not yet given to update(), as
        update() will see them: a 32-bit STAMP sequence after a wrap continues above 2**32."""
        seq = np.asarray(seq, np.uint64)
        if self._first is None:
            first = int(seq[0]) & self._mask if seq.size else 0
            return self._unwrap(seq, first) + first
        return self._unwrap(seq) + self._first

    def received(self, useq: np.ndarray) -> np.ndarray:
        """Whether each unwrapped sequence (from unwrap()) was received in an earlier batch.
        Sequences older than the window remembers count as received (nothing can be said of
        them but that they are far in the past)."""
        if self._first is None:
            return np.zeros(np.shape(useq), bool)
        return self.ring.received(np.asarray(useq, np.int64) - self._first, self._top)

    def position(self, seq: np.ndarray) -> np.ndarray:
        """Unwrapped sequences relative to the highest so far (0 = the highest, < 0 below)."""
        if self._first is None:
            return np.zeros(len(seq), np.int64)
        return self._unwrap(np.asarray(seq, np.uint64)) - self._top

    def close(self, end: int | None = None) -> None:
        """The sender said goodbye: settle every gap up to the highest sequence. ``end``: the
        sender's next, unsent sequence (the Rust original's FINAL carries it); the sequences
        from the highest up to it were sent and never arrived, so they are one more lost run."""
        if self.losses.settled < self._top:
            self.losses.settle(self._top, np.zeros(0, np.int64), self.ring, self._top)
        if end is None or self._first is None:
            return
        last = int(self._unwrap(np.array([end], np.uint64))[0]) - 1
        if last <= self._top:
            return
        self.ring.advance(self._top, last)
        self.losses.lose_tail(self._top + 1, last)
        self._top = last

    def restart_at(self, seq: np.ndarray, tx_ns: np.ndarray, tx_max: int) -> int:
        """For senders without a session id (legacy, STAMP): the index in this batch of the
        first packet of a new run of the sender, -1 if none. A new run is a packet sent later
        than every packet before it (``tx_max``: the flow's latest send time so far) whose
        sequence lies further below the highest so far than the reorder horizon, and is 0 (a
        restart from the beginning) or more than RESTART_BACK below. A reordered packet was
        sent before the packets that overtook it, and a duplicate carries its original's send
        time, so neither looks like a new run."""
        if not len(seq):
            return -1
        if self._first is None:  # the flow's first batch: it starts where update() will
            self._first = int(seq[0]) & self._mask
        useq = self._unwrap(np.asarray(seq, np.uint64))
        if in_order(useq, self._top):
            return -1  # all new, in order: the common case
        tx = np.asarray(tx_ns, np.int64)
        back = highest_before(useq, self._top) - useq
        start = (np.asarray(seq, np.uint64) & np.uint64(self._mask)) == 0
        hit = ((tx > highest_before(tx, tx_max)) & (back > self._horizon)
               & (start | (back > defaults.RESTART_BACK)))
        i = np.flatnonzero(hit)
        return int(i[0]) if i.size else -1

    def freeze(self) -> Frozen:
        """The compact state a forgotten flow keeps (see Frozen); this FlowStats can go.
        Settles every gap up to the highest sequence first (as close())."""
        self.close()
        self.tallies.fold()
        total = self.tallies.total
        return Frozen(self._bits, (self.highest + 1) & self._mask, self._horizon, total,
                      total.record(self.delays.jitter))

    @classmethod
    def resume(cls, frozen: Frozen, window: int = defaults.SEQ_WINDOW,
               initial_window: int = defaults.SEQ_WINDOW_INITIAL) -> "FlowStats":
        """A flow forgotten as `frozen` continues: the sequences from its next one up to the
        first packet back are lost (one burst, settled in the batch that brings it back);
        totals go on from the frozen ones. Summary percentiles and jitter then cover the
        packets since the return (the frozen values while none came)."""
        st = cls(frozen.bits, window, initial_window, start=frozen.next)
        st._horizon = min(frozen.horizon, st.ring.size - 1)
        st.ring.known = 0  # no history below the resume point: packets there are too old
        st.tallies.total = frozen.total()
        st._prior = frozen
        return st

    def take_interval(self) -> dict:
        """Record fields for the interval since the previous call; starts a new interval."""
        return self.tallies.take_interval(self.delays.jitter)

    def summary(self) -> dict:
        """Record fields for the whole life of the flow so far (does not reset anything)."""
        self.tallies.fold()
        rec = self.tallies.total.record(self.delays.jitter)
        if self._prior is not None:  # resumed: the frozen values where nothing came since
            rec.update((k, v) for k, v in self._prior.stats.items() if rec[k] is None)
        return rec


def classify(useq: np.ndarray, owd: np.ndarray, top0: int, ring: DelayRing, settled: int,
             horizon: int):
    """The general path's classes (some packet not above the one before): of one batch of
    unwrapped sequences (top0: the highest before it; settled: LossRuns.settled; horizon:
    the reorder horizon so far), the unique sequences and their delays, the new horizon,
    how far to settle, the settled sequences taken back, and the late and duplicate counts."""
    size = ring.size
    through = np.maximum.accumulate(useq)  # the highest up to and with each packet
    before = highest_before(useq, top0)
    new = useq > before
    too_old = ~new & ((useq <= before - size) | (useq < ring.known))
    old_i = np.flatnonzero(~new & ~too_old)
    old = useq[old_i]
    # an old packet equal to a new one of this batch came after it: duplicate
    new_seq = useq[new]  # ascending
    k = np.minimum(np.searchsorted(new_seq, old), max(new_seq.size - 1, 0))
    dup = new_seq[k] == old if new_seq.size else np.zeros(old.size, bool)
    # repeated old packets in this batch: all but the first are duplicates
    o = np.argsort(old, kind="stable")
    rep = np.zeros(old.size, bool)
    rep[o[1:]] = old[o[1:]] == old[o[:-1]]
    dup |= rep
    earlier = ~dup & (old <= top0)  # maybe received in an earlier batch
    dup[earlier] = ring.slots[ring.slot(old[earlier])] != EMPTY
    late_i = old_i[~dup]
    unique = new.copy()
    unique[late_i] = True
    displacement = np.zeros(useq.size, np.int64)
    displacement[late_i] = before[late_i] - useq[late_i]
    displacement[too_old] = size - 1
    horizons = np.minimum(np.maximum.accumulate(np.maximum(displacement, horizon)),
                          size - 1)
    settle_to = max(settled, int((through - horizons - 1).max()))
    late_seq = useq[late_i]
    taken_back = late_seq[(late_seq >= 0) & (late_seq <= settled)]
    late = int(late_i.size + np.count_nonzero(too_old))
    return (useq[unique], owd[unique], int(horizons[-1]), settle_to, taken_back, late,
            int(np.count_nonzero(dup)))
