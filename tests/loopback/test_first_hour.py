"""What a newcomer sees when the probe is set up wrong (issue 23 §1): each case runs the
command as a user would, on loopback, and asserts the line printed."""

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest
from probe import finish, free_port, pf, records, wait_bound


def stop(proc):
    """Stop a probe as Ctrl-C does (it flushes its outputs and exits 0)."""
    time.sleep(0.2)                     # the last datagrams are read within a 50 ms slice
    proc.send_signal(signal.SIGINT)
    return finish(proc)


def _told(text):
    """The console's lines with their wrapped continuations joined, without the time."""
    joined = re.sub(r"\n {9}", " ", text)
    return [line.split(" ", 1)[1] for line in joined.splitlines()
            if re.match(r"\d\d:\d\d:\d\d ", line)]


@pytest.mark.parametrize("output", ["console", "jsonl"])
def test_rejected_traffic_says_why_and_what_to_check(tmp_path, output):
    """The console tells rejected traffic in its table; a run without a console (JSON lines
    only) logs the same lines as warnings on stderr."""
    port, keyed, stamp = free_port(), free_port(), free_port()
    rx = pf("-m", "receiver", "--local-addr", f"127.0.0.1:{port}", "--key", "right",
            "--duration", "60", "--interval", "60",
            "--output", "console" if output == "console" else f"jsonl:{tmp_path / 'rx.jsonl'}")
    wait_bound(port)
    out = tmp_path / "tx.jsonl"
    finish(pf("-m", "sender", "--remote-addr", f"127.0.0.1:{port}", "--local-addr",
              f"127.0.0.1:{keyed}", "--key", "wrong", "--count", "20", "--rate", "5",
              "--output", f"jsonl:{out}"))
    finish(pf("-m", "sender", "--remote-addr", f"127.0.0.1:{port}", "--local-addr",
              f"127.0.0.1:{stamp}", "--wire", "stamp", "--count", "10", "--rate", "5",
              "--output", f"jsonl:{out}"))
    sent = [r["sent"] for r in records(out) if r["type"] == "summary"]
    stdout, stderr = stop(rx)
    told = _told(stdout) if output == "console" else \
        re.findall(r" WARNING packet_flow\.sinks\.rejected: (.*)", stderr)
    assert told == [
        f"rejected {sent[0]} datagrams from 127.0.0.1:{keyed}: signed with another key "
        "(bad_tag); check that --key is the same on both ends",
        f"rejected {sent[1]} datagrams from 127.0.0.1:{stamp}: not packet-flow packets "
        "(magic); a STAMP sender needs --wire stamp here; check --wire on both ends",
    ]
    assert sent == [20, 10]


