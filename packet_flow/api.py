"""The Python API: run a probe from a script and get its numbers back (docs/api.md).

Rules:
- Options are the command line's long names with `_` (remote_addr="127.0.0.1:9000",
  max_loss="0.5%"). They are turned into command-line words and loaded by config.load, so
  a value is checked exactly as on the command line and a bad one raises the same
  ConfigError naming the option. The environment (PACKET_FLOW_*) is not read; a config file
  only when config_file= is given.
- The probe runs in a thread of its own, never the caller's: no signal handler is installed
  (stop() and skip() replace SIGTERM and SIGUSR1), and what the sender sets on its thread
  (timer slack, real-time priority) ends with that thread. run() gives back what it sets
  process-wide (gc.freeze, the switch interval). Logging goes to the `packet_flow` loggers,
  configured by the caller; the API configures none.
- No output is written unless `output=` asks for one: the Result holds the summaries (and the
  interval records with records=True). Thresholds give the Result its verdict, as the exit
  status 3 does on the command line.
- Results are plain data: the records are the JSON-lines records (times as RFC 3339 text).
"""

from __future__ import annotations

import dataclasses
import difflib
import threading
from typing import Any

from packet_flow import config
from packet_flow.errors import ConfigError
from packet_flow.options import BY_NAME
from packet_flow.sinks.jsondoc import config_dict, document, plain
from packet_flow.verdict import Verdict

NOT_IN_API = ("generate-config", "print-config", "force", "log-level")


@dataclasses.dataclass(frozen=True)
class Result:
    """What a probe measured. `summaries` are every summary record of the run (the sender's
    and one per flow), `sender` and `flows` the same split by role, `records` the interval,
    sender and receiver records when asked for (records=True, else None), `verdict` the
    thresholds' verdict (passed when none is set), `config` the options as run (secrets
    masked)."""

    config: dict
    summaries: list[dict]
    verdict: Verdict
    records: list[dict] | None = None

    @property
    def sender(self) -> dict | None:
        """The sender's summary record (None in receiver and reflector mode)."""
        return next((r for r in self.summaries if r.get("role") == "sender"), None)

    @property
    def flows(self) -> list[dict]:
        """The receiver's summary records, one per flow."""
        return [r for r in self.summaries if r.get("role") == "receiver"]

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def as_dict(self) -> dict:
        """The run's JSON document, as `--output json:PATH` writes it."""
        return document(self.config, self.summaries, self.verdict)


def _words(options: dict[str, Any]) -> list[str]:
    """Command-line words for keyword options; unknown names raise ConfigError."""
    argv: list[str] = []
    for key, value in options.items():
        name = key.replace("_", "-")
        opt = BY_NAME.get(name)
        if opt is None or name in NOT_IN_API:
            near = difflib.get_close_matches(name, [n for n in BY_NAME if n not in NOT_IN_API],
                                             n=1)
            hint = f" (did you mean {near[0].replace('-', '_')}?)" if near else ""
            why = ("the API leaves logging to the caller: set the level of the "
                   "`packet_flow` logger") if name == "log-level" else f"unknown option{hint}"
            raise ConfigError(f"option {key}: {why}")
        if value is None:
            continue
        if opt.kind == "bool":
            if value:
                argv.append(f"--{name}")
            elif opt.negatable:
                argv.append(f"--no-{name}")
        elif opt.kind == "list":
            for item in [value] if isinstance(value, str) else list(value):
                argv.append(f"--{name}={item}")
        else:
            argv.append(f"--{name}={value}")
    return argv


def configure(**options: Any):
    """The Config a probe with these options runs with (raises ConfigError as the command
    line does). Without output= no output is written."""
    cfg = config.load(_words(options), env={})
    if cfg.sources.get("output") == "default":
        cfg = dataclasses.replace(cfg, outputs=tuple(o for o in cfg.outputs if o != "console"))
    return cfg


class _Collector:
    """The API's sink: keeps the summary records, and every record when asked."""

    wants_packets = wants_gaps = wants_rtts = wants_idle = closes_last = False
    on_failure = None

    def __init__(self, keep_all: bool):
        self.summaries: list[dict] = []
        self.records: list[dict] | None = [] if keep_all else None

    def record(self, rec: dict) -> None:
        rec = plain(rec)
        if rec.get("type") == "summary":
            self.summaries.append(rec)
        elif self.records is not None:
            self.records.append(rec)

    @property
    def counters(self) -> dict:
        return {}

    def close(self, timeout: float = 0, counters: dict | None = None) -> dict:
        return {}


