"""Hostile traffic at a receiver or a reflector.

1. Pure: FlowTable's memory budget (untracked new flows, the oldest idle flow evicted first,
   windows frozen while the budget is spent), on synthetic ring records.
2. A real receiver process takes 20,000 spoofed sessions (sequence 0 then 65,536, or random
   64-bit sequence jumps both ways) while a real sender runs beside the flood: the receiver's
   peak RSS (VmHWM) stays under 256 MiB, every datagram is accounted (flows or `untracked`),
   and the real flow's numbers stay exact.
3. A reflector on loopback gets every request size of every wire (native, legacy, STAMP; with
   and without a key): it answers exactly what the reference codec says it may, each reply
   exactly as long as its request (largest reply/request = 1), and counts the short native
   probes it refuses; its per-source rate limit refuses, and counts, exactly what exceeds it.
"""

import logging
import signal
import socket
import threading
import time

import numpy as np
import pytest
from probe import (  # noqa: E402
    finish,
    free_port,
    pf,
    records,
    summaries,
    udp_queue,  # noqa: E402
    wait_bound,
    wait_caught,
)

from packet_flow import _io, config, defaults, wire  # noqa: E402
from packet_flow.errors import ConfigError, WireError  # noqa: E402
from packet_flow.flows import FlowTable  # noqa: E402
from packet_flow.reflector import ReflectorLoop  # noqa: E402

S = 1_000_000_000
FLOOD_SESSIONS = 20_000
REAL_MIN = 2000             # packets of the real flow before the flood (1 s at 0.5 ms)


# ---------------------------------------------------------------- 1. pure: the budget


def _recs(fid, seqs, port=4000):
    r = np.zeros(len(seqs), _io.RECORD)
    r["kind"] = _io.K_NATIVE
    r["flow"] = r["session"] = fid
    r["seq"] = seqs
    r["tx_ns"] = 1_000
    r["rx_ns"] = 5_000
    r["addr"][:, 10:] = (0xFF, 0xFF, 127, 0, 0, 1)
    r["port"] = port
    r["family"] = 4
    return r


def test_budget_untracks_new_flows_then_evicts_the_oldest_idle(caplog):
    out = []
    table = FlowTable("127.0.0.1:9", out.append, stall_s=5, forget_s=60, window=1 << 17)
    for fid in (1, 2, 3):
        table.ingest(_recs(fid, [0]), 0)
    # three flows fit, not a fourth; room for one forgotten record
    table.budget = table.memory + defaults.FORGOTTEN_BYTES + 1000
    table.ingest(_recs(4, [0, 1]), 1 * S)               # nobody idle: untracked
    assert (table.untracked, table.evicted, len(table.flows)) == (2, 0, 3)
    table.ingest(_recs(1, [1]), 2 * S)                  # flow 1 active again
    table.ingest(_recs(5, [0, 1, 2]), int(6.5 * S))     # 2 and 3 idle: 2 is the oldest
    assert (table.untracked, table.evicted) == (2, 1)
    assert sorted(table.flows) == [1, 3, 5]
    assert table.memory <= table.budget
    # evicted = forgotten early: a compact record it would resume from; summary at the end
    assert list(table.forgotten) == [2] and not [r for r in out if r["type"] == "summary"]
    with caplog.at_level(logging.WARNING, logger="packet_flow.flows"):
        table.tick(7 * S)
    assert "1 idle flows evicted, 2 packets of new flows untracked" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="packet_flow.flows"):
        table.tick(8 * S)
    assert "evicted" not in caplog.text                # one warning per episode
    table.finish(9 * S)
    (gone,) = [r for r in out if r["type"] == "summary" and r["session"] == f"{2:016x}"]
    assert gone["received"] == 1 and gone["outcome"] == "unknown"


