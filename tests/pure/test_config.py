"""packet_flow.config: layering, config files, validation messages, secrets. Pure tests (no sockets
beyond getaddrinfo on literal addresses and `localhost`)."""

import logging
import socket
import tomllib
from pathlib import Path

import pytest

from packet_flow import cli, config, config_render, defaults, masking, options
from packet_flow.addresses import Addr
from packet_flow.errors import ConfigError

DATA = Path(__file__).parent.parent / "data"
TOKEN = "tok-0123456789abcdef"
PASSWORD = "pw-hunter2-very-secret"
KEY = "k3y-shared-secret-value"


def toml_file(tmp_path, text, name="pf.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error(argv=(), env=None):
    with pytest.raises(ConfigError) as info:
        config.load(list(argv), env or {})
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- layering ------------------------------------------------------------------------------------

# one option of each type: (option, env var, TOML key, cli/env text, TOML text, Config field, value)
TYPED = {
    "str": ("--database", "PACKET_FLOW_DATABASE", "database", "db_{}", '"db_{}"', "database",
            "db_{}"),
    "float": ("--rate", "PACKET_FLOW_RATE", "rate", "1{}.5", "1{}.5", "rate_ms", 10.5),
    "int": ("--dscp", "PACKET_FLOW_DSCP", "dscp", "1{}", "1{}", "dscp", 10),
    "list": ("--output", "PACKET_FLOW_OUTPUT", "output", "jsonl:/tmp/{}.jsonl",
             '["jsonl:/tmp/{}.jsonl"]', "outputs", ("jsonl:/tmp/{}.jsonl",)),
}
LAYERS = ("cli", "env", "file")


def layered(tmp_path, kind, layers):
    """Set the option of `kind` in each of `layers`, each layer with its own digit."""
    opt, env_var, key, text, toml_text, _, _ = TYPED[kind]
    argv, env = [], {}
    digits = {"cli": 1, "env": 2, "file": 3}
    if "file" in layers:
        env_path = toml_file(tmp_path, f"{key} = {toml_text.format(digits['file'])}\n")
        argv += ["--config-file", env_path]
    if "env" in layers:
        env[env_var] = text.format(digits["env"])
    if "cli" in layers:
        argv += [opt, text.format(digits["cli"])]
    return config.load(argv, env), digits


def expected(kind, digit):
    value = TYPED[kind][6]
    if isinstance(value, str):
        return value.format(digit)
    if isinstance(value, tuple):
        return tuple(v.format(digit) for v in value)
    return type(value)(str(value).replace("0", str(digit), 1))


@pytest.mark.parametrize("kind", sorted(TYPED))
@pytest.mark.parametrize(
    "layers", [("cli",), ("env",), ("file",), ("cli", "env"), ("cli", "file"), ("env", "file"),
               ("cli", "env", "file")],
)
def test_higher_layer_wins(tmp_path, kind, layers):
    cfg, digits = layered(tmp_path, kind, layers)
    winner = layers[0]                      # LAYERS order is the precedence order
    field, name = TYPED[kind][5], TYPED[kind][0][2:]
    assert getattr(cfg, field) == expected(kind, digits[winner])
    source = {"cli": "cli", "env": f"env {TYPED[kind][1]}", "file": f"file {cfg.config_file}"}
    assert cfg.sources[name] == source[winner]


@pytest.mark.parametrize("kind", sorted(TYPED))
def test_default_when_no_layer_sets_it(kind):
    cfg = config.load([], {})
    name, field = TYPED[kind][0][2:], TYPED[kind][5]
    want = {"str": defaults.DATABASE, "float": defaults.RATE_MS, "int": defaults.DSCP,
            "list": (defaults.OUTPUT,)}[kind]
    assert getattr(cfg, field) == want
    assert cfg.sources[name] == "default"


@pytest.mark.parametrize(
    "cli, env, file, want, source",
    [
        (None, None, None, False, "default"),
        (None, None, "true", True, "file"),
        (None, "0", "true", False, "env"),       # env false beats file true
        (None, "yes", "false", True, "env"),
        ("--no-rtt", "1", "true", False, "cli"),  # cli false beats env and file true
        ("--rtt", "false", "false", True, "cli"),
        ("--rtt", None, None, True, "cli"),
    ],
)
def test_bool_layers(tmp_path, cli, env, file, want, source):
    argv, environ = ["-m", "sender"], {}
    if file is not None:
        argv += ["--config-file", toml_file(tmp_path, f"rtt = {file}\n")]
    if env is not None:
        environ["PACKET_FLOW_RTT"] = env
    if cli is not None:
        argv.append(cli)
    cfg = config.load(argv, environ)
    assert cfg.rtt is want
    assert cfg.sources["rtt"].split()[0] == source


def test_short_flags_and_combined_short_form():
    cfg = config.load(["-m", "sender", "-r5", "-i", "http://db:8086", "-d", "x", "-t", TOKEN,
                       "-u", "me", "-p", PASSWORD], {"PACKET_FLOW_RATE": "7"})
    assert (cfg.mode, cfg.rate_ms, cfg.influx_url, cfg.database) == ("sender", 5.0,
                                                                      "http://db:8086", "x")
    assert (cfg.token, cfg.username, cfg.password) == (TOKEN, "me", PASSWORD)
    assert cfg.sources["rate"] == "cli"


def test_empty_env_var_counts_as_unset():
    cfg = config.load([], {"PACKET_FLOW_TOKEN": "", "PACKET_FLOW_RTT": "", "PACKET_FLOW_RATE": ""})
    assert cfg.token is None and cfg.rtt is False and cfg.rate_ms == defaults.RATE_MS
    assert not cfg.influx_enabled


def test_env_list_value_with_commas():
    cfg = config.load([], {"PACKET_FLOW_OUTPUT": "console, jsonl:-"})
    assert cfg.outputs == ("console", "jsonl:-")
    assert config.load(["--output", "jsonl:a", "--output", "console,jsonl:a"], {}).outputs == (
        "jsonl:a", "console")


# --- config file -----------------------------------------------------------------------------------

def test_config_file_env_overrides_cli_flag(tmp_path):
    from_env = toml_file(tmp_path, "rate = 20\n", "env.toml")
    from_cli = toml_file(tmp_path, "rate = 30\n", "cli.toml")
    cfg = config.load(["--config-file", from_cli], {"PACKET_FLOW_CONFIG_FILE": from_env})
    assert cfg.rate_ms == 20.0
    assert cfg.config_file == from_env
    assert cfg.sources["config-file"] == (f"env PACKET_FLOW_CONFIG_FILE, which overrides "
                                          f"--config-file {from_cli} from cli")
    assert cfg.sources["rate"] == f"file {from_env}"
    # the underscore spelling of the flag, and the flag alone
    cfg = config.load(["--config_file", from_cli], {})
    assert (cfg.rate_ms, cfg.sources["config-file"]) == (30.0, "cli")


def test_rust_original_config_file_loads_unchanged():
    path = str(DATA / "config_rust_original.toml")
    cfg = config.load([], {"PACKET_FLOW_CONFIG_FILE": path})
    assert cfg.mode == "sender"
    assert str(cfg.local) == str(cfg.remote) == "127.0.0.1:8001"
    assert cfg.rate_ms == 10.0 and isinstance(cfg.rate_ms, float)
    assert cfg.influx_url == "http://influxdb.example.net:8086"
    assert cfg.database == "packet_monitor"
    assert cfg.token == "rqEqiV9z3iBWLsy0pGIN-example-token=="
    assert cfg.influx_enabled and cfg.outputs == ("console", "influx")
    assert cfg.sources["local-addr"] == f"file {path}"


def test_dash_and_underscore_keys(tmp_path):
    path = toml_file(tmp_path, 'local-addr = "127.0.0.1:9001"\nstall_timeout = 2\n'
                               'forget-timeout = 3.5\nauth-basic = true\n')
    cfg = config.load(["--config-file", path], {})
    assert (cfg.local.port, cfg.stall_timeout, cfg.forget_timeout, cfg.auth_basic) == (
        9001, 2.0, 3.5, True)


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "red"\n', "config file {path}: unknown key 'colour'"),
        ('[packet_flow]\nrate = 5\n', "config file {path}: unknown key 'packet_flow'"),
        ('config_file = "x.toml"\n',
         "config file {path}: 'config_file' can only be given on the command line or in the "
         "environment"),
        ('local_addr = "1.2.3.4:5"\nlocal-addr = "1.2.3.4:6"\n',
         "config file {path}: key 'local-addr' is given twice (- and _ spellings)"),
        ('rate = true\n',
         "option --rate: value True from file {path}: expected a number or a time like "
         '"10ms", got TOML bool'),
        ('batch = "10"\n',
         "option --batch: value '10' from file {path}: expected an integer, got TOML str"),
        ("dscp = 1.5\n", "option --dscp: value 1.5 from file {path}: expected an integer, "
                         "got TOML float"),
        ('rtt = "yes"\n', "option --rtt: value 'yes' from file {path}: expected true or false, "
                          "got TOML str"),
        ("token = 12345\n", "option --token: value '***' from file {path}: expected a string, "
                            "got TOML int"),
        ('output = ["console", 3]\n', "option --output: value ['console', 3] from file {path}: "
                                      "expected a string or a list of strings, got TOML list"),
        ("rate = 5\nrate = 6\n", "config file {path}: not valid TOML: "),
        ("rate = 0\n", "option --rate: value '0' from file {path}: must be between 0.0001 and "
                       "3.6e+06"),
    ],
)
def test_bad_config_file(tmp_path, text, message):
    path = toml_file(tmp_path, text)
    assert error(["--config-file", path]).startswith(message.format(path=path))


