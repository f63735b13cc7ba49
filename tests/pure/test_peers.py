"""Peers: --peers parsing, node names, self-exclusion, DNS blips and rendezvous subsets, with a
fake resolver (no sockets: literal addresses only go through getaddrinfo's numeric path)."""

import logging
import os
import socket
import threading
import time

import pytest

from packet_flow import config, defaults, discovery, names, peers
from packet_flow.addresses import Addr
from packet_flow.discovery import LookupFailed, PeerSource
from packet_flow.errors import ConfigError
from packet_flow.peers import Dns, FileEntry, Me, Peer, Srv, Static


def addr(ip, port=8000):
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sockaddr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
    return Addr(ip, port, family, sockaddr)


def error(argv, env=None):
    with pytest.raises(ConfigError) as info:
        config.load(argv, env or {})
    return str(info.value)


# --- entries --------------------------------------------------------------------------------


def test_entries_parse():
    assert peers.parse_entry("10.0.0.1:8000") == Static("10.0.0.1", 8000)
    assert peers.parse_entry("[fd00::1]:9") == Static("fd00::1", 9)
    assert peers.parse_entry("node-3.example:8000") == Static("node-3.example", 8000)
    assert peers.parse_entry("file:/etc/pf/peers") == FileEntry("/etc/pf/peers")
    assert peers.parse_entry("dns:pf.mon.svc.cluster.local:8000") == \
        Dns("pf.mon.svc.cluster.local", 8000)
    assert peers.parse_entry("srv:_probe._udp.pf.mon") == Srv("_probe._udp.pf.mon")


def test_option_layers_and_errors(tmp_path):
    cfg = config.load(["--peers", "10.0.0.1:8000,[::1]:9", "--peers", "dns:mesh:8000",
                       "--peer-subset", "4", "--peer-refresh", "1"], {})
    assert cfg.peers == ("10.0.0.1:8000", "[::1]:9", "dns:mesh:8000")
    assert (cfg.peer_subset, cfg.peer_refresh) == (4, 1.0)
    assert config.load([], {"PACKET_FLOW_PEERS": "a:1,b:2"}).peers == ("a:1", "b:2")
    toml = tmp_path / "pf.toml"
    toml.write_text('peers = ["srv:_pf._udp.mesh", "c:3"]\npeer_refresh = 5\nname = "n1"\n')
    cfg = config.load(["--config-file", str(toml)], {})
    assert (cfg.peers, cfg.peer_refresh, cfg.name) == (("srv:_pf._udp.mesh", "c:3"), 5.0, "n1")
    assert config.load([], {}).peers == ()

    assert error(["--peers", "10.0.0.1:8000,nohost"]) == (
        "option --peers: value '10.0.0.1:8000,nohost' from cli: entry 'nohost': expected "
        "host:port")
    assert error([], {"PACKET_FLOW_PEERS": "fd00::1:8000"}) == (
        "option --peers: value 'fd00::1:8000' from env PACKET_FLOW_PEERS: entry "
        "'fd00::1:8000': an IPv6 address needs brackets: [v6addr]:port")
    assert "entry 'dns:mesh': expected dns:NAME:PORT" in error(["--peers", "dns:mesh"])
    assert "entry 'dns:mesh:99999': port 99999 is out of range" in error(
        ["--peers", "dns:mesh:99999"])
    assert "expected srv:_service._udp.NAME" in error(["--peers", "srv:mesh.local"])
    assert "entry 'file:': file: needs a path" in error(["--peers", "file:"])
    missing = tmp_path / "none"
    assert error(["--peers", f"file:{missing}"]) == (
        f"option --peers: value 'file:{missing}' from cli: entry 'file:{missing}': cannot "
        "read: No such file or directory")
    assert "--peer-subset: value '-1' from cli: must be at least 0" in error(
        ["--peer-subset", "-1"])
    assert "--peer-refresh: value '0' from cli: must be at least 0.1" in error(
        ["--peer-refresh", "0"])


def test_file_entries_comments_and_bad_lines(tmp_path):
    path = tmp_path / "peers"
    path.write_text("# the fleet\n10.0.0.1:8000\n\n  [fd00::2]:8000  # v6\ndns:mesh:8000\n")
    assert peers.parse_file(str(path)) == [Static("10.0.0.1", 8000), Static("fd00::2", 8000),
                                           Dns("mesh", 8000)]
    path.write_text("10.0.0.1:8000\n10.0.0.2\n")
    assert error(["--peers", f"file:{path}"]) == (
        f"option --peers: value 'file:{path}' from cli: {path} line 2: entry '10.0.0.2': "
        "expected host:port")
    path.write_text(f"file:{path}\n")
    assert "cannot name another file" in error(["--peers", f"file:{path}"])


