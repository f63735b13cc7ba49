"""dnsquery: resolv.conf, the search order, the query bytes and replies with compressed names
(hand-made messages; the real server is in tests/loopback/test_dns_server.py and tests/netns)."""

import struct

import pytest

from packet_flow import dnsquery
from packet_flow.dnsquery import DnsError


def test_resolv_conf(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# k8s\nnameserver 10.96.0.10\nnameserver fd00::a ; v6\n"
                    "search mon.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:1\n")
    assert dnsquery.resolv_conf(str(path)) == (
        ["10.96.0.10", "fd00::a"], ["mon.svc.cluster.local", "svc.cluster.local"], 5)
    assert dnsquery.resolv_conf(str(tmp_path / "none")) == (["127.0.0.1"], [], 1)


def test_search_order():
    search = ["mon.svc.cluster.local", "svc.cluster.local"]
    assert dnsquery.candidates("_p._udp.pf", search, 5) == [
        "_p._udp.pf.mon.svc.cluster.local", "_p._udp.pf.svc.cluster.local", "_p._udp.pf"]
    assert dnsquery.candidates("_p._udp.pf", search, 1) == [
        "_p._udp.pf", "_p._udp.pf.mon.svc.cluster.local", "_p._udp.pf.svc.cluster.local"]
    assert dnsquery.candidates("_p._udp.pf.example.", search, 5) == ["_p._udp.pf.example"]


def test_query_bytes():
    assert dnsquery.query("_p._udp.a.b", qid=0x1234) == (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"        # RD, 1 question, 1 additional
        b"\x02_p\x04_udp\x01a\x01b\x00\x00\x21\x00\x01"             # SRV IN
        b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00")             # EDNS0 OPT, 4096 bytes


def reply(qid, rcode=0, answers=(), flags=0x8180):
    """A reply to query('_p._udp.a.b'): answers are (port, target) SRV records whose owner is
    a pointer to the question (offset 12) and whose target ends in a pointer to `a.b`."""
    question = b"\x02_p\x04_udp\x01a\x01b\x00\x00\x21\x00\x01"
    body = b""
    for port, label in answers:
        target = bytes([len(label)]) + label.encode() + b"\xc0\x14"    # label + pointer to a.b
        rdata = struct.pack("!HHH", 10, 5, port) + target
        body += b"\xc0\x0c" + struct.pack("!HHIH", 33, 1, 30, len(rdata)) + rdata
    header = struct.pack("!HHHHHH", qid, flags | rcode, 1, len(answers), 0, 0)
    return header + question + body


def test_parse_replies():
    msg = reply(7, answers=[(8000, "n1"), (8001, "n2")])
    assert dnsquery.parse(msg, 7) == (0, False, [("n1.a.b", 8000), ("n2.a.b", 8001)])
    assert dnsquery.parse(reply(7, rcode=3), 7) == (3, False, [])
    assert dnsquery.parse(reply(7, flags=0x8380), 7)[1] is True          # truncated
    with pytest.raises(DnsError, match="not the reply"):
        dnsquery.parse(msg, 8)
    with pytest.raises(DnsError, match="malformed"):
        dnsquery.parse(msg[:-3], 7)
    loop = reply(7, answers=[(8000, "n1")])
    loop = loop[:-2] + b"\xc0" + bytes([len(loop) - 2])                    # points at itself
    with pytest.raises(DnsError, match="loop"):
        dnsquery.parse(loop, 7)
