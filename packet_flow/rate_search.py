"""The highest rate a path carries without loss (NDR) and with at most --max-loss (PDR):
`packet-flow search` and packet_flow.search() (docs/search.md; the module is not named
`search`, which would shadow the function on the package).

Rules:
- Trials at fixed rates (RFC 2544 §26.1; the MLRsearch draft): a handshake trial at the
  lowest rate (it must be answered), one at the sender's top rate, then bisection between
  the highest rate that passed and the lowest that did not, with short trials, until the
  bounds are within `precision` of the upper one; then full-length trials: the lower bound is
  confirmed, and a full trial that contradicts a short one is repeated (two of three agree).
  A bound that fails at full length goes back to bisection with full-length trials.
- A trial's outcome comes from the far end: a packet-flow receiver answers the trial's FINAL
  with its counts (wire.encode_answer; signed with --key). A peer that never answers the
  handshake, or an answer that cannot be right (more received than sent, a bad tag), ends
  the search with SearchError: no figure is invented. After a first answer, an unanswered
  trial lost its FINAL on the path: it fails.
- Only path loss counts: sent - received - local_drops. A trial where the receiver dropped
  packets itself (local_drops) is `receiver-limited`; one where the sender skipped a slot,
  sent more than SENDER_MISSED_MAX of them a slot late or more, kept a rate more than
  SENDER_SLOW_MAX below the trial's, or lost no more packets than it sent late (the late
  ones go out in bursts, which may be all the path dropped) is `sender-limited`: an upper
  bound of the
  search, never a path result. When the search ends against such a bound it names the host,
  and the path's figure is only "at least" the highest rate that passed.
- A sender-limited trial is run again up to SEARCH_SENDER_RETRIES times (a late wake-up is
  chance, a host's limit repeats); every trial is in the table, the last one counts.
- The core (Trial.verdict, Bisection) is pure: no socket, no clock.
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import sys
import time

from packet_flow import _io, config, defaults, wire
from packet_flow.errors import ConfigError, SearchError, WireError

HOST_LIMITS = ("sender-limited", "receiver-limited")
# bytes below the UDP payload on the wire: UDP, IP, Ethernet header + FCS, preamble + gap
FRAMING = {"udp": 8, "ip": 20, "ethernet": 18, "wire": 20}


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial at a fixed rate and its outcome (verdict: pass, loss, no-answer,
    sender-limited, receiver-limited; `loss_ratio` is path loss over sent)."""

    rate: float
    duration: float
    phase: str                  # short | full
    sent: int
    received: int
    lost: int                   # path loss: sent - received - local_drops
    local_drops: int
    missed_slots: int
    skipped_slots: int
    achieved: float             # packets/s the sender kept: sent over the time it took
    answered: bool = True

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.sent if self.sent else 0.0

    def verdict(self, max_loss: float = 0.0) -> str:
        if (self.skipped_slots or self.missed_slots > defaults.SENDER_MISSED_MAX * self.sent
                or self.achieved < self.rate * (1 - defaults.SENDER_SLOW_MAX)
                or 0 < self.lost <= self.missed_slots):
            return "sender-limited"
        if self.local_drops:
            return "receiver-limited"
        if not self.answered:
            return "no-answer"
        return "pass" if self.lost <= max_loss * self.sent else "loss"

    def as_dict(self, max_loss: float = 0.0) -> dict:
        out = dataclasses.asdict(self)
        out.update(rate=round(self.rate, 1), achieved=round(self.achieved, 1),
                   verdict=self.verdict(max_loss))
        return out


