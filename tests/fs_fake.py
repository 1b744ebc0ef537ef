"""An in-memory backend for the filesystem tests: ``FakeInitiator``, ``FakeLun`` and
``FakeMultipath`` implement the protocols of ``iscsifs/fs/backend.py`` (``Backend``,
``BlockDevice``, ``MultipathBlockDevice``) over bytearrays, as ``iscsifs.initiator.Initiator``,
``iscsifs.device.Lun`` and ``iscsifs.multipath.MultipathDevice`` do over iSCSI
(t3_fs_contract.py has mypy check both). Every portal shows the same targets, so each LUN of
the fake has one path per portal under ``by-id/``.

FUSE handlers can be called directly on it, and it mounts for real
(``python tests/fs_fake.py PORTAL MOUNTPOINT -o ...``, always foreground). Not a model of a
target: no PDUs, no SCSI.
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import trio

from iscsifs.core.names import Portal
from iscsifs.core.state import ConnectionState, SessionState
from iscsifs.device import DISCARD_UNMAP, Provisioning, granule_range
from iscsifs.errors import NoSpace, NoSuchDevice, NotSupported

HOSTILE_NAMES = [
    "iqn.2026-11.org.example:../../etc",
    "iqn.2026-11.org.example:a/b",
    "iqn.2026-11.org.example:nl\nInitiatorName=evil",
    "..",
    "iqn.2026-11.org.example:" + "x" * 250,
]


def ScsiError(key: int, asc: int, ascq: int, status: int = 2):
    """A real ``scsi.sense.ScsiError`` with fixed-format sense, as a target would produce
    (status 0x18 RESERVATION CONFLICT: no sense)."""
    from iscsifs.scsi.sense import ScsiError as _ScsiError, Sense, SenseKey
    if status != 2:
        return _ScsiError(status)
    return _ScsiError(status, Sense(0x70, SenseKey(key), asc, ascq))


@dataclass
class FakeLun:
    size: int
    block_size: int = 512
    write_protected: bool = False
    max_transfer_bytes: int = 1 << 20
    serial: str | None = "beaf11"
    wwn: str | None = "naa.60000000000000000e00000000010001"
    inquiry: Any = field(default_factory=lambda: SimpleNamespace(
        vendor="IET     ", product="VIRTUAL-DISK    ", revision="0001", device_type=0))
    data: bytearray = field(default_factory=bytearray)
    flush_error: BaseException | None = None
    reads: int = 0
    writes: int = 0
    flushes: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    delay: float = 0.0
    capacity_changed: bool = False
    luns_changed: bool = False
    medium_protected: bool | None = None    # the target's side (tgt's readonly=); None: as WP
    provisioning: Provisioning = field(default_factory=lambda: Provisioning(
        lbpme=True, lbprz=True, provisioning_type=2, method=DISCARD_UNMAP,
        max_blocks=0x7FFFFF))
    discards: list = field(default_factory=list)     # (offset, length) of each discard
    fallocates: list = field(default_factory=list)   # (what, offset, length) of each
    inflight: list = field(default_factory=lambda: [0, 0])        # as device.Lun's
    max_inflight: list = field(default_factory=lambda: [0, 0])
    # persistent reservations of this LUN's one I_T nexus (tgt-like: no READ FULL STATUS)
    pr_key: int = 0                 # 0: not registered
    pr_generation: int = 0
    pr_reservation: tuple | None = None     # (key, type)
    pr_requests: list = field(default_factory=list)
    why_gone: str | None = None     # set by gone(): every operation fails (NoSuchDevice)

    @property
    def is_gone(self) -> bool:
        return self.why_gone is not None

    def gone(self, why: str) -> None:
        self.why_gone = why

    def _check(self) -> None:
        if self.why_gone is not None:
            raise NoSuchDevice(f"the LUN is gone: {self.why_gone}")

    def __post_init__(self) -> None:
        if self.medium_protected is None:
            self.medium_protected = self.write_protected
        if not self.data:
            self.data = bytearray(os.urandom(self.size)) if self.size <= (1 << 20) \
                else bytearray(self.size)

    @property
    def num_blocks(self) -> int:
        return self.size // self.block_size

    async def _io(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.delay)
        finally:
            self.in_flight -= 1

    async def read(self, offset: int, length: int) -> bytes:
        self._check()
        self.reads += 1
        await self._io()
        return bytes(self.data[offset:offset + length])

    async def write(self, offset: int, data: Any) -> int:
        self._check()
        self.writes += 1
        if self.medium_protected:
            await self.read_write_protect()          # as device.Lun does on DATA PROTECT
            raise ScsiError(0x7, 0x27, 0x00)          # DATA PROTECT, WRITE PROTECTED
        if offset + len(data) > self.size:
            raise NoSpace("write beyond the end of the LUN")
        await self._io()
        self.data[offset:offset + len(data)] = bytes(data)
        return len(data)

    async def flush(self) -> None:
        self._check()
        self.flushes += 1
        await self._io()
        if self.flush_error is not None:
            raise self.flush_error

    async def read_capacity(self) -> None:
        await trio.sleep(0)                          # the size is whatever the test set
        self.capacity_changed = False

    async def read_write_protect(self) -> None:
        await trio.sleep(0)
        self.write_protected = bool(self.medium_protected)

    async def persistent_reserve_in(self, action: Any) -> Any:
        from iscsifs.scsi.parse import PrCapabilities, PrKeys, PrReservation
        await trio.sleep(0)
        name = getattr(action, "name", str(action))
        if name == "READ_KEYS":
            return PrKeys(self.pr_generation, (self.pr_key,) if self.pr_key else ())
        if name == "READ_RESERVATION":
            if self.pr_reservation is None:
                return PrReservation(self.pr_generation)
            return PrReservation(self.pr_generation, self.pr_reservation[0], 0,
                                 self.pr_reservation[1])
        if name == "REPORT_CAPABILITIES":
            return PrCapabilities(False, False, False, False, True, True, 0, False,
                                  frozenset({1, 3, 5, 6, 7, 8}))
        raise NotSupported("PERSISTENT RESERVE IN (READ_FULL_STATUS): not supported by the LUN")

    async def persistent_reserve_out(self, request: Any) -> None:
        """The one nexus's registration and reservation, as SPC-4 §5.13 has them; a wrong
        key is RESERVATION CONFLICT."""
        await trio.sleep(0)
        self.pr_requests.append(request)
        action = request.action.name
        if action == "REGISTER_AND_IGNORE_EXISTING_KEY" or (
                action == "REGISTER" and request.key == self.pr_key):
            self.pr_key = request.sa_key
            if not self.pr_key:
                self.pr_reservation = None
            self.pr_generation += 1
            return
        if action in ("REGISTER", "RESERVE", "RELEASE", "CLEAR", "PREEMPT", "PREEMPT_AND_ABORT"
                      ) and (not self.pr_key or request.key != self.pr_key):
            raise ScsiError(0, 0, 0, status=0x18)
        if action == "RESERVE":
            self.pr_reservation = (self.pr_key, request.type)
        elif action == "RELEASE":
            self.pr_reservation = None
        elif action == "CLEAR":
            self.pr_key, self.pr_reservation = 0, None
            self.pr_generation += 1
        else:
            self.pr_reservation = (self.pr_key, request.type)

    async def discard(self, offset: int, length: int) -> tuple[int, int]:
        """Zeros over the range; the split into unmapped and zeroed bytes is the real one."""
        if offset < 0 or length < 0:
            raise ValueError("negative discard range")
        if offset + length > self.size:
            raise NoSpace("discard beyond the end of the LUN")
        if length == 0:
            return 0, 0
        prov = self.provisioning
        if prov.method is None:
            raise NotSupported("the LUN supports neither UNMAP nor WRITE SAME with UNMAP")
        if self.write_protected:
            raise ScsiError(0x7, 0x27, 0x00)          # DATA PROTECT, WRITE PROTECTED
        self.discards.append((offset, length))
        await self._io()
        self.data[offset:offset + length] = bytes(length)
        bs = self.block_size
        start, stop = granule_range(-(-offset // bs), (offset + length) // bs,
                                    prov.granularity, prov.alignment)
        return (stop - start) * bs, length - (stop - start) * bs

    async def punch_hole(self, offset: int, length: int) -> tuple[int, int]:
        """As ``device.Lun``: a LUN that can't deallocate refuses; else a discard."""
        if self.provisioning.method is None:
            raise NotSupported("the LUN supports neither UNMAP nor WRITE SAME with UNMAP")
        self.fallocates.append(("punch_hole", offset, length))
        return await self.discard(offset, length)

    async def zero_range(self, offset: int, length: int) -> tuple[int, int]:
        """Zeros over the range (WRITE SAME on a LUN that can't unmap)."""
        if offset < 0 or length < 0:
            raise ValueError("negative range")
        if offset + length > self.size:
            raise NoSpace("zeroing beyond the end of the LUN")
        self.fallocates.append(("zero_range", offset, length))
        if self.provisioning.method is not None and self.provisioning.lbprz:
            return await self.discard(offset, length)
        await self._io()
        self.data[offset:offset + length] = bytes(length)
        return 0, length


