"""The receive side: a bound socket, the Cython Receiver, and the flow table.

The loop pumps the ring in short slices (so a stop request is seen within 50 ms), drains
it into FlowTable after every slice, and ticks interval records on the `interval` grid
(records.TickGrid).
"""

import ipaddress
import logging
import socket

from packet_flow import _io, defaults, records, sockets, wire
from packet_flow.flows import FlowTable
from packet_flow.names import NameBook, node_name

log = logging.getLogger(__name__)


class ReceiverLoop:
    """Receives on cfg.local until stop() or the deadline; emits records through emit()."""

    def __init__(self, cfg, emit, on_packets=None, mode=_io.K_NATIVE, sock=None,
                 reflect=False, on_gaps=None, batch=None):
        self.cfg = cfg
        self.emit = emit
        if sock is None:
            # a reflector answers datagram by datagram: no GRO coalescing on its socket
            sock, _gro = sockets.receive_socket(cfg.local.sockaddr, cfg.local.family,
                                                cfg.rcvbuf, gro=not reflect)
        self.sock = sock
        self.local = str(cfg.local)
        if cfg.local.port == 0:
            host = cfg.local.host
            port = sock.getsockname()[1]
            self.local = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        core = _io.Reflector if reflect else _io.Receiver
        self.rx = core(sock.fileno(), batch=batch or cfg.batch, capacity=defaults.RING_CAPACITY,
                       key=cfg.key, mode=mode)
        if not reflect:     # a reflector answers at once; a receiver may read in bunches
            self.rx.coalesce_ns = defaults.RECEIVE_COALESCE_NS
            self.rx.coalesce_max_ns = defaults.RECEIVE_COALESCE_MAX_NS
        self.names = NameBook(node_name(cfg))
        self.table = FlowTable(self.local, self.names.wrap(emit), cfg.stall_timeout, cfg.forget_timeout,
                               defaults.SEQ_WINDOW, on_packets, on_gaps,
                               budget=cfg.max_flow_memory << 20, wall=_io.wall_of)
        self.table.gro = sockets.gro_enabled(sock)
        if not reflect:
            self.table.on_final = self._answer
        self.answers = self.answer_errors = self.unanswered = 0
        self._overwritten_answered = 0
        self.stopping = False
        self._last = {}

    def stop(self):
        self.stopping = True

    def _answer(self, flow, rec):
        """Answer a native FINAL with the flow's counts (`search` learns a trial's outcome
        from it): once per closed flow, in Python, never longer than the FINAL (a shorter
        one is `unanswered`), signed with --key. Ring records overwritten since the last
        answer were this host's drops: they count as local_drops, not loss."""
        size = wire.ANSWER_SIZE + (_io.TAG if self.cfg.key else 0)
        if int(rec["length"]) < size:
            self.unanswered += 1
            return
        total = flow.stats.tallies.total
        overwritten = self.rx.overwritten - self._overwritten_answered
        self._overwritten_answered = self.rx.overwritten
        data = wire.encode_answer(int(rec["session"]), int(rec["seq"]), _io.wall_of(_io.mono_ns()),
                                  total.received, total.lost, total.local_drops + overwritten,
                                  key=self.cfg.key)
        raw, port = bytes(rec["addr"]), int(rec["port"])
        if self.sock.family == socket.AF_INET:
            to = (str(ipaddress.IPv4Address(raw[12:])), port)
        else:
            to = (str(ipaddress.IPv6Address(raw)) if int(rec["family"]) != 4
                  else f"::ffff:{ipaddress.IPv4Address(raw[12:])}", port)
        try:
            self.sock.sendto(data, to)
            self.answers += 1
        except OSError as exc:
            self.answer_errors += 1
            log.warning("answer to %s failed: %s", flow.source, exc)

    def counters(self):
        """Cumulative receiver-wide counters (the `receiver` record holds their increments)."""
        out = {"datagrams": self.rx.datagrams, "buffers": self.rx.messages,
               "overwritten": self.rx.overwritten,
               "kernel_drops": sockets.drops(self.sock, self.rx.kernel_drops),
               "unattributed_malformed": self.table.unattributed,
               "untracked": self.table.untracked, "evicted": self.table.evicted,
               "answers": self.answers, "answer_errors": self.answer_errors,
               "unanswered": self.unanswered}
        out.update(("malformed_" + k, v) for k, v in self.rx.malformed.items())
        if isinstance(self.rx, _io.Reflector):
            out.update(reflected=self.rx.reflected, reflect_errors=self.rx.reflect_errors,
                       reflect_limited=self.rx.limited)
        return out

    def _receiver_record(self, now_ns, since_ns):
        now = self.counters()
        delta = {k: v - self._last.get(k, 0) for k, v in now.items()}
        self._last = now
        rec = records.header("receiver", "receiver", _io.wall_of(now_ns), now_ns - since_ns,
                             None, self.local, None, source_name=None,
                             destination_name=self.names.own)
        rec["flows"] = len(self.table.flows)
        rec["malformed"] = {k[len("malformed_"):]: delta.pop(k) for k in list(delta)
                            if k.startswith("malformed_")}
        rec["rejected"] = self.table.take_rejected()
        rec.update(delta)
        if rec["overwritten"]:
            log.warning("receive ring overflowed: %d records lost before analysis",
                        rec["overwritten"])
        if rec["kernel_drops"]:
            log.warning("the socket dropped %d datagrams or GRO buffers (receive buffer full: "
                        "raise --rcvbuf); the flows count them as local_drops, not lost",
                        rec["kernel_drops"])
        return rec

    def _drain(self, now_ns):
        recs = self.rx.drain()
        self.names.learn(self.rx)
        if len(recs):
            self.table.ingest(recs, now_ns)

    def run(self, deadline_ns=0, start_ns=None):
        """Receive until stop() or the CLOCK_MONOTONIC deadline_ns (0 = none); interval
        ticks are on CLOCK_MONOTONIC too, record times on the wall clock."""
        ticks = records.TickGrid(start_ns or _io.mono_ns(), int(self.cfg.interval * 1e9))
        max_records = defaults.RING_CAPACITY // 4
        while not self.stopping:
            now = _io.mono_ns()
            until = min(ticks.next_ns, now + defaults.RECEIVE_SLICE_NS)
            if deadline_ns:
                until = min(until, deadline_ns)
            self.rx.pump(until, max_records)
            now = _io.mono_ns()
            self._drain(now)
            if now >= ticks.next_ns:
                self.table.tick(now)
                self.emit(self._receiver_record(now, ticks.tick(now)))
            if deadline_ns and now >= deadline_ns:
                break
        now = _io.mono_ns()
        self.rx.pump(now)
        self._drain(now)
        self.table.finish(now)
        self.emit(self._receiver_record(now, ticks.last_ns))

    def close(self):
        self.sock.close()
