"""A reflector whose replies the kernel refuses: an nftables output rule in a namespace of the
test's own drops the replies to even sequences (sendmmsg fails those datagrams with EPERM). `reflected`
counts only the replies the kernel took, `reflect_errors` the refused ones."""

import json
import os
import subprocess
import sys

import pytest
from netns import ROOT, sh, why_not

N = 10

SCRIPT = r"""
import json, socket, sys
from packet_flow import _io, wire
n, port = int(sys.argv[1]), int(sys.argv[2])
rs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rs.bind(("127.0.0.1", port))
rs.setblocking(False)
refl = _io.Reflector(rs.fileno(), mode=_io.K_STAMP, capacity=1 << 6)
refl.reflect_gso = False
cs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cs.bind(("127.0.0.1", 0))
cs.settimeout(0.5)
for seq in range(n):
    cs.sendto(wire.encode_stamp(seq, 1_900_000_000 * 10**9), ("127.0.0.1", port))
end = _io.mono_ns() + 3 * 10**9
while refl.datagrams < n and _io.mono_ns() < end:
    refl.pump(_io.mono_ns() + 20_000_000, n)
got = []
try:
    while True:
        got.append(wire.decode(cs.recv(100), stamp="reflected").seq)
except TimeoutError:
    pass
print(json.dumps({"datagrams": refl.datagrams, "reflected": refl.reflected,
                  "reflect_errors": refl.reflect_errors, "got": got}))
"""


@pytest.fixture
def ns():
    why = why_not()
    if why:
        pytest.skip(why)
    name = f"pf-refused-{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)
        assert name not in sh("ip", "netns", "list").stdout


def test_refused_replies_are_errors_not_reflected(ns):
    port = 8862
    # the sender sequence a STAMP reply echoes is the u32 at payload byte 24 (UDP header: 8):
    # replies to even sequences are dropped, every time they are tried
    rules = (f"table inet refused {{\n chain out {{\n type filter hook output priority 0\n"
             f" udp sport {port} @th,287,1 0 drop\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True, timeout=30)
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, str(N),
                          str(port)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["datagrams"] == N
    assert (res["reflected"], res["reflect_errors"]) == (N // 2, N // 2)
    assert sorted(res["got"]) == list(range(1, N, 2))
