"""Online resize, rescan and new LUNs (``iscsiadm -m node -R``), and by-path symlinks, on real
mounts against the private tgtd; plus the automatic capacity re-read on UNIT ATTENTION 2A/09
(tgt never sends it, so that part runs on the fake initiator)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from helpers import wait_for
from mounting import mount, unmount

from iscsifs_testbed.tgtd import MiB


_wait = wait_for


def mount_here(tmp_path: Path, portal: str, *options: str, name: str = "mnt") -> Path:
    """A mount on ``tmp_path/name`` with its own config dir and log file."""
    conf = tmp_path / f"{name}-conf"
    conf.mkdir()
    return mount(tmp_path / name, portal, f"config_dir={conf}",
                 f"logfile={tmp_path / (name + '.log')}", *options).path


def test_rescan_sees_new_capacity_and_new_lun(tgt_target, fresh_target, fuse_available,
                                              tmp_path):
    tgtd = fresh_target.tgtd
    t = fresh_target(luns=[(8 * MiB, 512, None, "zero")])
    mp = mount_here(tmp_path, t.portal)
    try:
        tdir = mp / "portals" / t.portal / "targets" / t.iqn
        raw = tdir / "luns" / "1" / "raw"
        assert raw.stat().st_size == 8 * MiB
        assert sorted(os.listdir(tdir / "luns"), key=int) == ["0", "1"]
        # grow the LUN on the target: bigger backing file, LUN deleted and added again
        os.truncate(t.luns[1].path, 16 * MiB)
        tgtd.delete_lun(t.tid, 1)
        tgtd.add_lun(t.tid, 1, t.luns[1].path, blocksize=512)
        # and a new LUN 2
        extra = tgtd.make_backing_file(f"resize-t{t.tid}-lun2.img", 4 * MiB, "random")
        try:
            tgtd.add_lun(t.tid, 2, extra, blocksize=512)
            (tdir / "rescan").write_text("1\n")
            assert raw.stat().st_size == 16 * MiB            # kernel attributes invalidated
            assert sorted(os.listdir(tdir / "luns"), key=int) == ["0", "1", "2"]
            assert (tdir / "luns" / "2" / "raw").stat().st_size == 4 * MiB
            info = (tdir / "luns" / "1" / "info").read_text()
            assert f"Capacity bytes: {16 * MiB} " in info
            # the new area is writable
            data = os.urandom(MiB)
            subprocess.run(["dd", f"of={raw}", "bs=1M", "seek=12", "conv=notrunc,fsync",
                            "status=none"], input=data, check=True)
            with open(t.luns[1].path, "rb") as f:
                f.seek(12 * MiB)
                assert f.read(MiB) == data
            with open(raw, "rb") as f:
                f.seek(16 * MiB - 10)
                assert len(f.read(100)) == 10
            subprocess.run(["cmp", str(tdir / "luns" / "2" / "raw"), str(extra)], check=True)
            session = (tdir / "session").read_text()
            assert "\t\t\tAttached scsi disk luns/2/raw" in session
        finally:
            extra.unlink()
    finally:
        unmount(mp, tgtd, [t.tid])


def test_by_path_symlinks(tgt_target, fresh_target, fuse_available, tmp_path):
    tgtd = fresh_target.tgtd
    t = fresh_target(luns=[(8 * MiB, 512), (4 * MiB, 4096)])
    mp = mount_here(tmp_path, t.portal)
    try:
        by_path = mp / "by-path"
        assert os.listdir(by_path) == []                 # nothing logged in yet
        name1 = f"ip-{t.portal}-iscsi-{t.iqn}-lun-1"
        # a direct lookup logs in on demand
        link = by_path / name1
        assert link.is_symlink()
        assert os.readlink(link) == f"../portals/{t.portal}/targets/{t.iqn}/luns/1/raw"
        assert sorted(os.listdir(by_path)) == sorted([name1, f"ip-{t.portal}-iscsi-{t.iqn}-lun-2"])
        assert os.lstat(link).st_size == len(os.readlink(link))
        assert link.stat().st_size == 8 * MiB            # follows to raw
        data = os.urandom(MiB + 513)
        subprocess.run(["dd", f"of={link}", "bs=64k", "seek=7", "oflag=seek_bytes",
                        "conv=notrunc", "status=none"], input=data, check=True)
        with open(t.luns[1].path, "rb") as f:
            f.seek(7)
            assert f.read(len(data)) == data
        out = subprocess.run(["dd", f"if={by_path / f'ip-{t.portal}-iscsi-{t.iqn}-lun-2'}",
                              "bs=1M", "status=none"], capture_output=True, check=True).stdout
        assert out == t.luns[2].path.read_bytes()
        # LUN 0 is tgt's controller: no raw, no link; unknown names: ENOENT
        assert not (by_path / f"ip-{t.portal}-iscsi-{t.iqn}-lun-0").exists()
        assert not (by_path / f"ip-{t.portal}-iscsi-iqn.2026-11.org.nope:x-lun-1").exists()
        assert not (by_path / "ip-10.9.9.9:3260-iscsi-iqn.2026-11.org.nope:x-lun-1").exists()
        with pytest.raises(OSError) as info:
            os.symlink("x", by_path / "y")
        assert info.value.errno in (errno.EPERM, errno.EACCES)
    finally:
        unmount(mp, tgtd, [t.tid])
