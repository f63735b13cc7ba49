"""Per-flow state across receive batches.

A flow is one sender run: source address, port and session id (the Cython core hashes
them into the record's `flow` id). Rules:
- A new session id from the same address is a new flow (a sender restart is not loss).
- A packet with the FINAL flag closes its flow: gaps are settled, a last `interval` record
  with `closed: true` and the flow's `summary` are emitted, and the flow is forgotten.
- Silence longer than `stall` marks the flow `stalled` (one warning, no invented loss);
  longer than `forget` emits its summary and forgets it.
- Malformed datagrams are attributed to the flows of their source address when there are
  any, else to the receiver-wide counters only.
All per-packet work is per batch with numpy; the Python loop runs once per flow per batch.
"""

import datetime
import ipaddress
import logging

import numpy as np

from packet_flow import _io, defaults
from packet_flow.analysis import FlowStats

log = logging.getLogger(__name__)

WIRES = {1: "native", 2: "legacy", 3: "stamp", 4: "stamp_reflected"}


def rfc3339(ns):
    """RFC 3339 UTC time with microseconds for integer ns since the epoch."""
    dt = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def address(addr, port, family):
    """host:port or [v6]:port from a record's 16-byte address field."""
    raw = bytes(addr)
    if family == 4:
        return f"{ipaddress.IPv4Address(raw[12:])}:{port}"
    v6 = ipaddress.IPv6Address(raw)
    if v6.ipv4_mapped is not None:        # an IPv4 peer of a dual-stack socket
        return f"{v6.ipv4_mapped}:{port}"
    return f"[{v6}]:{port}"


class Flow:
    __slots__ = ("fid", "source", "session", "wire", "stats", "last_ns", "first_ns",
                 "tick_ns", "stalled", "closed", "malformed", "malformed_total")

    def __init__(self, fid, source, session, wire, now_ns, seq_bits, window):
        self.fid = fid
        self.source = source
        self.session = session
        self.wire = wire
        self.stats = FlowStats(seq_bits=seq_bits, window=window)
        self.first_ns = self.last_ns = self.tick_ns = now_ns
        self.stalled = self.closed = False
        self.malformed = self.malformed_total = 0


