"""The command line a newcomer reaches for, and the configuration pitfalls (issue 23 §2, §3):
each case runs `packet-flow` in a subprocess as a user would and asserts what it prints."""

import os
import subprocess
import sys

import packet_flow


def run(*args, env=None, cwd=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "packet_flow", *map(str, args)],
                          capture_output=True, text=True, env=full, cwd=cwd, timeout=30)


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout == f"packet-flow {packet_flow.__version__}\n"


def test_help_names_report():
    out = run("--help").stdout
    assert out.startswith("usage: packet-flow [options]\n       packet-flow report [-h] "
                          "RUN.jsonl ...\n")
    assert "see `packet-flow report -h`" in " ".join(out.split())


def test_report_help_has_examples():
    proc = run("report", "-h")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: packet-flow report [-h] [-o FILE] [--run N|ID] "
                                  "[--list-runs] [--strict]")
    examples = proc.stdout.split("\nexamples:\n")[1].splitlines()
    assert examples[1] == ("  packet-flow report run.jsonl                 text summary of the "
                           "latest run in the file")
    assert len(examples) == 7
