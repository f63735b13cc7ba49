"""The probe end to end: the CLI in subprocesses on loopback, read back through its
JSON-lines output."""

import os
import signal
import socket
import time

import pytest
from probe import finish, free_port, pf, records, summaries, wait_bound, wait_caught

from packet_flow import wire


def stop(proc):
    """Stop a receiver once its senders are done, as Ctrl-C does (it writes its summaries
    and exits 0), instead of waiting out a fixed --duration."""
    time.sleep(0.2)                     # the last datagrams are read within a 50 ms slice
    proc.send_signal(signal.SIGINT)
    return finish(proc)


def test_both_mode(tmp_path):
    port, out = free_port(), tmp_path / "run.jsonl"
    proc = pf("--mode", "both", "--local-addr", f"127.0.0.1:{port}",
              "--remote-addr", f"127.0.0.1:{port}", "--rate", 1, "--count", 1500,
              "--interval", 0.5, "--output", f"jsonl:{out}", "--output", "console")
    stdout, _ = finish(proc)
    recs = records(out)
    (rx,) = summaries(recs)
    (tx,) = summaries(recs, "sender")
    # A stall of the machine (>5 ms) may skip slots; they use no sequence numbers, so the
    # receiver's accounting stays exact either way. Timer quality is bench_probe's job.
    assert tx["sent"] == 1500 and tx["skipped_slots"] >= 0
    assert rx["received"] == 1500 and rx["lost"] == 0 and rx["late"] == 0
    assert rx["duplicates"] == 0 and rx["closed"] is True
    assert rx["session"] == tx["session"]
    assert rx["owd_min_us"] >= 0 and rx["owd_p50_us"] < 10_000
    intervals = [r for r in recs if r["type"] == "interval"]
    assert sum(r["received"] for r in intervals) == 1500
    assert any(r["type"] == "sender" and r["timer_late_p99_us"] is not None for r in recs)
    assert "summary" in stdout and "received 1500" in stdout
    assert max(len(line) for line in stdout.splitlines()) <= 80


def test_two_senders_one_receiver(tmp_path):
    port, out = free_port(), tmp_path / "rx.jsonl"
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 30,
            "--output", f"jsonl:{out}")
    wait_bound(port)
    senders = [pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 2,
                  "--count", 600, "--output", f"jsonl:{tmp_path / f'tx{i}.jsonl'}")
               for i in range(2)]
    for s in senders:
        finish(s)
    stop(rx)
    flows = summaries(records(out))
    assert len(flows) == 2
    assert {f["source"] for f in flows} == {
        summaries(records(tmp_path / f"tx{i}.jsonl"), "sender")[0]["source"] for i in range(2)}
    for f in flows:
        assert (f["received"], f["lost"], f["late"], f["duplicates"]) == (600, 0, 0, 0)
        assert f["closed"] is True


def test_sigusr1_skips_exactly_one_and_sigterm_is_clean(tmp_path):
    port, out, tx_out = free_port(), tmp_path / "rx.jsonl", tmp_path / "tx.jsonl"
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 6,
            "--output", f"jsonl:{out}")
    wait_bound(port)
    tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 2,
            "--output", f"jsonl:{tx_out}")
    wait_caught(tx, signal.SIGUSR1)
    time.sleep(1.0)
    tx.send_signal(signal.SIGUSR1)
    time.sleep(1.0)
    t0 = time.monotonic()
    tx.send_signal(signal.SIGTERM)
    finish(tx)
    assert time.monotonic() - t0 < 2.0
    rx.send_signal(signal.SIGINT)
    finish(rx)
    (flow,) = summaries(records(out))
    (sent,) = summaries(records(tx_out), "sender")
    assert flow["lost"] == 1 and flow["loss_bursts"] == 1 and flow["max_loss_burst"] == 1
    assert flow["received"] == sent["sent"] and flow["closed"] is True


