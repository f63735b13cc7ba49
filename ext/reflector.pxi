# The reflector: a Receiver that answers every valid native or STAMP test packet to its
# source, from the buffer it arrived in, with one sendmmsg per received batch. Native replies
# carry the REFLECTED flag, this reflector's per-flow sequence, T2 (kernel receive time) and
# T3 (send time), and a new tag when keyed; STAMP replies follow RFC 8762 §4.3 as a stateful
# reflector, copying the received TTL. Replies to one address with one length leave as UDP
# GSO messages when reflect_gso is set. Its socket must not use UDP GRO (one datagram per
# received message, answered in place).

cdef enum:
    RSEQ_SLOTS = 65536      # per-flow reflector sequences: open-addressing table size
    RSEQ_PROBE = 64
    GSO_MAX = 64            # replies per UDP GSO message
    GSO_BYTES = 65000       # payload bytes per UDP GSO message (below the 64 KiB IP limit)


cdef class Reflector(Receiver):
    """A Receiver (same arguments; mode WIRE_NATIVE or WIRE_STAMP) that answers what it
    receives; `reflected` counts the replies, `reflect_errors` the replies the kernel
    refused."""

    cdef readonly uint64_t reflected, reflect_errors
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
        self.error_estimate = 0x0001

    def __init__(self, int fd, int batch=64, uint64_t capacity=1 << 18, int bufsize=65536,
                 key=None, int mode=0):
        Receiver.__init__(self, fd, batch, capacity, bufsize, key, mode)
        self.smsgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.siovs = <iovec *>calloc(batch, sizeof(iovec))
        self.gmsgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.sctrl = <uint8_t *>calloc(batch, CMSG_SPACE(sizeof(uint16_t)))
        self.rseq_keys = <uint64_t *>calloc(RSEQ_SLOTS, sizeof(uint64_t))
        self.rseq_vals = <uint64_t *>calloc(RSEQ_SLOTS, sizeof(uint64_t))
        if not (self.smsgs and self.siovs and self.gmsgs and self.sctrl and self.rseq_keys
                and self.rseq_vals):
            raise MemoryError()

    def __dealloc__(self):
        free(self.smsgs)
        free(self.siovs)
        free(self.gmsgs)
        free(self.sctrl)
        free(self.rseq_keys)
        free(self.rseq_vals)

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
    cdef Status _received(self, int nmsg, uint64_t head0) except ERROR nogil:
        # Answers the nmsg datagrams just stored at ring[head0...] (one record each: the
        # socket has no UDP GRO), from their own buffers, to their own source addresses.
        cdef int i, n = 0, done = 0, nsend
        cdef mmsghdr *out
        cdef rec_t *r
        cdef uint8_t *p
        cdef uint32_t newlen
        cdef int64_t t3 = _now()
        for i in range(nmsg):
            r = &self.ring[(head0 + i) & (self.capacity - 1)]
            p = <uint8_t *>self.iovs[i].iov_base
            if r.kind == K_NATIVE and not (r.flags & FLAG_REFLECTED):
                newlen = _reflect_native(p, self.msgs[i].msg_len, r.flags,
                                         self._next_rseq(r.flow), r.rx_ns, t3,
                                         &self.hkey if self.keyed else NULL)
            elif r.kind == K_STAMP:
                newlen = self.msgs[i].msg_len
                _reflect_stamp(p, <uint32_t>self._next_rseq(r.flow), r.rx_ns, t3,
                               self.error_estimate, r.ttl)
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
        while _send_all(self.fd, out, nsend, &done, 0, &self.reflect_errors) == NO_GSO:
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
        self.reflected += n
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
