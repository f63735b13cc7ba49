"""FlowStats (packet_flow.analysis) against a per-packet pure-Python reference, plus unit cases."""

import json
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packet_flow.analysis import FlowStats
from packet_flow.histogram import LogHistogram

COUNTS = ("received", "lost", "late", "duplicates", "negative_owd")


class Ref:
    """The semantics of analysis.py, one packet at a time, with sets instead of a ring."""

    def __init__(self, bits, window):
        self.m, self.w = 1 << bits, window
        self.low, self.h, self.f, self.hz, self.run = None, -1, -1, 0, 0
        self.rcv, self.owd = set(), {}
        self.last, self.jit = None, 0.0
        self.tot = self._acc()
        self.cur = self._acc()

    @staticmethod
    def _acc():
        return {"received": 0, "lost": 0, "late": 0, "duplicates": 0, "negative_owd": 0,
                "hist": Counter(), "owd": [], "ipdv": [], "jn": 0}

    def _add(self, key, v=1):
        self.tot[key] += v
        self.cur[key] += v

    def _burst(self, length, c):
        for a in (self.tot, self.cur):
            a["hist"][length] += c

    def packet(self, s, tx, rx):
        if self.low is None:
            self.low = s
        delta = (s - (self.low + self.h)) % self.m
        u = self.h + (delta - self.m if delta >= self.m // 2 else delta)
        d = rx - tx
        if u > self.h:
            self.h = u
        elif u <= self.h - self.w:
            self._add("late")
            self.hz = self.w - 1
            self._settle(self.h - self.hz - 1)
            return
        elif u in self.rcv:
            self._add("duplicates")
            return
        else:
            self._add("late")
            self.hz = min(self.w - 1, max(self.hz, self.h - u))
            if 0 <= u <= self.f:
                self._take_back(u)
        self.rcv.add(u)
        self._add("received")
        self._add("negative_owd", int(d < 0))
        for a in (self.tot, self.cur):
            a["owd"].append(d)
        for n in (u - 1, u + 1):
            if n in self.owd:
                for a in (self.tot, self.cur):
                    a["ipdv"].append(abs(d - self.owd[n]))
        self.owd[u] = d
        if self.last is not None:
            self.jit += (abs(d - self.last) - self.jit) / 16
            self._add("jn")
        self.last = d
        self._settle(self.h - self.hz - 1)

    def _settle(self, target):
        while self.f < target:
            self.f += 1
            if self.f in self.rcv:
                if self.run:
                    self._burst(self.run, 1)
                self.run = 0
            else:
                self._add("lost")
                self.run += 1
        if self.run and self.f + 1 in self.rcv:  # the run is settled and has ended
            self._burst(self.run, 1)
            self.run = 0

    def _take_back(self, u):
        self._add("lost", -1)
        if self.run and u >= self.f - self.run + 1:
            left = u - (self.f - self.run + 1)
            if left:
                self._burst(left, 1)
            self.run = self.f - u
            return
        a = b = u
        while a - 1 >= 0 and a - 1 not in self.rcv:
            a -= 1
        while b + 1 not in self.rcv:
            b += 1
        self._burst(b - a + 1, -1)
        for length in (u - a, b - u):
            if length:
                self._burst(length, 1)

    def close(self):
        self._settle(self.h)

    def take(self, acc):
        out = {k: acc[k] for k in COUNTS}
        out["hist"] = {str(k): v for k, v in sorted(acc["hist"].items()) if v}
        out["owd"] = acc["owd"]
        out["ipdv"] = acc["ipdv"]
        out["jn"] = acc["jn"]
        return out


def us(ns):
    return round(float(ns / 1000), 3)


def check(rec, ref, exact_pct, ipdv=True, jitter=None):
    for k in COUNTS:
        assert rec[k] == ref[k], k
    assert rec["loss_burst_hist"] == ref["hist"]
    assert rec["loss_bursts"] == sum(ref["hist"].values())
    owd = ref["owd"]
    if not owd:
        assert rec["owd_min_us"] is None and rec["owd_mean_us"] is None and rec["owd_p50_us"] is None
    else:
        assert rec["owd_min_us"] == us(min(owd))
        assert rec["owd_max_us"] == us(max(owd))
        assert rec["owd_mean_us"] == us(sum(owd) / len(owd))
        srt = np.sort(np.array(owd, np.int64))
        for p, key in ((50, "owd_p50_us"), (90, "owd_p90_us"), (99, "owd_p99_us"), (99.9, "owd_p999_us")):
            want = np.percentile(srt, p)
            if exact_pct:
                assert rec[key] == us(want), key
            else:
                r = p / 100 * (len(srt) - 1)
                scale = max(abs(srt[math.floor(r)]), abs(srt[math.ceil(r)]))
                assert abs(rec[key] - want / 1000) <= 2e-3 * scale / 1000 + 0.0011, key
    if ipdv:
        if ref["ipdv"]:
            assert rec["ipdv_mean_us"] == us(sum(ref["ipdv"]) / len(ref["ipdv"]))
        else:
            assert rec["ipdv_mean_us"] is None
    if ref["jn"]:
        assert rec["jitter_us"] == pytest.approx(us(jitter), abs=0.0011)
    else:
        assert rec["jitter_us"] is None


def realistic(draw_list):
    """In-order stream with drops, displaced (late) packets, duplicates and jumps."""
    out, s, held = [], 0, []
    for op in draw_list:
        kind, arg = op
        for h in [h for h in held if h[0] <= len(out)]:
            out.append(h[1])
            held.remove(h)
        if kind == "hold":  # s arrives after `arg` more packets
            held.append((len(out) + arg, s))
            s += 1
        elif kind == "ok":
            out.append(s)
            s += 1
        elif kind == "drop":
            s += arg
        elif kind == "late":
            out.append(s)
            out.insert(max(0, len(out) - 1 - arg), s + 1)  # s+1 goes ahead of s by arg places
            s += 2
        elif kind == "dup":
            if out:
                out.append(out[-1 - min(arg, len(out) - 1)])
        else:  # "back": a sequence well behind
            out.append(max(0, s - arg * 7))
    return out + [h[1] for h in held]


ops = st.lists(
    st.tuples(st.sampled_from(["ok", "ok", "ok", "drop", "late", "dup", "back", "hold"]), st.integers(1, 12)),
    max_size=160,
)
chaotic = st.lists(st.integers(0, 90), max_size=160)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    bits=st.sampled_from([32, 64]),
    window=st.sampled_from([8, 10, 32, 1024]),
    near_wrap=st.booleans(),
    mode=st.sampled_from(["realistic", "chaotic"]),
    close=st.booleans(),
)
def test_matches_reference(data, bits, window, near_wrap, mode, close):
    offs = realistic(data.draw(ops)) if mode == "realistic" else data.draw(chaotic)
    base = (1 << bits) - 40 if near_wrap else data.draw(st.integers(0, (1 << bits) - 1))
    seq = np.array([(base + o) % (1 << bits) for o in offs], np.uint64)
    n = len(offs)
    tx = np.arange(n, dtype=np.int64) * 1000 + 10**15
    rx = tx + np.array(data.draw(st.lists(st.integers(-3000, 10**7), min_size=n, max_size=n)), np.int64)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=12))) | {0, n})
    takes = data.draw(st.lists(st.booleans(), min_size=len(cuts), max_size=len(cuts)))

    fs, ref = FlowStats(seq_bits=bits, window=window), Ref(bits, window)
    big = window >= 1024  # no packet falls out of the window: IPDV pairs agree exactly
    sums = Counter()
    for (a, b), take in zip(zip(cuts[:-1], cuts[1:], strict=True), takes, strict=False):
        fs.update(seq[a:b], tx[a:b], rx[a:b])
        for i in range(a, b):
            ref.packet(int(seq[i]), int(tx[i]), int(rx[i]))
        if take:
            rec = fs.take_interval()
            check(rec, ref.take(ref.cur), True, big, ref.jit)
            sums.update({k: rec[k] for k in COUNTS})
            ref.cur = ref._acc()
    if close:
        fs.close()
        ref.close()
    rec = fs.take_interval()
    check(rec, ref.take(ref.cur), True, big, ref.jit)
    sums.update({k: rec[k] for k in COUNTS})
    tot = fs.summary()
    check(tot, ref.take(ref.tot), False, big, ref.jit)
    assert all(sums[k] == tot[k] for k in COUNTS)
    assert fs.highest == (-1 if not n else ref.low + ref.h)
    if close:
        assert tot["received"] + tot["lost"] == ref.h + 1 + len([u for u in ref.rcv if u < 0])
    json.dumps(tot, allow_nan=False)


