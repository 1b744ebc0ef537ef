"""iSNS discovery against the real thing: a private ``isnsd`` (Debian's open-isns-server,
iscsifs_testbed/isnsd.py: its own config, in-memory database, 127.0.0.1 and a free port) that
a private tgtd registers its targets with (``tgtadm --op update --mode sys --name
iSNSServerIP/iSNSServerPort/iSNS``), and ``iscsifs discovery -t isns`` asking it.

isnsd's policy decides what an initiator sees: with ``DefaultDiscoveryDomain = 1`` nodes in no
discovery domain (tgt's targets, and an initiator that never registered) see each other; without
it an initiator that is in no domain sees nothing, and the command says "no targets found"
(exit 21), as iscsiadm does. A tgtd of its own with one portal and one target (tgt's iSNS
client breaks with more: iscsifs_testbed/isnsd.py) keeps the shared tgtd out of the iSNS
server; a second entity, registered with isnsadm, has its target behind another portal and
portal group tag.
"""

from __future__ import annotations

import pytest

from helpers import ok, one_error_line, run_iscsifs, show_node, wait_for

from iscsifs_testbed.isnsd import Isnsd, missing_requirements
from iscsifs_testbed.tgtd import MiB, Tgtd, free_tcp_port

pytestmark = pytest.mark.integration

INI = "iqn.2026-11.org.iscsifs.test:isns-initiator"
T1 = "iqn.2026-11.org.iscsifs.test:isns-disk1"
T2 = "iqn.2026-11.org.iscsifs.test:isns-foreign"
FOREIGN = "127.0.0.3:3260"


def registered(isnsd: Isnsd, *names: str) -> bool:
    """isnsd has each target with its portal group (what an initiator needs)."""
    text = isnsd.query("--query", "iscsi-node-type=Target")
    return all(f'Portal group name = "{name}"' in text for name in names)


@pytest.fixture
def isns_setup(tmp_path):
    """``setup(default_dd=True) -> (isnsd, tgtd)``: a private isnsd, and a private tgtd of
    one target registered with it (tgt registers with the first server it is given only)."""
    reason = missing_requirements()
    if reason:
        pytest.fail(reason)
    started = []

    def setup(default_dd: bool = True):
        server = Isnsd(workdir=tmp_path / "isnsd", default_dd=default_dd)
        started.append(server)
        server.start()
        tgtd = Tgtd(workdir=tmp_path / "tgtd")
        started.append(tgtd)
        tgtd.start()
        tgtd.add_target(1, T1)
        tgtd.add_lun(1, 1, tgtd.make_backing_file("isns1.img", 4 * MiB))
        tgtd.bind(1)
        tgtd.use_isns(server.host, server.port)
        assert wait_for(lambda: registered(server, T1), 15), server.log_tail()
        return server, tgtd

    try:
        yield setup
    finally:
        for thing in reversed(started):
            thing.stop()


@pytest.fixture
def isns(isns_setup):
    """(isnsd, tgtd), and a second entity registered with isnsadm."""
    server, tgtd = isns_setup()
    server.register("entity=foreign", f"target={T2}", f"portal={FOREIGN}", "pg,pgt=5")
    assert wait_for(lambda: registered(server, T1, T2), 15), server.log_tail()
    return server, tgtd


def test_discovery_lists_what_isnsd_knows_and_records_nodes(isns, tmp_path):
    isns, isns_tgtd = isns
    cfg = tmp_path / "cfg"
    r = ok(run_iscsifs(cfg, "discovery", "-t", "isns", "-p", isns.address,
                       "--initiator-name", INI))
    portal = f"127.0.0.1:{isns_tgtd.port},1"
    assert sorted(r.stdout.splitlines()) == [f"{portal} {T1}", f"{FOREIGN},5 {T2}"]
    keys = show_node(cfg, T1, f"127.0.0.1:{isns_tgtd.port}")
    assert keys["node.discovery_type"] == "isns"
    assert keys["node.discovery_address"] == "127.0.0.1"
    assert keys["node.discovery_port"] == str(isns.port)
    assert show_node(cfg, T2, FOREIGN.replace(":3260", ":3260,5"))["node.tpgt"] == "5"
    r = ok(run_iscsifs(cfg, "login", "-T", T1, "--initiator-name", INI))
    assert r.stdout.splitlines()[-1].startswith(f"Login to [iface: default, target: {T1}")
    # from another source address, and with another name (a new node for isnsd)
    r = ok(run_iscsifs(cfg, "discovery", "-t", "isns", "-p", isns.address,
                       "--initiator-name", INI + "-2", "--source-address", "127.0.0.2"))
    assert f"{portal} {T1}" in r.stdout.splitlines()


def test_without_a_default_discovery_domain_nothing_is_visible(isns_setup, tmp_path):
    server, _tgtd = isns_setup(default_dd=False)
    r = run_iscsifs(tmp_path / "cfg", "discovery", "-t", "isns", "-p", server.address,
                    "--initiator-name", INI)
    assert one_error_line(r, 21) == f"iscsifs: no targets found at iSNS server " \
                                     f"{server.address}"


def test_no_isns_server_is_exit_4(tmp_path):
    port = free_tcp_port()
    r = run_iscsifs(tmp_path / "cfg", "discovery", "-t", "isns", "-p", f"127.0.0.1:{port}",
                    "--initiator-name", INI, "--timeout", "3")
    line = one_error_line(r, 4)
    assert line.startswith(f"iscsifs: iSNS discovery at 127.0.0.1:{port} failed: ")
    assert "refused" in line
