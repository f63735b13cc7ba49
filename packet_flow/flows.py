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
  flow shrinks to a compact record (results.Frozen: where its sequence stood and its totals)
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
All per-packet work is per batch with numpy. The parts of a batch that simply continue (or
start) their native flow are measured together for all flows (inorder.py: the fast lane);
the others take the general path, where the Python loop runs once per flow and batch.
"""

import logging
from collections import Counter

import numpy as np

from packet_flow import _io, defaults
from packet_flow.addresses import address
from packet_flow.flowbook import Flow, FlowBook
from packet_flow.inorder import Lanes
from packet_flow.lossruns import local_part
from packet_flow.seqspace import highest_before

log = logging.getLogger(__name__)


class FlowTable(FlowBook):
    """Feeds drained ring records to per-flow FlowStats (the FlowBook keeps the flows and
    turns them into records).

    emit(record) receives every record. For the original's per-packet InfluxDB points,
    on_packets(source, destination, rx_ns, owd_ns) receives each flow's packets per batch and
    on_gaps(source, destination, rx_ns, lost) each sequence gap as it opens (the original's
    `packet_loss` semantics: a gap counted when the packet after it arrives)."""

    def __init__(self, destination, emit, stall_s, forget_s, window, on_packets=None,
                 on_gaps=None, budget=defaults.MAX_FLOW_MEMORY_MIB << 20, wall=None):
        super().__init__(destination, emit, stall_s, forget_s, window, budget, wall)
        self.on_packets = on_packets
        self.on_gaps = on_gaps
        self.on_final = None        # on_final(flow, rec): a native flow closed by its FINAL rec
        self.unattributed = 0
        self.rejected = Counter()   # malformed datagrams by (source, reason) since take_rejected
        self.gro = False            # the socket coalesces (UDP GRO): a drop may be many datagrams

    def ingest(self, recs, now_ns):
        """Account one drained batch of ring records (arrival order)."""
        bad = recs["kind"] == _io.K_MALFORMED
        if bad.any():
            self._malformed(recs[bad])
            recs = recs[~bad]
        if not len(recs):
            return
        fcol = recs["flow"]
        if fcol[0] == fcol[-1] and not (fcol != fcol[0]).any():
            srt, fids, starts = recs, [int(fcol[0])], np.zeros(1, np.intp)  # one flow
        else:
            srt = recs[np.argsort(fcol, kind="stable")]
            fids, starts = np.unique(srt["flow"], return_index=True)
            fids = fids.tolist()
        lanes = Lanes(srt, starts)
        for i in self._fast(srt, lanes, now_ns):
            part = srt[lanes.starts[i] : lanes.ends[i]]
            native = int(part["kind"][0]) == _io.K_NATIVE
            self._feed(int(part["session"][0]) if native else fids[i], part, now_ns)
        if self.memory > self.budget:
            self._room(now_ns, new=False)

    def _fast(self, srt, lanes, now_ns):
        """The parts that continue their native flow (or start one) take the fast lane
        (inorder.py); returns the indexes of the others, for the general path."""
        if not lanes.ok.any():
            return range(len(lanes.starts))
        lanes.measure(srt)
        if not lanes.safe:
            return range(len(lanes.starts))
        starts, ends = lanes.starts, lanes.ends
        keys = srt["session"][starts].tolist()
        native = (srt["kind"][starts] == _io.K_NATIVE).tolist()
        sessions = [k for k, n in zip(keys, native, strict=True) if n]
        twice = {k for k, c in Counter(sessions).items() if c > 1}  # one from two sources
        seq0, drops0 = srt["seq"][starts].tolist(), lanes.drops.tolist()
        last = srt[ends - 1]
        addrs, ports = last["addr"].tobytes(), last["port"].tolist()
        growable, on_packets = self.memory < self.budget, self.on_packets
        slow = []
        for i, ok in enumerate(lanes.ok.tolist()):
            key = keys[i]
            if not ok or key in self.closing or key in twice:
                slow.append(i)
                continue
            flow = self.flows.pop(key, None) or self._open(key, srt[starts[i]], now_ns)
            if flow is None:            # it does not fit: untracked (the general path)
                slow.append(i)
                continue
            self.flows[key] = flow      # to the end: the most recently active
            flow.stats.growable = growable
            if flow.drops is None:      # a new flow: its first packet starts the count
                flow.drops = drops0[i]
            n = int(ends[i] - starts[i])
            if flow.drops != drops0[i] or not flow.stats.continues(seq0[i], n):
                slow.append(i)
                continue
            if (addrs[16 * i : 16 * i + 16], ports[i]) != flow.peer:
                flow.rebind(srt[starts[i] : ends[i]])
            fig = lanes.part(i)
            flow.stats.extend(seq0[i], *fig)
            self._heard(flow, now_ns)
            if on_packets is not None:
                on_packets(flow.source, self.destination, srt["rx_ns"][starts[i] : ends[i]],
                           fig[0])
        return slow

    def _feed(self, key, part, now_ns):
        """One flow key's packets of this batch, in arrival order. A FINAL closes the run;
        what follows it goes round again (stragglers, a new run, or after_final)."""
        while len(part):
            flow, part = self._flow_for(key, part, now_ns)
            if flow is None:
                return
            final = np.flatnonzero(part["flags"] & _io.FLAG_FINAL)
            if not len(final):
                self._absorb(flow, part, now_ns)
                return
            f = int(final[0])
            self._close(key, flow, part[: f + 1], now_ns)
            part = part[f + 1 :]

    def _flow_for(self, key, part, now_ns):
        """The open flow these packets belong to and the packets left for it: stragglers of a
        closed run go to it, a legacy or STAMP restart ends the old run. (None, ...) when
        nothing is left or the new flow does not fit (its packets are `untracked`)."""
        closing = self.closing.get(key)
        if closing is not None:
            part = self._straggle(closing, part, now_ns)
            if not len(part):
                return None, part
        flow = self.flows.pop(key, None) or self._open(key, part[0], now_ns)
        while flow is not None and not flow.native:
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
            return None, part
        self.flows[key] = flow          # to the end: the most recently active
        return flow, part

    def _close(self, key, flow, part, now_ns):
        """The flow's packets up to and with its FINAL (the last of `part`)."""
        f = len(part) - 1
        # a native FINAL is a probe; a legacy FINAL only says goodbye (it carries the next seq)
        probes = part if flow.native else part[:f]
        if len(probes):
            self._absorb(flow, probes, now_ns)
        flow.last_ns = now_ns
        flow.closed = True
        flow.final_tx = int(part["tx_ns"][f])
        flow.stats.close(None if flow.native else int(part["seq"][f]))
        if self.on_final is not None and flow.native:
            self.on_final(flow, part[f])
        self._interval(flow, now_ns)
        del self.flows[key]
        flow.until_ns = now_ns + flow.grace_ns()
        older = self.closing.pop(key, None)     # a previous run of this source, in its grace
        if older is not None:
            self._summary(older, now_ns, "final")
            self._release(older)
        self.closing[key] = flow

    def _straggle(self, flow, part, now_ns):
        """Packets of a closed flow: those sent before its FINAL and not above it are late
        packets of the flow; of the rest, a legacy or STAMP sender's packets sent after the
        FINAL are returned (a new run); anything else is counted as `after_final`."""
        before = part["tx_ns"] <= flow.final_tx
        late = before & (flow.stats.position(part["seq"]) <= 0)
        if late.any():
            self._absorb(flow, part[late] if not late.all() else part, now_ns)
        rest = part[~late]
        new_run = rest[rest["tx_ns"] > flow.final_tx] if not flow.native else rest[:0]
        odd = len(rest) - len(new_run)
        if odd:
            if not flow.after_final_total:
                log.warning("flow %s (session %s): %d packets after its final packet",
                            flow.source, flow.session, odd)
            flow.after_final += odd
            flow.after_final_total += odd
            flow.fresh = True
        return new_run

    def _absorb(self, flow, part, now_ns):
        """Feed packets to the flow's statistics (and the per-packet compat outputs)."""
        if flow.native:
            flow.rebind(part)
        else:
            flow.tx_max = max(flow.tx_max, int(part["tx_ns"].max()))
        host = flow.host_drops(part["drops"])
        if self.on_gaps is not None:
            self._gaps(flow, part, host)
        flow.stats.growable = self.memory < self.budget
        timed = part["coalesced"] == 0
        flow.stats.update(part["seq"], part["tx_ns"], part["rx_ns"], timed=timed,
                          host_drops=host, buffers=self.gro, shared=len(self.flows) > 1)
        self._heard(flow, now_ns)
        if self.on_packets is not None:
            own = part[timed]
            self.on_packets(flow.source, self.destination, own["rx_ns"],
                            own["rx_ns"] - own["tx_ns"])

    def _heard(self, flow, now_ns):
        """A flow took packets (either path): its memory, its activity, a stall ended."""
        self._account(flow)
        flow.last_ns = now_ns
        flow.fresh = True
        if flow.stalled:
            log.info("flow %s (session %s) resumed", flow.source, flow.session)
            flow.stalled = False

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
            flow.resume(self.window)
            self._account(flow)
            log.warning("flow %s (session %s) is back after %.1f s of silence", flow.source,
                        flow.session, (now_ns - flow.last_ns) / 1e9)
            return flow
        if not self._room(now_ns):
            return None
        flow = Flow(key, rec, now_ns, self.window)
        self._account(flow)
        log.info("new flow from %s, session %s (%s)", flow.source, flow.session, flow.wire)
        return flow

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
