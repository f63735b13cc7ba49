# Batch UDP I/O for packet-flow: sendmmsg/recvmmsg on nonblocking sockets, nanosecond
# timestamps, a numpy ring of parsed receive records, and an absolute-deadline scheduler.
#
# Rules: the GIL is released only around syscalls and the C loops that feed them; every
# failed syscall goes through _errno_path (EINTR -> signal handlers then retry, EAGAIN ->
# nothing done, anything else -> OSError); nothing raises out of parsing: bad datagrams
# are counted by reason.
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
#          0x04 REFLECTED (came back from a reflector).
#
# Legacy format (the Rust original, bincode 1.x): exactly 17 bytes,
#   u64 sequence | u64 send time in µs since the epoch | u8 is_final (0 or 1), little-endian.
#
# STAMP (RFC 8762, unauthenticated, network byte order), at least 44 bytes: see stamp_* below.

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport (EACCES, EAGAIN, ECONNREFUSED, EHOSTDOWN, EHOSTUNREACH, EINTR, EIO,
                         EMSGSIZE, ENETDOWN, ENETUNREACH, ENOBUFS, EPERM, errno)
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset

from syscalls cimport *

import os

import numpy as np

MAGIC = b"PF"
VERSION = 1
cpdef enum:
    HEADER = 32
    REFLECTED_HEADER = 56
    LEGACY_SIZE = 17
    STAMP_SIZE = 44
    TAG = 16
    FLAG_FINAL = 1
    FLAG_AUTH = 2
    FLAG_REFLECTED = 4
    WIRE_NATIVE = 0
    WIRE_LEGACY = 1
    WIRE_STAMP = 2
    WIRE_STAMP_REFLECTED = 3

# Record kinds and malformed reasons, in the order of the counters the receiver keeps.
KINDS = ("malformed", "native", "legacy", "stamp", "stamp_reflected")
REASONS = ("ok", "short", "magic", "version", "truncated", "legacy", "no_tag", "bad_tag")

cdef enum:
    SPIN_MIN = 40000        # ns: precise timer's adaptive spin bounds and margin
    SPIN_MAX = 250000
    SPIN_MARGIN = 50000
    COMP_MAX = 200000       # ns: economy timer's largest early aim
    RSEQ_SLOTS = 65536
    RSEQ_PROBE = 64
    GSO_MAX = 64            # replies per UDP GSO message
    GSO_BYTES = 65000       # payload bytes per UDP GSO message (below the 64 KiB IP limit)
    K_MALFORMED = 0
    K_NATIVE = 1
    K_LEGACY = 2
    K_STAMP = 3
    K_STAMP_REFLECTED = 4
    R_SHORT = 1
    R_MAGIC = 2
    R_VERSION = 3
    R_TRUNCATED = 4
    R_LEGACY = 5
    R_NO_TAG = 6
    R_BAD_TAG = 7
    N_REASONS = 8


# Linux socket options the standard socket module does not name.
SO_TIMESTAMPNS_ = 35
SO_RXQ_OVFL_ = 40
UDP_SEGMENT_ = 103
UDP_GRO_ = 104
cdef int64_t NTP_OFFSET = 2208988800     # seconds from 1900 (NTP era 0) to 1970
NTP_EPOCH_OFFSET = NTP_OFFSET


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
    uint16_t port
    uint8_t family
    uint8_t kind
    uint8_t reason
    uint8_t flags
    uint8_t ttl
    uint8_t pad[5]

RECORD = np.dtype([
    ("flow", "<u8"), ("session", "<u8"), ("seq", "<u8"), ("tx_ns", "<i8"), ("rx_ns", "<i8"),
    ("r_seq", "<u8"), ("t2_ns", "<i8"), ("t3_ns", "<i8"), ("addr", "u1", (16,)),
    ("length", "<u4"), ("port", "<u2"), ("family", "u1"), ("kind", "u1"), ("reason", "u1"),
    ("flags", "u1"), ("ttl", "u1"), ("pad", "V5"),
])
assert RECORD.itemsize == sizeof(rec_t)


# ---------------------------------------------------------------- errno path and clocks

cdef int _errno_path(int err) except -1:
    """EINTR: run Python signal handlers (they may raise), then 0 = retry.
    EAGAIN (= EWOULDBLOCK on Linux)/ENOBUFS: 1 = nothing done now.
    A send refused for this one datagram (a local firewall drop: EPERM/EACCES; no route;
    ICMP-reported unreachable; too big): 2 = count it, skip it, go on. Anything else: OSError."""
    if err == EINTR:
        if PyErr_CheckSignals() < 0:
            return -1
        return 0
    if err == EAGAIN or err == ENOBUFS:
        return 1
    if err in (EPERM, EACCES, ENETUNREACH, EHOSTUNREACH, EHOSTDOWN, ENETDOWN, ECONNREFUSED,
               EMSGSIZE):
        return 2
    raise OSError(err, os.strerror(err))