class Probe:
    """A probe running in the background until its duration or count ends, or stop().

        with packet_flow.Probe(mode="both", remote_addr="127.0.0.1:9000",
                               local_addr="127.0.0.1:9000", rate=1) as p:
            ...                      # the probe runs
            p.stop()
        print(p.result.flows[0]["lost"])

    Leaving the `with` block stops the probe and waits for its result. Options as probe().
    """

    def __init__(self, *, records: bool = False, **options: Any):
        self.cfg = configure(**options)
        self._collector = _Collector(records)
        self._lock = threading.Lock()
        self._loops: dict | None = None
        self._stop = False
        self._skips = 0
        self._verdict: Verdict | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="packet-flow probe",
                                        daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        from packet_flow import run
        try:
            self._verdict = run.run(self.cfg, ready=self._ready, sinks=[self._collector])
        except BaseException as exc:    # handed to the caller by wait()
            self._error = exc
        finally:
            self.ready.set()

    def _ready(self, loops: dict) -> None:
        with self._lock:
            self._loops = loops
            stop, skips = self._stop, self._skips
        if skips and loops.get("sender") is not None:
            for _ in range(skips):
                loops["sender"].skip()
        if stop:
            self._stop_loops(loops)
        self.ready.set()

    @staticmethod
    def _stop_loops(loops: dict) -> None:
        """Stop the sender; its receiver (mode both) ends after it as at the end of a count,
        so the packets in flight are counted. Without a sender, stop the receiver."""
        loop = loops.get("sender") or loops.get("receiver")
        if loop is not None:
            loop.stop()

    def start(self) -> Probe:
        """Start the probe in its thread; returns once its sockets are bound (or it failed)."""
        self._thread.start()
        self.ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self) -> None:
        """Stop the probe as SIGTERM stops the command line: the sender sends its final
        packet, every output is flushed. Returns at once; wait() or `result` waits."""
        with self._lock:
            self._stop = True
            loops = self._loops
        if loops is not None:
            self._stop_loops(loops)

    def skip(self, count: int = 1) -> None:
        """Leave `count` sequence numbers unsent, as SIGUSR1 does: deliberate loss."""
        with self._lock:
            loops = self._loops
            if loops is None:
                self._skips += count        # taken by _ready()
        if loops is not None and loops.get("sender") is not None:
            for _ in range(count):
                loops["sender"].skip()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the probe to end (its duration or count, or stop()) and return its
        Result; raises what ended the run early, TimeoutError when it is still running."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the probe is still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return Result(config_dict(self.cfg), self._collector.summaries, self._verdict,
                      self._collector.records)

    @property
    def result(self) -> Result:
        """The Result; waits for the end of the run."""
        return self.wait()

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        """Stop the probe and wait for its end; what ended the run early is raised here
        unless the block raised something itself."""
        self.stop()
        try:
            self._thread.join()
        except BaseException:
            self.stop()
            raise
        if exc_type is None and self._error is not None:
            raise self._error


def probe(*, records: bool = False, **options: Any) -> Result:
    """Run a probe to its end and return what it measured.

        result = packet_flow.probe(mode="both", remote_addr="127.0.0.1:9000",
                                   local_addr="127.0.0.1:9000", rate=1, count=1000,
                                   max_loss=0)
        assert result.passed, result.verdict.lines()

    Options are the command line's long names with `_` (rate=1 is --rate 1: 1 ms between
    packets); each is checked as the command line checks it (ConfigError). A probe that
    cannot end by itself (no duration or count, or a receiver without a duration) is
    refused. `records=True` keeps the interval records in Result.records. KeyboardInterrupt
    stops the probe and is raised again once it has ended."""
    p = Probe(records=records, **options)
    if not (p.cfg.duration or (p.cfg.count and p.cfg.mode in ("sender", "both"))):
        raise ConfigError("option duration: probe() needs duration= (or count= in mode "
                          "sender or both) to end by itself; use Probe() to stop it yourself")
    p.start()
    try:
        return p.wait()
    except KeyboardInterrupt:
        p.stop()
        p._thread.join()
        raise

