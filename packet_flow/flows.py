"""Per-flow state across receive batches.

A flow is one sender run. Native packets carry a random 64-bit session id, and a native flow
is its session: it continues when a NAT gives the sender a new source port (rebinding), and
its records show the source that brings its newest sequences. Legacy and STAMP flows are
keyed by source address and port (the Cython core hashes address, port and session into the
record's `flow` id). Rules:
- A packet with the FINAL flag closes its flow: gaps are settled and a last `interval` record
  with `closed: true` is emitted. A native FINAL is a probe packet; the Rust original's
  (legacy) FINAL says goodbye and carries the next, unsent sequence, so it is not counted and
  the sequences below it that never came are lost. The closed flow stays for a grace time (its
  reorder horizon in time, at least CLOSED_GRACE_S): packets sent before the FINAL are taken
  back into it as late packets (taking back their loss); then its `summary` is emitted. No flow
  is opened from packets after its FINAL: from a legacy or STAMP source, packets sent after it
  are a new run; anything else is counted as `after_final`.
- Legacy and STAMP senders have no session id: a packet sent later than all before it whose
  sequence jumps back below the reorder horizon (to 0, or more than RESTART_BACK) is a restart
  from the same address and port: the old flow's summary is emitted and a new flow opens.
- Silence longer than `stall` marks the flow `stalled` (one warning, no invented loss; its
  interval records say how long it has been silent in `silent_s`). Longer than `forget`, the
  flow shrinks to a compact record (analysis.Frozen: where its sequence stood and its totals)
  and its interval records stop. When it comes back, it resumes: the gap is loss, one burst,
  settled in the interval where it returns. At most FORGOTTEN_MAX records are kept, each for
  FORGOTTEN_KEEP_S; a flow that never comes back gets its summary with `outcome: "unknown"`
  when its record goes (or when the receiver stops): whether its last packets were lost
  cannot be known.
- The receiving host's own drops are not path loss: every record carries the socket's drop
  count when its datagram was queued (SO_RXQ_OVFL), so the drops between two packets of a
  flow are known, and a gap that opens across them is `local_drops` (FlowStats rules; the
  table says whether a drop is one datagram or a GRO buffer, and whether other flows share
  the socket). Packets of a coalesced (GRO) burst but its last share the burst's receive
  timestamp: counted, kept out of the delay statistics and of the per-packet points.
- Malformed datagrams are attributed to the flows of their source address when there are
  any, else to the receiver-wide counters only.
- Flows together have a memory budget (`budget` bytes: each flow's FlowStats.nbytes plus
  FLOW_BYTES of Python objects; closed flows count until their summary; a forgotten record
  counts FORGOTTEN_BYTES) and a count cap (MAX_FLOWS, open and closed). A new flow that does
  not fit takes the place of the oldest idle flow (silent longer than `stall`: it is
  forgotten early, as above; `evicted` counts it), then of the oldest forgotten records
  (their summaries come early); when neither frees enough its packets are counted
  `untracked`. Windows stop growing while the budget is spent. One warning per interval.
All per-packet work is per batch with numpy; the Python loop runs once per flow per batch.
"""

import logging
from collections import Counter, OrderedDict

import numpy as np

from packet_flow import _io, defaults, records
from packet_flow.addresses import address
from packet_flow.analysis import FlowStats
from packet_flow.lossruns import local_part
from packet_flow.seqspace import counter_delta, highest_before

log = logging.getLogger(__name__)

WIRES = {1: "native", 2: "legacy", 3: "stamp", 4: "stamp_reflected"}
_TX_NONE = np.iinfo(np.int64).min


class Flow:
    __slots__ = ("key", "kind", "source", "peer", "session", "wire", "stats", "last_ns",
                 "first_ns", "tick_ns", "stalled", "closed", "malformed", "malformed_total",
                 "tx_max", "final_tx", "until_ns", "after_final", "after_final_total", "fresh",
                 "nbytes", "drops")

    def __init__(self, key, kind, source, peer, session, wire, now_ns, seq_bits, window):
        self.key, self.kind = key, kind
        self.source, self.peer = source, peer
        self.session = session
        self.wire = wire
        self.stats = FlowStats(seq_bits=seq_bits, window=window)
        self.first_ns = self.last_ns = self.tick_ns = now_ns
        self.stalled = self.closed = self.fresh = False
        self.malformed = self.malformed_total = 0
        self.after_final = self.after_final_total = 0
        self.tx_max = self.final_tx = _TX_NONE
        self.until_ns = 0
        self.nbytes = 0     # what the table's memory account holds for this flow
        self.drops = None   # the socket's drop count when the flow's last packet was queued


