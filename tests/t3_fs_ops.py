"""fs/ops.py handlers called directly, over the in-memory FakeInitiator (no mount, no target)."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from iscsifs.core.names import Portal
from iscsifs.device import Provisioning
from iscsifs.errors import ConnectionLost
from iscsifs.fs.ops import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
                            FALLOC_FL_ZERO_RANGE, HAVE_PARALLEL_DIRECT_WRITES, Operations)
from iscsifs.fs.tree import ROOT_INODE, Tree

from fs_fake import (DISK1, HOSTILE_NAMES, FakeInitiator, FakeLun, FakeLunEntry, ScsiError,
                     standard_targets)

PORTAL = Portal("127.0.0.1", 3260)

# The fake target reports HOSTILE_NAMES in every SendTargets answer: each listing of targets/
# skips them with a warning.
pytestmark = pytest.mark.expect_log("skipping target with unusable name", logger="iscsifs.fs.tree",
                                    optional=True)


def make_ops(**kw) -> tuple[Operations, FakeInitiator]:
    fake = FakeInitiator(standard_targets(), extra_names=HOSTILE_NAMES)
    ops = Operations(fake, Tree([PORTAL]), initiator_name="iqn.2016-04.com.open-iscsi:ab",
                     **kw)
    return ops, fake


async def walk(ops: Operations, *names: str) -> pyfuse3.EntryAttributes:
    inode = ROOT_INODE
    attr = await ops.getattr(inode)
    for name in names:
        attr = await ops.lookup(inode, name.encode())
        inode = attr.st_ino
    return attr


async def list_luns(ops) -> None:
    """What `ls luns/` does: opendir lists the LUNs (and logs in)."""
    luns = await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "luns")
    await ops.releasedir(await ops.opendir(luns.st_ino, None))


async def raw(ops, lun: int):
    return await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "luns", str(lun), "raw")


def fields(**kw):
    base = dict(update_size=False, update_mode=False, update_uid=False, update_gid=False,
                update_mtime=False, update_atime=False, update_ctime=False)
    base.update(kw)
    return SimpleNamespace(**base)


async def expect_errno(code, coro):
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro
    assert info.value.errno == code


async def test_lookup_and_attributes():
    ops, fake = make_ops()
    root = await ops.getattr(ROOT_INODE)
    assert stat.S_ISDIR(root.st_mode) and root.st_nlink == 5   # by-path/ by-id/ portals/ . ..
    targets = await walk(ops, "portals", "127.0.0.1:3260", "targets")
    assert targets.st_nlink == 1                      # not listed yet: unknown
    for name in (n for n in HOSTILE_NAMES if n not in (".", "..")):
        await expect_errno(errno.ENOENT, ops.lookup(targets.st_ino, name.encode("utf-8")))
    await expect_errno(errno.ENOENT, ops.lookup(targets.st_ino, b"\xff\xfe"))
    a = await raw(ops, 1)
    assert stat.S_IMODE(a.st_mode) == 0o600 and a.st_size == 1 << 20
    assert a.st_blocks == (1 << 20) // 512 and a.st_uid == os.getuid()
    assert stat.S_IMODE((await raw(ops, 3)).st_mode) == 0o400
    await expect_errno(errno.ENOENT, walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1,
                                          "luns", "0", "raw"))
    luns = await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "luns")
    assert luns.st_nlink == 2 + 4
    ro_ops, _ = make_ops(read_only=True)
    assert stat.S_IMODE((await raw(ro_ops, 1)).st_mode) == 0o400


@pytest.mark.expect_log("fsync: ConnectionLost: target gone -> EIO", logger="iscsifs.fs.errno_map")
@pytest.mark.expect_log("fsync: ScsiError: MEDIUM ERROR", logger="iscsifs.fs.errno_map")
async def test_raw_io_semantics():
    ops, fake = make_ops()
    dev = fake.targets[DISK1][1].device
    a = await raw(ops, 1)
    fi = await ops.open(a.st_ino, os.O_RDWR | os.O_DIRECT, None)
    assert fi.direct_io and not fi.keep_cache
    fh = fi.fh
    assert await ops.read(fh, 0, 100) == dev.data[:100]
    assert len(await ops.read(fh, dev.size - 10, 100)) == 10          # short at the end
    assert await ops.read(fh, dev.size, 100) == b""
    assert await ops.read(fh, dev.size + 4096, 100) == b""
    assert await ops.write(fh, 5, b"hello") == 5 and dev.data[5:10] == b"hello"
    await expect_errno(errno.ENOSPC, ops.write(fh, dev.size, b"x"))
    before = bytes(dev.data)
    assert await ops.write(fh, dev.size - 3, b"abcdef") == 3          # only what fits
    assert dev.data[-3:] == b"abc" and len(dev.data) == len(before)
    await expect_errno(errno.EINVAL, ops.setattr(a.st_ino, SimpleNamespace(st_size=0),
                                                 fields(update_size=True), fh, None))
    same = await ops.setattr(a.st_ino, SimpleNamespace(st_size=dev.size),
                             fields(update_size=True), fh, None)
    assert same.st_size == dev.size
    await expect_errno(errno.EPERM, ops.setattr(a.st_ino, SimpleNamespace(st_mode=0o777),
                                                fields(update_mode=True), fh, None))
    await ops.fsync(fh, False)
    assert dev.flushes == 1
    dev.flush_error = ConnectionLost("target gone")
    await expect_errno(errno.EIO, ops.fsync(fh, True))                # not swallowed
    # errors from below go through the real errno mapping
    dev.flush_error = ScsiError(0x7, 0x27, 0x00)                      # DATA PROTECT
    await expect_errno(errno.EROFS, ops.fsync(fh, True))
    dev.flush_error = ScsiError(0x3, 0x11, 0x00)                      # MEDIUM ERROR
    await expect_errno(errno.EIO, ops.fsync(fh, True))
    dev.flush_error = ScsiError(0x5, 0x21, 0x00)                      # LBA out of range
    await expect_errno(errno.ENOSPC, ops.fsync(fh, True))
    dev.flush_error = None
    await ops.release(fh)
    await expect_errno(errno.EBADF, ops.read(fh, 0, 1))


async def test_cache_modes():
    """auto (the default) is a block device's: the page cache for buffered opens, none for
    O_DIRECT ones, which may write in parallel; direct never caches, page always does. The
    cache is kept while the LUN is open and dropped by a first open."""
    for mode, buffered, odirect in (("auto", False, True), ("direct", True, True),
                                    ("page", False, False)):
        ops, _ = make_ops(cache=mode)
        inode = (await raw(ops, 1)).st_ino
        fi = await ops.open(inode, os.O_RDONLY, None)
        assert fi.direct_io is buffered and not fi.keep_cache, mode
        second = await ops.open(inode, os.O_RDWR | os.O_DIRECT, None)
        assert second.direct_io is odirect and second.keep_cache, mode
        if HAVE_PARALLEL_DIRECT_WRITES:
            assert second.parallel_direct_writes is odirect, mode
        await ops.release(fi.fh)
        await ops.release(second.fh)
        assert not (await ops.open(inode, os.O_RDONLY, None)).keep_cache   # first again
    assert Operations.__init__.__kwdefaults__["cache"] == "auto"


async def test_write_protected_and_read_only():
    ops, fake = make_ops()
    a3 = await raw(ops, 3)
    await expect_errno(errno.EROFS, ops.open(a3.st_ino, os.O_WRONLY, None))
    fh = (await ops.open(a3.st_ino, os.O_RDONLY, None)).fh
    assert len(await ops.read(fh, 0, 4096)) == 4096
    await expect_errno(errno.EROFS, ops.write(fh, 0, b"x"))
    ro_ops, _ = make_ops(read_only=True)
    await expect_errno(errno.EROFS, ro_ops.open((await raw(ro_ops, 1)).st_ino, os.O_RDWR, None))
    # a DATA PROTECT answer from the target (LUN became read-only) is EROFS too
    dev = fake.targets[DISK1][1].device
    fh = (await ops.open((await raw(ops, 1)).st_ino, os.O_RDWR, None)).fh
    dev.write_protected = True
    await expect_errno(errno.EROFS, ops.write(fh, 0, b"x"))


async def test_lun_made_read_only_at_the_target_shows_in_mode_and_info(monkeypatch):
    """DATA PROTECT on a WRITE (tgt: readonly=1 at runtime): the write fails with EROFS, the
    WP bit is read again, and the raw file turns 0400, the info file says "Write protect:
    Yes", and the kernel is told to forget the raw file's cached attributes."""
    forgotten = []
    monkeypatch.setattr(pyfuse3, "invalidate_inode",
                        lambda inode, attr_only=False: forgotten.append((inode, attr_only)))
    ops, fake = make_ops(kernel_notify=True)
    a1 = await raw(ops, 1)
    assert stat.S_IMODE(a1.st_mode) == 0o600
    fh = (await ops.open(a1.st_ino, os.O_RDWR, None)).fh
    assert await ops.write(fh, 0, b"x" * 512) == 512
    dev = fake.targets[DISK1][1].device
    dev.medium_protected = True                       # tgtadm ... --params readonly=1
    await expect_errno(errno.EROFS, ops.write(fh, 0, b"y" * 512))
    assert (a1.st_ino, True) in forgotten
    assert stat.S_IMODE((await ops.getattr(a1.st_ino)).st_mode) == 0o400
    info = await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "luns", "1", "info")
    text = await ops.read((await ops.open(info.st_ino, os.O_RDONLY, None)).fh, 0, 1 << 16)
    assert b"Write protect: Yes" in text
    await expect_errno(errno.EROFS, ops.open(a1.st_ino, os.O_WRONLY, None))
    assert len(await ops.read(fh, 0, 512)) == 512       # reads go on

