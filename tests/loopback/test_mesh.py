"""Names in band and the mesh, end to end: the CLI in subprocesses on loopback addresses,
read back through its JSON-lines output."""

import os
import signal
import socket
import time
import urllib.request
from datetime import datetime

import pytest
from probe import bound, finish, free_port, pf, records, summaries, wait_bound
from servers import free_port as free_tcp_port


def test_a_senders_name_reaches_the_receiver(tmp_path):
    port, rx_out, tx_out = free_port(), tmp_path / "rx.jsonl", tmp_path / "tx.jsonl"
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--duration", 3,
            "--output", f"jsonl:{rx_out}", env={"NODE_NAME": "receiver-b"})
    wait_bound(port)
    tx = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 10,
            "--count", 50, "--key", "s3cret", "--output", f"jsonl:{tx_out}",
            env={"NODE_NAME": "sender-a"})
    finish(tx)
    rx.terminate()
    finish(rx)
    (got,) = summaries(records(rx_out))
    (sent,) = summaries(records(tx_out), "sender")
    assert (got["received"], got["lost"], sent["sent"]) == (50, 0, 50)
    assert (got["source_name"], got["destination_name"]) == ("sender-a", "receiver-b")
    assert (sent["source_name"], sent["destination_name"]) == ("sender-a", "127.0.0.1")
    intervals = [r for r in records(rx_out) if r["type"] == "interval"]
    assert intervals and all(r["source_name"] == "sender-a" for r in intervals)


