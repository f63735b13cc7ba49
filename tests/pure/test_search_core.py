"""The search's pure core: the answer's golden bytes, trial verdicts (only path loss counts),
and the bisection against a model link (a loss threshold, an unstable rate, a host limit)."""

import pytest

from packet_flow import wire
from packet_flow.errors import ConfigError, WireError
from packet_flow.rate_search import Bisection, Trial, bit_rates, ratio


def test_answer_golden():
    data = wire.encode_answer(0x0102030405060708, 9, 10, 11, 12, 13)
    assert data == bytes.fromhex(
        "50460110" "00000000" "0807060504030201" "0900000000000000" "0a00000000000000"
        "0b00000000000000" "0c00000000000000" "0d00000000000000")
    assert len(data) == wire.ANSWER_SIZE == 56
    assert wire.decode_answer(data) == wire.Answer(0x0102030405060708, 9, 10, 11, 12, 13)
    signed = wire.encode_answer(1, 2, 3, 4, 5, 6, key=b"k")
    assert len(signed) == 56 + 16 and signed[3] == wire.FLAG_ANSWER | wire.FLAG_AUTH
    assert wire.decode_answer(signed, b"k").received == 4
    with pytest.raises(WireError, match="bad_tag"):
        wire.decode_answer(signed, b"other")
    with pytest.raises(WireError, match="no_tag"):
        wire.decode_answer(data, b"k")
    with pytest.raises(WireError, match="not_answer"):
        wire.decode_answer(wire.encode_native(1, 2, 3, size=56))


def _trial(rate, phase="short", sent=1000, received=1000, local=0, missed=0, skipped=0,
           achieved=None):
    return Trial(rate, 1.0, phase, sent, received, sent - received - local, local, missed,
                 skipped, rate if achieved is None else achieved)


def test_verdicts_count_only_path_loss():
    assert _trial(10).verdict() == "pass"
    assert _trial(10, received=999).verdict() == "loss"
    assert _trial(10, received=999).verdict(0.005) == "pass"
    assert _trial(10, received=990, local=10).verdict() == "receiver-limited"
    assert _trial(10, received=990, skipped=1).verdict() == "sender-limited"
    assert _trial(10, missed=101).verdict() == "sender-limited"
    assert _trial(10, achieved=9.8).verdict() == "sender-limited"
    # slots sent late go out in bursts: loss no larger than them is not the path's
    assert _trial(10, received=990, missed=10).verdict() == "sender-limited"
    assert _trial(10, received=990, missed=9).verdict() == "loss"
    assert _trial(10, missed=50).verdict() == "pass"
    assert Trial(10, 1, "short", 10, 0, 0, 0, 0, 0, 10, answered=False).verdict() == "no-answer"


def _run(bis, link, limit=60):
    """Drive a Bisection against link(rate, phase) -> Trial; returns the trials."""
    trials = [link(1000, "short")]
    bis.add(trials[0])
    while (nxt := bis.next()) is not None:
        trials.append(link(*nxt))
        bis.add(trials[-1])
        assert len(trials) < limit
    return trials


def test_bisection_finds_the_threshold_within_precision():
    def link(rate, phase):      # a path that loses everything above 20 000 packets/s
        return _trial(rate, phase, received=1000 if rate <= 20_000 else 990)
    bis = Bisection(0.0, 1_000_000, 0.01)
    trials = _run(bis, link)
    res = bis.result(64)
    assert 19_800 <= res["rate"] <= 20_000 and res["limited_by"] is None
    assert trials[-1].phase == "full" and trials[-1].rate == res["rate"]
    assert res["bits_per_s"] == bit_rates(res["rate"], 64)
    assert len(trials) == 16


def test_short_trials_too_kind_are_corrected_at_full_length():
    # a queue hides loss in short trials up to 21 000; full-length trials see the 20 000 limit
    def link(rate, phase):
        return _trial(rate, phase, received=1000 if rate <= (20_000 if phase == "full"
                                                              else 21_000) else 990)
    bis = Bisection(0.0, 1_000_000, 0.01)
    trials = _run(bis, link)
    res = bis.result(64)
    assert 19_800 <= res["rate"] <= 20_000
    # the contradicting full trial was repeated before the bound moved
    fails = [t.rate for t in trials if t.phase == "full" and t.lost]
    assert fails[0] == fails[1]


def test_host_limit_is_named_not_reported_as_the_path():
    def link(rate, phase):      # the receiver drops above 50 000, the path never does
        return _trial(rate, phase, received=1000 if rate <= 50_000 else 900,
                      local=0 if rate <= 50_000 else 100)
    bis = Bisection(0.0, 1_000_000, 0.01)
    _run(bis, link)
    res = bis.result(64)
    assert res["rate"] is None and res["limited_by"] == "receiver"
    assert 49_500 <= res["at_least"] <= 50_000 < res["limit_rate"] <= 50_500


def test_pdr_allows_its_loss_ratio():
    def link(rate, phase):      # loss grows 1 % per 1000 packets/s above 10 000
        lost = max(0, int((rate - 10_000) / 1000 * 10))
        return _trial(rate, phase, received=1000 - min(lost, 1000))
    bis = Bisection(0.05, 1_000_000, 0.01)
    _run(bis, link)
    assert 14_850 <= bis.result(64)["rate"] < 15_100     # 50 of 1000 lost up to 15 099


def test_framing_and_ratio():
    # 64 bytes of payload: 72 UDP, 92 IP, 110 Ethernet with FCS, 130 with preamble and gap
    assert bit_rates(1000, 64) == {"udp": 576_000, "ip": 736_000, "ethernet": 880_000,
                                   "wire": 1_040_000}
    assert ratio("0.5%") == 0.005 and ratio("0.01") == 0.01
    with pytest.raises(ConfigError, match="--max-loss"):
        ratio("2")