@pytest.mark.parametrize(
    "batches",
    [
        [[0, 2, 1, 6], [4, 3]],  # take back from the run still open at the frontier, then split
        [[0, 3, 2, 1, 6, 4], [5, 10]],  # settles a range mixing old and new arrivals
        [[0, 9, 1, 2], [8, 7, 6], [5, 4, 3], [20]],
        [[5, 0, 1, 2, 3, 4, 6]],  # sequences below the first packet: late, never lost
        [[0, 2, 1, 6], [5, 7, 8, 9, 10]],  # the open run ends when the range fills
        [[0, 5, 4, 3, 2, 1, 10], [12]],  # a range that is lost as a whole extends the open run
    ],
)
def test_hand_made_against_reference(batches):
    fs, ref = FlowStats(window=16), Ref(64, 16)
    start = 0
    for b in batches:
        feed(fs, b, start=start)
        for i, x in enumerate(b):
            t = (start + i) * 1_000_000
            ref.packet(x, t, t + 50_000)
        start += len(b)
        check(fs.take_interval(), ref.take(ref.cur), True, True, ref.jit)
        ref.cur = ref._acc()
    fs.close()
    ref.close()
    check(fs.take_interval(), ref.take(ref.cur), True, True, ref.jit)
    check(fs.summary(), ref.take(ref.tot), False, True, ref.jit)


