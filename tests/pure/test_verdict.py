"""The verdict logic on hand-made summary records, and the threshold options' validation."""

import pytest

from packet_flow import config, verdict
from packet_flow.errors import ConfigError


def cfg(*args):
    return config.load(["--mode", "both", "--remote-addr", "127.0.0.1:9000",
                        "--local-addr", "127.0.0.1:9000", *map(str, args)], env={})


def flow(**kw):
    rec = {"type": "summary", "role": "receiver", "source": "127.0.0.1:40000",
           "destination": "127.0.0.1:9000", "received": 999, "lost": 1, "loss_percent": 0.1,
           "owd_p99_us": 250.0, "jitter_us": 12.5, "local_drops": 5}
    rec.update(kw)
    return rec


def rtt_sender(**kw):
    rec = {"type": "summary", "role": "sender", "source": "127.0.0.1:40000",
           "destination": "127.0.0.1:9000", "sent": 100, "reflected": 98, "lost": 2,
           "loss_percent": 2.0, "rtt_p99_us": 1500.0, "rtt_jitter_us": 40.0}
    rec.update(kw)
    return rec


def judge(args, *recs, receives=True):
    return verdict.evaluate(verdict.limits(cfg(*args)), recs, receives, "127.0.0.1:9000")


def test_no_thresholds_pass_without_looking():
    v = judge([], flow(lost=10**6))
    assert (v.passed, v.status, v.breaches, v.lines()) == (True, 0, (), [])


def test_loss_as_a_count_and_a_percentage():
    assert judge(["--max-loss", "1"], flow()).passed
    v = judge(["--max-loss", "0"], flow())
    assert v.status == 3
    assert v.lines() == ["packet-flow: threshold --max-loss 0 breached by 127.0.0.1:40000 -> "
                         "127.0.0.1:9000: lost 1"]
    assert judge(["--max-loss", "0.1%"], flow()).passed
    v = judge(["--max-loss", "0.05%"], flow())
    assert v.lines() == ["packet-flow: threshold --max-loss 0.05% breached by 127.0.0.1:40000 "
                         "-> 127.0.0.1:9000: loss 0.1 %"]
    assert v.breaches[0].as_dict() == {
        "threshold": "max-loss", "limit": "0.05%", "field": "loss_percent", "measured": 0.1,
        "source": "127.0.0.1:40000", "destination": "127.0.0.1:9000", "role": "receiver"}


def test_local_drops_are_not_path_loss():
    assert judge(["--max-loss", "0"], flow(lost=0, loss_percent=0.0, local_drops=500)).passed


def test_times_with_units_and_min_received():
    assert judge(["--max-owd-p99", "250us", "--max-jitter", "12.5us"], flow()).passed
    v = judge(["--max-owd-p99", "0.2ms", "--max-jitter", "0.00001", "--min-received", 1000],
              flow())
    assert v.lines() == [
        "packet-flow: threshold --min-received 1000 breached by 127.0.0.1:40000 -> "
        "127.0.0.1:9000: received 999",
        "packet-flow: threshold --max-owd-p99 0.2ms breached by 127.0.0.1:40000 -> "
        "127.0.0.1:9000: owd_p99 250 µs",
        "packet-flow: threshold --max-jitter 0.00001 breached by 127.0.0.1:40000 -> "
        "127.0.0.1:9000: jitter 12.5 µs"]
    v = judge(["--max-owd-p99", "1ms"], flow(owd_p99_us=2_500_000.0))
    assert v.lines()[0].endswith(": owd_p99 2.5 s")


def test_nothing_measured_breaches_and_no_flow_fails():
    v = judge(["--max-owd-p99", "1s"], flow(owd_p99_us=None))
    assert v.lines()[0].endswith(": owd_p99 none")
    v = judge(["--max-loss", "0", "--max-owd-p99", "1s"])
    assert v.lines() == [
        "packet-flow: threshold --max-loss 0 breached: no flow arrived at 127.0.0.1:9000",
        "packet-flow: threshold --max-owd-p99 1s breached: no flow arrived at 127.0.0.1:9000"]


