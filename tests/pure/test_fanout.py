"""The Sink contract and Fanout: what a sink declares is what it gets; the sinks that close
last are closed even when another sink's close blocks; a sink's failure reaches the run."""

import threading
import time
import types

import numpy as np
import pytest

from packet_flow.sinks.console import ConsoleSink
from packet_flow.sinks.fanout import Fanout
from packet_flow.sinks.influx import InfluxSink
from packet_flow.sinks.jsonl import JsonlSink
from packet_flow.sinks.prometheus import PrometheusSink

CAPABILITIES = ("wants_packets", "wants_gaps", "wants_rtts", "wants_idle", "closes_last")


class Fake:
    on_failure = None
    counters = property(lambda self: {})

    def __init__(self, packets=False, gaps=False, rtts=False, last=False, block=None,
                 idle=False):
        self.wants_packets, self.wants_gaps, self.wants_rtts = packets, gaps, rtts
        self.wants_idle = idle
        self.closes_last = last
        self.block = block
        self.got, self.closed = [], None

    def record(self, rec):
        self.got.append(("record", rec["type"]))

    def packets(self, *a):
        self.got.append(("packets", a[0]))

    def gaps(self, *a):
        self.got.append(("gaps", a[0]))

    def rtts(self, *a):
        self.got.append(("rtts", a[0]))

    def idle(self):
        self.got.append(("idle", None))

    def close(self, timeout, counters=None):
        if self.block is not None:
            self.block.wait(10)
        self.closed = counters
        return {"n": len(self.got)}


@pytest.mark.parametrize("cls", [ConsoleSink, JsonlSink, PrometheusSink])
def test_every_sink_declares_its_capabilities(cls):
    for name in (*CAPABILITIES, "on_failure"):
        assert name in vars(cls), f"{cls.__name__} does not declare {name}"


@pytest.mark.parametrize("compat", [False, True])
def test_influx_sink_declares_its_capabilities_per_run(tmp_path, compat):
    # --influx-api v1: no /ping, and nothing to write: this sink never opens a socket
    cfg = types.SimpleNamespace(
        influx_url="http://127.0.0.1:9", database="d", influx_org="-", retention_policy="",
        token="t", username=None, password=None, auth_basic=False, influx_api="v1",
        compat_points=compat, compat_max_pps=0, flush_interval=0.0, interval=1.0,
        spool_dir=str(tmp_path), spool_max_bytes=0)
    sink = InfluxSink(cfg)
    assert sink.close(1.0)["written"] == 0
    assert (sink.wants_packets, sink.wants_gaps, sink.wants_rtts, sink.wants_idle,
            sink.closes_last) == (compat, compat, False, False, False)
    assert sink.on_failure is None


def test_each_array_reaches_exactly_the_sinks_that_want_it():
    owd, gap, rtt = Fake(packets=True), Fake(gaps=True), Fake(rtts=True)
    out = Fanout([owd, gap, rtt, Fake()])
    a = np.zeros(1, np.int64)
    out.packets("p", "d", a, a)
    out.gaps("g", "d", a, a)
    out.rtts("r", "d", a)
    out.close(1.0)
    assert owd.got == [("packets", "p")] and gap.got == [("gaps", "g")]
    assert rtt.got == [("rtts", "r")]       # RTTs without per-packet delays


def test_sinks_that_close_last_get_the_others_counters():
    first, last = Fake(), Fake(last=True)
    out = Fanout([last, first])             # the order given does not matter
    out.record({"type": "interval"})
    assert out.close(1.0) == {"Fake": {"n": 1}}
    assert last.closed == {"Fake": {"n": 1}}


def test_a_blocked_close_does_not_keep_the_summary_from_printing():
    release = threading.Event()
    stuck, console = Fake(block=release), Fake(last=True)
    out = Fanout([stuck, console])
    out.record({"type": "summary"})
    t0 = time.monotonic()
    out.close(0.3)
    assert time.monotonic() - t0 < 0.6
    assert console.closed == {} and console.got == [("record", "summary")]
    release.set()
    out.thread.join(2)
    assert console.closed == {}             # closed once, not again by the output thread


def test_a_sink_failure_reaches_the_run_once():
    sink = Fake()
    out = Fanout([sink])
    seen = []
    out.on_failure = seen.append
    boom = RuntimeError("writer broken")
    sink.on_failure(boom)
    sink.on_failure(RuntimeError("again"))
    out.close(1.0)
    assert seen == [boom] and out.failure is boom


def test_idle_comes_once_the_queued_records_are_in():
    release = threading.Event()
    gate, watcher = Fake(), Fake(idle=True)
    gate.record = lambda rec: (release.wait(5), gate.got.append(rec["type"]))
    out = Fanout([gate, watcher])
    for kind in ("interval", "sender", "interval", "receiver"):     # any order
        out.record({"type": kind})
    release.set()
    end = time.monotonic() + 2
    while ("idle", None) not in watcher.got and time.monotonic() < end:
        time.sleep(0.01)
    out.close(2.0)
    # records 2-4 were queued while the first was held: one idle(), after all four
    assert watcher.got[-1] == ("idle", None) and watcher.got.count(("idle", None)) <= 2
    assert [g for g in watcher.got if g[0] == "record"] == [
        ("record", k) for k in ("interval", "sender", "interval", "receiver")]
