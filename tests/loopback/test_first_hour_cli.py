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


def _error(proc):
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    return proc.stderr


def test_several_remote_addresses_say_one_is_expected():
    assert _error(run("-m", "sender", "--remote-addr", "10.0.0.1:8000,10.0.0.2:8000")) == (
        "packet-flow: error: option --remote-addr: value '10.0.0.1:8000,10.0.0.2:8000' from "
        "cli: one address is expected (host:port), not 2\n")


def test_durations_with_units():
    shown = run("--print-config", "-r", "100us", "--duration", "2m", "--interval", "500ms",
                "--stall-timeout", "10s", "--forget-timeout", "1h").stdout.splitlines()
    assert {"rate = 0.1  # cli", "duration = 120.0  # cli", "interval = 0.5  # cli",
            "stall_timeout = 10.0  # cli", "forget_timeout = 3600.0  # cli"} <= set(shown)
    # a bare number keeps the original's unit: milliseconds for --rate, seconds elsewhere
    shown = run("--print-config", "-r", "10", "--duration", "3").stdout.splitlines()
    assert {"rate = 10.0  # cli", "duration = 3.0  # cli"} <= set(shown)
    assert _error(run("-r", "10 parsecs")) == (
        "packet-flow: error: option --rate: value '10 parsecs' from cli: not a number or a "
        "time (a number of ms, or 10ms, 1.5s, 2m, 1h)\n")


def test_errors_show_what_was_typed():
    assert _error(run("--generate-config")) == (
        "packet-flow: error: option --generate-config from cli: needs --config-file PATH to "
        "write to\n")
    assert _error(run("-m", "sender", "--rtt", "--wire", "legacy")).startswith(
        "packet-flow: error: option --rtt from cli: needs --wire native or stamp")
    assert _error(run("-m", "sender", "--wire", "legacy", env={"PACKET_FLOW_RTT": "yes"})
                  ).startswith("packet-flow: error: option --rtt: value 'yes' from env "
                               "PACKET_FLOW_RTT: needs --wire native or stamp")


def test_misspelt_environment_variable_warns_naming_the_option():
    proc = run("--print-config", env={"PACKET_FLOW_RAET": "5", "PACKET_FLOW_SENDER_ADDR": "x"})
    assert proc.returncode == 0
    assert proc.stderr == ("environment variable PACKET_FLOW_RAET is not packet-flow's and is "
                           "ignored: did you mean PACKET_FLOW_RATE (--rate)?\n")


def test_print_config_without_influx_credentials_says_what_is_missing():
    proc = run("-m", "receiver", "--output", "influx", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:3] == [
        "# packet-flow effective configuration",
        "# missing, a run would stop here: option --token: not set (default): mode 'receiver' "
        "writes to InfluxDB (--output from cli) and needs --token or --username and --password",
        'mode = "receiver"  # cli']
    # the run itself still refuses
    assert _error(run("-m", "receiver", "--output", "influx")).startswith(
        "packet-flow: error: option --token: not set (default)")


def test_generate_config_names_the_file_written_and_why(tmp_path):
    env = {"PACKET_FLOW_CONFIG_FILE": "env.toml"}
    proc = run("--generate-config", "--config-file", "other.toml", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "packet-flow: wrote env.toml (named by env PACKET_FLOW_CONFIG_FILE, which overrides "
        "--config-file other.toml from cli): every setting commented out, uncomment a line to "
        "change it\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.toml"]
    # at start, the configuration line names the file in use and why
    proc = run("-m", "sender", "--remote-addr", "127.0.0.1:9", "--count", "1", env=env,
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].split(" ", 2)[2] == (
        "INFO packet_flow: mode sender; sending to 127.0.0.1:9 every 1000 ms (1 packets/s); "
        "outputs console; config file env.toml (env PACKET_FLOW_CONFIG_FILE)")
