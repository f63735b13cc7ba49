# Extern-only declarations of the kernel and libc API the batch I/O core uses: sockets,
# mmsg, cmsg, clocks, poll, prctl. Only the fields we touch are listed; everything is nogil.
from libc.stdint cimport uint16_t, uint32_t


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    ctypedef int clockid_t
    enum:
        CLOCK_REALTIME
        CLOCK_MONOTONIC
        TIMER_ABSTIME
    int clock_gettime(clockid_t clk, timespec *ts)
    int clock_nanosleep(clockid_t clk, int flags, const timespec *req, timespec *rem)


cdef extern from "<sys/prctl.h>" nogil:
    enum:
        PR_SET_TIMERSLACK
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
              unsigned long arg5)


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    enum:
        POLLIN
        POLLOUT
    int poll(pollfd *fds, unsigned long nfds, int timeout)


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    enum:
        AF_INET
        AF_INET6
        SOL_SOCKET
        SO_TIMESTAMPNS
        SCM_TIMESTAMPNS
        SO_RXQ_OVFL
        MSG_DONTWAIT
        MSG_TRUNC
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)
    int sendmmsg(int fd, mmsghdr *v, unsigned int n, int flags)
    int recvmmsg(int fd, mmsghdr *v, unsigned int n, int flags, timespec *timeout)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_IP
        IPPROTO_IPV6
        IP_TTL
        IPV6_HOPLIMIT
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr
    uint16_t ntohs(uint16_t)
    uint32_t ntohl(uint32_t)


cdef extern from "<netinet/udp.h>" nogil:
    """
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    """
    enum:
        SOL_UDP
        UDP_SEGMENT
        UDP_GRO

