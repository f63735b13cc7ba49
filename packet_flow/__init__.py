"""packet-flow: UDP loss, latency and jitter probe."""

__version__ = "0.1.0"
