"""Every command of the README's common tasks, run as a user would (tests/support/readme.py
says how: parsed out of README.md, on loopback, short). A task that needs a metrics server
runs in tests/servers/test_readme_servers.py. The flag map for iperf3 and irtt users is checked
too: each of its packet-flow options is accepted by `packet-flow --print-config` (the
command line's entry point, in this process)."""

import os
import re
import shlex

import pytest
from readme import ROOT, check_output, run_task, tasks

from packet_flow import cli

LOCAL = [t for t in tasks() if not t.needs_server]


def test_the_readme_has_the_common_tasks():
    titles = [t.title for t in tasks()]
    for title in ("Check the loopback", "Test between two hosts", "Round trip without clock sync",
                  "Send to InfluxDB and Grafana", "Prometheus", "Look at a run"):
        assert title in titles
    assert all(t.commands for t in tasks()), [t.title for t in tasks() if not t.commands]


@pytest.mark.parametrize("task", LOCAL, ids=[t.title for t in LOCAL])
def test_common_task(task, tmp_path):
    ran, _ = run_task(task, str(tmp_path))
    assert [r.command for r in ran] == task.commands
    for r in ran:
        check_output(r, str(tmp_path))


def flag_map():
    """The packet-flow column of the README's table for iperf3 and irtt users: the first
    backticked option snippet of each row."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = re.search(r"^## Coming from iperf3 or irtt\n(.*?)(?=^## )", text, re.S | re.M)
    rows = [line.split("|")[3] for line in section.group(1).splitlines()
            if line.startswith("| ") and "---" not in line and "packet-flow |" not in line]
    return [re.search(r"`(--[^`]+)`", cell).group(1) for cell in rows]


def test_the_flag_map_options_are_accepted(tmp_path, monkeypatch, capsys):
    for name in [k for k in os.environ if k.startswith("PACKET_FLOW_")]:
        monkeypatch.delenv(name)
    snippets = flag_map()
    assert len(snippets) >= 10 and "--duration 10s" in snippets
    for snippet in snippets:
        words = shlex.split(snippet.replace("HOST:PORT", "127.0.0.1:8000")
                            .replace("FILE", str(tmp_path / "out.jsonl")).replace("KEY", "k"))
        if "--mode" not in words:
            words = ["--mode", "sender", *words]
        status = cli.main([*words, "--print-config"])
        assert status == 0, f"{snippet}: {capsys.readouterr().err}"
