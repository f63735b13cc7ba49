"""Rejected datagrams told to a person: why each was refused and what to check.

Rules:
- The input is a receiver record's `rejected` (a list of {source, reason, count}, the
  receiver's malformed reasons by source).
- Each source and cause is told at once, then at most once per REJECTED_REPEAT_S of record
  time with what it counted meanwhile; counts not yet told are told at close.
- The console writes these lines in its table (ConsoleSink); a run without a console output
  (JSON lines, InfluxDB or Prometheus only) logs them as warnings to stderr (RejectedLog),
  so refused traffic is never silent.
"""

import logging
import time

from packet_flow import defaults

log = logging.getLogger(__name__)

# why a datagram was rejected (the receiver's malformed reasons) and what to check
REJECTED = {
    "short": ("too short for any packet-flow packet",
              "check --wire on both ends (a STAMP sender needs --wire stamp here)"),
    "magic": ("not packet-flow packets",
              "a STAMP sender needs --wire stamp here; check --wire on both ends"),
    "version": ("from another packet-flow version", "run one version on both ends"),
    "truncated": ("shorter than their header says", "check the sender's --size and the MTU"),
    "legacy": ("17-byte datagrams that are not legacy packets", "check --wire on both ends"),
    "no_tag": ("not signed, and this receiver has --key",
               "give the sender the same --key (legacy packets cannot carry one)"),
    "bad_tag": ("signed with another key", "check that --key is the same on both ends"),
    "short_probe": ("probes too short to reflect", "check the sender's --size"),
}


class RejectedTeller:
    """Calls tell(now_s, text) for what is to be told (see the module rules); `text` is one
    unwrapped line without a time."""

    def __init__(self, tell):
        self.tell = tell
        self.pending = {}       # (source, reason) -> [time told (s), count not yet told]

    def add(self, items, now_s):
        """A receiver record's `rejected` items, at record time now_s (s since the epoch)."""
        for item in items:
            key = (item["source"], item["reason"])
            seen = self.pending.get(key)
            if seen is None:
                self.pending[key] = [now_s, 0]
                self._tell(key, item["count"], now_s, None)
            elif now_s - seen[0] >= defaults.REJECTED_REPEAT_S:
                self._tell(key, seen[1] + item["count"], now_s, seen[0])
                seen[:] = [now_s, 0]
            else:
                seen[1] += item["count"]

    def close(self):
        """Tell the counts not yet told."""
        for key, (told_s, count) in self.pending.items():
            if count:
                self._tell(key, count, time.time(), told_s)

    def _tell(self, key, count, now_s, since_s):
        source, reason = key
        why, check = REJECTED.get(reason, (reason, "check --wire and --key on both ends"))
        since = "" if since_s is None else \
            f" since {time.strftime('%H:%M:%S', time.gmtime(since_s))}"
        self.tell(now_s, f"rejected {count} datagram{'s' if count != 1 else ''} from {source}"
                         f"{since}: {why} ({reason}); {check}")


class RejectedLog:
    """The sink of a run without a console output: rejected datagrams as log warnings."""

    wants_packets = wants_gaps = wants_rtts = wants_idle = closes_last = False
    on_failure = None
    counters = property(lambda self: {})

    def __init__(self):
        self.teller = RejectedTeller(lambda now_s, text: log.warning("%s", text))

    def record(self, rec):
        if rec["type"] == "receiver" and rec.get("rejected"):
            self.teller.add(rec["rejected"], rec["time"] / 1e9)

    def close(self, timeout=0, counters=None):
        self.teller.close()
        return {}
