"""Reflector mode and round-trip analysis.

Pure tests of packet_flow.rtt with synthetic arrays; loopback tests of ReflectorLoop and
SenderLoop(--rtt) through a relay thread that drops every Nth datagram in one direction only;
the CLI end to end in subprocesses."""

import json
import select
import signal
import socket
import threading
import time

import numpy as np
import pytest
from probe import free_port, pf, wait_bound  # noqa: E402

from packet_flow import _io, clock_error, config, sockets
from packet_flow.analysis import FlowStats
from packet_flow.reflector import ReflectorLoop
from packet_flow.rtt import RttStats
from packet_flow.sender import SenderLoop

# ---------------------------------------------------------------- pure: packet_flow.rtt


def _replies(seq, r_seq, t1=None, dwell=50_000, rtt=1_000_000):
    seq = np.asarray(seq, np.uint64)
    t1 = np.arange(seq.size, dtype=np.int64) * 1_000_000 if t1 is None else np.asarray(t1)
    t2 = t1 + 7_000_000_000 + rtt // 2           # the reflector's clock is 7 s ahead
    t3 = t2 + dwell
    t4 = t1 + rtt + dwell
    return seq, np.asarray(r_seq, np.uint64), t1, t2, t3, t4


def test_rtt_removes_dwell_and_clock_offset():
    r = RttStats()
    dwell = np.array([10_000, 500_000, 20_000, 0], np.int64)
    seq, rs, t1, t2, t3, t4 = _replies([0, 1, 2, 3], [0, 1, 2, 3])
    t3, t4 = t2 + dwell, t1 + 1_000_000 + dwell
    r.update(seq, rs, t1, t2, t3, t4)
    rec = r.take_interval()
    assert rec["rtt_min_us"] == rec["rtt_max_us"] == rec["rtt_p50_us"] == 1000.0
    assert rec["rtt_jitter_us"] == 0.0 and rec["reflected"] == 4 and rec["lost"] == 0


def test_rtt_percentiles_and_jitter():
    r = RttStats()
    rtt = np.array([100, 300, 200, 400], np.int64) * 1000
    seq, rs, t1, t2, t3, _ = _replies(range(4), range(4))
    r.update(seq, rs, t1, t2, t3, t1 + rtt + (t3 - t2))
    rec = r.take_interval()
    assert (rec["rtt_min_us"], rec["rtt_max_us"], rec["rtt_mean_us"]) == (100.0, 400.0, 250.0)
    assert rec["rtt_p50_us"] == 250.0
    # RFC 3550 estimator over |D| = 200, 100, 200 µs
    j = 0.0
    for d in (200.0, 100.0, 200.0):
        j += (d - j) / 16
    assert rec["rtt_jitter_us"] == pytest.approx(j, abs=1e-3)


def test_loss_split_by_direction():
    # sender seqs 3 and 7 never come back; 3 never reached the reflector (its sequences run on
    # without a gap), 7 did (reflector sequence 6 is missing)
    seq = [0, 1, 2, 4, 5, 6, 8, 9]
    rs = [0, 1, 2, 3, 4, 5, 7, 8]
    r = RttStats()
    r.update(*_replies(seq, rs))
    rec = r.take_interval()
    assert (rec["lost"], rec["forward_lost"], rec["backward_lost"]) == (2, 1, 1)
    assert rec["loss_percent"] == 20.0


def test_loss_at_the_start_counts():
    r = RttStats()
    r.update(*_replies([2, 3, 4], [1, 2, 3]))      # seq 0 lost forward, 1 lost backward
    rec = r.take_interval()
    assert (rec["lost"], rec["forward_lost"], rec["backward_lost"]) == (2, 1, 1)


def test_duplicates_and_late_by_direction():
    r = RttStats()
    # seq 2 duplicated on the way out: two reflector sequences
    r.update(*_replies([0, 1, 2, 2, 3], [0, 1, 2, 3, 4]))
    # seq 4 duplicated on the way back: same reflector sequence twice
    r.update(*_replies([4, 4, 5], [5, 5, 6]))
    rec = r.take_interval()
    assert (rec["forward_duplicates"], rec["backward_duplicates"]) == (1, 1)
    assert rec["reflected"] == 6 and rec["lost"] == 0
    # forward reordering: 7 overtook 6 before the reflector numbered them
    r.update(*_replies([7, 6], [7, 8]))
    rec = r.take_interval()
    assert (rec["forward_late"], rec["backward_late"]) == (1, 0)
    # backward reordering: 9 overtook 8 after the reflector
    r.update(*_replies([9, 8], [10, 9]))
    rec = r.take_interval()
    assert (rec["forward_late"], rec["backward_late"]) == (0, 1)
    assert rec["lost"] == rec["forward_lost"] == rec["backward_lost"] == 0


