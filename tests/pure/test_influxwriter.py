"""The InfluxDB write path's state machine (influxwriter.py), every transition, driven with a
fake clock and a scripted server; the spool is the real one in a temporary folder."""

import errno

import pytest

from packet_flow import defaults
from packet_flow.sinks.influxlink import Answer
from packet_flow.sinks.influxwriter import CLOSED, FAILED, HEALTHY, SPOOLING, WritePath
from packet_flow.sinks.spool import Spool

OK, DOWN = Answer(204, ""), Answer(None, "ConnectionRefusedError: refused")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Server:
    """Answers writes from `script` (then 204); keeps what it accepted."""

    url = shown_url = "http://db:8086"

    def __init__(self, *script):
        self.script, self.bodies, self.calls = list(script), [], 0

    def write(self, data):
        self.calls += 1
        answer = self.script.pop(0) if self.script else OK
        if answer.status == 204:
            self.bodies.append(data)
        return answer

    def explain(self, answer):
        return answer.status or "unreachable", f"down: {answer.message}"

    def connect(self):
        return None


def lines(n, start=0):
    return b"".join(b"m v=%di %d\n" % (i, i) for i in range(start, start + n)), n


def stored(server):
    return [int(line.split(b" ")[-1]) for body in server.bodies for line in body.splitlines()]


@pytest.fixture
def clock():
    return Clock()


def path_with(tmp_path, server, clock, memory_points=1000):
    return WritePath(server, Spool(str(tmp_path / "spool")), memory_points, clock)


def test_healthy_writes_from_memory_and_stays_healthy(tmp_path, clock):
    server = Server()
    p = path_with(tmp_path, server, clock)
    p.add(*lines(3))
    assert p.state == HEALTHY and p.held == 3 and len(p.spool) == 0 and p.due()
    assert p.pump() is True
    assert stored(server) == [0, 1, 2] and p.held == 0 and p.state == HEALTHY
    assert p.counters["written"] == 3 and p.counters["spooled"] == 0


def test_healthy_to_spooling_at_a_failed_write_then_new_points_go_to_the_spool(tmp_path, clock):
    server = Server(DOWN)
    p = path_with(tmp_path, server, clock)
    p.add(*lines(3))
    assert p.pump() is False
    assert p.state == SPOOLING and p.held == 0 and p.spool.points == 3
    c = p.counters
    assert (c["failed_requests"], c["retried"], c["spooled"], c["written"]) == (1, 3, 3, 0)
    assert p.error == "down: ConnectionRefusedError: refused"
    assert p.retry_at == clock.now + defaults.SINK_BACKOFF_MIN_S and not p.due()
    p.add(*lines(2, 3))     # at once a file of its own, fsynced
    assert p.held == 0 and p.spool.points == 5 and len(p.spool) == 2
    assert p.counters["spooled"] == 5


def test_spooling_backs_off_then_replays_oldest_first_and_is_healthy_again(tmp_path, clock):
    server = Server(DOWN, DOWN, Answer(503, "busy", retry_after=3.0))
    p = path_with(tmp_path, server, clock)
    p.add(*lines(2))
    waits = []
    for _ in range(3):
        start = clock.now
        p.pump()
        waits.append(p.retry_at - start)
        clock.now = p.retry_at
        p.add(*lines(1, 100 + len(waits)))
    assert waits == [0.25, 0.5, 3.0]        # doubling, or the server's Retry-After
    assert p.state == SPOOLING and p.due()
    assert p.pump() is True
    assert p.state == HEALTHY and p.spool.points == 0 and p.backoff == defaults.SINK_BACKOFF_MIN_S
    assert stored(server) == [0, 1, 101, 102, 103]
    assert len(server.bodies) == 1          # four spool files, one request
    assert p.counters["replayed"] == p.counters["written"] == 5


def test_closing_from_healthy_writes_what_it_holds(tmp_path, clock):
    server = Server()
    p = path_with(tmp_path, server, clock)
    p.add(*lines(4))
    p.finish(deadline=clock.now + 1)
    assert p.state == CLOSED and stored(server) == [0, 1, 2, 3] and p.spool.points == 0