# -- extended attributes and discard ------------------------------------------------------
IDENTITY = {
    b"user.iscsi.wwn": b"naa.60000000000000000e00000000010001",
    b"user.iscsi.serial": b"beaf11",
    b"user.iscsi.vendor": b"IET",
    b"user.iscsi.product": b"VIRTUAL-DISK",
    b"user.iscsi.revision": b"0001",
    b"user.iscsi.block_size": b"512",
    b"user.iscsi.target": DISK1.encode(),
    b"user.iscsi.portal": b"127.0.0.1:3260",
    b"user.iscsi.lun": b"1",
}


async def test_raw_files_carry_the_lun_identity_as_xattrs():
    ops, fake = make_ops()
    a = await raw(ops, 1)
    assert await ops.listxattr(a.st_ino, None) == list(IDENTITY)
    for name, value in IDENTITY.items():
        assert await ops.getxattr(a.st_ino, name, None) == value
    assert await ops.getxattr((await raw(ops, 2)).st_ino, b"user.iscsi.block_size",
                              None) == b"4096"
    # what the LUN does not report is absent, not empty
    dev = fake.targets[DISK1][1].device
    dev.serial, dev.wwn = None, ""
    assert b"user.iscsi.serial" not in await ops.listxattr(a.st_ino, None)
    await expect_errno(pyfuse3.ENOATTR, ops.getxattr(a.st_ino, b"user.iscsi.serial", None))
    await expect_errno(pyfuse3.ENOATTR, ops.getxattr(a.st_ino, b"user.iscsi.wwn", None))
    # the discard control is write-only; other names and other files have nothing
    await expect_errno(pyfuse3.ENOATTR, ops.getxattr(a.st_ino, b"user.iscsi.discard", None))
    await expect_errno(pyfuse3.ENOATTR, ops.getxattr(a.st_ino, b"security.selinux", None))
    info = await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "luns", "1", "info")
    for inode in (info.st_ino, ROOT_INODE):
        assert await ops.listxattr(inode, None) == []
        await expect_errno(pyfuse3.ENOATTR, ops.getxattr(inode, b"user.iscsi.lun", None))


