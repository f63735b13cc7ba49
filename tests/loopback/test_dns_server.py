"""dnsquery against a real dnsmasq on loopback (a high port): SRV records, NXDOMAIN, a name
completed by the search domain, an answer too large for UDP (asked again over TCP), and a
server that does not answer."""

import shutil
import tempfile

import pytest
from fleet import Dnsmasq
from probe import free_port

from packet_flow import dnsquery
from packet_flow.dnsquery import DnsError


@pytest.fixture
def dns():
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    folder = tempfile.mkdtemp(prefix="pf-dns-")
    port = free_port()
    srv = [("_pf._udp.mesh.test", f"n{i}.mesh.test", 8000 + i) for i in range(300)]
    srv += [("_two._udp.mesh.test", "n1.mesh.test", 9001),
            ("_two._udp.mesh.test", "n2.mesh.test", 9002)]
    server = Dnsmasq(folder, "127.0.0.1", port=port, srv=srv)
    conf = f"{folder}/resolv.conf"
    with open(conf, "w") as f:
        f.write("nameserver 127.0.0.1\nsearch mesh.test\n")
    yield lambda name, **kw: dnsquery.srv_records(name, conf=conf, port=port, **kw)
    server.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_srv_records(dns):
    assert dns("_two._udp.mesh.test") == [("n1.mesh.test", 9001), ("n2.mesh.test", 9002)]
    assert dns("_two._udp") == [("n1.mesh.test", 9001), ("n2.mesh.test", 9002)]   # searched
    assert dns("_none._udp.mesh.test") == []                                       # NXDOMAIN
    many = dns("_pf._udp.mesh.test")                                               # over TCP
    assert len(many) == 300 and many[0] == ("n0.mesh.test", 8000)


def test_no_answer_is_an_error():
    port = free_port()          # nothing listens there: refused at once
    folder = tempfile.mkdtemp(prefix="pf-dns-")
    with open(f"{folder}/resolv.conf", "w") as f:
        f.write("nameserver 127.0.0.1\n")
    with pytest.raises(DnsError, match="srv _pf._udp.x: 127.0.0.1: Connection refused"):
        dnsquery.srv_records("_pf._udp.x", conf=f"{folder}/resolv.conf", port=port,
                             timeout=0.5)
    shutil.rmtree(folder)
