"""Packet authentication (HMAC-SHA-256, 16-byte truncated tag) end to end.

- The C HMAC in the extension agrees with Python's hmac for any key length (including keys
  longer than the 64-byte block) and any packet size (SHA-256 padding boundaries).
- A keyed receiver accepts keyed senders whichever way the key was given (--key,
  PACKET_FLOW_KEY, --key-file), and rejects and counts missing (`no_tag`) and wrong
  (`bad_tag`) tags; forged packets never reach a flow's statistics, even when they come
  from the genuine flow's own socket with its session id.
- The tag covers the session id and the sequence number: a replayed packet (same bytes,
  same source) is a duplicate, never new data; an edited sequence number breaks the tag.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from link import Link
from probe import bound

from packet_flow import _io, sockets, wire
from packet_flow.errors import WireError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = b"s3cret"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pf(*args, env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    full.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "packet_flow", "--log-level", "warning",
                             *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full, cwd=ROOT)


def _finish(proc, timeout=60):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err


def _records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class KeyedReceiver:
    """The CLI receiver with a key, one record interval for the whole run (so its
    `receiver` record holds the run's totals); stop() ends it with SIGTERM."""

    def __init__(self, tmp_path, *key_args, env=None):
        self.port, self.out = _free_port(), tmp_path / f"rx-{os.getpid()}-{time.time_ns()}.jsonl"
        self.proc = _pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{self.port}",
                        "--interval", 3600, "--duration", 60, "--output",
                        f"jsonl:{self.out}", *key_args, env=env)
        end = time.monotonic() + 10
        while not self._bound():
            assert self.proc.poll() is None and time.monotonic() < end, self.proc.stderr.read()
            time.sleep(0.02)

    def _bound(self):
        return bound(self.port)     # from /proc: a probe bind would race the receiver

    def stop(self):
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGTERM)
        _finish(self.proc, 20)
        recs = _records(self.out)
        flows = [r for r in recs if r["type"] == "summary"]
        (totals,) = [r for r in recs if r["type"] == "receiver"]
        return flows, totals

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def keyed_receiver(tmp_path):
    made = []

    def make(*args, env=None):
        made.append(KeyedReceiver(tmp_path, *args, env=env))
        return made[-1]

    yield make
    for rx in made:
        rx.kill()


def _reasons(**counts):
    return {name: counts.get(name, 0) for name in _io.REASONS[1:]}


# ---------------------------------------------------------------- the C HMAC itself