def test_missing_config_file_names_option_and_source(tmp_path):
    path = str(tmp_path / "nope.toml")
    assert error([], {"PACKET_FLOW_CONFIG_FILE": path}) == (
        f"option --config-file: value '{path}' from env PACKET_FLOW_CONFIG_FILE: "
        "cannot read: No such file or directory")


def test_generate_config_writes_every_default_and_loads_back(tmp_path):
    path = str(tmp_path / "gen.toml")
    cfg = config.load(["--generate-config", "--config-file", path], {})   # file does not exist yet
    assert (cfg.action, cfg.config_file, cfg.force) == ("generate", path, False)
    assert config_render.write_default_config(path, cfg.force) == (
        f"packet-flow: wrote {path} (named by cli): every setting commented out, uncomment a "
        "line to change it")
    text = Path(path).read_text()
    for opt in options.OPTS:
        if opt.in_file:
            assert f"{opt.key} = " in text, opt.key
    loaded = config.load(["--config-file", path], {})
    default = config.load([], {})
    for field in ("mode", "local", "remote", "rate_ms", "outputs", "dscp", "rtt", "batch",
                  "database", "influx_url", "token", "forget_timeout", "spool_dir"):
        assert getattr(loaded, field) == getattr(default, field), field
    assert not loaded.influx_enabled
    # a template: every line is commented out, so nothing comes from the file ...
    assert {s for n, s in loaded.sources.items() if n != "config-file"} == {"default"}
    # ... until a line is uncommented
    Path(path).write_text(Path(path).read_text().replace("# rate = 1000.0", "rate = 20"))
    assert config.load(["--config-file", path], {}).sources["rate"] == f"file {path}"
    # refuses to overwrite unless forced
    with pytest.raises(ConfigError, match=r"exists \(cli\); add --force") as info:
        config_render.write_default_config(path, False, "cli")
    assert info.value.exit_code == 2
    Path(path).write_text("junk")
    config_render.write_default_config(path, True)
    assert Path(path).read_text() == config_render.default_toml()


