"""Real mounts: mount.iscsifs (daemonized, as users run it) against the private tgtd.

Pattern: the helper returns once the mount is ready (or failed), so the fixture asserts
``os.path.ismount`` right away; teardown unmounts with ``fusermount3 -u`` and waits (bounded)
until the target shows no session for us — unmount must log out.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import wait_for
from mounting import HELPER, Mount, mount, no_sessions, run_helper

from iscsifs_testbed.tgtd import IQN1, IQN2, MiB

pytestmark = pytest.mark.integration


_wait = wait_for


def do_mount(tmp_path: Path, portal: str, initiator_name: str, *options: str,
             name: str = "mnt") -> Path:
    """Mount ``portal`` on ``tmp_path/name`` as ``initiator_name``: it must say nothing."""
    m = mount(tmp_path / name, portal, f"initiator_name={initiator_name}", *options)
    assert m.stderr == ""
    return m.path


@pytest.fixture
def mounted(tgt_target, fuse_available, tmp_path):
    mp = do_mount(tmp_path, tgt_target.portal, tgt_target.initiator_name)
    m = Mount(mp, tgt_target.portal, tgt_target.tgtd,
              [tgt_target.disk1.tid, tgt_target.disk2.tid])
    try:
        yield m
    finally:
        m.unmount()


def test_tree_lists_targets_and_luns(mounted, tgt_target):
    assert sorted(os.listdir(mounted.path)) == ["InitiatorName", "by-id", "by-path", "portals",
                                                "sessions"]
    assert (mounted.path / "sessions").read_text() == ""         # nothing logged in yet
    assert os.listdir(mounted.path / "portals") == [tgt_target.portal]
    targets = sorted(os.listdir(mounted.path / "portals" / tgt_target.portal / "targets"))
    assert targets == sorted([IQN1, IQN2])
    assert (mounted.path / "InitiatorName").read_text() == \
        f"InitiatorName={tgt_target.initiator_name}\n"
    session = mounted.target(IQN1) / "session"
    assert "not logged in" in session.read_text().lower()
    luns = sorted(os.listdir(mounted.target(IQN1) / "luns"), key=int)
    assert luns == ["0", "1", "2", "3"]                        # tgt's controller LUN 0 too
    assert sorted(os.listdir(mounted.target(IQN1) / "luns" / "0")) == ["info", "info.json"]
    text = session.read_text()
    assert "\t\tiSCSI Session State: LOGGED_IN\n" in text
    sid = re.search(r"\tSID: (\d+)\n", text)[1]
    assert (mounted.path / "sessions").read_text() == \
        f"tcp: [{sid}] {tgt_target.portal},1 {IQN1} (non-flash)\n"
    assert "\t\t\tAttached scsi disk luns/1/raw\t\tState: running\n" in text
    for n, info in tgt_target.disk1.luns.items():
        st = mounted.raw(IQN1, n).stat()
        assert st.st_size == info.size
        assert st.st_blocks == info.size // 512
        assert stat.S_IMODE(st.st_mode) == (0o400 if info.readonly else 0o600)
        assert st.st_uid == os.getuid()
        lun_info = (mounted.target(IQN1) / "luns" / str(n) / "info").read_text()
        assert f"Block size: {info.block_size}\n" in lun_info
        assert f"Write protect: {'Yes' if info.readonly else 'No'}\n" in lun_info


def test_raw_reads_match_backing_file(mounted, tgt_target):
    for n, info in tgt_target.disk1.luns.items():
        subprocess.run(["cmp", str(mounted.raw(IQN1, n)), str(info.path)], check=True)


def test_reads_past_end_and_truncate(mounted, tgt_target):
    info = tgt_target.disk1.luns[1]
    fd = os.open(mounted.raw(IQN1, 1), os.O_RDWR)
    try:
        assert len(os.pread(fd, 4096, info.size - 100)) == 100
        assert os.pread(fd, 4096, info.size) == b""
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"x", info.size)
        assert exc.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as exc:
            os.ftruncate(fd, 4096)
        assert exc.value.errno in (errno.EINVAL, errno.EPERM)
        os.ftruncate(fd, info.size)          # same size: a no-op, allowed
        os.fsync(fd)
    finally:
        os.close(fd)
    assert mounted.raw(IQN1, 1).stat().st_size == info.size


def test_write_protected_lun(mounted, tgt_target):
    raw = mounted.raw(IQN1, 3)
    assert stat.S_IMODE(raw.stat().st_mode) == 0o400
    with pytest.raises(OSError) as exc:
        os.open(raw, os.O_WRONLY)
    assert exc.value.errno in (errno.EROFS, errno.EACCES)


def test_mounting_twice_on_the_same_directory_is_exit_7(mounted, tgt_target):
    """The docs promise 7 for a bad mount point; a second mount said 1."""
    result = run_helper(tgt_target.portal, mounted.path, "-o",
                        f"initiator_name={tgt_target.initiator_name}")
    assert result.returncode == 7, result.stderr
    assert result.stderr == (f"mount.iscsifs: {mounted.path} is already an iscsifs mount "
                             "point\n")
    assert os.path.ismount(mounted.path)
    with open("/proc/self/mountinfo") as f:
        assert sum(f" {mounted.path} " in line for line in f) == 1


def test_lun_made_read_only_after_login(tgt_target, fresh_target, fuse_available, tmp_path):
    """tgtadm makes a LUN read-only while it is mounted: the next write fails with EROFS and
    from then on ``raw`` is 0400 and ``info`` says "Write protect: Yes" (they stayed 0600 and
    No); a rescan after it is writable again brings both back."""
    t = fresh_target(luns=[(4 * MiB, 512, None, "zero")])
    tgtd = fresh_target.tgtd
    mp = do_mount(tmp_path, t.portal, tgt_target.initiator_name)
    m = Mount(mp, t.portal, tgtd, [t.tid])
    try:
        raw, info = m.raw(t.iqn, 1), m.target(t.iqn) / "luns" / "1" / "info"
        assert stat.S_IMODE(raw.stat().st_mode) == 0o600
        fd = os.open(raw, os.O_WRONLY)
        try:
            os.pwrite(fd, b"a" * 4096, 0)
            tgtd.update_lun(t.tid, 1, "readonly=1")
            with pytest.raises(OSError) as exc:
                os.pwrite(fd, b"b" * 4096, 0)
            assert exc.value.errno == errno.EROFS
        finally:
            os.close(fd)
        assert stat.S_IMODE(raw.stat().st_mode) == 0o400      # the kernel's cache was dropped
        assert "Write protect: Yes\n" in info.read_text()
        with pytest.raises(OSError) as exc:
            os.open(raw, os.O_WRONLY)
        assert exc.value.errno == errno.EROFS
        with open(t.luns[1].path, "rb") as f:
            assert f.read(4096) == b"a" * 4096
        tgtd.update_lun(t.tid, 1, "readonly=0")
        (m.target(t.iqn) / "rescan").write_text("1\n")
        assert stat.S_IMODE(raw.stat().st_mode) == 0o600
        assert "Write protect: No\n" in info.read_text()
    finally:
        m.unmount()


def test_dd_unaligned_writes(tgt_target, fresh_target, fuse_available, tmp_path):
    t = fresh_target(luns=[(8 * MiB, 512), (4 * MiB, 4096)])
    mp = do_mount(tmp_path, tgt_target.portal, tgt_target.initiator_name)
    m = Mount(mp, tgt_target.portal, tgt_target.tgtd, [t.tid])
    try:
        for n in (1, 2):
            raw = m.raw(t.iqn, n)
            for bs, seek, size in ((1, 7, 3000), (511, 4099, 300_000), (4096, 1234567, 300_000),
                                   (65537, 3 * MiB + 1, 300_000)):
                data = os.urandom(size)   # with bs=1 every byte is one read-modify-write
                subprocess.run(["dd", f"of={raw}", f"bs={bs}", f"seek={seek}",
                                "oflag=seek_bytes", "conv=notrunc", "status=none"],
                               input=data, check=True)
                expected = data
                with open(t.luns[n].path, "rb") as f:
                    f.seek(seek)
                    assert f.read(len(expected)) == expected, (n, bs, seek)
        subprocess.run(["dd", f"if={t.luns[1].path}", f"of={m.raw(t.iqn, 1)}", "bs=1M",
                        "oflag=direct", "conv=fsync,notrunc", "status=none"], check=True)
        subprocess.run(["cmp", str(m.raw(t.iqn, 1)), str(t.luns[1].path)], check=True)
    finally:
        m.unmount()


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_qemu_img(mounted, tgt_target, tmp_path):
    raw = mounted.raw(IQN1, 2)
    out = subprocess.run(["qemu-img", "info", str(raw)], capture_output=True, text=True,
                         check=True).stdout
    assert "file format: raw" in out and "16 MiB" in out
    copy = tmp_path / "copy.img"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(raw), str(copy)], check=True)
    subprocess.run(["qemu-img", "compare", str(raw), str(copy)], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "compare", "-T", "none", str(raw), str(copy)], check=True,
                   capture_output=True)


def test_statfs_and_tools(mounted, tgt_target):
    os.listdir(mounted.target(IQN1) / "luns")
    st = os.statvfs(mounted.path)
    assert st.f_bsize == 4096 and st.f_bfree == 0
    assert st.f_blocks * st.f_frsize >= (64 + 16 + 8) * MiB
    found = subprocess.run(["find", str(mounted.path), "-name", "raw"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert str(mounted.raw(IQN1, 1)) in found
    subprocess.run(["du", "-s", str(mounted.path)], check=True, capture_output=True)
    out = subprocess.run(["file", "-s", str(mounted.raw(IQN1, 1))], capture_output=True,
                         text=True, check=True).stdout
    assert "raw" in out


def test_sigterm_logs_out_and_unmounts(tgt_target, fuse_available, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen([sys.executable, str(HELPER), tgt_target.portal, str(mp), "-f",
                             "-o", f"initiator_name={tgt_target.initiator_name}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: os.path.ismount(mp) or proc.poll() is not None), "no mount"
        assert os.path.ismount(mp), proc.stderr.read() if proc.poll() is not None else ""
        os.listdir(mp / "portals" / tgt_target.portal / "targets" / IQN1 / "luns")
        assert tgt_target.tgtd.show_connections(tgt_target.disk1.tid)
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert not os.path.ismount(mp)
        assert _wait(lambda: no_sessions(tgt_target.tgtd, [tgt_target.disk1.tid]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)


def test_mount_command_uses_helper(tgt_target, fuse_available, tmp_path):
    """mount(8) runs /sbin/mount.<type> (util-linux searches /sbin:/sbin/fs.d:/sbin/fs only)."""
    sbin = Path("/sbin/mount.iscsifs")
    helper = Path(sys.prefix) / "bin" / "mount.iscsifs"
    if not helper.exists():
        pytest.skip("mount.iscsifs not installed in this environment's bin/")
    created = False
    if not sbin.exists():
        if os.geteuid() != 0:
            pytest.skip("needs root to install /sbin/mount.iscsifs")
        sbin.symlink_to(helper)
        created = True
    mp = tmp_path / "san"
    mp.mkdir()
    try:
        subprocess.run(["mount", "-t", "iscsifs", tgt_target.portal, str(mp), "-o",
                        f"initiator_name={tgt_target.initiator_name},_netdev"],
                       check=True, capture_output=True, text=True, timeout=60)
        assert os.path.ismount(mp)
        with open("/proc/self/mounts") as f:
            assert any(line.split()[1] == str(mp) and line.split()[2] == "fuse.iscsifs"
                       for line in f)
        assert IQN1 in os.listdir(mp / "portals" / tgt_target.portal / "targets")
        subprocess.run(["umount", str(mp)], check=True, timeout=30)
        assert _wait(lambda: not os.path.ismount(mp))
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)
        if created:
            sbin.unlink()
