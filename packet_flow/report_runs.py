"""The runs of a report file: records grouped by their `run` id (report.py has the rules)."""

from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import ReportError
from .report import KNOWN_TYPES, _run_span, group_flows


@dataclass
class Run:
    """The records one run wrote; `id` None for records without a run id."""

    id: str | None
    records: list[dict]

    def describe(self) -> tuple[str, float, float, int]:
        """(id or "-", start, duration in s, number of flows)."""
        flows = group_flows(self.records)
        start, end = _run_span(flows)
        return self.id or "-", start, end - start, len(flows)


def split_runs(records: list[dict]) -> list[Run]:
    """The file's runs in the order they start (module rules); runs without interval, sender
    or summary records (a receiver that rejected everything) are left out."""
    runs: dict = {}
    for rec in records:
        runs.setdefault(rec.get("run"), []).append(rec)
    return [Run(k, v) for k, v in runs.items() if any(r["type"] in KNOWN_TYPES for r in v)]


def pick_run(runs: list[Run], choice: str | None, name: str) -> int:
    """The index of the run `choice` names: its number (1 = the first in the file), its id or
    a unique start of it; None = the latest."""
    if choice is None:
        return len(runs) - 1
    if choice.isdigit() and 1 <= int(choice) <= len(runs):
        return int(choice) - 1
    found = [i for i, r in enumerate(runs) if r.id and r.id.startswith(choice)]
    if len(found) == 1:
        return found[0]
    why = "matches several runs" if found else "is not a run of this file"
    raise ReportError(f"{name}: --run {choice!r} {why}; --list-runs lists them "
                      f"(numbers 1..{len(runs)} or ids)")


def list_runs(runs: list[Run]) -> str:
    """One line per run: number, id, start, duration, flows (at most 80 columns)."""
    out = [f"{'#':>3}  {'run':24} {'start (UTC)':19} {'duration':>10} {'flows':>6}"]
    for i, run in enumerate(runs, 1):
        rid, start, span, n = run.describe()
        t0 = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M:%S")
        out.append(f"{i:>3}  {rid[:24]:24} {t0:19} {span:>8.1f} s {n:>6}")
    if any(r.id is None for r in runs):
        out.append("  - = records without a run id (written before packet-flow had them)")
    return "\n".join(out) + "\n"
