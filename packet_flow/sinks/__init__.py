"""Metric sinks. Every sink has the same small interface, called from the probe's loop:

- ``record(rec: dict)``: one contract record (README.md (JSON-lines records)); never blocks, never raises.
  Its ``time`` is integer ns since the epoch; each sink formats it at its edge (JSON lines:
  RFC 3339 text, console: HH:MM:SS, InfluxDB: the ns timestamp as is).
- ``packets(source, destination, rx_ns, owd_ns)`` and ``gaps(source, destination, rx_ns, lost)``:
  per-packet arrays for sinks that want them (the InfluxDB compat measurements); others ignore.
- ``close(timeout) -> dict``: flush within ``timeout`` seconds and return the sink's counters.
- ``counters``: a dict of the sink's counters (the InfluxDB sink: written, retried, spooled,
  dropped, ...).

Sinks are imported by name (``packet_flow.sinks.influx.InfluxSink``) so that a run without
InfluxDB never imports influxdb-client.
"""
