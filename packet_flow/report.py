"""`packet-flow report`: a text summary or a PNG figure from a JSON-lines run file.

Rules:
- The input is the record stream of README.md (JSON-lines records). Records group into flows keyed by
  (source, destination, session). `sender` records join the receiver flow with the same session
  (the same source and destination for `legacy` or empty sessions); otherwise they form a flow of
  their own. `receiver` records and unknown types or fields are ignored (newer writers).
- Totals come from the `summary` records. A flow without one (the run was killed) is summed from
  its intervals and marked `*`; its p50/p99 are then approximate, marked `~`: p50 is the
  received-weighted median of the interval p50s, p99 the largest interval p99 (an upper bound).
- A native flow is its session from one host: its records join even when its source port
  changed (NAT rebinding), and the flow shows its latest source. A receiver `summary` ends its flow: later
  records with the same source and session (a legacy sender that restarted) are a new flow.
- Input errors raise ReportError naming the file and line: an unreadable, empty or non-UTF-8 file,
  a line that is not a JSON object with a string `type`, a record without a valid RFC 3339 `time`,
  no interval/sender/summary record. One exception: an unterminated LAST line that does not parse
  (the writer was killed mid-line) is dropped with a logged warning, unless `--strict`.
- `null` and missing numbers are NaN in the figure (gaps in the lines) and `-` in the text.
- matplotlib is optional and imported only to draw; the figure is a bare Figure on the Agg
  canvas, never pyplot, so no global backend state is touched.
- The text summary fits 80 columns: flows are listed once by number, then one table row each.
"""

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from . import defaults
from .errors import ReportError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "packet-flow report: drawing a figure needs matplotlib; "
    "install it with: pip install 'packet-flow[plot]'"
)
KNOWN_TYPES = ("interval", "sender", "summary")
_UNSET_SESSIONS = ("", None, "legacy")


# ---------------------------------------------------------------- reading


