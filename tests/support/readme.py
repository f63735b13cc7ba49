"""The README's common tasks, parsed out of README.md and run as a user would.

Rules (a new common task follows them, and its commands run without a change to the tests):
- The tasks are the `### ` subsections of `## Common tasks`; their commands are the lines of
  their ```sh blocks (a trailing `\\` continues a line; `#` starts a comment), and each
  ```python block is one script. Prose is not run.
- Each line runs in bash (`set -o pipefail`), in a fresh folder, with `.venv/bin` first on
  PATH, no PACKET_FLOW_* variables, and these rewrites so it stays on loopback and short:
  192.0.2.x and 0.0.0.0 -> 127.0.0.1; ports 8000-8099 -> free UDP ports of the task (one
  each, the same everywhere in the task); 8086 (an InfluxDB) and 9469 (Prometheus) -> free
  TCP ports; `--duration N` -> `--duration 2`;
  `./start_influx.sh` -> the repository's script with PF_PORT set to the InfluxDB port.
- A `packet-flow` command that runs until Ctrl-C (no `--duration`, `--count` or `report`,
  and not --print-config) is started in the background; the task waits until it has bound
  the UDP port of its --local-addr (8000 without one), runs the other commands in order, then sends it SIGINT.
- Every command must exit 0 without a traceback. What each printed is checked by
  `check_output`: a receiver's flow summaries show packets received and none lost, a sender
  sent packets, an `--rtt` sender got replies and lost none.
- A task whose commands start `./start_influx.sh` needs a metrics server and runs in
  tests/servers; every other task runs in tests/loopback.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from probe import free_port, wait_bound
from servers import free_port as free_tcp_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHORT_DURATION = "2"


@dataclass
class Task:
    title: str
    commands: list[str] = field(default_factory=list)     # shell lines, or "python:" + script

    @property
    def needs_server(self) -> bool:
        return any(c.startswith("./start_influx.sh") for c in self.commands)


def tasks(path: str = os.path.join(ROOT, "README.md")) -> list[Task]:
    """The common tasks of README.md, in order."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^## Common tasks\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    found = []
    for title, body in re.findall(r"^### (.+?)\n(.*?)(?=^### |\Z)", section, re.S | re.M):
        task = Task(title.strip())
        for lang, block in re.findall(r"^```(sh|python)\n(.*?)^```", body, re.S | re.M):
            if lang == "python":
                task.commands.append("python:" + block)
                continue
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    task.commands.append(line.strip())
        found.append(task)
    return found


def long_running(command: str) -> bool:
    """A packet-flow probe that runs until Ctrl-C."""
    words = shlex.split(command, comments=True)
    if not words or words[0] != "packet-flow" or "|" in words:
        return False
    stops = {"--duration", "--count", "--print-config", "--generate-config", "report", "search", "-h",
             "--help", "--version"}
    return not any(w.split("=")[0] in stops for w in words)


@dataclass
class Ports:
    influx: int
    prometheus: int
    udp_ports: dict[int, int] = field(default_factory=dict)   # README port -> free port

    def udp_port(self, readme_port: int) -> int:
        if readme_port not in self.udp_ports:
            taken = set(self.udp_ports.values())
            self.udp_ports[readme_port] = next(p for p in iter(free_port, None)
                                               if p not in taken)
        return self.udp_ports[readme_port]

    @property
    def udp(self) -> int:
        return self.udp_port(8000)


def rewrite(command: str, ports: Ports) -> str:
    """The command as the test runs it: on loopback, on free ports, short."""
    c = re.sub(r"\b192\.0\.2\.\d+\b", "127.0.0.1", command).replace("0.0.0.0", "127.0.0.1")
    c = re.sub(r":8086\b", f":{ports.influx}", c)
    c = re.sub(r":9469\b", f":{ports.prometheus}", c)
    c = re.sub(r":(80\d\d)\b", lambda m: f":{ports.udp_port(int(m.group(1)))}", c)
    c = re.sub(r"--duration[ =]\S+", f"--duration {SHORT_DURATION}", c)
    return c.replace("./start_influx.sh", shlex.quote(os.path.join(ROOT, "start_influx.sh")))


@dataclass
class Ran:
    command: str          # as written in the README
    returncode: int
    stdout: str
    stderr: str


def environment(ports: Ports) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PF_PORT"] = str(ports.influx)
    return env


def spawn(command: str, ports: Ports, cwd: str, env: dict) -> subprocess.Popen:
    if command.startswith("python:"):
        script = os.path.join(cwd, f"task-{time.monotonic_ns()}.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(rewrite(command.removeprefix("python:"), ports))
        argv = [sys.executable, script]
    else:
        line = rewrite(command, ports)
        argv = ["bash", "-c", ("exec " + line) if long_running(command) else
                "set -o pipefail\n" + line]
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_task(task: Task, cwd: str, timeout: float = 60.0) -> tuple[list[Ran], Ports]:
    """Run every command of `task` in `cwd`; return what each printed, in README order."""
    ports = Ports(free_tcp_port(), free_tcp_port())
    env = environment(ports)
    background, ran = [], {}
    try:
        for i, command in enumerate(task.commands):
            if long_running(command):
                background.append((i, command, spawn(command, ports, cwd, env)))
                local = re.search(r"--local-addr[ =]\S*:(\d+)", rewrite(command, ports))
                wait_bound(int(local.group(1)) if local else ports.udp, timeout=10)
                continue
            proc = spawn(command, ports, cwd, env)
            out, err = proc.communicate(timeout=timeout)
            ran[i] = Ran(command, proc.returncode, out, err)
    finally:
        for i, command, proc in background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            ran[i] = Ran(command, proc.returncode, out, err)
    return [ran[i] for i in sorted(ran)], ports


def ints(pattern: str, text: str) -> list[int]:
    return [int(x) for x in re.findall(pattern, text)]


def check_output(r: Ran, cwd: str) -> None:
    """What the user must see from one command of a task (run in `cwd`)."""
    assert r.returncode == 0, f"{r.command}\nexit {r.returncode}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, f"{r.command}\n{r.stderr[-2000:]}"
    if r.command.startswith("python:"):
        return
    words = shlex.split(r.command, comments=True)
    for flag, name in zip(words, words[1:], strict=False):
        if flag in ("-o", "--output") and name.endswith(".png"):
            with open(os.path.join(cwd, name), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{r.command}: {name} is no PNG"
    if words[:1] == ["packet-flow"] and "search" in words:
        assert re.search(r"^NDR: ", r.stdout, re.M), f"{r.command}: no NDR line\n{r.stdout}"
        return
    if words[:1] != ["packet-flow"] or "report" in words or "|" in words:
        return
    mode = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--mode", "-m")),
                "receiver")
    if mode in ("receiver", "both", "reflector"):
        received = ints(r"received (\d+)\s+lost", r.stdout)
        lost = ints(r"received \d+\s+lost (-?\d+)", r.stdout)
        assert received and min(received) > 0, f"{r.command}: no flow summary\n{r.stdout}"
        assert set(lost) == {0}, f"{r.command}: loss on loopback\n{r.stdout}"
    if mode in ("sender", "both"):
        sent = ints(r"\bsent (\d+)\s+missed slots", r.stdout)
        assert sent and sent[0] > 0, f"{r.command}: no sender summary\n{r.stdout}"
    if "--rtt" in words:
        assert re.search(r"rtt min \d", r.stdout), f"{r.command}: no RTT\n{r.stdout}"
        assert ints(r"lost (\d+) \(forward", r.stdout) == [0], r.stdout
