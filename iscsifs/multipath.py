"""Several paths to one logical unit, used as one block device: what dm-multipath does.

Owns: the paths of one logical unit (a LUN number on a session: a target at a portal), the
choice of path for each command (``failover``: the first healthy path in priority order, with
failback; ``round-robin``: the healthy paths in turn), re-issuing a command on another path
when its path fails, waiting for a path while there is none (bounded, like
``queue_if_no_path`` with ``no_path_retry``), the path states and counters shown in the status
file, and one INFO line per path change.

A path is healthy while its session is logged in. Commands go to the session as *fail-fast*
commands (``Session.execute(..., fail_fast=True)``, dm-multipath's REQ_FAILFAST_TRANSPORT): when
the connection fails the session answers them at once with ``PathFailed`` instead of holding
them for a relogin, and never sends them again. This layer then issues a new command with the
same CDB and buffer on another path, so I/O does not wait for ``replacement_timeout``. As with
dm-multipath, a write whose path failed may still have reached the target before the failure,
and is written again through the other path: the same data to the same blocks. The session
keeps logging in again in the background; when it succeeds the path is healthy again (and,
with ``failover``, takes the I/O back if it comes first).

**ALUA** (SPC-4 §5.16, what Linux's scsi_dh_alua and multipath's ``prio alua`` do): when the
LUN reports TPGS, each path's target port group and its asymmetric access state come from
REPORT TARGET PORT GROUPS (``Lun.read_alua``). Paths are preferred active/optimized, then
active/non-optimized (then LBA-dependent); standby, unavailable and offline ones take no I/O. A
command answered NOT READY 04/0A (transitioning) is retried, on another path if one is usable,
else on the same one about once a second, until the path has been in transition for
``alua_transition_timeout`` seconds; 04/0B and 04/0C (standby, unavailable) send it to another
path. UNIT ATTENTION 2A/06 (asymmetric access state changed) re-reads the groups of every path,
and so does a path that logs in again. The priorities shown are multipath's: 50, 10, 5, 1, 0.

**Persistent reservations** are the LU's business, not the path's: RESERVATION CONFLICT is a
SCSI status that goes to the caller, never a reason to try another path. PERSISTENT RESERVE
OUT REGISTER, REGISTER AND IGNORE EXISTING KEY and RELEASE go to every healthy path (each path
is an I_T nexus of its own, as mpathpersist does); the other service actions to one path.

``MultipathDevice`` is a ``device.Lun`` whose "session" is a ``PathGroup``: byte ranges,
read-modify-write under one range lock, splitting and UNIT ATTENTION retries are the Lun's, and
every SCSI command it runs goes through ``PathGroup.execute``. Knows nothing of FUSE, errno,
discovery or how paths are found (``initiator.py`` groups LUNs by identity).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import trio

from .core.names import Portal
from .device import UA_RETRIES, Lun, PrOut, pr_out
from .errors import CommandTimeout, ConnectionLost, IscsiError, NoSuchDevice, SessionFailed
from .scsi.cdb import PrOutAction
from .scsi.parse import AluaState
from .scsi.sense import ScsiError, alua_not_ready, is_alua_state_changed

log = logging.getLogger(__name__)

POLICIES = ("failover", "round-robin")
# Errors that say "this path", not "this command": the command goes again on another path.
# (PathFailed is a ConnectionLost; SCSI errors, NoSpace and protocol errors are the LU's
# answer and reach the caller, as dm-multipath passes target errors up.)
PATH_ERRORS = (ConnectionLost, SessionFailed, CommandTimeout)
# A command is issued at most this many times in all, however often paths flap under it.
MAX_ATTEMPTS = 16
# How long a path may stay in an ALUA transition (NOT READY 04/0A) while commands wait for it:
# Linux scsi_dh_alua's default transition timeout (mount option alua_transition_timeout).
ALUA_TRANSITION_TIMEOUT = 60.0
# While the only usable paths are in transition, a command is tried again this often
# (seconds; scsi_dh_alua re-reads the groups every 1-2 s during a transition).
ALUA_RETRY_DELAY = 1.0
# multipath's prio alua: active/optimized 50, active/non-optimized 10, LBA-dependent 5,
# standby 1, anything else 0
ALUA_PRIO = {AluaState.ACTIVE_OPTIMIZED: 50, AluaState.ACTIVE_NON_OPTIMIZED: 10,
             AluaState.LBA_DEPENDENT: 5, AluaState.STANDBY: 1}
# states in which a path takes I/O (transitioning: as a last resort, retried)
_ALUA_USABLE = (AluaState.ACTIVE_OPTIMIZED, AluaState.ACTIVE_NON_OPTIMIZED,
                AluaState.LBA_DEPENDENT, AluaState.TRANSITIONING)
# PERSISTENT RESERVE OUT service actions that each I_T nexus needs for itself
_PR_EVERY_PATH = (PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
                  PrOutAction.RELEASE)


class Path:
    """One way to the logical unit: LUN ``lun`` of ``target`` at ``portal`` (its ``device``
    is the per-portal ``Lun``, whose session the commands use)."""

    def __init__(self, target: str, portal: Portal, device: Lun, rank: int):
        self.target = target
        self.portal = portal
        self.device = device
        self.rank = rank            # priority order: lower comes first
        self.ios = 0                # commands completed on this path
        self.errors = 0             # commands that failed here and went to another path
        self.failures = 0           # times the path went down
        self.up = self.healthy      # the state last logged
        # ALUA: the state last logged, whether it must be read again (a new path, or one
        # that logged in again), and since when it has been in transition
        self.alua_seen: int | None = self.alua_state
        self.alua_stale = bool(device.tpgs) and device.alua is None
        self.transition_since: float | None = None

    @property
    def session(self) -> Any:
        return self.device.session

    @property
    def lun(self) -> int:
        return self.device.lun

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.target, self.portal.host, self.portal.port, self.lun)

    @property
    def healthy(self) -> bool:
        return bool(self.session.logged_in) and not self.device.is_gone

    @property
    def alua_state(self) -> int | None:
        """The ALUA state of the path's target port group (None: no ALUA, or not known)."""
        group = getattr(self.device, "alua", None)
        return None if group is None else int(group.state)

    @property
    def usable(self) -> bool:
        """The path takes I/O: logged in, and not standby, unavailable or offline."""
        state = self.alua_state
        return self.healthy and (state is None or state in _ALUA_USABLE)

    @property
    def transitioning(self) -> bool:
        return self.alua_state == AluaState.TRANSITIONING

    @property
    def checker_state(self) -> str:
        """multipath's path checker state: ``faulty`` (logged out, unavailable, offline),
        ``ghost`` (standby) or ``ready``."""
        state = self.alua_state
        if not self.healthy or state in (AluaState.UNAVAILABLE, AluaState.OFFLINE):
            return "faulty"
        return "ghost" if state == AluaState.STANDBY else "ready"

    @property
    def prio(self) -> int | None:
        """multipath's ``prio alua`` of the path, or None without ALUA."""
        state = self.alua_state
        if state is None:
            return None
        return ALUA_PRIO.get(state, 0)  # type: ignore[call-overload]

    def __str__(self) -> str:
        return f"{self.portal.address} {self.target} lun {self.lun}"


