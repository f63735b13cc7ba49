"""InfluxDB sink: the writer thread that sends contract records and compat points, off the
receive path. Line protocol is in lineproto.py, the server link (both write APIs, what an
answer means) in influxlink.py, the durable spool in spool.py.

Rules:
- The caller's thread only hands items to a bounded queue (`put_nowait`); it never formats
  a batch, never touches HTTP and never raises. A full queue drops the item and counts it.
- One background writer thread formats line protocol (lineproto.py; vectorised for
  per-packet points), joins it into chunks every flush interval and writes each chunk
  synchronously (influxdb-client's batching mode drops a batch after its retries,
  REFERENCE.md §5). The write API (1.x or 2.x) is chosen once, before the first write.
- Nothing the server says is permission to drop points. No answer, 401, 403, 404, 429, 5xx
  and any other 4xx are an outage: the chunk stays, retries back off, and the cause is
  logged with the server's own message at most once a minute per cause. Memory holds up to
  `memory_points` points; older chunks spill to the spool. Spool files are older than memory
  chunks and are replayed first, oldest first; files an earlier run left for the same server
  and bucket are replayed at start.
- 413 splits the chunk in halves; a 400/422 partial write counts exactly the points the
  server refused (counter `rejected`, log line with the reason) and the rest as written.
- The spool is capped (`spool_max_bytes`): past it the oldest points go, counted
  (`spool_evicted`) and logged. A spool write that fails (disk full) keeps the points in
  memory (`spool_failed`), up to SINK_MEMORY_HARD_FACTOR x `memory_points`, beyond which
  the oldest are dropped, counted and logged.
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

import numpy as np

from packet_flow import defaults
from packet_flow.errors import SinkError
from packet_flow.masking import mask_url
from packet_flow.sinks import influxlink
from packet_flow.sinks.lineproto import MEASUREMENTS, escape, format_int_points, format_record
from packet_flow.sinks.spool import Spool

log = logging.getLogger(__name__)

COUNTERS = ("written", "retried", "spooled", "dropped", "replayed", "rejected", "capped",
            "failed_requests", "split_requests", "spool_evicted", "spool_failed")


class _Chunk:
    __slots__ = ("data", "points", "failed", "front", "unspooled")

    def __init__(self, data: bytes, points: int, front: bool = False):
        self.data, self.points, self.failed = data, points, False
        self.front = front          # a half of a split chunk: written before the spool
        self.unspooled = False      # counted once in spool_failed


class InfluxSink:
    """Writes contract records (and optional compat points) to InfluxDB without losing any.

    Public API: record(), packets(), gaps(), close(), counters, api (the chosen write API,
    None until known), rejected_reasons ({server reason: points}), error (the last problem's
    log line, None while writes succeed), wants_packets. Raises SinkError at construction
    only, when the spool directory cannot be created, read or written.
    """

    def __init__(self, cfg):
        def opt(name, default=None):
            return getattr(cfg, name, None) or default

        self.url = opt("influx_url", defaults.INFLUX_URL)
        self.database = opt("database", defaults.DATABASE)
        self.rp = opt("retention_policy", defaults.RETENTION_POLICY)
        self.username, self.password = opt("username"), opt("password")
        self.token, self.auth_basic = opt("token"), bool(opt("auth_basic", False))
        self.org = opt("influx_org", defaults.INFLUX_ORG)
        if self.username:  # InfluxDB 1.8+ compatibility API on the 2.x path
            self.org = "-"
        self.bucket = f"{self.database}/{self.rp}" if self.rp else self.database
        self.forced_api = opt("influx_api", defaults.INFLUX_API)
        self.api: str | None = None
        self._link = None
        self.host = opt("hostname") or socket.gethostname()
        self.compat = bool(opt("compat_points", False))
        self.wants_packets = self.compat  # the run loop hands per-packet arrays only if True
        self.compat_max_pps = int(getattr(cfg, "compat_max_pps", defaults.COMPAT_MAX_PPS) or 0)
        self.flush_s = opt("flush_interval", defaults.FLUSH_INTERVAL_S) or opt(
            "interval", defaults.INTERVAL_S)
        self.memory_points = opt("memory_points", defaults.SINK_MEMORY_POINTS)
        max_bytes = getattr(cfg, "spool_max_bytes", None)
        max_bytes = defaults.SPOOL_MAX_BYTES if max_bytes is None else int(max_bytes)
        base = opt("spool_dir", defaults.SPOOL_DIR) or os.path.join(tempfile.gettempdir(),
                                                                    "packet-flow-spool")
        target = f"{self.url}|{self.org}|{self.bucket}".encode()
        self.spool_dir = os.path.join(base, hashlib.sha1(target).hexdigest()[:12])
        try:
            self._spool = Spool(self.spool_dir, max_bytes)
        except OSError as e:
            raise SinkError(f"option --spool-dir: cannot write to {base!r} "
                            f"({e.strerror or e})") from e
        if self._spool.stale:
            log.info("removed %d unfinished .tmp files from %s", self._spool.stale,
                     self.spool_dir)
        if self._spool.points:
            log.info("replaying %d points left in %s by an earlier run",
                     self._spool.points, self.spool_dir)
        self._counters = dict.fromkeys(COUNTERS, 0)
        self.rejected_reasons: dict[str, int] = {}
        self._queue = queue.Queue(maxsize=defaults.SINK_QUEUE_RECORDS)
        self._pending: deque[_Chunk] = deque()
        self._pending_points = 0
        self._buf: list[bytes] = []
        self._buf_points = 0
        self._cap_state: dict = {}
        self._warned: set = set()
        self._warned_at: dict = {}
        self._lock = threading.Lock()  # counters (both threads; held only briefly)
        self._state = threading.Lock()  # buffers, memory chunks, spool list (never during HTTP)
        self._abandoned = False  # set by close() when the writer is stuck in an HTTP call
        self._closing = threading.Event()
        self._deadline = math.inf
        self._retry_at = 0.0
        self._spool_retry_at = 0.0
        self._backoff = defaults.SINK_BACKOFF_MIN_S
        self._down_since = None
        self.error: str | None = None
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

    def _put(self, item, points: int | None) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if points is None:  # a record: one point, plus one per loss-burst length
                hist = item[1].get("loss_burst_hist")
                points = 1 + (sum(1 for v in hist.values() if v) if isinstance(hist, dict) else 0)
            self._count("dropped", points)
            self._warn_once("queue", "InfluxDB sink hand-off queue full (%d items); dropping "
                            "points (the writer cannot keep up)", self._queue.maxsize)

    def record(self, rec: dict) -> None:
        """Queue one contract record (interval, sender, summary, receiver) for writing."""
        if self._closing.is_set():
            return
        self._put(("rec", dict(rec)), None)  # a copy: the caller may reuse its dict

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
        """COUNTERS (points unless named otherwise: failed_requests and split_requests are
        requests), `queued` (points in memory plus items still in the hand-off queue) and
        `spool_points` (points in spool files)."""
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
        for reason, n in self.rejected_reasons.items():
            log.warning("InfluxDB at %s refused %d points: %s", mask_url(self.url), n, reason)
        log.info("InfluxDB sink: written %(written)d, retried %(retried)d, spooled %(spooled)d, "
                 "dropped %(dropped)d, rejected %(rejected)d, capped %(capped)d", c)
        if self._link is not None:
            self._link.close()
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
            self._spool_retry_at = 0.0
            self._spill(0)
        finally:
            self._state.release()

    # ---- writer thread ------------------------------------------------------------------

    def _warn_every(self, key, msg: str, *args, level=logging.WARNING) -> bool:
        """Log at most once per SINK_WARN_EVERY_S per key; True when it logged."""
        now = time.monotonic()
        if now - self._warned_at.get(key, -math.inf) < defaults.SINK_WARN_EVERY_S:
            return False
        self._warned_at[key] = now
        log.log(level, msg, *args)
        return True

    def _format(self, item) -> tuple[bytes | None, int]:
        if item[0] == "rec":
            data = format_record(item[1], self.host)
            if data is None and item[1].get("type") not in MEASUREMENTS:
                self._warn_once(("type", item[1].get("type")),
                                "InfluxDB sink: no measurement for record type %r",
                                item[1].get("type"))
            return data, data.count(b"\n") if data else 0
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
        hard = self.memory_points * defaults.SINK_MEMORY_HARD_FACTOR
        while self._pending_points > hard and len(self._pending) > 1:
            with self._lock:
                old = self._pending.popleft()
                self._pending_points -= old.points
                self._counters["dropped"] += old.points
            self._warn_every("memory", "InfluxDB sink: %d points in memory and the spool "
                             "cannot take more; dropping the oldest (counter `dropped`)",
                             hard, level=logging.ERROR)

    def _spill(self, keep_points: int) -> None:
        """Move the oldest memory chunks to spool files until at most keep_points remain.

        A failed spool write keeps the chunks in memory and pauses spilling for a while."""
        while self._pending and self._pending_points > keep_points:
            if time.monotonic() < self._spool_retry_at:
                return
            group = []
            with self._lock:
                while (self._pending and self._pending_points > keep_points
                       and sum(c.points for c in group) < defaults.SINK_CHUNK_POINTS):
                    chunk = self._pending.popleft()
                    self._pending_points -= chunk.points
                    group.append(chunk)
            points = sum(c.points for c in group)
            try:
                evicted = self._spool.add(b"".join(c.data for c in group))
            except OSError as e:
                fresh = sum(c.points for c in group if not c.unspooled)
                for c in group:
                    c.unspooled = True
                with self._lock:
                    self._pending.extendleft(reversed(group))
                    self._pending_points += points
                    self._counters["spool_failed"] += fresh
                self._spool_retry_at = time.monotonic() + defaults.SINK_SPOOL_RETRY_S
                self._warn_every("spool-write", "cannot write to the spool (--spool-dir %s: "
                                 "%s); keeping %d points in memory (counter `spool_failed`)",
                                 self.spool_dir, e.strerror or e, self._pending_points,
                                 level=logging.ERROR)
                return
            with self._lock:
                self._counters["spooled"] += points
                if evicted:
                    self._counters["spool_evicted"] += evicted
                    self._counters["dropped"] += evicted
            if evicted:
                self._warn_every("spool-cap", "spool %s reached --spool-max-bytes %d: dropped "
                                 "the %d oldest points (counter `spool_evicted` has the total)",
                                 self.spool_dir, self._spool.max_bytes, evicted)

    def _connect(self) -> bool:
        """Choose the write API (once) and open its link; False while the server is silent."""
        headers = influxlink.auth_headers(self.username, self.password, self.token,
                                          self.auth_basic)
        api, why = influxlink.choose_api(self.forced_api, self.url, headers,
                                         defaults.SINK_HTTP_TIMEOUT_S)
        if api is None:
            self._trouble("unreachable", f"InfluxDB at {self.url} {why}; keeping points "
                          f"(memory up to {self.memory_points}, then spool {self.spool_dir}) "
                          "and retrying")
            return False
        if api == "v1":
            self._link = influxlink.V1Link(self.url, self.database, self.rp, self.username,
                                           self.password, self.token, self.auth_basic,
                                           defaults.SINK_HTTP_TIMEOUT_S)
        else:
            token = f"{self.username}:{self.password or ''}" if self.username else self.token
            self._link = influxlink.V2Link(self.url, self.bucket, self.org, token,
                                           self.auth_basic, defaults.SINK_HTTP_TIMEOUT_S)
        self.api = api
        log.info("InfluxDB at %s: %s; writing with the %s API (%s)", mask_url(self.url), why,
                 "1.x" if api == "v1" else "2.x", self._link.where)
        return True

    def _trouble(self, key, msg: str) -> None:
        """A write that must be tried again: count it, log it at most once a minute."""
        self._count("failed_requests")
        if self._down_since is None:
            self._down_since = time.monotonic()
        self.error = msg
        self._warn_every(key, "%s", msg)

    def _explain(self, answer) -> tuple[str, str]:
        """(key, log line) for an answer that is an outage."""
        status, text = answer.status, answer.message
        keep = "; keeping points and retrying"
        if status is None:
            return "unreachable", (
                f"InfluxDB at {self.url} unreachable ({text}); keeping points (memory up to "
                f"{self.memory_points}, then spool {self.spool_dir}) and retrying")
        if status in (401, 403):
            return status, (
                f"InfluxDB at {self.url} refused the credentials ({status}: {text}); check "
                "--token, or --username/--password (and --auth-basic for Basic auth)" + keep)
        if status == 404:
            return status, (
                f"InfluxDB at {self.url} has no {self._link.target} ({status}: {text}); check "
                "--database, --retention-policy and --influx-org, or create it" + keep)
        return status, f"InfluxDB at {self.url} answers HTTP {status} ({text})" + keep

    def _next(self):
        """(data, points, chunk or None, spool path or None) of the oldest held data;
        halves of a split chunk go first."""
        if self._pending and self._pending[0].front:
            chunk = self._pending[0]
            return chunk.data, chunk.points, chunk, None
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

    def _take(self, chunk, path, points) -> None:
        """Remove the data just answered from memory or the spool (lock held)."""
        if chunk is None:
            try:
                self._spool.remove(path)
            except OSError as e:
                log.error("cannot remove spool file %s (%s); it will be written again", path, e)
        else:
            with self._lock:
                self._pending.remove(chunk)
                self._pending_points -= points

    def _send(self) -> None:
        """Write the held data (split halves, spool files oldest first, then memory chunks)
        until a write must be retried later."""
        while True:
            with self._state:
                if self._abandoned or not (len(self._spool) or self._pending):
                    return
                if self._closing.is_set() and time.monotonic() >= self._deadline:
                    return
                data, points, chunk, path = self._next()
            # the only steps without the lock: HTTP
            if self._link is None and not self._connect():
                answer = None
            else:
                answer = self._link.write(data) if points else influxlink.Answer(204, "")
            verdict = influxlink.classify(answer, points) if answer else influxlink.Verdict(
                "retry")
            with self._state:
                if self._abandoned:
                    return
                if verdict.action == "retry":
                    if answer is not None:
                        retry_after = answer.retry_after
                        self._trouble(*self._explain(answer))
                    else:
                        retry_after = 0.0
                    if chunk is None or not chunk.failed:
                        self._count("retried", points)
                        if chunk is not None:
                            chunk.failed = True
                    self._retry_at = time.monotonic() + max(retry_after, self._backoff)
                    self._backoff = min(self._backoff * 2, defaults.SINK_BACKOFF_MAX_S)
                    return
                self._backoff = defaults.SINK_BACKOFF_MIN_S
                self._recovered()
                self._take(chunk, path, points)
                if verdict.action == "split":
                    halves = [_Chunk(h, h.count(b"\n"), front=True)
                              for h in influxlink.split(data)]
                    with self._lock:
                        self._pending.extendleft(reversed(halves))
                        self._pending_points += points
                        self._counters["split_requests"] += 1
                    if answer.status == 413:
                        self._warn_once("413", "InfluxDB at %s: request too large (413) for %d "
                                        "points; splitting chunks", self.url, points)
                    continue
                refused = verdict.refused
                with self._lock:
                    self._counters["written"] += points - refused
                    if chunk is None:
                        self._counters["replayed"] += points - refused
                    self._counters["rejected"] += refused
                    self._counters["dropped"] += refused
                if refused:
                    reasons = self.rejected_reasons
                    reasons[verdict.reason] = reasons.get(verdict.reason, 0) + refused
                    self._warn_every(("refused", verdict.reason), "InfluxDB at %s refused %d "
                                     "of %d points (%s); the counter `rejected` has the total",
                                     self.url, refused, points, verdict.reason)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("InfluxDB at %s is back after %.1f s; replaying held points", mask_url(self.url),
                        time.monotonic() - self._down_since)
            self._down_since = None
            self._warned_at = {k: v for k, v in self._warned_at.items()
                               if not isinstance(k, int) and k != "unreachable"}
        self.error = None

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception:  # a bug must not stop the writing for the rest of the run
                log.exception("InfluxDB writer failed; restarting it")
                time.sleep(0.5)

    def _loop(self) -> None:
        if self._link is None and not self._closing.is_set():
            self._connect()  # the API choice is logged at start, not at the first flush
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
                        self._spool_retry_at = 0.0
                        self._spill(0)
                        return
