"""InfluxDB sink: pure line-protocol tests, and tests against a real VictoriaMetrics server.

The server tests (marked `influx`) start Debian's `victoria-metrics` on a free loopback port
with a temporary data dir (tests/support/vmserver.py) and read back what was stored through its
export API; they skip only when the binary is missing. The 20 s outage runs in a child process
launched when the tests are collected (`outage`, tests/support/early.py); its test checks what
that run wrote.
"""

import http.server
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types

import early
import numpy as np
import pytest
from vmserver import BINARY, VMServer  # noqa: E402

from packet_flow.errors import SinkError  # noqa: E402
from packet_flow.sinks.influx import InfluxSink  # noqa: E402
from packet_flow.sinks.influxlink import (  # noqa: E402
    Answer,
    Verdict,
    auth_headers,
    choose_api,
    classify,
    server_message,
    split,
)
from packet_flow.sinks.lineproto import format_int_points, format_record  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_vm = pytest.mark.skipif(
    BINARY is None,
    reason="victoria-metrics binary not found (apt-get install victoria-metrics; make test does)",
)


def interval(ns: int, seq: int, **extra) -> dict:
    rec = {"type": "interval", "role": "receiver", "time": ns, "source": "127.0.0.1:4000",
           "destination": "[::1]:8000", "session": "00112233aabbccdd", "interval_s": 1.0,
           "received": 1000 + seq, "lost": seq % 3, "late": 0, "duplicates": 0,
           "loss_percent": 0.25, "owd_p50_us": 12.5, "owd_p999_us": None, "stalled": False,
           "closed": False, "loss_burst_hist": {}}
    rec.update(extra)
    return rec


def make_cfg(url: str, spool: str, **kw):
    cfg = types.SimpleNamespace(
        influx_url=url, database="packet_flow", influx_org="-", retention_policy="",
        token="test-token", username=None, password=None, auth_basic=False,
        compat_points=False, compat_max_pps=10_000, flush_interval=0.2, interval=1.0,
        spool_dir=spool, spool_max_bytes=1 << 30, influx_api="auto")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def samples(vm: VMServer, metric: str, expect: int = 1, settle: float = 0.0) -> dict:
    """{frozenset(labels): sorted [(timestamp_ms, value)]} of one metric, once `expect`
    samples are visible; `settle` s later it reads again, so extra samples would show too."""
    vm.export(metric, expect)
    time.sleep(settle)
    out = {}
    for s in vm.export(metric, expect, timeout=0):
        labels = frozenset((k, v) for k, v in s["metric"].items() if k != "__name__")
        out[labels] = sorted(zip(s["timestamps"], s["values"], strict=True))
    return out


@pytest.fixture
def vm(tmp_path):
    server = VMServer(str(tmp_path / "vmdata"))
    server.start()
    yield server
    server.stop()


# ---- pure: no server -------------------------------------------------------------------

def test_format_record_schema():
    line = format_record(interval(1795545715123456000, 4, loss_burst_hist={"1": 2, "3": 0}),
                         "probe host")
    assert line == (
        b"packet_flow,destination=[::1]:8000,host=probe\\ host,session=00112233aabbccdd,"
        b"source=127.0.0.1:4000 interval_s=1.0,received=1004i,lost=1i,late=0i,duplicates=0i,"
        b"loss_percent=0.25,owd_p50_us=12.5,stalled=false,closed=false 1795545715123456000\n"
        # the loss-burst histogram: one point per burst length
        b"packet_flow_loss_burst,destination=[::1]:8000,host=probe\\ host,length=1,"
        b"session=00112233aabbccdd,source=127.0.0.1:4000 count=2i 1795545715123456000\n")
    # integer values of float-named fields stay floats, so field types never flip
    assert b"loss_percent=0.0," in format_record(interval(0, 0, loss_percent=0), "h")
    summary = format_record({"type": "summary", "role": "sender", "time": 0,
                             "source": "a:1", "sent": np.int64(5)}, "h")
    assert summary == b"packet_flow_summary,host=h,role=sender,source=a:1 sent=5i 0\n"
    assert format_record({"type": "bogus", "time": 0, "x": 1}, "h") is None


def test_format_int_points_matches_python():
    rng = np.random.default_rng(1)
    values = np.r_[0, 1, -1, 9, 10, -10, rng.integers(-10**12, 10**12, 500)]
    ts = np.r_[0, 1, 10**18, rng.integers(0, 2**62, len(values) - 3)]
    got = format_int_points(b"latency,source=s value=", values, ts)
    want = "".join(f"latency,source=s value={v}i {t}\n" for v, t in zip(values, ts, strict=True))
    assert got == want.encode()
    assert format_int_points(b"x", np.array([], np.int64), np.array([], np.int64)) == b""


