"""A real Prometheus server for tests (Debian's `prometheus`, REFERENCE.md §4c).

It scrapes one target every second and answers queries through its HTTP API. The port must
be free before start, and the process we started must still be alive when /-/ready answers;
only that process is ever signalled, by its PID.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

from vmserver import free_port, port_in_use

BINARY = shutil.which("prometheus")


class PromServer:
    """One prometheus process scraping http://TARGET/metrics every second (`target`: one
    host:port or a list); start() returns after its first scrape (`up` exists, 0 while the
    target is not there yet)."""

    def __init__(self, data_dir: str, target):
        self.data_dir = data_dir
        self.targets = [target] if isinstance(target, str) else list(target)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 20.0) -> None:
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        os.makedirs(self.data_dir, exist_ok=True)
        config = os.path.join(self.data_dir, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as f:
            f.write("global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
                    "scrape_configs:\n"
                    "  - job_name: packet-flow\n"
                    f"    static_configs: [{{targets: {self.targets!r}}}]\n")
        self.log = open(os.path.join(self.data_dir, "prometheus.log"), "ab")
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.tsdb.path={self.data_dir}/tsdb",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=0.5) as r:
                    # targets are picked up ~5 s after start: wait for the first scrape
                    if r.status == 200 and self.proc.poll() is None and self.query("up"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus did not scrape its target within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
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

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """GET /api/v1/query: the result list (instant vector or range vector)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}",
                                    timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
