"""The InfluxDB output against a real InfluxDB 1.x (Debian's `influxdb` 1.6.7, auth on).

One server for the module (tests/support/influxserver.py); each test uses its own database. The
probe runs as the CLI on loopback; what it stored is read back with InfluxQL and compared
with its own JSON-lines summary. Also here: the spool's atomic writes, cap, unwritable folder
and full disk (a small tmpfs this test mounts and unmounts).
"""

import json
import logging
import os
import re
import signal
import subprocess
import time
import types
from datetime import datetime

import early
import influxserver
import pytest
from influxserver import BINARY  # noqa: E402
from probe import finish, free_port, pf, records, summaries  # noqa: E402

from packet_flow.sinks.influx import InfluxSink  # noqa: E402
from packet_flow.sinks.spool import Spool  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(ROOT, "deploy/grafana/influxdb1/packet-flow-influxql.json")
MAX_BODY = 64 * 1024  # the server refuses larger writes with 413

pytestmark = [pytest.mark.influx, pytest.mark.early("influxdb:influx1"), pytest.mark.skipif(
    BINARY is None, reason="influxd not installed (apt-get install influxdb; make test does)")]
if BINARY:      # started at collection (early.py): influxd takes 1-3 s
    influxserver.early("influxdb:influx1", max_body=MAX_BODY)


@pytest.fixture(scope="module")
def influx1():
    server = early.take("influxdb:influx1")
    yield server
    server.stop()


def creds(server):
    return ["--influx-url", server.url, "--username", server.username, "--password",
            server.password]


def us(text: str) -> int:
    """RFC 3339 text with microseconds -> integer µs since the epoch."""
    dt = datetime.fromisoformat(text)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def interval(ns: int, i: int, **extra) -> dict:
    rec = {"type": "interval", "role": "receiver", "time": ns, "source": "127.0.0.1:4000",
           "destination": "127.0.0.1:8000", "session": "00112233aabbccdd", "interval_s": 1.0,
           "received": 1000 + i, "lost": i % 3, "loss_percent": 0.25, "owd_p50_us": 12.5,
           "stalled": False, "closed": False}
    rec.update(extra)
    return rec


def sink_cfg(server, spool, database, **kw):
    cfg = types.SimpleNamespace(
        influx_url=server.url, database=database, influx_org="-", retention_policy="",
        token=None, username=server.username, password=server.password, auth_basic=False,
        influx_api="auto", compat_points=False, compat_max_pps=0, flush_interval=0.05,
        interval=1.0, spool_dir=str(spool), spool_max_bytes=1 << 30)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def run_both(tmp_path, server, database, count, skips_at=(), during=None, extra=()):
    """A `both`-mode probe writing to `database`; SIGUSR1 (one skipped sequence number) at
    each time in `skips_at` after its first record; `during(t0)` runs while it does.
    Returns (records, stderr)."""
    port = free_port()
    out = tmp_path / f"{database}.jsonl"
    proc = pf("--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
              f"127.0.0.1:{port}", "--rate", 2, "--count", count, "--interval", 0.5,
              "--database", database, *creds(server), "--spool-dir", tmp_path / "spool",
              "--output", f"jsonl:{out}", "--log-level", "info", *extra)
    end = time.monotonic() + 10     # its first record: the run and its signal handlers are on
    while not (out.exists() and out.stat().st_size) and time.monotonic() < end:
        time.sleep(0.01)
    t0 = time.monotonic()
    for at in skips_at:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        proc.send_signal(signal.SIGUSR1)
    if during is not None:
        during(t0)
    _, err = finish(proc, timeout=30)
    return records(out), err


@pytest.fixture(scope="module")
def probe_run(influx1, tmp_path_factory):
    """One 1.2 s probe run (600 packets, two deliberate gaps) stored in database `e2e`."""
    influx1.query("CREATE DATABASE e2e")
    recs, err = run_both(tmp_path_factory.mktemp("e2e"), influx1, "e2e", 600,
                         skips_at=(0.05, 0.35))      # the first record comes at 0.5 s
    return recs, err