class FlowTable:
    """Feeds drained ring records to per-flow FlowStats and turns them into records.

    emit(record) receives every record. For the original's per-packet InfluxDB points,
    on_packets(source, destination, rx_ns, owd_ns) receives each flow's packets per batch and
    on_gaps(source, destination, rx_ns, lost) each sequence gap as it opens (the original's
    `packet_loss` semantics: a gap counted when the packet after it arrives)."""

    def __init__(self, destination, emit, stall_s, forget_s, window, on_packets=None,
                 on_gaps=None):
        self.destination = destination
        self.emit = emit
        self.stall_ns = int(stall_s * 1e9)
        self.forget_ns = int(forget_s * 1e9)
        self.window = window
        self.on_packets = on_packets
        self.on_gaps = on_gaps
        self.flows = {}
        self.unattributed = 0
        self.untracked = 0          # packets of new flows refused beyond MAX_FLOWS

    def _base(self, kind, flow, now_ns, since_ns):
        return {"type": kind, "role": "receiver", "time": rfc3339(now_ns),
                "source": flow.source, "destination": self.destination,
                "session": flow.session, "wire": flow.wire,
                "interval_s": round((now_ns - since_ns) / 1e9, 6)}

    def _interval(self, flow, now_ns):
        rec = self._base("interval", flow, now_ns, flow.tick_ns)
        rec.update(flow.stats.take_interval())
        rec.update(malformed=flow.malformed, stalled=flow.stalled, closed=flow.closed)
        flow.tick_ns = now_ns
        flow.malformed = 0
        self.emit(rec)

    def _summary(self, flow, now_ns):
        rec = self._base("summary", flow, now_ns, flow.first_ns)
        rec.update(flow.stats.summary())
        rec.update(malformed=flow.malformed_total, stalled=flow.stalled, closed=flow.closed)
        self.emit(rec)

    def ingest(self, recs, now_ns):
        """Account one drained batch of ring records (arrival order)."""
        bad = recs["kind"] == 0
        if bad.any():
            self._malformed(recs[bad])
            recs = recs[~bad]
        if not len(recs):
            return
        fcol = recs["flow"]
        if fcol[0] == fcol[-1] and not (fcol != fcol[0]).any():
            groups = ((int(fcol[0]), recs),)        # one flow: the common case, no sorting
        else:
            order = np.argsort(fcol, kind="stable")
            fids, starts = np.unique(fcol[order], return_index=True)
            groups = ((fid, recs[idx]) for fid, idx in
                      zip(fids.tolist(), np.split(order, starts[1:]), strict=True))
        for fid, part in groups:
            flow = self.flows.get(fid)
            if flow is None:
                if len(self.flows) >= defaults.MAX_FLOWS:
                    if not self.untracked:
                        log.warning("%d flows are open: packets of new flows are counted as "
                                    "untracked until some are forgotten", len(self.flows))
                    self.untracked += len(part)
                    continue
                flow = self._open(fid, part[0], now_ns)
            final = np.flatnonzero(part["flags"] & _io.FLAG_FINAL)
            if len(final):
                part = part[: final[0] + 1]
            if self.on_gaps is not None:
                self._gaps(flow, part)
            flow.stats.update(part["seq"], part["tx_ns"], part["rx_ns"])
            flow.last_ns = now_ns
            if flow.stalled:
                log.info("flow %s (session %s) resumed", flow.source, flow.session)
                flow.stalled = False
            if self.on_packets is not None:
                self.on_packets(flow.source, self.destination, part["rx_ns"],
                                part["rx_ns"] - part["tx_ns"])
            if len(final):
                flow.closed = True
                flow.stats.close()
                self._interval(flow, now_ns)
                self._summary(flow, now_ns)
                del self.flows[fid]

    def _gaps(self, flow, part):
        seq = flow.stats.unwrap(part["seq"])     # a 32-bit STAMP sequence wraps
        before = np.maximum.accumulate(np.concatenate(([flow.stats.highest], seq[:-1])))
        if flow.stats.highest < 0:
            before[0] = seq[0] - 1
        gap = seq - before - 1
        opened = gap > 0
        if opened.any():
            self.on_gaps(flow.source, self.destination, part["rx_ns"][opened], gap[opened])

    def _open(self, fid, rec, now_ns):
        kind = int(rec["kind"])
        wire = WIRES.get(kind, "native")
        source = address(rec["addr"], int(rec["port"]), int(rec["family"]))
        session = "legacy" if kind == 2 else f"{int(rec['session']):016x}"
        seq_bits = 32 if kind in (3, 4) else 64
        flow = Flow(fid, source, session, wire, now_ns, seq_bits, self.window)
        self.flows[fid] = flow
        log.info("new flow from %s, session %s (%s)", source, session, wire)
        return flow

    def _malformed(self, recs):
        by_source = {}
        for flow in self.flows.values():
            by_source.setdefault(flow.source, flow)
        key = np.zeros(len(recs), [("addr", "u1", (16,)), ("port", "<u2"), ("family", "u1")])
        for name in key.dtype.names:
            key[name] = recs[name]
        uniq, counts = np.unique(key, return_counts=True)
        for row, n in zip(uniq, counts.tolist(), strict=True):
            flow = by_source.get(address(row["addr"], int(row["port"]), int(row["family"])))
            if flow is None:
                self.unattributed += n
            else:
                flow.malformed += n
                flow.malformed_total += n

    def tick(self, now_ns):
        """Emit one interval record per flow; mark stalls; forget flows silent too long."""
        for fid, flow in list(self.flows.items()):
            silent = now_ns - flow.last_ns
            if silent > self.forget_ns:
                log.warning("flow %s (session %s) silent for %.0f s: forgotten",
                            flow.source, flow.session, silent / 1e9)
                self._summary(flow, now_ns)
                del self.flows[fid]
                continue
            if silent > self.stall_ns and not flow.stalled:
                flow.stalled = True
                log.warning("flow %s (session %s) stalled: nothing for %.1f s",
                            flow.source, flow.session, silent / 1e9)
            self._interval(flow, now_ns)

    def finish(self, now_ns):
        """At exit: a last interval and the summary of every open flow."""
        for flow in list(self.flows.values()):
            self._interval(flow, now_ns)
            self._summary(flow, now_ns)
        self.flows.clear()
