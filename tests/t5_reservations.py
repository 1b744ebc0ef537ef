"""Persistent reservations against tgt, through two real mounts under two initiator names:
``iscsifs pr`` (sg_persist's options and output) acts through each mount's own session, a
RESERVATION CONFLICT reaches the writer as EBADE, and ``reservation_key=`` registers the key
again on every new I_T nexus (after tgtd drops the connection) before I/O goes down it.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from helpers import ok, run_iscsifs, wait_for
from mounting import Mount, mount

from iscsifs_testbed.tgtd import MiB

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST_A = "iqn.2026-11.org.iscsifs.test:host-a"
HOST_B = "iqn.2026-11.org.iscsifs.test:host-b"
BLOCK = bytes(range(256)) * 16          # 4 KiB


def host_mount(tmp_path: Path, portal: str, name: str, initiator: str, *options: str) -> Mount:
    """A mount as ``initiator`` with a config dir (``m.config_dir``: ``iscsifs pr`` reads the
    same one) and a log file (``m.log``) of its own."""
    return mount(tmp_path / name, portal, f"config_dir={tmp_path / f'{name}-config'}",
                 f"logfile={tmp_path / f'{name}.log'}", f"initiator_name={initiator}",
                 *options)


def pr(m: Mount, *args: str):
    return run_iscsifs(m.config_dir, "pr", *args)


@pytest.fixture
def mounts(tmp_path, tgt_target, fresh_target, fuse_available):
    made: list[Mount] = []

    def make(name: str, initiator: str, *options: str) -> Mount:
        m = host_mount(tmp_path, tgt_target.portal, name, initiator, *options)
        made.append(m)
        return m
    yield make
    for m in made:
        m.unmount()


def write(raw: Path, offset: int, data: bytes) -> None:
    fd = os.open(raw, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def read(raw: Path, offset: int, length: int) -> bytes:
    with open(raw, "rb", buffering=0) as f:
        f.seek(offset)
        return f.read(length)


def test_write_exclusive_fences_the_other_initiator_until_released(mounts, fresh_target):
    t = fresh_target([(8 * MiB, 512)])
    a, b = mounts("a", HOST_A), mounts("b", HOST_B)
    raw_a, raw_b = a.raw(t.iqn, 1), b.raw(t.iqn, 1)
    backing = t.luns[1].path

    r = ok(pr(b, "--in", "--read-keys", str(raw_b)))
    assert r.stdout == ("  IET       VIRTUAL-DISK      0001\n"
                        "  Peripheral device type: disk\n"
                        "  PR generation=0x0, there are NO registered reservation keys\n")
    ok(pr(a, "--out", "--register", "--param-sark=123abc", str(raw_a)))
    ok(pr(a, "--out", "--reserve", "--param-rk=0x123abc", "--prout-type=1", str(raw_a)))
    r = ok(pr(b, "-k", "-n", str(raw_b)))
    assert r.stdout == ("  PR generation=0x1, 1 registered reservation key follows:\n"
                        "    0x123abc\n")
    r = ok(pr(b, "--in", "--read-reservation", "--no-inquiry", str(raw_b)))
    assert r.stdout == ("  PR generation=0x1, Reservation follows:\n"
                        "    Key=0x123abc\n"
                        "    scope: LU_SCOPE,  type: Write Exclusive\n")

    # B is fenced: its write fails with EBADE, nothing reaches the LUN; its read works
    with pytest.raises(OSError) as info:
        write(raw_b, 0, b"B" * 4096)
    assert info.value.errno == errno.EBADE
    assert read(raw_b, 0, 4096) == backing.read_bytes()[:4096] != b"B" * 4096
    write(raw_a, 4096, BLOCK)                               # the holder writes
    assert backing.read_bytes()[4096:8192] == BLOCK

    r = pr(b, "--out", "--reserve", "--param-rk=0x1", "--prout-type=1", "-n", str(raw_b))
    assert r.returncode == 13 and r.stderr == (
        f"iscsifs: PR out (Reserve) on {raw_b}: Reservation conflict\n")
    r = pr(b, "--in", "--read-full-status", "-n", str(raw_b))   # tgt has no READ FULL STATUS
    assert r.returncode == 27 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"iscsifs: PR in (Read full status) on {raw_b}: not supported")
    r = ok(pr(b, "-c", "-n", str(raw_b)))
    assert r.stdout.splitlines()[:2] == ["Report capabilities response:",
                                         "  Replace Lost Reservation Capable(RLR_C): 0"]
    assert "      Write Exclusive: 1" in r.stdout.splitlines()

    ok(pr(a, "--out", "--release", "--param-rk=0x123abc", "--prout-type=1", "-n", str(raw_a)))
    assert ok(pr(b, "-r", "-n", str(raw_b))).stdout == \
        "  PR generation=0x1, there is NO reservation held\n"
    write(raw_b, 0, b"B" * 4096)
    assert backing.read_bytes()[:4096] == b"B" * 4096
    # the key never reached a log line of the mount
    assert "123abc" not in a.log.read_text() + b.log.read_text()


def test_reservation_key_is_registered_again_on_every_new_nexus(mounts, fresh_target,
                                                               tgt_target):
    t = fresh_target([(8 * MiB, 512)])
    a = mounts("a", HOST_A, "reservation_key=0xa1b2c3d4e5f60718",
               "noop_out_interval=1,noop_out_timeout=1")
    b = mounts("b", HOST_B)
    raw_a, raw_b = a.raw(t.iqn, 1), b.raw(t.iqn, 1)
    read(raw_a, 0, 512)                     # A logs in: the key is registered at once
    keys = ok(pr(b, "-k", "-n", str(raw_b))).stdout
    assert keys.endswith("1 registered reservation key follows:\n    0xa1b2c3d4e5f60718\n")

    # B registers and clears every registration (A's too); then tgtd drops A's connection:
    # A's relogin is a new I_T nexus, and the key is registered again before any I/O
    ok(pr(b, "--out", "--register", "--param-sark=0xb", "-n", str(raw_b)))
    ok(pr(b, "--out", "--clear", "--param-rk=0xb", "-n", str(raw_b)))
    assert "there are NO registered reservation keys" in ok(pr(b, "-k", "-n", str(raw_b))).stdout
    tgtd = tgt_target.tgtd
    conns = [c for c in tgtd.show_connections(t.tid) if c.initiator == HOST_A]
    assert len(conns) == 1
    tgtd.drop_connection(t.tid, conns[0].sid, conns[0].cid)
    assert wait_for(lambda: "relogged in" in a.log.read_text(), timeout=30)
    keys = ok(pr(b, "-k", "-n", str(raw_b))).stdout
    assert keys.endswith("1 registered reservation key follows:\n    0xa1b2c3d4e5f60718\n")
    log = a.log.read_text()
    registered = [m.start() for m in re.finditer("reservation key registered", log)]
    assert len(registered) == 2 and registered[1] < log.index("relogged in")
    assert "a1b2c3d4e5f60718" not in log.lower()           # INFO log: never the key
    write(raw_a, 0, BLOCK)                  # A's I/O goes on, on the new nexus
    assert read(raw_b, 0, 4096) == BLOCK


def test_reservation_key_on_every_path_of_a_by_id_file(two_portals, fuse_available, tmp_path):
    """Mounted through both portals of one target: the key is registered on both paths (two
    I_T nexuses), and ``iscsifs pr`` works on the by-id file: RELEASE goes to every path."""
    p1, p2 = two_portals.portals
    m = host_mount(tmp_path, f"{p1},{p2}", "mp", HOST_A, "reservation_key=0xfeed")
    path, config = m.path, m.config_dir
    try:
        dev = min(p for p in (path / "by-id").iterdir() if not p.name.startswith("."))
        keys = ok(run_iscsifs(config, "pr", "-k", "-n", str(dev))).stdout
        assert keys == ("  PR generation=0x2, 2 registered reservation keys follow:\n"
                        "    0xfeed\n    0xfeed\n")
        # Write Exclusive, all registrants: every registered path may write
        ok(run_iscsifs(config, "pr", "--out", "--reserve", "--param-rk=0xfeed",
                       "--prout-type=7", str(dev)))
        write(dev, 0, BLOCK)
        assert two_portals.backing[1].read_bytes()[:4096] == BLOCK
        ok(run_iscsifs(config, "pr", "--out", "--release", "--param-rk=0xfeed",
                       "--prout-type=7", str(dev)))
        assert "NO reservation held" in ok(run_iscsifs(config, "pr", "-r", str(dev))).stdout
    finally:
        m.unmount()