# --- names ----------------------------------------------------------------------------------


def test_name_option():
    cfg = config.load(["--name", "edge-1"], {"NODE_NAME": "k8s-node"})
    assert (cfg.name, cfg.sources["name"]) == ("edge-1", "cli")
    assert names.node_name(cfg, {"NODE_NAME": "k8s-node"}) == "edge-1"
    cfg = config.load([], {"PACKET_FLOW_NAME": "p1"})
    assert (cfg.name, cfg.sources["name"]) == ("p1", "env PACKET_FLOW_NAME")
    cfg = config.load([], {"NODE_NAME": "k8s-node"})                # not given: names.py decides
    assert cfg.name is None and names.node_name(cfg, {"NODE_NAME": "k8s-node"}) == "k8s-node"
    assert names.node_name(cfg, {}) == names.clean(socket.gethostname())
    assert error(["--name", "a,b"]) == ("option --name: value 'a,b' from cli: must be printable "
                                        "ASCII without blanks, quotes, backslashes, commas or =")
    assert "must be printable ASCII" in error(["--name", "a b"])
    assert "must be printable ASCII" in error(["--name", "nœud"])
    assert "at most 63 bytes" in error(["--name", "x" * 64])


# --- self-exclusion -------------------------------------------------------------------------


def test_self_exclusion():
    mine = {"10.9.0.3", "fd00:9::3"}
    local = lambda a: a.host in mine                                 # noqa: E731
    me = Me("n3", 8000)                                              # bound to every address
    assert peers.is_self(Peer("10.9.0.3", addr("10.9.0.3")), me, local)
    assert peers.is_self(Peer("fd00:9::3", addr("fd00:9::3")), me, local)
    assert not peers.is_self(Peer("10.9.0.3", addr("10.9.0.3", 8001)), me, local)  # other port
    assert not peers.is_self(Peer("10.9.0.4", addr("10.9.0.4")), me, local)
    assert peers.is_self(Peer("n3", addr("10.9.9.9")), me, local)    # by name
    bound = Me.of("n3", addr("127.0.0.2"))
    assert bound.host == "127.0.0.2"
    assert peers.is_self(Peer("127.0.0.2", addr("127.0.0.2")), bound, local)
    assert not peers.is_self(Peer("127.0.0.3", addr("127.0.0.3")), bound, lambda a: True)
    assert Me.of("n3", addr("0.0.0.0")).host is None and Me.of("n3", addr("::")).host is None
    assert peers.is_local(addr("127.0.0.7"))


class FakeDns:
    """A resolver whose answers the test sets: a list of IPs, [] (empty) or an exception."""

    def __init__(self, answers):
        self.answers, self.calls = dict(answers), []

    def __call__(self, host, port):
        self.calls.append(host)
        got = self.answers[host]
        if isinstance(got, Exception):
            raise got
        return [addr(ip, port) for ip in got]


ME = Me("n1", 8000)


def source(entries, answers, me=ME, mine=("10.9.0.1",), reverse=lambda sockaddr: None, **kw):
    dns = FakeDns(answers)
    return PeerSource(entries, me, local=lambda a: a.host in mine, resolve=dns,
                      reverse=reverse, **kw), dns


def keys(src):
    return [p.key for p in src.peers()]


def test_source_leaves_itself_out_and_dedups():
    ips = [f"10.9.0.{i}" for i in range(1, 5)]
    src, _ = source(["dns:mesh:8000", "10.9.0.2:8000", "127.0.0.1:8000"], {"mesh": ips},
                    mine=("10.9.0.1", "127.0.0.1"))
    assert src.refresh()
    assert keys(src) == ["10.9.0.2:8000", "10.9.0.3:8000", "10.9.0.4:8000"]
    first = src.peers()
    assert not src.refresh() and src.peers() is first          # unchanged: the same tuple


