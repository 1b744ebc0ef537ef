"""fs/ops.py handlers called directly, over the in-memory FakeInitiator (no mount, no target)."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from iscsifs.core.discovery import Portal
from iscsifs.errors import ConnectionLost
from iscsifs.fs.ops import Operations
from iscsifs.fs.tree import ROOT_INODE, Tree

from fs_fake import DISK1, HOSTILE_NAMES, FakeInitiator, ScsiError, standard_targets

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
    assert stat.S_ISDIR(root.st_mode) and root.st_nlink == 4   # by-path/ portals/ + . + ..
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
    fi = await ops.open(a.st_ino, os.O_RDWR, None)
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


async def test_cache_page_mode():
    ops, _ = make_ops(cache="page")
    fi = await ops.open((await raw(ops, 1)).st_ino, os.O_RDONLY, None)
    assert not fi.direct_io and not fi.keep_cache


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
    from iscsifs.core.discovery import Portal
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
    from iscsifs.fs.ops import Operations
    from iscsifs.fs.tree import Tree
    from iscsifs.core.discovery import Portal

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
