"""The Prometheus output's series store: the probe's records folded into label sets, and the
families of the page as plain data. No sockets, no HTTP, no prometheus_client.

Rules:
- Label sets are (source, destination, wire, source_name, destination_name), plus
  `direction` on the round-trip loss, late and duplicate counters: what stays the same when a
  sender restarts. `source` is the sender's address without its (ephemeral) port,
  `source_name` the name it gives in band (else that address), `destination` the receiver's
  bound address (the sender's target, for sender records), `destination_name` the receiving
  node's name. Counters add up the records' per-interval increments over every session of a
  label set, so they stay monotonic across sender restarts and flow expiry; the session id is
  not a label. Two unnamed senders on one host to one receiver share a label set (give them
  --name to keep them apart).
- Gauges of the latest interval: RFC 3550 jitter and the mean and p99 of |IPDV| (RFC 5481),
  one-way; the round trip's jitter (--rtt). An interval whose net value is negative (a late
  packet taking back a loss, analysis.py) holds the exposed counter where it is until the sum
  passes it.
- Histograms (one-way delay, RTT) have the fixed bounds HISTOGRAM_BOUNDS_NS (1-2-5 steps from
  1 µs to 10 s). They are filled per receive batch (np.searchsorted + np.bincount over the
  batch's delay array, no Python loop per packet) on the receiving thread, and folded into
  the label set when the flow's next interval record arrives, so `_count` follows the
  `received` counter interval by interval. `_count` counts every packet the table hands to
  on_packets (those with a receive timestamp of their own), duplicates included.
- A label set drops out --forget-timeout after its counters last moved; at most
  PROMETHEUS_MAX_SERIES label sets per table exist at once, and new flows beyond that are
  counted under source="overflow", so spoofed traffic cannot grow the exposition.
- Threads: pend() from any thread (it holds the hand-off lock); record() holds the state
  lock; whoever calls snapshot() holds the state lock.
"""

import logging
import threading
import time

import numpy as np

from packet_flow import defaults

log = logging.getLogger(__name__)

HISTOGRAM_BOUNDS_NS = np.array([m * 10**e for e in range(3, 10) for m in (1, 2, 5)] + [10**10],
                               np.int64)
NBUCKETS = len(HISTOGRAM_BOUNDS_NS) + 1         # the last one is +Inf
LABELS = ("source", "destination", "wire", "source_name", "destination_name")
OVERFLOW = "overflow"
PREFIX = "packet_flow_"

