"""InfluxDB line protocol: pure formatting, no I/O.

Rules:
- One measurement per record type (MEASUREMENTS); tags are the record's source,
  destination, their names (source_name, destination_name: packet_flow/names.py), session
  and the probe's host (and role for summaries), sorted by key as
  InfluxDB prefers; fields are the record's numeric and boolean values.
- Fields named like durations, percentages and ratios (FLOAT_SUFFIXES) are always floats,
  so a field's type never flips between points (InfluxDB refuses such a point).
- The record's `time` is integer ns since the epoch; it is written as is (precision ns).
- The loss-burst histogram (`loss_burst_hist`, {length: count}) of an interval or summary
  becomes one point per burst length with a count, in MEASUREMENT_loss_burst (tags as the
  record's plus `length`, field `count`), at the record's time.
- Per-packet compat points are formatted for whole arrays at once (format_int_points).
"""

import math
import numbers
import time

import numpy as np

MEASUREMENTS = {
    "interval": "packet_flow",
    "sender": "packet_flow_sender",
    "summary": "packet_flow_summary",
    "receiver": "packet_flow_receiver",
}
TAG_KEYS = ("destination", "destination_name", "host", "role", "session", "source",
            "source_name")  # sorted: what InfluxDB prefers
BURST_TAG_KEYS = tuple(sorted((*TAG_KEYS, "length")))
NOT_FIELDS = frozenset(("type", "time", "role", "source", "destination", "session"))
FLOAT_SUFFIXES = ("_us", "_s", "_percent", "_ratio")  # always floats, so field types never flip

_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " "})


def escape(value) -> str:
    """Escape a measurement, tag key, tag value or field key for line protocol."""
    return str(value).translate(_ESCAPE)


def _field(name: str, value) -> str | None:
    """One `key=value` field, or None for values line protocol should not carry."""
    if isinstance(value, bool | np.bool_):
        return f"{escape(name)}={'true' if value else 'false'}"
    if isinstance(value, numbers.Integral):
        if name.endswith(FLOAT_SUFFIXES):
            return f"{escape(name)}={float(value)!r}"
        return f"{escape(name)}={int(value)}i"
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return f"{escape(name)}={float(value)!r}"
    return None  # None, NaN, strings, dicts (loss_burst_hist), lists


def _tagset(tags: dict, keys) -> str:
    return "".join(f",{k}={escape(tags[k])}" for k in keys if tags.get(k) not in (None, ""))


def format_record(rec: dict, host: str, now_ns: int | None = None) -> bytes | None:
    """One contract record -> line protocol (bytes, each line ending in \\n), or None.

    Measurement from MEASUREMENTS by `type`; tags source, destination, session, host (and
    role for summaries); fields are the record's numeric and boolean values; the timestamp
    is the record's integer ns `time` (now when absent). A loss-burst histogram adds one line
    per burst length (see the module rules).
    """
    measurement = MEASUREMENTS.get(rec.get("type"))
    if measurement is None:
        return None
    tags = dict(rec)
    tags["host"] = host
    if rec.get("type") != "summary":
        tags.pop("role", None)
    tagset = _tagset(tags, TAG_KEYS)
    fields = [f for k, v in rec.items() if k not in NOT_FIELDS and (f := _field(k, v))]
    if not fields:
        return None
    ts = rec.get("time")
    if not isinstance(ts, numbers.Integral):
        ts = time.time_ns() if now_ns is None else now_ns
    line = f"{measurement}{tagset} {','.join(fields)} {int(ts)}\n"
    hist = rec.get("loss_burst_hist")
    if isinstance(hist, dict):
        line += "".join(f"{measurement}_loss_burst{_tagset({**tags, 'length': k}, BURST_TAG_KEYS)}"
                        f" count={int(v)}i {int(ts)}\n" for k, v in hist.items() if v)
    return line.encode()


def _int_columns(values: np.ndarray):
    """int64 array -> (sign column, digit columns, masks) for variable-width decimal text."""
    mag = np.abs(values)
    width = max(1, len(str(int(mag.max())))) if len(mag) else 1
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (mag[:, None] // powers % 10 + 48).astype(np.uint8)
    ndigits = np.maximum((mag[:, None] >= powers).sum(axis=1), 1)
    keep = np.arange(width) >= (width - ndigits)[:, None]
    sign = np.full((len(values), 1), ord("-"), np.uint8)
    return [sign, digits], [(values < 0)[:, None], keep]


def format_int_points(prefix: bytes, values: np.ndarray, ts_ns: np.ndarray) -> bytes:
    """Lines `prefix + <value>i <ts_ns>\\n` for whole arrays at once (no per-point Python).

    `prefix` is e.g. b"latency,destination=D,source=S value=". Builds an ASCII byte matrix,
    one row per point, and keeps the digits that are not leading zeros.
    """
    n = len(values)
    if n == 0:
        return b""
    values = np.asarray(values, np.int64)
    cols, masks = [], []

    def const(b: bytes):
        cols.append(np.broadcast_to(np.frombuffer(b, np.uint8), (n, len(b))))
        masks.append(np.ones((n, len(b)), bool))

    const(prefix)
    c, m = _int_columns(values)
    cols += c
    masks += m
    const(b"i ")
    c, m = _int_columns(np.asarray(ts_ns, np.int64))
    cols += c
    masks += m
    const(b"\n")
    return np.hstack(cols)[np.hstack(masks)].tobytes()
