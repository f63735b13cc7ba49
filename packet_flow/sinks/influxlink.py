"""Talking to an InfluxDB server: which write API it speaks, the two write APIs, and what an
answer means. No threads and no retry policy here (that is the writer's, influx.py).

Rules:
- `choose_api` asks `GET /ping` once. A version header (`X-Influxdb-Version`) of 1.x picks the
  1.x API; any other version, or none (VictoriaMetrics), picks 2.x. No answer at all means
  "not known yet": the writer keeps the points and asks again. `--influx-api v1|v2` skips it.
- The 1.x link POSTs to `/write?db=DATABASE&rp=POLICY&precision=ns` (the Rust original's API,
  also served by InfluxDB 1.8+, 2.x and 3.x). Credentials: `--username/--password` as `u`/`p`
  query parameters (with `--auth-basic` in a Basic header instead), or `--token` as
  `Authorization: Token T` (`--auth-basic`: a Basic header of the token `user:password`).
- The 2.x link writes through influxdb-client's synchronous API (REFERENCE.md §5).
- A link never raises for HTTP or network errors: it returns an Answer; status None = no
  answer (refused connection, timeout, reset).
- `classify` turns an answer into what the writer does (Verdict). InfluxDB 1.x answers a write
  with points it refuses (field type conflict, beyond the retention policy) with 400 and
  `partial write: REASON dropped=N`; 2.x with 422 and the same text. Only such an exact count
  is trusted; any other 400/422 of several points is split in halves until each answer is
  exact (a single point refused is refused with the server's reason). InfluxDB overwrites a
  point with the same series and time, so sending a half again never duplicates.
"""

import base64
import json
import logging
import re
import urllib.parse
from http.client import HTTPException
from typing import NamedTuple

import urllib3

from packet_flow.masking import mask_url

log = logging.getLogger("packet_flow.sinks.influx")

_PARTIAL = re.compile(r"partial write:\s*(.*?)\s*dropped=(\d+)", re.S)
_VERSION = re.compile(r"v?(\d+)\.")


class Answer(NamedTuple):
    status: int | None      # None: no HTTP answer (unreachable, timeout, reset)
    message: str            # the server's own error text, or the network error
    retry_after: float = 0.0


class Verdict(NamedTuple):
    action: str             # ok, retry, split, partial (refused of the points), refused
    refused: int = 0
    reason: str = ""


def server_message(body) -> str:
    """The error text of an InfluxDB answer body ({"error": ...} in 1.x, {"message": ...} in
    2.x), else the body itself, on one line, at most 300 characters."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    text = str(body or "").strip()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            text = str(doc.get("error") or doc.get("message") or text)
    except ValueError:
        pass
    return " ".join(text.split())[:300]


def _retry_after(headers) -> float:
    try:
        return min(60.0, float((headers or {}).get("Retry-After", 0)))
    except (TypeError, ValueError):
        return 0.0


def _network_cause(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).split(': ')[-1]}"


def classify(answer: Answer, points: int) -> Verdict:
    """What to do with a chunk of `points` points after `answer` (see the module rules)."""
    status = answer.status
    if status is not None and 200 <= status < 300:
        return Verdict("ok")
    if status in (400, 422):
        m = _PARTIAL.search(answer.message)
        if m and "unable to parse" not in m.group(1):
            return Verdict("partial", min(points, int(m.group(2))), m.group(1).rstrip(": "))
    if status in (400, 413, 422):
        if points > 1:
            return Verdict("split")
        return Verdict("refused", points, answer.message or f"HTTP {status}")
    return Verdict("retry")  # no answer, 401/403/404 and every other 4xx, 429, 5xx


def split(data: bytes) -> tuple[bytes, bytes]:
    """Two halves of line-protocol `data` (of at least two lines), cut at a line end."""
    mid = data.find(b"\n", len(data) // 2 - 1) + 1
    if mid <= 0 or mid >= len(data):
        mid = data.rfind(b"\n", 0, len(data) - 1) + 1
    return data[:mid], data[mid:]


def auth_headers(username, password, token, auth_basic: bool) -> dict:
    """The Authorization header for these credentials (none for 1.x u/p parameters)."""
    if username:
        if not auth_basic:
            return {}
        cred = f"{username}:{password or ''}"
    elif token:
        if not auth_basic:
            return {"Authorization": f"Token {token}"}
        cred = token
    else:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}


def _pool(timeout: float) -> urllib3.PoolManager:
    return urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=timeout,
                                                                      read=timeout))


def choose_api(forced: str, url: str, headers: dict, timeout: float):
    """(api, why) with api "v1" or "v2"; (None, cause) when the server gave no answer."""
    if forced in ("v1", "v2"):
        return forced, "forced by --influx-api"
    pool = _pool(timeout)
    try:
        r = pool.request("GET", url.rstrip("/") + "/ping", headers=headers)
    except (urllib3.exceptions.HTTPError, OSError, HTTPException) as e:
        return None, f"unreachable ({_network_cause(e)})"
    finally:
        pool.clear()
    version = r.headers.get("X-Influxdb-Version")
    if version is None:
        return "v2", f"/ping gives no version (HTTP {r.status}): assuming the 2.x API"
    m = _VERSION.match(version.strip())
    api = "v1" if m and m.group(1) == "1" else "v2"
    return api, f"version {version} (/ping)"


class V1Link:
    """POST /write?db=&rp=&precision=ns (the 1.x API)."""

    api = "v1"

    def __init__(self, url, database, rp, username, password, token, auth_basic, timeout):
        params = {"db": database}
        if rp:
            params["rp"] = rp
        params["precision"] = "ns"
        if username and not auth_basic:
            params.update(u=username, p=password or "")
        self._endpoint = url.rstrip("/") + "/write?" + urllib.parse.urlencode(params)
        self._headers = {"Content-Type": "text/plain; charset=utf-8",
                         **auth_headers(username, password, token, auth_basic)}
        self._pool = _pool(timeout)
        self.target = f"database '{database}'" + (f" (retention policy '{rp}')" if rp else "")
        self.where = f"/write?db={database}" + (f"&rp={rp}" if rp else "")

    def write(self, data: bytes) -> Answer:
        try:
            r = self._pool.request("POST", self._endpoint, body=data, headers=self._headers)
        except (urllib3.exceptions.HTTPError, OSError, HTTPException) as e:
            return Answer(None, _network_cause(e))
        return Answer(r.status, server_message(r.data), _retry_after(r.headers))

    def close(self) -> None:
        self._pool.clear()


class V2Link:
    """/api/v2/write through influxdb-client's synchronous write API."""

    api = "v2"

    def __init__(self, url, bucket, org, token, auth_basic, timeout):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        kwargs = {"url": url, "token": token, "org": org, "timeout": int(timeout * 1000)}
        if auth_basic:
            kwargs["auth_basic"] = True
        self._client = InfluxDBClient(**kwargs)
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket, self._org = bucket, org
        self.target = f"bucket '{bucket}' in org '{org}'"
        self.where = f"/api/v2/write?bucket={bucket}"

    def write(self, data: bytes) -> Answer:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._api.write(self._bucket, self._org, data, write_precision=WritePrecision.NS)
        except ApiException as e:
            return Answer(e.status, server_message(e.body) or str(e.reason or ""),
                          _retry_after(e.headers))
        except (urllib3.exceptions.HTTPError, OSError, HTTPException) as e:
            return Answer(None, _network_cause(e))
        return Answer(204, "")

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a pool must not fail shutdown
            pass


