"""Start-up cost: `--help`, `--version` and a rejected option answer without loading the
extension, numpy or a sink's client library (numpy alone took 0.1 s, more than the whole
answer without it). Checked on the interpreter's own import list (-X importtime), not a clock."""

import os
import subprocess
import sys

import pytest

HEAVY = ("numpy", "packet_flow._io", "matplotlib", "influxdb_client", "urllib3", "requests")


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("--rate", "fast")])
def test_quick_answers_import_nothing_heavy(args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "packet_flow", *args],
                          capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == (2 if args[0] == "--rate" else 0)
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "packet_flow.cli" in imported
    assert [m for m in HEAVY if m in imported] == []
