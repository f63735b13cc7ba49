"""Per-flow packet statistics: pure numpy, fed one batch at a time, state kept between batches.

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

import math
import struct

import numpy as np

from packet_flow import defaults
from packet_flow.histogram import LogHistogram
from packet_flow.seqspace import JUMP_MAX, highest_before, in_order, unwrap

EMPTY = np.iinfo(np.int64).min  # ring entry of a sequence not received
UNTIMED = EMPTY + 1  # ring entry of a sequence received without a timestamp of its own
_JITTER_TAIL = 2000  # (15/16)**2000 < 1e-56: older |D| values no longer change J
_JITTER_W = (15 / 16) ** np.arange(_JITTER_TAIL - 1, -1, -1, dtype=np.float64)
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _us(ns):
    """ns (int or float) to µs rounded to 3 decimals; None stays None."""
    return None if ns is None else round(float(ns / 1000), 3)


def _percentiles(parts: list, percents) -> list:
    """Exact percentiles of the concatenated arrays, as numpy's default (linear) method."""
    a = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
    r = np.asarray(percents, np.float64) / 100 * (a.size - 1)
    lo = np.floor(r).astype(np.int64)
    hi = np.ceil(r).astype(np.int64)
    a.partition(np.unique(np.concatenate([lo, hi])))
    x, y, t = a[lo].astype(np.float64), a[hi].astype(np.float64), r - lo
    d = y - x
    return np.where(t >= 0.5, y - d * (1 - t), x + d * t).tolist()  # numpy's _lerp


def _exact_sum(a: np.ndarray, lo: int, hi: int) -> int:
    """Exact sum of an int64 array whose values lie in [lo, hi]."""
    if max(-lo, hi) * a.size < 1 << 62:
        return int(a.sum())
    total = 0
    for i in range(0, a.size, 1 << 20):
        c = a[i : i + (1 << 20)]
        total += (int((c >> 20).sum()) << 20) + int((c & 0xFFFFF).sum())
    return total


def local_part(gap: np.ndarray, drops: np.ndarray, buffers: bool) -> np.ndarray:
    """How many sequences of each gap the receiving host dropped itself, given the socket's
    drops across the gap (module rules): one drop, one datagram -> min(gap, drops), the rest
    was lost on the path; drops of GRO buffers (``buffers``), which hold one datagram or
    several -> the whole gap."""
    return np.where(drops > 0, gap if buffers else np.minimum(gap, drops), 0)


