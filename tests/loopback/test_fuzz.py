"""Hostile and broken input.

1. Differential fuzzing (hypothesis): arbitrary and mutated datagrams go through a real
   loopback socket into the Cython Receiver and through the pure-Python reference codec
   (packet_flow.wire.decode); both must agree on every datagram: valid or malformed, the
   reason, and every parsed field. With and without a key.
2. A live receiver (the CLI, in its own process) takes well over 1M datagrams: random bytes,
   mutated valid headers, valid headers with garbage after them, 0-length, maximum-size
   (65507) and legacy-size (17 bytes) junk. It must not crash, must count every datagram
   (kernel drops + datagrams == sent; malformed by reason exactly as the reference codec
   classifies what was sent), and its RSS must stay flat once its fixed receive ring has
   been written through once. The sender paces itself on the socket's receive queue
   (/proc/PID/net/udp), so the kernel drops nothing.
"""

import collections
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from link import Link
from probe import udp_queue

from packet_flow import _io, defaults, wire
from packet_flow.errors import WireError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = b"fuzz-key"
MAX_UDP = 65507
SPRAY = 2000                                   # session ids in the spray test
SESSIONS = (0x1111111111111111, 0x2222222222222222, 0x3333333333333333, 0x4444444444444444)


# ---------------------------------------------------------------- 1. differential


def _header(session, seq, tx, flags, size, key):
    return wire.encode_native(session, seq, tx, flags=flags, size=size, key=key)


@st.composite
def datagram(draw):
    """Bytes that reach every branch of the parser: valid packets, mutations, junk."""
    kind = draw(st.sampled_from(["random", "native", "mutated", "tail", "legacy", "short"]))
    if kind == "random":
        return draw(st.binary(max_size=120))
    if kind == "legacy":
        return draw(st.binary(min_size=17, max_size=17))
    if kind == "short":
        return b"PF" + draw(st.binary(max_size=58))
    key = draw(st.sampled_from([None, KEY, b"other-key"]))
    flags = draw(st.integers(0, 255)) if kind == "mutated" else draw(st.sampled_from([0, 1, 4, 5]))
    reflect = (draw(st.integers(0, 2**64 - 1)), draw(st.integers(-2**63, 2**63 - 1)),
               draw(st.integers(-2**63, 2**63 - 1))) if flags & 4 else None
    data = bytearray(wire.encode_native(
        draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(-2**63, 2**63 - 1)), flags=flags & ~2,
        size=draw(st.integers(0, 200)), key=key, reflect=reflect))
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = data[:draw(st.integers(0, len(data)))]
    elif kind == "tail":
        data += draw(st.binary(min_size=1, max_size=100))
    return bytes(data)


def _expect(data, key):
    """(kind, reason, session, seq, tx_ns, flags, r_seq, t2, t3) by the reference codec."""
    try:
        p = wire.decode(data, key=key)
    except WireError as e:
        return (_io.K_MALFORMED, str(e), 0, 0, 0, None, 0, 0, 0)
    tx = (p.tx_ns + 2**63) % 2**64 - 2**63       # the core's int64 arithmetic wraps
    flags = data[16] if p.wire == "legacy" else p.flags
    return (_io.KINDS.index(p.wire), "ok", p.session, p.seq, tx, flags, p.r_seq, p.t2_ns, p.t3_ns)


def _got(r):
    flags = int(r["flags"]) if int(r["kind"]) != _io.K_MALFORMED else None
    return (int(r["kind"]), _io.REASONS[int(r["reason"])], int(r["session"]), int(r["seq"]),
            int(r["tx_ns"]), flags, int(r["r_seq"]), int(r["t2_ns"]), int(r["t3_ns"]))


@pytest.fixture(scope="module")
def links():
    made = {key: Link(gro=False, key=key) for key in (None, KEY)}
    yield made
    for lk in made.values():
        lk.close()


