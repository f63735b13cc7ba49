"""The pair matrix of a mesh run: loss % and delay p50/p99 by sender × receiver name, as numbers
(pair_matrix) and as a row of heatmaps above the per-flow panels (draw_matrix).

Rules:
- A run is a mesh run when its receiver records name at least two pairs (source_name,
  destination_name); records of several nodes (`packet-flow report n1.jsonl n2.jsonl ...`)
  fill the whole matrix, one node's file its own column (and its row with --rtt).
- Per pair, loss % = lost / (received + lost) over the flows' summaries, or over their
  interval records for a flow without a summary (a node that was killed). Delays: one-way
  from the receiver (a summary's p50 and p99; without one, the received-weighted median of
  the intervals' p50 and the largest interval p99: marked `≈`); a pair known only from the
  sender's --rtt records shows the round trip's.
- Rows are senders, columns receivers, names sorted; a pair without records is blank (grey).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

RECEIVER = ("interval", "summary")


@dataclass
class Pair:
    """What the records say of one sender -> receiver pair."""

    received: float = 0.0
    lost: float = 0.0
    p50_us: float = math.nan
    p99_us: float = math.nan
    approx: bool = False
    kind: str = "owd"             # owd (one-way, receiver) or rtt (sender --rtt)

    @property
    def loss_percent(self) -> float:
        total = self.received + self.lost
        return 100.0 * self.lost / total if total else math.nan


@dataclass
class Matrix:
    """names (sorted) and {(sender, receiver): Pair}."""

    names: list[str]
    pairs: dict[tuple[str, str], Pair] = field(default_factory=dict)

    def grid(self, what: str) -> np.ndarray:
        """names × names array of `loss_percent`, `p50_us` or `p99_us` (NaN: no data)."""
        index = {n: i for i, n in enumerate(self.names)}
        out = np.full((len(self.names), len(self.names)), np.nan)
        for (src, dst), pair in self.pairs.items():
            out[index[src], index[dst]] = getattr(pair, what)
        return out


def _num(rec: dict, key: str) -> float:
    v = rec.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _count(rec: dict, key: str) -> float:
    v = _num(rec, key)
    return 0.0 if math.isnan(v) else v


def _weighted_median(values: list[float], weights: list[float]) -> float:
    ok = [(v, w) for v, w in zip(values, weights, strict=True) if math.isfinite(v) and w > 0]
    if not ok:
        return math.nan
    ok.sort()
    half, acc = sum(w for _, w in ok) / 2, 0.0
    for v, w in ok:
        acc += w
        if acc >= half:
            return v
    return ok[-1][0]


def pair_matrix(records: list[dict]) -> Matrix | None:
    """The pair matrix of the records, or None when they are not a mesh run (module rules)."""
    flows: dict[tuple, dict] = {}       # (src name, dst name, session) -> intervals, summary
    rtt: dict[tuple[str, str], dict] = {}
    for rec in records:
        src, dst = rec.get("source_name"), rec.get("destination_name")
        if not src or not dst:
            continue
        if rec.get("role") == "receiver" and rec.get("type") in RECEIVER:
            flow = flows.setdefault((src, dst, rec.get("session")), {"intervals": []})
            if rec["type"] == "summary":
                flow["summary"] = rec
            else:
                flow["intervals"].append(rec)
        elif rec.get("role") == "sender" and rec.get("type") == "summary" and \
                rec.get("rtt_p50_us") is not None:
            rtt[(src, dst)] = rec
    pairs: dict[tuple[str, str], Pair] = {}
    for (src, dst, _), flow in flows.items():
        pair = pairs.setdefault((src, dst), Pair())
        summary, intervals = flow.get("summary"), flow["intervals"]
        if summary is not None:
            pair.received += _count(summary, "received")
            pair.lost += _count(summary, "lost")
            pair.p50_us, pair.p99_us = _num(summary, "owd_p50_us"), _num(summary, "owd_p99_us")
        elif intervals:
            received = [_num(r, "received") for r in intervals]
            pair.received += float(np.nansum(received))
            pair.lost += float(np.nansum([_num(r, "lost") for r in intervals]))
            pair.p50_us = _weighted_median([_num(r, "owd_p50_us") for r in intervals],
                                           received)
            p99 = [v for v in (_num(r, "owd_p99_us") for r in intervals) if math.isfinite(v)]
            pair.p99_us = max(p99) if p99 else math.nan
            pair.approx = True
    for (src, dst), rec in rtt.items():
        if (src, dst) not in pairs:
            pairs[(src, dst)] = Pair(
                received=_count(rec, "reflected"),
                lost=_count(rec, "forward_lost") + _count(rec, "backward_lost"),
                p50_us=_num(rec, "rtt_p50_us"), p99_us=_num(rec, "rtt_p99_us"), kind="rtt")
    if len(pairs) < 2:
        return None
    names = sorted({n for pair in pairs for n in pair})
    return Matrix(names, pairs)


def _unit(grid: np.ndarray) -> tuple[float, str]:
    top = np.nanmax(grid) if np.isfinite(grid).any() else 0.0
    return (1.0, "µs") if top < 1e3 else (1e3, "ms") if top < 1e6 else (1e6, "s")


def _cell(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return ""
    if unit == "%":
        return "0" if value == 0 else f"{value:.2g}" if value < 10 else f"{value:.0f}"
    return f"{value:.3g}"


def draw_matrix(fig, matrix: Matrix) -> None:
    """Three heatmaps side by side on `fig` (a Figure or SubFigure): loss %, delay p50, p99."""
    import matplotlib as mpl

    n = len(matrix.names)
    kinds = {p.kind for p in matrix.pairs.values()}
    what = "one-way delay" if kinds == {"owd"} else "RTT" if kinds == {"rtt"} else "delay"
    approx = " (≈: from intervals)" if any(p.approx for p in matrix.pairs.values()) else ""
    fig.suptitle(f"pair matrix: {n} nodes, {len(matrix.pairs)} pairs (rows send, columns "
                 f"receive){approx}", fontsize="medium", x=0.01, ha="left")
    axes = fig.subplots(1, 3)
    panels = [("loss_percent", "loss", "Reds"), ("p50_us", f"{what} p50", "viridis"),
              ("p99_us", f"{what} p99", "viridis")]
    for ax, (key, title, cmap) in zip(axes, panels, strict=True):
        grid = matrix.grid(key)
        div, unit = (1.0, "%") if key == "loss_percent" else _unit(grid)
        shown = grid / div
        colours = mpl.colormaps[cmap].with_extremes(bad="0.85")
        vmax = np.nanmax(shown) if np.isfinite(shown).any() else 1.0
        image = ax.imshow(np.ma.masked_invalid(shown), cmap=colours, vmin=0,
                          vmax=max(vmax, 1e-9), aspect="auto", interpolation="nearest")
        fig.colorbar(image, ax=ax, label=unit, shrink=0.9)
        ax.set_title(f"{title} ({unit})")
        ticks = range(n)
        ax.set_xticks(ticks, matrix.names, rotation=90, fontsize="x-small")
        ax.set_yticks(ticks, matrix.names, fontsize="x-small")
        ax.set_xlabel("receiver")
        if key == "loss_percent":
            ax.set_ylabel("sender")
        if n <= 16:
            _label_cells(ax, matrix, shown, unit, vmax, dark_high=cmap == "Reds")


def _label_cells(ax, matrix: Matrix, shown: np.ndarray, unit: str, vmax: float,
                 dark_high: bool) -> None:
    """Each cell's value, in white on dark colours; `≈` on delays taken from intervals."""
    for i, src in enumerate(matrix.names):
        for j, dst in enumerate(matrix.names):
            text = _cell(shown[i, j], unit)
            if not text:
                continue
            pair = matrix.pairs[(src, dst)]
            if pair.approx and unit != "%":
                text = "≈" + text
            dark = shown[i, j] > 0.6 * vmax if dark_high else shown[i, j] < 0.4 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize="x-small",
                    color="white" if dark else "black")
