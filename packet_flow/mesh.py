"""Mesh mode: one process sends to every peer and receives from every peer on one socket.

Rules:
- One socket bound to --local-addr sends and receives, so peers see one stable source
  address and port. Each pair (this node -> a peer) is a flow of its own, with its own
  session and sequence, and the sender records of a sender; each peer's packets here are
  flows of the receiver's FlowTable, with its records. Records carry source_name and
  destination_name (packet_flow/names.py); every packet carries this node's name in band.
- One schedule serves every pair (_io.MeshSender): each pair keeps its own exact grid at
  --rate, and the pairs' offsets spread them across the interval (evenly for the peers of
  the start; a peer that joins later takes the middle of the largest gap). Lateness, missed
  and skipped slots are counted per pair. --timer economy wakes at most every economy_wake(interval).
- Two threads: the schedule runs in a thread of its own, in slices of MESH_SLICE_NS of the
  core's loop, which holds no GIL, so records and the flow table never delay a slot; changes
  of the pairs (joins, leaves, SIGUSR1) are handed to it and done between two slices, and
  it hands the lateness samples back. The calling thread reads the socket (waiting in poll),
  answers (--rtt), and hands received records to the flow table at each interval tick and
  when a quarter of the ring is waiting (the table's cost is per flow and batch: with 1000
  peers, few big batches).
- --rtt: the socket's receive core is a Reflector, so every node answers every peer (native
  REFLECTED replies), and the replies to this node's probes feed each pair's RttStats (by
  session); a reply of no pair here is counted as `stray_replies`.
- Peers come from discovery.PeerSource, polled every tick: a new peer is probed from the next
  round of its offset; a peer that left discovery ends its pair as `left` (its FINAL sent,
  its sender summary with outcome `left`) and the flows from its address close as `left`,
  with no loss invented for what it did not send. A peer still listed that stops answering
  is an outage: its flows stall as any flow does.
- The end (--duration, a signal): every pair sends its FINAL; with --count N every pair's
  N-th packet, on its own slot, is its FINAL. Then the node keeps receiving (and answering)
  for up to MESH_LINGER_S until the peers' flows have closed, or until stop() is called
  again (a second signal); the records follow either way.
"""

import collections
import logging
import queue
import threading

from packet_flow import _io, defaults, sockets
from packet_flow.discovery import PeerSource
from packet_flow.errors import ConfigError
from packet_flow.mesh_pairs import Pair, PairRecords, Replies
from packet_flow.receiver import ReceiverLoop
from packet_flow.records import TickGrid
from packet_flow.sender import precise_timer
from packet_flow.sender_records import Lateness, warm_up

log = logging.getLogger(__name__)