def test_each_flow_is_judged_and_sender_records_only_with_rtt():
    other = flow(source="127.0.0.1:40001", lost=3)
    plain_sender = {"type": "summary", "role": "sender", "sent": 1000}
    v = judge(["--max-loss", "2"], flow(), other, plain_sender)
    assert [b.source for b in v.breaches] == ["127.0.0.1:40001"] and v.judged == 2
    lims = verdict.limits(config.load(["--mode", "sender", "--rtt", "--max-rtt-p99", "1ms",
                                       "--max-loss", "1", "--min-received", "99"], env={}))
    v = verdict.evaluate(lims, [rtt_sender()], False)
    assert v.lines() == [
        "packet-flow: threshold --min-received 99 breached by 127.0.0.1:40000 -> "
        "127.0.0.1:9000 (round trip): reflected 98",
        "packet-flow: threshold --max-loss 1 breached by 127.0.0.1:40000 -> "
        "127.0.0.1:9000 (round trip): lost 2",
        "packet-flow: threshold --max-rtt-p99 1ms breached by 127.0.0.1:40000 -> "
        "127.0.0.1:9000 (round trip): rtt_p99 1.5 ms"]


def test_judge_annotates_summaries_only_with_thresholds():
    out = []
    j = verdict.Judge(cfg("--max-loss", "0"), out.append)
    j.record({"type": "interval", "lost": 1})
    j.record(flow())
    assert "verdict" not in out[0]
    assert out[1]["verdict"] == "fail" and out[1]["breaches"][0]["measured"] == 1
    assert j.verdict().status == 3
    out = []
    j = verdict.Judge(cfg(), out.append)
    j.record(flow())
    assert "verdict" not in out[0] and j.verdict().passed


@pytest.mark.parametrize("args, message", [
    (["--max-loss", "x"], "option --max-loss: value 'x' from cli: not a percentage (like "
     "0.5%) or a count (like 3)"),
    (["--max-loss", "101%"], "option --max-loss: value '101%' from cli: a percentage must be "
     "between 0% and 100%"),
    (["--max-loss", "-1"], "option --max-loss: value '-1' from cli: a count must be 0 or more"),
    (["--max-owd-p99", "5 parsecs"], "option --max-owd-p99: value '5 parsecs' from cli: not a "
     "time (like 5ms, 200us or 1.5s)"),
    (["--min-received", "-1"], "option --min-received: value '-1' from cli: must be at least 0"),
    (["--mode", "sender", "--max-loss", "0"], "option --max-loss: value '0' from cli: needs a "
     "receiving side (--mode receiver, both or reflector) or --rtt"),
    (["--mode", "sender", "--rtt", "--max-owd-p99", "1ms"], "option --max-owd-p99: value "
     "'1ms' from cli: needs a receiving side: --mode receiver, both or reflector, not "
     "'sender'"),
    (["--max-rtt-p99", "1ms"], "option --max-rtt-p99: value '1ms' from cli: needs --rtt "
     "(--mode sender)"),
])
def test_threshold_options_are_checked(args, message):
    with pytest.raises(ConfigError) as e:
        config.load(args, env={})
    assert str(e.value) == message


def test_thresholds_from_a_file_and_print_config_round_trip(tmp_path):
    path = tmp_path / "pf.toml"
    path.write_text('max_loss = "0.5%"\nmax_owd_p99 = "5ms"\nmin_received = 10\n')
    c = config.load(["--config-file", str(path)], env={})
    assert (c.max_loss.percent, c.max_owd_p99.seconds, c.min_received) == (0.5, 0.005, 10)
    from packet_flow import config_render
    again = tmp_path / "again.toml"
    again.write_text(config_render.render_toml(c))
    c2 = config.load(["--config-file", str(again)], env={})
    assert (c2.max_loss, c2.max_owd_p99, c2.min_received) == ("0.5%", "5ms", 10)