def test_closing_spools_everything_at_the_first_failure(tmp_path, clock):
    server = Server(Answer(401, "authorization failed"))
    p = path_with(tmp_path, server, clock)
    p.add(*lines(4))
    p.finish(deadline=clock.now + 5)
    assert p.state == CLOSED and server.calls == 1      # no retries at shutdown
    assert p.held == 0 and p.spool.points == 4 and p.counters["dropped"] == 0
    p.add(*lines(1, 9))     # too late: counted
    assert p.counters["dropped"] == 1


def test_closing_from_spooling_tries_once_without_waiting_for_the_backoff(tmp_path, clock):
    server = Server(DOWN)
    p = path_with(tmp_path, server, clock)
    p.add(*lines(2))
    p.pump()
    assert p.state == SPOOLING and not p.due()
    p.add(*lines(2, 2))
    p.finish(deadline=clock.now + 5)            # the server is back: one try writes all
    assert p.state == CLOSED and stored(server) == [0, 1, 2, 3] and p.spool.points == 0


def test_closing_past_the_deadline_spools_without_writing(tmp_path, clock):
    server = Server()
    p = path_with(tmp_path, server, clock)
    p.add(*lines(3))
    p.finish(deadline=clock.now)
    assert server.calls == 0 and p.state == CLOSED and p.spool.points == 3


def test_abandon_spools_memory_and_the_last_formatted_points(tmp_path, clock):
    p = path_with(tmp_path, Server(), clock)
    p.add(*lines(3))
    assert p.abandon(CLOSED, 1.0, lines(2, 3)) is True
    assert p.state == CLOSED and p.held == 0 and p.spool.points == 5
    assert p.pump() is False


def test_failed_writer_still_spools_what_comes_after(tmp_path, clock):
    p = path_with(tmp_path, Server(), clock)
    p.add(*lines(3))
    p.abandon(FAILED, 1.0, lines(1, 3))
    assert p.state == FAILED and p.spool.points == 4
    p.abandon(FAILED, 1.0, lines(2, 4))         # close() hands over the records queued since
    assert p.spool.points == 6 and p.counters["dropped"] == 0


def test_memory_bound_while_healthy_moves_the_oldest_to_the_spool(tmp_path, clock):
    p = path_with(tmp_path, Server(), clock, memory_points=10)
    for i in range(4):
        p.add(*lines(3, 3 * i))
    # 12 > 10: the oldest chunks go until at most 5 remain
    assert p.state == HEALTHY and p.held == 3 and p.spool.points == 9
    p.pump()
    assert stored(p.server) == list(range(12))      # the spool first, then memory


def test_413_splits_and_the_halves_go_first(tmp_path, clock):
    server = Server(Answer(413, "too large"))
    p = path_with(tmp_path, server, clock)
    p.add(*lines(4))
    assert p.pump() is True
    assert p.counters["split_requests"] == 1 and p.counters["written"] == 4
    assert [b.count(b"\n") for b in server.bodies] == [2, 2] and stored(server) == [0, 1, 2, 3]


def test_a_full_disk_keeps_points_in_memory_up_to_the_hard_bound(tmp_path, clock, monkeypatch):
    p = path_with(tmp_path, Server(DOWN), clock, memory_points=4)   # hard bound: 16 points

    def full(data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(p.spool, "add", full)
    for i in range(3):
        p.add(*lines(3, 3 * i))     # past 4 points the oldest 6 try the spool, and stay
    p.pump()                        # fails: spooling, and the spool cannot take them
    assert p.state == SPOOLING and p.held == 9 and p.counters["spool_failed"] == 6
    for i in range(3, 6):
        p.add(*lines(3, 3 * i))     # 18 > 16: the oldest chunk goes
    assert p.held == 15 and p.counters["dropped"] == 3
    monkeypatch.undo()
    clock.now += defaults.SINK_SPOOL_RETRY_S
    p.add(*lines(1, 99))            # the disk has room again: everything to the spool
    assert p.held == 0 and p.spool.points == 16 and p.counters["spooled"] == 16
