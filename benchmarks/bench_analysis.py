#!/usr/bin/env python3
"""The flow analysis alone: CPU per batch of FlowTable.ingest on synthetic ring records (no
sockets, best of three), for one flow in order (the fast lane), one flow received with UDP
GRO (every packet but each 64th coalesced: the general path) and many flows of one packet
each (a mesh node's batches). Prints a table; not a test.

    python benchmarks/bench_analysis.py
"""

import time

import numpy as np

from packet_flow import _io, defaults
from packet_flow.flows import FlowTable


def batch(n, start, flow, gro):
    r = np.zeros(n, _io.RECORD)
    r["kind"] = _io.K_NATIVE
    r["seq"] = np.arange(start, start + n)
    r["session"] = r["flow"] = flow
    r["tx_ns"] = np.arange(start, start + n) * 1000
    r["rx_ns"] = r["tx_ns"] + 5000
    r["family"] = 4
    r["port"] = 1000 + flow
    if gro:
        r["coalesced"] = 1
        r["coalesced"][63::64] = 0
    return r


def run(size, batches, flows, gro):
    """µs per ingest() of `batches` batches of `size` packets of each of `flows` flows."""
    table = FlowTable("bench", lambda rec: None, 5, 60, defaults.SEQ_WINDOW)
    pre = [np.concatenate([batch(size, b * size, f + 1, gro) for f in range(flows)])
           for b in range(batches)]
    for r in pre[:20]:          # the flows open and their rings settle
        table.ingest(r, 10**9)
    t0 = time.perf_counter()
    for r in pre[20:]:
        table.ingest(r, 10**9)
    return (time.perf_counter() - t0) / (batches - 20) * 1e6


def main():
    print(f"{'batch':<44}{'µs/batch':>10}{'ns/packet':>11}")
    for name, size, batches, flows, gro in (
            ("64 packets of one flow, in order", 64, 3000, 1, False),
            ("1024 packets of one flow, in order", 1024, 500, 1, False),
            ("64 packets of one flow, UDP GRO", 64, 3000, 1, True),
            ("1024 packets of one flow, UDP GRO", 1024, 500, 1, True),
            ("one packet of each of 100 flows", 1, 1000, 100, False),
            ("ten packets of each of 1000 flows", 10, 120, 1000, False)):
        us = min(run(size, batches, flows, gro) for _ in range(3))
        print(f"{name:<44}{us:>10.1f}{us * 1000 / (size * flows):>11.1f}")


if __name__ == "__main__":
    main()
