"""Prometheus output: GET /metrics in the text exposition format (0.0.4) from the probe's
records; every other path answers 404. What the page holds and how records fold into it:
promstore.py; the text itself: promtext.py.

Rules:
- Rendering 1000 flows costs prometheus_client ~0.2 s of CPU, so neither a scrape nor the
  probe waits for it: after each tick's records (while a scraper came within
  PROMETHEUS_ACTIVE_S, or the run started that recently) the output thread takes a
  plain-data snapshot and a process of its own renders it, one rendering at a time; a
  scrape serves the latest page. Only a scrape after a quiet spell, or before the first
  tick, waits for a rendering. If the rendering process dies, the probe renders itself
  (with one warning); so does a program that runs this output from an unguarded main module
  (spawn re-imports it: guard it with `if __name__ == "__main__":`). The rendering process
  ends with the probe, even a killed one (PR_SET_PDEATHSIG).
- The GIL switch interval is lowered to GIL_SWITCH_S, so a scrape's syscalls do not wait
  5 ms each for the probe's threads. At exit, close() renders the final counts and waits,
  within its timeout, for the next expected scrape to collect them.
"""

import ctypes
import logging
import multiprocessing
import os
import signal
import socketserver
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from packet_flow import defaults
from packet_flow.errors import ConfigError
from packet_flow.sinks.promstore import OVERFLOW, SeriesStore, _host, bucket_counts  # noqa: F401
from packet_flow.sinks.promtext import _LE, render_page  # noqa: F401

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
# OVERFLOW, _host, bucket_counts and _LE are imported for tests that read them from here


def _die_with(parent):
    """In the rendering process: end when the probe ends, however it ends (SIGKILL too),
    instead of waiting for work forever."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:      # the probe ended before the line above
        os._exit(0)


class _Handler(WSGIRequestHandler):
    def log_message(self, *args):      # scrapes are not worth a log line each
        pass


def _server_class(family):
    return type("_Server", (socketserver.ThreadingMixIn, WSGIServer),
                {"address_family": family, "daemon_threads": True,
                 "allow_reuse_address": True})


class PrometheusSink(SeriesStore):
    """Serves /metrics on cfg.prometheus_listen from the records it is handed (the series
    store it is: record, packets, rtts, snapshot). Raises ConfigError (exit status 2) when the
    address cannot be bound (in use, not local)."""

    wants_packets = True     # per-batch delay arrays for the one-way delay histograms
    wants_rtts = True        # per-batch round-trip times for the RTT histograms
    wants_idle = True        # renders once the records queued so far are in, in any order
    wants_gaps = closes_last = False
    on_failure = None
    counters = property(lambda self: {})

    def __init__(self, cfg):
        super().__init__(cfg.forget_timeout)
        self.page = None        # the latest rendering
        self.rendered = 0       # renderings started; `served` is the last one a scrape got
        self.busy = False       # a rendering is running
        self.served = -1
        self.scrapes = []       # monotonic times of the last scrapes
        self.seen = time.monotonic()    # the last scrape, or the start: a scraper is expected
        addr = cfg.prometheus_listen
        try:
            self.server = make_server(addr.host.strip("[]"), addr.port, self._app,
                                      server_class=_server_class(addr.family),
                                      handler_class=_Handler)
        except OSError as exc:
            where = cfg.sources.get("prometheus-listen", "cli")
            raise ConfigError(f"option --prometheus-listen: value '{addr}' from {where}: "
                              f"cannot listen: "
                              f"{exc.strerror or exc}") from None
        # prometheus_client renders 1000 flows in ~0.2 s of CPU: a process of its own does it,
        # so neither the probe's threads nor a scrape wait for the GIL meanwhile
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_die_with, initargs=(os.getpid(),))
        self.pool.submit(render_page, [])       # start it now, not at the first rendering
        # The probe's threads hold the GIL in slices of the switch interval; at the default
        # 5 ms every syscall of a scrape (accept, read, write) could wait one slice.
        sys.setswitchinterval(min(sys.getswitchinterval(), defaults.GIL_SWITCH_S))
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       name="prometheus", daemon=True)
        self.thread.start()
        log.info("prometheus: serving http://%s/metrics", addr)

    # --- rendering (output thread, or a scrape) ------------------------------------------

    def idle(self):
        """The outputs have caught up (a tick's records are all in): render for the next
        scrape when a scraper comes regularly."""
        if self._scraped_recently(time.monotonic()):
            self._render()

    def _scraped_recently(self, now):
        return now - self.seen < defaults.PROMETHEUS_ACTIVE_S

    def _render(self, wait=False):
        """Take a snapshot; prometheus_client renders it in the rendering process. Only with
        `wait` does the caller wait for the page; otherwise a rendering still running makes
        this one be skipped (the next tick renders again), so a slow rendering never holds
        up the output thread. Returns the rendering's number."""
        with self.state_lock:
            if self.busy and not wait:
                return self.rendered
            fams = self.snapshot()
            self.rendered += 1
            number = self.rendered
            self.busy = True
        try:
            pool = self.pool
            future = pool.submit(render_page, fams) if pool is not None else None
        except RuntimeError as exc:     # BrokenProcessPool: the process was killed
            self._broken(exc)
            future = None
        if future is None:
            self._store(number, render_page(fams))
        elif wait:
            self._done(number, fams, future)
        else:
            future.add_done_callback(lambda f: self._done(number, fams, f))
        return number

    def _done(self, number, fams, future):
        try:
            page = future.result()
        except Exception as exc:        # BrokenProcessPool: the process was killed
            self._broken(exc)
            page = render_page(fams)
        self._store(number, page)

    def _broken(self, exc):
        if self.pool is not None:
            log.warning("prometheus: the rendering process failed (%s); rendering in the "
                        "probe from now on", exc)
            self.pool = None

    def _store(self, number, page):
        with self.state_lock:
            if self.page is None or number > self.page[0]:
                self.page = (number, page)
            self.busy = False

    def _app(self, environ, start_response):
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in (
                "GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        now = time.monotonic()
        if self.page is None or not self._scraped_recently(now):
            self._render(wait=True)
        self.scrapes = (self.scrapes + [now])[-3:]
        self.seen = now
        number, page = self.page
        self.served = max(self.served, number)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4),
                                  ("Content-Length", str(len(page)))])
        return [page]

    # --- end -------------------------------------------------------------------------------------

    def close(self, timeout=defaults.SHUTDOWN_FLUSH_S, counters=None):
        """Render the final counts; when a scraper comes regularly and its next scrape is
        due within `timeout`, wait for it to collect them. Then stop serving."""
        final, start = self._render(wait=True), time.monotonic()
        if len(self.scrapes) >= 2:
            gap = self.scrapes[-1] - self.scrapes[-2]
            end = min(start + timeout, self.scrapes[-1] + 1.5 * gap)
            while self.served < final and time.monotonic() < end:
                time.sleep(0.02)
        self.server.shutdown()
        self.server.server_close()
        pool = self.pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        return {}