def feed(fs, seqs, delays=None, start=0):
    seqs = np.asarray(seqs, np.uint64)
    tx = np.arange(start, start + seqs.size, dtype=np.int64) * 1_000_000
    d = np.full(seqs.size, 50_000, np.int64) if delays is None else np.asarray(delays, np.int64)
    fs.update(seqs, tx, tx + d)


def test_reorder_never_counts_loss_once_horizon_known():
    fs = FlowStats()
    feed(fs, [0, 1, 3, 2, 4])  # the first reordering: lost and taken back in the same batch
    first = fs.take_interval()
    assert (first["lost"], first["late"], first["loss_bursts"]) == (0, 1, 0)
    s = np.arange(5, 100_005)
    for i in range(0, s.size - 1, 7):  # swap neighbours: displacement 1, as already seen
        s[i], s[i + 1] = s[i + 1], s[i]
    for b in np.array_split(s, 37):
        feed(fs, b)
        rec = fs.take_interval()
        assert rec["lost"] == 0 and rec["loss_bursts"] == 0 and rec["duplicates"] == 0
    fs.close()
    tot = fs.summary()
    assert tot["lost"] == 0 and tot["received"] == 100_005 and tot["late"] == 1 + len(range(0, s.size - 1, 7))


def test_late_fill_takes_back_settled_loss():
    fs = FlowStats()
    feed(fs, [0, 1, 2, 5])
    rec = fs.take_interval()
    assert rec["lost"] == 2 and rec["loss_burst_hist"] == {"2": 1} and rec["max_loss_burst"] == 2
    feed(fs, [3])  # 3 fills the gap: 4 stays lost, the burst of 2 becomes a burst of 1
    rec = fs.take_interval()
    assert rec["lost"] == -1 and rec["late"] == 1 and rec["loss_burst_hist"] == {"1": 1, "2": -1}
    feed(fs, [6, 9])  # horizon is now 2: 7 and 8 are not lost yet
    assert fs.take_interval()["lost"] == 0
    feed(fs, [7])
    fs.close()
    assert fs.take_interval()["lost"] == 1
    tot = fs.summary()
    assert (tot["lost"], tot["late"], tot["received"]) == (2, 2, 8)
    assert tot["loss_burst_hist"] == {"1": 2} and tot["loss_bursts"] == 2 and tot["max_loss_burst"] == 1
    assert tot["loss_percent"] == 20.0


def test_split_completed_burst_in_the_middle():
    fs = FlowStats()
    feed(fs, [0, 10, 11])  # 1..9 lost at once, then 10 ends the run
    assert fs.summary()["loss_burst_hist"] == {"9": 1}
    feed(fs, [4])
    tot = fs.summary()
    assert tot["lost"] == 8 and tot["loss_burst_hist"] == {"3": 1, "5": 1}


def test_duplicates_in_batch_and_across_batches():
    fs = FlowStats()
    feed(fs, [0, 1, 1, 2])
    feed(fs, [2, 0, 3, 3, 1])
    tot = fs.summary()
    assert (tot["received"], tot["duplicates"], tot["late"], tot["lost"]) == (4, 5, 0, 0)


