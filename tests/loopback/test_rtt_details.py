"""Round trip and STAMP details (issue 12.6) on real loopback sockets: a reflector that starts
counting again, compat gap points across a 32-bit STAMP sequence wrap, NTP eras (RFC 4330) in
both codecs, and 38-byte TWAMP-Light replies."""

import calendar
import select
import socket
import threading
import time

import numpy as np
import pytest

from packet_flow import _io, config, sockets, wire
from packet_flow.receiver import ReceiverLoop
from packet_flow.reflector import ReflectorLoop
from packet_flow.rtt import RttStats
from packet_flow.sender import SenderLoop


def _cfg(*args):
    return config.load(["--log-level", "warning", "--output", "jsonl:/dev/null", *map(str, args)])


def _utc_ns(text, frac_ns=0):
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")) * 1_000_000_000 + frac_ns


class SwitchRelay:
    """Forwards the sender's first `switch` datagrams to reflector `a`, the rest to `b`, and
    every reply back: to the sender, one reflector that starts counting again at `switch`."""

    def __init__(self, a, b, switch):
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        for s in (self.front, self.back):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port = self.front.getsockname()[1]
        self.targets, self.switch, self.forwarded, self.replies = (a, b), switch, 0, 0
        self.held = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        peer = None
        end = time.monotonic() + 30             # bounded even if nobody stops it
        while not self.stopping and time.monotonic() < end:
            ready, _, _ = select.select([self.front, self.back], [], [], 0.05)
            for s in ready:
                data, addr = s.recvfrom(65535)
                if s is self.front:
                    peer = addr
                    self.held.append(data)
                elif peer is not None:
                    self.replies += 1
                    self.front.sendto(data, peer)
            # the new reflector gets its first packet once the old one has answered all of
            # its own (two live reflectors would race; a restarted one does not)
            while self.held and (self.forwarded != self.switch or self.replies >= self.switch):
                self.back.sendto(self.held.pop(0), self.targets[self.forwarded >= self.switch])
                self.forwarded += 1

    def close(self):
        self.stopping = True
        self.thread.join()
        self.front.close()
        self.back.close()


@pytest.mark.parametrize("wire_name", ["native", "stamp"])
def test_reflector_restart_is_a_new_run_not_duplicates(wire_name):
    """Before: forward_duplicates -1000 and backward_duplicates 1000 after the switch."""
    count, switch = 2000, 1000
    refl = [ReflectorLoop(_cfg("-m", "reflector", "--local-addr", "127.0.0.1:0", "--wire",
                               wire_name), lambda r: 0) for _ in range(2)]
    deadline = _io.mono_ns() + 20_000_000_000
    threads = [threading.Thread(target=r.run, args=(deadline,)) for r in refl]
    for t in threads:
        t.start()
    relay = SwitchRelay(*[("127.0.0.1", r.sock.getsockname()[1]) for r in refl], switch)
    recs = []
    try:
        snd = SenderLoop(_cfg("-m", "sender", "--remote-addr", f"127.0.0.1:{relay.port}",
                              "--wire", wire_name, "--rtt", "--rate", 0.25, "--count", count,
                              "--interval", 0.1), recs.append)
        snd.run()
        snd.close()
    finally:
        relay.close()
        for r in refl:
            r.stop()
        for t in threads:
            t.join()
        for r in refl:
            r.close()
    assert (refl[0].reflected, refl[1].reflected) == (switch, count - switch)
    (s,) = [r for r in recs if r["type"] == "summary"]
    assert s["sent"] == s["reflected"] == count
    assert s["reflector_resets"] == 1
    for key in ("lost", "forward_lost", "backward_lost", "forward_late", "backward_late",
                "forward_duplicates", "backward_duplicates", "unattributed_lost"):
        assert s[key] == 0, key
    intervals = [r for r in recs if r["type"] == "sender"]
    assert sum(r["reflector_resets"] for r in intervals) == 1
    for r in intervals:
        assert min(r[k] for k in ("forward_duplicates", "backward_duplicates", "forward_late",
                                  "backward_late")) >= 0


def test_old_run_replies_overtaken_by_the_new_run():
    """Replies of the old run that arrive after the new run's first: still the old run's."""
    r = RttStats()
    seq = np.arange(2000, dtype=np.uint64)
    r_seq = np.concatenate([np.arange(1000), np.arange(1000)]).astype(np.uint64)
    order = np.r_[0:998, 1000, 998, 999, 1001:2000]
    t1 = np.arange(2000, dtype=np.int64) * 1_000_000
    r.update(seq[order], r_seq[order], t1[order], t1[order] + 5, t1[order] + 10,
             t1[order] + 100_000)
    r.close()
    s = r.summary(2000)
    assert s["reflector_resets"] == 1 and s["reflected"] == 2000
    assert s["lost"] == s["forward_lost"] == s["backward_lost"] == 0
    assert s["forward_duplicates"] == s["backward_duplicates"] == 0
    assert s["forward_late"] + s["backward_late"] == 2


