"""The command line's own output: quiet by default (issue 13.5). One loopback run in a
subprocess, and the start-up line for each mode without one."""

import os
import socket
import subprocess
import sys

from packet_flow import config, config_render, options


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_log_level_prints_one_configuration_line():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "packet_flow", "--mode", "both", "--local-addr",
         f"127.0.0.1:{port}", "--remote-addr", f"127.0.0.1:{port}", "--rate", "10", "--count",
         "20", "--interval", "0.1"], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    logged = [line.split(" ", 2)[2] for line in proc.stderr.splitlines()]   # without the time
    assert logged[0] == (f"INFO packet_flow: mode both; listening on 127.0.0.1:{port}; sending to "
                         f"127.0.0.1:{port} every 10 ms (100 packets/s); outputs console")
    # after it, only what happens in the run: the new flow (and, without real-time priority,
    # one line saying so); never the configuration
    assert [m.split(":")[0] for m in logged[1:] if "real-time" not in m] == [
        "INFO packet_flow.flows"]
    assert not any("config" in m for m in logged)
    assert "received 20" in proc.stdout


def test_start_line_per_mode():
    cases = [
        (["-m", "receiver", "-i", "http://me:pw@db:8086", "-t", "tok", "--output",
          "jsonl:-"],
         "mode receiver; listening on 0.0.0.0:8000; outputs jsonl:-, influx http://me:***@db:8086"),
        (["-m", "sender", "--local-addr", "127.0.0.1:0", "-r", "0.01"],
         "mode sender; sending from 127.0.0.1:0 to 127.0.0.1:8000 every 0.01 ms "
         "(100,000 packets/s); outputs console"),
        (["-m", "sender", "-r", "3600000"],
         "mode sender; sending to 127.0.0.1:8000 every 3,600,000 ms (0.000278 packets/s); "
         "outputs console"),
        (["-m", "both", "--prometheus-listen", "[::1]:9469", "--output", "jsonl:-"],
         "mode both; listening on 0.0.0.0:8000; sending to 127.0.0.1:8000 every 1000 ms "
         "(1 packets/s); outputs jsonl:-, prometheus http://[::1]:9469/metrics"),
        (["-m", "reflector", "--wire", "stamp"],
         "mode reflector; listening on 0.0.0.0:862; outputs console"),
    ]
    for argv, line in cases:
        assert config_render.summary_line(config.load(argv, {})) == line
    # the full configuration is still there at debug level: one line per option
    shown = [o for o in options.OPTS if not o.run_only]
    assert len(config_render.render_toml(config.load([], {})).splitlines()) == len(shown) + 1
