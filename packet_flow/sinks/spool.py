"""The durable spool: line-protocol files in one folder, replayed oldest first.

Rules:
- A file is written whole or not at all: into `NAME.lp.tmp`, fsync, rename to `NAME.lp`,
  fsync the folder. A `.tmp` file is therefore always junk from a crash, and is removed when
  the spool opens.
- File names sort by creation time, so `sorted()` is the replay order; files left by an
  earlier run for the same folder are part of the spool.
- The spool holds at most `max_bytes` (0 = no cap). Adding past the cap removes the oldest
  files first (and, for a single chunk larger than the cap, its oldest lines); `add()`
  returns how many points went.
- A failed write (disk full, folder gone) raises OSError and leaves nothing behind: the
  caller keeps the points in memory.
Not thread-safe: the InfluxDB writer calls it under its own lock.
"""

import os
import time
from collections import deque


def _count(data: bytes) -> int:
    return data.count(b"\n")


class Spool:
    """A FIFO of line-protocol files in `directory` (created if missing).

    Raises OSError from the constructor when the folder cannot be created, listed or
    written (a probe file is written and removed).
    """

    def __init__(self, directory: str, max_bytes: int = 0):
        self.dir = directory
        self.max_bytes = max_bytes
        os.makedirs(directory, exist_ok=True)
        self.stale = 0
        for name in os.listdir(directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(directory, name))
                self.stale += 1
        probe = os.path.join(directory, f".probe-{os.getpid()}.tmp")
        with open(probe, "wb") as f:
            f.write(b"\n")
        os.unlink(probe)
        self._files = deque()     # (path, bytes, points), oldest first
        self.points = self.bytes = 0
        for name in sorted(n for n in os.listdir(directory) if n.endswith(".lp")):
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            self._push(path, len(data), _count(data))
        self._seq = 0

    def __len__(self) -> int:
        return len(self._files)

    def _push(self, path: str, size: int, points: int) -> None:
        self._files.append((path, size, points))
        self.bytes += size
        self.points += points

    def _evict_oldest(self) -> int:
        path, size, points = self._files.popleft()
        self.bytes -= size
        self.points -= points
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return points

    def add(self, data: bytes) -> int:
        """Write `data` (whole lines) as one new file; return the points evicted by the cap.

        Raises OSError when the file cannot be written; nothing is evicted then.
        """
        evicted = 0
        if self.max_bytes and len(data) > self.max_bytes:
            cut = data.find(b"\n", len(data) - self.max_bytes - 1) + 1
            evicted += _count(data[:cut])
            data = data[cut:]
        if not data:
            return evicted
        self._seq += 1
        path = os.path.join(self.dir, f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.lp")
        try:
            with open(path + ".tmp", "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + ".tmp", path)
        except OSError:
            try:
                os.unlink(path + ".tmp")
            except OSError:
                pass
            raise
        try:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # the file is complete; only its survival of a power cut is less certain
        self._push(path, len(data), _count(data))
        while self.max_bytes and self.bytes > self.max_bytes and len(self._files) > 1:
            evicted += self._evict_oldest()
        return evicted

    def oldest(self):
        """(path, data, points) of the oldest file, or None when empty. An unreadable file
        is dropped from the spool and its points returned as data=None."""
        if not self._files:
            return None
        path, _size, points = self._files[0]
        try:
            with open(path, "rb") as f:
                return path, f.read(), points
        except OSError:
            return path, None, points

    def oldest_files(self, max_points: int):
        """The oldest files as [(path, data, points)], as many as fit in `max_points` (at
        least one), so that a long outage's many small files replay in few requests; reading
        stops at an unreadable file, which comes last with data=None."""
        out, total = [], 0
        for path, _size, points in self._files:
            if out and total + points > max_points:
                break
            try:
                with open(path, "rb") as f:
                    out.append((path, f.read(), points))
            except OSError:
                out.append((path, None, points))
                break
            total += points
        return out

    def remove(self, path: str) -> None:
        """Forget the oldest file (written or unreadable) and delete it.

        Raises OSError when it cannot be deleted (it is forgotten all the same)."""
        if self._files and self._files[0][0] == path:
            _, size, points = self._files.popleft()
            self.bytes -= size
            self.points -= points
        os.unlink(path)
