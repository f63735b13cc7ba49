"""`packet-flow report` as text: one run's flows, at most 80 columns (report.py has the rules).
"""

import textwrap
from datetime import UTC, datetime

from .errors import ReportError
from .report import (
    Flow,
    _count,
    _delay_prefix,
    _dur,
    _pct,
    _run_span,
    group_flows,
    receiver_totals,
    sender_totals,
)


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


def run_line(run: tuple | None) -> list[str]:
    """Which run of the file this is, when the file holds several: (number, of, id)."""
    if run is None or run[1] < 2:
        return []
    n, of, rid = run
    return [f"run {n} of {of} in this file ({rid or 'no run id'}): --list-runs lists them, "
            "--run N picks one"]


def text_summary(records: list[dict], run: tuple | None = None) -> str:
    """A compact per-flow text summary of a run, at most 80 columns wide.

    Counters and delays are the `summary` records' values; flows without one are summed from
    their intervals and marked `*` (report.py rules). `run`: (number, of, id) of this run in
    its file, said when the file holds several.
    """
    flows = group_flows(records)
    if not flows:
        raise ReportError("no interval, sender or summary records")
    start, end = _run_span(flows)
    t0 = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = [f"packet-flow run {t0}, {end - start:.1f} s, {len(flows)} flow(s)",
           *run_line(run), ""]
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
    out += _rtt_lines([(i, t) for i, t in tx if "rtt_p50_us" in t])
    if any(t["estimated"] for _, _, t in rx) or any(t["estimated"] for _, t in tx):
        out += ["", "* no summary record (run cut short): totals summed from intervals,",
                "  ~ approximate (p50: weighted median of intervals, p99: worst interval)"]
    return "\n".join(out) + "\n"



def _rtt_lines(tx: list[tuple[int, dict]]) -> list[str]:
    """The round trip of --rtt senders: RTT, loss and late/dup by direction, the reflector."""
    if not tx:
        return []
    out = ["", f"{'#':>2}  {'delay':>5} {'min':>9} {'p50':>9} {'p99':>9} {'max':>9} "
               f"{'jitter':>9}"]
    for i, t in tx:
        est = t["estimated"]
        out.append(f"{i:>2}  {'RTT':>5} {_dur(t.get('rtt_min_us')):>9} "
                   f"{_dur(t.get('rtt_p50_us'), est):>9} {_dur(t.get('rtt_p99_us'), est):>9} "
                   f"{_dur(t.get('rtt_max_us')):>9} {_dur(t.get('rtt_jitter_us')):>9}")
    out += ["", f"{'#':>2}  {'reflected':>12} {'lost':>9} {'loss %':>7} {'fwd lost':>9} "
                f"{'back lost':>9} {'late f/b':>9} {'dup f/b':>9}"]
    for i, t in tx:
        late = f"{_count(t.get('forward_late'))}/{_count(t.get('backward_late'))}"
        dup = f"{_count(t.get('forward_duplicates'))}/{_count(t.get('backward_duplicates'))}"
        out.append(f"{i:>2}  {_count(t.get('reflected')):>12} {_count(t.get('lost')):>9} "
                   f"{_pct(t.get('loss_percent')):>7} {_count(t.get('forward_lost')):>9} "
                   f"{_count(t.get('backward_lost')):>9} {late:>9} {dup:>9}")
    for i, t in tx:
        if not t.get("reflected"):
            out.append(f"{i:>2}  no reply came back: the peer must run --mode reflector "
                       "(or be a STAMP reflector with --wire stamp)")
            continue
        resets = t.get("reflector_resets") or 0
        notes = [f"reflector resets {resets}" + (" (it restarted or forgot the flow)"
                                                  if resets else "")]
        if t.get("unattributed_lost"):
            notes.append(f"{t['unattributed_lost']} lost after the last reply (direction "
                         "unknown)")
        out += textwrap.wrap(f"{i:>2}  " + "; ".join(notes), 80, subsequent_indent="    ")
    return out
