"""pyfuse3 request handlers.

Owns: what each FUSE request does on the tree of ``fs/tree.py``: attributes, directory listings,
open files (per-handle text snapshots, raw LUN handles), byte I/O on ``raw`` through
``device.Lun``, statfs. Handlers are thin and concurrent (pyfuse3 runs them as trio tasks; no
lock here serialises I/O). Every handler is wrapped by ``errno_map.fuse_errors`` — the one place
where exceptions become errno.

Must not know: PDUs, sessions, SCSI. It talks only to the ``net.initiator.Initiator`` facade
(``discover``, ``luns``, ``rescan``, ``logout``, ``session_info``), to ``device.Lun`` objects it
hands out, and to ``fs/records.NodeRecords`` (node records for mkdir / rmdir / listings).

mkdir / rmdir (need ``records``; otherwise EPERM):
  mkdir portals/<p>/targets/<iqn>   add a static node record (``iscsiadm -m node -o new``) and
                                    list the target even if SendTargets doesn't report it.
                                    A name that is not a valid iqn./eui./naa. name -> EINVAL.
  rmdir portals/<p>/targets/<iqn>   log the target's session out, delete its record(s) at that
                                    portal, and hide it until the next explicit rediscovery
                                    (write to portals/<p>/rescan). EBUSY while a raw is open.
  mkdir portals/<addr:port>         add a portal to this mount (not persistent).
  rmdir portals/<p>                 log out its sessions, delete its discovery records
                                    (``iscsiadm -m discovery -p P -o delete``); a portal of the
                                    mount command line comes back at once, empty of cached
                                    answers. EBUSY while a raw under it is open.

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
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

import pyfuse3

from iscsifs.fs import render
from iscsifs.fs.errno_map import fuse_errors
from iscsifs.fs.render import by_path_name
from iscsifs.fs.tree import Kind, Node, Tree, portal_dir_name, safe_name

log = logging.getLogger(__name__)

CACHE_MODES = ("direct", "page")
STATFS_BLOCK_SIZE = 4096
RAW_BLKSIZE = 1 << 20        # st_blksize of raw: the largest request the kernel sends (1 MiB)
NAME_MAX = 255
# by-path/ names: ip-<addr:port>-iscsi-<iqn>-lun-<n>
_BY_PATH_RE = re.compile(r"^ip-(?P<portal>\[[0-9a-fA-F:.]+\]:\d+|[^\[\]/:]+:\d+)-iscsi-"
                         r"(?P<target>.+)-lun-(?P<lun>\d+)$")


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
                 attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                 records: Any = None, kernel_notify: bool = False):
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
        # fs.records.NodeRecords (or None: no mkdir/rmdir, listings are SendTargets only)
        self.records = records
        # tell the kernel to drop cached attributes after a rescan (only when mounted)
        self.kernel_notify = kernel_notify
        # the portals given on the command line: their directories can't go away
        self.mount_portals = [n.portal for n in tree.portal_nodes()]

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
            self.tree.set_targets(node, await self._target_names(node.portal))
        elif node.kind is Kind.LUNS:
            entries = await self.initiator.luns(node.target, node.portal)
            if any(getattr(e.device, "luns_changed", False) for e in entries):
                # a command saw UNIT ATTENTION 3F/0E (REPORTED LUNS DATA HAS CHANGED)
                log.info("%s: the target reports changed LUNs; rescanning", node.target)
                entries = await self.initiator.rescan(node.target, node.portal)
                for e in entries:
                    if getattr(e.device, "luns_changed", False):
                        e.device.luns_changed = False
            self.tree.set_luns(node, entries)
        elif node.kind is Kind.BY_PATH:
            self._build_by_path(node)

    def _hidden_at(self, portal: Any) -> set[str]:
        """Targets removed with rmdir (kept by fs.records so discovery won't record them)."""
        return self.records.hidden(portal) if self.records is not None else set()

    async def _target_names(self, portal: Any) -> list[str]:
        """SendTargets answer + static node records (or only the records: nodiscovery)."""
        records = self.records
        if records is not None and records.nodiscovery:
            return records.targets_at(portal, static_only=False)
        try:
            targets = await self.initiator.discover(portal)
        except Exception as exc:
            if records is None:
                raise
            fallback = records.targets_at(portal, static_only=False)
            if not fallback:
                raise
            log.warning("discovery at %s failed (%s); listing its %d node record(s)",
                        portal_dir_name(portal), exc or type(exc).__name__, len(fallback))
            return fallback
        hidden = self._hidden_at(portal)
        names = [t.name for t in targets if t.name not in hidden]
        if records is not None:
            names += [n for n in records.targets_at(portal, static_only=True) if n not in names]
        return names

    def _build_by_path(self, node: Node) -> None:
        links = []
        for lnode in self.tree.known_luns():
            name = by_path_name(lnode.target, lnode.portal, int(lnode.lun))
            if len(name.encode("utf-8")) > NAME_MAX:
                log.debug("by-path: name for %s LUN %s too long; skipped", lnode.target, lnode.lun)
                continue
            links.append((name, "../" + "/".join(lnode.path + ("raw",))))
        self.tree.set_links(node, links)

    async def _resolve_by_path(self, directory: Node, name: str) -> Node | None:
        """Look up a by-path name not known yet: list that target's LUNs (logs in)."""
        match = _BY_PATH_RE.match(name)
        if match is None:
            return None
        pnode = self.tree.by_path("portals", match["portal"])
        if pnode is None:
            return None
        tdir = self.tree.child(pnode, "targets")
        if tdir is None:
            return None
        if tdir.children is None:
            await self._populate(tdir)
        tnode = self.tree.child(tdir, match["target"])
        if tnode is None or tnode.kind is not Kind.TARGET:
            return None
        luns = self.tree.child(tnode, "luns")
        if luns is not None and luns.children is None:
            await self._populate(luns)
        self._build_by_path(directory)
        return self.tree.child(directory, name)

    def _notify_attrs(self, nodes: list[Node]) -> None:
        """Make the kernel forget cached attributes (e.g. a raw's size after a rescan)."""
        if not self.kernel_notify:
            return
        for node in nodes:
            try:
                pyfuse3.invalidate_inode(node.inode, attr_only=True)
            except OSError:          # the kernel never looked it up: nothing cached
                pass
            except Exception:
                log.debug("invalidate_inode(%d) failed", node.inode, exc_info=True)

    async def _refresh_capacity(self, node: Node) -> None:
        """READ CAPACITY again if a command saw UNIT ATTENTION 2A/09 (capacity changed)."""
        dev = node.device
        if dev is None or not getattr(dev, "capacity_changed", False):
            return
        old = int(getattr(dev, "size", 0) or 0)
        try:
            await dev.read_capacity()
        except Exception as exc:
            log.warning("%s: re-reading the capacity failed: %s", "/".join(node.path), exc)
            return
        if int(dev.size) != old:
            log.info("%s: capacity changed from %d to %d bytes", "/".join(node.path), old,
                     int(dev.size))
            node.ctime_ns = time.time_ns()
            self._notify_attrs([node])

    async def _rescan_target(self, node: Node) -> None:
        """``iscsiadm -m node -R`` for one target: new LUNs appear, capacities re-read."""
        tnode = self.tree.by_path(*node.path[:-1])
        entries = await self.initiator.rescan(node.target, node.portal)
        luns = self.tree.child(tnode, "luns") if tnode is not None else None
        if luns is not None:
            self.tree.set_luns(luns, entries)
            changed = [luns] + [n for n in self.tree.subtree(luns) if n.kind is Kind.RAW]
            for n in changed:
                if n.kind is Kind.RAW:
                    n.ctime_ns = time.time_ns()
            self._notify_attrs(changed)
        log.info("%s at %s: rescanned, %d LUN(s)", node.target, portal_dir_name(node.portal),
                 len(entries))

    async def _rediscover(self, node: Node) -> None:
        """portals/<p>/rescan: SendTargets again now; targets removed by rmdir come back."""
        portal = node.portal
        if self.records is not None:
            self.records.unhide_all(portal)
        if self.records is None or not self.records.nodiscovery:
            await self.initiator.discover(portal, refresh=True)
        tdir = self.tree.by_path(*node.path[:-1], "targets")
        if tdir is not None:
            await self._populate(tdir)
            self._notify_attrs([tdir])

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
            self._build_by_path(parent)
            child = self.tree.child(parent, text)
            if child is None:
                child = await self._resolve_by_path(parent, text)
        else:
            child = self.tree.child(parent, text)
            if child is None and parent.children is None:
                await self._populate(parent)
                child = self.tree.child(parent, text)
        if child is None:
            raise _fail(errno.ENOENT)
        if child.kind is Kind.RAW:
            await self._refresh_capacity(child)
        return self.attributes(child)

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.kind is Kind.RAW:
            await self._refresh_capacity(node)
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
            if node.kind is Kind.RAW:
                size = int(getattr(node.device, "size", 0) or 0)
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
        if node.kind in (Kind.TARGETS, Kind.LUNS, Kind.BY_PATH):
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

    def _open_under(self, node: Node) -> bool:
        prefix = node.path
        return any(h.node.kind is Kind.RAW and h.node.path[:len(prefix)] == prefix
                   for h in self._handles.values())

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any = None
                    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if self.records is None or parent.kind not in (Kind.TARGETS, Kind.PORTALS):
            raise _fail(errno.EPERM)
        text = self._decode(name)
        if text is None:
            raise _fail(errno.EINVAL)
        if parent.kind is Kind.PORTALS:
            return self.attributes(self._mkdir_portal(parent, text))
        if not safe_name(text):
            log.info("mkdir: %s is not a valid iSCSI name (iqn./eui./naa., at most 223 bytes)",
                     ascii(text)[:100])
            raise _fail(errno.EINVAL)
        if parent.children is None:
            try:
                await self._populate(parent)
            except Exception as exc:      # a target that refuses discovery: that's why we're here
                log.debug("listing before mkdir failed: %s", exc)
        if self.tree.child(parent, text) is not None:
            raise _fail(errno.EEXIST)
        self.records.add_static(text, parent.portal)
        self._hidden_at(parent.portal).discard(text)
        return self.attributes(self.tree.add_target(parent, text))

    def _mkdir_portal(self, parent: Node, text: str) -> Node:
        from iscsifs.core.discovery import parse_portal
        try:
            portal = parse_portal(text)
        except ValueError:
            raise _fail(errno.EINVAL) from None
        if portal_dir_name(portal) != text:     # only the canonical spelling: addr:port
            raise _fail(errno.EINVAL)
        if self.tree.child(parent, text) is not None:
            raise _fail(errno.EEXIST)
        log.info("portal %s added to this mount", text)
        return self.tree.add_portal(portal)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        parent = self._node(parent_inode)
        if self.records is None or parent.kind not in (Kind.TARGETS, Kind.PORTALS):
            raise _fail(errno.EPERM)
        text = self._decode(name)
        child = self.tree.child(parent, text) if text is not None else None
        if child is None:
            raise _fail(errno.ENOENT)
        if child.kind not in (Kind.TARGET, Kind.PORTAL):
            raise _fail(errno.ENOTDIR)
        if self._open_under(child):
            raise _fail(errno.EBUSY)
        portal = child.portal
        if child.kind is Kind.TARGET:
            await self.initiator.logout(child.target, portal)
            self.records.delete(child.target, portal)
            self._hidden_at(portal).add(child.target)
            self.tree.forget(child)
            log.info("target %s at %s removed (logged out, record deleted)", child.target,
                     portal_dir_name(portal))
            return
        for target in list(self.initiator.logged_in_targets(portal)):
            await self.initiator.logout(target, portal)
        self.records.delete_discovery(portal)
        self.initiator.forget_discovery(portal)
        self.records.unhide_all(portal)
        self.tree.forget(child)
        if portal in self.mount_portals:
            self.tree.add_portal(portal)        # new inodes: the kernel now holds the old dead
        log.info("portal %s: discovery records deleted", portal_dir_name(portal))

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
        if handle.node.kind is Kind.RESCAN:
            return b""
        dev = handle.node.device
        total = int(dev.size)
        if off >= total or size <= 0:
            return b""
        data = await dev.read(off, min(size, total - off))
        if getattr(dev, "capacity_changed", False):
            await self._refresh_capacity(handle.node)
        return data

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        node = handle.node
        if node.kind is Kind.RESCAN and handle.writable:
            if node.target is None:
                await self._rediscover(node)
            else:
                await self._rescan_target(node)
            return len(buf)
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
        if getattr(dev, "capacity_changed", False):
            await self._refresh_capacity(node)
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
