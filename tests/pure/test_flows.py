"""FlowTable (packet_flow.flows) on synthetic ring records: stragglers after FINAL, legacy
FINAL, restarts without a session id, forgotten flows that come back, NAT rebinding. No
sockets: the real-socket versions of these cases are in test_flow_events.py."""

import numpy as np

from packet_flow import _io
from packet_flow.flows import FlowTable
from packet_flow.sinks.lineproto import format_record

S = 1_000_000_000
MS = 1_000_000
T0 = 1_800_000_000 * S


def recs(seq, kind=_io.K_NATIVE, session=7, port=5000, final_at=None, tx0=T0, step=MS, tx=None,
         addr=(127, 0, 0, 2)):
    """Ring records for sequences `seq` (arrival order) sent `step` ns apart from tx0."""
    seq = np.asarray(seq, np.uint64)
    r = np.zeros(len(seq), _io.RECORD)
    r["kind"] = kind
    r["session"] = session if kind == _io.K_NATIVE else 0
    r["seq"] = seq
    r["tx_ns"] = tx0 + seq.astype(np.int64) * step if tx is None else tx
    r["rx_ns"] = r["tx_ns"] + 100_000
    r["addr"][:, 10:12] = 0xFF
    r["addr"][:, 12:] = addr
    r["port"] = port
    r["family"] = 4
    r["flow"] = hash((bytes(addr), port, session if kind == _io.K_NATIVE else 0)) & (2**63 - 1)
    if final_at is not None:
        r["flags"][final_at] = _io.FLAG_FINAL
    return r


class Table:
    def __init__(self, stall=1.0, forget=3.0):
        self.out = []
        self.t = FlowTable("127.0.0.1:9", self.out.append, stall, forget, 1 << 17)

    def summaries(self):
        return [r for r in self.out if r["type"] == "summary"]

    def intervals(self):
        return [r for r in self.out if r["type"] == "interval"]


def test_straggler_after_final_in_the_same_batch_joins_the_closed_flow():
    tb = Table()
    order = [*range(998), 999, 998]
    tb.t.ingest(recs(order, final_at=998), T0 + S)
    assert not tb.summaries()                     # the closed flow waits for stragglers
    tb.t.tick(T0 + 3 * S)
    (s,) = tb.summaries()
    assert (s["received"], s["lost"], s["late"], s["duplicates"]) == (1000, 0, 1, 0)
    assert s["loss_bursts"] == 0 and s["after_final"] == 0 and s["outcome"] == "final"
    assert sum(r["lost"] for r in tb.intervals()) == 0
    assert not tb.t.flows and not tb.t.closing


def test_straggler_after_final_in_a_later_batch_takes_its_loss_back():
    tb = Table()
    tb.t.ingest(recs([*range(998), 999], final_at=998), T0 + S)
    (closed,) = tb.intervals()
    assert closed["closed"] and closed["lost"] == 1
    tb.t.ingest(recs([998]), T0 + S + 200 * MS)
    tb.t.tick(T0 + S + 500 * MS)                  # still in its grace time
    assert tb.intervals()[-1]["lost"] == -1 and tb.intervals()[-1]["late"] == 1
    assert not tb.summaries()
    tb.t.tick(T0 + 3 * S)
    (s,) = tb.summaries()
    assert (s["received"], s["lost"], s["late"]) == (1000, 0, 1)


def test_native_packets_after_final_are_counted_not_a_new_flow():
    tb = Table()
    tb.t.ingest(recs([*range(10), 10, 11], final_at=9), T0 + S)
    tb.t.finish(T0 + 2 * S)
    (s,) = tb.summaries()
    assert (s["received"], s["lost"], s["after_final"]) == (10, 0, 2)


def test_legacy_final_is_a_goodbye_with_the_next_sequence():
    tb = Table()
    tb.t.ingest(recs([*range(100), 100], kind=_io.K_LEGACY, final_at=100), T0 + S)
    tb.t.finish(T0 + 2 * S)
    (s,) = tb.summaries()
    assert (s["received"], s["lost"], s["closed"]) == (100, 0, True)
    assert s["owd_max_us"] == 100.0                  # the goodbye gave no delay sample
    tb = Table()                                      # 98 and 99 never came: lost
    tb.t.ingest(recs([*range(98), 100], kind=_io.K_LEGACY, final_at=98), T0 + S)
    tb.t.finish(T0 + 2 * S)
    (s,) = tb.summaries()
    assert (s["received"], s["lost"], s["loss_bursts"], s["max_loss_burst"]) == (98, 2, 1, 2)


def test_legacy_restart_without_final_is_a_new_flow():
    tb = Table()
    tb.t.ingest(recs(range(5000), kind=_io.K_LEGACY), T0 + S)
    restart = T0 + 5000 * MS + 50 * MS
    tb.t.ingest(recs(range(3000), kind=_io.K_LEGACY, tx0=restart), T0 + 2 * S)
    tb.t.ingest(recs([3000], kind=_io.K_LEGACY, tx0=restart, final_at=0), T0 + 3 * S)
    tb.t.finish(T0 + 5 * S)
    first, second = tb.summaries()
    assert (first["received"], first["lost"], first["late"], first["duplicates"]) == (5000, 0, 0, 0)
    assert first["outcome"] == "restarted"
    assert (second["received"], second["lost"], second["late"], second["duplicates"]) == \
        (3000, 0, 0, 0)
    assert second["outcome"] == "final"


