# The send side: Sender builds packets in preallocated buffers, stamps each one while the
# batch is built, and sends the batch with sendmmsg (optionally as UDP GSO messages of
# `segments` packets); its schedule is an absolute grid of slots. _send_all is the one
# sendmmsg loop, shared with the Reflector.

cdef enum:
    SPIN_MIN = 40000        # ns: precise timer's adaptive spin bounds and margin
    SPIN_MAX = 250000
    SPIN_MARGIN = 50000
    COMP_MAX = 200000       # ns: economy timer's largest early aim


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


cdef inline void _set_segment(msghdr *h, uint8_t *ctrl, uint16_t seg) noexcept nogil:
    # UDP GSO (UDP_SEGMENT cmsg): the kernel cuts the message's payload into datagrams of
    # seg bytes. ctrl: this message's own CMSG_SPACE(sizeof(uint16_t)) bytes.
    cdef cmsghdr *c
    h.msg_control = ctrl
    h.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
    c = CMSG_FIRSTHDR(h)
    c.cmsg_level = SOL_UDP
    c.cmsg_type = UDP_SEGMENT
    c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
    (<uint16_t *>CMSG_DATA(c))[0] = seg


cdef Status _send_all(int fd, mmsghdr *msgs, int n, int *done, size_t seg,
                      uint64_t *refused, int *gso_errno) except ERROR nogil:
    """sendmmsg until msgs[done:n] are all out (done advances). AGAIN: wait in poll(POLLOUT).
    A message the kernel REFUSED is skipped and its datagrams added to refused (its iovecs,
    or its bytes / seg for one GSO buffer). Returns DONE, or NO_GSO for the caller to resend
    msgs[done:] without GSO (gso_errno[0] says why): EIO, the device refused UDP GSO; or
    EMSGSIZE / EINVAL (older kernels) for a GSO message, too big (a segment over the path
    MTU, over 64 KiB in all, more segments than UDP_MAX_SEGMENTS) while its datagrams one
    by one may well fit."""
    cdef int rc, err
    cdef Status st
    cdef pollfd pfd
    cdef msghdr *h
    while done[0] < n:
        rc = sendmmsg(fd, msgs + done[0], n - done[0], 0)
        if rc >= 0:
            done[0] += rc
            continue
        err = errno
        h = &msgs[done[0]].msg_hdr
        if err == EIO or ((err == EMSGSIZE or err == EINVAL) and (
                h.msg_iovlen > 1 or (seg and h.msg_iov[0].iov_len > seg))):
            gso_errno[0] = err
            return NO_GSO
        with gil:
            st = _errno_path(err)
        if st == AGAIN:
            pfd.fd = fd
            pfd.events = POLLOUT
            poll(&pfd, 1, 10)
        elif st == REFUSED:
            if h.msg_iovlen > 1 or seg == 0:
                refused[0] += h.msg_iovlen
            else:
                refused[0] += h.msg_iov[0].iov_len // seg
            done[0] += 1
    return DONE


