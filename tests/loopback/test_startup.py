"""The start of a run (issue 22 §1 §2): a receiving socket owns its port, and a socket that
cannot be opened is one line naming the option, before any start-up line or header."""

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys

from probe import finish, free_port, pf, records, summaries, wait_bound

IN_USE = "Address already in use (another socket has this address and port)"


def failed_start(*args, timeout=20):
    """Run the CLI at info level; it must fail at start: returns its stderr lines."""
    proc = pf("--log-level", "info", *args)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 2, err
    assert out == ""                    # no console header
    return err.splitlines()


def started_line(*args):
    """The start-up line of a run of --duration 0.3 at info level."""
    proc = pf("--log-level", "info", "--duration", 0.3, "--output", "jsonl:/dev/null", *args)
    _out, err = finish(proc)
    return err.splitlines()[0].split(" ", 2)[2]     # without the time


def bind_errno(port, option, as_nobody=False):
    """errno of a plain Python socket with `option` binding 127.0.0.1:port (0: it bound)."""
    code = (f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.setsockopt(socket.SOL_SOCKET, socket.{option}, 1)\n"
            f"try:\n    s.bind(('127.0.0.1', {port}))\n    print(0)\n"
            f"except OSError as e:\n    print(e.errno)\n")
    # nobody runs the system python: the test's own may live in a folder only root can read
    cmd = ["runuser", "-u", "nobody", "--", "/usr/bin/python3"] if as_nobody else [sys.executable]
    done = subprocess.run([*cmd, "-c", code], capture_output=True,
                          text=True, timeout=20, check=True)
    return int(done.stdout)


def test_a_receiving_port_is_exclusive(tmp_path):
    port, out = free_port(), tmp_path / "a.jsonl"
    addr = f"127.0.0.1:{port}"
    first = pf("--mode", "receiver", "--local-addr", addr, "--output", f"jsonl:{out}")
    try:
        wait_bound(port)
        for mode in ("receiver", "both", "reflector"):
            assert failed_start("--mode", mode, "--local-addr", addr) == [
                f"packet-flow: error: option --local-addr: value '{addr}' from cli: {IN_USE}"]
        # nor can any other socket take it, whatever its options or its user (REFERENCE §8)
        assert bind_errno(port, "SO_REUSEADDR") == errno.EADDRINUSE
        assert bind_errno(port, "SO_REUSEPORT") == errno.EADDRINUSE
        if os.geteuid() == 0 and shutil.which("runuser") and os.path.exists("/usr/bin/python3"):
            assert bind_errno(port, "SO_REUSEADDR", as_nobody=True) == errno.EADDRINUSE
            assert bind_errno(port, "SO_REUSEPORT", as_nobody=True) == errno.EADDRINUSE
        finish(pf("--mode", "sender", "--remote-addr", addr, "--rate", 1, "--count", 200))
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        finish(first)
    (rx,) = summaries(records(out))
    assert (rx["received"], rx["lost"], rx["late"], rx["duplicates"]) == (200, 0, 0, 0)


def test_socket_errors_at_start_name_the_option():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        assert failed_start("--mode", "sender", "--local-addr", f"127.0.0.1:{port}") == [
            f"packet-flow: error: option --local-addr: value '127.0.0.1:{port}' from cli: "
            f"{IN_USE}"]
    # 192.0.2.77 (TEST-NET-1) is bound to, never sent to
    for mode in ("receiver", "both", "reflector"):
        assert failed_start("--mode", mode, "--local-addr", "192.0.2.77:18000") == [
            "packet-flow: error: option --local-addr: value '192.0.2.77:18000' from cli: "
            "Cannot assign requested address (not an address of this host)"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    env_err = subprocess.run([sys.executable, "-m", "packet_flow", "--mode", "receiver"],
                             env=dict(env, PACKET_FLOW_LOCAL_ADDR="192.0.2.77:18000"),
                             capture_output=True, text=True, timeout=20)
    assert env_err.returncode == 2 and env_err.stdout == ""
    assert env_err.stderr.splitlines() == [
        "packet-flow: error: option --local-addr: value '192.0.2.77:18000' from env "
        "PACKET_FLOW_LOCAL_ADDR: Cannot assign requested address (not an address of this host)"]


def test_port_zero_start_line_names_the_chosen_port():
    line = started_line("--mode", "receiver", "--local-addr", "127.0.0.1:0")
    port = int(line.split("listening on 127.0.0.1:")[1].split(";")[0])
    assert port > 0 and line == (f"INFO packet_flow: mode receiver; listening on "
                                 f"127.0.0.1:{port}; outputs jsonl:/dev/null")
    target = free_port()
    line = started_line("--mode", "sender", "--local-addr", "127.0.0.1:0", "--remote-addr",
                        f"127.0.0.1:{target}", "--rate", 100)
    port = int(line.split("sending from 127.0.0.1:")[1].split(" ")[0])
    assert port > 0 and line == (f"INFO packet_flow: mode sender; sending from 127.0.0.1:{port} "
                                 f"to 127.0.0.1:{target} every 100 ms (10 packets/s); "
                                 "outputs jsonl:/dev/null")