def test_tail_is_unattributed_and_wraps_stamp_sequences():
    r = RttStats(seq_bits=32)
    top = (1 << 32) - 2
    seq = np.array([top, top + 1, 0, 1], np.uint64) & np.uint64(0xFFFFFFFF)
    r.total = FlowStats(seq_bits=32, start=top)    # a long run: start just below the 32-bit wrap
    r.update(*_replies(seq, [0, 1, 2, 3]))
    r.close()
    s = r.summary(sent=top + 4 + 3)    # three more sent after the last reply
    assert s["reflected"] == 4 and s["unattributed_lost"] == 3
    assert s["lost"] == 3 and s["forward_lost"] == s["backward_lost"] == 0


def test_empty_interval_has_no_nan():
    rec = RttStats().take_interval()
    assert rec["rtt_p50_us"] is None and rec["rtt_jitter_us"] is None
    assert rec["reflected"] == rec["lost"] == 0 and rec["loss_percent"] == 0.0
    s = RttStats().summary(sent=5)
    assert s["lost"] == s["unattributed_lost"] == 5


def test_error_estimate_encoding():
    assert clock_error.encode(16.0, False) == 0x1D80      # 128 * 2^(29-32) s
    assert clock_error.encode(1e-9, True) == 0x8005       # 5 * 2^-32 s >= 1 ns
    for err in (1e-9, 3.3e-6, 0.0125, 16.0, 1e6):
        for synced in (False, True):
            v = clock_error.encode(err, synced)
            got, s = clock_error.decode(v)
            assert s is synced and err <= got < err * 1.01 + 2**-32
            assert v & 0x4000 == 0 and v & 0xFF > 0             # Z = 0 (NTP); multiplier > 0
    value, synced = clock_error.decode(clock_error.estimate())
    assert value > 0 and isinstance(synced, bool)


# ---------------------------------------------------------------- loopback


class Relay:
    """UDP relay between a sender (first address heard) and `target`, dropping every
    `every`-th datagram (the one with index % every == every // 2) in one direction only."""

    def __init__(self, target, drop, every, family=socket.AF_INET):
        host = target[0]
        self.front = socket.socket(family, socket.SOCK_DGRAM)
        self.front.bind((host, 0))
        self.back = socket.socket(family, socket.SOCK_DGRAM)
        self.back.bind((host, 0))
        self.port = self.front.getsockname()[1]
        self.target, self.drop, self.every = target, drop, every
        self.counts = {"forward": 0, "backward": 0}
        self.dropped = {"forward": 0, "backward": 0}
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pass(self, direction):
        i = self.counts[direction]
        self.counts[direction] += 1
        if direction == self.drop and i % self.every == self.every // 2:
            self.dropped[direction] += 1
            return False
        return True

    def _run(self):
        peer = None
        end = time.monotonic() + 30             # bounded even if nobody stops it
        while not self.stopping and time.monotonic() < end:
            ready, _, _ = select.select([self.front, self.back], [], [], 0.05)
            for s in ready:
                data, addr = s.recvfrom(65535)
                if s is self.front:
                    peer = addr
                    if self._pass("forward"):
                        self.back.sendto(data, self.target)
                elif peer is not None and self._pass("backward"):
                    self.front.sendto(data, peer)

    def close(self):
        self.stopping = True
        self.thread.join()
        self.front.close()
        self.back.close()


def _cfg(*args):
    return config.load(["--log-level", "warning", "--output", "jsonl:/dev/null", *map(str, args)])