def test_blips_keep_the_last_good_list(caplog):
    src, dns = source(["dns:mesh:8000"], {"mesh": ["10.9.0.1", "10.9.0.2", "10.9.0.3"]})
    src.refresh()
    good = keys(src)
    assert good == ["10.9.0.2:8000", "10.9.0.3:8000"]
    caplog.set_level(logging.INFO, "packet_flow.discovery")
    dns.answers["mesh"] = LookupFailed("mesh: Temporary failure in name resolution")
    for _ in range(5):
        assert not src.refresh() and keys(src) == good
    failing = [r.getMessage() for r in caplog.records]
    assert failing == ["peers: dns:mesh:8000: mesh: Temporary failure in name resolution; "
                       "keeping its last 3 peers"]                          # said once
    dns.answers["mesh"] = []                                          # empty: kept twice
    caplog.clear()
    assert not src.refresh() and not src.refresh() and keys(src) == good
    dns.answers["mesh"] = ["10.9.0.1", "10.9.0.2", "10.9.0.3"]        # back: the streak ends
    assert not src.refresh()
    dns.answers["mesh"] = []
    assert not src.refresh() and not src.refresh() and keys(src) == good
    assert src.refresh() and keys(src) == []                          # 3rd empty in a row
    assert [r.getMessage() for r in caplog.records] == [
        "peers: dns:mesh:8000 answers again",
        "peers: dns:mesh:8000: empty answer; keeping its last 3 peers unless it stays empty "
        "for 3 refreshes",
        "peers: dns:mesh:8000: empty answer; keeping its last 3 peers unless it stays empty "
        "for 3 refreshes",
        "peers: dns:mesh:8000: empty for 3 refreshes: its 3 peers leave",
        "peers: 0 (joined none; left 10.9.0.2:8000, 10.9.0.3:8000)"]
    dns.answers["mesh"] = ["10.9.0.3"]                                # a smaller answer: at once
    assert src.refresh() and keys(src) == ["10.9.0.3:8000"]


def test_a_lookup_that_hangs_times_out():
    release = threading.Event()

    def slow(host, port):
        release.wait(5)
        return [addr("10.9.0.2", port)]

    src = PeerSource(["dns:mesh:8000"], Me("n1", 8000), resolve=slow, local=lambda a: False,
                     timeout=0.2)
    start = time.monotonic()
    assert not src.refresh()
    assert time.monotonic() - start < 1.0 and src.peers() == ()
    release.set()


def test_names_resolve_in_the_background_and_files_follow_changes(tmp_path):
    path = tmp_path / "peers"
    path.write_text("node2:8000\n10.9.0.3:8000\n")
    src, dns = source([f"file:{path}"], {"node2": ["10.9.0.2"], "node4": ["10.9.0.4"]},
                      refresh_s=30.0)
    src.start()
    try:
        assert keys(src) == ["10.9.0.3:8000", "node2:8000"]
        assert src.peers()[1].addr.host == "10.9.0.2"
        os.replace(_write(tmp_path / "new", "node4:8000 # joined\nnode2:8000\n"), path)
        _wait(lambda: keys(src) == ["node2:8000", "node4:8000"])      # within a file poll
        path.write_text("node2:8000\nbroken\n")                         # keeps the last good
        time.sleep(1.3)
        assert keys(src) == ["node2:8000", "node4:8000"]
        calls = len(dns.calls)
        src.reload()                                                    # SIGHUP: look up now
        _wait(lambda: len(dns.calls) > calls)
    finally:
        src.close()
    assert not src._thread.is_alive()


def _write(path, text):
    path.write_text(text)
    return path


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def test_srv_entries_name_their_targets():
    src = PeerSource(["srv:_pf._udp.mesh"], Me("n1", 8000), local=lambda a: False,
                     resolve=FakeDns({"a.mesh.": ["10.9.0.2"], "b.mesh.": ["10.9.0.3"]}),
                     resolve_srv=lambda name: [("a.mesh.", 8000), ("b.mesh.", 8001)])
    src.refresh()
    assert keys(src) == ["a.mesh:8000", "b.mesh:8001"]


