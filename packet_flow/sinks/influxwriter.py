"""The InfluxDB write path as one small state machine, apart from threads and HTTP details.

States and transitions (`WritePath.state`):

    healthy  --a write fails------------------------------------------> spooling
    spooling --the spool and memory are written empty-------------------> healthy
    healthy | spooling --finish()--> closing --written, a failure, the deadline--> closed
    any      --abandon() (close timed out in HTTP) or fail() (writer bug)--> closed | failed

- healthy: memory is the fast path. Each flush's points become one chunk in memory, written
  at the next pump. Past `memory_points` the oldest chunks move to the spool.
- spooling: a write failed. Everything held moves to the spool at once, and each flush's
  points are written to the spool as they come (a file per flush, fsynced), so a crash loses
  at most one flush interval. Pumps replay the spool oldest first when the backoff allows
  (SINK_BACKOFF_MIN_S doubling to SINK_BACKOFF_MAX_S, or the server's Retry-After).
- closing: one more try to write what is held, no backoff wait; at the first failure or the
  deadline everything still held goes to the spool, complete, under its final name.
- A spool write that fails (disk full) keeps the points in memory (`spool_failed`), tried
  again after SINK_SPOOL_RETRY_S, up to SINK_MEMORY_HARD_FACTOR x memory_points; beyond it
  the oldest are dropped (`dropped`).
- What an answer means is influxlink.classify's: 413 and unexact 400/422 split a chunk in
  halves (written first), a partial write counts the refused points (`rejected`).
- The clock and the server are passed in: tests drive the machine with a fake clock and a
  fake server. One lock guards the state; it is never held during a write to the server,
  so close() can abandon a write that hangs.
"""

import logging
import math
import threading
import time
from collections import deque

from packet_flow import defaults
from packet_flow.sinks import influxlink

log = logging.getLogger("packet_flow.sinks.influx")

HEALTHY, SPOOLING, CLOSING, CLOSED, FAILED = "healthy", "spooling", "closing", "closed", "failed"
COUNTERS = ("written", "retried", "spooled", "dropped", "replayed", "rejected", "capped",
            "failed_requests", "split_requests", "spool_evicted", "spool_failed")


class Chunk:
    __slots__ = ("data", "points", "front", "replay", "retried", "unspooled")

    def __init__(self, data: bytes, points: int, front: bool = False, replay: bool = False):
        self.data, self.points = data, points
        self.front = front          # a half of a split chunk: written before the spool
        self.replay = replay        # a half of spool files: counted in `replayed`
        self.retried = False        # counted once in `retried`
        self.unspooled = False      # counted once in `spool_failed`