async def test_identity_xattrs_are_read_only():
    ops, _ = make_ops()
    a = await raw(ops, 1)
    await expect_errno(errno.EPERM, ops.setxattr(a.st_ino, b"user.iscsi.vendor", b"X", None))
    await expect_errno(errno.EPERM, ops.removexattr(a.st_ino, b"user.iscsi.lun", None))
    await expect_errno(errno.ENOTSUP, ops.setxattr(a.st_ino, b"user.comment", b"x", None))
    await expect_errno(pyfuse3.ENOATTR, ops.removexattr(a.st_ino, b"user.comment", None))
    await expect_errno(errno.ENOTSUP, ops.setxattr(ROOT_INODE, b"user.iscsi.lun", b"1", None))
    await expect_errno(errno.ENOTSUP, ops.setxattr(ROOT_INODE, b"user.iscsi.discard",
                                                   b"0 1", None))
    assert await ops.getxattr(a.st_ino, b"user.iscsi.vendor", None) == b"IET"


async def test_hostile_identity_is_printable_ascii():
    ops, fake = make_ops()
    dev = fake.targets[DISK1][1].device
    dev.inquiry = SimpleNamespace(vendor="EV\nIL", product="caf\u00e9\x00", revision="\x1b[1m",
                                  device_type=0)
    dev.serial = "s\r\n\tx"
    a = await raw(ops, 1)
    for name in await ops.listxattr(a.st_ino, None):
        value = await ops.getxattr(a.st_ino, name, None)
        assert value and all(0x20 <= c < 0x7F for c in value), (name, value)
    assert await ops.getxattr(a.st_ino, b"user.iscsi.vendor", None) == b"EV\\x0aIL"
    assert await ops.getxattr(a.st_ino, b"user.iscsi.product", None) == b"caf\\xe9\\x00"


async def test_discard_through_setxattr():
    ops, fake = make_ops()
    dev = fake.targets[DISK1][1].device
    a = await raw(ops, 1)
    before = bytes(dev.data)
    await ops.setxattr(a.st_ino, b"user.iscsi.discard", b"1000 20000", None)
    assert dev.discards == [(1000, 20000)]
    assert dev.data[1000:21000] == bytes(20000)
    assert dev.data[:1000] == before[:1000] and dev.data[21000:] == before[21000:]
    await ops.setxattr(a.st_ino, b"user.iscsi.discard", b"0 0", None)     # nothing to do
    for bad in (b"", b"1", b"-1 5", b"1 2 3", b"0x10 5", b"1,2", b"1 5\0"):
        await expect_errno(errno.EINVAL, ops.setxattr(a.st_ino, b"user.iscsi.discard", bad,
                                                      None))
    await expect_errno(errno.ENOSPC, ops.setxattr(a.st_ino, b"user.iscsi.discard",
                                                  f"{dev.size - 10} 11".encode(), None))
    assert len(dev.discards) == 1                 # the refused ones never reached the LUN
    # a read-only LUN or mount: EROFS before anything is sent
    await expect_errno(errno.EROFS, ops.setxattr((await raw(ops, 3)).st_ino,
                                                 b"user.iscsi.discard", b"0 512", None))
    ro_ops, ro_fake = make_ops(read_only=True)
    await expect_errno(errno.EROFS, ro_ops.setxattr((await raw(ro_ops, 1)).st_ino,
                                                    b"user.iscsi.discard", b"0 512", None))
    assert ro_fake.targets[DISK1][1].device.discards == []
    # a LUN without logical block provisioning
    dev.provisioning = Provisioning()
    await expect_errno(errno.EOPNOTSUPP, ops.setxattr(a.st_ino, b"user.iscsi.discard",
                                                      b"0 512", None))