@pytest.mark.parametrize("bits", [32, 64])
def test_sequence_wrap(bits):
    top = 1 << bits
    fs = FlowStats(seq_bits=bits)
    feed(fs, [top - 3, top - 2])
    feed(fs, [top - 1, 1, 2])  # 0 lost across the wrap
    feed(fs, [0], start=5)  # and back: late, not a jump
    fs.close()
    tot = fs.summary()
    assert (tot["received"], tot["lost"], tot["late"]) == (6, 0, 1)
    assert fs.highest == top + 2
    feed(fs, [4], start=6)
    fs.close()
    assert fs.summary()["lost"] == 1


def test_negative_delay_kept():
    fs = FlowStats()
    feed(fs, [0, 1, 2], [-5_000_000_000, -4_000_000_000, 1000])
    rec = fs.take_interval()
    assert rec["owd_min_us"] == -5_000_000.0 and rec["owd_max_us"] == 1.0
    assert rec["negative_owd"] == 2 and rec["owd_p50_us"] == -4_000_000.0
    assert fs.summary()["owd_min_us"] == -5_000_000.0


def test_huge_delays_do_not_overflow():
    fs = FlowStats()
    d = [4 * 10**18, 4 * 10**18, 4 * 10**18 + 1000]
    feed(fs, [0, 1, 2], d)
    rec = fs.summary()
    assert rec["owd_mean_us"] == round((12 * 10**18 + 1000) / 3 / 1000, 3)
    assert rec["owd_max_us"] == 4 * 10**15 + 1.0


def test_empty_interval_zeros_and_nulls():
    fs = FlowStats()
    for rec in (fs.take_interval(), fs.summary()):
        json.dumps(rec, allow_nan=False)
        assert rec["received"] == rec["lost"] == rec["loss_bursts"] == rec["max_loss_burst"] == 0
        assert rec["loss_percent"] == 0.0 and rec["loss_burst_hist"] == {}
        assert all(rec[k] is None for k in rec if k.endswith("_us"))
    feed(fs, [0, 1, 2])
    fs.take_interval()
    rec = fs.take_interval()
    json.dumps(rec, allow_nan=False)
    assert rec["received"] == 0 and rec["loss_percent"] == 0.0
    assert all(rec[k] is None for k in rec if k.endswith("_us"))
    assert all(isinstance(rec[k], int) for k in COUNTS)


def test_window_overflow():
    fs = FlowStats(window=8)
    feed(fs, [0, 20])
    feed(fs, [5, 5])  # older than the window: late, cannot be checked nor take back loss
    tot = fs.summary()
    assert (tot["received"], tot["lost"], tot["late"], tot["duplicates"]) == (2, 19, 2, 0)
    feed(fs, [21, 24, 22, 23])  # horizon is now window-1: 22, 23 fill without any loss
    fs.close()
    tot = fs.summary()
    assert (tot["received"], tot["lost"], tot["late"]) == (6, 19, 4)


def test_ipdv_pairs_across_order_and_batches():
    fs = FlowStats()
    feed(fs, [0, 2], [100, 200])
    feed(fs, [1], [400], start=2)  # completes (0,1)=300 and (1,2)=200
    feed(fs, [3, 5], [250, 0], start=3)  # (2,3)=50
    rec = fs.summary()
    assert rec["ipdv_mean_us"] == round((300 + 200 + 50) / 3 / 1000, 3)
    assert rec["ipdv_p99_us"] == pytest.approx(np.percentile([300, 200, 50], 99) / 1000, rel=2e-3)


def test_jitter_rfc3550_long_batches():
    rng = np.random.default_rng(7)
    d = rng.integers(0, 2_000_000, 10_000)
    j = 0.0
    for i in range(1, d.size):
        j += (abs(int(d[i]) - int(d[i - 1])) - j) / 16
    fs = FlowStats()
    for part in np.array_split(np.arange(d.size), [1, 2, 5000, 5001]):
        feed(fs, part, d[part], start=int(part[0]) if part.size else 0)
    assert fs.summary()["jitter_us"] == round(j / 1000, 3)


def test_log_histogram_precision():
    rng = np.random.default_rng(3)
    for vals in (
        rng.lognormal(11, 2, 50_000).astype(np.int64) + 1,
        -(rng.lognormal(8, 1, 20_000).astype(np.int64) + 1),
    ):
        h = LogHistogram()
        for part in np.array_split(vals, 7):
            h.add(part)
        got = h.quantiles([1, 50, 90, 99, 99.9], int(vals.min()), int(vals.max()))
        want = np.percentile(vals, [1, 50, 90, 99, 99.9])
        assert np.allclose(got, want, rtol=2e-3, atol=0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.data(), st.integers(100, 4000))
