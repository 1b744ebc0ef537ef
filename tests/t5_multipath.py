"""Multipath for real: one tgtd listening on 127.0.0.1 and 127.0.0.2, a mount given both
portals, ``fio --verify=crc32c`` on the ``by-id`` file while the packets of one portal and then
of the other are dropped with nftables. fio must finish with 0 errors, the status file must
show each path fail and come back, and the daemon log must say so. With ``failover`` the
first cut hits the standby path and the second the active one (I/O moves, then fails back);
with ``round-robin`` both cuts hit a path that carries I/O.

The nftables table is our own (``iscsifs_test_<pid>_<port>``), matches only our tgtd's port,
and is deleted in teardown whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import wait_for
from mounting import run_helper, unmount
from iscsifs_testbed.tgtd import MiB

pytestmark = pytest.mark.integration

IQN = "iqn.2026-11.org.iscsifs.test:multipath"       # conftest's two_portals
INITIATOR = "iqn.2026-11.org.iscsifs.test:mp-initiator"
SECOND = "127.0.0.2"
# a path line of the status file: "| `- 127.0.0.1:3260 iqn... lun 1 active ready running"
PATH_LINE = re.compile(r"^[|` ] [|`]- (\S+) (\S+) lun (\d+) (\w+) (\w+) (\S+)$", re.M)


class Cutter:
    """Drops every packet to and from one portal's address (our port only) with nftables."""

    def __init__(self, port: int):
        self.port = port
        self.table = f"iscsifs_test_{os.getpid()}_{port}"
        self._nft("add", "table", "inet", self.table)
        self._nft("add", "chain", "inet", self.table, "input",
                  "{ type filter hook input priority 0 ; policy accept ; }")

    def _nft(self, *args: str) -> None:
        subprocess.run(["nft", *args], check=True, capture_output=True, timeout=10)

    def cut(self, host: str) -> None:
        for rule in (f"ip daddr {host} tcp dport {self.port} drop",
                     f"ip saddr {host} tcp sport {self.port} drop"):
            self._nft("add", "rule", "inet", self.table, "input", *rule.split())

    def restore(self) -> None:
        self._nft("flush", "chain", "inet", self.table, "input")

    def close(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True,
                       timeout=10)


@pytest.fixture
def cutter(two_portals):
    if shutil.which("nft") is None:
        pytest.fail("nft is not installed (scripts/setup installs nftables)")
    c = Cutter(two_portals.tgtd.port)
    try:
        yield c
    finally:
        c.close()


def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, f"user.iscsi.{name}").decode()


def paths(status: Path) -> dict[str, tuple[str, str, str]]:
    """portal -> (dm state, checker state, device state), from the status file."""
    return {m[1]: (m[4], m[5], m[6]) for m in PATH_LINE.finditer(status.read_text())}


def counters(status: Path) -> dict[str, tuple[int, int, int]]:
    """portal -> (ios, errors, failures), from the table under the path tree."""
    out = {}
    for line in status.read_text().splitlines():
        f = line.split()
        if len(f) == 7 and f[2] == "lun" and f[4].isdigit():
            out[f[0]] = (int(f[4]), int(f[5]), int(f[6]))
    return out


@pytest.mark.parametrize("policy", ["failover", "round-robin"])
def test_fio_verify_survives_losing_each_path_in_turn(two_portals, cutter, fuse_available,
                                                     tmp_path, policy):
    tgtd, backing = two_portals.tgtd, two_portals.backing[1]
    first, second = two_portals.portals
    assert second == f"{SECOND}:{tgtd.port}"
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    opts = (f"initiator_name={INITIATOR},logfile={log},noop_out_interval=1,"
            f"noop_out_timeout=1,login_timeout=3,replacement_timeout=30,multipath={policy}")
    r = run_helper(f"{first},{second}", mp, "-v", "-o", opts)
    assert r.returncode == 0, r.stderr
    fio = None
    try:
        names = sorted(os.listdir(mp / "by-id"))        # logs in through both portals
        assert names == [".multipath", "wwn-0x60000000000000000e00000000010001",
                         "wwn-0x60000000000000000e00000000010002"]
        dev = mp / "by-id" / names[1]
        status = mp / "by-id" / ".multipath" / names[1]
        assert dev.stat().st_size == 48 * MiB
        both_up = {first: ("active", "ready", "running"), second: ("active", "ready", "running")}
        assert paths(status) == both_up

        # Two jobs (queue depth 1 and 16) on separate regions, paced so that fio is still
        # writing when the second cut comes, then reading back to verify.
        fio_name = str(dev).replace(":", "\\:")
        common = ["--rw=randwrite", "--bsrange=4k-64k", "--ioengine=libaio", "--direct=1",
                  "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                  "--verify_state_save=0", "--randrepeat=1", "--allow_file_create=0",
                  "--rate=16m,1m"]
        fio = subprocess.Popen(
            ["fio", f"--filename={fio_name}", *common,
             "--name=qd1", "--iodepth=1", "--offset=0", "--size=6M",
             "--name=qd16", "--iodepth=16", "--offset=16M", "--size=12M"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert wait_for(lambda: counters(status)[first][0] > 20, timeout=20)

        # failover: the standby path goes away and comes back, I/O never notices;
        # round-robin: its commands go to the other path at once
        cutter.cut(SECOND)
        assert wait_for(lambda: paths(status)[second][0] == "failed", timeout=15)
        cutter.restore()
        assert wait_for(lambda: paths(status) == both_up, timeout=20)

        # the active path goes away: its commands go to the other path at once
        ios_before = counters(status)[second][0]
        cutter.cut("127.0.0.1")
        assert wait_for(lambda: paths(status)[first][0] == "failed", timeout=15)
        assert fio.poll() is None, "fio ended before the active path was cut: pace it slower"
        assert wait_for(lambda: counters(status)[second][0] > ios_before + 20, timeout=15)
        # the by-id file's xattrs: two paths, one healthy, which answered last
        assert (xattr(dev, "paths"), xattr(dev, "paths_active")) == ("2", "1")
        assert xattr(dev, "portal") == second
        cutter.restore()
        assert wait_for(lambda: paths(status) == both_up, timeout=20)   # failback

        out, _ = fio.communicate(timeout=120)
        assert fio.returncode == 0, out[-3000:]
        assert out.count("err= 0") == 2, out[-3000:]
        text = status.read_text()
        assert counters(status)[first][2] == 1 and counters(status)[second][2] == 1, text
        daemon = log.read_text()
        lines = [f"path {second} {IQN} lun 1 failed", f"path {second} {IQN} lun 1 reinstated",
                 f"path {first} {IQN} lun 1 failed", f"path {first} {IQN} lun 1 reinstated"]
        if policy == "failover":
            assert "active path switches: 2" in text
            assert "|-+- policy='failover' prio=2 status=active" in text
            lines += [f"active path switched from {first} {IQN} lun 1 to {second} {IQN} lun 1",
                      f"active path switched from {second} {IQN} lun 1 to {first} {IQN} lun 1"]
        else:
            assert "`-+- policy='round-robin' prio=1 status=active" in text
            assert "switched" not in daemon
        for line in lines:
            assert line in daemon, daemon[-3000:]
        # what the mount shows is what the target stores
        subprocess.run(["cmp", str(dev), str(backing)], check=True, timeout=60)
        assert xattr(dev, "paths_active") == "2"
        if policy == "failover":
            assert xattr(dev, "portal") == first     # failed back: cmp read through it
    finally:
        if fio is not None and fio.poll() is None:
            fio.kill()
            fio.wait(30)
        cutter.restore()
        unmount(mp, tgtd, [1], timeout=30)
