"""The fast lane (packet_flow.inorder, FlowStats.extend) gives exactly the records of the
general path: the same random traffic of many flows (in order, gaps, reordering, duplicates,
drops, coalesced packets, FINALs, a jitter that changes) fed through a FlowTable with and
without it, record by record."""

import math

import numpy as np
import pytest

from packet_flow import _io
from packet_flow.analysis import FlowStats
from packet_flow.flows import FlowTable
from packet_flow.histogram import LogHistogram
from packet_flow.inorder import Lanes
from packet_flow.results import PERCENTILES, percentiles_of

S = 1_000_000_000
T0 = 1_800_000_000 * S


def traffic(rng, flows, batches):
    """Batches of ring records of `flows` native flows, mostly continuing in order."""
    nxt = [0] * flows
    drops = 0
    out = []
    for b in range(batches):
        parts = []
        for f in range(flows):
            n = int(rng.integers(0, 12))
            seq = np.arange(nxt[f], nxt[f] + n, dtype=np.int64)
            event = rng.random()
            if n > 2 and event < 0.08:      # a gap
                seq = seq[seq != seq[1]]
            elif n > 3 and event < 0.12:    # two swapped
                seq[[1, 2]] = seq[[2, 1]]
            elif n > 1 and event < 0.14:    # a duplicate
                seq = np.append(seq, seq[0])
            nxt[f] += n
            r = np.zeros(len(seq), _io.RECORD)
            r["kind"] = _io.K_NATIVE
            r["session"] = 1000 + f
            r["flow"] = 77 + f
            r["seq"] = seq
            r["tx_ns"] = T0 + seq * 1_000_000 + f
            r["rx_ns"] = r["tx_ns"] + rng.integers(-2_000, 90_000, len(seq))
            r["addr"][:, 12:] = (127, 0, 0, 1 + f)
            r["port"] = 4000
            r["family"] = 4
            if len(seq) and rng.random() < 0.03:
                r["coalesced"][0] = 1
            if b == batches - 1 and f % 3 == 0 and len(seq):
                r["flags"][-1] = _io.FLAG_FINAL
            parts.append(r)
        batch = np.concatenate(parts)
        batch = batch[rng.permutation(len(batch))] if rng.random() < 0.5 else batch
        batch = batch[np.argsort(batch["seq"], kind="stable")]   # arrival: roughly by time
        if rng.random() < 0.05 and len(batch):
            drops += 1
        batch["drops"] = drops
        out.append(batch)
    return out


def run(batches, fast):
    out = []
    table = FlowTable("127.0.0.1:9", out.append, 1.0, 3.0, 1 << 17)
    if not fast:
        table._fast = lambda srt, lanes, now_ns: range(len(lanes.starts))
    now = T0
    for i, b in enumerate(batches):
        now += 50_000_000
        if len(b):
            table.ingest(b, now)
        if i % 7 == 6:
            table.tick(now)
    table.finish(now + S)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_fast_lane_gives_the_records_of_the_general_path(seed, monkeypatch):
    batches = traffic(np.random.default_rng(seed), 40, 60)
    general = run(batches, False)
    extended = []
    extend = FlowStats.extend
    monkeypatch.setattr(FlowStats, "extend", lambda st, *a: extended.append(1) or extend(st, *a))
    fast = run(batches, True)
    parts = sum(len(np.unique(b["flow"])) for b in batches)
    assert parts * 0.5 < len(extended) < parts           # most parts took the fast lane
    assert len(fast) == len(general) > 40
    key = lambda r: (r["time"], r["type"], r["session"])  # noqa: E731 (a batch's flows: any order)
    for a, b in zip(sorted(fast, key=key), sorted(general, key=key), strict=True):
        for k in a:
            if k in ("jitter_us",) and a[k] is not None:
                assert math.isclose(a[k], b[k], abs_tol=0.0011), (k, a, b)
            else:
                assert a[k] == b[k], (k, a, b)


def test_lanes_judge_each_part_alone():
    r = np.zeros(9, _io.RECORD)
    r["kind"] = _io.K_NATIVE
    r["seq"] = [5, 6, 7, 1, 3, 4, 9, 10, 11]
    r["flags"][8] = _io.FLAG_FINAL
    lanes = Lanes(r, np.array([0, 3, 6]))
    assert lanes.ok.tolist() == [True, False, False]
    r["flags"][8] = 0
    r["drops"][7:] = 1          # a drop between two packets of a part
    assert Lanes(r, np.array([0, 3, 6])).ok.tolist() == [True, False, False]
    r["drops"][6:] = 1          # ... before a part's first: FlowStats judges that
    assert Lanes(r, np.array([0, 3, 6])).ok.tolist() == [True, False, True]


def test_histograms_and_percentiles_of_many_flows_at_once_equal_one_by_one():
    rng = np.random.default_rng(3)
    sizes = [0, 1, 5, 300, 2, 0, 77, 9000]
    values = [np.concatenate([rng.integers(-5_000, 5_000, n), np.zeros(n // 3, np.int64),
                              rng.integers(1, 1 << 40, n)]) for n in sizes]
    one = [LogHistogram() for _ in values]
    for h, v in zip(one, values, strict=True):
        h.add(v)
    many = [LogHistogram() for _ in values]
    LogHistogram.add_many(many, np.concatenate(values), [v.size for v in values])
    for a, b in zip(one, many, strict=True):
        assert (a.n, a.zeros) == (b.n, b.zeros)
        for x, y in ((a._pos, b._pos), (a._neg, b._neg)):
            assert np.array_equal(x.mids()[0], y.mids()[0])
            assert np.array_equal(x.mids()[1], y.mids()[1])
    got = percentiles_of([[v[: v.size // 2], v[v.size // 2 :]] for v in values], PERCENTILES)
    for v, row in zip(values, got, strict=True):
        want = np.percentile(v, PERCENTILES) if v.size else [np.nan] * len(PERCENTILES)
        assert np.allclose(row, want, equal_nan=True, rtol=0, atol=1e-6)


def test_legacy_flows_beside_do_not_keep_a_native_flow_off_the_fast_lane(monkeypatch):
    extended = []
    extend = FlowStats.extend
    monkeypatch.setattr(FlowStats, "extend", lambda st, *a: extended.append(1) or extend(st, *a))
    table = FlowTable("127.0.0.1:9", [].append, 1.0, 3.0, 1 << 17)
    for b in range(3):
        r = np.zeros(30, _io.RECORD)
        r["kind"][:20] = _io.K_LEGACY           # two legacy flows: session 0 both
        r["kind"][20:] = _io.K_NATIVE
        r["session"][20:] = 99
        r["flow"] = np.repeat([1, 2, 3], 10)
        r["seq"] = np.tile(np.arange(b * 10, b * 10 + 10), 3)
        r["tx_ns"] = T0 + r["seq"].astype(np.int64) * 1_000_000
        r["rx_ns"] = r["tx_ns"] + 50_000
        r["port"] = np.repeat([1, 2, 3], 10)
        r["family"] = 4
        table.ingest(r, T0 + b * S)
    assert len(extended) == 3                   # the native flow's three parts
    assert sorted(f.stats.summary()["received"] for f in table.flows.values()) == [30, 30, 30]
