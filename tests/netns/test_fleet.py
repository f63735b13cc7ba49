"""A simulated fleet (issue 24 §8): 12 hosts (network namespaces on a bridge, support/fleet.py),
each running `packet-flow --mode mesh --peers dns:NAME:PORT` at 100 packets/s per pair, with
a real DNS server (dnsmasq) answering NAME with the hosts' addresses.

- Truth: nftables drops every 7th packet from n1 to n2 and every packet from n3 to n4 for 3 s;
  the lost counts of all 132 pairs equal the nft counters, 0 elsewhere; every pair's
  received + lost equals what its sender sent; every flow record carries both names.
- Join: n13 is added to the hosts file, SIGHUP to dnsmasq: every other node probes it within
  one --peer-refresh. Leave: n12 is removed from DNS, then stopped: every pair towards it
  ends `left`, and nothing from or to it is counted lost.
- --peer-subset 4: every node probes exactly 4, everyone is probed (each node's probed_by
  says by how many), and when a node leaves only the pairs that involved it change: one
  replacement for each node that probed it. Peers that never probe back are named by their
  PTR records.
Everything is bounded (--duration, timeouts) and removed, pass or fail.
"""

import json
import os
import re
import signal
import time
from datetime import datetime

import pytest
from fleet import Fleet, leftovers, wait_for, why_not

from packet_flow.report_mesh import pair_matrix

PORT = 8000
REFRESH = 1.0
INTERVAL = 1.0
SLACK = 2.0                 # scheduling on a loaded 2-core machine (load 25 seen here)
N = 12


@pytest.fixture
def fleet():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    made = []

    def make(n):
        made.append(Fleet(n))
        return made[-1]

    yield make
    for f in made:
        f.close()
    assert not leftovers(os.getpid())


def start(f, i, *extra):
    """A mesh node in host i, named n{i} by NODE_NAME (as the downward API does)."""
    return f.start(i, "--mode", "mesh", "--peers", f"dns:{f.name}:{PORT}", "--local-addr",
                   f"0.0.0.0:{PORT}", "--rate", 10, "--interval", INTERVAL, "--peer-refresh", REFRESH,
                   "--duration", 90, "--output", f"jsonl:{f.path(f'n{i}.jsonl')}",
                   "--timer", "economy", "--log-level", "info", *extra, env={"NODE_NAME": f"n{i}"},
                   name=f"n{i}")


