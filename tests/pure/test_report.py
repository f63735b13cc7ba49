"""`packet-flow report`: figure layout, text totals, input errors, missing matplotlib.

Fixtures in tests/data were simulated packet by packet (loss bursts, reordering, duplicates, an
outage with null intervals, negative one-way delays, sender timer hiccups) and aggregated by the
contract's definitions, so every `summary` record is consistent with its intervals.
"""

import builtins
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from packet_flow import report, report_figure, report_text
from packet_flow.errors import ReportError

DATA = Path(__file__).parent.parent / "data"
RUN = DATA / "run_both.jsonl"          # 3 receiver flows, 2 with sender records, summaries
SENDER_ONLY = DATA / "sender_only.jsonl"
KILLED = DATA / "killed.jsonl"         # no summaries, last line cut mid-record
PANELS = ["one-way delay", "loss per interval", "jitter", "sender timer lateness"]


def records(path=RUN):
    return report.load_records(str(path))


def write(tmp_path, text, name="run.jsonl"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def png_size(path):
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def table(text, header_start):
    """Rows (token lists) of the table whose header line starts with `header_start`."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.split()[:2] == ["#", header_start])
    rows = []
    for ln in lines[i + 1:]:
        if not ln.strip():
            break
        rows.append(ln.split())
    return rows


# ---------------------------------------------------------------- figure


def test_figure_has_a_row_of_panels_per_flow(tmp_path):
    fig = report_figure.build_figure(records())
    assert len(fig.subfigs) == 3
    assert len(fig.axes) == 3 * 4
    w, h = report_figure.figure_size_px(3)
    assert (w, h) == (1600, 1020)
    assert tuple(round(x) for x in fig.get_size_inches() * fig.dpi) == (w, h)
    for row in fig.subfigs:
        assert [ax.get_title() for ax in row.axes] == PANELS
    labels = [row._suptitle.get_text() for row in fig.subfigs]
    assert labels[0].startswith("127.0.0.1:40001 -> 127.0.0.1:8000")
    assert labels[1].startswith("[::1]:40002 -> [::1]:8000")
    assert "743 lost (24.767 %), longest burst 739" in labels[2]
    assert all(ax.get_xlabel().startswith("time since 18:41:00 UTC")
               for ax in fig.subfigs[-1].axes)
    # all panels share one time axis covering the run
    assert fig.axes[0].get_xlim() == fig.axes[-1].get_xlim() == pytest.approx((0.0, 30.0), abs=1e-3)
    out = tmp_path / "report.png"
    fig.savefig(out, dpi=fig.dpi)
    assert png_size(out) == (w, h)


def test_figure_draws_the_interval_values():
    recs = records()
    fig = report_figure.build_figure(recs)
    flow3 = [r for r in recs if r["type"] == "interval" and r["source"] == "10.0.0.2:5555"]
    delay, loss, jitter, timer = fig.subfigs[2].axes
    p50 = next(ln for ln in delay.get_lines() if ln.get_label() == "OWD p50")
    y = np.asarray(p50.get_ydata(), dtype=float)
    nulls = [r["owd_p50_us"] is None for r in flow3]
    assert sum(nulls) == 7                           # the outage intervals are gaps
    assert np.array_equal(np.isnan(y), nulls)
    div = 1e3 if delay.get_ylabel() == "OWD (ms)" else 1.0
    np.testing.assert_allclose(y[~np.isnan(y)] * div,
                               [r["owd_p50_us"] for r in flow3 if r["owd_p50_us"] is not None])
    bars = [p.get_height() for p in loss.containers[0]]
    np.testing.assert_allclose(bars, [r["loss_percent"] for r in flow3])
    texts = [t.get_text() for t in loss.texts]
    assert texts == ["burst 739"]
    assert any("124 negative OWD" in t.get_text() for t in delay.texts)
    assert [t.get_text() for t in timer.texts] == ["no sender records"]
    legend = [t.get_text() for t in loss.get_legend().get_texts()]
    assert "stalled" in legend and "longest burst (marker size)" in legend
    # sender timer lateness for flow 2: the 61 ms hiccup is the max point
    timer2 = fig.subfigs[1].axes[3]
    mx = next(ln for ln in timer2.get_lines() if ln.get_label() == "late max")
    assert timer2.get_ylabel() == "lateness (ms)"
    assert np.nanmax(mx.get_ydata()) == pytest.approx(61.0)
    assert any("skipped 5" in t.get_text() for t in timer2.texts)


def test_figure_without_sender_records_has_three_panels():
    recs = [r for r in records() if r["role"] != "sender"]
    fig = report_figure.build_figure(recs)
    assert len(fig.axes) == 3 * 3
    assert [ax.get_title() for ax in fig.subfigs[0].axes] == PANELS[:3]


def test_figure_sender_only_run():
    fig = report_figure.build_figure(records(SENDER_ONLY))
    assert len(fig.axes) == 4
    assert tuple(round(x) for x in fig.get_size_inches() * fig.dpi) == report_figure.figure_size_px(1)
    assert [t.get_text() for ax in fig.axes[:3] for t in ax.texts] == ["no receiver records"] * 3


def test_figure_uses_rtt_fields_when_present():
    recs = [r for r in records() if r["role"] != "sender"]
    for r in recs:
        for q in ("min", "p50", "p99", "max"):
            r[f"rtt_{q}_us"] = None if r.get(f"owd_{q}_us") is None else 2 * r[f"owd_{q}_us"] + 50
    ax = report_figure.build_figure(recs).axes[0]
    assert ax.get_title() == "round-trip time"
    assert ax.get_ylabel().startswith("RTT")


def test_sender_records_join_their_flow_by_session():
    recs = records()
    for r in recs:
        if r["role"] == "sender":
            r["source"] = "0.0.0.0:" + r["source"].rsplit(":", 1)[1]
    flows = report.group_flows(recs)
    assert len(flows) == 3
    assert [len(f.senders) for f in flows] == [30, 30, 0]
    assert flows[0].sender_summary["sent"] == 3000


def test_main_writes_png(tmp_path, capsys):
    out = tmp_path / "report.png"
    assert report.main([str(RUN), "-o", str(out)]) == 0
    assert png_size(out) == report_figure.figure_size_px(3)
    assert "1600x1020 px, 3 flow(s)" in capsys.readouterr().out


# ---------------------------------------------------------------- text


def test_text_summary_matches_summary_totals():
    recs = records()
    text = report_text.text_summary(recs)
    rx = [r for r in recs if r["type"] == "summary" and r["role"] == "receiver"]
    rows = table(text, "received")
    assert len(rows) == len(rx) == 3
    for i, (row, s) in enumerate(zip(rows, rx, strict=True), 1):
        assert row == [str(i), f"{s['received']:,}", f"{s['lost']:,}",
                       f"{s['loss_percent']:.3f}", f"{s['late']:,}", f"{s['duplicates']:,}",
                       f"{s['loss_bursts']:,}", f"{s['max_loss_burst']:,}"]
    delay = table(text, "delay")
    assert delay[0] == ["1", "OWD", "19.8us", "30.0us", "71.0us", "2.79ms", "0", "6.9us",
                        "60.8us"]
    assert delay[2][2] == "-9.4us" and delay[2][6] == "124"
    tx = [r for r in recs if r["type"] == "summary" and r["role"] == "sender"]
    senders = table(text, "sent")
    assert [row[:4] for row in senders] == [
        [str(i), f"{s['sent']:,}", f"{s['missed_slots']:,}", f"{s['skipped_slots']:,}"]
        for i, s in zip((1, 2), tx, strict=True)]
    assert senders[1][6] == "61.00ms"
    assert "[closed]" in text.splitlines()[2]
    assert "*" not in text and "~" not in text


def test_text_summary_takes_totals_from_summary_not_intervals():
    recs = records()
    s = next(r for r in recs if r["type"] == "summary")
    s["received"], s["lost"], s["loss_percent"] = 123_456_789, 1_000, 0.000809
    row = table(report_text.text_summary(recs), "received")[0]
    assert row[1:4] == ["123,456,789", "1,000", "8.1e-04"]   # tiny loss is not shown as 0.000


def test_text_summary_of_killed_run_sums_intervals(caplog):
    with caplog.at_level(logging.WARNING, logger="packet_flow.report"):
        recs = records(KILLED)
    assert len(recs) == 8
    assert "killed.jsonl:9: dropped a truncated last line" in caplog.text
    text = report_text.text_summary(recs)
    row = table(text, "received")[0]
    rec, lost = sum(r["received"] for r in recs), sum(r["lost"] for r in recs)
    assert row[1:3] == [f"{rec:,}", f"{lost:,}"]
    assert row[3] == f"{100 * lost / (rec + lost):.3f}"
    assert "[*]" in text and "no summary record" in text
    assert table(text, "delay")[0][3].startswith("~")


def test_text_summary_sender_only():
    text = report_text.text_summary(records(SENDER_ONLY))
    s = records(SENDER_ONLY)[-1]
    assert table(text, "sent")[0][:4] == ["1", f"{s['sent']:,}", "8", "5"]
    assert "received" not in text


def _ten_flows():
    recs = []
    for i in range(10):
        src = f"[2001:db8:aaaa:bbbb:cccc:dddd:eeee:{i:04x}]:{40000 + i}" if i % 2 else \
              f"192.168.100.{i + 10}:{40000 + i}"
        dst = "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:8000" if i % 2 else "192.168.100.1:8000"
        for kind in ("interval", "summary"):
            recs.append({"type": kind, "role": "receiver", "time": "2026-11-24T18:42:00Z",
                         "source": src, "destination": dst, "session": f"{i:016x}",
                         "interval_s": 60.0, "received": 3_599_999_000 + i, "lost": 1000 - i,
                         "late": 12_345_678, "duplicates": 1_234_567, "loss_bursts": 999_999,
                         "max_loss_burst": 123_456, "loss_percent": 0.0000277,
                         "owd_min_us": -12_345.6, "owd_p50_us": 123_456.7,
                         "owd_p99_us": 9_999_999.0, "owd_max_us": 12_345_678.9,
                         "negative_owd": 99_999, "jitter_us": 1234.5, "ipdv_p99_us": None})
        recs.append({"type": "summary", "role": "sender", "time": "2026-11-24T18:42:00Z",
                     "source": src, "destination": dst, "session": f"{i:016x}",
                     "interval_s": 60.0, "sent": 3_600_000_000, "missed_slots": 12_345_678,
                     "skipped_slots": 1_234_567, "timer_late_p50_us": 9.1,
                     "timer_late_p99_us": 150.0, "timer_late_max_us": 2_500_000.0})
    return recs


def test_text_summary_fits_80_columns_with_10_flows():
    text = report_text.text_summary(_ten_flows())
    assert max(len(ln) for ln in text.splitlines()) <= 80
    assert len(table(text, "received")) == len(table(text, "delay")) == 10
    assert len(table(text, "sent")) == 10
    assert "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:0009]:40009" in text
    assert table(text, "received")[9][1:4] == ["3,599,999,009", "991", "2.8e-05"]
    assert table(text, "sent")[0] == ["1", "3,600,000,000", "12,345,678", "1,234,567",
                                      "9.1us", "150.0us", "2.50s"]


# ---------------------------------------------------------------- input errors


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("\n\n  \n", "no interval, sender or summary records"),
    ('{"type": "interval", "role": "receiver", "time": "2026-11-24T18:4', "truncated"),
    ("hello world\n", "not JSON"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text file"),
    ("[1, 2, 3]\n", "not a packet-flow record"),
    ('{"time": "2026-11-24T18:41:00Z"}\n', "not a packet-flow record"),
    ('{"type": "interval", "time": "yesterday"}\n', "bad or missing 'time'"),
    ('{"type": "receiver", "time": "2026-11-24T18:41:00Z"}\n',
     "no interval, sender or summary records"),
])
def test_unusable_input_raises_report_error(tmp_path, content, message):
    with pytest.raises(ReportError, match=message):
        report.load_records(write(tmp_path, content))


def test_garbled_line_in_the_middle_names_its_line(tmp_path):
    lines = RUN.read_text().splitlines(keepends=True)
    lines[41] = lines[41][:100] + "\n"             # a torn write, followed by more records
    path = write(tmp_path, "".join(lines))
    with pytest.raises(ReportError, match=r"run.jsonl:42: not JSON .*truncated or garbled"):
        report.load_records(path)


def test_truncated_file_is_an_error_when_strict(tmp_path):
    with pytest.raises(ReportError, match=r"killed.jsonl:9: not JSON"):
        report.load_records(str(KILLED), strict=True)
    with pytest.raises(ReportError, match=r":9: not JSON"):
        report.main([str(KILLED), "--strict"])
    # a complete last line without its newline is fine
    text = RUN.read_text().rstrip("\n")
    assert len(report.load_records(write(tmp_path, text))) == 185


def test_missing_file_and_bad_number(tmp_path):
    with pytest.raises(ReportError, match="cannot read .*nope.jsonl"):
        report.main([str(tmp_path / "nope.jsonl")])
    rec = json.loads(RUN.read_text().splitlines()[0])
    rec["owd_p50_us"] = "fast"
    with pytest.raises(ReportError, match="'owd_p50_us' is not a number"):
        report_figure.build_figure([rec])


def test_unwritable_output(tmp_path):
    with pytest.raises(ReportError, match="cannot write"):
        report.main([str(RUN), "-o", str(tmp_path / "no" / "dir" / "r.png")])


# ---------------------------------------------------------------- command


def test_main_prints_text_summary(capsys):
    assert report.main([str(RUN)]) == 0
    out = capsys.readouterr().out
    assert out == report_text.text_summary(records())
    assert out.startswith("packet-flow run 2026-11-24 18:41:00 UTC, 30.0 s, 3 flow(s)")


def test_without_matplotlib_returns_2_with_install_hint(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = tmp_path / "report.png"
    assert report.main([str(RUN), "-o", str(out)]) == 2
    assert "pip install '.[plot]' (in the clone) or: pip install matplotlib" in \
        capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ImportError):
        report_figure.build_figure(records())
    # the text summary does not need matplotlib
    assert report.main([str(RUN)]) == 0


def test_recorded_loopback_run_with_injected_loss(tmp_path):
    """A real run (both mode, SIGUSR1 bursts; the README's example figure)."""
    path = Path(__file__).parent.parent / "data" / "loopback_injected_loss.jsonl"
    records = report.load_records(str(path), strict=True)
    fig = report_figure.build_figure(records)
    assert len(fig.axes) == 4
    w, h = (fig.get_size_inches() * fig.dpi).round().astype(int)
    assert (w, h) == report_figure.figure_size_px(1)
    (rx,) = [r for r in records if r["type"] == "summary" and r["role"] == "receiver"]
    text = report_text.text_summary(records)
    assert f"{rx['received']:,}" in text and f"{rx['lost']:,}" in text
    assert rx["lost"] > 0 and rx["late"] == 0 and rx["max_loss_burst"] > 1
    out = tmp_path / "r.png"
    assert report.main([str(path), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_legends_sit_above_their_panels():
    """Issue 23 §1: a legend inside the panel hid the |IPDV| p99 line and OWD max dots."""
    fig = report_figure.build_figure(records())
    renderer = fig.canvas.get_renderer()
    legends = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        legends += 1
        box, panel = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.y0 >= panel.y1 - 1, ax.get_title()
        assert ax.title.get_window_extent(renderer).y0 >= box.y1 - 1, ax.get_title()
    assert legends == 11        # 3 flows x 4 panels, one without sender records


def test_files_without_run_ids_still_report_and_list(tmp_path, capsys):
    """A file written before run ids, with a newer run appended: two runs, the old one `-`."""
    old = RUN.read_text()
    new = "".join(json.dumps(dict(json.loads(line), run="20261206T000000Z-beef")) + "\n"
                  for line in SENDER_ONLY.read_text().splitlines())
    path = tmp_path / "mixed.jsonl"
    path.write_text(old + new)
    assert report.main([str(path), "--list-runs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listed[1:3]] == [["1", "-"],
                                                          ["2", "20261206T000000Z-beef"]]
    assert listed[3] == "  - = records without a run id (written before packet-flow had them)"
    assert report.main([str(path), "--run", "1"]) == 0
    assert capsys.readouterr().out == report_text.text_summary(records(), (1, 2, None))
    assert report_text.text_summary(records()).splitlines()[1] == ""    # one run: no run line
