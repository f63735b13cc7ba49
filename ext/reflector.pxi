# The reflector: a Receiver that answers every valid native or STAMP test packet to its
# source, from the buffer it arrived in, with one sendmmsg per received batch. Native replies
# carry the REFLECTED flag, this reflector's per-flow sequence, T2 (kernel receive time) and
# T3 (send time), and a new tag when keyed; STAMP replies follow RFC 8762 §4.3 as a stateful
# reflector, copying the received TTL. Replies to one address with one length leave as UDP
# GSO messages when reflect_gso is set. One record per received message: UDP_GRO control
# messages are ignored (its socket must not use GRO; each datagram is answered in place).
#
# Against abuse as an amplifier: a reply is never longer than its request (native requests
# shorter than a reply, REFLECTED_HEADER + TAG when keyed, are malformed `short_probe` and
# get none), and each source address gets at most max_pps replies per one-second window
# (started by its first request after the previous window, on kernel receive time);
# refusals are counted in `limited`.

cdef enum:
    RSEQ_SLOTS = 65536      # per-flow reflector sequences: open-addressing table size
    RSEQ_PROBE = 64
    GSO_MAX = 64            # replies per UDP GSO message
    GSO_BYTES = 65000       # payload bytes per UDP GSO message (below the 64 KiB IP limit)
    RATE_SLOTS = 16384      # per-source reply windows: open-addressing table size
    RATE_PROBE = 8


cdef struct rate_t:
    uint64_t key            # mix of the source address, | 1 (0: a free slot)
    int64_t start           # kernel receive time that opened its current window
    uint32_t count          # replies in that window


