"""The events a 24/7 link monitor meets, reproduced on real sockets (issue 12 items 1-3):

- an outage longer than --forget-timeout (an nftables rule drops everything for two seconds
  on a veth into the receiver's namespace): the flow resumes and the gap is loss, exactly
  the rule's drop counter, one burst, settled in the interval where the sender returns;
- NAT rebinding: a router namespace masquerades the sender; during the outage its conntrack
  entry is flushed and the mapping moves to another port; the flow (one native session)
  continues with the new source;
- a FINAL packet overtaken: arrival order 0..997, 999 (FINAL), 998 on loopback;
- a legacy (Rust-format) sender restarting from the same address and port, and the legacy
  FINAL that says goodbye with the next, unsent sequence.

The namespace tests need root, `ip`, `nft` (and `conntrack` for NAT); they skip with the
reason otherwise, and delete their namespaces (and with them the veth pairs and nft tables)
in a finaliser, pass or fail. Timeouts are short so the whole module runs in ~25 s.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from netns import bound, finish_ok, pf_in, records, sh, why_not

from packet_flow import wire

RATE_MS = 10                  # 100 packets/s
COUNT = 400                   # 4 s
OUTAGE_AT, OUTAGE_S = 0.8, 2.0
RX_TIMEOUTS = ("--stall-timeout", 0.3, "--forget-timeout", 1.0, "--interval", 0.25)
TABLE = "pfevents"


def _ns_exec(ns, *args):
    return ["ip", "netns", "exec", ns, *map(str, args)]


def _nft(ns, script):
    done = subprocess.run(_ns_exec(ns, "nft", "-f", "-"), input=script, text=True,
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def _drops(ns, family):
    import json
    out = sh(*_ns_exec(ns, "nft", "-j", "list", "counter", family, TABLE, "drops")).stdout
    (counter,) = [o["counter"] for o in json.loads(out)["nftables"] if "counter" in o]
    return counter["packets"]


def _wait_bound(proc, port):
    end = time.monotonic() + 10
    while not bound(proc.pid, port):
        assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
        time.sleep(0.02)


def _stop(*procs):
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _session(recs, session):
    return [r for r in recs if r.get("session") == session and r["role"] == "receiver"]


# ---------------------------------------------------------------- namespaces


class Topology:
    """Namespaces named after the pid. `outage`: root <-veth-> rx namespace. `nat`: tx
    namespace <-veth-> router namespace (masquerade) <-veth-> root (the receiver)."""

    def __init__(self):
        n = os.getpid() % 250 + 1
        self.n, self.pid = n, os.getpid()
        self.namespaces, self.links = [], []

    def ns(self, role):
        name = f"pf-ev{role}-{self.pid}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, tag, left_ns, left_ip, right_ns, right_ip):
        """A veth pair; ns None = the root namespace. Returns the two interface names."""
        a, b = f"pfe{self.n}{tag}a", f"pfe{self.n}{tag}b"
        self.links.append(a)
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        for ifname, ns, ip in ((a, left_ns, left_ip), (b, right_ns, right_ip)):
            if ns is not None:
                sh("ip", "link", "set", ifname, "netns", ns)
            pre = ["ip", "-n", ns] if ns is not None else ["ip"]
            sh(*pre, "addr", "add", f"{ip}/30", "dev", ifname)
            sh(*pre, "link", "set", ifname, "up")
        return a, b

    def down(self):
        for name in self.namespaces:
            sh("ip", "netns", "del", name, check=False)
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        listed = sh("ip", "netns", "list").stdout
        assert not [ns for ns in self.namespaces if ns in listed]


@pytest.fixture
def topo():
    why = why_not()
    if why:
        pytest.skip(why)
    t = Topology()
    try:
        yield t
    finally:
        t.down()


def _outage_run(rx_pre, rx_ip, port, tx_pre, out, tx_out, start_outage, end_outage):
    """Receiver, then a 100 packets/s sender of COUNT packets; the outage callbacks run
    OUTAGE_AT s into the run and OUTAGE_S later. Returns the receiver's stderr."""
    rx = pf_in(rx_pre, "--mode", "receiver", "--local-addr", f"{rx_ip}:{port}", *RX_TIMEOUTS,
             "--duration", 30, "--output", f"jsonl:{out}")
    tx = None
    try:
        _wait_bound(rx, port)
        tx = pf_in(tx_pre, "--mode", "sender", "--remote-addr", f"{rx_ip}:{port}",
                 "--rate", RATE_MS, "--count", COUNT, "--output", f"jsonl:{tx_out}")
        # the receiver's first interval record (every 0.25 s) says the packets are flowing
        end = time.monotonic() + 10
        while b'"type":"interval"' not in (out.read_bytes() if out.exists() else b""):
            assert time.monotonic() < end and tx.poll() is None, "no packets arrive"
            time.sleep(0.01)
        time.sleep(OUTAGE_AT - 0.25)
        start_outage()
        time.sleep(OUTAGE_S)
        end_outage()
        finish_ok(tx, 30)
        time.sleep(0.3)
        rx.send_signal(signal.SIGTERM)
        _, err = rx.communicate(timeout=20)
        assert rx.returncode == 0, err
        return err
    finally:
        _stop(tx, rx)


