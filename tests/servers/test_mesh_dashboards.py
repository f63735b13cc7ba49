"""The Grafana mesh dashboards (deploy/grafana/*/packet-flow-mesh-*.json) against real servers:
a three-node mesh on loopback writes to InfluxDB 1.x and is scraped by Prometheus; node `a`
skips two sequence numbers on every pair (SIGUSR1). Every query of both dashboards is
evaluated with Grafana's variables filled in, and the pair matrices say what the nodes' own
records say: loss only on a's pairs (a's 2 skipped packets each), delays on all six pairs."""

import json
import math
import os
import signal
import time

import early
import influxserver
import promserver
import pytest
from influxserver import BINARY as INFLUXD
from probe import finish, free_port, pf, records
from promserver import BINARY as PROMETHEUS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROM_DASH = os.path.join(ROOT, "deploy/grafana/dashboards/packet-flow-mesh-prometheus.json")
INFLUX_DASH = os.path.join(ROOT, "deploy/grafana/influxdb1/packet-flow-mesh-influxql.json")
NODES = ("a", "b", "c")
PAIRS = {(s, d) for s in NODES for d in NODES if s != d}

pytestmark = [pytest.mark.influx, pytest.mark.prometheus, pytest.mark.skipif(
    INFLUXD is None or PROMETHEUS is None,
    reason="influxd or prometheus not installed (apt-get install influxdb prometheus)"),
    pytest.mark.early("influxdb:mesh"), pytest.mark.early("prometheus:mesh")]
# both servers start at collection (early.py): Prometheus scrapes a new target only ~5 s after
# it starts, InfluxDB takes 1-3 s
if INFLUXD and PROMETHEUS:
    influxserver.early("influxdb:mesh")
    promserver.early("prometheus:mesh", targets=len(NODES))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    """The three nodes' records, the servers (still running) and the time of the last scrape."""
    tmp = tmp_path_factory.mktemp("mesh")
    influx = early.take("influxdb:mesh")
    prom, held = early.take("prometheus:mesh")
    influx.query("CREATE DATABASE mesh")
    ports = {n: free_port() for n in NODES}
    metrics = {n: h.release() for n, h in zip(NODES, held, strict=True)}
    peers = ",".join(f"127.0.0.1:{ports[n]}" for n in NODES)
    procs = {n: pf("--mode", "mesh", "--name", n, "--local-addr", f"127.0.0.1:{ports[n]}",
                   "--peers", peers, "--rate", 10, "--duration", 6, "--interval", 0.5,
                   "--timer", "economy", "--output", f"jsonl:{tmp / n}.jsonl",
                   "--prometheus-listen", f"127.0.0.1:{metrics[n]}", "--influx-url",
                   influx.url, "--username", influx.username, "--password", influx.password,
                   "--database", "mesh") for n in NODES}
    try:
        # running (signal handlers set: records come) and scraped once by Prometheus (a
        # counter's first sample is no increase: the skips must come after it)
        end = time.monotonic() + 20
        while not (all(os.path.exists(tmp / f"{n}.jsonl") and os.path.getsize(tmp / f"{n}.jsonl")
                       for n in NODES) and
                   len(prom.query("packet_flow_lost_packets_total == 0")) == len(PAIRS)):
            assert time.monotonic() < end and all(p.poll() is None for p in procs.values())
            time.sleep(0.05)
        for _ in range(2):      # further apart than a schedule slice (--interval): two
            procs["a"].send_signal(signal.SIGUSR1)      # within one merge (test_signals.py)
            time.sleep(0.65)
        for proc in procs.values():
            finish(proc, timeout=30)
        recs = {n: records(tmp / f"{n}.jsonl") for n in NODES}
        # the last moment all three were scraped (a target gone marks its series stale)
        ups = prom.query("up[5m]")
        at = min(max(t for t, v in s["values"] if v == "1") for s in ups)
        yield recs, influx, prom, at
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        prom.stop()
        influx.stop()


def truth(recs):
    """{(sender, receiver): (received, lost)} from the receivers' summaries."""
    out = {}
    for rs in recs.values():
        for r in rs:
            if r["type"] == "summary" and r["role"] == "receiver":
                out[(r["source_name"], r["destination_name"])] = (r["received"], r["lost"])
    assert set(out) == PAIRS
    return out


def test_mesh_lost_what_a_skipped(mesh_run):
    lost = {p: v[1] for p, v in truth(mesh_run[0]).items()}
    assert lost == {p: 2 if p[0] == "a" else 0 for p in PAIRS}