cdef class Reflector(Receiver):
    """A Receiver (same arguments; mode K_NATIVE or K_STAMP) that answers what it
    receives, never with more bytes than it received; `reflected` counts the replies the
    kernel took, `reflect_errors` the replies it refused, `limited` the requests refused a reply
    because their source address had max_pps replies in its current second (0 = no
    limit; settable)."""

    cdef readonly uint64_t reflected, reflect_errors, limited
    cdef public uint32_t max_pps
    cdef rate_t *rates
    cdef public bint reflect_gso
    # STAMP Error Estimate (RFC 4656 §4.1.2) written into reflections; settable
    cdef public uint16_t error_estimate
    cdef mmsghdr *smsgs
    cdef iovec *siovs
    cdef mmsghdr *gmsgs
    cdef uint8_t *sctrl
    cdef uint64_t *rseq_keys
    cdef uint64_t *rseq_vals

    def __cinit__(self):
        self.smsgs = NULL
        self.siovs = NULL
        self.gmsgs = NULL
        self.sctrl = NULL
        self.rseq_keys = NULL
        self.rseq_vals = NULL
        self.rates = NULL
        self.error_estimate = 0x0001

    def __init__(self, int fd, int batch=64, uint64_t capacity=1 << 18, int bufsize=65536,
                 key=None, int mode=K_NATIVE, uint32_t max_pps=0):
        if bufsize < REFLECTED_HEADER + TAG:
            raise ValueError(f"a reflector's buffers must hold a reflected packet: "
                             f"bufsize >= {REFLECTED_HEADER + TAG}")
        Receiver.__init__(self, fd, batch, capacity, bufsize, key, mode)
        self.least = REFLECTED_HEADER + (TAG if self.keyed else 0)
        self.split_gro = False
        self.max_pps = max_pps
        self.rates = <rate_t *>calloc(RATE_SLOTS, sizeof(rate_t))
        self.smsgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.siovs = <iovec *>calloc(batch, sizeof(iovec))
        self.gmsgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.sctrl = <uint8_t *>calloc(batch, CMSG_SPACE(sizeof(uint16_t)))
        self.rseq_keys = <uint64_t *>calloc(RSEQ_SLOTS, sizeof(uint64_t))
        self.rseq_vals = <uint64_t *>calloc(RSEQ_SLOTS, sizeof(uint64_t))
        if not (self.smsgs and self.siovs and self.gmsgs and self.sctrl and self.rseq_keys
                and self.rseq_vals and self.rates):
            raise MemoryError()

    def __dealloc__(self):
        free(self.smsgs)
        free(self.siovs)
        free(self.gmsgs)
        free(self.sctrl)
        free(self.rseq_keys)
        free(self.rseq_vals)
        free(self.rates)

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

    cdef bint _allow(self, const rec_t *r) noexcept nogil:
        # One more reply to r's source address within max_pps per window? Open addressing
        # by address; when RATE_PROBE slots are taken by others, the oldest window is reused.
        cdef uint64_t key = _mix(_ld64(r.addr) ^ _mix(_ld64(r.addr + 8))) | 1
        cdef uint64_t i = key & (RATE_SLOTS - 1), oldest = i
        cdef rate_t *e
        cdef int probe
        if self.max_pps == 0:
            return True
        for probe in range(RATE_PROBE):
            e = &self.rates[i]
            if e.key == key or e.key == 0:
                break
            if e.start < self.rates[oldest].start:
                oldest = i
            i = (i + 1) & (RATE_SLOTS - 1)
        else:
            e = &self.rates[oldest]
        if e.key != key or r.rx_ns - e.start >= 1000000000 or r.rx_ns < e.start:
            e.key = key
            e.start = r.rx_ns
            e.count = 0
        if e.count >= self.max_pps:
            self.limited += 1
            return False
        e.count += 1
        return True

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _answer(self, int nmsg, uint64_t head0) noexcept nogil:
        # Turns the datagrams just stored at ring[head0...] (one record per message) that
        # get an answer into their replies, in place and in their own length, and points
        # smsgs/siovs at them; returns how many.
        cdef int i, n = 0
        cdef rec_t *r
        cdef uint8_t *p
        cdef int64_t t3 = _wall()
        for i in range(nmsg):
            r = &self.ring[(head0 + i) & (self.capacity - 1)]
            if not (r.kind == K_STAMP or r.kind == K_NATIVE and not (r.flags & FLAG_REFLECTED)):
                continue
            if not self._allow(r):
                continue
            p = <uint8_t *>self.iovs[i].iov_base
            if r.kind == K_NATIVE:
                _reflect_native(p, r.length, self._next_rseq(r.flow), r.rx_ns, t3,
                                &self.hkey if self.keyed else NULL)
            else:
                _reflect_stamp(p, <uint32_t>self._next_rseq(r.flow), r.rx_ns, t3,
                               self.error_estimate, r.ttl)
            self.siovs[n].iov_base = p
            self.siovs[n].iov_len = r.length
            memset(&self.smsgs[n].msg_hdr, 0, sizeof(msghdr))
            self.smsgs[n].msg_hdr.msg_name = &self.names[i]
            self.smsgs[n].msg_hdr.msg_namelen = self.msgs[i].msg_hdr.msg_namelen
            self.smsgs[n].msg_hdr.msg_iov = &self.siovs[n]
            self.smsgs[n].msg_hdr.msg_iovlen = 1
            n += 1
        return n

    cdef list _replies(self, int nmsg, uint64_t head0):
        cdef int k, n = self._answer(nmsg, head0)
        return [(<char *>self.siovs[k].iov_base)[:self.siovs[k].iov_len] for k in range(n)]

    cdef Status _received(self, int nmsg, uint64_t head0) except ERROR nogil:
        # answers the batch just stored, from its own buffers, to its own source addresses
        cdef int i, n = self._answer(nmsg, head0), done = 0, nsend, gso_errno = 0
        cdef uint64_t refused = self.reflect_errors
        cdef mmsghdr *out
        out = self.smsgs
        nsend = n
        if self.reflect_gso and n > 1:
            out = self.gmsgs
            nsend = self._coalesce(n)
        while _send_all(self.fd, out, nsend, &done, 0, &self.reflect_errors,
                        &gso_errno) == NO_GSO:
            if out != self.gmsgs:
                with gil:
                    _errno_path(EIO)
            # UDP GSO refused (no checksum offload on the route's device, IPsec): send the
            # rest of this batch, and every later one, one datagram per message.
            self.reflect_gso = False
            nsend = 0
            for i in range(done):
                nsend += <int>self.gmsgs[i].msg_hdr.msg_iovlen
            done = nsend
            out = self.smsgs
            nsend = n
        self.reflected += n - (self.reflect_errors - refused)     # what the kernel took
        return DONE

    cdef int _coalesce(self, int n) noexcept nogil:
        # Consecutive replies to one address with one length leave as one UDP GSO message of
        # several iovecs that the kernel cuts back into datagrams of that length, so the
        # stack runs once per group instead of once per reply.
        cdef int j = 0, k, m = 0
        cdef size_t seg
        cdef msghdr *h
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
                _set_segment(&self.gmsgs[m].msg_hdr,
                             self.sctrl + m * CMSG_SPACE(sizeof(uint16_t)), <uint16_t>seg)
            m += 1
            j += k
        return m