cdef int _send_all(int fd, mmsghdr *msgs, int n, int *done, size_t seg,
                   uint64_t *refused) except -1 nogil:
    """sendmmsg until msgs[done:n] are all out (done advances). EAGAIN/ENOBUFS: wait in
    poll(POLLOUT). A message the kernel refuses for itself (_errno_path 2) is skipped and its
    datagrams added to refused (its iovecs, or its bytes / seg for one GSO buffer).
    Returns 0, or EIO (UDP GSO refused by the device) for the caller to resend without GSO."""
    cdef int rc, err
    cdef pollfd pfd
    cdef msghdr *h
    while done[0] < n:
        rc = sendmmsg(fd, msgs + done[0], n - done[0], 0)
        if rc >= 0:
            done[0] += rc
            continue
        err = errno
        if err == EIO:
            return EIO
        with gil:
            rc = _errno_path(err)
        if rc == 1:
            pfd.fd = fd
            pfd.events = POLLOUT
            poll(&pfd, 1, 10)
        elif rc == 2:
            h = &msgs[done[0]].msg_hdr
            if h.msg_iovlen > 1 or seg == 0:
                refused[0] += h.msg_iovlen
            else:
                refused[0] += h.msg_iov[0].iov_len // seg
            done[0] += 1
    return 0


cdef inline int64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int _sleep_abs(int64_t deadline) noexcept nogil:
    # clock_nanosleep returns the error number itself; it does not set errno.
    cdef timespec ts
    ts.tv_sec = deadline // 1000000000
    ts.tv_nsec = deadline % 1000000000
    return clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL)


cdef int _wait_until(int64_t deadline, int64_t spin) except -1:
    """Sleep to the absolute CLOCK_REALTIME deadline, the last `spin` ns busy-waiting.
    Returns 0 on time, 1 when a signal interrupted the sleep (handlers have run)."""
    cdef int rc = 0
    with nogil:
        if deadline - spin > _now():
            rc = _sleep_abs(deadline - spin)
        if rc == 0 and spin > 0:
            while _now() < deadline:
                pass
    if rc == 0:
        return 0
    if _errno_path(rc) == 0:
        return 1
    return 1


def now_ns():
    """CLOCK_REALTIME in integer nanoseconds."""
    return _now()


def sleep_until(int64_t deadline_ns, int64_t spin_ns=0):
    """Sleep until the absolute CLOCK_REALTIME deadline (TIMER_ABSTIME), spinning the last
    `spin_ns`. Returns the lateness in ns (negative never happens), or None when a signal
    cut the sleep short (its Python handler has run)."""
    if _wait_until(deadline_ns, spin_ns):
        return None
    return _now() - deadline_ns


def set_timerslack(unsigned long ns):
    """Lower this thread's timer slack (prctl PR_SET_TIMERSLACK) so sleeps end on time."""
    if prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) != 0:
        _errno_path(errno)


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


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
    cdef int64_t sec = <int64_t>_be32(p) - NTP_OFFSET
    cdef uint64_t frac = _be32(p + 4)
    return sec * 1000000000 + <int64_t>((frac * 1000000000) >> 32)


