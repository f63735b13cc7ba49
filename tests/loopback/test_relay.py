"""Reordering, duplication and delay through the deterministic relay (tests/support/relay.py).

The relay's schedule fixes which datagrams are late or doubled, so the receiver's counts
must match exactly, with no false loss; its send loop is precise to microseconds, so the
one-way delay it adds must show up in the receiver's median within 50 µs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from probe import bound
from relay import Schedule, expected, plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELAY = os.path.join(ROOT, "tests", "support", "relay.py")
# The relay's deadlines must not wait behind CPU-bound neighbours (2 shared cores): SCHED_FIFO
# when we may set it.
RT_PRIORITY = 10 if os.geteuid() == 0 else 0


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pf(*args):
    return subprocess.Popen([sys.executable, "-m", "packet_flow", "--log-level", "warning",
                             *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)


def _bound(port):
    return bound(port)      # from /proc: a probe bind would race the receiver


def _wait(proc, timeout):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def _receiver_summary(path):
    with open(path, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    (summary,) = [r for r in recs if r["type"] == "summary" and r["role"] == "receiver"]
    return summary


def _run(tmp_path, count, rate_ms, relay_args=None):
    """Sender -> [relay] -> receiver on loopback; returns (receiver summary, relay stats)."""
    port = _free_port()
    out = tmp_path / f"rx-{port}.jsonl"
    rx = _pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 60,
             "--output", f"jsonl:{out}")
    relay = stats = None
    try:
        end = time.monotonic() + 5
        while not _bound(port):
            assert time.monotonic() < end and rx.poll() is None, "receiver did not bind"
            time.sleep(0.02)
        target = port
        if relay_args is not None:
            relay = subprocess.Popen(
                [sys.executable, RELAY, "--forward", f"127.0.0.1:{port}", "--idle-s", "1",
                 "--max-s", "60", "--rt-priority", str(RT_PRIORITY), *map(str, relay_args)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
            target = int(relay.stdout.readline())
        tx = _pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{target}",
                 "--rate", rate_ms, "--count", count)
        _wait(tx, 60)
        if relay is not None:
            stats = json.loads(_wait(relay, 30).splitlines()[-1])
        rx.send_signal(signal.SIGTERM)
        _wait(rx, 20)
    finally:
        for proc in (relay, rx):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    return _receiver_summary(out), stats


# ---------------------------------------------------------------- the schedule itself


def test_plan_reorders_and_duplicates_by_index():
    s = Schedule(reorder_every=10, reorder_at=2, reorder_by=3, dup_every=5, dup_at=4)
    assert plan(12, s) == [0, 1, 3, 4, 4, 5, 2, 6, 7, 8, 9, 9, 10, 11]
    assert expected(12, s) == (1, 2)


def test_plan_without_rules_is_identity_and_flushes_held_at_the_end():
    assert plan(5, Schedule()) == [0, 1, 2, 3, 4]
    assert plan(4, Schedule(reorder_every=4, reorder_at=2, reorder_by=3)) == [0, 1, 3, 2]


def test_plan_never_duplicates_a_reordered_datagram():
    s = Schedule(reorder_every=10, reorder_at=0, reorder_by=1, dup_every=5, dup_at=0)
    order = plan(100, s)
    assert sorted(set(order)) == list(range(100))
    assert expected(100, s) == (10, 10)


def test_schedule_rejects_a_hold_beyond_the_next_reordered_datagram():
    with pytest.raises(ValueError):
        plan(10, Schedule(reorder_every=4, reorder_at=0, reorder_by=4))


# ---------------------------------------------------------------- live, on loopback


@pytest.mark.slow
def test_reorder_and_duplicates_counted_exactly_without_false_loss(tmp_path):
    count = 5000
    s = Schedule(reorder_every=100, reorder_at=10, reorder_by=3, dup_every=50, dup_at=25)
    late, dups = expected(count, s)
    assert (late, dups) == (50, 100)
    summary, stats = _run(tmp_path, count, 0.5,
                          ["--delay-ms", 1, *sum(([f"--{k.replace('_', '-')}", v]
                                                  for k, v in s._asdict().items()), [])])
    assert stats["received"] == count and stats["sent"] == count + dups
    assert summary["closed"] is True
    assert summary["received"] == count
    assert summary["lost"] == 0 and summary["loss_bursts"] == 0
    assert summary["late"] == late
    assert summary["duplicates"] == dups
    assert summary["malformed"] == 0


@pytest.mark.slow
def test_injected_delay_shows_in_median_owd_within_50us(tmp_path):
    count, rate = 4000, 0.5
    base, _ = _run(tmp_path, count, rate)
    delayed, stats = _run(tmp_path, count, rate, ["--delay-ms", 5])
    assert base["received"] == delayed["received"] == count
    assert base["lost"] == delayed["lost"] == 0
    # the relay itself: p50 of its lateness behind the deadline is a few µs
    assert stats["late_p50_ns"] < 20_000, stats
    added_us = delayed["owd_p50_us"] - base["owd_p50_us"]
    assert abs(added_us - 5000.0) <= 50.0, (base["owd_p50_us"], delayed["owd_p50_us"], stats)
