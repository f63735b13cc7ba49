# Clocks and waiting. Two clocks, never mixed:
#   _mono()  CLOCK_MONOTONIC: every deadline, schedule slot, sleep and duration. It never
#            steps, so an NTP step neither stops the send grid nor makes it burst.
#   _wall()  CLOCK_REALTIME (+ _wall_step, 0 outside tests): what goes on the wire and into
#            records, ns since the UNIX epoch (one-way delay compares two hosts' wall clocks).
# Kernel receive stamps (SO_TIMESTAMPNS) are wall-clock times; the receiver adds _wall_step
# to them too, so a test step shifts every wall-clock time the extension hands out, as a
# step of the machine's clock would. Sleeps aim at absolute deadlines (clock_nanosleep
# TIMER_ABSTIME), so a late wake-up never shifts the next one. clock_nanosleep returns the
# error number itself; it does not set errno.

cdef int64_t _wall_step = 0


cdef inline int64_t _mono() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t _wall() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec + _wall_step


cdef inline int _sleep_abs(int64_t deadline) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = deadline // 1000000000
    ts.tv_nsec = deadline % 1000000000
    return clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)


cdef Status _wait_until(int64_t deadline, int64_t spin) except ERROR:
    """Sleep to the absolute CLOCK_MONOTONIC deadline, the last `spin` ns busy-waiting.
    DONE on time, INTERRUPTED when a signal cut the sleep short (its handlers have run)."""
    cdef int rc = 0
    with nogil:
        if deadline - spin > _mono():
            rc = _sleep_abs(deadline - spin)
        if rc == 0 and spin > 0:
            while _mono() < deadline:
                pass
    if rc == 0:
        return DONE
    _errno_path(rc)
    return INTERRUPTED


def mono_ns():
    """CLOCK_MONOTONIC in integer ns: the clock of every deadline the extension takes."""
    return _mono()


def wall_ns():
    """CLOCK_REALTIME in integer ns since the UNIX epoch (the clock of send stamps)."""
    return _wall()


def wall_of(int64_t mono_ns):
    """The wall-clock time of a CLOCK_MONOTONIC instant, by the wall clock as it reads now."""
    return mono_ns + (_wall() - _mono())


def _step_wall_clock_for_tests(int64_t step_ns):
    """Tests only: shift every wall-clock time the extension reads or hands out (send
    stamps, kernel receive stamps, wall_ns()) by step_ns more, as a step of this machine's
    clock would, without changing the machine's clock. Returns the total step."""
    global _wall_step
    _wall_step += step_ns
    return _wall_step


def sleep_until(int64_t deadline_ns, int64_t spin_ns=0):
    """Sleep until the absolute CLOCK_MONOTONIC deadline (TIMER_ABSTIME), spinning the last
    `spin_ns`. Returns the lateness in ns (negative never happens), or None when a signal
    cut the sleep short (its Python handler has run)."""
    if _wait_until(deadline_ns, spin_ns) == INTERRUPTED:
        return None
    return _mono() - deadline_ns


def set_timerslack(unsigned long ns):
    """Lower this thread's timer slack (prctl PR_SET_TIMERSLACK) so sleeps end on time."""
    if prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) != 0:
        _errno_path(errno)
