"""Packets the path can carry are always sent: UDP GSO messages sized from the packet size
and the route's MTU, and the fallbacks when the kernel or the device refuses a GSO message
(too big: EMSGSIZE/EINVAL; no checksum offload: EIO), which send the same packets again one
datagram per message instead of counting them in send_errors.

Loopback runs are `both` mode CLI processes. The path-MTU runs cross a veth pair with MTU
1500 into a network namespace the test creates (root 10.215.N.1/30 <-> namespace
10.215.N.2/30, N from the pid; deleted in a finaliser, pass or fail); the EIO runs turn off
tx checksum offload on that veth (`ethtool -K IF tx off`), on which older kernels refuse UDP
GSO (EIO). The kernel's refusals of too-big GSO messages (EMSGSIZE) and of GSO without UDP
checksums (EINVAL, SO_NO_CHECK) exercise the fallback on loopback."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from netns import Net, bound, run_pair, sh  # noqa: E402

from packet_flow import _io, sender, sockets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SO_NO_CHECK = 11                # Linux: no UDP checksums on send; the kernel then refuses GSO


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}


def pf_in(*args, prefix=()):
    return subprocess.Popen([*prefix, sys.executable, "-m", "packet_flow", "--log-level",
                             "warning", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)


def finish_ok(proc, timeout=60):
    _out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return err


def _summaries(path):
    with open(path, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    return {r["role"]: r for r in recs if r["type"] == "summary"}, recs


def test_gso_segments_from_size_and_mtu():
    v4, v6 = socket.AF_INET, socket.AF_INET6
    assert sender.gso_segments(64, 65536, v4) == 64
    assert sender.gso_segments(1400, 65536, v4) == 46        # 46 * 1400 = 64400 <= 65507
    assert sender.gso_segments(9000, 65536, v4) == 7
    assert sender.gso_segments(1400, 65536, v6) == 46        # 65527 // 1400
    assert sender.gso_segments(1472, 1500, v4) == 44         # 1472 + 28 = the MTU
    assert sender.gso_segments(1473, 1500, v4) == 1          # over the MTU: no GSO
    assert sender.gso_segments(1452, 1500, v6) == 45
    assert sender.gso_segments(1453, 1500, v6) == 1
    assert sender.gso_segments(1400, None, v4) == 46         # MTU unknown: 64 KiB only


def test_too_big_gso_message_is_sent_again_one_by_one(link):
    """64 segments of 1400 bytes are 89600 bytes: the kernel refuses the message
    (EMSGSIZE); the sender sends the same packets one datagram per message."""
    lk = link()
    tx = lk.sender(size=1400, segments=64, batch=4)
    assert tx.send(256) == 256
    recs = lk.collect(256)
    assert (tx.sent, tx.send_errors, tx.segments, tx.gso_errno) == (256, 0, 1, errno.EMSGSIZE)
    assert len(recs) == 256 and sorted(recs["seq"].tolist()) == list(range(256))
    assert set(recs["length"].tolist()) == {1400}



def test_gso_refused_by_the_kernel_is_sent_again(link):
    """With UDP checksums off on the socket (SO_NO_CHECK) the kernel refuses every GSO
    message (EINVAL): the sender falls back to one datagram per message."""
    lk = link()
    lk.ssock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    tx = lk.sender(size=200, segments=16, batch=4)
    assert tx.send(64) == 64
    recs = lk.collect(64)
    assert (tx.sent, tx.send_errors, tx.segments, tx.gso_errno) == (64, 0, 1, errno.EINVAL)
    assert sorted(recs["seq"].tolist()) == list(range(64))


def test_reflector_gso_refused_is_sent_again():
    """The reflector's replies to one sender leave as GSO messages; refused (EINVAL, as
    above), the same replies go again one datagram per message."""
    rsock, _ = sockets.receive_socket(("127.0.0.1", 0), socket.AF_INET, gro=False)
    rsock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    ssock = sockets.send_socket(socket.AF_INET)
    ssock.setsockopt(socket.SOL_SOCKET, _io.SO_TIMESTAMPNS_, 1)
    try:
        refl = _io.Reflector(rsock.fileno(), capacity=1 << 10)
        refl.reflect_gso = True
        back = _io.Receiver(ssock.fileno(), capacity=1 << 10)
        tx = _io.Sender(ssock.fileno(), sockets.dest_tuple(rsock.getsockname(),
                                                          socket.AF_INET), size=100, batch=64)
        tx.send(64)
        end = _io.mono_ns() + 2_000_000_000
        while refl.reflected < 64 and _io.mono_ns() < end:
            refl.pump(_io.mono_ns() + 20_000_000, 64)
        got = 0
        while got < 64 and _io.mono_ns() < end:
            got += back.pump(_io.mono_ns() + 20_000_000, 64 - got)
        assert (refl.reflected, refl.reflect_errors, refl.reflect_gso) == (64, 0, False)
        replies = back.drain()
        assert len(replies) == 64 and sorted(replies["seq"].tolist()) == list(range(64))
        assert ((replies["flags"] & _io.FLAG_REFLECTED) != 0).all()
    finally:
        rsock.close()
        ssock.close()

@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.01, 0.02], ids=["100k_pps", "50k_pps"])
@pytest.mark.parametrize("size", [1400, 9000])
def test_loopback_large_packets_all_sent(tmp_path, size, rate):
    count = 50_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run.jsonl"
    finish_ok(pf_in("--mode", "both", "--local-addr", f"127.0.0.1:{port}", "--remote-addr",
                f"127.0.0.1:{port}", "--size", size, "--rate", rate, "--count", count,
                "--rcvbuf", 64 << 20, "--output", f"jsonl:{out}"))
    got, _ = _summaries(out)
    tx, rx = got["sender"], got["receiver"]
    assert (tx["sent"], tx["send_errors"]) == (count, 0)
    assert (rx["received"], rx["lost"]) == (count, 0)


@pytest.fixture(scope="module")
def veth():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, veth)")
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (apt-get install iproute2 ethtool)")
    yield from Net("gso", 215, mtu=1500).running()


def _through(net, tmp_path, name, *sender_args):
    """A receiver in the namespace, a sender in the root namespace; returns (sender
    summary, receiver summary, sender stderr)."""
    port = 40000 + os.getpid() % 20000
    rx_out, tx_out = tmp_path / f"rx-{name}.jsonl", tmp_path / f"tx-{name}.jsonl"
    err = run_pair(net.exec(), ["--local-addr", f"{net.ns_ip}:{port}", "--rcvbuf", 64 << 20,
                                "--duration", 60, "--output", f"jsonl:{rx_out}"],
                   [], ["--remote-addr", f"{net.ns_ip}:{port}", "--output", f"jsonl:{tx_out}",
                        *sender_args], port, settle=0.3)
    return _summaries(tx_out)[0]["sender"], _summaries(rx_out)[0]["receiver"], err


@pytest.mark.netns
@pytest.mark.slow
def test_mtu_sized_packets_through_a_veth(veth, tmp_path):
    """--size 1472 fills the 1500-byte MTU exactly: GSO messages of 44 segments, all sent."""
    count = 50_000
    tx, rx, err = _through(veth, tmp_path, "1472", "--size", 1472, "--rate", 0.01,
                           "--count", count)
    assert (tx["sent"], tx["send_errors"]) == (count, 0)
    assert (rx["received"], rx["lost"]) == (count, 0)
    assert "MTU" not in err and "GSO" not in err


@pytest.mark.netns
@pytest.mark.slow
def test_packets_over_the_mtu_are_said_once_and_fragmented(veth, tmp_path):
    tx, rx, err = _through(veth, tmp_path, "2000", "--size", 2000, "--rate", 0.05,
                           "--count", 5000)
    assert (tx["sent"], tx["send_errors"]) == (5000, 0)
    assert (rx["received"], rx["lost"]) == (5000, 0)
    assert err.count("exceed the path MTU 1500") == 1
    assert "(1472 bytes fit)" in err


@pytest.mark.netns
@pytest.mark.slow
def test_device_without_checksum_offload_loses_nothing(veth, tmp_path):
    """No tx checksum offload on either end of the veth (`ethtool -K IF tx off`): a sender
    at 100k packets/s (GSO messages) and a reflector in the namespace answering a sender
    (its replies coalesced into GSO messages) lose nothing. Older kernels refuse UDP GSO on
    such a device with EIO and both fall back to one datagram per message (one warning);
    this one (6.x) segments in software, so the warning may not come: the fallback itself
    is tested with kernel refusals above (EMSGSIZE, EINVAL)."""
    sh("ethtool", "-K", veth.root_if, "tx", "off")
    sh(*veth.exec(), "ethtool", "-K", veth.ns_if, "tx", "off")
    try:
        count = 50_000
        tx, rx, err = _through(veth, tmp_path, "eio", "--size", 200, "--rate", 0.01,
                               "--count", count)
        assert (tx["sent"], tx["send_errors"]) == (count, 0)
        assert (rx["received"], rx["lost"]) == (count, 0)
        assert err.count("refused a UDP GSO message") <= 1

        port = 40000 + os.getpid() % 20000 + 1
        out, tx_out = tmp_path / "refl.jsonl", tmp_path / "rtt.jsonl"
        refl = pf_in("--mode", "reflector", "--local-addr", f"{veth.ns_ip}:{port}",
                   "--rcvbuf", 64 << 20, "--duration", 60, "--output", f"jsonl:{out}",
                   prefix=veth.exec())
        try:
            end = time.monotonic() + 10
            while not bound(refl.pid, port):
                assert refl.poll() is None and time.monotonic() < end, refl.stderr.read()
                time.sleep(0.02)
            finish_ok(pf_in("--mode", "sender", "--remote-addr", f"{veth.ns_ip}:{port}", "--rtt",
                        "--rate", 0.02, "--count", 20_000, "--rcvbuf", 64 << 20,
                        "--output", f"jsonl:{tx_out}"))
            refl.send_signal(signal.SIGTERM)
            finish_ok(refl, 20)
        finally:
            if refl.poll() is None:
                refl.kill()
                refl.wait()
        rtt = _summaries(tx_out)[0]["sender"]
        _, recs = _summaries(out)
        rx_recs = [r for r in recs if r["type"] == "receiver"]
        assert (rtt["sent"], rtt["send_errors"], rtt["lost"]) == (20_000, 0, 0)
        assert sum(r["reflected"] for r in rx_recs) == 20_000
        assert sum(r["reflect_errors"] for r in rx_recs) == 0
    finally:
        sh("ethtool", "-K", veth.root_if, "tx", "on", check=False)
        sh(*veth.exec(), "ethtool", "-K", veth.ns_if, "tx", "on", check=False)