def test_probe_run_adds_up_in_influxdb1(influx1, probe_run):
    recs, err = probe_run
    (rx,) = summaries(recs)
    (tx,) = summaries(recs, "sender")
    assert tx["sent"] == 600 and rx["received"] == 600 and rx["lost"] == 2
    # the API choice, logged once
    choice = [line for line in err.splitlines() if "writing with the" in line]
    assert len(choice) == 1, err
    assert f"InfluxDB at {influx1.url}: version 1.6.7" in choice[0]
    assert "writing with the 1.x API (/write?db=e2e)" in choice[0]

    (got,) = influx1.rows('SELECT sum("received") AS received, sum("lost") AS lost, '
                          'sum("late") AS late, sum("duplicates") AS duplicates, '
                          'sum("malformed") AS malformed, sum("loss_bursts") AS loss_bursts, '
                          'count("received") AS n FROM packet_flow', "e2e")
    intervals = [r for r in recs if r["type"] == "interval"]
    assert got["n"] == len(intervals)
    for key in ("received", "lost", "late", "duplicates", "malformed", "loss_bursts"):
        assert got[key] == rx[key], key
    assert (got["received"], got["lost"], got["loss_bursts"]) == (600, 2, 2)
    print("e2e stored:", got, "summary received/lost", rx["received"], rx["lost"])

    # tags and timestamps: every interval point is its JSON-lines record (µs in the JSON)
    points = influx1.rows('SELECT "received", "lost" FROM packet_flow GROUP BY *', "e2e")
    assert {(p["source"], p["destination"], p["session"], p["host"]) for p in points} == {
        (rx["source"], rx["destination"], rx["session"], os.uname().nodename)}
    assert sorted((p["time"] // 1000, p["received"], p["lost"]) for p in points) == sorted(
        (us(r["time"]), r["received"], r["lost"]) for r in intervals)

    # the summary, the sender and the loss-burst histogram
    (summary,) = influx1.rows('SELECT * FROM packet_flow_summary WHERE "role" = \'receiver\'',
                              "e2e")
    assert summary["received"] == 600 and summary["time"] // 1000 == us(rx["time"])
    (sent,) = influx1.rows('SELECT sum("sent") AS sent FROM packet_flow_sender', "e2e")
    assert sent["sent"] == 600
    bursts = influx1.rows('SELECT sum("count") AS n FROM packet_flow_loss_burst GROUP BY '
                          '"length"', "e2e")
    assert {b["length"]: b["n"] for b in bursts} == rx["loss_burst_hist"] == {"1": 2}


def test_every_influxql_panel_returns_data(influx1, probe_run):
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    macros = {"$timeFilter": "time > now() - 1h", "$__interval": "100ms", "$source": ".*",
              "$destination": ".*"}

    def expand(q):
        for k, v in macros.items():
            q = q.replace(k, v)
        assert "$" not in q.replace("$/", ""), q
        return q

    queries = [v["query"] for v in dash["templating"]["list"]]
    queries += [t["query"] for p in dash["panels"] for t in p["targets"]]
    assert len(queries) == 11
    for q in queries:
        series = influx1.query(expand(q), "e2e")
        values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
        assert values, f"no data for {q}"


def test_database_created_3s_late_loses_nothing(influx1, tmp_path):
    def create_later(t0):
        time.sleep(max(0.0, t0 + 3.0 - time.monotonic()))
        influx1.query("CREATE DATABASE late")

    recs, err = run_both(tmp_path, influx1, "late", 2000, skips_at=(1.0,), during=create_later)
    (rx,) = summaries(recs)
    assert rx["received"] == 2000 and rx["lost"] == 1
    missing = [line for line in err.splitlines() if "has no database 'late'" in line]
    assert len(missing) == 1, err  # at most once a minute
    assert f"InfluxDB at {influx1.url} has no database 'late' (404: database not found" in \
        missing[0]
    assert "is back after" in err
    (got,) = influx1.rows('SELECT sum("received") AS received, sum("lost") AS lost, '
                          'count("received") AS n FROM packet_flow', "late")
    print("late database stored:", got)
    n_intervals = sum(1 for r in recs if r["type"] == "interval")
    assert (got["received"], got["lost"], got["n"]) == (2000, 1, n_intervals)
    counters = re.search(r"InfluxSink counters: (.*)", err).group(1)
    assert "dropped 0," in counters and "rejected 0," in counters


def test_wrong_password_is_one_clear_line_and_loses_nothing(influx1, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="packet_flow.sinks.influx")
    influx1.query("CREATE DATABASE pw")
    sink = InfluxSink(sink_cfg(influx1, tmp_path, "pw", password="wrong"))
    t0 = time.time_ns() - 10_000_000_000
    for i in range(8):
        sink.record(interval(t0 + i * 1_000_000_000, i))
        time.sleep(0.1)
    c = sink.close(timeout=1.0)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
             and "credentials" in r.getMessage()]
    assert lines == [f"InfluxDB at {influx1.url} refused the credentials (401: authorization "
                     "failed); check --token, or --username/--password (and --auth-basic for "
                     "Basic auth); keeping points and retrying"]
    assert c["written"] == c["dropped"] == 0 and c["spool_points"] == 8

    sink = InfluxSink(sink_cfg(influx1, tmp_path, "pw"))
    c = sink.close(timeout=5.0)
    assert c["written"] == c["replayed"] == 8 and c["spool_points"] == 0
    (got,) = influx1.rows('SELECT sum("received") AS r, count("received") AS n FROM packet_flow',
                          "pw")
    assert (got["r"], got["n"]) == (sum(1000 + i for i in range(8)), 8)