# --- validation errors -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["-m", "server"], {}, "option --mode: value 'server' from cli: must be one of sender, "
                               "receiver, both, reflector"),
        ([], {"PACKET_FLOW_MODE": "x"}, "option --mode: value 'x' from env PACKET_FLOW_MODE: "
                                        "must be one of sender, receiver, both, reflector"),
        (["--local-addr", "0.0.0.0"], {}, "option --local-addr: value '0.0.0.0' from cli: "
                                          "expected host:port"),
        (["--local-addr", "::1:8000"], {}, "option --local-addr: value '::1:8000' from cli: an "
                                           "IPv6 address needs brackets: [v6addr]:port"),
        (["--remote-addr", "[::1]8000"], {}, "option --remote-addr: value '[::1]8000' from cli: "
                                             "expected [v6addr]:port"),
        (["--remote-addr", "1.2.3.4:0"], {}, "option --remote-addr: value '1.2.3.4:0' from cli: "
                                             "port 0 is out of range"),
        (["--remote-addr", "1.2.3.4:70000"], {}, "option --remote-addr: value '1.2.3.4:70000' "
                                                 "from cli: port 70000 is out of range"),
        (["--remote-addr", "1.2.3.4:http"], {}, "option --remote-addr: value '1.2.3.4:http' from "
                                                "cli: port 'http' is not a number"),
        (["--remote-addr", ":8000"], {}, "option --remote-addr: value ':8000' from cli: the host "
                                         "is missing"),
        (["--remote-addr", "no-such-host.invalid:8000"], {},
         "option --remote-addr: value 'no-such-host.invalid:8000' from cli: cannot resolve "
         "'no-such-host.invalid': "),
        (["-r", "abc"], {}, "option --rate: value 'abc' from cli: not a number"),
        ([], {"PACKET_FLOW_RATE": "abc"},
         "option --rate: value 'abc' from env PACKET_FLOW_RATE: not a number"),
        (["-r", "nan"], {}, "option --rate: value 'nan' from cli: not a finite number"),
        (["-r", "0.00001"], {}, "option --rate: value '0.00001' from cli: must be between 0.0001 "
                                "and 3.6e+06"),
        (["-r", "3600001"], {}, "option --rate: value '3600001' from cli: must be between 0.0001 "
                                "and 3.6e+06"),
        (["--interval", "0"], {}, "option --interval: value '0' from cli: must be at least 0.001"),
        (["--interval", "1e-10"], {},
         "option --interval: value '1e-10' from cli: must be at least 0.001"),
        ([], {"PACKET_FLOW_INTERVAL": "0.0009"},
         "option --interval: value '0.0009' from env PACKET_FLOW_INTERVAL: must be at least 0.001"),
        (["--flush-interval", "1e-12"], {},
         "option --flush-interval: value '1e-12' from cli: must be 0 or at least 0.001"),
        (["--duration", "-1"], {}, "option --duration: value '-1' from cli: must be at least 0"),
        (["--count", "1.5"], {}, "option --count: value '1.5' from cli: not an integer"),
        (["--size", "70000"], {}, "option --size: value '70000' from cli: must be between 0 and "
                                  "65507"),
        (["--dscp", "64"], {}, "option --dscp: value '64' from cli: must be between 0 and 63"),
        (["--ttl", "256"], {}, "option --ttl: value '256' from cli: must be between 0 and 255"),
        (["--batch", "0"], {}, "option --batch: value '0' from cli: must be between 1 and 1024"),
        (["--wire", "json"], {}, "option --wire: value 'json' from cli: must be one of native, "
                                 "legacy, stamp"),
        (["--timer", "lazy"], {}, "option --timer: value 'lazy' from cli: must be one of "
                                  "precise, economy"),
        (["--log-level", "loud"], {}, "option --log-level: value 'loud' from cli: must be one of "
                                      "debug, info, warning, error, critical"),
        (["--output", "csv"], {}, "option --output: value 'csv' from cli: unknown output 'csv': "
                                  "use console, jsonl:PATH, json:PATH or influx"),
        (["--output", "jsonl"], {}, "option --output: value 'jsonl' from cli: jsonl needs a path: "
                                    "jsonl:PATH (jsonl:- for stdout)"),
        (["--stall-timeout", "10", "--forget-timeout", "10"], {},
         "option --forget-timeout: value '10' from cli: must be greater than --stall-timeout 10 "
         "(cli)"),
        (["-i", "ftp://db:8086", "-t", TOKEN], {},
         "option --influx-url: value 'ftp://db:8086' from cli: the scheme must be http or https"),
        (["-i", "http://:8086", "-t", TOKEN], {},
         "option --influx-url: value 'http://:8086' from cli: the URL has no host"),
        (["-i", "http://db:port", "-t", TOKEN], {},
         "option --influx-url: value 'http://db:port' from cli: not a URL "),
        (["-d", " "], {}, "option --database: value ' ' from cli: must not be empty"),
        ([], {"PACKET_FLOW_RTT": "maybe"},
         "option --rtt: value 'maybe' from env PACKET_FLOW_RTT: not a boolean "
         "(1/0/true/false/yes/no)"),
        # --rtt in a mode that sends no probes of its own (it was ignored)
        (["-m", "reflector", "--rtt"], {},
         "option --rtt from cli: works in --mode sender or mesh only, not --mode reflector "
         "(cli): give --rtt to the sender that probes this reflector"),
        ([], {"PACKET_FLOW_RTT": "yes"},
         "option --rtt: value 'yes' from env PACKET_FLOW_RTT: works in --mode sender or mesh "
         "only, not --mode receiver (default): give --rtt to the sender and run this side with "
         "--mode reflector"),
        # credentials: a receiver or both needs them once an InfluxDB sink is configured
        ([], {"PACKET_FLOW_INFLUX_URL": "http://db:8086"},
         "option --token: not set (default): mode 'receiver' writes to InfluxDB (--influx-url "
         "from env PACKET_FLOW_INFLUX_URL) and needs --token or --username and --password"),
        (["-m", "both", "--output", "influx"], {},
         "option --token: not set (default): mode 'both' writes to InfluxDB (--output from cli) "
         "and needs --token or --username and --password"),
        (["-u", "me"], {}, "option --password: not set (default): --username from cli needs a "
                           "password too"),
        # usage errors become one-line ConfigErrors too
        (["--token"], {}, "argument -t/--token: expected one argument (see --help)"),
        (["--bogus"], {}, "unrecognized arguments: --bogus (see --help)"),
        (["--generate-config"], {}, "option --generate-config from cli: needs "
                                    "--config-file PATH to write to"),
        (["--generate-config", "--print-config", "--config-file", "x"], {},
         "option --print-config from cli: cannot be combined with --generate-config"),
    ],
)
def test_validation_error_messages(argv, env, message):
    assert error(argv, env).startswith(message)