def test_replies_dropped_by_the_senders_own_socket_are_local():
    """Replies the sender's 64 KiB socket cannot hold are neither forward nor backward loss."""
    refl = ReflectorLoop(_cfg("-m", "reflector", "--local-addr", "127.0.0.1:0"), lambda r: 0)
    thread = threading.Thread(target=refl.run, args=(_io.mono_ns() + 10_000_000_000,))
    thread.start()
    sock, _ = sockets.receive_socket(("127.0.0.1", 0), socket.AF_INET, 65536, gro=False)
    tx = _io.Sender(sock.fileno(), sockets.dest_tuple(refl.sock.getsockname(), socket.AF_INET),
                    session=9, size=_io.REFLECTED_HEADER, batch=64)
    back = _io.Receiver(sock.fileno(), capacity=1 << 14)
    r = RttStats()

    def settle(expect):
        end = time.monotonic() + 5
        while refl.reflected < expect and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.05)
        while back.pump(_io.mono_ns()):
            pass
        recs = back.drain()
        r.update(recs["seq"], recs["r_seq"], recs["tx_ns"], recs["t2_ns"], recs["t3_ns"],
                 recs["rx_ns"], recs["drops"])

    try:
        for _ in range(32):             # 2048 replies pile up unread
            tx.send(64)
        settle(2048)
        for _ in range(5):              # then read as they come
            tx.send(10)
            settle(tx.sent)
        dropped = sockets.drops(sock, -1)
    finally:
        refl.stop()
        thread.join()
        refl.close()
        sock.close()
    r.close()
    s = r.summary(tx.seq)
    assert refl.reflected == tx.sent == 2098
    assert s["local_drops"] == tx.sent - s["reflected"] == dropped > 0
    assert s["lost"] == s["forward_lost"] == s["backward_lost"] == s["unattributed_lost"] == 0


def test_compat_gap_points_continue_after_stamp_wrap():
    """Gaps after a 32-bit wrap were compared with the unwrapped highest: no points at all."""
    top = 1 << 32
    groups = [[top - 6, top - 5, top - 3], [top - 2, top - 1, 0, 1, 4], [5, 9, 10]]
    gaps, recs = [], []
    loop = ReceiverLoop(_cfg("-m", "receiver", "--local-addr", "127.0.0.1:0"), recs.append,
                        mode=_io.K_STAMP,
                        on_gaps=lambda src, dst, rx, lost: gaps.extend(lost.tolist()))
    thread = threading.Thread(target=loop.run, args=(_io.mono_ns() + 5_000_000_000,))
    thread.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for group in groups:            # one receive batch each
                for seq in group:
                    s.sendto(wire.encode_stamp(seq, _io.wall_ns(), ssid=7), loop.sock.getsockname())
                time.sleep(0.1)
    finally:
        loop.stop()
        thread.join()
        loop.close()
    assert gaps == [1, 2, 3]                # top-4; 2, 3; 6, 7, 8
    (summary,) = [r for r in recs if r["type"] == "summary"]
    assert (summary["received"], summary["lost"], summary["late"]) == (11, 6, 0)


NTP_2036 = "2036-02-08T00:00:00"


def test_ntp_eras_reference_codec():
    ns = _utc_ns(NTP_2036, 500_000_000)
    b = wire.ns_to_ntp(ns)
    assert b == (ns // 1_000_000_000 + wire.NTP_OFFSET - (1 << 32)).to_bytes(4, "big") + \
        bytes.fromhex("80000000")
    assert wire.ntp_to_ns(b) == ns          # was 1900-01-01T17:31:44.5Z
    # RFC 4330 §3: era 1 starts at 2036-02-07T06:28:16Z (seconds 0); seconds with the top bit
    # set are era 0 (1968-2036)
    assert wire.ntp_to_ns(bytes(8)) == _utc_ns("2036-02-07T06:28:16")
    assert wire.ntp_to_ns(bytes.fromhex("7fffffff00000000")) == _utc_ns("2104-02-26T09:42:23")
    assert wire.ntp_to_ns(bytes.fromhex("8000000000000000")) == _utc_ns("1968-01-20T03:14:08")
    now = _io.wall_ns() // 1000 * 1000
    assert abs(wire.ntp_to_ns(wire.ns_to_ntp(now)) - now) <= 1


def _receive(mode, datagrams):
    rsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rsock.bind(("127.0.0.1", 0))
    rsock.setblocking(False)
    rx = _io.Receiver(rsock.fileno(), mode=mode, capacity=1 << 10)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, rsock.getsockname())
        end = _io.mono_ns() + 2_000_000_000
        while rx.datagrams < len(datagrams) and _io.mono_ns() < end:
            rx.pump(_io.mono_ns() + 20_000_000, len(datagrams))
        return rx.drain()
    finally:
        rsock.close()


