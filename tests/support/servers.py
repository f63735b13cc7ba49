"""What the real test servers (VictoriaMetrics, InfluxDB 1.x, Prometheus) share.

Rules (REFERENCE.md §4): a server gets free loopback ports, checked free before start; it is
ready only when its readiness check answers *and* the process we started is still alive (an
old server on the same port fools a bare readiness check). Only the process this object
started is ever signalled, by its PID. A server started early (early.py, before its test
runs) has a folder of its own that stop() removes.
"""

import shutil
import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeldPort:
    """A TCP port on 127.0.0.1 bound, not listening, until release(): free_port() cannot hand
    it to anyone else, and a connection to it is refused, until the test listens on it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def release(self) -> int:
        self.sock.close()
        return self.port


def port_in_use(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """A child server process: `_launch()` starts it (`_spawn`) and waits until `ready()`
    (`_wait_ready`); a server started early (early.py) does the two apart; `stop()`."""

    name = "server"
    proc: subprocess.Popen | None = None
    scratch: str | None = None      # a folder of its own, removed by stop() (early.py)

    def _launch(self, args: list[str], log_path: str, ports, ready, what: str,
                timeout: float, poll: float = 0.05) -> None:
        self._spawn(args, log_path, ports)
        self._wait_ready(ready, what, timeout, poll)

    def _spawn(self, args: list[str], log_path: str, ports) -> None:
        for port in ports:
            if port_in_use(port):
                raise RuntimeError(f"port {port} is already in use")
        self.log = open(log_path, "ab")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def _wait_ready(self, ready, what: str, timeout: float, poll: float = 0.05) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                if ready() and self.proc.poll() is None:
                    return
            except OSError:
                pass
            time.sleep(poll)
        self.stop()
        raise RuntimeError(f"{self.name} did not {what} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM: the server flushes what it accepted), SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self):
        if self.proc is None:       # started early (early.py) or here
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
