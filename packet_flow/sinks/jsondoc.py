"""One JSON document per run (`--output json:PATH`, `json:-` = stdout), written at the end.

Rules:
- The document is {"packet_flow": version, "config": ..., "summaries": [...], "verdict": ...}
  (docs/api.md). `config` holds every option of the run by its TOML key, secrets masked by
  field (Opt.shown: "***"); `summaries` are the run's summary records with the JSON-lines
  fields (docs/options.md, "JSON-lines records"), times as RFC 3339 text; `verdict` is
  verdict.Verdict.as_dict().
- The same builder (document()) gives the API's Result.as_dict(), so a script that reads the
  file and one that calls packet_flow.probe() see the same thing.
- The file is opened when the run starts (a bad path fails before any packet is sent) and
  written once, at close; nothing is written for interval records.
"""

import json
import sys
import threading

from packet_flow import __version__, verdict
from packet_flow.options import OPTS
from packet_flow.sinks.jsonl import rfc3339


def plain(rec: dict) -> dict:
    """A record as the JSON outputs carry it: `time` as RFC 3339 text."""
    if isinstance(rec.get("time"), int):
        return {**rec, "time": rfc3339(rec["time"])}
    return dict(rec)


def config_dict(cfg) -> dict:
    """Every option of the run by its TOML key (run-only flags left out), secrets masked."""
    out = {}
    for opt in OPTS:
        if opt.run_only:
            continue
        value = opt.shown(getattr(cfg, opt.field))
        out[opt.key] = list(value) if isinstance(value, tuple) else value
    return out


def document(config: dict, summaries: list[dict], result: verdict.Verdict) -> dict:
    """The run's JSON document (see the module rules) from config_dict() and plain()
    summaries."""
    return {"packet_flow": __version__, "config": config,
            "summaries": summaries, "verdict": result.as_dict()}


def run_verdict(cfg, summaries: list[dict]) -> verdict.Verdict:
    """The verdict over summaries, as run() gives it (verdict.Judge)."""
    return verdict.evaluate(verdict.limits(cfg), summaries, cfg.mode != "sender",
                            str(cfg.local))


class JsonDocumentSink:
    """Keeps the summary records; at close writes the document to PATH or the stream."""

    wants_packets = wants_gaps = wants_rtts = wants_idle = closes_last = False
    on_failure = None

    def __init__(self, cfg, path: str, stream=None):
        self.cfg = cfg
        self.path = path
        if stream is None:
            stream = sys.stdout if path == "-" else open(path, "w", encoding="utf-8")  # noqa: SIM115
        self.stream = stream
        self.summaries: list[dict] = []
        self.lock = threading.Lock()

    def record(self, rec: dict) -> None:
        if rec.get("type") == "summary":
            with self.lock:
                self.summaries.append(rec)

    @property
    def counters(self) -> dict:
        return {}

    def close(self, timeout: float = 0, counters: dict | None = None) -> dict:
        with self.lock:
            doc = document(config_dict(self.cfg), [plain(r) for r in self.summaries],
                           run_verdict(self.cfg, self.summaries))
            self.stream.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
            self.stream.flush()
            if self.path != "-":
                self.stream.close()
        return {}
