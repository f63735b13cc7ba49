"""Layering and loading: command line, environment, TOML config file and defaults into a Config.

Rules:
- Precedence is command line > environment (PACKET_FLOW_*) > TOML config file > defaults,
  done by ConfigArgParse. One exception, kept from the Rust original: PACKET_FLOW_CONFIG_FILE
  overrides --config-file. An empty environment variable counts as unset.
- argparse only collects strings; the converters of the option table (options.py) convert and
  check every value, so each error is one line: "option --NAME: value 'V' from SOURCE: REASON",
  SOURCE being `cli`, `env PACKET_FLOW_X`, `file PATH` or `default`. Every error is a
  ConfigError (exit status 2).
- TOML config files are flat. A key may be spelled `local-addr` or `local_addr` (the original's
  files use underscores and load unchanged). Values are typed: a number must be a TOML number.
  An unknown key is an error naming the key and the file.
- Secrets (token, password, key, what their *-file options read, a URL's password) are masked
  by field in every message and in --print-config (masking.py); an unrecognized argument after a
  secret-looking flag is masked too.
- With `--wire stamp`, an address left at its default (not given on the command line, in the
  environment or in the file) gets STAMP's port 862 instead of 8000. `--rtt` with
  `--wire legacy` is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import sys
import tomllib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import configargparse

from . import __version__, defaults
from .config_render import toml_value
from .errors import ConfigError
from .masking import mask, mask_args
from .options import BY_NAME, CONFIG_ENV, FALSE, OPTS, TRUE, Bad, Opt

_RANK = {"cli": 3, "env": 2, "file": 1, "default": 0}
log = logging.getLogger(__name__)


def _influx_enabled(self) -> bool:
    """True when metrics go to InfluxDB (asked for by --output influx or by its settings)."""
    return "influx" in self.outputs


Config = dataclasses.make_dataclass(
    "Config",
    [("action", str)]
    + [(o.field, Any, dataclasses.field(repr=not o.secret)) for o in OPTS]
    + [("sources", dict, dataclasses.field(default_factory=dict, compare=False)),
       ("missing", tuple, dataclasses.field(default=(), compare=False))],
    frozen=True,
    namespace={"influx_enabled": property(_influx_enabled)},
)
Config.__doc__ = """The effective configuration: one attribute per option of options.OPTS (its
`field`), `action` (run, print or generate), `sources` (option name -> where its value came
from) and `missing` (what a run would refuse for, when only printing: credentials). Secrets are left out of repr()."""
Config.__module__ = __name__


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
            opt = BY_NAME.get(key.replace("_", "-"))
            if opt is None:
                raise ConfigError(f"{where}: unknown key {key!r}")
            if not opt.in_file:
                raise ConfigError(f"{where}: {key!r} can only be given on the command line "
                                  "or in the environment")
            if opt.name in items:
                raise ConfigError(f"{where}: key {key!r} is given twice (- and _ spellings)")
            items[opt.name] = _toml_to_arg(opt, value, f"file {self.path}")
        return items


def _toml_to_arg(opt: Opt, value: Any, source: str) -> str | list[str]:
    """Check a TOML value's type against the option and turn it into argparse text."""
    ok = {
        "str": isinstance(value, str),
        "float": (isinstance(value, int | float) and not isinstance(value, bool))
        or (bool(opt.unit) and isinstance(value, str)),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list": isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
    }[opt.kind]
    if not ok:
        want = {"str": "a string", "float": "a number or a time like \"10ms\"" if opt.unit
                else "a number", "int": "an integer", "bool": "true or false",
                "list": "a string or a list of strings"}[opt.kind]
        shown = opt.shown(value)
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

    def parse_args(self, args=None, namespace=None, config_file_contents=None,
                   env_vars=os.environ):
        """As ConfigArgParse's, but words it cannot place are listed with the values of
        secret-looking flags masked (`--passwrd hunter2` -> `--passwrd ***`)."""
        ns, extra = self.parse_known_args(args=args, namespace=namespace,
                                          config_file_contents=config_file_contents,
                                          env_vars=env_vars, ignore_help_args=False)
        if extra:
            raise ConfigError(f"unrecognized arguments: {' '.join(mask_args(extra))} "
                              "(see --help)")
        return ns

    def error(self, message: str):
        raise ConfigError(f"{mask(message)} (see --help)")