def prom_expr(expr):
    for k, v in {"$__range": "1m", "$__rate_interval": "1m", "$sender": ".*",
                 "$receiver": ".*"}.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, expr
    return expr


def test_prometheus_mesh_dashboard(mesh_run):
    _, _, prom, at = mesh_run
    dash = load(PROM_DASH)
    for v in dash["templating"]["list"]:
        query = v["query"]["query"]
        assert query.startswith("label_values(") and query.endswith("_name)")
        label = query[:-1].rsplit(", ", 1)[1]
        got = prom.query(f"count by ({label}) ({query[13:].split(',')[0]})", at=at)
        assert {s["metric"][label] for s in got} == set(NODES)
    panels = {p["title"]: p for p in dash["panels"]}
    results = {}
    for title, panel in panels.items():
        (target,) = panel["targets"]
        got = prom.query(prom_expr(target["expr"]), at=at)
        assert got, f"no data for panel {title!r}"
        results[title] = got
        if panel["type"] == "table":     # a matrix: one cell per pair, by name
            assert panel["transformations"][0]["options"]["rowField"] == "source_name"
            cells = {(s["metric"]["source_name"], s["metric"]["destination_name"]):
                     float(s["value"][1]) for s in got}
            assert set(cells) == PAIRS and all(math.isfinite(v) for v in cells.values())
            if title.startswith("Loss"):
                assert {p for p, v in cells.items() if v > 0} == {("a", "b"), ("a", "c")}
            else:
                assert all(0 < v < 0.05 for v in cells.values())       # seconds on loopback
    probed = {s["metric"]["destination_name"]: float(s["value"][1])
              for s in results["Nodes probing each node (incoming pairs)"]}
    assert probed == {n: 2.0 for n in NODES}


def influx_query(q):
    for k, v in {"$timeFilter": "time > now() - 1h", "$__interval": "500ms", "$sender": ".*",
                 "$receiver": ".*"}.items():
        q = q.replace(k, v)
    assert "$" not in q.replace("$/", ""), q
    return q


def test_influxql_mesh_dashboard(mesh_run):
    recs, influx, _, _ = mesh_run
    dash = load(INFLUX_DASH)
    for v in dash["templating"]["list"]:
        (series,) = influx.query(v["query"], "mesh")
        assert {row[1] for row in series["values"]} == set(NODES)
    sums = {}                                   # the receivers' interval records, by pair
    for rs in recs.values():
        for r in rs:
            if r["type"] == "interval" and r["role"] == "receiver":
                got = sums.setdefault((r["source_name"], r["destination_name"]), [0, 0])
                got[0] += r["received"]
                got[1] += r["lost"]
    for panel in dash["panels"]:
        (target,) = panel["targets"]
        rows = influx.rows(influx_query(target["query"]), "mesh")
        assert rows, f"no data for panel {panel['title']!r}"
        if panel["type"] != "table":
            continue
        field = panel["transformations"][0]["options"]["valueField"]
        cells = {(r["source_name"], r["destination_name"]): r[field] for r in rows}
        assert set(cells) == PAIRS
        if field == "loss":                     # exactly what the records say
            assert cells == pytest.approx({p: 100 * lost / (rx + lost)
                                           for p, (rx, lost) in sums.items()})
            assert {p for p, v in cells.items() if v > 0} == {("a", "b"), ("a", "c")}
        else:
            assert all(0 < v < 50_000 for v in cells.values())          # µs on loopback


def test_who_probes_each_node(mesh_run):
    """Each node's `receiver` records say who probes it (`probed_by`) and whom it probes
    (`peers`): 2 and 2 in a mesh of three, in the records, in Prometheus' gauges and in
    InfluxDB's packet_flow_receiver points (the largest value of the run: at the end every
    flow has closed and probed_by is 0)."""
    recs, influx, prom, at = mesh_run
    want = {n: (2, 2) for n in NODES}
    mine = {n: max((r["probed_by"], r["peers"]) for r in rs if r["type"] == "receiver")
            for n, rs in recs.items()}
    assert mine == want
    gauges = {}
    for name in ("probed_by", "peers"):
        for s in prom.query(f"max_over_time(packet_flow_{name}[1m])", at=at):
            gauges.setdefault(s["metric"]["destination_name"], []).append(float(s["value"][1]))
    assert gauges == {n: [2.0, 2.0] for n in NODES}
    rows = influx.rows('SELECT max("probed_by") AS "probed_by", max("peers") AS "peers" FROM '
                       '"packet_flow_receiver" GROUP BY "destination_name"', "mesh")
    assert {r["destination_name"]: (r["probed_by"], r["peers"]) for r in rows} == want