def test_restart_stall_and_forget(tmp_path):
    port, out = free_port(), tmp_path / "rx.jsonl"
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 5.5,
            "--interval", 0.25, "--stall-timeout", 0.8, "--forget-timeout", 2.0,
            "--output", f"jsonl:{out}")
    wait_bound(port)
    first = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 5)
    time.sleep(1.0)
    first.kill()                    # a crash: no final packet
    first.communicate()
    second = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 5,
                "--count", 100)
    finish(second)
    finish(rx)
    recs = records(out)
    flows = summaries(recs)
    assert len(flows) == 2
    crashed = next(f for f in flows if not f["closed"])
    restarted = next(f for f in flows if f["closed"])
    assert crashed["lost"] == 0 and crashed["stalled"] is True and crashed["received"] > 50
    assert restarted["received"] == 100 and restarted["lost"] == 0
    stalled = [r for r in recs if r["type"] == "interval" and r["session"] == crashed["session"]
               and r["stalled"]]
    assert stalled and all(r["lost"] == 0 and r["received"] == 0 for r in stalled)
    # forgotten: its summary comes before the run ends and no interval follows it
    idx = recs.index(crashed)
    assert not [r for r in recs[idx + 1:] if r.get("session") == crashed["session"]]


def test_garbage_mixed_into_live_flow_and_legacy_sender(tmp_path):
    port, out = free_port(), tmp_path / "rx.jsonl"
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 30,
            "--output", f"jsonl:{out}")
    wait_bound(port)
    tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 1,
            "--count", 1000)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    legacy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # a Rust original sender
    for i in range(500):
        junk.sendto(os.urandom(1 + i % 90), ("127.0.0.1", port))
        if i % 2 == 0:
            seq = i // 2
            if seq != 7:           # one deliberate gap
                legacy.sendto(wire.encode_legacy(seq, time.time_ns() // 1000, seq == 249),
                              ("127.0.0.1", port))
        time.sleep(0.001)
    finish(tx)
    stop(rx)
    junk.close()
    rust = f"127.0.0.1:{legacy.getsockname()[1]}"
    legacy.close()
    recs = records(out)
    flows = summaries(recs)
    native = next(f for f in flows if f["wire"] == "native")
    # (a 17-byte junk datagram ending in 0 or 1 is a legacy packet too: another flow)
    old = next(f for f in flows if f["source"] == rust)
    assert (native["received"], native["lost"], native["malformed"]) == (1000, 0, 0)
    # the Rust original's FINAL says goodbye with the next, unsent sequence (249): not a probe
    assert (old["received"], old["lost"], old["closed"], old["session"]) == (248, 1, True, "legacy")
    malformed = sum(sum(r["malformed"].values()) for r in recs if r["type"] == "receiver")
    # random bytes can be a legacy-sized packet by chance only with length 17: counted either way
    datagrams = sum(r["datagrams"] for r in recs if r["type"] == "receiver")
    assert datagrams == 1000 + 249 + 500
    assert 495 <= malformed <= 500


def test_bad_option_is_one_line_exit_2():
    proc = pf("--rate", "fast")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1 and "--rate" in err and "Traceback" not in err


def test_address_in_use_is_clear():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 1)
        out, err = proc.communicate(timeout=10)
    # a start-up error: exit 2 and one line naming the option (issue 22 §2; was exit 1)
    assert proc.returncode == 2 and "Traceback" not in err and "in use" in err
    assert err.splitlines() == [f"packet-flow: error: option --local-addr: value "
                                f"'127.0.0.1:{port}' from cli: Address already in use "
                                "(another socket has this address and port)"]


@pytest.mark.parametrize("mode", ["receiver", "both"])
def test_signal_exit_within_two_seconds(tmp_path, mode):
    port = free_port()
    proc = pf("--mode", mode, "--local-addr", f"127.0.0.1:{port}",
              "--remote-addr", f"127.0.0.1:{port}", "--rate", 1000)
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGQUIT)
    finish(proc)
    assert time.monotonic() - t0 < 2.0
