"""Real mounts driven by real tools: concurrent writers, fio --verify, cache modes, digests."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from helpers import wait_for
from mounting import Mount
from t5_mount import do_mount
from iscsifs_testbed.tgtd import MiB

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_mount(fresh_target, fuse_available, tmp_path):
    """``fresh_mount(luns, params=None, options=()) -> (Mount, TargetInfo)``; unmounted after."""
    mounts = []

    def make(luns, params=None, options=(), name="mnt"):
        info = fresh_target(luns, params=params)
        mp = do_mount(tmp_path, info.portal, "iqn.2026-11.org.iscsifs.test:io", *options,
                      name=name)
        m = Mount(mp, info.portal, fresh_target.tgtd, [info.tid])
        mounts.append(m)
        return m, info

    try:
        yield make
    finally:
        for m in mounts:
            m.unmount()


def test_two_processes_write_different_regions(fresh_mount, tmp_path):
    m, info = fresh_mount([(16 * MiB, 512)])
    raw = m.raw(info.iqn, 1)
    srcs = []
    for i in range(2):
        src = tmp_path / f"src{i}"
        src.write_bytes(os.urandom(6 * MiB + 1234))
        srcs.append(src)
    # two dd processes at once, unaligned regions that share no block
    procs = [subprocess.Popen(["dd", f"if={srcs[i]}", f"of={raw}", "bs=64k",
                               f"seek={1 + i * 7 * MiB}", "oflag=seek_bytes",
                               "conv=notrunc", "status=none"]) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    backing = info.luns[1].path.read_bytes()
    for i, src in enumerate(srcs):
        data = src.read_bytes()
        start = 1 + i * 7 * MiB
        assert backing[start:start + len(data)] == data


@pytest.mark.parametrize("cache", ["auto", "direct", "page"])
def test_fio_verify_and_cmp(fresh_mount, cache):
    if shutil.which("fio") is None:
        pytest.fail("fio is not installed (scripts/setup installs it)")
    m, info = fresh_mount([(32 * MiB, 512)], options=(f"cache={cache}",))
    raw = m.raw(info.iqn, 1)
    fio_name = str(raw).replace(":", "\\:")      # ':' separates file names for fio
    out = subprocess.run(["fio", "--name=verify", f"--filename={fio_name}", "--rw=randwrite",
                          "--bs=4k", "--bsrange=512-64k", "--ioengine=libaio", "--iodepth=16",
                          "--direct=1", "--size=24M", "--verify=crc32c", "--do_verify=1",
                          "--verify_fatal=1", "--verify_state_save=0", "--randrepeat=1", "--allow_file_create=0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "verify" in out.stdout and "err= 0" in out.stdout
    # what the mount shows is what the target stores
    subprocess.run(["cmp", str(raw), str(info.luns[1].path)], check=True, timeout=120)


def test_session_file_shows_forced_digests(fresh_mount):
    m, info = fresh_mount([(4 * MiB, 512)],
                          params={"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"},
                          options=("header_digest=crc32c+none", "data_digest=crc32c+none"))
    os.listdir(m.target(info.iqn) / "luns")              # logs in
    with open(m.raw(info.iqn, 1), "rb") as f:
        assert f.read(4096) == info.luns[1].path.read_bytes()[:4096]
    text = (m.target(info.iqn) / "session").read_text()
    assert "\t\tHeaderDigest: CRC32C\n" in text
    assert "\t\tDataDigest: CRC32C\n" in text
    assert "iSCSI Connection State: LOGGED IN" in text
    assert "digest_err: 0" in text


def test_dropped_connection_is_invisible_to_dd(fresh_mount, tmp_path):
    m, info = fresh_mount([(8 * MiB, 512)])
    raw = m.raw(info.iqn, 1)
    with open(raw, "rb") as f:
        f.read(512)
    tgtd = m.tgtd
    conns = tgtd.show_connections(info.tid)
    assert len(conns) == 1
    tgtd.drop_connection(info.tid, conns[0].sid, conns[0].cid)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 * MiB))
    subprocess.run(["dd", f"if={src}", f"of={raw}", "bs=1M", "conv=notrunc,fsync",
                    "status=none"], check=True, timeout=120)
    assert info.luns[1].path.read_bytes()[:2 * MiB] == src.read_bytes()
    assert wait_for(lambda: len(tgtd.show_connections(info.tid)) == 1)
    text = (m.target(info.iqn) / "session").read_text()
    assert "iSCSI Session State: LOGGED_IN" in text
