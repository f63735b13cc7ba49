"""InfluxDB sink: the writer thread that sends contract records and compat points, off the
receive path. Line protocol is in lineproto.py, the durable spool in spool.py.

Rules:
- The caller's thread only hands items to a bounded queue (`put_nowait`); it never formats
  a batch, never touches HTTP and never raises. A full queue drops the item and counts it.
- One background writer thread formats line protocol (lineproto.py; vectorised for
  per-packet points), joins it into chunks every flush interval and writes each chunk with
  influxdb-client's SYNCHRONOUS write API. The client's batching mode is never used: it
  drops a batch after its retries (REFERENCE.md §5).
- Unreachable server, 5xx or 429: the chunk stays. Memory holds up to `memory_points`
  points; older chunks spill to files in the spool directory. Spool files are always older
  than memory chunks and are replayed first, oldest first, with exponential backoff. Spool
  files left by an earlier run for the same server and bucket are replayed at start.
- Any other 4xx (401, 403, 404, 400, 413): the chunk is dropped, one clear log line per
  cause names it; measuring goes on and later chunks are tried again.
- `close()` flushes within its timeout, spools what it could not write and logs it.
"""

import hashlib
import logging
import math
import os
import queue
import socket
import tempfile
import threading
import time
from collections import deque
from http.client import HTTPException

import numpy as np

from packet_flow import defaults
from packet_flow.errors import SinkError
from packet_flow.sinks.lineproto import MEASUREMENTS, escape, format_int_points, format_record
from packet_flow.sinks.spool import Spool

log = logging.getLogger(__name__)


class _Chunk:
    __slots__ = ("data", "points", "failed")

    def __init__(self, data: bytes, points: int):
        self.data, self.points, self.failed = data, points, False


def _connection(cfg):
    """(client kwargs, bucket, org) from the options (InfluxDB 2.x/3.x or 1.8+)."""
    url = getattr(cfg, "influx_url", None) or defaults.INFLUX_URL
    database = getattr(cfg, "database", None) or defaults.DATABASE
    rp = getattr(cfg, "retention_policy", None) or defaults.RETENTION_POLICY
    username = getattr(cfg, "username", None)
    token = getattr(cfg, "token", None)
    org = getattr(cfg, "influx_org", None) or defaults.INFLUX_ORG
    if username:  # InfluxDB 1.8+ compatibility API
        token = f"{username}:{getattr(cfg, 'password', None) or ''}"
        org = "-"
    bucket = f"{database}/{rp}" if rp else database
    kwargs = {
        "url": url,
        "token": token,
        "org": org,
        "timeout": int(defaults.SINK_HTTP_TIMEOUT_S * 1000),
    }
    if getattr(cfg, "auth_basic", False):
        kwargs["auth_basic"] = True
    return kwargs, bucket, org