class WritePath:
    """Holds the points not yet written (memory chunks and the spool) and decides what is
    written next, where new points go and what an answer changes (see the module rules).

    `server` has write(data) -> influxlink.Answer and explain(answer) -> (key, log line).
    """

    def __init__(self, server, spool, memory_points: int, clock=time.monotonic):
        self.server, self.spool, self.clock = server, spool, clock
        self.memory_points = memory_points
        self.memory: deque[Chunk] = deque()
        self.held = 0                   # points in memory
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.rejected_reasons: dict[str, int] = {}
        self.lock = threading.Lock()
        self.state = HEALTHY            # an earlier run's spool is replayed first all the same
        self.retry_at = 0.0
        self.backoff = defaults.SINK_BACKOFF_MIN_S
        self.spool_retry_at = 0.0
        self.down_since = None
        self.error: str | None = None   # the last problem's log line, None while writes work
        self._warned_at: dict = {}

    # ---- new points -------------------------------------------------------------------------

    def add(self, data: bytes, points: int) -> None:
        """One flush's points: memory while healthy, the spool once a write has failed."""
        if not points:
            return
        with self.lock:
            if self.state == CLOSED:
                self.counters["dropped"] += points
                return
            self.memory.append(Chunk(data, points))
            self.held += points
            if self.state != HEALTHY:
                self._spill(0)
            elif self.held > self.memory_points:
                self._spill(self.memory_points // 2)

    def _spill(self, keep: int) -> None:
        """Move the oldest memory chunks to one spool file until at most `keep` points
        remain; a failed spool write keeps them (lock held)."""
        group, left = [], self.held
        for c in self.memory:
            if left <= keep:
                break
            group.append(c)
            left -= c.points
        if not group or self.clock() < self.spool_retry_at:
            self._bound()
            return
        points = sum(c.points for c in group)
        try:
            evicted = self.spool.add(b"".join(c.data for c in group))
        except OSError as e:
            fresh = sum(c.points for c in group if not c.unspooled)
            for c in group:
                c.unspooled = True
            self.counters["spool_failed"] += fresh
            self.spool_retry_at = self.clock() + defaults.SINK_SPOOL_RETRY_S
            self._warn("spool-write", f"cannot write to the spool (--spool-dir {self.spool.dir}: "
                       f"{e.strerror or e}); keeping {self.held} points in memory (counter "
                       "`spool_failed`)", logging.ERROR)
            self._bound()
            return
        for c in group:
            self.memory.remove(c)
        self.held -= points
        self.counters["spooled"] += points
        if evicted:
            self.counters["spool_evicted"] += evicted
            self.counters["dropped"] += evicted
            self._warn("spool-cap", f"spool {self.spool.dir} reached --spool-max-bytes "
                       f"{self.spool.max_bytes}: dropped the {evicted} oldest points (counter "
                       "`spool_evicted` has the total)")

    def _bound(self) -> None:
        hard = self.memory_points * defaults.SINK_MEMORY_HARD_FACTOR
        while self.held > hard and len(self.memory) > 1:
            old = self.memory.popleft()
            self.held -= old.points
            self.counters["dropped"] += old.points
            self._warn("memory", f"InfluxDB sink: {hard} points in memory and the spool cannot "
                       "take more; dropping the oldest (counter `dropped`)", logging.ERROR)

    # ---- writing ----------------------------------------------------------------------------

    def connect(self) -> None:
        """Ask the server which API it speaks; no answer counts as a failed write."""
        why = self.server.connect()
        if why is not None:
            with self.lock:
                self._failed(None, 0, influxlink.Answer(None, why))

    def due(self) -> bool:
        """Something is held and the backoff allows a write now."""
        return bool(self.memory or len(self.spool)) and self.clock() >= self.retry_at

    def pump(self, deadline: float = math.inf) -> bool:
        """Write what is held, oldest first, until done, a failure or the deadline; True when
        nothing is held any more."""
        while True:
            with self.lock:
                if self.state in (CLOSED, FAILED) or self.clock() >= deadline:
                    return False
                if self.state == SPOOLING and self.memory and self.clock() >= self.spool_retry_at:
                    self._spill(0)      # chunks a full disk kept: the spool first, in order
                job = self._next()
                if job is None:
                    return True
            answer = self.server.write(job[0]) if job[1] else influxlink.Answer(204, "")
            with self.lock:
                if self.state in (CLOSED, FAILED):
                    return False
                if not self._answered(job, answer):
                    return False

    def _next(self):
        """(data, points, chunk or None, spool paths) of the oldest held data: split halves,
        then spool files (several oldest together, up to a chunk), then memory chunks; None
        when nothing is held."""
        if self.memory and self.memory[0].front:
            c = self.memory[0]
            return c.data, c.points, c, ()
        while len(self.spool):
            files = self.spool.oldest_files(defaults.SINK_CHUNK_POINTS)
            good = [f for f in files if f[1] is not None]
            if good:
                return (b"".join(f[1] for f in good), sum(f[2] for f in good), None,
                        [f[0] for f in good])
            path, _, points = files[0]
            log.error("cannot read spool file %s; skipped (%d points)", path, points)
            self.counters["dropped"] += points
            self._unlink(path)
        if self.memory:
            c = self.memory[0]
            return c.data, c.points, c, ()
        return None

    def _unlink(self, path) -> None:
        try:
            self.spool.remove(path)
        except OSError as e:
            log.error("cannot remove spool file %s (%s); it will be written again", path, e)

    def _answered(self, job, answer) -> bool:
        """Apply the server's answer (lock held); False when writing must pause."""
        data, points, chunk, paths = job
        verdict = influxlink.classify(answer, points)
        if verdict.action == "retry":
            self._failed(chunk, points, answer)
            return False
        self._recovered()
        if chunk is None:
            for path in paths:
                self._unlink(path)
        else:
            self.memory.remove(chunk)
            self.held -= points
        if verdict.action == "split":
            replay = chunk is None or chunk.replay
            halves = [Chunk(h, h.count(b"\n"), True, replay) for h in influxlink.split(data)]
            self.memory.extendleft(reversed(halves))
            self.held += points
            self.counters["split_requests"] += 1
            if answer.status == 413:
                self._warn("413", f"InfluxDB at {self.server.url}: request too large (413) for "
                           f"{points} points; splitting chunks", every=math.inf)
            return True
        written = points - verdict.refused
        self.counters["written"] += written
        if chunk is None or chunk.replay:
            self.counters["replayed"] += written
        if verdict.refused:
            self.counters["rejected"] += verdict.refused
            self.counters["dropped"] += verdict.refused
            reasons = self.rejected_reasons
            reasons[verdict.reason] = reasons.get(verdict.reason, 0) + verdict.refused
            self._warn(("refused", verdict.reason), f"InfluxDB at {self.server.url} refused "
                       f"{verdict.refused} of {points} points ({verdict.reason}); the counter "
                       "`rejected` has the total")
        if self.state == SPOOLING and not self.memory and not len(self.spool):
            self.state = HEALTHY
        return True

    def _failed(self, chunk, points, answer) -> None:
        """A write to try again later: count, log, back off, and spool what memory holds."""
        self.counters["failed_requests"] += 1
        if chunk is None or not chunk.retried:
            self.counters["retried"] += points
            if chunk is not None:
                chunk.retried = True
        if self.down_since is None:
            self.down_since = self.clock()
        key, self.error = self.server.explain(answer)
        self._warn(key, self.error)
        self.retry_at = self.clock() + max(answer.retry_after, self.backoff)
        self.backoff = min(self.backoff * 2, defaults.SINK_BACKOFF_MAX_S)
        if self.state == HEALTHY:
            self.state = SPOOLING
        self._spill(0)

    def _recovered(self) -> None:
        self.backoff = defaults.SINK_BACKOFF_MIN_S
        self.error = None
        if self.down_since is not None:
            log.warning("InfluxDB at %s is back after %.1f s; replaying held points",
                        self.server.shown_url, self.clock() - self.down_since)
            self.down_since = None
            self._warned_at = {k: v for k, v in self._warned_at.items()
                               if not isinstance(k, int) and k != "unreachable"}

    # ---- the end ------------------------------------------------------------------------------

    def finish(self, deadline: float) -> None:
        """closing: one more try (no backoff wait) within the deadline, then everything still
        held goes to the spool; closed."""
        with self.lock:
            if self.state in (CLOSED, FAILED):
                return
            self.state = CLOSING
        self.pump(deadline)
        self.abandon(CLOSED)

    def abandon(self, state: str = CLOSED, timeout: float = -1, extra=None) -> bool:
        """Spool everything held and stop (closed, or failed for a writer that keeps failing).
        A write in flight is spooled too: if it succeeds after all, the next start writes it
        again (InfluxDB keeps one point per series and time). `extra` (data, points) is
        spooled with it. False when the lock was not free within `timeout`."""
        if not self.lock.acquire(timeout=timeout):
            return False
        try:
            if self.state == CLOSED:
                self.counters["dropped"] += extra[1] if extra else 0
                return True
            if extra and extra[1]:
                self.memory.append(Chunk(*extra))
                self.held += extra[1]
            self.spool_retry_at = 0.0
            self._spill(0)
            self.state = state
        finally:
            self.lock.release()
        return True

    def _warn(self, key, msg: str, level=logging.WARNING, every=defaults.SINK_WARN_EVERY_S):
        """Log at most once per `every` s per key."""
        now = self.clock()
        if now - self._warned_at.get(key, -math.inf) >= every:
            self._warned_at[key] = now
            log.log(level, "%s", msg)
