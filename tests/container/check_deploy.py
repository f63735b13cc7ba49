"""Static checks of the deployment files: docker-compose.yml, deploy/, the Grafana dashboard.

Rules:
- Only parses files (PyYAML, json); starts nothing. Run by tests/container/test_container.sh,
  or alone: `python3 tests/container/check_deploy.py`. Exit status 1 lists every failure.
- Names are checked against their sources: PACKET_FLOW_* variables against the options in
  packet_flow/options.py, dashboard fields against the record tables in docs/, datasource uid and paths
  against the provisioning files and compose mounts.
- No secret may be committed: secret-looking variables are only *_FILE paths, and the
  committed env example holds placeholders.
"""

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
failures: list[str] = []
passed = 0


def check(ok: bool, what: str) -> None:
    """Count one check; remember `what` when it failed."""
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)


def env_example() -> dict[str, str]:
    """KEY=VALUE pairs of deploy/.env.example."""
    pairs = {}
    for line in (ROOT / "deploy/.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def cli_env_names() -> set[str] | None:
    """PACKET_FLOW_* names of the CLI options, or None when options.py is not there yet."""
    table = ROOT / "packet_flow/options.py"
    if not table.exists():
        return None
    names = re.findall(r'\bOpt\(\s*"([a-z0-9-]+)"', table.read_text())
    return {"PACKET_FLOW_" + n.upper().replace("-", "_") for n in names}


def contract_fields() -> set[str]:
    """Backticked field and metric names in the tables of docs/*.md (the record contract is in
    options.md and rtt.md, the metrics in prometheus.md)."""
    fields = set()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for line in doc.read_text().splitlines():
            if line.startswith("| `"):
                fields.update(re.findall(r"`([a-z0-9_]+)`", line))
    return fields


def balanced(text: str) -> bool:
    """Brackets balance outside string literals (a cheap Flux syntax check)."""
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for token in re.sub(r'"(?:[^"\\]|\\.)*"|/\^[^/]*\$/', '""', text):
        if token in "([{":
            stack.append(token)
        elif token in pairs and (not stack or stack.pop() != pairs[token]):
            return False
    return not stack


def check_compose(example: dict[str, str]) -> dict:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose.get("services", {})
    check(set(services) >= {"receiver", "sender", "influxdb", "prometheus", "grafana"},
          f"compose services: {sorted(services)}")
    check(services["influxdb"]["image"].startswith("influxdb:2"), "influxdb image is influxdb:2")
    top_secrets = compose.get("secrets", {})
    for name, spec in top_secrets.items():
        check(spec == {"file": f"./secrets/{name}"},
              f"secret {name} comes from ./secrets/{name} (deploy/make-secrets.sh)")
    for var in re.findall(r"\$\{([A-Z0-9_]+)", text):
        check(var in example, f"compose variable {var} is documented in deploy/.env.example")
    for key, value in example.items():
        if re.search(r"TOKEN|PASSWORD|SECRET", key):
            check(value.startswith("CHANGE-ME"), f"deploy/.env.example {key} is a placeholder")
    cli_names = cli_env_names()
    for name, svc in services.items():
        env = svc.get("environment", {})
        granted = set(svc.get("secrets", []))
        check(granted <= set(top_secrets), f"{name}: secrets {granted} are declared")
        for key, value in env.items():
            if re.search(r"TOKEN|PASSWORD|SECRET", key):
                check(key.endswith("_FILE"), f"{name}: {key} is passed as a file, not a value")
            if key.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                check(str(value).removeprefix("/run/secrets/") in granted,
                      f"{name}: {key}={value} names a secret the service is granted")
        if name in ("receiver", "sender"):
            check(svc.get("build") == ".", f"{name}: built from this repository")
            check(env.get("PACKET_FLOW_MODE") == name, f"{name}: PACKET_FLOW_MODE={name}")
            check(env.get("PACKET_FLOW_TOKEN_FILE") == "/run/secrets/influxdb_token",
                  f"{name}: PACKET_FLOW_TOKEN_FILE reads the influxdb_token secret")
            check(not svc.get("cap_add"), f"{name}: needs no capabilities")
            for key in env:
                if key.startswith("PACKET_FLOW_") and cli_names is not None:
                    check(key in cli_names, f"{name}: {key} is a packet-flow option")
    return services["grafana"]


def check_grafana(grafana: dict) -> str:
    mounts = {}
    for volume in grafana["volumes"]:
        src, _, dst = volume.partition(":")
        mounts[dst.split(":")[0]] = src
    prov = mounts.get("/etc/grafana/provisioning")
    check(prov == "./deploy/grafana/provisioning", "grafana mounts deploy/grafana/provisioning")
    files = sorted((ROOT / "deploy/grafana/provisioning/datasources").glob("*.yml"))
    providers = list((ROOT / "deploy/grafana/provisioning/dashboards").glob("*.yml"))
    check(len(providers) == 1, "one dashboard provider file")
    by_type = {d["type"]: d for f in files for d in yaml.safe_load(f.read_text())["datasources"]}
    check(set(by_type) == {"influxdb", "prometheus"}, f"datasources: {sorted(by_type)}")
    ds = by_type["influxdb"]
    check(ds["jsonData"]["version"] == "Flux", "datasource is InfluxDB with Flux")
    check(by_type["prometheus"]["url"] == "http://127.0.0.1:9090",
          "the Prometheus datasource is the compose prometheus service (host network)")
    env = grafana["environment"]
    for f in files:
        body = re.sub(r"#.*", "", f.read_text())
        for var in re.findall(r"\$\{?([A-Z0-9_]+)", body):
            check(var in env or var + "__FILE" in env, f"grafana environment provides ${var}")
    path = yaml.safe_load(providers[0].read_text())["providers"][0]["options"]["path"]
    check(path in mounts, f"dashboard provider path {path} is a grafana mount")
    dash_dir = ROOT / mounts.get(path, "missing")
    check((dash_dir / "packet-flow.json").exists(), f"{dash_dir}/packet-flow.json exists")
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    check(home == f"{path}/packet-flow.json", "home dashboard is the packet-flow dashboard")
    return ds["uid"], by_type["prometheus"]["uid"]


def check_dashboard(uid: str) -> None:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/packet-flow.json").read_text())
    known = contract_fields()
    panels = dash["panels"]
    check(len({p["id"] for p in panels}) == len(panels), "panel ids are unique")
    used = set()
    queries = [t["query"] for p in panels for t in p["targets"]]
    queries += [v["query"] for v in dash["templating"]["list"]]
    for p in panels:
        check(p["datasource"]["uid"] == uid, f"panel {p['title']!r} uses datasource {uid}")
        for t in p["targets"]:
            check(t["datasource"]["uid"] == uid, f"{p['title']!r} {t['refId']} datasource")
    for q in queries:
        check(balanced(q), f"brackets balance in query: {q[:60]!r}")
        for m in re.findall(r'r\._measurement == "([a-z_]+)"', q):
            check(m in ("packet_flow", "packet_flow_sender"), f"measurement {m} is written")
        for f in re.findall(r'r\._field == "([a-z0-9_]+)"', q):
            check(f in known, f"dashboard field {f} is in the record tables of docs/")
            used.add(f)
    required = {"lost", "received", "loss_bursts", "owd_p50_us", "owd_p99_us", "owd_max_us",
                "jitter_us", "late", "duplicates", "timer_late_p99_us"}
    check(required <= used, f"dashboard shows {sorted(required - used)}")
    bands = [o for p in panels for o in p["fieldConfig"]["overrides"]
             for prop in o["properties"] if prop["id"] == "custom.fillBelowTo"]
    check(len(bands) == 1, "one-way delay panel has a p50-p99 band")


def check_prometheus(uid: str) -> None:
    """The Prometheus dashboard, scrape job and rules use the metric families of
    docs/prometheus.md's table and the probes' listen ports."""
    dash = json.loads((ROOT / "deploy/grafana/dashboards/packet-flow-prometheus.json").read_text())
    known = contract_fields()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    for p in dash["panels"]:
        check(p["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid
                                                    for t in p["targets"]),
              f"prometheus panel {p['title']!r} uses datasource {uid}")
    rules = (ROOT / "deploy/prometheus/rules.yml").read_text()
    for text in exprs + [rules]:
        check(balanced(text), f"brackets balance in {text[:60]!r}")
        for name in re.findall(r"\b(packet_flow_[a-z_]+)", text):
            family = re.sub(r"_(bucket|count|sum)$", "", name)
            check(family in known, f"metric {family} is in docs/prometheus.md's table")
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    compose = (ROOT / "docker-compose.yml").read_text()
    for target in targets:
        port = target.rpartition(":")[2]
        check(f"127.0.0.1:{port}}}" in compose, f"scrape target {target}: a probe listens there")


def main() -> int:
    """Run every check; print a summary; 0 when all passed."""
    example = env_example()
    grafana = check_compose(example)
    uid, prom_uid = check_grafana(grafana)
    check_dashboard(uid)
    check_prometheus(prom_uid)
    for f in failures:
        print("FAIL", f)
    print(f"check_deploy: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
