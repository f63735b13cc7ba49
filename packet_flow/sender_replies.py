"""--rtt on the send side: the reflections that come back to the sender's own socket.

Rules: an _io.Receiver on the sender's fd reads them (kernel receive stamps, T4) when the
schedule leaves time (SenderLoop pumps between slices); only replies to this sender's
probes count: native packets with the REFLECTED flag and this session, or STAMP
Session-Reflector replies with this session's SSID (or none). They feed
packet_flow.rtt.RttStats, one numpy pass per drained batch, and `on_rtt` gets their
round-trip times. After the final packet, last() waits up to RTT_WAIT_NS for the replies
still on their way (less once the final packet's reply is in).
"""

import logging
import socket

import numpy as np

from packet_flow import _io, defaults, rtt, sockets

log = logging.getLogger(__name__)


class Replies:
    """The replies to one sender (see the module rules). `source` (the sender's address as
    its records name it) is set by the sender once known."""

    def __init__(self, sock, cfg, session, on_rtt=None):
        sock.setsockopt(socket.SOL_SOCKET, _io.SO_TIMESTAMPNS_, 1)
        if cfg.rcvbuf:
            sockets.set_rcvbuf(sock, cfg.rcvbuf)
        self.stamp = cfg.wire == "stamp"
        self.rx = _io.Receiver(sock.fileno(), batch=cfg.batch, capacity=defaults.RTT_RING,
                               key=cfg.key if not self.stamp else None,
                               mode=_io.K_STAMP_REFLECTED if self.stamp else _io.K_NATIVE)
        self.stats = rtt.RttStats(seq_bits=32 if self.stamp else 64)
        self.cfg = cfg
        self.session = session
        self.on_rtt = on_rtt
        self.source = None
        self.final_answered = False
        self.unanswered_s = 0.0

    def _ours(self, recs):
        if self.stamp:
            return (recs["kind"] == _io.K_STAMP_REFLECTED) & np.isin(recs["session"], (0, self.session & 0xFFFF))
        return ((recs["kind"] == _io.K_NATIVE) & ((recs["flags"] & _io.FLAG_REFLECTED) != 0)
                & (recs["session"] == self.session))

    def pump(self, wait_until_ns=0):
        """Read the queued replies (waiting for more until wait_until_ns when that is in the
        future) and account them."""
        now = _io.mono_ns()
        if wait_until_ns > now:
            self.rx.pump(wait_until_ns, defaults.RTT_RING // 2)
        # a pump whose deadline has passed does one recvmmsg: repeat while batches come full
        for _ in range(defaults.RTT_RING // 2 // self.rx.batch):
            if self.rx.pump(now) < self.rx.batch:
                break
        recs = self.rx.drain()
        if len(recs):
            recs = recs[self._ours(recs)]
        if not len(recs):
            return
        self.stats.update(recs["seq"], recs["r_seq"], recs["tx_ns"], recs["t2_ns"],
                          recs["t3_ns"], recs["rx_ns"], recs["drops"])
        if self.on_rtt is not None:
            self.on_rtt(self.source, str(self.cfg.remote),
                        recs["rx_ns"] - recs["tx_ns"] - (recs["t3_ns"] - recs["t2_ns"]))
        if not self.stamp:
            self.final_answered |= bool((recs["flags"] & _io.FLAG_FINAL).any())

    def last(self, next_seq):
        """After the final packet (sequence next_seq - 1): wait for the replies still on
        their way, then settle."""
        end = _io.mono_ns() + defaults.RTT_WAIT_NS
        while _io.mono_ns() < end:
            # the highest answered sequence is unwrapped from 0, so it compares to next_seq
            if self.final_answered or self.stats.highest >= next_seq - 1:
                break
            self.pump(min(end, _io.mono_ns() + defaults.RTT_SLICE_NS))
        self.pump()
        self.stats.close()

    def take_interval(self, interval_s, sent):
        """This interval's RTT fields; warns once when no reply came back in RTT_NO_REPLY_S."""
        self.unanswered_s += interval_s
        if self.stats.highest < 0 and self.unanswered_s >= defaults.RTT_NO_REPLY_S \
                > self.unanswered_s - interval_s:
            peer = ("a STAMP reflector (RFC 8762) or `packet-flow --mode reflector --wire "
                    "stamp`" if self.stamp else "`packet-flow --mode reflector`")
            log.warning("--rtt: no reply came back from %s in %.0f s (%d probes sent): the "
                        "peer must be %s, and replies must get through its firewall",
                        self.cfg.remote, self.unanswered_s, sent, peer)
        return self.stats.take_interval()

    def summary(self, next_seq):
        return self.stats.summary(next_seq)
