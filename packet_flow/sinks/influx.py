"""InfluxDB sink: the hand-off from the probe's threads and the writer thread. Line protocol
is in lineproto.py, the server (both write APIs, what an answer means) in influxlink.py, the
write path's state machine (memory, spool, retries) in influxwriter.py, the spool in spool.py.

Rules:
- The caller's thread only hands items to a bounded queue (`put_nowait`); it never formats
  a batch, never touches HTTP and never raises. A full queue drops the item and counts it.
- One writer thread formats line protocol (vectorised for per-packet points) and hands one
  chunk per flush interval (--flush-interval, 0 = --interval) to the write path, which
  writes it synchronously (influxdb-client's batching mode drops a batch after its retries,
  REFERENCE.md §5).
- Nothing the server says is permission to drop points (influxwriter.py): memory while the
  server answers, the spool from the first failed write on; spool files left by an earlier
  run for the same server, org and bucket are replayed first.
- `close()` gives the write path one more try within its timeout and spools the rest; when
  the writer hangs in an HTTP call past the timeout, close() spools everything itself.
- The writer restarts after an unexpected exception; when the same exception comes
  SINK_WRITER_FAILURES times in a row it stops, spools what it holds and calls
  on_failure(SinkError): the run ends with that error (exit 1).
- Options: --influx-org is passed as given (InfluxDB 1.8+ and VictoriaMetrics ignore it);
  the `host` tag is the machine's host name; the memory bound is SINK_MEMORY_POINTS
  (defaults.py), not an option.
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

import numpy as np

from packet_flow import defaults
from packet_flow.errors import SinkError
from packet_flow.sinks import influxlink
from packet_flow.sinks.influxwriter import CLOSED, FAILED, WritePath
from packet_flow.sinks.lineproto import MEASUREMENTS, escape, format_int_points, format_record
from packet_flow.sinks.spool import Spool

log = logging.getLogger(__name__)


def _points_of(item) -> int:
    """Points of a queued item without formatting it (a record: one, plus one per
    loss-burst length)."""
    if item[0] == "pts":
        return len(item[4])
    hist = item[1].get("loss_burst_hist")
    return 1 + (sum(1 for v in hist.values() if v) if isinstance(hist, dict) else 0)


def open_spool(cfg, target: str):
    """(folder, Spool) of this server, org and bucket under --spool-dir; SinkError (exit 1)
    when it cannot be used."""
    base = cfg.spool_dir or os.path.join(tempfile.gettempdir(), "packet-flow-spool")
    folder = os.path.join(base, hashlib.sha1(target.encode()).hexdigest()[:12])
    try:
        spool = Spool(folder, int(cfg.spool_max_bytes))
    except OSError as e:
        raise SinkError(f"option --spool-dir: cannot write to {base!r} "
                        f"({e.strerror or e})") from e
    if spool.stale:
        log.info("removed %d unfinished .tmp files from %s", spool.stale, folder)
    if spool.points:
        log.info("replaying %d points left in %s by an earlier run", spool.points, folder)
    return folder, spool


def keep_under_cap(state: dict, key, rx_ns: np.ndarray, cap: int) -> np.ndarray:
    """Mask of points kept under `cap` per flow (`key`) per second of rx time; `state`
    carries each flow's last second and its points so far across batches."""
    n = len(rx_ns)
    sec = rx_ns // 1_000_000_000
    order = np.argsort(sec, kind="stable")
    s = sec[order]
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    rank = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    last_sec, used = state.get(key, (-1, 0))
    rank = rank + np.where(s == last_sec, used, 0)
    state[key] = (int(s[-1]), min(cap, int(rank[-1]) + 1))
    keep = np.empty(n, bool)
    keep[order] = rank < cap
    return keep


