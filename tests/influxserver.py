"""A real InfluxDB 1.x (Debian's `influxdb`, 1.6.7) for tests: auth on, an admin user.

Rules (REFERENCE.md §4b): a temporary config with its own meta, data and WAL folders, both
ports (RPC and HTTP) on free loopback ports checked free before start; ready when `/ping`
answers 204 and the process we started is still alive (an old server on the same port fools
a bare readiness check). The admin user is created through `/query` (allowed without
credentials while no user exists). Only the process this object started is ever signalled,
by its PID.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from vmserver import free_port, port_in_use

BINARY = shutil.which("influxd")

CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http}"
  auth-enabled = true
  log-enabled = false
  max-body-size = {max_body}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""


class InfluxServer:
    """One influxd process with auth on; `query()` runs InfluxQL as the admin."""

    def __init__(self, root: str, username: str = "admin", password: str = "s3cret pw",
                 max_body: int = 25_000_000):
        self.root = root
        self.username, self.password = username, password
        self.max_body = max_body
        self.port = free_port()
        self.rpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.version = None

    def start(self, timeout: float = 15.0) -> None:
        """Start influxd, wait for /ping from our process, create the admin user."""
        for port in (self.port, self.rpc_port):
            if port_in_use(port):
                raise RuntimeError(f"port {port} is already in use")
        os.makedirs(self.root, exist_ok=True)
        conf = os.path.join(self.root, "influxdb.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(root=self.root, rpc=self.rpc_port, http=self.port,
                                  max_body=self.max_body))
        self.log = open(os.path.join(self.root, "influxd.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([BINARY, "-config", conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=0.5) as r:
                    if r.status == 204 and self.proc.poll() is None:
                        self.version = r.headers.get("X-Influxdb-Version")
                        break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"influxd did not answer /ping within {timeout} s")
        self._post({"q": f"CREATE USER {self.username} WITH PASSWORD "
                          f"'{self.password}' WITH ALL PRIVILEGES"}, auth=False)

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

    def _post(self, params: dict, auth: bool = True) -> dict:
        # credentials only count in the URL (or a Basic header), not in the form body
        url = self.url + "/query"
        if auth:
            url += "?" + urllib.parse.urlencode({"u": self.username, "p": self.password})
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(url, data=data, timeout=10) as r:
            doc = json.loads(r.read())
        for res in doc.get("results", []):
            if "error" in res:
                raise RuntimeError(f"InfluxQL error: {res['error']} ({params.get('q')})")
        return doc

    def query(self, q: str, db: str | None = None) -> list[dict]:
        """Run InfluxQL (times as integer ns); the series of the first statement."""
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        return self._post(params)["results"][0].get("series", [])

    def rows(self, q: str, db: str) -> list[dict]:
        """Every row of every series as a dict (the series' tags merged in)."""
        out = []
        for s in self.query(q, db):
            for values in s["values"]:
                out.append({**s.get("tags", {}), **dict(zip(s["columns"], values, strict=True))})
        return out

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
