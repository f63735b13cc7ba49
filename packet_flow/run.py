"""The one module that ties sockets, analysis and sinks together for a run.

Threads: the sender (when there is one) runs in the main thread, because only the main
thread's sleeps are cut short by signals; the receiver runs beside it in a second thread
in `both` mode. The Cython loops release the GIL while they wait and send, so the two
threads do not slow each other down. A receiver thread that fails stops the sender, and
run() raises its error; when the sender raises, the receiver is stopped and joined before
its socket is closed. Records reach the sinks through Fanout's bounded queue and output
thread, whose shutdown is bounded by the flush timeout. Signals: SIGINT/SIGTERM/SIGQUIT
stop the run (final packet, flush, exit 0); SIGUSR1 makes the sender skip one sequence
number; the previous handlers are restored at the end.
"""

import collections
import dataclasses
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time

from packet_flow import _io, defaults, sockets
from packet_flow.errors import ConfigError
from packet_flow.receiver import ReceiverLoop
from packet_flow.sender import SenderLoop
from packet_flow.sinks.console import ConsoleSink
from packet_flow.sinks.jsonl import JsonlSink

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
    never delays a send slot or a receive batch; per-packet data (compat InfluxDB points)
    goes straight to the sinks that want it, whose own hand-off never blocks.

    The queue holds at most `capacity` records: when the outputs fall that far behind,
    record() drops new records (counted by type in `dropped`, one warning) instead of
    growing without bound. close(timeout) returns within the timeout even when a sink
    blocks."""

    def __init__(self, sinks, capacity=defaults.OUTPUT_QUEUE_RECORDS):
        self.sinks = sinks
        self.per_packet = [s for s in sinks if getattr(s, "wants_packets", False)]
        self.per_gap = [s for s in self.per_packet if getattr(s, "wants_gaps", True)]
        self.per_rtt = [s for s in self.per_packet if hasattr(s, "rtts")]
        self.queue = queue.Queue(capacity)
        self.dropped = collections.Counter()
        self.counters = {}
        self.deadline = 0.0
        self.thread = threading.Thread(target=self._write, name="outputs", daemon=True)
        self.thread.start()

    def _write(self):
        for rec in iter(self.queue.get, None):
            for sink in self.sinks:
                try:
                    sink.record(rec)
                except Exception:       # one broken output must not silence the others
                    log.exception("output %s failed", type(sink).__name__)
        consoles = [s for s in self.sinks if isinstance(s, ConsoleSink)]
        for sink in self.sinks:
            if sink not in consoles:
                got = sink.close(max(0.0, self.deadline - time.monotonic()))
                if got:
                    self.counters[type(sink).__name__] = got
        for sink in consoles:       # last, so its summary can show the other outputs' counters
            sink.close(max(0.0, self.deadline - time.monotonic()), dict(self.counters))

    def record(self, rec):
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
        written."""
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
            log.warning("outputs did not finish within %.1f s (a blocked stdout or sink): "
                        "%d queued records not written, sinks not closed", timeout,
                        max(0, self.queue.qsize() - ends))
        return dict(self.counters)


def build_sinks(cfg):
    """Sinks named by cfg.outputs; the console moves to stderr when JSON goes to stdout.
    Standard streams are written through StdStream (see there)."""
    sinks, last = [], []
    if cfg.prometheus_listen is not None:
        # made first (a port in use fails before anything opens), closed last (its close
        # waits for a final scrape)
        from packet_flow.sinks.prometheus import PrometheusSink
        last = [PrometheusSink(cfg)]
    to_stdout = "jsonl:-" in cfg.outputs
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
        elif out == "influx":
            from packet_flow.sinks.influx import InfluxSink
            sinks.append(InfluxSink(cfg))
    return sinks + last


def open_sockets(cfg):
    """The run's sockets, opened before anything is printed, so that a socket error is the
    only line a failed start shows. Returns (receive socket or None, send socket or None,
    cfg with the addresses as bound: port 0 becomes the port the kernel chose)."""
    rx_sock = tx_sock = None
    local = cfg.local
    local_from = cfg.sources.get("local-addr", "default")
    try:
        if cfg.mode in ("receiver", "both", "reflector"):
            with sockets.opening("local-addr", cfg.local, local_from):
                # a reflector answers datagram by datagram: no GRO coalescing on its socket
                rx_sock, _gro = sockets.receive_socket(cfg.local.sockaddr, cfg.local.family,
                                                       cfg.rcvbuf, gro=cfg.mode != "reflector")
            local = _bound(cfg.local, rx_sock)
        if cfg.mode in ("sender", "both"):
            if cfg.mode == "sender" and local_from != "default":
                # a fixed source address keeps the flow's identity across sender restarts
                if cfg.local.family != cfg.remote.family:
                    raise ConfigError(f"option --local-addr: value '{cfg.local}' is not of the "
                                      f"address family of --remote-addr '{cfg.remote}'")
                with sockets.opening("local-addr", cfg.local, local_from):
                    tx_sock = sockets.send_socket(cfg.local.family, cfg.dscp, cfg.ttl,
                                                  bind=cfg.local.sockaddr)
                local = _bound(cfg.local, tx_sock)
            with sockets.opening("remote-addr", cfg.remote,
                                 cfg.sources.get("remote-addr", "default")):
                if tx_sock is None:
                    tx_sock = sockets.send_socket(cfg.remote.family, cfg.dscp, cfg.ttl)
                sockets.check_route(cfg.remote)
    except BaseException:
        for sock in (rx_sock, tx_sock):
            if sock is not None:
                sock.close()
        raise
    return rx_sock, tx_sock, dataclasses.replace(cfg, local=local)


