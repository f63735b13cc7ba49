"""Discovery: the peers of --peers kept current in the background (PeerSource), and the
lookups behind it (getaddrinfo for names and dns:, dnsquery for srv:).

Rules:
- PeerSource.peers() never blocks: it returns the list the background thread last published
  (the same tuple object until the list changes). The thread re-resolves every --peer-refresh
  seconds, stats files every PEER_FILE_POLL_S, and does both at once after reload() (SIGHUP).
  Every lookup runs in a helper thread and is waited for at most the lookup timeout.
- Blips: a lookup that fails or times out keeps that entry's last good peers and says so
  once (and once when it recovers). An empty answer (no such name, no records) removes the
  entry's peers only after PEER_EMPTY_REFRESHES refreshes in a row. A smaller, non-empty
  answer applies at once: a node that left DNS leaves the mesh at the next refresh. A peers
  file that cannot be read or parsed keeps its last good entries.
- Then the node leaves itself out (peers.is_self), and --peer-subset keeps K (peers.select).
- Names for records: a peer known only by its address (a dns: record, an IP literal) is named
  by its PTR record (reverse DNS through the system resolver: /etc/hosts, then DNS), looked
  up in the background once while it stays listed (and kept PEER_NAME_KEEP_S after it left,
  for its last records), shortened to its first label when this node's own name has no dot
  (names.ptr_name); loopback addresses are not asked. A lookup that does not answer ends the
  round: the rest are asked after the next refresh. The name only labels records (name_of):
  a peer's key, and so the subsets, stay its address.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable

from . import defaults, names
from .addresses import Addr, host_port
from .peers import (
    Dns,
    Entry,
    FileEntry,
    Me,
    Peer,
    Static,
    is_local,
    is_self,
    parse_entry,
    parse_file,
    select,
    split_entries,
)

log = logging.getLogger(__name__)


class LookupFailed(Exception):
    """A lookup that did not answer (timeout, server failure): keep the last good peers."""


# --- lookups -----------------------------------------------------------------------------------


def lookup_addrs(host: str, port: int) -> list[Addr]:
    """Every address of host (A and AAAA), sorted; [] when the name has none or does not
    exist; LookupFailed when the resolver did not answer."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    except socket.gaierror as e:
        if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return []
        raise LookupFailed(f"{host}: {e.strerror or e}") from None
    except UnicodeError as e:
        raise LookupFailed(f"{host}: {e}") from None
    found = {}
    for family, _, _, _, sockaddr in infos:
        found.setdefault((family, sockaddr[0]), Addr(sockaddr[0], port, family, sockaddr))
    return [found[k] for k in sorted(found, key=lambda k: (k[0], _ip_order(k[1])))]


def _ip_order(ip: str):
    try:
        return (0, ipaddress.ip_address(ip.split("%")[0]))
    except ValueError:
        return (1, ip)


def lookup_srv(name: str) -> list[tuple[str, int]]:
    """(target, port) of name's SRV records (see dnsquery)."""
    from .dnsquery import DnsError, srv_records
    try:
        return srv_records(name)
    except DnsError as e:
        raise LookupFailed(str(e)) from None


def lookup_name(sockaddr: tuple) -> str | None:
    """The name of an address's PTR record (getnameinfo), None when it has none;
    LookupFailed when the resolver did not answer."""
    try:
        return socket.getnameinfo(sockaddr, socket.NI_NAMEREQD)[0]
    except socket.gaierror as e:
        if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return None
        raise LookupFailed(f"{sockaddr[0]}: {e.strerror or e}") from None


def bounded(fn: Callable, timeout: float, what: str):
    """fn() in a helper thread, waited for at most `timeout` seconds (LookupFailed after)."""
    done, box = threading.Event(), []

    def work():
        try:
            box.append((True, fn()))
        except BaseException as e:      # noqa: BLE001 - handed to the caller
            box.append((False, e))
        done.set()

    threading.Thread(target=work, name="peer-lookup", daemon=True).start()
    if not done.wait(timeout):
        raise LookupFailed(f"{what}: no answer within {timeout:g} s")
    ok, value = box[0]
    if ok:
        return value
    raise value


# --- the source --------------------------------------------------------------------------------


class _State:
    """What one entry last gave: its peers, whether its lookup is failing, empty answers in
    a row, and (for a file) the stat signature and entries read."""

    def __init__(self) -> None:
        self.peers: tuple[Peer, ...] = ()
        self.looked = False
        self.failing = False
        self.empty = 0
        self.signature: tuple | None = None
        self.entries: list[Entry] = []


