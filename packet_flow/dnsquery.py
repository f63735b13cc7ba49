"""A small DNS client for SRV records (RFC 1035 messages, RFC 2782 SRV), standard library only.

Rules:
- The nameservers, search domains and ndots come from /etc/resolv.conf (as the C resolver
  reads them); no nameserver there means 127.0.0.1.
- One query per name candidate: recursion desired, EDNS0 with a 4096-byte payload; a
  truncated answer is asked again over TCP. Each nameserver gets DNS_TIMEOUT_S per try,
  DNS_ATTEMPTS rounds over them all.
- NXDOMAIN, or NOERROR without SRV records, is an empty answer for that candidate; no answer,
  SERVFAIL or REFUSED from every server is a failure. The next search domain is tried after
  either; no records anywhere after a failure is DnsError, else [].
- Only the fields read are decoded: the header, the question is skipped, answers' SRV port
  and target (names may be compressed, RFC 1035 §4.1.4).
"""

from __future__ import annotations

import secrets
import socket
import struct

from . import defaults

SRV, IN, OPT = 33, 1, 41
NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
RESOLV_CONF = "/etc/resolv.conf"


class DnsError(Exception):
    """No nameserver gave an answer (timeout, SERVFAIL, REFUSED, a malformed reply)."""


def resolv_conf(path: str = RESOLV_CONF) -> tuple[list[str], list[str], int]:
    """(nameservers, search domains, ndots) of a resolv.conf."""
    servers, search, ndots = [], [], 1
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
        elif words[:1] in (["search"], ["domain"]):
            search = words[1:]
        elif words[:1] == ["options"]:
            for opt in words[1:]:
                if opt.startswith("ndots:") and opt[6:].isdigit():
                    ndots = int(opt[6:])
    return servers or ["127.0.0.1"], search, ndots


def candidates(name: str, search: list[str], ndots: int) -> list[str]:
    """The names to ask, in the C resolver's order."""
    if name.endswith("."):
        return [name.rstrip(".")]
    searched = [f"{name}.{domain.rstrip('.')}" for domain in search]
    return [name, *searched] if name.count(".") >= ndots else [*searched, name]


def query(name: str, qtype: int = SRV, qid: int | None = None) -> bytes:
    """A query message: header (RD set), the question, an EDNS0 OPT record."""
    qid = secrets.randbits(16) if qid is None else qid
    qname = b"".join(bytes([len(label)]) + label
                     for label in (part.encode("idna") for part in name.split(".") if part))
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1)
    opt = b"\x00" + struct.pack("!HHIH", OPT, 4096, 0, 0)
    return header + qname + b"\x00" + struct.pack("!HH", qtype, IN) + opt


def _name(msg: bytes, pos: int) -> tuple[str, int]:
    """The (possibly compressed) name at pos and the position after it."""
    labels, end, jumps = [], None, 0
    while True:
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            if jumps > 64:
                raise DnsError("a name compression loop")
            continue
        pos += 1
        if length == 0:
            break
        labels.append(msg[pos:pos + length].decode("ascii", "replace"))
        pos += length
    return ".".join(labels), end if end is not None else pos


def parse(msg: bytes, qid: int) -> tuple[int, bool, list[tuple[str, int]]]:
    """(rcode, truncated, [(target, port) of the SRV answers]) of a reply to query qid."""
    try:
        rid, flags, qdcount, ancount, _, _ = struct.unpack_from("!HHHHHH", msg)
        if rid != qid or not flags & 0x8000:
            raise DnsError("not the reply to our query")
        pos = 12
        for _ in range(qdcount):
            pos = _name(msg, pos)[1] + 4
        records = []
        for _ in range(ancount):
            pos = _name(msg, pos)[1]
            rtype, _, _, rdlength = struct.unpack_from("!HHIH", msg, pos)
            pos += 10
            if rtype == SRV:
                port = struct.unpack_from("!H", msg, pos + 4)[0]
                target = _name(msg, pos + 6)[0]
                if target and port:             # "." means: no such service here
                    records.append((target, port))
            pos += rdlength
    except (struct.error, IndexError) as e:
        raise DnsError(f"a malformed reply ({e})") from None
    return flags & 0x000F, bool(flags & 0x0200), records


def _ask(server: str, port: int, msg: bytes, qid: int, timeout: float) -> tuple[int, list]:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((server, port))
        s.send(msg)
        while True:
            try:
                rcode, truncated, records = parse(s.recv(65535), qid)
                break
            except DnsError as e:
                if "not the reply" not in str(e):
                    raise
    if truncated:
        with socket.create_connection((server, port), timeout) as t:
            t.sendall(struct.pack("!H", len(msg)) + msg)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = t.recv(65535)
                if not chunk:
                    raise DnsError("the TCP reply ended early")
                data += chunk
            rcode, _, records = parse(data[2:], qid)
    return rcode, records


def srv_records(name: str, conf: str = RESOLV_CONF, timeout: float = defaults.DNS_TIMEOUT_S,
                attempts: int = defaults.DNS_ATTEMPTS,
                port: int = defaults.DNS_PORT) -> list[tuple[str, int]]:
    """(target, port) of name's SRV records, sorted; [] when there are none. `port` is the
    nameservers' port (53; tests use another)."""
    servers, search, ndots = resolv_conf(conf)
    failed = None
    for candidate in candidates(name, search, ndots):
        answer, why = _ask_all(servers, port, candidate, timeout, attempts)
        if answer:
            return sorted(set(answer))
        if answer is None:          # as the C resolver: go on with the next search domain
            failed = failed or f"srv {candidate}: {why}"
    if failed:
        raise DnsError(failed)
    return []


def _ask_all(servers: list[str], port: int, name: str, timeout: float,
             attempts: int) -> tuple[list | None, str]:
    """(SRV records, "") from the first server that answers; (None, why) when none does."""
    qid = secrets.randbits(16)
    msg = query(name, SRV, qid)
    why = "no nameserver"
    for _ in range(attempts):
        for server in servers:
            try:
                rcode, records = _ask(server, port, msg, qid, timeout)
            except (OSError, DnsError) as e:
                why = f"{server}: {getattr(e, 'strerror', None) or e}"
                continue
            if rcode in (NOERROR, NXDOMAIN):
                return records, ""
            why = f"{server}: rcode {rcode}"
    return None, why