def test_growing_window_equals_full_window(seed, data, batch):
    """A window that starts small and grows with the flow's batches gives exactly what the
    full window gives, as long as no packet comes from further back than a batch (the window
    grows to 4 x the packets of a batch; duplicates here are of packets at most `depth` back)."""
    depth = data.draw(st.integers(1, batch))
    rng = np.random.default_rng(seed)
    n = 12_000
    seq = np.arange(n, dtype=np.uint64)
    for i in rng.integers(0, n - depth - 1, 200):      # displace packets by up to `depth`
        j = i + rng.integers(1, depth + 1)
        seq[i], seq[j] = seq[j], seq[i]
    seq = seq[rng.random(n) > 0.01]                      # lose some
    at = np.sort(rng.integers(depth, seq.size, 50))
    seq = np.insert(seq, at, seq[at - rng.integers(1, depth + 1, 50)])   # duplicates
    tx = seq.astype(np.int64) * 1000 + seed % 1000
    rx = tx + 5000 + (np.arange(seq.size) % 7) * 100
    full = FlowStats(window=1 << 14, initial_window=1 << 14)
    grown = FlowStats(window=1 << 14)
    for a in range(0, seq.size, batch):
        part = slice(a, a + batch)
        full.update(seq[part], tx[part], rx[part])
        grown.update(seq[part], tx[part], rx[part])
        assert grown.take_interval() == full.take_interval()
    full.close()
    grown.close()
    assert grown.summary() == full.summary()
    assert grown.window <= 1 << 14


def test_growing_window_treats_history_it_never_had_as_too_old():
    """After the window grows, a packet from before the old window's reach is counted late
    only (as the full-size window does for packets beyond its reach), never as received."""
    st_ = FlowStats(window=1 << 14, initial_window=1024)
    for a in range(0, 5000, 100):        # small batches: the window stays at 1024
        st_.update(np.arange(a, a + 100, dtype=np.uint64), np.zeros(100, np.int64),
                   np.full(100, 10, np.int64))
    st_.update(np.array([100], np.uint64), np.zeros(1, np.int64), np.full(1, 10, np.int64))
    rec = st_.take_interval()
    assert rec["late"] == 1 and rec["duplicates"] == 0 and rec["received"] == 5000


def _feed(fs, seq):
    seq = np.asarray(seq, np.uint64)
    fs.update(seq, np.zeros(seq.size, np.int64), np.full(seq.size, 10, np.int64))


def test_window_grows_on_reordering_not_on_jumps():
    """A deep reorder beyond the window is late only the first time; the window then grows,
    so the same depth is exact the next time."""
    fs = FlowStats(window=1 << 14)
    w0 = fs.nbytes
    stream = [s for s in range(3000) if s != 1000]
    for a in range(0, len(stream), 10):
        _feed(fs, stream[a:a + 10])
    _feed(fs, [1000])                      # 1999 back: beyond the 1024-entry window
    rec = fs.take_interval()
    assert (rec["received"], rec["lost"], rec["late"], rec["duplicates"]) == (2999, 1, 1, 0)
    assert fs.nbytes > w0
    stream = [s for s in range(3000, 6000) if s != 4000]
    for a in range(0, len(stream), 10):
        _feed(fs, stream[a:a + 10])
    _feed(fs, [4000])                      # the same depth again: inside the grown window
    rec = fs.take_interval()
    assert (rec["received"], rec["lost"], rec["late"], rec["duplicates"]) == (3000, 0, 1, 0)


@pytest.mark.parametrize("pattern", ["jump", "random"])
def test_spoofed_sequences_do_not_grow_the_window(pattern):
    """Sequence 0 then 65536 (the spoofing flood) or random 64-bit jumps both ways: the ring
    stays at its first size; a jump ahead is a gap."""
    fs = FlowStats()
    first = FlowStats()
    _feed(first, [0])
    if pattern == "jump":
        _feed(fs, [0])
        _feed(fs, [65536])
        rec = fs.take_interval()
        assert (rec["received"], rec["lost"], rec["late"]) == (2, 65535, 0)
    else:
        rng = np.random.default_rng(5)
        for _ in range(8):
            _feed(fs, rng.integers(0, 2**63, 3, dtype=np.uint64))
    first.take_interval()
    fs.take_interval()
    assert fs.nbytes <= first.nbytes + 256
