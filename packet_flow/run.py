"""The one module that ties sockets, analysis and sinks together for a run.

Threads: the sender (when there is one) runs in the main thread, because only the main
thread's sleeps are cut short by signals; the receiver runs beside it in a second thread
in `both` mode. The Cython loops release the GIL while they wait and send, so the two
threads do not slow each other down. A receiver thread that fails stops the sender, and
run() raises its error; when the sender raises, the receiver is stopped and joined before
its socket is closed. Records reach the sinks through Fanout's bounded queue and output
thread, whose shutdown is bounded by the flush timeout. Signals: SIGINT/SIGTERM/SIGQUIT
stop the run (final packet, flush, exit 0), and again while it stops change nothing but a
mesh's linger, which they end; SIGUSR1 makes the sender skip one sequence number; SIGHUP re-reads a mesh's peers. A run leaves no trace: the previous handlers, the
gc state (gc.freeze for the run) and the switch interval are restored at the end.
"""

import dataclasses
import logging
import signal
import threading

from packet_flow import _io, defaults, sockets, tuning
from packet_flow.errors import ConfigError
from packet_flow.receiver import ReceiverLoop
from packet_flow.sender import SenderLoop
from packet_flow.sinks.console import ConsoleSink
from packet_flow.sinks.fanout import Fanout, build_sinks
from packet_flow.verdict import Judge

log = logging.getLogger(__name__)


def open_sockets(cfg):
    """The run's sockets, opened before anything is printed, so that a socket error is the
    only line a failed start shows. Returns (receive socket or None, send socket or None,
    cfg with the addresses as bound: port 0 becomes the port the kernel chose)."""
    rx_sock = tx_sock = None
    local = cfg.local
    local_from = cfg.sources.get("local-addr", "default")
    try:
        if cfg.mode in ("receiver", "both", "reflector", "mesh"):
            with sockets.opening("local-addr", cfg.local, local_from):
                # a reflector answers datagram by datagram: no GRO coalescing on its socket
                rx_sock, _gro = sockets.receive_socket(cfg.local.sockaddr, cfg.local.family,
                                                       cfg.rcvbuf,
                                                       gro=cfg.mode not in ("reflector", "mesh"))
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
        _close_all((rx_sock, tx_sock))
        raise
    return rx_sock, tx_sock, dataclasses.replace(cfg, local=local)


def _bound(addr, sock):
    port = sock.getsockname()[1]
    return addr._replace(port=port, sockaddr=(addr.sockaddr[0], port, *addr.sockaddr[2:]))


def _close_all(socks):
    for sock in socks:
        if sock is not None:
            sock.close()


