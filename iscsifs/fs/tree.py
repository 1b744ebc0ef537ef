"""The filesystem tree: inodes, names and the shape of the mount.

Owns: the inode table and the names under the mount point::

    InitiatorName                                  text file
    sessions                                       text file: iscsiadm -m session (live ones)
    by-path/ip-<addr:port>-iscsi-<iqn>-lun-<n>     symlink -> ../portals/.../luns/<n>/raw
    by-id/wwn-0x<hex>                              a LUN through all of its paths (multipath)
    by-id/.multipath/wwn-0x<hex>                   text file: its paths (multipath -ll)
    portals/<addr:port>/rescan                     write: SendTargets again (bypass the cache)
    portals/<addr:port>/targets/<iqn>/session      text file
    portals/<addr:port>/targets/<iqn>/session.json the same, as JSON
    portals/<addr:port>/targets/<iqn>/rescan       write: REPORT LUNS + capacities again
    portals/<addr:port>/targets/<iqn>/luns/<n>/raw   the LUN's bytes (disk LUNs only)
    portals/<addr:port>/targets/<iqn>/luns/<n>/info  text file
    portals/<addr:port>/targets/<iqn>/luns/<n>/info.json  the same, as JSON

Inodes are allocated once per path (a dict path-tuple -> inode) and never reused, so a target
that disappears and comes back gets its old inode - except after ``forget`` (a directory removed
with rmdir is dead for the kernel, so what comes back at that path needs a new inode), and
except for a LUN: ``luns/<n>`` (and a ``by-id`` entry) is bound to one logical unit, so when
the number names another one (a new ``Lun`` from the backend) it gets new inodes, and a file
opened on the old one stays bound to the old one. Names
coming from the target are untrusted: a target name becomes a directory name only if it passes
``iscsifs.core.names.valid_iscsi_name``; others are skipped with a warning.

Must not know: pyfuse3, trio, sessions. The tree is pure data; ``fs/namespace.py`` asks the
backend and feeds the answers in through ``set_targets`` / ``set_luns``.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from iscsifs.core.names import Portal, printable, valid_iscsi_name
from iscsifs.fs.backend import BlockDevice, LunListing, MultipathBlockDevice

log = logging.getLogger(__name__)

ROOT_INODE = 1               # == pyfuse3.ROOT_INODE (FUSE_ROOT_ID)


class Kind(enum.Enum):
    ROOT = "root"
    INITIATOR_NAME = "initiator_name"   # text: InitiatorName=...
    SESSIONS = "sessions"               # text: iscsiadm -m session, one line per live session
    PORTALS = "portals"                 # dir of portal dirs
    PORTAL = "portal"                   # dir: targets/
    TARGETS = "targets"                 # dir, filled by discovery
    TARGET = "target"                   # dir: session, luns/
    SESSION = "session"                 # text: iscsiadm -m session -P 3 layout
    SESSION_JSON = "session_json"       # text: the same snapshot as JSON
    LUNS = "luns"                       # dir, filled by REPORT LUNS (lazy login)
    LUN = "lun"                         # dir: raw, info
    RAW = "raw"                         # the LUN's bytes
    INFO = "info"                       # text: inquiry / capacity
    INFO_JSON = "info_json"             # text: the same snapshot as JSON
    RESCAN = "rescan"                   # write-only trigger (portal: rediscover; target: -R)
    BY_PATH = "by_path"                 # dir of LINKs, built from the LUNs already known
    LINK = "link"                       # symlink (node.link is the relative target)
    BY_ID = "by_id"                     # dir of MPATH files, one per LUN identity
    MPATH = "mpath"                     # a LUN through all of its paths (node.mpath)
    MPATH_DIR = "mpath_dir"             # by-id/.multipath/
    MPATH_STATUS = "mpath_status"       # text: multipath -ll layout
    MPATH_JSON = "mpath_json"           # text: the same snapshot as JSON

    @property
    def is_dir(self) -> bool:
        return self in _DIR_KINDS

    @property
    def is_text(self) -> bool:
        return self in (Kind.INITIATOR_NAME, Kind.SESSIONS, Kind.SESSION, Kind.SESSION_JSON,
                        Kind.INFO, Kind.INFO_JSON, Kind.MPATH_STATUS, Kind.MPATH_JSON)

    @property
    def is_device(self) -> bool:
        """A file that is a LUN's bytes (``raw``, a ``by-id`` entry)."""
        return self in (Kind.RAW, Kind.MPATH)


