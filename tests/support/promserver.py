"""A real Prometheus server for tests (Debian's `prometheus`, REFERENCE.md §4c).

It scrapes one target every second and answers queries through its HTTP API. The port and
process rules are servers.py's.
"""

import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request

from early import register
from servers import HeldPort, ServerProcess, free_port

BINARY = shutil.which("prometheus")


class PromServer(ServerProcess):
    """One prometheus process scraping http://TARGET/metrics every second (`target`: one
    host:port or a list); start() returns after its first scrape (`up` exists, 0 while the
    target is not there yet)."""

    name = "prometheus"

    def __init__(self, data_dir: str, target):
        self.data_dir = data_dir
        self.targets = [target] if isinstance(target, str) else list(target)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.spawn()
        self.wait(timeout)

    def spawn(self) -> None:
        """Start the process (start() without the wait)."""
        os.makedirs(self.data_dir, exist_ok=True)
        config = os.path.join(self.data_dir, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as f:
            f.write("global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
                    "scrape_configs:\n"
                    "  - job_name: packet-flow\n"
                    f"    static_configs: [{{targets: {self.targets!r}}}]\n")
        args = [BINARY, f"--config.file={config}", f"--storage.tsdb.path={self.data_dir}/tsdb",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self._spawn(args, os.path.join(self.data_dir, "prometheus.log"), [self.port])

    def wait(self, timeout: float = 20.0) -> None:
        """Wait for the first scrape (the rest of start())."""

        def ready():
            with urllib.request.urlopen(self.url + "/-/ready", timeout=0.5) as r:
                # targets are picked up ~5 s after start: wait for the first scrape
                return r.status == 200 and self.proc.poll() is None and bool(self.query("up"))

        self._wait_ready(ready, "scrape its target", timeout, poll=0.1)

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


def early(name: str, targets: int) -> None:
    """Register with early.py, as NAME, a Prometheus in a folder of its own scraping `targets`
    held ports (servers.HeldPort: release one just before the probe listens on it); take()
    gives (server, held ports). It scrapes a new target only ~5 s after it starts: early,
    the tests before its own pass that time."""

    def launch():
        held = [HeldPort() for _ in range(targets)]
        server = PromServer(tempfile.mkdtemp(prefix="pf-prom-"),
                            [f"127.0.0.1:{h.port}" for h in held])
        server.scratch = server.data_dir
        server.spawn()
        return server, held

    def wait(got):
        got[0].wait()
        return got

    register(name, launch, wait, lambda got: got[0].stop())