async def test_fallocate_punches_holes_and_zeroes_ranges():
    ops, fake = make_ops()
    dev = fake.targets[DISK1][1].device
    a = await raw(ops, 1)
    fh = (await ops.open(a.st_ino, os.O_RDWR, None)).fh
    before = bytes(dev.data)
    punch, zero = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE
    await ops.fallocate(fh, punch, 1000, 20000)
    await ops.fallocate(fh, zero, 30000, 100)
    await ops.fallocate(fh, zero | FALLOC_FL_KEEP_SIZE, 40000, 512)
    assert dev.fallocates == [("punch_hole", 1000, 20000), ("zero_range", 30000, 100),
                              ("zero_range", 40000, 512)]
    assert dev.data[1000:21000] == bytes(20000) and dev.data[30000:30100] == bytes(100)
    assert dev.data[:1000] == before[:1000] and dev.data[21000:30000] == before[21000:30000]
    # KEEP_SIZE past the end: clipped, as for a file; growing the LUN: ENOSPC
    await ops.fallocate(fh, punch, dev.size - 100, 1 << 20)
    assert dev.fallocates[-1] == ("punch_hole", dev.size - 100, 100)
    await ops.fallocate(fh, punch, dev.size + 4096, 512)              # nothing to do
    assert len(dev.fallocates) == 4
    await expect_errno(errno.ENOSPC, ops.fallocate(fh, zero, dev.size - 100, 1 << 20))
    # allocation, collapse, insert, unshare, PUNCH_HOLE without KEEP_SIZE: not for a LUN
    for mode in (0, FALLOC_FL_KEEP_SIZE, 0x08, 0x20, 0x40, FALLOC_FL_PUNCH_HOLE):
        await expect_errno(errno.EOPNOTSUPP, ops.fallocate(fh, mode, 0, 512))
    assert len(dev.fallocates) == 4
    # read-only handle, LUN or mount: refused before anything is sent
    ro = (await ops.open(a.st_ino, os.O_RDONLY, None)).fh
    await expect_errno(errno.EBADF, ops.fallocate(ro, punch, 0, 512))
    a3 = await raw(ops, 3)
    fh3 = (await ops.open(a3.st_ino, os.O_RDONLY, None)).fh
    await expect_errno(errno.EBADF, ops.fallocate(fh3, punch, 0, 512))
    dev.write_protected = True
    await expect_errno(errno.EROFS, ops.fallocate(fh, punch, 0, 512))
    dev.write_protected = False
    # a LUN that cannot deallocate: PUNCH_HOLE is EOPNOTSUPP, ZERO_RANGE writes zeros
    dev.provisioning = Provisioning()
    await expect_errno(errno.EOPNOTSUPP, ops.fallocate(fh, punch, 0, 512))
    await ops.fallocate(fh, zero, 0, 512)
    assert dev.data[:512] == bytes(512) and dev.fallocates[-1] == ("zero_range", 0, 512)
    # text files and the rescan file have no fallocate
    session = await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "session")
    tfh = (await ops.open(session.st_ino, os.O_RDONLY, None)).fh
    await expect_errno(errno.EOPNOTSUPP, ops.fallocate(tfh, punch, 0, 1))


async def test_text_files_are_snapshots():
    ops, fake = make_ops()
    session = await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "session")
    fh_before = (await ops.open(session.st_ino, os.O_RDONLY, None)).fh
    before = await ops.read(fh_before, 0, 1 << 20)
    assert b"not logged in" in before.lower()
    await list_luns(ops)                                                   # logs in
    attr = await ops.getattr(session.st_ino)
    fi = await ops.open(session.st_ino, os.O_RDONLY, None)
    assert fi.direct_io
    after = await ops.read(fi.fh, 0, 1 << 20)
    assert attr.st_size == len(after) and b"LOGGED_IN" in after
    assert await ops.read(fh_before, 0, 1 << 20) == before        # the old handle is stable
    await expect_errno(errno.EACCES, ops.open(session.st_ino, os.O_WRONLY, None))
    name = await walk(ops, "InitiatorName")
    fh = (await ops.open(name.st_ino, os.O_RDONLY, None)).fh
    assert await ops.read(fh, 0, 100) == b"InitiatorName=iqn.2016-04.com.open-iscsi:ab\n"


async def test_handlers_run_concurrently():
    ops, fake = make_ops()
    dev = fake.targets[DISK1][1].device
    dev.delay = 0.05
    fh = (await ops.open((await raw(ops, 1)).st_ino, os.O_RDWR, None)).fh
    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(ops.read, fh, i * 4096, 4096)
            nursery.start_soon(ops.write, fh, (100 + i) * 4096, b"z" * 4096)
    assert dev.max_in_flight == 16


