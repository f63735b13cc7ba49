"""Options, their layering, validation and secrets.

Rules:
- Precedence is command line > environment (PACKET_FLOW_*) > TOML config file > defaults,
  done by ConfigArgParse. One exception, kept from the Rust original: PACKET_FLOW_CONFIG_FILE
  overrides --config-file. An empty environment variable counts as unset.
- argparse only collects strings; this module converts and checks every value itself, so each
  error is one line: "option --NAME: value 'V' from SOURCE: REASON", SOURCE being `cli`,
  `env PACKET_FLOW_X`, `file PATH` or `default`. Every error is a ConfigError (exit status 2).
- TOML config files are flat. A key may be spelled `local-addr` or `local_addr` (the original's
  files use underscores and load unchanged). Values are typed: a number must be a TOML number.
  An unknown key is an error naming the key and the file.
- Token, password and key never appear in --help, --print-config, the log or an error message:
  they show as "***", and so does the password in a URL's `user:password@`.
- With `--wire stamp`, an address left at its default (not given on the command line, in the
  environment or in the file) gets STAMP's port 862 instead of 8000. `--rtt` with
  `--wire legacy` is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import socket
import sys
import tomllib
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import configargparse

from . import defaults
from .errors import ConfigError

MASK = "***"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
UDP_PAYLOAD_MAX = 65507
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_CONFIG_ENV = defaults.ENV_PREFIX + "CONFIG_FILE"
_RANK = {"cli": 3, "env": 2, "file": 1, "default": 0}


class Addr(NamedTuple):
    """A resolved UDP endpoint; str() gives `host:port` or `[v6]:port`."""

    host: str
    port: int
    family: int
    sockaddr: tuple

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Config:
    """The effective configuration; `sources` maps each option name to where its value came from."""

    action: str
    mode: str
    local: Addr
    remote: Addr
    rate_ms: float
    duration: float
    count: int
    size: int
    dscp: int
    ttl: int
    wire: str
    timer: str
    interval: float
    outputs: tuple[str, ...]
    stall_timeout: float
    forget_timeout: float
    influx_url: str
    database: str
    influx_org: str
    retention_policy: str
    token: str | None = dataclasses.field(repr=False)
    username: str | None
    password: str | None = dataclasses.field(repr=False)
    auth_basic: bool
    compat_points: bool
    compat_max_pps: int
    flush_interval: float
    spool_dir: str
    key: bytes | None = dataclasses.field(repr=False)
    rtt: bool
    log_level: str
    batch: int
    rcvbuf: int
    max_flow_memory: int
    reflect_max_pps: int
    reflect_authenticated: bool
    config_file: str | None
    force: bool
    sources: dict = dataclasses.field(default_factory=dict, compare=False)
    token_file: str | None = None
    password_file: str | None = None
    key_file: str | None = None

    @property
    def influx_enabled(self) -> bool:
        """True when metrics go to InfluxDB (asked for by --output influx or by its settings)."""
        return "influx" in self.outputs


class _Bad(ValueError):
    """A value that failed conversion; the message is the reason only."""


# --- converters: text -> value, raising _Bad(reason) -------------------------------------------


def _float(lo: float | None = None, hi: float | None = None, above: float | None = None):
    def conv(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _Bad("not a number") from None
        if not math.isfinite(value):
            raise _Bad("not a finite number")
        if above is not None and value <= above:
            raise _Bad(f"must be greater than {above:g}")
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise _Bad(f"must be between {lo:g} and {hi:g}")
        if lo is not None and value < lo:
            raise _Bad(f"must be at least {lo:g}")
        return value

    return conv


def _int(lo: int, hi: int | None = None):
    def conv(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _Bad("not an integer") from None
        if hi is not None and not lo <= value <= hi:
            raise _Bad(f"must be between {lo} and {hi}")
        if value < lo:
            raise _Bad(f"must be at least {lo}")
        return value

    return conv


def _choice(choices: tuple[str, ...]):
    def conv(text: str) -> str:
        if text.lower() not in choices:
            raise _Bad("must be one of " + ", ".join(choices))
        return text.lower()

    return conv


def _text(text: str) -> str:
    return text


def _nonempty(text: str) -> str:
    if not text.strip():
        raise _Bad("must not be empty")
    return text


def _optional(text: str) -> str | None:
    return text or None


def _url(text: str) -> str:
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise _Bad(f"not a URL ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise _Bad("the scheme must be http or https")
    if not parts.hostname:
        raise _Bad("the URL has no host")
    return text


def parse_addr(text: str, allow_port0: bool = False) -> Addr:
    """Parse `host:port`, `[v6addr]:port` or `hostname:port` and resolve it for UDP.

    Raises ValueError with the reason.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise _Bad("expected [v6addr]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise _Bad("expected host:port")
        if ":" in host:
            raise _Bad("an IPv6 address needs brackets: [v6addr]:port")
    if not host:
        raise _Bad("the host is missing")
    try:
        port_n = int(port)
    except ValueError:
        raise _Bad(f"port {port!r} is not a number") from None
    if not (0 if allow_port0 else 1) <= port_n <= 65535:
        raise _Bad(f"port {port_n} is out of range")
    try:
        infos = socket.getaddrinfo(host, port_n, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    except (socket.gaierror, UnicodeError) as e:
        raise _Bad(f"cannot resolve {host!r}: {e}") from None
    family, _, _, _, sockaddr = infos[0]
    return Addr(host, port_n, family, sockaddr)


def _outputs(items: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for item in (part.strip() for raw in items for part in raw.split(",")):
        if not item:
            continue
        kind, sep, path = item.partition(":")
        if item in ("console", "influx") or (kind == "jsonl" and sep and path):
            if item not in out:
                out.append(item)
        elif kind == "jsonl":
            raise _Bad("jsonl needs a path: jsonl:PATH (jsonl:- for stdout)")
        else:
            raise _Bad(f"unknown output {item!r}: use console, jsonl:PATH or influx")
    if not out:
        raise _Bad("no output given")
    return tuple(out)


# --- the option table ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Opt:
    name: str                 # long option without dashes; TOML key; env var suffix
    kind: str                 # str | float | int | bool | list: the TOML type it takes
    default: Any
    help: str
    conv: Callable[[str], Any] = _text
    short: str | None = None
    secret: bool = False
    in_file: bool = True      # may be set in a config file
    run_only: bool = False    # an action flag, not part of the configuration proper

    @property
    def env(self) -> str:
        return defaults.ENV_PREFIX + self.name.replace("-", "_").upper()

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")


_OPTS = (
    _Opt("mode", "str", defaults.MODE, "operating mode: " + ", ".join(defaults.MODES),
         _choice(defaults.MODES), short="-m"),
    _Opt("local-addr", "str", defaults.LOCAL_ADDR,
         "address to bind: host:port, [v6addr]:port or hostname:port"),
    _Opt("remote-addr", "str", defaults.REMOTE_ADDR, "address to send to (sender, both)"),
    _Opt("rate", "float", defaults.RATE_MS, "milliseconds between packets "
         f"({defaults.RATE_MIN_MS:g}..{defaults.RATE_MAX_MS:g})",
         _float(defaults.RATE_MIN_MS, defaults.RATE_MAX_MS), short="-r"),
    _Opt("duration", "float", defaults.DURATION_S, "seconds to run, 0 = until a signal",
         _float(0.0)),
    _Opt("count", "int", defaults.COUNT, "packets to send, 0 = unlimited", _int(0)),
    _Opt("size", "int", defaults.SIZE, "UDP payload bytes, 0 = the smallest packet of the wire "
         "format", _int(0, UDP_PAYLOAD_MAX)),
    _Opt("dscp", "int", defaults.DSCP, "DSCP code point of sent packets (0..63)", _int(0, 63)),
    _Opt("ttl", "int", defaults.TTL, "IP TTL / hop limit, 0 = the kernel's default",
         _int(0, 255)),
    _Opt("wire", "str", defaults.WIRE, "packet format: " + ", ".join(defaults.WIRES),
         _choice(defaults.WIRES)),
    _Opt("timer", "str", defaults.TIMER, "send scheduler: " + ", ".join(defaults.TIMERS),
         _choice(defaults.TIMERS)),
    _Opt("interval", "float", defaults.INTERVAL_S, "seconds per metrics record (> 0)",
         _float(above=0.0)),
    _Opt("output", "list", (defaults.OUTPUT,), "where metrics go: console, jsonl:PATH "
         "(jsonl:- = stdout), influx; repeat or separate with commas"),
    _Opt("stall-timeout", "float", defaults.STALL_TIMEOUT_S,
         "seconds of silence before a sender counts as stalled", _float(above=0.0)),
    _Opt("forget-timeout", "float", defaults.FORGET_TIMEOUT_S,
         "seconds of silence before a sender is forgotten (> --stall-timeout)",
         _float(above=0.0)),
    _Opt("influx-url", "str", defaults.INFLUX_URL, "InfluxDB URL (http or https); setting it "
         "turns the InfluxDB output on", _url, short="-i"),
    _Opt("database", "str", defaults.DATABASE, "InfluxDB database (1.x) or bucket (2.x)",
         _nonempty, short="-d"),
    _Opt("influx-org", "str", defaults.INFLUX_ORG, "InfluxDB organisation (2.x)"),
    _Opt("retention-policy", "str", defaults.RETENTION_POLICY,
         "InfluxDB 1.x retention policy, empty = the database's default"),
    _Opt("token", "str", None, "InfluxDB token", _optional, short="-t", secret=True),
    _Opt("token-file", "str", None, "read the InfluxDB token from this file (Docker secrets)",
         _optional),
    _Opt("username", "str", None, "InfluxDB username", _optional, short="-u"),
    _Opt("password", "str", None, "InfluxDB password", _optional, short="-p", secret=True),
    _Opt("password-file", "str", None, "read the InfluxDB password from this file", _optional),
    _Opt("auth-basic", "bool", False, "use HTTP Basic auth: --username/--password, or a --token of the form user:password"),
    _Opt("compat-points", "bool", False,
         "also write the original's per-packet `latency`/`packet_loss` points"),
    _Opt("compat-max-pps", "int", defaults.COMPAT_MAX_PPS,
         "cap on per-packet compat points per second per flow", _int(0)),
    _Opt("flush-interval", "float", defaults.FLUSH_INTERVAL_S,
         "seconds between InfluxDB writes, 0 = --interval", _float(0.0)),
    _Opt("spool-dir", "str", defaults.SPOOL_DIR,
         "where unsent InfluxDB points wait, empty = a folder under the temp dir"),
    _Opt("key", "str", None, "shared secret: sign packets with HMAC-SHA-256", _optional,
         secret=True),
    _Opt("key-file", "str", None, "read the shared secret from this file", _optional),
    _Opt("rtt", "bool", False, "measure round-trip time (needs a reflector or STAMP peer)"),
    _Opt("log-level", "str", defaults.LOG_LEVEL, "logging level: " + ", ".join(LOG_LEVELS),
         _choice(LOG_LEVELS)),
    _Opt("batch", "int", defaults.BATCH_MAX, "packets per sendmmsg/recvmmsg (1..1024)",
         _int(1, 1024)),
    _Opt("rcvbuf", "int", defaults.RCVBUF_BYTES, "receive socket buffer bytes, 0 = the "
         "kernel's default", _int(0)),
    _Opt("max-flow-memory", "int", defaults.MAX_FLOW_MEMORY_MIB, "MiB for the state of all "
         "flows together; past it idle flows are evicted, else new flows are untracked",
         _int(1)),
    _Opt("reflect-max-pps", "int", defaults.REFLECT_MAX_PPS, "reflector: replies per second "
         "to one source address, 0 = no limit", _int(0)),
    _Opt("reflect-authenticated", "bool", False, "reflector: answer only probes whose HMAC "
         "tag verifies (needs --key and --wire native)"),
    _Opt("config-file", "str", None, "TOML config file to read (or to write with "
         f"--generate-config). {_CONFIG_ENV} overrides this flag, as in the original",
         _optional, in_file=False, run_only=True),
    _Opt("generate-config", "bool", False, "write every default to --config-file and exit",
         in_file=False, run_only=True),
    _Opt("force", "bool", False, "let --generate-config overwrite an existing file",
         in_file=False, run_only=True),
    _Opt("print-config", "bool", False, "print the effective configuration as TOML and exit",
         in_file=False, run_only=True),
)
_BY_NAME = {o.name: o for o in _OPTS}
_NEGATABLE = {"auth-basic", "compat-points", "rtt"}     # --no-X sets them false
_FIELD = {"rate": "rate_ms", "local-addr": "local", "remote-addr": "remote", "output": "outputs"}
_INFLUX_SETTINGS = ("influx-url", "token", "token-file", "username", "password", "password-file")


def _field(name: str) -> str:
    return _FIELD.get(name, name.replace("-", "_"))


# --- the TOML file parser -------------------------------------------------------------------------


class _FlatToml(configargparse.TomlConfigParser):
    """Reads a flat TOML document (no sections), checks key names and value types."""

    def __init__(self, path: str = "") -> None:
        super().__init__([])
        self.path = path

    def parse(self, stream) -> OrderedDict:
        """Return {option name: string or list of strings} for ConfigArgParse."""
        content = stream.read()
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        where = f"config file {self.path}"
        try:
            data = tomllib.loads(content)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where}: not valid TOML: {e}") from None
        items: OrderedDict = OrderedDict()
        for key, value in data.items():
            opt = _BY_NAME.get(key.replace("_", "-"))
            if opt is None:
                raise ConfigError(f"{where}: unknown key {key!r}")
            if not opt.in_file:
                raise ConfigError(f"{where}: {key!r} can only be given on the command line "
                                  "or in the environment")
            if opt.name in items:
                raise ConfigError(f"{where}: key {key!r} is given twice (- and _ spellings)")
            items[opt.name] = _toml_to_arg(opt, value, f"file {self.path}")
        return items


def _toml_to_arg(opt: _Opt, value: Any, source: str) -> str | list[str]:
    """Check a TOML value's type against the option and turn it into argparse text."""
    ok = {
        "str": isinstance(value, str),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list": isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
    }[opt.kind]
    if not ok:
        want = {"str": "a string", "float": "a number", "int": "an integer", "bool": "true or false",
                "list": "a string or a list of strings"}[opt.kind]
        shown = MASK if opt.secret else value
        raise ConfigError(f"option --{opt.name}: value {shown!r} from {source}: "
                          f"expected {want}, got TOML {type(value).__name__}")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if opt.kind == "list" and isinstance(value, str):
        return [value]
    return value if isinstance(value, list) else str(value)


# --- parsers ---------------------------------------------------------------------------------------


class _Parser(configargparse.ArgumentParser):
    """A ConfigArgParse parser whose usage errors raise ConfigError instead of exiting."""

    def error(self, message: str):
        raise ConfigError(f"{mask(message)} (see --help)")


def _add_options(parser: argparse.ArgumentParser, plain: bool) -> None:
    for opt in _OPTS:
        flags = ([opt.short] if opt.short else []) + [f"--{opt.name}"]
        if opt.name == "config-file":
            flags.append("--config_file")
        kw: dict[str, Any] = {"dest": opt.name.replace("-", "_")}
        if opt.kind == "bool":
            negatable = opt.name in _NEGATABLE
            kw["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
        elif opt.kind == "list":
            kw["action"] = "append"
            kw["metavar"] = "OUTPUT"
        else:
            kw["metavar"] = opt.name.split("-")[-1].upper()
        if plain:
            kw["default"] = argparse.SUPPRESS
        else:
            kw["default"] = None
            kw["env_var"] = opt.env
            shown = "" if opt.secret or opt.default is None or opt.default is False else (
                f"; default: {_toml_value(opt.default)}")
            kw["help"] = f"{opt.help}{shown}  [env var: {opt.env}]".replace("%", "%%")
        parser.add_argument(*flags, **kw)


def build_parser(path: str | None = None) -> configargparse.ArgumentParser:
    """The ConfigArgParse parser (also used for --help); path names the config file in errors."""
    parser = _Parser(
        prog="packet-flow",
        description="UDP packet loss, latency and jitter probe.",
        epilog=(
            "Precedence: command line > environment (PACKET_FLOW_*) > TOML config file > "
            f"defaults, except that {_CONFIG_ENV} overrides --config-file, as in the Rust "
            "original. An empty environment variable counts as unset. Boolean environment "
            "values: 1/0/true/false/yes/no. Config file keys are the long option names, "
            "with - or _ (local_addr = \"0.0.0.0:8000\")."
        ),
        add_config_file_help=False,
        add_env_var_help=False,
        allow_abbrev=False,
        config_file_parser_class=_FlatToml(path or ""),
    )
    _add_options(parser, plain=False)
    return parser


def _cli_given(argv: list[str]) -> set[str]:
    """Names of the options given on the command line itself."""
    plain = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    _add_options(plain, plain=True)
    try:
        ns, _ = plain.parse_known_args(argv)
    except argparse.ArgumentError:
        return set()
    return {name.replace("_", "-") for name in vars(ns)}


def _config_path(argv: list[str], env: Mapping[str, str]) -> tuple[str | None, str]:
    """The config file path and its source; PACKET_FLOW_CONFIG_FILE beats --config-file."""
    if env.get(_CONFIG_ENV):
        return env[_CONFIG_ENV], f"env {_CONFIG_ENV}"
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("--config-file", "--config_file", dest="config_file")
    try:
        ns, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError:
        return None, "default"
    return (ns.config_file, "cli") if ns.config_file else (None, "default")


# --- load -------------------------------------------------------------------------------------------


def _fail(name: str, value: Any, source: str, reason: str) -> ConfigError:
    opt = _BY_NAME.get(name)
    if value is None:
        return ConfigError(mask(f"option --{name}: not set ({source}): {reason}"))
    shown = MASK if opt is not None and opt.secret else value
    if isinstance(shown, list):
        shown = ",".join(shown)
    return ConfigError(mask(f"option --{name}: value {shown!r} from {source}: {reason}"))


def _read_secret(name: str, path: str, source: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read().rstrip(b"\r\n")
    except OSError as e:
        raise _fail(name, path, source, f"cannot read: {e.strerror or e}") from None
    if not data:
        raise _fail(name, path, source, "the file is empty")
    return data


def _pick(vals: dict, sources: dict, direct: str, from_file: str) -> tuple[str | None, str]:
    """Choose between --X and --X-file: the higher layer wins; the same layer is an error."""
    if vals[direct] is None or vals[from_file] is None:
        return (from_file, sources[from_file]) if vals[from_file] is not None else (direct, "")
    a, b = _RANK[sources[direct].split()[0]], _RANK[sources[from_file].split()[0]]
    if a == b:
        raise _fail(from_file, vals[from_file], sources[from_file],
                    f"--{direct} is given too ({sources[direct]}); give only one")
    return (direct, "") if a > b else (from_file, sources[from_file])


def load(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse the command line, environment and config file into a checked Config.

    Raises ConfigError (exit status 2) with a one-line message; `--help` exits with
    SystemExit(0) as argparse does.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    env = {k: v for k, v in (os.environ if env is None else env).items()
           if not (k.startswith(defaults.ENV_PREFIX) and v == "")}
    for opt in _OPTS:
        if opt.kind == "bool" and opt.env in env and env[opt.env].lower() not in _TRUE + _FALSE:
            raise _fail(opt.name, env[opt.env], f"env {opt.env}",
                        "not a boolean (1/0/true/false/yes/no)")

    path, path_source = _config_path(argv, env)
    generate = "--generate-config" in argv or env.get(opt_env("generate-config"), "").lower() in _TRUE
    contents = None
    if path and not generate and not {"-h", "--help"} & set(argv):
        try:
            with open(os.path.expanduser(path), "rb") as f:
                contents = f.read().decode("utf-8", "replace")
        except OSError as e:
            raise _fail("config-file", path, path_source, f"cannot read: {e.strerror or e}") from None

    parser = build_parser(path)
    ns = parser.parse_args(argv, config_file_contents=contents, env_vars=env)

    cli = _cli_given(argv)
    settings = parser.get_source_to_settings_dict()
    env_used = {a.dest for a, _ in settings.get("environment_variables", {}).values()}
    file_used = {a.dest for key, d in settings.items() if key.startswith("config_file")
                 for a, _ in d.values()}
    sources: dict[str, str] = {}
    raw: dict[str, Any] = {}
    for opt in _OPTS:
        dest = opt.name.replace("-", "_")
        if opt.name == "config-file":
            sources[opt.name], raw[opt.name] = path_source, path
            continue
        value = getattr(ns, dest)
        if opt.name in cli:
            sources[opt.name] = "cli"
        elif dest in env_used:
            sources[opt.name] = f"env {opt.env}"
        elif dest in file_used:
            sources[opt.name] = f"file {path}"
        else:
            sources[opt.name], value = "default", opt.default
        raw[opt.name] = value

    vals: dict[str, Any] = {}
    for opt in _OPTS:
        value, source = raw[opt.name], sources[opt.name]
        try:
            if opt.kind == "bool" or value is None:
                vals[opt.name] = bool(value) if opt.kind == "bool" else None
            elif opt.kind == "list":
                vals[opt.name] = _outputs(list(value))
            elif opt.name in ("local-addr", "remote-addr"):
                vals[opt.name] = parse_addr(value, allow_port0=opt.name == "local-addr")
            else:
                vals[opt.name] = opt.conv(value)
        except _Bad as e:
            raise _fail(opt.name, value, source, str(e)) from None
    return _finish(vals, sources, generate)


def opt_env(name: str) -> str:
    """The environment variable of an option, e.g. opt_env("rate") == "PACKET_FLOW_RATE"."""
    return _BY_NAME[name].env


def _finish(vals: dict, sources: dict, generate: bool) -> Config:
    """Cross-option rules: secrets from files, outputs, timeouts, credentials, action."""
    if vals["generate-config"] and vals["print-config"]:
        raise _fail("print-config", True, sources["print-config"],
                    "cannot be combined with --generate-config")
    if vals["generate-config"] and not vals["config-file"]:
        raise _fail("generate-config", True, sources["generate-config"],
                    "needs --config-file PATH to write to")
    for direct, from_file in (("token", "token-file"), ("password", "password-file"),
                              ("key", "key-file")):
        chosen, source = _pick(vals, sources, direct, from_file)
        if chosen == from_file:
            data = _read_secret(from_file, vals[from_file], source)
            vals[direct] = data if direct == "key" else data.decode("utf-8", "replace").strip()
        elif direct == "key" and vals["key"] is not None:
            vals["key"] = vals["key"].encode()
    if vals["wire"] == "stamp":
        # STAMP's well-known port (RFC 8762 §4.1) replaces 8000 in an address left at its
        # default; an address given anywhere (cli, env, file) keeps its port.
        for name in ("local-addr", "remote-addr"):
            if sources[name] == "default":
                a = vals[name]
                vals[name] = a._replace(port=defaults.STAMP_PORT,
                                        sockaddr=(a.sockaddr[0], defaults.STAMP_PORT,
                                                  *a.sockaddr[2:]))
    if vals["rtt"] and vals["wire"] == "legacy":
        raise _fail("rtt", True, sources["rtt"], f"needs --wire native or stamp, not legacy "
                    f"({sources['wire']}): legacy packets cannot carry reflector timestamps")
    if vals["reflect-authenticated"] and (vals["key"] is None or vals["wire"] != "native"):
        raise _fail("reflect-authenticated", True, sources["reflect-authenticated"],
                    "needs --key and --wire native: only native probes carry a tag")
    if vals["forget-timeout"] <= vals["stall-timeout"]:
        raise _fail("forget-timeout", vals["forget-timeout"], sources["forget-timeout"],
                    f"must be greater than --stall-timeout {vals['stall-timeout']:g} "
                    f"({sources['stall-timeout']})")

    outputs = vals["output"]
    enabled_by = [n for n in _INFLUX_SETTINGS if sources[n] != "default" and vals[n]]
    if enabled_by and "influx" not in outputs:
        outputs += ("influx",)
    if "influx" in outputs and vals["mode"] in ("receiver", "both") and not generate:
        why = (f"--{enabled_by[0]} from {sources[enabled_by[0]]}" if enabled_by
               else f"--output from {sources['output']}")
        if vals["username"] and not vals["password"]:
            raise _fail("password", None, sources["password"],
                        f"--username from {sources['username']} needs a password too")
        if not vals["token"] and not (vals["username"] and vals["password"]):
            raise _fail("token", None, sources["token"],
                        f"mode {vals['mode']!r} writes to InfluxDB ({why}) and needs "
                        "--token or --username and --password")

    action = "generate" if vals["generate-config"] else "print" if vals["print-config"] else "run"
    fields = {f.name for f in dataclasses.fields(Config)}
    kwargs = {_field(n): v for n, v in vals.items() if _field(n) in fields}
    kwargs.update(action=action, outputs=outputs, config_file=vals["config-file"],
                  sources=dict(sources))
    return Config(**kwargs)


# --- showing the configuration --------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _shown(cfg: Config, opt: _Opt) -> Any:
    value = getattr(cfg, _field(opt.name))
    if value is None:
        return None
    if opt.secret:
        return MASK
    if isinstance(value, Addr):
        return str(value)
    return value


def render_toml(cfg: Config, commented_sources: bool = True) -> str:
    """The effective configuration as a TOML document (secrets masked), for --print-config."""
    lines = ["# packet-flow effective configuration"]
    if cfg.config_file:
        lines.append(f"# config file: {cfg.config_file} ({cfg.sources.get('config-file')})")
    for opt in _OPTS:
        if opt.run_only:
            continue
        value = _shown(cfg, opt)
        source = cfg.sources.get(opt.name, "default")
        if opt.secret and value is not None and source == "default":
            source = f"read from --{opt.name}-file"
        if value is None:
            line = f"# {opt.key} is not set"
        elif opt.name in _INFLUX_SETTINGS and source == "default":
            line = f"# {opt.key} = {_toml_value(value)}"    # set, it would turn InfluxDB on
        else:
            line = f"{opt.key} = {_toml_value(value)}"
        if commented_sources:
            line += f"  # {source}"
        lines.append(line)
    return mask("\n".join(lines) + "\n", cfg)


def log_config(cfg: Config, logger) -> None:
    """Log the effective configuration, one line per value, at info level (secrets masked)."""
    for line in render_toml(cfg).splitlines():
        logger.info("config: %s", line)


_COMMENTED_OUT = {"influx-url", "token", "token-file", "username", "password", "password-file",
                  "key", "key-file"}


def default_toml() -> str:
    """A commented TOML config file holding every default (what --generate-config writes)."""
    lines = [
        "# packet-flow configuration (TOML, flat keys; `-` and `_` spellings both work).",
        "# Every value below is the default. Precedence: command line > environment",
        f"# (PACKET_FLOW_*) > this file > defaults; {_CONFIG_ENV} overrides --config-file.",
        "# The InfluxDB settings are commented out: setting any of them turns on the",
        "# InfluxDB output, and a receiver then needs a token or username and password.",
    ]
    for opt in _OPTS:
        if not opt.in_file:
            continue
        lines += ["", f"# {opt.help}  [env var: {opt.env}]"]
        value = "" if opt.default is None else opt.default
        line = f"{opt.key} = {_toml_value(value)}"
        lines.append(f"# {line}" if opt.name in _COMMENTED_OUT else line)
    return "\n".join(lines) + "\n"


def write_default_config(path: str, force: bool) -> None:
    """Write default_toml() to path; refuses to overwrite an existing file unless force."""
    try:
        with open(path, "w" if force else "x", encoding="utf-8") as f:
            f.write(default_toml())
    except FileExistsError:
        raise ConfigError(f"option --generate-config: file {path!r} exists; "
                          "add --force to overwrite it") from None
    except OSError as e:
        raise ConfigError(f"option --generate-config: cannot write {path!r}: "
                          f"{e.strerror or e}") from None


# --- masking ------------------------------------------------------------------------------------------

_URL_CREDS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")
_NAMES = r"(token|password|passwd|secret|key|authorization)"
_VALUE = r"((?:token|basic|bearer)\s+)?([^\s\"',;&]+)"
# `name=value` anywhere (also `--token=x`); `name: value` but not `--name: ...` (our messages)
_SECRET_KV = (
    re.compile(r"(?i)(?<![a-z0-9])" + _NAMES + r"([\"']?\s*=\s*[\"']?)" + _VALUE),
    re.compile(r"(?i)(?<![a-z0-9-])" + _NAMES + r"([\"']?\s*:\s*[\"']?)" + _VALUE),
)
_MIN_LITERAL = 4     # shorter secrets are not masked by value: they would mangle every message


def mask(text: str, cfg: Config | None = None) -> str:
    """Hide secrets in any message: `user:pass@` in URLs, `token=...`-style values, and the
    literal token, password and key of cfg when given."""
    text = _URL_CREDS.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    for pattern in _SECRET_KV:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{MASK}", text)
    if cfg is not None:
        secrets = [cfg.token, cfg.password]
        if cfg.key:
            secrets.append(cfg.key.decode("utf-8", "replace"))
        for secret in sorted((s for s in secrets if s and len(s) >= _MIN_LITERAL),
                             key=len, reverse=True):
            text = text.replace(secret, MASK)
    return text
