"""`packet-flow report -o FILE`: one run drawn with matplotlib (report.py has the rules).

Rules: legends sit above their panel, never over a line or a dot; a --rtt sender flow without
receiver records draws RTT, round-trip loss (forward and backward) and RTT jitter.
"""

from datetime import UTC, datetime

import numpy as np

from . import defaults
from .errors import ReportError
from .report import (
    Flow,
    _count,
    _delay_prefix,
    _pct,
    _run_span,
    group_flows,
    has_rtt,
    receiver_totals,
    sender_totals,
)
from .report_mesh import draw_matrix, pair_matrix


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


def _delay(ax, flow: Flow, t: np.ndarray, rtt: bool = False) -> None:
    prefix = "rtt" if rtt else _delay_prefix(flow)
    what = "RTT" if prefix == "rtt" else "OWD"
    unit = _band_panel(ax, t, flow.column(f"{prefix}_p50_us", rtt),
                       flow.column(f"{prefix}_p99_us", rtt),
                       flow.column(f"{prefix}_max_us", rtt), "tab:blue", what)
    neg = int(np.nansum(flow.column("negative_owd"))) if prefix == "owd" and not rtt else 0
    if neg:
        _note(ax, f"{neg:,} negative OWD: clocks not in sync")
    ax.set_title("round-trip time" if prefix == "rtt" else "one-way delay")
    ax.set_ylabel(f"{what} ({unit})")


def _loss(ax, flow: Flow, t: np.ndarray, rtt: bool = False) -> None:
    if rtt:
        _rtt_loss(ax, flow, t)
        return
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


def _rtt_loss(ax, flow: Flow, t: np.ndarray) -> None:
    """A --rtt sender's loss per interval, forward and backward stacked (% of the probes)."""
    width = np.nan_to_num(flow.column("interval_s", True), nan=1.0)
    n = flow.column("reflected", True) + flow.column("lost", True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fwd = np.nan_to_num(100 * flow.column("forward_lost", True) / n, nan=0.0)
        back = np.nan_to_num(100 * flow.column("backward_lost", True) / n, nan=0.0)
    ax.bar(t, fwd, width=0.9 * width, color="tab:red", alpha=0.6, label="forward loss %")
    ax.bar(t, back, bottom=fwd, width=0.9 * width, color="tab:brown", alpha=0.6,
           label="backward loss %")
    ax.set_ylim(0, max(1.0, float((fwd + back).max(initial=0)) * 1.25))
    ax.set_title("round-trip loss per interval")
    ax.set_ylabel("loss (%)")


def _jitter(ax, flow: Flow, t: np.ndarray, rtt: bool = False) -> None:
    if rtt:
        jit = flow.column("rtt_jitter_us", True)
        div, unit = _unit(jit)
        ax.plot(t, jit / div, color="tab:purple", lw=1.2, label="RTT jitter (RFC 3550)")
        _maybe_log(ax, jit)
        ax.set_title("round-trip jitter")
        ax.set_ylabel(f"jitter ({unit})")
        return
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
    if tx and "rtt_p50_us" in tx:
        parts.append(f"{_count(tx.get('reflected'))} reflected, lost forward "
                     f"{_count(tx.get('forward_lost'))}, backward "
                     f"{_count(tx.get('backward_lost'))}, reflector resets "
                     f"{_count(tx.get('reflector_resets'))}" if tx.get("reflected") else
                     "no reply came back: the peer must run --mode reflector")
    return "   |   ".join(parts)


def _legend(ax) -> None:
    """The legend above the panel, in one or two rows, so it never covers a line or a dot."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize="x-small", loc="lower left", bbox_to_anchor=(0, 1.0),
              ncols=min(3, len(labels)), frameon=False, borderaxespad=0.1, columnspacing=1.0,
              handlelength=1.5)


def figure_size_px(n_flows: int, matrix: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of the figure build_figure draws for n_flows flows (and the
    pair matrix of a mesh run)."""
    h = defaults.REPORT_HEADER_IN + defaults.REPORT_ROW_IN * n_flows
    h += defaults.REPORT_MATRIX_IN if matrix else 0.0
    return (round(defaults.REPORT_WIDTH_IN * defaults.REPORT_DPI),
            round(h * defaults.REPORT_DPI))


def build_figure(records: list[dict], run: tuple | None = None):
    """Draw the run: one row per flow of panels delay | loss | jitter [| sender timer].

    Time on x, seconds since the run start, shared by all panels. The timer panel column exists
    when any flow has `sender` records; a --rtt sender flow without receiver records draws its
    round trip in the first three panels. `run` (number, of, id) names the run in the title
    when its file holds several. Returns a matplotlib Figure on the Agg canvas; raises
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
    matrix = pair_matrix(records)
    w, h = figure_size_px(len(flows), matrix is not None)
    fig = Figure(figsize=(w / defaults.REPORT_DPI, h / defaults.REPORT_DPI),
                 dpi=defaults.REPORT_DPI, layout="constrained")
    t0 = datetime.fromtimestamp(start, UTC)
    which = f" (run {run[0]} of {run[1]} in the file)" if run and run[1] > 1 else ""
    fig.suptitle(f"packet-flow run {t0:%Y-%m-%d %H:%M:%S} UTC, {end - start:.1f} s, "
                 f"{len(flows)} flow(s){which}", fontsize="large", fontweight="bold")
    ratios = [defaults.REPORT_ROW_IN] * len(flows)
    if matrix is not None:          # a mesh run: the pair matrix above the flows
        ratios.insert(0, defaults.REPORT_MATRIX_IN)
    rows = fig.subfigures(len(ratios), 1, squeeze=False, height_ratios=ratios)[:, 0]
    if matrix is not None:
        draw_matrix(rows[0], matrix)
        rows = rows[1:]
    title_pad = 22      # points: room for the legend row between a panel and its title
    shared = None
    for r, (row, flow) in enumerate(zip(rows, flows, strict=True)):
        row.suptitle(_flow_title(flow), fontsize="medium", x=0.01, ha="left")
        for c, panel in enumerate(panels):
            ax = row.add_subplot(1, len(panels), c + 1, sharex=shared)
            shared = shared or ax
            sender = panel is _timer
            rtt = not sender and not flow.intervals and has_rtt(flow)
            if sender and not flow.senders:
                ax.set_title("sender timer lateness", pad=title_pad)
                _no_data(ax, "sender")
            elif not sender and not flow.intervals and not rtt:
                ax.set_title(["one-way delay", "loss per interval", "jitter"][c], pad=title_pad)
                _no_data(ax, "receiver")
            else:
                t = flow.times(sender or rtt) - start
                if rtt:
                    panel(ax, flow, t, rtt=True)
                else:
                    panel(ax, flow, t)
                ax.set_title(ax.get_title(), pad=title_pad)
                _legend(ax)
            ax.grid(True, alpha=0.3)
            if r == len(flows) - 1:
                ax.set_xlabel(f"time since {t0:%H:%M:%S} UTC (s)")
    shared.set_xlim(0, max(end - start, 1e-3))
    fig.pair_matrix = matrix
    # Attach the canvas last: with it, every limit change above would redraw the whole figure.
    FigureCanvasAgg(fig)
    return fig