class FlowTable:
    """Feeds drained ring records to per-flow FlowStats and turns them into records.

    emit(record) receives every record. For the original's per-packet InfluxDB points,
    on_packets(source, destination, rx_ns, owd_ns) receives each flow's packets per batch and
    on_gaps(source, destination, rx_ns, lost) each sequence gap as it opens (the original's
    `packet_loss` semantics: a gap counted when the packet after it arrives)."""

    def __init__(self, destination, emit, stall_s, forget_s, window, on_packets=None,
                 on_gaps=None, budget=defaults.MAX_FLOW_MEMORY_MIB << 20, wall=None):
        self.destination = destination
        # every `now_ns` the table is given is a CLOCK_MONOTONIC time (durations, stalls);
        # wall(now_ns) is the wall-clock time records carry (default: the same number)
        self.wall = wall or (lambda ns: ns)
        self.emit = emit
        self.stall_ns = int(stall_s * 1e9)
        self.forget_ns = int(forget_s * 1e9)
        self.window = window
        self.on_packets = on_packets
        self.on_gaps = on_gaps
        self.flows = {}             # open flows by key, least recently active first
        self.closing = {}           # flows closed by FINAL, taking stragglers until until_ns
        self.forgotten = OrderedDict()  # silent flows shrunk to a Frozen record, oldest first
        self.unattributed = 0
        self.rejected = Counter()   # malformed datagrams by (source, reason) since take_rejected
        self.gro = False            # the socket coalesces (UDP GRO): a drop may be many datagrams
        self.untracked = 0          # packets of new flows refused: budget or MAX_FLOWS full
        self.evicted = 0            # idle flows forgotten early to make room for new ones
        self.budget = budget
        self.memory = 0             # bytes accounted to the open and closing flows
        self._new_bytes = defaults.FLOW_BYTES + 8 * min(window, defaults.SEQ_WINDOW_INITIAL)
        self._pressure = [0, 0]     # untracked packets, evicted flows since the last warning

    def _base(self, kind, flow, now_ns, since_ns):
        return records.header(kind, "receiver", self.wall(now_ns), now_ns - since_ns,
                              flow.source, self.destination, flow.session, wire=flow.wire)

    def _interval(self, flow, now_ns):
        rec = self._base("interval", flow, now_ns, flow.tick_ns)
        rec.update(flow.stats.take_interval())
        rec.update(malformed=flow.malformed, after_final=flow.after_final,
                   stalled=flow.stalled, silent_s=round((now_ns - flow.last_ns) / 1e9, 3),
                   closed=flow.closed)
        flow.tick_ns = now_ns
        flow.malformed = flow.after_final = 0
        flow.fresh = False
        self.emit(rec)

    def _summary(self, flow, now_ns, outcome):
        """outcome: `final` (FINAL seen), `restarted` (a new run replaced it), `unknown` (it
        went silent and did not come back), `running` (still sending when the receiver
        stopped)."""
        rec = self._base("summary", flow, now_ns, flow.first_ns)
        rec.update(flow.stats.summary())
        rec.update(malformed=flow.malformed_total, after_final=flow.after_final_total,
                   stalled=flow.stalled, silent_s=round((now_ns - flow.last_ns) / 1e9, 3),
                   closed=flow.closed, outcome=outcome)
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
            native = int(part["kind"][0]) == 1
            self._feed(int(part["session"][0]) if native else fid, part, now_ns)
        if self.memory > self.budget:
            self._room(now_ns, new=False)

    def _feed(self, key, part, now_ns):
        """One flow key's packets of this batch, in arrival order."""
        closing = self.closing.get(key)
        if closing is not None:
            part = self._straggle(closing, part, now_ns)
            if not len(part):
                return
        flow = self.flows.pop(key, None) or self._open(key, part[0], now_ns)
        while flow is not None and flow.kind != 1:
            i = flow.stats.restart_at(part["seq"], part["tx_ns"], flow.tx_max)
            if i < 0:
                break
            if i:
                self._absorb(flow, part[:i], now_ns)
            log.info("flow %s restarted (its sequence went back to %d)", flow.source,
                     int(part["seq"][i]))
            flow.stats.close()
            self._interval(flow, now_ns)
            self._summary(flow, now_ns, "restarted")
            self._release(flow)
            part = part[i:]
            flow = self._open(key, part[0], now_ns, resume=False)
        if flow is None:
            self.untracked += len(part)
            self._pressure[0] += len(part)
            return
        self.flows[key] = flow          # to the end: the most recently active
        final = np.flatnonzero(part["flags"] & _io.FLAG_FINAL)
        if not len(final):
            self._absorb(flow, part, now_ns)
            return
        f = int(final[0])
        # a native FINAL is a probe; a legacy FINAL only says goodbye (it carries the next seq)
        probes = part[: f + 1] if flow.kind == 1 else part[:f]
        if len(probes):
            self._absorb(flow, probes, now_ns)
        flow.last_ns = now_ns
        flow.closed = True
        flow.final_tx = int(part["tx_ns"][f])
        flow.stats.close(None if flow.kind == 1 else int(part["seq"][f]))
        self._interval(flow, now_ns)
        del self.flows[key]
        flow.until_ns = now_ns + self._grace(flow)
        older = self.closing.pop(key, None)     # a previous run of this source, in its grace
        if older is not None:
            self._summary(older, now_ns, "final")
            self._release(older)
        self.closing[key] = flow
        if f + 1 < len(part):
            self._feed(key, part[f + 1 :], now_ns)

    def _straggle(self, flow, part, now_ns):
        """Packets of a closed flow: those sent before its FINAL and not above it are late
        packets of the flow; of the rest, a legacy or STAMP sender's packets sent after the
        FINAL are returned (a new run); anything else is counted as `after_final`."""
        before = part["tx_ns"] <= flow.final_tx
        late = before & (flow.stats.position(part["seq"]) <= 0)
        if late.any():
            self._absorb(flow, part[late] if not late.all() else part, now_ns)
        rest = part[~late]
        new_run = rest[rest["tx_ns"] > flow.final_tx] if flow.kind != 1 else rest[:0]
        odd = len(rest) - len(new_run)
        if odd:
            if not flow.after_final_total:
                log.warning("flow %s (session %s): %d packets after its final packet",
                            flow.source, flow.session, odd)
            flow.after_final += odd
            flow.after_final_total += odd
            flow.fresh = True
        return new_run

    def _grace(self, flow):
        """How long a closed flow takes stragglers: its reorder horizon in time (the horizon
        in sequences times the mean packet spacing), at least CLOSED_GRACE_S."""
        st = flow.stats
        n = st.summary()["received"] if st.horizon else 0
        spacing = (flow.last_ns - flow.first_ns) / n if n else 0
        return max(int(defaults.CLOSED_GRACE_S * 1e9), int(st.horizon * spacing))

    def _absorb(self, flow, part, now_ns):
        """Feed packets to the flow's statistics (and the per-packet compat outputs)."""
        if flow.kind == 1:
            self._rebind(flow, part)
        else:
            flow.tx_max = max(flow.tx_max, int(part["tx_ns"].max()))
        host = self._host_drops(flow, part["drops"])
        if self.on_gaps is not None:
            self._gaps(flow, part, host)
        flow.stats.growable = self.memory < self.budget
        timed = part["coalesced"] == 0
        flow.stats.update(part["seq"], part["tx_ns"], part["rx_ns"], timed=timed,
                          host_drops=host, buffers=self.gro, shared=len(self.flows) > 1)
        self._account(flow)
        flow.last_ns = now_ns
        flow.fresh = True
        if flow.stalled:
            log.info("flow %s (session %s) resumed", flow.source, flow.session)
            flow.stalled = False
        if self.on_packets is not None:
            own = part[timed]
            self.on_packets(flow.source, self.destination, own["rx_ns"],
                            own["rx_ns"] - own["tx_ns"])

    def _rebind(self, flow, part):
        """A native flow whose newest packet comes from a new address or port (a NAT gave
        the sender a new mapping): the flow goes on, its records show the new source."""
        peer = (bytes(part["addr"][-1]), int(part["port"][-1]))
        if peer == flow.peer or flow.stats.position(part["seq"][-1:])[0] <= 0:
            return
        old, flow.peer = flow.source, peer
        flow.source = address(peer[0], peer[1], int(part["family"][-1]))
        if flow.source != old:
            log.info("flow session %s moved from %s to %s", flow.session, old, flow.source)

    @staticmethod
    def _host_drops(flow, drops):
        """Drops of the socket between each packet and the flow's previous one (the u32
        SO_RXQ_OVFL counter wraps)."""
        host = counter_delta(drops, flow.drops)
        flow.drops = int(drops[-1])
        return host

    def _account(self, flow):
        nbytes = defaults.FLOW_BYTES + flow.stats.nbytes
        self.memory += nbytes - flow.nbytes
        flow.nbytes = nbytes

    def _release(self, flow):
        """The flow's memory leaves the account (it ended, or shrank to a Frozen record)."""
        self.memory -= flow.nbytes
        flow.nbytes = 0

    def _room(self, now_ns, new=True):
        """Make room until one more flow fits (new=True: the budget and MAX_FLOWS) or the
        flows are back within the budget: forget the oldest idle flows first, then let the
        oldest forgotten records go (with their summaries); False if it does not fit."""
        extra = self._new_bytes if new else 0
        while not self._fits(extra, new):
            oldest = next(iter(self.flows.items()), None)
            if oldest is not None and now_ns - oldest[1].last_ns > self.stall_ns:
                self._forget(*oldest, now_ns)
                self.evicted += 1
                self._pressure[1] += 1
            elif self.forgotten and self.memory + extra > self.budget:
                self._expire(now_ns)
            else:
                break
        return self._fits(extra, new)

    def _expire(self, now_ns):
        """The oldest forgotten record goes, with its summary."""
        _, flow = self.forgotten.popitem(last=False)
        self.memory -= defaults.FORGOTTEN_BYTES
        self._summary(flow, now_ns, "unknown")

    def _fits(self, extra, new):
        count = len(self.flows) + len(self.closing)
        return self.memory + extra <= self.budget and not (new and count >= defaults.MAX_FLOWS)

    def _gaps(self, flow, part, host):
        """Compat `packet_loss` points: the part of each gap lost on the path (what this
        host's socket dropped is local, not loss)."""
        seq = flow.stats.unwrap(part["seq"])     # a 32-bit STAMP sequence wraps
        before = highest_before(seq, flow.stats.highest)
        if flow.stats.highest < 0:
            before[0] = seq[0] - 1
        gap = np.maximum(seq - before - 1, 0)
        gap -= local_part(gap, host, self.gro)
        opened = gap > 0
        if opened.any():
            self.on_gaps(flow.source, self.destination, part["rx_ns"][opened], gap[opened])

    def _open(self, key, rec, now_ns, resume=True):
        """The flow for a key with no open flow: a forgotten one resumed, or a new one (None
        when it does not fit)."""
        flow = self.forgotten.pop(key, None) if resume else None
        if flow is not None:
            self.memory -= defaults.FORGOTTEN_BYTES
            flow.stats = FlowStats.resume(flow.stats, self.window)
            self._account(flow)
            log.warning("flow %s (session %s) is back after %.1f s of silence", flow.source,
                        flow.session, (now_ns - flow.last_ns) / 1e9)
            return flow
        if not self._room(now_ns):
            return None
        kind = int(rec["kind"])
        wire = WIRES.get(kind, "native")
        port = int(rec["port"])
        source = address(rec["addr"], port, int(rec["family"]))
        session = "legacy" if kind == 2 else f"{int(rec['session']):016x}"
        seq_bits = 32 if kind in (3, 4) else 64
        flow = Flow(key, kind, source, (bytes(rec["addr"]), port), session, wire, now_ns,
                    seq_bits, self.window)
        self._account(flow)
        log.info("new flow from %s, session %s (%s)", source, session, wire)
        return flow

    def _forget(self, key, flow, now_ns):
        """Shrink a silent flow to its compact record (a last interval first); at most
        FORGOTTEN_MAX records: the oldest goes, with its summary."""
        flow.stats.close()
        self._interval(flow, now_ns)
        del self.flows[key]
        self._release(flow)
        flow.stats = flow.stats.freeze()
        flow.peer = None            # the returning packet sets it (and the source if it moved)
        self.forgotten[key] = flow
        self.memory += defaults.FORGOTTEN_BYTES
        if len(self.forgotten) > defaults.FORGOTTEN_MAX:
            self._expire(now_ns)

    def _malformed(self, recs):
        by_source = {}
        for flow in (*self.flows.values(), *self.closing.values()):
            by_source.setdefault(flow.source, flow)
        key = np.zeros(len(recs), [("addr", "u1", (16,)), ("port", "<u2"), ("family", "u1"),
                                   ("reason", "u1")])
        for name in key.dtype.names:
            key[name] = recs[name]
        uniq, counts = np.unique(key, return_counts=True)
        for row, n in zip(uniq, counts.tolist(), strict=True):
            source = address(row["addr"], int(row["port"]), int(row["family"]))
            if (source, int(row["reason"])) in self.rejected or \
                    len(self.rejected) < defaults.REJECTED_SOURCES_MAX:
                self.rejected[source, int(row["reason"])] += n
            else:
                self.rejected["other", int(row["reason"])] += n
            flow = by_source.get(source)
            if flow is None:
                self.unattributed += n
            else:
                flow.malformed += n
                flow.malformed_total += n

    def take_rejected(self):
        """Malformed datagrams since the last call: [{source, reason, count}] (the sources
        beyond REJECTED_SOURCES_MAX in one interval share the source "other")."""
        out = [{"source": source, "reason": _io.REASONS[reason], "count": n}
               for (source, reason), n in self.rejected.items()]
        self.rejected.clear()
        return out

    def tick(self, now_ns):
        """Emit one interval record per flow; mark stalls; forget flows silent too long;
        summaries of closed flows past their grace time and of forgotten flows that expired."""
        untracked, evicted = self._pressure
        if untracked or evicted:
            log.warning("flow memory budget (%d MiB, %d flows at most) full: %d idle flows "
                        "evicted, %d packets of new flows untracked since the last interval",
                        self.budget >> 20, defaults.MAX_FLOWS, evicted, untracked)
            self._pressure = [0, 0]
        for key, flow in list(self.flows.items()):
            silent = now_ns - flow.last_ns
            if silent > self.forget_ns:
                log.warning("flow %s (session %s) silent for %.0f s: forgotten (it resumes "
                            "where it stood if it comes back)", flow.source, flow.session,
                            silent / 1e9)
                self._forget(key, flow, now_ns)
                continue
            if silent > self.stall_ns and not flow.stalled:
                flow.stalled = True
                log.warning("flow %s (session %s) stalled: nothing for %.1f s",
                            flow.source, flow.session, silent / 1e9)
            self._interval(flow, now_ns)
            self._account(flow)
        for key, flow in list(self.closing.items()):
            if flow.fresh:
                self._interval(flow, now_ns)
                self._account(flow)
            if now_ns >= flow.until_ns:
                self._summary(flow, now_ns, "final")
                self._release(flow)
                del self.closing[key]
        keep_ns = int(defaults.FORGOTTEN_KEEP_S * 1e9)
        while self.forgotten and now_ns - next(iter(self.forgotten.values())).last_ns > keep_ns:
            self._expire(now_ns)

    def end(self, source, now_ns, outcome, silent_ns=0):
        """Close the open flows from `source` (host:port) silent for at least silent_ns that
        sent no FINAL: a last interval and their summary with `outcome` (a mesh peer that
        left discovery: `left`); returns how many. Gaps below their highest sequence are
        settled; nothing after it counts as lost."""
        ended = [(k, f) for k, f in self.flows.items()
                 if f.source == source and now_ns - f.last_ns >= silent_ns]
        for key, flow in ended:
            flow.stats.close()
            self._interval(flow, now_ns)
            self._summary(flow, now_ns, outcome)
            del self.flows[key]
            self._release(flow)
        return len(ended)

    def finish(self, now_ns):
        """At exit: a last interval and the summary of every flow."""
        for flow in self.flows.values():
            self._interval(flow, now_ns)
            self._summary(flow, now_ns, "unknown" if flow.stalled else "running")
        for flow in self.closing.values():
            if flow.fresh:
                self._interval(flow, now_ns)
            self._summary(flow, now_ns, "final")
        for flow in self.forgotten.values():
            self._summary(flow, now_ns, "unknown")
        self.flows.clear()
        self.closing.clear()
        self.forgotten.clear()
        self.memory = 0
