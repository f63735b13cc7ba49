"""Discovery against a real DNS server: dnsmasq on a bridge answers A records (from a hosts
file it re-reads on SIGHUP) and SRV records; PeerSource runs inside a host namespace, whose
/etc/resolv.conf is the fleet's, and prints the peers it sees at every change
(support/watch_peers.py). Nothing is probed here: the mesh itself is in test_fleet.py."""

import json
import os
import signal
import sys
import time

import pytest
from fleet import Fleet, leftovers, wait_for, why_not

WATCH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support", "watch_peers.py")
PORT = 8000


@pytest.fixture
def fleet(request):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    made = []

    def make(n, **kw):
        made.append(Fleet(n, **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()
    assert not leftovers(os.getpid())


class Watch:
    """watch_peers.py in host i; seen() is every list it printed, with the time."""

    def __init__(self, fleet, i, refresh, *entries, port=PORT, seconds=30):
        self.fleet, self.name = fleet, f"watch-{i}-{len(fleet.procs)}"
        self.proc = fleet.run(i, [sys.executable, WATCH, f"n{i}", port, refresh, seconds,
                                  *entries], name=self.name)

    def seen(self):
        return [json.loads(line) for line in self.fleet.text(self.name, "out").splitlines()]

    def wait(self, peers, timeout, what):
        wait_for(lambda: self.seen() and self.seen()[-1]["peers"] == peers, timeout,
                 f"{what}: {peers} (seen {[s['peers'] for s in self.seen()]})")
        return self.seen()[-1]["t"]

    def log(self):
        return self.fleet.text(self.name)


def test_dns_join_leave_failure_and_empty_answers(fleet):
    f = fleet(5)
    f.publish([1, 2, 3])
    keys = {i: f"{f.ip(i)}:{PORT}" for i in f.hosts}
    w = Watch(f, 1, 0.5, f"dns:{f.name}:{PORT}")
    w.wait([keys[2], keys[3]], 10, "the first answer, without the host itself")

    f.publish([1, 2, 3, 4])                                 # a join: within one refresh
    start = time.monotonic()
    w.wait([keys[2], keys[3], keys[4]], 5, "the joined host")
    assert time.monotonic() - start < 0.5 + 1.0

    f.publish([1, 2, 4])                                    # a leave: at the next refresh
    w.wait([keys[2], keys[4]], 5, "the host that left")

    f.dns.stop()                                            # DNS down: keep the last good list
    wait_for(lambda: "keeping its last" in w.log(), 10, "the failure warning")
    time.sleep(2.0)                                         # 4 refreshes, all failing
    assert w.seen()[-1]["peers"] == [keys[2], keys[4]]
    assert w.log().count("keeping its last 3 peers") == 1   # said once
    f.dns.start()
    wait_for(lambda: "answers again" in w.log(), 10, "the recovery note")

    f.publish([])                                           # NXDOMAIN: removed after 3 in a row
    w.wait([], 10, "the peers of a name that stays empty")
    log = w.log()
    assert log.count("empty answer; keeping its last 3 peers unless it stays empty for 3 "
                     "refreshes") == 1
    assert log.count("empty for 3 refreshes: its 3 peers leave") == 1
    lists = [s["peers"] for s in w.seen()]
    assert lists == [[keys[2], keys[3]], [keys[2], keys[3], keys[4]], [keys[2], keys[4]], []]
    assert f.stop(w.proc) == -signal.SIGTERM


def test_srv_records_with_search_domain_and_sighup(fleet):
    pid = os.getpid()
    srv = [(f"_pf._udp.pf{pid}.mesh.test", f"n{i}.mesh.test", PORT + i) for i in (1, 2, 3)]
    f = fleet(4, srv=srv)
    f.publish([1, 2, 3])
    # the SRV name is relative: the search domain of the host's resolv.conf completes it
    w = Watch(f, 2, 30, f"srv:_pf._udp.pf{pid}", f"dns:{f.name}:{PORT + 2}", port=PORT + 2)
    # n2 on PORT+2 is itself (its own address and port); n1 and n3 by their SRV ports; the
    # dns: entry gives every address on PORT+2: n1 and n3 again, by address
    want = sorted([f"n1.mesh.test:{PORT + 1}", f"n3.mesh.test:{PORT + 3}",
                   f"{f.ip(1)}:{PORT + 2}", f"{f.ip(3)}:{PORT + 2}"])
    w.wait(want, 10, "the SRV targets and the A records")
    f.publish([1, 2, 3, 4])
    time.sleep(1.0)
    assert w.seen()[-1]["peers"] == want                    # refresh 30 s: not looked up yet
    w.proc.send_signal(signal.SIGHUP)                       # reload: looked up at once
    w.wait(sorted([*want, f"{f.ip(4)}:{PORT + 2}"]), 5, "the host added before SIGHUP")


def test_sighup_makes_a_mesh_node_look_up_its_peers(fleet):
    """run.py's SIGHUP hook: a mesh node with a 30 s refresh probes a host added to DNS at
    once after SIGHUP, not 30 s later."""
    f = fleet(2)
    f.publish([1])
    args = ("--mode", "mesh", "--peers", f"dns:{f.name}:{PORT}", "--local-addr",
            f"0.0.0.0:{PORT}", "--rate", 50, "--peer-refresh", 30, "--duration", 30,
            "--timer", "economy", "--output", "jsonl:/dev/null", "--log-level", "info")
    n1 = f.start(1, *args, "--name", "n1", name="n1")
    n2 = f.start(2, *args, "--name", "n2", name="n2")        # DNS names only n1: it probes n1
    wait_for(lambda: "new flow from" in f.text("n1"), 60, "n2 probing n1")
    f.publish([1, 2])
    time.sleep(2.0)
    assert "new flow from" not in f.text("n2")               # n1 looks up again in 30 s ...
    n1.send_signal(signal.SIGHUP)                            # ... or now
    wait_for(lambda: "new flow from" in f.text("n2"), 5, "n1 probing n2 after SIGHUP")
    assert f.stop(n1) == 0 and f.stop(n2) == 0
