"""Coverage-guided fuzz target for packet_flow._io: parse, reflect and control messages.

Each input is one received datagram with the circumstances it arrived in:

    byte 0     bits 0-1 wire (0 native, 1 STAMP, 2 STAMP replies, 3 native), bit 2 keyed,
               bit 3 reflector, bit 4 IPv6 source, bit 5 kernel timestamp + SO_RXQ_OVFL,
               bit 6 TTL / hop limit, bit 7 UDP_GRO segment size
    bytes 1-2  GRO segment size (u16 little-endian)
    byte 3     TTL
    bytes 4-   the datagram (up to MAX_DATAGRAM bytes)

It goes through `Receiver._feed` / `Reflector._feed`: the recvmmsg path (control messages,
GRO segment splitting, parsing into the ring, tag checks, building replies) on exactly sized
heap copies of the datagram and control buffer, so AddressSanitizer sees any access past
either; replies are built but never sent. Rules:

- Control messages are well-formed, as the kernel writes them (its contract); their values
  and which of them are present are fuzzed. A Reflector answers one record per message, so
  it ignores UDP_GRO (its socket has GRO off).
- Beyond memory errors, every input is checked against the reference codec
  (packet_flow.wire): one record per GRO segment with its length, each record's kind, reason
  and fields as wire.decode gives them, one reply per answerable record, never longer than
  its request, and each reply decoding as the reflection of its request.

Run (tests/loopback/test_fuzz_atheris.py does, on an ASan build):
    LD_PRELOAD=$ATHERIS/asan_with_fuzzer.so python tests/fuzz/fuzz_io.py EXT.so [libFuzzer args]
Replay without atheris: `replay(module, data)` (tests/loopback/test_fuzz_atheris.py, normal build).
"""

import importlib.machinery
import importlib.util
import os
import socket
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..")]

from packet_flow import wire  # noqa: E402
from packet_flow.errors import WireError  # noqa: E402

KEY = b"fuzz-key"
MAX_DATAGRAM = 4096
HEAD = 4
_CMSG = struct.Struct("=Qii")           # struct cmsghdr on 64-bit Linux: size_t len, level, type
SOL_SOCKET, SCM_TIMESTAMPNS, SO_RXQ_OVFL = 1, 35, 40
IPPROTO_IP, IP_TTL, IPPROTO_IPV6, IPV6_HOPLIMIT = 0, 2, 41, 52
SOL_UDP, UDP_GRO = 17, 104
RX_NS = 1_764_633_600_123_456_789      # the kernel timestamp every fuzzed datagram carries
STAMP = {0: None, 1: "sender", 2: "reflected", 3: None}