cdef class Sender:
    """Builds packets in preallocated buffers and sends them with one sendmmsg per batch,
    optionally as UDP GSO super-datagrams (`segments` packets per message). Each packet
    carries its own wall-clock stamp taken while the batch is built. When the kernel
    refuses a GSO message (NO_GSO), the same packets go again one datagram per message, and
    so does everything after (`segments` becomes 1, `gso_errno` says why).

    The schedule: slot k is due at CLOCK_MONOTONIC start_ns + k * interval_ns (an absolute
    grid, no drift; a step of the wall clock does not move it).
    run() follows it; lateness of each packet's stamp behind its slot goes into `lateness`
    until take_lateness() empties it."""

    cdef int fd
    cdef readonly int wire, size, batch, segments, gso_errno
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
    cdef hmac_key hkey
    cdef bint keyed
    cdef uint8_t named          # FLAG_NAMED when the packets carry a name (names.pxi)
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

    def __init__(self, int fd, dest, int wire=K_NATIVE, uint64_t session=0, int size=0,
                 int batch=64, int segments=1, key=None, Py_ssize_t lateness_capacity=1 << 20,
                 bytes name=b""):
        cdef int minimum
        if not K_NATIVE <= wire <= K_STAMP:
            raise ValueError("wire must be K_NATIVE, K_LEGACY or K_STAMP")
        minimum = (HEADER, LEGACY_SIZE, STAMP_SIZE)[wire - K_NATIVE]
        if wire == K_NATIVE and key:
            minimum += TAG
        if batch < 1 or batch > 1024 or segments < 1 or segments > 128:
            raise ValueError("batch must be 1..1024 and segments 1..128")
        self.fd = fd
        self.wire = wire
        self.session = session
        self.size = max(size, minimum)
        if wire == K_LEGACY:
            self.size = LEGACY_SIZE
        if wire != K_NATIVE:
            name = b""
        self.size = named_size(self.size, name, bool(key))
        self.batch = batch
        self.segments = segments
        self.keyed = bool(key) and wire == K_NATIVE
        if self.keyed:
            _hmac_init(&self.hkey, <const uint8_t *><char *>key, len(key))
        _sockaddr_from(dest, &self.dest, &self.dest_len)
        self.bufs = <uint8_t *>calloc(batch * segments, self.size)
        self.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.iovs = <iovec *>calloc(batch, sizeof(iovec))
        self.ctrl = <uint8_t *>calloc(batch, CMSG_SPACE(sizeof(uint16_t)))
        if not (self.bufs and self.msgs and self.iovs and self.ctrl):
            raise MemoryError()
        self.named = _put_name(self.bufs, batch * segments, self.size, name)
        self._lat = np.zeros(lateness_capacity, np.int64)
        self.lat = self._lat
        self.interval_ns = 1000000
        self.start_ns = _mono()

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
        self.lat_every = max(<uint64_t>1, self.lat_every)
        self.catchup_max = max(self.catchup_max, <uint64_t>(self.batch * self.segments))

    def skip_sequence(self, uint64_t n=1):
        """Leave n sequence numbers unused (deliberate loss, SIGUSR1)."""
        self.seq += n

    def take_lateness(self):
        """Lateness (ns) of every packet sent since the last call, as a new int64 array."""
        out = self._lat[:self.lat_n].copy()
        self.lat_n = 0
        return out

    cdef void _build(self, uint8_t *p, uint64_t seq, int64_t now, uint8_t flags) noexcept nogil:
        if self.wire == K_NATIVE:
            _encode_native(p, self.session, seq, now,
                           flags | self.named | (FLAG_AUTH if self.keyed else 0))
            if self.keyed:
                _sign(&self.hkey, p, self.size)
        elif self.wire == K_LEGACY:
            _encode_legacy(p, seq, now, flags)
        else:
            _encode_stamp(p, seq, now, self.error_estimate, self.session)

    cdef (int, int) _messages(self, int first, int n) noexcept nogil:
        """Point up to `batch` messages at the built packets first..n-1, `segments` packets
        per message; returns (messages, the packet after the last one covered)."""
        cdef int m = 0, k
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
                _set_segment(&self.msgs[m].msg_hdr, self.ctrl + m * CMSG_SPACE(sizeof(uint16_t)),
                             <uint16_t>self.size)
            first += k
            m += 1
        return m, first

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Status _transmit(self, int n, uint8_t flags, bint scheduled) except ERROR nogil:
        """Build packets for the next n sequence numbers (slots, when scheduled) and send
        them all with sendmmsg. Runs without the GIL; takes it only on a failed syscall."""
        cdef int i, m, nmsg, done, first, end
        cdef int64_t t, slot, wall = _wall() - _mono()
        cdef uint8_t *p
        for i in range(n):
            p = self.bufs + <size_t>i * self.size
            t = _mono()
            self._build(p, self.seq + i, t + wall, flags)
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
            if _send_all(self.fd, self.msgs, nmsg, &done, self.size, &self.send_errors,
                         &self.gso_errno) == NO_GSO:
                if self.segments == 1:
                    with gil:
                        _errno_path(EIO)
                # UDP GSO refused by the route's device (no checksum offload, IPsec) or the
                # message too big for the path: send the refused message's packets again,
                # the rest, and everything after, one datagram per message
                self.segments = 1
                for m in range(done):
                    first += <int>(self.iovs[m].iov_len // self.size)
                continue
            first = end
        self.seq += n
        self.sent += n
        if scheduled:
            self.k += n
        return DONE

    def send(self, int n=1, bint final=False):
        """Send n packets now (unscheduled), e.g. the final packet; returns n."""
        if n < 1 or n > self.batch * self.segments:
            raise ValueError("n must be 1..batch*segments")
        with nogil:
            self._transmit(n, FLAG_FINAL if final else 0, False)
        return n

    cdef Status _run(self, int64_t until_ns, uint64_t limit, int64_t spin) except ERROR nogil:
        cdef uint64_t sent0 = self.sent, due, skip, n
        cdef uint64_t cap = self.batch * self.segments
        cdef int64_t deadline, now, target
        cdef int rc
        while True:
            if limit and self.sent - sent0 >= limit:
                return DONE
            if self.lat_n + <Py_ssize_t>cap > self.lat.shape[0]:
                return DONE
            deadline = self.start_ns + <int64_t>self.k * self.interval_ns
            if deadline >= until_ns:
                return DONE
            now = _mono()
            if now < deadline:
                rc = 0
                if spin > 0:
                    if deadline - spin > now:
                        rc = _sleep_abs(deadline - spin)
                        if rc == 0:
                            # precise: spin just longer than the timer's recent wake-up
                            # lateness (a decaying maximum, bounded so that one preemption
                            # cannot pin it high)
                            now = _mono() - (deadline - spin) + SPIN_MARGIN
                            spin = max(spin - spin // 256, min(now, SPIN_MAX), SPIN_MIN)
                            self.spin_ns = spin
                else:
                    # economy: sleep only, aimed early by the running mean of the timer's
                    # wake-up lateness (irtt's "comp" timer), so sends centre on the slot
                    target = deadline - self.comp_ns
                    if target > now:
                        rc = _sleep_abs(target)
                        if rc == 0:
                            self.comp_ns += (_mono() - target - self.comp_ns) // 16
                            self.comp_ns = max(0, min(self.comp_ns, COMP_MAX,
                                                      self.interval_ns // 2))
                if rc != 0:
                    with gil:
                        _errno_path(rc)
                    return INTERRUPTED      # let the caller look at its flags
                while spin > 0 and _mono() < deadline:
                    pass
                now = _mono()
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
