"""Socket errors at start that this host cannot show on its own (issue 22 §2): a port below
ip_unprivileged_port_start without CAP_NET_BIND_SERVICE, no route to the remote address,
and a host without IPv6 -- each in a namespace of its own with only loopback, where the
test sets the sysctls. Each is one line naming the option, its value and the cause, exit 2,
nothing on stdout. No packet leaves: every error comes from bind() or a route lookup."""

import os
import subprocess
import sys

import pytest
from netns import ROOT, sh, why_not

pytestmark = pytest.mark.skipif(why_not() is not None, reason=str(why_not()))


def failed_start(ns, *args, prefix=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKET_FLOW_")}
    done = subprocess.run(["ip", "netns", "exec", ns, *prefix, sys.executable, "-m",
                           "packet_flow", "--log-level", "info", *args],
                          capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    return done.stderr.splitlines()


@pytest.fixture
def bare_ns():
    ns = f"pf-start-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)


def sysctl(ns, *settings):
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", *settings)


def test_privileged_port_and_no_route(bare_ns):
    sysctl(bare_ns, "net.ipv4.ip_unprivileged_port_start=1024")
    # root without CAP_NET_BIND_SERVICE (out of the bounding set) is any user here
    drop = ("setpriv", "--bounding-set", "-net_bind_service", "--")
    for mode in ("receiver", "reflector"):
        assert failed_start(bare_ns, "--mode", mode, "--local-addr", "127.0.0.1:999",
                            prefix=drop) == [
            "packet-flow: error: option --local-addr: value '127.0.0.1:999' from cli: "
            "Permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"]
    assert failed_start(bare_ns, "--mode", "sender", "--local-addr", "127.0.0.1:1023",
                        "--remote-addr", "127.0.0.1:9000", prefix=drop) == [
        "packet-flow: error: option --local-addr: value '127.0.0.1:1023' from cli: "
        "Permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"]
    for mode in ("sender", "both"):
        assert failed_start(bare_ns, "--mode", mode, "--local-addr", "127.0.0.1:9000",
                            "--remote-addr", "10.213.77.1:9000") == [
            "packet-flow: error: option --remote-addr: value '10.213.77.1:9000' from cli: "
            "Network is unreachable (no route to it)"]


def test_host_without_ipv6(bare_ns):
    sysctl(bare_ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
           "net.ipv6.conf.lo.disable_ipv6=1")
    for mode in ("receiver", "both", "reflector"):
        assert failed_start(bare_ns, "--mode", mode, "--local-addr", "[::1]:9000",
                            "--remote-addr", "[::1]:9000") == [
            "packet-flow: error: option --local-addr: value '[::1]:9000' from cli: "
            "Cannot assign requested address (not an address of this host)"]
    assert failed_start(bare_ns, "--mode", "sender", "--remote-addr", "[::1]:9000") == [
        "packet-flow: error: option --remote-addr: value '[::1]:9000' from cli: "
        "Cannot assign requested address (no local address reaches it)"]