def load(path):
    """The extension module built at `path` (an ASan build, or the installed one)."""
    loader = importlib.machinery.ExtensionFileLoader("packet_flow._io", path)
    spec = importlib.util.spec_from_file_location("packet_flow._io", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def cmsg(level, kind, payload):
    """One control message as the kernel lays it out (CMSG_SPACE bytes)."""
    raw = _CMSG.pack(_CMSG.size + len(payload), level, kind) + payload
    return raw + bytes(-len(raw) % 8)


class Target:
    """The receivers and reflectors of every configuration, made once, fed one input at a time."""

    def __init__(self, io):
        self.io = io
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.cores = {}
        modes = (io.K_NATIVE, io.K_STAMP, io.K_STAMP_REFLECTED, io.K_NATIVE)
        for b in range(16):
            mode, key, reflect = modes[b & 3], KEY if b & 4 else None, bool(b & 8)
            if reflect and mode == io.K_STAMP_REFLECTED:
                continue                  # nobody answers replies
            cls = io.Reflector if reflect else io.Receiver
            self.cores[b] = cls(self.sock.fileno(), batch=1, capacity=MAX_DATAGRAM, key=key,
                                mode=mode)

    def __call__(self, data):
        if len(data) < HEAD:
            return
        conf = data[0]
        reflect = bool(conf & 8)
        if reflect and conf & 3 == 2:
            conf &= ~8
            reflect = False
        seg, ttl = struct.unpack_from("<HB", data, 1)
        dgram = data[HEAD:HEAD + MAX_DATAGRAM]
        control = b""
        if conf & 0x20:
            control += cmsg(SOL_SOCKET, SCM_TIMESTAMPNS,
                            struct.pack("=qq", RX_NS // 10**9, RX_NS % 10**9))
            control += cmsg(SOL_SOCKET, SO_RXQ_OVFL, struct.pack("=I", seg))
        if conf & 0x40:
            level, kind = (IPPROTO_IPV6, IPV6_HOPLIMIT) if conf & 0x10 else (IPPROTO_IP, IP_TTL)
            control += cmsg(level, kind, struct.pack("=i", ttl))
        if conf & 0x80:
            control += cmsg(SOL_UDP, UDP_GRO, struct.pack("=i", seg))
        core = self.cores[conf & 0xF]
        family = socket.AF_INET6 if conf & 0x10 else socket.AF_INET
        replies = core._feed(dgram, control, family)
        recs = core.drain()
        split = seg if conf & 0x80 and not reflect else 0    # a Reflector ignores UDP_GRO
        check(conf, dgram, split, ttl if conf & 0x40 else 0, recs, replies)


def segments(n, seg):
    """(offset, length) of the records one datagram of n bytes becomes with UDP_GRO seg."""
    if seg <= 0 or seg >= n:
        return [(0, n)]
    return [(o, min(seg, n - o)) for o in range(0, n, seg)]


def expect(data, conf):
    """The reference codec's view of one segment: (kind, reason name, packet or None)."""
    key = KEY if conf & 4 else None
    try:
        p = wire.decode(data, key=key, stamp=STAMP[conf & 3], reflector=bool(conf & 8))
    except WireError as e:
        return KINDS.index("malformed"), str(e), None
    return KINDS.index(p.wire), "ok", p


def _wrap(v):
    return (v + 2**63) % 2**64 - 2**63        # the core's int64 arithmetic wraps


def check(conf, dgram, seg, ttl, recs, replies):
    parts = segments(len(dgram), seg)
    assert len(recs) == len(parts), (len(recs), parts)
    answered = []
    for (off, n), rec in zip(parts, recs, strict=True):
        data = dgram[off:off + n]
        kind, reason, p = expect(data, conf)
        got = (int(rec["kind"]), REASONS[int(rec["reason"])], int(rec["length"]))
        assert got == (kind, reason, n), (got, (kind, reason, n), data.hex())
        assert int(rec["ttl"]) == ttl
        if conf & 0x20:
            assert int(rec["rx_ns"]) == RX_NS
        if p is None:
            continue
        fields = (int(rec["session"]), int(rec["seq"]), int(rec["tx_ns"]), int(rec["r_seq"]),
                  int(rec["t2_ns"]), int(rec["t3_ns"]))
        want = (p.session, p.seq, _wrap(p.tx_ns), p.r_seq, _wrap(p.t2_ns), _wrap(p.t3_ns))
        assert fields == want, (fields, want, data.hex())
        assert int(rec["sender_ttl"]) == p.sender_ttl
        if conf & 8 and (p.wire == "stamp" or p.wire == "native"
                         and not p.flags & wire.FLAG_REFLECTED):
            answered.append((data, p, int(rec["rx_ns"])))
    assert len(replies) == len(answered), (len(replies), len(answered))
    tag = wire.TAG if conf & 4 else 0
    for reply, (data, p, rx_ns) in zip(replies, answered, strict=True):
        assert len(reply) == len(data), (len(reply), len(data))      # never amplified
        if p.wire == "native":
            q = wire.decode(reply, key=KEY if tag else None)
            assert q.flags == p.flags | wire.FLAG_REFLECTED and q.t2_ns == rx_ns
            assert (q.session, q.seq, q.tx_ns) == (p.session, p.seq, p.tx_ns)
            end = wire.REFLECTED_HEADER
            assert reply[end:len(reply) - tag] == data[end:len(data) - tag]
        else:
            q = wire.decode(reply, stamp="reflected")
            assert (q.seq, q.sender_ttl) == (p.seq, ttl)
            assert reply[wire.STAMP_SIZE:] == data[wire.STAMP_SIZE:]


REASONS = KINDS = ()      # the names of the module under test (use)


def use(io):
    global REASONS, KINDS
    REASONS, KINDS = io.REASONS, io.KINDS


def replay(io, data):
    """Run one input against the module io (no atheris): raises on any failed check."""
    use(io)
    Target(io)(data)


def main():
    import atheris

    io = load(sys.argv.pop(1))
    use(io)
    target = Target(io)
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