class Run:
    """One run's parts and their order: sockets, outputs, loops, then signal handlers and
    process settings (gc, switch interval), each undone by close() whatever happened."""

    def __init__(self, cfg, sinks=()):
        self.rx_sock, self.tx_sock, self.cfg = open_sockets(cfg)
        try:
            sinks = build_sinks(self.cfg) + list(sinks)     # extra sinks: the API's collector
        except BaseException:
            _close_all((self.rx_sock, self.tx_sock))
            raise
        self.sinks = sinks
        self.out = Fanout(sinks)
        self.out.on_failure = self._failure
        self.judge = Judge(self.cfg, self.out.record)   # summaries get their verdict
        self.sender = self.receiver = self.thread = None
        self.failed = []            # a receiver thread's or a sink's exception
        self.signalled = threading.Event()
        self.handlers = {}
        self.held = False           # tuning.hold() called: release() at the end

    @property
    def loops(self):
        return {"sender": self.sender, "receiver": self.receiver}

    def make_loops(self):
        cfg, out, emit = self.cfg, self.out, self.judge.record
        if cfg.mode in ("receiver", "both"):
            self.receiver = ReceiverLoop(cfg, emit, out.packets if out.per_packet else None,
                                         sock=self.rx_sock,
                                         on_gaps=out.gaps if out.per_gap else None)
        if cfg.mode in ("sender", "both"):
            self.sender = SenderLoop(cfg, emit, sock=self.tx_sock,
                                     on_rtt=out.rtts if out.per_rtt else None)
        elif cfg.mode == "reflector":
            from packet_flow.reflector import ReflectorLoop
            self.receiver = ReflectorLoop(cfg, emit, sock=self.rx_sock)
        elif cfg.mode == "mesh":
            from packet_flow.mesh import MeshLoop
            self.sender = MeshLoop(cfg, emit, out.packets if out.per_packet else None,
                                   out.gaps if out.per_gap else None,
                                   out.rtts if out.per_rtt else None, sock=self.rx_sock)

    def header(self):
        for sink in self.sinks:
            if isinstance(sink, ConsoleSink) and self.cfg.mode != "sender":
                sink.header()

    def _stop_loops(self):
        for loop in self.loops.values():
            if loop is not None:
                loop.stop()

    def _failure(self, exc):
        """A receiver thread or a sink that cannot go on ends the run with its error."""
        self.failed.append(exc)
        self._stop_loops()

    def _on_stop(self, signum, _frame):
        # once stopping, a stop signal only hurries a mesh's linger (MeshLoop.stop): the
        # summaries are still written and the outputs flushed, as after the first one
        log.info("%s: %s", signal.Signals(signum).name,
                 "already stopping" if self.signalled.is_set() else "stopping")
        self.signalled.set()
        self._stop_loops()

    def _on_skip(self, _signum, _frame):
        if self.sender is not None:
            self.sender.skip()

    def _on_reload(self, _signum, _frame):
        # SIGHUP: a loop that discovers peers (a mesh) re-reads its peer files and names now
        for loop in self.loops.values():
            if hasattr(loop, "reload"):
                loop.reload()

    def settle(self):
        """Signal handlers (from the main thread only: Python allows no other), and the
        process settings the schedule needs; close() puts every one back."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
                self.handlers[sig] = signal.signal(sig, self._on_stop)
            self.handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_skip)
            if any(hasattr(loop, "reload") for loop in self.loops.values()):
                self.handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload)
        # Everything made so far lives for the whole run: keep it out of the cyclic garbage
        # collector's full passes (tuning.py; given back at the end, also with runs side by
        # side), and a sender gets the GIL within GIL_SWITCH_S
        tuning.hold(self.sender is not None)
        self.held = True

    def execute(self):
        cfg, sender, receiver = self.cfg, self.sender, self.receiver
        deadline = _io.mono_ns() + int(cfg.duration * 1e9) if cfg.duration else 0
        if sender is None:
            receiver.run(deadline)
        else:
            if receiver is not None:
                grace = int(defaults.RECEIVER_GRACE_S * 1e9)
                self.thread = threading.Thread(target=self._receive, name="receiver",
                                               args=(deadline + grace if deadline else 0,),
                                               daemon=True)
                self.thread.start()
            sender.run(deadline)
            if self.thread is not None:
                self.thread.join(defaults.RECEIVER_GRACE_S)
        if self.failed:
            raise self.failed[0]

    def _receive(self, deadline):
        try:
            self.receiver.run(deadline)
        except BaseException as exc:    # handed to the main thread, raised there
            log.error("receiver failed (%s): stopping the sender", exc)
            self._failure(exc)

    def close(self):
        """Stop and close the loops and sockets, put back what settle() changed, and close
        the outputs within the flush timeout."""
        thread, receiver = self.thread, self.receiver
        if thread is not None and thread.is_alive():
            # stop the receiver before its socket is closed: also when the sender raised
            receiver.stop()
            thread.join(defaults.THREAD_STOP_S)
        running = thread is not None and thread.is_alive()
        for loop in (self.sender, receiver):
            if loop is not None and not (loop is receiver and running):
                loop.close()
        _close_all((None if running else self.rx_sock, self.tx_sock))
        timeout = (defaults.SIGNAL_FLUSH_S if self.signalled.is_set()
                   else defaults.SHUTDOWN_FLUSH_S)
        for name, got in self.out.close(timeout).items():
            lossy = got.get("dropped") or got.get("spooled") or got.get("queued")
            log.log(logging.WARNING if lossy else logging.INFO, "%s counters: %s", name,
                    ", ".join(f"{k} {v}" for k, v in got.items()))
        # the handlers go back once the outputs are flushed: a signal during the flush
        # must not end the process before it (exit -15 with records unwritten)
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        if self.held:
            tuning.release(self.sender is not None)


def run(cfg, ready=None, sinks=(), started=None):
    """Run cfg.mode until cfg.duration, cfg.count or a signal. Returns the run's
    verdict.Verdict (its `status` is the exit status: 0, or 3 when a threshold was breached);
    raises what ended the run early (in `both` mode also the receiver thread's error).
    Sockets are opened first (a SocketError before anything else happens), then the
    outputs; `started(cfg)` is called with the addresses as bound before the console header
    (the CLI logs its start-up line there); `ready(loops)` once everything is set up (tests
    use it). It leaves nothing behind: signal handlers, gc state, the switch interval and
    the sender thread's scheduling are as they were."""
    this = Run(cfg, sinks)
    try:
        this.make_loops()
        if started is not None:
            started(this.cfg)
        this.header()
        this.settle()
        if ready is not None:
            ready(this.loops)
        this.execute()
    finally:
        this.close()
    return this.judge.verdict()
