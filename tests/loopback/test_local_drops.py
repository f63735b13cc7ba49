"""The receiving host's own drops (issue 12.4) on real loopback sockets: a socket buffer that
overflows is not loss on the path. On loopback nothing is lost on the way, so every missing
datagram is either a sequence the sender left out (SIGUSR1 / skip_sequence: the stand-in for
path loss, `lost`) or one the receiving socket dropped (`local_drops`). The split rules
themselves are first checked on synthetic arrays."""

import signal
import socket
import time

import numpy as np
import pytest
from probe import finish, free_port, pf, records, wait_bound  # noqa: E402

from packet_flow import _io, config, sockets
from packet_flow.analysis import FlowStats
from packet_flow.receiver import ReceiverLoop


def _flow(seq, drops, **kw):
    """A closed FlowStats summary for one batch: seq in arrival order, the socket's drops
    between each packet and the previous one."""
    seq = np.asarray(seq, np.uint64)
    tx = np.arange(seq.size, dtype=np.int64) * 1000
    f = FlowStats()
    f.update(seq, tx, tx + 500, host_drops=np.asarray(drops), **kw)
    f.close()
    return f.summary()


@pytest.mark.parametrize("buffers,shared,drops,lost,local,exact", [
    (False, False, 6, 4, 6, True),      # 6 datagrams dropped here, 4 lost on the way
    (False, False, 10, 0, 10, True),
    (False, True, 6, 4, 6, False),      # another flow shares the socket: its drops?
    (True, False, 2, 0, 10, False),     # 2 GRO buffers for 10 missing: path loss may hide
    (True, False, 10, 0, 10, True),     # each buffer held at least one of the 10
])
def test_gap_split_rules(buffers, shared, drops, lost, local, exact):
    d = np.zeros(20, np.int64)
    d[10] = drops                       # between sequence 9 and 20
    s = _flow(np.r_[0:10, 20:30], d, buffers=buffers, shared=shared)
    assert (s["received"], s["lost"], s["local_drops"], s["local_drops_exact"]) == \
        (20, lost, local, exact)
    assert s["loss_bursts"] == 1 and s["loss_burst_hist"] == {"10": 1}


def test_late_packet_in_a_local_gap_takes_back_a_local_drop():
    d = np.zeros(21, np.int64)
    d[10] = 6                           # 10..15 labelled local, 16..19 path
    s = _flow(np.r_[0:10, 20:30, 12], d)
    assert (s["received"], s["late"], s["lost"], s["local_drops"]) == (21, 1, 4, 5)


def _cfg(*args):
    return config.load(["--log-level", "warning", "--output", "jsonl:/dev/null", *map(str, args)])


def _drain(loop):
    """Read everything the socket holds now and account it."""
    while loop.rx.pump(_io.mono_ns()):
        pass
    loop.table.ingest(loop.rx.drain(), _io.mono_ns())


@pytest.mark.parametrize("gro", [False, True], ids=["datagrams", "gro"])
def test_socket_overflow_is_local_drops_not_loss(gro):
    recs, points = [], []
    sock, _ = sockets.receive_socket(("127.0.0.1", 0), socket.AF_INET, 65536, gro=gro)
    loop = ReceiverLoop(_cfg("-m", "receiver", "--local-addr", "127.0.0.1:0"), recs.append,
                        sock=sock, on_gaps=lambda src, dst, rx, lost: points.extend(lost.tolist()))
    ssock = sockets.send_socket(socket.AF_INET)
    # UDP GSO: 64 datagrams per send; a socket without GRO gets them one by one
    tx = _io.Sender(ssock.fileno(), sockets.dest_tuple(sock.getsockname(), socket.AF_INET),
                    session=77, size=64, batch=64, segments=64)
    try:
        # 1. read as it comes; the "path" loses 3 sequences, the host nothing
        for i in range(6):
            tx.send(50)
            if i % 2:
                tx.skip_sequence(1)
            _drain(loop)
        # 2. 4000 datagrams into a socket nobody reads: it keeps what fits, drops the rest;
        #    one more sequence left out while it drops
        for i in range(4):
            tx.send(1000)
            if i == 2:
                tx.skip_sequence(1)
        _drain(loop)
        # 3. read as it comes again; the final packet closes the flow
        tx.send(100)
        _drain(loop)
        tx.send(1, final=True)
        _drain(loop)
        loop.table.finish(_io.mono_ns())     # the closed flow's summary (after its grace time)
        kernel_drops = sockets.drops(sock, -1)
    finally:
        loop.close()
        ssock.close()
    (s,) = [r for r in recs if r["type"] == "summary"]
    intervals = [r for r in recs if r["type"] == "interval"]
    assert s["closed"] and s["received"] == loop.rx.datagrams
    missing = tx.seq - s["received"]            # sequences 0 .. tx.seq - 1
    assert s["local_drops"] > 1000 and s["late"] == s["duplicates"] == 0
    assert sum(r["local_drops"] for r in intervals) == s["local_drops"]
    if not gro:
        # one drop, one datagram: the split is exact, even inside the drop window
        assert s["lost"] == 4 and s["local_drops_exact"] is True
        assert s["local_drops"] == tx.sent - s["received"] == kernel_drops
    else:
        # a dropped GRO buffer holds several datagrams: the gap across the drops is the
        # host's as a whole (the sequence left out inside it too), and the record says so
        assert s["lost"] == 3 and s["local_drops_exact"] is False
        assert s["local_drops"] == tx.sent - s["received"] + 1
        assert 0 < kernel_drops < s["local_drops"]      # the kernel counts buffers
    assert s["lost"] + s["local_drops"] == missing
    assert sum(points) == s["lost"]             # compat `packet_loss` points: the path's only


@pytest.mark.slow
def test_small_rcvbuf_at_300k_packets_per_second(tmp_path):
    """The issue's case through the CLI: --rcvbuf 65536, one sender at 300k packets/s."""
    port = free_port()
    rout, tout = tmp_path / "rx.jsonl", tmp_path / "tx.jsonl"
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--rcvbuf", 65536,
            "--duration", 30, "--output", f"jsonl:{rout}")
    try:
        wait_bound(port)
        tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 0.00333,
                "--duration", 1.5, "--size", 64, "--output", f"jsonl:{tout}")
        finish(tx, 30)
        time.sleep(0.5)
    finally:
        rx.send_signal(signal.SIGTERM)
        finish(rx, 20)
    (sent,) = [r for r in records(tout) if r["type"] == "summary"]
    rrecs = records(rout)
    (s,) = [r for r in rrecs if r["type"] == "summary"]
    assert s["closed"] and sent["sent"] > 300_000
    assert s["lost"] == 0
    assert s["local_drops"] == sent["sent"] - s["received"]
    assert s["local_drops"] > 0         # 64 KiB cannot hold what one slow read lets queue
    kernel = sum(r["kernel_drops"] for r in rrecs if r["type"] == "receiver")
    assert 0 < kernel <= s["local_drops"]
