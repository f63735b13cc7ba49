"""The run's threads and shutdown: a receiver thread that dies ends a `both` run with its
error; a sender that raises stops the receiver before its socket is closed; a blocked output
cannot hold the exit beyond the flush timeout; the output queue is bounded and counts what
it dropped. In-process runs drive packet_flow.run with real loopback sockets; the blocked
stdout is a real pipe nobody reads."""

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from packet_flow import config, run
from packet_flow.sinks.fanout import Fanout

F_SETPIPE_SZ = 1031


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def both_cfg(out, *extra):
    port = free_port()
    return config.load([str(a) for a in (
        "--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
        f"127.0.0.1:{port}", "--rate", 10, "--count", 500, "--interval", 0.1, "--output",
        f"jsonl:{out}", *extra)])


def records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_receiver_thread_death_ends_the_run_with_its_error(tmp_path):
    out = tmp_path / "run.jsonl"
    cfg = both_cfg(out)
    t0 = time.monotonic()
    with pytest.raises(OSError) as got:
        # the receiver's socket gone under it: its first recvmmsg fails with EBADF
        run.run(cfg, ready=lambda loops: loops["receiver"].sock.close())
    assert got.value.errno == errno.EBADF
    # the sender stopped at once (its 500 packets would take 5 s) and still said goodbye
    assert time.monotonic() - t0 < 2.0
    (tx,) = [r for r in records(out) if r["type"] == "summary" and r["role"] == "sender"]
    assert 0 < tx["sent"] < 500
    assert not [t for t in threading.enumerate() if t.name == "receiver"]


def test_sender_error_stops_the_receiver_before_its_socket_closes(tmp_path):
    out = tmp_path / "run.jsonl"
    cfg = both_cfg(out)
    seen = {}

    def break_sender(loops):
        seen["receiver"] = loops["receiver"]
        loops["sender"].sock.close()

    with pytest.raises(OSError) as got:
        run.run(cfg, ready=break_sender)
    assert got.value.errno == errno.EBADF
    # the receiver ran to its end (its closing `receiver` record is written) before its
    # socket was closed, and no receiver thread is left behind
    recs = records(out)
    assert [r["type"] for r in recs] == ["receiver"]
    assert recs[0]["datagrams"] == 0
    assert seen["receiver"].sock.fileno() == -1
    assert not [t for t in threading.enumerate() if t.name == "receiver"]


class Stuck:
    """A sink whose record() blocks until released."""

    wants_packets = wants_gaps = wants_rtts = wants_idle = closes_last = False
    on_failure = None
    counters = property(lambda self: {})

    def __init__(self):
        self.release = threading.Event()
        self.got = []

    def record(self, rec):
        self.got.append(rec)
        self.release.wait(10)

    def close(self, timeout, counters=None):
        return {}


def test_output_queue_is_bounded_and_close_is_bounded(caplog):
    sink = Stuck()
    out = Fanout([sink], capacity=5)
    out.record({"type": "sender"})
    while not sink.got:             # the output thread holds the first record
        time.sleep(0.001)
    for i in range(5 + 3):
        out.record({"type": "interval" if i % 2 else "receiver"})
    assert dict(out.dropped) == {"interval": 2, "receiver": 1}
    t0 = time.monotonic()
    out.close(0.2)
    assert time.monotonic() - t0 < 0.5
    assert out.thread.is_alive()
    text = caplog.text
    assert "outputs dropped 3 records while 5 were queued (interval 2, receiver 1)" in text
    assert "5 queued records not written" in text
    sink.release.set()          # what was queued is still written, nothing more
    end = time.monotonic() + 2
    while len(sink.got) < 6 and time.monotonic() < end:
        time.sleep(0.01)
    assert len(sink.got) == 6


def test_blocked_stdout_cannot_hold_the_exit(tmp_path):
    """Console output into a pipe of one page that nobody reads: the output thread blocks;
    SIGTERM still ends the run within the signal flush timeout (1.5 s), exit 0."""
    port = free_port()
    rfd, wfd = os.pipe()
    fcntl.fcntl(wfd, F_SETPIPE_SZ, 4096)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "packet_flow", "--log-level", "warning", "--mode", "both",
         "--local-addr", f"127.0.0.1:{port}", "--remote-addr", f"127.0.0.1:{port}",
         "--rate", "1", "--interval", "0.01", "--output", "console",
         "--output", f"jsonl:{tmp_path / 'run.jsonl'}"],
        stdout=wfd, stderr=subprocess.PIPE, text=True, env=env)
    os.close(wfd)
    try:
        # the console fills the pipe (4 KiB: ~0.2 s of lines): the output thread blocks,
        # so the JSON file beside it stops growing
        size, end = -1, time.monotonic() + 10
        while time.monotonic() < end:
            time.sleep(0.3)
            path = tmp_path / "run.jsonl"      # made once the probe has started
            now = os.path.getsize(path) if path.exists() else -1
            if now == size and now > 0:
                break
            size = now
        assert time.monotonic() < end, "the pipe never filled"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(rfd)
    assert proc.returncode == 0, err
    assert took < 2.5
    assert "outputs did not finish within 1.5 s" in err


def _process_state():
    libc = ctypes.CDLL(None)
    return {"handlers": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM,
                                                          signal.SIGQUIT, signal.SIGUSR1)},
            "frozen": gc.get_freeze_count(), "switch": sys.getswitchinterval(),
            "policy": os.sched_getscheduler(0), "priority": os.sched_getparam(0).sched_priority,
            "slack": libc.prctl(30, 0, 0, 0, 0)}      # PR_GET_TIMERSLACK: this thread's


def test_a_run_leaves_no_trace(tmp_path):
    """Signal handlers, gc.freeze, the switch interval, and the sender thread's SCHED_FIFO
    and timer slack are as they were once run() returns (a library call leaves no trace);
    the run itself had them changed (SCHED_FIFO only where the process may have it)."""
    before = _process_state()
    during = {}
    cfg = both_cfg(tmp_path / "run.jsonl")
    cfg = dataclasses.replace(cfg, count=30, rate_ms=1.0)
    verdict = run.run(cfg, ready=lambda loops: during.update(_process_state()))
    assert verdict.status == 0
    assert _process_state() == before
    assert during["frozen"] > before["frozen"] and during["switch"] < before["switch"]
    assert during["handlers"] != before["handlers"]
    (tx,) = [r for r in records(tmp_path / "run.jsonl")
             if r["type"] == "summary" and r["role"] == "sender"]
    assert tx["sent"] == 30


def test_a_mesh_run_leaves_no_trace(tmp_path):
    """The same for a mesh node (its send thread has the precise timer; the main thread's
    timer slack was left changed before), probing a socket of the test's 30 times."""
    before = _process_state()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        cfg = config.load([str(a) for a in (
            "--mode", "mesh", "--local-addr", f"127.0.0.1:{free_port()}", "--peers",
            f"127.0.0.1:{peer.getsockname()[1]}", "--rate", 1, "--count", 30, "--interval",
            0.1, "--output", f"jsonl:{tmp_path / 'run.jsonl'}")])
        assert run.run(cfg).status == 0
        got = 0
        peer.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while peer.recv(2048):
                got += 1
    assert _process_state() == before
    (tx,) = [r for r in records(tmp_path / "run.jsonl")
             if r["type"] == "summary" and r["role"] == "sender"]
    assert tx["sent"] == got == 30
