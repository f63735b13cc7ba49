# Clocks and waiting. Every time in the extension is CLOCK_REALTIME in integer ns since the
# UNIX epoch (a send stamp needs the wall clock for one-way delay). Sleeps aim at absolute
# deadlines (clock_nanosleep TIMER_ABSTIME), so a late wake-up never shifts the next one.
# clock_nanosleep returns the error number itself; it does not set errno.

cdef inline int64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int _sleep_abs(int64_t deadline) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = deadline // 1000000000
    ts.tv_nsec = deadline % 1000000000
    return clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL)


cdef Status _wait_until(int64_t deadline, int64_t spin) except ERROR:
    """Sleep to the absolute deadline, the last `spin` ns busy-waiting. DONE on time,
    INTERRUPTED when a signal cut the sleep short (its handlers have run)."""
    cdef int rc = 0
    with nogil:
        if deadline - spin > _now():
            rc = _sleep_abs(deadline - spin)
        if rc == 0 and spin > 0:
            while _now() < deadline:
                pass
    if rc == 0:
        return DONE
    _errno_path(rc)
    return INTERRUPTED


def now_ns():
    """CLOCK_REALTIME in integer nanoseconds."""
    return _now()


def sleep_until(int64_t deadline_ns, int64_t spin_ns=0):
    """Sleep until the absolute CLOCK_REALTIME deadline (TIMER_ABSTIME), spinning the last
    `spin_ns`. Returns the lateness in ns (negative never happens), or None when a signal
    cut the sleep short (its Python handler has run)."""
    if _wait_until(deadline_ns, spin_ns) == INTERRUPTED:
        return None
    return _now() - deadline_ns


def set_timerslack(unsigned long ns):
    """Lower this thread's timer slack (prctl PR_SET_TIMERSLACK) so sleeps end on time."""
    if prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) != 0:
        _errno_path(errno)
