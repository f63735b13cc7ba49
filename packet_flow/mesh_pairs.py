"""A mesh node's pairs (this node -> one peer) and their sender records (mesh.py drives them).

Rules: a pair's counters are the MeshSender's cumulative per-slot ones; an interval record
holds their increments since the pair's previous record, the timer lateness of its sampled
slots (sender_records.Lateness, prepared for all pairs at once) and, with --rtt, its round
trips; the summary holds the pair's life. Records name both ends: `source_name` is this
node, `destination_name` the name the peer gave in band, else discovery's name for it (a
PTR record), else its address.
"""

import secrets

import numpy as np

from packet_flow import _io, rtt
from packet_flow.sender_records import Lateness


class Pair:
    """This node's flow to one peer: slot in the MeshSender, session, records' state."""

    __slots__ = ("peer", "slot", "session", "offset", "start_ns", "tick_ns", "last", "late",
                 "rtt")

    def __init__(self, peer, slot, offset, now_ns, with_rtt):
        self.peer, self.slot, self.offset = peer, slot, offset
        self.session = secrets.randbits(64)
        self.start_ns = self.tick_ns = now_ns
        self.last = (0, 0, 0, 0)
        self.late = Lateness()
        self.rtt = rtt.RttStats() if with_rtt else None


class PairRecords:
    """Builds and emits the pairs' sender records from the MeshSender `tx`."""

    def __init__(self, tx, local, name, names, source, emit):
        self.tx, self.local, self.name, self.names = tx, local, name, names
        self.source, self.emit = source, emit

    def lateness(self, parts, pairs):
        """The core's lateness samples [(lateness ns, slot), ...] to their pairs."""
        if not parts:
            return
        lat = np.concatenate([p[0] for p in parts])
        slot = np.concatenate([p[1] for p in parts])
        if not len(slot):           # np.split of nothing is one empty part, not none
            return
        by_slot = {p.slot: p for p in pairs}
        order = np.argsort(slot, kind="stable")
        slots, starts = np.unique(slot[order], return_index=True)
        for s, part in zip(slots.tolist(), np.split(lat[order], starts[1:]), strict=True):
            pair = by_slot.get(s)
            if pair is not None:
                pair.late.add(part)

    def _record(self, pair, kind, now_ns, since_ns):
        peer = pair.peer
        return {"type": kind, "role": "sender", "time": _io.wall_of(now_ns),
                "source": self.local, "destination": str(peer.addr),
                "source_name": self.name,
                "destination_name": self.names.by_source.get(str(peer.addr))
                or self.source.name_of(peer),
                "session": f"{pair.session:016x}", "wire": "native", "mesh": True,
                "interval_s": round((now_ns - since_ns) / 1e9, 6)}

    def _counts(self, pair):
        s = pair.slot
        return (int(self.tx.sent[s]), int(self.tx.missed[s]), int(self.tx.skipped[s]),
                int(self.tx.errors[s]))

    def interval(self, pair, now_ns):
        """Emit the pair's `sender` interval record (its counts since the last one)."""
        now = self._counts(pair)
        rec = self._record(pair, "sender", now_ns, pair.tick_ns)
        rec.update(sent=now[0] - pair.last[0], missed_slots=now[1] - pair.last[1],
                   skipped_slots=now[2] - pair.last[2], send_errors=now[3] - pair.last[3],
                   **pair.late.interval())
        if pair.rtt is not None:
            rec.update(pair.rtt.take_interval())
        pair.last, pair.tick_ns = now, now_ns
        self.emit(rec)

    def summary(self, pair, now_ns, outcome):
        """Emit the pair's `summary` (its life; outcome: `final` or `left`)."""
        sent, missed, skipped, errors = self._counts(pair)
        rec = self._record(pair, "summary", now_ns, pair.start_ns)
        rec.update(sent=sent, missed_slots=missed, skipped_slots=skipped, send_errors=errors,
                   outcome=outcome, **pair.late.summary())
        if pair.rtt is not None:
            pair.rtt.close()
            # a peer that left owes no replies: what went after its last one is not loss
            sent = None if outcome == "left" else int(self.tx.seq[pair.slot])
            rec.update(pair.rtt.summary(sent))
        self.emit(rec)


class Replies:
    """With --rtt: the replies to this node's probes, by session, to their pairs' RttStats
    (and on_rtt(local, peer, rtt ns) per reply); a reply of no pair is `stray`."""

    def __init__(self, local, on_rtt):
        self.local, self.on_rtt = local, on_rtt
        self.sessions, self.pairs = np.zeros(0, np.uint64), []
        self.stray = 0

    def index(self, pairs):
        self.pairs = sorted(pairs, key=lambda p: p.session)
        self.sessions = np.array([p.session for p in self.pairs], np.uint64)

    def route(self, recs):
        sessions, pairs = self.sessions, self.pairs
        if not len(sessions):
            self.stray += len(recs)
            return
        idx = np.minimum(np.searchsorted(sessions, recs["session"]), len(sessions) - 1)
        ours = sessions[idx] == recs["session"]
        self.stray += int((~ours).sum())
        recs, idx = recs[ours], idx[ours]
        for i in np.unique(idx).tolist():
            part = recs[idx == i]
            pair = pairs[i]
            pair.rtt.update(part["seq"], part["r_seq"], part["tx_ns"], part["t2_ns"],
                            part["t3_ns"], part["rx_ns"], part["drops"])
            if self.on_rtt is not None:
                self.on_rtt(self.local, str(pair.peer.addr), part["rx_ns"] - part["tx_ns"]
                            - (part["t3_ns"] - part["t2_ns"]))