def test_config_errors_exit_2_with_one_line(tmp_path, capsys):
    """Issue 13.4: an interval of 0 ns and a jsonl file in a missing folder are configuration
    errors naming the option, the value, its source and the path, before anything starts."""
    missing = tmp_path / "no-such-folder" / "run.jsonl"
    cases = [
        (["-m", "both", "--interval", "1e-10"], {},
         "option --interval: value '1e-10' from cli: must be at least 0.001 s"),
        (["-m", "both", "--output", f"console,jsonl:{missing}"], {},
         f"option --output: value 'jsonl:{missing}' from cli: folder "
         f"'{missing.parent}' of '{missing}' does not exist"),
        (["-m", "both"], {"PACKET_FLOW_OUTPUT": f"jsonl:{tmp_path}"},
         f"option --output: value 'jsonl:{tmp_path}' from env PACKET_FLOW_OUTPUT: "
         f"'{tmp_path}' is a folder, not a file"),
    ]
    for argv, env, message in cases:
        assert error(argv, env) == message
    # through the command line: exit status 2 and exactly one line on stderr
    assert cli.main(["-m", "both", "--output", f"jsonl:{missing}"]) == 2
    assert capsys.readouterr().err == (
        f"packet-flow: error: option --output: value 'jsonl:{missing}' from cli: folder "
        f"'{missing.parent}' of '{missing}' does not exist\n")
    assert cli.main(["-m", "receiver", "--rtt"]) == 2
    assert capsys.readouterr().err == (
        "packet-flow: error: option --rtt from cli: works in --mode sender or mesh only, not "
        "--mode receiver (cli): give --rtt to the sender and run this side with --mode "
        "reflector\n")
    assert cli.main(["-m", "both", "--interval", "0.0001", "--duration", "1"]) == 2
    assert capsys.readouterr().err == (
        "packet-flow: error: option --interval: value '0.0001' from cli: must be at least 0.001 s\n")
    # printing the configuration does not need the folder; 1 ms intervals are fine
    cfg = config.load(["--print-config", "--interval", "0.001", "--flush-interval", "0",
                       "--output", f"jsonl:{missing}"], {})
    assert (cfg.action, cfg.interval, cfg.flush_interval) == ("print", 0.001, 0.0)
    assert not missing.parent.exists()


