"""Loopback socket pairs for the batch I/O core."""

import socket

from packet_flow import _io, sockets


def _has_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6()


class Link:
    """A receive socket with a Receiver, and an unconnected send socket aimed at it."""

    def __init__(self, family=socket.AF_INET, gro=True, capacity=1 << 18, key=None,
                 mode=_io.K_NATIVE):
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.rsock, self.gro = sockets.receive_socket((host, 0), family, 16 << 20, gro=gro)
        self.addr = (host, self.rsock.getsockname()[1])
        self.ssock = sockets.send_socket(family)
        self.family = family
        self.rx = _io.Receiver(self.rsock.fileno(), capacity=capacity, key=key, mode=mode)
        self.dest = sockets.dest_tuple(self.addr, family)

    def sender(self, **kw):
        return _io.Sender(self.ssock.fileno(), self.dest, **kw)

    def collect(self, expect, timeout_s=2.0):
        """Pump and drain until `expect` records arrived or the timeout passed."""
        parts, got = [], 0
        end = _io.mono_ns() + int(timeout_s * 1e9)
        while got < expect and _io.mono_ns() < end:
            self.rx.pump(min(end, _io.mono_ns() + 20_000_000), expect - got)
            part = self.rx.drain()
            got += len(part)
            parts.append(part)
        import numpy as np
        return np.concatenate(parts) if parts else np.zeros(0, _io.RECORD)

    def close(self):
        self.rsock.close()
        self.ssock.close()