@pytest.mark.expect_log("opendir: ConnectionRefusedError: .* -> ECONNREFUSED",
                        logger="iscsifs.fs.errno_map")
@pytest.mark.expect_log("opendir: ScsiError: NOT READY", logger="iscsifs.fs.errno_map")
@pytest.mark.expect_log("opendir: unexpected KeyError", logger="iscsifs.fs.errno_map")
async def test_errors_from_the_initiator_become_errno():
    ops, fake = make_ops()
    fake.discover_error = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    targets = await walk(ops, "portals", "127.0.0.1:3260", "targets")
    await expect_errno(errno.ECONNREFUSED, ops.opendir(targets.st_ino, None))
    fake.discover_error = ScsiError(0x2, 0x04, 0x01)
    await expect_errno(errno.EIO, ops.opendir(targets.st_ino, None))
    fake.discover_error = KeyError("a bug")        # unexpected: EIO, never a crash
    await expect_errno(errno.EIO, ops.opendir(targets.st_ino, None))


async def test_no_creation_or_removal():
    ops, _ = make_ops()
    await expect_errno(errno.EPERM, ops.mkdir(ROOT_INODE, b"x", 0o755, None))
    await expect_errno(errno.EPERM, ops.rmdir(ROOT_INODE, b"portals", None))
    await expect_errno(errno.EPERM, ops.create(ROOT_INODE, b"x", 0o644, os.O_RDWR, None))
    await expect_errno(errno.EPERM, ops.unlink(ROOT_INODE, b"InitiatorName", None))


async def test_statfs():
    ops, _ = make_ops()
    await list_luns(ops)
    st = await ops.statfs(None)
    assert st.f_bsize == 4096 and st.f_bfree == 0 and st.f_bavail == 0
    assert st.f_blocks * st.f_frsize == (1 << 20) + (256 << 10) + (128 << 10)
    assert st.f_files == ops.tree.inode_count


# -- by-path names and capacity changes ---------------------------------------------------
def test_by_path_names_ipv6_and_parse():
    from iscsifs.core.names import Portal
    from iscsifs.fs.namespace import BY_PATH_RE
    from iscsifs.fs.render import by_path_name
    name = by_path_name("iqn.2026-11.org.example:disk-lun-1", Portal("::1", 3260), 3)
    assert name == "ip-[::1]:3260-iscsi-iqn.2026-11.org.example:disk-lun-1-lun-3"
    m = BY_PATH_RE.match(name)
    assert (m["portal"], m["target"], m["lun"]) == \
        ("[::1]:3260", "iqn.2026-11.org.example:disk-lun-1", "3")
    m = BY_PATH_RE.match("ip-127.0.0.1:3260-iscsi-iqn.2026-11.org.x:y-lun-0")
    assert (m["portal"], m["target"], m["lun"]) == ("127.0.0.1:3260", "iqn.2026-11.org.x:y", "0")



def test_unit_attention_capacity_change_rereads_size():
    """A LUN that saw UNIT ATTENTION 2A/09 (device.Lun sets capacity_changed) is asked for its
    capacity again at the next getattr, and the new size is what stat shows."""
    from fs_fake import DISK1, FakeInitiator, standard_targets
    from iscsifs.fs.ops import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
                            FALLOC_FL_ZERO_RANGE, HAVE_PARALLEL_DIRECT_WRITES, Operations)
    from iscsifs.fs.tree import Tree
    from iscsifs.core.names import Portal

    async def main():
        targets = standard_targets()
        dev = targets[DISK1][1].device
        calls = []

        async def read_capacity():
            calls.append(1)
            dev.size = 2 << 20
            dev.data.extend(bytes((2 << 20) - len(dev.data)))
            dev.capacity_changed = False

        dev.read_capacity = read_capacity
        ops = Operations(FakeInitiator(targets), Tree([Portal("127.0.0.1", 3260)]),
                         initiator_name="iqn.2016-04.com.open-iscsi:ab")
        node = ops.tree.by_path("portals", "127.0.0.1:3260", "targets")
        await ops.opendir(node.inode, None)
        tnode = ops.tree.by_path("portals", "127.0.0.1:3260", "targets", DISK1, "luns")
        await ops.opendir(tnode.inode, None)
        raw = ops.tree.by_path("portals", "127.0.0.1:3260", "targets", DISK1, "luns", "1", "raw")
        assert (await ops.getattr(raw.inode)).st_size == 1 << 20
        assert not calls
        dev.capacity_changed = True
        assert (await ops.getattr(raw.inode)).st_size == 2 << 20
        assert calls == [1]
        assert (await ops.getattr(raw.inode)).st_size == 2 << 20
        assert calls == [1]

    trio.run(main)


# -- by-id: one file per LUN identity, over every portal -------------------------------------
PORTAL2 = Portal("127.0.0.2", 3260)
NAME1 = "wwn-0x60000000000000000e00000000010001"


