"""Address text: how packet-flow writes a UDP endpoint.

Rules: IPv4 and host names as `host:port`, IPv6 as `[v6addr]:port`; an IPv4 peer seen through a
dual-stack socket (`::ffff:a.b.c.d`) is written as the IPv4 address it is.
"""

import ipaddress
from typing import NamedTuple


def host_port(host: str, port: int) -> str:
    """`host:port`, or `[host]:port` when host is an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, str]:
    """(host, port text) of `host:port` or `[v6addr]:port`; ValueError(reason) when malformed."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [v6addr]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("an IPv6 address needs brackets: [v6addr]:port")
    if not host:
        raise ValueError("the host is missing")
    return host, port


class Addr(NamedTuple):
    """A resolved UDP endpoint; str() gives `host:port` or `[v6]:port`."""

    host: str
    port: int
    family: int
    sockaddr: tuple

    def __str__(self) -> str:
        return host_port(self.host, self.port)


def address(addr, port, family):
    """host:port or [v6]:port from a record's 16-byte address field."""
    raw = bytes(addr)
    if family == 4:
        return f"{ipaddress.IPv4Address(raw[12:])}:{port}"
    v6 = ipaddress.IPv6Address(raw)
    if v6.ipv4_mapped is not None:        # an IPv4 peer of a dual-stack socket
        return f"{v6.ipv4_mapped}:{port}"
    return f"[{v6}]:{port}"
