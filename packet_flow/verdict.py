"""Pass/fail thresholds: which summary fields each one judges, and the verdict of a run.

Rules:
- Pure: limits come from a Config, measurements from summary records; no I/O, no clock.
- A threshold judges every summary record that carries its field: receiver flows (`role:
  receiver`, also a reflector's) and, with --rtt, the sender's round-trip summary (its
  `lost`, `rtt_p99_us`, `rtt_jitter_us` and `reflected`). FIELDS says which field.
- `--max-loss` counts path loss (`lost`), never the receiving host's own `local_drops`; as a
  percentage it compares `loss_percent`. A measurement that is missing (`null`: nothing to
  measure it on) breaches its limit: a verdict never passes on nothing.
- A run whose thresholds judge receiver flows but saw no flow at all fails, one breach per
  such threshold (`no flow`).
- Judge annotates summary records on their way to the outputs with `verdict` ("pass" or
  "fail") and `breaches` (a list of Breach.as_dict()), only those a threshold judged, so the
  record contract is unchanged without thresholds. The exit status of a failed verdict is 3.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from typing import Any

FAIL_STATUS = 3

# threshold option -> {summary role: field}; the order is the order of the breach lines
FIELDS: dict[str, dict[str, str]] = {
    "min-received": {"receiver": "received", "sender": "reflected"},
    "max-loss": {"receiver": "lost", "sender": "lost"},
    "max-owd-p99": {"receiver": "owd_p99_us"},
    "max-rtt-p99": {"sender": "rtt_p99_us"},
    "max-jitter": {"receiver": "jitter_us", "sender": "rtt_jitter_us"},
}
THRESHOLDS = tuple(FIELDS)


class LossLimit(str):
    """A --max-loss value as given ("0.5%" or "3"); `percent` or `count` holds the limit."""

    percent: float | None
    count: int | None

    def __new__(cls, text: str) -> LossLimit:
        """Raises ValueError with the reason for text that is neither N% nor a count."""
        text = text.strip()
        self = super().__new__(cls, text)
        self.percent = self.count = None
        if text.endswith("%"):
            try:
                self.percent = float(text[:-1])
            except ValueError:
                raise ValueError("not a percentage (like 0.5%) or a count (like 3)") from None
            if not 0 <= self.percent <= 100:
                raise ValueError("a percentage must be between 0% and 100%")
        else:
            try:
                self.count = int(text)
            except ValueError:
                raise ValueError("not a percentage (like 0.5%) or a count (like 3)") from None
            if self.count < 0:
                raise ValueError("a count must be 0 or more")
        return self


class TimeLimit(str):
    """A time threshold as given ("5ms"); `seconds` holds its value."""

    seconds: float

    def __new__(cls, text: str, seconds: float) -> TimeLimit:
        self = super().__new__(cls, text)
        self.seconds = seconds
        return self


@dataclasses.dataclass(frozen=True)
class Breach:
    """One threshold a flow breached: the option, its limit as given, the field judged and
    the measured value (None: nothing measured, or `no flow`)."""

    threshold: str
    limit: str
    field: str
    measured: Any
    source: str | None = None
    destination: str | None = None
    role: str = "receiver"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """`threshold --max-loss 0 breached by 127.0.0.1:40000 -> 127.0.0.1:9000: lost 1`"""
        head = f"threshold --{self.threshold} {self.limit} breached"
        if self.field == "flows":
            return f"{head}: no flow arrived at {self.destination}"
        trip = " (round trip)" if self.role == "sender" else ""
        return (f"{head} by {self.source} -> {self.destination}{trip}: "
                f"{_shown(self.field, self.measured)}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The run's verdict: passed, the breaches (in flow order), the flows judged."""

    passed: bool
    breaches: tuple[Breach, ...] = ()
    judged: int = 0

    @property
    def status(self) -> int:
        """The exit status: 0 passed, 3 a threshold was breached."""
        return 0 if self.passed else FAIL_STATUS

    def lines(self) -> list[str]:
        """One line per breach, as the command line prints them."""
        return [f"packet-flow: {b.line()}" for b in self.breaches]

    def as_dict(self) -> dict:
        return {"passed": self.passed, "status": self.status, "judged": self.judged,
                "breaches": [b.as_dict() for b in self.breaches]}