def test_answers_classified():
    """What the writer does with each answer: exact partial-write counts only."""
    ok, retry = Verdict("ok"), Verdict("retry")
    assert classify(Answer(204, ""), 10) == ok
    for status in (None, 401, 403, 404, 405, 429, 500, 503):
        assert classify(Answer(status, "x"), 10) == retry
    msg = ('partial write: field type conflict: input field "received" on measurement '
           '"packet_flow" is type integer, already exists as type float dropped=4')
    assert classify(Answer(400, msg), 10) == Verdict(
        "partial", 4, 'field type conflict: input field "received" on measurement '
        '"packet_flow" is type integer, already exists as type float')
    assert classify(Answer(422, "partial write: points beyond retention policy dropped=3"),
                    8) == Verdict("partial", 3, "points beyond retention policy")
    # no exact count (a parse error's dropped=0 does not count the bad line): split
    assert classify(Answer(400, "partial write: unable to parse 'x': bad dropped=0"),
                    5) == Verdict("split")
    assert classify(Answer(400, "field type conflict"), 5) == Verdict("split")
    assert classify(Answer(400, "field type conflict"), 1) == Verdict(
        "refused", 1, "field type conflict")
    assert classify(Answer(413, "Request Entity Too Large"), 2) == Verdict("split")
    assert split(b"a 1\nb 2\nc 3\n") in ((b"a 1\nb 2\n", b"c 3\n"), (b"a 1\n", b"b 2\nc 3\n"))
    assert split(b"a 1\nb 2\n") == (b"a 1\n", b"b 2\n")
    assert server_message(b'{"error":"authorization failed"}\n') == "authorization failed"
    assert server_message('{"code":"not found","message":"bucket \\"x\\" not found"}') == \
        'bucket "x" not found'


def test_credentials_per_api():
    assert auth_headers("u", "p", None, False) == {}  # 1.x: u/p query parameters
    assert auth_headers("u", "p", None, True) == {"Authorization": "Basic dTpw"}
    assert auth_headers(None, None, "tok", False) == {"Authorization": "Token tok"}
    assert auth_headers(None, None, "u:p", True) == {"Authorization": "Basic dTpw"}
    assert choose_api("v1", "http://127.0.0.1:9", {}, 0.5) == ("v1", "forced by --influx-api")
    api, why = choose_api("auto", "http://127.0.0.1:9", {}, 0.5)
    assert api is None and why.startswith("unreachable (")


# ---- against a real VictoriaMetrics ------------------------------------------------------

