"""JSON-lines output: one record per line, the stable contract in README.md."""

import json
import sys
import threading


class JsonlSink:
    """Appends records to PATH (`-` = stdout), flushing after each interval's records."""

    def __init__(self, path, stream=None):
        self.path = path
        if stream is None:
            stream = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
        self.stream = stream
        self.lock = threading.Lock()

    def record(self, rec):
        line = json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n"
        with self.lock:
            self.stream.write(line)
            self.stream.flush()

    def packets(self, *args):
        pass

    def close(self, timeout=0):
        with self.lock:
            self.stream.flush()
            if self.path != "-":
                self.stream.close()
        return {}