def spread(n, interval_ns):
    """Offsets of n pairs spread evenly across the interval."""
    return [i * interval_ns // n for i in range(n)]


def mesh_batch(cfg):
    """Packets per sendmmsg/recvmmsg: --batch when given, else MESH_BATCH (a node's traffic
    is many peers' packets: bigger batches, fewer system calls and wake-ups)."""
    return cfg.batch if cfg.sources.get("batch", "default") != "default" else defaults.MESH_BATCH


def economy_wake(interval_ns):
    """The economy timer's least time between two wake-ups: MESH_WAKE_NS, or a 10th of a
    pair's interval for slow pairs (at most MESH_WAKE_MAX_NS): each wake-up sends more slots
    at once, and no slot is late by more than a small share of its interval."""
    return max(defaults.MESH_WAKE_NS, min(interval_ns // 10, defaults.MESH_WAKE_MAX_NS))


def join_offset(offsets, interval_ns):
    """The middle of the largest gap between the offsets (on the circle of one interval)."""
    if not offsets:
        return 0
    ring = sorted(offsets)
    gaps = [(b - a, a) for a, b in zip(ring, ring[1:] + [ring[0] + interval_ns], strict=True)]
    width, at = max(gaps)
    return (at + width // 2) % interval_ns


class MeshReceiver(ReceiverLoop):
    """The mesh socket's receive side: a ReceiverLoop (a reflecting one with --rtt) whose
    drained records are split: replies to this node's probes go to `on_replies`."""

    def __init__(self, cfg, emit, on_packets, on_gaps, on_replies, sock=None):
        if sock is None:
            sock, _gro = sockets.receive_socket(cfg.local.sockaddr, cfg.local.family,
                                                cfg.rcvbuf, gro=False)
        sockets.mark(sock, cfg.local.family, cfg.dscp, cfg.ttl)
        super().__init__(cfg, emit, on_packets, sock=sock, reflect=cfg.rtt, on_gaps=on_gaps,
                         batch=mesh_batch(cfg))
        self.table.on_final = None  # a peer's FINAL comes from its receive socket: no answer
        if cfg.rtt:
            from packet_flow import clock_error
            self.rx.error_estimate = clock_error.estimate()
            self.rx.max_pps = cfg.reflect_max_pps
        self.on_replies = on_replies

    def _drain(self, now_ns):
        recs = self.rx.drain()
        self.names.learn(self.rx)
        if not len(recs):
            return
        replies = (recs["kind"] == _io.K_NATIVE) & ((recs["flags"] & _io.FLAG_REFLECTED) != 0)
        if replies.any():
            self.on_replies(recs[replies])
            recs = recs[~replies]
        if len(recs):
            self.table.ingest(recs, now_ns)

    def read(self, until_ns):
        """Read what is queued, waiting in poll until until_ns when that is in the future."""
        now = _io.mono_ns()
        if until_ns > now:
            self.rx.pump(until_ns, defaults.RING_CAPACITY // 4)
        for _ in range(defaults.RING_CAPACITY // 4 // self.rx.batch):
            if self.rx.pump(now) < self.rx.batch:
                break


class MeshLoop:
    """Probes every peer of cfg.peers and answers them (see the module rules). run(deadline),
    stop(), skip(), reload(), close() as the other loops; `pairs` by peer key."""

    def __init__(self, cfg, emit, on_packets=None, on_gaps=None, on_rtt=None, sock=None,
                 source=None):
        if cfg.wire != "native":
            raise ConfigError(f"option --wire: value '{cfg.wire}' from "
                              f"{cfg.sources.get('wire', 'cli')}: mesh mode needs native "
                              "packets (they carry the names and the session per pair)")
        self.cfg, self.emit, self.on_rtt = cfg, emit, on_rtt
        self.rxl = MeshReceiver(cfg, emit, on_packets, on_gaps, self._replies, sock)
        self.names = self.rxl.names
        self.name = self.names.own
        self.local = self.rxl.local
        self.interval_ns = max(1, round(cfg.rate_ms * 1e6))
        self.tx = _io.MeshSender(self.rxl.sock.fileno(), defaults.MESH_MAX_PEERS,
                                 size=cfg.size, batch=mesh_batch(cfg), key=cfg.key,
                                 name=self.name.encode(),
                                 lateness_capacity=defaults.MESH_LATENESS_SAMPLES)
        self.tx.lat_every = max(1, round(1e9 / self.interval_ns
                                         / defaults.LATENESS_SAMPLES_PER_S))
        self.tx.catchup_max = max(1, defaults.CATCHUP_NS // self.interval_ns)
        self.tx.wake_ns = economy_wake(self.interval_ns) if cfg.timer == "economy" else 0
        self.source = source or PeerSource.from_config(cfg).start()
        self.records = PairRecords(self.tx, self.local, self.name, self.names, self.source, emit)
        self.replies = Replies(self.local, on_rtt)
        self.pairs = {}                 # peer key -> Pair
        self.free = list(range(defaults.MESH_MAX_PEERS - 1, -1, -1))
        self.listed = None              # the last peer tuple applied
        self.departed = {}              # host:port of peers that left -> when
        # the flow table's cost is per flow and batch: hand it big batches (a quarter ring)
        self.drain_at = defaults.RING_CAPACITY // 4
        self.stopping = self.hurry = False
        self.skips_asked = self.skips_done = 0    # handler raises one, the loop the other
        self.ops = queue.SimpleQueue()          # (function, done event) for the send thread
        self.lat_parts = collections.deque()    # (lateness, slot) from the send thread
        self.sender = None                      # the send thread while it runs
        self.failed = []

    # --- peers -------------------------------------------------------------------------------

    def _index(self):
        self.replies.index(self.pairs.values())
        order = [p.slot for p in sorted(self.pairs.values(), key=lambda p: p.offset)]
        self._do(lambda: self.tx.set_order(order))

    def _do(self, fn):
        """Run fn on the MeshSender: in the send thread between two slices while it runs."""
        if self.sender is None or not self.sender.is_alive():
            return fn()
        done = threading.Event()
        self.ops.put((fn, done))
        done.wait(10 * defaults.MESH_SLICE_NS / 1e9)

    def _apply(self, now_ns, first=False):
        """Bring the pairs in line with the peer source's current list."""
        listed = self.source.peers()
        if listed is self.listed:
            return
        self.listed = listed
        want = {p.key: p for p in listed if p.addr.family == self.cfg.local.family}
        gone = [self.pairs.pop(k) for k in [k for k in self.pairs if k not in want]]
        if gone:
            self._index()           # off the schedule before their FINALs: nothing after them
        for pair in gone:
            self._leave(pair, now_ns)
        new = [p for k, p in want.items() if k not in self.pairs]
        if len(self.pairs) + len(new) > defaults.MESH_MAX_PEERS:
            log.warning("mesh: %d peers, probing the first %d", len(self.pairs) + len(new),
                        defaults.MESH_MAX_PEERS)
            new = new[:defaults.MESH_MAX_PEERS - len(self.pairs)]
        offsets = spread(len(new), self.interval_ns) if first else []
        for i, peer in enumerate(new):
            offset = offsets[i] if first else join_offset(
                [p.offset for p in self.pairs.values()], self.interval_ns)
            pair = Pair(peer, self.free.pop(), offset, now_ns, self.cfg.rtt)
            dest = sockets.dest_tuple(peer.addr.sockaddr, peer.addr.family)
            self._do(lambda p=pair, d=dest: self.tx.set_peer(p.slot, d, p.session, p.offset))
            self.pairs[peer.key] = pair
            self.departed.pop(str(peer.addr), None)
            if not first:
                log.info("mesh: peer %s (%s) joined", peer.name, peer.addr)
        self._index()

    def _leave(self, pair, now_ns):
        """A peer left discovery: its FINAL, its last records, its flows here closed."""
        log.info("mesh: peer %s (%s) left", pair.peer.name, pair.peer.addr)
        self._do(lambda: self.tx.send_final(pair.slot))
        self.rxl.read(_io.mono_ns())        # its replies so far count
        self.rxl._drain(now_ns)
        self._collect()
        self.records.interval(pair, now_ns)
        self.records.summary(pair, now_ns, "left")
        self.free.append(pair.slot)
        self.departed[str(pair.peer.addr)] = now_ns

    def _departed(self, now_ns):
        """Flows from peers that left discovery end as `left` once silent (a peer that left
        but still sends goes on being measured; one that stopped is no outage)."""
        quiet = max(3 * self.interval_ns, int(self.cfg.interval * 1e9))
        for source, since in list(self.departed.items()):
            open_ = [f for f in self.rxl.table.flows.values() if f.source == source]
            self.rxl.table.end(source, now_ns, "left", quiet)
            if not open_ or now_ns - since > int(self.cfg.forget_timeout * 1e9):
                del self.departed[source]

    def reload(self):
        """SIGHUP: look the peers up again now."""
        self.source.reload()

    # --- replies (--rtt) ---------------------------------------------------------------------

    def _replies(self, recs):
        self.replies.route(recs)

    # --- records -----------------------------------------------------------------------------

    def _collect(self):
        """The core's lateness samples, to their pairs."""
        if self.sender is None or not self.sender.is_alive():
            self.lat_parts.append(self.tx.take_lateness())
        parts = [self.lat_parts.popleft() for _ in range(len(self.lat_parts))]
        self.records.lateness(parts, self.pairs.values())

    def _node_record(self, now_ns, since_ns):
        """The node's `receiver` record: the socket's counters, the peers it probes (`peers`)
        and the peers probing it (`probed_by`: the source addresses of its open flows)."""
        rec = self.rxl._receiver_record(now_ns, since_ns)
        rec.update(peers=len(self.pairs),
                   probed_by=len({f.source for f in self.rxl.table.flows.values()}),
                   stray_replies=self.replies.stray)
        return rec

    def _tick(self, now_ns, since_ns):
        self.rxl._drain(now_ns)
        self._departed(now_ns)
        self.rxl.table.tick(now_ns)
        self._collect()
        Lateness.prepare([p.late for p in self.pairs.values()])
        for pair in self.pairs.values():
            self.records.interval(pair, now_ns)
        self.emit(self._node_record(now_ns, since_ns))

    # --- the loop ----------------------------------------------------------------------------

    def stop(self):
        """Stop probing: the FINALs, then the linger; asked while stopping, end the linger."""
        self.hurry = self.stopping
        self.stopping = True

    def skip(self):
        """SIGUSR1: every pair leaves one sequence number unused (deliberate loss)."""
        self.skips_asked += 1

    def run(self, deadline_ns=0):
        cfg = self.cfg
        warm_up()
        start = _io.mono_ns() + 1_000_000
        self.tx.start(start, self.interval_ns, defaults.SPIN_NS)
        self._apply(start, first=True)
        if cfg.count:
            self.tx.end_round = cfg.count
            self.tx.final_at_end = True
        self.sender = threading.Thread(target=self._send_thread, args=(deadline_ns,),
                                       name="mesh-sender", daemon=True)
        self.sender.start()
        ticks = TickGrid(start, int(cfg.interval * 1e9))
        while not self.stopping and self.sender.is_alive():
            now = _io.mono_ns()
            self.rxl.read(min(ticks.next_ns, now + defaults.MESH_SLICE_NS))
            n = self.skips_asked - self.skips_done
            if n:
                self.skips_done += n
                slots = [p.slot for p in self.pairs.values()]
                self._do(lambda n=n, slots=slots: [self.tx.skip_sequence(s, n) for s in slots])
            now = _io.mono_ns()
            if self.rxl.rx.head - self.rxl.rx.tail > self.drain_at:
                self.rxl._drain(now)
            if now >= ticks.next_ns:
                self._tick(now, ticks.tick(now))
                self._apply(now)
        self.stopping = True
        self.sender.join()
        if self.failed:
            raise self.failed[0]
        if not (cfg.count and self.tx.round >= cfg.count):
            for pair in self.pairs.values():
                self.tx.send_final(pair.slot)
        self._linger(ticks.last_ns)

    def _send_thread(self, deadline_ns):
        """The send thread: the schedule at timer slack TIMER_SLACK_NS, and at SCHED_FIFO
        where its spin is a small share of the interval (economy never spins, so always);
        both as they were afterwards (sender.precise_timer)."""
        realtime = self.interval_ns >= defaults.REALTIME_MIN_INTERVAL_NS or \
            self.cfg.timer != "precise"
        with precise_timer(realtime):
            self._send(deadline_ns)

    def _send(self, deadline_ns):
        """The send thread: the schedule in slices, the handed-over changes between them."""
        cfg, precise = self.cfg, self.cfg.timer == "precise"
        try:
            while not self.stopping:
                while not self.ops.empty():
                    fn, done = self.ops.get()
                    fn()
                    done.set()
                until = _io.mono_ns() + defaults.MESH_SLICE_NS
                if deadline_ns:
                    until = min(until, deadline_ns)
                self.tx.run(until, precise)
                lat = self.tx.take_lateness()
                if len(lat[0]):
                    self.lat_parts.append(lat)
                if (cfg.count and self.tx.round >= cfg.count) or \
                        (deadline_ns and _io.mono_ns() >= deadline_ns):
                    return
                if not self.tx.next_ns:
                    _io.sleep_until(until)          # no pairs (yet)
        except BaseException as exc:       # handed to run(), raised there
            self.failed.append(exc)
        finally:
            while not self.ops.empty():     # nobody waits longer for what will not run
                self.ops.get()[1].set()

    def _linger(self, last_tick):
        """After this node's finals: receive and answer until the peers' flows have closed
        (and with --rtt the last replies are in), at most MESH_LINGER_S; then the records."""
        end = _io.mono_ns() + int(defaults.MESH_LINGER_S * 1e9)
        while _io.mono_ns() < end and not self.hurry:
            self.rxl.read(min(end, _io.mono_ns() + defaults.MESH_SLICE_NS))
            now = _io.mono_ns()
            self.rxl._drain(now)
            answered = all(p.rtt is None or p.rtt.highest >= int(self.tx.seq[p.slot]) - 1
                           for p in self.pairs.values())
            if not self.rxl.table.flows and answered:
                break
        now = _io.mono_ns()
        self.rxl.read(now)
        self.rxl._drain(now)
        self.rxl.table.finish(now)
        self._collect()
        Lateness.prepare([p.late for p in self.pairs.values()])
        for pair in self.pairs.values():
            self.records.interval(pair, now)
            self.records.summary(pair, now, "final")
        self.emit(self._node_record(now, last_tick))

    def close(self):
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
        self.rxl.close()
