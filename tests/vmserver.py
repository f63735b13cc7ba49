"""A real VictoriaMetrics server for tests: start, stop, restart on one port and data dir.

Rules (REFERENCE.md §4): the port must be free before start, and the process we started
must still be alive when /health answers (an old server on the same port fools a bare
readiness check). Only the process this object started is ever signalled, by its PID.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

BINARY = shutil.which("victoria-metrics")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class VMServer:
    """One victoria-metrics process; `start()`, `stop()`, `restart()` keep port and data dir."""

    def __init__(self, data_dir: str, port: int | None = None, username: str | None = None,
                 password: str | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.username, self.password = username, password
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start on the same port and data dir; return once /health answers from our process."""
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        args = [BINARY, f"-storageDataPath={self.data_dir}",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
                "-search.disableCache", "-search.latencyOffset=0s", "-loggerLevel=WARN"]
        if self.username:
            args += [f"-httpAuth.username={self.username}", f"-httpAuth.password={self.password}"]
        self.log = open(os.path.join(os.path.dirname(self.data_dir) or ".",
                                     f"vm-{self.port}.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=0.5) as r:
                    if r.status == 200 and self.proc.poll() is None:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"victoria-metrics did not answer /health within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM: the server flushes what it accepted), SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()

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

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