def load_records(path: str, strict: bool = False) -> list[dict]:
    """Read a JSON-lines run file (`-` = stdin) and return its records in file order.

    Raises ReportError for an unusable file (see the module rules). With `strict`, an
    unterminated, unparsable last line is an error too instead of a warning.
    """
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            return _parse_lines(sys.stdin, name, strict)
        with open(path, encoding="utf-8") as f:
            return _parse_lines(f, name, strict)
    except OSError as e:
        raise ReportError(f"cannot read {name}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ReportError(f"{name}: not a text file ({e.reason} at byte {e.start})") from e


def _parse_lines(lines, name: str, strict: bool) -> list[dict]:
    records: list[dict] = []
    dropped = False
    lineno = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if not line.endswith("\n") and not strict:
                # Only the last line can lack its newline: the writer stopped mid-record.
                log.warning("%s:%d: dropped a truncated last line (%d bytes)",
                            name, lineno, len(line))
                dropped = True
                continue
            raise ReportError(
                f"{name}:{lineno}: not JSON ({e.msg} at column {e.colno}); "
                "the file is truncated or garbled"
            ) from e
        if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
            raise ReportError(f"{name}:{lineno}: not a packet-flow record (no string 'type')")
        if rec["type"] in KNOWN_TYPES:
            _parse_time(rec, f"{name}:{lineno}")
        records.append(rec)
    if lineno == 0:
        raise ReportError(f"{name}: empty file, no records")
    if not any(r["type"] in KNOWN_TYPES for r in records):
        why = " (its only record is truncated)" if dropped else ""
        raise ReportError(f"{name}: no interval, sender or summary records{why}")
    return records


def _parse_time(rec: dict, where: str) -> float:
    """The record's `time` as UNIX seconds; ReportError if absent or not RFC 3339."""
    t = rec.get("time")
    try:
        dt = datetime.fromisoformat(t)
    except (TypeError, ValueError) as e:
        raise ReportError(f"{where}: bad or missing 'time' {t!r}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _num(rec: dict, key: str) -> float:
    """A numeric field as float; NaN for null or missing; ReportError for anything else."""
    v = rec.get(key)
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ReportError(f"record at {rec.get('time')}: field {key!r} is not a number: {v!r}")
    return float(v)


# ---------------------------------------------------------------- grouping


@dataclass
class Flow:
    """All records of one flow: receiver intervals, sender intervals and their summaries."""

    source: str
    destination: str
    session: str
    intervals: list[dict] = field(default_factory=list)
    senders: list[dict] = field(default_factory=list)
    summary: dict | None = None
    sender_summary: dict | None = None

    @property
    def label(self) -> str:
        """`source -> destination`."""
        return f"{self.source} -> {self.destination}"

    def column(self, key: str, sender: bool = False) -> np.ndarray:
        """One field over the flow's interval (or sender) records, NaN where null."""
        recs = self.senders if sender else self.intervals
        return np.array([_num(r, key) for r in recs], dtype=float)

    def times(self, sender: bool = False) -> np.ndarray:
        """Middle of each interval (or sender) record's interval, UNIX seconds."""
        recs = self.senders if sender else self.intervals
        end = np.array([_parse_time(r, "record") for r in recs], dtype=float)
        width = np.nan_to_num(self.column("interval_s", sender), nan=0.0)
        return end - width / 2


def _is_sender(rec: dict) -> bool:
    if rec["type"] == "sender":
        return True
    return rec["type"] == "summary" and (rec.get("role") == "sender" or
                                         ("role" not in rec and "sent" in rec))


def group_flows(records: list[dict]) -> list[Flow]:
    """Group records into flows, receiver flows first in order of appearance (module rules)."""
    flows: list[Flow] = []
    current: dict[tuple, Flow] = {}     # receiver flows still open in the file, by key
    last: dict[tuple, Flow] = {}        # the latest flow of each key (for sender records)
    by_session: dict[str, Flow] = {}
    sender_recs = []
    for rec in records:
        if rec.get("type") not in KNOWN_TYPES:
            continue
        if _is_sender(rec):
            sender_recs.append(rec)
            continue
        key = _key(rec)
        flow = current.get(key)
        if flow is None:
            flow = current[key] = last[key] = _new_flow(flows, rec)
        elif rec.get("source") is not None:
            flow.source = str(rec["source"])    # a native flow moved (NAT): its newest source
        if rec.get("session") not in _UNSET_SESSIONS:
            by_session.setdefault(rec["session"], flow)
        if rec["type"] == "summary":
            flow.summary = rec
            del current[key]                    # the flow ended: a restart is a new flow
        else:
            flow.intervals.append(rec)
    for rec in sender_recs:
        key = _key(rec)
        flow = by_session.get(rec.get("session")) or last.get(key)
        if flow is None:
            flow = last[key] = _new_flow(flows, rec)
        if rec["type"] == "summary":
            flow.sender_summary = rec
        else:
            flow.senders.append(rec)
    return flows


def _key(rec: dict) -> tuple:
    """A native flow is its session from one host (its port may change); others are keyed
    by source, destination and session."""
    session = str(rec.get("session", ""))
    dest, source = str(rec.get("destination", "?")), str(rec.get("source", "?"))
    if rec.get("wire", "native") == "native" and rec.get("session") not in _UNSET_SESSIONS:
        return (source.rpartition(":")[0], dest, session)
    return (source, dest, session)


def _new_flow(flows: list[Flow], rec: dict) -> Flow:
    flow = Flow(str(rec.get("source", "?")), str(rec.get("destination", "?")),
                str(rec.get("session", "")))
    flows.append(flow)
    return flow


def _run_span(flows: list[Flow]) -> tuple[float, float]:
    """(start, end) of the run in UNIX seconds, from interval starts and ends."""
    starts, ends = [], []
    for f in flows:
        for recs in (f.intervals, f.senders, [s for s in (f.summary, f.sender_summary) if s]):
            for r in recs:
                end = _parse_time(r, "record")
                width = _num(r, "interval_s")
                starts.append(end - (0.0 if math.isnan(width) else width))
                ends.append(end)
    return min(starts), max(ends)


# ---------------------------------------------------------------- totals


def receiver_totals(flow: Flow) -> dict | None:
    """The flow's receiver totals: its summary record, else summed from intervals (`estimated`).

    None when the flow has no receiver records.
    """
    if flow.summary is not None:
        return dict(flow.summary, estimated=False)
    if not flow.intervals:
        return None
    tot = {k: int(np.nansum(flow.column(k))) for k in
           ("received", "lost", "late", "duplicates", "malformed", "loss_bursts", "negative_owd")}
    rx, lost = tot["received"], tot["lost"]
    tot["loss_percent"] = 100.0 * lost / (rx + lost) if rx + lost else 0.0
    tot["max_loss_burst"] = int(_nanmax(flow.column("max_loss_burst")) or 0)
    prefix = _delay_prefix(flow)
    tot[f"{prefix}_min_us"] = _nanmin(flow.column(f"{prefix}_min_us"))
    tot[f"{prefix}_max_us"] = _nanmax(flow.column(f"{prefix}_max_us"))
    tot[f"{prefix}_p50_us"] = _weighted_median(flow.column(f"{prefix}_p50_us"),
                                               flow.column("received"))
    tot[f"{prefix}_p99_us"] = _nanmax(flow.column(f"{prefix}_p99_us"))
    jitter = flow.column("jitter_us")
    tot["jitter_us"] = float(jitter[-1]) if len(jitter) and np.isfinite(jitter[-1]) else None
    tot["ipdv_p99_us"] = _nanmax(flow.column("ipdv_p99_us"))
    tot["closed"] = bool(flow.intervals[-1].get("closed"))
    tot["stalled"] = bool(flow.intervals[-1].get("stalled"))
    tot["estimated"] = True
    return tot


def sender_totals(flow: Flow) -> dict | None:
    """The flow's sender totals: its sender summary, else summed from `sender` records."""
    if flow.sender_summary is not None:
        return dict(flow.sender_summary, estimated=False)
    if not flow.senders:
        return None
    tot = {k: int(np.nansum(flow.column(k, True)))
           for k in ("sent", "missed_slots", "skipped_slots")}
    tot["timer_late_p50_us"] = _weighted_median(flow.column("timer_late_p50_us", True),
                                                flow.column("sent", True))
    tot["timer_late_p99_us"] = _nanmax(flow.column("timer_late_p99_us", True))
    tot["timer_late_max_us"] = _nanmax(flow.column("timer_late_max_us", True))
    tot["estimated"] = True
    return tot


def _nanmax(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(a.max()) if len(a) else None


def _nanmin(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(a.min()) if len(a) else None


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float | None:
    ok = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
    if not ok.any():
        return None
    v, w = values[ok], weights[ok]
    order = np.argsort(v)
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, cum[-1] / 2)])


def _delay_prefix(flow: Flow) -> str:
    """`rtt` when the flow's records carry round-trip times, else `owd`."""
    recs = flow.intervals + ([flow.summary] if flow.summary else [])
    return "rtt" if any(r.get("rtt_p50_us") is not None for r in recs) else "owd"


# ---------------------------------------------------------------- text


def _count(v) -> str:
    return "-" if v is None else f"{int(v):,}"


def _pct(p) -> str:
    """Loss percent with 3 decimals; tiny non-zero losses in scientific notation, not 0.000."""
    if p is None:
        return "-"
    return f"{p:.3f}" if p == 0 or p >= 0.001 else f"{p:.1e}"


def _dur(us, approx: bool = False) -> str:
    """A duration in µs with a unit that keeps 3-4 significant digits: `42.0us`, `2.79ms`."""
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return "-"
    a = abs(us)
    text = (f"{us:.1f}us" if a < 1e3 else f"{us / 1e3:.2f}ms" if a < 1e6
            else f"{us / 1e6:.2f}s")
    return ("~" if approx else "") + text


def _flow_lines(i: int, flow: Flow, width: int = 80) -> list[str]:
    state = []
    rx = receiver_totals(flow)
    if rx and rx.get("closed"):
        state.append("closed")
    if rx and rx.get("stalled"):
        state.append("stalled")
    if rx and rx.get("outcome") in ("unknown", "restarted"):
        state.append(rx["outcome"])
    if rx and rx["estimated"]:
        state.append("*")
    tail = f"  session {flow.session}" + (f" [{' '.join(state)}]" if state else "")
    head = f"{i:>2}  {flow.label}"
    if len(head) > width:
        return [f"{i:>2}  {flow.source}", f"      -> {flow.destination}", "    " + tail.strip()]
    if len(head + tail) > width:
        return [head, "    " + tail.strip()]
    return [head + tail]


def text_summary(records: list[dict]) -> str:
    """A compact per-flow text summary of a run, at most 80 columns wide.

    Counters and delays are the `summary` records' values; flows without one are summed from
    their intervals and marked `*` (module rules).
    """
    flows = group_flows(records)
    if not flows:
        raise ReportError("no interval, sender or summary records")
    start, end = _run_span(flows)
    t0 = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = [f"packet-flow run {t0}, {end - start:.1f} s, {len(flows)} flow(s)", ""]
    for i, f in enumerate(flows, 1):
        out += _flow_lines(i, f)
    rx = [(i, f, receiver_totals(f)) for i, f in enumerate(flows, 1)]
    rx = [(i, f, t) for i, f, t in rx if t is not None]
    if rx:
        out += ["", f"{'#':>2}  {'received':>14} {'lost':>11} {'loss %':>7} {'late':>10} "
                    f"{'dup':>9} {'bursts':>9} {'max burst':>9}"]
        for i, _, t in rx:
            out.append(f"{i:>2}  {_count(t.get('received')):>14} {_count(t.get('lost')):>11} "
                       f"{_pct(t.get('loss_percent')):>7} {_count(t.get('late')):>10} "
                       f"{_count(t.get('duplicates')):>9} {_count(t.get('loss_bursts')):>9} "
                       f"{_count(t.get('max_loss_burst')):>9}")
        out += ["", f"{'#':>2}  {'delay':>5} {'min':>9} {'p50':>9} {'p99':>9} {'max':>9} "
                    f"{'neg':>6} {'jitter':>9} {'ipdv p99':>9}"]
        for i, f, t in rx:
            p, est = _delay_prefix(f), t["estimated"]
            out.append(f"{i:>2}  {p.upper():>5} {_dur(t.get(f'{p}_min_us')):>9} "
                       f"{_dur(t.get(f'{p}_p50_us'), est):>9} "
                       f"{_dur(t.get(f'{p}_p99_us'), est):>9} {_dur(t.get(f'{p}_max_us')):>9} "
                       f"{_count(t.get('negative_owd')):>6} {_dur(t.get('jitter_us')):>9} "
                       f"{_dur(t.get('ipdv_p99_us'), est):>9}")
    tx = [(i, sender_totals(f)) for i, f in enumerate(flows, 1)]
    tx = [(i, t) for i, t in tx if t is not None]
    if tx:
        out += ["", f"{'#':>2}  {'sent':>14} {'missed':>10} {'skipped':>10} "
                    f"{'timer p50':>10} {'timer p99':>10} {'timer max':>10}"]
        for i, t in tx:
            est = t["estimated"]
            out.append(f"{i:>2}  {_count(t.get('sent')):>14} {_count(t.get('missed_slots')):>10} "
                       f"{_count(t.get('skipped_slots')):>10} "
                       f"{_dur(t.get('timer_late_p50_us'), est):>10} "
                       f"{_dur(t.get('timer_late_p99_us'), est):>10} "
                       f"{_dur(t.get('timer_late_max_us')):>10}" + ("  *" if est else ""))
    if any(t["estimated"] for _, _, t in rx) or any(t["estimated"] for _, t in tx):
        out += ["", "* no summary record (run cut short): totals summed from intervals,",
                "  ~ approximate (p50: weighted median of intervals, p99: worst interval)"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- figure


def _unit(values_us: np.ndarray) -> tuple[float, str]:
    """(divisor, unit) that shows these µs values with few digits."""
    top = np.nanmax(np.abs(values_us)) if np.isfinite(values_us).any() else 0.0
    return (1.0, "µs") if top < 1e3 else (1e3, "ms") if top < 1e6 else (1e6, "s")


def _maybe_log(ax, *arrays: np.ndarray) -> None:
    """Log y axis when all values are positive and span more than a factor 30 (spikes)."""
    v = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if len(v) and v.min() > 0 and v.max() / v.min() > 30:
        ax.set_yscale("log")


def _note(ax, text: str) -> None:
    ax.text(0.99, 0.97, text, ha="right", va="top", transform=ax.transAxes,
            fontsize="x-small", bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} records", ha="center", va="center",
            transform=ax.transAxes, color="0.5")
    ax.tick_params(left=False, labelleft=False)


def _band_panel(ax, t, p50, p99, mx, color: str, what: str) -> str:
    """p50 line, p50-p99 band and max points, all in µs scaled to one unit; returns the unit."""
    div, unit = _unit(np.concatenate([p50, p99, mx]))
    ok = np.isfinite(p50) & np.isfinite(p99)
    ax.fill_between(t, p50 / div, p99 / div, where=ok, color=color, alpha=0.25, lw=0,
                    label=f"{what} p50–p99")
    ax.plot(t, p50 / div, color=color, lw=1.2, label=f"{what} p50")
    ax.plot(t, mx / div, ".", color=color, ms=3, alpha=0.7, label=f"{what} max")
    _maybe_log(ax, p50, p99, mx)
    return unit


def _delay(ax, flow: Flow, t: np.ndarray) -> None:
    prefix = _delay_prefix(flow)
    what = "RTT" if prefix == "rtt" else "OWD"
    unit = _band_panel(ax, t, flow.column(f"{prefix}_p50_us"), flow.column(f"{prefix}_p99_us"),
                       flow.column(f"{prefix}_max_us"), "tab:blue", what)
    neg = int(np.nansum(flow.column("negative_owd"))) if prefix == "owd" else 0
    if neg:
        _note(ax, f"{neg:,} negative OWD: clocks not in sync")
    ax.set_title("round-trip time" if prefix == "rtt" else "one-way delay")
    ax.set_ylabel(f"{what} ({unit})")


def _loss(ax, flow: Flow, t: np.ndarray) -> None:
    width = np.nan_to_num(flow.column("interval_s"), nan=1.0)
    pct = np.nan_to_num(flow.column("loss_percent"), nan=0.0)
    burst = np.nan_to_num(flow.column("max_loss_burst"), nan=0.0)
    ax.bar(t, pct, width=0.9 * width, color="tab:red", alpha=0.6, label="loss %")
    hit = burst > 0
    if hit.any():
        size = 15 + 120 * np.sqrt(burst[hit] / burst.max())
        ax.scatter(t[hit], pct[hit], s=size, marker="v", facecolor="none",
                   edgecolor="darkred", lw=1, label="longest burst (marker size)", zorder=3)
        k = int(np.argmax(burst))
        if burst[k] > 1:
            ax.annotate(f"burst {int(burst[k]):,}", (t[k], pct[k]), xytext=(4, 6),
                        textcoords="offset points", fontsize="x-small", color="darkred")
    stalled = np.array([bool(r.get("stalled")) for r in flow.intervals])
    for x, w in zip(t[stalled], width[stalled], strict=True):
        ax.axvspan(x - w / 2, x + w / 2, color="0.6", alpha=0.25, lw=0)
    if stalled.any():
        ax.plot([], [], "s", color="0.6", alpha=0.4, label="stalled")
    ax.set_ylim(0, max(1.0, pct.max() * 1.25))
    ax.set_title("loss per interval")
    ax.set_ylabel("loss (%)")


def _jitter(ax, flow: Flow, t: np.ndarray) -> None:
    jit = flow.column("jitter_us")
    mean, p99 = flow.column("ipdv_mean_us"), flow.column("ipdv_p99_us")
    div, unit = _unit(np.concatenate([jit, mean, p99]))
    ax.plot(t, jit / div, color="tab:purple", lw=1.2, label="jitter (RFC 3550)")
    ax.plot(t, mean / div, color="tab:green", lw=1, label="|IPDV| mean")
    ax.plot(t, p99 / div, color="tab:green", lw=1, ls="--", label="|IPDV| p99")
    _maybe_log(ax, jit, mean, p99)
    ax.set_title("jitter")
    ax.set_ylabel(f"jitter ({unit})")


def _timer(ax, flow: Flow, t: np.ndarray) -> None:
    unit = _band_panel(ax, t, flow.column("timer_late_p50_us", True),
                       flow.column("timer_late_p99_us", True),
                       flow.column("timer_late_max_us", True), "tab:orange", "late")
    missed = int(np.nansum(flow.column("missed_slots", True)))
    skipped = int(np.nansum(flow.column("skipped_slots", True)))
    if missed or skipped:
        _note(ax, f"slots missed {missed:,}, skipped {skipped:,}")
    ax.set_title("sender timer lateness")
    ax.set_ylabel(f"lateness ({unit})")


def _flow_title(flow: Flow) -> str:
    parts = [f"{flow.label}   session {flow.session}"]
    rx = receiver_totals(flow)
    if rx:
        parts.append(f"{_count(rx.get('received'))} received, {_count(rx.get('lost'))} lost "
                     f"({_pct(rx.get('loss_percent'))} %), longest burst "
                     f"{_count(rx.get('max_loss_burst'))}"
                     + (" (no summary record: summed from intervals)" if rx["estimated"] else ""))
    tx = sender_totals(flow)
    if tx:
        parts.append(f"{_count(tx.get('sent'))} sent")
    return "   |   ".join(parts)


def figure_size_px(n_flows: int) -> tuple[int, int]:
    """(width, height) in pixels of the figure build_figure draws for n_flows flows."""
    h = defaults.REPORT_HEADER_IN + defaults.REPORT_ROW_IN * n_flows
    return (round(defaults.REPORT_WIDTH_IN * defaults.REPORT_DPI),
            round(h * defaults.REPORT_DPI))


def build_figure(records: list[dict]):
    """Draw the run: one row per flow of panels delay | loss | jitter [| sender timer].

    Time on x, seconds since the run start, shared by all panels. The timer panel column exists
    when any flow has `sender` records. Returns a matplotlib Figure on the Agg canvas; raises
    ImportError without matplotlib and ReportError when there is nothing to draw.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    flows = group_flows(records)
    if not flows:
        raise ReportError("no interval, sender or summary records to draw")
    start, end = _run_span(flows)
    panels = [_delay, _loss, _jitter]
    if any(f.senders for f in flows):
        panels.append(_timer)
    w, h = figure_size_px(len(flows))
    fig = Figure(figsize=(w / defaults.REPORT_DPI, h / defaults.REPORT_DPI),
                 dpi=defaults.REPORT_DPI, layout="constrained")
    t0 = datetime.fromtimestamp(start, UTC)
    fig.suptitle(f"packet-flow run {t0:%Y-%m-%d %H:%M:%S} UTC, {end - start:.1f} s, "
                 f"{len(flows)} flow(s)", fontsize="large", fontweight="bold")
    rows = fig.subfigures(len(flows), 1, squeeze=False)[:, 0]
    shared = None
    for r, (row, flow) in enumerate(zip(rows, flows, strict=True)):
        row.suptitle(_flow_title(flow), fontsize="medium", x=0.01, ha="left")
        for c, panel in enumerate(panels):
            ax = row.add_subplot(1, len(panels), c + 1, sharex=shared)
            shared = shared or ax
            sender = panel is _timer
            if sender and not flow.senders:
                ax.set_title("sender timer lateness")
                _no_data(ax, "sender")
            elif not sender and not flow.intervals:
                ax.set_title(["one-way delay", "loss per interval", "jitter"][c])
                _no_data(ax, "receiver")
            else:
                panel(ax, flow, flow.times(sender) - start)
                ax.legend(fontsize="x-small", loc="upper left", framealpha=0.7)
            ax.grid(True, alpha=0.3)
            if r == len(flows) - 1:
                ax.set_xlabel(f"time since {t0:%H:%M:%S} UTC (s)")
    shared.set_xlim(0, max(end - start, 1e-3))
    # Attach the canvas last: with it, every limit change above would redraw the whole figure.
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------- command


def main(argv: list[str]) -> int:
    """`packet-flow report RUN.jsonl [-o FILE] [--strict]`; returns the exit code.

    Without -o prints the text summary; with -o writes the figure (PNG, or any format matplotlib
    knows from the suffix). Returns 2 with an install hint when matplotlib is missing; raises
    ReportError for unusable input (the CLI maps it to exit 2).
    """
    p = argparse.ArgumentParser(
        prog="packet-flow report",
        description="Summarise or plot a run recorded with --output jsonl:PATH.")
    p.add_argument("run", help="JSON-lines run file ('-' = stdin)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the figure to FILE (e.g. report.png) instead of printing text")
    p.add_argument("--strict", action="store_true",
                   help="fail on a truncated last line instead of dropping it with a warning")
    args = p.parse_args(argv)
    if args.output:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(INSTALL_HINT, file=sys.stderr)
            return 2
    records = load_records(args.run, strict=args.strict)
    if not args.output:
        sys.stdout.write(text_summary(records))
        return 0
    fig = build_figure(records)
    try:
        fig.savefig(args.output, dpi=defaults.REPORT_DPI)
    except OSError as e:
        raise ReportError(f"cannot write {args.output}: {e.strerror or e}") from e
    except ValueError as e:  # unknown file suffix
        raise ReportError(f"cannot write {args.output}: {e}") from e
    w, h = fig.canvas.get_width_height()
    print(f"wrote {args.output} ({w}x{h} px, {len(fig.subfigs)} flow(s))")
    return 0
