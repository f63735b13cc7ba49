"""STAMP (RFC 8762) interoperability, checked with an independent codec: scapy's STAMP
dissectors (scapy.contrib.stamp, from PyPI), on loopback.

- test packets our sender emits decode correctly in scapy;
- test packets built with scapy get correct reflections from our reflector (sequence
  numbers, timestamps, TTL copied);
- our --rtt sender measures against a reflector written with scapy."""

import socket
import threading
import time
from decimal import Decimal

import pytest
from link import HAS_IPV6
from scapy.contrib.stamp import ErrorEstimate
from scapy.contrib.stamp import STAMPSessionReflectorTestUnauthenticated as ReflectorPkt
from scapy.contrib.stamp import STAMPSessionSenderTestUnauthenticated as SenderPkt

from packet_flow import _io, clock_error, config
from packet_flow.reflector import ReflectorLoop
from packet_flow.sender import SenderLoop

NTP_OFFSET = 2208988800


def ntp_ns(ts):
    """scapy's NTP timestamp (Decimal seconds since 1900) -> ns since 1970, truncated."""
    return int((Decimal(ts) - NTP_OFFSET) * 1_000_000_000)


def ns_ntp(ns):
    return Decimal(ns) / 1_000_000_000 + NTP_OFFSET


def _cfg(*args):
    return config.load(["--log-level", "warning", "--output", "jsonl:/dev/null", *map(str, args)])


def _recv_all(sock, n, timeout=3.0):
    out, end = [], time.monotonic() + timeout
    sock.settimeout(0.1)
    while len(out) < n and time.monotonic() < end:
        try:
            out.append(sock.recvfrom(65535) + (_io.wall_ns(),))
        except TimeoutError:
            pass
    return out


def test_our_sender_decodes_in_scapy():
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    port = plain.getsockname()[1]
    try:
        snd = SenderLoop(_cfg("-m", "sender", "--wire", "stamp", "--remote-addr",
                              f"127.0.0.1:{port}", "--rate", "1", "--count", 20), lambda r: 0)
        t0 = _io.wall_ns()
        snd.run()
        t1 = _io.wall_ns()
        snd.close()
        got = _recv_all(plain, 20)
    finally:
        plain.close()
    assert len(got) == 20
    error_s, synced = clock_error.decode(clock_error.estimate())
    for i, (data, _addr, _rx) in enumerate(got):
        assert len(data) == 44
        pkt = SenderPkt(data)
        assert pkt.seq == i
        assert t0 <= ntp_ns(pkt.ts) <= t1
        est = pkt.err_estimate
        # honest: S only when the kernel says the clock is synchronised; the kernel's bound
        assert est.S == synced and est.Z == 0
        assert est.multiplier > 0                  # RFC 4656: multiplier 0 is invalid
        assert est.multiplier * 2.0 ** (est.scale - 32) == pytest.approx(error_s, rel=0.02)
        assert pkt.ssid == snd.session & 0xFFFF
        assert pkt.mbz == 0 and not pkt.tlv_objects
        assert bytes(pkt) == data                  # scapy rebuilds the same bytes


FAMILIES = [socket.AF_INET] + ([socket.AF_INET6] if HAS_IPV6 else [])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_scapy_packets_get_correct_reflections(family):
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    local = f"[{host}]:0" if family == socket.AF_INET6 else f"{host}:0"
    refl = ReflectorLoop(_cfg("-m", "reflector", "--wire", "stamp", "--local-addr", local),
                         lambda r: 0)
    port = refl.sock.getsockname()[1]
    thread = threading.Thread(target=refl.run, args=(_io.mono_ns() + 10_000_000_000,))
    thread.start()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    ttl = 37
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    sent = []
    try:
        for i in range(8):
            before = _io.wall_ns()
            est = ErrorEstimate(S=1, Z=0, scale=12, multiplier=3)
            pkt = SenderPkt(seq=1000 + i, ts=ns_ntp(before - 5_000), err_estimate=est, ssid=0x4242)
            data = bytes(pkt)
            if i == 7:
                data += bytes(20)                 # a longer test packet: padded reply
            sock.sendto(data, (host, port))
            sent.append((data, before))
            time.sleep(0.002)
        got = _recv_all(sock, 8)
    finally:
        sock.close()
        refl.stop()
        thread.join()
        refl.close()
    assert len(got) == 8
    for i, ((data, addr, rx_ns), (test, before)) in enumerate(zip(got, sent, strict=True)):
        assert addr[1] == port
        assert len(data) == len(test)             # symmetric (RFC 8762 §4.3)
        rep = ReflectorPkt(data)
        req = SenderPkt(test)
        assert rep.seq == i                        # stateful: the reflector's own counter
        assert rep.seq_sender == req.seq == 1000 + i
        assert Decimal(rep.ts_sender) == Decimal(req.ts)
        assert bytes(rep.err_estimate_sender) == bytes(req.err_estimate)
        assert rep.ttl_sender == ttl
        assert rep.ssid == 0x4242                 # RFC 8972: SSID copied
        t2, t3 = ntp_ns(rep.ts_rx), ntp_ns(rep.ts)
        assert before - 1_000 <= t2 <= t3 <= rx_ns + 1_000
        assert rep.err_estimate.Z == 0 and rep.err_estimate.multiplier > 0
        assert rep.err_estimate.S == clock_error.decode(clock_error.estimate())[1]
        assert rep.mbz1 == 0 and rep.mbz2 == 0
        assert data[44:] == bytes(len(data) - 44)


class ScapyReflector:
    """A stateful STAMP Session-Reflector written with scapy (one datagram at a time)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        end = time.monotonic() + 20
        while not self.stopping and time.monotonic() < end:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            t2 = _io.wall_ns()
            req = SenderPkt(data)
            rep = ReflectorPkt(seq=self.count, ts=ns_ntp(_io.wall_ns()), err_estimate=ErrorEstimate(),
                            ssid=req.ssid, ts_rx=ns_ntp(t2), seq_sender=req.seq,
                            ts_sender=req.ts, err_estimate_sender=req.err_estimate,
                            ttl_sender=64)
            self.count += 1
            self.sock.sendto(bytes(rep), addr)

    def close(self):
        self.stopping = True
        self.thread.join()
        self.sock.close()


def test_our_rtt_sender_against_scapy_reflector():
    scapy_refl = ScapyReflector()
    recs = []
    try:
        snd = SenderLoop(_cfg("-m", "sender", "--wire", "stamp", "--rtt", "--remote-addr",
                              f"127.0.0.1:{scapy_refl.port}", "--rate", "2", "--count", 100),
                         recs.append)
        snd.run()
        snd.close()
    finally:
        scapy_refl.close()
    s = recs[-1]
    assert s["type"] == "summary" and s["sent"] == 100
    assert s["reflected"] == 100 and s["lost"] == 0 and scapy_refl.count == 100
    assert 0 < s["rtt_min_us"] <= s["rtt_p50_us"] <= s["rtt_max_us"] < 1_000_000
