"""The option table: every packet-flow option, its type, default, help and converter.

Rules:
- Adding an option is one `Opt` entry in OPTS. The flag (`--NAME`), the environment variable
  (PACKET_FLOW_NAME), the TOML key (`NAME` or `NAME` with `_`), the --help line, the
  --print-config and --generate-config lines and the Config attribute all come from it.
- A converter takes the text argparse collected (a list of texts for `kind="list"`) and returns
  the value, or raises Bad(reason); config.py adds the option, value and source to the reason.
- `secret` values are never shown, and `show` masks part of a value (masking.py); `file_of`
  names the secret an option reads from a file (`--token-file` holds the value of `--token`).
"""

from __future__ import annotations

import dataclasses
import math
import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

from . import defaults
from .addresses import Addr, split_host_port
from .masking import MASK, mask_url

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
UDP_PAYLOAD_MAX = 65507
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
CONFIG_ENV = defaults.ENV_PREFIX + "CONFIG_FILE"


class Bad(ValueError):
    """A value that failed conversion; the message is the reason only."""


# --- converters: text -> value, raising Bad(reason) --------------------------------------------


def _float(lo: float | None = None, hi: float | None = None, above: float | None = None,
           zero: bool = False, unit: str = ""):
    """A float in [lo, hi] or above `above`; `zero` allows 0 besides (0 = off). With a time
    `unit` ("s" or "ms": the unit of a bare number), a time with its own unit is taken too
    (10ms, 1.5s, 2m, 1h) and converted to `unit`."""
    def conv(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            if not unit:
                raise Bad("not a number") from None
            value = _time(str(text).strip(), unit)
        if not math.isfinite(value):
            raise Bad("not a finite number")
        u = f" {unit}" if unit else ""
        if zero and value == 0:
            return value
        if zero and lo is not None and value < lo:
            raise Bad(f"must be 0 or at least {lo:g}{u}")
        if above is not None and value <= above:
            raise Bad(f"must be greater than {above:g}{u}")
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise Bad(f"must be between {lo:g} and {hi:g}{u}")
        if lo is not None and value < lo:
            raise Bad(f"must be at least {lo:g}{u}")
        return value

    return conv


def _int(lo: int, hi: int | None = None):
    def conv(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise Bad("not an integer") from None
        if hi is not None and not lo <= value <= hi:
            raise Bad(f"must be between {lo} and {hi}")
        if value < lo:
            raise Bad(f"must be at least {lo}")
        return value

    return conv


def _choice(choices: tuple[str, ...]):
    def conv(text: str) -> str:
        if text.lower() not in choices:
            raise Bad("must be one of " + ", ".join(choices))
        return text.lower()

    return conv


def _text(text: str) -> str:
    return text


def _bool(value: Any) -> bool:
    return bool(value)


def _nonempty(text: str) -> str:
    if not text.strip():
        raise Bad("must not be empty")
    return text


def _optional(text: str) -> str | None:
    return text or None


def _url(text: str) -> str:
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise Bad(f"not a URL ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise Bad("the scheme must be http or https")
    if not parts.hostname:
        raise Bad("the URL has no host")
    return text


def parse_addr(text: str, allow_port0: bool = False) -> Addr:
    """Parse `host:port`, `[v6addr]:port` or `hostname:port` and resolve it for UDP.

    Raises Bad (a ValueError) with the reason.
    """
    several = [t for t in text.replace(",", " ").split() if t]
    if len(several) > 1:
        raise Bad(f"one address is expected (host:port), not {len(several)}")
    try:
        host, port = split_host_port(text)
    except ValueError as e:
        raise Bad(str(e)) from None
    try:
        port_n = int(port)
    except ValueError:
        raise Bad(f"port {port!r} is not a number") from None
    if not (0 if allow_port0 else 1) <= port_n <= 65535:
        raise Bad(f"port {port_n} is out of range")
    try:
        infos = socket.getaddrinfo(host, port_n, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    except (socket.gaierror, UnicodeError) as e:
        raise Bad(f"cannot resolve {host!r}: {e}") from None
    family, _, _, _, sockaddr = infos[0]
    return Addr(host, port_n, family, sockaddr)


def _addr(allow_port0: bool):
    return lambda text: parse_addr(text, allow_port0)


def _listen(text: str) -> Addr | None:
    """An HTTP listen address (host:port, [v6addr]:port, :port = every IPv4 address, as
    Prometheus writes it); empty = off."""
    text = text.strip()
    return parse_addr("0.0.0.0" + text if text.startswith(":") else text) if text else None


def _outputs(items: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for item in (part.strip() for raw in items for part in raw.split(",")):
        if not item:
            continue
        kind, sep, path = item.partition(":")
        if item in ("console", "influx") or (kind in ("jsonl", "json") and sep and path):
            if item not in out:
                out.append(item)
        elif kind in ("jsonl", "json"):
            raise Bad(f"{kind} needs a path: {kind}:PATH ({kind}:- for stdout)")
        else:
            raise Bad(f"unknown output {item!r}: use console, jsonl:PATH, json:PATH or influx")
    if not out:
        raise Bad("no output given")
    if "jsonl:-" in out and "json:-" in out:
        raise Bad("jsonl:- and json:- cannot both go to stdout")
    return tuple(out)


def _peers(items: list[str]) -> tuple[str, ...]:
    # peers loads the extension and numpy (0.1 s): imported when used, so that
    # --help, --version and a bad option answer at once
    from . import peers
    try:
        return peers.check_entries(items)
    except ValueError as e:
        raise Bad(str(e)) from None


def _name(text: str) -> str | None:
    if not text.strip():
        return None
    from . import peers
    try:
        return peers.check_name(text)
    except ValueError as e:
        raise Bad(str(e)) from None


# --- thresholds (verdict.py) ---------------------------------------------------------------


def _loss_limit(text: str):
    from .verdict import LossLimit
    try:
        return LossLimit(str(text))
    except ValueError as e:
        raise Bad(str(e)) from None


TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
              "h": 3600.0}


def _time(text: str, unit: str = "s") -> float:
    """A time with a unit (10ms, 200us, 1.5s, 2m, 1h) in `unit` (s or ms); a bare number is
    in `unit` already."""
    for suffix in sorted(TIME_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)].strip(), TIME_UNITS[suffix] / TIME_UNITS[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        return float(number) * scale
    except ValueError:
        raise Bad(f"not a number or a time (a number of {unit}, or 10ms, 1.5s, 2m, 1h)") \
            from None


def _seconds(text: str) -> float:
    """A time of 0 or more in seconds (5ms, 200us, 1.5s; a bare number is seconds)."""
    try:
        value = _time(text)
    except Bad:
        raise Bad("not a time (like 5ms, 200us or 1.5s)") from None
    if not math.isfinite(value) or value < 0:
        raise Bad("must be a time of 0 or more")
    return value


def _time_limit(text: str):
    from .verdict import TimeLimit
    text = str(text).strip()
    return TimeLimit(text, _seconds(text))

# --- the table ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Opt:
    """One option. Only name, kind, default and help are required."""

    name: str                 # long option without dashes; TOML key; env var suffix
    kind: str                 # str | float | int | bool | list: the TOML type it takes
    default: Any
    help: str
    conv: Callable[[Any], Any] = _text
    short: str | None = None
    secret: bool = False      # never shown: "***" in --print-config, errors and the log
    file_of: str | None = None  # this option names a file holding that secret option's value
    in_file: bool = True      # may be set in a config file
    run_only: bool = False    # an action flag, not part of the configuration proper
    negatable: bool = False   # a bool with a --no-NAME form
    enables_influx: bool = False  # setting it turns the InfluxDB output on
    attr: str | None = None   # the Config attribute, when not the name with `_`
    show: Callable[[Any], Any] | None = None  # how people see a value (masking by field)
    unit: str = ""            # a time: the unit of a bare number (s, ms); 10ms, 2m taken too

    @property
    def env(self) -> str:
        return defaults.ENV_PREFIX + self.name.replace("-", "_").upper()

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def field(self) -> str:
        return self.attr or self.key

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def shown(self, value: Any) -> Any:
        """The value as messages, the log and --print-config show it: a secret is "***"."""
        if value is None:
            return None
        if self.secret:
            return MASK
        if isinstance(value, Addr):
            return str(value)
        return self.show(value) if self.show and isinstance(value, str) else value


OPTS = (
    Opt("mode", "str", defaults.MODE, "operating mode: " + ", ".join(defaults.MODES),
        _choice(defaults.MODES), short="-m"),
    Opt("local-addr", "str", defaults.LOCAL_ADDR,
        "address to bind: host:port, [v6addr]:port or hostname:port", _addr(True), attr="local"),
    Opt("remote-addr", "str", defaults.REMOTE_ADDR, "address to send to (sender, both)",
        _addr(False), attr="remote"),
    Opt("rate", "float", defaults.RATE_MS, "milliseconds between packets "
        f"({defaults.RATE_MIN_MS:g}..{defaults.RATE_MAX_MS:g}), or a time: 100us, 0.5s",
        _float(defaults.RATE_MIN_MS, defaults.RATE_MAX_MS, unit="ms"), short="-r",
        attr="rate_ms", unit="ms"),
    Opt("duration", "float", defaults.DURATION_S, "seconds to run (or 10ms, 2m, 1h), 0 = "
        "until a signal", _float(0.0, unit="s"), unit="s"),
    Opt("count", "int", defaults.COUNT, "packets to send, 0 = unlimited", _int(0)),
    Opt("size", "int", defaults.SIZE, "UDP payload bytes, 0 = the smallest packet of the wire "
        "format", _int(0, UDP_PAYLOAD_MAX)),
    Opt("dscp", "int", defaults.DSCP, "DSCP code point of sent packets (0..63)", _int(0, 63)),
    Opt("ttl", "int", defaults.TTL, "IP TTL / hop limit, 0 = the kernel's default",
        _int(0, 255)),
    Opt("wire", "str", defaults.WIRE, "packet format: " + ", ".join(defaults.WIRES),
        _choice(defaults.WIRES)),
    Opt("timer", "str", defaults.TIMER, "send scheduler: " + ", ".join(defaults.TIMERS),
        _choice(defaults.TIMERS)),
    Opt("interval", "float", defaults.INTERVAL_S, "seconds per metrics record "
        f"(>= {defaults.INTERVAL_MIN_S:g}; or 100ms, 1m)",
        _float(defaults.INTERVAL_MIN_S, unit="s"), unit="s"),
    Opt("output", "list", (defaults.OUTPUT,), "where metrics go: console, jsonl:PATH "
        "(jsonl:- = stdout), json:PATH (one document at the end; json:- = stdout), influx; "
        "repeat or separate with commas", _outputs, attr="outputs"),
    Opt("stall-timeout", "float", defaults.STALL_TIMEOUT_S,
        "seconds of silence before a sender counts as stalled", _float(above=0.0, unit="s"),
        unit="s"),
    Opt("forget-timeout", "float", defaults.FORGET_TIMEOUT_S,
        "seconds of silence before a sender is forgotten (> --stall-timeout)",
        _float(above=0.0, unit="s"), unit="s"),
    Opt("influx-url", "str", defaults.INFLUX_URL, "InfluxDB URL (http or https); setting it "
        "turns the InfluxDB output on", _url, short="-i", enables_influx=True, show=mask_url),
    Opt("database", "str", defaults.DATABASE, "InfluxDB database (1.x) or bucket (2.x)",
        _nonempty, short="-d"),
    Opt("influx-org", "str", defaults.INFLUX_ORG, "InfluxDB organisation (2.x)"),
    Opt("influx-api", "str", defaults.INFLUX_API, "InfluxDB write API: auto (from the version "
        "the server's /ping reports), v1 (/write?db=), v2 (/api/v2/write)",
        _choice(defaults.INFLUX_APIS)),
    Opt("retention-policy", "str", defaults.RETENTION_POLICY,
        "InfluxDB 1.x retention policy, empty = the database's default"),
    Opt("token", "str", None, "InfluxDB token", _optional, short="-t", secret=True,
        enables_influx=True),
    Opt("token-file", "str", None, "read the InfluxDB token from this file (Docker secrets)",
        _optional, file_of="token", enables_influx=True),
    Opt("username", "str", None, "InfluxDB username", _optional, short="-u",
        enables_influx=True),
    Opt("password", "str", None, "InfluxDB password", _optional, short="-p", secret=True,
        enables_influx=True),
    Opt("password-file", "str", None, "read the InfluxDB password from this file", _optional,
        file_of="password", enables_influx=True),
    Opt("auth-basic", "bool", False, "use HTTP Basic auth: --username/--password, or a --token "
        "of the form user:password", _bool, negatable=True),
    Opt("compat-points", "bool", False,
        "also write the original's per-packet `latency`/`packet_loss` points", _bool,
        negatable=True),
    Opt("compat-max-pps", "int", defaults.COMPAT_MAX_PPS,
        "cap on per-packet compat points per second per flow", _int(0)),
    Opt("flush-interval", "float", defaults.FLUSH_INTERVAL_S,
        f"seconds between InfluxDB writes (>= {defaults.INTERVAL_MIN_S:g}), 0 = --interval",
        _float(defaults.INTERVAL_MIN_S, zero=True, unit="s"), unit="s"),
    Opt("spool-dir", "str", defaults.SPOOL_DIR,
        "where unsent InfluxDB points wait, empty = a folder under the temp dir"),
    Opt("spool-max-bytes", "int", defaults.SPOOL_MAX_BYTES,
        "cap on the spool's size; past it the oldest points go first, 0 = no cap", _int(0)),
    Opt("prometheus-listen", "str", None, "serve Prometheus metrics at http://ADDR:PORT/metrics "
        "(e.g. 127.0.0.1:9469; 0.0.0.0:9469 for every address), empty = off; beside the other "
        "outputs", _listen),
    Opt("key", "str", None, "shared secret: sign packets with HMAC-SHA-256", _optional,
        secret=True),
    Opt("key-file", "str", None, "read the shared secret from this file", _optional,
        file_of="key"),
    Opt("rtt", "bool", False, "measure round-trip time (needs a reflector or STAMP peer)", _bool,
        negatable=True),
    Opt("log-level", "str", defaults.LOG_LEVEL, "logging level: " + ", ".join(LOG_LEVELS),
        _choice(LOG_LEVELS)),
    Opt("batch", "int", defaults.BATCH_MAX, "packets per sendmmsg/recvmmsg (1..1024; mesh mode: 256 unless given)",
        _int(1, 1024)),
    Opt("rcvbuf", "int", defaults.RCVBUF_BYTES, "receive socket buffer bytes, 0 = the "
        "kernel's default", _int(0)),
    Opt("max-flow-memory", "int", defaults.MAX_FLOW_MEMORY_MIB, "MiB for the state of all "
        "flows together; past it idle flows are evicted, else new flows are untracked",
        _int(1)),
    Opt("reflect-max-pps", "int", defaults.REFLECT_MAX_PPS, "reflector: replies per second "
        "to one source address, 0 = no limit", _int(0, 4_000_000_000)),
    Opt("reflect-authenticated", "bool", False, "reflector: answer only probes whose HMAC "
        "tag verifies (needs --key and --wire native)", _bool, negatable=True),
    # thresholds (verdict.py): a breached one fails the run with exit status 3
    Opt("max-loss", "str", None, "fail (exit status 3) when a flow lost more than this: a "
        "percentage of its packets (0.5%) or a count of packets (3)", _loss_limit),
    Opt("max-owd-p99", "str", None, "fail when a flow's one-way delay p99 is above this time "
        "(5ms)", _time_limit),
    Opt("max-rtt-p99", "str", None, "fail when the round-trip time p99 (--rtt) is above this "
        "time (5ms)", _time_limit),
    Opt("max-jitter", "str", None, "fail when a flow's RFC 3550 jitter (with --rtt: the "
        "round trip's) is above this time (1ms)", _time_limit),
    Opt("min-received", "int", None, "fail when a flow received fewer packets (with --rtt: "
        "fewer replies)", _int(0)),
    # --- mesh peers (peers.py, discovery.py) ---
    Opt("peers", "list", (), "mesh peers: host:port, [v6addr]:port, file:PATH, dns:NAME:PORT "
        "(every A/AAAA record), srv:_service._udp.NAME; repeat or separate with commas",
        _peers),
    Opt("peer-refresh", "float", defaults.PEER_REFRESH_S, "seconds between lookups of the "
        "--peers names", _float(defaults.PEER_REFRESH_MIN_S, unit="s"), unit="s"),
    Opt("peer-subset", "int", defaults.PEER_SUBSET, "probe only this many peers, chosen by "
        "rendezvous hashing; 0 = every peer", _int(0)),
    Opt("name", "str", None, "this node's name, else $NODE_NAME, else the host name", _name),
    Opt("config-file", "str", None, "TOML config file to read (or to write with "
        f"--generate-config). {CONFIG_ENV} overrides this flag, as in the original",
        _optional, in_file=False, run_only=True),
    Opt("generate-config", "bool", False, "write every default to --config-file and exit",
        _bool, in_file=False, run_only=True),
    Opt("force", "bool", False, "let --generate-config overwrite an existing file", _bool,
        in_file=False, run_only=True),
    Opt("print-config", "bool", False, "print the effective configuration as TOML and exit",
        _bool, in_file=False, run_only=True),
)
BY_NAME = {o.name: o for o in OPTS}
