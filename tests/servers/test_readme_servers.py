"""The README's common tasks that need a metrics server (tests/support/readme.py says how they
run), and start_influx.sh as its output tells a user to use it: the stop command it prints
works from any folder, and its state folder (it holds a token) is ignored by git.

Without a Docker engine (this machine, CI) start_influx.sh starts VictoriaMetrics.
"""

import os
import re
import subprocess

import pytest
from readme import ROOT, check_output, ints, run_task, tasks
from servers import free_port, port_in_use
from vmserver import BINARY, VMServer

pytestmark = [pytest.mark.influx,
              pytest.mark.skipif(BINARY is None, reason="victoria-metrics is not installed")]

SERVER_TASKS = [t for t in tasks() if t.needs_server]
SCRIPT = os.path.join(ROOT, "start_influx.sh")


def test_there_is_a_server_task():
    assert [t.title for t in SERVER_TASKS] == ["Send to InfluxDB and Grafana"]


@pytest.mark.parametrize("task", SERVER_TASKS, ids=[t.title for t in SERVER_TASKS])
def test_common_task_with_a_server(task, tmp_path):
    pid_file = tmp_path / ".packet-flow-influx" / "vm.pid"
    try:
        ran, _ = run_task(task, str(tmp_path))
    finally:                                    # the server it started, if `stop` did not end it
        if pid_file.exists() and os.path.exists(f"/proc/{pid_file.read_text().strip()}"):
            os.kill(int(pid_file.read_text()), 15)
    assert [r.command for r in ran] == task.commands
    for r in ran:
        check_output(r, str(tmp_path))
    assert "VictoriaMetrics stopped" in ran[-1].stdout
    summary = [n for r in ran for n in ints(r"received (\d+)\s+lost", r.stdout)]
    # What the user's server stored: read its data folder back with a server of our own.
    with VMServer(str(tmp_path / ".packet-flow-influx" / "vm-data")) as vm:
        stored = vm.export("packet_flow_received", min_samples=1)
    assert summary and sum(sum(s["values"]) for s in stored) == sum(summary)


def test_the_printed_stop_command_works_from_another_folder(tmp_path):
    port = free_port()
    work = tmp_path / "here"
    work.mkdir()
    env = dict(os.environ, PF_PORT=str(port))
    start = subprocess.run([SCRIPT], cwd=work, env=env, capture_output=True, text=True,
                           timeout=90)
    state = work / ".packet-flow-influx"
    pid = int((state / "vm.pid").read_text()) if (state / "vm.pid").exists() else None
    try:
        assert start.returncode == 0, start.stderr
        assert port_in_use(port)
        stop = re.search(r"^Stop it with: (.+)$", start.stdout, re.M).group(1)
        assert f"--token-file {state}/token" in start.stdout
        done = subprocess.run(["sh", "-c", stop], cwd="/", capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        assert "VictoriaMetrics stopped" in done.stdout
        assert not os.path.exists(f"/proc/{pid}")
        assert not port_in_use(port)
    finally:
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 15)


def test_the_state_folder_is_ignored_by_git():
    r = subprocess.run(["git", "check-ignore", "-q", ".packet-flow-influx/token"], cwd=ROOT)
    assert r.returncode == 0
