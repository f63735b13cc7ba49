"""The STAMP Error Estimate (RFC 4656 §4.1.2, used by RFC 8762) of this host's clock: the one
place that asks the kernel about CLOCK_REALTIME, and the pure encoding of the field.

Rules:
- The field is `S | Z=0 | scale (6 bits) | multiplier (8 bits)`, worth multiplier *
  2^(scale-32) s; an error is rounded up to the smallest such value not below it.
- What it says is what the kernel says about CLOCK_REALTIME (adjtimex, read-only, the only
  clock reading here): S is set only when the kernel reports the clock synchronised (state not
  TIME_ERROR and STA_UNSYNC clear); the error is the kernel's `maxerror` bound (16 s on an
  unsynchronised clock). A kernel that cannot be asked gives S=0 and 16 s.
"""

import ctypes
import math

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h) up to `status`; the rest is room for the kernel to fill
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("_rest", ctypes.c_char * 256)]


def encode(error_s: float, synchronised: bool) -> int:
    """The 16-bit Error Estimate `S | Z=0 | scale (6 bits) | multiplier (8 bits)` whose value
    multiplier * 2^(scale-32) s is the smallest such value not below error_s."""
    units = max(1, math.ceil(error_s * 2**32))
    scale = 0
    while units > 255 and scale < 63:
        units = -(-units // 2)
        scale += 1
    return (0x8000 if synchronised else 0) | scale << 8 | min(units, 255)


def decode(value: int) -> tuple[float, bool]:
    """(error in seconds, S bit) of a 16-bit Error Estimate."""
    return (value & 0xFF) * 2.0 ** (((value >> 8) & 0x3F) - 32), bool(value & 0x8000)


def estimate() -> int:
    """The Error Estimate of this host's clock now (see the module rules). A kernel that
    cannot be asked gives S=0 with the unsynchronised bound of 16 s."""
    tx = _Timex()
    try:
        state = ctypes.CDLL(None, use_errno=True).adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        state = -1
    if state < 0:
        return encode(16.0, False)
    synced = state != TIME_ERROR and not tx.status & STA_UNSYNC
    return encode(tx.maxerror / 1e6, synced)
