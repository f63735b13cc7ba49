"""Golden bytes: the reference codec and the Cython core against fixed byte strings and
against each other."""

import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packet_flow import _io, wire
from packet_flow.errors import WireError

NATIVE = bytes.fromhex(
    "50460100" "00000000"              # magic, version 1, flags 0, reserved
    "8877665544332211"                 # session 0x1122334455667788
    "0500000000000000"                 # sequence 5
    "15cd853dfe9c9717")                # 1700000000123456789 ns
LEGACY = bytes.fromhex("2a00000000000000" "40e2010000000000" "01")   # seq 42, 123456 µs, final
STAMP = bytes.fromhex("00000007" "e8b05a80" "80000000" "0001" "0000") + bytes(28)


def test_native_golden():
    assert wire.encode_native(0x1122334455667788, 5, 1_700_000_000_123_456_789) == NATIVE
    pkt = wire.decode(NATIVE)
    assert (pkt.wire, pkt.session, pkt.seq, pkt.tx_ns, pkt.final) == (
        "native", 0x1122334455667788, 5, 1_700_000_000_123_456_789, False)


def test_legacy_golden():
    assert wire.encode_legacy(42, 123456, final=True) == LEGACY
    pkt = wire.decode(LEGACY)
    assert (pkt.wire, pkt.seq, pkt.tx_ns, pkt.final) == ("legacy", 42, 123_456_000, True)


def test_stamp_golden():
    # 2023-11-14T22:13:20.5Z = NTP seconds 0xe8b05a80 (3908722560), fraction 0x80000000
    ns = (0xE8B05A80 - wire.NTP_OFFSET) * 1_000_000_000 + 500_000_000
    assert wire.encode_stamp(7, ns) == STAMP
    assert wire.decode(STAMP, stamp="sender").tx_ns == ns


def test_auth_tag_golden():
    pkt = wire.encode_native(1, 2, 3, key=b"secret", size=64)
    assert len(pkt) == 64 and pkt[3] == wire.FLAG_AUTH
    assert pkt[-16:] == wire.tag(b"secret", pkt[:-16])
    assert wire.decode(pkt, key=b"secret").seq == 2
    with pytest.raises(WireError, match="bad_tag"):
        wire.decode(pkt, key=b"other")
    with pytest.raises(WireError, match="no_tag"):
        wire.decode(wire.encode_native(1, 2, 3), key=b"secret")


@pytest.mark.parametrize("data,reason", [
    (b"", "short"), (b"PF\x01", "short"), (b"x" * 40, "magic"),
    (b"PF\x02\x00" + bytes(28), "version"), (b"PF\x01\x00" + bytes(20), "truncated"),
    (b"PF\x01\x02" + bytes(36), "truncated"), (bytes(16) + b"\x07", "legacy"),
])
def test_reference_reasons(data, reason):
    with pytest.raises(WireError, match=reason):
        wire.decode(data)


def _sent_bytes(link, **kw):
    """What the Cython Sender puts on the wire, read with a plain socket."""
    lk = link(gro=False)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    plain.settimeout(2)
    from packet_flow import sockets
    sender = _io.Sender(lk.ssock.fileno(), sockets.dest_tuple(plain.getsockname(), socket.AF_INET),
                        **kw)
    sender.send(3)
    out = [plain.recv(70000) for _ in range(3)]
    plain.close()
    return out


def test_cython_sender_matches_reference(link):
    for data in _sent_bytes(link, session=0xABCDEF, size=80, key=b"k"):
        pkt = wire.decode(data, key=b"k")
        assert data == wire.encode_native(0xABCDEF, pkt.seq, pkt.tx_ns, size=80, key=b"k")
    legacy = _sent_bytes(link, wire=_io.K_LEGACY)
    assert [wire.decode(d).seq for d in legacy] == [0, 1, 2]
    assert all(len(d) == 17 and d[16] == 0 for d in legacy)
    now = _io.wall_ns()
    for i, d in enumerate(_sent_bytes(link, wire=_io.K_STAMP, session=0x1234)):
        pkt = wire.decode(d, stamp="sender")
        assert len(d) == 44 and pkt.seq == i and pkt.session == 0x1234
        assert d[12:14] == b"\x00\x01" and d[16:] == bytes(28)
        assert abs(pkt.tx_ns - now) < 1e9


@settings(max_examples=60, deadline=None)
@given(session=st.integers(0, 2**64 - 1), seq=st.integers(0, 2**64 - 1),
       tx=st.integers(0, 2**63 - 1), size=st.integers(0, 300), final=st.booleans())
def test_cython_receiver_matches_reference(session, seq, tx, size, final):
    from link import Link
    lk = Link(gro=False)
    try:
        data = wire.encode_native(session, seq, tx, flags=int(final), size=size)
        lk.ssock.sendto(data, lk.addr)
        lk.ssock.sendto(wire.encode_legacy(seq, tx // 1000, final), lk.addr)
        recs = lk.collect(2)
        assert len(recs) == 2
        ref = wire.decode(data)
        assert int(recs[0]["session"]) == ref.session and int(recs[0]["seq"]) == ref.seq
        assert int(recs[0]["tx_ns"]) == ref.tx_ns and int(recs[0]["flags"]) == ref.flags
        assert int(recs[0]["length"]) == len(data)
        assert int(recs[1]["kind"]) == _io.K_LEGACY and int(recs[1]["seq"]) == seq
        assert int(recs[1]["tx_ns"]) == (tx // 1000) * 1000 and int(recs[1]["flags"]) == final
    finally:
        lk.close()


def test_cython_reasons_match_reference(link):
    lk = link(gro=False)
    cases = [b"", b"PF\x01", b"x" * 40, b"PF\x02\x00" + bytes(28), b"PF\x01\x00" + bytes(20),
             b"PF\x01\x02" + bytes(36), bytes(16) + b"\x07"]
    for data in cases:
        lk.ssock.sendto(data, lk.addr)
    recs = lk.collect(len(cases))
    got = [_io.REASONS[r] for r in recs["reason"]]
    want = []
    for data in cases:
        with pytest.raises(WireError) as info:
            wire.decode(data)
        want.append(str(info.value))
    assert got == want
    assert np.all(recs["kind"] == _io.K_MALFORMED)
