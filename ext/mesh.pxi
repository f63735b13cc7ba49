# The mesh's send side: one socket, many destinations, one schedule. Pair i (a peer in slot
# i of fixed-size arrays: destination, session, sequence, counters) has its own exact grid,
# slot k due at CLOCK_MONOTONIC start_ns + k * interval_ns + offset[i]; the offsets spread
# the pairs across the interval. `order` lists the active pairs by offset, so the grids of
# all pairs together are one global grid walked by (round, cursor): the next slot is round
# `round` of pair order[cursor]. Slots found due together go out in one sendmmsg, one
# message per packet (each to its own destination), every packet stamped while the batch
# is built. Lateness, missed and skipped slots, sends and refusals are kept per pair.
#
# Rules: the loop runs without the GIL; a refused datagram (the errno path's REFUSED: a
# local firewall, no route) is counted for its pair and skipped; more than catchup_max
# rounds behind, whole rounds are skipped and counted for every active pair (never sent
# late in a burst). wake_ns > 0 (economy timer): wake-ups at least wake_ns apart, so a
# wake-up sends every slot due by then (fewer wake-ups at the price of that lateness).

cdef class MeshSender:
    """Sends native packets to up to `capacity` peers on one socket (see the rules above).
    Peers are slots 0..capacity-1: set_peer() fills one, set_order() says which are active
    and in what order of offsets; run() follows the schedule. Per-pair numpy arrays (read
    them, do not write): seq, sent, missed, skipped, errors."""

    cdef int fd
    cdef readonly int size, batch, capacity, norder, cursor
    cdef readonly uint64_t round
    cdef readonly int64_t start_ns, interval_ns, spin_ns, comp_ns
    cdef public uint64_t lat_every, catchup_max, end_round
    cdef public int64_t wake_ns
    cdef public bint final_at_end       # the slots of round end_round - 1 carry FINAL
    cdef readonly object seq, sent, missed, skipped, errors, session, offset
    cdef uint64_t[::1] _seq, _sent, _missed, _skipped, _errors, _session
    cdef int64_t[::1] _offset
    cdef int *order
    cdef int *who                   # the pair of each message of the batch being sent
    cdef sockaddr_storage *dests
    cdef socklen_t *dest_lens
    cdef uint8_t *bufs
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef hmac_key hkey
    cdef bint keyed
    cdef uint8_t named
    cdef int gso_errno
    cdef int64_t last_wake
    cdef object _lat, _lat_peer
    cdef int64_t[::1] lat
    cdef int[::1] lat_peer
    cdef Py_ssize_t lat_n

    def __cinit__(self):
        self.order = NULL
        self.who = NULL
        self.dests = NULL
        self.dest_lens = NULL
        self.bufs = NULL
        self.msgs = NULL
        self.iovs = NULL

    def __init__(self, int fd, int capacity, int size=0, int batch=64, key=None,
                 bytes name=b"", Py_ssize_t lateness_capacity=1 << 20):
        if capacity < 1 or batch < 1 or batch > 1024:
            raise ValueError("capacity must be at least 1 and batch 1..1024")
        self.fd = fd
        self.capacity = capacity
        self.batch = batch
        self.keyed = bool(key)
        if self.keyed:
            _hmac_init(&self.hkey, <const uint8_t *><char *>key, len(key))
        self.size = named_size(max(size, REFLECTED_HEADER + (TAG if self.keyed else 0)),
                               name, self.keyed)
        self.order = <int *>calloc(capacity, sizeof(int))
        self.who = <int *>calloc(batch, sizeof(int))
        self.dests = <sockaddr_storage *>calloc(capacity, sizeof(sockaddr_storage))
        self.dest_lens = <socklen_t *>calloc(capacity, sizeof(socklen_t))
        self.bufs = <uint8_t *>calloc(batch, self.size)
        self.msgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.iovs = <iovec *>calloc(batch, sizeof(iovec))
        if not (self.order and self.who and self.dests and self.dest_lens and self.bufs
                and self.msgs and self.iovs):
            raise MemoryError()
        self.named = _put_name(self.bufs, batch, self.size, name)
        self.seq, self.sent, self.missed, self.skipped, self.errors, self.session = (
            np.zeros(capacity, np.uint64) for _ in range(6))
        self._seq, self._sent, self._missed = self.seq, self.sent, self.missed
        self._skipped, self._errors, self._session = self.skipped, self.errors, self.session
        self.offset = np.zeros(capacity, np.int64)
        self._offset = self.offset
        self._lat = np.zeros(lateness_capacity, np.int64)
        self._lat_peer = np.zeros(lateness_capacity, np.intc)
        self.lat, self.lat_peer = self._lat, self._lat_peer
        self.lat_every = 1
        self.catchup_max = 1
        self.interval_ns = 1000000
        self.start_ns = _mono()

    def __dealloc__(self):
        free(self.order)
        free(self.who)
        free(self.dests)
        free(self.dest_lens)
        free(self.bufs)
        free(self.msgs)
        free(self.iovs)

    def set_peer(self, int i, dest, uint64_t session, int64_t offset_ns):
        """Slot i becomes a new pair: destination (family, packed address, port), its
        session, its offset in the interval; sequence and counters start at 0. Takes
        effect with the next set_order() that lists i."""
        if not 0 <= i < self.capacity:
            raise IndexError(i)
        _sockaddr_from(dest, &self.dests[i], &self.dest_lens[i])
        self._session[i] = session
        self._offset[i] = offset_ns
        self._seq[i] = self._sent[i] = self._missed[i] = self._skipped[i] = self._errors[i] = 0

    cdef inline int64_t _deadline(self) noexcept nogil:
        return (self.start_ns + <int64_t>self.round * self.interval_ns
                + self._offset[self.order[self.cursor]])

    @property
    def next_ns(self):
        """When run() would send next (CLOCK_MONOTONIC ns); 0 without active pairs."""
        if self.norder == 0 or (self.end_round and self.round >= self.end_round):
            return 0
        return max(self._deadline(), self.last_wake + self.wake_ns if self.wake_ns else 0)

    def set_order(self, order):
        """The active pairs (slot numbers), in order of their offsets. The schedule goes on
        from the next unsent slot: a pair added with an offset already passed in this round
        starts in the next one; pairs kept keep their grids."""
        cdef int[::1] o = np.ascontiguousarray(order, np.intc)
        cdef int64_t t, n = o.shape[0], i
        if n > self.capacity:
            raise ValueError("more pairs than capacity")
        t = self._deadline() if self.norder else _mono()
        for i in range(n):
            self.order[i] = o[i]
        self.norder = <int>n
        if n == 0:
            return
        self.cursor = 0
        if t > self.start_ns:
            self.round = <uint64_t>((t - self.start_ns) // self.interval_ns)
        while self._deadline() < t:
            self.cursor += 1
            if self.cursor == self.norder:
                self.cursor = 0
                self.round += 1

    def start(self, int64_t start_ns, int64_t interval_ns, int64_t spin_ns=0):
        """Anchor the grids: pair i's slot k is due at start_ns + k * interval_ns + offset."""
        if interval_ns < 1:
            raise ValueError("interval must be at least 1 ns")
        self.start_ns = start_ns
        self.interval_ns = interval_ns
        self.spin_ns = spin_ns
        self.round = 0
        self.cursor = 0
        self.last_wake = 0

    def skip_sequence(self, int i, uint64_t n=1):
        """Pair i leaves n sequence numbers unused (deliberate loss, SIGUSR1)."""
        if not 0 <= i < self.capacity:
            raise IndexError(i)
        self._seq[i] += n

    def take_lateness(self):
        """(lateness ns, pair) of the sampled slots sent since the last call, as new arrays."""
        out = (self._lat[:self.lat_n].copy(), self._lat_peer[:self.lat_n].copy())
        self.lat_n = 0
        return out

    cdef Status _out(self, int n) except ERROR nogil:
        # send the n built messages; a refused one counts for its pair
        cdef int done = 0, m
        cdef uint64_t refused = 0
        for m in range(n):
            self.msgs[m].msg_len = 0
        if _send_all(self.fd, self.msgs, n, &done, 0, &refused, &self.gso_errno) == NO_GSO:
            with gil:
                _errno_path(EIO)
        for m in range(n):
            if self.msgs[m].msg_len == 0:
                self._errors[self.who[m]] += 1
        return DONE

    cdef inline void _put(self, int m, int i, int64_t wall, uint8_t flags) noexcept nogil:
        # build message m: pair i's next packet, stamped now
        cdef uint8_t *p = self.bufs + <size_t>m * self.size
        _encode_native(p, self._session[i], self._seq[i], _mono() + wall,
                       flags | self.named | (FLAG_AUTH if self.keyed else 0))
        if self.keyed:
            _sign(&self.hkey, p, self.size)
        self.iovs[m].iov_base = p
        self.iovs[m].iov_len = self.size
        memset(&self.msgs[m].msg_hdr, 0, sizeof(msghdr))
        self.msgs[m].msg_hdr.msg_name = &self.dests[i]
        self.msgs[m].msg_hdr.msg_namelen = self.dest_lens[i]
        self.msgs[m].msg_hdr.msg_iov = &self.iovs[m]
        self.msgs[m].msg_hdr.msg_iovlen = 1
        self.who[m] = i
        self._seq[i] += 1
        self._sent[i] += 1

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Status _due(self, int64_t now) except ERROR nogil:
        # send every slot due by `now`, a batch at a time
        cdef int m = 0, j
        cdef int i
        cdef int64_t slot, t, wall = _wall() - _mono()
        cdef uint64_t behind
        cdef uint8_t flags
        slot = self._deadline()
        if now - slot >= <int64_t>self.catchup_max * self.interval_ns:
            behind = <uint64_t>((now - slot) // self.interval_ns)
            if self.end_round and self.round + behind >= self.end_round:
                behind = self.end_round - 1 - self.round if self.end_round > self.round + 1 else 0
            self.round += behind
            for j in range(self.norder):
                self._skipped[self.order[j]] += behind
                self._missed[self.order[j]] += behind
        while True:
            while m < self.batch:
                if self.end_round and self.round >= self.end_round:
                    break
                slot = self._deadline()
                if slot > now:
                    break
                i = self.order[self.cursor]
                flags = FLAG_FINAL if self.final_at_end and self.round + 1 == self.end_round \
                    else 0
                self._put(m, i, wall, flags)
                t = _mono()
                if self.round % self.lat_every == 0 and self.lat_n < self.lat.shape[0]:
                    self.lat[self.lat_n] = t - slot
                    self.lat_peer[self.lat_n] = i
                    self.lat_n += 1
                if t - slot >= self.interval_ns:
                    self._missed[i] += 1
                m += 1
                self.cursor += 1
                if self.cursor == self.norder:
                    self.cursor = 0
                    self.round += 1
            if m:
                self._out(m)
            if m < self.batch or self.lat_n + self.batch > self.lat.shape[0]:
                return DONE
            m = 0                   # a full batch went: more may be due

    cdef Status _run(self, int64_t until_ns, int64_t spin) except ERROR nogil:
        cdef int64_t deadline, now, target
        cdef int rc
        while True:
            if self.norder == 0 or (self.end_round and self.round >= self.end_round):
                return DONE
            if self.lat_n + self.batch > self.lat.shape[0]:
                return DONE
            deadline = self._deadline()
            if self.wake_ns and self.last_wake + self.wake_ns > deadline:
                deadline = self.last_wake + self.wake_ns
            if deadline >= until_ns:
                return DONE
            now = _mono()
            if now < deadline:
                rc = 0
                if spin > 0:
                    if deadline - spin > now:
                        rc = _sleep_abs(deadline - spin)
                        if rc == 0:
                            # as Sender._run: spin just longer than the recent wake-up lateness
                            now = _mono() - (deadline - spin) + SPIN_MARGIN
                            spin = max(spin - spin // 256, min(now, SPIN_MAX), SPIN_MIN)
                            self.spin_ns = spin
                else:
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
                    return INTERRUPTED
                while spin > 0 and _mono() < deadline:
                    pass
                now = _mono()
            self.last_wake = now
            # the economy timer aims early by its mean wake-up lateness (as Sender's): the
            # slot it woke for goes now, centred on its time, not after a second sleep
            self._due(max(now, deadline))

    def run(self, int64_t until_ns, bint precise=True):
        """Send on the pairs' grids until slot time `until_ns`, round end_round, a full
        lateness buffer, or a signal, without the GIL. Returns the packets sent."""
        cdef uint64_t before = int(self.sent.sum())
        cdef int64_t spin = self.spin_ns if precise else 0
        with nogil:
            self._run(until_ns, spin)
        return int(self.sent.sum()) - before

    def send_final(self, int i):
        """Send pair i's FINAL packet now (off the schedule)."""
        if not 0 <= i < self.capacity:
            raise IndexError(i)
        cdef int64_t wall = _wall() - _mono()
        with nogil:
            self._put(0, i, wall, FLAG_FINAL)
            self._out(1)
