# The receive side: Receiver reads batches with recvmmsg into preallocated buffers and parses
# every datagram (every GRO segment) into a numpy ring of RECORD entries, with the kernel's
# receive timestamp (SCM_TIMESTAMPNS), TTL/hop limit and source address. pump() fills the
# ring without the GIL; drain() hands the new records to the consumer. The ring never
# blocks the socket: records overwritten before a drain are counted, not waited for.
# An empty socket is waited for in poll(); after a partial batch, an optional coalescing
# sleep lets datagrams queue (their stamps come from the kernel, so reading later costs no
# accuracy).

# flow ids: a 64-bit mix (splitmix64's finaliser) of source address, port and session
cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


cdef class Receiver:
    """recvmmsg into preallocated buffers, parse every datagram into a numpy ring of
    RECORD entries. pump() fills the ring; drain() hands the new records to the consumer.
    If the consumer falls behind, the oldest records are overwritten and counted in
    `overwritten` at the next drain. Malformed datagrams are recorded (kind 0, reason) and
    counted by reason in `malformed`."""

    cdef int fd
    cdef readonly int batch, bufsize, mode
    cdef readonly uint64_t head, tail, datagrams, overwritten, kernel_drops, capacity
    # socket buffers read: one per datagram, or one per coalesced burst with UDP GRO
    cdef readonly uint64_t messages
    cdef uint64_t reasons[N_REASONS]
    cdef object _ring
    cdef rec_t *ring
    cdef uint8_t *bufs
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef sockaddr_storage *names
    cdef uint8_t *ctrl
    cdef hmac_key hkey
    cdef bint keyed
    cdef size_t ctrl_len
    # after a read that drained the socket, wait before the next one: long enough for about
    # half a batch to queue at the rate of that read, coalesce_ns at least, coalesce_max_ns
    # at most (0: never wait)
    cdef public int64_t coalesce_ns, coalesce_max_ns
    cdef int64_t read_ns        # CLOCK_MONOTONIC of the last read that returned datagrams
    cdef uint32_t least         # shorter native test packets are R_SHORT_PROBE (Reflector)
    cdef bint split_gro         # cut UDP_GRO messages into their segments (not a Reflector)
    cdef name_book book         # senders' names noted in band (names.pxi)

    def __cinit__(self):
        self.bufs = NULL
        self.msgs = NULL
        self.iovs = NULL
        self.names = NULL
        self.ctrl = NULL

    def __init__(self, int fd, int batch=64, uint64_t capacity=1 << 18, int bufsize=65536,
                 key=None, int mode=K_NATIVE):
        """mode K_NATIVE: native and legacy packets; K_STAMP: STAMP Session-Sender
        packets; K_STAMP_REFLECTED: STAMP replies (a sender reading its reflections).
        key: accept only native packets with a valid tag."""
        cdef int i
        if capacity < 1 or (capacity & (capacity - 1)):
            raise ValueError("ring capacity must be a power of two")
        if batch < 1 or bufsize < 1:
            raise ValueError("batch and bufsize must be at least 1")
        self.fd = fd
        self.split_gro = True
        self.batch = batch
        self.bufsize = bufsize
        self.mode = mode
        self.capacity = capacity
        self._ring = np.zeros(capacity, RECORD)
        cdef uint8_t[::1] raw = self._ring.view(np.uint8)
        self.ring = <rec_t *>&raw[0]
        self.keyed = bool(key)
        if self.keyed:
            _hmac_init(&self.hkey, <const uint8_t *><char *>key, len(key))
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

    def __dealloc__(self):
        free(self.bufs)
        free(self.msgs)
        free(self.iovs)
        free(self.names)
        free(self.ctrl)
        _free_names(&self.book)

    cdef Status _received(self, int nmsg, uint64_t head0) except ERROR nogil:
        # called after every batch stored at ring[head0...]; the Reflector answers it here
        return DONE

    @property
    def malformed(self):
        """Malformed datagrams so far, by reason name."""
        return {REASONS[i]: self.reasons[i] for i in range(1, N_REASONS)}

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
        cdef uint32_t dropped
        for i in range(nmsg):
            rx = fallback_ns
            seg = 0
            ttl = 0
            dropped = 0     # SO_RXQ_OVFL comes only once the socket has dropped something
            c = CMSG_FIRSTHDR(&self.msgs[i].msg_hdr)
            while c != NULL:
                if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
                    ts = <timespec *>CMSG_DATA(c)
                    rx = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec + _wall_step
                elif c.cmsg_level == SOL_SOCKET and c.cmsg_type == SO_RXQ_OVFL:
                    dropped = (<uint32_t *>CMSG_DATA(c))[0]
                    self.kernel_drops = dropped
                elif c.cmsg_level == SOL_UDP and c.cmsg_type == UDP_GRO and self.split_gro:
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
                _parse(<uint8_t *>self.iovs[i].iov_base + off, part, r, self.mode,
                       &self.hkey if self.keyed else NULL, self.least)
                self.reasons[r.reason] += 1
                if r.kind == K_NATIVE and r.flags & FLAG_NAMED:
                    _note_name(&self.book, <uint8_t *>self.iovs[i].iov_base + off, part,
                               r.session)
                r.rx_ns = rx
                r.length = part
                r.ttl = ttl
                r.drops = dropped
                # a GRO buffer is stamped when it leaves GRO, after its last segment arrived
                r.coalesced = off + part < len_
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
        self.messages += nmsg
        return written

    cdef Status _pump(self, int64_t until_ns, uint64_t max_records,
                      uint64_t *got) except ERROR nogil:
        cdef int i, n, err, timeout_ms
        cdef Status st
        cdef int64_t now, wait, last
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
            n = recvmmsg(self.fd, self.msgs, self.batch, MSG_DONTWAIT, NULL)
            err = errno
            if n > 0:
                st = DONE
                head0 = self.head
                got[0] += self._store(n, _wall())
                self._received(n, head0)
            elif n == 0:
                st = AGAIN
            else:
                with gil:
                    st = _errno_path(err)
                if st == INTERRUPTED:
                    return st       # let the caller look at its flags
            now = _mono()
            last = self.read_ns
            if n > 0:
                self.read_ns = now
            if (max_records and got[0] >= max_records) or now >= until_ns:
                return DONE
            if st == AGAIN:
                # the socket is empty: sleep in poll until a datagram arrives or until_ns
                timeout_ms = <int>((until_ns - now + 999999) // 1000000)
                if poll(&pfd, 1, timeout_ms) < 0:
                    err = errno
                    with gil:
                        st = _errno_path(err)
                    if st == INTERRUPTED:
                        return st
            elif st == DONE and n < self.batch and self.coalesce_ns > 0:
                # The queue is drained. Timestamps come from the kernel, so reading later
                # costs no accuracy: let more datagrams queue up, and pay one syscall and one
                # wake-up per many datagrams instead of per few (at 1000 packets/s: ~200
                # wake-ups a second instead of ~2000; at high rates the wait stays short, so
                # the socket buffer holds what queues)
                wait = (now - last) * (self.batch // 2) // n
                wait = max(self.coalesce_ns, min(wait, self.coalesce_max_ns))
                _sleep_abs(min(now + wait, until_ns))

    def pump(self, int64_t until_ns, uint64_t max_records=0):
        """Receive until CLOCK_MONOTONIC `until_ns`, or `max_records` new records, or a
        signal. Waits in poll() when the socket is empty; runs without the GIL throughout.
        Returns records added."""
        cdef uint64_t got = 0
        with nogil:
            self._pump(until_ns, max_records, &got)
        return got

    cdef list _replies(self, int nmsg, uint64_t head0):
        # _feed: what the batch just stored at ring[head0...] is answered with (Reflector)
        return []

    def _feed(self, const uint8_t[:] data, const uint8_t[:] control=b"", int family=AF_INET):
        """For tests and the fuzzer: take one datagram as recvmmsg would have returned it --
        its bytes, the kernel's control messages (well-formed, as the kernel writes them)
        and a loopback source of `family` -- without a socket, from exactly sized heap
        copies, so AddressSanitizer sees any access past either. Returns the replies a
        Reflector builds for it, never sent ([] for a Receiver); the records are in the
        ring as after pump()."""
        cdef size_t n = data.shape[0], cn = control.shape[0]
        cdef uint8_t *buf = <uint8_t *>malloc(n if n else 1)
        cdef uint8_t *cbuf = <uint8_t *>malloc(cn if cn else 1)
        cdef void *base = self.iovs[0].iov_base
        cdef size_t base_len = self.iovs[0].iov_len
        cdef sockaddr_in *a4 = <sockaddr_in *>&self.names[0]
        cdef sockaddr_in6 *a6 = <sockaddr_in6 *>&self.names[0]
        cdef msghdr *h = &self.msgs[0].msg_hdr
        cdef uint64_t head0 = self.head
        if buf == NULL or cbuf == NULL:
            free(buf)
            free(cbuf)
            raise MemoryError()
        if n:
            memcpy(buf, &data[0], n)
        if cn:
            memcpy(cbuf, &control[0], cn)
        memset(h, 0, sizeof(msghdr))
        memset(&self.names[0], 0, sizeof(sockaddr_storage))
        if family == AF_INET6:
            a6.sin6_family = AF_INET6
            a6.sin6_port = ntohs(9)
            a6.sin6_addr.s6_addr[15] = 1
            h.msg_namelen = sizeof(sockaddr_in6)
        else:
            a4.sin_family = AF_INET
            a4.sin_port = ntohs(9)
            a4.sin_addr.s_addr = ntohl(0x7f000001)
            h.msg_namelen = sizeof(sockaddr_in)
        h.msg_name = &self.names[0]
        self.iovs[0].iov_base = buf
        self.iovs[0].iov_len = n
        h.msg_iov = &self.iovs[0]
        h.msg_iovlen = 1
        h.msg_control = cbuf if cn else NULL
        h.msg_controllen = cn
        self.msgs[0].msg_len = <unsigned int>n
        try:
            self._store(1, _wall())
            return self._replies(1, head0)
        finally:
            self.iovs[0].iov_base = base
            self.iovs[0].iov_len = base_len
            free(buf)
            free(cbuf)

    def take_names(self):
        """Senders' names noted in band since the last call: [(session, name bytes)]."""
        return _take_names(&self.book)

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
