"""The mesh's one schedule (_io.MeshSender) on loopback: pairs spread across the interval, a
joining pair in the largest gap, and an economy wake-up that finds more slots due than one
sendmmsg batch sends them all (they used to wait for the next wake-up, late by a growing
backlog)."""

import socket
import threading

import numpy as np

from packet_flow import _io, sockets
from packet_flow.mesh import economy_wake, join_offset, spread

MS = 1_000_000


def run_mesh(pairs, interval_ns, rounds, wake_ns=0):
    """MeshSender with `pairs` pairs (offsets spread) to one loopback receiver for `rounds`
    rounds; returns (sender, received records)."""
    rx_sock, _ = sockets.receive_socket(("127.0.0.1", 0), socket.AF_INET, 32 << 20, gro=False)
    port = rx_sock.getsockname()[1]
    rx = _io.Receiver(rx_sock.fileno(), batch=256, capacity=1 << 16)
    tx_sock = sockets.send_socket(socket.AF_INET, bind=("127.0.0.1", 0))
    tx = _io.MeshSender(tx_sock.fileno(), pairs, batch=64, name=b"node")
    for i, offset in enumerate(spread(pairs, interval_ns)):
        tx.set_peer(i, (socket.AF_INET, socket.inet_aton("127.0.0.1"), port), 1000 + i, offset)
    tx.set_order(np.arange(pairs))
    tx.wake_ns = wake_ns
    tx.catchup_max = 1
    tx.end_round = rounds
    got = []
    done = threading.Event()

    def receive():
        while not done.is_set() or rx.pump(_io.mono_ns()):
            rx.pump(_io.mono_ns() + 20 * MS)
            got.append(rx.drain())

    reader = threading.Thread(target=receive)
    reader.start()
    try:
        start = _io.mono_ns() + 20 * MS
        tx.start(start, interval_ns, 0)
        end = start + (rounds + 5) * interval_ns
        while tx.next_ns and _io.mono_ns() < end:
            tx.run(end, False)
    finally:
        done.set()
        reader.join(10)
        rx_sock.close()
        tx_sock.close()
    return tx, np.concatenate(got)


def test_offsets_spread_and_a_join_takes_the_largest_gap():
    assert spread(4, 100) == [0, 25, 50, 75]
    assert join_offset([0, 25, 50, 75], 100) == 87          # 75..100: all gaps 25, the last
    assert join_offset([0, 10, 60], 100) == 35              # 10..60
    assert join_offset([], 100) == 0
    assert economy_wake(100 * MS) == 10 * MS                 # 10 packets/s: a tenth
    assert economy_wake(1 * MS) == 1 * MS                    # never below a millisecond
    assert economy_wake(1000 * MS) == 10 * MS                # never above 10 ms


def test_pairs_leave_one_after_the_other_not_together():
    """10 pairs at 20 ms: each round's packets go out about 2 ms apart, in offset order."""
    tx, recs = run_mesh(10, 20 * MS, 6)
    assert len(recs) == 60 and tx.sent.tolist() == [6] * 10
    for i in range(10):
        assert sorted(recs["seq"][recs["session"] == 1000 + i].tolist()) == list(range(6))
    order = np.argsort(recs["tx_ns"], kind="stable")
    gaps = np.diff(recs["tx_ns"][order])
    assert 1.5 * MS <= np.median(gaps) <= 2.5 * MS
    first = recs[order][:10]                                 # the first round: by offset
    assert first["session"].tolist() == list(range(1000, 1010))


def test_an_economy_wake_up_sends_every_slot_due_however_many_batches():
    """1000 pairs at 100 ms, a wake-up every 10 ms: 100 slots due at each, more than one
    sendmmsg batch (64). Every slot goes at the wake-up it was due at: 5 rounds, 5000
    packets, nothing skipped or missed, lateness within a wake-up (before: 36 slots a
    wake-up were left over, the backlog grew by 36 ms a round and slots were skipped)."""
    tx, recs = run_mesh(1000, 100 * MS, 5, wake_ns=10 * MS)
    lat, _ = tx.take_lateness()
    assert tx.sent.tolist() == [5] * 1000 and len(recs) == 5000
    assert int(tx.skipped.sum()) == 0 and int(tx.missed.sum()) == 0
    assert len(np.unique(recs["session"])) == 1000
    assert int(lat.max()) < 30 * MS, int(lat.max())