class Bisection:
    """The bounds of one loss target (max_loss 0: NDR) from trials; pure."""

    def __init__(self, max_loss, top, precision):
        self.max_loss, self.top, self.precision = max_loss, top, precision
        self.lo = 0.0               # highest rate that passed (at full length once `full`)
        self.hi = None              # lowest rate that did not pass
        self.hi_verdict = None
        self.full = False
        self.short_pass = set()
        self.votes: dict[float, list[bool]] = {}
        self.confirmed = None       # the rate a full-length trial (or vote) passed last
        self.step = 2 * precision   # below a failed full trial with nothing confirmed under it

    def add(self, trial: Trial) -> None:
        verdict = trial.verdict(self.max_loss)
        ok = verdict == "pass"
        if trial.phase == "short":
            if ok:
                self.lo = max(self.lo, trial.rate)
                self.short_pass.add(trial.rate)
            else:
                self._fail(trial.rate, verdict)
            return
        votes = self.votes.setdefault(trial.rate, [])
        votes.append(ok)
        if ok and len(votes) == 1 or votes.count(True) >= 2:
            self.lo = max(self.lo, trial.rate)
            self.confirmed = trial.rate
        elif not ok and (votes.count(False) >= 2 or trial.rate not in self.short_pass
                         or verdict in HOST_LIMITS):
            self._fail(trial.rate, verdict)
            # back to bisection at full length from what full trials confirmed, else step
            # down from the failed rate in doubling steps
            if self.confirmed is not None and self.confirmed < trial.rate:
                self.lo = self.confirmed
            else:
                if not self.lo:
                    self.step *= 2
                self.lo = 0.0

    def _fail(self, rate, verdict):
        if self.hi is None or rate <= self.hi:
            self.hi, self.hi_verdict = rate, verdict

    def _close(self):
        return self.hi is not None and self.hi - self.lo <= self.precision * self.hi

    def next(self):
        """(rate, phase) of the next trial, or None when the search is done."""
        if self.hi is None and self.top not in self.short_pass and not self.votes:
            return self.top, "short"
        if not self.full and (self._close() or self.hi is None):
            self.full = True
        if not self.full:
            return (self.lo + self.hi) / 2, "short"
        pending = self.votes.get(self.lo)
        if self.lo and (pending is None or (self.confirmed != self.lo and pending
                                             and pending.count(False) < 2)):
            return self.lo, "full"
        if self._close() or self.hi is None:
            return None
        if not self.lo:
            return self.hi * max(1 - self.step, 0.01), "full"
        return (self.lo + self.hi) / 2, "full"

    def result(self, size, family=socket.AF_INET) -> dict:
        """The target's figure: `rate` (packets/s) and its bit rates, or None with the host
        that limited the search (`limited_by`, `limit_rate`) and `at_least` (what passed)."""
        limited = self.hi_verdict in HOST_LIMITS
        out = {"max_loss": self.max_loss, "rate": None if limited or not self.lo else self.lo,
               "at_least": self.lo, "limited_by": self.hi_verdict.split("-")[0] if limited
               else None, "limit_rate": self.hi, "at_max_rate": self.hi is None}
        if out["rate"]:
            out["bits_per_s"] = bit_rates(out["rate"], size, family)
        return out


def bit_rates(rate, size, family=socket.AF_INET) -> dict:
    """bit/s of `rate` packets of `size` payload bytes counted at each framing: UDP (payload
    + 8), IP (+ 20, IPv6 40), Ethernet (+ 14 header + 4 FCS), wire (+ 20 preamble and gap)."""
    ip = 40 if family == socket.AF_INET6 else FRAMING["ip"]
    per = {"udp": size + 8}
    per["ip"] = per["udp"] + ip
    per["ethernet"] = per["ip"] + FRAMING["ethernet"]
    per["wire"] = per["ethernet"] + FRAMING["wire"]
    return {k: round(rate * v * 8) for k, v in per.items()}