def test_partial_writes_count_exactly_the_refused_points(influx1, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="packet_flow.sinks.influx")
    now = time.time_ns()
    old = now - 30 * 86400 * 1_000_000_000  # another shard (field types are per shard)
    # field type conflict: `received` is a float in the old shard
    influx1.query("CREATE DATABASE conflict")
    seed = InfluxSink(sink_cfg(influx1, tmp_path / "a", "conflict"))
    seed.record(interval(old - 1_000_000_000, 0, received=0.5))
    assert seed.close()["written"] == 1
    sink = InfluxSink(sink_cfg(influx1, tmp_path / "a", "conflict", flush_interval=3600.0))
    for i in range(4):
        sink.record(interval(old + i * 1_000_000_000, i))
    for i in range(6):
        sink.record(interval(now - 10_000_000_000 + i * 1_000_000_000, 10 + i))
    c = sink.close()
    assert c["written"] == 6 and c["rejected"] == c["dropped"] == 4 and c["spool_points"] == 0
    ((reason, n),) = sink.rejected_reasons.items()
    assert n == 4 and reason.startswith('field type conflict: input field "received" on '
                                        'measurement "packet_flow" is type integer')
    (got,) = influx1.rows(f'SELECT count("received") AS n FROM packet_flow WHERE time > {old}',
                          "conflict")
    assert got["n"] == 6
    assert f"InfluxDB at {influx1.url} refused 4 of 10 points (field type conflict" in caplog.text

    # points outside the retention policy
    influx1.query("CREATE DATABASE retained")
    influx1.query("CREATE RETENTION POLICY short ON retained DURATION 1h REPLICATION 1")
    sink = InfluxSink(sink_cfg(influx1, tmp_path / "b", "retained", retention_policy="short",
                               flush_interval=3600.0))
    for i in range(3):
        sink.record(interval(now - 7200_000_000_000 + i, i))
    for i in range(5):
        sink.record(interval(now - 60_000_000_000 + i, i))
    c = sink.close()
    assert c["written"] == 5 and c["rejected"] == 3 and c["dropped"] == 3
    assert sink.rejected_reasons == {"points beyond retention policy": 3}
    (got,) = influx1.rows('SELECT count("received") AS n FROM "short".packet_flow', "retained")
    assert got["n"] == 5


def test_413_splits_the_chunk(influx1, tmp_path):
    import numpy as np

    influx1.query("CREATE DATABASE big")
    sink = InfluxSink(sink_cfg(influx1, tmp_path, "big", compat_points=True,
                               flush_interval=3600.0))
    i = np.arange(3000)
    rx_ns = time.time_ns() - 60_000_000_000 + i * 1_000_000
    sink.packets("10.0.0.1:4000", "10.0.0.2:8000", rx_ns, i * 1000)
    c = sink.close()
    # ~75 bytes a point: 3000 points are ~220 KiB, more than the server's 64 KiB limit
    assert c["written"] == 3000 and c["rejected"] == c["dropped"] == 0
    assert c["split_requests"] >= 3
    print("413:", c)
    (got,) = influx1.rows('SELECT count("value") AS n, sum("value") AS s FROM latency', "big")
    assert (got["n"], got["s"]) == (3000, sum(range(3000)))


# ---- the spool ---------------------------------------------------------------------------

