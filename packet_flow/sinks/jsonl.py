"""JSON-lines output: one record per line, the stable contract in docs/options.md.

Records carry `time` as integer ns since the epoch; this edge writes it as RFC 3339 UTC text
with microseconds, as the contract says."""

import datetime
import json
import sys
import threading


def rfc3339(ns: int) -> str:
    """RFC 3339 UTC time with microseconds for integer ns since the epoch."""
    dt = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ns % 1_000_000_000 // 1000:06d}Z"


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class JsonlSink:
    """Appends records to PATH (`-` = stdout), flushing whenever no record waits (idle)."""

    wants_packets = wants_gaps = wants_rtts = closes_last = False
    wants_idle = True
    on_failure = None

    def __init__(self, path, stream=None):
        self.path = path
        if stream is None:
            stream = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
        self.stream = stream
        self.lock = threading.Lock()

    def record(self, rec):
        if isinstance(rec.get("time"), int):
            rec = {**rec, "time": rfc3339(rec["time"])}
        line = _encode(rec) + "\n"
        with self.lock:
            self.stream.write(line)

    def idle(self):
        with self.lock:
            self.stream.flush()

    @property
    def counters(self):
        return {}

    def close(self, timeout=0, counters=None):
        with self.lock:
            self.stream.flush()
            if self.path != "-":
                self.stream.close()
        return {}