def ratio(text) -> float:
    """--max-loss as a ratio: 0.005 or 0.5%."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        value = -1
    if not 0 <= value < 1:
        raise ConfigError(f"option --max-loss: {text!r} (command line) is not a loss ratio "
                          "from 0 to below 1 (0.005 or 0.5%)")
    return value


class Trials:
    """The I/O edge: runs trials from one socket and reads each trial's answer."""

    def __init__(self, argv, answer_s, reflector=False):
        self.argv = list(argv) + (["--rtt"] if reflector else [])
        self.reflector = reflector
        self.cfg = config.load([*self.argv, "--mode=sender", "--count=2"], env={})
        cfg = self.cfg
        if cfg.wire != "native":
            raise ConfigError(f"option --wire: {cfg.wire!r}: search needs native packets "
                              "(the receiver's answer is a native packet)")
        need = wire.ANSWER_SIZE + (_io.TAG if cfg.key else 0)
        if cfg.size < need:
            raise ConfigError(f"option --size: {cfg.size} (command line): search needs packets "
                              f"of at least {need} bytes (the receiver's answer is never "
                              "longer than the packet it answers)")
        from packet_flow import sockets
        self.sock = sockets.send_socket(cfg.remote.family, cfg.dscp, cfg.ttl)
        self.answer_s = answer_s
        self.answered = 0

    def run(self, rate, duration, phase) -> Trial:
        """One trial: segments of at most SEARCH_SEGMENT_S, each its own flow and answer,
        SEARCH_PAUSE_S apart; their counts summed. The sender runs at SCHED_FIFO with the
        precise timer (a sender preempted into bursts would blame the path for its
        lateness); the pauses keep it under the kernel's real-time throttling
        (sched_rt_runtime_us: 0.95 s a second), which would stall it for 50 ms."""
        n = max(1, math.ceil(duration / defaults.SEARCH_SEGMENT_S - 1e-9))
        parts = []
        for i in range(n):
            if i:
                time.sleep(defaults.SEARCH_PAUSE_S)
            parts.append(self._segment(rate, duration / n, phase))
        if len(parts) == 1:
            return parts[0]
        sums = {f: sum(getattr(p, f) for p in parts) for f in
                ("sent", "received", "lost", "local_drops", "missed_slots", "skipped_slots")}
        return Trial(rate, duration, phase, **sums,
                     achieved=min(p.achieved for p in parts),
                     answered=all(p.answered for p in parts))

    def _segment(self, rate, duration, phase) -> Trial:
        from packet_flow.sender import SenderLoop, precise_timer
        count = max(2, round(rate * duration))
        # no record tick inside a trial: its Python work would delay slots into a burst
        cfg = config.load([*self.argv, "--mode=sender", f"--rate={1000 / rate!r}",
                           f"--count={count}", f"--interval={duration + 1:g}"], env={})
        summary = {}
        loop = SenderLoop(cfg, lambda rec: summary.update(rec) if rec.get("type") ==
                          "summary" else None, sock=self.sock)
        with precise_timer(True):
            loop.run()
        sent = int(summary.get("sent", loop.sent))
        if self.reflector:
            return self._reflected(summary, rate, duration, phase, sent)
        answer = self._answer(loop.session, rate)
        missed, skipped = int(summary.get("missed_slots", 0)), int(summary.get("skipped_slots",
                                                                                0))
        # the FINAL goes on slot sent - 1: the schedule took (sent - 1) / rate when kept
        took = summary.get("interval_s") or 0
        achieved = (sent - 1) / took if took > 0 else rate
        if answer is None:
            return Trial(rate, duration, phase, sent, 0, 0, 0, missed, skipped, achieved,
                         answered=False)
        if answer.received + answer.local_drops > sent or answer.lost > sent:
            raise SearchError(f"an answer from {cfg.remote} cannot be right: {answer.received} "
                              f"received and {answer.local_drops} dropped by the receiver of "
                              f"{sent} sent (trial at {rate:.0f} packets/s); no result")
        self.answered += 1
        return Trial(rate, duration, phase, sent, answer.received,
                     sent - answer.received - answer.local_drops, answer.local_drops, missed,
                     skipped, achieved)

    def _reflected(self, summary, rate, duration, phase, sent) -> Trial:
        """A segment's outcome from a reflector's replies: forward loss from the reflector's
        sequence (as --rtt reports it); packets after the last reply count as lost. The
        reflector's own drops cannot be told from the path's."""
        missed, skipped = int(summary["missed_slots"]), int(summary["skipped_slots"])
        # interval_s includes the wait for the last replies: the schedule's own time is its
        # length plus the latest slot's lateness
        took = (sent - 1) / rate + (summary.get("timer_late_max_us") or 0) / 1e6
        achieved = (sent - 1) / took if took > 0 else rate
        if not summary.get("reflected"):
            if not self.answered:
                raise SearchError(f"no reply from {self.cfg.remote} to a trial at {rate:.0f} "
                                  "packets/s: is `packet-flow --mode reflector` listening "
                                  "there, with the same --key?")
            return Trial(rate, duration, phase, sent, 0, 0, 0, missed, skipped, achieved,
                         answered=False)
        self.answered += 1
        lost = int(summary["forward_lost"]) + int(summary["unattributed_lost"])
        return Trial(rate, duration, phase, sent, sent - lost, lost, 0, missed, skipped,
                     achieved)

    def _answer(self, session, rate):
        """The receiver's answer to this trial's FINAL, None when none came in time."""
        cfg = self.cfg
        until = time.monotonic() + self.answer_s
        while (left := until - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(2048)
            except (TimeoutError, BlockingIOError):
                break
            try:
                answer = wire.decode_answer(data, cfg.key)
            except WireError as exc:
                if exc.args[0] in ("no_tag", "bad_tag"):
                    raise SearchError(f"the answer from {cfg.remote} failed authentication "
                                      f"({exc.args[0]}): its --key differs; no result") from None
                continue                    # not an answer: not ours to judge
            if answer.session == session:
                return answer
        if not self.answered:
            raise SearchError(f"no answer from {cfg.remote} within {self.answer_s:g} s of the "
                              f"final packet of a trial at {rate:.0f} packets/s: is a "
                              "packet-flow receiver listening there, with the same --key?")
        return None

    def close(self):
        self.sock.close()


@dataclasses.dataclass
class SearchResult:
    """The trials in order, the NDR and (with max_loss) the PDR as Bisection.result()."""

    size: int
    precision: float
    trials: list[Trial]
    ndr: dict
    pdr: dict | None
    max_loss: float

    def as_dict(self) -> dict:
        return {"type": "search", "size": self.size, "precision": self.precision,
                "framing": "bits_per_s counts each packet at udp (payload + 8), ip (+ 20 "
                           "IPv4 / 40 IPv6), ethernet (+ 14 header + 4 FCS) and wire (+ 20 "
                           "preamble and inter-frame gap)",
                "trials": [t.as_dict(self.max_loss) for t in self.trials],
                "ndr": self.ndr, "pdr": self.pdr}


def search(*, max_loss=None, precision=defaults.SEARCH_PRECISION,
           max_rate=defaults.SEARCH_MAX_RATE, min_rate=defaults.SEARCH_MIN_RATE,
           trial_duration=defaults.SEARCH_TRIAL_S, short_duration=None,
           max_trials=defaults.SEARCH_MAX_TRIALS, answer_timeout=defaults.SEARCH_ANSWER_S,
           progress=None, argv=None, reflector=False, **options) -> SearchResult:
    """Search the NDR (and with max_loss the PDR) to options["remote_addr"], where a
    packet-flow receiver runs. Other options are the probe's long names with `_` (size=,
    key=, dscp=...), or `argv` command-line words instead. reflector=True: the far end is
    `packet-flow --mode reflector`, and a trial's outcome is --rtt's forward loss. progress(trial) is called after
    every trial. Raises SearchError when
    the peer never answers or answers what cannot be right, ConfigError for bad options."""
    from packet_flow.api import _words
    words = [f"--size={defaults.SEARCH_SIZE}", "--timer=precise",
             *(_words(options) if argv is None else argv)]
    pdr_loss = ratio(max_loss) if max_loss is not None else None
    short = short_duration or min(defaults.SEARCH_SHORT_S,
                                  trial_duration / defaults.SEARCH_SHORT_DIVISOR)
    trials = Trials(words, answer_timeout, reflector)
    done: list[Trial] = []          # every trial, as the table shows them
    counted: list[Trial] = []       # the trials the bounds come from

    def step(rate, duration, phase):
        # a sender late by chance is tried again (SEARCH_SENDER_RETRIES) before its limit
        # bounds the search: a host's hiccup is not its limit
        for _ in range(1 + defaults.SEARCH_SENDER_RETRIES):
            if len(done) >= max_trials:
                raise SearchError(f"no result within {max_trials} trials (--max-trials): the "
                                  "outcomes disagree too often; nothing reported")
            trial = trials.run(rate, duration, phase)
            done.append(trial)
            if progress is not None:
                progress(trial)
            if trial.verdict() != "sender-limited":
                break
        counted.append(trial)
        return trial

    try:
        step(min_rate, short, "short")
        results = []
        for loss in (0.0, pdr_loss):
            if loss is None:
                results.append(None)
                continue
            bis = Bisection(loss, max_rate, precision)
            for t in counted:
                bis.add(t)
            while (nxt := bis.next()) is not None:
                rate, phase = nxt
                bis.add(step(rate, trial_duration if phase == "full" else short, phase))
            results.append(bis.result(trials.cfg.size, trials.cfg.remote.family))
    finally:
        trials.close()
    return SearchResult(trials.cfg.size, precision, done, results[0], results[1],
                        pdr_loss or 0.0)


def _rate_line(name, res):
    if res["rate"]:
        bits = res["bits_per_s"]
        return (f"{name}: {res['rate']:,.0f} packets/s = {bits['udp'] / 1e6:,.3f} Mbit/s UDP, "
                f"{bits['ip'] / 1e6:,.3f} IP, {bits['ethernet'] / 1e6:,.3f} Ethernet, "
                f"{bits['wire'] / 1e6:,.3f} on the wire")
    if res["limited_by"]:
        return (f"{name}: no path figure: {res['limited_by']}-limited at "
                f"{res['limit_rate']:,.0f} packets/s (the path carried at least "
                f"{res['at_least']:,.0f} packets/s)")
    return f"{name}: nothing passed (lowest failing rate {res['limit_rate']:,.0f} packets/s)"


def report(result: SearchResult) -> list[str]:
    """The closing lines: NDR, PDR, the framing counted."""
    lines = [_rate_line("NDR", result.ndr)]
    if result.pdr is not None:
        lines.append(_rate_line(f"PDR ({result.max_loss:.3%})", result.pdr))
    lines.append(f"packets of {result.size} bytes of UDP payload; bit/s count UDP (+8), IP "
                 "(+20), Ethernet (+14 header, +4 FCS), wire (+20 preamble and gap)")
    return lines


HEAD = f"{'rate/s':>12} {'phase':>5} {'sent':>9} {'received':>9} {'lost':>7} " \
       f"{'local':>7} {'missed':>7}  verdict"


def row(trial: Trial, max_loss: float = 0.0) -> str:
    return (f"{trial.rate:12,.0f} {trial.phase:>5} {trial.sent:9d} {trial.received:9d} "
            f"{trial.lost:7d} {trial.local_drops:7d} {trial.missed_slots:7d}  "
            f"{trial.verdict(max_loss)}")


def main(argv) -> int:
    """`packet-flow search ...`: the trial table on stdout as it runs, then NDR and PDR;
    --output json:PATH (json:- for stdout) writes the result as one JSON document."""
    import argparse
    ap = argparse.ArgumentParser(prog="packet-flow search", description=__doc__.split("\n")[0])
    ap.add_argument("--max-loss", help="PDR loss ratio (0.005 or 0.5%%); without it NDR only")
    ap.add_argument("--precision", type=float, default=defaults.SEARCH_PRECISION)
    ap.add_argument("--max-rate", type=float, default=defaults.SEARCH_MAX_RATE)
    ap.add_argument("--min-rate", type=float, default=defaults.SEARCH_MIN_RATE)
    ap.add_argument("--trial-duration", type=float, default=defaults.SEARCH_TRIAL_S)
    ap.add_argument("--short-duration", type=float, default=None)
    ap.add_argument("--max-trials", type=int, default=defaults.SEARCH_MAX_TRIALS)
    ap.add_argument("--answer-timeout", type=float, default=defaults.SEARCH_ANSWER_S)
    ap.add_argument("--reflector", action="store_true",
                    help="the far end is a reflector: forward loss from its replies")
    ap.add_argument("--output", default="console", help="console or json:PATH (json:- stdout)")
    args, rest = ap.parse_known_args(argv)
    if args.output != "console" and not args.output.startswith("json:"):
        raise ConfigError(f"option --output: {args.output!r} (command line): search writes "
                          "console or json:PATH")
    to_json = args.output.startswith("json:")
    table = sys.stderr if args.output == "json:-" else sys.stdout
    max_loss = ratio(args.max_loss) if args.max_loss is not None else 0.0
    print(HEAD, file=table, flush=True)

    def progress(trial):
        print(row(trial, max_loss), file=table, flush=True)

    result = search(argv=rest, max_loss=args.max_loss, precision=args.precision,
                    max_rate=args.max_rate, min_rate=args.min_rate,
                    trial_duration=args.trial_duration, short_duration=args.short_duration,
                    max_trials=args.max_trials, answer_timeout=args.answer_timeout,
                    progress=progress, reflector=args.reflector)
    for line in report(result):
        print(line, file=table, flush=True)
    if to_json:
        text = json.dumps(result.as_dict(), indent=1)
        path = args.output[len("json:"):]
        if path == "-":
            print(text)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
    return 0
