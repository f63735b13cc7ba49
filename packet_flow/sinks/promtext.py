"""The Prometheus text exposition (0.0.4) of families given as plain data, by
prometheus_client. It runs in the Prometheus output's rendering process (spawned, so this
module imports only what rendering needs).

Rules:
- A family is (kind, name, help, label names, samples), kind "counter", "gauge" or
  "histogram"; counter and gauge samples are (label values, value), histogram samples (label
  values, cumulative bucket counts, sum in seconds), the buckets' bounds those of
  promstore.HISTOGRAM_BOUNDS_NS, then +Inf.
- Plain data in, bytes out: nothing is kept between pages.
"""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from packet_flow.sinks.promstore import HISTOGRAM_BOUNDS_NS

_LE = [floatToGoString(b / 1e9) for b in HISTOGRAM_BOUNDS_NS.tolist()] + ["+Inf"]
_KINDS = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
          "histogram": HistogramMetricFamily}


class _Families:
    """A prometheus_client collector of families given as plain data."""

    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        for kind, name, text, labels, samples in self.fams:
            fam = _KINDS[kind](name, text, labels=labels)
            for sample in samples:
                if kind == "histogram":
                    key, cum, total = sample
                    fam.add_metric(key, list(zip(_LE, cum, strict=True)), total)
                else:
                    fam.add_metric(*sample)
            yield fam


def render_page(fams):
    """The text exposition (0.0.4) of families given as plain data (see the module rules)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(fams))
    return generate_latest(registry)