def _bound(addr, sock):
    port = sock.getsockname()[1]
    return addr._replace(port=port, sockaddr=(addr.sockaddr[0], port, *addr.sockaddr[2:]))


def run(cfg, ready=None, started=None):
    """Run cfg.mode until cfg.duration, cfg.count or a signal. Returns the exit status;
    raises what ended the run early (in `both` mode also the receiver thread's error).
    Sockets are opened first (a SocketError before anything else happens), then the
    outputs; `started(cfg)` is called with the addresses as bound before the console header
    (the CLI logs its start-up line there); `ready(loops)` once everything is set up (tests
    use it)."""
    rx_sock, tx_sock, cfg = open_sockets(cfg)
    try:
        sinks = build_sinks(cfg)
    except BaseException:
        for sock in (rx_sock, tx_sock):
            if sock is not None:
                sock.close()
        raise
    out = Fanout(sinks)
    receiver = sender = thread = None
    failed = []                 # the receiver thread's exception, in `both` mode
    signalled = threading.Event()
    handlers = {}
    try:
        if cfg.mode in ("receiver", "both"):
            receiver = ReceiverLoop(cfg, out.record, out.packets if out.per_packet else None,
                                    sock=rx_sock, on_gaps=out.gaps if out.per_gap else None)
        if cfg.mode in ("sender", "both"):
            sender = SenderLoop(cfg, out.record, sock=tx_sock,
                                on_rtt=out.rtts if out.per_rtt else None)
        elif cfg.mode == "reflector":
            from packet_flow.reflector import ReflectorLoop
            receiver = ReflectorLoop(cfg, out.record, sock=rx_sock)
        if started is not None:
            started(cfg)
        for sink in sinks:
            if isinstance(sink, ConsoleSink) and cfg.mode != "sender":
                sink.header()

        def on_stop(signum, _frame):
            log.info("%s: stopping", signal.Signals(signum).name)
            signalled.set()
            for loop in (sender, receiver):
                if loop is not None:
                    loop.stop()

        def on_skip(_signum, _frame):
            if sender is not None:
                sender.skip()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
                handlers[sig] = signal.signal(sig, on_stop)
            handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_skip)
        # Everything made so far lives for the whole run: keep it out of the cyclic garbage
        # collector's full passes, which would otherwise stall a send slot for milliseconds.
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready({"sender": sender, "receiver": receiver})
        deadline = _io.mono_ns() + int(cfg.duration * 1e9) if cfg.duration else 0
        if sender is None:
            receiver.run(deadline)
        else:
            if receiver is not None:
                rx_deadline = deadline + int(defaults.RECEIVER_GRACE_S * 1e9) if deadline else 0

                def receive():
                    try:
                        receiver.run(rx_deadline)
                    except BaseException as exc:    # handed to the main thread, raised there
                        log.error("receiver failed (%s): stopping the sender", exc)
                        failed.append(exc)
                        sender.stop()

                thread = threading.Thread(target=receive, name="receiver", daemon=True)
                thread.start()
            # The sender needs the GIL for a moment at every record tick, while the receiver
            # and output threads may hold it; by default a thread waits up to 5 ms for it,
            # which would make the next slots late.
            sys.setswitchinterval(defaults.GIL_SWITCH_S)
            sender.run(deadline)
            if thread is not None:
                thread.join(defaults.RECEIVER_GRACE_S)
        if failed:
            raise failed[0]
    finally:
        if thread is not None and thread.is_alive():
            # stop the receiver before its socket is closed: also when the sender raised
            receiver.stop()
            thread.join(defaults.THREAD_STOP_S)
        for loop in (sender, receiver):
            if loop is not None and not (loop is receiver and thread and thread.is_alive()):
                loop.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        timeout = defaults.SIGNAL_FLUSH_S if signalled.is_set() else defaults.SHUTDOWN_FLUSH_S
        for name, got in out.close(timeout).items():
            lossy = got.get("dropped") or got.get("spooled") or got.get("queued")
            log.log(logging.WARNING if lossy else logging.INFO, "%s counters: %s", name,
                    ", ".join(f"{k} {v}" for k, v in got.items()))
    return 0