@dataclass(frozen=True)
class FakePathState:
    portal: Any
    target: str
    lun: int
    priority: int
    group_active: bool
    dm_state: str
    checker_state: str
    device_state: str
    ios: int
    errors: int
    failures: int
    device: Any
    alua_state: str | None = None
    target_port_group: int | None = None
    preferred: bool = False


class FakeMultipath:
    """One LUN through its paths: I/O goes to the one FakeLun (the paths share its data);
    ``down`` holds the paths (target, portal, lun) a test marked failed."""

    def __init__(self, lun: FakeLun, policy: str = "failover"):
        self.lun = lun
        self.policy = policy
        self.paths: list[tuple[str, Any, int]] = []
        self.down: set[tuple[str, Any, int]] = set()
        self.last: tuple[str, Any, int] | None = None
        self.switches = 0
        self.no_path_retry = 120.0

    identity = property(lambda self: self.lun.wwn)
    size = property(lambda self: self.lun.size)
    block_size = property(lambda self: self.lun.block_size)
    num_blocks = property(lambda self: self.lun.num_blocks)
    max_transfer_bytes = property(lambda self: self.lun.max_transfer_bytes)
    write_protected = property(lambda self: self.lun.write_protected)
    inquiry = property(lambda self: self.lun.inquiry)
    serial = property(lambda self: self.lun.serial)
    wwn = property(lambda self: self.lun.wwn)
    capacity_changed = property(lambda self: self.lun.capacity_changed)
    provisioning = property(lambda self: self.lun.provisioning)
    inflight = property(lambda self: self.lun.inflight)
    max_inflight = property(lambda self: self.lun.max_inflight)
    is_gone = property(lambda self: self.lun.is_gone)

    @property
    def luns_changed(self) -> bool:
        return self.lun.luns_changed

    @luns_changed.setter
    def luns_changed(self, value: bool) -> None:
        self.lun.luns_changed = value

    async def read(self, offset: int, length: int) -> bytes:
        return await self.lun.read(offset, length)

    async def write(self, offset: int, data: Any) -> int:
        return await self.lun.write(offset, data)

    async def flush(self) -> None:
        await self.lun.flush()

    async def read_capacity(self) -> None:
        await self.lun.read_capacity()

    async def read_write_protect(self) -> None:
        await self.lun.read_write_protect()

    async def discard(self, offset: int, length: int) -> tuple[int, int]:
        return await self.lun.discard(offset, length)

    async def punch_hole(self, offset: int, length: int) -> tuple[int, int]:
        return await self.lun.punch_hole(offset, length)

    async def zero_range(self, offset: int, length: int) -> tuple[int, int]:
        return await self.lun.zero_range(offset, length)
    async def persistent_reserve_in(self, action: Any) -> Any:
        return await self.lun.persistent_reserve_in(action)

    async def persistent_reserve_out(self, request: Any) -> None:
        await self.lun.persistent_reserve_out(request)

    def path_states(self) -> list[FakePathState]:
        active = self.active_path()
        out = []
        for i, key in enumerate(self.paths):
            up = key not in self.down
            out.append(FakePathState(
                portal=key[1], target=key[0], lun=key[2],
                priority=len(self.paths) - i if self.policy == "failover" else 1,
                group_active=active is not None and (active.target, active.portal,
                                                     active.lun) == key,
                dm_state="active" if up else "failed", checker_state="ready" if up else "faulty",
                device_state="running" if up else "blocked", ios=0, errors=0,
                failures=0 if up else 1, device=self.lun))
        return out

    def last_path(self) -> FakePathState | None:
        """The path the test says answered last (``last``), if it is still a path."""
        for state in self.path_states():
            if (state.target, state.portal, state.lun) == self.last:
                return state
        return None

    def active_path(self) -> FakePathState | None:
        for i, key in enumerate(self.paths):
            if key not in self.down:
                return FakePathState(key[1], key[0], key[2], len(self.paths) - i, True,
                                     "active", "ready", "running", 0, 0, 0, self.lun)
        return None


