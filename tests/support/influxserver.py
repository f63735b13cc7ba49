"""A real InfluxDB 1.x (Debian's `influxdb`, 1.6.7) for tests: auth on, an admin user.

REFERENCE.md §4b: a temporary config with its own meta, data and WAL folders, both ports
(RPC and HTTP) free; ready when `/ping` answers 204 (the port and process rules are
servers.py's). The admin user is created through `/query` (allowed without credentials while
no user exists).
"""

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from early import register
from servers import ServerProcess, free_port

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


class InfluxServer(ServerProcess):
    """One influxd process with auth on; `query()` runs InfluxQL as the admin."""

    name = "influxd"

    def __init__(self, root: str, username: str = "admin", password: str = "s3cret pw",
                 max_body: int = 25_000_000):
        self.root = root
        self.username, self.password = username, password
        self.max_body = max_body
        self.port = free_port()
        self.rpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.version = None

    def start(self, timeout: float = 15.0) -> None:
        """Start influxd, wait for /ping from our process, create the admin user."""
        self.spawn()
        self.wait(timeout)

    def spawn(self) -> None:
        """Start the process (start() without the wait)."""
        os.makedirs(self.root, exist_ok=True)
        conf = os.path.join(self.root, "influxdb.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(root=self.root, rpc=self.rpc_port, http=self.port,
                                  max_body=self.max_body))
        self._spawn([BINARY, "-config", conf], os.path.join(self.root, "influxd.log"),
                    [self.port, self.rpc_port])

    def wait(self, timeout: float = 15.0) -> None:
        """Wait for /ping from our process, then create the admin user."""

        def ready():
            with urllib.request.urlopen(self.url + "/ping", timeout=0.5) as r:
                self.version = r.headers.get("X-Influxdb-Version")
                return r.status == 204

        self._wait_ready(ready, "answer /ping", timeout)
        self._post({"q": f"CREATE USER {self.username} WITH PASSWORD "
                          f"'{self.password}' WITH ALL PRIVILEGES"}, auth=False)

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


def early(name: str, **kw) -> None:
    """Register with early.py, as NAME, an InfluxDB in a folder of its own (influxd takes
    1-3 s to answer); take() gives the server, started, with its admin user."""

    def launch():
        server = InfluxServer(tempfile.mkdtemp(prefix="pf-influxdb-"), **kw)
        server.scratch = server.root
        server.spawn()
        return server

    def wait(server):
        server.wait()
        return server

    register(name, launch, wait, lambda server: server.stop())