def test_secret_file_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert error(["--token-file", str(empty)]) == (
        f"option --token-file: value '{empty}' from cli: the file is empty")
    missing = str(tmp_path / "missing")
    assert error([], {"PACKET_FLOW_PASSWORD_FILE": missing}) == (
        f"option --password-file: value '{missing}' from env PACKET_FLOW_PASSWORD_FILE: "
        "cannot read: No such file or directory")
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    message = error(["-t", "x", "--token-file", str(secret)])
    assert message == (f"option --token-file: value '{secret}' from cli: --token is given too "
                       "(cli); give only one")


# --- values, addresses, outputs, credentials ----------------------------------------------------

def test_addresses():
    cfg = config.load(["-m", "sender", "--local-addr", "[::1]:0", "--remote-addr",
                       "127.0.0.1:9000"], {})
    assert cfg.local == Addr("::1", 0, socket.AF_INET6, cfg.local.sockaddr)
    assert cfg.local.sockaddr[:2] == ("::1", 0)
    assert str(cfg.local) == "[::1]:0"
    assert (cfg.remote.family, cfg.remote.sockaddr, str(cfg.remote)) == (
        socket.AF_INET, ("127.0.0.1", 9000), "127.0.0.1:9000")
    named = config.load(["--remote-addr", "localhost:9000"], {}).remote
    assert named.host == "localhost" and named.port == 9000
    assert named.family in (socket.AF_INET, socket.AF_INET6)