@dataclass(frozen=True)
class FakeLunEntry:
    lun: int
    device_type: int
    type_name: str
    device: Any


@dataclass(frozen=True)
class FakeTarget:
    name: str
    portals: tuple = ()


class FakeInitiator:
    def __init__(self, targets: dict[str, list[FakeLunEntry]], *, extra_names=(),
                 read_only: bool = False, **_: Any):
        self.targets = targets
        self.extra_names = list(extra_names)       # e.g. hostile names the "target" sends
        self.read_only = read_only
        self.logged_in: set[tuple[str, Any]] = set()
        self.discover_calls = 0
        self.closed = False
        self.discover_error: BaseException | None = None
        self.multipath_devices: dict[str, FakeMultipath] = {}
        self.multipath_calls: list[list[tuple[str, Any]]] = []
        self.luns_listeners: list[Any] = []

    def watch_luns(self, callback: Any) -> None:
        self.luns_listeners.append(callback)

    def change_luns(self, target: str, portal: Any, entries: list[FakeLunEntry]) -> None:
        """The target's LUNs changed and the backend noticed by itself (as the Initiator
        does on UNIT ATTENTION 3F/0E or a new LU after a relogin): LUNs whose entry goes
        away are gone, and the listeners hear of the new list."""
        kept = {id(e.device) for e in entries if e.device is not None}
        for e in self.targets.get(target, []):
            if e.device is not None and id(e.device) not in kept:
                e.device.gone("replaced or removed at the target")
        self.targets[target] = list(entries)
        for callback in list(self.luns_listeners):
            callback(target, portal, list(entries))

    async def discover(self, portal: Any, *, refresh: bool = False) -> list[FakeTarget]:
        self.discover_calls += 1
        await trio.sleep(0)
        if self.discover_error is not None:
            raise self.discover_error
        return [FakeTarget(n) for n in list(self.targets) + self.extra_names]

    def forget_discovery(self, portal: Any) -> None:
        pass                                         # nothing is cached

    async def rescan(self, target: str, portal: Any) -> list[FakeLunEntry]:
        entries = await self.luns(target, portal)
        for callback in list(self.luns_listeners):
            callback(target, portal, entries)
        return entries

    def logged_in_targets(self, portal: Any) -> list[str]:
        return [t for t, p in self.logged_in if p == portal]

    async def logout(self, target: str, portal: Any) -> None:
        self.logged_in.discard((target, portal))
        for dev in self.multipath_devices.values():     # as the Initiator: its paths go
            dev.paths = [p for p in dev.paths if (p[0], p[1]) != (target, portal)]

    async def luns(self, target: str, portal: Any) -> list[FakeLunEntry]:
        await trio.sleep(0)
        if target not in self.targets:
            raise OSError(errno.ENOENT, "no such target")
        self.logged_in.add((target, portal))
        return list(self.targets[target])

    async def multipath(self, pairs: Any) -> list[FakeMultipath]:
        self.multipath_calls.append(list(pairs))
        seen: dict[str, FakeMultipath] = {}
        for target, portal in pairs:
            try:
                entries = await self.luns(target, portal)
            except OSError:
                continue
            for e in entries:
                if e.device is None or not e.device.wwn:
                    continue
                dev = self.multipath_devices.setdefault(e.device.wwn, FakeMultipath(e.device))
                if (target, portal, e.lun) not in dev.paths:
                    dev.paths.append((target, portal, e.lun))
                seen.setdefault(e.device.wwn, dev)
        return list(seen.values())

    def session_info(self, target: str, portal: Portal) -> FakeSessionInfo | None:
        if (target, portal) not in self.logged_in:
            return None
        return make_session_info(target, portal, tuple(self.targets[target]))

    async def aclose(self) -> None:
        self.closed = True
        self.logged_in.clear()


