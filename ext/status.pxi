# Status: what the errno path and the batch loops return. Each name has one meaning
# everywhere, and none of them is a count: a loop that moves datagrams reports how many
# through its own counters or out-parameter.
#
# _errno_path is the one place a failed syscall is judged (errno read right after the call,
# the GIL taken only here):
#   EINTR             run Python signal handlers (they may raise), then INTERRUPTED: return
#                     so the Python caller can look at its flags
#   EAGAIN, ENOBUFS   AGAIN: nothing done now; wait for readiness in poll, then call again
#   EPERM, EACCES (a local firewall drop), ENETUNREACH, EHOSTUNREACH, EHOSTDOWN, ENETDOWN,
#   ECONNREFUSED (an earlier ICMP error), EMSGSIZE
#                     REFUSED: the kernel refused this one datagram; count it, skip it, go on
#   anything else     OSError(errno, strerror(errno)), raised from here only

cdef enum Status:
    ERROR = -1          # a Python exception is set
    DONE = 0            # the call did what was asked
    INTERRUPTED = 1     # a signal: its handlers have run
    AGAIN = 2           # would block: nothing done now
    REFUSED = 3         # this one datagram was refused
    NO_GSO = 4          # sendmmsg: UDP GSO refused (EIO) or too big; resend without it


cdef Status _errno_path(int err) except ERROR:
    if err == EINTR:
        if PyErr_CheckSignals() < 0:
            return ERROR
        return INTERRUPTED
    if err == EAGAIN or err == ENOBUFS:
        return AGAIN
    if err in (EPERM, EACCES, ENETUNREACH, EHOSTUNREACH, EHOSTDOWN, ENETDOWN, ECONNREFUSED,
               EMSGSIZE):
        return REFUSED
    raise OSError(err, os.strerror(err))
