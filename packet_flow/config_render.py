"""The configuration as text: --print-config, --generate-config, the start-up log line.

Rules: secrets show as "***", masked by field (Opt.shown); every line of --print-config names the
layer its value came from; both documents load back as config files; the --generate-config
template pins nothing (every line commented out); the start-up line names the config file and
where its name came from. TOML is written by toml_value, not the `toml` package: the documents
are mostly comments, which no TOML writer keeps.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ConfigError
from .options import BY_NAME, CONFIG_ENV, OPTS


def toml_value(value: Any) -> str:
    """A value as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def render_toml(cfg, commented_sources: bool = True) -> str:
    """The effective configuration as a TOML document (secrets masked), for --print-config."""
    lines = ["# packet-flow effective configuration"]
    lines += [f"# missing, a run would stop here: {m}" for m in getattr(cfg, "missing", ())]
    if cfg.config_file:
        lines.append(f"# config file: {cfg.config_file} ({cfg.sources.get('config-file')})")
    for opt in OPTS:
        if opt.run_only:
            continue
        value = opt.shown(getattr(cfg, opt.field))
        source = cfg.sources.get(opt.name, "default")
        if opt.secret and value is not None and source == "default":
            source = f"read from --{opt.name}-file"
        if value is None:
            line = f"# {opt.key} is not set"
        elif opt.enables_influx and source == "default":
            line = f"# {opt.key} = {toml_value(value)}"    # set, it would turn InfluxDB on
        else:
            line = f"{opt.key} = {toml_value(value)}"
        if commented_sources:
            line += f"  # {source}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def log_config(cfg, logger) -> None:
    """Log the effective configuration, one line per value, at debug level (secrets masked)."""
    for line in render_toml(cfg).splitlines():
        logger.debug("config: %s", line)


def summary_line(cfg) -> str:
    """The one line a run logs at start at info level: mode, addresses, rate and outputs."""
    parts = [f"mode {cfg.mode}"]
    if cfg.mode != "sender":
        parts.append(f"listening on {cfg.local}")
    if cfg.mode in ("sender", "both"):
        pps = 1000 / cfg.rate_ms
        rate = f"{pps:,.0f}" if pps >= 100 else f"{pps:.3g}"
        source = f" from {cfg.local}" if cfg.mode == "sender" and \
            cfg.sources.get("local-addr", "default") != "default" else ""
        every = f"{cfg.rate_ms:,.0f}" if cfg.rate_ms >= 1e5 else f"{cfg.rate_ms:g}"
        parts.append(f"sending{source} to {cfg.remote} every {every} ms "
                     f"({rate} packets/s)")
    outputs = [f"influx {BY_NAME['influx-url'].shown(cfg.influx_url)}" if out == "influx"
               else out for out in cfg.outputs]
    if getattr(cfg, "prometheus_listen", None) is not None:
        outputs.append(f"prometheus http://{cfg.prometheus_listen}/metrics")
    parts.append("outputs " + ", ".join(outputs))
    if cfg.config_file:
        parts.append(f"config file {cfg.config_file} ({cfg.sources.get('config-file')})")
    return "; ".join(parts)


def default_toml() -> str:
    """The template --generate-config writes: every option with its help and its default, all
    commented out, so the file pins nothing until a line is uncommented (a default that
    depends on other options, such as STAMP's port 862, keeps working)."""
    lines = [
        "# packet-flow configuration (TOML, flat keys; `-` and `_` spellings both work).",
        "# Every setting is commented out and shows its default: uncomment a line to change",
        "# it. Precedence: command line > environment (PACKET_FLOW_*) > this file > defaults;",
        f"# {CONFIG_ENV} overrides --config-file. Setting any InfluxDB option turns on the",
        "# InfluxDB output, and a receiver then needs a token or username and password.",
    ]
    for opt in OPTS:
        if not opt.in_file:
            continue
        value = "" if opt.default is None else opt.default
        lines += ["", f"# {opt.help}  [env var: {opt.env}]",
                  f"# {opt.key} = {toml_value(value)}"]
    return "\n".join(lines) + "\n"


def write_default_config(path: str, force: bool, source: str = "cli") -> str:
    """Write default_toml() to path; refuses to overwrite an existing file unless force.
    Returns the line to tell the user: which file was written and where its name came from."""
    try:
        with open(path, "w" if force else "x", encoding="utf-8") as f:
            f.write(default_toml())
    except FileExistsError:
        raise ConfigError(f"option --generate-config: file {path!r} exists ({source}); "
                          "add --force to overwrite it") from None
    except OSError as e:
        raise ConfigError(f"option --generate-config: cannot write {path!r} ({source}): "
                          f"{e.strerror or e}") from None
    return (f"packet-flow: wrote {path} (named by {source}): every setting commented out, "
            "uncomment a line to change it")
