"""The InfluxDB output at the edges of a run (issue 22 §3 §4 §6), against real servers:
a shutdown while the server is away (unreachable, 401, a database created later), a
SIGKILL while it is away, and a writer that keeps failing the same way. Each time the
probe starts again with the same spool folder once the server answers, and what the server
stored is compared with the probe's own JSON-lines interval records: none lost, none twice.
"""

import json
import os
import random
import signal
import time

import early
import influxserver
import pytest
from influxserver import BINARY as INFLUXD
from probe import free_port, pf
from servers import free_port as free_tcp_port
from vmserver import BINARY as VM
from vmserver import VMServer

from packet_flow import cli
from packet_flow.sinks import influxlink

pytestmark = [pytest.mark.influx, pytest.mark.slow, pytest.mark.skipif(
    VM is None or INFLUXD is None, reason="victoria-metrics or influxd not installed "
    "(make test installs them)")]

INTERVAL = 0.2          # the record interval, and so the flush interval
if INFLUXD:             # started at collection (early.py): influxd takes 1-3 s
    influxserver.early("influxdb:edges")


def args(tmp_path, name, url, *extra, duration=2.0):
    port = free_port()
    return ["--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
            f"127.0.0.1:{port}", "--rate", 10, "--interval", INTERVAL, "--duration", duration,
            "--influx-url", url, "--spool-dir", tmp_path / "spool", "--output", "console",
            "--output", f"jsonl:{tmp_path / name}.jsonl", "--log-level", "info", *extra]


