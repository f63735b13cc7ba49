"""The RFC 3550 jitter estimator over batches against a per-packet reference, for batch
sizes around the estimator's tail (a batch of exactly tail + 1 arrivals after an earlier one
once made the weights and the |D| values differ in length)."""

import numpy as np
import pytest

from packet_flow.delays import _JITTER_TAIL, DelayStats
from packet_flow.results import Tallies


def _reference(owd):
    j, prev = 0.0, None
    for d in owd:
        if prev is not None:
            j += (abs(int(d) - prev) - j) / 16
        prev = int(d)
    return j


@pytest.mark.parametrize("sizes", [
    (1, _JITTER_TAIL + 1), (5, _JITTER_TAIL), (5, _JITTER_TAIL + 1), (5, _JITTER_TAIL + 2),
    (_JITTER_TAIL + 1,), (_JITTER_TAIL + 1, _JITTER_TAIL + 1), (3, 1, 7000)])
def test_jitter_matches_reference_across_batch_sizes(sizes):
    rng = np.random.default_rng(7)
    owd = rng.integers(10_000, 90_000, sum(sizes)).astype(np.int64)
    stats = DelayStats(Tallies())
    at = 0
    for n in sizes:
        stats.add(owd[at:at + n])
        at += n
    assert stats.jitter == pytest.approx(_reference(owd), rel=1e-9)
