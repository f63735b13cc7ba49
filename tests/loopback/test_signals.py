"""A signal changes nothing but what it asks for (issue 22 §5): SIGUSR1 skips exactly one
sequence number and the schedule goes on as if nothing happened -- every full interval
sends its 500 slots and skips none -- and so does any other signal the process handles
(here SIGHUP, given a handler that does nothing).

The arithmetic: --rate 1 and --interval 0.5 put 500 slots in each record interval. The
first interval holds 501 (slot 0 at the start, and the slice that ends the interval runs to
half a slot after the tick, so it also sends slot 500); every later full interval holds the
next 500, and no slot is skipped. A skipped sequence number uses no slot, so `sent` stays
500, and the receiver counts exactly one packet lost per SIGUSR1, each a burst of 1. Before
the fix, the interval after a SIGUSR1 sent ~200 and skipped ~300 (seen: 203 sent, 360
missed, 297 skipped)."""

import os
import signal
import subprocess
import sys
import time

from probe import finish, free_port, pf, records, summaries, wait_bound

# the CLI with a SIGHUP handler that does nothing: a signal the process handles
WITH_HUP = ("import signal, sys; signal.signal(signal.SIGHUP, lambda *a: None); "
            "from packet_flow import cli; sys.exit(cli.main())")


def signal_run(proc, out, signals, apart=0.35):
    """The signals `apart` s apart, from the first record tick on (the handlers are in place
    then, however long the interpreter took to start). Two signals of one kind must come
    further apart than one schedule slice (the record interval, 0.5 s here): a signal that
    lands while the sender spins or sends, not sleeps, is taken when the slice ends, and
    a second one of the same kind before then merges with it, as POSIX signals do."""
    end = time.monotonic() + 20
    while not (out.exists() and '"type":"sender"' in out.read_text()):
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.05)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(apart)


def check_schedule(recs, skips):
    ticks = [r for r in recs if r["type"] == "sender"]
    (summary,) = summaries(recs, "sender")
    first, full, last = ticks[0], ticks[1:-1], ticks[-1]
    assert len(full) >= 4, ticks
    assert [r["skipped_slots"] for r in ticks] == [0] * len(ticks)
    # every full interval sends its 500 slots; only a slot due just after a tick, sent 1 ms
    # late or more, goes out with the slot before the tick and counts one interval early
    # (501 then 499: the sum stays exact)
    moved = [first["sent"] - 501] + [r["sent"] - 500 for r in full]
    assert set(moved) <= {-1, 0, 1}, moved
    assert all(sum(moved[:i]) in (0, 1) for i in range(1, len(moved) + 1)), moved
    # missed_slots counts slots sent 1 ms late or more: a loaded 2-core machine makes a few
    # in any interval, signal or not (seen: up to 6 with no signal at load 7); the stall
    # this test is about missed 992 and skipped 929 in one interval
    assert all(r["missed_slots"] <= 10 for r in full), [r["missed_slots"] for r in full]
    assert sum(r["sent"] for r in ticks) == summary["sent"]
    assert last["sent"] <= 500
    return summary["sent"]


def check_flow(flow, sent, skips):
    assert (flow["received"], flow["lost"], flow["loss_bursts"], flow["late"]) == \
        (sent, skips, skips, 0)
    assert flow["max_loss_burst"] == (1 if skips else 0)


def test_sender_mode_sigusr1_and_sighup(tmp_path):
    port, rx_out, tx_out = free_port(), tmp_path / "rx.jsonl", tmp_path / "tx.jsonl"
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}",
            "--output", f"jsonl:{rx_out}")
    try:
        wait_bound(port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
        args = ["--log-level", "warning", "--mode", "sender", "--remote-addr",
                f"127.0.0.1:{port}", "--rate", 1, "--interval", 0.5, "--duration", 3.6,
                "--output", f"jsonl:{tx_out}"]
        tx = subprocess.Popen([sys.executable, "-c", WITH_HUP, *map(str, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        usr1, hup = signal.SIGUSR1, signal.SIGHUP
        signal_run(tx, tx_out, [usr1, hup, usr1, hup, usr1])
        finish(tx)
        time.sleep(0.3)
    finally:
        rx.send_signal(signal.SIGTERM)
        finish(rx)
    sent = check_schedule(records(tx_out), 3)
    (flow,) = summaries(records(rx_out))
    check_flow(flow, sent, 3)


def test_both_mode_sigusr1(tmp_path):
    port, out = free_port(), tmp_path / "run.jsonl"
    proc = pf("--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
              f"127.0.0.1:{port}", "--rate", 1, "--interval", 0.5, "--duration", 3.6,
              "--output", f"jsonl:{out}")
    signal_run(proc, out, [signal.SIGUSR1] * 4, apart=0.65)
    finish(proc)
    recs = records(out)
    sent = check_schedule(recs, 4)
    (flow,) = summaries(recs)
    check_flow(flow, sent, 4)