def test_ntp_eras_and_short_replies_in_the_core():
    t1, t2 = _utc_ns(NTP_2036, 250_000_000), _utc_ns(NTP_2036, 750_000_000)
    t3 = _utc_ns("2036-02-07T06:28:15", 500_000_000)     # the last second of era 0
    test = wire.encode_stamp(9, t1, ssid=3)
    reply = wire.encode_stamp_reflection(4, t3, t2, test, sender_ttl=61, ssid=3)
    (rec,) = _receive(_io.K_STAMP, [test])
    assert (int(rec["kind"]), int(rec["seq"]), int(rec["tx_ns"])) == (_io.K_STAMP, 9, t1)
    recs = _receive(_io.K_STAMP_REFLECTED, [reply, reply[:38], reply[:37]])
    assert list(recs["kind"]) == [_io.K_STAMP_REFLECTED] * 2 + [_io.K_MALFORMED]
    for r in recs[:2]:
        assert (int(r["seq"]), int(r["r_seq"])) == (9, 4)
        assert (int(r["tx_ns"]), int(r["t2_ns"]), int(r["t3_ns"])) == (t1, t2, t3)
    short = wire.decode(reply[:38], stamp="reflected")
    assert (short.seq, short.r_seq, short.tx_ns, short.t2_ns, short.t3_ns, short.sender_ttl) == \
        (9, 4, t1, t2, t3, 0)
    with pytest.raises(wire.WireError, match="short"):
        wire.decode(reply[:37], stamp="reflected")


def test_stamp_reply_sender_ttl_and_its_own_ip_ttl_are_two_fields():
    """A STAMP reply carries the TTL its test packet had at the reflector (`sender_ttl`, as
    the reference codec names it); the ring's `ttl` is the reply's own IP TTL as it arrived
    here. One used to overwrite the other."""
    t = _utc_ns("2030-01-01T00:00:00")
    test = wire.encode_stamp(5, t)
    replies = [wire.encode_stamp_reflection(1, t, t, test, sender_ttl=61),
               wire.encode_stamp_reflection(2, t, t, test, sender_ttl=200)[:38]]
    rsock, _ = sockets.receive_socket(("127.0.0.1", 0), socket.AF_INET, gro=False)
    rx = _io.Receiver(rsock.fileno(), mode=_io.K_STAMP_REFLECTED, capacity=1 << 4)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 33)
            for d in replies:
                s.sendto(d, rsock.getsockname())
        end = _io.mono_ns() + 2_000_000_000
        while rx.datagrams < len(replies) and _io.mono_ns() < end:
            rx.pump(_io.mono_ns() + 20_000_000, len(replies))
        recs = rx.drain()
    finally:
        rsock.close()
    assert list(recs["kind"]) == [_io.K_STAMP_REFLECTED] * 2
    assert list(recs["ttl"]) == [33, 33]
    assert list(recs["sender_ttl"]) == [61, 0]       # a 38-byte reply has no TTL byte
    assert [wire.decode(d, stamp="reflected").sender_ttl for d in replies] == [61, 0]


def test_twamp_light_reflector_with_38_byte_replies():
    """A reflector whose replies end after the sender error estimate: every reply counts."""
    count = 300
    refl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    refl.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def answer():
        n = 0
        end = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < end:
            if select.select([refl], [], [], 0.05)[0]:
                data, peer = refl.recvfrom(2048)
                t = _io.wall_ns()
                refl.sendto(wire.encode_stamp_reflection(n, t, t, data, sender_ttl=64)[:38], peer)
                n += 1

    thread = threading.Thread(target=answer)
    thread.start()
    recs = []
    try:
        snd = SenderLoop(_cfg("-m", "sender", "--remote-addr",
                              f"127.0.0.1:{refl.getsockname()[1]}", "--wire", "stamp", "--rtt",
                              "--rate", 1, "--count", count), recs.append)
        snd.run()
        snd.close()
    finally:
        stop.set()
        thread.join()
        refl.close()
    s = recs[-1]
    assert s["type"] == "summary" and s["sent"] == s["reflected"] == count
    assert s["lost"] == s["forward_lost"] == s["backward_lost"] == 0
    assert 0 < s["rtt_min_us"] <= s["rtt_max_us"] < 100_000