def _add_options(parser: argparse.ArgumentParser, plain: bool) -> None:
    for opt in OPTS:
        flags = ([opt.short] if opt.short else []) + [f"--{opt.name}"]
        if opt.name == "config-file":
            flags.append("--config_file")
        kw: dict[str, Any] = {"dest": opt.dest}
        if opt.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction if opt.negatable else "store_true"
        else:
            kw["action"] = "append" if opt.kind == "list" else "store"
            kw["metavar"] = opt.name.split("-")[-1].upper()
        if plain:
            kw["default"] = argparse.SUPPRESS
        else:
            kw["default"] = None
            kw["env_var"] = opt.env
            shown = "" if opt.secret or opt.default is None or opt.default is False else (
                f"; default: {toml_value(opt.default)}")
            kw["help"] = f"{opt.help}{shown}  [env var: {opt.env}]".replace("%", "%%")
        parser.add_argument(*flags, **kw)


def build_parser(path: str | None = None) -> configargparse.ArgumentParser:
    """The ConfigArgParse parser (also used for --help); path names the config file in errors."""
    parser = _Parser(
        prog="packet-flow",
        usage="packet-flow [options]\n       packet-flow report [-h] RUN.jsonl ...",
        description="UDP packet loss, latency and jitter probe. `packet-flow [options]` runs "
        "the probe; `packet-flow report RUN.jsonl` summarises a run written with --output "
        "jsonl:PATH, as text or a PNG (see `packet-flow report -h`).",
        epilog=(
            "Precedence: command line > environment (PACKET_FLOW_*) > TOML config file > "
            f"defaults, except that {CONFIG_ENV} overrides --config-file, as in the Rust "
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
    parser.add_argument("--version", action="version", version=f"packet-flow {__version__}",
                        help="print the version and exit")
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
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("--config-file", "--config_file", dest="config_file")
    try:
        given = pre.parse_known_args(argv)[0].config_file
    except argparse.ArgumentError:
        given = None
    if env.get(CONFIG_ENV):
        beaten = f", which overrides --config-file {given} from cli" \
            if given and given != env[CONFIG_ENV] else ""
        return env[CONFIG_ENV], f"env {CONFIG_ENV}{beaten}"
    return (given, "cli") if given else (None, "default")


def _warn_unknown_env(env: Mapping[str, str]) -> None:
    """Warn once per PACKET_FLOW_* variable that is no option's but close to one's name (a
    typo such as PACKET_FLOW_RAET); others (compose file variables) are left alone."""
    known = {o.env: o for o in OPTS}
    for name in sorted(env):
        if not name.startswith(defaults.ENV_PREFIX) or name in known or name == CONFIG_ENV:
            continue
        close = difflib.get_close_matches(name, [*known, CONFIG_ENV], 1, 0.8)
        if close:
            flag = f"--{known[close[0]].name}" if close[0] in known else "--config-file"
            log.warning("environment variable %s is not packet-flow's and is ignored: did you "
                        "mean %s (%s)?", name, close[0], flag)


# --- load -------------------------------------------------------------------------------------------


FLAG = object()
"""What the user typed for a boolean option given on the command line: the flag itself."""


def _fail(name: str, value: Any, source: str, reason: str) -> ConfigError:
    """The one-line error; `value` is what the user typed (FLAG: a bare command-line flag)."""
    opt = BY_NAME.get(name)
    if value is None:
        return ConfigError(f"option --{name}: not set ({source}): {reason}")
    if value is FLAG:
        return ConfigError(f"option --{name} from {source}: {reason}")
    shown = opt.shown(value) if opt is not None else value
    if isinstance(shown, list):
        shown = ",".join(shown)
    return ConfigError(f"option --{name}: value {shown!r} from {source}: {reason}")


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
    for opt in OPTS:
        if opt.kind == "bool" and opt.env in env and env[opt.env].lower() not in TRUE + FALSE:
            raise _fail(opt.name, env[opt.env], f"env {opt.env}",
                        "not a boolean (1/0/true/false/yes/no)")

    _warn_unknown_env(env)
    path, path_source = _config_path(argv, env)
    generate = "--generate-config" in argv or env.get(opt_env("generate-config"), "").lower() in TRUE
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
    for opt in OPTS:
        dest = opt.dest
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
    typed: dict[str, Any] = {}
    for opt in OPTS:
        value, source = raw[opt.name], sources[opt.name]
        typed[opt.name] = _typed(opt, value, source, env)
        try:
            vals[opt.name] = None if value is None and opt.kind != "bool" else opt.conv(value)
        except Bad as e:
            raise _fail(opt.name, typed[opt.name], source, str(e)) from None
    return _finish(vals, sources, typed, generate)


def _typed(opt: Opt, value: Any, source: str, env: Mapping[str, str]) -> Any:
    """What the user typed for an option, as errors show it."""
    if source.startswith("env "):
        return env[opt.env]
    if opt.kind == "bool":
        if source == "cli":
            return FLAG
        return toml_value(bool(value)) if isinstance(value, bool) else value
    if source == "default" and value is not None and not isinstance(value, str):
        return toml_value(value)
    return value


def _check_jsonl_paths(outputs: tuple[str, ...], source: str) -> None:
    """A jsonl:PATH or json:PATH output must be a file in an existing folder (checked before
    the run starts)."""
    for item in outputs:
        kind, _, path = item.partition(":")
        if kind not in ("jsonl", "json") or path == "-":
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise _fail("output", item, source, f"{path!r} is a folder, not a file")
        if not os.path.isdir(folder):
            raise _fail("output", item, source, f"folder {folder!r} of {path!r} does not exist")


def _check_thresholds(vals: dict, bad) -> None:
    """A threshold needs a run that measures its field (verdict.FIELDS)."""
    rtt, receives = vals["rtt"] and vals["mode"] == "sender", vals["mode"] != "sender"
    for name in ("max-loss", "max-owd-p99", "max-rtt-p99", "max-jitter", "min-received"):
        if vals[name] is None:
            continue
        if name == "max-rtt-p99" and not rtt:
            raise bad(name, "needs --rtt (--mode sender)")
        if name == "max-owd-p99" and not receives:
            raise bad(name, f"needs a receiving side: --mode receiver, both or reflector, "
                      f"not {vals['mode']!r}")
        if not (receives or rtt):
            raise bad(name, "needs a receiving side (--mode receiver, both or reflector) "
                      "or --rtt")


# what to do instead of --rtt in a mode that sends no probes of its own to time
_RTT_HINT = {"both": "run the peer with --mode reflector",
             "receiver": "give --rtt to the sender and run this side with --mode reflector",
             "reflector": "give --rtt to the sender that probes this reflector"}


def opt_env(name: str) -> str:
    """The environment variable of an option, e.g. opt_env("rate") == "PACKET_FLOW_RATE"."""
    return BY_NAME[name].env


def _finish(vals: dict, sources: dict, typed: dict, generate: bool) -> Config:
    """Cross-option rules: secrets from files, outputs, timeouts, credentials, action."""

    def bad(name: str, reason: str) -> ConfigError:
        return _fail(name, typed[name], sources[name], reason)

    if vals["generate-config"] and vals["print-config"]:
        raise bad("print-config", "cannot be combined with --generate-config")
    if vals["generate-config"] and not vals["config-file"]:
        raise bad("generate-config", "needs --config-file PATH to write to")
    for from_file, direct in ((o.name, o.file_of) for o in OPTS if o.file_of):
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
    if vals["rtt"] and vals["mode"] in _RTT_HINT:
        raise bad("rtt", f"works in --mode sender or mesh only, not --mode {vals['mode']} "
                  f"({sources['mode']}): {_RTT_HINT[vals['mode']]}")
    if vals["rtt"] and vals["wire"] == "legacy":
        raise bad("rtt", f"needs --wire native or stamp, not legacy ({sources['wire']}): "
                  "legacy packets cannot carry reflector timestamps")
    if vals["reflect-authenticated"] and (vals["key"] is None or vals["wire"] != "native"):
        raise bad("reflect-authenticated",
                  "needs --key and --wire native: only native probes carry a tag")
    _check_thresholds(vals, bad)
    if vals["forget-timeout"] <= vals["stall-timeout"]:
        raise bad("forget-timeout", f"must be greater than --stall-timeout "
                  f"{vals['stall-timeout']:g} ({sources['stall-timeout']})")

    outputs = vals["output"]
    enabled_by = [o.name for o in OPTS
                  if o.enables_influx and sources[o.name] != "default" and vals[o.name]]
    if enabled_by and "influx" not in outputs:
        outputs += ("influx",)
    action = "generate" if vals["generate-config"] else "print" if vals["print-config"] else "run"
    missing = []
    if "influx" in outputs and vals["mode"] in ("receiver", "both") and not generate:
        why = (f"--{enabled_by[0]} from {sources[enabled_by[0]]}" if enabled_by
               else f"--output from {sources['output']}")
        if vals["username"] and not vals["password"]:
            missing.append(_fail("password", None, sources["password"],
                                 f"--username from {sources['username']} needs a password too"))
        elif not vals["token"] and not (vals["username"] and vals["password"]):
            missing.append(_fail("token", None, sources["token"],
                                 f"mode {vals['mode']!r} writes to InfluxDB ({why}) and needs "
                                 "--token or --username and --password"))
    if missing and action != "print":   # --print-config shows the rest and says what is missing
        raise missing[0]
    if action == "run":
        _check_jsonl_paths(outputs, sources["output"])
    kwargs = {BY_NAME[n].field: v for n, v in vals.items()}
    kwargs.update(action=action, outputs=outputs, sources=dict(sources),
                  missing=tuple(str(e) for e in missing))
    return Config(**kwargs)


