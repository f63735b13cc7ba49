"""The Cython batch I/O core on real loopback sockets: exact counts, IPv4 and IPv6, GSO/GRO,
malformed input, ring overflow accounting, errors, precise waiting."""

import errno
import os
import resource
import socket

import numpy as np
import pytest
from link import HAS_IPV6

from packet_flow import _io, sockets, wire

N = 100_000


def _blast(lk, sender, n):
    """Send n packets in bounded batches, draining as we go; returns all records."""
    parts, sent = [], 0
    while sent < n:
        sent += sender.send(min(sender.per_call, n - sent))
        lk.rx.pump(_io.mono_ns())
        parts.append(lk.rx.drain())
    got = sum(len(p) for p in parts)
    parts.append(lk.collect(n - got))
    return np.concatenate(parts)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("segments", [1, 64])
def test_loopback_round_trip_exact(link, family, segments):
    if family == socket.AF_INET6 and not HAS_IPV6:
        pytest.skip("no IPv6 loopback on this machine")
    lk = link(family=family)
    sender = lk.sender(session=0xFEED, size=64, batch=64, segments=segments)
    recs = _blast(lk, sender, N)
    assert len(recs) == N and sender.sent == N
    assert np.all(recs["kind"] == _io.K_NATIVE) and np.all(recs["length"] == 64)
    assert np.array_equal(np.sort(recs["seq"]), np.arange(N, dtype=np.uint64))
    assert np.all(recs["session"] == 0xFEED)
    assert len(np.unique(recs["flow"])) == 1
    assert np.all(recs["family"] == (6 if family == socket.AF_INET6 else 4))
    port = lk.ssock.getsockname()[1]
    assert np.all(recs["port"] == port)
    owd = recs["rx_ns"] - recs["tx_ns"]
    assert owd.min() >= 0 and np.median(owd) < 5_000_000     # kernel stamps after our stamps
    assert lk.rx.overwritten == 0 and lk.rx.kernel_drops == 0
    assert sum(lk.rx.malformed.values()) == 0


def test_gro_splits_coalesced_datagrams(link):
    lk = link()
    if not lk.gro or not sockets.gso_supported(lk.ssock):
        pytest.skip("kernel without UDP GSO/GRO")
    sender = lk.sender(size=100, segments=32, batch=2)
    sender.send(64)
    recs = lk.collect(64)
    assert list(recs["seq"]) == list(range(64))
    assert np.all(recs["length"] == 100)


def test_ipv4_source_address_recorded(link):
    lk = link()
    lk.ssock.sendto(wire.encode_native(1, 0, 0), lk.addr)
    rec = lk.collect(1)[0]
    assert bytes(rec["addr"]) == bytes(10) + b"\xff\xff" + socket.inet_aton("127.0.0.1")


def test_kernel_timestamp_used(link):
    lk = link()
    before = _io.wall_ns()
    lk.ssock.sendto(wire.encode_native(1, 0, before), lk.addr)
    rec = lk.collect(1)[0]
    assert before <= rec["rx_ns"] <= _io.wall_ns()


def test_malformed_counted_by_reason_never_raises(link):
    lk = link(gro=False)
    junk = [b"", b"\x00", b"garbage" * 10, b"PF\x09" + bytes(40), b"PF\x01\x00" + bytes(8),
            bytes(16) + b"\x05", os.urandom(65507)]
    for data in junk:
        lk.ssock.sendto(data, lk.addr)
    lk.ssock.sendto(wire.encode_native(3, 9, 1), lk.addr)
    recs = lk.collect(len(junk) + 1)
    assert len(recs) == len(junk) + 1
    assert lk.rx.malformed == {"short": 2, "magic": 2, "version": 1, "truncated": 1,
                               "legacy": 1, "no_tag": 0, "bad_tag": 0, "short_probe": 0}
    assert int(recs[-1]["kind"]) == _io.K_NATIVE and int(recs[-1]["seq"]) == 9
    assert lk.rx.datagrams == len(junk) + 1


def test_authentication_in_the_core(link):
    lk = link(gro=False, key=b"k1")
    lk.ssock.sendto(wire.encode_native(1, 0, 0, key=b"k1"), lk.addr)
    lk.ssock.sendto(wire.encode_native(1, 1, 0, key=b"k2"), lk.addr)
    lk.ssock.sendto(wire.encode_native(1, 2, 0), lk.addr)
    recs = lk.collect(3)
    assert list(recs["kind"]) == [_io.K_NATIVE, _io.K_MALFORMED, _io.K_MALFORMED]
    assert lk.rx.malformed["bad_tag"] == 1 and lk.rx.malformed["no_tag"] == 1


def test_ring_overflow_is_counted(link):
    lk = link(capacity=1024, gro=False)
    sender = lk.sender(batch=64)
    for _ in range(40):
        sender.send(64)
    got = 0
    end = _io.mono_ns() + 2_000_000_000
    while lk.rx.datagrams < 2560 and _io.mono_ns() < end:
        lk.rx.pump(_io.mono_ns() + 10_000_000)
    recs = lk.rx.drain()
    got += len(recs)
    assert lk.rx.datagrams == 2560
    assert got == 1024 and lk.rx.overwritten == 2560 - 1024
    # the newest records survive, in order
    assert list(recs["seq"]) == list(range(2560 - 1024, 2560))


def test_closed_socket_raises_oserror(link):
    lk = link()
    sender = lk.sender()
    rx = lk.rx
    lk.ssock.close()
    lk.rsock.close()
    with pytest.raises(OSError) as info:
        sender.send(1)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        rx.pump(_io.mono_ns() + 1_000_000)
    assert info.value.errno == errno.EBADF


def test_bad_socket_type_raises_oserror():
    with open(os.devnull, "wb") as f:
        rx = _io.Receiver(f.fileno())
        with pytest.raises(OSError) as info:
            rx.pump(_io.mono_ns() + 1_000_000)
    assert info.value.errno == errno.ENOTSOCK


def test_idle_pump_waits_in_poll(link):
    """An empty socket is waited for in one poll(), not in coalescing sleeps: EAGAIN is not
    "one datagram received" (the idle receiver used to wake every 0.5 ms, ~400 times here)."""
    lk = link()
    lk.rx.coalesce_ns = 500_000
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    assert lk.rx.pump(_io.mono_ns() + 200_000_000) == 0
    assert resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before <= 2


def test_sleep_until_absolute_deadline():
    _io.set_timerslack(1)
    deadline = _io.mono_ns() + 5_000_000
    late = _io.sleep_until(deadline, 50_000)
    assert late is not None and late >= 0
    assert _io.mono_ns() >= deadline


def test_schedule_grid_and_skips(link):
    lk = link()
    sender = lk.sender(batch=8)
    start = _io.mono_ns() - 10_000_000          # 10 ms behind on a 100 µs grid: 100 slots due
    sender.start(start, 100_000, 0)
    sent = sender.run(start + 10_500_000)
    # at most one batch is sent late; the rest of the backlog is skipped, not bunched
    assert sender.skipped_slots >= 90
    assert sent + sender.skipped_slots == sender.k
    assert sender.seq == sent                  # skipped slots use no sequence numbers
    lat = sender.take_lateness()
    assert len(lat) == sent
    recs = lk.collect(sent)
    assert list(recs["seq"]) == list(range(sent))
