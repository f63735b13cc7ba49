"""What every record starts with, and when interval records are due.

Rules: every record (sender, receiver, flow) opens with the same header -- type, role, time
(wall clock, ns since the UNIX epoch), source, destination, session, then what the kind
adds (names, wire), then interval_s, the CLOCK_MONOTONIC time the record covers. Interval
ticks lie on an absolute CLOCK_MONOTONIC grid (start + n * interval): a tick that comes
late ends its interval where it is, and the next tick stays on the grid, leaving out the
grid points already passed, so a stall never makes ticks drift or come in a burst.
"""


def header(kind, role, time, covered_ns, source, destination, session, **more):
    """A record's opening fields: `time` is the wall-clock time of its end, `covered_ns` the
    monotonic ns it covers; `more` (names, wire) goes before interval_s."""
    rec = {"type": kind, "role": role, "time": time, "source": source,
           "destination": destination, "session": session}
    rec.update(more)
    rec["interval_s"] = round(covered_ns / 1e9, 6)
    return rec


class TickGrid:
    """Interval ticks on start_ns + n * interval_ns (see the module rules). `next_ns` is the
    next tick due; tick(now_ns) ends the interval at now_ns and returns where it began."""

    def __init__(self, start_ns, interval_ns):
        self.interval_ns = interval_ns
        self.next_ns = start_ns + interval_ns
        self.last_ns = start_ns

    def tick(self, now_ns):
        since = self.last_ns
        self.last_ns = now_ns
        behind = max(0, now_ns - self.next_ns)
        self.next_ns += self.interval_ns * (behind // self.interval_ns + 1)
        return since