@settings(max_examples=60, deadline=None)
@given(key=st.binary(min_size=1, max_size=200), size=st.integers(48, 600))
def test_extension_tag_matches_python_hmac(key, size):
    lk = Link(gro=False, key=key)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        plain.bind(("127.0.0.1", 0))
        plain.settimeout(2)
        tx = _io.Sender(lk.ssock.fileno(), sockets.dest_tuple(plain.getsockname(),
                                                               socket.AF_INET),
                        session=77, size=size, key=key)
        tx.send(2)
        for _ in range(2):
            data = plain.recv(70000)
            pkt = wire.decode(data, key=key)          # Python hmac verifies the C tag
            assert data == wire.encode_native(77, pkt.seq, pkt.tx_ns, size=size, key=key)
        # and the C verifier accepts Python's tags, rejects a flipped bit anywhere
        good = wire.encode_native(5, 6, 7, size=size, key=key)
        bad = bytearray(good)
        bad[size // 2] ^= 1
        lk.ssock.sendto(good, lk.addr)
        lk.ssock.sendto(bytes(bad), lk.addr)
        recs = lk.collect(2)
        assert [int(k) for k in recs["kind"]] == [_io.K_NATIVE, _io.K_MALFORMED]
        assert _io.REASONS[int(recs["reason"][1])] == "bad_tag"
    finally:
        plain.close()
        lk.close()


# ---------------------------------------------------------------- the CLI end to end


def test_key_sources_interoperate_and_bad_keys_are_rejected(tmp_path, keyed_receiver):
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")                  # a trailing newline is not key
    rx = keyed_receiver("--key-file", key_file)
    dest = f"127.0.0.1:{rx.port}"
    runs = {
        "env": (_pf("--mode", "sender", "--remote-addr", dest, "--rate", 0.2, "--count", 2000,
                    "--output", f"jsonl:{tmp_path / 'env.jsonl'}",
                    env={"PACKET_FLOW_KEY": KEY.decode()}), 2000),
        "cli": (_pf("--mode", "sender", "--remote-addr", dest, "--rate", 0.2, "--count", 1000,
                    "--key", KEY.decode(), "--output", f"jsonl:{tmp_path / 'cli.jsonl'}"), 1000),
        "wrong": (_pf("--mode", "sender", "--remote-addr", dest, "--rate", 0.2, "--count", 500,
                      "--key", "not-the-key", "--output", "jsonl:/dev/null"), 500),
        "none": (_pf("--mode", "sender", "--remote-addr", dest, "--rate", 0.2, "--count", 300,
                     "--output", "jsonl:/dev/null"), 300),
    }
    for proc, _count in runs.values():
        _finish(proc)
    summaries, totals = rx.stop()
    flows = {f["session"]: f for f in summaries}
    assert len(flows) == len(summaries)
    sessions = {name: _records(tmp_path / f"{name}.jsonl")[-1]["session"]
                for name in ("env", "cli")}
    assert set(flows) == set(sessions.values())           # rejected senders open no flow
    for name, session in sessions.items():
        f = flows[session]
        assert (f["received"], f["lost"], f["late"], f["duplicates"], f["malformed"]) == (
            runs[name][1], 0, 0, 0, 0)
        assert f["closed"] is True
    assert totals["malformed"] == _reasons(bad_tag=500, no_tag=300)
    assert totals["datagrams"] == 3800
    assert totals["unattributed_malformed"] == 800


def test_forged_packets_never_reach_the_statistics(keyed_receiver):
    rx = keyed_receiver("--key", KEY.decode())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    session, n = 0x5EC0FFEE5EC0FFEE, 1000
    forged = {"no_tag": 0, "bad_tag": 0, "truncated": 0}
    try:
        def send(data):
            sock.sendto(data, ("127.0.0.1", rx.port))

        send(wire.encode_native(session, 0, time.time_ns(), key=KEY))
        time.sleep(0.3)                    # the flow exists: forged packets are attributed
        for seq in range(1, n):
            genuine = wire.encode_native(session, seq, time.time_ns(), size=64, key=KEY)
            send(genuine)
            if seq % 10:
                continue
            # every kind of forgery carries send time 0: if one slipped into the statistics
            # its one-way delay (56 years) would show in owd_max_us
            send(wire.encode_native(session, seq + 500, 0, size=64))             # unsigned
            send(wire.encode_native(session, seq + 500, 0, size=64, key=b"guess"))
            edited = bytearray(genuine)
            edited[16:24] = (seq + 300).to_bytes(8, "little")                     # new seq
            send(bytes(edited))
            edited = bytearray(genuine)
            edited[8] ^= 0xFF                                                      # session
            send(bytes(edited))
            send(genuine[:-1])                                                     # tag cut
            send(genuine[:40])                                  # AUTH flag, no room for tag
            forged["no_tag"] += 1
            forged["bad_tag"] += 4
            forged["truncated"] += 1
        send(wire.encode_native(session, n, time.time_ns(), flags=wire.FLAG_FINAL, key=KEY))
    finally:
        sock.close()
    flows, totals = rx.stop()
    assert len(flows) == 1
    (f,) = flows
    assert f["session"] == f"{session:016x}"
    assert (f["received"], f["lost"], f["late"], f["duplicates"]) == (n + 1, 0, 0, 0)
    assert f["loss_bursts"] == 0 and f["closed"] is True
    assert f["owd_max_us"] < 1e6 and f["negative_owd"] == 0
    assert f["malformed"] == sum(forged.values())
    assert totals["malformed"] == _reasons(**forged)


def test_replayed_packet_is_a_duplicate(keyed_receiver):
    rx = keyed_receiver("--key", KEY.decode())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    session, n = 0xABAD1DEA, 500
    sent = {}
    try:
        for seq in range(n):
            sent[seq] = wire.encode_native(session, seq, time.time_ns(), key=KEY)
            sock.sendto(sent[seq], ("127.0.0.1", rx.port))
            if seq in (100, 300, 499):             # replay captured packets, old and recent
                for old in (10, seq - 1, seq):
                    sock.sendto(sent[old], ("127.0.0.1", rx.port))
            time.sleep(0.0002)
        # a replay from another port of the host: the session's flow (a NAT may rebind the
        # sender's port) counts a duplicate, and an old packet cannot move the flow's source
        other.sendto(sent[250], ("127.0.0.1", rx.port))
        time.sleep(0.2)
        sock.sendto(wire.encode_native(session, n, time.time_ns(), flags=wire.FLAG_FINAL,
                                       key=KEY), ("127.0.0.1", rx.port))
        source = f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
        other.close()
    flows, totals = rx.stop()
    genuine = [f for f in flows if f["received"] > 1]
    assert len(genuine) == 1
    f = genuine[0]
    assert (f["received"], f["lost"], f["late"], f["duplicates"]) == (n + 1, 0, 0, 10)
    assert f["source"] == source
    assert totals["malformed"] == _reasons()


def test_keyed_receiver_rejects_unauthenticated_legacy_packets(link):
    lk = link(gro=False, key=KEY)
    lk.ssock.sendto(wire.encode_legacy(1, time.time_ns() // 1000), lk.addr)
    (rec,) = lk.collect(1)
    assert int(rec["kind"]) == _io.K_MALFORMED and _io.REASONS[int(rec["reason"])] == "no_tag"
    with pytest.raises(WireError):
        wire.decode(wire.encode_legacy(1, 2), key=KEY)