def test_legacy_restart_inside_one_batch_and_after_final():
    tb = Table()
    restart = T0 + 300 * MS
    both = np.concatenate([recs(range(200), kind=_io.K_LEGACY), recs(range(100), kind=_io.K_LEGACY, tx0=restart)])
    tb.t.ingest(both, T0 + S)
    tb.t.ingest(recs([100], kind=_io.K_LEGACY, tx0=restart, final_at=0), T0 + S)
    again = T0 + 600 * MS                              # a third run, inside the grace time
    tb.t.ingest(recs(range(50), kind=_io.K_LEGACY, tx0=again), T0 + S + 100 * MS)
    tb.t.finish(T0 + 2 * S)
    got = [(s["received"], s["lost"], s["late"], s["duplicates"], s["outcome"])
           for s in tb.summaries()]
    assert sorted(got) == sorted([(200, 0, 0, 0, "restarted"), (100, 0, 0, 0, "final"),
                                  (50, 0, 0, 0, "running")])


def test_reordered_legacy_packets_are_not_a_restart():
    tb = Table()
    order = [*range(1500), 200, *range(1500, 2000)]  # 200 duplicated late, old send time
    tb.t.ingest(recs(order, kind=_io.K_LEGACY), T0 + S)
    tb.t.finish(T0 + 2 * S)
    (s,) = tb.summaries()
    assert (s["received"], s["duplicates"], s["outcome"]) == (2000, 1, "running")


def test_forgotten_flow_resumes_and_the_gap_is_one_burst():
    tb = Table(stall=0.5, forget=1.5)
    tb.t.ingest(recs(range(100)), T0 + S)
    for k in range(1, 9):                             # silent for 2 s: stalled, then forgotten
        tb.t.tick(T0 + S + k * 250 * MS)
    stalled = [r for r in tb.intervals() if r["stalled"]]
    assert stalled and stalled[-1]["silent_s"] >= 1.0
    line = format_record(stalled[-1], "h").decode()       # what InfluxDB gets
    assert "stalled=true" in line and f"silent_s={stalled[-1]['silent_s']!r}" in line
    assert not tb.t.flows and len(tb.t.forgotten) == 1 and not tb.summaries()
    tb.t.ingest(recs(range(400, 500)), T0 + 4 * S)
    tb.t.tick(T0 + 4 * S + 100 * MS)
    back = tb.intervals()[-1]
    assert (back["received"], back["lost"], back["loss_bursts"], back["stalled"]) == \
        (100, 300, 1, False)
    tb.t.ingest(recs([500], final_at=0), T0 + 5 * S)
    tb.t.finish(T0 + 6 * S)
    (s,) = tb.summaries()
    assert (s["received"], s["lost"], s["loss_bursts"], s["max_loss_burst"]) == (201, 300, 1, 300)
    assert s["outcome"] == "final" and s["owd_p50_us"] == 100.0


def test_forgotten_flow_that_never_returns_is_unknown_not_lost():
    tb = Table(stall=0.5, forget=1.0)
    tb.t.ingest(recs(range(100)), T0 + S)
    tb.t.tick(T0 + 3 * S)
    tb.t.finish(T0 + 4 * S)
    (s,) = tb.summaries()
    assert (s["received"], s["lost"], s["outcome"]) == (100, 0, "unknown")
    assert s["owd_p50_us"] == 100.0 and s["silent_s"] == 3.0


def test_nat_rebinding_keeps_the_session_and_shows_the_new_source():
    tb = Table(stall=0.5, forget=1.0)
    tb.t.ingest(recs(range(100), port=40000), T0 + S)
    tb.t.tick(T0 + 3 * S)                              # forgotten during the outage
    tb.t.ingest(recs(range(150, 200), port=40001), T0 + 4 * S)
    tb.t.ingest(recs([95], port=40000), T0 + 4 * S)    # a straggler on the old mapping
    tb.t.ingest(recs([200], port=40001, final_at=0), T0 + 4 * S)
    tb.t.finish(T0 + 6 * S)
    (s,) = tb.summaries()
    assert s["source"] == "127.0.0.2:40001"
    assert (s["received"], s["lost"], s["loss_bursts"], s["duplicates"]) == (151, 50, 1, 0)
    assert s["late"] == 1


def test_stamp_sender_restarting_with_the_same_ssid_is_a_new_flow():
    tb = Table()
    near_wrap = 2**32 - 100                           # its 32-bit sequence wraps first
    tb.t.ingest(recs([(near_wrap + i) % 2**32 for i in range(300)], kind=_io.K_STAMP,
                     tx=T0 + np.arange(300) * MS), T0 + S)
    tb.t.ingest(recs(range(200), kind=_io.K_STAMP, tx0=T0 + 400 * MS), T0 + 2 * S)
    tb.t.finish(T0 + 3 * S)
    first, second = tb.summaries()
    assert (first["received"], first["lost"], first["outcome"]) == (300, 0, "restarted")
    assert (second["received"], second["lost"], second["duplicates"]) == (200, 0, 0)
