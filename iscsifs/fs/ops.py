"""pyfuse3 request handlers.

Owns: what each FUSE request does on the tree of ``fs/tree.py``: attributes, directory listings,
open files (per-handle text snapshots, raw LUN handles), byte I/O on ``raw`` through
``device.Lun``, statfs. Handlers are thin and concurrent (pyfuse3 runs them as trio tasks; no
lock here serialises I/O). Every handler is wrapped by ``errno_map.fuse_errors`` — the one place
where exceptions become errno.

Must not know: PDUs, sessions, SCSI. It talks only to the ``net.initiator.Initiator`` facade
(``discover``, ``luns``, ``session_info``) and to ``device.Lun`` objects it hands out.

raw cache modes (mount option ``cache=``):
  direct (default)  FOPEN_DIRECT_IO: no page cache; every read and write goes to the target, so
                    a second initiator's writes are seen at once and nothing is cached stale.
  page              the kernel page cache serves repeated reads and does readahead; the cache
                    is dropped at each open (keep_cache off). Writes are still write-through
                    (writeback cache is off), so data is on the target when write() returns.
                    Use it only when this mount is the only writer of the LUN.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import pyfuse3

from iscsifs.fs import render
from iscsifs.fs.errno_map import fuse_errors
from iscsifs.fs.tree import Kind, Node, Tree

log = logging.getLogger(__name__)

CACHE_MODES = ("direct", "page")
STATFS_BLOCK_SIZE = 4096
RAW_BLKSIZE = 1 << 20        # st_blksize of raw: the largest request the kernel sends (1 MiB)
NAME_MAX = 255


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


@dataclass(eq=False)
class _Handle:
    node: Node
    data: bytes | None = None     # text files: the snapshot taken at open
    writable: bool = False


class Operations(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(self, initiator: Any, tree: Tree, *, initiator_name: str,
                 read_only: bool = False, cache: str = "direct",
                 uid: int | None = None, gid: int | None = None,
                 attr_timeout: float = 1.0, entry_timeout: float = 1.0):
        super().__init__()
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}")
        self.initiator = initiator
        self.tree = tree
        self.initiator_name = initiator_name
        self.read_only = read_only
        self.cache = cache
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self._fh = itertools.count(1)
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, list[tuple[str, int]]] = {}
        # TODO(targets by mkdir): a later issue sets this to an async callable
        # (parent: Node, name: str) -> Node to add a portal / a target without discovery.
        self.mkdir_hook: Any = None

    # -- helpers --------------------------------------------------------------------------
    def _node(self, inode: int) -> Node:
        node = self.tree.get(inode)
        if node is None:
            raise _fail(errno.ENOENT)
        return node

    def _handle(self, fh: int) -> _Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise _fail(errno.EBADF)
        return handle

    def _lun_read_only(self, node: Node) -> bool:
        dev = node.device
        return self.read_only or bool(getattr(dev, "write_protected", False))

    def render_text(self, node: Node) -> bytes:
        if node.kind is Kind.INITIATOR_NAME:
            text = render.render_initiator_name(self.initiator_name)
        elif node.kind is Kind.SESSION:
            info = self.initiator.session_info(node.target, node.portal)
            text = render.render_session(info, node.target, node.portal)
        elif node.kind is Kind.INFO:
            text = render.render_lun_info(node.entry, node.target, node.portal)
        else:
            raise _fail(errno.EINVAL)
        return text.encode("utf-8", "backslashreplace")

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.generation = 0
        attr.entry_timeout = self.entry_timeout
        attr.attr_timeout = self.attr_timeout
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_rdev = 0
        attr.st_blksize = STATFS_BLOCK_SIZE
        attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.ctime_ns
        attr.st_atime_ns = node.mtime_ns
        if node.kind.is_dir:
            attr.st_mode = stat.S_IFDIR | 0o755
            subdirs = self.tree.subdir_count(node)
            # nlink 1 = "unknown" (find(1) then does not use the leaf optimisation): used for a
            # dynamic directory that has not been listed yet
            attr.st_nlink = 1 if subdirs is None else 2 + subdirs
            attr.st_size = 0
            attr.st_blocks = 0
        elif node.kind is Kind.RAW:
            dev = node.device
            size = int(getattr(dev, "size", 0) or 0)
            attr.st_mode = stat.S_IFREG | (0o400 if self._lun_read_only(node) else 0o600)
            attr.st_nlink = 1
            attr.st_size = size
            attr.st_blocks = (size + 511) // 512
            # a large preferred I/O size makes buffered tools (stdio, cmp, Python) issue big
            # reads, which matters in cache=direct mode where each read is a round trip
            block_size = int(getattr(dev, "block_size", 0) or 0)
            max_transfer = int(getattr(dev, "max_transfer_bytes", 0) or 0) or RAW_BLKSIZE
            attr.st_blksize = max(STATFS_BLOCK_SIZE, block_size, min(RAW_BLKSIZE, max_transfer))
        else:  # text files: the size of what an open now would snapshot
            try:
                size = len(self.render_text(node))
            except pyfuse3.FUSEError:
                raise
            except Exception:
                log.exception("rendering %s failed", "/".join(node.path))
                size = 0
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = size
            attr.st_blocks = (size + 511) // 512
            attr.attr_timeout = 0       # changes with every counter update
        return attr

    async def _populate(self, node: Node) -> None:
        """Fill a dynamic directory from the Initiator (discovery / REPORT LUNS, lazy login)."""
        if node.kind is Kind.TARGETS:
            targets = await self.initiator.discover(node.portal)
            self.tree.set_targets(node, [t.name for t in targets])
        elif node.kind is Kind.LUNS:
            entries = await self.initiator.luns(node.target, node.portal)
            self.tree.set_luns(node, entries)

    @staticmethod
    def _decode(name: bytes) -> str | None:
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            return None

    # -- attributes and names ---------------------------------------------------------------
    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not parent.kind.is_dir:
            raise _fail(errno.ENOTDIR)
        text = self._decode(name)
        if text is None:
            raise _fail(errno.ENOENT)
        if text == ".":
            return self.attributes(parent)
        if text == "..":
            return self.attributes(self._node(parent.parent))
        child = self.tree.child(parent, text)
        if child is None and parent.children is None:
            await self._populate(parent)
            child = self.tree.child(parent, text)
        if child is None:
            raise _fail(errno.ENOENT)
        return self.attributes(child)

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None,
                      ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size:
            if node.kind is Kind.RAW:
                size = int(getattr(node.device, "size", 0) or 0)
                if attr.st_size != size:
                    log.info("%s: truncate to %d refused (a LUN has a fixed size of %d)",
                             "/".join(node.path), attr.st_size, size)
                    raise _fail(errno.EINVAL)
            elif node.kind.is_dir:
                raise _fail(errno.EISDIR)
            else:
                raise _fail(errno.EPERM)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise _fail(errno.EPERM)
        now = time.time_ns()
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
            node.ctime_ns = now
        elif fields.update_ctime:
            node.ctime_ns = now
        return self.attributes(node)

    @fuse_errors
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        total = sum(int(getattr(dev, "size", 0) or 0) for dev in self.tree.listed_devices())
        st.f_bsize = STATFS_BLOCK_SIZE
        st.f_frsize = STATFS_BLOCK_SIZE
        st.f_blocks = (total + STATFS_BLOCK_SIZE - 1) // STATFS_BLOCK_SIZE
        st.f_bfree = 0
        st.f_bavail = 0
        st.f_files = self.tree.inode_count
        st.f_ffree = 0
        st.f_favail = 0
        st.f_namemax = NAME_MAX
        return st

    # -- directories ------------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = self._node(inode)
        if not node.kind.is_dir:
            raise _fail(errno.ENOTDIR)
        if node.kind in (Kind.TARGETS, Kind.LUNS):
            # each listing asks again (the Initiator caches discovery; luns() re-reports)
            await self._populate(node)
        fh = next(self._fh)
        self._dirs[fh] = [(child.name, child.inode) for child in self.tree.children(node)]
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self._dirs.get(fh)
        if entries is None:
            raise _fail(errno.EBADF)
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            node = self.tree.get(inode)
            if node is None:
                continue
            if not pyfuse3.readdir_reply(token, name.encode("utf-8"), self.attributes(node),
                                         index + 1):
                break

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any = None
                    ) -> pyfuse3.EntryAttributes:
        # TODO(targets by mkdir): `mkdir portals/<addr:port>` / `mkdir targets/<iqn>` will call
        # self.mkdir_hook (a later issue: add a portal or a target the target won't advertise).
        if self.mkdir_hook is not None:
            parent = self._node(parent_inode)
            text = self._decode(name)
            if text is None:
                raise _fail(errno.EINVAL)
            return self.attributes(await self.mkdir_hook(parent, text))
        raise _fail(errno.EPERM)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        # TODO(targets by mkdir): rmdir of a target dir will log it out and forget it.
        raise _fail(errno.EPERM)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any = None) -> Any:
        raise _fail(errno.EPERM)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any = None) -> Any:
        raise _fail(errno.EPERM)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        raise _fail(errno.EPERM)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any = None) -> None:
        raise _fail(errno.EPERM)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any = None
                      ) -> Any:
        raise _fail(errno.EPERM)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any = None
                   ) -> Any:
        raise _fail(errno.EPERM)

    # -- files ------------------------------------------------------------------------------
    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.kind.is_dir:
            raise _fail(errno.EISDIR)
        wants_write = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if node.kind.is_text:
            if wants_write or flags & os.O_TRUNC:
                raise _fail(errno.EACCES)
            fh = next(self._fh)
            self._handles[fh] = _Handle(node, data=self.render_text(node))
            # direct_io: reads are answered from the snapshot whatever size getattr reported
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if node.kind is not Kind.RAW or node.device is None:
            raise _fail(errno.ENXIO)
        if wants_write and self._lun_read_only(node):
            raise _fail(errno.EROFS)
        if flags & os.O_TRUNC:
            # like a block device: O_TRUNC on a LUN does nothing (ftruncate is refused)
            log.debug("%s: O_TRUNC ignored", "/".join(node.path))
        fh = next(self._fh)
        self._handles[fh] = _Handle(node, writable=wants_write)
        return pyfuse3.FileInfo(fh=fh, direct_io=(self.cache == "direct"), keep_cache=False)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> Any:
        handle = self._handle(fh)
        if handle.data is not None:
            return handle.data[off:off + size]
        dev = handle.node.device
        total = int(dev.size)
        if off >= total or size <= 0:
            return b""
        return await dev.read(off, min(size, total - off))

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        node = handle.node
        if handle.data is not None or node.kind is not Kind.RAW:
            raise _fail(errno.EBADF)
        if self._lun_read_only(node):
            raise _fail(errno.EROFS)
        if not buf:
            return 0
        dev = node.device
        total = int(dev.size)
        if off >= total:
            raise _fail(errno.ENOSPC)
        room = total - off
        if len(buf) > room:     # write what fits; the caller's next write gets ENOSPC
            buf = memoryview(buf)[:room]
        written = await dev.write(off, buf)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        return written

    @fuse_errors
    async def flush(self, fh: int) -> None:
        # called at every close(); writes are write-through, so nothing is pending here
        self._handle(fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        if handle.node.kind is Kind.RAW and handle.node.device is not None:
            await handle.node.device.flush()     # SYNCHRONIZE CACHE; errors reach the caller

    @fuse_errors
    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)
