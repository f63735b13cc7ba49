"""Console output: a compact live table (one line per flow per interval, never wider than
80 columns: long addresses keep their tail, large counts shrink to k/M/G) and a summary
per flow at exit.

Rules: every column has a legend (the header's, and the sender's before its first line).
Rejected datagrams (a receiver record's `rejected`) are told as rejected.py says, with the
record's time, wrapped to 80 columns."""

import sys
import textwrap
import threading
import time

from packet_flow import matrix
from packet_flow.sinks.rejected import RejectedTeller

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
        self.rejected = RejectedTeller(self._tell_rejected)

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
            self.rejected.add(rec.get("rejected") or (), rec["time"] / 1e9)

    def _tell_rejected(self, now_s, text):
        t = time.strftime("%H:%M:%S", time.gmtime(now_s))
        self._write("\n".join(textwrap.wrap(f"{t} {text}", 80, subsequent_indent=" " * 9,
                                             break_on_hyphens=False)))

    def header(self):
        self._write(HEADER + "\n" + LEGEND)

    @property
    def counters(self):
        return {}

    def close(self, timeout=0, counters=None):
        """Print the summary per flow, and the other outputs' counters (InfluxDB: points
        written, retried, spooled, dropped)."""
        self.rejected.close()
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