cdef inline void _ns_to_ntp(uint8_t *p, int64_t ns) noexcept nogil:
    cdef int64_t sec = ns // 1000000000
    cdef uint64_t rem = ns % 1000000000
    _stbe32(p, <uint32_t>(sec + NTP_OFFSET))
    _stbe32(p + 4, <uint32_t>((rem << 32) // 1000000000))


cdef void _sockaddr_from(object dest, sockaddr_storage *ss, socklen_t *slen) except *:
    """dest = (family, packed address bytes, port) -> sockaddr."""
    cdef sockaddr_in *a4 = <sockaddr_in *>ss
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>ss
    cdef bytes packed = dest[1]
    memset(ss, 0, sizeof(sockaddr_storage))
    if dest[0] == AF_INET:
        a4.sin_family = AF_INET
        a4.sin_port = ntohs(<uint16_t>dest[2])
        memcpy(&a4.sin_addr, <char *>packed, 4)
        slen[0] = sizeof(sockaddr_in)
    else:
        a6.sin6_family = AF_INET6
        a6.sin6_port = ntohs(<uint16_t>dest[2])
        memcpy(&a6.sin6_addr, <char *>packed, 16)
        slen[0] = sizeof(sockaddr_in6)


# ---------------------------------------------------------------- sender and scheduler

cdef class Sender:
    """Builds packets in preallocated buffers and sends them with one sendmmsg per batch,
    optionally as UDP GSO super-datagrams (`segments` packets per message). Each packet
    carries its own CLOCK_REALTIME stamp taken while the batch is built.

    The schedule: slot k is due at start_ns + k * interval_ns (an absolute grid, no drift).
    run() follows it; lateness of each packet's stamp behind its slot goes into `lateness`
    until take_lateness() empties it."""

    cdef int fd
    cdef readonly int wire, size, batch, segments
    cdef readonly uint64_t session, seq, sent, k, missed_slots, skipped_slots, send_errors
    cdef readonly int64_t start_ns, interval_ns, spin_ns, comp_ns
    # lateness is recorded for every lat_every-th slot (a systematic sample at high rates);
    # slots further behind than catchup_max are skipped instead of sent late
    cdef public uint64_t lat_every, catchup_max
    cdef uint8_t *bufs
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef uint8_t *ctrl
    cdef sockaddr_storage dest
    cdef socklen_t dest_len
    cdef pf_hmac_key hkey
    cdef bint keyed
    cdef object _lat
    cdef int64_t[::1] lat
    cdef Py_ssize_t lat_n
    # STAMP Error Estimate (RFC 4656 §4.1.2) written into test packets; settable
    cdef public uint16_t error_estimate

    def __cinit__(self):
        self.bufs = NULL
        self.msgs = NULL
        self.iovs = NULL
        self.ctrl = NULL
        self.error_estimate = 0x0001

    def __init__(self, int fd, dest, int wire=0, uint64_t session=0, int size=0,
                 int batch=64, int segments=1, key=None, Py_ssize_t lateness_capacity=1 << 20):
        cdef int minimum = (HEADER, LEGACY_SIZE, STAMP_SIZE)[wire]
        if wire == WIRE_NATIVE and key:
            minimum += TAG
        if batch < 1 or batch > 1024 or segments < 1 or segments > 128:
            raise ValueError("batch must be 1..1024 and segments 1..128")
        self.fd = fd
        self.wire = wire
        self.session = session
        self.size = max(size, minimum)
        if wire == WIRE_LEGACY:
            self.size = LEGACY_SIZE
        self.batch = batch
        self.segments = segments
        self.keyed = bool(key) and wire == WIRE_NATIVE
        if self.keyed:
            pf_hmac_init(&self.hkey, <const uint8_t *><char *>key, len(key))
        _sockaddr_from(dest, &self.dest, &self.dest_len)
        self.bufs = <uint8_t *>calloc(batch * segments, self.size)
        self.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.iovs = <iovec *>calloc(batch, sizeof(iovec))
        self.ctrl = <uint8_t *>calloc(batch, CMSG_SPACE(sizeof(uint16_t)))
        if not (self.bufs and self.msgs and self.iovs and self.ctrl):
            raise MemoryError()
        self._lat = np.zeros(lateness_capacity, np.int64)
        self.lat = self._lat
        self.interval_ns = 1000000
        self.start_ns = _now()

    def __dealloc__(self):
        free(self.bufs)
        free(self.msgs)
        free(self.iovs)
        free(self.ctrl)

    @property
    def per_call(self):
        """Packets one sendmmsg can carry."""
        return self.batch * self.segments

    def start(self, int64_t start_ns, int64_t interval_ns, int64_t spin_ns=0, uint64_t seq=0):
        """Anchor the grid: slot k is due at start_ns + k * interval_ns."""
        if interval_ns < 1:
            raise ValueError("interval must be at least 1 ns")
        self.start_ns = start_ns
        self.interval_ns = interval_ns
        self.spin_ns = spin_ns
        self.comp_ns = 0
        self.k = 0
        self.seq = seq
        self.lat_every = max(1, self.lat_every)
        self.catchup_max = max(self.catchup_max, self.batch * self.segments)

    def skip_sequence(self, uint64_t n=1):
        """Leave n sequence numbers unused (deliberate loss, SIGUSR1)."""
        self.seq += n

    def take_lateness(self):
        """Lateness (ns) of every packet sent since the last call, as a new int64 array."""
        out = self._lat[:self.lat_n].copy()
        self.lat_n = 0
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _build(self, uint8_t *p, uint64_t seq, int64_t now, uint8_t flags) noexcept nogil:
        cdef uint8_t tag[32]
        if self.wire == WIRE_NATIVE:
            p[0] = 0x50
            p[1] = 0x46
            p[2] = 1
            p[3] = flags | (FLAG_AUTH if self.keyed else 0)
            _st64(p + 8, self.session)
            _st64(p + 16, seq)
            _st64(p + 24, <uint64_t>now)
            if self.keyed:
                pf_hmac(&self.hkey, p, self.size - TAG, tag)
                memcpy(p + self.size - TAG, tag, TAG)
        elif self.wire == WIRE_LEGACY:
            _st64(p, seq)
            _st64(p + 8, <uint64_t>(now // 1000))
            p[16] = flags & FLAG_FINAL
        else:
            _stbe32(p, <uint32_t>seq)
            _ns_to_ntp(p + 4, now)
            _stbe16(p + 12, self.error_estimate)
            # bytes 14-15 (RFC 8972 SSID) carry the low 16 bits of the session id
            _stbe16(p + 14, <uint16_t>self.session)

    cdef (int, int) _messages(self, int first, int n) noexcept nogil:
        """Point up to `batch` messages at the built packets first..n-1, `segments` packets
        per message; returns (messages, the packet after the last one covered)."""
        cdef int m = 0, k
        cdef cmsghdr *c
        while first < n and m < self.batch:
            k = min(self.segments, n - first)
            self.iovs[m].iov_base = self.bufs + <size_t>first * self.size
            self.iovs[m].iov_len = <size_t>k * self.size
            memset(&self.msgs[m].msg_hdr, 0, sizeof(msghdr))
            self.msgs[m].msg_hdr.msg_name = &self.dest
            self.msgs[m].msg_hdr.msg_namelen = self.dest_len
            self.msgs[m].msg_hdr.msg_iov = &self.iovs[m]
            self.msgs[m].msg_hdr.msg_iovlen = 1
            if k > 1:
                # UDP_SEGMENT: the kernel cuts this buffer into datagrams of `size` bytes.
                self.msgs[m].msg_hdr.msg_control = self.ctrl + m * CMSG_SPACE(sizeof(uint16_t))
                self.msgs[m].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
                c = CMSG_FIRSTHDR(&self.msgs[m].msg_hdr)
                c.cmsg_level = SOL_UDP
                c.cmsg_type = UDP_SEGMENT
                c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                (<uint16_t *>CMSG_DATA(c))[0] = <uint16_t>self.size
            first += k
            m += 1
        return m, first

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _transmit(self, int n, uint8_t flags, bint scheduled) except -1 nogil:
        """Build packets for the next n sequence numbers (slots, when scheduled) and send
        them all with sendmmsg. Runs without the GIL; takes it only on a failed syscall."""
        cdef int i, m, nmsg, done, rc, first, end
        cdef int64_t t, slot
        cdef uint8_t *p
        for i in range(n):
            p = self.bufs + <size_t>i * self.size
            t = _now()
            self._build(p, self.seq + i, t, flags)
            if scheduled:
                slot = self.start_ns + <int64_t>(self.k + i) * self.interval_ns
                if (self.k + i) % self.lat_every == 0 and self.lat_n < self.lat.shape[0]:
                    self.lat[self.lat_n] = t - slot
                    self.lat_n += 1
                if t - slot >= self.interval_ns:
                    self.missed_slots += 1
        first = 0
        while first < n:
            nmsg, end = self._messages(first, n)
            done = 0
            rc = _send_all(self.fd, self.msgs, nmsg, &done, self.size, &self.send_errors)
            if rc == EIO and self.segments > 1:
                # UDP GSO refused by the route's device (no checksum offload, IPsec): send
                # the rest, and everything after, one datagram per message
                self.segments = 1
                for m in range(done):
                    first += <int>(self.iovs[m].iov_len // self.size)
                continue
            if rc:
                with gil:
                    _errno_path(rc)
            first = end
        self.seq += n
        self.sent += n
        if scheduled:
            self.k += n
        return 0

    def send(self, int n=1, bint final=False):
        """Send n packets now (unscheduled), e.g. the final packet; returns n."""
        if n < 1 or n > self.batch * self.segments:
            raise ValueError("n must be 1..batch*segments")
        with nogil:
            self._transmit(n, FLAG_FINAL if final else 0, False)
        return n

    cdef int _run(self, int64_t until_ns, uint64_t limit, int64_t spin) except -1 nogil:
        cdef uint64_t sent0 = self.sent, due, skip, n
        cdef uint64_t cap = self.batch * self.segments
        cdef int64_t deadline, now, target
        cdef int rc
        while True:
            if limit and self.sent - sent0 >= limit:
                return 0
            if self.lat_n + <Py_ssize_t>cap > self.lat.shape[0]:
                return 0
            deadline = self.start_ns + <int64_t>self.k * self.interval_ns
            if deadline >= until_ns:
                return 0
            now = _now()
            if now < deadline:
                rc = 0
                if spin > 0:
                    if deadline - spin > now:
                        rc = _sleep_abs(deadline - spin)
                        if rc == 0:
                            # precise: spin just longer than the timer's recent wake-up
                            # lateness (a decaying maximum, bounded so that one preemption
                            # cannot pin it high)
                            now = _now() - (deadline - spin) + SPIN_MARGIN
                            spin = max(spin - spin // 256, min(now, SPIN_MAX), SPIN_MIN)
                            self.spin_ns = spin
                else:
                    # economy: sleep only, aimed early by the running mean of the timer's
                    # wake-up lateness (irtt's "comp" timer), so sends centre on the slot
                    target = deadline - self.comp_ns
                    if target > now:
                        rc = _sleep_abs(target)
                        if rc == 0:
                            self.comp_ns += (_now() - target - self.comp_ns) // 16
                            self.comp_ns = max(0, min(self.comp_ns, COMP_MAX,
                                                      self.interval_ns // 2))
                if rc != 0:
                    with gil:
                        _errno_path(rc)
                    return 1        # a signal: let the caller look at its flags
                while spin > 0 and _now() < deadline:
                    pass
                now = _now()
            due = 1
            if now >= deadline:
                due = <uint64_t>((now - self.start_ns) // self.interval_ns) - self.k + 1
            if due > self.catchup_max:
                skip = due - self.catchup_max
                self.k += skip
                self.skipped_slots += skip
                self.missed_slots += skip
                due = self.catchup_max
            n = min(due, cap)
            if limit and n > limit - (self.sent - sent0):
                n = limit - (self.sent - sent0)
            self._transmit(<int>n, 0, True)

    def run(self, int64_t until_ns, uint64_t limit=0, bint precise=True):
        """Send on the grid until slot time `until_ns`, `limit` packets (0 = no limit),
        a full lateness buffer, or a signal. Slots found already due are sent together in
        batches of one sendmmsg each; slots more than catchup_max behind are skipped and
        counted (skipped_slots, missed_slots) without using sequence numbers.
        The whole loop runs without the GIL, so another thread's Python work cannot delay
        a slot. Returns the packets sent by this call."""
        cdef uint64_t sent0 = self.sent
        cdef int64_t spin = self.spin_ns if precise else 0
        with nogil:
            self._run(until_ns, limit, spin)
        return self.sent - sent0


# ---------------------------------------------------------------- receiver and ring

cdef class Receiver:
    """recvmmsg into preallocated buffers, parse every datagram into a numpy ring of
    RECORD entries. pump() fills the ring; drain() hands the new records to the consumer.
    If the consumer falls behind, the oldest records are overwritten and counted in
    `overwritten` at the next drain. Malformed datagrams are recorded (kind 0, reason) and
    counted by reason in `malformed`."""

    cdef int fd
    cdef readonly int batch, bufsize, mode
    cdef readonly uint64_t head, tail, datagrams, overwritten, kernel_drops, capacity
    cdef uint64_t reasons[N_REASONS]
    cdef object _ring
    cdef rec_t *ring
    cdef uint8_t *bufs
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef sockaddr_storage *names
    cdef uint8_t *ctrl
    cdef pf_hmac_key hkey
    cdef bint keyed
    cdef size_t ctrl_len
    cdef readonly bint reflect
    cdef readonly uint64_t reflected, reflect_errors
    cdef public int64_t coalesce_ns
    cdef mmsghdr *smsgs
    cdef iovec *siovs
    cdef uint64_t *rseq_keys
    cdef uint64_t *rseq_vals
    cdef mmsghdr *gmsgs
    cdef uint8_t *sctrl
    cdef public bint reflect_gso
    # STAMP Error Estimate (RFC 4656 §4.1.2) written into reflections; settable
    cdef public uint16_t error_estimate

    def __cinit__(self):
        self.bufs = NULL
        self.msgs = NULL
        self.iovs = NULL
        self.names = NULL
        self.ctrl = NULL
        self.smsgs = NULL
        self.siovs = NULL
        self.rseq_keys = NULL
        self.rseq_vals = NULL
        self.gmsgs = NULL
        self.sctrl = NULL
        self.error_estimate = 0x0001

    def __init__(self, int fd, int batch=64, uint64_t capacity=1 << 18, int bufsize=65536,
                 key=None, int mode=0, bint reflect=False):
        """mode WIRE_NATIVE: native and legacy packets; WIRE_STAMP: STAMP Session-Sender
        packets; WIRE_STAMP_REFLECTED: STAMP replies (a sender reading its reflections).
        reflect=True: answer every valid native or STAMP test packet to its source (the
        socket must not use UDP GRO): native replies carry the REFLECTED flag, this
        reflector's per-flow sequence, T2 (kernel receive time) and T3 (send time); STAMP
        replies follow RFC 8762 §4.3 as a stateful reflector, copying the received TTL."""
        cdef int i
        if capacity < 1 or (capacity & (capacity - 1)):
            raise ValueError("ring capacity must be a power of two")
        self.fd = fd
        self.batch = batch
        self.bufsize = bufsize
        self.mode = mode
        self.capacity = capacity
        self._ring = np.zeros(capacity, RECORD)
        cdef uint8_t[::1] raw = self._ring.view(np.uint8)
        self.ring = <rec_t *>&raw[0]
        self.keyed = bool(key)
        if self.keyed:
            pf_hmac_init(&self.hkey, <const uint8_t *><char *>key, len(key))
        self.ctrl_len = 256
        self.bufs = <uint8_t *>calloc(batch, bufsize)
        self.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.iovs = <iovec *>calloc(batch, sizeof(iovec))
        self.names = <sockaddr_storage *>calloc(batch, sizeof(sockaddr_storage))
        self.ctrl = <uint8_t *>calloc(batch, self.ctrl_len)
        if not (self.bufs and self.msgs and self.iovs and self.names and self.ctrl):
            raise MemoryError()
        for i in range(batch):
            self.iovs[i].iov_base = self.bufs + <size_t>i * bufsize
            self.iovs[i].iov_len = bufsize
        self.reflect = reflect
        if reflect:
            self.smsgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
            self.siovs = <iovec *>calloc(batch, sizeof(iovec))
            self.rseq_keys = <uint64_t *>calloc(RSEQ_SLOTS, sizeof(uint64_t))
            self.rseq_vals = <uint64_t *>calloc(RSEQ_SLOTS, sizeof(uint64_t))
            self.gmsgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
            self.sctrl = <uint8_t *>calloc(batch, CMSG_SPACE(sizeof(uint16_t)))
            if not (self.smsgs and self.siovs and self.rseq_keys and self.rseq_vals
                    and self.gmsgs and self.sctrl):
                raise MemoryError()

    def __dealloc__(self):
        free(self.bufs)
        free(self.msgs)
        free(self.iovs)
        free(self.names)
        free(self.ctrl)
        free(self.smsgs)
        free(self.siovs)
        free(self.rseq_keys)
        free(self.rseq_vals)
        free(self.gmsgs)
        free(self.sctrl)

    cdef uint64_t _next_rseq(self, uint64_t flow) noexcept nogil:
        # Open addressing by flow id; after RSEQ_PROBE collisions the oldest slot is reused
        # (that flow's reflector sequence restarts, which its sender sees as a new run).
        cdef uint64_t key = flow | 1, i = flow & (RSEQ_SLOTS - 1), v
        cdef int probe
        for probe in range(RSEQ_PROBE):
            if self.rseq_keys[i] == key or self.rseq_keys[i] == 0:
                break
            i = (i + 1) & (RSEQ_SLOTS - 1)
        if self.rseq_keys[i] != key:
            self.rseq_keys[i] = key
            self.rseq_vals[i] = 0
        v = self.rseq_vals[i]
        self.rseq_vals[i] = v + 1
        return v

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _reflect(self, int nmsg, uint64_t head0) except -1 nogil:
        """Answer the nmsg datagrams just stored at ring[head0...] (one record each)."""
        cdef int i, n = 0, done = 0, rc, nsend
        cdef mmsghdr *out
        cdef rec_t *r
        cdef uint8_t *p
        cdef uint8_t tag[32]
        cdef uint8_t sender[14]
        cdef uint32_t length, newlen
        cdef int64_t t3 = _now()
        for i in range(nmsg):
            r = &self.ring[(head0 + i) & (self.capacity - 1)]
            p = <uint8_t *>self.iovs[i].iov_base
            length = self.msgs[i].msg_len
            if r.kind == K_NATIVE and not (r.flags & FLAG_REFLECTED):
                newlen = length
                if newlen < REFLECTED_HEADER + (TAG if r.flags & FLAG_AUTH else 0):
                    newlen = REFLECTED_HEADER + (TAG if r.flags & FLAG_AUTH else 0)
                    memset(p + length, 0, newlen - length)
                p[3] |= FLAG_REFLECTED
                _st64(p + 32, self._next_rseq(r.flow))
                _st64(p + 40, <uint64_t>r.rx_ns)
                _st64(p + 48, <uint64_t>t3)
                if self.keyed:
                    pf_hmac(&self.hkey, p, newlen - TAG, tag)
                    memcpy(p + newlen - TAG, tag, TAG)
            elif r.kind == K_STAMP:
                newlen = length
                memcpy(sender, p, 14)
                _stbe32(p, <uint32_t>self._next_rseq(r.flow))
                _ns_to_ntp(p + 4, t3)
                _stbe16(p + 12, self.error_estimate)
                _ns_to_ntp(p + 16, r.rx_ns)
                memcpy(p + 24, sender, 14)
                p[38] = 0
                p[39] = 0
                p[40] = r.ttl
                p[41] = 0
                p[42] = 0
                p[43] = 0
            else:
                continue
            self.siovs[n].iov_base = p
            self.siovs[n].iov_len = newlen
            memset(&self.smsgs[n].msg_hdr, 0, sizeof(msghdr))
            self.smsgs[n].msg_hdr.msg_name = &self.names[i]
            self.smsgs[n].msg_hdr.msg_namelen = self.msgs[i].msg_hdr.msg_namelen
            self.smsgs[n].msg_hdr.msg_iov = &self.siovs[n]
            self.smsgs[n].msg_hdr.msg_iovlen = 1
            n += 1
        out = self.smsgs
        nsend = n
        if self.reflect_gso and n > 1:
            out = self.gmsgs
            nsend = self._coalesce(n)
        while True:
            rc = _send_all(self.fd, out, nsend, &done, 0, &self.reflect_errors)
            if rc == EIO and out == self.gmsgs:
                # UDP GSO refused (no checksum offload on the route's device, IPsec): send
                # the rest of this batch, and every later one, one datagram per message.
                self.reflect_gso = False
                rc = 0
                for i in range(done):
                    rc += <int>self.gmsgs[i].msg_hdr.msg_iovlen
                out = self.smsgs
                nsend = n
                done = rc
                continue
            if rc:
                with gil:
                    _errno_path(rc)
            break
        self.reflected += n
        return 0

    cdef int _coalesce(self, int n) noexcept nogil:
        # UDP GSO (UDP_SEGMENT): consecutive replies to one address with one length leave as
        # one message of several iovecs that the kernel cuts back into datagrams of that
        # length, so the stack runs once per group instead of once per reply.
        cdef int j = 0, k, m = 0
        cdef size_t seg
        cdef msghdr *h
        cdef cmsghdr *c
        while j < n:
            seg = self.siovs[j].iov_len
            h = &self.smsgs[j].msg_hdr
            k = 1
            while j + k < n and k < GSO_MAX and (k + 1) * seg <= GSO_BYTES:
                if self.siovs[j + k].iov_len != seg or \
                        self.smsgs[j + k].msg_hdr.msg_namelen != h.msg_namelen or \
                        memcmp(self.smsgs[j + k].msg_hdr.msg_name, h.msg_name, h.msg_namelen) != 0:
                    break
                k += 1
            self.gmsgs[m].msg_hdr = h[0]
            self.gmsgs[m].msg_hdr.msg_iovlen = k
            if k > 1:
                self.gmsgs[m].msg_hdr.msg_control = self.sctrl + m * CMSG_SPACE(sizeof(uint16_t))
                self.gmsgs[m].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
                c = CMSG_FIRSTHDR(&self.gmsgs[m].msg_hdr)
                c.cmsg_level = SOL_UDP
                c.cmsg_type = UDP_SEGMENT
                c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                (<uint16_t *>CMSG_DATA(c))[0] = <uint16_t>seg
            m += 1
            j += k
        return m

    @property
    def malformed(self):
        """Malformed datagrams so far, by reason name."""
        return {REASONS[i]: self.reasons[i] for i in range(1, N_REASONS)}

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _parse(self, const uint8_t *p, uint32_t n, rec_t *r) noexcept nogil:
        cdef uint8_t tag[32]
        r.kind = K_MALFORMED
        r.reason = 0
        r.flags = 0
        r.session = 0
        r.seq = 0
        r.tx_ns = 0
        r.r_seq = 0
        r.t2_ns = 0
        r.t3_ns = 0
        if self.mode == WIRE_STAMP:
            if n < STAMP_SIZE:
                r.reason = R_SHORT
                return
            r.seq = _be32(p)
            r.tx_ns = _ntp_to_ns(p + 4)
            r.session = (<uint64_t>p[14] << 8) | p[15]
            r.kind = K_STAMP
            return
        if self.mode == WIRE_STAMP_REFLECTED:
            # RFC 8762 §4.3.1 reflector packet: seq | T3 | err | mbz | T2 | sender seq | T1 | ...
            if n < STAMP_SIZE:
                r.reason = R_SHORT
                return
            r.r_seq = _be32(p)
            r.t3_ns = _ntp_to_ns(p + 4)
            r.t2_ns = _ntp_to_ns(p + 16)
            r.seq = _be32(p + 24)
            r.tx_ns = _ntp_to_ns(p + 28)
            r.session = (<uint64_t>p[14] << 8) | p[15]
            r.ttl = p[40]
            r.kind = K_STAMP_REFLECTED
            return
        if n == LEGACY_SIZE:
            if self.keyed:
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
        if n < 4 or p[0] != 0x50 or p[1] != 0x46:
            r.reason = R_SHORT if n < LEGACY_SIZE else R_MAGIC
            return
        if p[2] != 1:
            r.reason = R_VERSION
            return
        r.flags = p[3]
        if n < HEADER or ((r.flags & FLAG_AUTH) and n < HEADER + TAG) or \
                ((r.flags & FLAG_REFLECTED) and n < REFLECTED_HEADER):
            r.reason = R_TRUNCATED
            return
        if self.keyed:
            if not (r.flags & FLAG_AUTH):
                r.reason = R_NO_TAG
                return
            pf_hmac(&self.hkey, p, n - TAG, tag)
            if memcmp(tag, p + n - TAG, TAG) != 0:
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

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef uint64_t _store(self, int nmsg, int64_t fallback_ns) noexcept nogil:
        """Parse received messages into the ring; returns records written."""
        cdef int i
        cdef uint32_t len_, seg, off, part
        cdef int64_t rx
        cdef uint8_t ttl
        cdef cmsghdr *c
        cdef timespec *ts
        cdef sockaddr_in *a4
        cdef sockaddr_in6 *a6
        cdef rec_t *r
        cdef uint8_t addr[16]
        cdef uint16_t port
        cdef uint8_t fam
        cdef uint64_t written = 0, akey
        for i in range(nmsg):
            rx = fallback_ns
            seg = 0
            ttl = 0
            c = CMSG_FIRSTHDR(&self.msgs[i].msg_hdr)
            while c != NULL:
                if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
                    ts = <timespec *>CMSG_DATA(c)
                    rx = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
                elif c.cmsg_level == SOL_SOCKET and c.cmsg_type == SO_RXQ_OVFL:
                    self.kernel_drops = (<uint32_t *>CMSG_DATA(c))[0]
                elif c.cmsg_level == SOL_UDP and c.cmsg_type == UDP_GRO:
                    seg = (<int *>CMSG_DATA(c))[0]
                elif (c.cmsg_level == IPPROTO_IP and c.cmsg_type == IP_TTL) or \
                        (c.cmsg_level == IPPROTO_IPV6 and c.cmsg_type == IPV6_HOPLIMIT):
                    ttl = <uint8_t>(<int *>CMSG_DATA(c))[0]
                c = CMSG_NXTHDR(&self.msgs[i].msg_hdr, c)
            memset(addr, 0, 16)
            if self.names[i].ss_family == AF_INET6:
                a6 = <sockaddr_in6 *>&self.names[i]
                memcpy(addr, &a6.sin6_addr, 16)
                port = ntohs(a6.sin6_port)
                fam = 6
            else:
                a4 = <sockaddr_in *>&self.names[i]
                addr[10] = 0xff
                addr[11] = 0xff
                memcpy(addr + 12, &a4.sin_addr, 4)
                port = ntohs(a4.sin_port)
                fam = 4
            akey = _mix(_ld64(addr) ^ _mix(_ld64(addr + 8) ^ port))
            len_ = self.msgs[i].msg_len
            if seg == 0 or seg >= len_:
                seg = len_
            off = 0
            while True:
                part = min(seg, len_ - off)
                r = &self.ring[self.head & (self.capacity - 1)]
                self._parse(<uint8_t *>self.iovs[i].iov_base + off, part, r)
                self.reasons[r.reason] += 1
                r.rx_ns = rx
                r.length = part
                r.ttl = ttl
                memcpy(r.addr, addr, 16)
                r.port = port
                r.family = fam
                r.flow = _mix(akey ^ r.session)
                self.head += 1
                written += 1
                off += part
                if off >= len_:
                    break
        self.datagrams += written
        return written

    cdef int _pump(self, int64_t until_ns, uint64_t max_records, uint64_t *got) except -1 nogil:
        cdef int i, rc, err, timeout_ms
        cdef int64_t now
        cdef uint64_t head0
        cdef pollfd pfd
        pfd.fd = self.fd
        pfd.events = POLLIN
        while True:
            for i in range(self.batch):
                memset(&self.msgs[i].msg_hdr, 0, sizeof(msghdr))
                self.msgs[i].msg_hdr.msg_name = &self.names[i]
                self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                self.msgs[i].msg_hdr.msg_iov = &self.iovs[i]
                self.msgs[i].msg_hdr.msg_iovlen = 1
                self.msgs[i].msg_hdr.msg_control = self.ctrl + i * self.ctrl_len
                self.msgs[i].msg_hdr.msg_controllen = self.ctrl_len
            rc = recvmmsg(self.fd, self.msgs, self.batch, MSG_DONTWAIT, NULL)
            err = errno
            if rc > 0:
                head0 = self.head
                got[0] += self._store(rc, _now())
                if self.reflect:
                    self._reflect(rc, head0)
            now = _now()
            if rc < 0:
                with gil:
                    rc = _errno_path(err)
                if rc == 0:
                    return 0        # a signal handler ran; let the caller look at its flags
            if (max_records and got[0] >= max_records) or now >= until_ns:
                return 0
            if 0 < rc < self.batch and self.coalesce_ns > 0:
                # The queue is drained. Timestamps come from the kernel, so reading later
                # costs no accuracy: let a few more datagrams queue up, and pay one syscall
                # and one wake-up per many datagrams instead of per few.
                _sleep_abs(min(now + self.coalesce_ns, until_ns))
            elif rc == 1:
                timeout_ms = <int>((until_ns - now + 999999) // 1000000)
                rc = poll(&pfd, 1, timeout_ms)
                if rc < 0:
                    err = errno
                    with gil:
                        rc = _errno_path(err)
                    if rc == 0:
                        return 0

    def pump(self, int64_t until_ns, uint64_t max_records=0):
        """Receive until CLOCK_REALTIME `until_ns`, or `max_records` new records, or a
        signal. Waits in poll() when the socket is empty; runs without the GIL throughout.
        Returns records added."""
        cdef uint64_t got = 0
        with nogil:
            self._pump(until_ns, max_records, &got)
        return got

    def drain(self):
        """The records added since the last drain, oldest first, as a new array. Records
        overwritten before they could be drained are added to `overwritten`."""
        cdef uint64_t n = self.head - self.tail
        cdef uint64_t start
        if n > self.capacity:
            self.overwritten += n - self.capacity
            self.tail = self.head - self.capacity
            n = self.capacity
        start = self.tail & (self.capacity - 1)
        self.tail = self.head
        if start + n <= self.capacity:
            return self._ring[start:start + n].copy()
        return np.concatenate((self._ring[start:], self._ring[:start + n - self.capacity]))
