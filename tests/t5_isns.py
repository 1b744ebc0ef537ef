"""A mount that finds its portals and targets through iSNS (``mount.iscsifs isns MNT -o
isns=HOST:PORT``), against a private isnsd that a private tgtd registered with, plus a second
entity registered with isnsadm whose portal (127.0.0.3:3260) has nothing behind it: the mount
warns about that portal and serves the other; each portal's ``targets/`` lists what iSNS says
is there; reads and writes go to tgt's LUN; the answer is kept as node records."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import show_node, wait_for
from mounting import run_helper, unmount

from iscsifs_testbed.isnsd import Isnsd, missing_requirements
from iscsifs_testbed.tgtd import MiB, Tgtd, free_tcp_port

pytestmark = pytest.mark.integration

INI = "iqn.2026-11.org.iscsifs.test:isns-mount"
T1 = "iqn.2026-11.org.iscsifs.test:isns-mount-disk"
T2 = "iqn.2026-11.org.iscsifs.test:isns-mount-foreign"
FOREIGN = "127.0.0.3:3260"


@pytest.fixture
def isns_target(tmp_path):
    reason = missing_requirements()
    if reason:
        pytest.fail(reason)
    server = Isnsd(workdir=tmp_path / "isnsd")
    tgtd = Tgtd(workdir=tmp_path / "tgtd")
    try:
        server.start()
        tgtd.start()
        tgtd.add_target(1, T1)
        backing = tgtd.make_backing_file("disk.img", 4 * MiB)
        tgtd.add_lun(1, 1, backing)
        tgtd.bind(1)
        tgtd.use_isns(server.host, server.port)
        server.register("entity=foreign", f"target={T2}", f"portal={FOREIGN}", "pg,pgt=5")
        text = lambda: server.query("--query", "iscsi-node-type=Target")  # noqa: E731
        assert wait_for(lambda: f'"{T1}"' in text() and f'"{T2}"' in text(), 15)
        yield server, tgtd, backing
    finally:
        tgtd.stop()
        server.stop()


def mount(tmp_path: Path, spec: str, *options: str) -> subprocess.CompletedProcess:
    mp = tmp_path / "mnt"
    mp.mkdir(exist_ok=True)
    opts = ",".join((f"initiator_name={INI}", f"config_dir={tmp_path / 'cfg'}",
                     f"logfile={tmp_path / 'mount.log'}") + options)
    return run_helper(spec, mp, "-o", opts, timeout=90)


def test_mount_through_isns(isns_target, fuse_available, tmp_path):
    server, tgtd, backing = isns_target
    r = mount(tmp_path, "isns", f"isns={server.address}")
    assert r.returncode == 0, r.stderr
    mp = tmp_path / "mnt"
    try:
        assert f"cannot connect to {FOREIGN}: " in r.stderr        # the warning
        portals = mp / "portals"
        assert sorted(os.listdir(portals)) == sorted([tgtd.portal, FOREIGN])
        assert os.listdir(portals / tgtd.portal / "targets") == [T1]
        assert os.listdir(portals / FOREIGN / "targets") == [T2]
        raw = portals / tgtd.portal / "targets" / T1 / "luns" / "1" / "raw"
        data = os.urandom(64 * 1024)
        fd = os.open(raw, os.O_RDWR)
        try:
            os.pwrite(fd, data, 1 * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(backing, "rb") as f:
            f.seek(1 * MiB)
            assert f.read(len(data)) == data
        keys = show_node(tmp_path / "cfg", T1, tgtd.portal)
        assert (keys["node.discovery_type"], keys["node.discovery_port"]) == \
            ("isns", str(server.port))
    finally:
        unmount(mp)


def test_isns_mount_errors(tmp_path, fuse_available):
    r = mount(tmp_path, "isns")
    assert r.returncode == 7
    assert r.stderr.strip() == ("mount.iscsifs: PORTAL 'isns' needs -o isns=HOST[:PORT] "
                                "(the iSNS server)")
    port = free_tcp_port()
    r = mount(tmp_path, "isns", f"isns=127.0.0.1:{port}")
    assert r.returncode == 4, r.stderr
    assert r.stderr.startswith(f"mount.iscsifs: iSNS discovery at 127.0.0.1:{port} failed: ")
    assert not os.path.ismount(tmp_path / "mnt")