@dataclass(frozen=True)
class PathState:
    """A snapshot of one path for the status file (``fs/render.py``) and the xattrs."""

    portal: Portal
    target: str
    lun: int
    priority: int           # as multipath -ll shows it: higher is preferred
    group_active: bool      # the path group I/O goes to
    dm_state: str           # active | failed
    checker_state: str      # ready | faulty
    device_state: str       # SessionState.device_state: running | blocked | ...
    ios: int
    errors: int
    failures: int
    device: Any             # the path's own block device (the per-portal raw's Lun)
    alua_state: str | None = None       # active/optimized, standby, ... (None: no ALUA)
    target_port_group: int | None = None
    preferred: bool = False             # the group's PREF bit


class PathGroup:
    """The paths of one logical unit and the choice among them; the ``session`` of a
    ``MultipathDevice`` (a ``device.DeviceSession``: ``execute`` and ``logged_in``, all a
    ``Lun`` asks of its session)."""

    def __init__(self, name: str, *, policy: str = "failover", no_path_retry: float = 120,
                 alua_transition_timeout: float = ALUA_TRANSITION_TIMEOUT):
        if policy not in POLICIES:
            raise ValueError(f"multipath policy must be one of {', '.join(POLICIES)}")
        self.name = name
        self.policy = policy
        # how long commands wait while no path is healthy (negative: for ever)
        self.no_path_retry = no_path_retry
        self.alua_transition_timeout = alua_transition_timeout
        self.paths: list[Path] = []
        self.switches = 0           # times the active path changed
        self.last: Path | None = None   # the path that answered the last command
        self._active: Path | None = None
        self._turn = 0
        self._no_path_since: float | None = None
        self._started = False       # there has been an active path (switches are logged)
        self._changed = trio.Event()
        self._closed = False
        self._alua_lock = trio.Lock()
        self._alua_generation = 0   # ALUA refreshes done (concurrent errors share one)

    # -- paths ------------------------------------------------------------------------------
    def add(self, path: Path) -> Path:
        """Add ``path``, or give the known path with the same key its new device (a session
        logged in again after a logout). Returns the path kept."""
        for old in self.paths:
            if old.key == path.key:
                if old.device is not path.device:
                    self._unwatch(old)
                    old.device = path.device
                    old.up = old.healthy
                    old.alua_stale = path.alua_stale
                    self._watch(old)
                old.rank = path.rank
                self._sort()
                self.update()
                return old
        self.paths.append(path)
        self._sort()
        self._watch(path)
        log.info("%s: path %s added (%s)", self.name, path, path.checker_state)
        self.update()
        self._wake()
        return path

    def remove(self, match) -> None:
        """Drop the paths for which ``match(path)`` is true (their session is logged out)."""
        for path in [p for p in self.paths if match(p)]:
            self._unwatch(path)
            self.paths.remove(path)
            if self.last is path:
                self.last = None
            log.info("%s: path %s removed", self.name, path)
        self.update()

    def close(self) -> None:
        """Stop following the sessions (unmount): no more path change lines."""
        self._closed = True
        for path in self.paths:
            self._unwatch(path)
        self._wake()

    def _sort(self) -> None:
        self.paths.sort(key=lambda p: (p.rank, p.key))

    def _watch(self, path: Path) -> None:
        listeners = path.session.listeners
        if self._session_changed not in listeners:
            listeners.append(self._session_changed)

    def _unwatch(self, path: Path) -> None:
        if not any(p.session is path.session for p in self.paths if p is not path):
            listeners = path.session.listeners
            if self._session_changed in listeners:
                listeners.remove(self._session_changed)

    def _session_changed(self, session: Any) -> None:
        if not self._closed:
            self.update()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def alua(self) -> bool:
        """Some path reports TPGS: priorities come from ALUA (hwhandler '1 alua')."""
        return any(p.device.tpgs for p in self.paths)

    def _preference(self, path: Path) -> tuple:
        """Sort key: ALUA priority (transitioning last), the PREF bit, then portal order."""
        prio = path.prio
        if prio is None:
            return (0, 0, 0, path.rank)
        group = path.device.alua
        return (path.transitioning, -prio, not (group is not None and group.preferred),
                path.rank)

    def _ordered(self) -> list[Path]:
        """The usable paths, best first."""
        return sorted((p for p in self.paths if p.usable), key=self._preference)

    def update(self) -> None:
        """Note path state changes (one INFO line each) and the active path; wake commands
        waiting for a path. Synchronous: runs inside the session's state change. Nothing
        once closed (unmount, or the logical unit is gone)."""
        if self._closed:
            return
        changed = False
        for path in self.paths:
            healthy = path.healthy
            if healthy != path.up:
                path.up = healthy
                changed = True
                if healthy:
                    log.info("%s: path %s reinstated", self.name, path)
                    if path.device.tpgs:
                        path.alua_stale = True      # a new I_T nexus: read its state again
                else:
                    path.failures += 1
                    log.info("%s: path %s failed", self.name, path)
            state = path.alua_state
            if state != path.alua_seen:
                changed = True
                group = path.device.alua
                if state is not None and group is not None:
                    log.info("%s: path %s is %s (target port group %d)", self.name, path,
                             group.state_label, group.group)
                path.alua_seen = state
        ordered = self._ordered()
        active = ordered[0] if ordered else None
        if active is not self._active:
            changed = True
            old, self._active = self._active, active
            if active is None:
                if old is not None:
                    idle = sum(1 for p in self.paths if p.healthy)
                    log.warning("%s: no healthy path left (of %d%s); I/O waits for one, at "
                                "most %s", self.name, len(self.paths),
                                f", {idle} standby or unavailable" if idle else "",
                                _seconds(self.no_path_retry))
            elif self._started and self.policy == "failover":
                self.switches += 1
                log.info("%s: active path switched from %s to %s", self.name,
                         old if old is not None else "none", active)
            # the first active path is only known once every path's ALUA state is
            self._started = self._started or (active is not None and
                                              not any(p.alua_stale for p in self.paths))
        if active is not None:
            self._no_path_since = None
        elif self._no_path_since is None:
            self._no_path_since = trio.current_time()
        if changed:
            self._wake()

    # -- ALUA -------------------------------------------------------------------------------
    async def refresh_alua(self, paths: list[Path] | None = None,
                           generation: int | None = None) -> None:
        """Read the ALUA state of ``paths`` (default: every path) again, each through its own
        I_T nexus (REPORT TARGET PORT GROUPS, fail-fast). ``generation``: the refresh count
        the caller saw before its command failed; when another refresh has run since, this
        one is skipped (many commands that see the same state change read it once)."""
        async with self._alua_lock:
            if generation is not None and generation != self._alua_generation:
                return
            for path in list(paths if paths is not None else self.paths):
                if not path.device.tpgs or not path.healthy:
                    continue
                try:
                    await path.device.read_alua(fail_fast=True)
                except (IscsiError, OSError) as exc:
                    log.debug("%s: REPORT TARGET PORT GROUPS on path %s failed: %s",
                              self.name, path, exc)
                    continue
                path.alua_stale = False
                if not path.transitioning:
                    path.transition_since = None
                if not path.device.geometry_known and path.usable and not path.transitioning:
                    await self._read_geometry(path)
            self._alua_generation += 1
            self.update()

    async def _read_geometry(self, path: Path) -> None:
        """READ CAPACITY through ``path``, whose port refused it while it was not active
        and is active now (its ``Lun.on_capacity`` gives the geometry to the device and the
        other paths)."""
        try:
            await path.device.read_capacity(fail_fast=True)
        except (IscsiError, OSError) as exc:
            log.debug("%s: READ CAPACITY on path %s failed: %s", self.name, path, exc)

    async def _refresh_stale(self) -> None:
        stale = [p for p in self.paths if p.alua_stale and p.healthy]
        if stale:
            await self.refresh_alua(stale)

    def _transition_started(self, path: Path, exc: ScsiError) -> float:
        """Note that ``path`` answered 04/0A; returns when its transition began."""
        now = trio.current_time()
        if path.transition_since is None:
            path.transition_since = now
            log.info("%s: path %s is in an ALUA transition (%s); its commands are retried for "
                     "at most %s", self.name, path, exc, _seconds(self.alua_transition_timeout))
        group = path.device.alua
        if group is not None and group.state != AluaState.TRANSITIONING:
            path.device.alua = replace(group, state=AluaState.TRANSITIONING)
            self.update()
        return path.transition_since

    # -- choosing a path --------------------------------------------------------------------
    @property
    def logged_in(self) -> bool:
        """Some path can take commands now (``device.DeviceSession``)."""
        return any(p.healthy for p in self.paths)

    def active_path(self) -> Path | None:
        """The path the next command goes to with ``failover`` (with ``round-robin``, the
        first of the best usable ones)."""
        ordered = self._ordered()
        return ordered[0] if ordered else None

    def _choose(self, failed: dict[Path, int]) -> Path | None:
        # a path that failed this command is left out until its session logged in again
        usable = [p for p in self._ordered() if failed.get(p, -1) != p.session.reconnects]
        if not usable:
            return None
        if self.policy == "failover" or len(usable) == 1:
            return usable[0]
        best = [p for p in usable if self._preference(p)[:3] == self._preference(usable[0])[:3]]
        self._turn += 1
        return best[self._turn % len(best)]

    async def _wait_for_path(self, last: BaseException | None) -> None:
        """Wait until some path may take the command; SessionFailed once no path has been
        usable for ``no_path_retry`` seconds."""
        if any(p.usable for p in self.paths):
            # usable paths exist, but every one of them already failed this command
            assert last is not None
            raise last
        since = self._no_path_since if self._no_path_since is not None else trio.current_time()
        limit = self.no_path_retry
        deadline = since + limit if limit >= 0 else math.inf
        if self._closed or not self.paths or trio.current_time() >= deadline:
            if isinstance(last, ScsiError):
                raise last          # e.g. every path went standby: the LU's own answer
            raise SessionFailed(f"{self.name}: no path is available"
                                + (f" (none for {limit:g} s)" if self.paths else ""))
        with trio.move_on_at(deadline):
            await self._changed.wait()
            return
        if isinstance(last, ScsiError):
            raise last
        raise SessionFailed(f"{self.name}: no path is available (none for {limit:g} s)")

    async def execute(self, lun: int, cdb: bytes, *, read_length: int = 0, read_buffer=None,
                      write_data=None, unrecallable: bool = False):
        """Run one command on a path (``lun`` is ignored: each path has its own LUN number).

        A path error sends a new command with the same CDB and buffers to another path at
        once; SCSI errors reach the caller, except the ALUA ones (04/0A, 04/0B, 04/0C, UNIT
        ATTENTION 2A/06), which re-read the groups and try again. While no path is usable
        the command waits (bounded by ``no_path_retry``)."""
        failed: dict[Path, int] = {}
        last: BaseException | None = None
        attempts = 0
        state_changes = 0
        while True:
            await self._refresh_stale()
            path = self._choose(failed)
            if path is None:
                await self._wait_for_path(last)
                continue
            if attempts == MAX_ATTEMPTS:
                assert last is not None
                raise last
            attempts += 1
            generation = self._alua_generation
            try:
                # through the path's Lun: refused once its logical unit is gone (the LUN
                # number names another one now), even if it waited for a slot meanwhile
                result = await path.device.execute(path.lun, cdb, read_length=read_length,
                                                   read_buffer=read_buffer,
                                                   write_data=write_data, fail_fast=True,
                                                   unrecallable=unrecallable)
            except (*PATH_ERRORS, NoSuchDevice) as exc:
                path.errors += 1
                failed[path] = path.session.reconnects
                last = exc
                log.debug("%s: command 0x%s failed on path %s (%s); trying another path",
                          self.name, cdb[:1].hex(), path, exc)
                continue
            except ScsiError as exc:
                not_ready = alua_not_ready(exc)
                if not_ready == "transitioning":
                    attempts -= 1           # bounded by the transition timeout instead
                    last = exc
                    await self._in_transition(path, exc, generation)
                    continue
                if not_ready is not None:   # standby or unavailable: our view was old
                    path.errors += 1
                    failed[path] = path.session.reconnects
                    last = exc
                    log.debug("%s: path %s answered %s; trying another path", self.name,
                              path, exc)
                    await self.refresh_alua(generation=generation)
                    continue
                if is_alua_state_changed(exc) and state_changes < UA_RETRIES:
                    state_changes += 1      # the command did not run: again, on the new state
                    attempts -= 1
                    await self.refresh_alua(generation=generation)
                    continue
                raise
            path.ios += 1
            self.last = path
            if path.transition_since is not None and not path.transitioning:
                path.transition_since = None
            return result

    async def _in_transition(self, path: Path, exc: ScsiError, generation: int) -> None:
        """A command on ``path`` got NOT READY 04/0A: re-read the path's state; raise ``exc``
        once the path has been in transition for the timeout; wait a little before the
        command goes again when no other path is usable."""
        since = self._transition_started(path, exc)
        await self.refresh_alua([path], generation=generation)
        if not path.transitioning:
            return
        deadline = since + self.alua_transition_timeout
        now = trio.current_time()
        if now >= deadline:
            log.warning("%s: path %s is still in an ALUA transition after %s; failing the "
                        "command", self.name, path, _seconds(self.alua_transition_timeout))
            raise exc
        if any(p.usable and not p.transitioning for p in self.paths):
            return
        await trio.sleep(min(ALUA_RETRY_DELAY, deadline - now))

    # -- status -----------------------------------------------------------------------------
    def states(self) -> list[PathState]:
        """Every path, as ``multipath -ll`` shows them: in priority order (portal order
        without ALUA), the usable ones first."""
        ordered = self._ordered()
        active = ordered[0] if ordered else None
        alua = self.alua
        paths = ordered + [p for p in self.paths if p not in ordered] if alua else self.paths
        n = len(paths)
        out = []
        for i, path in enumerate(paths):
            healthy = path.healthy
            device_state = path.session.session_state.device_state
            group = path.device.alua if path.device.tpgs else None
            if alua:
                priority = path.prio or 0
            else:
                priority = n - i if self.policy == "failover" else 1
            if self.policy == "failover":
                group_active = path is active
            elif not alua:
                group_active = active is not None     # one group of every path
            else:
                group_active = active is not None and path.prio == active.prio
            out.append(PathState(
                portal=path.portal, target=path.target, lun=path.lun,
                priority=priority, group_active=group_active,
                dm_state="active" if healthy else "failed",
                checker_state=path.checker_state, device_state=device_state,
                ios=path.ios, errors=path.errors, failures=path.failures, device=path.device,
                alua_state=group.state_label if group is not None else None,
                target_port_group=group.group if group is not None else
                path.device.target_port_group if path.device.tpgs else None,
                preferred=bool(group is not None and group.preferred)))
        return out

    # -- persistent reservations -------------------------------------------------------------
    async def persistent_reserve_out(self, request: PrOut) -> None:
        """REGISTER, REGISTER AND IGNORE EXISTING KEY and RELEASE on every healthy path (each
        is an I_T nexus), in priority order, stopping at the first error; the other service
        actions on one path (``execute``)."""
        if request.action not in _PR_EVERY_PATH:
            await pr_out(self, 0, request)
            return
        paths = [p for p in self.paths if p.healthy]
        if not paths:
            await self._wait_for_path(None)
            paths = [p for p in self.paths if p.healthy]
        for path in sorted(paths, key=self._preference):
            # through the path's Lun: never to another LU behind its number
            await pr_out(path.device, path.lun, request, fail_fast=True)


