"""The book of a receiver's flows over time: which are open, closing or forgotten, their memory
budget, and the records they turn into (flows.py's FlowTable feeds batches into it).

Rules (the whole story is in flows.py's module rules):
- A Flow holds live statistics (``stats``, a FlowStats) while it is open or closing, and only
  its compact record (``frozen``, an analysis Frozen) once forgotten; never both.
- Memory: each open or closing flow counts FLOW_BYTES plus its FlowStats.nbytes, a forgotten
  record FORGOTTEN_BYTES. Making room forgets the oldest idle flow first (``evicted``), then
  lets the oldest forgotten records go with their summaries.
- Every record is built here: ``interval`` (the counts since the flow's previous one) and
  ``summary`` (its life, with an ``outcome``).
"""

import logging
from collections import OrderedDict

import numpy as np

from packet_flow import _io, defaults, records, results
from packet_flow.addresses import address
from packet_flow.analysis import FlowStats
from packet_flow.seqspace import counter_delta

log = logging.getLogger(__name__)

_TX_NONE = np.iinfo(np.int64).min


class Flow:
    """One sender run as the receiver sees it."""

    __slots__ = ("key", "kind", "source", "peer", "session", "wire", "stats", "frozen",
                 "last_ns", "first_ns", "tick_ns", "stalled", "closed", "malformed",
                 "malformed_total", "tx_max", "final_tx", "until_ns", "after_final",
                 "after_final_total", "fresh", "nbytes", "drops")

    def __init__(self, key, rec, now_ns, window):
        """The flow whose first ring record is `rec`."""
        self.key = key
        self.kind = kind = int(rec["kind"])
        port = int(rec["port"])
        self.peer = (bytes(rec["addr"]), port)
        self.source = address(rec["addr"], port, int(rec["family"]))
        self.session = "legacy" if kind == _io.K_LEGACY else f"{int(rec['session']):016x}"
        self.wire = _io.KINDS[kind]
        stamp = kind in (_io.K_STAMP, _io.K_STAMP_REFLECTED)
        self.stats = FlowStats(seq_bits=32 if stamp else 64, window=window)
        self.frozen = None
        self.first_ns = self.last_ns = self.tick_ns = now_ns
        self.stalled = self.closed = self.fresh = False
        self.malformed = self.malformed_total = 0
        self.after_final = self.after_final_total = 0
        self.tx_max = self.final_tx = _TX_NONE
        self.until_ns = 0
        self.nbytes = 0     # what the table's memory account holds for this flow
        self.drops = None   # the socket's drop count when the flow's last packet was queued

    @property
    def native(self):
        """Native flows have a session id; legacy and STAMP ones only an address and port."""
        return self.kind == _io.K_NATIVE

    def freeze(self):
        self.frozen, self.stats = self.stats.freeze(), None

    def resume(self, window):
        self.stats, self.frozen = FlowStats.resume(self.frozen, window), None

    def grace_ns(self):
        """How long a closed flow takes stragglers: its reorder horizon in time (the horizon
        in sequences times the mean packet spacing), at least CLOSED_GRACE_S."""
        st = self.stats
        n = st.summary()["received"] if st.horizon else 0
        spacing = (self.last_ns - self.first_ns) / n if n else 0
        return max(int(defaults.CLOSED_GRACE_S * 1e9), int(st.horizon * spacing))

    def host_drops(self, drops):
        """Drops of the socket between each packet and the flow's previous one."""
        host = counter_delta(drops, self.drops)
        self.drops = int(drops[-1])
        return host

    def rebind(self, part):
        """A native flow whose newest packet comes from a new address or port (a NAT gave
        the sender a new mapping): the flow goes on, its records show the new source."""
        peer = (bytes(part["addr"][-1]), int(part["port"][-1]))
        if peer == self.peer or self.stats.position(part["seq"][-1:])[0] <= 0:
            return
        old, self.peer = self.source, peer
        self.source = address(peer[0], peer[1], int(part["family"][-1]))
        if self.source != old:
            log.info("flow session %s moved from %s to %s", self.session, old, self.source)


class FlowBook:
    """Open, closing and forgotten flows, their memory account and their records."""

    def __init__(self, destination, emit, stall_s, forget_s, window, budget, wall):
        self.destination = destination
        # every `now_ns` the table is given is a CLOCK_MONOTONIC time (durations, stalls);
        # wall(now_ns) is the wall-clock time records carry (default: the same number)
        self.wall = wall or (lambda ns: ns)
        self.emit = emit
        self.stall_ns = int(stall_s * 1e9)
        self.forget_ns = int(forget_s * 1e9)
        self.window = window
        self.flows = {}             # open flows by key, least recently active first
        self.closing = {}           # flows closed by FINAL, taking stragglers until until_ns
        self.forgotten = OrderedDict()  # silent flows shrunk to a Frozen record, oldest first
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
        rec.update(flow.stats.summary() if flow.frozen is None else flow.frozen.summary())
        rec.update(malformed=flow.malformed_total, after_final=flow.after_final_total,
                   stalled=flow.stalled, silent_s=round((now_ns - flow.last_ns) / 1e9, 3),
                   closed=flow.closed, outcome=outcome)
        self.emit(rec)

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

    def _fits(self, extra, new):
        count = len(self.flows) + len(self.closing)
        return self.memory + extra <= self.budget and not (new and count >= defaults.MAX_FLOWS)

    def _expire(self, now_ns):
        """The oldest forgotten record goes, with its summary."""
        _, flow = self.forgotten.popitem(last=False)
        self.memory -= defaults.FORGOTTEN_BYTES
        self._summary(flow, now_ns, "unknown")

    def _forget(self, key, flow, now_ns):
        """Shrink a silent flow to its compact record (a last interval first); at most
        FORGOTTEN_MAX records: the oldest goes, with its summary."""
        flow.stats.close()
        self._interval(flow, now_ns)
        del self.flows[key]
        self._release(flow)
        flow.freeze()
        flow.peer = None            # the returning packet sets it (and the source if it moved)
        self.forgotten[key] = flow
        self.memory += defaults.FORGOTTEN_BYTES
        if len(self.forgotten) > defaults.FORGOTTEN_MAX:
            self._expire(now_ns)

    def tick(self, now_ns):
        """Emit one interval record per flow; mark stalls; forget flows silent too long;
        summaries of closed flows past their grace time and of forgotten flows that expired."""
        untracked, evicted = self._pressure
        if untracked or evicted:
            log.warning("flow memory budget (%d MiB, %d flows at most) full: %d idle flows "
                        "evicted, %d packets of new flows untracked since the last interval",
                        self.budget >> 20, defaults.MAX_FLOWS, evicted, untracked)
            self._pressure = [0, 0]
        results.prepare([*(f.stats.tallies for f in self.flows.values()),
                         *(f.stats.tallies for f in self.closing.values() if f.fresh)])
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
