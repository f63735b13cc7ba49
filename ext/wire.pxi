# The wire formats: their constants (the one definition: packet_flow/wire.py, the pure-Python
# reference codec, imports them from this module), the record a parsed datagram becomes, and
# the codecs as `cdef inline` functions on raw buffers, in the style of asyncpg's
# pgproto/hton.pxd. Codecs never allocate, never raise and never need the GIL; a datagram
# that does not parse becomes a record of kind K_MALFORMED with its reason.
#
# Native wire format, version 1, little-endian (the Rust original was little-endian too):
#
#    0       1       2       3       4       5       6       7
#   +-------+-------+-------+-------+-------+-------+-------+-------+
#   |  'P'  |  'F'  |  ver  | flags |        reserved (0)           |  0
#   +-------+-------+-------+-------+-------+-------+-------+-------+
#   |                  session id (random per run)                  |  8
#   +---------------------------------------------------------------+
#   |                        sequence number                        | 16
#   +---------------------------------------------------------------+
#   |           send timestamp, ns since the UNIX epoch (i64)       | 24
#   +---------------------------------------------------------------+
#   | reflected only: reflector sequence (u64)                      | 32
#   | reflected only: reflector receive timestamp T2, ns (i64)      | 40
#   | reflected only: reflector send timestamp T3, ns (i64)         | 48
#   +---------------------------------------------------------------+
#   | padding (zeros) up to the requested size ...                  |
#   +---------------------------------------------------------------+
#   | AUTH only: first 16 bytes of HMAC-SHA-256(key, all bytes      |
#   | before the tag) -- the last 16 bytes of the datagram          |
#   +---------------------------------------------------------------+
#   flags: 0x01 FINAL (sender stops; the flow closes without loss), 0x02 AUTH (tag present),
#          0x04 REFLECTED (came back from a reflector), 0x08 NAMED (ext/names.pxi),
#          0x10 ANSWER (a receiver's answer to a FINAL of at least ANSWER_SIZE (+ TAG) bytes:
#          the header with the FINAL's session and sequence, then u64 received | u64 lost |
#          u64 local_drops at 32, 40, 48; nothing else, so never longer than the FINAL).
#
# Legacy format (the Rust original, bincode 1.x): exactly 17 bytes,
#   u64 sequence | u64 send time in µs since the epoch | u8 is_final (0 or 1), little-endian.
#
# STAMP (RFC 8762, unauthenticated, network byte order), at least 44 bytes (replies from
# TWAMP-Light reflectors may end after the sender error estimate: 38 bytes): see
# _encode_stamp, _reflect_stamp and _parse below.

cpdef enum:
    VERSION = 1
    HEADER = 32
    REFLECTED_HEADER = 56
    LEGACY_SIZE = 17
    STAMP_SIZE = 44
    STAMP_REPLY_MIN = 38    # a TWAMP-Light reply may end after the sender error estimate
    TAG = 16
    FLAG_FINAL = 1
    FLAG_AUTH = 2
    FLAG_REFLECTED = 4
    FLAG_ANSWER = 16        # a receiver's answer to a FINAL: its counts (packet_flow/search.py)
    ANSWER_SIZE = 56        # header + u64 received | u64 lost | u64 local_drops (+ TAG)
    # wire formats, in the order of KINDS: the kind of a record (what its datagram parsed
    # as), what a Sender sends and what a Receiver expects (mode K_NATIVE also takes legacy)
    K_MALFORMED = 0
    K_NATIVE = 1
    K_LEGACY = 2
    K_STAMP = 3
    K_STAMP_REFLECTED = 4
    # malformed reasons, in the order of REASONS (0 = ok)
    R_SHORT = 1
    R_MAGIC = 2
    R_VERSION = 3
    R_TRUNCATED = 4
    R_LEGACY = 5
    R_NO_TAG = 6
    R_BAD_TAG = 7
    R_SHORT_PROBE = 8

cdef enum:
    MAGIC0 = 0x50       # 'P'
    MAGIC1 = 0x46       # 'F'
    N_REASONS = 9

cdef extern from *:
    """
    #define PF_NTP_OFFSET 2208988800LL  /* seconds from 1900 (NTP era 0) to 1970 */
    """
    const int64_t _NTP_OFFSET "PF_NTP_OFFSET"

MAGIC = bytes((MAGIC0, MAGIC1))
NTP_OFFSET = _NTP_OFFSET
KINDS = ("malformed", "native", "legacy", "stamp", "stamp_reflected")
REASONS = ("ok", "short", "magic", "version", "truncated", "legacy", "no_tag", "bad_tag",
           "short_probe")