class MultipathDevice(Lun):
    """A logical unit reached through several paths, as one block device (a ``Lun`` whose
    commands go through a ``PathGroup``). ``template`` is one path's ``Lun``: the identity
    and geometry are the same on every path."""

    def __init__(self, template: Lun, *, policy: str = "failover", no_path_retry: float = 120,
                 alua_transition_timeout: float = ALUA_TRANSITION_TIMEOUT):
        identity = template.wwn or f"lun {template.lun}"
        self.group = PathGroup(identity, policy=policy, no_path_retry=no_path_retry,
                               alua_transition_timeout=alua_transition_timeout)
        super().__init__(self.group, template.lun, template.max_command_bytes)
        self.identity = identity
        self.inquiry = template.inquiry
        self.serial = template.serial
        self.wwn = template.wwn
        self.designators = template.designators
        self.block_limits = template.block_limits
        self._locks = template._locks       # the unit's range lock: its raw files use it too
        self.copy_geometry(template)

    def copy_geometry(self, source: Lun) -> None:
        """Take the block size, block count, transfer limits and write protection of a
        path's Lun (after a rescan re-read them)."""
        _copy_geometry(self, source)

    def path_joined(self, device: Lun) -> None:
        """``device`` (a path's Lun, just added) or this device has no geometry yet (its
        port, in ALUA standby, unavailable or transition, refused READ CAPACITY): the other
        one gives its own."""
        if device.geometry_known and not self.geometry_known:
            self.path_capacity(device)
        elif self.geometry_known and not device.geometry_known:
            _copy_geometry(device, self)

    async def read_capacity(self, **kw: Any) -> None:
        """READ CAPACITY through a path, and the new geometry for every path's own Lun too:
        they are the same logical unit (their ``raw`` files show the new size, and the
        identity check of the next listing sees the same capacity)."""
        await super().read_capacity(**kw)
        for path in self.group.paths:
            _copy_geometry(path.device, self)
            path.device.capacity_changed = False

    def path_capacity(self, device: Lun) -> None:
        """A path's own Lun read its capacity (its ``raw`` file saw UNIT ATTENTION 2A/09, a
        rescan, a relogin): the logical unit has that geometry, so this device and the
        other paths' Luns take it too - the ``by-id`` file shows the new size at once, not
        after the next listing. (``Lun.on_capacity`` of every path; a Lun that is no path
        of this device any more is ignored.)"""
        if not any(p.device is device for p in self.group.paths):
            return
        _copy_geometry(self, device)
        self.capacity_changed = False
        for path in self.group.paths:
            if path.device is not device:
                _copy_geometry(path.device, device)
                path.device.capacity_changed = False

    @property
    def policy(self) -> str:
        return self.group.policy

    @property  # type: ignore[override]
    def alua(self) -> bool:
        """Path priorities come from ALUA (the status file's hwhandler '1 alua')."""
        return self.group.alua

    @alua.setter
    def alua(self, value: Any) -> None:
        pass                    # Lun.__init__ sets it; a device of many ports has no own group

    async def persistent_reserve_out(self, request: PrOut) -> None:
        await self.group.persistent_reserve_out(request)

    @property
    def switches(self) -> int:
        return self.group.switches

    @property
    def no_path_retry(self) -> float:
        return self.group.no_path_retry

    def path_states(self) -> list[PathState]:
        return self.group.states()

    def active_path(self) -> PathState | None:
        """The path I/O goes to now (with ``round-robin``, the first healthy one), or None."""
        for state in self.group.states():
            if state.dm_state == "active":
                return state
        return None

    def last_path(self) -> PathState | None:
        """The path that answered the last command (None before the first one, or once
        that path is gone)."""
        last = self.group.last
        if last is None:
            return None
        for state in self.group.states():
            if (state.target, state.portal, state.lun) == (last.target, last.portal, last.lun):
                return state
        return None

    def same_unit(self, other: Lun) -> str | None:
        """Why ``other`` (a LUN with the same identity) is not the same logical unit: a
        different serial number (VPD 0x80), block size or capacity; else None."""
        if other.serial != self.serial:
            return f"serial {other.serial!r} instead of {self.serial!r}"
        if not (other.geometry_known and self.geometry_known):
            return None         # a port in ALUA standby could not say: the names must do
        if other.block_size != self.block_size:
            return f"block size {other.block_size} instead of {self.block_size}"
        if other.num_blocks != self.num_blocks:
            return f"{other.num_blocks} blocks instead of {self.num_blocks}"
        return None


def _copy_geometry(device: Lun, source: Lun) -> None:
    device.write_protected = source.write_protected
    device.lbp, device.lbpme, device.lbprz = source.lbp, source.lbpme, source.lbprz
    device.block_size = source.block_size
    device.num_blocks = source.num_blocks
    device.geometry_known = source.geometry_known
    device.max_transfer_bytes = source.max_transfer_bytes
    device._chunk = source._chunk


def _seconds(limit: float) -> str:
    return "for ever" if limit < 0 else f"{limit:g} s"