@dataclass(frozen=True)
class FakeTimeouts:
    login: float = 15
    logout: float = 15
    noop_out_interval: float = 5
    noop_out_timeout: float = 5
    replacement_timeout: float = 120
    abort: float = 15
    lu_reset: float = 30
    tgt_reset: float = 30
    command: float = 30


@dataclass(frozen=True)
class FakeParams:
    header_digest: bool = True
    data_digest: bool = False
    max_recv_data_segment_length: int = 262144
    max_xmit_data_segment_length: int = 65536
    first_burst_length: int = 65536
    max_burst_length: int = 262144
    immediate_data: bool = True
    initial_r2t: bool = False
    max_outstanding_r2t: int = 1


@dataclass(frozen=True)
class FakeSessionInfo:
    """A session snapshot as ``initiator.SessionInfo`` has it (a ``SessionSnapshot``)."""

    target: str
    portal: Portal
    sid: int = 3
    initiator_name: str = "iqn.2016-04.com.open-iscsi:0123456789ab"
    local_address: str = "127.0.0.1"
    connection_state: ConnectionState = ConnectionState.LOGGED_IN
    session_state: SessionState = SessionState.LOGGED_IN
    timeouts: FakeTimeouts = field(default_factory=FakeTimeouts)
    chap_username: str | None = "alice"
    chap_username_in: str | None = None
    params: FakeParams = field(default_factory=FakeParams)
    luns: tuple[FakeLunEntry, ...] = ()
    counters: dict[str, int] = field(default_factory=lambda: {
        "txdata_octets": 1234, "rxdata_octets": 5678, "scsicmd_pdus": 9, "scsirsp_pdus": 9,
        "datain_pdus": 4, "login_pdus": 2})


