"""Network namespaces for tests: a namespace with a veth pair to the root namespace (Net),
nftables in it, and the probe run inside one (pf_in, run_pair). Needs root, iproute2 and
nftables; why_not() says what is missing."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = "pftruth"


def sh(*args, check=True):
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, check=check,
                          timeout=30)


def why_not():
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 nftables)"
    probe = f"pf-probe-{os.getpid()}"
    try:
        made = sh("ip", "netns", "add", probe, check=False)
        if made.returncode:
            return f"network namespaces unsupported: {made.stderr.strip()}"
        nft = sh("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "t", check=False)
        if nft.returncode:
            return f"nftables unusable in a namespace: {nft.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


class Net:
    """A namespace, its veth pair (MTU `mtu` when given) and addresses 10.OCTET.N.1-2/30 (N
    from the pid). Other netns tests reuse it with their own tag and octet."""

    def __init__(self, tag="truth", octet=213, mtu=None):
        n = os.getpid() % 250 + 1
        self.ns = f"pf-{tag}-{os.getpid()}"
        self.root_if, self.ns_if = f"pf{tag[:2]}{n}r", f"pf{tag[:2]}{n}n"
        self.root_ip, self.ns_ip = f"10.{octet}.{n}.1", f"10.{octet}.{n}.2"
        self.mtu = mtu
        self.family = "netdev"

    def up(self):
        mtu = ("mtu", self.mtu) if self.mtu else ()
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.root_if, *mtu, "type", "veth", "peer", "name",
            self.ns_if, *mtu, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.root_ip}/30", "dev", self.root_if)
        sh("ip", "link", "set", self.root_if, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        sh("ip", "-n", self.ns, "link", "set", self.ns_if, "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")

    def down(self):
        # deleting the namespace deletes its end of the veth pair, which takes the root end
        # and the namespace's nft tables with it
        sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "del", self.root_if, check=False)

    def running(self):
        """For a fixture (`yield from net.running()`): up, the tests, down, and the namespace
        must be gone."""
        try:
            self.up()
            yield self
        finally:
            self.down()
            assert self.ns not in sh("ip", "netns", "list").stdout

    def exec(self, *args):
        return ["ip", "netns", "exec", self.ns, *args]

    def nft(self, script):
        subprocess.run(self.exec("nft", "-f", "-"), input=script, text=True, check=True,
                       capture_output=True, timeout=30)

    def drops(self):
        out = sh(*self.exec("nft", "-j", "list", "counter", self.family, TABLE,
                             "drops")).stdout
        (counter,) = [o["counter"] for o in json.loads(out)["nftables"] if "counter" in o]
        return counter["packets"]


def bound(pid, port):
    """True once process pid has a UDP socket on port (its own namespace's table)."""
    try:
        with open(f"/proc/{pid}/net/udp", encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1].endswith(f":{port:04X}") for line in lines)


def pf_in(prefix, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    return subprocess.Popen([*prefix, sys.executable, "-m", "packet_flow", "--log-level",
                             "warning", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def finish_ok(proc, timeout):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def run_pair(rx_pre, rx_args, tx_pre, tx_args, port, settle=0.5):
    """A receiver (command prefix rx_pre, e.g. a namespace) bound to UDP `port`, then a sender
    run to its end; the receiver gets SIGTERM `settle` s later. Both must exit 0; returns
    the sender's stderr. Any process still alive at the end is killed, by its PID."""
    rx = pf_in(rx_pre, "--mode", "receiver", *rx_args)
    tx = None
    try:
        end = time.monotonic() + 10
        while not bound(rx.pid, port):
            assert rx.poll() is None and time.monotonic() < end, rx.stderr.read()
            time.sleep(0.02)
        tx = pf_in(tx_pre, "--mode", "sender", *tx_args)
        _out, err = tx.communicate(timeout=60)
        assert tx.returncode == 0, err
        time.sleep(settle)
        rx.send_signal(signal.SIGTERM)
        finish_ok(rx, 20)
        return err
    finally:
        for proc in (tx, rx):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def free_port(host):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