# (record field, family name, help) of the per-flow counters of each table
RX_COUNTERS = (
    ("received", "received_packets", "Test packets received (unique arrivals)."),
    ("lost", "lost_packets", "Test packets lost (sequence gaps settled)."),
    ("late", "late_packets", "Test packets that arrived out of order (RFC 4737 reordered)."),
    ("duplicates", "duplicate_packets", "Duplicated test packets."),
    ("local_drops", "local_dropped_packets",
     "Test packets dropped on the receiving host (socket buffer)."),
    ("malformed", "malformed_packets", "Malformed datagrams from the flow's source address."),
    ("loss_bursts", "loss_bursts", "Loss bursts (RFC 3357 loss periods)."),
)
TX_COUNTERS = (
    ("sent", "sent_packets", "Test packets sent."),
    ("send_errors", "send_errors", "Test packets the kernel refused to send."),
    ("skipped_slots", "skipped_slots",
     "Send slots skipped on purpose (SIGUSR1) or to catch up after a stall."),
    ("missed_slots", "missed_slots", "Send slots the timer missed."),
    ("reflected", "reflected_packets", "Reflections received (--rtt)."),
)
# round-trip counters by direction: (family, help, {direction: record field})
RTT_COUNTERS = (
    ("rtt_lost_packets", "Round-trip test packets lost, by direction (--rtt).",
     {"forward": "forward_lost", "backward": "backward_lost",
      "unattributed": "unattributed_lost"}),
    ("rtt_late_packets", "Round-trip test packets reordered, by direction (--rtt).",
     {"forward": "forward_late", "backward": "backward_late"}),
    ("rtt_duplicate_packets", "Round-trip test packets duplicated, by direction (--rtt).",
     {"forward": "forward_duplicates", "backward": "backward_duplicates"}),
)
_RTT_FIELDS = tuple(f for _, _, by in RTT_COUNTERS for f in by.values())
# gauges of the latest interval that had a value: (record field, family name, help), per table
RX_GAUGES = (
    ("jitter_us", "jitter_seconds", "RFC 3550 interarrival jitter at the end of the interval."),
    ("ipdv_mean_us", "ipdv_mean_seconds", "Mean |IPDV| (RFC 3393/5481) over the interval."),
    ("ipdv_p99_us", "ipdv_p99_seconds", "99th percentile of |IPDV| over the interval."),
)
TX_GAUGES = (
    ("rtt_jitter_us", "rtt_jitter_seconds", "RFC 3550 jitter of the round-trip time (--rtt)."),
)
# receiver-wide counters of `receiver` records, labelled by destination only
WIDE_COUNTERS = (
    ("untracked", "untracked_packets", "Packets of new flows refused beyond the flow limit."),
    ("unattributed_malformed", "unattributed_malformed_packets",
     "Malformed datagrams from addresses without a flow."),
    ("kernel_drops", "socket_dropped_packets",
     "Datagrams the receive socket dropped (buffer full)."),
    ("overwritten", "ring_overwritten_packets",
     "Records overwritten in the receive ring before analysis."),
)


def _host(address):
    """An address without its port: `host:port` -> host, `[v6]:port` -> v6."""
    if not address:
        return ""
    if address.startswith("["):
        return address[1:].split("]")[0]
    return address.rsplit(":", 1)[0]


def labels(rec):
    """A record's label values (LABELS): what stays the same across sender restarts."""
    source = _host(rec.get("source"))
    return (source, rec.get("destination") or "", rec.get("wire") or "",
            rec.get("source_name") or source, rec.get("destination_name") or "")


def bucket_counts(delay_ns):
    """Non-cumulative counts per bucket (le bounds HISTOGRAM_BOUNDS_NS, then +Inf) and the
    exact sum in ns of one batch of delays; a delay equal to a bound falls in its bucket."""
    idx = np.searchsorted(HISTOGRAM_BOUNDS_NS, delay_ns, side="left")
    return np.bincount(idx, minlength=NBUCKETS), int(delay_ns.sum())


class _Series:
    """One label set: raw sums, exposed (monotonic) values, a histogram, activity time."""

    __slots__ = ("raw", "shown", "hist", "hist_sum_ns", "stalled", "active", "gauges")

    def __init__(self, fields, now):
        self.gauges = {}
        self.raw = dict.fromkeys(fields, 0)
        self.shown = dict.fromkeys(fields, 0)
        self.hist = np.zeros(NBUCKETS, np.int64)
        self.hist_sum_ns = 0
        self.stalled = False
        self.active = now

    def add(self, rec, now):
        moved = False
        for f in self.raw:
            v = rec.get(f) or 0
            if v:
                moved = True
                self.raw[f] += v
                self.shown[f] = max(self.shown[f], self.raw[f])
        if moved:
            self.active = now
        return moved

    def gauge(self, rec, fields):
        for f, _, _ in fields:
            if rec.get(f) is not None:
                self.gauges[f] = rec[f] / 1e6

    def fold(self, pending):
        if pending is not None:
            self.hist += pending[0]
            self.hist_sum_ns += pending[1]
            self.active = time.monotonic()


