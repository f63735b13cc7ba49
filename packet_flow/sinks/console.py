"""Console output: a compact live table (one line per flow per interval, never wider than
80 columns: long addresses keep their tail, large counts shrink to k/M/G) and a summary
per flow at exit.

Rules: every column has a legend (the header's, and the sender's before its first line).
Rejected datagrams (a receiver record's `rejected`) are told once per source and cause at
once, then at most once per REJECTED_REPEAT_S of record time per source and cause, with what
to check; counts not yet told are told at close."""

import sys
import textwrap
import threading
import time

from packet_flow import defaults, matrix

_TIME_UNITS = ((1e-3, "n"), (1.0, "µ"), (1e3, "m"), (1e6, "s"))      # scales of µs
_COUNT_UNITS = ((1, ""), (1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T"), (1e15, "P"))


def _scaled(x, units):
    """x in the largest unit it reaches, with 3 significant digits and no exponent: a value
    that rounds up to 1000 of a unit is written in the next one (999.7µ -> 1m, not 1e+03µ);
    the last unit takes any size (12345s)."""
    i = max((k for k, (scale, _) in enumerate(units) if abs(x) >= scale), default=0)
    while True:
        scale, unit = units[i]
        text = f"{x / scale:.3g}"
        if abs(float(text)) < 1000:
            return text + unit
        if i == len(units) - 1:
            return f"{x / scale:.0f}{unit}"
        i += 1


def _t(us):
    """A duration given in µs, in at most 6 characters: 812n, 5.2µ, 504µ, 2.5m, 21.4m, 3.2s."""
    return "-" if us is None else _scaled(us, _TIME_UNITS)


def _n(v, width=6):
    """A count in at most `width` characters (1234567 -> 1.23M)."""
    if v is None:
        return "-"
    if len(str(v)) <= width:
        return str(v)
    return _scaled(v, _COUNT_UNITS)


def _pct(v):
    """A percentage in at most 5 characters: 0.00 .. 9.99, 10.0 .. 100.0."""
    if v is None:
        return "-"
    return f"{v:.2f}" if round(v, 2) < 10 else f"{v:.1f}"


def _tail(text, width):
    text = text or "?"
    return text if len(text) <= width else "…" + text[-(width - 1):]


HEADER = (f"{'time':8} {'source':16} {'recv':>6} {'lost':>5} {'loss%':>5} {'late':>5} "
          f"{'dup':>5} {'owd50':>6} {'owd99':>6} {'jitter':>6} f")
LEGEND = " " * 9 + "(f = flags: S = stalled, F = final packet seen; n/µ/m = ns/µs/ms)"
SENDER_LEGEND = (
    "sender: per interval: packets sent, send slots missed, timer late p50/p99/max;\n"
    "        with --rtt: rtt p50/p99, and lost, late, dup on the way out (fwd) /\n"
    "        on the way back (back): late 1/0 = 1 late out, 0 late back")

# why a datagram was rejected (the receiver's malformed reasons) and what to check
REJECTED = {
    "short": ("too short for any packet-flow packet",
              "check --wire on both ends (a STAMP sender needs --wire stamp here)"),
    "magic": ("not packet-flow packets",
              "a STAMP sender needs --wire stamp here; check --wire on both ends"),
    "version": ("from another packet-flow version", "run one version on both ends"),
    "truncated": ("shorter than their header says", "check the sender's --size and the MTU"),
    "legacy": ("17-byte datagrams that are not legacy packets", "check --wire on both ends"),
    "no_tag": ("not signed, and this receiver has --key",
               "give the sender the same --key (legacy packets cannot carry one)"),
    "bad_tag": ("signed with another key", "check that --key is the same on both ends"),
    "short_probe": ("probes too short to reflect", "check the sender's --size"),
}


class ConsoleSink:
    """Writes human-readable lines to a text stream (stdout unless told otherwise)."""

    wants_packets = wants_gaps = wants_rtts = wants_idle = False
    closes_last = True          # its summary shows the other outputs' counters
    on_failure = None

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.summaries = []
        self.sender_legend = False
        self.rejected = {}      # (source, reason) -> [time told (s), count not yet told]

    def _write(self, line):
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def record(self, rec):
        kind = rec["type"]
        if kind == "summary":
            self.summaries.append(rec)
            return
        t = time.strftime("%H:%M:%S", time.gmtime(rec["time"] // 1_000_000_000))  # UTC
        if kind == "interval":
            state = "S" if rec.get("stalled") else "F" if rec.get("closed") else ""
            self._write(
                f"{t} {_tail(rec['source'], 16):16} {_n(rec['received']):>6} "
                f"{_n(rec['lost'], 5):>5} {_pct(rec['loss_percent']):>5} "
                f"{_n(rec['late'], 5):>5} {_n(rec['duplicates'], 5):>5} "
                f"{_t(rec['owd_p50_us']):>6} {_t(rec['owd_p99_us']):>6} "
                f"{_t(rec['jitter_us']):>6} {state}".rstrip())
        elif kind == "sender":
            if not self.sender_legend:
                self.sender_legend = True
                self._write(SENDER_LEGEND)
            self._write(
                f"{t} → {_tail(rec['destination'], 16):16} sent {_n(rec['sent']):>6} missed "
                f"{_n(rec['missed_slots'], 5):>5} late {_t(rec['timer_late_p50_us'])}/"
                f"{_t(rec['timer_late_p99_us'])}/{_t(rec['timer_late_max_us'])}")
            if "rtt_p50_us" in rec:
                self._write(
                    f"{'':8}   rtt {_t(rec['rtt_p50_us'])}/{_t(rec['rtt_p99_us'])} "
                    f"lost fwd {_n(rec['forward_lost'], 5)} back "
                    f"{_n(rec['backward_lost'], 5)} late {_n(rec['forward_late'], 5)}/"
                    f"{_n(rec['backward_late'], 5)} dup {_n(rec['forward_duplicates'], 5)}/"
                    f"{_n(rec['backward_duplicates'], 5)}")
        elif kind == "receiver":
            if rec.get("overwritten") or rec.get("kernel_drops"):
                self._write(f"{t} receiver: ring overwritten {rec['overwritten']}, "
                            f"kernel drops {rec['kernel_drops']}")
            self._rejected(rec.get("rejected") or (), rec["time"] / 1e9)

    def _rejected(self, items, now_s):
        """Tell rejected datagrams once per source and cause, then at most once per
        REJECTED_REPEAT_S (see the module rules)."""
        for item in items:
            key = (item["source"], item["reason"])
            seen = self.rejected.get(key)
            if seen is None:
                self.rejected[key] = [now_s, 0]
                self._tell_rejected(key, item["count"], now_s, None)
            elif now_s - seen[0] >= defaults.REJECTED_REPEAT_S:
                self._tell_rejected(key, seen[1] + item["count"], now_s, seen[0])
                seen[:] = [now_s, 0]
            else:
                seen[1] += item["count"]

    def _tell_rejected(self, key, count, now_s, since_s):
        source, reason = key
        why, check = REJECTED.get(reason, (reason, "check --wire and --key on both ends"))
        t = time.strftime("%H:%M:%S", time.gmtime(now_s))
        since = "" if since_s is None else \
            f" since {time.strftime('%H:%M:%S', time.gmtime(since_s))}"
        text = (f"{t} rejected {count} datagram{'s' if count != 1 else ''} from {source}"
                f"{since}: {why} ({reason}); {check}")
        self._write("\n".join(textwrap.wrap(text, 80, subsequent_indent=" " * 9,
                                             break_on_hyphens=False)))

    def header(self):
        self._write(HEADER + "\n" + LEGEND)

    @property
    def counters(self):
        return {}

    def close(self, timeout=0, counters=None):
        """Print the summary per flow, and the other outputs' counters (InfluxDB: points
        written, retried, spooled, dropped)."""
        for key, (told_s, count) in self.rejected.items():
            if count:
                self._tell_rejected(key, count, time.time(), told_s)
        lines = summary_table(self.summaries).split("\n") if self.summaries else []
        lines += matrix.lines(self.summaries)       # a mesh run's pair matrix
        for name, got in (counters or {}).items():
            text = ", ".join(f"{k} {v}" for k, v in got.items())
            lines += [f"{name.removesuffix('Sink').lower()} output:",
                      *textwrap.wrap(text, 78, initial_indent="  ", subsequent_indent="  ")]
        if lines:
            self._write("\n".join(lines))
        return {}


def summary_table(records):
    """The per-flow summary at exit, every line at most 80 columns."""
    lines = ["", "summary"]
    for rec in records:
        role = "sender" if rec["role"] == "sender" else "flow"
        head = f"{role} {rec['source']} → {rec['destination']}  session {rec['session']}"
        if len(head) > 80:
            lines += [f"{role} {rec['source']} →",
                      f"    {rec['destination']}  session {rec['session']}"]
        else:
            lines.append(head)
        if rec["role"] == "sender":
            lines.append(f"  sent {rec['sent']}  missed slots {rec['missed_slots']}  "
                         f"skipped slots {rec['skipped_slots']}")
            lines.append(f"  timer late p50 {_t(rec['timer_late_p50_us'])}  p99 "
                         f"{_t(rec['timer_late_p99_us'])}  max {_t(rec['timer_late_max_us'])}")
            if "rtt_p50_us" in rec:
                lines.append(f"  rtt min {_t(rec['rtt_min_us'])}  p50 {_t(rec['rtt_p50_us'])}"
                             f"  p99 {_t(rec['rtt_p99_us'])}  max {_t(rec['rtt_max_us'])}"
                             f"  jitter {_t(rec['rtt_jitter_us'])}")
                lines.append(f"  lost {rec['lost']} (forward {rec['forward_lost']}, backward "
                             f"{rec['backward_lost']})  late {rec['forward_late']}/"
                             f"{rec['backward_late']}  dup {rec['forward_duplicates']}/"
                             f"{rec['backward_duplicates']}")
                if not rec.get("reflected"):
                    lines.append("  no reply came back: the peer must run --mode reflector "
                                 "(or be a STAMP reflector with --wire stamp)")
            continue
        lines.append(f"  received {rec['received']}  lost {rec['lost']} "
                     f"({_pct(rec['loss_percent'])} %)  late {rec['late']}  dup "
                     f"{rec['duplicates']}  malformed {rec['malformed']}")
        lines.append(f"  loss bursts {rec['loss_bursts']} (longest {rec['max_loss_burst']})"
                     f"  jitter {_t(rec['jitter_us'])}  |ipdv| mean "
                     f"{_t(rec['ipdv_mean_us'])} p99 {_t(rec['ipdv_p99_us'])}")
        lines.append(f"  owd min {_t(rec['owd_min_us'])}  p50 {_t(rec['owd_p50_us'])}  p90 "
                     f"{_t(rec['owd_p90_us'])}  p99 {_t(rec['owd_p99_us'])}  p99.9 "
                     f"{_t(rec['owd_p999_us'])}  max {_t(rec['owd_max_us'])}")
        if rec.get("negative_owd"):
            lines.append(f"  {rec['negative_owd']} negative delays: clocks not synchronised")
        if rec.get("local_drops"):
            exact = "" if rec.get("local_drops_exact") else "; may hold path loss"
            lines.append(f"  local drops {rec['local_drops']} (socket buffer full, not in lost"
                         f"{exact})")
        if rec.get("coalesced"):
            lines.append(f"  {rec['coalesced']} packets shared a GRO timestamp: not in the delays")
    return "\n".join(lines)
