"""Reference codec for the wire formats, in pure Python (struct).

The Cython core (ext/wire.pxi, which holds the byte diagrams) is the one the probe uses;
this module is the readable twin that golden-byte tests hold it to, and what tests and
tools use to build packets by hand. Formats:

- native: 32-byte little-endian header `"PF" | ver u8 | flags u8 | u32 0 | u64 session |
  u64 seq | i64 send ns`, reflected packets add `u64 reflector seq | i64 T2 | i64 T3`,
  then zero padding, then (flag AUTH) a 16-byte truncated HMAC-SHA-256 of everything before.
  A named packet (flag NAMED, ext/names.pxi) has the name's length in byte 4 and the name
  at NAME_AT (56), after the reflector's fields, inside the tag.
- answer (flag ANSWER): a receiver's answer to a FINAL, `search`'s trial outcome: the header
  with the FINAL's session and sequence and the answer's send time, then `u64 received |
  u64 lost | u64 local_drops`, then (flag AUTH) the tag; sent only to a FINAL at least as long.
- legacy: the Rust original's 17 bytes `u64 seq | u64 send µs | u8 final`, little-endian.
- STAMP (RFC 8762 unauthenticated, big-endian): 44-byte Session-Sender and
  Session-Reflector test packets; replies of 38 bytes (TWAMP-Light reflectors that end after
  the sender error estimate) are accepted with TTL 0. NTP timestamps follow RFC 4330 §3 eras.
"""

import hashlib
import hmac
import struct
from typing import NamedTuple

# The constants have one definition, in the extension (ext/wire.pxi).
from packet_flow._io import (
    ANSWER_SIZE,
    FLAG_ANSWER,
    FLAG_AUTH,
    FLAG_FINAL,
    FLAG_NAMED,
    FLAG_REFLECTED,
    HEADER,
    LEGACY_SIZE,
    MAGIC,
    NAME_AT,
    NAME_MAX,
    NTP_OFFSET,
    REFLECTED_HEADER,
    STAMP_REPLY_MIN,
    STAMP_SIZE,
    TAG,
    VERSION,
)
from packet_flow.errors import WireError

_NATIVE = struct.Struct("<2sBBIQQq")
_REFLECT = struct.Struct("<Qqq")
_COUNTS = struct.Struct("<QQQ")                  # answer: received | lost | local_drops
_LEGACY = struct.Struct("<QQB")
_STAMP_SENDER = struct.Struct(">I8sHH")           # seq | T1 | error estimate | SSID
_STAMP_REFLECTOR = struct.Struct(">I8sHH8sI8sHHB")  # seq|T3|err|ssid|T2|sseq|T1|serr|mbz|ttl


class Packet(NamedTuple):
    wire: str            # native | legacy | stamp | stamp_reflected
    session: int
    seq: int
    tx_ns: int
    flags: int = 0
    r_seq: int = 0
    t2_ns: int = 0
    t3_ns: int = 0
    sender_ttl: int = 0  # STAMP reply: the TTL its test packet had at the reflector
    name: bytes = b""       # the sender's name, in band (flag NAMED)

    @property
    def final(self):
        return bool(self.flags & FLAG_FINAL)


def tag(key, data):
    """The 16-byte truncated HMAC-SHA-256 tag of data."""
    return hmac.new(key, data, hashlib.sha256).digest()[:TAG]


def encode_native(session, seq, tx_ns, flags=0, size=0, key=None, reflect=None, name=b""):
    """A native packet of max(size, minimum) bytes. reflect = (r_seq, t2_ns, t3_ns); name:
    the sender's name in band (at most NAME_MAX bytes)."""
    if key:
        flags |= FLAG_AUTH
    if reflect is not None:
        flags |= FLAG_REFLECTED
    if name:
        if len(name) > NAME_MAX:
            raise ValueError(f"a name is at most {NAME_MAX} bytes")
        flags |= FLAG_NAMED
    body = _NATIVE.pack(MAGIC, VERSION, flags, len(name), session, seq, tx_ns)
    if reflect is not None:
        body += _REFLECT.pack(*reflect)
    if name:
        body = body.ljust(NAME_AT, b"\0") + name
    minimum = len(body) + (TAG if key else 0)
    body += bytes(max(size, minimum) - minimum)
    return body + tag(key, body) if key else body


class Answer(NamedTuple):
    session: int
    seq: int             # the answered FINAL's sequence
    tx_ns: int
    received: int
    lost: int
    local_drops: int


def encode_answer(session, seq, tx_ns, received, lost, local_drops, key=None):
    """A receiver's answer to the FINAL (session, seq): ANSWER_SIZE bytes, + TAG with a key."""
    flags = FLAG_ANSWER | (FLAG_AUTH if key else 0)
    body = _NATIVE.pack(MAGIC, VERSION, flags, 0, session, seq, tx_ns) + \
        _COUNTS.pack(received, lost, local_drops)
    return body + tag(key, body) if key else body


def decode_answer(data, key=None):
    """An Answer from a datagram; WireError(reason) when it is none: `short`, `magic`,
    `version`, `not_answer`, `no_tag`, `bad_tag` (the receiver's reason names)."""
    if len(data) < ANSWER_SIZE or data[:2] != MAGIC:
        raise WireError("short" if len(data) < ANSWER_SIZE else "magic")
    if data[2] != VERSION:
        raise WireError("version")
    if not data[3] & FLAG_ANSWER:
        raise WireError("not_answer")
    if key:
        if not data[3] & FLAG_AUTH or len(data) < ANSWER_SIZE + TAG:
            raise WireError("no_tag")
        if not hmac.compare_digest(tag(key, data[:ANSWER_SIZE]), data[ANSWER_SIZE:][:TAG]):
            raise WireError("bad_tag")
    _m, _v, _f, _r, session, seq, tx_ns = _NATIVE.unpack_from(data)
    return Answer(session, seq, tx_ns, *_COUNTS.unpack_from(data, HEADER))