def _text(entry: Entry) -> str:
    if isinstance(entry, Static):
        return host_port(entry.host, entry.port)
    if isinstance(entry, Dns):
        return f"dns:{entry.name}:{entry.port}"
    return f"{type(entry).__name__.lower().replace('entry', '')}:{entry[0]}"


def _literal(host: str, port: int) -> Addr | None:
    """The address of an IP literal (no lookup), None for a name."""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0]
    return Addr(sockaddr[0], port, family, sockaddr)


@functools.lru_cache(maxsize=1 << 14)
def _loopback(host: str) -> bool:
    """Whether an address (a peer's host, scope id allowed) is a loopback one (asked every
    poll for every peer: remembered)."""
    return ipaddress.ip_address(host.split("%")[0]).is_loopback


class PeerSource:
    """The peers named by --peers, kept current by a background thread (see the module's
    rules). peers() is what the mesh polls every tick; reload() is the SIGHUP hook."""

    def __init__(self, entries: Iterable[str], me: Me,
                 refresh_s: float = defaults.PEER_REFRESH_S, subset: int = 0,
                 resolve: Callable[[str, int], list[Addr]] = lookup_addrs,
                 resolve_srv: Callable[[str], list[tuple[str, int]]] = lookup_srv,
                 local: Callable[[Addr], bool] = is_local,
                 timeout: float | None = None,
                 reverse: Callable[[tuple], str | None] = lookup_name) -> None:
        self.entries = [parse_entry(e) for e in split_entries(entries)]
        self.me, self.refresh_s, self.subset = me, refresh_s, subset
        self.timeout = timeout or min(defaults.PEER_LOOKUP_TIMEOUT_S, max(refresh_s, 0.2))
        self._resolve, self._resolve_srv, self._local = resolve, resolve_srv, local
        self._reverse = reverse
        self._ptr: dict[str, str | None] = {}       # address -> its PTR name (None: none)
        self._unlisted: dict[str, float] = {}       # address of _ptr no longer listed -> since
        self._locals: dict[str, bool] = {}
        self._states: dict[Entry, _State] = {}
        self._current: tuple[Peer, ...] = ()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._reread = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg) -> PeerSource:
        return cls(cfg.peers or (), Me.of(names.node_name(cfg), cfg.local), cfg.peer_refresh,
                   cfg.peer_subset)

    def peers(self) -> tuple[Peer, ...]:
        """The current peers, sorted by key; never blocks. The same tuple until it changes."""
        return self._current

    def name_of(self, peer: Peer) -> str:
        """What records call a peer: its PTR name for one known by its address only, once
        looked up (see the module's rules), else its name. Never blocks."""
        return self._ptr.get(peer.addr.sockaddr[0]) or peer.name

    def start(self) -> PeerSource:
        """Resolve once (each lookup bounded by the timeout), then refresh in the background."""
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="peers", daemon=True)
        self._thread.start()
        return self

    def reload(self) -> None:
        """Re-read the files and look every name up again now (safe in a signal handler)."""
        self._reread = True
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 1.0)

    def _loop(self) -> None:
        poll = defaults.PEER_FILE_POLL_S if any(
            isinstance(e, FileEntry) for e in self.entries) else float("inf")
        due = time.monotonic() + self.refresh_s
        self._name()
        while not self._stop.is_set():
            woke = self._wake.wait(max(0.0, min(poll, due - time.monotonic())))
            self._wake.clear()
            if self._stop.is_set():
                return
            resolve = woke or time.monotonic() >= due
            if resolve:
                due = time.monotonic() + self.refresh_s
            reread, self._reread = self._reread, False
            try:
                self.refresh(resolve, reread)
                self._name()
            except Exception:               # the mesh goes on with the peers it has
                log.exception("peers: refresh failed")

    def _name(self) -> None:
        """Ask the PTR names of the listed peers known by their address only, each once."""
        own = self.me.name
        unnamed = {p.addr.sockaddr[0]: p.addr for p in self._current if p.name == p.addr.host
                   and not _loopback(p.addr.host)}
        now, ptr = time.monotonic(), self._ptr
        for ip in ptr.keys() - unnamed.keys():      # a peer that left: its last records
            if now - self._unlisted.setdefault(ip, now) > defaults.PEER_NAME_KEEP_S:
                del ptr[ip], self._unlisted[ip]
        for ip, addr in unnamed.items():
            self._unlisted.pop(ip, None)
            if ip in ptr:
                continue
            try:
                found = bounded(lambda a=addr: self._reverse(a.sockaddr), self.timeout,
                                f"PTR {ip}")
            except LookupFailed as e:
                log.debug("peers: %s; asked again after the next refresh", e)
                return
            ptr[ip] = names.ptr_name(found, own) if found else None

    def refresh(self, resolve: bool = True, reread: bool = False) -> bool:
        """One pass: read files that changed (all with reread), look names up (all with
        resolve, else only new ones), publish. True when the peer list changed."""
        entries: list[Entry] = []
        for entry in self.entries:
            entries += self._file(entry, reread) if isinstance(entry, FileEntry) else [entry]
        states = {}
        for entry in dict.fromkeys(entries):
            state = states[entry] = self._states.get(entry) or _State()
            if resolve or not state.looked:
                self._lookup(entry, state)
        files = {e: s for e, s in self._states.items() if isinstance(e, FileEntry)}
        self._states = states | files
        return self._publish([p for e in states for p in states[e].peers])

    def _file(self, entry: FileEntry, reread: bool) -> list[Entry]:
        state = self._states.setdefault(entry, _State())
        try:
            st = os.stat(entry.path)
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as e:
            signature = ("error", e.strerror)
        if signature == state.signature and not reread:
            return state.entries
        state.signature = signature
        try:
            state.entries = parse_file(entry.path)
            state.failing = False
        except (OSError, ValueError) as e:
            why = f"cannot read: {e.strerror or e}" if isinstance(e, OSError) else str(e)
            log.warning("peers: file:%s: %s; keeping its last %d entries", entry.path, why,
                        len(state.entries))
        return state.entries

    def _lookup(self, entry: Entry, state: _State) -> None:
        state.looked = True
        try:
            got = self._peers_of(entry)
        except LookupFailed as e:
            if not state.failing:
                log.warning("peers: %s: %s; keeping its last %d peers", _text(entry), e,
                            len(state.peers))
            state.failing = True
            return
        if state.failing:
            log.info("peers: %s answers again", _text(entry))
            state.failing = False
        if not got and state.peers:
            state.empty += 1
            if state.empty < defaults.PEER_EMPTY_REFRESHES:
                if state.empty == 1:
                    log.warning("peers: %s: empty answer; keeping its last %d peers unless it "
                                "stays empty for %d refreshes", _text(entry), len(state.peers),
                                defaults.PEER_EMPTY_REFRESHES)
                return
            log.warning("peers: %s: empty for %d refreshes: its %d peers leave", _text(entry),
                        state.empty, len(state.peers))
        state.empty = 0
        state.peers = tuple(got)

    def _peers_of(self, entry: Entry) -> list[Peer]:
        if isinstance(entry, Static):
            addr = _literal(entry.host, entry.port)
            if addr is None:
                found = self._addrs(entry.host, entry.port)
                addr = found[0] if found else None
            return [Peer(entry.host, addr)] if addr else []
        if isinstance(entry, Dns):
            return [Peer(a.host, a) for a in self._addrs(entry.name, entry.port)]
        records = bounded(lambda: self._resolve_srv(entry.name), self.timeout,
                          f"srv:{entry.name}")
        peers = []
        for target, port in records:
            found = self._addrs(target, port)
            if found:
                peers.append(Peer(target.rstrip("."), found[0]))
        return peers

    def _addrs(self, host: str, port: int) -> list[Addr]:
        return bounded(lambda: self._resolve(host, port), self.timeout, host)

    def _is_local(self, addr: Addr) -> bool:
        ip = addr.sockaddr[0]
        if ip not in self._locals:
            self._locals[ip] = self._local(addr)
        return self._locals[ip]

    def _publish(self, found: list[Peer]) -> bool:
        peers, own_keys, seen = [], [], set()
        for peer in found:
            where = (peer.addr.family, peer.addr.sockaddr[0], peer.addr.port)
            if where in seen:
                continue
            seen.add(where)
            if is_self(peer, self.me, self._is_local):
                own_keys.append(peer.key)
            else:
                peers.append(peer)
        own_key = min(own_keys) if own_keys else host_port(self.me.name, self.me.port)
        chosen = select(self.me.name, own_key, peers, self.subset)
        if chosen == self._current:
            return False
        before, after = set(self._current), set(chosen)
        log.info("peers: %d (joined %s; left %s)", len(chosen), _names(after - before),
                 _names(before - after))
        self._current = chosen
        return True


def _names(peers: set[Peer], most: int = 5) -> str:
    keys = sorted(p.key for p in peers)
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return (", ".join(keys[:most]) + more) if keys else "none"
