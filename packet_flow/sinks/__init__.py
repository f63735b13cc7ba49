"""Metric sinks and the one contract they share (Sink). Fanout (fanout.py) feeds them and
reads only what the contract declares: capabilities are class attributes every sink sets,
never guessed with getattr, hasattr or isinstance.

- ``record(rec: dict)``: one contract record (docs: JSON-lines records); never blocks, never
  raises. Its ``time`` is integer ns since the epoch; each sink formats it at its edge (JSON
  lines: RFC 3339 text, console: HH:MM:SS, InfluxDB: the ns timestamp as is).
- ``packets(source, destination, rx_ns, owd_ns)``, ``gaps(source, destination, rx_ns, lost)``,
  ``rtts(source, destination, rtt_ns)``: per-batch arrays, called from the probe's threads,
  only on sinks whose ``wants_packets``, ``wants_gaps``, ``wants_rtts`` is True; they copy
  what they keep and never block.
- ``idle()``: called on sinks whose ``wants_idle`` is True each time the output queue runs
  empty (after a tick's records, whatever order they came in).
- ``close(timeout, counters=None) -> dict``: flush within ``timeout`` seconds and return the
  sink's counters. Sinks with ``closes_last`` are closed after every other one and get their
  counters ({sink name: counters}) to show in a summary.
- ``counters``: the sink's counters now (the InfluxDB sink: written, retried, spooled, ...).
- ``on_failure``: set by Fanout; a sink that cannot go on (its writer keeps failing the same
  way) calls it once with its error, and the run ends with that error (exit 1).

Sinks are imported by name (``packet_flow.sinks.influx.InfluxSink``) so that a run without
InfluxDB never imports influxdb-client.
"""

from collections.abc import Callable
from typing import Protocol


class Sink(Protocol):
    """What every sink declares and implements (see the module rules)."""

    wants_packets: bool   # per-packet one-way delays of each receive batch
    wants_gaps: bool      # each sequence gap as it opens
    wants_rtts: bool      # round-trip times of each batch of replies (--rtt)
    wants_idle: bool      # idle() whenever the records queued so far are all handed over
    closes_last: bool     # closed after the others, handed their counters
    on_failure: Callable[[BaseException], None] | None

    def record(self, rec: dict) -> None: ...

    def close(self, timeout: float, counters: dict | None = None) -> dict: ...

    @property
    def counters(self) -> dict: ...