def test_influx_enabled_by_settings_adds_the_output():
    assert config.load([], {}).outputs == ("console",)
    cfg = config.load([], {"PACKET_FLOW_TOKEN": TOKEN})
    assert cfg.influx_enabled and cfg.outputs == ("console", "influx")
    cfg = config.load(["--output", "jsonl:-", "-u", "me", "-p", PASSWORD], {})
    assert cfg.outputs == ("jsonl:-", "influx")
    # a sender (or reflector) needs no credentials; neither does the console default
    assert config.load(["-m", "sender", "-i", "http://db:8086"], {}).influx_enabled
    assert config.load(["-m", "reflector", "--output", "influx"], {}).influx_enabled
    assert not config.load(["-m", "both"], {}).influx_enabled


def test_secrets_from_files(tmp_path):
    (tmp_path / "t").write_text(TOKEN + "\n")
    (tmp_path / "p").write_text(PASSWORD)
    (tmp_path / "k").write_bytes(b"\x00\xffbinary-key\n")
    cfg = config.load(["--token-file", str(tmp_path / "t"), "--key-file", str(tmp_path / "k")],
                      {"PACKET_FLOW_PASSWORD_FILE": str(tmp_path / "p"),
                       "PACKET_FLOW_USERNAME": "me"})
    assert (cfg.token, cfg.password, cfg.key) == (TOKEN, PASSWORD, b"\x00\xffbinary-key")
    assert cfg.token_file == str(tmp_path / "t")
    # a higher layer's direct value beats a lower layer's file
    cfg = config.load(["-t", "from-cli-token"], {"PACKET_FLOW_TOKEN_FILE": str(tmp_path / "t")})
    assert cfg.token == "from-cli-token"
    assert config.load(["--key", KEY], {}).key == KEY.encode()


def test_typed_values():
    cfg = config.load(["--count", "1_000", "--flush-interval", "0.5", "--rcvbuf", "0",
                       "--compat-max-pps", "5", "--log-level", "DEBUG", "-m", "Sender"], {})
    assert (cfg.count, cfg.flush_interval, cfg.rcvbuf, cfg.compat_max_pps) == (1000, 0.5, 0, 5)
    assert (cfg.log_level, cfg.mode, cfg.action) == ("debug", "sender", "run")
    assert config.load(["--print-config"], {}).action == "print"


# --- secrets never shown -------------------------------------------------------------------------