@pytest.mark.parametrize("wire", ["native", "stamp"])
@pytest.mark.parametrize("drop", ["forward", "backward"])
def test_loss_attributed_to_the_right_direction(wire, drop):
    count, every = 600, 10
    refl_recs, snd_recs = [], []
    refl = ReflectorLoop(_cfg("-m", "reflector", "--local-addr", "127.0.0.1:0", "--wire", wire,
                              "--interval", "0.2"), refl_recs.append)
    port = refl.sock.getsockname()[1]
    relay = Relay(("127.0.0.1", port), drop, every)
    thread = threading.Thread(target=refl.run, args=(_io.mono_ns() + 15_000_000_000,))
    thread.start()
    try:
        sender = SenderLoop(_cfg("-m", "sender", "--remote-addr", f"127.0.0.1:{relay.port}",
                                 "--wire", wire, "--rtt", "--rate", "0.5", "--count", count,
                                 "--interval", "0.1"), snd_recs.append)
        sender.run()
        sender.close()
    finally:
        time.sleep(0.1)
        refl.stop()
        thread.join()
        refl.close()
        relay.close()
    dropped = relay.dropped[drop]
    assert dropped == count // every
    summary = [r for r in snd_recs if r["type"] == "summary"][0]
    assert summary["sent"] == count
    assert summary["reflected"] == count - dropped
    assert summary["lost"] == dropped and summary["unattributed_lost"] == 0
    assert summary[f"{drop}_lost"] == dropped
    other = "backward" if drop == "forward" else "forward"
    assert summary[f"{other}_lost"] == 0
    for key in ("forward_late", "backward_late", "forward_duplicates", "backward_duplicates"):
        assert summary[key] == 0
    assert 0 < summary["rtt_min_us"] <= summary["rtt_p50_us"] <= summary["rtt_max_us"]
    assert summary["rtt_p50_us"] < 50_000
    intervals = [r for r in snd_recs if r["type"] == "sender"]
    assert sum(r["forward_lost"] for r in intervals) == summary["forward_lost"]
    assert sum(r["backward_lost"] for r in intervals) == summary["backward_lost"]
    assert sum(r["reflected"] for r in intervals) == summary["reflected"]
    # the reflector sees exactly the forward loss, and answered everything it received
    rsum = [r for r in refl_recs if r["type"] == "summary"]
    assert len(rsum) == 1
    assert rsum[0]["received"] == count - (dropped if drop == "forward" else 0)
    assert rsum[0]["lost"] == (dropped if drop == "forward" else 0)
    assert refl.reflected == rsum[0]["received"]
    assert sum(r.get("reflected", 0) for r in refl_recs if r["type"] == "receiver") == \
        refl.reflected


def test_native_rtt_packets_are_symmetric():
    """--rtt makes native packets REFLECTED_HEADER bytes, so replies are not longer."""
    snd = SenderLoop(_cfg("-m", "sender", "--remote-addr", "127.0.0.1:9", "--rtt"), lambda r: 0)
    keyed = SenderLoop(_cfg("-m", "sender", "--remote-addr", "127.0.0.1:9", "--rtt",
                            "--key", "k"), lambda r: 0)
    try:
        assert snd.tx.size == _io.REFLECTED_HEADER
        assert keyed.tx.size == _io.REFLECTED_HEADER + _io.TAG
    finally:
        snd.close()
        keyed.close()


def test_keyed_reflection():
    """With --key on both sides the reflector re-signs replies and the sender accepts them."""
    recs = []
    refl = ReflectorLoop(_cfg("-m", "reflector", "--local-addr", "127.0.0.1:0", "--key", "s3"),
                         lambda r: 0)
    port = refl.sock.getsockname()[1]
    thread = threading.Thread(target=refl.run, args=(_io.mono_ns() + 10_000_000_000,))
    thread.start()
    try:
        snd = SenderLoop(_cfg("-m", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rtt",
                              "--key", "s3", "--rate", "1", "--count", 50), recs.append)
        snd.run()
        snd.close()
    finally:
        refl.stop()
        thread.join()
        refl.close()
    summary = recs[-1]
    assert summary["type"] == "summary" and summary["reflected"] == 50 and summary["lost"] == 0


def test_config_stamp_port_and_rtt_legacy():
    cfg = config.load(["-m", "reflector", "--wire", "stamp"])
    assert cfg.local.port == 862 and cfg.local.sockaddr[1] == 862 and cfg.remote.port == 862
    cfg = config.load(["-m", "sender", "--wire", "stamp", "--remote-addr", "127.0.0.1:9000"])
    assert cfg.remote.port == 9000 and cfg.local.port == 862
    cfg = config.load(["-m", "sender", "--wire", "stamp"],
                      env={"PACKET_FLOW_REMOTE_ADDR": "127.0.0.1:8000"})
    assert cfg.remote.port == 8000                    # given in the environment: kept
    assert config.load(["-m", "sender"]).remote.port == 8000
    with pytest.raises(config.ConfigError, match="--rtt"):
        config.load(["-m", "sender", "--wire", "legacy", "--rtt"])