def test_forgotten_records_count_and_go_oldest_first():
    out = []
    table = FlowTable("127.0.0.1:9", out.append, stall_s=5, forget_s=60, window=1 << 17)
    for fid in (1, 2, 3):
        table.ingest(_recs(fid, [0]), fid * S)
    table.tick(100 * S)                                 # all three forgotten
    assert list(table.forgotten) == [1, 2, 3] and not table.flows
    assert table.memory == 3 * defaults.FORGOTTEN_BYTES
    new_flow = defaults.FLOW_BYTES + 8 * defaults.SEQ_WINDOW_INITIAL
    table.budget = table.memory + new_flow - 1          # a new flow needs one record's room
    table.ingest(_recs(4, [0]), 101 * S)
    assert list(table.forgotten) == [2, 3] and list(table.flows) == [4]
    (gone,) = [r for r in out if r["type"] == "summary"]
    assert gone["session"] == f"{1:016x}" and gone["outcome"] == "unknown"
    assert table.memory <= table.budget and table.untracked == 0


def test_budget_spent_freezes_window_growth():
    table = FlowTable("127.0.0.1:9", lambda r: None, stall_s=5, forget_s=60, window=1 << 17)
    table.ingest(_recs(1, [0]), 0)
    table.budget = table.memory                         # spent
    before = table.flows[1].stats.nbytes
    table.ingest(_recs(1, np.arange(1, 5001)), S)       # a batch that would grow the ring
    assert table.flows[1].stats.nbytes - before <= 2 * 5000 * 8   # interval delays only
    table.tick(2 * S)                                   # ... which the tick releases
    assert table.flows[1].stats.nbytes <= before
    assert table.memory == sum(f.nbytes for f in table.flows.values())


def test_max_flows_cap_uses_the_same_eviction(monkeypatch):
    monkeypatch.setattr(defaults, "MAX_FLOWS", 2)
    table = FlowTable("127.0.0.1:9", lambda r: None, stall_s=5, forget_s=60, window=1 << 17)
    table.ingest(_recs(1, [0]), 0)
    table.ingest(_recs(2, [0]), S)
    table.ingest(_recs(3, [0]), 2 * S)
    assert (table.untracked, table.evicted) == (1, 0)
    table.ingest(_recs(3, [1]), 6 * S)                  # flow 1 idle for 6 s: evicted
    assert (table.untracked, table.evicted, sorted(table.flows)) == (1, 1, [2, 3])


# ---------------------------------------------------------------- 2. a real receiver


def _status(pid, field):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _flood(pattern, port, rx_pid):
    """Every spoofed session's datagrams; paced on the receiver's queue so nothing drops."""
    rng = np.random.default_rng(15)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    try:
        sessions = rng.integers(1, 2**63, FLOOD_SESSIONS, dtype=np.uint64).tolist()
        for a in range(0, FLOOD_SESSIONS, 1000):
            for session in sessions[a:a + 1000]:
                if pattern == "jump":
                    seqs = (0, 65536)
                else:
                    seqs = rng.integers(0, 2**64, 3, dtype=np.uint64).tolist()
                for seq in seqs:
                    tx.sendto(wire.encode_native(session, seq, time.time_ns()),
                              ("127.0.0.1", port))
                    sent += 1
            while udp_queue(rx_pid, port)[0] > 16 << 20:
                time.sleep(0.005)
    finally:
        tx.close()
    return sent