def _bound(host, port, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if bound(port, host):   # from /proc: a probe bind would race the node's own
            return
        time.sleep(0.02)
    raise AssertionError(f"{host}:{port} not bound")


def _left(path):
    """Pairs of this node's records that ended as `left` so far."""
    if not os.path.exists(path):
        return 0
    return sum(r.get("outcome") == "left" for r in summaries(records(path), "sender"))


def _pairs(recs_by_node, role):
    """{(source_name, destination_name): [summaries]} over every node's records."""
    out = {}
    for recs in recs_by_node:
        for r in summaries(recs, role):
            out.setdefault((r["source_name"], r["destination_name"]), []).append(r)
    return out


@pytest.mark.slow
def test_mesh_of_four_nodes_with_rtt_and_a_node_leaving(tmp_path):
    """Four nodes on 127.a.b.1-4 with one port each, peers from a file: every pair's counts
    exact one way and round trip, both names in every record; then node4 leaves the file
    (the others end their pairs to it as `left`, with no loss), and stops."""
    pid = os.getpid()
    hosts = [f"127.{pid >> 8 & 0x7F}.{pid & 0xFF}.{i}" for i in range(1, 5)]
    port = free_port()
    peers = tmp_path / "peers"
    peers.write_text("# filled once every node is bound\n")
    outs = [tmp_path / f"node{i}.jsonl" for i in range(1, 5)]
    procs = [pf("--mode", "mesh", "--local-addr", f"{h}:{port}", "--peers", f"file:{peers}",
                "--name", f"node{i}", "--rate", 20, "--interval", 0.5, "--rtt", "--key", "k",
                "--output", f"jsonl:{out}", "--output", "console")
             for i, (h, out) in enumerate(zip(hosts, outs, strict=True), 1)]
    try:
        for h in hosts:
            _bound(h, port)
        peers.write_text("".join(f"{h}:{port}\n" for h in hosts))
        time.sleep(2.5)         # the file is re-read within a second, the pairs join at a tick
        peers.write_text("".join(f"{h}:{port}\n" for h in hosts[:3]))
        end = time.monotonic() + 20     # the three have ended their pairs to node4
        while sum(_left(out) for out in outs[:3]) < 3:
            assert time.monotonic() < end, "node4 did not leave"
            time.sleep(0.1)
        time.sleep(0.5)                 # the FINALs reach node4
        procs[3].send_signal(signal.SIGTERM)
        finish(procs[3])
        time.sleep(0.5)
        for p in procs[:3]:
            p.send_signal(signal.SIGTERM)
        consoles = [finish(p)[0] for p in procs[:3]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    recs = [records(out) for out in outs]
    sent, got = _pairs(recs, "sender"), _pairs(recs, "receiver")
    names = [f"node{i}" for i in range(1, 5)]
    assert set(sent) == set(got) == {(a, b) for a in names for b in names if a != b}
    for pair, (tx,) in sent.items():
        (rx,) = got[pair]
        assert rx["session"] == tx["session"]
        assert (rx["received"], rx["lost"], rx["late"], rx["duplicates"]) == \
            (tx["sent"], 0, 0, 0), pair
        assert tx["sent"] > 40 and rx["outcome"] == "final"
        assert tx["outcome"] == ("left" if pair[1] == "node4" else "final"), pair
        if "node4" not in pair:     # round trips among the nodes that stayed: exact too
            assert (tx["reflected"], tx["lost"]) == (tx["sent"], 0), pair
        elif pair[1] == "node4":    # no loss invented for replies a departed peer owes
            # (a mesh node answers when it reads its socket, at most every 50 ms: the replies
            # of the last few probes to node4 were still on their way)
            assert tx["lost"] == 0 and tx["reflected"] >= tx["sent"] - 5, pair
    for node in recs:
        for r in node:
            if r["type"] in ("interval", "summary"):    # receivers name senders in band
                assert r["source_name"] in names and r["destination_name"] in names
            elif r["type"] == "sender":     # by discovery's name until the peer is heard
                assert r["destination_name"] in names + [f"{h}" for h in hosts]
    assert "pair matrix" in consoles[0] and all(len(x) <= 80 for x in consoles[0].split("\n"))
    print(consoles[0][consoles[0].index("pair matrix"):])     # shown with pytest -s


def _metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.mark.slow
def test_mesh_series_of_a_departed_peer_leave_metrics_after_forget_timeout(tmp_path):
    """Three nodes; node a (peers from a file) serves /metrics. b leaves a's file (a ends
    its pair to b as `left`) and stops: a's series of both directions with b stay on /metrics
    until --forget-timeout after their counters last moved, then go; c's stay."""
    pid = os.getpid()
    ha, hb, hc = (f"127.{pid >> 8 & 0x7F}.{pid & 0xFF}.{i}" for i in (11, 12, 13))
    port, web, forget = free_port(), free_tcp_port(), 2.5
    peers = tmp_path / "peers"
    peers.write_text(f"{hb}:{port}\n{hc}:{port}\n")
    common = ("--mode", "mesh", "--rate", 20, "--interval", 0.5, "--stall-timeout", 1,
              "--forget-timeout", forget, "--duration", 30, "--timer", "economy")
    a = pf(*common, "--name", "a", "--local-addr", f"{ha}:{port}", "--peers", f"file:{peers}",
           "--prometheus-listen", f"127.0.0.1:{web}", "--output", f"jsonl:{tmp_path / 'a'}")
    b = pf(*common, "--name", "b", "--local-addr", f"{hb}:{port}", "--peers",
           f"{ha}:{port},{hc}:{port}")
    c = pf(*common, "--name", "c", "--local-addr", f"{hc}:{port}", "--peers",
           f"{ha}:{port},{hb}:{port}")

    def series(text, host):
        """Which of a's two series with `host` are on the page: (a -> host, host -> a)."""
        lines = text.splitlines()
        return (any(s.startswith("packet_flow_sent_packets_total{") and
                    f'destination="{host}:{port}"' in s for s in lines),
                any(s.startswith("packet_flow_received_packets_total{") and
                    f'source="{host}"' in s for s in lines))

    try:
        end = time.monotonic() + 20
        while True:
            assert time.monotonic() < end and a.poll() is None, "no series for b and c"
            try:
                page = _metrics(web)
            except OSError:
                page = ""
            if series(page, hb) == series(page, hc) == (True, True):
                break
            time.sleep(0.1)
        peers.write_text(f"{hc}:{port}\n")          # b leaves a's discovery
        while not _left(tmp_path / "a"):
            assert time.monotonic() < end, "a did not end its pair to b"
            time.sleep(0.05)
        t_left = t_term = time.monotonic()
        b.send_signal(signal.SIGTERM)
        finish(b)
        t_stopped = time.monotonic()
        present, absent = [None, None], [None, None]    # last seen, first gone: (tx, rx)
        while None in absent:
            now = time.monotonic()
            assert now < t_stopped + forget + 6, f"b's series still there: {present}"
            page = _metrics(web)
            for k, there in enumerate(series(page, hb)):
                if there:
                    assert absent[k] is None, "a series came back"
                    present[k] = now
                elif absent[k] is None:
                    absent[k] = now
            assert series(page, hc) == (True, True)
            time.sleep(0.1)
        assert f'"{hb}' not in page                  # nothing left of b at all
        for k, since in enumerate((t_left, t_term)):
            assert present[k] is not None and present[k] >= since + forget - 0.5, (k, present)
            assert absent[k] <= t_stopped + forget + 3, (k, absent)
        for p in (a, c):
            p.send_signal(signal.SIGTERM)
            finish(p)
    finally:
        for p in (a, b, c):
            if p.poll() is None:
                p.kill()
    print("forget:", [round(x - t_left, 2) for x in (*present, *absent)])


@pytest.mark.slow
def test_mesh_stop_signals_while_stopping(tmp_path):
    """SIGTERM; again while the node lingers (its peer still sends to it, so the linger would
    last its whole MESH_LINGER_S); once more while it flushes its outputs (an InfluxDB URL
    whose server never answers holds the flush for SIGNAL_FLUSH_S). The second ends the
    linger at once, the third changes nothing: exit 0, every summary written. (Before: the
    third ended the process, -15, the handlers being gone during the flush.)"""
    p1, p2 = free_port(), free_port()
    peers, out = f"127.0.0.1:{p1},127.0.0.1:{p2}", tmp_path / "a.jsonl"
    common = ("--mode", "mesh", "--peers", peers, "--rate", 20, "--interval", 0.5,
              "--duration", 30, "--timer", "economy")
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(16)                     # connections queue; nothing is ever answered
        a = pf(*common, "--name", "a", "--local-addr", f"127.0.0.1:{p1}", "--output",
               f"jsonl:{out}", "--influx-url", f"http://127.0.0.1:{hang.getsockname()[1]}",
               "--token", "t", "--database", "d", "--log-level", "info")
        b = pf(*common, "--name", "b", "--local-addr", f"127.0.0.1:{p2}")
        try:
            end = time.monotonic() + 20
            while not (out.exists() and '"type":"interval"' in out.read_text()):
                assert a.poll() is None and time.monotonic() < end, "no flow from b"
                time.sleep(0.05)
            a.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            a.send_signal(signal.SIGTERM)   # lingering: b still sends
            while not summaries(records(out), "sender"):
                assert a.poll() is None and time.monotonic() < end, "a's records"
                time.sleep(0.02)
            a.send_signal(signal.SIGTERM)   # its records are out: the outputs are flushing
            _, err = finish(a)
        finally:
            for p in (a, b):
                if p.poll() is None:
                    p.kill()
                    p.wait()
    said = [line for line in err.splitlines() if "SIGTERM" in line or "did not finish" in line]
    assert [line.split(": ", 1)[1] for line in said] == [
        "SIGTERM: stopping", "SIGTERM: already stopping", "SIGTERM: already stopping",
        "outputs did not finish within 1.5 s (a blocked stdout or sink: InfluxSink): 0 "
        "queued records not written, sinks not closed"], said
    recs = records(out)
    (tx,) = summaries(recs, "sender")
    (rx,) = summaries(recs)
    assert (tx["destination_name"], tx["outcome"]) == ("b", "final")
    assert (rx["source_name"], rx["outcome"]) == ("b", "running")   # b never stopped sending
    # the linger ended at the second signal, not MESH_LINGER_S after the first
    stamp = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() for line in said]
    last = datetime.fromisoformat(recs[-1]["time"]).timestamp()
    assert recs[-1]["type"] == "receiver" and last - stamp[1] < 0.4 and \
        last - stamp[0] < 0.9, (stamp, last)


def test_mesh_counts_only_peers_with_its_key(tmp_path):
    """Two nodes with different keys probe each other: neither opens a flow for the other.
    k1 runs first and longest, so it counts every datagram k2 sends as rejected (bad_tag):
    exactly k2's 30; k2, up for part of k1's run, rejects what it got of k1's."""
    pid = os.getpid()
    hosts = [f"127.{pid >> 8 & 0x7F}.{pid & 0xFF}.{i}" for i in (5, 6)]
    port = free_port()
    peers = tmp_path / "peers"
    peers.write_text("".join(f"{h}:{port}\n" for h in hosts))
    outs = [tmp_path / f"k{i}.jsonl" for i in (1, 2)]

    def node(i, count):
        return pf("--mode", "mesh", "--local-addr", f"{hosts[i - 1]}:{port}", "--peers",
                  f"file:{peers}", "--name", f"k{i}", "--key", f"key-{i}", "--rate", 10,
                  "--count", count, "--interval", 0.5, "--output", f"jsonl:{outs[i - 1]}")

    procs = [node(1, 300)]
    try:
        _bound(hosts[0], port)
        procs.append(node(2, 30))
        for p in procs:
            finish(p, timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    recs = [records(out) for out in outs]
    for me, other in ((0, 1), (1, 0)):
        (sent,) = summaries(recs[other], "sender")
        assert sent["destination"] == f"{hosts[me]}:{port}"
        assert not [r for r in recs[me] if r["type"] in ("interval", "summary")
                    and r["role"] == "receiver"]            # no flow from the other
        rejected = [x for r in recs[me] if r["type"] == "receiver"
                    for x in r.get("rejected", [])]
        assert {(x["source"], x["reason"]) for x in rejected} == \
            {(f"{hosts[other]}:{port}", "bad_tag")}
        count = sum(x["count"] for x in rejected)
        if me == 0:
            assert sent["sent"] == 30 and count == 30
        else:
            assert 0 < count < sent["sent"] == 300
