# Names in band: a native packet with FLAG_NAMED carries its sender's node name. Byte 4 (the
# first reserved byte, 0 otherwise) holds the name's length, 1..NAME_MAX; the name's bytes
# sit at NAME_AT, past the bytes a reflector fills in (so a reflection keeps them), before
# the padding and inside the tag:
#
#    0       1       2       3       4       5       6       7
#   +-------+-------+-------+-------+-------+-------+-------+-------+
#   |  'P'  |  'F'  |  ver  | flags |  len  |   reserved (0)        |  0
#   +-------+-------+-------+-------+-------+-------+-------+-------+
#   | session, sequence, send time, reflector fields (see wire.pxi)  |  8..55
#   +---------------------------------------------------------------+
#   | name (len bytes, UTF-8) | padding ... | AUTH: tag (16 bytes)   |  56..
#   +---------------------------------------------------------------+
#
# Every packet of a named sender carries the name (the sender grows its packets to hold it),
# so one lost packet loses nothing. A receiver notes each session's name once: a
# direct-mapped cache of the sessions already noted keeps the notes from repeating, and the
# notes wait in a small ring until take_names(). A name that does not fit inside the
# datagram (before its tag) is ignored; with a key, only packets whose tag verified get here.

cpdef enum:
    FLAG_NAMED = 8
    NAME_AT = 56            # REFLECTED_HEADER: a reflection keeps the name
    NAME_MAX = 63

cdef enum:
    NAME_SEEN = 4096        # sessions whose name was noted: direct-mapped cache
    NAME_RING = 256         # notes waiting for take_names()


cdef struct name_t:
    uint64_t session
    uint8_t length
    uint8_t text[NAME_MAX]


cdef struct name_book:
    uint64_t *seen          # session | 1 of the last note per slot (0: free)
    name_t *ring
    uint64_t head, tail


cdef inline void _note_name(name_book *b, const uint8_t *p, uint32_t n,
                            uint64_t session) noexcept nogil:
    # p[:n] parsed as a native packet with FLAG_NAMED: note its name once per session
    cdef uint32_t length = p[4]
    cdef uint32_t end = n - (TAG if p[3] & FLAG_AUTH else 0)
    cdef uint64_t slot = session & (NAME_SEEN - 1)
    cdef name_t *e
    if length == 0 or length > NAME_MAX or NAME_AT + length > end:
        return
    if b.seen == NULL:
        b.seen = <uint64_t *>calloc(NAME_SEEN, sizeof(uint64_t))
        b.ring = <name_t *>calloc(NAME_RING, sizeof(name_t))
        if b.seen == NULL or b.ring == NULL:
            _free_names(b)
            return
    if b.seen[slot] == (session | 1) or b.head - b.tail >= NAME_RING:
        return      # noted already; or the ring is full: a later packet brings it again
    e = &b.ring[b.head % NAME_RING]
    e.session = session
    e.length = <uint8_t>length
    memcpy(e.text, p + NAME_AT, length)
    b.head += 1
    b.seen[slot] = session | 1


cdef inline void _free_names(name_book *b) noexcept nogil:
    free(b.seen)
    free(b.ring)
    b.seen = NULL
    b.ring = NULL


cdef list _take_names(name_book *b):
    # the notes since the last call: [(session, name bytes)]
    cdef list out = []
    cdef name_t *e
    while b.tail < b.head:
        e = &b.ring[b.tail % NAME_RING]
        out.append((e.session, bytes(e.text[:e.length])))
        b.tail += 1
    return out


cdef int _put_name(uint8_t *bufs, size_t count, size_t size, bytes name) except -1:
    # write `name` into each of `count` packet buffers of `size` bytes (the sender has made
    # them at least NAME_AT + len(name) (+ TAG) long); returns FLAG_NAMED, or 0 without a name
    cdef size_t i, n = len(name)
    if n == 0:
        return 0
    if n > NAME_MAX:
        raise ValueError(f"a name is at most {NAME_MAX} bytes")
    for i in range(count):
        bufs[i * size + 4] = <uint8_t>n
        memcpy(bufs + i * size + NAME_AT, <const char *>name, n)
    return FLAG_NAMED


def named_size(int size, name, bint keyed):
    """The smallest native packet that carries `name` (bytes) in band, or `size` if larger."""
    if not name:
        return size
    return max(size, NAME_AT + len(name) + (TAG if keyed else 0))
