"""The rules behind the handlers: what a dynamic directory lists, what rescan, mkdir and
rmdir do, by-path names, and when a LUN's capacity is read again.

Owns:
- ``targets/`` listings: the SendTargets answer (minus targets removed with rmdir) plus the
  hand-added node records of the portal; only the records with ``nodiscovery``, and the
  records (with a warning) when discovery fails;
- ``luns/`` listings, and the tree following every new LUN list the backend has (it rescans
  by itself when the target says its LUNs changed, or a LUN number names another logical unit
  after a relogin): new LUNs appear, removed ones leave ``luns/``, ``by-path/`` and ``by-id/``,
  a replaced one gets new inodes, and the kernel forgets the names that changed;
- ``by-path/``: links for the LUNs already listed, and a name not seen yet resolved by listing
  that target (which logs in);
- ``by-id/``: one multipath device per LUN identity over every target of every portal of the
  mount (listing it, or looking up a name not seen yet, lists the targets and logs in), named
  as udev names /dev/disk/by-id, with its status file in ``by-id/.multipath/``;
- rescans (``portals/<p>/rescan``: SendTargets again; ``<target>/rescan``: REPORT LUNS and
  every capacity again) and the capacity re-read after UNIT ATTENTION 2A/09, with the kernel's
  cached attributes invalidated;
- mkdir / rmdir of targets and portals (node records through ``fs.records``).
The file tree and what each operation does for the user: docs/tree.md.

Errors for the caller are ``pyfuse3.FUSEError``; anything else a rule raises is mapped by the
handler that called it (``errno_map``). Talks to the layers below only through ``fs.backend``.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence

import pyfuse3
import trio

from iscsifs.core.names import Portal, parse_portal, printable, valid_iscsi_name
from iscsifs.fs.backend import Backend, LunListing
from iscsifs.fs.errno_map import fail as _fail
from iscsifs.fs.records import NodeRecords
from iscsifs.fs.render import by_id_name, by_path_name
from iscsifs.fs.tree import Kind, Node, Tree

log = logging.getLogger(__name__)

NAME_MAX = 255
# by-path/ names: ip-<addr:port>-iscsi-<iqn>-lun-<n>
BY_PATH_RE = re.compile(r"^ip-(?P<portal>\[[0-9a-fA-F:.]+\]:\d+|[^\[\]/:]+:\d+)-iscsi-"
                        r"(?P<target>.+)-lun-(?P<lun>\d+)$")


class Namespace:
    """The dynamic part of the tree, kept in step with the backend and the node records."""

    def __init__(self, backend: Backend, tree: Tree, *, records: NodeRecords | None = None,
                 kernel_notify: bool = False):
        self.backend = backend
        self.tree = tree
        # node records (or None: no mkdir/rmdir, listings are SendTargets only)
        self.records = records
        # tell the kernel to drop cached attributes after a rescan (only when mounted)
        self.kernel_notify = kernel_notify
        # the portals given on the command line: their directories can't go away
        self.mount_portals = [n.portal for n in tree.portal_nodes()]
        backend.watch_luns(self.luns_updated)
        # the discovery failure last reported for a portal (a WARNING): the same one again
        # is DEBUG, so a failing portal is one warning, not one per listing
        self._reported: dict[tuple[str, int], str] = {}

    def discovery_failed(self, portal: Portal, exc: BaseException) -> bool:
        """Note ``exc`` as the discovery failure of ``portal``; True when it is news (not the
        failure reported last for it), to be told at WARNING."""
        text = f"{type(exc).__name__}: {exc}"
        key = (portal.host, portal.port)
        news = self._reported.get(key) != text
        self._reported[key] = text
        return news

    # -- listings ---------------------------------------------------------------------------
    async def populate(self, node: Node) -> None:
        """Fill a dynamic directory from the backend (discovery / REPORT LUNS, lazy login)."""
        if node.kind is Kind.TARGETS:
            assert node.portal is not None
            self.tree.set_targets(node, await self.target_names(node.portal))
        elif node.kind is Kind.LUNS:
            assert node.target is not None and node.portal is not None
            entries: Sequence[LunListing] = await self.backend.luns(node.target, node.portal)
            self.set_luns(node, entries)
        elif node.kind is Kind.BY_PATH:
            self.build_by_path(node)
        elif node.kind is Kind.BY_ID:
            await self.build_by_id(node)

    def hidden_at(self, portal: Portal) -> set[str]:
        """Targets removed with rmdir (kept by fs.records so discovery won't record them)."""
        return self.records.hidden(portal) if self.records is not None else set()

    async def target_names(self, portal: Portal) -> list[str]:
        """SendTargets answer + static node records (or only the records: nodiscovery)."""
        records = self.records
        if records is not None and records.nodiscovery:
            return records.targets_at(portal, static_only=False)
        try:
            targets = await self.backend.discover(portal)
        except Exception as exc:
            if records is None:
                raise
            fallback = records.targets_at(portal, static_only=False)
            if not fallback:
                raise
            log.log(logging.WARNING if self.discovery_failed(portal, exc) else logging.DEBUG,
                    "discovery at %s failed (%s); listing its %d node record(s)",
                    portal.address, exc or type(exc).__name__, len(fallback))
            return fallback
        self._reported.pop((portal.host, portal.port), None)
        hidden = self.hidden_at(portal)
        names = [t.name for t in targets if t.name not in hidden]
        if records is not None:
            names += [n for n in records.targets_at(portal, static_only=True) if n not in names]
        return names

    # -- by-path ----------------------------------------------------------------------------
    def build_by_path(self, node: Node) -> None:
        links = []
        for lnode in self.tree.known_luns():
            assert lnode.target is not None and lnode.portal is not None
            assert lnode.lun is not None
            name = by_path_name(lnode.target, lnode.portal, lnode.lun)
            if len(name.encode("utf-8")) > NAME_MAX:
                log.debug("by-path: name for %s LUN %s too long; skipped", lnode.target,
                          lnode.lun)
                continue
            links.append((name, "../" + "/".join(lnode.path + ("raw",))))
        self.tree.set_links(node, links)

    async def resolve_by_path(self, directory: Node, name: str) -> Node | None:
        """Look up a by-path name not known yet: list that target's LUNs (logs in)."""
        match = BY_PATH_RE.match(name)
        if match is None:
            return None
        pnode = self.tree.by_path("portals", match["portal"])
        if pnode is None:
            return None
        tdir = self.tree.child(pnode, "targets")
        if tdir is None:
            return None
        if tdir.children is None:
            await self.populate(tdir)
        tnode = self.tree.child(tdir, match["target"])
        if tnode is None or tnode.kind is not Kind.TARGET:
            return None
        luns = self.tree.child(tnode, "luns")
        if luns is not None and luns.children is None:
            await self.populate(luns)
        self.build_by_path(directory)
        return self.tree.child(directory, name)

    # -- by-id ------------------------------------------------------------------------------
    async def build_by_id(self, node: Node) -> None:
        """by-id/: every disk LUN of every target of every portal of the mount, once per
        identity. Portals whose targets were never listed are listed now (at the same time),
        and the backend logs in where needed; a portal or target that cannot be reached is
        left out (with a warning) until the next listing."""
        pnodes = [p for p in self.tree.portal_nodes() if p.portal is not None]

        async def list_targets(pnode: Node) -> None:
            tdir = self.tree.child(pnode, "targets")
            if tdir is None or tdir.children is not None:
                return
            try:
                await self.populate(tdir)
            except Exception as exc:
                assert pnode.portal is not None
                log.warning("by-id: listing the targets at %s failed (%s); its paths are "
                            "left out", pnode.portal.address, exc or type(exc).__name__)

        async with trio.open_nursery() as nursery:
            for pnode in pnodes:
                nursery.start_soon(list_targets, pnode)
        pairs: list[tuple[str, Portal]] = []
        for pnode in pnodes:
            tdir = self.tree.child(pnode, "targets")
            for tnode in self.tree.children(tdir) if tdir is not None else ():
                if tnode.kind is Kind.TARGET and tnode.target is not None \
                        and tnode.portal is not None:
                    pairs.append((tnode.target, tnode.portal))
        devices = await self.backend.multipath(pairs)
        entries = []
        names: set[str] = set()
        for device in devices:
            name = by_id_name(device.identity)
            if name is None or len(name.encode("utf-8")) > NAME_MAX or name in names:
                log.debug("by-id: no name for identity %s", printable(device.identity, 100))
                continue
            names.add(name)
            entries.append((name, device))
        self.tree.set_by_id(node, entries)

    # -- LUN changes -------------------------------------------------------------------------
    def luns_updated(self, target: str, portal: Portal, entries: Sequence[LunListing]) -> None:
        """The backend has a new LUN list for ``target`` at ``portal``: its ``luns/`` follows
        (if it was listed), ``by-path/`` too, ``by-id/`` loses the devices that are gone, and
        the kernel forgets every name whose inode changed or went away."""
        luns = self.tree.by_path("portals", portal.address, "targets", target, "luns")
        if luns is None or luns.kind is not Kind.LUNS or luns.children is None:
            return
        before = dict(luns.children)
        self.set_luns(luns, entries)
        after = luns.children or {}
        stale = [name for name, inode in before.items() if after.get(name) != inode]
        added = [name for name in after if name not in before]
        if not stale and not added:
            self.notify_attrs([n for n in self.tree.subtree(luns) if n.kind is Kind.RAW])
            return
        log.debug("%s at %s: LUNs now %s", target, portal.address,
                 ", ".join(after) or "none")
        self.forget_names(luns, stale)
        by_path = self.tree.by_path_dir
        if by_path.children is not None:
            links = dict(by_path.children)
            self.build_by_path(by_path)
            self.forget_names(by_path, [n for n in links if n not in (by_path.children or {})])
        by_id = self.tree.by_id_dir
        dead = [n for n in self.tree.children(by_id)
                if n.kind is Kind.MPATH and n.mpath is not None and n.mpath.is_gone]
        for node in dead:
            status = self.tree.by_path(*by_id.path, ".multipath", node.name)
            self.tree.forget(node)
            if status is not None:
                self.tree.forget(status)
                self.forget_names(self.tree.node(status.parent), [node.name])
        self.forget_names(by_id, [n.name for n in dead])
        self.notify_attrs([luns] + [n for n in self.tree.subtree(luns) if n.kind is Kind.RAW])

    def set_luns(self, luns: Node, entries: Sequence[LunListing]) -> None:
        """``Tree.set_luns``, and a ``raw`` whose LU went away (or was replaced by another)
        takes its cached pages with it, as a deleted disk's do."""
        before = self._raw_inodes(luns)
        self.tree.set_luns(luns, entries)
        self.drop_data_later(before - self._raw_inodes(luns))

    def _raw_inodes(self, luns: Node) -> set[int]:
        found = set()
        for inode in (luns.children or {}).values():
            lnode = self.tree.get(inode)
            raw = (lnode.children or {}).get("raw") if lnode is not None else None
            if raw is not None:
                found.add(raw)
        return found

    def drop_data_later(self, inodes: set[int]) -> None:
        """Make the kernel drop the cached pages of ``inodes`` (``raw`` files whose LU went
        away), from a thread of its own: the kernel waits for pages a read request of ours
        holds locked, so a handler must never wait for this itself."""
        if not self.kernel_notify or not inodes:
            return

        def drop() -> None:
            for inode in inodes:
                try:
                    pyfuse3.invalidate_inode(inode, attr_only=False)
                except Exception:       # the kernel never looked it up, or has forgotten it
                    log.debug("invalidate_inode(%d) failed", inode, exc_info=True)

        threading.Thread(target=drop, name="iscsifs-drop-cache", daemon=True).start()

    def forget_names(self, directory: Node, names: Sequence[str]) -> None:
        """Make the kernel drop its cached entries ``names`` of ``directory`` (their inodes
        changed or went away). Asynchronous: safe inside a request handler."""
        if not self.kernel_notify:
            return
        for name in names:
            try:
                pyfuse3.invalidate_entry_async(directory.inode, name.encode("utf-8"),
                                               ignore_enoent=True)
            except Exception:
                log.debug("invalidate_entry(%d, %r) failed", directory.inode, name,
                          exc_info=True)

    # -- rescans and capacity ---------------------------------------------------------------
    def notify_attrs(self, nodes: list[Node]) -> None:
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

    def notify_data(self, node: Node) -> None:
        """Make the kernel drop the cached data of ``node`` (a raw file after a discard: with
        cache=page the page cache would still hold what was there)."""
        if not self.kernel_notify:
            return
        try:
            pyfuse3.invalidate_inode(node.inode, attr_only=False)
        except OSError:
            pass
        except Exception:
            log.debug("invalidate_inode(%d) failed", node.inode, exc_info=True)

    async def refresh_capacity(self, node: Node) -> None:
        """READ CAPACITY again if a command saw UNIT ATTENTION 2A/09 (capacity changed)."""
        dev = node.device
        if dev is None or not dev.capacity_changed:
            return
        old = dev.size
        try:
            await dev.read_capacity()
        except Exception as exc:
            log.warning("%s: re-reading the capacity failed: %s", "/".join(node.path), exc)
            return
        if dev.size != old:
            log.info("%s: capacity changed from %d to %d bytes", "/".join(node.path), old,
                     dev.size)
            node.ctime_ns = time.time_ns()
            self.notify_attrs([node])

    def protection_changed(self, node: Node) -> None:
        """The LUN of ``node`` (a raw file) became write-protected or writable again: its
        mode changes (0400 / 0600); the kernel must forget the attributes it cached."""
        dev = node.device
        log.info("%s: the LUN is now %s", "/".join(node.path),
                 "write-protected" if dev is not None and dev.write_protected else "writable")
        node.ctime_ns = time.time_ns()
        self.notify_attrs([node])

    async def rescan_target(self, node: Node) -> None:
        """``iscsiadm -m node -R`` for one target: new LUNs appear, capacities re-read."""
        assert node.target is not None and node.portal is not None
        tnode = self.tree.by_path(*node.path[:-1])
        entries = await self.backend.rescan(node.target, node.portal)
        luns = self.tree.child(tnode, "luns") if tnode is not None else None
        if luns is not None:
            self.set_luns(luns, entries)
            changed = [luns] + [n for n in self.tree.subtree(luns) if n.kind is Kind.RAW]
            # by-id files over this target's LUNs take the capacities the rescan read
            changed += [n for n in self.tree.children(self.tree.by_id_dir)
                        if n.kind is Kind.MPATH]
            for n in changed:
                if n.kind.is_device:
                    n.ctime_ns = time.time_ns()
            self.notify_attrs(changed)
        log.info("%s at %s: rescanned, %d LUN(s)", node.target, node.portal.address,
                 len(entries))

    async def rediscover(self, node: Node) -> None:
        """portals/<p>/rescan: SendTargets again now; targets removed by rmdir come back."""
        portal = node.portal
        assert portal is not None
        if self.records is not None:
            self.records.unhide_all(portal)
        if self.records is None or not self.records.nodiscovery:
            await self.backend.discover(portal, refresh=True)
        tdir = self.tree.by_path(*node.path[:-1], "targets")
        if tdir is not None:
            await self.populate(tdir)
            self.notify_attrs([tdir])

    # -- mkdir / rmdir ----------------------------------------------------------------------
    async def mkdir(self, parent: Node, name: str | None) -> Node:
        """mkdir targets/<iqn>: a static node record; mkdir portals/<addr:port>: a portal for
        this mount. EPERM elsewhere, EINVAL for a bad name (None: not UTF-8), EEXIST if it is
        there."""
        records = self.records
        if records is None or parent.kind not in (Kind.TARGETS, Kind.PORTALS):
            raise _fail(errno.EPERM)
        if name is None:
            raise _fail(errno.EINVAL)
        if parent.kind is Kind.PORTALS:
            return self._mkdir_portal(parent, name)
        if not valid_iscsi_name(name):
            log.info("mkdir: %s is not a valid iSCSI name (iqn./eui./naa., at most 223 bytes)",
                     printable(name, 100))
            raise _fail(errno.EINVAL)
        assert parent.portal is not None
        if parent.children is None:
            try:
                await self.populate(parent)
            except Exception as exc:      # a target that refuses discovery: that's why we're here
                log.debug("listing before mkdir failed: %s", exc)
        if self.tree.child(parent, name) is not None:
            raise _fail(errno.EEXIST)
        records.add_static(name, parent.portal)
        self.hidden_at(parent.portal).discard(name)
        return self.tree.add_target(parent, name)

    def _mkdir_portal(self, parent: Node, text: str) -> Node:
        try:
            portal = parse_portal(text)
        except ValueError:
            raise _fail(errno.EINVAL) from None
        if portal.address != text:       # only the canonical spelling: addr:port
            raise _fail(errno.EINVAL)
        if self.tree.child(parent, text) is not None:
            raise _fail(errno.EEXIST)
        log.info("portal %s added to this mount", text)
        return self.tree.add_portal(portal)

    async def rmdir(self, parent: Node, name: str | None,
                    is_open: Callable[[Node], bool]) -> None:
        """rmdir targets/<iqn>: log out, delete its records at this portal, hide it until the
        next rediscovery. rmdir portals/<p>: log out its sessions, delete its discovery records
        (a portal of the command line comes back at once, empty of cached answers). EBUSY while
        ``is_open`` says a raw file under it is open."""
        records = self.records
        if records is None or parent.kind not in (Kind.TARGETS, Kind.PORTALS):
            raise _fail(errno.EPERM)
        child = self.tree.child(parent, name) if name is not None else None
        if child is None:
            raise _fail(errno.ENOENT)
        if child.kind not in (Kind.TARGET, Kind.PORTAL):
            raise _fail(errno.ENOTDIR)
        if is_open(child):
            raise _fail(errno.EBUSY)
        portal = child.portal
        assert portal is not None
        if child.kind is Kind.TARGET:
            assert child.target is not None
            await self.backend.logout(child.target, portal)
            records.delete(child.target, portal)
            self.hidden_at(portal).add(child.target)
            self.tree.forget(child)
            log.info("target %s at %s removed (logged out, record deleted)", child.target,
                     portal.address)
            return
        for target in list(self.backend.logged_in_targets(portal)):
            await self.backend.logout(target, portal)
        records.delete_discovery(portal)
        self.backend.forget_discovery(portal)
        records.unhide_all(portal)
        self.tree.forget(child)
        if portal in self.mount_portals:
            self.tree.add_portal(portal)        # new inodes: the kernel now holds the old dead
        log.info("portal %s: discovery records deleted", portal.address)
