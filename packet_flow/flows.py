"""Per-flow state across receive batches.

A flow is one sender run: source address, port and session id (the Cython core hashes
them into the record's `flow` id). Rules:
- A new session id from the same address is a new flow (a sender restart is not loss).
- A packet with the FINAL flag closes its flow: gaps are settled, a last `interval` record
  with `closed: true` and the flow's `summary` are emitted, and the flow is forgotten.
- Silence longer than `stall` marks the flow `stalled` (one warning, no invented loss);
  longer than `forget` emits its summary and forgets it.
- The receiving host's own drops are not path loss: every record carries the socket's drop
  count when its datagram was queued (SO_RXQ_OVFL), so the drops between two packets of a
  flow are known, and a gap that opens across them is `local_drops` (FlowStats rules; the
  table says whether a drop is one datagram or a GRO buffer, and whether other flows share
  the socket). Packets of a coalesced (GRO) burst but its last share the burst's receive
  timestamp: counted, kept out of the delay statistics and of the per-packet points.
- Malformed datagrams are attributed to the flows of their source address when there are
  any, else to the receiver-wide counters only.
- Flows together have a memory budget (`budget` bytes: each flow's FlowStats.nbytes plus
  FLOW_BYTES of Python objects) and a count cap (MAX_FLOWS). A new flow that does not fit
  takes the place of the oldest idle flow (silent longer than `stall`: its interval and
  summary are emitted, `evicted` counts it); when no flow is idle its packets are counted
  `untracked`. Windows stop growing while the budget is spent. One warning per interval.
All per-packet work is per batch with numpy; the Python loop runs once per flow per batch.
"""

import logging

import numpy as np

from packet_flow import _io, defaults
from packet_flow.addresses import address
from packet_flow.analysis import FlowStats

log = logging.getLogger(__name__)

WIRES = {1: "native", 2: "legacy", 3: "stamp", 4: "stamp_reflected"}


class Flow:
    __slots__ = ("fid", "source", "session", "wire", "stats", "last_ns", "first_ns",
                 "tick_ns", "stalled", "closed", "malformed", "malformed_total", "nbytes",
                 "drops")

    def __init__(self, fid, source, session, wire, now_ns, seq_bits, window):
        self.fid = fid
        self.source = source
        self.session = session
        self.wire = wire
        self.stats = FlowStats(seq_bits=seq_bits, window=window)
        self.first_ns = self.last_ns = self.tick_ns = now_ns
        self.stalled = self.closed = False
        self.malformed = self.malformed_total = 0
        self.nbytes = 0     # what the table's memory account holds for this flow
        self.drops = None   # the socket's drop count when the flow's last packet was queued