def jsonl(path):
    """The records of a JSON-lines file; a last line cut by a kill is left out."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [json.loads(line) for line in text.split("\n")[:-1]]


def interval_times(tmp_path, name):
    """The record times (ms, as VictoriaMetrics keeps them) and `received` of the intervals."""
    from datetime import datetime
    out = []
    for r in jsonl(tmp_path / f"{name}.jsonl"):
        if r["type"] == "interval":
            dt = datetime.fromisoformat(r["time"])
            out.append(((int(dt.timestamp()) * 1_000_000 + dt.microsecond) // 1000,
                        r["received"]))
    return out


def run(tmp_path, name, url, *extra, duration=2.0):
    """One probe run to its end: (exit status, stdout, stderr, seconds from the end of
    --duration to the exit)."""
    proc = pf(*args(tmp_path, name, url, *extra, duration=duration))
    out, err = proc.communicate(timeout=30)
    exited = time.time()
    end = max(ms for ms, _ in interval_times(tmp_path, name)) / 1000
    return proc.returncode, out, err, exited - end


def spool_files(tmp_path):
    return sorted(n for _, _, names in os.walk(tmp_path / "spool") for n in names)


def vm_points(vm, expect):
    got = [(ts, v) for s in vm.export("packet_flow_received", expect)
           for ts, v in zip(s["timestamps"], s["values"], strict=True)]
    time.sleep(1.0)     # anything written twice would show up now
    return sorted((ts, v) for s in vm.export("packet_flow_received", expect, timeout=0)
                  for ts, v in zip(s["timestamps"], s["values"], strict=True)) or got


def check_shutdown(tmp_path, code, out, err, late):
    print(f"exit {code}, {late:.2f} s after the last interval; spool {spool_files(tmp_path)}")
    assert code == 0, err
    assert late < 2.0, err
    assert "summary" in out and "influx output:" in out, out     # the console summary
    files = spool_files(tmp_path)
    assert files and all(f.endswith(".lp") for f in files)       # complete, final names
    assert "not written at shutdown; kept in" in err


def test_shutdown_with_the_server_unreachable_then_replayed_once(tmp_path):
    port = free_tcp_port()              # nothing listens there yet
    url = f"http://127.0.0.1:{port}"
    check_shutdown(tmp_path, *run(tmp_path, "a", url, "--token", "t"))
    with VMServer(str(tmp_path / "vm"), port=port) as vm:
        code, _, err, _ = run(tmp_path, "b", url, "--token", "t", duration=1.0)
        assert code == 0, err
        want = sorted(interval_times(tmp_path, "a") + interval_times(tmp_path, "b"))
        got = vm_points(vm, len(want))
    print(f"unreachable: stored {len(got)} points, JSON-lines intervals {len(want)}")
    assert got == want and not spool_files(tmp_path)


def test_shutdown_with_a_wrong_password_then_replayed_once(tmp_path):
    with VMServer(str(tmp_path / "vm"), username="probe", password="right") as vm:
        auth = ["--username", "probe", "--auth-basic"]
        check_shutdown(tmp_path, *run(tmp_path, "a", vm.url, *auth, "--password", "wrong"))
        code, _, err, _ = run(tmp_path, "b", vm.url, *auth, "--password", "right",
                              duration=1.0)
        assert code == 0, err
        want = sorted(interval_times(tmp_path, "a") + interval_times(tmp_path, "b"))
        got = vm_points(vm, len(want))
    print(f"401: stored {len(got)} points, JSON-lines intervals {len(want)}")
    assert got == want and not spool_files(tmp_path)


@pytest.mark.early("influxdb:edges")
def test_shutdown_with_a_database_created_later_then_replayed_once(tmp_path):
    with early.take("influxdb:edges") as db:
        auth = ["--username", db.username, "--password", db.password, "--database", "later"]
        check_shutdown(tmp_path, *run(tmp_path, "a", db.url, *auth))
        db.query("CREATE DATABASE later")
        code, _, err, _ = run(tmp_path, "b", db.url, *auth, duration=1.0)
        assert code == 0, err
        rows = db.rows('SELECT "received" FROM packet_flow', "later")
    want = sorted(interval_times(tmp_path, "a") + interval_times(tmp_path, "b"))
    got = sorted((r["time"] // 1_000_000, r["received"]) for r in rows)
    print(f"404: stored {len(got)} points, JSON-lines intervals {len(want)}")
    assert got == want and not spool_files(tmp_path)


def test_sigkill_while_the_server_is_away_loses_at_most_one_flush_interval(tmp_path):
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}"
    proc = pf(*args(tmp_path, "a", url, "--token", "t", duration=30.0))
    try:
        while not os.path.exists(tmp_path / "a.jsonl") or not interval_times(tmp_path, "a"):
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
        time.sleep(random.uniform(1.0, 2.5))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    before = sorted(interval_times(tmp_path, "a"))
    left = spool_files(tmp_path)
    with VMServer(str(tmp_path / "vm"), port=port) as vm:
        code, _, err, _ = run(tmp_path, "b", url, "--token", "t", duration=1.0)
        assert code == 0, err
        after = interval_times(tmp_path, "b")
        got = vm_points(vm, len(before) - 2 + len(after))
    stored_a = [p for p in got if p not in after]
    missing = [p for p in before if p not in got]
    print(f"SIGKILL: {len(before)} JSON-lines intervals before the kill, {len(stored_a)} "
          f"stored, {len(missing)} lost {missing}; spool at the kill: {len(left)} files")
    assert len(got) == len(set(got)) and sorted(stored_a) == [p for p in before if p in got]
    assert missing == before[len(before) - len(missing):]      # only the newest
    assert not missing or (missing[-1][0] - missing[0][0]) / 1000 < INTERVAL + 0.05
    assert len(stored_a) + len(after) == len(got)


def test_a_writer_failing_the_same_way_ends_the_run_and_spools(tmp_path, monkeypatch, capsys,
                                                               caplog):
    with VMServer(str(tmp_path / "vm")) as vm:
        def bug(self, data):
            raise TypeError("injected bug")

        monkeypatch.setattr(influxlink.V2Link, "write", bug)
        start = time.monotonic()
        code = cli.main([str(a) for a in args(tmp_path, "a", vm.url, "--token", "t",
                                               duration=20.0)])
        took = time.monotonic() - start
        err = capsys.readouterr().err
        monkeypatch.undo()
        print(f"writer bug: exit {code} after {took:.1f} s; {err.splitlines()[-1]}")
        assert code == 1 and took < 8.0
        assert err.splitlines()[-1].startswith(
            "packet-flow: error: InfluxDB writer failed 3 times in a row with TypeError: "
            "injected bug; stopped (")
        assert caplog.text.count("restarting it") == 2
        code, _, err, _ = run(tmp_path, "b", vm.url, "--token", "t", duration=1.0)
        assert code == 0, err
        want = sorted(interval_times(tmp_path, "a") + interval_times(tmp_path, "b"))
        got = vm_points(vm, len(want))
    print(f"writer bug: stored {len(got)} points, JSON-lines intervals {len(want)}")
    assert got == want and not spool_files(tmp_path)


def test_sigterm_with_the_server_away_spools_and_exits_within_2s(tmp_path):
    url = f"http://127.0.0.1:{free_tcp_port()}"
    proc = pf(*args(tmp_path, "a", url, "--token", "t", duration=30.0))
    while not os.path.exists(tmp_path / "a.jsonl") or len(interval_times(tmp_path, "a")) < 5:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - signalled
    print(f"SIGTERM: exit {proc.returncode} {took:.2f} s after the signal; "
          f"{len(spool_files(tmp_path))} spool files")
    assert proc.returncode == 0 and took < 2.0, err
    assert "summary" in out and "influx output:" in out
    files = spool_files(tmp_path)
    assert files and all(f.endswith(".lp") for f in files)
