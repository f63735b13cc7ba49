"""The console sink stays readable at 80 columns with 10 flows, IPv6 addresses and large
numbers, and never prints NaN."""

import io

from packet_flow.sinks.console import ConsoleSink


def _receiver(i, kind="interval"):
    return {"type": kind, "role": "receiver", "time": 1795546800_000000000,
            "source": f"[2001:db8:ffff:ffff::{i:x}]:{40000 + i}",
            "destination": "[2001:db8:ffff:ffff::ffff]:8000", "session": f"{i:016x}",
            "wire": "native", "interval_s": 1.0, "received": 1_000_000 + i, "lost": 99_999,
            "late": 9_999, "duplicates": 9_999, "malformed": 0, "loss_bursts": 123,
            "max_loss_burst": 4567, "loss_burst_hist": {"1": 3}, "loss_percent": 9.09,
            "owd_min_us": -1500.0, "owd_mean_us": 12345.6, "owd_p50_us": 12000.1,
            "owd_p90_us": 15000.0, "owd_p99_us": 987654.3, "owd_p999_us": 1e6,
            "owd_max_us": 2.5e6, "negative_owd": 5, "jitter_us": 1234.5, "ipdv_mean_us": 12.3,
            "ipdv_p99_us": 456.7, "stalled": i % 3 == 0, "closed": False}


def _sender(i, kind="sender"):
    return {"type": kind, "role": "sender", "time": 1795546800_000000000,
            "source": f"[2001:db8:ffff:ffff::{i:x}]:{40000 + i}",
            "destination": "[2001:db8:ffff:ffff::ffff]:8000", "session": f"{i:016x}",
            "wire": "native", "interval_s": 1.0, "sent": 1_500_000, "missed_slots": 12345,
            "skipped_slots": 0, "timer_late_p50_us": 0.1, "timer_late_p99_us": 4.2,
            "timer_late_max_us": 35123.0}


def test_ten_flows_fit_80_columns():
    out = io.StringIO()
    sink = ConsoleSink(out)
    sink.header()
    for i in range(10):
        sink.record(_receiver(i))
        sink.record(_sender(i))
    for i in range(10):
        sink.record(_receiver(i, "summary"))
        sink.record(_sender(i, "summary"))
    sink.close()
    lines = out.getvalue().splitlines()
    assert len(lines) > 10 * 2 + 10 * 5
    assert max(len(line) for line in lines) <= 80
    text = out.getvalue()
    assert "nan" not in text.lower()
    # every flow is still told apart: its port and its session survive
    for i in range(10):
        assert f"{40000 + i}" in text and f"{i:016x}" in text


def test_empty_interval_prints_dashes_not_nan():
    rec = _receiver(1)
    rec.update(received=0, lost=0, loss_percent=0.0, owd_p50_us=None, owd_p99_us=None,
               jitter_us=None)
    out = io.StringIO()
    ConsoleSink(out).record(rec)
    assert "-" in out.getvalue() and "nan" not in out.getvalue().lower()


def test_edges_format_integer_ns_times():
    """Records carry integer ns; the console shows UTC HH:MM:SS, JSON lines RFC 3339 text with
    every microsecond digit (truncated, no float rounding)."""
    import json

    from packet_flow.sinks.jsonl import JsonlSink, rfc3339

    assert rfc3339(1795545715123456789) == "2026-11-24T18:41:55.123456Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    out = io.StringIO()
    ConsoleSink(out).record({**_receiver(1), "time": 1795545715_999_999_999})
    assert out.getvalue().startswith("18:41:55 ")
    sink = JsonlSink("-")
    sink.stream = io.StringIO()
    rec = _receiver(1)
    sink.record(rec)
    assert json.loads(sink.stream.getvalue())["time"] == "2026-11-24T19:00:00.000000Z"
    assert rec["time"] == 1795546800_000000000  # the caller's record is not changed


# value just below / just above each unit boundary, and rounding that crosses one
TIMES_US = [
    (None, "-"), (0.0, "0n"), (0.001, "1n"), (0.812, "812n"),
    (0.9994, "999n"), (0.9996, "1µ"), (1.0, "1µ"), (1.0004, "1µ"), (5.2, "5.2µ"),
    (9.994, "9.99µ"), (9.996, "10µ"), (99.94, "99.9µ"), (99.96, "100µ"),
    (999.4, "999µ"), (999.7, "1m"), (1000.0, "1m"), (1001.0, "1m"), (2500.0, "2.5m"),
    (21400.0, "21.4m"), (999_400.0, "999m"), (999_700.0, "1s"), (1e6, "1s"),
    (3.2e6, "3.2s"), (999.4e6, "999s"), (999.7e6, "1000s"), (12_345e6, "12345s"),
    (-0.5, "-500n"), (-999.7, "-1m"), (-1500.0, "-1.5m"),
]
COUNTS = [
    (None, 6, "-"), (0, 6, "0"), (999_999, 6, "999999"), (1_000_000, 6, "1M"),
    (1_234_567, 6, "1.23M"), (99_999, 5, "99999"), (100_000, 5, "100k"),
    (999_499, 5, "999k"), (999_500, 5, "1M"), (999_499_999, 6, "999M"),
    (999_600_000, 6, "1G"), (1_000_000_000, 6, "1G"), (999_499_999_999, 6, "999G"),
    (999_600_000_000, 6, "1T"), (-99_999, 5, "-100k"), (-1234, 5, "-1234"),
]
PERCENT = [(None, "-"), (0.0, "0.00"), (9.994, "9.99"), (9.996, "10.0"), (99.96, "100.0")]


def test_number_formats_at_every_unit_boundary():
    """Issue 13.5: 999.7 µs was shown as "1e+03µ"."""
    from packet_flow.sinks.console import _n, _pct, _t

    assert [(us, _t(us)) for us, _ in TIMES_US] == TIMES_US
    assert [(v, w, _n(v, w)) for v, w, _ in COUNTS] == COUNTS
    assert [(v, _pct(v)) for v, _ in PERCENT] == PERCENT
    for us, text in TIMES_US:
        assert len(text) <= 6 and "e" not in text, (us, text)
    for v, w, text in COUNTS:
        assert len(text) <= w, (v, text)


def test_rejected_told_once_then_at_most_once_a_minute():
    out = io.StringIO()
    sink = ConsoleSink(out)
    t0 = 1795546800_000000000

    def receiver(dt_s, count):
        sink.record({"type": "receiver", "time": t0 + int(dt_s * 1e9), "overwritten": 0,
                     "kernel_drops": 0, "rejected": [{"source": "127.0.0.1:4000",
                                                      "reason": "bad_tag", "count": count}]})

    receiver(0, 5)
    receiver(30, 7)         # within the minute: counted, not told
    receiver(59, 1)
    receiver(60, 2)         # a minute after the first line: told with what it counted
    receiver(70, 4)         # pending at close: told then
    sink.close()
    lines = out.getvalue().replace("\n         ", " ").splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "rejected 5 datagrams from 127.0.0.1:4000: signed with another key (bad_tag); check "
        "that --key is the same on both ends",
        "rejected 10 datagrams from 127.0.0.1:4000 since 19:00:00: signed with another key "
        "(bad_tag); check that --key is the same on both ends",
        "rejected 4 datagrams from 127.0.0.1:4000 since 19:01:00: signed with another key "
        "(bad_tag); check that --key is the same on both ends"]
