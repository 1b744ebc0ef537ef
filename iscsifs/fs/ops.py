"""pyfuse3 request handlers.

Owns: what each FUSE request does on the tree of ``fs/tree.py``: attributes, directory listings,
open files (per-handle text snapshots, LUN handles; the cache mode of each open), byte I/O
and fallocate on ``raw`` and ``by-id`` files through the LUN's ``BlockDevice``, extended
attributes (the names and values are
``fs/xattrs.py``'s; setting ``user.iscsi.discard`` discards a range), statfs. Handlers are thin and concurrent (pyfuse3 runs them as trio tasks; no
lock here serialises I/O): the rules behind listings, rescans, by-path, mkdir and rmdir live in
``fs/namespace.py``. Every handler wears ``errno_map.fuse_errors`` - the one place where
exceptions become errno. What each operation means for the user: docs/tree.md.

Must not know: PDUs, sessions, SCSI. It talks to the layers below only through the protocols
of ``fs/backend.py`` (``Backend``, ``BlockDevice``).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyfuse3

from iscsifs.fs import render, xattrs
from iscsifs.fs.backend import Backend
from iscsifs.fs.errno_map import fail as _fail
from iscsifs.fs.errno_map import fuse_errors
from iscsifs.fs.namespace import NAME_MAX, Namespace
from iscsifs.fs.records import NodeRecords
from iscsifs.fs.tree import Kind, Node, Tree

log = logging.getLogger(__name__)

# mount option cache= (docs/mount-options.md): auto = like a block device, the page cache for
# buffered opens and none for O_DIRECT ones; direct = never; page = always
CACHE_MODES = ("auto", "direct", "page")
# fallocate(2) modes (<linux/falloc.h>)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
# What a patched pyfuse3 offers (patches/pyfuse3/README.md); without it raw has no fallocate
# (the kernel answers EOPNOTSUPP itself) and O_DIRECT writes to one raw run one at a time.
HAVE_FALLOCATE = hasattr(pyfuse3.Operations, "fallocate")
HAVE_PARALLEL_DIRECT_WRITES = bool(getattr(pyfuse3, "HAVE_PARALLEL_DIRECT_WRITES", False))
STATFS_BLOCK_SIZE = 4096
RAW_BLKSIZE = 1 << 20        # st_blksize of raw: the largest request the kernel sends (1 MiB)


@dataclass(eq=False)
class _Handle:
    node: Node
    data: bytes | None = None     # text files: the snapshot taken at open
    writable: bool = False


class Operations(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = True
    # asynchronous direct I/O and read-ahead the kernel may have outstanding (its default is
    # 12, fewer than one fio job at iodepth 16); a patched pyfuse3 asks for it in FUSE_INIT
    max_background = 64

    def __init__(self, initiator: Backend, tree: Tree, *, initiator_name: str,
                 read_only: bool = False, cache: str = "auto",
                 uid: int | None = None, gid: int | None = None,
                 attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                 records: NodeRecords | None = None, kernel_notify: bool = False):
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
        self.namespace = Namespace(initiator, tree, records=records,
                                   kernel_notify=kernel_notify)
        # called once the kernel's FUSE_INIT has been answered (the mount's kernel knobs)
        self.on_init: Callable[[], None] | None = None

    def init(self) -> None:
        """pyfuse3 calls this while it answers FUSE_INIT (synchronously)."""
        if self.on_init is not None:
            self.on_init()

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
        return self.read_only or (dev is not None and dev.write_protected)

    def render_text(self, node: Node) -> bytes:
        if node.kind is Kind.INITIATOR_NAME:
            text = render.render_initiator_name(self.initiator_name)
        elif node.kind is Kind.SESSIONS:
            text = render.render_session_list(self.live_sessions())
        elif node.kind is Kind.SESSION:
            assert node.target is not None and node.portal is not None
            info = self.initiator.session_info(node.target, node.portal)
            text = render.render_session(info, node.target, node.portal)
        elif node.kind is Kind.SESSION_JSON:
            assert node.target is not None and node.portal is not None
            info = self.initiator.session_info(node.target, node.portal)
            text = render.render_session_json(info, node.target, node.portal)
        elif node.kind is Kind.INFO:
            assert node.entry is not None
            text = render.render_lun_info(node.entry, node.target, node.portal)
        elif node.kind is Kind.INFO_JSON:
            assert node.entry is not None
            text = render.render_lun_info_json(node.entry, node.target, node.portal)
        elif node.kind is Kind.MPATH_STATUS:
            assert node.mpath is not None
            text = render.render_multipath(node.mpath, node.name)
        elif node.kind is Kind.MPATH_JSON:
            assert node.mpath is not None
            text = render.render_multipath_json(node.mpath, node.name.removesuffix(".json"))
        else:
            raise _fail(errno.EINVAL)
        return text.encode("utf-8", "backslashreplace")

    def live_sessions(self) -> list[tuple[int, Any, str]]:
        """(sid, portal, target) of every session of this mount's portals (logged in, or
        failed and recovering). Asks the backend only: no login, no discovery."""
        found = []
        for pnode in self.tree.portal_nodes():
            assert pnode.portal is not None
            for target in self.initiator.logged_in_targets(pnode.portal):
                info = self.initiator.session_info(target, pnode.portal)
                if info is not None:
                    found.append((info.sid, pnode.portal, target))
        return found

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
        elif node.kind is Kind.RESCAN:
            attr.st_mode = stat.S_IFREG | 0o200
            attr.st_nlink = 1
            attr.st_size = 0
            attr.st_blocks = 0
        elif node.kind is Kind.LINK:
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_nlink = 1
            attr.st_size = len((node.link or "").encode("utf-8"))
            attr.st_blocks = 0
        elif node.kind.is_device:
            dev = node.device
            size = dev.size if dev is not None else 0
            attr.st_mode = stat.S_IFREG | (0o400 if self._lun_read_only(node) else 0o600)
            attr.st_nlink = 1
            attr.st_size = size
            attr.st_blocks = (size + 511) // 512
            # a large preferred I/O size makes buffered tools (stdio, cmp, Python) issue big
            # reads, which matters in cache=direct mode where each read is a round trip
            block_size = dev.block_size if dev is not None else 0
            max_transfer = (dev.max_transfer_bytes if dev is not None else 0) or RAW_BLKSIZE
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
        if parent.kind is Kind.BY_PATH:
            self.namespace.build_by_path(parent)
            child = self.tree.child(parent, text)
            if child is None:
                child = await self.namespace.resolve_by_path(parent, text)
        elif parent.kind is Kind.BY_ID:
            child = self.tree.child(parent, text)
            if child is None:           # not listed yet, or a LUN found since: list again
                await self.namespace.populate(parent)
                child = self.tree.child(parent, text)
        else:
            child = self.tree.child(parent, text)
            if child is None and parent.children is None:
                await self.namespace.populate(parent)
                child = self.tree.child(parent, text)
        if child is None:
            raise _fail(errno.ENOENT)
        if child.kind.is_device:
            await self.namespace.refresh_capacity(child)
        return self.attributes(child)

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.kind.is_device:
            await self.namespace.refresh_capacity(node)
        return self.attributes(node)

    @fuse_errors
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        node = self._node(inode)
        if node.kind is not Kind.LINK or node.link is None:
            raise _fail(errno.EINVAL)
        return node.link.encode("utf-8")

    @fuse_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None,
                      ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size:
            if node.kind.is_device:
                size = node.device.size if node.device is not None else 0
                if attr.st_size != size:
                    log.info("%s: truncate to %d refused (a LUN has a fixed size of %d)",
                             "/".join(node.path), attr.st_size, size)
                    raise _fail(errno.EINVAL)
            elif node.kind.is_dir:
                raise _fail(errno.EISDIR)
            elif node.kind is Kind.RESCAN and attr.st_size == 0:
                pass                      # `echo 1 > rescan` opens with O_TRUNC: harmless
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
        total = sum(dev.size for dev in self.tree.listed_devices())
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

    # -- extended attributes ----------------------------------------------------------------
    def _xattrs(self, node: Node) -> dict[bytes, bytes]:
        """The identity attributes of a LUN's file (``raw``, or ``by-id``: its target, portal
        and LUN are those of the path that answered last, and it has a path count); nothing
        elsewhere."""
        dev = node.device
        if node.kind is Kind.RAW and dev is not None and node.lun is not None:
            return xattrs.lun_xattrs(dev, node.target, node.portal, node.lun)
        if node.kind is Kind.MPATH and node.mpath is not None:
            return xattrs.multipath_xattrs(node.mpath)
        return {}

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        if not name.startswith(xattrs.PREFIX_BYTES):
            # e.g. security.capability, which the kernel asks before every buffered write
            # (cache=page): answer at once, without building the LUN's facts
            raise _fail(pyfuse3.ENOATTR)
        node = self._node(inode)
        action = xattrs.PR_IN.get(name)
        if action is not None and node.kind.is_device and node.device is not None:
            # PERSISTENT RESERVE IN through this file's own session(s): asked afresh each time
            result = await node.device.persistent_reserve_in(action)
            return render.render_pr_json(action.name.lower(), result).encode("ascii")
        value = self._xattrs(node).get(name)
        if value is None:
            raise _fail(pyfuse3.ENOATTR)
        return value

    @fuse_errors
    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        return list(self._xattrs(self._node(inode)))

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        node = self._node(inode)
        if name == xattrs.DISCARD and node.kind.is_device and node.device is not None:
            await self._discard(node, value)
            return
        if name == xattrs.PR_OUT and node.kind.is_device and node.device is not None:
            await self._pr_out(node, value)
            return
        if name in xattrs.IDENTITY_NAMES and self._xattrs(node):
            raise _fail(errno.EPERM)          # the LUN's identity: read-only
        raise _fail(errno.ENOTSUP)            # no extended attributes of our own

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any = None) -> None:
        if name in self._xattrs(self._node(inode)):
            raise _fail(errno.EPERM)
        raise _fail(pyfuse3.ENOATTR)

    async def _discard(self, node: Node, value: bytes) -> None:
        """``setfattr -n user.iscsi.discard -v "OFFSET LENGTH" raw``: discard that range."""
        path = "/".join(node.path)
        try:
            offset, length = xattrs.parse_discard(value)
        except ValueError as exc:
            log.info("%s: %s", path, exc)
            raise _fail(errno.EINVAL) from None
        if self._lun_read_only(node):
            raise _fail(errno.EROFS)
        await self.namespace.refresh_capacity(node)
        dev = node.device
        assert dev is not None
        unmapped, zeroed = await dev.discard(offset, length)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        self.namespace.notify_data(node)
        log.info("%s: discarded %d bytes at offset %d (%d unmapped, %d written as zeros)",
                 path, length, offset, unmapped, zeroed)

    async def _pr_out(self, node: Node, value: bytes) -> None:
        """``iscsifs pr --out``: one PERSISTENT RESERVE OUT through this file's session(s).
        The value holds keys: it is never logged."""
        path = "/".join(node.path)
        try:
            request = xattrs.parse_pr_out(value)
        except ValueError as exc:
            log.info("%s: %s", path, exc)
            raise _fail(errno.EINVAL) from None
        assert node.device is not None
        await node.device.persistent_reserve_out(request)
        log.info("%s: PERSISTENT RESERVE OUT %s done", path, request.action.name)

    # -- directories ------------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = self._node(inode)
        if not node.kind.is_dir:
            raise _fail(errno.ENOTDIR)
        if node.kind in (Kind.TARGETS, Kind.LUNS, Kind.BY_PATH, Kind.BY_ID):
            # each listing asks again (the Initiator caches discovery; luns() re-reports)
            await self.namespace.populate(node)
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

    def _open_under(self, node: Node) -> bool:
        """Whether removing ``node`` (a target or portal directory) would take an open file's
        LUN away: a ``raw`` file below it, or a ``by-id`` file all of whose paths go through
        it."""
        prefix = node.path
        for h in self._handles.values():
            if h.node.kind is Kind.RAW and h.node.path[:len(prefix)] == prefix:
                return True
            if h.node.kind is Kind.MPATH and h.node.mpath is not None:
                paths = h.node.mpath.path_states()
                if paths and all(_behind(node, p.target, p.portal) for p in paths):
                    return True
        return False

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any = None
                    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        node = await self.namespace.mkdir(parent, self._decode(name))
        return self.attributes(node)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        parent = self._node(parent_inode)
        await self.namespace.rmdir(parent, self._decode(name), self._open_under)

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
        if node.kind is Kind.RESCAN:
            fh = next(self._fh)
            self._handles[fh] = _Handle(node, writable=wants_write)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if not node.kind.is_device or node.device is None:
            raise _fail(errno.ENXIO)
        if node.device.is_gone:     # an old inode of a LUN that names another LU now
            raise _fail(errno.ENXIO)
        if wants_write and self._lun_read_only(node):
            raise _fail(errno.EROFS)
        if flags & os.O_TRUNC:
            # like a block device: O_TRUNC on a LUN does nothing (ftruncate is refused)
            log.debug("%s: O_TRUNC ignored", "/".join(node.path))
        # like a block device's: the page cache lives while the LUN is open, and a first
        # open starts without it (what another initiator wrote meanwhile is read anew)
        keep_cache = any(h.node is node for h in self._handles.values())
        fh = next(self._fh)
        self._handles[fh] = _Handle(node, writable=wants_write)
        direct = self.cache == "direct" or (self.cache == "auto" and bool(flags & os.O_DIRECT))
        if direct and HAVE_PARALLEL_DIRECT_WRITES:
            # concurrent writes need no inode lock: the device orders overlapping ones
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=keep_cache,
                                    parallel_direct_writes=True)
        return pyfuse3.FileInfo(fh=fh, direct_io=direct, keep_cache=keep_cache)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> Any:
        handle = self._handle(fh)
        if handle.data is not None:
            return handle.data[off:off + size]
        if handle.node.kind is Kind.RESCAN:
            return b""
        dev = handle.node.device
        assert dev is not None                   # open() hands out raw handles for LUNs only
        total = dev.size
        if off >= total or size <= 0:
            return b""
        data = await dev.read(off, min(size, total - off))
        if dev.capacity_changed:
            await self.namespace.refresh_capacity(handle.node)
        return data

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        node = handle.node
        if node.kind is Kind.RESCAN and handle.writable:
            if node.target is None:
                await self.namespace.rediscover(node)
            else:
                await self.namespace.rescan_target(node)
            return len(buf)
        if handle.data is not None or not node.kind.is_device:
            raise _fail(errno.EBADF)
        if self._lun_read_only(node):
            raise _fail(errno.EROFS)
        if not buf:
            return 0
        dev = node.device
        assert dev is not None                   # open() hands out raw handles for LUNs only
        total = dev.size
        if off >= total:
            raise _fail(errno.ENOSPC)
        room = total - off
        data: bytes | memoryview = buf
        if len(buf) > room:     # write what fits; the caller's next write gets ENOSPC
            data = memoryview(buf)[:room]
        protected = dev.write_protected
        try:
            written = await dev.write(off, data)
        finally:
            if dev.write_protected != protected:     # DATA PROTECT made it re-read WP
                self.namespace.protection_changed(node)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        if dev.capacity_changed:
            await self.namespace.refresh_capacity(node)
        return written

    @fuse_errors
    async def fallocate(self, fh: int, mode: int, off: int, length: int) -> None:
        """``fallocate(2)`` on ``raw`` and ``by-id`` files: PUNCH_HOLE|KEEP_SIZE deallocates
        (``BlockDevice.punch_hole``), ZERO_RANGE zeroes (``BlockDevice.zero_range``); both
        leave the range reading zeros. Other modes, and LUNs that can't, get EOPNOTSUPP. The
        kernel drops the range from the page cache itself. Called by a patched pyfuse3 only
        (``HAVE_FALLOCATE``)."""
        handle = self._handle(fh)
        node = handle.node
        if handle.data is not None or not node.kind.is_device or node.device is None:
            raise _fail(errno.EOPNOTSUPP)
        if mode not in (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE,
                        FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE):
            raise _fail(errno.EOPNOTSUPP)       # allocation: a LUN is always all there
        if not handle.writable:
            raise _fail(errno.EBADF)
        if self._lun_read_only(node):
            raise _fail(errno.EROFS)
        await self.namespace.refresh_capacity(node)
        dev = node.device
        if mode & FALLOC_FL_KEEP_SIZE:          # past the end: nothing to do, as for a file
            length = max(0, min(length, dev.size - off))
        if length == 0:
            return
        if mode & FALLOC_FL_PUNCH_HOLE:
            unmapped, zeroed = await dev.punch_hole(off, length)
        else:
            unmapped, zeroed = await dev.zero_range(off, length)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        log.debug("%s: fallocate mode 0x%x: %d bytes at %d (%d unmapped, %d written as zeros)",
                  "/".join(node.path), mode, length, off, unmapped, zeroed)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        # called at every close(); writes are write-through, so nothing is pending here
        self._handle(fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        if handle.node.kind.is_device and handle.node.device is not None:
            await handle.node.device.flush()     # SYNCHRONIZE CACHE; errors reach the caller

    @fuse_errors
    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)


def _behind(node: Node, target: str, portal: Any) -> bool:
    """Whether a path to ``target`` at ``portal`` goes through ``node`` (a target or portal
    directory)."""
    assert node.portal is not None
    if (portal.host, portal.port) != (node.portal.host, node.portal.port):
        return False
    return node.kind is Kind.PORTAL or target == node.target