# A parsed datagram as the receive ring stores it; RECORD is its numpy view. 104 bytes, each
# field at a multiple of its size: numpy works on a field of the ring (a strided view) at full
# speed only when every element of it is aligned (at 97 bytes, every view was not).
cdef packed struct rec_t:
    uint64_t flow
    uint64_t session
    uint64_t seq
    int64_t tx_ns
    int64_t rx_ns
    uint64_t r_seq
    int64_t t2_ns
    int64_t t3_ns
    uint8_t addr[16]
    uint32_t length
    uint32_t drops          # the socket's drop count when this datagram was queued (SO_RXQ_OVFL)
    uint16_t port
    uint8_t family
    uint8_t kind
    uint8_t reason
    uint8_t flags
    uint8_t ttl             # IP TTL / hop limit of this datagram as it arrived here
    uint8_t coalesced       # 1: the receive timestamp is a later datagram's (same GRO buffer)
    uint8_t sender_ttl      # STAMP reply: the TTL its test packet had at the reflector
    uint8_t pad[7]

RECORD = np.dtype({
    "names": ["flow", "session", "seq", "tx_ns", "rx_ns", "r_seq", "t2_ns", "t3_ns", "addr",
              "length", "drops", "port", "family", "kind", "reason", "flags", "ttl",
              "coalesced", "sender_ttl"],
    "formats": ["<u8", "<u8", "<u8", "<i8", "<i8", "<u8", "<i8", "<i8", ("u1", (16,)), "<u4",
                "<u4", "<u2", "u1", "u1", "u1", "u1", "u1", "u1", "u1"],
    "offsets": [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 84, 88, 90, 91, 92, 93, 94, 95, 96],
    "itemsize": 104,
})
assert RECORD.itemsize == sizeof(rec_t)


# ---------------------------------------------------------------- bytes

cdef inline uint64_t _ld64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline void _st64(uint8_t *p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)


cdef inline uint32_t _be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _stbe32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = v >> 16
    p[2] = v >> 8
    p[3] = v


cdef inline void _stbe16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v


cdef inline int64_t _ntp_to_ns(const uint8_t *p) noexcept nogil:
    # RFC 4330 §3: seconds with the top bit set are 1968-2036 (era 0, from 1900); without it
    # 2036-2104 (era 1, from 2036-02-07T06:28:16Z)
    cdef int64_t sec = <int64_t>_be32(p) - _NTP_OFFSET
    if not (p[0] & 0x80):
        sec += <int64_t>1 << 32
    cdef uint64_t frac = _be32(p + 4)
    return sec * 1000000000 + <int64_t>((frac * 1000000000) >> 32)


