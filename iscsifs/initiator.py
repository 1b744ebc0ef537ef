"""The initiator as the filesystem and the mount see it: portals, targets, LUNs, sessions.

Owns: the discovery cache, one session per (target, portal) created on first use (lazy login,
shared by every open file), the LUN list of each session (``device.Lun`` for disk LUNs),
rescans, the multipath devices (disk LUNs grouped by their identity, VPD 0x83, across every
target and portal: one ``multipath.MultipathDevice`` each), and logging everything out at the
end. Long-lived tasks run in the nursery its owner passes in.

This is the facade above the layers: it uses ``net`` (sessions, discovery), ``device`` and
``multipath``; ``fs``, ``mount`` and ``cli`` use it, and nothing below imports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import trio

from .core.chap import ChapCredentials
from .core.discovery import DiscoveredTarget, Portal
from .core.keys import LoginParams, NegotiatedParams
from .device import DEFAULT_MAX_COMMAND, Lun, read_data
from .errors import IscsiError
from .multipath import POLICIES, MultipathDevice, Path
from .net.discovery import discover
from .net.isns import isns_discover
from .net.session import Session, Timeouts
from .net.transport import tcp_connector
from .scsi import cdb as scsi_cdb
from .scsi import parse as scsi_parse
from .scsi.sense import ScsiError

log = logging.getLogger(__name__)

__all__ = ["Initiator", "LunEntry", "SessionInfo", "Timeouts", "NodeOptions",
           "MultipathDevice"]

# SendTargets results older than this are refreshed on the next listing (seconds).
DISCOVERY_TTL = 30.0


@dataclass(frozen=True)
class LunEntry:
    lun: int
    device_type: int
    type_name: str
    device: Lun | None


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session for ``fs/render.py``. ``portal`` is where the connection is
    now (the Current Portal: it differs from the node's after a login redirection)."""

    target: str
    portal: Portal
    sid: int
    initiator_name: str
    local_address: str
    connection_state: str
    session_state: str
    timeouts: Timeouts
    chap_username: str | None
    chap_username_in: str | None
    params: NegotiatedParams
    luns: tuple[LunEntry, ...]
    counters: dict[str, int]
    isid: int
    tsih: int
    reconnects: int = 0


@dataclass(frozen=True)
class NodeOptions:
    """Per-node login settings (from node records); None fields fall back to the defaults."""

    chap: ChapCredentials | None = None
    login_params: LoginParams | None = None
    timeouts: Timeouts | None = None
    queue_depth: int | None = None
    cmds_max: int | None = None
    source_address: str | None = None     # iface.ipaddress: bind every connection to it


def _key(target: str, portal: Portal) -> tuple[str, str, int]:
    return (target, portal.host, portal.port)


@dataclass
class _Entry:
    session: Session | None = None
    luns: list[LunEntry] | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)


