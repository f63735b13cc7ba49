"""report_mesh: the pair matrix of a mesh run from its nodes' records (exact numbers) and the
heatmaps `packet-flow report n1.jsonl n2.jsonl ... -o mesh.png` draws above the flows."""

import json
import math

import pytest

from packet_flow import cli
from packet_flow.report_mesh import pair_matrix

NAMES = ("n1", "n2", "n3")


def rx(src, dst, kind, t, received, lost, p50, p99, session=None):
    return {"type": kind, "role": "receiver", "time": f"2026-12-06T04:00:0{t}.000000Z",
            "run": f"run-{dst}", "source": f"10.0.0.{src[1]}:8000",
            "destination": f"10.0.0.{dst[1]}:8000", "session": session or f"{src}{dst}",
            "source_name": src, "destination_name": dst, "interval_s": 1.0,
            "received": received, "lost": lost, "owd_p50_us": p50, "owd_p99_us": p99,
            "loss_percent": 100.0 * lost / (received + lost)}


def fleet_records():
    """n1..n3 probing each other; n3 -> n1 loses 1 of 7; n2 -> n3 has no summary (killed)."""
    recs = []
    for src in NAMES:
        for dst in NAMES:
            if src == dst:
                continue
            lost = 100 if (src, dst) == ("n3", "n1") else 0
            recs.append(rx(src, dst, "interval", 1, 300 - lost, lost, 40.0, 90.0))
            if (src, dst) == ("n2", "n3"):
                recs.append(rx(src, dst, "interval", 2, 100, 0, 60.0, 120.0))
                continue
            recs.append(rx(src, dst, "summary", 2, 600 - lost, lost, 50.0, 100.0))
    return recs


def test_pair_matrix_exact():
    m = pair_matrix(fleet_records())
    assert m.names == list(NAMES) and len(m.pairs) == 6
    loss = m.grid("loss_percent")
    assert loss[2, 0] == pytest.approx(100 * 100 / 600)            # n3 -> n1: a sixth
    assert [loss[i, j] for i in range(3) for j in range(3) if i != j and (i, j) != (2, 0)] == \
        [0.0] * 5
    assert all(math.isnan(loss[i, i]) for i in range(3))            # no pair with itself
    p50, p99 = m.grid("p50_us"), m.grid("p99_us")
    assert (p50[0, 1], p99[0, 1]) == (50.0, 100.0)                  # from the summary
    assert (p50[1, 2], p99[1, 2]) == (40.0, 120.0) and m.pairs[("n2", "n3")].approx
    assert m.pairs[("n2", "n3")].received == 400                    # intervals summed
    assert pair_matrix([r for r in fleet_records() if r["source_name"] == "n1" and
                        r["destination_name"] == "n2"]) is None     # one pair: not a mesh


def test_report_draws_the_matrix_above_the_flows(tmp_path, capsys):
    files = []
    for node in NAMES:                                # one file per node, as a mesh writes
        path = tmp_path / f"{node}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in fleet_records()
                                if r["destination_name"] == node))
        files.append(str(path))
    png = tmp_path / "mesh.png"
    assert cli.main(["report", *files, "-o", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {png} (1600x") and out.endswith(
        "6 flow(s), the pair matrix of 3 nodes)\n")
    assert png.stat().st_size > 10_000
    assert cli.main(["report", *files]) == 0                  # the text summary of all three
    assert "6 flow(s)" in capsys.readouterr().out
    one = pair_matrix([r for r in fleet_records() if r["destination_name"] == "n1"])
    assert set(one.pairs) == {("n2", "n1"), ("n3", "n1")}      # one node's file: its column