def secret_cfg(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    return config.load(["-m", "both", "-i", "http://db:8086", "-t", TOKEN, "-u", "me",
                        "--key-file", str(key_file)], {"PACKET_FLOW_PASSWORD": PASSWORD})


def assert_no_secret(text):
    for secret in (TOKEN, PASSWORD, KEY):
        assert secret not in text


def test_print_config_masks_and_names_sources(tmp_path):
    cfg = secret_cfg(tmp_path)
    text = config_render.render_toml(cfg)
    assert_no_secret(text)
    assert 'token = "***"  # cli' in text
    assert 'password = "***"  # env PACKET_FLOW_PASSWORD' in text
    assert 'key = "***"  # read from --key-file' in text
    assert 'influx_url = "http://db:8086"  # cli' in text
    assert '# influx_url = "http://localhost:8086"  # default' in config_render.render_toml(
        config.load([], {}))
    assert "rate = 1000.0  # default" in text
    assert 'output = ["console", "influx"]  # default' in text
    data = tomllib.loads(text)                 # valid TOML, typed values
    assert data["rate"] == 1000.0 and data["dscp"] == 0 and data["rtt"] is False
    plain = config_render.render_toml(cfg, commented_sources=False)
    assert "  # " not in plain and 'rate = 1000.0\n' in plain


def test_print_config_output_loads_back(tmp_path):
    cfg = config.load(["-m", "sender", "-r", "2.5", "--dscp", "46", "--rtt",
                       "--remote-addr", "[::1]:9000"], {})
    path = toml_file(tmp_path, config_render.render_toml(cfg))
    again = config.load(["--config-file", path], {})
    for field in ("mode", "rate_ms", "dscp", "rtt", "remote", "outputs", "batch", "interval"):
        assert getattr(again, field) == getattr(cfg, field), field


def test_log_config_is_masked(tmp_path, caplog):
    cfg = secret_cfg(tmp_path)
    logger = logging.getLogger("packet_flow.test")
    with caplog.at_level(logging.INFO, logger="packet_flow.test"):
        config_render.log_config(cfg, logger)      # at debug level: not shown at info
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger="packet_flow.test"):
        config_render.log_config(cfg, logger)
        logger.info("connecting with token=%s to %s", cfg.token, cfg.influx_url)
        logger.info("auth header Authorization: Token %s", cfg.token)
    assert [r.levelno for r in caplog.records] == (
        [logging.DEBUG] * len(config_render.render_toml(cfg).splitlines()) + [logging.INFO] * 2)
    logged = "\n".join(masking.mask(r.getMessage()) for r in caplog.records)
    assert_no_secret(logged)
    assert "config: token = \"***\"  # cli" in logged
    # the lines log_config wrote carry no secret even before any further masking
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records[:-2]))
    assert TOKEN not in repr(cfg) and PASSWORD not in repr(cfg)


def test_error_message_with_url_credentials_is_masked():
    message = error(["-i", f"ftp://admin:{PASSWORD}@db:8086", "-t", TOKEN])
    assert message == ("option --influx-url: value 'ftp://admin:***@db:8086' from cli: the scheme "
                       "must be http or https")
    message = error(["--token", TOKEN, "--token-file", "/nonexistent"])
    assert_no_secret(message)


@pytest.mark.parametrize(
    "text, masked",
    [
        (f"GET http://me:{PASSWORD}@db:8086/write", "GET http://me:***@db:8086/write"),
        (f"PACKET_FLOW_TOKEN={TOKEN} rest", "PACKET_FLOW_TOKEN=*** rest"),
        (f"--password={PASSWORD}", "--password=***"),
        (f"{{'token': '{TOKEN}', 'x': 1}}", "{'token': '***', 'x': 1}"),
        (f"Authorization: Token {TOKEN}", "Authorization: Token ***"),
        (f"api_key = {KEY}", "api_key = ***"),
        ("option --token: value '***' from cli: x", "option --token: value '***' from cli: x"),
        ("keyboard: fine; monkey=ok; token_file=/run/secrets/t",
         "keyboard: fine; monkey=ok; token_file=/run/secrets/t"),
    ],
)
def test_mask(text, masked):
    assert masking.mask(text) == masked


