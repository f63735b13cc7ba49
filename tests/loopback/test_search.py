"""`packet-flow search` on loopback: nothing limits the path, so the search must end at a
host's limit and name it (no path figure); and the cases where no result may be given: a
peer that never answers, a receiver with another --key, answers that cannot be right (more
received than sent, a bad tag under --key) -- one line each, exit status 1."""

import json
import socket
import subprocess
import sys
import threading

import pytest
from probe import free_port, pf, records, wait_bound

import packet_flow
from packet_flow import wire
from packet_flow.errors import SearchError


@pytest.fixture
def receiver(tmp_path):
    """A packet-flow receiver on loopback (its answers are the trials' outcomes)."""
    procs = []

    def start(*extra):
        port = free_port()
        out = tmp_path / f"rx-{port}.jsonl"
        proc = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 60,
                  "--output", f"jsonl:{out}", *extra)
        procs.append(proc)
        wait_bound(port)
        return port, out

    def stop():
        """End the receivers: their closing flows' summaries are written on the way out."""
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=20)
    start.stop = stop
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=20)



def search_cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "packet_flow", "search", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_loopback_search_names_the_limiting_host(receiver):
    port, out = receiver()
    seen = []
    result = packet_flow.search(remote_addr=f"127.0.0.1:{port}", trial_duration=1,
                                max_rate=2_000_000, progress=seen.append)
    ndr = result.ndr
    assert ndr["rate"] is None and ndr["limited_by"] in ("sender", "receiver")
    assert 0 < ndr["at_least"] < ndr["limit_rate"] <= ndr["at_least"] * 1.011
    assert seen == result.trials and result.trials[-1].phase == "full"
    verdicts = {t.verdict() for t in result.trials}
    assert "loss" not in verdicts           # loopback loses nothing on its "path"
    # every trial's answer is what the receiver's own summaries say (once it has ended)
    receiver.stop()
    recs = records(out)
    # flows closed by their FINAL were answered (a trial is one flow per 0.5 s segment); a
    # segment whose FINAL the receiving host dropped got no answer (its flow never closed)
    flows = [r for r in recs if r["type"] == "summary" and r["role"] == "receiver"
             and r["outcome"] == "final"]
    assert sum(t.received for t in result.trials) == sum(f["received"] for f in flows)
    # the answers' local drops: the flows' own and the receive ring's overwritten records
    overwritten = sum(r["overwritten"] for r in recs if r["type"] == "receiver")
    own = sum(f["local_drops"] for f in flows)
    assert own <= sum(t.local_drops for t in result.trials) <= own + overwritten
    assert len(result.trials) <= 60


def test_peer_that_never_answers():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        run = search_cli("--remote-addr", f"127.0.0.1:{port}", "--trial-duration", "0.4",
                         "--answer-timeout", "0.5")
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"packet-flow: error: no answer from 127.0.0.1:{port} within 0.5 s of the final "
        "packet of a trial at 1000 packets/s: is a packet-flow receiver listening there, "
        "with the same --key?"]
    assert "NDR" not in run.stdout


def test_receiver_with_another_key(receiver):
    port, _out = receiver("--key", "right")
    run = search_cli("--remote-addr", f"127.0.0.1:{port}", "--key", "wrong", "--size", 72,
                     "--trial-duration", "0.4", "--answer-timeout", "0.5")
    assert run.returncode == 1
    (line,) = run.stderr.splitlines()
    assert line.startswith("packet-flow: error: no answer from") and "--key" in line
    assert "NDR" not in run.stdout


class FakePeer(threading.Thread):
    """Answers the first FINAL it gets with `answer(sent_final_seq) -> bytes`."""

    def __init__(self, answer):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.answer = answer

    def run(self):
        with self.sock:
            try:
                while True:
                    data, addr = self.sock.recvfrom(2048)
                    pkt = wire.decode(data)
                    if pkt.final:
                        self.sock.sendto(self.answer(pkt), addr)
                        return
            except OSError:
                return