# ---------------------------------------------------------------- the CLI end to end


@pytest.mark.parametrize("wire", ["native", "stamp"])
def test_cli_reflector_and_rtt_sender(tmp_path, wire):
    port = free_port()
    rout, sout = tmp_path / "reflector.jsonl", tmp_path / "sender.jsonl"
    refl = pf("--mode", "reflector", "--local-addr", f"127.0.0.1:{port}", "--wire", wire,
               "--duration", 20, "--output", f"jsonl:{rout}")
    try:
        wait_bound(port)
        snd = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--wire", wire,
                  "--rtt", "--rate", 2, "--count", 300, "--interval", 0.2,
                  "--output", f"jsonl:{sout}")
        _, err = snd.communicate(timeout=20)
        assert snd.returncode == 0, err
    finally:       # the sender has its replies: the reflector is stopped as Ctrl-C does
        if refl.poll() is None:
            refl.send_signal(signal.SIGINT)
        _, err = refl.communicate(timeout=20)
    assert refl.returncode == 0, err
    srecs = [json.loads(line) for line in sout.read_text().splitlines()]
    summary = [r for r in srecs if r["type"] == "summary"]
    assert len(summary) == 1 and summary[0]["role"] == "sender"
    s = summary[0]
    assert s["sent"] == s["reflected"] == 300 and s["lost"] == 0 and s["wire"] == wire
    fields = ("rtt_min_us", "rtt_mean_us", "rtt_p50_us", "rtt_p90_us", "rtt_p99_us",
              "rtt_p999_us", "rtt_max_us", "rtt_jitter_us", "reflected", "forward_lost",
              "backward_lost", "lost", "forward_late", "backward_late", "forward_duplicates",
              "backward_duplicates", "loss_percent")
    for rec in [r for r in srecs if r["type"] == "sender"] + summary:
        assert set(fields) <= set(rec)
    assert s["rtt_min_us"] > 0 and s["rtt_p50_us"] < 50_000
    rrecs = [json.loads(line) for line in rout.read_text().splitlines()]
    rsum = [r for r in rrecs if r["type"] == "summary"]
    assert len(rsum) == 1 and rsum[0]["received"] == 300 and rsum[0]["wire"] == wire
    assert rsum[0]["source"] == s["source"]
    assert sum(r["reflected"] for r in rrecs if r["type"] == "receiver") == 300


@pytest.mark.parametrize("gso", [True, False])
def test_burst_reflections_keep_datagram_boundaries(gso):
    """A burst fills recvmmsg batches; with UDP GSO the replies of a batch leave coalesced,
    and still arrive as one datagram per test packet, in order, with their own lengths."""
    refl = ReflectorLoop(_cfg("-m", "reflector", "--local-addr", "127.0.0.1:0", "--batch", 64),
                         lambda r: 0)
    if not gso:
        refl.rx.reflect_gso = False
    port = refl.sock.getsockname()[1]
    sock, _ = sockets.receive_socket(("127.0.0.1", 0), socket.AF_INET, 8 << 20, gro=False)
    dest = sockets.dest_tuple(("127.0.0.1", port), socket.AF_INET)
    small = _io.Sender(sock.fileno(), dest, session=5, size=_io.REFLECTED_HEADER, batch=256)
    big = _io.Sender(sock.fileno(), dest, session=6, size=300, batch=256)
    back = _io.Receiver(sock.fileno(), capacity=1 << 12)
    try:
        for _ in range(4):                      # interleave sizes and flows inside batches
            small.send(100)
            big.send(25)
        refl.rx.pump(_io.mono_ns() + 300_000_000, 500)
        got = []
        end = _io.mono_ns() + 2_000_000_000
        while sum(map(len, got)) < 500 and _io.mono_ns() < end:
            back.pump(min(end, _io.mono_ns() + 20_000_000))
            got.append(back.drain())
    finally:
        refl.close()
        sock.close()
    recs = np.concatenate(got)
    assert len(recs) == 500 and refl.reflected == 500
    assert ((recs["flags"] & _io.FLAG_REFLECTED) != 0).all()
    for session, size, n in ((5, _io.REFLECTED_HEADER, 400), (6, 300, 100)):
        mine = recs[recs["session"] == session]
        assert len(mine) == n and (mine["length"] == size).all()
        assert (mine["seq"] == np.arange(n)).all() and (mine["r_seq"] == np.arange(n)).all()
        assert (mine["t2_ns"] <= mine["t3_ns"]).all()
