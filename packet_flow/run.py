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
        for sock in (rx_sock, tx_sock):
            if sock is not None:
                sock.close()
        raise
    return rx_sock, tx_sock, dataclasses.replace(cfg, local=local)


def _bound(addr, sock):
    port = sock.getsockname()[1]
    return addr._replace(port=port, sockaddr=(addr.sockaddr[0], port, *addr.sockaddr[2:]))


def run(cfg, ready=None, sinks=(), started=None):
    """Run cfg.mode until cfg.duration, cfg.count or a signal. Returns the run's
    verdict.Verdict (its `status` is the exit status: 0, or 3 when a threshold was breached);
    raises what ended the run early (in `both` mode also the receiver thread's error).
    Sockets are opened first (a SocketError before anything else happens), then the
    outputs; `started(cfg)` is called with the addresses as bound before the console header
    (the CLI logs its start-up line there); `ready(loops)` once everything is set up (tests
    use it)."""
    rx_sock, tx_sock, cfg = open_sockets(cfg)
    try:
        sinks = build_sinks(cfg) + list(sinks)        # extra sinks: the API's collector
    except BaseException:
        for sock in (rx_sock, tx_sock):
            if sock is not None:
                sock.close()
        raise
    out = Fanout(sinks)
    judge = Judge(cfg, out.record)      # summary records get their verdict on the way out
    receiver = sender = thread = None
    failed = []                 # the receiver thread's exception, in `both` mode
    signalled = threading.Event()
    handlers = {}
    held = False
    try:
        if cfg.mode in ("receiver", "both"):
            receiver = ReceiverLoop(cfg, judge.record, out.packets if out.per_packet else None,
                                    sock=rx_sock, on_gaps=out.gaps if out.per_gap else None)
        if cfg.mode in ("sender", "both"):
            sender = SenderLoop(cfg, judge.record, sock=tx_sock,
                                on_rtt=out.rtts if out.per_rtt else None)
        elif cfg.mode == "reflector":
            from packet_flow.reflector import ReflectorLoop
            receiver = ReflectorLoop(cfg, judge.record, sock=rx_sock)
        elif cfg.mode == "mesh":
            from packet_flow.mesh import MeshLoop
            sender = MeshLoop(cfg, judge.record, out.packets if out.per_packet else None,
                              out.gaps if out.per_gap else None,
                              out.rtts if out.per_rtt else None, sock=rx_sock)
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

        def on_sink_failure(exc):   # a sink that cannot go on ends the run, like the receiver
            failed.append(exc)
            for loop in (sender, receiver):
                if loop is not None:
                    loop.stop()

        out.on_failure = on_sink_failure

        def on_skip(_signum, _frame):
            if sender is not None:
                sender.skip()

        # SIGHUP: a loop that discovers peers (a mesh) re-reads its peer files and names now
        reloads = [loop.reload for loop in (sender, receiver) if hasattr(loop, "reload")]

        def on_reload(_signum, _frame):
            for reload in reloads:
                reload()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
                handlers[sig] = signal.signal(sig, on_stop)
            handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_skip)
            if reloads:
                handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_reload)
        # Everything made so far lives for the whole run: keep it out of the cyclic garbage
        # collector's full passes (tuning.py; given back at the end, also with runs side by side)
        tuning.hold(sender is not None)
        held = True
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
        if held:
            tuning.release(sender is not None)
    return judge.verdict()