def make_two_portal_ops(**kw) -> tuple[Operations, FakeInitiator]:
    fake = FakeInitiator(standard_targets(), extra_names=HOSTILE_NAMES)
    ops = Operations(fake, Tree([PORTAL, PORTAL2]),
                     initiator_name="iqn.2016-04.com.open-iscsi:ab", **kw)
    return ops, fake


async def listing(ops, attr) -> list[str]:
    fh = await ops.opendir(attr.st_ino, None)
    try:
        return [name for name, _ in ops._dirs[fh]]
    finally:
        await ops.releasedir(fh)


async def test_by_id_lists_each_identity_once_over_all_portals():
    ops, fake = make_two_portal_ops()
    by_id = await walk(ops, "by-id")
    assert stat.S_ISDIR(by_id.st_mode) and by_id.st_nlink == 1      # not listed yet
    names = await listing(ops, by_id)
    assert names == [".multipath", NAME1, "wwn-0x60000000000000000e00000000010002",
                     "wwn-0x60000000000000000e00000000010003"]
    # the targets of both portals were listed (SendTargets) and asked for their LUNs
    assert fake.multipath_calls == [[(DISK1, PORTAL), (DISK1, PORTAL2)]]
    assert fake.logged_in == {(DISK1, PORTAL), (DISK1, PORTAL2)}
    a = await ops.lookup(by_id.st_ino, NAME1.encode())
    assert stat.S_ISREG(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o600
    assert a.st_size == 1 << 20 and a.st_blksize == 1 << 20
    ro = await ops.lookup(by_id.st_ino, b"wwn-0x60000000000000000e00000000010003")
    assert stat.S_IMODE(ro.st_mode) == 0o400
    status_dir = await ops.lookup(by_id.st_ino, b".multipath")
    assert await listing(ops, status_dir) == [n + ext for n in names[1:]
                                              for ext in ("", ".json")]
    fh = (await ops.open((await ops.lookup(status_dir.st_ino, f"{NAME1}.json".encode())).st_ino,
                         os.O_RDONLY, None)).fh
    facts = json.loads(await ops.read(fh, 0, 1 << 16))
    assert facts["schema"] == "iscsifs.multipath/1" and facts["name"] == NAME1
    assert [p["portal"]["address"] for p in facts["paths"]] == [PORTAL.address,
                                                                  PORTAL2.address]
    await expect_errno(errno.ENOENT, ops.lookup(by_id.st_ino, b"wwn-0x1234"))


async def test_by_id_name_is_found_without_listing_and_does_io():
    ops, fake = make_two_portal_ops()
    by_id = await walk(ops, "by-id")
    a = await ops.lookup(by_id.st_ino, NAME1.encode())         # lists by itself
    lun = fake.targets[DISK1][1].device
    fh = (await ops.open(a.st_ino, os.O_RDWR, None)).fh
    assert await ops.write(fh, 4096 + 3, b"by-id") == 5
    assert lun.data[4099:4104] == b"by-id"
    assert await ops.read(fh, 4096, 16) == bytes(lun.data[4096:4112])
    await ops.fsync(fh, False)
    assert lun.flushes == 1
    await expect_errno(errno.EINVAL, ops.setattr(a.st_ino, SimpleNamespace(st_size=5),
                                                 fields(update_size=True), fh))
    await ops.release(fh)
    ro = await ops.lookup(by_id.st_ino, b"wwn-0x60000000000000000e00000000010003")
    await expect_errno(errno.EROFS, ops.open(ro.st_ino, os.O_WRONLY, None))


async def test_by_id_status_file_shows_the_paths():
    ops, fake = make_two_portal_ops()
    status = await walk(ops, "by-id", ".multipath", NAME1)
    assert stat.S_IMODE(status.st_mode) == 0o444
    fh = (await ops.open(status.st_ino, os.O_RDONLY, None)).fh
    text = (await ops.read(fh, 0, 1 << 16)).decode()
    assert text.splitlines()[:6] == [
        f"{NAME1} (360000000000000000e00000000010001) IET,VIRTUAL-DISK",
        "size=1M features='1 queue_if_no_path' hwhandler='0' wp=rw",
        "|-+- policy='failover' prio=2 status=active",
        f"| `- 127.0.0.1:3260 {DISK1} lun 1 active ready running",
        "`-+- policy='failover' prio=1 status=enabled",
        f"  `- 127.0.0.2:3260 {DISK1} lun 1 active ready running",
    ]
    await expect_errno(errno.EACCES, ops.open(status.st_ino, os.O_WRONLY, None))
    # a path marked failed shows at the next open
    fake.multipath_devices[fake.targets[DISK1][1].device.wwn].down.add((DISK1, PORTAL, 1))
    fh = (await ops.open(status.st_ino, os.O_RDONLY, None)).fh
    text = (await ops.read(fh, 0, 1 << 16)).decode()
    assert f"| `- 127.0.0.1:3260 {DISK1} lun 1 failed faulty blocked" in text
    assert "`-+- policy='failover' prio=1 status=active" in text


@pytest.mark.expect_log("by-id: listing the targets at 127.0.0.2:3260 failed",
                        logger="iscsifs.fs.namespace")
async def test_by_id_leaves_out_a_portal_that_cannot_be_listed():
    ops, fake = make_two_portal_ops()
    await list_luns(ops)                                # 127.0.0.1's targets are known
    fake.discover_error = ConnectionError("no route")   # 127.0.0.2 cannot be discovered
    names = await listing(ops, await walk(ops, "by-id"))
    assert NAME1 in names
    assert fake.multipath_calls == [[(DISK1, PORTAL)]]


async def test_by_id_xattrs_count_paths_and_name_the_portal_that_answered_last():
    ops, fake = make_two_portal_ops()
    by_id = await walk(ops, "by-id")
    a = await ops.lookup(by_id.st_ino, NAME1.encode())
    mdev = fake.multipath_devices[fake.targets[DISK1][1].device.wwn]
    names = await ops.listxattr(a.st_ino, None)
    assert names[-2:] == [b"user.iscsi.paths", b"user.iscsi.paths_active"]

    async def xattr(name: str) -> bytes:
        return await ops.getxattr(a.st_ino, f"user.iscsi.{name}".encode(), None)

    assert (await xattr("paths"), await xattr("paths_active")) == (b"2", b"2")
    # before any I/O: the path the next command goes to (failover: the first)
    assert await xattr("portal") == b"127.0.0.1:3260"
    mdev.last = (DISK1, PORTAL2, 1)                 # 127.0.0.2 answered the last command
    assert await xattr("portal") == b"127.0.0.2:3260"
    assert await xattr("target") == DISK1.encode() and await xattr("lun") == b"1"
    mdev.down.add((DISK1, PORTAL, 1))
    assert (await xattr("paths"), await xattr("paths_active")) == (b"2", b"1")
    await expect_errno(errno.EPERM, ops.setxattr(a.st_ino, b"user.iscsi.paths", b"3", None))
    await expect_errno(errno.EPERM, ops.removexattr(a.st_ino, b"user.iscsi.paths", None))
    # a raw file has no path count
    raw_names = await ops.listxattr((await raw(ops, 1)).st_ino, None)
    assert b"user.iscsi.paths" not in raw_names


# -- a LUN is bound to its logical unit -------------------------------------------------------
async def test_a_lun_that_names_another_lu_gets_new_inodes_and_old_handles_fail_enxio():
    ops, fake = make_two_portal_ops()
    await list_luns(ops)
    old_raw = await raw(ops, 1)
    old_dev = fake.targets[DISK1][1].device
    by_id = await walk(ops, "by-id")
    assert NAME1 in await listing(ops, by_id)
    fh = (await ops.open(old_raw.st_ino, os.O_RDWR, None)).fh
    mfh = (await ops.open((await ops.lookup(by_id.st_ino, NAME1.encode())).st_ino,
                          os.O_RDWR, None)).fh
    assert await ops.write(fh, 0, b"old") == 3
    new_dev = FakeLun(1 << 20, serial="sn-new", wwn="naa.6001405aa00000000000000000000b0b")
    entries = [e if e.lun != 1 else FakeLunEntry(1, 0, "disk", new_dev)
               for e in fake.targets[DISK1]]
    fake.change_luns(DISK1, PORTAL, entries)          # the backend found another LU at 1
    # open files stay bound to the old LU: every operation fails with ENXIO
    for call in (ops.write(fh, 0, b"x"), ops.read(fh, 0, 10), ops.fsync(fh, False),
                 ops.write(mfh, 0, b"x")):
        await expect_errno(errno.ENXIO, call)
    assert bytes(new_dev.data[:3]) != b"old" and new_dev.writes == 0
    # the inode the kernel may still hold opens no more
    await expect_errno(errno.ENXIO, ops.open(old_raw.st_ino, os.O_RDONLY, None))
    assert (await ops.getattr(old_raw.st_ino)).st_size == old_dev.size
    # the name leads to new inodes, bound to the new LU
    new_raw = await raw(ops, 1)
    assert new_raw.st_ino != old_raw.st_ino
    fh2 = (await ops.open(new_raw.st_ino, os.O_RDWR, None)).fh
    assert await ops.write(fh2, 0, b"new") == 3 and new_dev.data[:3] == b"new"
    info = await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "luns", "1", "info")
    ifh = (await ops.open(info.st_ino, os.O_RDONLY, None)).fh
    assert "sn-new" in (await ops.read(ifh, 0, 1 << 16)).decode()
    names = await listing(ops, by_id)
    assert NAME1 not in names and "wwn-0x6001405aa00000000000000000000b0b" in names
    for h in (fh, mfh, fh2, ifh):
        await ops.release(h)


