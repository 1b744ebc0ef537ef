"""The initiator as the filesystem and the mount see it: portals, targets, LUNs, sessions.

Owns: the discovery cache, one session per (target, portal) created on first use (lazy login,
shared by every open file), the LUN list of each session (``device.Lun`` for disk LUNs),
rescans, the multipath devices (disk LUNs grouped by their identity, VPD 0x83, across every
target and portal: one ``multipath.MultipathDevice`` each), and logging everything out at the
end. Long-lived tasks run in the nursery its owner passes in.

It also keeps every ``Lun`` bound to the logical unit it was found on. After every relogin
(a login hook, before the session takes I/O) and on every rescan it reads each known LUN's
identity again (INQUIRY, VPD 0x80 and 0x83); a LUN number that names another logical unit now,
or none, makes its ``Lun`` gone (its open files fail with ENXIO, nothing more is sent for it)
and the rescan that follows gives the number a new ``Lun``. UNIT ATTENTION 3F/0E (REPORTED
LUNS DATA HAS CHANGED), ILLEGAL REQUEST 25/00 and the SCSI async event with 3F/0E or 2A/09
start that rescan by themselves; ``luns_listeners`` hear of every new LUN list.

This is the facade above the layers: it uses ``net`` (sessions, discovery), ``device`` and
``multipath``; ``fs``, ``mount`` and ``cli`` use it, and nothing below imports it.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import trio

from .core.chap import ChapCredentials
from .core.discovery import DiscoveredTarget
from .core.names import Portal
from .core.keys import LoginParams, NegotiatedParams
from .core.pdu import AsyncMessage, decode_lun
from .core.state import ConnectionState, SessionState
from .device import DEFAULT_MAX_COMMAND, Identity, Lun, read_data, read_identity
from .errors import IdentityUnverified, IscsiError, LoggedOut, RemoteProtocolError
from .multipath import POLICIES, MultipathDevice, Path
from .net.discovery import discover
from .net.isns import isns_discover
from .net.session import Session, Timeouts
from .net.transport import Connector, Transport, open_tcp, tcp_connector
from .scsi import cdb as scsi_cdb
from .scsi import parse as scsi_parse
from .scsi.sense import (ScsiError, alua_not_ready, is_capacity_changed, is_luns_changed,
                         parse_sense)
# (apart from the block above: the defect commits of issue 15 must revert cleanly over it)
from .device import register_key
from .multipath import ALUA_TRANSITION_TIMEOUT

log = logging.getLogger(__name__)

__all__ = ["Initiator", "LunEntry", "SessionInfo", "Timeouts", "NodeOptions",
           "MultipathDevice"]

# SendTargets results older than this are refreshed on the next listing (seconds).
DISCOVERY_TTL = 30.0
# After a relogin, a LUN's identity INQUIRYs are sent this many times in all when they fail
# without a definite answer (a Reject, an error status), before that relogin fails (Linux's
# scsi_probe_lun sends INQUIRY three times too).
IDENTITY_ATTEMPTS = 3


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
    connection_state: ConnectionState
    session_state: SessionState
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
    rescanning: bool = False        # a background rescan runs (or is about to)
    rescan_again: bool = False      # another change was seen while it ran


# called with (target, portal, LUN list) after every scan of a target's LUNs
LunsListener = Callable[[str, Portal, list[LunEntry]], None]


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
                 connector: Connector = open_tcp,
                 reservation_key: int | None = None, reservation_aptpl: bool = False,
                 alua_transition_timeout: float = ALUA_TRANSITION_TIMEOUT,
                 source_address: str | None = None,
                 isns_server: Portal | None = None,
                 isns_answer: list[DiscoveredTarget] | None = None,
                 transport_factory: Callable[[Portal], Awaitable[Transport]] | None = None):
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
        self.connector = connector      # how sessions reach a portal (tests: a socketpair)
        # or a whole transport per portal (the simulator's in-memory network); None: TCP
        self.transport_factory = transport_factory
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
        self.alua_transition_timeout = alua_transition_timeout
        # multipath.conf's reservation_key: registered on every disk LUN of every session
        # (every path, every I_T nexus) before I/O goes down it; never logged above DEBUG
        self.reservation_key = reservation_key
        self.reservation_aptpl = reservation_aptpl
        if multipath_policy not in POLICIES:
            raise ValueError(f"multipath policy must be one of {', '.join(POLICIES)}")
        self.multipath_policy = multipath_policy
        self._multipath: dict[str, MultipathDevice] = {}     # identity -> device
        # one range lock per logical unit (by WWN and serial), shared by all of its Luns
        self._range_locks: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._closed = False
        # told of every new LUN list (after a listing, a rescan, a LUN change)
        self.luns_listeners: list[LunsListener] = []

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
                    transport_factory=self.transport_factory,
                    # identity first: nothing else goes to a LUN that may be another LU now
                    login_hooks=[self._identity_hook(_key(target, portal)),
                                 *self._login_hooks(entry)],
                    connector=self._connector(opts.source_address))
                entry.session.async_listeners.append(
                    lambda session, pdu, key=_key(target, portal): self._async_event(key, pdu))
                if self._closed or self._entries.get(_key(target, portal)) is not entry:
                    # logged out (rmdir, unmount) while this login ran: out again at once
                    with trio.CancelScope(shield=True):
                        await entry.session.close()
                    raise self._logged_out(target, portal)
            return entry.session

    def _connector(self, source_address: str | None = None) -> Connector:
        """How a connection is made: bound to the node's source address, else the
        initiator's, else ``self.connector`` (plain TCP; tests: a socketpair)."""
        source = source_address or self.source_address
        return tcp_connector(source) if source else self.connector

    def _logged_out(self, target: str, portal: Portal) -> LoggedOut:
        return LoggedOut(f"{target} at {portal.address} was logged out meanwhile")

    def _current(self, target: str, portal: Portal, session: Session) -> _Entry:
        """The entry of ``session``; LoggedOut once it was logged out."""
        entry = self._entries.get(_key(target, portal))
        if entry is None or entry.session is not session:
            raise self._logged_out(target, portal)
        return entry

    async def luns(self, target: str, portal: Portal) -> list[LunEntry]:
        """The LUNs of a target (REPORT LUNS + INQUIRY each), logging in lazily."""
        session = await self.session(target, portal)
        entry = self._current(target, portal, session)
        if entry.luns is not None:
            return entry.luns
        async with entry.lock:
            if entry.luns is None:
                try:
                    entry.luns = await self._scan(_key(target, portal), session, [])
                except IscsiError:      # e.g. the session closed under the scan
                    self._current(target, portal, session)
                    raise
                self._tell(target, portal, entry.luns)
            return entry.luns

    async def rescan(self, target: str, portal: Portal) -> list[LunEntry]:
        """Like ``iscsiadm -m node -R``: find new LUNs and re-read every LUN's capacity; a
        LUN that is not reported any more, or names another logical unit now (VPD 0x80 /
        0x83), is gone and gets a new ``Lun`` if its number is still there."""
        session = await self.session(target, portal)
        entry = self._current(target, portal, session)
        async with entry.lock:
            try:
                entry.luns = await self._scan(_key(target, portal), session, entry.luns or [])
            except IscsiError:      # e.g. the session closed under the scan
                self._current(target, portal, session)
                raise
            luns = {e.lun: e.device for e in entry.luns if e.device is not None}
        # multipath devices follow: a LUN gone is a path gone; a new capacity is theirs too
        for mdev in self._multipath.values():
            for path in list(mdev.group.paths):
                if (path.target, path.portal.host, path.portal.port) != _key(target, portal):
                    continue
                if luns.get(path.lun) is not path.device:
                    mdev.group.remove(lambda p, path=path: p is path)
                elif path.device.geometry_known:
                    mdev.copy_geometry(path.device)
        self._tell(target, portal, entry.luns)
        return entry.luns

    def watch_luns(self, callback: LunsListener) -> None:
        """Have ``callback(target, portal, luns)`` called after every scan of a target's
        LUNs (a listing, a rescan, one started by a LUN change)."""
        self.luns_listeners.append(callback)

    def _tell(self, target: str, portal: Portal, luns: list[LunEntry]) -> None:
        for listener in list(self.luns_listeners):
            try:
                listener(target, portal, luns)
            except Exception:       # a listener's bug must not fail the scan
                log.exception("LUN list listener failed")

    async def _scan(self, key: tuple[str, str, int], session: Session,
                    known: list[LunEntry]) -> list[LunEntry]:
        """REPORT LUNS, and each LUN's identity: a known LUN whose logical unit is still
        there keeps its ``Lun`` (capacity and write protection read again); a new number, or
        one that names another logical unit now, gets a new one; a known ``Lun`` whose
        logical unit is not there any more is gone."""
        old = {e.lun: e for e in known}
        buf_len = 16384
        data = await read_data(session, 0, scsi_cdb.report_luns(alloc=buf_len), buf_len)
        numbers = scsi_parse.parse_report_luns(data)
        result = []
        for n in sorted(set(numbers)):
            prev = old.pop(n, None)
            dev = prev.device if prev is not None else None
            found = await read_identity(session, n)
            if dev is not None and not dev.is_gone:
                now = found[2] if found is not None else None
                if now == dev.lu_identity:
                    assert prev is not None
                    try:
                        await dev.read_capacity()
                    except ScsiError as exc:
                        if not (dev.tpgs and alua_not_ready(exc)):
                            raise       # a port in ALUA standby keeps the geometry it had
                    await dev.read_write_protect()
                    result.append(prev)
                    continue
                self._unit_gone(key, dev, now, "on a rescan")
            if found is None:
                continue                # listed, but no logical unit answers there
            inquiry = found[0]
            device = None
            if inquiry.is_disk:
                try:
                    device = await Lun.open(session, n, found, self.max_command_bytes)
                except ScsiError as exc:
                    log.warning("LUN %d of %s: %s", n, session.target_name, exc)
                else:
                    device.on_luns_changed = lambda _dev, key=key: self._rescan_soon(key)
                    device.share_range_lock(self._range_locks)
            result.append(LunEntry(n, inquiry.device_type, inquiry.device_type_name, device))
        for prev in old.values():       # numbers the target does not report any more
            if prev.device is not None and not prev.device.is_gone:
                self._unit_gone(key, prev.device, None, "on a rescan")
        if self.reservation_key is not None:    # new LUNs, before any I/O of their own
            for e in result:
                if e.device is not None and all(e is not k for k in known):
                    await self._register_key(session, e.lun)
        return result

    # ------------------------------------------------------------------ reservations
    def _login_hooks(self, entry: _Entry) -> list:
        """What every login of ``entry``'s session runs before it takes I/O, after the
        identity check."""
        hooks = []
        if self.reservation_key is not None:
            async def register_keys(session: Session) -> None:
                # a relogin is a new I_T nexus: the LUNs known so far get the key again
                # (the first login knows none yet: _scan registers each LUN it finds; one
                # that is another LU now gets it when the rescan finds the new one)
                for e in entry.luns or ():
                    if e.device is not None and not e.device.is_gone:
                        await self._register_key(session, e.lun, setup=True)
            hooks.append(register_keys)
        return hooks

    async def _register_key(self, session: Session, lun: int, **kw) -> None:
        """REGISTER AND IGNORE EXISTING KEY of the mount's reservation_key on ``lun``. A
        target that refuses it is a warning (the LUN stays usable, unregistered); a broken
        connection fails the login it runs in."""
        assert self.reservation_key is not None
        try:
            await register_key(session, lun, self.reservation_key,
                               aptpl=self.reservation_aptpl, **kw)
        except ScsiError as exc:
            log.warning("LUN %d of %s: registering the reservation key failed: %s", lun,
                        session.target_name, exc)
            return
        log.info("LUN %d of %s: reservation key registered", lun, session.target_name)
        log.debug("LUN %d of %s: reservation key 0x%x", lun, session.target_name,
                  self.reservation_key)

    # ------------------------------------------------------------------ identity
    def _identity_hook(self, key: tuple[str, str, int]):
        """The login hook of the session ``key``: after every login, before any command is
        re-issued or new I/O sent, each known LUN's identity is read again; a LUN that names
        another logical unit now (or none) is gone, and a rescan follows.

        The same LU's capacity is read again too: a relogin is a new I_T nexus (after a
        target restart, or one redirected to another portal group), which the target tells
        "power on, reset" (29/00) and not of a capacity change made before it existed.

        Only a definite answer makes a LUN gone: another identity, peripheral qualifier 011b
        or ILLEGAL REQUEST 25/00 (``read_identity``). Any other failure of those INQUIRYs (a
        Reject, an error status) is tried again, ``IDENTITY_ATTEMPTS`` times in all; after
        that (or when the connection fails or a command times out) this relogin fails
        (``IdentityUnverified``): the session drops the connection and logs in again with
        back-off, and nothing is re-issued or sent until a login has checked every LUN."""
        async def verify_identity(session: Session) -> None:
            entry = self._entries.get(key)
            if entry is None or not entry.luns:
                return              # the first login: nothing known yet
            changed = False
            for e in list(entry.luns):
                dev = e.device
                if dev is None or dev.is_gone:
                    continue
                try:
                    found = await _read_identity_again(session, dev.lun)
                except IdentityUnverified:
                    if changed:
                        self._rescan_soon(key)
                    raise
                now = found[2] if found is not None else None
                if now != dev.lu_identity:
                    self._unit_gone(key, dev, now, "after a relogin")
                    changed = True
                    continue
                await _read_capacity_again(dev)
            if changed:
                self._rescan_soon(key)
        return verify_identity

    def _unit_gone(self, key: tuple[str, str, int], dev: Lun, now: Identity | None,
                   when: str, why: str | None = None) -> None:
        """``dev``'s logical unit is not at its LUN number any more (``now``: who is there,
        None: nobody): its files fail with ENXIO from now on, its waiting commands too, and
        its multipath paths go. ``when``: "after a relogin" or "on a rescan"; ``why``: what
        is wrong, when it is not just another identity or none."""
        target, host, port = key
        old = dev.lu_identity
        if why is None:
            why = ("is not reported by the target any more" if now is None else
                   f"is another logical unit ({now.describe()})")
        waiting = dev.gone(f"it {why}; it was {old.describe()}")
        log.warning("%s, LUN %d of %s at %s %s; it was %s. Its open files fail with ENXIO "
                    "(%d waiting command(s) answered so) and nothing more is sent to it",
                    when.capitalize(), dev.lun, target, Portal(host, port).address, why,
                    old.describe(), waiting)
        for identity, mdev in list(self._multipath.items()):
            if not any(p.device is dev for p in mdev.group.paths):
                continue
            if all(p.device is dev for p in mdev.group.paths):
                # its last path: the by-id file goes too (a new LU with this identity gets a
                # new multipath device)
                mdev.gone(f"its last path ({target} LUN {dev.lun}) {why}")
                mdev.group.close()
                del self._multipath[identity]
            mdev.group.remove(lambda p: p.device is dev)

    def _rescan_soon(self, key: tuple[str, str, int]) -> None:
        """Rescan the LUNs of session ``key`` in the background (once, however many changes
        are seen meanwhile: a change seen while it runs makes it run again)."""
        entry = self._entries.get(key)
        if entry is None or entry.session is None or self._closed:
            return
        if entry.rescanning:
            entry.rescan_again = True
            return
        entry.rescanning = True
        self._nursery.start_soon(self._background_rescan, key, entry)

    async def _background_rescan(self, key: tuple[str, str, int], entry: _Entry) -> None:
        target, host, port = key
        portal = entry.session.portal if entry.session is not None else Portal(host, port)
        try:
            while self._entries.get(key) is entry and not self._closed:
                entry.rescan_again = False
                try:
                    luns = await self.rescan(target, portal)
                except (IscsiError, OSError) as exc:
                    if self._closed or self._entries.get(key) is not entry:
                        return          # logged out meanwhile: nothing left to rescan
                    log.warning("%s at %s: rescanning the LUNs after a change failed: %s",
                                target, portal.address, exc)
                    return
                log.info("%s at %s: LUNs rescanned after a change: %s", target,
                         portal.address, ", ".join(str(e.lun) for e in luns) or "none")
                if not entry.rescan_again:
                    return
        finally:
            entry.rescanning = False

    def _async_event(self, key: tuple[str, str, int], pdu: AsyncMessage) -> None:
        """A SCSI async event (RFC 7143 §11.9.1 code 0) with REPORTED LUNS DATA HAS CHANGED
        or CAPACITY DATA HAS CHANGED: rescan (which re-reads every capacity too)."""
        if pdu.async_event != 0 or not pdu.sense:
            return
        try:
            sense = parse_sense(pdu.sense)
        except RemoteProtocolError:
            return
        lun = decode_lun(pdu.lun)
        if is_luns_changed(sense):
            log.info("%s: the target reports changed LUNs (asynchronous event); rescanning",
                     key[0])
        elif is_capacity_changed(sense):
            log.info("%s: the target reports a new capacity of LUN %d (asynchronous event)",
                     key[0], lun)
            entry = self._entries.get(key)
            for e in (entry.luns or ()) if entry is not None else ():
                if e.lun == lun and e.device is not None:
                    e.device.capacity_changed = True
        else:
            return
        self._rescan_soon(key)

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
                if device is None or not device.wwn or device.is_gone:
                    continue
                mdev = await self._multipath_for(device, target, portal, i)
                if mdev is not None:
                    seen.setdefault(mdev.identity, mdev)
        for mdev in seen.values():
            if not mdev.geometry_known:     # every port was standby: one may be active now
                await mdev.group.refresh_alua()
        return [m for m in seen.values() if m.group.paths]

    async def _multipath_for(self, device: Lun, target: str, portal: Portal,
                             rank: int) -> MultipathDevice | None:
        identity = device.wwn
        assert identity is not None
        mdev = self._multipath.get(identity)
        if mdev is None:
            mdev = MultipathDevice(device, policy=self.multipath_policy,
                                   no_path_retry=device.session.timeouts.replacement_timeout,
                                   alua_transition_timeout=self.alua_transition_timeout)
            # 3F/0E or 25/00 through a path: rescan the targets of every path
            mdev.on_luns_changed = lambda m: [self._rescan_soon(
                (p.target, p.portal.host, p.portal.port)) for p in m.group.paths]
            self._multipath[identity] = mdev
        elif any(p.device is device for p in mdev.group.paths):
            # already one of its paths: a geometry that differs now is a capacity change
            # seen through that path first; the device reads it again (and passes it on)
            if (device.block_size, device.num_blocks) != (mdev.block_size, mdev.num_blocks):
                mdev.capacity_changed = True
        elif (why := mdev.same_unit(device)) is not None:
            if device.serial == mdev.serial:
                # only the geometry differs, and a capacity changes: judge on what both say
                # now, not on what each was told last
                why = await self._same_geometry_now(mdev, device)
                if self._multipath.get(identity) is not mdev:
                    return None     # gone meanwhile (its last path went): the next listing
            if why is not None:
                log.warning("multipath: LUN %d of %s at %s reports the identity %s but %s; "
                            "not used as a path", device.lun, target, portal.address,
                            identity, why)
                return None
        mdev.group.add(Path(target, portal, device, rank))
        device.on_capacity = mdev.path_capacity
        mdev.path_joined(device)
        return mdev

    async def _same_geometry_now(self, mdev: MultipathDevice, device: Lun) -> str | None:
        """Why ``device`` (a LUN with ``mdev``'s identity and serial, but not its block size
        or count) is not a path of ``mdev``, judged on geometries read now; None: it is.

        Each side's numbers may be old: a capacity change is reported (UNIT ATTENTION 2A/09)
        once to each I_T nexus, by whichever command comes first, and a device whose paths
        were all logged out saw none at all. So both are read again: the candidate through
        its own session, the device through its paths (which passes the result on to every
        path). A device with no usable path has nothing newer than the candidate's: it
        takes that (the logical unit changed size while none of its paths was logged in).
        Two geometries that still differ are two logical units claiming one identity (tgt
        derives its names from the target id and LUN number). Bounded by ``login_timeout``,
        as the listing's own logins are."""
        limit = device.session.timeouts.login
        with trio.move_on_after(limit):
            try:
                await device.read_capacity()
                if (why := mdev.same_unit(device)) is None:
                    return None
                if mdev.group.logged_in:
                    await mdev.read_capacity()
                else:
                    old = mdev.num_blocks * mdev.block_size
                    mdev.copy_geometry(device)
                    log.info("multipath: %s: %d bytes now, %d before (it had no path to "
                             "see the change)", mdev.identity, mdev.size, old)
                return mdev.same_unit(device)
            except IscsiError as exc:
                return f"a different capacity, and reading it again failed ({exc})"
        return f"a different capacity, and reading it again took longer than {limit:g} s"

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


