"""deploy/kubernetes: the kustomization renders (kubectl kustomize where kubectl is installed,
and support/kustomize.py, which must agree with it), every object validates strictly against
the Kubernetes schemas (kubernetes-validate, offline), the DaemonSet keeps the promises of
docs/fleet.md, and every container's command line with its environment is accepted by
`packet-flow --print-config`."""

import os
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from kustomize import containers, render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = "1.35.0"
KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of deploy/kubernetes with the key file a user writes before applying it."""
    dest = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(os.path.join(ROOT, "deploy", "kubernetes"), dest)
    (dest / "base" / "key").write_text(KEY + "\n")
    return dest


def kubectl(folder):
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=["base", "host-network"])
def rendered(request, tree):
    objs = render(tree / request.param)
    if shutil.which("kubectl"):
        key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
        assert sorted(kubectl(tree / request.param), key=key) == sorted(objs, key=key)
    return request.param, objs


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def test_every_object_validates(rendered):
    _, objs = rendered
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ConfigMap", "DaemonSet", "Namespace", "Secret", "Service",
                     "ServiceMonitor"]                       # and no RBAC: nothing to grant
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            continue                                        # a CRD: checked below
        kubernetes_validate.validate(obj, K8S, strict=True)
    broken = next(o for o in objs if o["kind"] == "DaemonSet")
    broken = yaml.safe_load(yaml.safe_dump(broken))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):   # strict: a typo fails
        kubernetes_validate.validate(broken, K8S, strict=True)


def test_daemonset_discovery_and_scraping(rendered):
    variant, objs = rendered
    (ds,), (svc,), (mon,), (cm,) = (by_kind(objs, k) for k in (
        "DaemonSet", "Service", "ServiceMonitor", "ConfigMap"))
    pod = ds["spec"]["template"]
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    env = cm["data"]
    # discovery: the headless Service selects the pods; --peers names it, on the probe port
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    probe = next(p for p in svc["spec"]["ports"] if p["name"] == "probe")
    assert probe["protocol"] == "UDP"
    assert env["PACKET_FLOW_PEERS"] == f"dns:{svc['metadata']['name']}:{probe['port']}"
    assert env["PACKET_FLOW_LOCAL_ADDR"].endswith(f":{probe['port']}")
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} \
        in c["env"]
    # scraping: annotations, the Service's metrics port and the ServiceMonitor agree
    listen_port = env["PACKET_FLOW_PROMETHEUS_LISTEN"].rsplit(":", 1)[1]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == listen_port
    metrics = next(p for p in svc["spec"]["ports"] if p["name"] == "metrics")
    assert str(metrics["port"]) == listen_port
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in mon["spec"]["endpoints"]] == ["metrics"]
    # non-root, no capabilities, no API access, the spool and the key on volumes
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts[env["PACKET_FLOW_SPOOL_DIR"]]]
    key_dir, key_file = env["PACKET_FLOW_KEY_FILE"].rsplit("/", 1)
    assert volumes[mounts[key_dir]]["secret"]["secretName"] == "packet-flow-key"
    (secret,) = by_kind(objs, "Secret")
    assert secret["metadata"]["name"] == "packet-flow-key" and key_file in secret["data"]
    assert "cpu" not in c["resources"].get("limits", {})   # no CFS throttling of send slots
    host = variant == "host-network"
    assert spec.get("hostNetwork", False) is host
    assert spec.get("dnsPolicy") == ("ClusterFirstWithHostNet" if host else None)


def test_command_lines_accepted_by_print_config(rendered, tmp_path):
    _, objs = rendered
    (cm,) = by_kind(objs, "ConfigMap")
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    for obj in objs:
        for c in containers(obj):
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("PACKET_FLOW_") and k != "NODE_NAME"}
            for source in c.get("envFrom", []):
                env.update(cm["data"] if source["configMapRef"]["name"] ==
                           cm["metadata"]["name"] else {})
            for var in c.get("env", []):
                env[var["name"]] = var.get("value", "node-7")     # fieldRef: a node's name
            env["PACKET_FLOW_KEY_FILE"] = str(key)                # the mounted Secret
            argv = c.get("command", ["packet-flow"])[1:] + c.get("args", [])
            done = subprocess.run([sys.executable, "-m", "packet_flow", *argv,
                                   "--print-config"], env=env, capture_output=True, text=True,
                                  timeout=60, cwd=ROOT)
            assert done.returncode == 0, done.stderr
            shown = done.stdout
            assert 'mode = "mesh"' in shown and "peers = [" in shown
            assert 'key = "***"' in shown and KEY not in shown
