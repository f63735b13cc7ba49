"""Names in band: golden bytes of named packets, the reference codec and the Cython receiver
agree on them, and the naming rules of records (packet_flow/names.py)."""

import types

import pytest

from packet_flow import _io, names, wire
from packet_flow.errors import WireError

NAMED = bytes.fromhex(
    "50460108060000008877665544332211050000000000000000002a36fe9c9717"
    "0000000000000000000000000000000000000000000000006e6f64652d61")
NAMED_KEYED = bytes.fromhex(
    "5046010a02000000010000000000000002000000000000000300000000000000"
    "000000000000000000000000000000000000000000000000"
    "6e31000000000000bb5b389328c51d3c1ae9c5bd14561825")


def test_golden_bytes():
    assert wire.encode_native(0x1122334455667788, 5, 1_700_000_000_000_000_000,
                              name=b"node-a") == NAMED
    assert wire.encode_native(1, 2, 3, name=b"n1", key=b"secret", size=80) == NAMED_KEYED
    # flag NAMED, length in byte 4, the name at 56, the tag over all of it
    assert NAMED[3] == _io.FLAG_NAMED and NAMED[4] == 6 and NAMED[_io.NAME_AT:] == b"node-a"
    assert wire.decode(NAMED).name == b"node-a"
    got = wire.decode(NAMED_KEYED, key=b"secret")
    assert (got.session, got.seq, got.tx_ns, got.name) == (1, 2, 3, b"n1")
    with pytest.raises(WireError, match="bad_tag"):
        wire.decode(NAMED_KEYED[:56] + b"n2" + NAMED_KEYED[58:], key=b"secret")


def test_a_name_that_does_not_fit_is_ignored():
    cut = NAMED[:-1]        # length says 6, 5 bytes left
    assert wire.decode(cut).name == b""
    rx = _io.Receiver(-1)
    rx._feed(cut)
    assert rx.take_names() == []


def test_cython_receiver_notes_each_session_once():
    rx = _io.Receiver(-1, key=b"secret")
    for seq in range(5):
        rx._feed(wire.encode_native(9, seq, 10, name=b"alpha", key=b"secret"))
    rx._feed(wire.encode_native(10, 0, 10, name=b"beta", key=b"secret"))
    rx._feed(wire.encode_native(11, 0, 10, name=b"forged", key=b"wrong"))
    assert rx.take_names() == [(9, b"alpha"), (10, b"beta")]
    assert rx.take_names() == []
    recs = rx.drain()
    assert recs["kind"].tolist() == [1] * 6 + [0]


def test_reflection_keeps_the_name():
    rx = _io.Reflector(-1)
    (reply,) = rx._feed(wire.encode_native(3, 0, 10, name=b"alpha"))
    back = wire.decode(bytes(reply))
    assert back.flags & wire.FLAG_REFLECTED and back.name == b"alpha"


def test_node_name_and_record_names():
    cfg = types.SimpleNamespace(name=None, mode="sender")
    assert names.node_name(cfg, {"NODE_NAME": "k8s-node-1"}) == "k8s-node-1"
    assert names.node_name(types.SimpleNamespace(name="a b\"c"), {}) == "a_b_c"
    assert names.in_band_name(cfg, {}) == b""       # a plain sender without a name
    assert names.in_band_name(cfg, {"NODE_NAME": "n"}) == b"n"
    cfg.mode = "mesh"
    assert names.in_band_name(cfg, {}) == names.node_name(cfg, {}).encode()
    assert names.host_of("[::1]:8000") == "::1" and names.host_of("10.0.0.1:5") == "10.0.0.1"
    book = names.NameBook("me")
    rx = _io.Receiver(-1)
    rx._feed(wire.encode_native(0xAB, 0, 10, name=b"alpha"))
    book.learn(rx)
    assert book.tag({"session": f"{0xAB:016x}", "source": "127.0.0.1:4000"}) == {
        "session": "00000000000000ab", "source": "127.0.0.1:4000",
        "source_name": "alpha", "destination_name": "me"}
    # legacy and STAMP senders, or a native one without a name: its address, no port
    assert book.tag({"session": "legacy", "source": "127.0.0.1:4000"})["source_name"] == \
        "127.0.0.1"


def test_a_peers_name_from_its_ptr_record():
    assert names.ptr_name("n5.mesh.test.", "n1") == "n5"     # a fleet of host names
    assert names.ptr_name("ip-10-0-1-5.ec2.internal.", "ip-10-0-1-4.ec2.internal") == \
        "ip-10-0-1-5.ec2.internal"                           # a fleet of FQDNs
    assert names.ptr_name("n5", "n1") == "n5"