async def _read_identity_again(session: Session, lun: int):
    """``read_identity`` of a known LUN in a login hook: a failure that says nothing about
    which logical unit is there (a Reject, an error status other than "no logical unit") is
    tried again, ``IDENTITY_ATTEMPTS`` times in all, then raised as ``IdentityUnverified``
    (the relogin fails). The connection's own failures and timeouts are raised at once."""
    for attempt in range(1, IDENTITY_ATTEMPTS + 1):
        try:
            return await read_identity(session, lun, setup=True)
        except (ScsiError, RemoteProtocolError) as exc:
            if attempt == IDENTITY_ATTEMPTS:
                raise IdentityUnverified(
                    f"LUN {lun} did not say which logical unit it is ({exc}, {attempt} "
                    f"times); logging in again") from exc
            log.info("%s: LUN %d: reading its identity after the relogin failed (%s); "
                     "trying again", session.target_name, lun, exc)
    raise AssertionError("unreachable")


async def _read_capacity_again(dev: Lun) -> None:
    """READ CAPACITY of a known LUN in a login hook (``Lun.on_capacity`` passes a new size on
    to its ``by-id`` device). One that fails without the connection failing (an error
    status, a Reject) leaves the size as it was and ``capacity_changed`` set: the next
    read, write or ``stat`` of its file reads it again."""
    try:
        await dev.read_capacity(setup=True)
    except (ScsiError, RemoteProtocolError) as exc:
        if dev.tpgs and alua_not_ready(exc):
            log.debug("LUN %d: no capacity through a port in ALUA %s; it keeps the one it "
                      "had", dev.lun, alua_not_ready(exc))
            return
        dev.capacity_changed = True
        log.info("LUN %d: reading its capacity after the relogin failed (%s); it is read "
                 "again with the next I/O", dev.lun, exc)