async def test_a_removed_lun_leaves_luns_by_path_and_by_id_without_a_rescan():
    ops, fake = make_ops()
    await list_luns(ops)
    by_path = await walk(ops, "by-path")
    link2 = f"ip-127.0.0.1:3260-iscsi-{DISK1}-lun-2"
    assert link2 in await listing(ops, by_path)
    by_id = await walk(ops, "by-id")
    name2 = "wwn-0x60000000000000000e00000000010002"
    assert name2 in await listing(ops, by_id)
    raw2 = await raw(ops, 2)
    fh = (await ops.open(raw2.st_ino, os.O_RDONLY, None)).fh
    fake.change_luns(DISK1, PORTAL, [e for e in fake.targets[DISK1] if e.lun != 2])
    await expect_errno(errno.ENXIO, ops.read(fh, 0, 10))
    luns = await walk(ops, "portals", "127.0.0.1:3260", "targets", DISK1, "luns")
    assert await listing(ops, luns) == ["0", "1", "3"]
    await expect_errno(errno.ENOENT, ops.lookup(luns.st_ino, b"2"))
    assert link2 not in await listing(ops, by_path)
    await expect_errno(errno.ENOENT, ops.lookup(by_path.st_ino, link2.encode()))
    assert name2 not in await listing(ops, by_id)
    # and a new one appears the same way, found by name without listing first
    fake.change_luns(DISK1, PORTAL, fake.targets[DISK1] + [
        FakeLunEntry(4, 0, "disk", FakeLun(64 << 10, wwn="naa.60000000000000000e00000000010004"))])
    four = await ops.lookup(luns.st_ino, b"4")
    assert stat.S_ISDIR(four.st_mode)
    link4 = await ops.lookup(by_path.st_ino, f"ip-127.0.0.1:3260-iscsi-{DISK1}-lun-4".encode())
    assert stat.S_ISLNK(link4.st_mode)
    await ops.release(fh)


