"""packet-flow: UDP loss, latency and jitter probe.

From a script (docs/api.md):

    import packet_flow
    result = packet_flow.probe(mode="both", local_addr="127.0.0.1:9000",
                               remote_addr="127.0.0.1:9000", rate=1, count=1000, max_loss=0)
    result.flows[0]["lost"], result.passed

`probe()` runs a probe to its end; `Probe` runs one in the background until stop();
`search()` finds the highest lossless rate to a packet-flow receiver (docs/search.md). The
API is imported on first use, so `import packet_flow` stays cheap for the command line.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["ConfigError", "PacketFlowError", "Probe", "Result", "SearchError", "SearchResult",
           "Verdict", "__version__", "probe", "search"]

if TYPE_CHECKING:
    from packet_flow.api import Probe, Result, probe
    from packet_flow.errors import ConfigError, PacketFlowError, SearchError
    from packet_flow.rate_search import SearchResult, search
    from packet_flow.verdict import Verdict

_LAZY = {"probe": "packet_flow.api", "Probe": "packet_flow.api", "Result": "packet_flow.api",
         "Verdict": "packet_flow.verdict", "ConfigError": "packet_flow.errors",
         "PacketFlowError": "packet_flow.errors", "SearchError": "packet_flow.errors",
         "search": "packet_flow.rate_search", "SearchResult": "packet_flow.rate_search"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'packet_flow' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
