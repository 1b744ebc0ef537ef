"""LUN changes on real mounts against tgtd: a target restarted with another logical unit behind
LUN 1 (other ``scsi_sn`` / ``scsi_id``) while a writer holds ``raw`` open, and LUNs added and
deleted with tgtadm while mounted, which appear in and leave ``luns/``, ``by-path/`` and
``by-id/`` with no write to ``rescan``. The MockClock side of the same rules:
t2_identity.py."""

from __future__ import annotations

import errno
import json
import mmap
import os
import threading
from pathlib import Path

import pytest

from helpers import wait_for
from mounting import mount, unmount

from iscsifs_testbed.tgtd import MiB, Tgtd, missing_requirements

IQN = "iqn.2026-11.org.iscsifs.test:lun-changes"
pytestmark = pytest.mark.integration


def mount_here(tmp_path: Path, portal: str, *options: str) -> tuple[Path, Path]:
    """A mount on ``tmp_path/mnt`` with its own config dir; (mount point, its log file)."""
    (tmp_path / "conf").mkdir()
    m = mount(tmp_path / "mnt", portal, f"config_dir={tmp_path / 'conf'}",
              f"logfile={tmp_path / 'mount.log'}", *options)
    assert m.log is not None
    return m.path, m.log


@pytest.fixture
def own_tgtd(tmp_path):
    """A private tgtd this test may kill and restart."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    tgtd = Tgtd(workdir=tmp_path / "tgtd")
    tgtd.start()
    try:
        yield tgtd
    finally:
        tgtd.stop()


def configure(tgtd: Tgtd, backing: Path, params: str | None = None) -> None:
    """Target, LUN 1 with its parameters, then bind: no login sees it half configured."""
    tgtd.add_target(1, IQN)
    tgtd.add_lun(1, 1, backing, params=params)
    tgtd.bind(1)


def test_a_target_restarted_with_another_lu_fails_the_writer_with_enxio(
        own_tgtd, fuse_available, tmp_path):
    old_file = own_tgtd.make_backing_file("old.img", 8 * MiB)
    new_file = own_tgtd.make_backing_file("new.img", 8 * MiB)
    configure(own_tgtd, old_file)
    mp, log = mount_here(tmp_path, own_tgtd.portal)
    try:
        lun1 = mp / "portals" / own_tgtd.portal / "targets" / IQN / "luns" / "1"
        old_info = json.loads((lun1 / "info.json").read_text())
        pattern = b"written through the old fd " * 151 + b"!" * 19      # 4096 bytes
        written: list[int] = []
        errors: list[int] = []

        def writer() -> None:
            fd = os.open(lun1 / "raw", os.O_WRONLY)
            try:
                for i in range(1 << 20):
                    os.pwrite(fd, pattern, (i % 2048) * 4096)
                    written.append(i)
            except OSError as exc:
                errors.append(exc.errno)
            finally:
                os.close(fd)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        assert wait_for(lambda: len(written) > 20)
        own_tgtd.kill_and_restart()
        old_after_kill = old_file.read_bytes()      # tgtd is gone: nothing changes it now
        new_before = new_file.read_bytes()
        assert pattern not in new_before
        configure(own_tgtd, new_file, params="scsi_sn=NEWSN42,scsi_id=NEWID42")
        thread.join(timeout=90)
        assert not thread.is_alive(), "the writer is still blocked"
        assert errors == [errno.ENXIO]
        assert old_file.read_bytes() == old_after_kill
        assert new_file.read_bytes() == new_before          # none of the writer's data
        # the tree shows the new LU under LUN 1
        assert wait_for(lambda: json.loads((lun1 / "info.json").read_text())["serial"]
                        == "NEWSN42", timeout=30)
        with open(lun1 / "raw", "rb") as f:
            assert f.read(MiB) == new_before[:MiB]
        text = log.read_text()
        assert (f"After a relogin, LUN 1 of {IQN} at {own_tgtd.portal} is another logical "
                f"unit (serial 'NEWSN42', ") in text
        assert f"it was serial {old_info['serial']!r}" in text
        assert "NEWID42" in text
    finally:
        unmount(mp)


def test_tgtadm_lun_add_and_delete_show_without_a_rescan(fresh_target, fuse_available,
                                                         tmp_path):
    t = fresh_target(luns=[(8 * MiB, 512)])
    tgtd = fresh_target.tgtd
    extra = tgtd.make_backing_file(f"lun-changes-t{t.tid}-lun2.img", 4 * MiB)
    mp, log = mount_here(tmp_path, t.portal)
    try:
        tdir = mp / "portals" / t.portal / "targets" / t.iqn
        luns = tdir / "luns"
        assert sorted(os.listdir(luns), key=int) == ["0", "1"]
        block = mmap.mmap(-1, 4096)             # O_DIRECT: every read is a command
        fd = os.open(luns / "1" / "raw", os.O_RDONLY | os.O_DIRECT)
        try:
            os.preadv(fd, [block], 0)
            tgtd.add_lun(t.tid, 2, extra)
            # tgt reports the change (UNIT ATTENTION 3F/0E) to the next command of the
            # session; the mount rescans by itself
            os.preadv(fd, [block], 0)
        finally:
            os.close(fd)
        assert wait_for(lambda: "2" in os.listdir(luns), timeout=30)
        link = f"ip-{t.portal}-iscsi-{t.iqn}-lun-2"
        assert link in os.listdir(mp / "by-path")
        wwn = json.loads((luns / "2" / "info.json").read_text())["wwn"]
        by_id = f"wwn-0x{wwn.removeprefix('naa.')}"
        assert by_id in os.listdir(mp / "by-id")
        fd = os.open(luns / "2" / "raw", os.O_RDONLY | os.O_DIRECT)
        cached = os.open(luns / "2" / "raw", os.O_RDONLY)        # through the page cache
        try:
            assert os.preadv(fd, [block], 0) == 4096 and block[:] == extra.read_bytes()[:4096]
            assert os.pread(cached, 4096, 0) == extra.read_bytes()[:4096]
            tgtd.delete_lun(t.tid, 2)
            with pytest.raises(OSError) as info:         # at once: no relogin, no wait
                os.preadv(fd, [block], 0)
            assert info.value.errno == errno.ENXIO
            assert wait_for(lambda: "2" not in os.listdir(luns), timeout=30)
            assert link not in os.listdir(mp / "by-path")
            assert by_id not in os.listdir(mp / "by-id")
            with pytest.raises(OSError) as info:
                os.preadv(fd, [block], 0)
            assert info.value.errno == errno.ENXIO

            def cache_dropped() -> bool:                 # as a deleted disk's page cache
                try:
                    os.pread(cached, 4096, 0)
                except OSError as exc:
                    return exc.errno == errno.ENXIO
                return False
            assert wait_for(cache_dropped, timeout=10)
        finally:
            os.close(fd)
            os.close(cached)
            block.close()
        session = json.loads((tdir / "session.json").read_text())
        assert "reconnects" not in session["extended_stats"]       # no relogin at all
        text = log.read_text()
        assert f"On a rescan, LUN 2 of {t.iqn} at {t.portal} is not reported by the " \
               f"target any more" in text
    finally:
        unmount(mp)
        extra.unlink()
