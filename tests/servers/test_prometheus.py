"""The Prometheus output: the sink's rules with synthetic records, /metrics over HTTP, and the
probe scraped by a real Prometheus server (Debian's `prometheus`, started by the test)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import types
import urllib.error
import urllib.request

import early
import numpy as np
import promserver
import pytest
from probe import finish, free_port, pf, records, summaries, wait_bound  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families
from promserver import BINARY  # noqa: E402
from servers import free_port as free_tcp_port  # noqa: E402

from packet_flow import config, defaults  # noqa: E402
from packet_flow.options import parse_addr  # noqa: E402
from packet_flow.sinks import prometheus  # noqa: E402

DEST = "10.0.0.2:8000"
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
# each real-Prometheus test has its own server, started at collection: it scrapes a new target
# ~5 s after it starts, a wait the tests before these pass meanwhile
for _name in ("prometheus:scraped", "prometheus:restarted") if BINARY else ():
    promserver.early(_name, targets=1)


def readme_promql():
    """The ```promql blocks of docs/prometheus.md."""
    with open(os.path.join(ROOT, "docs", "prometheus.md"), encoding="utf-8") as f:
        return re.findall(r"```promql\n(.*?)```", f.read(), re.S)


def dashboard_exprs():
    """The Prometheus dashboard's queries with its variables filled in."""
    path = os.path.join(ROOT, "deploy/grafana/dashboards/packet-flow-prometheus.json")
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    return [t["expr"].replace("$__rate_interval", "1m").replace("$source", ".*")
            .replace("$destination", ".*") for p in dash["panels"] for t in p["targets"]]


def get(url):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def samples(text):
    """{(sample name, sorted label items): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def flow_labels(source, wire="native", dest=DEST, name=None, dest_name="", **extra):
    """The label set of a flow from `source` (host:port): the port is not a label."""
    host = prometheus._host(source)
    return tuple(sorted(dict(source=host, destination=dest, wire=wire, source_name=name or host,
                             destination_name=dest_name, **extra).items()))


def interval(source, **fields):
    rec = {"type": "interval", "role": "receiver", "source": source, "destination": DEST,
           "session": "00", "wire": "native", "received": 0, "lost": 0, "late": 0,
           "duplicates": 0, "malformed": 0, "loss_bursts": 0, "stalled": False}
    rec.update(fields)
    return rec


@pytest.fixture
def sink():
    port = free_tcp_port()
    cfg = types.SimpleNamespace(forget_timeout=0.5, sources={},
                                prometheus_listen=parse_addr(f"127.0.0.1:{port}"))
    s = prometheus.PrometheusSink(cfg)
    s.url = f"http://127.0.0.1:{port}"
    yield s
    s.close(0)


def scrape(sink):
    """A tick's end (the receiver's own record), its rendering, then GET /metrics."""
    sink.record({"type": "receiver", "destination": DEST, "flows": 1})
    sink.idle()                                     # what Fanout calls once it caught up
    end = time.monotonic() + 5
    while sink.busy and time.monotonic() < end:
        time.sleep(0.01)
    status, text = get(sink.url + "/metrics")
    assert status == 200
    return samples(text)


def test_bucket_counts_edges():
    d = np.array([-5, 0, 1000, 1001, 2000, 9_999_999_999, 10**10, 10**10 + 1], np.int64)
    counts, total = prometheus.bucket_counts(d)
    assert counts.tolist()[:3] == [3, 2, 0] and counts[-2] == 2 and counts[-1] == 1
    assert counts.sum() == 8 and total == int(d.sum())
    assert prometheus._LE[0] == "1e-06" and prometheus._LE[-2] == "10.0"


def test_counters_sum_sessions_and_stay_monotonic(sink):
    sink.packets("a:1", DEST, None, np.array([1500, 3000, 7000], np.int64))
    sink.record(interval("a:1", session="01", received=3, lost=2, loss_bursts=1))
    # a second session of the same source; a late packet takes back a loss
    sink.record(interval("a:1", session="02", received=5, lost=-1, local_drops=4))
    got = scrape(sink)
    key = flow_labels("a:1")
    assert got[("packet_flow_received_packets_total", key)] == 8
    assert got[("packet_flow_lost_packets_total", key)] == 2          # held, not decreased
    assert got[("packet_flow_local_dropped_packets_total", key)] == 4
    assert got[("packet_flow_one_way_delay_seconds_count", key)] == 3
    assert got[("packet_flow_one_way_delay_seconds_sum", key)] == pytest.approx(11.5e-6)
    le = dict(key + (("le", "5e-06"),))
    assert got[("packet_flow_one_way_delay_seconds_bucket", tuple(sorted(le.items())))] == 2
    sink.record(interval("a:1", session="02", received=1, lost=2, stalled=True))
    got = scrape(sink)
    assert got[("packet_flow_lost_packets_total", key)] == 3
    assert got[("packet_flow_stalled", key)] == 1
    time.sleep(0.6)                     # past forget-timeout with no counter moving
    sink.record(interval("a:1", stalled=True))
    assert not any(k[1] == key for k in scrape(sink))


def test_a_restarted_sender_keeps_its_series_and_jitter_is_exported(sink):
    """Issue 23 §6: a new ephemeral port (a restart) is the same label set; the name labels
    it; jitter and |IPDV| are gauges of the latest interval."""
    sink.record(interval("10.0.0.1:40000", session="01", received=5, source_name="alpha",
                         destination_name="beta", jitter_us=12.5, ipdv_mean_us=3.0,
                         ipdv_p99_us=20.0))
    sink.record(interval("10.0.0.1:40001", session="02", received=7, source_name="alpha",
                         destination_name="beta", jitter_us=None))
    got = scrape(sink)
    key = flow_labels("10.0.0.1:40000", name="alpha", dest_name="beta")
    flows = [k for k in got if k[0] == "packet_flow_received_packets_total"]
    assert flows == [("packet_flow_received_packets_total", key)] and got[flows[0]] == 12
    assert got[("packet_flow_jitter_seconds", key)] == pytest.approx(12.5e-6)
    assert got[("packet_flow_ipdv_mean_seconds", key)] == pytest.approx(3e-6)
    assert got[("packet_flow_ipdv_p99_seconds", key)] == pytest.approx(20e-6)


def test_rendering_process_killed(sink):
    """The page keeps coming (rendered in the probe) when the rendering process dies."""
    sink.record(interval("a:1", received=2))
    assert scrape(sink)[("packet_flow_received_packets_total", flow_labels("a:1"))] == 2
    for pid in list(sink.pool._processes):      # the sink's own child
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    sink.record(interval("a:1", received=3))
    assert scrape(sink)[("packet_flow_received_packets_total", flow_labels("a:1"))] == 5
    sink.record(interval("a:1", received=1))
    assert scrape(sink)[("packet_flow_received_packets_total", flow_labels("a:1"))] == 6
    assert sink.pool is None


def test_label_sets_are_capped(sink, monkeypatch):
    monkeypatch.setattr(defaults, "PROMETHEUS_MAX_SERIES", 3)
    sink.rx.cap = defaults.PROMETHEUS_MAX_SERIES
    for i in range(10):
        sink.record(interval(f"10.9.0.{i}:5", received=1))
    got = scrape(sink)
    rx = {k[1]: v for k, v in got.items() if k[0] == "packet_flow_received_packets_total"}
    assert len(rx) == 3 and sum(rx.values()) == 10
    assert rx[flow_labels(prometheus.OVERFLOW)] == 8   # 2 flows of their own, the rest


def test_http_paths(sink):
    assert get(sink.url + "/metrics")[0] == 200
    for path in ("/", "/metric", "/metrics/x", "/favicon.ico"):
        assert get(sink.url + path)[0] == 404, path


def test_option_layers(tmp_path):
    assert config.load([]).prometheus_listen is None
    cfg = config.load(["--prometheus-listen", "[::1]:9469"])
    assert (cfg.prometheus_listen.host, cfg.prometheus_listen.port) == ("::1", 9469)
    env = {"PACKET_FLOW_PROMETHEUS_LISTEN": "127.0.0.1:9470"}
    assert config.load([], env=env).prometheus_listen.port == 9470
    (tmp_path / "pf.toml").write_text('prometheus_listen = "127.0.0.1:9471"\n')
    cfg = config.load(["--config-file", str(tmp_path / "pf.toml")], env={})
    assert cfg.prometheus_listen.port == 9471


def test_listen_errors():
    port = free_tcp_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{free_port()}",
                  "--prometheus-listen", f"127.0.0.1:{port}")
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert err == (f"packet-flow: error: option --prometheus-listen: value '127.0.0.1:{port}' "
                   "from cli: cannot listen: Address already in use\n")
    for bad, reason in (("127.0.0.1", "expected host:port"), ("127.0.0.1:0x", "is not a number"),
                        ("::1:9469", "needs brackets"), ("192.0.2.1:9469", "cannot listen")):
        proc = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{free_port()}",
                  "--prometheus-listen", bad)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 2 and err.count("\n") == 1 and reason in err, err
        assert err.startswith(f"packet-flow: error: option --prometheus-listen: value '{bad}' "
                              "from cli: ")


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.early("prometheus:scraped")
@pytest.mark.skipif(BINARY is None, reason="prometheus not installed (make test installs it)")
def test_scraped_by_prometheus(tmp_path):
    """Both mode with 3 SIGUSR1 skips, scraped every second by a real Prometheus."""
    prom, (held,) = early.take("prometheus:scraped")
    port, mport, out = free_port(), held.release(), tmp_path / "run.jsonl"
    with prom:
        proc = pf("--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
                  f"127.0.0.1:{port}", "--rate", 2, "--duration", 5, "--interval", 0.5,
                  "--output", f"jsonl:{out}", "--prometheus-listen", f"127.0.0.1:{mport}")
        end = time.monotonic() + 5
        while not prom.query("packet_flow_lost_packets_total == 0") and time.monotonic() < end:
            time.sleep(0.1)      # the counter is scraped at 0 before the first skip
        assert prom.query("packet_flow_lost_packets_total == 0")
        for _ in range(3):      # further apart than a schedule slice (--interval): two
            proc.send_signal(signal.SIGUSR1)        # within one merge (test_signals.py)
            time.sleep(0.65)
        finish(proc)
        recs = records(out)
        (rx,), (tx,) = summaries(recs), summaries(recs, "sender")
        assert rx["lost"] == 3      # a SIGUSR1 skips a sequence number, no slot (issue 22 §5)
        assert rx["duplicates"] == 0 and rx["late"] == 0   # every arrival is a delay sample
        (series,) = prom.query("packet_flow_lost_packets_total[5m]")
        last = series["values"][-1][0]              # the final scrape, just before the exit
        assert series["values"][0][1] == "0"

        def at_last(expr):
            (got,) = prom.query(expr, at=last)
            return float(got["value"][1])

        assert at_last("increase(packet_flow_lost_packets_total[5m])") == 3
        assert at_last("packet_flow_received_packets_total") == rx["received"]
        assert at_last("packet_flow_one_way_delay_seconds_count") == rx["received"]
        assert at_last("packet_flow_loss_bursts_total") == rx["loss_bursts"] == 3
        assert at_last("packet_flow_sent_packets_total") == tx["sent"]
        assert at_last("packet_flow_skipped_slots_total") == tx["skipped_slots"]

        ratio, p99, now = readme_promql()          # docs/prometheus.md's ready-made queries
        assert 0 < at_last(ratio) < 0.01
        assert 0 < at_last(p99) < 0.1
        (path,) = prom.query(now, at=last)
        assert (path["metric"]["source"], path["metric"]["destination"]) == (
            rx["source"].rsplit(":", 1)[0], rx["destination"])
        for expr in dashboard_exprs():
            prom.query(expr, at=last)              # every dashboard query evaluates
    promtool = shutil.which("promtool")
    for what in ("rules", "config"):
        subprocess.run([promtool, "check", what, os.path.join(
            ROOT, "deploy/prometheus", f"{what if what == 'rules' else 'prometheus'}.yml")],
            check=True, capture_output=True)


def test_rtt_histogram_and_directions(tmp_path):
    """A sender with --rtt against a reflector; a scraper thread reads /metrics until exit."""
    port, mport, out = free_port(), free_tcp_port(), tmp_path / "tx.jsonl"
    refl = pf("--mode", "reflector", "--local-addr", f"127.0.0.1:{port}", "--output",
              f"jsonl:{tmp_path / 'refl.jsonl'}")
    wait_bound(port)
    tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 5, "--rtt",
            "--count", 300, "--interval", 0.5, "--output", f"jsonl:{out}",
            "--prometheus-listen", f"127.0.0.1:{mport}")
    last = []

    def scraper():
        while tx.poll() is None:
            try:
                _, text = get(f"http://127.0.0.1:{mport}/metrics")
                last.append(text)
            except OSError:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=scraper)
    thread.start()
    finish(tx)
    thread.join()
    refl.send_signal(signal.SIGTERM)
    finish(refl)
    (summary,) = summaries(records(out), "sender")
    got = samples(last[-1])
    src, names = summary["source"], dict(name=summary["source_name"],
                                         dest_name=summary["destination_name"])
    key = flow_labels(src, dest=f"127.0.0.1:{port}", **names)
    assert got[("packet_flow_rtt_seconds_count", key)] == summary["reflected"] == 300
    assert got[("packet_flow_reflected_packets_total", key)] == 300
    assert got[("packet_flow_sent_packets_total", key)] == summary["sent"] == 300
    for direction in ("forward", "backward", "unattributed"):
        lab = flow_labels(src, dest=f"127.0.0.1:{port}", direction=direction, **names)
        assert got[("packet_flow_rtt_lost_packets_total", lab)] == 0


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.early("prometheus:restarted")
@pytest.mark.skipif(BINARY is None, reason="prometheus not installed (make test installs it)")
def test_restarted_sender_is_one_series_in_prometheus(tmp_path):
    """Issue 23 §6 against a real Prometheus: a named sender run twice (two ephemeral ports,
    two sessions) is one series labelled by its name; jitter and |IPDV| are exported."""
    prom, (held,) = early.take("prometheus:restarted")
    port, mport = free_port(), held.release()
    with prom:
        rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--interval", 0.5,
                "--output", f"jsonl:{tmp_path / 'rx.jsonl'}", "--prometheus-listen",
                f"127.0.0.1:{mport}", env={"NODE_NAME": "beta"})
        wait_bound(port)
        for _ in range(2):
            finish(pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 5,
                      "--count", 100, "--output", f"jsonl:{tmp_path / 'tx.jsonl'}",
                      env={"NODE_NAME": "alpha"}))
        end, got = time.monotonic() + 15, []
        while time.monotonic() < end:
            got = prom.query("packet_flow_received_packets_total")
            if got and got[0]["value"][1] == "200":
                break
            time.sleep(0.2)
        jitter = prom.query('packet_flow_jitter_seconds{source_name="alpha"}')
        ipdv = prom.query('packet_flow_ipdv_p99_seconds{source_name="alpha"}')
        rx.send_signal(signal.SIGTERM)
        finish(rx)
    sessions = {r["session"] for r in summaries(records(tmp_path / "rx.jsonl"))}
    assert len(sessions) == 2
    (series,) = got
    assert series["value"][1] == "200"
    assert {k: series["metric"][k] for k in ("source", "source_name", "destination_name")} == \
        {"source": "127.0.0.1", "source_name": "alpha", "destination_name": "beta"}
    assert len(jitter) == 1 and float(jitter[0]["value"][1]) > 0
    assert len(ipdv) == 1 and float(ipdv[0]["value"][1]) > 0
