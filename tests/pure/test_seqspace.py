"""packet_flow.seqspace on synthetic arrays: unwrapping, the highest value before each
packet, the in-order test and the wrapping u32 counter difference."""

import numpy as np

from packet_flow.seqspace import JUMP_MAX, counter_delta, highest_before, in_order, unwrap


def test_unwrap_32_bit_wrap_is_the_next_number():
    seq = np.array([0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 0xFFFFFFFD], np.uint64)
    assert unwrap(seq, 0xFFFFFFFF, 32).tolist() == [-1, 0, 1, 2, -2]
    # the nearest reading: half the space ahead, half behind
    assert unwrap(np.array([1 << 31, (1 << 31) + 1], np.uint64), 0, 32).tolist() == [
        -(1 << 31), -(1 << 31) + 1]
    # only the low bits count, in the sequences and in the reference
    assert unwrap(np.array([(7 << 32) | 5], np.uint64), (3 << 32) | 2, 32).tolist() == [3]


def test_unwrap_64_bit_is_clipped():
    seq = np.array([5, 2**64 - 1, 2**63, 2**62 + 10], np.uint64)
    assert unwrap(seq, 0, 64).tolist() == [5, -1, -JUMP_MAX, JUMP_MAX]
    assert unwrap(np.array([3], np.uint64), 2**64 - 2, 64).tolist() == [5]


def test_highest_before_each_packet():
    x = np.array([5, 3, 9, 7, 10], np.int64)
    assert highest_before(x, 4).tolist() == [4, 5, 5, 9, 9]
    assert highest_before(x, 20).tolist() == [20] * 5
    assert highest_before(np.zeros(0, np.int64), 1).tolist() == []


def test_in_order():
    assert in_order(np.array([3]), 2)
    assert in_order(np.array([3, 4, 8]), -1)
    assert not in_order(np.array([3, 4, 8]), 3)       # the first is not new
    assert not in_order(np.array([3, 5, 5]), 0)       # a repeat
    assert not in_order(np.array([3, 5, 4]), 0)       # a late one


def test_counter_delta_wraps_at_32_bits():
    d = np.array([10, 12, 12, 0xFFFFFFFF, 3], np.uint32)
    assert counter_delta(d, None).tolist() == [0, 2, 0, 0xFFFFFFFF - 12, 4]
    assert counter_delta(d, 7).tolist() == [3, 2, 0, 0xFFFFFFFF - 12, 4]
    assert counter_delta(np.array([1], np.uint32), 0xFFFFFFFE).tolist() == [3]
