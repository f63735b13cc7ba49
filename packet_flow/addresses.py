"""Address text: how packet-flow writes a UDP endpoint.

Rules: IPv4 and host names as `host:port`, IPv6 as `[v6addr]:port`; an IPv4 peer seen through a
dual-stack socket (`::ffff:a.b.c.d`) is written as the IPv4 address it is.
"""

import ipaddress
from typing import NamedTuple


def host_port(host: str, port: int) -> str:
    """`host:port`, or `[host]:port` when host is an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
