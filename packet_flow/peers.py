"""Peers of a mesh: the --peers entries, who this node is, and which K peers to probe.

Rules:
- `--peers` is a list of entries, separated by commas or given several times; the peers are
  the union of what every entry yields:
    host:port, [v6addr]:port   one peer (a name is resolved, its first address taken);
    file:PATH                  one entry per line (`#` starts a comment), re-read when the
                               file changes (size, mtime or inode) and on SIGHUP (reload());
    dns:NAME:PORT              every A and AAAA record of NAME, one peer per address;
    srv:_service._udp.NAME     the SRV records of NAME, one peer per target and port.
  Entries are checked when the option is read (check_entries: one line naming the entry and,
  for a file, its line); nothing is resolved then.
- A peer's name is the host as written, the SRV target, or for an A/AAAA record the address.
  Its key (`name:port`) identifies it in subsets.
- discovery.PeerSource resolves the entries in the background and publishes the list.
- A node leaves itself out: a peer on this node's port whose address is one of the node's
  own (or the bound address), or whose name is the node's name.
- Subsets (--peer-subset K): select() keeps K peers: the node's successor on a ring of peer
  keys (so every node is probed by at least one other) and the K-1 others of highest
  rendezvous weight hash(own name, peer key). Deterministic; a join or leave changes only
  the choices that involved the node that came or went.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import NamedTuple

from . import _io, names
from .addresses import Addr, host_port, split_host_port


class Peer(NamedTuple):
    """A peer to probe: its name and its resolved UDP address."""

    name: str
    addr: Addr

    @property
    def key(self) -> str:
        """`name:port` (`[name]:port` for an IPv6 address): the peer's identity in subsets."""
        return host_port(self.name, self.addr.port)


# --- entries ----------------------------------------------------------------------------------


class Static(NamedTuple):
    host: str
    port: int


class FileEntry(NamedTuple):
    path: str


class Dns(NamedTuple):
    name: str
    port: int


class Srv(NamedTuple):
    name: str


Entry = Static | FileEntry | Dns | Srv


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return port


def parse_entry(text: str, in_file: bool = False) -> Entry:
    """One --peers entry (or file line) as an Entry; ValueError(reason) when malformed."""
    text = text.strip()
    kind, sep, rest = text.partition(":")
    if sep and kind == "file":
        if in_file:
            raise ValueError("a peers file cannot name another file")
        if not rest:
            raise ValueError("file: needs a path (file:PATH)")
        return FileEntry(rest)
    if sep and kind == "dns":
        name, sep, port = rest.rpartition(":")
        if not sep or not name or "[" in name:
            raise ValueError("expected dns:NAME:PORT")
        return Dns(name, _port(port))
    if sep and kind == "srv":
        labels = rest.rstrip(".").split(".")
        if len(labels) < 3 or not labels[0].startswith("_") or not labels[1].startswith("_"):
            raise ValueError("expected srv:_service._udp.NAME")
        return Srv(rest)
    host, port = split_host_port(text)
    return Static(host, _port(port))


def split_entries(items: Iterable[str]) -> list[str]:
    """The entries of --peers values: split at commas, blanks dropped."""
    return [part.strip() for raw in items for part in raw.split(",") if part.strip()]


def read_file(path: str) -> list[tuple[int, str]]:
    """(line number, entry text) of a peers file; OSError when it cannot be read."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append((number, text))
    return out


def parse_file(path: str) -> list[Entry]:
    """The entries of a peers file; ValueError naming the line of the first bad one."""
    entries = []
    for number, text in read_file(path):
        try:
            entries.append(parse_entry(text, in_file=True))
        except ValueError as e:
            raise ValueError(f"{path} line {number}: entry {text!r}: {e}") from None
    return entries


def check_entries(items: Iterable[str]) -> tuple[str, ...]:
    """The --peers converter's core: every entry parses, every file reads and parses.
    Returns the entries; ValueError(reason) names the bad entry (and the file's line)."""
    entries = split_entries(items)
    for text in entries:
        try:
            entry = parse_entry(text)
        except ValueError as e:
            raise ValueError(f"entry {text!r}: {e}") from None
        if isinstance(entry, FileEntry):
            try:
                parse_file(entry.path)
            except OSError as e:
                raise ValueError(f"entry {text!r}: cannot read: {e.strerror or e}") from None
    return tuple(entries)


# --- names and self ----------------------------------------------------------------------------


def check_name(name: str) -> str:
    """A --name: printable ASCII without blanks, quotes, backslashes, commas or `=`, at most
    NAME_MAX bytes: what names.clean() leaves unchanged (safe as a tag, label, in band)."""
    name = name.strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name.encode()) > _io.NAME_MAX:
        raise ValueError(f"must be at most {_io.NAME_MAX} bytes")
    if names.clean(name) != name:
        raise ValueError("must be printable ASCII without blanks, quotes, backslashes, commas "
                         "or =")
    return name


class Me(NamedTuple):
    """This node: its name, port, and bound address (None when bound to every address)."""

    name: str
    port: int
    host: str | None = None

    @classmethod
    def of(cls, name: str, local: Addr) -> Me:
        ip = local.sockaddr[0]
        return cls(name, local.port, None if ipaddress.ip_address(ip).is_unspecified else ip)


def is_local(addr: Addr) -> bool:
    """True when addr's IP is one of this host's: routing to it gives itself as the source
    (connect() on UDP sends nothing). Loopback addresses are always local."""
    ip = addr.sockaddr[0]
    try:
        if ipaddress.ip_address(ip.split("%")[0]).is_loopback:
            return True
        with socket.socket(addr.family, socket.SOCK_DGRAM) as s:
            s.connect(addr.sockaddr)
            return s.getsockname()[0] == ip
    except (OSError, ValueError):
        return False


def is_self(peer: Peer, me: Me, local: Callable[[Addr], bool] = is_local) -> bool:
    if peer.addr.port != me.port:
        return False
    if peer.name == me.name:
        return True
    if me.host is not None:
        return peer.addr.sockaddr[0] == me.host
    return local(peer.addr)


# --- subsets -----------------------------------------------------------------------------------


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def select(own_name: str, own_key: str, peers: Iterable[Peer], k: int) -> tuple[Peer, ...]:
    """K peers: the ring successor of own_key (peers ordered by hash of their key) and the
    K-1 others of highest rendezvous weight hash(own_name, key). All of them when k is 0 or
    not smaller than their number. Sorted by key."""
    peers = sorted(set(peers), key=lambda p: p.key)
    if k <= 0 or k >= len(peers):
        return tuple(peers)
    ring = sorted((_hash(p.key), p.key, p) for p in peers)
    me = (_hash(own_key), own_key)
    successor = next((p for h, key, p in ring if (h, key) > me), ring[0][2])
    others = sorted((-_hash(own_name + "\0" + p.key), p.key, p) for p in peers if p != successor)
    return tuple(sorted([successor, *(p for _, _, p in others[:k - 1])], key=lambda p: p.key))