def encode_legacy(seq, ts_us, final=False):
    """The Rust original's 17-byte bincode packet."""
    return _LEGACY.pack(seq, ts_us, 1 if final else 0)


def ns_to_ntp(ns):
    """64-bit NTP timestamp (u32 seconds since 1900, u32 fraction) as 8 big-endian bytes.
    The seconds wrap on 2036-02-07T06:28:16Z (era 1 starts again at 0)."""
    sec, rem = divmod(ns, 1_000_000_000)
    return struct.pack(">II", (sec + NTP_OFFSET) & 0xFFFFFFFF, (rem << 32) // 1_000_000_000)


def ntp_to_ns(b):
    """ns since the UNIX epoch of a 64-bit NTP timestamp, by the RFC 4330 §3 convention:
    seconds with the top bit set are 1968-2036 (era 0, from 1900), without it 2036-2104
    (era 1, from 2036-02-07T06:28:16Z)."""
    sec, frac = struct.unpack(">II", b)
    if not sec & 0x80000000:
        sec += 1 << 32
    return (sec - NTP_OFFSET) * 1_000_000_000 + ((frac * 1_000_000_000) >> 32)


def encode_stamp(seq, tx_ns, ssid=0, error=0x0001, size=STAMP_SIZE):
    """RFC 8762 §4.2.1 unauthenticated Session-Sender test packet (ssid per RFC 8972)."""
    body = _STAMP_SENDER.pack(seq & 0xFFFFFFFF, ns_to_ntp(tx_ns), error, ssid)
    return body + bytes(max(size, STAMP_SIZE) - len(body))


def encode_stamp_reflection(r_seq, t3_ns, t2_ns, sender, sender_ttl, error=0x0001, ssid=0):
    """RFC 8762 §4.3.1 unauthenticated Session-Reflector packet answering `sender` bytes,
    which arrived with TTL (hop limit) `sender_ttl`."""
    s_seq, t1, s_err = struct.unpack_from(">I8sH", sender)
    body = _STAMP_REFLECTOR.pack(r_seq & 0xFFFFFFFF, ns_to_ntp(t3_ns), error, ssid,
                                 ns_to_ntp(t2_ns), s_seq, t1, s_err, 0, sender_ttl)
    return body + bytes(max(len(sender), STAMP_SIZE) - len(body))


def decode(data, key=None, stamp=None, reflector=False):
    """Parse a datagram. stamp=None: native or legacy; "sender"/"reflected": STAMP.
    reflector=True: as a reflector parses, a native test packet too short to be answered in
    its own size (REFLECTED_HEADER, + TAG with a key) is `short_probe`.
    Raises WireError(reason) with the same reason names as the Cython receiver."""
    n = len(data)
    if stamp is not None:
        if n < (STAMP_SIZE if stamp == "sender" else STAMP_REPLY_MIN):
            raise WireError("short")
        if stamp == "sender":
            seq, t1, _err, ssid = _STAMP_SENDER.unpack_from(data)
            return Packet("stamp", ssid, seq, ntp_to_ns(t1))
        data = data[:STAMP_SIZE] + bytes(max(0, STAMP_SIZE - n))    # no TTL byte: 0
        r_seq, t3, _e, ssid, t2, seq, t1, _se, _mbz, s_ttl = _STAMP_REFLECTOR.unpack_from(data)
        return Packet("stamp_reflected", ssid, seq, ntp_to_ns(t1), 0, r_seq,
                      ntp_to_ns(t2), ntp_to_ns(t3), s_ttl)
    if n == LEGACY_SIZE:
        if key:
            raise WireError("no_tag")
        seq, ts_us, final = _LEGACY.unpack(data)
        if final > 1:
            raise WireError("legacy")
        return Packet("legacy", 0, seq, ts_us * 1000, final)
    if n < 4 or data[:2] != MAGIC:
        raise WireError("short" if n < LEGACY_SIZE else "magic")
    if data[2] != VERSION:
        raise WireError("version")
    flags = data[3]
    if (n < HEADER or (flags & FLAG_AUTH and n < HEADER + TAG)
            or (flags & FLAG_REFLECTED and n < REFLECTED_HEADER)):
        raise WireError("truncated")
    if reflector and not flags & FLAG_REFLECTED and n < REFLECTED_HEADER + (TAG if key else 0):
        raise WireError("short_probe")
    if key:
        if not flags & FLAG_AUTH:
            raise WireError("no_tag")
        if not hmac.compare_digest(tag(key, data[:-TAG]), data[-TAG:]):
            raise WireError("bad_tag")
    _m, _v, flags, _r, session, seq, tx_ns = _NATIVE.unpack_from(data)
    reflect = _REFLECT.unpack_from(data, HEADER) if flags & FLAG_REFLECTED else (0, 0, 0)
    name = b""
    if flags & FLAG_NAMED and 0 < data[4] <= NAME_MAX \
            and NAME_AT + data[4] <= n - (TAG if flags & FLAG_AUTH else 0):
        name = bytes(data[NAME_AT:NAME_AT + data[4]])
    return Packet("native", session, seq, tx_ns, flags, *reflect, 0, name)
