"""The pair matrix of a mesh run: rows are senders, columns receivers, from summary records.

Rules:
- A cell (sender, receiver) comes from the receiver's summary of that flow (one-way: loss %,
  one-way delay p50 / p99); where there is none (this node's own probes, seen from here), from
  the sender's summary with --rtt (loss % of the round trip, RTT p50 / p99), marked `r`.
  Summaries of the same pair (a restarted sender) add up: loss from the summed counts, the
  percentiles of the latest. A pair with no summary is `·`; the diagonal is `-`.
- Nodes are named by source_name / destination_name; rows and columns are numbered, with the
  names in the row labels, so every line fits 80 columns. Up to MOST nodes are shown; beyond,
  those of the worst loss, and a line says how many were left out.
- Pure: records in, text lines out (the console prints them; `report` may reuse cells()).
"""

MOST = 10
CELL = 6            # characters per column, its space included
LABEL = 14          # characters of a row label ("NN name")


def cells(summaries):
    """{(sender name, receiver name): (loss %, p50 µs, p99 µs, round_trip)} of a mesh run's
    summary records (see the module rules)."""
    oneway, rtt = {}, {}
    for rec in summaries:
        if rec.get("type") != "summary" or not rec.get("source_name"):
            continue
        key = (rec["source_name"], rec.get("destination_name"))
        if rec.get("role") == "receiver":
            lost, got, p50, p99 = oneway.get(key, (0, 0, None, None))
            oneway[key] = (lost + (rec.get("lost") or 0), got + (rec.get("received") or 0),
                           rec.get("owd_p50_us"), rec.get("owd_p99_us"))
        elif rec.get("mesh") and "rtt_p50_us" in rec:
            lost, got, p50, p99 = rtt.get(key, (0, 0, None, None))
            rtt[key] = (lost + (rec.get("lost") or 0), got + (rec.get("reflected") or 0),
                        rec.get("rtt_p50_us"), rec.get("rtt_p99_us"))
    out = {}
    for table, round_trip in ((rtt, True), (oneway, False)):    # one-way wins
        for key, (lost, got, p50, p99) in table.items():
            loss = 100.0 * lost / (lost + got) if lost + got else None
            out[key] = (loss, p50, p99, round_trip)
    return out


def _us(v):
    if v is None:
        return "?"
    if v < 1000:
        return f"{v:.0f}µ"
    if v < 1e6:
        return f"{v / 1e3:.1f}m" if v < 1e4 else f"{v / 1e3:.0f}m"
    return f"{v / 1e6:.1f}s"


def _pct(v):
    if v is None:
        return "?"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else "100"


def lines(summaries, most=MOST):
    """The matrix as text lines (none when the summaries are not a mesh run's)."""
    got = cells(summaries)
    if not any(rec.get("mesh") for rec in summaries) or not got:
        return []
    nodes = sorted({n for pair in got for n in pair if n})
    left_out = 0
    if len(nodes) > most:
        worst = {n: max((c[0] or 0) for pair, c in got.items() if n in pair) for n in nodes}
        keep = sorted(nodes, key=lambda n: (-worst[n], n))[:most]
        left_out = len(nodes) - most
        nodes = sorted(keep)
    out = ["", "pair matrix: rows send, columns receive; one-way, r = round trip (--rtt)"]
    head = " " * LABEL + "".join(f"{i + 1:>{CELL}}" for i in range(len(nodes)))
    for title, pick, fmt in (("loss %", 0, _pct), ("delay p50", 1, _us), ("delay p99", 2, _us)):
        out += ["", title, head]
        for i, src in enumerate(nodes):
            row = f"{i + 1:>2} {src[:LABEL - 4]:<{LABEL - 4}} "
            for dst in nodes:
                c = got.get((src, dst))
                text = "-" if src == dst else "·" if c is None else \
                    fmt(c[pick]) + ("r" if c[3] else "")
                row += f"{text:>{CELL}}"
            out.append(row)
    if left_out:
        out.append(f"{left_out} more nodes not shown (the worst {most} by loss are); "
                   "the records hold every pair")
    return out
