"""Sequence-space arithmetic: pure functions on numpy arrays, no state, no sockets, no clocks.

Rules:
- Only the low ``bits`` bits of a sequence number are meaningful (32 for STAMP, 64 otherwise).
  ``unwrap`` reads each one as the signed distance from a reference in that modular space, so a
  wrap is just the next number; a distance is clipped to +-JUMP_MAX (2**62), which keeps
  64-bit sequences from overflowing int64.
- ``highest_before`` is the highest value seen before each element of a batch (a prefix maximum
  started at the highest of the earlier batches): the reference for gaps (``s > h + 1``) and for
  late packets (``s <= h``). The same prefix maximum serves send times (the latest send time
  before each packet).
- ``in_order`` is the common case's test: every element above the previous highest and above
  the element before it (the whole batch new, in order).
- ``counter_delta`` differences a kernel u32 counter (SO_RXQ_OVFL socket drops) that wraps.
"""

import numpy as np

JUMP_MAX = 1 << 62


def unwrap(seq: np.ndarray, ref: int, bits: int) -> np.ndarray:
    """Signed int64 distances of uint64 sequences `seq` from `ref`, modulo 2**bits (the
    nearest reading: within +-2**(bits-1)), clipped to +-JUMP_MAX."""
    delta = np.asarray(seq, np.uint64) - np.uint64(ref & ((1 << bits) - 1))  # wraps mod 2**64
    if bits == 64:
        signed = delta.view(np.int64)
    else:
        signed = (delta & np.uint64((1 << bits) - 1)).astype(np.int64)
        signed[signed >= 1 << (bits - 1)] -= 1 << bits
    return np.clip(signed, -JUMP_MAX, JUMP_MAX)


def highest_before(x: np.ndarray, start: int) -> np.ndarray:
    """For each element, the highest of `start` and the elements before it."""
    out = np.empty_like(x)
    if x.size:
        out[0] = start
        np.maximum(np.maximum.accumulate(x[:-1]), start, out=out[1:])
    return out


def in_order(x: np.ndarray, start: int) -> bool:
    """Whether every element is above `start` and above the one before it."""
    return bool(x[0] > start) and (x.size == 1 or bool((x[1:] > x[:-1]).all()))


def counter_delta(counts: np.ndarray, prev: int | None) -> np.ndarray:
    """How much a wrapping u32 counter grew before each reading: from `prev` (the reading
    before the batch; None: the first reading starts it) and then from reading to reading."""
    d = np.asarray(counts, np.int64)
    before = np.empty_like(d)
    before[0] = d[0] if prev is None else prev
    before[1:] = d[:-1]
    return (d - before) & 0xFFFFFFFF
