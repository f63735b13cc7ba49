"""Socket set-up for the batch I/O core: nonblocking UDP sockets with kernel receive
timestamps (SO_TIMESTAMPNS), drop counts (SO_RXQ_OVFL), TTL reporting, and optional
UDP GRO on receive; DSCP/TTL and UDP GSO capability on send.

Rules: a receiving socket owns its port. It sets neither SO_REUSEADDR (on Linux that lets
any local process, of any user, bind the same UDP address and take the packets) nor
SO_REUSEPORT, so a second bind fails with EADDRINUSE. A socket that cannot be opened at
start becomes one SocketError naming the option, its value and the cause (opening()).
"""

import contextlib
import errno
import logging
import socket

from packet_flow import _io
from packet_flow.addresses import host_port
from packet_flow.errors import SocketError

log = logging.getLogger(__name__)

PRIVILEGED_PORTS = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def _privileged_below():
    try:
        with open(PRIVILEGED_PORTS, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def cause(exc, port=None, remote=False):
    """The kernel's reason for a failed socket call on a local (bind) or `remote` (route
    lookup) address, with what it means here."""
    text = exc.strerror or str(exc)
    hint = {errno.EADDRINUSE: "another socket has this address and port",
            errno.EADDRNOTAVAIL: "no local address reaches it" if remote
            else "not an address of this host",
            errno.ENETUNREACH: "no route to it", errno.EHOSTUNREACH: "no route to it",
            errno.EAFNOSUPPORT: "this host lacks the address family"}.get(exc.errno)
    if exc.errno == errno.EACCES and port is not None and port < _privileged_below():
        hint = f"ports below {_privileged_below()} need CAP_NET_BIND_SERVICE"
    return f"{text} ({hint})" if hint else text


@contextlib.contextmanager
def opening(option, addr, source):
    """Turn an OSError of the block into a SocketError naming --option, the address `addr`
    (an Addr), where it came from (`source`, as cfg.sources has it) and the cause."""
    try:
        yield
    except OSError as exc:
        raise SocketError(f"option --{option}: value '{addr}' from {source}: "
                          f"{cause(exc, addr.port, option == 'remote-addr')}") from None


def check_route(remote):
    """Raise the OSError of the kernel's route lookup towards `remote` (an Addr): connecting
    a UDP socket sends nothing."""
    with socket.socket(remote.family, socket.SOCK_DGRAM) as probe:
        probe.connect(remote.sockaddr)


def _try(sock, level, opt, value, what):
    try:
        sock.setsockopt(level, opt, value)
        return True
    except OSError as exc:
        log.debug("%s not available: %s", what, exc)
        return False


def receive_socket(sockaddr, family, rcvbuf=0, gro=True):
    """A bound, nonblocking UDP socket ready for Receiver, bound exclusively (see the module
    rules). Returns (socket, gro_enabled)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        return sock, _receive_options(sock, sockaddr, family, rcvbuf, gro)
    except BaseException:
        sock.close()
        raise


def _receive_options(sock, sockaddr, family, rcvbuf, gro):
    if family == socket.AF_INET6:
        _try(sock, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0, "dual-stack")
        _try(sock, socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT")
    else:
        _try(sock, socket.IPPROTO_IP, 12, 1, "IP_RECVTTL")
    sock.setsockopt(socket.SOL_SOCKET, _io.SO_TIMESTAMPNS_, 1)
    _try(sock, socket.SOL_SOCKET, _io.SO_RXQ_OVFL_, 1, "SO_RXQ_OVFL")
    if rcvbuf:
        set_rcvbuf(sock, rcvbuf)
    gro = gro and _try(sock, socket.IPPROTO_UDP, _io.UDP_GRO_, 1, "UDP_GRO")
    sock.setblocking(False)
    sock.bind(sockaddr)
    return gro


def gro_enabled(sock):
    """True when the socket takes UDP GRO buffers (several datagrams per receive, and per
    drop); when the kernel cannot tell, True (the cautious answer for drop accounting)."""
    try:
        return bool(sock.getsockopt(socket.IPPROTO_UDP, _io.UDP_GRO_))
    except OSError:
        return True


def set_rcvbuf(sock, size):
    """SO_RCVBUFFORCE when allowed (CAP_NET_ADMIN), else SO_RCVBUF (capped by rmem_max)."""
    if not _try(sock, socket.SOL_SOCKET, 33, size, "SO_RCVBUFFORCE"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def send_socket(family, dscp=0, ttl=0, sndbuf=4 << 20, bind=None):
    """A nonblocking, unconnected UDP socket for Sender (no ICMP errors on send), bound to
    `bind` (a sockaddr) when given, else to an ephemeral port on the wildcard address (bound
    at once, so the flow's source port is known before the first packet)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if bind is None:
        bind = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
    try:
        sock.bind(bind)
    except BaseException:
        sock.close()
        raise
    mark(sock, family, dscp, ttl, sndbuf)
    sock.setblocking(False)
    return sock


def mark(sock, family, dscp=0, ttl=0, sndbuf=4 << 20):
    """What a sending socket's packets carry (DSCP, TTL / hop limit) and its send buffer
    (a mesh node sends from its receive socket)."""
    tos = (dscp & 0x3F) << 2
    if family == socket.AF_INET6:
        if tos:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        if ttl:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        if tos:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        if ttl:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    _try(sock, socket.SOL_SOCKET, 32, sndbuf, "SO_SNDBUFFORCE") or _try(
        sock, socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf, "SO_SNDBUF")


def gso_supported(sock):
    """True when the kernel accepts UDP_SEGMENT on this socket."""
    return _try(sock, socket.IPPROTO_UDP, _io.UDP_SEGMENT_, 0, "UDP_SEGMENT")


IP_MTU = 14
IPV6_MTU = 24


def path_mtu(remote):
    """The route's MTU towards `remote` (an Addr): IP_MTU / IPV6_MTU of a socket connected
    to it (connecting sends nothing). None when the kernel cannot say (no route)."""
    probe = socket.socket(remote.family, socket.SOCK_DGRAM)
    try:
        probe.connect(remote.sockaddr)
        if remote.family == socket.AF_INET6:
            return probe.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
        return probe.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError as exc:
        log.debug("path MTU to %s unknown: %s", remote, exc)
        return None
    finally:
        probe.close()


def dest_tuple(sockaddr, family):
    """(family, packed address, port) as Sender wants it."""
    packed = socket.inet_pton(family, sockaddr[0])
    return (family, packed, sockaddr[1])


def is_transient(exc):
    """Errors a probe rides out (the peer is not there yet, the route flaps)."""
    return isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM)


def local_name(sock, remote):
    """host:port this unconnected socket sends from to `remote` (the route's source address
    when the socket is bound to the wildcard)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        probe = socket.socket(remote.family, socket.SOCK_DGRAM)
        try:
            probe.connect(remote.sockaddr)   # no packet is sent: only a route lookup
            host = probe.getsockname()[0]
        except OSError:
            pass
        finally:
            probe.close()
    return host_port(host, port)


SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8


def drops(sock, fallback):
    """Datagrams the kernel dropped on this socket (SO_MEMINFO), else `fallback` (the last
    SO_RXQ_OVFL value, which misses drops after the last datagram read)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
        return int.from_bytes(raw[4 * SK_MEMINFO_DROPS:4 * SK_MEMINFO_DROPS + 4], "little")
    except OSError:
        return fallback
