"""`packet-flow report`: a text summary or a PNG figure from a JSON-lines run file.

Rules:
- The input is the record stream of docs/options.md (JSON-lines records). Records group into flows keyed by
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
- Runs: every record a run writes carries its `run` id (sinks/fanout.py), so one file may hold
  several runs (`jsonl:` appends). A report shows one run: the latest by default, another with
  `--run N|ID`; `--list-runs` lists them. Records without a `run` (files written before run ids)
  form one run of their own.
- A sender `--rtt` flow without receiver records is reported by its round trip: RTT, loss
  forward and backward, and what the reflector did (resets, loss after the last reply).
- This module reads, groups and totals; report_runs.py splits a file into runs, report_text.py
  writes the text, report_figure.py draws.
"""

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from . import defaults
from .errors import ReportError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "packet-flow report: drawing a figure needs matplotlib; "
    "install it with: pip install '.[plot]' (in the clone) or: pip install matplotlib"
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
    """The flow's sender totals: its sender summary, else summed from `sender` records (with
    --rtt: the round-trip fields too, p50 and p99 approximate as for receiver flows)."""
    if flow.sender_summary is not None:
        return dict(flow.sender_summary, estimated=False)
    if not flow.senders:
        return None
    tot = {k: int(np.nansum(flow.column(k, True)))
           for k in ("sent", "missed_slots", "skipped_slots")}
    if has_rtt(flow):
        tot.update((k, int(np.nansum(flow.column(k, True)))) for k in RTT_COUNTS)
        n = tot["reflected"] + tot["lost"]
        tot["loss_percent"] = 100.0 * tot["lost"] / n if n else 0.0
        tot["rtt_min_us"] = _nanmin(flow.column("rtt_min_us", True))
        tot["rtt_max_us"] = _nanmax(flow.column("rtt_max_us", True))
        tot["rtt_p50_us"] = _weighted_median(flow.column("rtt_p50_us", True),
                                             flow.column("reflected", True))
        tot["rtt_p99_us"] = _nanmax(flow.column("rtt_p99_us", True))
        jitter = flow.column("rtt_jitter_us", True)
        tot["rtt_jitter_us"] = float(jitter[-1]) if np.isfinite(jitter[-1]) else None
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


RTT_COUNTS = ("reflected", "lost", "forward_lost", "backward_lost", "forward_late",
              "backward_late", "forward_duplicates", "backward_duplicates", "reflector_resets")


def has_rtt(flow: Flow) -> bool:
    """True when the flow's sender records carry round-trip times (a --rtt sender)."""
    recs = flow.senders + ([flow.sender_summary] if flow.sender_summary else [])
    return any("rtt_p50_us" in r for r in recs)


def _delay_prefix(flow: Flow) -> str:
    """`rtt` when the flow's records carry round-trip times, else `owd`."""
    recs = flow.intervals + ([flow.summary] if flow.summary else [])
    return "rtt" if any(r.get("rtt_p50_us") is not None for r in recs) else "owd"


# ---------------------------------------------------------------- text helpers


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


# ---------------------------------------------------------------- command

EXAMPLES = """examples:
  packet-flow -m sender --remote-addr 127.0.0.1:8000 --duration 10 --output jsonl:run.jsonl
  packet-flow report run.jsonl                 text summary of the latest run in the file
  packet-flow report run.jsonl -o run.png      the same run as a figure (needs matplotlib)
  packet-flow report run.jsonl --list-runs     the runs the file holds (jsonl: appends)
  packet-flow report run.jsonl --run 1         the first run (or --run ID, or its start)
  packet-flow report n*.jsonl -o mesh.png      a mesh's nodes together, with the pair matrix
  packet-flow -m receiver --output jsonl:- | tee run.jsonl   (then: report run.jsonl)
"""


def main(argv: list[str]) -> int:
    """`packet-flow report RUN.jsonl [-o FILE] [--run N|ID] [--list-runs] [--strict]`;
    returns the exit code.

    Without -o prints the text summary; with -o writes the figure (PNG, or any format matplotlib
    knows from the suffix). Returns 2 with an install hint when matplotlib is missing; raises
    ReportError for unusable input (the CLI maps it to exit 2).
    """
    p = argparse.ArgumentParser(
        prog="packet-flow report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Summarise or plot a run recorded with --output jsonl:PATH.",
        epilog=EXAMPLES)
    p.add_argument("run_file", metavar="RUN.jsonl", nargs="+",
                   help="JSON-lines run file ('-' = stdin); several files (the nodes of a mesh) "
                        "are shown together, the chosen run of each")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the figure to FILE (e.g. report.png) instead of printing text")
    p.add_argument("--run", metavar="N|ID",
                   help="the run to show when the file holds several: its number in "
                        "--list-runs, its id or the start of it; default: the latest")
    p.add_argument("--list-runs", action="store_true", help="list the runs in the file and exit")
    p.add_argument("--strict", action="store_true",
                   help="fail on a truncated last line instead of dropping it with a warning")
    args = p.parse_args(argv)
    from .report_runs import list_runs, pick_run, split_runs
    if args.output and not args.list_runs:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(INSTALL_HINT, file=sys.stderr)
            return 2
    chosen, which = [], None
    for path in args.run_file:
        runs = split_runs(load_records(path, strict=args.strict))
        if args.list_runs:
            sys.stdout.write((f"{path}:\n" if len(args.run_file) > 1 else "") + list_runs(runs))
            continue
        index = pick_run(runs, args.run, "<stdin>" if path == "-" else path)
        chosen += runs[index].records
        which = (index + 1, len(runs), runs[index].id) if len(args.run_file) == 1 else None
    if args.list_runs:
        return 0
    if not args.output:
        from .report_text import text_summary
        sys.stdout.write(text_summary(chosen, which))
        return 0
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):       # said before the figure is drawn (seconds)
        raise ReportError(f"cannot write {args.output}: no folder {folder}")
    from .report_figure import build_figure
    fig = build_figure(chosen, which)
    try:
        fig.savefig(args.output, dpi=defaults.REPORT_DPI)
    except OSError as e:
        raise ReportError(f"cannot write {args.output}: {e.strerror or e}") from e
    except ValueError as e:  # unknown file suffix
        raise ReportError(f"cannot write {args.output}: {e}") from e
    w, h = fig.canvas.get_width_height()
    matrix = fig.pair_matrix
    mesh = f", the pair matrix of {len(matrix.names)} nodes" if matrix else ""
    print(f"wrote {args.output} ({w}x{h} px, {len(fig.subfigs) - bool(matrix)} flow(s){mesh})")
    return 0
