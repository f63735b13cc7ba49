"""Command line: `packet-flow [options]` runs the probe, `packet-flow report ...` reads
a JSON-lines run. Errors the user can fix become one line on stderr and an exit status
(2 for configuration, 1 for run-time failures), never a traceback."""

import logging
import sys

from packet_flow import config, config_render
from packet_flow.errors import ConfigError, PacketFlowError
from packet_flow.masking import mask

log = logging.getLogger("packet_flow")


def _fail(msg, code):
    """One line on stderr; ConfigErrors are masked by field already, other text by mask()."""
    text = str(msg) if isinstance(msg, ConfigError) else mask(str(msg))
    print(f"packet-flow: error: {text}", file=sys.stderr)
    return code


def main(argv=None):
    """Entry point of the `packet-flow` console script and `python -m packet_flow`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["report"], ["search"]):
        import importlib
        module = {"report": "packet_flow.report", "search": "packet_flow.rate_search"}[argv[0]]
        try:
            return importlib.import_module(module).main(argv[1:])
        except PacketFlowError as exc:
            return _fail(exc, exc.exit_code)
        except OSError as exc:
            return _fail(f"{exc.strerror or exc} ({type(exc).__name__})", 1)
    try:
        cfg = config.load(argv)
    except PacketFlowError as exc:
        return _fail(exc, exc.exit_code)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if cfg.action == "generate":
            print(config_render.write_default_config(cfg.config_file, cfg.force,
                                                     cfg.sources["config-file"]))
            return 0
        if cfg.action == "print":
            print(config_render.render_toml(cfg))
            return 0
        config_render.log_config(cfg, log)          # every value, at debug level
        from packet_flow import run
        # the start-up line comes once the sockets are open (a socket error comes alone)
        verdict = run.run(cfg, started=lambda bound: log.info("%s", config_render.summary_line(bound)))
        for line in verdict.lines():
            print(line, file=sys.stderr)
        return verdict.status
    except PacketFlowError as exc:
        return _fail(exc, exc.exit_code)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc} ({type(exc).__name__})", 1)
    except KeyboardInterrupt:
        return 130
