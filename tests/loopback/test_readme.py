"""Every command of the README's common tasks, run as a user would (tests/support/readme.py
says how: parsed out of README.md, on loopback, short). A task that needs a metrics server
runs in tests/servers/test_readme_servers.py."""

import pytest
from readme import check_output, run_task, tasks

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