@pytest.mark.parametrize("case", ["more_received", "bad_tag"])
def test_answers_that_cannot_be_right(case):
    if case == "more_received":
        peer = FakePeer(lambda p: wire.encode_answer(p.session, p.seq, 0, p.seq + 1000, 0, 0))
        args = []
        want = "cannot be right: 1249 received and 0 dropped by the receiver of 250 sent"
    else:
        peer = FakePeer(lambda p: wire.encode_answer(p.session, p.seq, 0, p.seq + 1, 0, 0,
                                                     key=b"forged"))
        args = ["--key", "right", "--size", 72]
        want = "failed authentication (bad_tag): its --key differs; no result"
    peer.start()
    run = search_cli("--remote-addr", f"127.0.0.1:{peer.port}", "--trial-duration", "1",
                     "--answer-timeout", "1", *args)
    peer.join(5)
    assert run.returncode == 1
    (line,) = run.stderr.splitlines()
    assert line.startswith("packet-flow: error: ") and want in line, line
    assert "NDR" not in run.stdout


def test_api_raises_search_error_and_checks_size():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        with pytest.raises(SearchError, match="no answer"):
            packet_flow.search(remote_addr=f"127.0.0.1:{port}", trial_duration=0.4,
                               answer_timeout=0.3)
    with pytest.raises(packet_flow.ConfigError, match="option --size: 40"):
        packet_flow.search(remote_addr="127.0.0.1:9", size=40)


def test_cli_table_and_json_document(receiver, tmp_path):
    port, _out = receiver()
    doc = tmp_path / "search.json"
    run = search_cli("--remote-addr", f"127.0.0.1:{port}", "--max-rate", 3000,
                     "--trial-duration", "0.4", "--max-loss", "0.5%", "--output", f"json:{doc}")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["rate/s", "phase", "sent", "received", "lost", "local",
                                "missed", "verdict"]
    result = json.loads(doc.read_text())
    assert result["type"] == "search" and result["size"] == 64
    assert len(lines) == 1 + len(result["trials"]) + 3          # table, NDR, PDR, framing
    # nothing limits 3000 packets/s on loopback: both figures are the top rate, confirmed
    for fig, name in ((result["ndr"], "NDR"), (result["pdr"], "PDR (0.500%)")):
        assert fig["rate"] == 3000 and fig["at_max_rate"] and fig["limited_by"] is None
        assert fig["bits_per_s"]["wire"] == 3000 * (64 + 8 + 20 + 18 + 20) * 8
        assert any(line.startswith(f"{name}: 3,000 packets/s") for line in lines), lines
    assert result["pdr"]["max_loss"] == 0.005
    assert result["trials"][-1]["phase"] == "full" and result["trials"][-1]["verdict"] == "pass"


def test_search_against_a_reflector(tmp_path):
    port = free_port()
    proc = pf("--mode", "reflector", "--local-addr", f"127.0.0.1:{port}", "--duration", 60,
              "--output", f"jsonl:{tmp_path / 'refl.jsonl'}")
    try:
        wait_bound(port)
        result = packet_flow.search(remote_addr=f"127.0.0.1:{port}", reflector=True,
                                    max_rate=3000, trial_duration=0.4)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    # nothing is lost on loopback; the sender's --rtt reply handling may make it late (its
    # pace is estimated from its lateness there): then the search names the sender
    assert all(t.lost == 0 and t.received == t.sent for t in result.trials), result.trials
    assert {t.verdict() for t in result.trials} <= {"pass", "sender-limited"}
    if result.ndr["limited_by"] is None:
        assert result.ndr["rate"] == 3000 and result.ndr["at_max_rate"]
        # the handshake, the top rate short and full (a late trial is run again)
        assert {t.rate for t in result.trials} == {1000, 3000}
        assert result.trials[-1].phase == "full" and result.trials[-1].verdict() == "pass"
    else:
        assert result.ndr["limited_by"] == "sender" and result.ndr["rate"] is None


def test_reflector_that_never_replies():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        run = search_cli("--remote-addr", f"127.0.0.1:{port}", "--reflector",
                         "--trial-duration", "0.4")
    assert run.returncode == 1
    (line,) = run.stderr.splitlines()
    assert line == (f"packet-flow: error: no reply from 127.0.0.1:{port} to a trial at 1000 "
                    "packets/s: is `packet-flow --mode reflector` listening there, with the "
                    "same --key?")