def test_spool_is_atomic_removes_stale_tmp_and_caps_oldest_first(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    (d / "00000000000000000001-1-000001.lp").write_bytes(b"m v=1i 1\nm v=2i 2\n")
    (d / "00000000000000000002-1-000002.lp.tmp").write_bytes(b"m v=3i 3\nm v=")  # a crash
    spool = Spool(str(d), max_bytes=60)
    assert spool.stale == 1 and spool.points == 2 and spool.bytes == 18
    assert sorted(os.listdir(d)) == ["00000000000000000001-1-000001.lp"]
    assert spool.add(b"m v=4i 4\nm v=5i 5\n") == 0
    assert spool.add(b"m v=6i 6\nm v=7i 7\n") == 0 and spool.bytes == 54
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]
    assert spool.add(b"m v=8i 8\n") == 2  # past 60 bytes: the oldest file goes
    assert spool.points == 5 and spool.bytes == 45
    path, data, n = spool.oldest()
    assert data == b"m v=4i 4\nm v=5i 5\n" and n == 2
    # a single chunk larger than the cap keeps its newest lines
    assert spool.add(b"".join(b"m v=%di %d\n" % (k, k) for k in range(10, 20))) == 5 + 5
    assert spool.points == 5 and spool.bytes == 55 and len(spool) == 1


def test_spool_cap_in_the_sink_drops_oldest_counted_and_logged(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="packet_flow.sinks.influx")
    cfg = sink_cfg(types.SimpleNamespace(url="http://127.0.0.1:9", username=None,
                                         password=None), tmp_path, "capped",
                   spool_max_bytes=4000, token="t")
    sink = InfluxSink(cfg)
    t0 = time.time_ns()
    for i in range(200):
        sink.record(interval(t0 + i, i))
        if i % 20 == 19:
            time.sleep(0.1)
    c = sink.close(timeout=0.5)
    assert c["written"] == 0 and c["spool_evicted"] == c["dropped"] > 0
    assert c["spool_points"] + c["spool_evicted"] + c["queued"] == 200
    assert c["spool_points"] * 150 <= 4000  # each line here is over 150 bytes
    assert caplog.text.count("reached --spool-max-bytes 4000: dropped the") == 1
    # what is left is the newest points, oldest first
    spool = Spool(sink.spool_dir)
    kept = []
    while len(spool):
        path, data, _ = spool.oldest()
        kept += [int(x) for x in re.findall(rb"received=(\d+)i", data)]
        spool.remove(path)
    assert kept == list(range(1000 + 200 - len(kept), 1200))


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts = []

    def mount(options):
        d = tmp_path / f"tmpfs{len(mounts)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], check=True)
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", str(d)], check=True)


def test_unwritable_spool_dir_is_one_line_at_start(tmpfs):
    ro = tmpfs("ro,size=64k")
    port = free_port()
    proc = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 1,
              "--influx-url", "http://127.0.0.1:9", "--token", "t", "--spool-dir", ro)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert err.splitlines() == [
        f"packet-flow: error: option --spool-dir: cannot write to '{ro}' "
        "(Read-only file system)"], err


def test_full_disk_keeps_points_in_memory_then_writes_them_once(influx1, tmpfs, caplog):
    caplog.set_level(logging.WARNING, logger="packet_flow.sinks.influx")
    small = tmpfs("size=96k")
    # no database yet (404 = an outage): points go to memory, then to the 96 KiB spool
    sink = InfluxSink(sink_cfg(influx1, small, "full"))
    t0 = time.time_ns() - 100_000_000_000
    for i in range(1000):
        sink.record(interval(t0 + i * 1_000_000, i))
        if i % 100 == 99:
            time.sleep(0.1)
    time.sleep(0.3)
    c = sink.counters
    assert c["spool_failed"] > 0 and c["spooled"] > 0 and c["dropped"] == 0
    assert c["spool_points"] + c["queued"] == 1000
    assert "cannot write to the spool (--spool-dir" in caplog.text
    assert "No space left on device" in caplog.text
    influx1.query("CREATE DATABASE full")
    print("full disk, before the database exists:", c)
    c = sink.close(timeout=10.0)
    print("full disk, after:", c)
    assert c["written"] == 1000 and c["dropped"] == 0 and c["queued"] == c["spool_points"] == 0
    (got,) = influx1.rows('SELECT count("received") AS n, sum("received") AS s FROM packet_flow',
                          "full")
    assert (got["n"], got["s"]) == (1000, sum(1000 + i for i in range(1000)))