@pytest.mark.parametrize("pattern,budget_mib", [("jump", None), ("random", 64)])
def test_spoofed_session_flood_keeps_receiver_memory_bounded(tmp_path, pattern, budget_mib):
    port, out, tx_out = free_port(), tmp_path / "rx.jsonl", tmp_path / "tx.jsonl"
    extra = ("--max-flow-memory", budget_mib) if budget_mib else ()
    # no flood flow goes idle (stalls) within the run, however long the load makes the
    # flood: none is evicted, each is kept or untracked
    rx = pf("--mode", "receiver", "--local-addr", f"127.0.0.1:{port}", "--interval", 3600,
            "--duration", 60, "--stall-timeout", 58, "--rcvbuf", 64 << 20,
            "--output", f"jsonl:{out}", *extra)
    real = None
    try:
        wait_bound(port)
        # the real flow runs until the flood has ended (however long the load makes it),
        # then stops on SIGTERM: its own summary says how many it sent
        real = pf("--mode", "sender", "--remote-addr", f"127.0.0.1:{port}", "--rate", 0.5,
                  "--duration", 50, "--output", f"jsonl:{tx_out}")
        wait_caught(real, signal.SIGTERM)
        time.sleep(1.0)                                  # the real flow exists first
        per = 2 if pattern == "jump" else 3
        sent = _flood(pattern, port, rx.pid)
        assert sent == FLOOD_SESSIONS * per
        assert real.poll() is None, "the real flow ended before the flood: nothing ran beside it"
        real.send_signal(signal.SIGTERM)
        finish(real)
        end = time.monotonic() + 20
        while udp_queue(rx.pid, port)[0] and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)
        rx.send_signal(signal.SIGTERM)
        peak = 0
        while rx.poll() is None:                         # the peak up to the very end
            peak = max(peak, _status(rx.pid, "VmHWM") or 0)
            time.sleep(0.01)
        finish(rx)
    finally:
        for proc in (rx, real):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    recs = records(out)
    (totals,) = [r for r in recs if r["type"] == "receiver"]
    flows = summaries(recs)
    (real_sent,) = [r["sent"] for r in summaries(records(tx_out), "sender")]
    assert real_sent > REAL_MIN
    mine = [f for f in flows if f["received"] == real_sent]
    assert len(mine) == 1
    f = mine[0]
    assert (f["lost"], f["late"], f["duplicates"], f["closed"]) == (0, 0, 0, True)
    flood = [f for f in flows if f is not mine[0]]
    assert totals["kernel_drops"] == 0 and totals["datagrams"] == sent + real_sent
    # every spoofed session is either a flow or untracked, all its datagrams with it
    assert len(flood) + totals["untracked"] // per == FLOOD_SESSIONS
    assert totals["untracked"] % per == 0 and totals["evicted"] == 0
    if pattern == "jump":
        assert len(flood) == defaults.MAX_FLOWS - 1      # the count cap, not memory
        assert all((g["received"], g["lost"]) == (2, 65535) for g in flood)
    else:
        assert 0 < len(flood) * (defaults.FLOW_BYTES + 8 * defaults.SEQ_WINDOW_INITIAL) \
            <= budget_mib << 20
        assert all(g["received"] + g["late"] + g["duplicates"] == per for g in flood)
    print(f"{pattern} flood: {sent} datagrams, {len(flood)} flows kept, "
          f"{totals['untracked']} untracked, receiver VmHWM {peak // 1024} MiB")
    assert 0 < peak <= 256 * 1024


# ---------------------------------------------------------------- 3. the reflector


KEY = b"reflector-key"
BIG = (1400, 9000, 65507)


def _requests(wire_name, key):
    """Every request size 0..300 (and a few big ones) of the wire, valid where it can be,
    plus legacy packets and already-reflected packets for the native reflector."""
    out = []
    for i, size in enumerate([*range(301), *BIG]):
        if wire_name == "stamp":
            pkt = wire.encode_stamp(i, time.time_ns(), 7, size=size)
        else:
            pkt = wire.encode_native(0xABCD, i, time.time_ns(), size=size, key=key)
        out.append(pkt[:size])          # below the smallest valid packet: its first bytes
    if wire_name == "native":
        out += [wire.encode_legacy(5, 6), wire.encode_native(1, 2, 3, size=100, key=key,
                                                             reflect=(1, 2, 3))]
    return out


def _run_reflector(args, body):
    recs = []
    cfg = config.load(["--log-level", "warning", "--output", "jsonl:/dev/null", "-m",
                       "reflector", "--local-addr", "127.0.0.1:0", "--interval", "60",
                       *map(str, args)])
    refl = ReflectorLoop(cfg, recs.append)
    thread = threading.Thread(target=refl.run, args=(_io.mono_ns() + 30 * S,))
    thread.start()
    try:
        body(("127.0.0.1", refl.sock.getsockname()[1]))
    finally:
        time.sleep(0.2)
        refl.stop()
        thread.join()
        refl.close()
    (totals,) = [r for r in recs if r["type"] == "receiver"]
    return refl, totals


