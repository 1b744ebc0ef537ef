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

``MultipathDevice`` is a ``device.Lun`` whose "session" is a ``PathGroup``: byte ranges,
read-modify-write under one range lock, splitting and UNIT ATTENTION retries are the Lun's, and
every SCSI command it runs goes through ``PathGroup.execute``. Knows nothing of FUSE, errno,
discovery or how paths are found (``initiator.py`` groups LUNs by identity).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import trio

from .core.discovery import Portal
from .device import Lun
from .errors import CommandTimeout, ConnectionLost, SessionFailed

log = logging.getLogger(__name__)

POLICIES = ("failover", "round-robin")
# Errors that say "this path", not "this command": the command goes again on another path.
# (PathFailed is a ConnectionLost; SCSI errors, NoSpace and protocol errors are the LU's
# answer and reach the caller, as dm-multipath passes target errors up.)
PATH_ERRORS = (ConnectionLost, SessionFailed, CommandTimeout)
# A command is issued at most this many times in all, however often paths flap under it.
MAX_ATTEMPTS = 16


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
        return bool(self.session.logged_in)

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
    device_state: str       # running | blocked | offline
    ios: int
    errors: int
    failures: int
    device: Any             # the path's own block device (the per-portal raw's Lun)


class PathGroup:
    """The paths of one logical unit and the choice among them; the ``session`` of a
    ``MultipathDevice`` (``execute`` is all a ``Lun`` asks of its session)."""

    def __init__(self, name: str, *, policy: str = "failover", no_path_retry: float = 120):
        if policy not in POLICIES:
            raise ValueError(f"multipath policy must be one of {', '.join(POLICIES)}")
        self.name = name
        self.policy = policy
        # how long commands wait while no path is healthy (negative: for ever)
        self.no_path_retry = no_path_retry
        self.paths: list[Path] = []
        self.switches = 0           # times the active path changed
        self.last: Path | None = None   # the path that answered the last command
        self._active: Path | None = None
        self._turn = 0
        self._no_path_since: float | None = None
        self._started = False       # there has been an active path (switches are logged)
        self._changed = trio.Event()
        self._closed = False

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
                    self._watch(old)
                old.rank = path.rank
                self._sort()
                self.update()
                return old
        self.paths.append(path)
        self._sort()
        self._watch(path)
        log.info("%s: path %s added (%s)", self.name, path, "ready" if path.up else "faulty")
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

    def update(self) -> None:
        """Note path state changes (one INFO line each) and the active path; wake commands
        waiting for a path. Synchronous: runs inside the session's state change."""
        changed = False
        for path in self.paths:
            healthy = path.healthy
            if healthy != path.up:
                path.up = healthy
                changed = True
                if healthy:
                    log.info("%s: path %s reinstated", self.name, path)
                else:
                    path.failures += 1
                    log.info("%s: path %s failed", self.name, path)
        active = next((p for p in self.paths if p.up), None)
        if active is not self._active:
            changed = True
            old, self._active = self._active, active
            if active is None:
                if old is not None:
                    log.warning("%s: no healthy path left (of %d); I/O waits for one, at "
                                "most %s", self.name, len(self.paths),
                                _seconds(self.no_path_retry))
            elif self._started and self.policy == "failover":
                self.switches += 1
                log.info("%s: active path switched from %s to %s", self.name,
                         old if old is not None else "none", active)
            self._started = self._started or active is not None
        if active is not None:
            self._no_path_since = None
        elif self._no_path_since is None:
            self._no_path_since = trio.current_time()
        if changed:
            self._wake()

    # -- choosing a path --------------------------------------------------------------------
    def active_path(self) -> Path | None:
        """The path the next command goes to with ``failover`` (with ``round-robin``, the
        first of the healthy ones)."""
        for path in self.paths:
            if path.healthy:
                return path
        return None

    def _choose(self, failed: dict[Path, int]) -> Path | None:
        # a path that failed this command is left out until its session logged in again
        usable = [p for p in self.paths if p.healthy
                  and failed.get(p, -1) != p.session.reconnects]
        if not usable:
            return None
        if self.policy == "failover" or len(usable) == 1:
            return usable[0]
        self._turn += 1
        return usable[self._turn % len(usable)]

    async def _wait_for_path(self, last: BaseException | None) -> None:
        """Wait until some path may take the command; SessionFailed once no path has been
        healthy for ``no_path_retry`` seconds."""
        if any(p.healthy for p in self.paths):
            # healthy paths exist, but every one of them already failed this command
            assert last is not None
            raise last
        since = self._no_path_since if self._no_path_since is not None else trio.current_time()
        limit = self.no_path_retry
        deadline = since + limit if limit >= 0 else math.inf
        if self._closed or not self.paths or trio.current_time() >= deadline:
            raise SessionFailed(f"{self.name}: no path is available"
                                + (f" (none for {limit:g} s)" if self.paths else ""))
        with trio.move_on_at(deadline):
            await self._changed.wait()
            return
        raise SessionFailed(f"{self.name}: no path is available (none for {limit:g} s)")

    async def execute(self, lun: int, cdb: bytes, *, read_length: int = 0, read_buffer=None,
                      write_data=None):
        """Run one command on a path (``lun`` is ignored: each path has its own LUN number).

        A path error sends a new command with the same CDB and buffers to another path at
        once; SCSI errors reach the caller. While no path is healthy the command waits
        (bounded by ``no_path_retry``)."""
        failed: dict[Path, int] = {}
        last: BaseException | None = None
        attempts = 0
        while True:
            path = self._choose(failed)
            if path is None:
                await self._wait_for_path(last)
                continue
            if attempts == MAX_ATTEMPTS:
                assert last is not None
                raise last
            attempts += 1
            try:
                result = await path.session.execute(path.lun, cdb, read_length=read_length,
                                                    read_buffer=read_buffer,
                                                    write_data=write_data, fail_fast=True)
            except PATH_ERRORS as exc:
                path.errors += 1
                failed[path] = path.session.reconnects
                last = exc
                log.debug("%s: command 0x%s failed on path %s (%s); trying another path",
                          self.name, cdb[:1].hex(), path, exc)
                continue
            path.ios += 1
            self.last = path
            return result

    # -- status -----------------------------------------------------------------------------
    def states(self) -> list[PathState]:
        """Every path in priority order, as ``multipath -ll`` shows them."""
        active = self.active_path()
        n = len(self.paths)
        out = []
        for i, path in enumerate(self.paths):
            healthy = path.healthy
            session = path.session
            if healthy:
                device_state = "running"
            elif session.session_state == "FREE":
                device_state = "offline"
            else:
                device_state = "blocked"
            group_active = (path is active) if self.policy == "failover" else \
                active is not None
            out.append(PathState(
                portal=path.portal, target=path.target, lun=path.lun,
                priority=n - i if self.policy == "failover" else 1,
                group_active=group_active, dm_state="active" if healthy else "failed",
                checker_state="ready" if healthy else "faulty", device_state=device_state,
                ios=path.ios, errors=path.errors, failures=path.failures, device=path.device))
        return out