_DIR_KINDS = frozenset({Kind.ROOT, Kind.PORTALS, Kind.PORTAL, Kind.TARGETS, Kind.TARGET,
                        Kind.LUNS, Kind.LUN, Kind.BY_PATH, Kind.BY_ID, Kind.MPATH_DIR})


@dataclass(eq=False)
class Node:
    inode: int
    kind: Kind
    path: tuple[str, ...]
    parent: int
    portal: Portal | None = None
    target: str | None = None
    lun: int | None = None
    entry: LunListing | None = None  # LUN / RAW / INFO nodes
    link: str | None = None         # LINK nodes: the symlink's (relative) target
    mpath: MultipathBlockDevice | None = None   # MPATH / MPATH_STATUS nodes
    mtime_ns: int = 0
    ctime_ns: int = 0
    # name -> inode; None for a dynamic directory that has not been listed yet
    children: dict[str, int] | None = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""

    @property
    def device(self) -> BlockDevice | None:
        """The LUN as a block device, or None (non-disk LUN / not a LUN node)."""
        if self.mpath is not None:
            return self.mpath
        return self.entry.device if self.entry is not None else None


class Tree:
    """Inode table + directory contents. Synchronous; no await inside, so no races."""

    def __init__(self, portals: Iterable[Portal] = (), *, now_ns: int | None = None):
        self.mount_time_ns = time.time_ns() if now_ns is None else now_ns
        self._next_inode = itertools.count(ROOT_INODE + 1)
        self._by_path: dict[tuple[str, ...], int] = {(): ROOT_INODE}
        self._nodes: dict[int, Node] = {}
        self._rejected: set[tuple[str, object]] = set()   # (portal dir, name) warned about
        root = Node(ROOT_INODE, Kind.ROOT, (), ROOT_INODE,
                    mtime_ns=self.mount_time_ns, ctime_ns=self.mount_time_ns)
        self._nodes[ROOT_INODE] = root
        self._add(root, "InitiatorName", Kind.INITIATOR_NAME)
        self._add(root, "sessions", Kind.SESSIONS)
        self.by_path_dir = self._add(root, "by-path", Kind.BY_PATH)
        self.by_id_dir = self._add(root, "by-id", Kind.BY_ID)
        self.portals_dir = self._add(root, "portals", Kind.PORTALS)
        for portal in portals:
            self.add_portal(portal)

    # -- lookups --------------------------------------------------------------------------
    def node(self, inode: int) -> Node:
        """The node for inode; KeyError if unknown."""
        return self._nodes[inode]

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def child(self, parent: Node, name: str) -> Node | None:
        if parent.children is None:
            return None
        inode = parent.children.get(name)
        return None if inode is None else self._nodes[inode]

    def children(self, parent: Node) -> list[Node]:
        """Current children in listing order (None-children dirs list as empty)."""
        if not parent.children:
            return []
        return [self._nodes[i] for i in parent.children.values()]

    def by_path(self, *path: str) -> Node | None:
        inode = self._by_path.get(tuple(path))
        return None if inode is None else self._nodes.get(inode)

    @property
    def inode_count(self) -> int:
        return len(self._nodes)

    def subdir_count(self, node: Node) -> int | None:
        """Number of child directories, or None while a dynamic directory is unlisted."""
        if node.children is None:
            return None
        return sum(1 for i in node.children.values() if self._nodes[i].kind.is_dir)

    def listed_devices(self) -> list[BlockDevice]:
        """The device of every raw file currently in the tree (for statfs)."""
        seen: dict[int, BlockDevice] = {}
        for node in self._nodes.values():
            if node.kind is Kind.RAW and self._is_listed(node):
                dev = node.device
                if dev is not None:
                    seen[id(dev)] = dev
        return list(seen.values())

    def _is_listed(self, node: Node) -> bool:
        while node.inode != ROOT_INODE:
            parent = self._nodes[node.parent]
            if not parent.children or parent.children.get(node.name) != node.inode:
                return False
            node = parent
        return True

    # -- building -------------------------------------------------------------------------
    def _add(self, parent: Node, name: str, kind: Kind, **attrs: Any) -> Node:
        path = parent.path + (name,)
        inode = self._by_path.get(path)
        node = self._nodes.get(inode) if inode is not None else None
        if node is None:
            inode = next(self._next_inode)
            self._by_path[path] = inode
            node = Node(inode, kind, path, parent.inode,
                        mtime_ns=self.mount_time_ns, ctime_ns=self.mount_time_ns,
                        children=None if kind in (Kind.TARGETS, Kind.LUNS, Kind.BY_PATH,
                                                  Kind.BY_ID) else {})
            self._nodes[inode] = node
        for key, value in attrs.items():
            setattr(node, key, value)
        if parent.children is None:
            parent.children = {}
        parent.children[name] = node.inode
        return node

    def add_portal(self, portal: Portal) -> Node:
        """portals/<addr:port>/targets/ for one portal (idempotent)."""
        pnode = self._add(self.portals_dir, portal.address, Kind.PORTAL, portal=portal)
        self._add(pnode, "targets", Kind.TARGETS, portal=portal)
        self._add(pnode, "rescan", Kind.RESCAN, portal=portal)
        return pnode

    def portal_nodes(self) -> list[Node]:
        return [n for n in self.children(self.portals_dir) if n.kind is Kind.PORTAL]

    def forget(self, node: Node) -> None:
        """Unlink ``node`` from its parent and drop the path -> inode mappings of its subtree,
        so that whatever is added at those paths later gets new inodes. The nodes themselves
        stay (open handles keep working on them)."""
        parent = self._nodes.get(node.parent)
        if parent is not None and parent.children and parent.children.get(node.name) == node.inode:
            del parent.children[node.name]
            parent.mtime_ns = parent.ctime_ns = time.time_ns()
        prefix = node.path
        for path in [p for p in self._by_path if p[:len(prefix)] == prefix]:
            del self._by_path[path]

    def subtree(self, node: Node) -> list[Node]:
        """node and every node below it that is still reachable by path."""
        prefix = node.path
        return [self._nodes[i] for p, i in self._by_path.items()
                if p[:len(prefix)] == prefix and i in self._nodes]

    def add_target(self, targets_dir: Node, name: str) -> Node:
        """Add one target directory (name already validated by the caller)."""
        portal = targets_dir.portal
        if targets_dir.children is None:
            targets_dir.children = {}
        tnode = self._add(targets_dir, name, Kind.TARGET, portal=portal, target=name)
        self._add(tnode, "session", Kind.SESSION, portal=portal, target=name)
        self._add(tnode, "session.json", Kind.SESSION_JSON, portal=portal, target=name)
        self._add(tnode, "luns", Kind.LUNS, portal=portal, target=name)
        self._add(tnode, "rescan", Kind.RESCAN, portal=portal, target=name)
        targets_dir.mtime_ns = targets_dir.ctime_ns = time.time_ns()
        return tnode

    def known_luns(self) -> list[Node]:
        """LUN nodes with a raw file, in listed luns/ directories (no network needed)."""
        found = []
        for pnode in self.portal_nodes():
            tdir = self.child(pnode, "targets")
            for tnode in self.children(tdir) if tdir is not None else ():
                luns = self.child(tnode, "luns")
                for lnode in self.children(luns) if luns is not None else ():
                    if self.child(lnode, "raw") is not None:
                        found.append(lnode)
        return found

    def set_links(self, directory: Node, links: Iterable[tuple[str, str]]) -> None:
        """Replace the symlinks of a BY_PATH directory with (name, target) pairs."""
        assert directory.kind is Kind.BY_PATH
        old = directory.children or {}
        directory.children = {}
        for name, target in links:
            self._add(directory, name, Kind.LINK, link=target)
        if set(old) != set(directory.children):
            directory.mtime_ns = directory.ctime_ns = time.time_ns()

    def set_by_id(self, directory: Node,
                  devices: Iterable[tuple[str, MultipathBlockDevice]]) -> None:
        """Replace the entries of the BY_ID directory with (name, device) pairs, and the
        status files of ``.multipath/`` with them (names already checked by the caller)."""
        assert directory.kind is Kind.BY_ID
        old = directory.children or {}
        devices = list(devices)
        for name, device in devices:
            known = self.by_path(*directory.path, name)
            if known is not None and known.mpath is not None and known.mpath is not device:
                self.forget(known)      # another device under this name: a new inode
                status = self.by_path(*directory.path, ".multipath", name)
                if status is not None:
                    self.forget(status)
        directory.children = {}
        status_dir = self._add(directory, ".multipath", Kind.MPATH_DIR)
        old_status = status_dir.children or {}
        status_dir.children = {}
        for name, device in devices:
            self._add(directory, name, Kind.MPATH, mpath=device)
            self._add(status_dir, name, Kind.MPATH_STATUS, mpath=device)
            self._add(status_dir, name + ".json", Kind.MPATH_JSON, mpath=device)
        if set(old) != set(directory.children):
            directory.mtime_ns = directory.ctime_ns = time.time_ns()
        if set(old_status) != set(status_dir.children):
            status_dir.mtime_ns = status_dir.ctime_ns = time.time_ns()

    def targets_dir(self, portal: Portal) -> Node:
        node = self.by_path("portals", portal.address, "targets")
        if node is None:
            raise KeyError(portal.address)
        return node

    def set_targets(self, targets_dir: Node, names: Iterable[str]) -> list[Node]:
        """Replace the listing of a targets/ directory with the discovered names.

        Unsafe names are skipped (warning). Targets that vanished leave the listing but keep
        their inode (an open file on them keeps working until the session says otherwise).
        """
        assert targets_dir.kind is Kind.TARGETS
        portal = targets_dir.portal
        assert portal is not None
        old = targets_dir.children or {}
        targets_dir.children = {}
        result = []
        for name in names:
            if not valid_iscsi_name(name):
                key = (portal.address, name)
                level = logging.DEBUG if key in self._rejected else logging.WARNING
                self._rejected.add(key)
                log.log(level, "portal %s: skipping target with unusable name %s",
                        portal.address, printable(name, 100))
                continue
            if name in targets_dir.children:
                continue
            tnode = self._add(targets_dir, name, Kind.TARGET, portal=portal, target=name)
            self._add(tnode, "session", Kind.SESSION, portal=portal, target=name)
            self._add(tnode, "session.json", Kind.SESSION_JSON, portal=portal, target=name)
            self._add(tnode, "luns", Kind.LUNS, portal=portal, target=name)
            self._add(tnode, "rescan", Kind.RESCAN, portal=portal, target=name)
            result.append(tnode)
        if set(old) != set(targets_dir.children):
            targets_dir.mtime_ns = targets_dir.ctime_ns = time.time_ns()
        return result

    def set_luns(self, luns_dir: Node, entries: Iterable[LunListing]) -> list[Node]:
        """Replace the listing of a luns/ directory with LunEntry values.

        Every LUN gets ``info``; only LUNs with a block device (``entry.device``) get ``raw``.
        """
        assert luns_dir.kind is Kind.LUNS
        old = luns_dir.children or {}
        luns_dir.children = {}
        result = []
        for entry in entries:
            number = int(entry.lun)
            name = str(number)
            known = self.by_path(*luns_dir.path, name)
            if known is not None and known.entry is not None \
                    and not _same_unit(known.entry, entry):
                self.forget(known)      # another logical unit: new inodes from here down
            attrs = dict(portal=luns_dir.portal, target=luns_dir.target, lun=number, entry=entry)
            lnode = self._add(luns_dir, name, Kind.LUN, **attrs)
            lnode.children = {}
            self._add(lnode, "info", Kind.INFO, **attrs)
            self._add(lnode, "info.json", Kind.INFO_JSON, **attrs)
            if entry.device is not None:
                self._add(lnode, "raw", Kind.RAW, **attrs)
            result.append(lnode)
        if set(old) != set(luns_dir.children):
            luns_dir.mtime_ns = luns_dir.ctime_ns = time.time_ns()
        return result


def _same_unit(old: LunListing, new: LunListing) -> bool:
    """Whether two listings of one LUN number are the same logical unit: the same block
    device (the backend gives a new one for another logical unit), or neither has one and
    the device type is the same."""
    if old.device is not None or new.device is not None:
        return old.device is new.device
    return old.device_type == new.device_type
