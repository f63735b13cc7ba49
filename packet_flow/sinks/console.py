"""Console output: a compact live table (one line per flow per interval, at most 80
columns) and a summary table per flow at exit."""

import sys
import threading


def _f(v, scale=1.0, digits=3):
    return "-" if v is None else f"{v / scale:.{digits}f}"


def _t(us):
    """A duration given in µs, in at most 6 characters: 812n, 5.2µ, 504µ, 2.50m, 21.4m, 3.2s."""
    if us is None:
        return "-"
    for unit, scale in (("s", 1e6), ("m", 1e3), ("µ", 1.0)):
        v = us / scale
        if abs(v) >= 1 or unit == "µ":
            break
    if unit == "µ" and abs(v) < 1:
        return f"{v * 1e3:.0f}n"
    return f"{v:.3g}{unit}"


def _flow(rec, width=17):
    src = rec.get("source") or "?"
    return src if len(src) <= width else "…" + src[-(width - 1):]


HEADER = (f"{'time':8} {'source':17}{'recv':>7}{'lost':>6}{'loss%':>6}{'late':>5}{'dup':>5}"
          f"{'owd p50':>8}{'owd p99':>8}{'jitter':>7} ")
class ConsoleSink:
    """Writes human-readable lines to a text stream (stdout unless told otherwise)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.summaries = []

    def _write(self, line):
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def record(self, rec):
        kind = rec["type"]
        if kind == "summary":
            self.summaries.append(rec)
            return
        t = rec["time"][11:19]
        if kind == "interval":
            state = "S" if rec.get("stalled") else "F" if rec.get("closed") else " "
            self._write(
                f"{t} {_flow(rec):17}{rec['received']:>7}{rec['lost']:>6}"
                f"{_f(rec['loss_percent'], 1, 2):>6}{rec['late']:>5}{rec['duplicates']:>5}"
                f"{_t(rec['owd_p50_us']):>8}{_t(rec['owd_p99_us']):>8}"
                f"{_t(rec['jitter_us']):>7}{state}")
        elif kind == "sender":
            dest = rec.get("destination") or "?"
            self._write(
                f"{t} → {dest[-17:]:17} sent{rec['sent']:>7} missed{rec['missed_slots']:>5}"
                f" late {_t(rec['timer_late_p50_us'])}/{_t(rec['timer_late_p99_us'])}"
                f"/{_t(rec['timer_late_max_us'])}")
        elif kind == "receiver" and (rec.get("overwritten") or rec.get("kernel_drops")):
            self._write(f"{t} receiver: ring overwritten {rec['overwritten']}, "
                        f"kernel drops {rec['kernel_drops']}")

    def header(self):
        self._write(HEADER + "\n" + " " * 9 + "(S = stalled, F = final packet seen; "
                    "timer late = p50/p99/max)")

    def packets(self, *args):
        pass

    def close(self, timeout=0):
        if self.summaries:
            self._write(summary_table(self.summaries))
        return {}


def summary_table(records):
    """The per-flow summary at exit, readable at 80 columns."""
    lines = ["", "summary"]
    for rec in records:
        head = f"{rec['source']} → {rec['destination']}  session {rec['session']}"
        lines.append(head[:80])
        if rec["role"] == "sender":
            lines.append(
                f"  sent {rec['sent']}  missed slots {rec['missed_slots']}  skipped "
                f"{rec['skipped_slots']}  timer late p50 {_t(rec['timer_late_p50_us'])} "
                f"p99 {_t(rec['timer_late_p99_us'])} max {_t(rec['timer_late_max_us'])}")
            continue
        lines.append(
            f"  received {rec['received']}  lost {rec['lost']} ({_f(rec['loss_percent'], 1, 3)}%)"
            f"  late {rec['late']}  dup {rec['duplicates']}  malformed {rec['malformed']}")
        lines.append(
            f"  loss bursts {rec['loss_bursts']} (longest {rec['max_loss_burst']})"
            f"  jitter {_f(rec['jitter_us'], 1e3)} ms  |ipdv| mean "
            f"{_f(rec['ipdv_mean_us'], 1e3)} p99 {_f(rec['ipdv_p99_us'], 1e3)} ms")
        lines.append(
            f"  owd ms min {_f(rec['owd_min_us'], 1e3)} p50 {_f(rec['owd_p50_us'], 1e3)}"
            f" p90 {_f(rec['owd_p90_us'], 1e3)} p99 {_f(rec['owd_p99_us'], 1e3)}"
            f" max {_f(rec['owd_max_us'], 1e3)}")
        if rec.get("negative_owd"):
            lines.append(f"  {rec['negative_owd']} negative delays: clocks not synchronised")
    return "\n".join(line[:80] for line in lines)