@pytest.mark.influx
@needs_vm
def test_points_land_with_tags_fields_timestamps(vm, tmp_path):
    sink = InfluxSink(make_cfg(vm.url, str(tmp_path / "spool")))
    t0 = time.time_ns() - 10 * 1_000_000_000
    times = [t0 + i * 1_000_000_000 + 123_456_789 for i in range(5)]
    for i, ns in enumerate(times):
        sink.record(interval(ns, i))
    sink.record({"type": "sender", "role": "sender", "time": times[0],
                 "source": "127.0.0.1:4000", "destination": "[::1]:8000",
                 "session": "00112233aabbccdd", "sent": 77, "timer_late_p99_us": 3.25})
    c = sink.close()
    assert c["written"] == 6 and c["dropped"] == c["spooled"] == c["queued"] == 0
    assert sink.api == "v2"  # VictoriaMetrics' /ping has no version header: the 2.x path

    got = samples(vm, "packet_flow_received", 5, settle=1.0)
    labels = frozenset({"source": "127.0.0.1:4000", "destination": "[::1]:8000",
                        "session": "00112233aabbccdd", "host": socket.gethostname()}.items())
    assert list(got) == [labels]
    # VictoriaMetrics trims timestamps to milliseconds (REFERENCE.md §4)
    assert got[labels] == [(ns // 1_000_000, 1000 + i) for i, ns in enumerate(times)]
    assert [v for _, v in samples(vm, "packet_flow_owd_p50_us", 5)[labels]] == [12.5] * 5
    assert [v for _, v in samples(vm, "packet_flow_stalled", 5)[labels]] == [0] * 5
    assert samples(vm, "packet_flow_owd_p999_us", 0) == {}  # null fields are skipped
    assert samples(vm, "packet_flow_sender_sent")[labels] == [(times[0] // 1_000_000, 77)]


@pytest.mark.influx
@needs_vm
def test_wrong_password_gives_clear_error_and_keeps_accepting(tmp_path, caplog):
    """401 is an outage, not permission to drop: one clear line naming the server and the
    cause; the points wait in the spool and are written exactly once when the password is
    right."""
    with VMServer(str(tmp_path / "vmdata"), username="probe", password="right") as vm:
        cfg = make_cfg(vm.url, str(tmp_path / "spool"), token=None, username="probe",
                       password="wrong", auth_basic=True)
        caplog.set_level(logging.WARNING, logger="packet_flow.sinks.influx")
        sink = InfluxSink(cfg)
        t0 = time.time_ns()
        for i in range(5):
            sink.record(interval(t0 + i * 1_000_000, i))  # must neither raise nor block
            time.sleep(0.25)
        c = sink.close(timeout=1.0)
        errors = [r.getMessage() for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert len(errors) == 1, caplog.text
        assert errors[0].startswith(f"InfluxDB at {vm.url} refused the credentials (401: ")
        assert "--username/--password" in errors[0] and "keeping points" in errors[0]
        assert sink.error == errors[0]
        assert c["written"] == c["rejected"] == c["dropped"] == 0 and c["spool_points"] == 5

        ok = InfluxSink(make_cfg(vm.url, str(tmp_path / "spool"), token=None, username="probe",
                                 password="right", auth_basic=True))
        ok.record(interval(t0 + 5 * 1_000_000, 5))
        c = ok.close()
        assert c["written"] == 6 and c["replayed"] == 5 and c["spool_points"] == 0
        (series,) = samples(vm, "packet_flow_received", 6, settle=1.0).values()
        assert [v for _, v in series] == [1000 + i for i in range(6)]


def outage(folder):
    """The 20 s outage (test_outage_of_20s_...): records fed while the server is stopped for
    20 s and started again; what the test checks goes to FOLDER/outage.json. Runs as a child
    process (`python test_influx.py outage FOLDER`) launched when the tests are collected
    (early.py), so its half minute passes while the tests before this one run."""
    log = io.StringIO()
    logging.basicConfig(stream=log, level=logging.INFO)
    vm = VMServer(os.path.join(folder, "vmdata"))
    vm.start()
    try:
        sink = InfluxSink(make_cfg(vm.url, os.path.join(folder, "spool")))
        sent, stop = [], threading.Event()
        rng = np.random.default_rng(7)

        def feed():
            i = 0
            while not stop.is_set() and i < 400:  # bounded: at most 400 records
                ns = time.time_ns()
                sink.record(interval(ns, i))
                sent.append(ns)
                i += 1
                stop.wait(rng.uniform(0.1, 0.4))

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            end = time.monotonic() + 10     # some points written before the server goes
            while sink.counters["written"] < 3 and time.monotonic() < end:
                time.sleep(0.05)
            vm.stop()
            down_at = len(sent)
            time.sleep(20.0)
            during = len(sent) - down_at
            in_outage = (sink.counters["written"], len(sent))
            vm.start()
            time.sleep(3.0)
        finally:
            stop.set()
            feeder.join()
        c = sink.close(timeout=15.0)
        series = list(samples(vm, "packet_flow_received", len(sent), settle=1.5).values())
        got = {"url": vm.url, "sent": sent, "during": during, "in_outage": in_outage,
               "counters": c, "spool": os.listdir(sink.spool_dir), "series": series,
               "log": log.getvalue()}
    finally:
        vm.stop()
    with open(os.path.join(folder, "outage.json"), "w", encoding="utf-8") as f:
        json.dump(got, f)


def _outage_launch():
    folder = tempfile.mkdtemp(prefix="pf-outage-")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.join(ROOT, "tests", "support"), ROOT, os.environ.get("PYTHONPATH", "")]))
    with open(os.path.join(folder, "stderr"), "wb") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "outage", folder],
                                stdout=err, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return proc, folder


def _outage_wait(launched):
    proc, folder = launched
    code = proc.wait(timeout=180)
    with open(os.path.join(folder, "stderr"), encoding="utf-8", errors="replace") as f:
        err = f.read()
    assert code == 0, f"the outage run failed:\n{err[-4000:]}"
    with open(os.path.join(folder, "outage.json"), encoding="utf-8") as f:
        return json.load(f)


def _outage_stop(launched):
    proc, folder = launched
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(folder, ignore_errors=True)


if BINARY:
    early.register("influx:outage", _outage_launch, _outage_wait, _outage_stop)


@pytest.mark.influx
@pytest.mark.early("influx:outage")
@needs_vm
def test_outage_of_20s_loses_nothing_and_duplicates_nothing():
    got = early.take("influx:outage")
    sent, during, c = got["sent"], got["during"], got["counters"]
    written, fed = got["in_outage"]
    assert written < fed
    assert during >= 40
    assert c["dropped"] == 0 and c["queued"] == 0 and c["spool_points"] == 0
    assert c["written"] == len(sent) and c["spooled"] > 0 and c["retried"] > 0
    assert c["replayed"] == c["spooled"]
    assert not got["spool"]
    assert f"InfluxDB at {got['url']} unreachable (" in got["log"]
    assert "is back after" in got["log"]

    (series,) = got["series"]
    assert [ts for ts, _ in series] == [ns // 1_000_000 for ns in sent]  # each exactly once
    assert [v for _, v in series] == [1000 + i for i in range(len(sent))]


@pytest.mark.influx
@needs_vm
def test_shutdown_flushes_and_spool_is_replayed_at_next_start(vm, tmp_path, caplog):
    spool = str(tmp_path / "spool")
    # a flush interval far beyond the test: only close() can write these
    sink = InfluxSink(make_cfg(vm.url, spool, flush_interval=3600.0))
    t0 = time.time_ns() - 60 * 1_000_000_000
    for i in range(50):
        sink.record(interval(t0 + i * 10_000_000, i))
    assert sink.close(timeout=5.0)["written"] == 50
    assert len(next(iter(samples(vm, "packet_flow_received", 50).values()))) == 50

    vm.stop()
    caplog.set_level(logging.WARNING, logger="packet_flow.sinks.influx")
    sink = InfluxSink(make_cfg(vm.url, spool, flush_interval=3600.0))
    for i in range(50, 80):
        sink.record(interval(t0 + i * 10_000_000, i))
    start = time.monotonic()
    c = sink.close(timeout=1.0)
    assert time.monotonic() - start < 3.0  # bounded, server down
    assert c["written"] == 0 and c["spool_points"] == 30 and c["dropped"] == 0
    assert "30 points not written at shutdown; kept in" in caplog.text

    vm.start()
    sink = InfluxSink(make_cfg(vm.url, spool, flush_interval=3600.0))
    c = sink.close(timeout=5.0)
    assert c["written"] == c["replayed"] == 30 and c["spool_points"] == 0
    (series,) = samples(vm, "packet_flow_received", 80, settle=1.5).values()
    assert [v for _, v in series] == [1000 + i for i in range(80)]


@pytest.mark.influx
@needs_vm
def test_compat_measurements_and_cap(vm, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="packet_flow.sinks.influx")
    sink = InfluxSink(make_cfg(vm.url, str(tmp_path / "spool"), compat_points=True,
                               compat_max_pps=400))
    sec0 = time.time_ns() // 1_000_000_000 - 30
    # 3 s of 1000 packets/s, 1 ms apart (VictoriaMetrics keeps ms), in batches of 250
    i = np.arange(3000)
    rx = (sec0 * 1_000_000_000 + i * 1_000_000).astype(np.int64)
    owd = (i * 1000 + 1999).astype(np.int64)  # (i + 1.999) µs -> i + 1 µs
    for b in range(0, 3000, 250):
        sink.packets("10.0.0.1:4000", "10.0.0.2:8000", rx[b:b + 250], owd[b:b + 250])
    gap_rx = np.array([rx[10], rx[20]])
    sink.gaps("10.0.0.1:4000", "10.0.0.2:8000", gap_rx, np.array([3, 1]))
    c = sink.close()
    assert c["capped"] == 1800 and c["written"] == 1202 and c["dropped"] == 0
    assert caplog.text.count("compat points capped at 400/s per flow") == 1

    labels = frozenset({"source": "10.0.0.1:4000", "destination": "10.0.0.2:8000"}.items())
    lat = samples(vm, "latency_value", 1200, settle=1.0)[labels]
    kept = np.r_[0:400, 1000:1400, 2000:2400]  # the first 400 of each second
    assert lat == [(int(rx[i]) // 1_000_000, int(i) + 1) for i in kept]
    assert samples(vm, "packet_loss_value", 2)[labels] == [(int(gap_rx[0]) // 1_000_000, 3),
                                                        (int(gap_rx[1]) // 1_000_000, 1)]


def test_record_never_blocks_when_server_is_absent(tmp_path):
    """No server at all: record() returns at once, close() is bounded, nothing is lost."""
    sink = InfluxSink(make_cfg("http://127.0.0.1:9", str(tmp_path / "spool")))
    start = time.monotonic()
    for i in range(1000):
        sink.record(interval(time.time_ns(), i))
    assert time.monotonic() - start < 0.5
    c = sink.close(timeout=0.5)
    assert c["written"] == 0 and c["dropped"] == 0 and c["spool_points"] == 1000


def test_close_is_bounded_when_the_server_never_answers(tmp_path, caplog):
    """A server that accepts connections but never answers: close() still returns in time,
    and everything, the chunk in flight included, is in the spool for the next start."""
    caplog.set_level(logging.WARNING, logger="packet_flow.sinks.influx")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        sink = InfluxSink(make_cfg(url, str(tmp_path / "spool"), flush_interval=0.05))
        for i in range(10):
            sink.record(interval(time.time_ns(), i))
        time.sleep(0.3)  # the writer is now waiting for an answer that never comes
        start = time.monotonic()
        c = sink.close(timeout=1.0)
        assert time.monotonic() - start < 2.0
    assert c["spool_points"] == 10 and c["queued"] == 0 and c["written"] == 0
    assert "10 points not written at shutdown; kept in" in caplog.text


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers writes with the statuses in server.script, then 204; keeps accepted bodies."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.server.script.pop(0) if self.server.script else 204
        if status == 204:
            self.server.bodies.append(body)
        self.send_response(status)
        if status in (429, 503):
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("script", [[503, 503, 429], [500]])
def test_5xx_and_429_are_retried_in_order(tmp_path, script):
    """A scripted link (not a database): the status classes drive keep-and-retry."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.bodies = list(script), []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = InfluxSink(make_cfg(f"http://127.0.0.1:{server.server_port}",
                                   str(tmp_path / "spool"), flush_interval=0.05))
        for i in range(6):
            sink.record(interval(1795545715000000000 + i * 1000, i))
            time.sleep(0.1)
        # close() spools at the first failure instead of retrying: wait for the retries
        end = time.monotonic() + 5.0
        while sink.counters["written"] < 6 and time.monotonic() < end:
            time.sleep(0.05)
        c = sink.close(timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()
    assert c["written"] == 6 and c["dropped"] == 0 and c["retried"] >= 1
    assert c["failed_requests"] == len(script)
    lines = b"".join(server.bodies).splitlines()
    assert [int(line.rsplit(b" ", 1)[1]) // 1000 % 10 for line in lines] == list(range(6))


def test_404_names_the_bucket_and_keeps_the_points(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="packet_flow.sinks.influx")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.bodies = [404] * 100, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = InfluxSink(make_cfg(f"http://127.0.0.1:{server.server_port}",
                                   str(tmp_path / "spool"), flush_interval=0.05,
                                   retention_policy="week"))
        for i in range(3):
            sink.record(interval(time.time_ns(), i))
            time.sleep(0.15)
        c = sink.close(timeout=2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert c["written"] == c["rejected"] == c["dropped"] == 0 and c["spool_points"] == 3
    assert caplog.text.count("has no bucket 'packet_flow/week' in org '-' (404: ") == 1


def test_unusable_spool_dir_is_a_sink_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SinkError, match="--spool-dir"):
        InfluxSink(make_cfg("http://127.0.0.1:9", str(blocker / "spool")))


def test_influx_api_and_spool_cap_options_from_cli_env_and_toml(tmp_path, monkeypatch):
    from packet_flow import config
    from packet_flow.errors import ConfigError

    base = ["--token", "t"]
    cfg = config.load(base)
    assert (cfg.influx_api, cfg.spool_max_bytes) == ("auto", 1 << 30)
    toml = tmp_path / "pf.toml"
    toml.write_text('influx_api = "v1"\nspool_max_bytes = 5000\n')
    cfg = config.load([*base, "--config-file", str(toml)])
    assert (cfg.influx_api, cfg.spool_max_bytes) == ("v1", 5000)
    monkeypatch.setenv("PACKET_FLOW_INFLUX_API", "v2")
    cfg = config.load([*base, "--config-file", str(toml)])
    assert (cfg.influx_api, cfg.spool_max_bytes) == ("v2", 5000)
    cfg = config.load([*base, "--influx-api", "auto", "--spool-max-bytes", "0"])
    assert (cfg.influx_api, cfg.spool_max_bytes) == ("auto", 0)
    with pytest.raises(ConfigError, match="option --influx-api: value 'v3'.*must be one of auto, "
                                        "v1, v2"):
        config.load([*base, "--influx-api", "v3"])


if __name__ == "__main__" and sys.argv[1:2] == ["outage"]:
    outage(sys.argv[2])