cdef inline void _ns_to_ntp(uint8_t *p, int64_t ns) noexcept nogil:
    cdef int64_t sec = ns // 1000000000
    cdef uint64_t rem = ns % 1000000000
    _stbe32(p, <uint32_t>(sec + _NTP_OFFSET))
    _stbe32(p + 4, <uint32_t>((rem << 32) // 1000000000))


cdef inline void _sign(const hmac_key *key, uint8_t *p, size_t n) noexcept nogil:
    # the last TAG bytes of p[:n] become the truncated HMAC-SHA-256 of the bytes before them
    cdef uint8_t mac[32]
    _hmac(key, p, n - TAG, mac)
    memcpy(p + n - TAG, mac, TAG)


cdef inline bint _tag_ok(const hmac_key *key, const uint8_t *p, size_t n) noexcept nogil:
    # whether the last TAG bytes of p[:n] are the tag of the bytes before them
    cdef uint8_t mac[32]
    _hmac(key, p, n - TAG, mac)
    return CRYPTO_memcmp(mac, p + n - TAG, TAG) == 0


# ---------------------------------------------------------------- encoders

cdef inline void _encode_native(uint8_t *p, uint64_t session, uint64_t seq, int64_t tx_ns,
                                uint8_t flags) noexcept nogil:
    # the header only: the reserved bytes, padding and tag room are left as they are (zero)
    p[0] = MAGIC0
    p[1] = MAGIC1
    p[2] = VERSION
    p[3] = flags
    _st64(p + 8, session)
    _st64(p + 16, seq)
    _st64(p + 24, <uint64_t>tx_ns)


cdef inline void _encode_legacy(uint8_t *p, uint64_t seq, int64_t tx_ns,
                                uint8_t flags) noexcept nogil:
    _st64(p, seq)
    _st64(p + 8, <uint64_t>(tx_ns // 1000))
    p[16] = flags & FLAG_FINAL


cdef inline void _encode_stamp(uint8_t *p, uint64_t seq, int64_t tx_ns, uint16_t error_estimate,
                               uint64_t session) noexcept nogil:
    # RFC 8762 §4.2.1 Session-Sender packet; bytes 14-15 (RFC 8972 SSID) carry the low 16
    # bits of the session id
    _stbe32(p, <uint32_t>seq)
    _ns_to_ntp(p + 4, tx_ns)
    _stbe16(p + 12, error_estimate)
    _stbe16(p + 14, <uint16_t>session)


cdef inline void _reflect_native(uint8_t *p, uint32_t length, uint64_t r_seq, int64_t t2_ns,
                                 int64_t t3_ns, const hmac_key *key) noexcept nogil:
    # Turns the native test packet p[:length] into its reflection in place, in its own length
    # (at least REFLECTED_HEADER, + TAG when key is not NULL: _parse's `least`): REFLECTED
    # set, reflector sequence, T2, T3, and a new tag when key is not NULL.
    p[3] |= FLAG_REFLECTED
    _st64(p + 32, r_seq)
    _st64(p + 40, <uint64_t>t2_ns)
    _st64(p + 48, <uint64_t>t3_ns)
    if key != NULL:
        _sign(key, p, length)


cdef inline void _reflect_stamp(uint8_t *p, uint32_t r_seq, int64_t t2_ns, int64_t t3_ns,
                                uint16_t error_estimate, uint8_t ttl) noexcept nogil:
    # RFC 8762 §4.3.1 Session-Reflector packet, in place of the Session-Sender packet it
    # answers (same length): seq | T3 | err | SSID (kept) | T2 | sender seq, T1, err | mbz |
    # sender TTL | mbz
    cdef uint8_t sender[14]
    memcpy(sender, p, 14)
    _stbe32(p, r_seq)
    _ns_to_ntp(p + 4, t3_ns)
    _stbe16(p + 12, error_estimate)
    _ns_to_ntp(p + 16, t2_ns)
    memcpy(p + 24, sender, 14)
    p[38] = 0
    p[39] = 0
    p[40] = ttl
    p[41] = 0
    p[42] = 0
    p[43] = 0


# ---------------------------------------------------------------- decoder

cdef inline void _parse(const uint8_t *p, uint32_t n, rec_t *r, int mode,
                        const hmac_key *key, uint32_t least) noexcept nogil:
    # Fills the wire fields of r (kind, reason, flags, session, seq, tx_ns, r_seq, t2_ns,
    # t3_ns; sender_ttl for STAMP replies) from the datagram p[:n]. mode: K_NATIVE (native
    # and legacy), K_STAMP or K_STAMP_REFLECTED. key: require a valid tag (NULL: none).
    # least: a native test packet (not REFLECTED) shorter than this is R_SHORT_PROBE (a
    # reflector answers in the request's own size; checked before the tag, which costs more).
    r.kind = K_MALFORMED
    r.reason = 0
    r.flags = 0
    r.session = 0
    r.seq = 0
    r.tx_ns = 0
    r.r_seq = 0
    r.t2_ns = 0
    r.t3_ns = 0
    r.sender_ttl = 0
    if mode == K_STAMP:
        if n < STAMP_SIZE:
            r.reason = R_SHORT
            return
        r.seq = _be32(p)
        r.tx_ns = _ntp_to_ns(p + 4)
        r.session = (<uint64_t>p[14] << 8) | p[15]
        r.kind = K_STAMP
        return
    if mode == K_STAMP_REFLECTED:
        # RFC 8762 §4.3.1 reflector packet: seq | T3 | err | mbz | T2 | sender seq | T1 | ...
        if n < STAMP_REPLY_MIN:
            r.reason = R_SHORT
            return
        r.r_seq = _be32(p)
        r.t3_ns = _ntp_to_ns(p + 4)
        r.t2_ns = _ntp_to_ns(p + 16)
        r.seq = _be32(p + 24)
        r.tx_ns = _ntp_to_ns(p + 28)
        r.session = (<uint64_t>p[14] << 8) | p[15]
        r.sender_ttl = p[40] if n > 40 else 0
        r.kind = K_STAMP_REFLECTED
        return
    if n == LEGACY_SIZE:
        if key != NULL:
            r.reason = R_NO_TAG     # the legacy format has no room for a tag
            return
        if p[16] > 1:
            r.reason = R_LEGACY
            return
        r.kind = K_LEGACY
        r.seq = _ld64(p)
        r.tx_ns = <int64_t>_ld64(p + 8) * 1000
        r.flags = p[16]
        return
    if n < 4 or p[0] != MAGIC0 or p[1] != MAGIC1:
        r.reason = R_SHORT if n < LEGACY_SIZE else R_MAGIC
        return
    if p[2] != VERSION:
        r.reason = R_VERSION
        return
    r.flags = p[3]
    if n < HEADER or ((r.flags & FLAG_AUTH) and n < HEADER + TAG) or \
            ((r.flags & FLAG_REFLECTED) and n < REFLECTED_HEADER):
        r.reason = R_TRUNCATED
        return
    if n < least and not (r.flags & FLAG_REFLECTED):
        r.reason = R_SHORT_PROBE
        return
    if key != NULL:
        if not (r.flags & FLAG_AUTH):
            r.reason = R_NO_TAG
            return
        if not _tag_ok(key, p, n):
            r.reason = R_BAD_TAG
            return
    r.kind = K_NATIVE
    r.session = _ld64(p + 8)
    r.seq = _ld64(p + 16)
    r.tx_ns = <int64_t>_ld64(p + 24)
    if r.flags & FLAG_REFLECTED:
        r.r_seq = _ld64(p + 32)
        r.t2_ns = <int64_t>_ld64(p + 40)
        r.t3_ns = <int64_t>_ld64(p + 48)