def test_rtt_without_reflector_says_no_reply_came_back(tmp_path):
    port = free_port()
    rx = pf("-m", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", "30")
    wait_bound(port)
    stdout, stderr = finish(pf("-m", "sender", "--rtt", "--remote-addr", f"127.0.0.1:{port}",
                               "--duration", "3.6", "--rate", "100", "--interval", "0.5"))
    stop(rx)
    warned = [line.split(": ", 1)[1] for line in stderr.splitlines() if "WARNING" in line]
    assert len(warned) == 1
    assert re.fullmatch(
        rf"--rtt: no reply came back from 127\.0\.0\.1:{port} in 3 s \(\d+ probes sent\): the "
        r"peer must be `packet-flow --mode reflector`, and replies must get through its "
        r"firewall", warned[0]), warned
    assert ("  no reply came back: the peer must run --mode reflector (or be a STAMP reflector "
            "with --wire stamp)") in stdout.splitlines()


def test_both_with_rtt_is_refused_at_start():
    proc = pf("-m", "both", "--rtt")
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 2 and stdout == ""
    assert stderr == ("packet-flow: error: option --rtt from cli: works in --mode sender or mesh "
                      "only, not --mode both (cli): run the peer with --mode reflector\n")


def _report(*args):
    proc = subprocess.run([sys.executable, "-m", "packet_flow", "report", *map(str, args)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_report_shows_rtt_and_each_run_apart(tmp_path):
    out, refl, both = tmp_path / "runs.jsonl", free_port(), free_port()
    rx = pf("-m", "reflector", "--local-addr", f"127.0.0.1:{refl}", "--duration", "60")
    wait_bound(refl)
    finish(pf("-m", "both", "--local-addr", f"127.0.0.1:{both}", "--remote-addr",
              f"127.0.0.1:{both}", "--count", "20", "--rate", "10", "--output", f"jsonl:{out}"))
    finish(pf("-m", "sender", "--rtt", "--remote-addr", f"127.0.0.1:{refl}", "--count", "30",
              "--rate", "10", "--output", f"jsonl:{out}"))
    stop(rx)
    ids = list(dict.fromkeys(r["run"] for r in records(out)))
    assert len(ids) == 2
    text = _report(out)
    lines = text.splitlines()
    assert lines[1] == (f"run 2 of 2 in this file ({ids[1]}): --list-runs lists them, --run N "
                        "picks one")
    assert "received" not in text           # the first run is not mixed in
    assert re.search(r"^ 1    RTT( +[0-9.]+(us|ms|s)){5}$", text, re.M), text
    assert " 1            30         0   0.000         0         0       0/0       0/0" in lines
    assert " 1  reflector resets 0" in lines
    listed = _report(out, "--list-runs").splitlines()
    assert listed[0].split() == ["#", "run", "start", "(UTC)", "duration", "flows"]
    assert [line.split()[:2] for line in listed[1:]] == [["1", ids[0]], ["2", ids[1]]]
    first = _report(out, "--run", "1")
    assert first.splitlines()[1].startswith(f"run 1 of 2 in this file ({ids[0]})")
    assert re.search(r"^ 1 +20 +0 +0\.000 ", first, re.M), first
    assert _report(out, "--run", ids[0]) == first
    png = tmp_path / "rtt.png"
    assert _report(out, "-o", png) == f"wrote {png} (1600x380 px, 1 flow(s))\n"


def test_generated_config_pins_nothing_stamp_reflector_listens_on_862(tmp_path):
    path = tmp_path / "gen.toml"
    finish(pf("--generate-config", "--config-file", path))
    refl = pf("-m", "reflector", "--wire", "stamp", "--config-file", path, "--duration", "60",
              "--log-level", "info")
    probe = struct.pack("!III", 7, 3_900_000_000, 0) + bytes(32)       # RFC 8762 sender packet
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        for _ in range(100):                # until the reflector is up
            s.sendto(probe, ("127.0.0.1", 862))
            try:
                reply = s.recv(100)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no STAMP reply from 127.0.0.1:862")
    _, stderr = stop(refl)
    assert len(reply) == 44 and struct.unpack_from("!I", reply, 24)[0] == 7   # sender seq
    assert (f"mode reflector; listening on 0.0.0.0:862; outputs console; config file {path} "
            "(cli)") in stderr


def test_prometheus_listen_all_addresses_shorthand():
    port = free_port()
    rx = pf("-m", "receiver", "--local-addr", "127.0.0.1:0", "--prometheus-listen", f":{port}",
            "--duration", "60")
    end = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                assert r.status == 200 and b"packet_flow_" in r.read()
            break
        except OSError:
            assert time.monotonic() < end, "no /metrics on :port"
            time.sleep(0.1)
    stop(rx)


def test_console_flags_apart_and_every_column_explained():
    port = free_port()
    stdout, _ = finish(pf("-m", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
                          f"127.0.0.1:{port}", "--count", "20", "--rate", "10", "--interval",
                          "0.1"))
    lines = stdout.splitlines()
    assert lines[:2] == [
        "time     source             recv  lost loss%  late   dup  owd50  owd99 jitter f",
        "         (f = flags: S = stalled, F = final packet seen; n/µ/m = ns/µs/ms)"]
    at = lines.index("sender: per interval: packets sent, send slots missed, timer late "
                     "p50/p99/max;")
    assert lines[at:at + 3] == [
        "sender: per interval: packets sent, send slots missed, timer late p50/p99/max;",
        "        with --rtt: rtt p50/p99, and lost, late, dup on the way out (fwd) /",
        "        on the way back (back): late 1/0 = 1 late out, 0 late back"]
    final = [line for line in lines if line.endswith("F")]
    assert final and all(re.search(r" \S+ F$", line) for line in final), final
    assert max(len(line) for line in lines) <= 80


def test_prometheus_rendering_process_ends_with_a_killed_probe():
    """The rendering process (and multiprocessing's resource tracker) must not outlive a
    probe killed with SIGKILL (they held its stdout and waited forever)."""
    port = free_port()
    rx = pf("-m", "receiver", "--local-addr", "127.0.0.1:0", "--prometheus-listen",
            f"127.0.0.1:{port}", "--duration", "60", "--output", "jsonl:/dev/null")
    end = time.monotonic() + 10
    children = []
    while not children:
        assert time.monotonic() < end, "no rendering process"
        time.sleep(0.1)
        with open(f"/proc/{rx.pid}/task/{rx.pid}/children", encoding="ascii") as f:
            children = [int(p) for p in f.read().split()]
    rx.kill()
    rx.communicate(timeout=10)      # returns only when nothing holds its stdout any more
    end = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in children):
        assert time.monotonic() < end, "the rendering process outlived the probe"
        time.sleep(0.05)
