"""How records reach the sinks: Fanout's bounded queue and output thread, the sinks a run
asks for (build_sinks), and StdStream for the standard streams. Fanout's shutdown is bounded
by the flush timeout; consoles close last so their summary can show the other outputs'
counters.
"""

import collections
import logging
import os
import queue
import sys
import threading
import time

from packet_flow import defaults
from packet_flow.errors import ConfigError
from packet_flow.sinks.console import ConsoleSink
from packet_flow.sinks.jsonl import JsonlSink
from packet_flow.sinks.rejected import RejectedLog

log = logging.getLogger(__name__)


class StdStream:
    """A text stream on a duplicate of a standard descriptor (1 = stdout), without a buffer
    or a lock: an output thread blocked on a reader that stopped reading holds no lock of
    sys.stdout, so the interpreter can still flush sys.stdout and exit when Fanout.close
    gives up on it."""

    def __init__(self, fd):
        self.fd = os.dup(fd)

    def write(self, text):
        data = text.encode()
        while data:
            data = data[os.write(self.fd, data):]

    def flush(self):
        pass

    def close(self):
        os.close(self.fd)


class Fanout:
    """Hands every record to every sink from one output thread, so a slow terminal or disk
    never delays a send slot or a receive batch; per-batch arrays go straight to the sinks
    that declare they want them (the Sink contract, sinks/__init__.py), whose own hand-off
    never blocks.

    The queue holds at most `capacity` records: when the outputs fall that far behind,
    record() drops new records (counted by type in `dropped`, one warning) instead of
    growing without bound. close(timeout) returns within the timeout even when a sink
    blocks, and the sinks that close last (the console's summary) are closed all the same.
    A sink that cannot go on calls on_failure(exc), which the run sets to end itself."""

    def __init__(self, sinks, capacity=defaults.OUTPUT_QUEUE_RECORDS):
        self.sinks = sinks
        self.per_packet = [s for s in sinks if s.wants_packets]
        self.per_gap = [s for s in sinks if s.wants_gaps]
        self.per_rtt = [s for s in sinks if s.wants_rtts]
        self.per_idle = [s for s in sinks if s.wants_idle]
        self.first = [s for s in sinks if not s.closes_last]
        self.last = [s for s in sinks if s.closes_last]
        self.on_failure = None
        self.failure = None
        for sink in sinks:
            sink.on_failure = self._failed
        self.queue = queue.Queue(capacity)
        self.dropped = collections.Counter()
        self.counters = {}
        self.deadline = 0.0
        # every record carries the run's id, so `report` tells runs appended to one file apart
        self.run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(2).hex()
        self.busy = None            # the sink the output thread is in
        self.lock = threading.Lock()
        self.closed = set()         # ids of the sinks that close last, once closed
        self.thread = threading.Thread(target=self._write, name="outputs", daemon=True)
        self.thread.start()

    def _failed(self, exc):
        if self.failure is None:
            self.failure = exc
            if self.on_failure is not None:
                self.on_failure(exc)

    def _write(self):
        for rec in iter(self.queue.get, None):
            for sink in self.sinks:
                self.busy = sink
                try:
                    sink.record(rec)
                except Exception:       # one broken output must not silence the others
                    log.exception("output %s failed", type(sink).__name__)
            if self.per_idle and self.queue.empty():
                for sink in self.per_idle:
                    self.busy = sink
                    try:
                        sink.idle()
                    except Exception:
                        log.exception("output %s failed", type(sink).__name__)
        for sink in self.first:
            self.busy = sink
            got = sink.close(max(0.0, self.deadline - time.monotonic()))
            if got:
                self.counters[type(sink).__name__] = got
        self.busy = None
        self._close_last()

    def _close_last(self):
        """Close the sinks that close last (once each), with the others' counters so far."""
        for sink in self.last:
            with self.lock:
                if id(sink) in self.closed:
                    continue
                self.closed.add(id(sink))
            sink.close(max(0.0, self.deadline - time.monotonic()), dict(self.counters))

    def record(self, rec):
        rec["run"] = self.run
        try:
            self.queue.put_nowait(rec)
        except queue.Full:
            if not self.dropped:
                log.warning("outputs are %d records behind: dropping new records until they "
                            "catch up", self.queue.maxsize)
            self.dropped[rec.get("type")] += 1

    def packets(self, source, destination, rx_ns, owd_ns):
        for sink in self.per_packet:
            sink.packets(source, destination, rx_ns, owd_ns)

    def gaps(self, source, destination, rx_ns, lost):
        for sink in self.per_gap:
            sink.gaps(source, destination, rx_ns, lost)

    def rtts(self, source, destination, rtt_ns):
        for sink in self.per_rtt:
            sink.rtts(source, destination, rtt_ns)

    def close(self, timeout):
        """Write the queued records and close every sink, all within `timeout` seconds;
        returns {sink name: its counters} for those that keep any. Sinks still busy at the
        timeout are left to the (daemon) output thread, with a warning of what was not
        written; when the thread is stuck in a sink that does not close last, this thread
        closes those that do (the console summary always prints)."""
        self.deadline = time.monotonic() + timeout
        try:
            self.queue.put(None, timeout=timeout)
            ends = 1
        except queue.Full:
            ends = 0
        self.thread.join(max(0.0, self.deadline - time.monotonic()))
        if self.dropped:
            log.warning("outputs dropped %d records while %d were queued (%s)",
                        sum(self.dropped.values()), self.queue.maxsize,
                        ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())))
        if self.thread.is_alive():
            busy = self.busy
            log.warning("outputs did not finish within %.1f s (a blocked stdout or sink%s): "
                        "%d queued records not written, sinks not closed", timeout,
                        f": {type(busy).__name__}" if busy is not None else "",
                        max(0, self.queue.qsize() - ends))
            if busy is not None and busy not in self.last:
                self._close_last()
        return dict(self.counters)


def build_sinks(cfg):
    """Sinks named by cfg.outputs; the console moves to stderr when JSON goes to stdout.
    Standard streams are written through StdStream (see there). Without a console, rejected
    datagrams are logged (RejectedLog)."""
    sinks = [] if "console" in cfg.outputs else [RejectedLog()]
    last = []
    if cfg.prometheus_listen is not None:
        # made first (a port in use fails before anything opens), closed last (its close
        # waits for a final scrape)
        from packet_flow.sinks.prometheus import PrometheusSink
        last = [PrometheusSink(cfg)]
    to_stdout = "jsonl:-" in cfg.outputs or "json:-" in cfg.outputs
    for out in cfg.outputs:
        if out == "console":
            sinks.append(ConsoleSink(sys.stderr if to_stdout else StdStream(1)))
        elif out.startswith("jsonl:"):
            path = out[len("jsonl:"):]
            try:
                sinks.append(JsonlSink(path, StdStream(1) if path == "-" else None))
            except OSError as exc:
                raise ConfigError(f"option --output: cannot open {out!r}: "
                                  f"{exc.strerror or exc}") from None
        elif out.startswith("json:"):
            from packet_flow.sinks.jsondoc import JsonDocumentSink
            path = out[len("json:"):]
            try:
                sinks.append(JsonDocumentSink(cfg, path, StdStream(1) if path == "-" else None))
            except OSError as exc:
                raise ConfigError(f"option --output: cannot open {out!r}: "
                                  f"{exc.strerror or exc}") from None
        elif out == "influx":
            from packet_flow.sinks.influx import InfluxSink
            sinks.append(InfluxSink(cfg))
    return sinks + last