def format_item(item, host: str) -> tuple[bytes | None, int]:
    """(line protocol, points) of a queued record or batch of compat points."""
    if item[0] == "rec":
        data = format_record(item[1], host)
        return data, data.count(b"\n") if data else 0
    _, kind, src, dst, rx_ns, values, scale = item
    prefix = f"{kind.decode()},destination={escape(dst)},source={escape(src)} value="
    return format_int_points(prefix.encode(), values // scale, rx_ns), len(rx_ns)


def log_shutdown(c: dict, server, spool_dir: str, rejected: dict) -> None:
    """What close() says: points neither written nor spooled, kept in the spool, refused."""
    if c["queued"]:
        log.error("InfluxDB at %s: %d points neither written nor spooled at shutdown",
                  server.url, c["queued"])
    if c["spool_points"]:
        log.warning("InfluxDB at %s: %d points not written at shutdown; kept in %s for the "
                    "next start", server.url, c["spool_points"], spool_dir)
    for reason, n in rejected.items():
        log.warning("InfluxDB at %s refused %d points: %s", server.shown_url, n, reason)
    log.info("InfluxDB sink: written %(written)d, retried %(retried)d, spooled %(spooled)d, "
             "dropped %(dropped)d, rejected %(rejected)d, capped %(capped)d", c)


class InfluxSink:
    """Writes contract records (and optional compat points) to InfluxDB without losing any.

    Public API: the Sink contract (record, packets, gaps, close, counters), api (the chosen
    write API, None until known), rejected_reasons ({server reason: points}), error (the last
    problem's log line, None while writes succeed), state (the write path's), spool_dir.
    Raises SinkError at construction only, when the spool directory cannot be used.
    """

    wants_rtts = wants_idle = closes_last = False

    def __init__(self, cfg):
        self.url = cfg.influx_url
        self.host = socket.gethostname()
        self.compat = bool(cfg.compat_points)
        self.wants_packets = self.wants_gaps = self.compat
        self.on_failure = None
        self.failure: SinkError | None = None
        self.compat_max_pps = int(cfg.compat_max_pps)
        self.flush_s = cfg.flush_interval if cfg.flush_interval > 0 else cfg.interval
        bucket = f"{cfg.database}/{cfg.retention_policy}" if cfg.retention_policy else \
            cfg.database
        self.spool_dir, spool = open_spool(cfg, f"{self.url}|{cfg.influx_org}|{bucket}")
        self.server = influxlink.Server(
            self.url, cfg.database, cfg.retention_policy, cfg.influx_org, cfg.username,
            cfg.password, cfg.token, bool(cfg.auth_basic), cfg.influx_api,
            defaults.SINK_HTTP_TIMEOUT_S, f"spool {self.spool_dir}")
        self.path = WritePath(self.server, spool, defaults.SINK_MEMORY_POINTS)
        self._queue = queue.Queue(maxsize=defaults.SINK_QUEUE_RECORDS)
        self._buf: list[bytes] = []
        self._buf_points = 0
        self._buf_lock = threading.Lock()   # the formatted points not yet handed to the path
        self._cap_state: dict = {}
        self._warned: set = set()
        self._closing = threading.Event()
        self._deadline = math.inf
        self._next_flush = time.monotonic() + self.flush_s
        self._flushed = False
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self._thread.start()

    api = property(lambda self: self.server.api)
    error = property(lambda self: self.path.error)
    state = property(lambda self: self.path.state)
    rejected_reasons = property(lambda self: self.path.rejected_reasons)

    # ---- caller side: never blocks, never raises -------------------------------------------

    def _drop(self, points: int) -> None:
        with self.path.lock:
            self.path.counters["dropped"] += points

    def _warn_once(self, key, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def _put(self, item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop(_points_of(item))
            self._warn_once("queue", "InfluxDB sink hand-off queue full (%d items); dropping "
                            "points (the writer cannot keep up)", self._queue.maxsize)

    def record(self, rec: dict) -> None:
        """Queue one contract record (interval, sender, summary, receiver) for writing."""
        if self._closing.is_set():
            return
        self._put(("rec", dict(rec)))  # a copy: the caller may reuse its dict

    def _compat(self, kind: bytes, source, destination, rx_ns, values, scale: int) -> None:
        if not self.compat or self._closing.is_set() or len(rx_ns) == 0:
            return
        rx_ns = np.asarray(rx_ns, np.int64)
        values = np.asarray(values, np.int64)
        if self.compat_max_pps > 0:
            keep = keep_under_cap(self._cap_state, (kind, source, destination), rx_ns,
                                  self.compat_max_pps)
            capped = len(keep) - int(keep.sum())
            if capped:
                with self.path.lock:
                    self.path.counters["capped"] += capped
                self._warn_once("cap", "compat points capped at %d/s per flow (first: %s %s -> "
                                "%s); the counter `capped` has the total",
                                self.compat_max_pps, kind.decode(), source, destination)
                rx_ns, values = rx_ns[keep], values[keep]
            else:
                rx_ns, values = rx_ns.copy(), values.copy()
        else:
            rx_ns, values = rx_ns.copy(), values.copy()  # the caller may reuse its arrays
        if len(rx_ns):
            self._put(("pts", kind, source, destination, rx_ns, values, scale))

    def packets(self, source: str, destination: str, rx_ns: np.ndarray,
                owd_ns: np.ndarray) -> None:
        """Queue compat `latency` points (field value = one-way delay in integer µs)."""
        self._compat(b"latency", source, destination, rx_ns, owd_ns, 1000)

    def gaps(self, source: str, destination: str, rx_ns: np.ndarray, lost: np.ndarray) -> None:
        """Queue compat `packet_loss` points (field value = packets lost in the gap)."""
        self._compat(b"packet_loss", source, destination, rx_ns, lost, 1)

    @property
    def counters(self) -> dict:
        """influxwriter.COUNTERS (points unless named otherwise: failed_requests and
        split_requests are requests), `queued` (points in memory, formatted and still in the
        hand-off queue) and `spool_points` (points in spool files)."""
        with self.path.lock:
            out = dict(self.path.counters)
            out["queued"] = self.path.held + self._buf_points + self._queue.qsize()
            out["spool_points"] = self.path.spool.points
        return out

    def close(self, timeout: float = defaults.SHUTDOWN_FLUSH_S, counters=None) -> dict:
        """Flush within `timeout` s; spool and log what could not be written; return counters."""
        if not self._closing.is_set():
            self._deadline = time.monotonic() + timeout
            self._closing.set()
            try:
                self._queue.put_nowait(None)  # wake the writer
            except queue.Full:
                pass
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        if self.failure is not None:    # the writer gave up: spool what came since
            self._hand_over(FAILED, timeout=0.5)
        elif self._thread.is_alive():   # in an HTTP call that does not end: spool from here
            self._hand_over(CLOSED, timeout=0.5)
        c = self.counters
        log_shutdown(c, self.server, self.spool_dir, self.rejected_reasons)
        self.server.close()
        return c

    def _hand_over(self, state: str, timeout: float) -> None:
        """Format what is queued and give it, with everything the path holds, to the spool;
        the path ends in `state` (closed, or failed)."""
        if not self._buf_lock.acquire(timeout=timeout):
            return
        try:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    try:
                        self._add(item)
                    except Exception:   # noqa: BLE001 - the formatting is what fails
                        self._drop(_points_of(item))
            data, points = self._take()
            self.path.abandon(state, timeout, (data, points))
        finally:
            self._buf_lock.release()

    # ---- writer thread ----------------------------------------------------------------------

    def _add(self, item) -> None:
        """Format one item into the buffer (buffer lock held)."""
        if item[0] == "rec" and item[1].get("type") not in MEASUREMENTS:
            self._warn_once(("type", item[1].get("type")), "InfluxDB sink: no measurement for "
                            "record type %r", item[1].get("type"))
        data, n = format_item(item, self.host)
        if n:
            self._buf.append(data)
            self._buf_points += n

    def _take(self) -> tuple[bytes, int]:
        """The buffer's points as one chunk (buffer lock held)."""
        data, points = b"".join(self._buf), self._buf_points
        self._buf, self._buf_points = [], 0
        return data, points

    def _drain(self, wait: float) -> None:
        """Wait up to `wait` s for items, then format what is queued (up to one chunk)."""
        try:
            item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        with self._buf_lock:
            while True:
                if item is not None:
                    try:
                        self._add(item)
                    except Exception:
                        self._drop(_points_of(item))
                        raise
                if self._buf_points >= defaults.SINK_CHUNK_POINTS:
                    return
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return

    def _flush(self) -> None:
        with self._buf_lock:
            data, points = self._take()
        self.path.add(data, points)
        self._flushed = self._flushed or points > 0

    def _cycle(self) -> bool:
        """One turn of the writer: wait, format, flush, write. True when the writer is done."""
        if self.path.state in (CLOSED, FAILED):
            return True
        closing = self._closing.is_set()
        now = time.monotonic()
        wake = self._next_flush
        if self.path.held or len(self.path.spool):
            wake = min(wake, self.path.retry_at)
        self._drain(0 if closing else wake - now)
        now = time.monotonic()
        if closing or now >= self._next_flush or self._buf_points >= defaults.SINK_CHUNK_POINTS:
            self._flush()
            if now >= self._next_flush:
                self._next_flush = now + self.flush_s
        if closing:
            if not self._queue.empty():
                return False
            self.path.finish(self._deadline)
            return True
        if self.path.due():
            self.path.pump()
        return False

    def _run(self) -> None:
        if not self._closing.is_set():
            self.path.connect()     # the API choice is logged at start, not at the first flush
        last, streak = None, 0
        while True:
            try:
                self._flushed = False
                if self._cycle():
                    return
                if self._flushed:   # points went through: whatever failed before is past
                    streak = 0
            except Exception as exc:
                why = (type(exc).__name__, str(exc))
                streak = streak + 1 if why == last else 1
                last = why
                if streak >= defaults.SINK_WRITER_FAILURES:
                    self._give_up(exc, streak)
                    return
                log.exception("InfluxDB writer failed (%d of %d times in a row for this "
                              "reason); restarting it", streak, defaults.SINK_WRITER_FAILURES)
                time.sleep(defaults.SINK_WRITER_RESTART_S)

    def _give_up(self, exc: Exception, times: int) -> None:
        """The writer keeps failing the same way: spool what it holds and end the run."""
        self._hand_over(FAILED, timeout=1.0)
        self.failure = SinkError(
            f"InfluxDB writer failed {times} times in a row with {type(exc).__name__}: {exc}; "
            f"stopped ({self.path.spool.points} points kept in {self.spool_dir})")
        log.error("%s", self.failure, exc_info=exc)
        if self.on_failure is not None:
            self.on_failure(self.failure)