class Server:
    """One InfluxDB server as the writer sees it: the write API is chosen (once) at the first
    write; until the server answers /ping, write() answers "no answer". `explain(answer)`
    gives (key, log line) for an answer that is an outage."""

    def __init__(self, url, database, rp, org, username, password, token, auth_basic,
                 forced_api, timeout, keeping: str):
        self.url, self.shown_url = url, mask_url(url)
        self.database, self.rp, self.org = database, rp, org
        self.username, self.password, self.token = username, password, token
        self.auth_basic, self.forced_api, self.timeout = auth_basic, forced_api, timeout
        self.bucket = f"{database}/{rp}" if rp else database
        self.keeping = keeping      # where the points wait, for the log lines
        self.api: str | None = None
        self.link = None

    def connect(self) -> str | None:
        """Choose the write API and open its link; None on success, else the cause."""
        headers = auth_headers(self.username, self.password, self.token, self.auth_basic)
        api, why = choose_api(self.forced_api, self.url, headers, self.timeout)
        if api is None:
            return why.removeprefix("unreachable (").removesuffix(")")
        if api == "v1":
            self.link = V1Link(self.url, self.database, self.rp, self.username, self.password,
                               self.token, self.auth_basic, self.timeout)
        else:
            token = f"{self.username}:{self.password or ''}" if self.username else self.token
            self.link = V2Link(self.url, self.bucket, self.org, token, self.auth_basic,
                               self.timeout)
        self.api = api
        log.info("InfluxDB at %s: %s; writing with the %s API (%s)", self.shown_url, why,
                 "1.x" if api == "v1" else "2.x", self.link.where)
        return None

    def write(self, data: bytes) -> Answer:
        if self.link is None:
            why = self.connect()
            if why is not None:
                return Answer(None, why)
        return self.link.write(data)

    def explain(self, answer: Answer) -> tuple:
        """(key, log line) for an answer that is an outage."""
        status, text = answer.status, answer.message
        keep = "; keeping points and retrying"
        if status is None:
            return "unreachable", (f"InfluxDB at {self.url} unreachable ({text}); keeping "
                                   f"points ({self.keeping}) and retrying")
        if status in (401, 403):
            return status, (
                f"InfluxDB at {self.url} refused the credentials ({status}: {text}); check "
                "--token, or --username/--password (and --auth-basic for Basic auth)" + keep)
        if status == 404:
            return status, (
                f"InfluxDB at {self.url} has no {self.link.target} ({status}: {text}); check "
                "--database, --retention-policy and --influx-org, or create it" + keep)
        return status, f"InfluxDB at {self.url} answers HTTP {status} ({text})" + keep

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
