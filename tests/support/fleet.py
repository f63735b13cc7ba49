"""A simulated fleet for tests: network namespaces ("hosts") on one Linux bridge, a real DNS
server (Debian's dnsmasq) on the bridge answering the fleet's name with every host's address,
each namespace with its own resolv.conf (/etc/netns/NS/resolv.conf, which `ip netns exec`
bind-mounts over /etc/resolv.conf), and processes run inside the hosts.

Names and addresses carry the test's PID: namespaces pf-fl{PID}-{i}, bridge pfb{N}, hosts
10.221.N.{i}/24 (N from the PID), the bridge and dnsmasq at 10.221.N.254. close() stops every
process it started (by PID), dnsmasq, and removes the namespaces, their /etc/netns folders,
the bridge and the temp folder, pass or fail. Dnsmasq also runs alone (loopback tests).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from netns import ROOT, sh

OCTET = 221


def why_not():
    """Why a fleet cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, a bridge, nftables, dnsmasq on port 53)"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"), ("dnsmasq", "dnsmasq-base")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install {pkg})"
    return None


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Dnsmasq:
    """dnsmasq answering A/AAAA records from a hosts file (rewritten by set_hosts, re-read on
    SIGHUP) and fixed SRV records; `prefix` runs it inside a namespace."""

    def __init__(self, folder, listen, port=53, srv=(), domain="mesh.test", prefix=()):
        self.folder, self.listen, self.port = folder, listen, port
        self.srv, self.domain, self.prefix = srv, domain, prefix
        os.chmod(folder, 0o755)          # dnsmasq drops privileges: the file must be readable
        self.hosts = os.path.join(folder, "hosts")
        self.set_hosts({}, reload=False)
        self.log = open(os.path.join(folder, "dnsmasq.log"), "a")
        self.proc = None
        self.start()

    def start(self):
        """Start (or start again after stop()); names of the domain that are not in the hosts
        file answer NXDOMAIN (--local), not REFUSED."""
        args = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                f"--addn-hosts={self.hosts}", f"--listen-address={self.listen}",
                f"--port={self.port}", f"--local=/{self.domain}/", "--bind-interfaces",
                "--local-ttl=1", "--pid-file=", "--log-facility=-", "--user=nobody"]
        args += [f"--srv-host={name},{target},{p}" for name, target, p in self.srv]
        self.mark = os.path.getsize(self.log.name)
        self.proc = subprocess.Popen([*self.prefix, *args], stdout=self.log, stderr=self.log)
        wait_for(self._listening, 5, f"dnsmasq on {self.listen}:{self.port}")

    def _listening(self):
        assert self.proc.poll() is None, open(self.log.name).read()
        with open(self.log.name) as f:
            return "read " in f.read()[self.mark:]

    def set_hosts(self, names, reload=True):
        """names: {name: [address, ...]}; the file is replaced whole, then SIGHUP."""
        tmp = self.hosts + ".new"
        with open(tmp, "w") as f:
            for name, addrs in names.items():
                for a in addrs:
                    f.write(f"{a} {name}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.hosts)
        if reload:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        self.log.close()


class Fleet:
    """`n` hosts on a bridge with dnsmasq; host i (1-based) is namespace ns(i) at ip(i)."""

    def __init__(self, n, domain="mesh.test", srv=()):
        self.pid = os.getpid()
        self.net = self.pid % 250 + 1
        self.bridge = f"pfb{self.pid}"[:15]
        self.bridge_ip = f"10.{OCTET}.{self.net}.254"
        self.domain, self.name = domain, f"pf{self.pid}.{domain}"
        self.folder = tempfile.mkdtemp(prefix=f"pf-fleet-{self.pid}-")
        self.hosts, self.procs, self.dns = [], [], None
        try:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            for i in range(1, n + 1):
                self.add_host(i)
            self.dns = Dnsmasq(self.folder, self.bridge_ip, srv=srv, domain=domain)
        except BaseException:
            self.close()
            raise

    def ns(self, i):
        return f"pf-fl{self.pid}-{i}"

    def root_if(self, i):
        return f"pf{self.pid % 100000}h{i}"[:15]

    def ip(self, i):
        return f"10.{OCTET}.{self.net}.{i}"

    def add_host(self, i):
        """Namespace i, a veth into the bridge, its address and resolv.conf (short timeouts)."""
        ns, root_if = self.ns(i), self.root_if(i)
        self.hosts.append(i)
        # a namespace's veth goes away some time after the namespace: an earlier fleet of this
        # process (same names) may still hold this one
        sh("ip", "link", "del", root_if, check=False)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", root_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", root_if, "master", self.bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        etc = f"/etc/netns/{ns}"
        os.makedirs(etc, exist_ok=True)
        with open(f"{etc}/resolv.conf", "w") as f:
            f.write(f"nameserver {self.bridge_ip}\nsearch {self.domain}\n"
                    "options timeout:1 attempts:1\n")

    def publish(self, hosts, name=None):
        """DNS: `name` (the fleet's name) answers the addresses of `hosts`; each host i is also
        n{i}.DOMAIN, its address's first name in the file, so the PTR answer (dnsmasq gives
        the first). SIGHUP makes dnsmasq re-read it."""
        names = {f"n{i}.{self.domain}": [self.ip(i)] for i in hosts}
        names[name or self.name] = [self.ip(i) for i in hosts]
        self.dns.set_hosts(names)

    def exec(self, i, *args):
        return ["ip", "netns", "exec", self.ns(i), *map(str, args)]

    def nft(self, i, script):
        subprocess.run(self.exec(i, "nft", "-f", "-"), input=script, text=True, check=True,
                       capture_output=True, timeout=30)

    def nft_counters(self, i, table):
        out = sh(*self.exec(i, "nft", "-j", "list", "table", "inet", table)).stdout
        return {o["counter"]["name"]: o["counter"]["packets"]
                for o in json.loads(out)["nftables"] if "counter" in o}

    def start(self, i, *args, env=None, name=None):
        """`python -m packet_flow ARGS` in host i; stdout/stderr go to files in the folder."""
        return self.run(i, [sys.executable, "-m", "packet_flow", *map(str, args)], env=env,
                        name=name or f"pf-{i}")

    def run(self, i, argv, env=None, name=None):
        base = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
        base.pop("NODE_NAME", None)
        out = open(os.path.join(self.folder, f"{name or i}.out"), "w")
        err = open(os.path.join(self.folder, f"{name or i}.err"), "w")
        proc = subprocess.Popen(self.exec(i, *argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, text=True,
                                env={**base, **(env or {})}, cwd=ROOT)
        proc.files = (out, err)
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=10, signal_it=True):
        """SIGTERM (once: a second one would end a mesh node's linger early), then wait
        (SIGKILL after the timeout); returns the exit status."""
        if signal_it and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for f in proc.files:
            f.close()
        return proc.returncode

    def text(self, name, ext="err"):
        with open(os.path.join(self.folder, f"{name}.{ext}"), encoding="utf-8") as f:
            return f.read()

    def path(self, name):
        return os.path.join(self.folder, name)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in getattr(proc, "files", ()):
                f.close()
        if self.dns is not None:
            self.dns.close()
        for i in self.hosts:
            sh("ip", "link", "del", self.root_if(i), check=False)     # at once, not later
            sh("ip", "netns", "del", self.ns(i), check=False)
            shutil.rmtree(f"/etc/netns/{self.ns(i)}", ignore_errors=True)
        sh("ip", "link", "del", self.bridge, check=False)
        if os.environ.get("PF_FLEET_KEEP"):         # debugging: keep the logs and records
            print(f"fleet: kept {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def leftovers(pid):
    """Namespaces, links and /etc/netns folders of a fleet of this pid still present."""
    found = [ns for ns in sh("ip", "netns", "list").stdout.split() if f"pf-fl{pid}-" in ns]
    found += [ln for ln in sh("ip", "-o", "link").stdout.split() if f"pfb{pid}" in ln]
    if os.path.isdir("/etc/netns"):
        found += [d for d in os.listdir("/etc/netns") if d.startswith(f"pf-fl{pid}-")]
    return found

