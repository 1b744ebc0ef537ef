"""``source_address=`` / ``iface.ipaddress`` for real: a tgt target bound only to the initiator
address 127.0.0.2 (``tgtadm --op bind -I 127.0.0.2``), and mounts of the same portal with and
without that source address.

tgt checks the initiator's address twice: SendTargets leaves out a target whose ACL does not
match the connection's source address (so a plain mount does not list it), and a login to it
from another address is refused (status 0x0202, "target not found", even through a node record
made by hand). From 127.0.0.2 discovery lists it, the login works, and so does every relogin:
the test drops the connection with tgtadm and the next write goes through a new connection from
127.0.0.2 again.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import ok, one_error_line, run_iscsifs
from mounting import run_helper
from mounting import unmount as unmount_mp

from iscsifs_testbed.tgtd import MiB

pytestmark = pytest.mark.integration

SOURCE = "127.0.0.2"
INITIATOR = "iqn.2026-11.org.iscsifs.test:source-address"
NOT_HERE = "192.0.2.1"     # TEST-NET-1: never an address of this host, so bind() fails at once


def mount(tmp_path: Path, portal: str, name: str, *options: str) -> subprocess.CompletedProcess:
    mp = tmp_path / name
    mp.mkdir()
    opts = ",".join((f"initiator_name={INITIATOR}", f"config_dir={tmp_path / 'cfg'}",
                     f"logfile={tmp_path / (name + '.log')}") + options)
    return run_helper(portal, mp, "-o", opts)


def unmount(mp: Path) -> None:
    unmount_mp(mp)


@pytest.fixture
def bound_target(fresh_target, tgt_target):
    """A target with one 4 MiB LUN that only 127.0.0.2 may use (and the standard targets, so
    that the portal lists something for everybody)."""
    info = fresh_target([(4 * MiB, 512)], bind=None)
    fresh_target.tgtd.bind(info.tid, SOURCE)
    return info, fresh_target.tgtd


def test_plain_mount_does_not_see_a_target_bound_to_another_address(
        bound_target, fuse_available, tmp_path):
    bound_target, tgtd = bound_target
    portal = bound_target.portal
    (tmp_path / "cfg").mkdir()
    r = mount(tmp_path, portal, "plain")
    assert r.returncode == 0, r.stderr
    mp = tmp_path / "plain"
    try:
        targets = mp / "portals" / portal / "targets"
        listed = os.listdir(targets)
        assert listed and bound_target.iqn not in listed      # SendTargets left it out
        # asked for by name (a static node record), the login is refused: tgt checks the
        # address again at login
        os.mkdir(targets / bound_target.iqn)
        with pytest.raises(OSError):
            os.listdir(targets / bound_target.iqn / "luns")
        assert not tgtd.show_connections(bound_target.tid)
    finally:
        unmount(mp)


def test_source_address_mount_reads_writes_and_relogs_in_from_it(
        bound_target, fuse_available, tmp_path):
    bound_target, tgtd = bound_target
    portal = bound_target.portal
    (tmp_path / "cfg").mkdir()
    r = mount(tmp_path, portal, "bound", f"source_address={SOURCE}")
    assert r.returncode == 0, r.stderr
    mp = tmp_path / "bound"
    try:
        tdir = mp / "portals" / portal / "targets" / bound_target.iqn
        assert tdir.is_dir()                                  # discovery from 127.0.0.2
        raw = tdir / "luns" / "1" / "raw"
        data = os.urandom(256 * 1024)
        fd = os.open(raw, os.O_RDWR)
        try:
            assert os.pwrite(fd, data, 1 * MiB) == len(data)
            os.fsync(fd)
            conns = tgtd.show_connections(bound_target.tid)
            assert [c.address for c in conns] == [SOURCE]
            assert f"Iface IPaddress: {SOURCE}" in (tdir / "session").read_text()
            # a relogin binds again: tgt would refuse one from 127.0.0.1
            tgtd.drop_connection(bound_target.tid, conns[0].sid, conns[0].cid)
            assert os.pwrite(fd, data[::-1], 2 * MiB) == len(data)
            os.fsync(fd)
            assert os.pread(fd, len(data), 1 * MiB) == data
        finally:
            os.close(fd)
        conns = tgtd.show_connections(bound_target.tid)
        assert [c.address for c in conns] == [SOURCE]
        with open(bound_target.luns[1].path, "rb") as f:
            f.seek(2 * MiB)
            assert f.read(len(data)) == data[::-1]
    finally:
        unmount(mp)


def test_source_address_not_of_this_host_is_one_line_exit_7(tgt_target, fuse_available,
                                                           tmp_path):
    (tmp_path / "cfg").mkdir()
    r = mount(tmp_path, tgt_target.portal, "bad", f"source_address={NOT_HERE}")
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert r.stderr.strip() == (f"mount.iscsifs: portal {tgt_target.portal}: cannot bind to "
                                f"source address {NOT_HERE}: Cannot assign requested address")
    assert not os.path.ismount(tmp_path / "bad")
    r = mount(tmp_path, tgt_target.portal, "bad2", "source_address=eth0")
    assert r.returncode == 7
    assert "bad value for source_address: 'eth0'" in r.stderr


def test_cli_discovery_and_login_use_the_source_address(bound_target, tmp_path):
    bound_target, _tgtd = bound_target
    cfg = tmp_path / "cfg"
    portal = bound_target.portal
    r = ok(run_iscsifs(cfg, "discover", portal, "--initiator-name", INITIATOR,
                       "--no-record"))
    assert bound_target.iqn not in r.stdout
    r = ok(run_iscsifs(cfg, "discovery", "-t", "st", "-p", portal, "--initiator-name",
                       INITIATOR, "--source-address", SOURCE))
    assert f"{portal},1 {bound_target.iqn}" in r.stdout.splitlines()
    # the node record's iface.ipaddress binds `iscsifs login`
    r = run_iscsifs(cfg, "login", "-T", bound_target.iqn, "--initiator-name", INITIATOR)
    assert r.returncode == 19, (r.stdout, r.stderr)
    ok(run_iscsifs(cfg, "node", "-T", bound_target.iqn, "-o", "update", "-n",
                   "iface.ipaddress", "-v", SOURCE))
    r = ok(run_iscsifs(cfg, "login", "-T", bound_target.iqn, "--initiator-name", INITIATOR))
    assert "successful" in r.stdout
    ok(run_iscsifs(cfg, "node", "-T", bound_target.iqn, "-o", "update", "-n",
                   "iface.ipaddress", "-v", NOT_HERE))
    r = run_iscsifs(cfg, "login", "-T", bound_target.iqn, "--initiator-name", INITIATOR)
    assert r.returncode == 7
    assert f"cannot bind to source address {NOT_HERE}" in r.stderr
    r = run_iscsifs(cfg, "node", "-T", bound_target.iqn, "-o", "update", "-n",
                    "iface.ipaddress", "-v", "eth0")
    assert one_error_line(r, 7).endswith("iface.ipaddress: not an IP address")