def make_session_info(target: str, portal: Portal, luns: tuple[FakeLunEntry, ...] = (),
                      **changes: Any) -> FakeSessionInfo:
    return FakeSessionInfo(target=target, portal=portal, luns=luns, **changes)


DISK1 = "iqn.2026-11.org.example:disk1"


def standard_targets() -> dict[str, list[FakeLunEntry]]:
    """tgt-like: LUN 0 controller, LUN 1 1 MiB/512, LUN 2 256 KiB/4096, LUN 3 read-only."""
    return {
        DISK1: [
            FakeLunEntry(0, 0x0C, "storage array controller", None),
            FakeLunEntry(1, 0, "disk", FakeLun(1 << 20)),
            FakeLunEntry(2, 0, "disk", FakeLun(256 << 10, block_size=4096,
                                               wwn="naa.60000000000000000e00000000010002")),
            FakeLunEntry(3, 0, "disk", FakeLun(128 << 10, write_protected=True,
                                               wwn="naa.60000000000000000e00000000010003")),
        ],
    }


def main(argv: list[str]) -> int:
    """Mount the fake in the foreground through iscsifs.mount (its option parsing/lifetime)."""
    from iscsifs.exits import quiet_error_in
    from iscsifs.logs import setup_logging
    from iscsifs.mount import lifetime
    from iscsifs.mount.options import parse_args

    opts = parse_args(argv)
    opts.foreground = True
    setup_logging(debug=opts.debug, verbose=opts.verbose, logfile=opts.logfile, detailed=True)
    fake = FakeInitiator(standard_targets(), extra_names=HOSTILE_NAMES)

    def make(opts: Any, name: str, nursery: Any) -> FakeInitiator:
        fake.read_only = opts.read_only
        return fake

    async def no_tcp_check(portal: Any, timeout: float) -> None:
        return None

    lifetime.check_portal_tcp = no_tcp_check     # the fake needs no listening portal
    try:
        trio.run(lifetime.run_mount, opts, lambda: None, make)
    except BaseException as exc:
        quiet = quiet_error_in(exc)
        if quiet is None:
            raise
        print(f"fs_fake: {quiet}", file=sys.stderr)
        return quiet.exit_code
    print("LOGGED_OUT" if fake.closed else "NOT_LOGGED_OUT", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
