"""Node names: what a node is called, and what records call the two ends of a flow.

Rules:
- A node's name is --name, else the NODE_NAME environment variable (Kubernetes' downward
  API), else the host name; at most NAME_MAX bytes of printable ASCII without spaces
  (anything else becomes `_`), so it is safe as an InfluxDB tag and a Prometheus label.
- A sender's name reaches its receivers in band (ext/names.pxi: every packet carries it), so
  a receiver names senders it never resolved. A sender without a name (legacy, STAMP, an
  older packet-flow, a sender run without --name) is named by its source address without the
  ephemeral port: what stays the same across its restarts.
- Records carry `source_name` and `destination_name` next to `source` and `destination`.
- A mesh node names a peer it has not heard in band by what discovery calls it: the host as
  written, the SRV target, or for an address its PTR record (ptr_name; discovery.py).
"""

import os
import re
import socket
from collections import OrderedDict

from packet_flow import _io, defaults

_UNSAFE = re.compile(r"[^!-~]|[\"'\\,=]")


def clean(raw):
    """A name from bytes or text: printable ASCII without spaces, quotes, backslashes, commas
    or `=`, each other character replaced by `_`; at most NAME_MAX bytes."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return _UNSAFE.sub("_", text)[:_io.NAME_MAX]


def node_name(cfg=None, env=None):
    """This node's name (see the module rules)."""
    env = os.environ if env is None else env
    given = getattr(cfg, "name", None)
    return clean(given or env.get("NODE_NAME") or socket.gethostname() or "localhost")


def in_band_name(cfg, env=None):
    """The name a plain sender puts in its packets: only one given (--name or NODE_NAME),
    so a sender run without one keeps today's packet size. A mesh node always names itself."""
    env = os.environ if env is None else env
    if cfg.mode == "mesh" or getattr(cfg, "name", None) or env.get("NODE_NAME"):
        return node_name(cfg, env).encode()
    return b""


def ptr_name(ptr, own):
    """A peer's name from its PTR record (discovery): without the root's dot, and only its
    first label when this node's own name `own` has no dot, so that a fleet named by host
    names (n5) calls its peers as they call themselves, not by their domain names
    (n5.example.net)."""
    name = ptr.rstrip(".")
    return clean(name if "." in own else name.split(".", 1)[0])


def host_of(address):
    """`host` of `host:port` or `[v6]:port` (a name for senders without one)."""
    if address is None:
        return None
    host = address.rsplit(":", 1)[0] if not address.startswith("[") else address[1:].split("]")[0]
    return host


class NameBook:
    """The names senders gave in band, by session; names receiver records.

    learn(rx) takes the Cython receiver's new notes; tag(record) adds `source_name` and
    `destination_name` to a receiver-side record. At most NAMES_MAX sessions are kept (the
    oldest go first), so forged sessions cannot grow it without bound."""

    def __init__(self, own_name):
        self.own = own_name
        self.by_session = OrderedDict()
        self.by_source = {}     # host:port -> the name its sender gave (the mesh's peers)

    def learn(self, rx):
        for session, raw in rx.take_names():
            self.by_session[f"{session:016x}"] = clean(raw)
            self.by_session.move_to_end(f"{session:016x}")
            if len(self.by_session) > defaults.NAMES_MAX:
                self.by_session.popitem(last=False)

    def tag(self, rec):
        given = self.by_session.get(rec.get("session"))
        if given is not None and len(self.by_source) < defaults.NAMES_MAX:
            self.by_source[rec["source"]] = given
        rec["source_name"] = given or host_of(rec.get("source"))
        rec["destination_name"] = self.own
        return rec

    def wrap(self, emit):
        """emit, with every record named first."""
        def named(rec):
            emit(self.tag(rec))
        return named
