"""A real VictoriaMetrics server for tests: start, stop, restart on one port and data dir.

The port and process rules are servers.py's (REFERENCE.md §4).
"""

import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

from servers import ServerProcess, free_port

BINARY = shutil.which("victoria-metrics")


class VMServer(ServerProcess):
    """One victoria-metrics process; `start()`, `stop()`, `restart()` keep port and data dir."""

    name = "victoria-metrics"

    def __init__(self, data_dir: str, port: int | None = None, username: str | None = None,
                 password: str | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.username, self.password = username, password
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start on the same port and data dir; return once /health answers from our process."""
        args = [BINARY, f"-storageDataPath={self.data_dir}",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
                "-search.disableCache", "-search.latencyOffset=0s", "-loggerLevel=WARN"]
        if self.username:
            args += [f"-httpAuth.username={self.username}", f"-httpAuth.password={self.password}"]

        def ready():
            with urllib.request.urlopen(self.url + "/health", timeout=0.5) as r:
                return r.status == 200

        self._launch(args, os.path.join(os.path.dirname(self.data_dir) or ".",
                                        f"vm-{self.port}.log"),
                     [self.port], ready, "answer /health", timeout, poll=0.02)

    def restart(self) -> None:
        """Stop and start again on the same port and data dir."""
        self.stop()
        self.start()

    def _get(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path)
        if self.username:
            cred = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", "Basic " + cred)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def export(self, match: str, min_samples: int = 1, timeout: float = 10.0) -> list[dict]:
        """Every series matching `match` as dicts (metric, values, timestamps).

        Fresh rows reach search up to ~2 s after the write even after /internal/force_flush
        (they wait in per-shard buffers), so this polls until at least `min_samples` samples
        are visible or `timeout` passes, then returns what is there.
        """
        end = time.monotonic() + timeout
        while True:
            self._get("/internal/force_flush")
            body = self._get("/api/v1/export?" + urllib.parse.urlencode({"match[]": match}))
            series = [json.loads(line) for line in body.splitlines() if line.strip()]
            if sum(len(s["timestamps"]) for s in series) >= min_samples or time.monotonic() > end:
                return series
            time.sleep(0.1)