def _check_outage(recs, sent, drops):
    """One flow, loss = the drop counter in one burst, settled where the sender returns."""
    (summary,) = [r for r in recs if r["type"] == "summary" and r["role"] == "receiver"]
    flow = _session(recs, summary["session"])
    assert sent["sent"] == COUNT and OUTAGE_S * 80 < drops < OUTAGE_S * 120
    assert (summary["lost"], summary["loss_bursts"], summary["max_loss_burst"]) == (drops, 1, drops)
    assert summary["received"] == COUNT - drops
    assert (summary["late"], summary["duplicates"], summary["after_final"]) == (0, 0, 0)
    assert summary["closed"] is True and summary["outcome"] == "final"
    intervals = [r for r in flow if r["type"] == "interval"]
    assert sum(r["lost"] for r in intervals) == drops
    # silent: stalled intervals that say for how long, then nothing (forgotten) ...
    stalled = [r for r in intervals if r["stalled"]]
    assert stalled and max(r["silent_s"] for r in stalled) >= 0.8
    assert all(r["received"] == 0 and r["lost"] == 0 for r in stalled)
    times = [(r["time"], r) for r in intervals]
    back = next(i for i, (_, r) in enumerate(times) if r["lost"])
    # ... and the whole gap is settled in the interval where the sender returns
    assert times[back][1]["lost"] == drops and times[back][1]["received"] > 0
    assert times[back - 1][1]["stalled"] is True
    return summary, intervals, back


@pytest.mark.netns
def test_outage_longer_than_forget_timeout_is_one_burst(topo, tmp_path):
    rx_ns = topo.ns("rx")
    root_ip, rx_ip = f"10.218.{topo.n}.1", f"10.218.{topo.n}.2"
    _, rx_if = topo.veth("o", None, root_ip, rx_ns, rx_ip)
    port = 40000 + os.getpid() % 20000
    _nft(rx_ns, f"""table netdev {TABLE} {{
  counter drops {{ }}
  chain path {{ type filter hook ingress device "{rx_if}" priority 0; policy accept; }}
}}""")
    rule = f"ip daddr {rx_ip} udp dport {port} counter name drops drop"
    out, tx_out = tmp_path / "rx.jsonl", tmp_path / "tx.jsonl"
    err = _outage_run(
        _ns_exec(rx_ns), rx_ip, port, [], out, tx_out,
        lambda: sh(*_ns_exec(rx_ns, "nft", "add", "rule", "netdev", TABLE, "path", *rule.split())),
        lambda: sh(*_ns_exec(rx_ns, "nft", "flush", "chain", "netdev", TABLE, "path")))
    drops = _drops(rx_ns, "netdev")
    (sent,) = [r for r in records(tx_out) if r["type"] == "summary"]
    recs = records(out)
    summary, intervals, back = _check_outage(recs, sent, drops)
    assert "forgotten" in err and "is back after" in err
    # forgotten: no interval records for the flow between forgetting and its return
    gap = _ts(intervals[back]["time"]) - _ts(intervals[back - 1]["time"])
    assert gap > 0.5
    print(f"outage: sent {sent['sent']}, nft drops {drops}, received {summary['received']}, "
          f"lost {summary['lost']} in {summary['loss_bursts']} burst(s) of "
          f"{summary['max_loss_burst']}; stalled records {sum(r['stalled'] for r in intervals)}")