class _Table:
    """Label set -> _Series, bounded: beyond `cap` label sets, new sources count as OVERFLOW."""

    def __init__(self, fields, cap):
        self.fields = fields
        self.cap = cap
        self.series = {}
        self.warned = False

    def get(self, key, rec, now, pending):
        s = self.series.get(key)
        if s is None:
            if pending is None and not any(rec.get(f) for f in self.fields):
                return None          # a flow's zero-only records never (re)create its series
            if len(self.series) >= self.cap - 1:     # the last one is the overflow
                if not self.warned:
                    self.warned = True
                    log.warning("prometheus: %d label sets: new flows are counted under "
                                "source=%r until some are forgotten", self.cap, OVERFLOW)
                key = (OVERFLOW, key[1], key[2], OVERFLOW, key[4])
                s = self.series.get(key)
            if s is None:
                s = self.series[key] = _Series(self.fields, now)
        return s

    def forget(self, now, after_s):
        for key in [k for k, s in self.series.items() if now - s.active > after_s]:
            del self.series[key]


class SeriesStore:
    """The label sets of receiver flows (`rx`), sender flows (`tx`) and receivers (`wide`),
    fed by records and per-batch delay arrays; snapshot() gives the page's families."""

    def __init__(self, forget_s):
        self.forget_s = forget_s
        cap = defaults.PROMETHEUS_MAX_SERIES
        self.rx = _Table(tuple(f for f, _, _ in RX_COUNTERS), cap)
        self.tx = _Table(tuple(f for f, _, _ in TX_COUNTERS) + _RTT_FIELDS, cap)
        self.wide = {}          # destination -> {field: total}, plus the open flows gauge
        self.state_lock = threading.Lock()      # tables: output thread vs a scrape's render
        self.pending_lock = threading.Lock()    # histograms handed over by the probe threads
        self.pending_owd = {}   # (source, destination) -> [counts, sum_ns]
        self.pending_rtt = {}

    # --- hand-offs from the probe's threads ----------------------------------------------

    def _pend(self, pending, source, destination, delay_ns):
        if not len(delay_ns):
            return
        counts, total = bucket_counts(delay_ns)
        with self.pending_lock:
            got = pending.get((source, destination))
            if got is None:
                pending[(source, destination)] = [counts, total]
            else:
                got[0] += counts
                got[1] += total

    def packets(self, source, destination, rx_ns, owd_ns):
        """One receive batch of one flow (receiver thread)."""
        self._pend(self.pending_owd, source, destination, owd_ns)

    def rtts(self, source, destination, rtt_ns):
        """One batch of round-trip times of the sender's flow (sender thread)."""
        self._pend(self.pending_rtt, source, destination, rtt_ns)

    def _fold_pending(self):
        """Fold the histograms handed over since each flow's last record into its series
        (state lock held), so a page does not depend on the order records arrive in; a flow
        without a series yet keeps them until its first record."""
        with self.pending_lock:
            for table, pending in ((self.rx, self.pending_owd), (self.tx, self.pending_rtt)):
                by_pair = {key[:2]: s for key, s in table.series.items()}
                for pair in [p for p in pending if p in by_pair]:
                    by_pair[pair].fold(pending.pop(pair))

    # --- records (output thread) -------------------------------------------------------------

    def record(self, rec):
        kind, now = rec["type"], time.monotonic()
        with self.state_lock:
            if kind == "interval":
                with self.pending_lock:
                    pending = self.pending_owd.pop((rec["source"], rec["destination"]), None)
                s = self.rx.get(labels(rec), rec, now, pending)
                if s is not None:
                    s.add(rec, now)
                    s.fold(pending)
                    s.gauge(rec, RX_GAUGES)
                    s.stalled = bool(rec.get("stalled"))
            elif kind == "sender" or (kind == "summary" and rec["role"] == "sender"):
                part = rec if kind == "sender" else {"unattributed_lost":
                                                     rec.get("unattributed_lost")}
                with self.pending_lock:
                    pending = self.pending_rtt.pop((rec["source"], rec["destination"]), None)
                s = self.tx.get(labels(rec), part, now, pending)
                if s is not None:
                    s.add(part, now)
                    s.fold(pending)
                    s.gauge(part, TX_GAUGES)
            elif kind == "receiver":
                wide = self.wide.setdefault(rec["destination"], {})
                for f, _, _ in WIDE_COUNTERS:
                    wide[f] = wide.get(f, 0) + (rec.get(f) or 0)
                for reason, n in (rec.get("malformed") or {}).items():
                    wide["malformed:" + reason] = wide.get("malformed:" + reason, 0) + n
                wide["flows"] = rec.get("flows") or 0
                if "probed_by" in rec:          # a mesh node: its pairs in and out
                    wide["node"] = (rec.get("destination_name") or "", rec["probed_by"],
                                    rec.get("peers") or 0)
            else:
                return      # a receiver flow's summary adds nothing to the interval sums

    # --- the page's families -------------------------------------------------------------

    def snapshot(self):
        """Every family as plain data (see promtext.render_page), forgetting idle label sets
        first. The caller holds the state lock."""
        p = PREFIX
        now = time.monotonic()
        self._fold_pending()
        self.rx.forget(now, self.forget_s)
        self.tx.forget(now, self.forget_s)
        rx, tx = list(self.rx.series.items()), list(self.tx.series.items())
        fams = []
        for table, fields in ((rx, RX_COUNTERS), (tx, TX_COUNTERS)):
            for field, name, text in fields:
                fams.append(("counter", p + name, text, LABELS,
                             [(key, s.shown[field]) for key, s in table]))
        rtt = [(k, s) for k, s in tx if s.shown["reflected"] or s.shown["unattributed_lost"]]
        for name, text, by in RTT_COUNTERS:
            fams.append(("counter", p + name, text, (*LABELS, "direction"),
                         [((*key, d), s.shown[f]) for key, s in rtt for d, f in by.items()]))
        fams.append(("gauge", p + "stalled", "1 while the flow is stalled (silent longer than "
                     "--stall-timeout), else 0.", LABELS,
                     [(key, int(s.stalled)) for key, s in rx]))
        for table, fields in ((rx, RX_GAUGES), (tx, TX_GAUGES)):
            for field, name, text in fields:
                fams.append(("gauge", p + name, text, LABELS,
                             [(key, s.gauges[field]) for key, s in table if field in s.gauges]))
        for name, text, table in (
                ("one_way_delay_seconds", "One-way delay of the test packets (receive minus "
                 "send time; the clocks must be synchronised).", rx),
                ("rtt_seconds", "Round-trip time, reflector dwell time taken out (--rtt).",
                 [(k, s) for k, s in tx if s.hist.any()])):
            cum = np.cumsum(np.stack([s.hist for _, s in table]), axis=1).tolist() \
                if table else []
            fams.append(("histogram", p + name, text, LABELS,
                         [(key, c, s.hist_sum_ns / 1e9)
                          for (key, s), c in zip(table, cum, strict=True)]))
        wide = list(self.wide.items())
        for field, name, text in WIDE_COUNTERS:
            fams.append(("counter", p + name, text, ("destination",),
                         [((d,), w.get(field, 0)) for d, w in wide]))
        fams.append(("counter", p + "receiver_malformed_packets", "Malformed datagrams "
                     "received, by reason.", ("destination", "reason"),
                     [((d, f[len("malformed:"):]), n) for d, w in wide for f, n in w.items()
                      if f.startswith("malformed:")]))
        fams.append(("gauge", p + "flows", "Flows open at the receiver.", ("destination",),
                     [((d,), w.get("flows", 0)) for d, w in wide]))
        nodes = [(d, w["node"]) for d, w in wide if "node" in w]
        for i, name, text in ((1, "probed_by", "Peers probing this mesh node (the source "
                               "addresses of its open flows: incoming pairs)."),
                              (2, "peers", "Peers this mesh node probes (outgoing pairs).")):
            fams.append(("gauge", p + name, text, ("destination", "destination_name"),
                         [((d, node[0]), node[i]) for d, node in nodes]))
        return fams
