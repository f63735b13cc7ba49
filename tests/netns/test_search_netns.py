"""`packet-flow search` against known limits on a real path: a veth pair into a namespace
where a packet-flow receiver runs. An nftables rule dropping everything above 20 000
packets/s (`limit rate over 20000/second drop`, on the namespace's veth ingress): the NDR is
within 2 % of 20 000. A tbf qdisc at 50 Mbit/s on the root end (egress towards the
receiver): tbf counts the Ethernet header, so 1400-byte payloads are 1442 bytes to it and it
passes 50e6 / (8 * 1442) = 4334 packets/s; the NDR is within 5 % of that. Each search uses
1 s trials and stays under 60 s; the namespace goes, pass or fail."""

import os
import time

import pytest
from netns import TABLE, Net, bound, pf_in, sh, why_not

import packet_flow

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
def net():
    why = why_not()
    if why:
        pytest.skip(why)
    yield from Net(tag="search", octet=219).running()


@pytest.fixture
def far_receiver(net, tmp_path):
    port = 40000 + os.getpid() % 20000
    proc = pf_in(net.exec(), "--mode", "receiver", "--local-addr", f"{net.ns_ip}:{port}",
                 "--duration", 120, "--output", f"jsonl:{tmp_path / 'rx.jsonl'}")
    end = time.monotonic() + 10
    while not bound(proc.pid, port):
        assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
        time.sleep(0.05)
    yield f"{net.ns_ip}:{port}"
    proc.terminate()
    proc.communicate(timeout=20)


def _search(remote, **kw):
    t0 = time.monotonic()
    result = packet_flow.search(remote_addr=remote, trial_duration=1, **kw)
    took = time.monotonic() - t0
    print(f"\n{len(result.trials)} trials, {took:.1f} s; NDR {result.ndr}")
    for t in result.trials:
        print(f"  {t.rate:10.0f} {t.phase:5} sent {t.sent} received {t.received} "
              f"lost {t.lost} local {t.local_drops} missed {t.missed_slots} {t.verdict()}")
    assert took < 60
    return result


def test_ndr_against_nft_packet_rate_limit(net, far_receiver):
    net.nft(f"""table netdev {TABLE} {{
  chain path {{
    type filter hook ingress device "{net.ns_if}" priority 0; policy accept;
    ip daddr {net.ns_ip} udp dport {far_receiver.rsplit(':', 1)[1]} limit rate over 20000/second drop
  }}
}}
""")
    result = _search(far_receiver, max_rate=100_000)
    assert result.ndr["limited_by"] is None, result.ndr
    assert abs(result.ndr["rate"] - 20_000) <= 0.02 * 20_000


def test_ndr_against_tbf_50mbit(net, far_receiver):
    sh("tc", "qdisc", "add", "dev", net.root_if, "root", "tbf", "rate", "50mbit",
       "burst", "32kbit", "latency", "5ms")
    size = 1400
    passes = 50e6 / (8 * (size + 8 + 20 + 14))     # tbf counts UDP, IP, Ethernet header
    result = _search(far_receiver, size=size, max_rate=20_000)
    assert result.ndr["limited_by"] is None, result.ndr
    assert abs(result.ndr["rate"] - passes) <= 0.05 * passes