def test_secrets_are_masked_by_field_not_by_text(tmp_path, capsys):
    """Issue 15.4: a password "8000" must not turn 0.0.0.0:8000 into 0.0.0.0:***."""
    (tmp_path / "key").write_text("8000\n")
    (tmp_path / "token").write_text("0.0\n")
    argv = ["-m", "both", "-u", "me", "-p", "8000", "--token-file", str(tmp_path / "token"),
            "--key-file", str(tmp_path / "key"), "-i", "http://admin:8000@db:8000/x",
            "--local-addr", "0.0.0.0:8000", "--remote-addr", "127.0.0.1:8000"]
    cfg = config.load(argv, {})
    assert (cfg.password, cfg.key, cfg.token) == ("8000", b"8000", "0.0")
    text = config_render.render_toml(cfg)
    lines = set(text.splitlines())
    for line in ('local_addr = "0.0.0.0:8000"  # cli', 'remote_addr = "127.0.0.1:8000"  # cli',
                 'password = "***"  # cli', 'key = "***"  # read from --key-file',
                 'token = "***"  # read from --token-file', 'rate = 1000.0  # default',
                 'influx_url = "http://admin:***@db:8000/x"  # cli',
                 'stall_timeout = 5.0  # default'):
        assert line in lines, line
    assert text.count("***") == 4
    # an error message names the value of another option in full
    assert cli.main([*argv, "--dscp", "8000"]) == 2
    assert capsys.readouterr().err == (
        "packet-flow: error: option --dscp: value '8000' from cli: must be between 0 and 63\n")
    assert error(["-i", "http://admin:8000@db:0.0", "-p", "8000"]) == (
        "option --influx-url: value 'http://admin:***@db:0.0' from cli: not a URL (Port could "
        "not be cast to integer value as '0.0')")


@pytest.mark.parametrize(
    "argv, shown",
    [
        (["--passwrd", "hunter2"], "--passwrd ***"),
        (["--passwrd=hunter2"], "--passwrd=***"),
        (["--tokn", "-abc-def"], "--tokn ***"),
        (["--api-key", "s3cr3t", "--bogus", "plain"], "--api-key *** --bogus plain"),
        (["--secrets", "--colour", "red"], "--secrets --colour red"),
        (["-P", "hunter2"], "-P ***"),
        (["--bogus", "hunter2"], "--bogus hunter2"),
        (["--tok", "x"], "--tok ***"),
    ],
)
def test_unrecognized_arguments_mask_values_of_secret_looking_flags(argv, shown, capsys):
    assert error(["-r", "5", *argv]) == f"unrecognized arguments: {shown} (see --help)"
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"packet-flow: error: unrecognized arguments: {shown} (see --help)\n")


def test_help_lists_env_vars_and_hides_secrets(capsys):
    with pytest.raises(SystemExit) as info:
        config.load(["--help"], {"PACKET_FLOW_TOKEN": TOKEN, "PACKET_FLOW_PASSWORD": PASSWORD})
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert_no_secret(out)
    flat = " ".join(out.split())
    for opt in options.OPTS:
        assert opt.env in flat.replace("PACKET_FLOW_ ", "PACKET_FLOW_"), opt.env
    assert "PACKET_FLOW_CONFIG_FILE overrides --config-file" in flat
    for flag in ("-m MODE, --mode", "-r RATE, --rate", "-i URL, --influx-url", "-d DATABASE",
                 "-t TOKEN, --token", "-u USERNAME", "-p PASSWORD", "--config_file"):
        assert flag in out


def test_generate_config_from_env_and_process_defaults(tmp_path, monkeypatch):
    path = str(tmp_path / "new.toml")
    cfg = config.load([], {"PACKET_FLOW_GENERATE_CONFIG": "true", "PACKET_FLOW_CONFIG_FILE": path,
                           "PACKET_FLOW_INFLUX_URL": "http://db:8086"})   # no credentials check
    assert (cfg.action, cfg.config_file) == ("generate", path)
    monkeypatch.setattr("sys.argv", ["packet-flow", "--dscp", "8"])
    monkeypatch.setenv("PACKET_FLOW_RATE", "250")
    cfg = config.load()
    assert (cfg.dscp, cfg.rate_ms) == (8, 250.0)