def _collect(sock, timeout=1.0):
    out = []
    sock.settimeout(timeout)
    while True:
        try:
            out.append(sock.recv(70000))
        except TimeoutError:
            return out


@pytest.mark.parametrize("wire_name,key", [("native", None), ("native", KEY), ("stamp", None)],
                         ids=["native", "native-key", "stamp"])
def test_reflector_never_answers_with_more_bytes_than_it_received(wire_name, key):
    requests = _requests(wire_name, key)
    stamp = "sender" if wire_name == "stamp" else None
    answerable, short_probes = [], 0
    for data in requests:
        try:
            p = wire.decode(data, key=key, stamp=stamp, reflector=True)
        except WireError as e:
            short_probes += str(e) == "short_probe"
            continue
        if p.wire == "stamp" or p.wire == "native" and not p.flags & wire.FLAG_REFLECTED:
            answerable.append(data)
    got = []

    def body(addr):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            for data in requests:
                c.sendto(data, addr)
                time.sleep(0.0002)
            got.extend(_collect(c))

    args = ["--wire", wire_name] + (["--key", KEY.decode()] if key else [])
    refl, totals = _run_reflector(args, body)
    assert len(got) == len(answerable) == refl.reflected == totals["reflected"]
    assert [len(r) for r in got] == [len(d) for d in answerable]      # in order, same size
    ratio = max(len(r) / len(d) for r, d in zip(got, answerable, strict=True))
    assert ratio == 1.0 and sum(map(len, got)) <= sum(map(len, requests))
    least = wire.STAMP_SIZE if stamp else wire.REFLECTED_HEADER + (wire.TAG if key else 0)
    assert min(map(len, answerable)) == least
    assert totals["malformed"]["short_probe"] == short_probes
    assert short_probes == (0 if stamp else least - wire.HEADER - (wire.TAG if key else 0))
    assert totals["datagrams"] == len(requests) and totals["reflect_limited"] == 0
    print(f"{wire_name}{'+key' if key else ''}: {len(requests)} requests "
          f"({sum(map(len, requests))} B), {len(got)} replies ({sum(map(len, got))} B), "
          f"largest reply/request {ratio}")


def test_reflector_rate_limit_per_source_address_counted_exactly():
    got = {"a": 0, "b": 0}

    def body(addr):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.2", 0))                      # another source address
        try:
            for i in range(500):                      # one burst, well inside one second
                a.sendto(wire.encode_native(1, i, time.time_ns(), size=56), addr)
            for i in range(50):
                b.sendto(wire.encode_native(2, i, time.time_ns(), size=56), addr)
            got["a"] += len(_collect(a, 0.5))
            got["b"] += len(_collect(b, 0.2))
            time.sleep(0.6)                           # a's window is over
            for i in range(500, 510):
                a.sendto(wire.encode_native(1, i, time.time_ns(), size=56), addr)
            got["a"] += len(_collect(a, 0.5))
        finally:
            a.close()
            b.close()

    refl, totals = _run_reflector(["--reflect-max-pps", 100], body)
    assert got == {"a": 110, "b": 50}
    assert refl.reflected == totals["reflected"] == 160
    assert refl.rx.limited == totals["reflect_limited"] == 400
    assert totals["datagrams"] == 560


def test_reflect_authenticated_needs_a_key_and_the_native_wire():
    for args in ([], ["--wire", "stamp", "--key", "k"]):
        with pytest.raises(ConfigError, match="reflect-authenticated"):
            config.load(["-m", "reflector", "--reflect-authenticated", *args])
    cfg = config.load(["-m", "reflector", "--reflect-authenticated", "--key", "k"])
    assert cfg.reflect_authenticated and cfg.key == b"k"
    assert config.load(["-m", "reflector"]).reflect_max_pps == defaults.REFLECT_MAX_PPS


def test_reflector_buffers_must_hold_a_reflected_packet():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(ValueError, match="bufsize"):
            _io.Reflector(s.fileno(), bufsize=_io.REFLECTED_HEADER + _io.TAG - 1)
        _io.Reflector(s.fileno(), bufsize=_io.REFLECTED_HEADER + _io.TAG, capacity=16)