class MultipathDevice(Lun):
    """A logical unit reached through several paths, as one block device (a ``Lun`` whose
    commands go through a ``PathGroup``). ``template`` is one path's ``Lun``: the identity
    and geometry are the same on every path."""

    def __init__(self, template: Lun, *, policy: str = "failover", no_path_retry: float = 120):
        identity = template.wwn or f"lun {template.lun}"
        self.group = PathGroup(identity, policy=policy, no_path_retry=no_path_retry)
        super().__init__(self.group, template.lun, template.max_command_bytes)
        self.identity = identity
        self.inquiry = template.inquiry
        self.serial = template.serial
        self.wwn = template.wwn
        self.block_limits = template.block_limits
        self.copy_geometry(template)

    def copy_geometry(self, source: Lun) -> None:
        """Take the block size, block count, transfer limits and write protection of a
        path's Lun (after a rescan re-read them)."""
        self.write_protected = source.write_protected
        self.lbp, self.lbpme, self.lbprz = source.lbp, source.lbpme, source.lbprz
        self.block_size = source.block_size
        self.num_blocks = source.num_blocks
        self.max_transfer_bytes = source.max_transfer_bytes
        self._chunk = source._chunk

    @property
    def policy(self) -> str:
        return self.group.policy

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
        for path, state in zip(self.group.paths, self.group.states()):
            if path is last:
                return state
        return None

    def same_unit(self, other: Lun) -> str | None:
        """Why ``other`` (a LUN with the same identity) is not the same logical unit: a
        different serial number (VPD 0x80), block size or capacity; else None."""
        if other.serial != self.serial:
            return f"serial {other.serial!r} instead of {self.serial!r}"
        if other.block_size != self.block_size:
            return f"block size {other.block_size} instead of {self.block_size}"
        if other.num_blocks != self.num_blocks:
            return f"{other.num_blocks} blocks instead of {self.num_blocks}"
        return None


def _seconds(limit: float) -> str:
    return "for ever" if limit < 0 else f"{limit:g} s"