def _shown(field: str, value: Any) -> str:
    """A measured value for a breach line: times with their unit, loss with its percentage."""
    if value is None:
        return f"{field.removesuffix('_us')} none"
    if field == "loss_percent":
        return f"loss {value:g} %"
    if field.endswith("_us"):
        name = field[: -len("_us")]
        if abs(value) >= 1e6:
            return f"{name} {value / 1e6:.6g} s"
        if abs(value) >= 1e3:
            return f"{name} {value / 1e3:.6g} ms"
        return f"{name} {value:.6g} µs"
    return f"{field} {value}"


def limits(cfg) -> dict[str, Any]:
    """{threshold option: limit} of the thresholds cfg sets."""
    out = {}
    for name in THRESHOLDS:
        value = getattr(cfg, name.replace("-", "_"), None)
        if value is not None:
            out[name] = value
    return out


def _field(name: str, lim: Any, role: str) -> str | None:
    if name == "max-loss" and lim.percent is not None:
        return "loss_percent" if role in FIELDS[name] else None
    return FIELDS[name].get(role)


def _breached(name: str, lim: Any, measured: Any) -> bool:
    if measured is None:
        return True
    if name == "min-received":
        return measured < lim
    if name == "max-loss":
        return measured > (lim.count if lim.percent is None else lim.percent)
    return measured > round(lim.seconds * 1e6, 6)   # the fields are in µs


def check(lims: dict[str, Any], rec: dict) -> tuple[list[Breach], bool]:
    """The breaches of one summary record, and whether any threshold judged it."""
    role = rec.get("role", "receiver")
    out, judged = [], False
    for name, lim in lims.items():
        field = _field(name, lim, role)
        if field is None or field not in rec:
            continue
        judged = True
        if _breached(name, lim, rec[field]):
            out.append(Breach(name, str(lim), field, rec[field], rec.get("source"),
                              rec.get("destination"), role))
    return out, judged


def evaluate(lims: dict[str, Any], summaries: Iterable[dict], receives: bool,
             local: str | None = None) -> Verdict:
    """The verdict over a run's summary records. `receives`: the run had a receiving side
    (receiver, both, reflector), so thresholds on receiver flows expect at least one flow;
    `local` names it in a `no flow` breach."""
    if not lims:
        return Verdict(True)
    breaches: list[Breach] = []
    judged = 0
    flows = 0
    for rec in summaries:
        got, was_judged = check(lims, rec)
        breaches += got
        judged += was_judged
        flows += rec.get("role") == "receiver"
    if receives and not flows:
        breaches += [Breach(name, str(lim), "flows", None, None, local)
                     for name, lim in lims.items() if "receiver" in FIELDS[name]]
    return Verdict(not breaches, tuple(breaches), judged)


class Judge:
    """Sits between the loops and the outputs: annotates summary records with their verdict
    and keeps them for the run's verdict. Thread-safe (sender and receiver both emit)."""

    def __init__(self, cfg, emit: Callable[[dict], None]):
        self.lims = limits(cfg)
        self.emit = emit
        self.receives = cfg.mode != "sender"
        self.local = str(cfg.local)
        self.summaries: list[dict] = []
        self.lock = threading.Lock()

    def record(self, rec: dict) -> None:
        if rec.get("type") == "summary":
            breaches, judged = check(self.lims, rec)
            if judged:
                rec["verdict"] = "fail" if breaches else "pass"
                rec["breaches"] = [b.as_dict() for b in breaches]
            with self.lock:
                self.summaries.append(rec)
        self.emit(rec)

    def verdict(self) -> Verdict:
        with self.lock:
            return evaluate(self.lims, list(self.summaries), self.receives, self.local)