class Initiator:
    def __init__(self, *, initiator_name: str, portals: list[Portal], nursery: trio.Nursery,
                 timeouts: Timeouts | None = None, login_params: LoginParams | None = None,
                 chap: ChapCredentials | None = None, discovery_chap: ChapCredentials | None = None,
                 initiator_alias: str | None = None,
                 queue_depth: int = 32, max_command_bytes: int = DEFAULT_MAX_COMMAND,
                 node_options: Callable[[str, Portal], NodeOptions | None] | None = None,
                 discovery_chap_for: Callable[[Portal], ChapCredentials | None] | None = None,
                 on_discovered: Callable[[Portal, list[DiscoveredTarget]], None] | None = None,
                 multipath_policy: str = "failover",
                 sid_source: Callable[[], int] | None = None,
                 source_address: str | None = None,
                 isns_server: Portal | None = None,
                 isns_answer: list[DiscoveredTarget] | None = None):
        self.initiator_name = initiator_name
        self.initiator_alias = initiator_alias
        self.portals = list(portals)
        self.timeouts = timeouts or Timeouts()
        self.login_params = login_params or LoginParams()
        self.chap = chap
        self.discovery_chap = discovery_chap
        self.queue_depth = queue_depth
        self.max_command_bytes = max_command_bytes
        self.node_options = node_options
        # per-portal discovery credentials (overrides discovery_chap when given)
        self.discovery_chap_for = discovery_chap_for
        # called after every SendTargets answer (not for cached ones): e.g. to record nodes
        self.on_discovered = on_discovered
        # session IDs for new sessions (the mount's are unique machine-wide); None: per process
        self.sid_source = sid_source
        # local address every connection is bound to (source_address=, iface.ipaddress);
        # a node record's iface.ipaddress wins for that node's sessions
        self.source_address = source_address
        # iSNS: the portals it reported list the targets it reports there (no SendTargets);
        # its answer is cached like a SendTargets answer (isns_answer: one already had)
        self.isns_server = isns_server
        self._isns: tuple[float, list[DiscoveredTarget]] | None = None
        self._isns_addresses: set[tuple[str, int]] = set()
        self._isns_lock = trio.Lock()
        if isns_answer is not None:
            self._set_isns(isns_answer)
        self._nursery = nursery
        self._discovered: dict[tuple[str, int], tuple[float, list[DiscoveredTarget]]] = {}
        self._discovery_locks: dict[tuple[str, int], trio.Lock] = {}
        self._entries: dict[tuple[str, str, int], _Entry] = {}
        if multipath_policy not in POLICIES:
            raise ValueError(f"multipath policy must be one of {', '.join(POLICIES)}")
        self.multipath_policy = multipath_policy
        self._multipath: dict[str, MultipathDevice] = {}     # identity -> device
        self._closed = False

    # ------------------------------------------------------------------ discovery
    def _set_isns(self, targets: list[DiscoveredTarget]) -> None:
        self._isns = (trio.current_time(), targets)
        self._isns_addresses.update((p.host, p.port) for t in targets for p in t.portals)

    async def isns_targets(self, *, refresh: bool = False) -> list[DiscoveredTarget]:
        """What the iSNS server reports (every target and its portals); cached for
        DISCOVERY_TTL seconds unless ``refresh``."""
        assert self.isns_server is not None
        async with self._isns_lock:
            cached = self._isns
            if cached and not refresh and trio.current_time() - cached[0] < DISCOVERY_TTL:
                return cached[1]
            targets = await isns_discover(self.isns_server, initiator_name=self.initiator_name,
                                          timeout=self.timeouts.login,
                                          connector=tcp_connector(self.source_address))
            self._set_isns(targets)
            return targets

    def is_isns_portal(self, portal: Portal) -> bool:
        """Did the iSNS server report this portal (its listing comes from iSNS)?"""
        return (portal.host, portal.port) in self._isns_addresses

    async def discover(self, portal: Portal, *, refresh: bool = False) -> list[DiscoveredTarget]:
        """The targets at ``portal``: what the iSNS server reports there for a portal it
        reported, else SendTargets; cached for DISCOVERY_TTL seconds unless ``refresh``."""
        key = (portal.host, portal.port)
        if self.isns_server is not None and key in self._isns_addresses:
            found = []
            for target in await self.isns_targets(refresh=refresh):
                here = tuple(p for p in target.portals if (p.host, p.port) == key)
                if here:
                    found.append(DiscoveredTarget(target.name, here))
            return found
        lock = self._discovery_locks.setdefault(key, trio.Lock())
        async with lock:
            cached = self._discovered.get(key)
            if cached and not refresh and trio.current_time() - cached[0] < DISCOVERY_TTL:
                return cached[1]
            chap = (self.discovery_chap_for(portal) if self.discovery_chap_for is not None
                    else self.discovery_chap)
            targets = await discover(portal, initiator_name=self.initiator_name,
                                     chap=chap, timeouts=self.timeouts,
                                     initiator_alias=self.initiator_alias,
                                     connector=tcp_connector(self.source_address))
            self._discovered[key] = (trio.current_time(), targets)
            if self.on_discovered is not None:
                try:
                    self.on_discovered(portal, targets)
                except Exception:     # recording is a side effect: never fail the listing
                    log.warning("recording the discovery at %s:%d failed", portal.host,
                                portal.port, exc_info=True)
            return targets

    def forget_discovery(self, portal: Portal) -> None:
        """Drop the cached SendTargets answer of ``portal`` (the next listing asks again)."""
        self._discovered.pop((portal.host, portal.port), None)

    # ------------------------------------------------------------------ sessions
    def _options(self, target: str, portal: Portal) -> NodeOptions:
        opts = self.node_options(target, portal) if self.node_options else None
        return opts or NodeOptions()

    async def session(self, target: str, portal: Portal) -> Session:
        """The session to ``target`` at ``portal``, logging in on first use."""
        if self._closed:
            raise trio.ClosedResourceError("initiator is closed")
        entry = self._entries.setdefault(_key(target, portal), _Entry())
        if entry.session is not None:
            return entry.session
        async with entry.lock:
            if entry.session is None:
                opts = self._options(target, portal)
                entry.session = await Session.connect(
                    portal, target, initiator_name=self.initiator_name, nursery=self._nursery,
                    params=opts.login_params or self.login_params,
                    chap=opts.chap if opts.chap is not None else self.chap,
                    timeouts=opts.timeouts or self.timeouts,
                    queue_depth=opts.queue_depth or self.queue_depth,
                    cmds_max=opts.cmds_max or 128,
                    initiator_alias=self.initiator_alias,
                    sid=self.sid_source() if self.sid_source is not None else None,
                    connector=tcp_connector(opts.source_address or self.source_address))
            return entry.session

    async def luns(self, target: str, portal: Portal) -> list[LunEntry]:
        """The LUNs of a target (REPORT LUNS + INQUIRY each), logging in lazily."""
        session = await self.session(target, portal)
        entry = self._entries[_key(target, portal)]
        if entry.luns is not None:
            return entry.luns
        async with entry.lock:
            if entry.luns is None:
                entry.luns = await self._scan(session, [])
            return entry.luns

    async def rescan(self, target: str, portal: Portal) -> list[LunEntry]:
        """Like ``iscsiadm -m node -R``: find new LUNs and re-read every LUN's capacity."""
        session = await self.session(target, portal)
        entry = self._entries[_key(target, portal)]
        async with entry.lock:
            entry.luns = await self._scan(session, entry.luns or [])
            luns = {e.lun: e.device for e in entry.luns if e.device is not None}
        # multipath devices follow: a LUN gone is a path gone; a new capacity is theirs too
        for mdev in self._multipath.values():
            for path in list(mdev.group.paths):
                if (path.target, path.portal.host, path.portal.port) != _key(target, portal):
                    continue
                if luns.get(path.lun) is not path.device:
                    mdev.group.remove(lambda p, path=path: p is path)
                else:
                    mdev.copy_geometry(path.device)
        return entry.luns

    async def _scan(self, session: Session, known: list[LunEntry]) -> list[LunEntry]:
        old = {e.lun: e for e in known}
        buf_len = 16384
        data = await read_data(session, 0, scsi_cdb.report_luns(alloc=buf_len), buf_len)
        numbers = scsi_parse.parse_report_luns(data)
        result = []
        for n in sorted(set(numbers)):
            prev = old.get(n)
            if prev is not None and prev.device is not None:
                await prev.device.read_capacity()
                await prev.device.read_write_protect()
                result.append(prev)
                continue
            inquiry = scsi_parse.parse_inquiry(await read_data(session, n, scsi_cdb.inquiry(alloc=96), 96))
            device = None
            if inquiry.is_disk:
                try:
                    device = await Lun.open(session, n, inquiry, self.max_command_bytes)
                except ScsiError as exc:
                    log.warning("LUN %d of %s: %s", n, session.target_name, exc)
            result.append(LunEntry(n, inquiry.device_type, inquiry.device_type_name, device))
        return result

    def session_info(self, target: str, portal: Portal) -> SessionInfo | None:
        entry = self._entries.get(_key(target, portal))
        if entry is None or entry.session is None:
            return None
        s = entry.session
        chap = s.chap
        return SessionInfo(
            target=target, portal=s.current_portal, sid=s.sid, initiator_name=s.initiator_name,
            local_address=s.local_address, connection_state=s.connection_state,
            session_state=s.session_state, timeouts=s.timeouts,
            chap_username=chap.username if chap else None,
            chap_username_in=chap.username_in if chap else None,
            params=s.negotiated or NegotiatedParams(), luns=tuple(entry.luns or ()),
            counters=s.counters(), isid=s.isid, tsih=s.tsih, reconnects=s.reconnects)

    def logged_in_targets(self, portal: Portal) -> list[str]:
        """Targets with a session at ``portal`` (host and port)."""
        return [target for (target, host, port), e in self._entries.items()
                if e.session is not None and (host, port) == (portal.host, portal.port)]

    async def logout(self, target: str, portal: Portal) -> None:
        entry = self._entries.pop(_key(target, portal), None)
        if entry is not None and entry.session is not None:
            for mdev in self._multipath.values():       # its paths go first
                mdev.group.remove(lambda p: p.session is entry.session)
            await entry.session.close()

    # ------------------------------------------------------------------ multipath
    async def multipath(self, pairs: Sequence[tuple[str, Portal]]) -> list[MultipathDevice]:
        """The multipath devices of the disk LUNs of every (target, portal) in ``pairs``:
        one per identity (VPD 0x83, ``Lun.wwn``), with a path for each LUN that reports it.

        Logs in where needed (all targets at once, each login bounded by its login timeout);
        a target that cannot be reached is skipped with a warning, and its paths are missing
        until a later call finds them. Paths are only added here; they go away on logout and
        when a rescan no longer finds their LUN. The priority of a path is the order of
        ``pairs`` (the mount's portal order)."""
        found: dict[int, list[LunEntry]] = {}

        async def scan(i: int, target: str, portal: Portal) -> None:
            try:
                found[i] = await self.luns(target, portal)
            except (IscsiError, OSError) as exc:
                log.warning("multipath: %s at %s: %s; its paths are left out", target,
                            portal.address, exc)

        async with trio.open_nursery() as nursery:
            for i, (target, portal) in enumerate(pairs):
                nursery.start_soon(scan, i, target, portal)
        seen: dict[str, MultipathDevice] = {}
        for i, (target, portal) in enumerate(pairs):
            for e in found.get(i, ()):
                device = e.device
                if device is None or not device.wwn:
                    continue
                mdev = self._multipath_for(device, target, portal, i)
                if mdev is not None:
                    seen.setdefault(mdev.identity, mdev)
        return [m for m in seen.values() if m.group.paths]

    def _multipath_for(self, device: Lun, target: str, portal: Portal,
                       rank: int) -> MultipathDevice | None:
        identity = device.wwn
        assert identity is not None
        mdev = self._multipath.get(identity)
        if mdev is None:
            mdev = MultipathDevice(device, policy=self.multipath_policy,
                                   no_path_retry=device.session.timeouts.replacement_timeout)
            self._multipath[identity] = mdev
        elif (why := mdev.same_unit(device)) is not None:
            log.warning("multipath: LUN %d of %s at %s reports the identity %s but %s; not "
                        "used as a path", device.lun, target, portal.address, identity, why)
            return None
        mdev.group.add(Path(target, portal, device, rank))
        return mdev

    async def aclose(self) -> None:
        """Log out of every session (concurrently, each bounded by its logout timeout)."""
        self._closed = True
        for mdev in self._multipath.values():
            mdev.group.close()
        entries, self._entries = list(self._entries.values()), {}
        async with trio.open_nursery() as nursery:
            for entry in entries:
                if entry.session is not None:
                    nursery.start_soon(entry.session.close)