class FlowTable:
    """Feeds drained ring records to per-flow FlowStats and turns them into records.

    emit(record) receives every record. For the original's per-packet InfluxDB points,
    on_packets(source, destination, rx_ns, owd_ns) receives each flow's packets per batch and
    on_gaps(source, destination, rx_ns, lost) each sequence gap as it opens (the original's
    `packet_loss` semantics: a gap counted when the packet after it arrives)."""

    def __init__(self, destination, emit, stall_s, forget_s, window, on_packets=None,
                 on_gaps=None, budget=defaults.MAX_FLOW_MEMORY_MIB << 20):
        self.destination = destination
        self.emit = emit
        self.stall_ns = int(stall_s * 1e9)
        self.forget_ns = int(forget_s * 1e9)
        self.window = window
        self.on_packets = on_packets
        self.on_gaps = on_gaps
        self.flows = {}             # least recently active first
        self.unattributed = 0
        self.gro = False            # the socket coalesces (UDP GRO): a drop may be many datagrams
        self.untracked = 0          # packets of new flows refused: budget or MAX_FLOWS full
        self.evicted = 0            # idle flows dropped to make room for new ones
        self.budget = budget
        self.memory = 0             # bytes accounted to the open flows
        self._new_bytes = defaults.FLOW_BYTES + 8 * min(window, defaults.SEQ_WINDOW_INITIAL)
        self._pressure = [0, 0]     # untracked packets, evicted flows since the last warning

    def _base(self, kind, flow, now_ns, since_ns):
        return {"type": kind, "role": "receiver", "time": now_ns,
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
            flow = self.flows.pop(fid, None)
            if flow is None:
                if not self._room(now_ns):
                    self.untracked += len(part)
                    self._pressure[0] += len(part)
                    continue
                flow = self._open(fid, part[0], now_ns)
            self.flows[fid] = flow          # to the end: the most recently active
            flow.stats.growable = self.memory < self.budget
            final = np.flatnonzero(part["flags"] & _io.FLAG_FINAL)
            if len(final):
                part = part[: final[0] + 1]
            if self.on_gaps is not None:
                self._gaps(flow, part)
            timed = part["coalesced"] == 0
            flow.stats.update(part["seq"], part["tx_ns"], part["rx_ns"], timed=timed,
                              host_drops=self._host_drops(flow, part["drops"]),
                              buffers=self.gro, shared=len(self.flows) > 1)
            self._account(flow)
            flow.last_ns = now_ns
            if flow.stalled:
                log.info("flow %s (session %s) resumed", flow.source, flow.session)
                flow.stalled = False
            if self.on_packets is not None:
                own = part[timed]
                self.on_packets(flow.source, self.destination, own["rx_ns"],
                                own["rx_ns"] - own["tx_ns"])
            if len(final):
                flow.closed = True
                flow.stats.close()
                self._interval(flow, now_ns)
                self._summary(flow, now_ns)
                self._drop(flow)
        if self.memory > self.budget:
            self._room(now_ns, new=False)

    @staticmethod
    def _host_drops(flow, drops):
        """Drops of the socket between each packet and the flow's previous one (the u32
        SO_RXQ_OVFL counter wraps)."""
        d = drops.astype(np.int64)
        prev = np.empty_like(d)
        prev[0] = d[0] if flow.drops is None else flow.drops
        prev[1:] = d[:-1]
        flow.drops = int(d[-1])
        return (d - prev) & 0xFFFFFFFF

    def _account(self, flow):
        nbytes = defaults.FLOW_BYTES + flow.stats.nbytes
        self.memory += nbytes - flow.nbytes
        flow.nbytes = nbytes

    def _drop(self, flow):
        del self.flows[flow.fid]
        self.memory -= flow.nbytes

    def _room(self, now_ns, new=True):
        """Evict the oldest idle flows until one more flow fits (new=True: the budget and
        MAX_FLOWS) or the open flows are back within the budget; False if they do not."""
        extra = self._new_bytes if new else 0
        while self.flows and not self._fits(extra, new):
            flow = next(iter(self.flows.values()))
            if now_ns - flow.last_ns <= self.stall_ns:
                break
            self._interval(flow, now_ns)
            self._summary(flow, now_ns)
            self._drop(flow)
            self.evicted += 1
            self._pressure[1] += 1
        return self._fits(extra, new)

    def _fits(self, extra, new):
        return self.memory + extra <= self.budget and not (new and
                                                           len(self.flows) >= defaults.MAX_FLOWS)

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
        self._account(flow)
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
        untracked, evicted = self._pressure
        if untracked or evicted:
            log.warning("flow memory budget (%d MiB, %d flows at most) full: %d idle flows "
                        "evicted, %d packets of new flows untracked since the last interval",
                        self.budget >> 20, defaults.MAX_FLOWS, evicted, untracked)
            self._pressure = [0, 0]
        for flow in list(self.flows.values()):
            silent = now_ns - flow.last_ns
            if silent > self.forget_ns:
                log.warning("flow %s (session %s) silent for %.0f s: forgotten",
                            flow.source, flow.session, silent / 1e9)
                self._summary(flow, now_ns)
                self._drop(flow)
                continue
            if silent > self.stall_ns and not flow.stalled:
                flow.stalled = True
                log.warning("flow %s (session %s) stalled: nothing for %.1f s",
                            flow.source, flow.session, silent / 1e9)
            self._interval(flow, now_ns)
            self._account(flow)

    def finish(self, now_ns):
        """At exit: a last interval and the summary of every open flow."""
        for flow in list(self.flows.values()):
            self._interval(flow, now_ns)
            self._summary(flow, now_ns)
        self.flows.clear()
        self.memory = 0