def test_peers_known_by_their_address_are_named_by_ptr_records():
    ptr = {"10.9.0.2": "n2.mesh.example.", "10.9.0.3": None, "10.9.0.5": "n5.mesh.example."}
    asked = []

    def reverse(sockaddr):
        asked.append(sockaddr[0])
        got = ptr[sockaddr[0]]
        if isinstance(got, Exception):
            raise got
        return got

    answers = {"mesh": ["10.9.0.1", "10.9.0.2", "10.9.0.3"], "node4": ["10.9.0.4"]}
    entries = ["dns:mesh:8000", "127.0.0.5:8000", "node4:8000"]
    src, dns = source(entries, answers, reverse=reverse)
    src.refresh()
    src._name()
    named = {p.key: src.name_of(p) for p in src.peers()}
    assert named == {"10.9.0.2:8000": "n2", "10.9.0.3:8000": "10.9.0.3",
                     "127.0.0.5:8000": "127.0.0.5", "node4:8000": "node4"}
    assert asked == ["10.9.0.2", "10.9.0.3"]    # not a loopback address, not a peer's name
    src._name()
    assert asked == ["10.9.0.2", "10.9.0.3"]    # once while listed (no name is an answer)
    # a lookup that fails ends the round; the next refresh asks again
    dns.answers["mesh"] = ["10.9.0.2", "10.9.0.5", "10.9.0.6"]
    ptr.update({"10.9.0.5": LookupFailed("10.9.0.5: no answer"), "10.9.0.6": "n6."})
    src.refresh()
    src._name()
    assert asked[2:] == ["10.9.0.5"]
    assert src._ptr == {"10.9.0.2": "n2", "10.9.0.3": None}     # 10.9.0.3 left: kept a while
    src._unlisted["10.9.0.3"] -= defaults.PEER_NAME_KEEP_S + 1
    ptr["10.9.0.5"] = "n5.mesh.example."
    src._name()
    assert "10.9.0.3" not in src._ptr                           # gone after PEER_NAME_KEEP_S
    assert [src.name_of(p) for p in src.peers()] == ["n2", "n5", "n6", "127.0.0.5", "node4"]
    # a node named by its FQDN names its peers by theirs
    src, _ = source(["dns:mesh:8000"], answers, me=Me("n1.mesh.example", 8000),
                    reverse=lambda sockaddr: ptr.get(sockaddr[0]))
    src.refresh()
    src._name()
    assert [src.name_of(p) for p in src.peers()] == ["n2.mesh.example", "10.9.0.3"]


# --- subsets --------------------------------------------------------------------------------


def fleet(n, tag="pf"):
    return [Peer(f"10.9.{i // 250}.{i % 250 + 1}", addr(f"10.9.{i // 250}.{i % 250 + 1}"))
            for i in range(n)], [f"{tag}-node-{i}" for i in range(n)]


def pairs(nodes, names, k):
    """{(sender, receiver)} when node i (named names[i]) selects k of the others."""
    out = set()
    for me, name in zip(nodes, names, strict=True):
        others = [p for p in nodes if p != me]
        out |= {(me.key, p.key) for p in peers.select(name, me.key, others, k)}
    return out


@pytest.mark.parametrize("n,k", [(12, 4), (13, 4), (5, 1), (40, 3), (100, 10), (6, 5)])
def test_subset_degrees(n, k):
    nodes, names = fleet(n)
    chosen = pairs(nodes, names, k)
    out_deg = {p.key: 0 for p in nodes}
    in_deg = dict(out_deg)
    for a, b in chosen:
        out_deg[a] += 1
        in_deg[b] += 1
    assert set(out_deg.values()) == {min(k, n - 1)}                 # everyone probes exactly k
    assert min(in_deg.values()) >= 1                                # nobody is unprobed
    assert sum(in_deg.values()) / n == min(k, n - 1)                # about k each
    assert pairs(nodes, names, k) == chosen                         # deterministic


def test_subset_all_when_k_is_zero_or_large():
    nodes, names = fleet(5)
    assert peers.select(names[0], nodes[0].key, nodes[1:], 0) == tuple(nodes[1:])
    assert peers.select(names[0], nodes[0].key, nodes[1:], 9) == tuple(nodes[1:])


@pytest.mark.parametrize("n,k", [(12, 4), (30, 5)])
def test_subset_stable_under_leave_and_join(n, k):
    nodes, names = fleet(n + 1)
    before = pairs(nodes[:n], names[:n], k)
    for gone in range(n):
        left = nodes[gone].key
        rest = [i for i in range(n) if i != gone]
        after = pairs([nodes[i] for i in rest], [names[i] for i in rest], k)
        removed, added = before - after, after - before
        involved = {pr for pr in before if left in pr}
        assert removed == involved                      # only pairs that involved it end
        probers = {a for a, b in involved if b == left}
        assert {a for a, _ in added} == probers and len(added) == len(probers)  # one each
    joined = nodes[n].key
    after = pairs(nodes, names, k)
    removed, added = before - after, after - before
    new_in = {a for a, b in added if b == joined}
    assert {pr for pr in added if pr[0] != joined} == {(a, joined) for a in new_in}
    assert len({pr for pr in added if pr[0] == joined}) == k        # it probes k
    assert {a for a, _ in removed} == new_in            # each node that took it dropped one
    assert len(removed) == len(new_in) and all(joined not in pr for pr in removed)


def test_discovery_helpers_bounded():
    with pytest.raises(LookupFailed, match="no answer within 0.1 s"):
        discovery.bounded(lambda: time.sleep(1), 0.1, "x")
    with pytest.raises(ZeroDivisionError):
        discovery.bounded(lambda: 1 / 0, 1.0, "x")