class InfluxSink:
    """Writes contract records (and optional compat points) to InfluxDB without losing any.

    Public API: record(), packets(), gaps(), close(), counters, error (the last rejection's
    log line, None while writes succeed), wants_packets. Raises SinkError at construction
    only, when the spool directory cannot be created or read.
    """

    def __init__(self, cfg):
        self._client_kwargs, self.bucket, self.org = _connection(cfg)
        self.url = self._client_kwargs["url"]
        self.host = getattr(cfg, "hostname", None) or socket.gethostname()
        self.compat = bool(getattr(cfg, "compat_points", False))
        self.wants_packets = self.compat  # the run loop hands per-packet arrays only if True
        self.compat_max_pps = int(getattr(cfg, "compat_max_pps", defaults.COMPAT_MAX_PPS) or 0)
        flush = getattr(cfg, "flush_interval", None) or defaults.FLUSH_INTERVAL_S
        self.flush_s = flush or getattr(cfg, "interval", None) or defaults.INTERVAL_S
        self.memory_points = getattr(cfg, "memory_points", None) or defaults.SINK_MEMORY_POINTS
        base = getattr(cfg, "spool_dir", None) or defaults.SPOOL_DIR
        base = base or os.path.join(tempfile.gettempdir(), "packet-flow-spool")
        target = f"{self.url}|{self.org}|{self.bucket}".encode()
        self.spool_dir = os.path.join(base, hashlib.sha1(target).hexdigest()[:12])
        try:
            self._spool = Spool(self.spool_dir)
        except OSError as e:
            raise SinkError(f"cannot use --spool-dir {base!r}: {e.strerror}") from e
        if self._spool.points:
            log.info("replaying %d points left in %s by an earlier run",
                     self._spool.points, self.spool_dir)
        self._counters = dict.fromkeys(
            ("written", "retried", "spooled", "dropped", "replayed", "rejected",
             "capped", "failed_requests"), 0)
        self._queue = queue.Queue(maxsize=defaults.SINK_QUEUE_RECORDS)
        self._pending: deque[_Chunk] = deque()
        self._pending_points = 0
        self._buf: list[bytes] = []
        self._buf_points = 0
        self._cap_state: dict = {}
        self._warned: set = set()
        self._lock = threading.Lock()  # counters (both threads; held only briefly)
        self._state = threading.Lock()  # buffers, memory chunks, spool list (never during HTTP)
        self._abandoned = False  # set by close() when the writer is stuck in an HTTP call
        self._closing = threading.Event()
        self._deadline = math.inf
        self._retry_at = 0.0
        self._retry_after = 0.0  # seconds a 429/503 asked us to wait
        self._backoff = defaults.SINK_BACKOFF_MIN_S
        self._down_since = None
        self.error: str | None = None
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._client = InfluxDBClient(**self._client_kwargs)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self._thread.start()

    # ---- caller side: never blocks, never raises -------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def _warn_once(self, key, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def _put(self, item, points: int) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count("dropped", points)
            self._warn_once("queue", "InfluxDB sink hand-off queue full (%d items); dropping "
                            "points (the writer cannot keep up)", self._queue.maxsize)

    def record(self, rec: dict) -> None:
        """Queue one contract record (interval, sender, summary, receiver) for writing."""
        if self._closing.is_set():
            return
        self._put(("rec", dict(rec)), 1)  # a copy: the caller may reuse its dict

    def _cap(self, key, rx_ns: np.ndarray) -> np.ndarray:
        """Mask of points kept under `compat_max_pps` per flow per second of rx time."""
        cap = self.compat_max_pps
        n = len(rx_ns)
        sec = rx_ns // 1_000_000_000
        order = np.argsort(sec, kind="stable")
        s = sec[order]
        first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        rank = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
        last_sec, used = self._cap_state.get(key, (-1, 0))
        rank = rank + np.where(s == last_sec, used, 0)
        self._cap_state[key] = (int(s[-1]), min(cap, int(rank[-1]) + 1))
        keep = np.empty(n, bool)
        keep[order] = rank < cap
        return keep

    def _compat(self, kind: bytes, source, destination, rx_ns, values, scale: int) -> None:
        if not self.compat or self._closing.is_set() or len(rx_ns) == 0:
            return
        rx_ns = np.asarray(rx_ns, np.int64)
        values = np.asarray(values, np.int64)
        if self.compat_max_pps > 0:
            keep = self._cap((kind, source, destination), rx_ns)
            capped = len(keep) - int(keep.sum())
            if capped:
                self._count("capped", capped)
                self._warn_once("cap", "compat points capped at %d/s per flow (first: %s %s -> "
                                "%s); the counter `capped` has the total",
                                self.compat_max_pps, kind.decode(), source, destination)
                rx_ns, values = rx_ns[keep], values[keep]
            else:
                rx_ns, values = rx_ns.copy(), values.copy()
        else:
            rx_ns, values = rx_ns.copy(), values.copy()  # the caller may reuse its arrays
        if len(rx_ns):
            self._put(("pts", kind, source, destination, rx_ns, values, scale), len(rx_ns))

    def packets(self, source: str, destination: str, rx_ns: np.ndarray,
                owd_ns: np.ndarray) -> None:
        """Queue compat `latency` points (field value = one-way delay in integer µs)."""
        self._compat(b"latency", source, destination, rx_ns, owd_ns, 1000)

    def gaps(self, source: str, destination: str, rx_ns: np.ndarray, lost: np.ndarray) -> None:
        """Queue compat `packet_loss` points (field value = packets lost in the gap)."""
        self._compat(b"packet_loss", source, destination, rx_ns, lost, 1)

    @property
    def counters(self) -> dict:
        """written, retried, spooled, dropped, replayed, rejected, capped, failed_requests,
        `queued` (points in memory plus items still in the hand-off queue), `spool_points`."""
        with self._lock:
            out = dict(self._counters)
            out["queued"] = self._pending_points + self._buf_points + self._queue.qsize()
            out["spool_points"] = self._spool.points
        return out

    def close(self, timeout: float = defaults.SHUTDOWN_FLUSH_S) -> dict:
        """Flush within `timeout` s; spool and log what could not be written; return counters."""
        if not self._closing.is_set():
            self._deadline = time.monotonic() + timeout
            self._closing.set()
            try:
                self._queue.put_nowait(None)  # wake the writer
            except queue.Full:
                pass
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + 0.2)
        if self._thread.is_alive():
            self._abandon()
        c = self.counters
        if c["queued"]:
            log.error("InfluxDB at %s: %d points neither written nor spooled at shutdown",
                      self.url, c["queued"])
        if c["spool_points"]:
            log.warning("InfluxDB at %s: %d points not written at shutdown; kept in %s for the "
                        "next start", self.url, c["spool_points"], self.spool_dir)
        log.info("InfluxDB sink: written %(written)d, retried %(retried)d, spooled %(spooled)d, "
                 "dropped %(dropped)d, capped %(capped)d", c)
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a pool must not fail shutdown
            pass
        return c

    def _abandon(self) -> None:
        """close() timed out with the writer inside an HTTP call: spool everything from here.

        The writer touches no state once `_abandoned` is set. A chunk whose write was in
        flight is spooled too; if that write succeeds it is written again at the next start
        (InfluxDB keeps one point per series and timestamp).
        """
        if not self._state.acquire(timeout=1.0):
            return
        try:
            self._abandoned = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._add(item)
            self._seal()
            self._spill(0)
        finally:
            self._state.release()

    # ---- writer thread ------------------------------------------------------------------

    def _format(self, item) -> tuple[bytes | None, int]:
        if item[0] == "rec":
            line = format_record(item[1], self.host)
            if line is None and item[1].get("type") not in MEASUREMENTS:
                self._warn_once(("type", item[1].get("type")),
                                "InfluxDB sink: no measurement for record type %r",
                                item[1].get("type"))
            return line, 1 if line else 0
        _, kind, src, dst, rx_ns, values, scale = item
        prefix = f"{kind.decode()},destination={escape(dst)},source={escape(src)} value="
        return format_int_points(prefix.encode(), values // scale, rx_ns), len(rx_ns)

    def _add(self, item) -> None:
        data, n = self._format(item)
        if n:
            self._buf.append(data)
            with self._lock:
                self._buf_points += n

    def _drain(self, wait: float) -> None:
        """Wait up to `wait` s for items, then format what is queued (up to one chunk)."""
        try:
            item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        with self._state:
            while True:
                if self._abandoned:
                    self._count("dropped", self._format(item)[1] if item else 0)
                    return
                if item is not None:
                    self._add(item)
                if self._buf_points >= defaults.SINK_CHUNK_POINTS:
                    return
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return

    def _seal(self) -> None:
        if not self._buf:
            return
        chunk = _Chunk(b"".join(self._buf), self._buf_points)
        self._buf = []
        with self._lock:
            self._pending.append(chunk)
            self._pending_points += chunk.points
            self._buf_points = 0
        if self._pending_points > self.memory_points:
            self._spill(self.memory_points // 2)

    def _spill(self, keep_points: int) -> None:
        """Move the oldest memory chunks to spool files until at most keep_points remain."""
        while self._pending and self._pending_points > keep_points:
            group = []
            while (self._pending and self._pending_points > keep_points
                   and sum(c.points for c in group) < defaults.SINK_CHUNK_POINTS):
                with self._lock:
                    chunk = self._pending.popleft()
                    self._pending_points -= chunk.points
                group.append(chunk)
            points = sum(c.points for c in group)
            try:
                self._spool.add(b"".join(c.data for c in group))
            except OSError as e:
                self._count("dropped", points)
                log.error("cannot spool %d points to %s (%s); dropped", points, self.spool_dir, e)
                continue
            self._count("spooled", points)

    def _write(self, data: bytes) -> str:
        """One synchronous write: 'ok', 'retry' (keep the data) or 'reject' (drop it)."""
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._write_api.write(self.bucket, self.org, data, write_precision=WritePrecision.NS)
        except ApiException as e:
            if e.status == 429 or (e.status or 0) >= 500:
                self._retry_after = self._parse_retry_after(e)
                return self._outage(f"answers HTTP {e.status} {e.reason}")
            self._reject(e)
            return "reject"
        except (HTTPError, OSError, HTTPException) as e:
            self._retry_after = 0.0
            return self._outage(f"unreachable ({type(e).__name__}: {str(e).split(': ')[-1]})")
        if self._down_since is not None:
            log.warning("InfluxDB at %s is back after %.1f s; replaying held points", self.url,
                        time.monotonic() - self._down_since)
            self._down_since = None
        if self.error is not None:
            log.warning("InfluxDB at %s accepts writes again", self.url)
            self.error = None
            for key in [w for w in list(self._warned) if isinstance(w, tuple) and w[0] == "reject"]:
                self._warned.discard(key)
        return "ok"

    @staticmethod
    def _parse_retry_after(e) -> float:
        try:
            return min(60.0, float((e.headers or {}).get("Retry-After", 0)))
        except (TypeError, ValueError):
            return 0.0

    def _outage(self, cause: str) -> str:
        self._count("failed_requests")
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("InfluxDB at %s %s; keeping points (memory up to %d, then spool %s) "
                        "and retrying", self.url, cause, self.memory_points, self.spool_dir)
        return "retry"

    def _reject(self, e) -> None:
        status = e.status
        body = (e.body or b"")
        body = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        if status in (401, 403):
            msg = (f"InfluxDB rejected the credentials ({status} {e.reason}) at {self.url}; "
                   "check --token, or --username/--password (and --auth-basic for Basic auth)")
        elif status == 404:
            msg = (f"InfluxDB has no bucket/database '{self.bucket}' in org '{self.org}' "
                   f"({status}) at {self.url}; check --database, --retention-policy and "
                   "--influx-org, or create it")
        else:
            msg = f"InfluxDB refused points ({status} {e.reason}) at {self.url}: {body[:300]}"
        self.error = msg
        self._warn_once(("reject", status), "%s", msg)

    def _next(self):
        """(data, points, chunk or None, spool path or None) of the oldest held data."""
        while len(self._spool):
            path, data, points = self._spool.oldest()
            if data is not None:
                return data, points, None, path
            log.error("cannot read spool file %s; skipped (%d points)", path, points)
            self._count("dropped", points)
            try:
                self._spool.remove(path)
            except OSError:
                pass
        chunk = self._pending[0]
        return chunk.data, chunk.points, chunk, None

    def _send(self) -> None:
        """Write spool files (oldest first), then memory chunks, until one fails."""
        while True:
            with self._state:
                if self._abandoned or not (len(self._spool) or self._pending):
                    return
                if self._closing.is_set() and time.monotonic() >= self._deadline:
                    return
                data, points, chunk, path = self._next()
            result = self._write(data) if points else "ok"  # the only step without the lock
            with self._state:
                if self._abandoned:
                    return
                if result == "retry":
                    if chunk is None or not chunk.failed:
                        self._count("retried", points)
                        if chunk is not None:
                            chunk.failed = True
                    delay = max(self._retry_after, self._backoff)
                    self._retry_at = time.monotonic() + delay
                    self._backoff = min(self._backoff * 2, defaults.SINK_BACKOFF_MAX_S)
                    return
                self._backoff = defaults.SINK_BACKOFF_MIN_S
                with self._lock:
                    if chunk is None:
                        try:
                            self._spool.remove(path)
                        except OSError as e:
                            log.error("cannot remove spool file %s (%s); it will be written "
                                      "again", path, e)
                    else:
                        self._pending.popleft()
                        self._pending_points -= points
                    if result == "ok":
                        self._counters["written"] += points
                        if chunk is None:
                            self._counters["replayed"] += points
                    else:
                        self._counters["dropped"] += points
                        self._counters["rejected"] += points

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception:  # a bug must not stop the writing for the rest of the run
                log.exception("InfluxDB writer failed; restarting it")
                time.sleep(0.5)

    def _loop(self) -> None:
        next_flush = time.monotonic() + self.flush_s
        while not self._abandoned:
            now = time.monotonic()
            closing = self._closing.is_set()
            backlog = bool(len(self._spool) or self._pending)
            if closing:
                wake = max(self._retry_at, now) if backlog else now
                wake = min(wake, self._deadline)
            else:
                wake = min(next_flush, self._retry_at) if backlog else next_flush
            self._drain(wake - now)
            now = time.monotonic()
            if closing or now >= next_flush or self._buf_points >= defaults.SINK_CHUNK_POINTS:
                with self._state:
                    if not self._abandoned:
                        self._seal()
                if now >= next_flush:
                    next_flush = now + self.flush_s
            if now >= self._retry_at:
                self._send()
            if closing and self._queue.empty() and not self._buf:
                with self._state:
                    if self._abandoned or not (len(self._spool) or self._pending):
                        return
                    if time.monotonic() >= self._deadline:
                        self._spill(0)
                        return