def _ts(text):
    from datetime import datetime
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.netns
def test_nat_rebinding_keeps_the_session(topo, tmp_path):
    if shutil.which("conntrack") is None:
        pytest.skip("`conntrack` is not installed (apt-get install conntrack)")
    n = topo.n
    tx_ns, r_ns = topo.ns("tx"), topo.ns("nat")
    tx_ip, r_in = f"10.219.{n}.2", f"10.219.{n}.1"
    r_out, rx_ip = f"10.220.{n}.1", f"10.220.{n}.2"
    topo.veth("i", tx_ns, tx_ip, r_ns, r_in)
    r_if, _ = topo.veth("x", r_ns, r_out, None, rx_ip)
    sh("ip", "-n", tx_ns, "route", "add", "default", "via", r_in)
    sh(*_ns_exec(r_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"))
    port = 40000 + os.getpid() % 20000
    nat_rule = 'oifname "{}" meta l4proto udp masquerade to :{}'
    _nft(r_ns, f"""table ip {TABLE} {{
  counter drops {{ }}
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    {nat_rule.format(r_if, 30000)}
  }}
  chain relay {{ type filter hook forward priority 0; policy accept; }}
}}""")

    def outage():
        sh(*_ns_exec(r_ns, "nft", "add", "rule", "ip", TABLE, "relay", "ip", "daddr", rx_ip,
                      "udp", "dport", port, "counter", "name", "drops", "drop"))

    def rebind():
        # the NAT forgets the sender (conntrack entry flushed) and maps it to a new port
        _nft(r_ns, f"flush chain ip {TABLE} post\n"
                   f"add rule ip {TABLE} post {nat_rule.format(r_if, 30001)}\n")
        flushed = sh(*_ns_exec(r_ns, "conntrack", "-D", "-p", "udp"), check=False)
        assert "flow entries have been deleted" in flushed.stderr, flushed.stderr
        sh(*_ns_exec(r_ns, "nft", "flush", "chain", "ip", TABLE, "relay"))

    out, tx_out = tmp_path / "rx.jsonl", tmp_path / "tx.jsonl"
    _outage_run([], rx_ip, port, _ns_exec(tx_ns), out, tx_out, outage, rebind)
    drops = _drops(r_ns, "ip")
    (sent,) = [r for r in records(tx_out) if r["type"] == "summary"]
    recs = records(out)
    summary, intervals, back = _check_outage(recs, sent, drops)
    assert {r["source"] for r in intervals[:back]} == {f"{r_out}:30000"}
    assert {r["source"] for r in intervals[back:]} == {f"{r_out}:30001"}
    assert summary["source"] == f"{r_out}:30001"
    print(f"nat: sent {sent['sent']}, nft drops {drops}, received {summary['received']}, "
          f"lost {summary['lost']} in {summary['loss_bursts']} burst; source "
          f"{intervals[0]['source']} -> {summary['source']}")


# ---------------------------------------------------------------- loopback


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _receiver(out, port, *extra):
    rx = pf_in([], "--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 30,
             "--output", f"jsonl:{out}", *extra)
    _wait_bound(rx, port)
    return rx


def _end(rx):
    rx.send_signal(signal.SIGTERM)
    finish_ok(rx, 20)


def test_final_overtaken_by_a_straggler_makes_no_ghost_flow(tmp_path):
    """Arrival order 0..997, 999 (FINAL), 998: once at once (one batch, most likely), once
    with 998 300 ms later (a later batch). Each is one flow with all 1000 packets."""
    port, out = free_port(), tmp_path / "rx.jsonl"
    rx = _receiver(out, port)
    sessions = (0x1111111111111111, 0x2222222222222222)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for session, pause in zip(sessions, (0.0, 0.3), strict=True):
                now = time.time_ns()
                pkt = {q: wire.encode_native(session, q, now + q * 1000, flags=int(q == 999))
                       for q in range(1000)}
                for q in [*range(998), 999]:
                    s.sendto(pkt[q], ("127.0.0.1", port))
                    if q % 200 == 0:
                        time.sleep(0.002)
                time.sleep(pause)
                s.sendto(pkt[998], ("127.0.0.1", port))
        time.sleep(0.2)
        _end(rx)
    finally:
        _stop(rx)
    recs = records(out)
    summaries = [r for r in recs if r["type"] == "summary"]
    assert sorted(r["session"] for r in summaries) == [f"{s:016x}" for s in sessions]
    for r in summaries:
        assert (r["received"], r["lost"], r["late"], r["duplicates"]) == (1000, 0, 1, 0)
        assert (r["loss_bursts"], r["after_final"], r["outcome"]) == (0, 0, "final")
        intervals = [i for i in recs if i["type"] == "interval" and i["session"] == r["session"]]
        assert sum(i["lost"] for i in intervals) == 0
        assert sum(i["received"] for i in intervals) == 1000
    text = subprocess.run([sys.executable, "-m", "packet_flow", "report", str(out)],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert "2 flow(s)" in text
    rows = [ln.split() for ln in text.splitlines() if ln.strip().startswith(("1 ", "2 "))]
    totals = [r for r in rows if len(r) == 8]
    assert [r[1:6] for r in totals] == [["1,000", "0", "0.000", "1", "0"]] * 2


def _legacy_run(sock, port, first, count, final, t_final_us=None):
    """Legacy packets first..first+count-1 (paced), then the FINAL with the next sequence."""
    for q in range(first, first + count):
        sock.sendto(wire.encode_legacy(q, time.time_ns() // 1000), ("127.0.0.1", port))
        if q % 250 == 0:
            time.sleep(0.002)
    if final:
        ts = time.time_ns() // 1000 if t_final_us is None else t_final_us
        sock.sendto(wire.encode_legacy(first + count, ts, final=True), ("127.0.0.1", port))


def test_legacy_sender_restarting_from_the_same_port_is_two_flows(tmp_path):
    """A Rust-format sender on a fixed port sends 5000 packets, restarts (no FINAL: killed)
    and sends 3000 more; then the same with a FINAL between the runs."""
    port, out = free_port(), tmp_path / "rx.jsonl"
    rx = _receiver(out, port)
    got = {}
    try:
        for with_final in (False, True):
            src = free_port()
            for count in (5000, 3000):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", src))            # the restart reuses the port
                    _legacy_run(s, port, 0, count, with_final or count == 3000)
                time.sleep(0.05)
            got[with_final] = f"127.0.0.1:{src}"
        time.sleep(0.2)
        _end(rx)
    finally:
        _stop(rx)
    recs = records(out)
    for with_final, source in got.items():
        runs = [r for r in recs if r["type"] == "summary" and r["source"] == source]
        assert [(r["received"], r["lost"], r["late"], r["duplicates"]) for r in runs] == \
            [(5000, 0, 0, 0), (3000, 0, 0, 0)]
        assert [r["outcome"] for r in runs] == ["final" if with_final else "restarted", "final"]
    text = subprocess.run([sys.executable, "-m", "packet_flow", "report", str(out)],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert "4 flow(s)" in text


def test_legacy_final_is_a_goodbye_not_a_probe(tmp_path):
    """0..N-1 then FINAL(N) from a Rust-format sender, its FINAL stamped 1 s in the past (a
    delay sample from it would show); and packet-flow's own `--wire legacy --count N`."""
    port, out = free_port(), tmp_path / "rx.jsonl"
    n = 2000
    rx = _receiver(out, port)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _legacy_run(s, port, 0, n, True, t_final_us=time.time_ns() // 1000 - 1_000_000)
            rust = f"127.0.0.1:{s.getsockname()[1]}"
        tx = pf_in([], "--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--wire",
                 "legacy", "--rate", 0.1, "--count", n, "--output",
                 f"jsonl:{tmp_path / 'tx.jsonl'}")
        finish_ok(tx, 30)
        time.sleep(0.2)
        _end(rx)
    finally:
        _stop(rx)
    recs = records(out)
    (sent,) = [r for r in records(tmp_path / "tx.jsonl") if r["type"] == "summary"]
    assert sent["sent"] == n
    flows = {r["source"]: r for r in recs if r["type"] == "summary"}
    assert len(flows) == 2
    for source, r in flows.items():
        assert (r["received"], r["lost"], r["late"], r["duplicates"]) == (n, 0, 0, 0)
        assert r["closed"] is True and r["outcome"] == "final"
        assert r["owd_max_us"] < 500_000, source           # no sample from the goodbye
    assert flows[rust]["owd_min_us"] >= 0
