"""UDP GRO on a real interface (issue 12.5): a veth pair into a namespace, GRO enabled on the
namespace's end, and NAPI told to hold packets the way a NIC's interrupt moderation does
(gro_flush_timeout 200 µs, napi_defer_hard_irqs), so bursts of a 20k packets/s flow reach the
receiver's socket as coalesced buffers with one receive timestamp each.

The receiver must count every packet exactly either way, and take delay statistics only from
timestamps that belong to their packet: the last datagram of a coalesced buffer (GRO hands the
burst up after its last segment arrived); the others are `coalesced`, exactly the datagrams
read minus the socket buffers read. With GRO off on the interface nothing is coalesced.

Needs root, `ip`, `ethtool`; skips with the reason otherwise. The namespace (and the veth
pair with it) is deleted in the fixture's finaliser, pass or fail."""

import os
import shutil

import pytest
from netns import Net, records, run_pair, sh, why_not  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.slow]

COUNT = 4000
RATE_MS = 0.05                          # 20k packets/s: no UDP GSO from the sender


class GroNet(Net):
    def __init__(self):
        super().__init__("gro", 214)

    def gro(self, state):
        # veth runs NAPI (and so GRO) for locally sent UDP when it may forward UDP GRO
        sh(*self.exec("ethtool", "-K", self.ns_if, "gro", state, "rx-udp-gro-forwarding",
                       state))
        sysfs = f"/sys/class/net/{self.ns_if}"
        hold = "200000" if state == "on" else "0"
        sh(*self.exec("sh", "-c", f"echo {hold} > {sysfs}/gro_flush_timeout && "
                                   f"echo 1000 > {sysfs}/napi_defer_hard_irqs"))


@pytest.fixture(scope="module")
def gro_net():
    why = why_not() or (None if shutil.which("ethtool") else
                         "`ethtool` is not installed (apt-get install ethtool)")
    if why:
        pytest.skip(why)
    net = GroNet()
    try:
        net.up()
        yield net
    finally:
        net.down()


@pytest.mark.parametrize("gro", ["on", "off"])
def test_coalesced_bursts_count_exactly_and_keep_only_own_timestamps(gro_net, tmp_path, gro):
    net = gro_net
    net.gro(gro)
    port = 41000 + os.getpid() % 20000
    rout, tout = tmp_path / f"rx-{gro}.jsonl", tmp_path / f"tx-{gro}.jsonl"
    run_pair(net.exec(), ["--local-addr", f"{net.ns_ip}:{port}", "--duration", 30,
                          "--output", f"jsonl:{rout}"],
             [], ["--remote-addr", f"{net.ns_ip}:{port}", "--rate", RATE_MS, "--count", COUNT,
                  "--output", f"jsonl:{tout}"], port, settle=0.3)
    recs = records(rout)
    (s,) = [r for r in recs if r["type"] == "summary"]
    sock = [r for r in recs if r["type"] == "receiver"]
    datagrams = sum(r["datagrams"] for r in sock)
    buffers = sum(r["buffers"] for r in sock)
    # counts are exact either way
    assert s["closed"] and s["received"] == datagrams == COUNT
    assert s["lost"] == s["local_drops"] == s["late"] == s["duplicates"] == 0
    # every datagram that shares its buffer's timestamp with a later one is known, and
    # left out of the delay statistics
    assert s["coalesced"] == datagrams - buffers
    if gro == "on":
        assert s["coalesced"] > COUNT // 2
    else:
        assert s["coalesced"] == 0 and buffers == COUNT
    assert s["owd_min_us"] is not None and s["negative_owd"] == 0