def records(f, i):
    with open(f.path(f"n{i}.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def log_times(f, i, pattern):
    """Wall-clock times of the log lines of node i that match pattern, with the match."""
    out = []
    for line in f.text(f"n{i}").splitlines():
        m = re.search(pattern, line)
        if m:
            out.append((datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp(), m))
    return out


def senders(f, i):
    """The addresses node i has received flows from."""
    return {m.group(1) for _, m in log_times(f, i, r"new flow from (\S+):\d+,")}


def flows_in(f, i):
    return len(senders(f, i))


def probed_by_after(f, procs, since):
    """{node: probed_by} of each running node's first `receiver` record after `since` (a
    wall-clock time), waiting for it (records come every --interval)."""
    def first(i):
        return next((r["probed_by"] for r in records(f, i) if r["type"] == "receiver"
                     and datetime.fromisoformat(r["time"]).timestamp() > since), None)

    wait_for(lambda: all(first(i) is not None for i in procs), 10 * INTERVAL,
             "a receiver record from every node")
    return {f"n{i}": first(i) for i in procs}


def nft_drop(f, host, table, rule):
    f.nft(host, f"""table inet {table} {{
        counter dropped {{}}
        chain input {{ type filter hook input priority 0; policy accept;
            {rule} counter name "dropped" drop
        }}
    }}""")


def stop_all(f, procs):
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return {i: f.stop(p, timeout=20, signal_it=False) for i, p in procs.items()}


@pytest.mark.slow
def test_fleet_truth_join_and_leave(fleet):
    f = fleet(N + 1)
    f.publish(range(1, N + 1))
    procs = {i: start(f, i) for i in range(1, N + 2)}   # n13 is not in DNS yet: it probes
    t0 = time.monotonic()                                # the 12, they do not probe it
    wait_for(lambda: all(flows_in(f, i) == N for i in range(1, N + 1)), 90,
             "every pair flowing")
    phases = {"start": time.monotonic() - t0}

    # -- truth: drops in chosen namespaces, on the receiving host's input
    nft_drop(f, 2, "pfab", f"ip saddr {f.ip(1)} udp dport {PORT} numgen inc mod 7 0")
    nft_drop(f, 4, "pfcd", f"ip saddr {f.ip(3)} udp dport {PORT}")
    time.sleep(3.0)
    for host, table in ((2, "pfab"), (4, "pfcd")):
        f.nft(host, f"flush chain inet {table} input")
    dropped = {("n1", "n2"): f.nft_counters(2, "pfab")["dropped"],
               ("n3", "n4"): f.nft_counters(4, "pfcd")["dropped"]}
    assert 0 < dropped[("n1", "n2")] < dropped[("n3", "n4")]

    # -- join: DNS names n13; every node probes it within one refresh
    assert flows_in(f, 13) == 0
    phases["truth"] = time.monotonic() - t0 - phases["start"]
    published = time.time()
    f.publish(range(1, N + 2))
    wait_for(lambda: flows_in(f, 13) == N, 20, "the 12 others probing n13")
    # discovery (each node's PeerSource) sees n13 within one refresh; the mesh takes new
    # peers at its next interval tick (mesh.py), so the first packets follow within one more
    # --interval. SLACK covers a loaded machine's scheduling.
    seen = [min(t for t, _ in log_times(f, i, rf"peers: .*joined [^;]*{f.ip(13)}:{PORT}"))
            - published for i in range(1, N + 1)]
    firsts = [t - published for t, m in log_times(f, 13, r"new flow from (\S+):8000")]
    assert len(firsts) == N
    assert max(seen) <= REFRESH + SLACK and max(firsts) <= REFRESH + INTERVAL + SLACK, (
        seen, firsts)
    join_s = (round(max(seen), 3), round(max(firsts), 3))

    # -- leave: n12 leaves DNS, every other node ends its pair towards n12, n12 stops
    f.publish([i for i in range(1, N + 2) if i != N])
    wait_for(lambda: all(log_times(f, i, rf"peer \S+ \({f.ip(N)}:{PORT}\) left")
                         for i in procs if i != N), 20, "every node letting n12 go")
    assert f.stop(procs.pop(N)) == 0
    time.sleep(0.5)
    codes = stop_all(f, procs)
    assert set(codes.values()) == {0}, codes

    recs = {i: records(f, i) for i in range(1, N + 2)}
    flows = [r for rs in recs.values() for r in rs if r["type"] in ("interval", "summary",
                                                                      "sender")]
    assert flows and all(r.get("source_name") and r.get("destination_name") for r in flows)
    rx = {}                     # (sender, receiver) -> receiver summary
    for r in flows:
        if r["type"] == "summary" and r["role"] == "receiver":
            assert (r["source_name"], r["destination_name"]) not in rx
            rx[(r["source_name"], r["destination_name"])] = r
    tx = {(r["source_name"], r["destination_name"]): r for r in flows
          if r["type"] == "summary" and r["role"] == "sender"}
    names = [f"n{i}" for i in range(1, N + 2)]
    pairs = [(a, b) for a in names for b in names if a != b]
    assert sorted(rx) == sorted(tx) == sorted(pairs)        # 156 pairs: 132 + n13's 24
    truth = [(a, b) for a, b in pairs if "n13" not in (a, b)]
    lost = {p: rx[p]["lost"] for p in truth}
    assert len(truth) == 132
    assert lost == {p: dropped.get(p, 0) for p in truth}    # exact, 0 elsewhere
    # what a sender sent before its peer's socket was bound never reached it (not lost)
    short = {p: tx[p]["sent"] - rx[p]["received"] - rx[p]["lost"] for p in pairs}
    assert min(short.values()) >= 0
    assert all(rx[p]["duplicates"] == 0 and rx[p]["late"] == 0 for p in pairs)
    assert {tx[(a, "n12")]["outcome"] for a in names if a != "n12"} == {"left"}
    assert all(rx[(a, "n12")]["lost"] == rx[("n12", a)]["lost"] == 0
               for a in names if a != "n12")
    phases["rest"] = time.monotonic() - t0 - phases["start"] - phases["truth"]
    # the report's pair matrix (report_mesh) of the 13 nodes' records says the same
    matrix = pair_matrix([r for rs in recs.values() for r in rs])
    assert matrix.names == sorted(names)
    grid = matrix.grid("loss_percent")
    at = {n: k for k, n in enumerate(matrix.names)}
    assert {p for p in pairs if grid[at[p[0]], at[p[1]]] > 0} == set(dropped)
    print("lost (rows send, columns receive):")
    for a in names[:N]:
        print(f"{a:>4} " + " ".join(f"{lost.get((a, b), '-'):>4}" for b in names[:N]))
    report = {"dropped": dropped, "join_discovered_probed_s": join_s,
              "phases_s": {k: round(v, 1) for k, v in phases.items()},
              "pairs_sent_before_peer_up": sum(v > 0 for v in short.values()),
              "left_rx_outcomes": sorted({rx[("n12", a)]["outcome"] for a in names
                                          if a != "n12"})}
    print("fleet:", json.dumps({**report, "dropped": {f"{a}->{b}": v
                                                       for (a, b), v in dropped.items()}}))


@pytest.mark.slow
def test_fleet_subsets(fleet):
    f = fleet(N)
    f.publish(range(1, N + 1))
    procs = {i: start(f, i, "--peer-subset", 4) for i in range(1, N + 1)}
    first = {}                  # node -> its first peer list (addresses)

    def chosen(i):
        got = log_times(f, i, r"peers: (\d+) \(joined ([^;]*); left ([^)]*)\)")
        return got

    wait_for(lambda: all(chosen(i) for i in procs), 60, "every node choosing its peers")
    by_ip = {f.ip(i): f"n{i}" for i in range(1, N + 1)}

    def peer_names(text):
        return {by_ip[k.rsplit(":", 1)[0]] for k in text.split(", ") if k != "none"}

    for i in procs:
        (_, m), = chosen(i)
        first[f"n{i}"] = peer_names(m.group(2))
    before = {(a, b) for a, peers in first.items() for b in peers}
    out_deg = {a: len(p) for a, p in first.items()}
    in_deg = {b: sum(b in p for p in first.values()) for b in first}
    assert set(out_deg.values()) == {4} and min(in_deg.values()) >= 1
    wait_for(lambda: all(flows_in(f, i) == in_deg[f"n{i}"] for i in procs), 30,
             "every chosen pair flowing")
    probed = {"before": probed_by_after(f, procs, time.time())}
    assert probed["before"] == in_deg           # each node's receiver record: who probes it

    gone = 7
    f.publish([i for i in range(1, N + 1) if i != gone])
    probers = {a for a, b in before if b == f"n{gone}"}
    wait_for(lambda: all(len(chosen(int(a[1:]))) == 2 for a in probers), 10,
             "the nodes that probed n7 choosing again")
    time.sleep(2 * REFRESH)     # nobody else changes its choice
    assert f.stop(procs.pop(gone)) == 0
    stopped = time.time()
    after = set()
    for i in procs:
        picks = set(first[f"n{i}"])
        for _, m in chosen(i)[1:]:
            picks = (picks | peer_names(m.group(2))) - peer_names(m.group(3))
        after |= {(f"n{i}", b) for b in picks}
    # n7's FINALs closed its flows: the nodes it probed lost one prober, and the nodes that
    # took its place in a choice gained one
    probed["after"] = probed_by_after(f, procs, stopped)
    assert probed["after"] == {f"n{i}": sum(b == f"n{i}" for _, b in after) for i in procs}
    removed, added = before - after, after - before
    involved = {p for p in before if f"n{gone}" in p}
    assert removed == involved
    assert sorted(a for a, _ in added) == sorted(probers) and all(f"n{gone}" not in p
                                                                   for p in added)
    codes = stop_all(f, procs)
    assert set(codes.values()) == {0}, codes
    # what the nodes sent is what they chose: sender summaries name exactly these pairs; a
    # peer that never probes this node back (no name in band) is named by its PTR record
    # (n{i}.mesh.test: the node's own name has no dot, so n{i}), in every sender record
    tx = [r for i in range(1, N + 1) for r in records(f, i) if r["role"] == "sender"]
    assert {r["destination_name"] for r in tx} <= set(by_ip.values())
    sent = {(r["source_name"], r["destination_name"]) for r in tx if r["type"] == "summary"}
    silent = {(a, b) for a, b in sent if (b, a) not in sent}
    assert silent                               # pairs whose receiver never probed back
    # (n7, out of DNS but still running until stopped, may pick another peer itself)
    assert {p for p in sent if p[0] != f"n{gone}"} == {p for p in before | after
                                                       if p[0] != f"n{gone}"}
    received = {(r["source_name"], r["destination_name"]) for i in range(1, N + 1)
                for r in records(f, i) if r["type"] == "summary" and r["role"] == "receiver"}
    assert received == sent                         # who probes a node: its incoming pairs
    print("subset:", json.dumps({"in_degree": in_deg, "probed_by": probed,
                                 "removed": len(removed), "named_by_ptr": len(silent),
                                 "added": len(added), "probers_of_n7": sorted(probers)}))