class _Acc:
    """Accumulators of one interval (raw delay arrays) or of the whole flow (histograms)."""

    def __init__(self, interval: bool):
        self.interval = interval
        self.received = self.lost = self.late = self.duplicates = self.negative_owd = 0
        self.local_drops = self.unsure = self.coalesced = 0
        self.hist: dict[int, int] = {}
        self.owd_n = self.owd_sum = 0
        self.owd_min = self.owd_max = None
        self.ipdv_n = self.ipdv_sum = 0
        self.jitter_n = 0
        self.parts_bytes = 0  # bytes of the interval's delay arrays
        if interval:
            self.owd_parts: list[np.ndarray] = []
            self.ipdv_parts: list[np.ndarray] = []
        else:
            self.owd_hist = LogHistogram()
            self.ipdv_hist = LogHistogram()

    def burst(self, length: int, count: int) -> None:
        c = self.hist.get(length, 0) + count
        if c:
            self.hist[length] = c
        else:
            self.hist.pop(length, None)

    def record(self, jitter_ns: float) -> dict:
        lost, rcv, local = self.lost, self.received, self.local_drops
        if self.owd_n and self.interval:
            pct = _percentiles(self.owd_parts, PERCENTILES)
        elif self.owd_n:
            pct = self.owd_hist.quantiles(PERCENTILES, self.owd_min, self.owd_max)
        else:
            pct = [None] * len(PERCENTILES)
        if self.ipdv_n and self.interval:
            ipdv_p99 = _percentiles(self.ipdv_parts, [99.0])[0]
        elif self.ipdv_n:
            ipdv_p99 = self.ipdv_hist.quantiles([99.0], 0, 1 << 63)[0]
        else:
            ipdv_p99 = None
        return {
            "received": rcv,
            "lost": lost,
            "late": self.late,
            "duplicates": self.duplicates,
            "loss_bursts": sum(self.hist.values()),
            "max_loss_burst": max((k for k, v in self.hist.items() if v > 0), default=0),
            "loss_burst_hist": {str(k): v for k, v in sorted(self.hist.items())},
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


_TOTALS = ("received", "lost", "late", "duplicates", "negative_owd", "local_drops", "unsure",
           "coalesced", "owd_n", "owd_sum", "owd_min", "owd_max", "ipdv_n", "ipdv_sum",
           "jitter_n")
_FROZEN_STATS = ("owd_p50_us", "owd_p90_us", "owd_p99_us", "owd_p999_us", "jitter_us",
                 "ipdv_p99_us")
_FROZEN = struct.Struct(f"<{len(_TOTALS)}q{len(_FROZEN_STATS)}d")
_NONE_INT = -(1 << 63)


class Frozen:
    """What a forgotten flow keeps: where its sequence stood and its totals, packed into a
    few hundred bytes instead of its ring and histograms. ``FlowStats.resume`` continues the
    flow from it; ``summary()`` gives the summary of a flow that never came back (its
    percentiles as they were when it was forgotten)."""

    __slots__ = ("bits", "next", "horizon", "packed", "hist")

    def __init__(self, bits, next_seq, horizon, totals, hist, stats):
        self.bits, self.next, self.horizon, self.hist = bits, next_seq, horizon, hist
        self.packed = _FROZEN.pack(*(_NONE_INT if v is None else v for v in totals),
                                   *(math.nan if v is None else v for v in stats))

    @property
    def totals(self) -> tuple:
        v = _FROZEN.unpack(self.packed)[: len(_TOTALS)]
        return tuple(None if x == _NONE_INT else x for x in v)

    @property
    def stats(self) -> tuple:
        v = _FROZEN.unpack(self.packed)[len(_TOTALS) :]
        return tuple(None if math.isnan(x) else x for x in v)

    def summary(self) -> dict:
        acc = _Acc(False)
        for k, v in zip(_TOTALS, self.totals, strict=True):
            setattr(acc, k, v)
        acc.hist = dict(self.hist)
        rec = acc.record(0.0)
        rec.update(zip(_FROZEN_STATS, self.stats, strict=True))
        return rec


class FlowStats:
    """Loss, reordering, duplicates, delay and jitter of one flow, fed batch by batch.

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
        self._max_w = window
        # A power-of-two window starts small and doubles as the flow needs it (fast flows,
        # deep reordering), so a thousand slow flows cost a thousand small rings.
        if window & (window - 1) == 0 and initial_window < window:
            window = max(2, initial_window)
        self._w = window
        self._pow2 = window & (window - 1) == 0
        self._ring = np.full(window, EMPTY, np.int64)  # delay of received sequences, by s % window
        self._known = -JUMP_MAX  # the lowest sequence the ring has history for (see _grow)
        self.growable = True  # False: the window keeps its size (its owner's memory is spent)
        self._low = start  # the first sequence (start of the flow), unwrapped
        self._h = -1  # highest sequence, relative to _low
        self._f = -1  # every sequence <= _f is settled
        self._horizon = 0
        self._open = -1  # start of the lost run that reaches _f, -1 if _f is not lost
        self._run_s = np.zeros(0, np.int64)  # completed lost runs ending inside the window
        self._run_e = np.zeros(0, np.int64)
        self._loc_s = np.zeros(0, np.int64)  # sequences dropped by the receiving host, as runs
        self._loc_e = np.zeros(0, np.int64)
        self._last_owd = None  # delay of the last unique arrival (RFC 3550 D)
        self._jitter = 0.0
        self._cur = _Acc(True)
        self._tot = _Acc(False)
        self._prior = None  # the Frozen state this flow resumed from

    def _grow(self, need: int) -> None:
        """Widen the ring to the next power of two >= 4 * need (at most the maximum window),
        keeping what it holds for the sequences it covered."""
        w = min(self._max_w, 1 << max(1, (4 * need - 1).bit_length()))
        if w <= self._w:
            return
        ring = np.full(w, EMPTY, np.int64)
        if self._h >= 0:
            s = np.arange(max(0, self._h - self._w + 1), self._h + 1)
            ring[s & (w - 1)] = self._ring[self._slot(s)]
            # the ring knows nothing below the old window: packets there stay "too old"
            self._known = max(self._known, int(s[0]))
        self._ring, self._w, self._pow2 = ring, w, True

    def _depth(self, u: np.ndarray) -> int:
        """Deepest reordering in a batch: how far below the highest sequence before it a
        packet arrives (0 when none does)."""
        return max(0, int((highest_before(u, self._h) - u).max()))

    @property
    def nbytes(self) -> int:
        """Bytes of this flow's numpy buffers: the ring, the lost runs inside the window,
        the current interval's delays and the summary histograms."""
        return (self._ring.nbytes + self._run_s.nbytes + self._run_e.nbytes
                + self._loc_s.nbytes + self._loc_e.nbytes
                + self._cur.parts_bytes + self._tot.owd_hist.nbytes + self._tot.ipdv_hist.nbytes)

    def _slot(self, x):
        return x & (self._w - 1) if self._pow2 else x % self._w

    def _span(self, lo: int, hi: int):
        """Ring slices holding sequences lo..hi (hi - lo < window), in order."""
        a, n = self._slot(lo), hi - lo + 1
        if a + n <= self._w:
            return (slice(a, a + n),)
        return slice(a, self._w), slice(0, a + n - self._w)

    @property
    def horizon(self) -> int:
        """The reorder horizon: how far below the highest a missing sequence may still come."""
        return self._horizon

    @property
    def highest(self) -> int:
        """Highest (unwrapped) sequence seen, -1 if none."""
        return -1 if self._low is None else self._low + self._h

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
        if self._low is None:
            self._low = int(seq[0]) & self._mask
        u = self._unwrap(seq)
        ordered = in_order(u, self._h)
        if self._w < self._max_w and self.growable:
            need = u.size if ordered else max(u.size, self._depth(u))
            need = min(need, self._tot.received + u.size)
            if 2 * need > self._w:
                self._grow(need)
        if host_drops is not None:
            self._mark_local(u, np.asarray(host_drops, np.int64), buffers, shared)
        h0, f0, w = self._h, self._f, self._w
        h_new = int(u.max())
        if ordered:
            uu, dd, su, sd = u, owd, u, owd  # everything new, in order: the common case
            horizon, fixes, late, dups = self._horizon, (), 0, 0
            f_new = max(f0, h_new - horizon - 1)
        else:
            uu, dd, horizon, f_new, fixes, late, dups = self._classify(u, owd)
            o = np.argsort(uu, kind="stable")
            su, sd = uu[o], dd[o]
        h_new = max(h0, h_new)
        for m in fixes:
            self._take_back(int(m))
        self._settle(f_new, su)  # reads the ring as it was before this batch
        if su.size:
            self._ipdv(su, sd)  # idem
        if h_new > h0:  # sequences entering the window start empty
            for sl in (slice(None),) if h_new - h0 >= w else self._span(h0 + 1, h_new):
                self._ring[sl] = EMPTY
        k = int(np.searchsorted(su, h_new - w, side="right"))  # older ones left the window
        self._ring[self._slot(su[k:])] = sd[k:]
        self._h, self._horizon = h_new, horizon
        if self._open >= 0 and self._ring[self._slot(self._f + 1)] != EMPTY:
            self._complete(self._f)  # f+1 arrived: the open run ends at f
        if self._run_e.size and self._run_e[0] <= h_new - w:
            k = np.searchsorted(self._run_e, h_new - w, side="right")
            self._run_s, self._run_e = self._run_s[k:], self._run_e[k:]
        if self._loc_e.size and self._loc_e[0] <= h_new - w:
            k = np.searchsorted(self._loc_e, h_new - w, side="right")
            self._loc_s, self._loc_e = self._loc_s[k:], self._loc_e[k:]
        self._delays(dd)
        for a in (self._cur, self._tot):
            a.received += int(uu.size)
            a.late += late
            a.duplicates += dups

    def unwrap(self, seq: np.ndarray) -> np.ndarray:
        """The unwrapped (absolute, int64) sequences of a batch not yet given to update(), as
        update() will see them: a 32-bit STAMP sequence after a wrap continues above 2**32."""
        seq = np.asarray(seq, np.uint64)
        if self._low is None:
            low = int(seq[0]) & self._mask if seq.size else 0
            return self._unwrap(seq, low) + low
        return self._unwrap(seq) + self._low

    def received(self, u: np.ndarray) -> np.ndarray:
        """Whether each unwrapped sequence (from unwrap()) was received in an earlier batch.
        Sequences older than the window remembers count as received (nothing can be said of
        them but that they are far in the past)."""
        if self._low is None:
            return np.zeros(np.shape(u), bool)
        x = np.asarray(u, np.int64) - self._low
        out = x <= self._h
        known = out & (x > self._h - self._w) & (x >= max(0, self._known))
        out[known] = self._ring[self._slot(x[known])] != EMPTY
        return out

    def close(self, end: int | None = None) -> None:
        """The sender said goodbye: settle every gap up to the highest sequence. ``end``: the
        sender's next, unsent sequence (the Rust original's FINAL carries it); the sequences
        from the highest up to it were sent and never arrived, so they are one more lost run."""
        if self._f < self._h:
            self._settle(self._h, np.zeros(0, np.int64))
        if end is None or self._low is None:
            return
        e = int(self._unwrap(np.array([end], np.uint64))[0]) - 1
        if e <= self._h:
            return
        h0, w = self._h, self._w
        for sl in (slice(None),) if e - h0 >= w else self._span(h0 + 1, e):
            self._ring[sl] = EMPTY
        self._lost(e - h0, np.array([e - h0]))
        self._run_s = np.append(self._run_s, h0 + 1)
        self._run_e = np.append(self._run_e, e)
        self._h = self._f = e

    def position(self, seq: np.ndarray) -> np.ndarray:
        """Unwrapped sequences relative to the highest so far (0 = the highest, < 0 below)."""
        if self._low is None:
            return np.zeros(len(seq), np.int64)
        return self._unwrap(np.asarray(seq, np.uint64)) - self._h

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
        if self._low is None:  # the flow's first batch: it starts where update() will
            self._low = int(seq[0]) & self._mask
        u = self._unwrap(np.asarray(seq, np.uint64))
        if in_order(u, self._h):
            return -1  # all new, in order: the common case
        tx = np.asarray(tx_ns, np.int64)
        prior_tx = highest_before(tx, tx_max)
        back = highest_before(u, self._h) - u
        start = (np.asarray(seq, np.uint64) & np.uint64(self._mask)) == 0
        hit = (tx > prior_tx) & (back > self._horizon) & (start | (back > defaults.RESTART_BACK))
        i = np.flatnonzero(hit)
        return int(i[0]) if i.size else -1

    def freeze(self) -> "Frozen":
        """The compact state a forgotten flow keeps (see Frozen); this FlowStats can go.
        Settles every gap up to the highest sequence first (as close())."""
        self.close()
        t = self._tot
        rec = t.record(self._jitter)
        return Frozen(self._bits, (self.highest + 1) & self._mask, self._horizon,
                      [getattr(t, k) for k in _TOTALS], tuple(sorted(t.hist.items())),
                      [rec[k] for k in _FROZEN_STATS])

    @classmethod
    def resume(cls, frozen: "Frozen", window: int = defaults.SEQ_WINDOW,
               initial_window: int = defaults.SEQ_WINDOW_INITIAL) -> "FlowStats":
        """A flow forgotten as `frozen` continues: the sequences from its next one up to the
        first packet back are lost (one burst, settled in the batch that brings it back);
        totals go on from the frozen ones. Summary percentiles and jitter then cover the
        packets since the return (the frozen values while none came)."""
        st = cls(frozen.bits, window, initial_window, start=frozen.next)
        st._horizon = min(frozen.horizon, st._w - 1)
        st._known = 0  # no history below the resume point: packets there are too old
        for k, v in zip(_TOTALS, frozen.totals, strict=True):
            setattr(st._tot, k, v)
        st._tot.hist = dict(frozen.hist)
        st._prior = frozen
        return st

    def take_interval(self) -> dict:
        """Record fields for the interval since the previous call; starts a new interval."""
        rec = self._cur.record(self._jitter)
        self._cur = _Acc(True)
        return rec

    def summary(self) -> dict:
        """Record fields for the whole life of the flow so far (does not reset anything)."""
        rec = self._tot.record(self._jitter)
        if self._prior is not None:  # resumed: the frozen values where nothing came since
            rec.update((k, v) for k, v in zip(_FROZEN_STATS, self._prior.stats, strict=True)
                       if rec[k] is None)
        return rec

    # -- internals ---------------------------------------------------------------------------

    def _unwrap(self, seq: np.ndarray, low: int | None = None) -> np.ndarray:
        low = self._low if low is None else low
        return unwrap(seq, low + self._h, self._bits) + self._h

    def _classify(self, u: np.ndarray, owd: np.ndarray):
        """Slow path (some packet not above the previous one): late, duplicates, horizon."""
        h0, w = self._h, self._w
        cm = np.maximum.accumulate(u)
        pm = highest_before(u, h0)
        new = u > pm
        too_old = ~new & ((u <= pm - w) | (u < self._known))
        old_i = np.flatnonzero(~new & ~too_old)
        uo = u[old_i]
        # an old packet equal to a new one of this batch came after it: duplicate
        nu = u[new]
        k = np.minimum(np.searchsorted(nu, uo), max(nu.size - 1, 0))
        dup = nu[k] == uo if nu.size else np.zeros(uo.size, bool)
        # repeated old packets in this batch: all but the first are duplicates
        o = np.argsort(uo, kind="stable")
        rep = np.zeros(uo.size, bool)
        rep[o[1:]] = uo[o[1:]] == uo[o[:-1]]
        dup |= rep
        pre = ~dup & (uo <= h0)  # maybe received in an earlier batch
        dup[pre] = self._ring[self._slot(uo[pre])] != EMPTY
        late_i = old_i[~dup]
        unique = new.copy()
        unique[late_i] = True
        disp = np.zeros(u.size, np.int64)
        disp[late_i] = pm[late_i] - u[late_i]
        disp[too_old] = w - 1
        hz = np.minimum(np.maximum.accumulate(np.maximum(disp, self._horizon)), w - 1)
        f_new = max(self._f, int((cm - hz - 1).max()))
        lu = u[late_i]
        fixes = lu[(lu >= 0) & (lu <= self._f)]
        late = int(late_i.size + np.count_nonzero(too_old))
        return u[unique], owd[unique], int(hz[-1]), f_new, fixes, late, int(np.count_nonzero(dup))

    def _lost(self, n: int, lengths: np.ndarray, local: int = 0) -> None:
        """n sequences settled missing, `local` of them dropped by the receiving host; the
        lengths of the missing runs completed."""
        for a in (self._cur, self._tot):
            a.lost += n - local
            a.local_drops += local
        if lengths.size:
            vals, counts = np.unique(lengths, return_counts=True)
            for v, c in zip(vals.tolist(), counts.tolist(), strict=True):
                self._cur.burst(v, c)
                self._tot.burst(v, c)

    def _settle(self, f_new: int, su: np.ndarray) -> None:
        """Settle sequences (_f, f_new]: the missing ones are lost, completed runs are bursts."""
        f0, h0, w = self._f, self._h, self._w
        if f_new <= f0:
            return
        top = min(h0, f_new)
        if top > f0:
            ring = np.concatenate([self._ring[sl] for sl in self._span(f0 + 1, top)])
            pre = np.flatnonzero(ring != EMPTY) + (f0 + 1)
        else:
            pre = np.zeros(0, np.int64)
        got = su[np.searchsorted(su, f0, side="right") : np.searchsorted(su, f_new, side="right")]
        if pre.size + got.size == f_new - f0:  # nothing lost in the range
            if self._open >= 0:
                self._complete(f0)
            self._f = f_new
            return
        rcv = np.concatenate([pre, got])
        if pre.size and got.size and pre[-1] > got[0]:
            rcv.sort()
        edges = np.concatenate([[f0], rcv, [f_new + 1]])
        gaps = np.diff(edges) - 1
        local = self._local_in(f0 + 1, f_new, rcv)
        if not rcv.size:  # the whole range is lost: the open run goes on
            self._open = self._open if self._open >= 0 else f0 + 1
            self._lost(f_new - f0, np.zeros(0, np.int64), local)
        else:
            lengths, starts, ends = gaps[:-1], edges[:-2] + 1, edges[1:-1] - 1
            if self._open >= 0:
                lengths[0] += f0 - self._open + 1
                starts[0] = self._open
            done = lengths > 0
            self._lost(f_new - f0 - int(rcv.size), lengths[done], local)
            inside = done & (ends > f_new - w)
            self._run_s = np.concatenate([self._run_s, starts[inside]])
            self._run_e = np.concatenate([self._run_e, ends[inside]])
            self._open = int(edges[-2]) + 1 if gaps[-1] > 0 else -1
        self._f = f_new

    def _complete(self, end: int) -> None:
        """The open lost run ends at `end` (the next sequence arrived)."""
        self._lost(0, np.array([end - self._open + 1]))
        self._run_s = np.append(self._run_s, self._open)
        self._run_e = np.append(self._run_e, end)
        self._open = -1

    def _local_in(self, lo: int, hi: int, rcv: np.ndarray) -> int:
        """How many sequences in lo..hi labelled local (see _mark_local) are not in rcv
        (sorted)."""
        if not self._loc_s.size:
            return 0
        s, e = np.maximum(self._loc_s, lo), np.minimum(self._loc_e, hi)
        ok = s <= e
        if not ok.any():
            return 0
        s, e = s[ok], e[ok]
        n = int((e - s + 1).sum())
        if rcv.size:
            n -= int((np.searchsorted(rcv, e, "right") - np.searchsorted(rcv, s, "left")).sum())
        return n

    def _mark_local(self, u: np.ndarray, drops: np.ndarray, buffers: bool, shared: bool) -> None:
        """Label the sequences of gaps that opened while the receiving socket dropped (see the
        module rules). u: this batch, unwrapped, arrival order; drops: the socket's drops
        between each packet and the flow's previous one."""
        hit = np.flatnonzero(drops > 0)
        if not hit.size:
            return
        pm = highest_before(u, self._h)
        gap = u[hit] - pm[hit] - 1
        hit, gap = hit[gap > 0], gap[gap > 0]
        if not hit.size:
            return
        d = drops[hit]
        n = local_part(gap, d, buffers)
        unsure = int(gap[gap > d].sum()) if buffers else 0
        if shared:
            unsure = int(gap.sum())
        start = pm[hit] + 1
        keep = n > 0
        self._loc_s = np.concatenate([self._loc_s, start[keep]])
        self._loc_e = np.concatenate([self._loc_e, (start + n - 1)[keep]])
        for a in (self._cur, self._tot):
            a.unsure += unsure

    def _take_back(self, m: int) -> None:
        """Rare path: sequence m was settled as lost and has now arrived late."""
        k = int(np.searchsorted(self._loc_e, m))
        local = k < self._loc_e.size and self._loc_s[k] <= m
        for a in (self._cur, self._tot):
            if local:  # the host did not drop it after all
                a.local_drops -= 1
            else:
                a.lost -= 1
        if 0 <= self._open <= m:  # inside the run still open at the frontier
            parts = [m - self._open]
            if m > self._open:  # the part below m is a completed run now
                self._run_s = np.append(self._run_s, self._open)
                self._run_e = np.append(self._run_e, m - 1)
            self._open = m + 1 if m + 1 <= self._f else -1
        else:  # inside a completed run: split it
            k = int(np.searchsorted(self._run_e, m))
            a, b = int(self._run_s[k]), int(self._run_e[k])
            self._cur.burst(b - a + 1, -1)
            self._tot.burst(b - a + 1, -1)
            runs = [(x, y) for x, y in ((a, m - 1), (m + 1, b)) if x <= y]
            s = np.array([x for x, _ in runs], np.int64)
            e = np.array([y for _, y in runs], np.int64)
            self._run_s = np.concatenate([self._run_s[:k], s, self._run_s[k + 1 :]])
            self._run_e = np.concatenate([self._run_e[:k], e, self._run_e[k + 1 :]])
            parts = [y - x + 1 for x, y in runs]
        for p in parts:
            if p > 0:
                self._cur.burst(p, 1)
                self._tot.burst(p, 1)

    def _pre(self, x: np.ndarray) -> np.ndarray:
        """Delays of sequences x as the ring held them before this batch (EMPTY if unknown)."""
        h0, w = self._h, self._w
        if x.size == 1:  # the common case: one neighbour just below the batch
            return self._ring[self._slot(x)] if h0 - w < x[0] <= h0 else np.array([EMPTY])
        out = np.full(x.size, EMPTY, np.int64)
        ok = (x <= h0) & (x > h0 - w)
        out[ok] = self._ring[self._slot(x[ok])]
        return out

    def _ipdv(self, su: np.ndarray, sd: np.ndarray) -> None:
        """|IPDV| of the pairs (s-1, s) completed by this batch (su sorted, sd their delays)."""
        if int(su[-1]) - int(su[0]) == su.size - 1:  # no hole: every neighbour is in the batch
            pairs = [(sd[1:], sd[:-1])]
            sides = ((np.array([0]), -1), (np.array([su.size - 1]), 1))
        else:
            adj = su[1:] == su[:-1] + 1
            pairs = [(sd[1:][adj], sd[:-1][adj])]
            alone_l = np.ones(su.size, bool)
            alone_l[1:] = ~adj
            alone_r = np.ones(su.size, bool)
            alone_r[:-1] = ~adj
            sides = ((np.flatnonzero(alone_l), -1), (np.flatnonzero(alone_r), 1))
        for i, step in sides:
            i = i[su[i] + step <= self._h]
            if i.size:
                v = self._pre(su[i] + step)
                ok = v != EMPTY
                pairs.append((sd[i][ok], v[ok]))
        # a packet without a timestamp of its own (UNTIMED) has no delay to compare
        parts = [np.abs(a[k] - b[k]) for a, b in pairs
                 for k in [(a != UNTIMED) & (b != UNTIMED)]]
        ipdv = np.concatenate(parts)
        if not ipdv.size:
            return
        total = _exact_sum(ipdv, 0, int(ipdv.max()))
        for a in (self._cur, self._tot):
            a.ipdv_n += int(ipdv.size)
            a.ipdv_sum += total
        self._cur.ipdv_parts.append(ipdv)
        self._cur.parts_bytes += ipdv.nbytes
        self._tot.ipdv_hist.add(ipdv)

    def _delays(self, d: np.ndarray) -> None:
        """Delay statistics and RFC 3550 jitter of the unique arrivals d, in arrival order
        (UNTIMED entries are counted as `coalesced` and left out)."""
        untimed = d == UNTIMED
        if untimed.any():
            n = int(np.count_nonzero(untimed))
            for a in (self._cur, self._tot):
                a.coalesced += n
            d = d[~untimed]
        if not d.size:
            return
        lo, hi = int(d.min()), int(d.max())
        total = _exact_sum(d, lo, hi)
        neg = int(np.count_nonzero(d < 0)) if lo < 0 else 0
        prev = self._last_owd
        n = d.size - (prev is None)  # new D values
        if n:
            t = d[-_JITTER_TAIL - 1 :]
            tail = np.abs(np.diff(t) if prev is None or t.size < d.size else np.diff(t, prepend=prev))
            tail = tail.astype(np.float64)
            self._jitter = (15 / 16) ** n * self._jitter + float(_JITTER_W[-tail.size :] @ tail) / 16
        self._last_owd = int(d[-1])
        for a in (self._cur, self._tot):
            a.owd_n += int(d.size)
            a.owd_sum += total
            a.owd_min = lo if a.owd_min is None else min(a.owd_min, lo)
            a.owd_max = hi if a.owd_max is None else max(a.owd_max, hi)
            a.negative_owd += neg
            a.jitter_n += n
        self._cur.owd_parts.append(d)
        self._cur.parts_bytes += d.nbytes
        self._tot.owd_hist.add(d)
