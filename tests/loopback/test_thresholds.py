"""Thresholds as a user meets them: the CLI on loopback, real loss made by SIGUSR1, the
exit status and the breach lines on stderr."""

import signal
import time

from probe import free_port, pf, records, summaries, wait_bound, wait_caught


def test_one_lost_packet_breaches_max_loss_0(tmp_path):
    port, out = free_port(), tmp_path / "run.jsonl"
    proc = pf("--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
              f"127.0.0.1:{port}", "--rate", 5, "--duration", 2, "--max-loss", "0",
              "--max-owd-p99", "10s", "--output", f"jsonl:{out}")
    wait_caught(proc, signal.SIGUSR1)
    time.sleep(0.7)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    (flow,) = summaries(records(out))
    assert flow["lost"] == 1 and flow["verdict"] == "fail"
    assert err.splitlines() == [
        f"packet-flow: threshold --max-loss 0 breached by {flow['source']} -> "
        f"127.0.0.1:{port}: lost 1"]
    assert flow["breaches"] == [{
        "threshold": "max-loss", "limit": "0", "field": "lost", "measured": 1,
        "source": flow["source"], "destination": f"127.0.0.1:{port}", "role": "receiver"}]


def test_a_run_within_its_thresholds_exits_0(tmp_path):
    port, out = free_port(), tmp_path / "run.jsonl"
    proc = pf("--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
              f"127.0.0.1:{port}", "--rate", 5, "--count", 100, "--max-loss", "0%",
              "--min-received", 100, "--max-jitter", "1s", "--output", f"jsonl:{out}")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err == ""
    (flow,) = summaries(records(out))
    assert (flow["received"], flow["verdict"], flow["breaches"]) == (100, "pass", [])


def test_a_receiver_that_saw_no_flow_fails(tmp_path):
    port = free_port()
    proc = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 0.3,
              "--min-received", 1)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    assert err.splitlines() == [f"packet-flow: threshold --min-received 1 breached: no flow "
                                f"arrived at 127.0.0.1:{port}"]


def test_round_trip_thresholds_judge_the_senders_summary(tmp_path):
    port, out = free_port(), tmp_path / "tx.jsonl"
    refl = pf("--mode", "reflector", "--local-addr", f"127.0.0.1:{port}", "--duration", 8)
    wait_bound(port)
    tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rtt", "--rate", 10,
            "--count", 20, "--max-rtt-p99", "1ns", "--min-received", 20, "--max-loss", 0,
            "--output", f"jsonl:{out}")
    _, err = tx.communicate(timeout=20)
    refl.terminate()
    refl.communicate(timeout=20)
    assert tx.returncode == 3, err
    (sender,) = summaries(records(out), "sender")
    assert (sender["reflected"], sender["lost"], sender["verdict"]) == (20, 0, "fail")
    assert [b["threshold"] for b in sender["breaches"]] == ["max-rtt-p99"]
    assert err.splitlines() == [
        f"packet-flow: threshold --max-rtt-p99 1ns breached by {sender['source']} -> "
        f"127.0.0.1:{port} (round trip): rtt_p99 {sender['rtt_p99_us']:.6g} µs"]