@pytest.mark.parametrize("key", [None, KEY], ids=["nokey", "key"])
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(datagram(), min_size=1, max_size=40))
def test_receiver_agrees_with_reference_codec(links, key, batch):
    lk = links[key]
    for data in batch:
        lk.ssock.sendto(data, lk.addr)
    recs = lk.collect(len(batch))
    assert len(recs) == len(batch)
    assert [int(n) for n in recs["length"]] == [len(d) for d in batch]
    for data, rec in zip(batch, recs, strict=True):
        assert _got(rec) == _expect(data, key), data.hex()


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200), key=st.sampled_from([None, KEY]),
       stamp=st.sampled_from([None, "sender", "reflected"]))
def test_reference_decode_raises_only_wire_error(data, key, stamp):
    try:
        wire.decode(data, key=key, stamp=stamp)
    except WireError as e:
        assert str(e) in _io.REASONS[1:]


# ---------------------------------------------------------------- 2. live receiver


def _rss_kb(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Junk:
    """Deterministic generator of hostile datagrams from one seeded numpy stream."""

    CYCLE = ("random", "mutated", "tail", "legacy", "empty", "random", "mutated", "tail",
             "truncated", "legacy")

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.bytes(1 << 22)
        self.pos = 0
        self.seq = collections.Counter()

    def bytes(self, n):
        if self.pos + n > len(self.pool):
            self.pos = 0
        self.pos += n
        return self.pool[self.pos - n:self.pos]

    def chunk(self, n, big_every):
        """n datagrams; every big_every-th is maximum-size."""
        r = self.rng.integers(0, 1 << 30, size=(n, 4)).tolist()
        out = []
        for i, (a, b, c, d) in enumerate(r):
            if big_every and i % big_every == big_every - 1:
                out.append(self.bytes(MAX_UDP))
                continue
            kind = self.CYCLE[a % len(self.CYCLE)]
            if kind == "random":
                out.append(self.bytes(b % 1472))
            elif kind == "legacy":
                out.append(self.bytes(17))
            elif kind == "empty":
                out.append(b"")
            else:
                session = SESSIONS[b % len(SESSIONS)]
                self.seq[session] += 1
                data = bytearray(wire.encode_native(session, self.seq[session], time.time_ns(),
                                                    size=32 + c % 200))
                if kind == "mutated":          # any byte but the session id
                    for k in range(1 + d % 4):
                        pos = (d >> (4 + 5 * k)) % len(data)
                        if not 8 <= pos < 16:
                            data[pos] = (c >> k) & 0xFF
                elif kind == "tail":
                    data += self.bytes(1 + c % 1400)
                else:
                    data = data[:4 + c % 28]
                out.append(bytes(data))
        return out


def _reason(data):
    try:
        wire.decode(data)
    except WireError as e:
        return str(e)
    return "ok"


@pytest.mark.slow
def test_live_receiver_million_hostile_datagrams(tmp_path):
    total = max(1_000_000, defaults.RING_CAPACITY + 500_000)
    warm = defaults.RING_CAPACITY + 200_000       # the ring has been written through once
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    out = tmp_path / "rx.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    rx = subprocess.Popen(
        [sys.executable, "-m", "packet_flow", "--mode", "receiver", "--log-level", "warning",
         "--local-addr", f"127.0.0.1:{port}", "--rcvbuf", str(256 << 20), "--interval",
         "3600", "--duration", "300", "--output", f"jsonl:{out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk, want, sent, rss = Junk(20261124), collections.Counter(), 0, []
    try:
        end = time.monotonic() + 10
        while udp_queue(rx.pid, port) is None:
            assert rx.poll() is None and time.monotonic() < end, rx.stderr.read()
            time.sleep(0.02)
        deadline = time.monotonic() + 240
        while sent < total:
            assert time.monotonic() < deadline, f"only {sent} sent"
            assert rx.poll() is None, rx.stderr.read()
            batch = junk.chunk(min(5000, total - sent), big_every=500)
            want.update(map(_reason, batch))
            for data in batch:
                tx.sendto(data, ("127.0.0.1", port))
            sent += len(batch)
            while udp_queue(rx.pid, port)[0] > 64 << 20:    # pace: keep the queue short
                time.sleep(0.005)
            if sent % 50_000 == 0:
                rss.append((sent, _rss_kb(rx.pid)))
        while udp_queue(rx.pid, port)[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        rss.append((sent, _rss_kb(rx.pid)))
        queue, drops = udp_queue(rx.pid, port)
        rx.send_signal(signal.SIGTERM)
        _, err = rx.communicate(timeout=30)
        assert rx.returncode == 0, err
    finally:
        tx.close()
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    with open(out, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    (last,) = [r for r in recs if r["type"] == "receiver"]     # one interval: the whole run
    assert queue == 0 and drops == 0 and last["kernel_drops"] == 0
    assert last["overwritten"] == 0
    assert last["datagrams"] == sent
    assert last["malformed"] == {k: want.get(k, 0) for k in _io.REASONS[1:]}
    valid = sent - sum(last["malformed"].values())
    assert valid == want["ok"] > 100_000
    assert set(want) >= {"ok", "short", "magic", "version", "truncated", "legacy"}
    flows = [r for r in recs if r["type"] == "summary"]
    assert flows and sum(r["malformed"] for r in flows) + last["unattributed_malformed"] == \
        sum(last["malformed"].values())
    print(f"live fuzz: {sent} datagrams, reasons {dict(want)}, RSS kB by datagrams sent {rss}")
    # flat: after the receive ring was written through once, no growth with more input
    after = [kb for n, kb in rss if n >= warm]
    assert len(after) >= 4, rss
    assert max(after) - after[0] <= 8 * 1024, rss
    assert max(kb for _, kb in rss) <= 400 * 1024, rss


def test_session_spray_memory_is_bounded(tmp_path):
    """2000 valid packets from one socket, each with its own session id, open 2000 flows; a
    hostile sender must not buy much receiver memory per datagram (a flow's sequence window
    starts small: this was 1 MiB per flow, 313 MB for 300 datagrams, before it grew on
    demand). Flows are not capped: they go only after --forget-timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    rx = subprocess.Popen(
        [sys.executable, "-m", "packet_flow", "--mode", "receiver", "--log-level", "error",
         "--local-addr", f"127.0.0.1:{port}", "--duration", "30", "--output",
         f"jsonl:{tmp_path / 'rx.jsonl'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        end = time.monotonic() + 10
        while udp_queue(rx.pid, port) is None:
            assert rx.poll() is None and time.monotonic() < end
            time.sleep(0.02)
        time.sleep(0.3)
        before = _rss_kb(rx.pid)
        for session in range(1, SPRAY + 1):
            tx.sendto(wire.encode_native(session * 0x9E3779B97F4A7C15 % 2**64, 0,
                                         time.time_ns()), ("127.0.0.1", port))
        time.sleep(1.0)
        grown = _rss_kb(rx.pid) - before
    finally:
        tx.close()
        rx.send_signal(signal.SIGTERM)
        rx.communicate(timeout=30)
    with open(tmp_path / "rx.jsonl", encoding="utf-8") as f:
        flows = [r for r in map(json.loads, f) if r["type"] == "summary"]
    assert len(flows) == SPRAY        # every datagram opened its own flow
    print(f"session spray: RSS grew {grown} kB for {SPRAY} datagrams")
    assert grown < SPRAY * 32, f"RSS grew {grown} kB for {SPRAY} datagrams"


def test_reasons_cover_the_categories():
    """The generator really produces every category the live test claims to send."""
    junk = Junk(1)
    batch = junk.chunk(2000, big_every=500)
    reasons = collections.Counter(map(_reason, batch))
    assert set(reasons) >= {"ok", "short", "magic", "version", "truncated", "legacy"}
    sizes = collections.Counter(len(d) for d in batch)
    assert sizes[0] > 0 and sizes[17] > 0 and sizes[MAX_UDP] == 4
    ok = [d for d in batch if _reason(d) == "ok" and len(d) >= 32]
    assert ok and {struct.unpack_from("<Q", d, 8)[0] for d in ok} <= set(SESSIONS)
