"""The Python API as a script or a pytest-based benchmark uses it: real probes on loopback in
this process, exact counts, the verdict, errors as the command line gives them, and nothing
of the process's state changed afterwards."""

import gc
import importlib.metadata
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from probe import free_port

import packet_flow
from packet_flow import config

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP)


def both(port, **kw):
    return dict(mode="both", local_addr=f"127.0.0.1:{port}", remote_addr=f"127.0.0.1:{port}",
                **kw)


def process_state():
    root, pf = logging.getLogger(), logging.getLogger("packet_flow")
    return {"gc_frozen": gc.get_freeze_count(), "gc_enabled": gc.isenabled(),
            "gc_threshold": gc.get_threshold(), "switch": sys.getswitchinterval(),
            "signals": [signal.getsignal(s) for s in SIGNALS],
            "logging": (root.level, list(root.handlers), pf.level, list(pf.handlers),
                        pf.propagate, logging.root.manager.disable),
            "threads": sorted(t.name for t in threading.enumerate()),
            "sched": os.sched_getscheduler(0), "fds": len(os.listdir("/proc/self/fd"))}


def test_a_benchmark_asserts_on_the_summary():
    result = packet_flow.probe(**both(free_port()), rate=1, count=300, max_loss=0,
                               max_owd_p99="1s")
    (flow,) = result.flows
    assert result.passed and result.verdict.status == 0 and result.verdict.lines() == []
    assert (flow["received"], flow["lost"], flow["duplicates"]) == (300, 0, 0)
    assert result.sender["sent"] == 300 and flow["verdict"] == "pass"
    assert result.records is None and result.config["count"] == 300
    assert flow["time"].endswith("Z") and json.loads(json.dumps(result.as_dict()))


def test_nothing_of_the_process_is_left_changed():
    logging.getLogger("packet_flow").setLevel(logging.ERROR)     # the caller's choice
    before = process_state()
    try:
        packet_flow.probe(**both(free_port()), rate=0.5, count=200)
        with packet_flow.Probe(**both(free_port()), rate=0.5):
            time.sleep(0.2)
        assert process_state() == before
    finally:
        logging.getLogger("packet_flow").setLevel(logging.NOTSET)


def test_in_background_with_deliberate_loss_and_interval_records():
    port = free_port()
    with packet_flow.Probe(**both(port), rate=2, interval=0.2, max_loss=0,
                           records=True) as p:
        time.sleep(0.4)
        p.skip()
        time.sleep(0.4)
        assert p.running
    result = p.result
    assert not p.running and not result.passed and result.verdict.status == 3
    (flow,) = result.flows
    assert flow["lost"] == 1 and flow["received"] == result.sender["sent"]
    assert result.verdict.lines() == [f"packet-flow: threshold --max-loss 0 breached by "
                                      f"{flow['source']} -> 127.0.0.1:{port}: lost 1"]
    intervals = [r for r in result.records if r["type"] == "interval"]
    assert len(intervals) >= 3 and sum(r["lost"] for r in intervals) == 1
    assert sum(r["sent"] for r in result.records if r["type"] == "sender") == \
        result.sender["sent"]


def test_two_probes_after_each_other_and_side_by_side():
    for _ in range(2):
        r = packet_flow.probe(**both(free_port()), rate=0.5, count=400)
        assert [(f["received"], f["lost"]) for f in r.flows] == [(400, 0)]
    before = process_state()
    results = {}

    def one(name, n, skips):
        with packet_flow.Probe(**both(free_port()), rate=0.5, count=n) as p:
            time.sleep(0.1)
            p.skip(skips)
            results[name] = p.wait(10)

    threads = [threading.Thread(target=one, args=("a", 600, 0)),
               threading.Thread(target=one, args=("b", 900, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    got = {k: (r.sender["sent"], r.flows[0]["received"], r.flows[0]["lost"])
           for k, r in results.items()}
    assert got == {"a": (600, 600, 0), "b": (900, 900, 2)}    # skips: numbers unused
    assert process_state() == before


@pytest.mark.parametrize("options, argv", [
    (dict(rate=0, duration=1), ["--rate", "0"]),
    (dict(max_loss="5 percent", duration=1), ["--max-loss", "5 percent"]),
    (dict(mode="sender", max_owd_p99="1ms", duration=1),
     ["--mode", "sender", "--max-owd-p99", "1ms"]),
    (dict(remote_addr="::1:9000", duration=1), ["--remote-addr", "::1:9000"]),
])
def test_errors_are_the_command_lines(options, argv):
    with pytest.raises(packet_flow.ConfigError) as api:
        packet_flow.probe(**options)
    with pytest.raises(packet_flow.ConfigError) as cli:
        config.load(argv, env={})
    assert str(api.value) == str(cli.value)


def test_options_only_the_api_refuses():
    with pytest.raises(packet_flow.ConfigError, match=r"^option ratee: unknown option "
                       r"\(did you mean rate\?\)$"):
        packet_flow.probe(ratee=1, duration=1)
    with pytest.raises(packet_flow.ConfigError, match="leaves logging to the caller"):
        packet_flow.probe(log_level="debug", duration=1)
    with pytest.raises(packet_flow.ConfigError, match="needs duration="):
        packet_flow.probe(mode="receiver", local_addr="127.0.0.1:0")


def test_the_environment_is_not_read(monkeypatch):
    monkeypatch.setenv("PACKET_FLOW_RATE", "0")         # would be an error if it were read
    r = packet_flow.probe(**both(free_port()), rate=1, count=50)
    assert r.flows[0]["received"] == 50


def test_a_port_in_use_raises_at_start():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        p = packet_flow.Probe(mode="receiver", local_addr=f"127.0.0.1:{port}")
        with pytest.raises((OSError, packet_flow.PacketFlowError)):
            p.start()
        assert not p.running


def test_version_agrees_everywhere():
    out = subprocess.run([sys.executable, "-m", "packet_flow", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out == f"packet-flow {packet_flow.__version__}\n"
    assert importlib.metadata.version("packet-flow") == packet_flow.__version__
    typed = importlib.resources.files("packet_flow") / "py.typed"
    assert typed.is_file()


def test_a_run_that_fails_raises_at_the_end_of_the_with_block():
    port = free_port()
    with pytest.raises(OSError):
        with packet_flow.Probe(**both(port), rate=1) as p:
            p._loops["receiver"].sock.close()       # the receiver fails: EBADF
            time.sleep(0.5)
    assert not p.running