async def test_rmdir_of_the_only_target_behind_an_open_by_id_file_is_ebusy(tmp_path):
    from iscsifs.config.nodedb import NodeDB
    from iscsifs.fs.records import NodeRecords
    fake = FakeInitiator(standard_targets(), extra_names=HOSTILE_NAMES)
    ops = Operations(fake, Tree([PORTAL, PORTAL2]), initiator_name="iqn.2016-04.com.open-iscsi:ab",
                     records=NodeRecords(NodeDB(str(tmp_path))))
    by_id = await walk(ops, "by-id")
    await listing(ops, by_id)                               # both portals' targets listed
    node = await ops.lookup(by_id.st_ino, NAME1.encode())
    fh = (await ops.open(node.st_ino, os.O_RDWR, None)).fh
    targets1 = await walk(ops, "portals", "127.0.0.1:3260", "targets")
    targets2 = await walk(ops, "portals", "127.0.0.2:3260", "targets")
    portals = await walk(ops, "portals")
    # two paths: removing the target at one portal leaves the other one
    await ops.rmdir(targets1.st_ino, DISK1.encode(), None)
    assert await ops.write(fh, 0, b"still") == 5
    # now it is the only target behind the open by-id file: busy, as for an open raw
    await expect_errno(errno.EBUSY, ops.rmdir(targets2.st_ino, DISK1.encode(), None))
    await expect_errno(errno.EBUSY, ops.rmdir(portals.st_ino, b"127.0.0.2:3260", None))
    assert await ops.read(fh, 0, 5) == b"still"
    await ops.release(fh)
    await ops.rmdir(targets2.st_ino, DISK1.encode(), None)


@pytest.mark.expect_log("discovery at 127.0.0.1:3260 failed", logger="iscsifs.fs.namespace")
async def test_a_discovery_failure_is_one_warning_per_portal_not_one_per_listing(tmp_path,
                                                                                 caplog):
    """A portal whose discovery fails (a wrong discovery secret, say) lists its node records;
    the failure was a WARNING at every listing, and twice at mount time (the mount's own
    discovery said it, then login=automatic's listing again). Now: once per failure, DEBUG
    when the same failure repeats or the mount already said it; news again after a success."""
    from iscsifs.config.nodedb import NodeDB
    from iscsifs.errors import AuthenticationError
    from iscsifs.fs.records import NodeRecords
    db = NodeDB(str(tmp_path))
    db.add(DISK1, PORTAL)
    fake = FakeInitiator(standard_targets())
    ops = Operations(fake, Tree([PORTAL]), initiator_name="iqn.2016-04.com.open-iscsi:ab",
                     records=NodeRecords(db))
    tdir = ops.tree.targets_dir(PORTAL)
    refused = AuthenticationError("authentication failure (status 0x0201)").located(
        "discovery at 127.0.0.1:3260")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "iscsifs.fs.namespace"
                and r.levelname == "WARNING"]

    caplog.set_level(logging.DEBUG, logger="iscsifs.fs.namespace")
    fake.discover_error = refused
    assert ops.namespace.discovery_failed(PORTAL, refused)      # the mount said it: news
    for _ in range(3):
        await ops.namespace.populate(tdir)
        assert [n.target for n in ops.tree.children(tdir)] == [DISK1]
    assert warnings() == []
    fake.discover_error = None
    await ops.namespace.populate(tdir)                   # discovery works again
    fake.discover_error = refused
    await ops.namespace.populate(tdir)
    await ops.namespace.populate(tdir)
    assert warnings() == ["discovery at 127.0.0.1:3260 failed (authentication failed for "
                          "discovery at 127.0.0.1:3260: authentication failure (status "
                          "0x0201)); listing its 1 node record(s)"]
