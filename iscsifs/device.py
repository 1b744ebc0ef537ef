"""One LUN as a byte-addressed device.

Owns: the translation of byte ranges into whole blocks (READ/WRITE(10/16) split at the largest
transfer the target accepts), read-modify-write of partial edge blocks (serialised against
every overlapping write by a block range lock), discard (UNMAP or WRITE SAME(16) with UNMAP
for whole granules, zeros written over the rest), retries on UNIT ATTENTION, and the LUN's
identity (INQUIRY, VPD pages, capacity, logical block provisioning, write protection), the
ALUA state of the target port it is reached through (REPORT TARGET PORT GROUPS), and persistent
reservations (PERSISTENT RESERVE IN/OUT; ``register_key`` for the mount's reservation_key).

A ``Lun`` is bound to one logical unit for its whole life. When its owner finds that the LUN
number names another logical unit now (or none), it calls ``Lun.gone``: from then on every
operation fails with ``NoSuchDevice``, and callers still waiting for their command to go out
are answered so too - nothing more is sent for it. Knows nothing of FUSE or errno.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import trio

from .core.connection import TaskComplete
from .errors import (IscsiError, NoSpace, NoSuchDevice, NotSupported, RemoteProtocolError,
                     leaf_exceptions)
from .scsi import cdb as scsi_cdb
from .scsi import parse as scsi_parse
from .scsi.cdb import PrInAction, PrOutAction
from .scsi.sense import (ScsiError, SenseKey, alua_not_ready, is_capacity_changed,
                         is_data_protect, is_luns_changed, is_unit_attention)

# ILLEGAL REQUEST 25/00 LOGICAL UNIT NOT SUPPORTED: no logical unit at this LUN number
_LUN_NOT_SUPPORTED = (0x25, 0x00)
# INQUIRY's peripheral qualifier 011b: no logical unit can be at this LUN number (SPC-4
# table 145; tgt answers so for a LUN it does not have)
_PQ_NOT_CAPABLE = 3

log = logging.getLogger(__name__)

# Largest single READ/WRITE we issue when the target states no limit (VPD 0xB0).
DEFAULT_MAX_TRANSFER = 1024 * 1024
# Larger requests are split into concurrent commands of at most this size (the block layer's
# max_sectors_kb): the target then reads or writes the pieces in parallel, and a write needs
# fewer R2T round trips one after the other. 512 KiB was the fastest split against tgt.
DEFAULT_MAX_COMMAND = 512 * 1024
# How many times a command is retried after UNIT ATTENTION (each one reports one condition).
UA_RETRIES = 5
# The most blocks one UNMAP or WRITE SAME(16) with UNMAP covers when the LUN states no smaller
# limit (Linux sd's SD_MAX_WS16_BLOCKS): each command then finishes well within the command
# timeout even on a slow target.
MAX_DISCARD_BLOCKS = 0x7F_FFFF
# Zeros are written in pieces of at most this many bytes (one buffer, reused).
ZERO_CHUNK = 1024 * 1024
# The most blocks one WRITE SAME(16) of zeros covers when the LUN states no smaller limit
# (VPD B0h MAXIMUM WRITE SAME LENGTH): the target writes every block, so each command stays
# small enough to finish well within the command timeout (64 MiB of 512-byte blocks).
MAX_WRITE_SAME_BLOCKS = 0x2_0000

DISCARD_UNMAP = "unmap"
DISCARD_WRITE_SAME_16 = "write_same_16"
# PERSISTENT RESERVE IN allocation length (sg_persist's default: 8 KiB, some 1000 keys)
PR_IN_ALLOC = 8192
# REPORT TARGET PORT GROUPS allocation length (Linux scsi_dh_alua starts with 128 bytes and
# grows; 1 KiB holds some 100 groups of one port each)
RTPG_ALLOC = 1024


@dataclass(frozen=True)
class PrOut:
    """One PERSISTENT RESERVE OUT request (SPC-4 §6.14): what ``sg_persist --out`` sends.
    Keys never appear in ``repr`` or in a message above DEBUG."""

    action: PrOutAction
    key: int = 0            # RESERVATION KEY (--param-rk)
    sa_key: int = 0         # SERVICE ACTION RESERVATION KEY (--param-sark)
    type: int = 0           # --prout-type
    aptpl: bool = False
    all_tg_pt: bool = False

    def __repr__(self) -> str:
        return f"PrOut({self.action.name}, type={self.type})"


def _not_supported(exc: ScsiError, what: str) -> NotSupported | None:
    """ILLEGAL REQUEST 20/00 (invalid command operation code), 24/00 (invalid field in CDB) or
    26/xx (invalid field in the parameter list): what sg_persist reports as "command not
    supported" / "bad field in cdb or parameter list (perhaps unsupported service action)"."""
    sense = exc.sense
    if sense is None or sense.key != SenseKey.ILLEGAL_REQUEST or sense.asc not in (0x20, 0x24,
                                                                                  0x26):
        return None
    return NotSupported(f"{what}: not supported by the LUN ({exc})")


class DeviceSession(Protocol):
    """What a ``Lun`` needs of its session: ``net.session.Session`` (one session to the
    target) and ``multipath.PathGroup`` (the paths of one logical unit) both are one, and
    mypy checks that they are (``tests/t2_device_contract.py``)."""

    @property
    def logged_in(self) -> bool:
        """Commands can go out now (a path group: on at least one path)."""

    async def execute(self, lun: int, cdb: bytes, *, read_length: int = 0,
                      read_buffer: bytearray | memoryview | None = None,
                      write_data: bytes | bytearray | memoryview | None = None,
                      unrecallable: bool = False) -> TaskComplete:
        """Run one SCSI command: its result on GOOD status, ``ScsiError`` otherwise;
        ``SessionFailed`` / ``CommandTimeout`` (and the like) when it could not run.
        ``unrecallable``: once issued, a cancelled caller waits for the command to end."""


@dataclass(frozen=True)
class Provisioning:
    """What a LUN says about logical block provisioning (READ CAPACITY(16) LBPME/LBPRZ, VPD
    B0h and B2h), and how :meth:`Lun.discard` unmaps on it.

    ``method`` is chosen as Linux sd does: nothing unless LBPME is set; then UNMAP when VPD B2h
    sets LBPU and VPD B0h gives a non-zero MAXIMUM UNMAP LBA COUNT and BLOCK DESCRIPTOR COUNT,
    else WRITE SAME(16) with UNMAP when B2h sets LBPWS; without a B2h page, UNMAP when B0h
    allows it, else WRITE SAME(16).
    """

    lbpme: bool = False
    lbprz: bool = False                 # unmapped blocks read as zeros
    provisioning_type: int | None = None    # VPD B2h (0 full, 1 resource, 2 thin); None: no page
    method: str | None = None           # DISCARD_UNMAP, DISCARD_WRITE_SAME_16, or None
    max_blocks: int = 0                 # per command
    granularity: int = 1                # blocks: only whole granules are unmapped
    alignment: int = 0                  # LBA of the first granule boundary (mod granularity)


def choose_provisioning(capacity_lbpme: bool, capacity_lbprz: bool,
                        limits: scsi_parse.BlockLimits | None,
                        lbp: scsi_parse.LogicalBlockProvisioning | None) -> Provisioning:
    """The :class:`Provisioning` of a LUN from what READ CAPACITY(16), VPD B0h and VPD B2h
    said (None: the page is missing)."""
    lbprz = capacity_lbprz or (lbp is not None and lbp.lbprz)
    ptype = lbp.provisioning_type if lbp is not None else None
    limits = limits or scsi_parse.BlockLimits()
    unmap_ok = limits.max_unmap_lba_count > 0 and limits.max_unmap_block_descriptor_count > 0
    method = None
    if capacity_lbpme:
        if lbp is not None:
            if lbp.lbpu and unmap_ok:
                method = DISCARD_UNMAP
            elif lbp.lbpws:
                method = DISCARD_WRITE_SAME_16
        else:
            method = DISCARD_UNMAP if unmap_ok else DISCARD_WRITE_SAME_16
    if method == DISCARD_UNMAP:
        limit = limits.max_unmap_lba_count
        max_blocks = MAX_DISCARD_BLOCKS if limit == scsi_cdb.UNMAP_NO_LIMIT \
            else min(limit, MAX_DISCARD_BLOCKS)
    elif method == DISCARD_WRITE_SAME_16:
        max_blocks = min(limits.max_write_same_length or MAX_DISCARD_BLOCKS, MAX_DISCARD_BLOCKS)
    else:
        max_blocks = 0
    granularity = max(1, limits.optimal_unmap_granularity)
    alignment = (limits.unmap_granularity_alignment or 0) % granularity
    return Provisioning(lbpme=capacity_lbpme, lbprz=lbprz, provisioning_type=ptype,
                        method=method, max_blocks=max_blocks, granularity=granularity,
                        alignment=alignment)


def granule_range(first: int, end: int, granularity: int, alignment: int) -> tuple[int, int]:
    """The whole granules inside the blocks ``[first, end)``: ``(start, stop)`` with
    ``start == stop`` when there is none. Granules start at LBAs ``alignment + k*granularity``."""
    start = first + (alignment - first) % granularity
    stop = end - (end - alignment) % granularity
    return (start, stop) if start < stop else (first, first)


@dataclass(frozen=True)
class Identity:
    """Which logical unit a LUN number names: its device type (standard INQUIRY), unit serial
    number (VPD 0x80), the WWN picked from its device identification (VPD 0x83) and every
    logical-unit designator of that page (tgt's ``scsi_id`` is a T10 vendor ID one, its NAA
    one follows the LUN number). None / empty: the LU does not give that page. Two LUs with
    equal identities are taken to be the same. The target port designators of VPD 0x83 (for
    ALUA) come along, but say which port, not which LU: they are not compared."""

    device_type: int
    serial: str | None
    wwn: str | None
    designators: tuple[str, ...] = ()
    target_port_group: int | None = field(default=None, compare=False)
    relative_target_port: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        text = f"serial {self.serial!r}, WWN {self.wwn or 'none'}"
        others = [d for d in self.designators if d != self.wwn]
        return text + (f", also {', '.join(repr(d) for d in others)}" if others else "")


def is_lun_not_supported(exc: BaseException) -> bool:
    """ILLEGAL REQUEST 25/00: the target has no logical unit at that LUN number."""
    sense = exc.sense if isinstance(exc, ScsiError) else None
    return sense is not None and sense.key == SenseKey.ILLEGAL_REQUEST \
        and sense.asc_ascq == _LUN_NOT_SUPPORTED


async def read_identity(session, lun: int, **kw) -> tuple[scsi_parse.Inquiry, list[int],
                                                          Identity] | None:
    """Standard INQUIRY, the supported VPD pages, VPD 0x80 and 0x83 of ``lun``: its INQUIRY
    data, supported pages and :class:`Identity`; None when no logical unit is there
    (peripheral qualifier 011b, or ILLEGAL REQUEST 25/00). ``kw`` goes to ``read_data``
    (``setup=True`` from a login hook). UNIT ATTENTION is retried.

    Only a definite answer is one: any other failure (a Reject, a timeout, an error status)
    raises, and so does a VPD 0x00 that fails with anything but ILLEGAL REQUEST (a LU that
    does not do EVPD): an identity read while the LU had trouble answering would differ from
    its real one, and be taken for another logical unit."""
    try:
        inquiry = scsi_parse.parse_inquiry(
            await read_data(session, lun, scsi_cdb.inquiry(alloc=96), 96, **kw))
        if inquiry.peripheral_qualifier == _PQ_NOT_CAPABLE:
            return None
        pages: list[int] = []
        try:
            pages = scsi_parse.parse_vpd_supported_pages(await read_data(
                session, lun, scsi_cdb.inquiry(evpd=True, page=0x00, alloc=255), 255, **kw))
        except ScsiError as exc:
            sense = exc.sense
            if is_lun_not_supported(exc) or sense is None \
                    or sense.key != SenseKey.ILLEGAL_REQUEST:
                raise
        serial = wwn = None
        designators: tuple[str, ...] = ()
        port_group = relative_port = None
        if 0x80 in pages:
            serial = scsi_parse.parse_vpd_serial(await read_data(
                session, lun, scsi_cdb.inquiry(evpd=True, page=0x80, alloc=255), 255, **kw))
        if 0x83 in pages:
            ids = scsi_parse.parse_vpd_device_id(await read_data(
                session, lun, scsi_cdb.inquiry(evpd=True, page=0x83, alloc=1024), 1024, **kw))
            wwn = scsi_parse.pick_wwn(ids)
            designators = tuple(d.text for d in ids
                                if d.association == scsi_parse.Association.LOGICAL_UNIT)
            port_group = scsi_parse.target_port_group(ids)
            relative_port = scsi_parse.relative_target_port(ids)
    except ScsiError as exc:
        if is_lun_not_supported(exc):
            return None
        raise
    return inquiry, pages, Identity(inquiry.device_type, serial, wwn, designators, port_group,
                                    relative_port)


class _Guarded:
    """What ``execute_retrying`` and ``read_data`` see as the session of a ``Lun``: its
    guarded ``execute`` (a ``DeviceSession`` too)."""

    __slots__ = ("execute", "_device")

    def __init__(self, device: "Lun"):
        self.execute = device.execute
        self._device = device

    @property
    def logged_in(self) -> bool:
        return self._device.session.logged_in


class _RangeLock:
    """Exclusive locks on block ranges: a writer waits while an overlapping write runs."""

    def __init__(self):
        self._held: list[tuple[int, int, trio.Event]] = []

    async def acquire(self, first: int, last: int) -> tuple[int, int, trio.Event]:
        while True:
            for start, end, event in self._held:
                if start <= last and first <= end:
                    await event.wait()
                    break
            else:
                entry = (first, last, trio.Event())
                self._held.append(entry)
                return entry

    def release(self, entry) -> None:
        self._held.remove(entry)
        entry[2].set()


class Lun:
    """A block device behind a session; create with :meth:`open`."""

    def __init__(self, session: DeviceSession, lun: int,
                 max_command_bytes: int = DEFAULT_MAX_COMMAND):
        self.session = session
        self.lun = lun
        self.block_size = 512
        self.num_blocks = 0
        # a READ CAPACITY answered (False: not yet, e.g. a port in ALUA standby refused it)
        self.geometry_known = False
        self.write_protected = False
        self.max_transfer_bytes = DEFAULT_MAX_TRANSFER     # the LUN's limit for one command
        self.max_command_bytes = max_command_bytes         # ours: requests split above this
        self._chunk = min(max_command_bytes, DEFAULT_MAX_TRANSFER)
        self.inquiry = None
        self.serial: str | None = None
        self.wwn: str | None = None
        self.designators: tuple[str, ...] = ()     # VPD 0x83, logical-unit ones
        self.block_limits: scsi_parse.BlockLimits | None = None
        self.lbp: scsi_parse.LogicalBlockProvisioning | None = None    # VPD B2h
        self.lbpme = False              # READ CAPACITY(16): thin provisioning management
        self.lbprz = False              # READ CAPACITY(16): unmapped blocks read as zeros
        self._locks = _RangeLock()
        self._write_same_refused = False    # WRITE SAME(16) was refused: zero_range can't
        # READ and WRITE commands running now, and the most at once (/sys/block/*/inflight)
        self.inflight = [0, 0]             # reads, writes
        self.max_inflight = [0, 0]
        self.capacity_changed = False
        self.luns_changed = False       # 3F/0E seen: the target's LUN list changed
        # ALUA (SPC-4 §5.16): the port this LUN is reached through (VPD 83h designators) and
        # its group as REPORT TARGET PORT GROUPS last described it (None: no ALUA, or unread)
        self.target_port_group: int | None = None
        self.relative_target_port: int | None = None
        self.alua: scsi_parse.TargetPortGroup | None = None
        # called (synchronously, with this Lun) after a command saw 3F/0E or 25/00: the
        # owner rescans the target's LUNs
        self.on_luns_changed: Callable[[Lun], None] | None = None
        # called (synchronously, with this Lun) after every READ CAPACITY of it: the
        # multipath device of its logical unit takes the new geometry too
        self.on_capacity: Callable[[Lun], None] | None = None
        self.why_gone: str | None = None    # set by gone(): this LU is not there any more
        self._via = _Guarded(self)

    @classmethod
    async def open(cls, session: DeviceSession, lun: int, found=None,
                   max_command_bytes: int = DEFAULT_MAX_COMMAND) -> Lun:
        """Probe LUN ``lun`` of ``session``; ``found`` is what ``read_identity`` read of it
        already (None: read it)."""
        device = cls(session, lun, max_command_bytes)
        await device.probe(found)
        return device

    @property
    def size(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def lu_identity(self) -> Identity:
        return Identity(self.inquiry.device_type if self.inquiry is not None else 0,
                        self.serial, self.wwn, self.designators)

    @property
    def is_gone(self) -> bool:
        return self.why_gone is not None

    def _where(self) -> str:
        target = getattr(self.session, "target_name", None)
        return f"LUN {self.lun} of {target}" if target else f"LUN {self.lun}"

    def gone(self, why: str) -> int:
        """This Lun's logical unit is not at its LUN number any more (``why`` says what is
        there now). Every later operation fails with ``NoSuchDevice``; the callers waiting
        for a command of it to go out (while the session logs in again, or for a
        ``cmds_max`` slot) are answered ``NoSuchDevice`` now (``Session.fail_waiting``), and
        those commands are never sent. Returns how many callers were waiting. Idempotent."""
        if self.why_gone is not None:
            return 0
        self.why_gone = why
        fail_waiting = getattr(self.session, "fail_waiting", None)
        if fail_waiting is None:        # a multipath device: its paths' Luns answer theirs
            return 0
        return fail_waiting(self.lun, self._gone_error())

    def share_range_lock(self, locks) -> None:
        """Use the range lock of this logical unit from ``locks`` (a mapping by WWN and
        serial, e.g. a ``weakref.WeakValueDictionary`` of its owner), lending ours if it has
        none yet: every Lun of one logical unit (the ``raw`` files of its paths, its
        ``by-id`` device) must wait for an overlapping write through any other, or one
        read-modify-write loses the other's update. A LU that names neither keeps its own."""
        if self.wwn is None and self.serial is None:
            return
        key = (self.wwn, self.serial)
        lock = locks.get(key)
        if lock is None:
            locks[key] = self._locks
        else:
            self._locks = lock

    def _gone_error(self) -> NoSuchDevice:
        return NoSuchDevice(f"{self._where()} is gone: {self.why_gone}")

    async def execute(self, lun: int, cdb: bytes, **kw):
        """``session.execute`` for this logical unit (``lun`` is ours): refused once it is
        gone (a caller still waiting in the session then is answered by ``gone``), and any
        error once it is gone says so."""
        if self.why_gone is not None:
            raise self._gone_error()
        try:
            return await self.session.execute(self.lun, cdb, **kw)
        except IscsiError as exc:
            if self.why_gone is not None and not isinstance(exc, NoSuchDevice):
                raise self._gone_error() from exc
            raise

    @property
    def provisioning(self) -> Provisioning:
        return choose_provisioning(self.lbpme, self.lbprz, self.block_limits, self.lbp)

    async def command(self, cdb: bytes, *, read_length: int = 0, read_buffer=None,
                      write_data=None, unrecallable: bool = False):
        """Run a command, retrying after UNIT ATTENTION (and noting what the UA said)."""
        try:
            return await execute_retrying(self._via, self.lun, cdb, read_length=read_length,
                                          read_buffer=read_buffer, write_data=write_data,
                                          unrecallable=unrecallable,
                                          on_unit_attention=self._unit_attention)
        except ScsiError as exc:
            self._not_supported(exc)
            raise

    def _unit_attention(self, exc: ScsiError) -> None:
        if is_capacity_changed(exc):
            self.capacity_changed = True
        elif is_luns_changed(exc):
            self.luns_changed = True
            if self.on_luns_changed is not None:
                self.on_luns_changed(self)

    def _not_supported(self, exc: ScsiError) -> None:
        """25/00: the LU went away under us; the owner's rescan will say so (gone())."""
        if is_lun_not_supported(exc) and self.on_luns_changed is not None:
            self.on_luns_changed(self)

    async def _read_bytes(self, cdb: bytes, alloc: int, **kw: Any) -> bytes:
        try:
            return await read_data(self._via, self.lun, cdb, alloc,
                                   on_unit_attention=self._unit_attention, **kw)
        except ScsiError as exc:
            self._not_supported(exc)
            raise

    async def probe(self, found=None) -> None:
        """INQUIRY, VPD pages, READ CAPACITY and MODE SENSE: fill in what the LUN is
        (``found``: ``read_identity``'s answer, when the caller has it)."""
        if found is None:
            found = await read_identity(self._via, self.lun,
                                        on_unit_attention=self._unit_attention)
        if found is None:
            raise NoSuchDevice(f"{self._where()}: no logical unit is there")
        inquiry, pages, identity = found
        self.inquiry = inquiry
        self.serial, self.wwn = identity.serial, identity.wwn
        self.designators = identity.designators
        self.target_port_group = identity.target_port_group
        self.relative_target_port = identity.relative_target_port
        if 0xB0 in pages:
            self.block_limits = scsi_parse.parse_vpd_block_limits(
                await self._read_bytes(scsi_cdb.inquiry(evpd=True, page=0xB0, alloc=64), 64))
        if 0xB2 in pages:
            try:
                self.lbp = scsi_parse.parse_vpd_logical_block_provisioning(
                    await self._read_bytes(scsi_cdb.inquiry(evpd=True, page=0xB2, alloc=64), 64))
            except (ScsiError, RemoteProtocolError) as exc:
                log.debug("LUN %d: VPD page B2h unusable: %s", self.lun, exc)
        try:
            await self.read_capacity()
        except ScsiError as exc:
            # SPC-4 §5.16.2.4: a port in standby, unavailable or transition may refuse READ
            # CAPACITY. The LU is there all the same (its INQUIRY said so); this port is a
            # path to it that takes no I/O now, and learns the geometry from the LU's other
            # paths, or reads it once its group is active (multipath)
            if not (self.tpgs and alua_not_ready(exc)):
                raise
            log.info("%s: no capacity through this port (%s); read when it is active",
                     self._where(), exc)
        await self.read_write_protect()
        if self.tpgs:
            try:
                await self.read_alua()
            except (ScsiError, RemoteProtocolError) as exc:
                log.debug("LUN %d: REPORT TARGET PORT GROUPS failed: %s", self.lun, exc)

    @property
    def tpgs(self) -> int:
        """INQUIRY TPGS: 0 no ALUA, 1 implicit, 2 explicit, 3 both (SPC-4 §6.6.2)."""
        return int(getattr(self.inquiry, "tpgs", 0) or 0)

    async def read_alua(self, **kw: Any) -> scsi_parse.TargetPortGroup | None:
        """REPORT TARGET PORT GROUPS: the group of this LUN's target port (by the Target Port
        Group designator of VPD 83h, else by the relative port identifier), kept as
        ``alua`` and returned (None: the answer does not name our port). ``kw`` goes to
        ``session.execute`` (``fail_fast`` for the multipath layer)."""
        data = await read_data(self._via, self.lun,
                               scsi_cdb.report_target_port_groups(RTPG_ALLOC), RTPG_ALLOC,
                               on_unit_attention=self._unit_attention, **kw)
        groups = scsi_parse.parse_report_target_port_groups(data)
        mine = None
        for group in groups:
            if self.target_port_group is not None:
                if group.group == self.target_port_group:
                    mine = group
                    break
            elif self.relative_target_port in group.ports:
                mine = group
                break
        if mine is None and len(groups) == 1 and self.target_port_group is None \
                and self.relative_target_port is None:
            mine = groups[0]            # one group, and no designator to tell: it is ours
        self.alua = mine
        return mine

    # ------------------------------------------------------------------ reservations
    async def persistent_reserve_in(self, action: PrInAction) -> Any:
        """PERSISTENT RESERVE IN: ``PrKeys``, ``PrReservation``, ``PrCapabilities`` or
        ``PrFullStatus`` (scsi.parse). ``NotSupported`` when the LUN refuses the service
        action (tgt has no READ FULL STATUS)."""
        action = PrInAction(action)
        try:
            data = await self._read_bytes(scsi_cdb.persistent_reserve_in(action, PR_IN_ALLOC),
                                          PR_IN_ALLOC)
        except ScsiError as exc:
            raise _not_supported(exc, f"PERSISTENT RESERVE IN ({action.name})") or exc
        parse = {PrInAction.READ_KEYS: scsi_parse.parse_pr_read_keys,
                 PrInAction.READ_RESERVATION: scsi_parse.parse_pr_read_reservation,
                 PrInAction.REPORT_CAPABILITIES: scsi_parse.parse_pr_report_capabilities,
                 PrInAction.READ_FULL_STATUS: scsi_parse.parse_pr_read_full_status}[action]
        return parse(data)

    async def persistent_reserve_out(self, request: PrOut) -> None:
        """PERSISTENT RESERVE OUT through this LUN's I_T nexus. RESERVATION CONFLICT is a
        ``ScsiError``; ``NotSupported`` when the LUN refuses the service action or type."""
        await pr_out(self._via, self.lun, request, on_unit_attention=self._unit_attention)

    async def read_write_protect(self) -> None:
        """MODE SENSE(6): the WP bit of the device-specific parameter (SBC-3 §6.5.1), as sd
        reads it. Kept as it was when the target does not answer it."""
        try:
            data = await self._read_bytes(scsi_cdb.mode_sense6(page=0x3F, alloc=192), 192)
        except ScsiError as exc:
            log.debug("LUN %d: MODE SENSE failed: %s", self.lun, exc)
            return
        protected = scsi_parse.parse_mode_sense_wp(data, ten=False)
        if protected != self.write_protected:
            log.info("LUN %d is now %s", self.lun,
                     "write-protected" if protected else "writable")
        self.write_protected = protected

    async def read_capacity(self, **kw: Any) -> None:
        """READ CAPACITY(16), falling back to (10); sets block size and block count, then
        tells ``on_capacity``. ``kw`` goes to ``session.execute`` (``setup=True`` from a
        login hook)."""
        try:
            cap = scsi_parse.parse_read_capacity16(
                await self._read_bytes(scsi_cdb.read_capacity16(alloc=32), 32, **kw))
        except ScsiError as exc:
            if alua_not_ready(exc):         # the port's answer, not the command's
                raise
            cap = scsi_parse.parse_read_capacity10(
                await self._read_bytes(scsi_cdb.read_capacity10(), 8, **kw))
            if cap.needs_16:
                # SBC-3 §5.15.2: FFFFFFFFh means the capacity does not fit in (10); only (16)
                # can say it, so ask it again (its error is the answer: never a guessed size)
                log.info("LUN %d: READ CAPACITY(10) says more than 2**32 blocks; asking "
                         "READ CAPACITY(16) again", self.lun)
                cap = scsi_parse.parse_read_capacity16(
                    await self._read_bytes(scsi_cdb.read_capacity16(alloc=32), 32, **kw))
        self.lbpme, self.lbprz = cap.lbpme, cap.lbprz
        self.block_size = cap.block_size
        self.num_blocks = cap.num_blocks
        self.geometry_known = True
        self.capacity_changed = False
        limit = DEFAULT_MAX_TRANSFER
        limits = self.block_limits
        if limits is not None and limits.max_transfer_length:
            limit = min(limit, limits.max_transfer_length * self.block_size)
        # MaxBurstLength bounds one Data-In sequence or one R2T, not a command: the target
        # splits a large READ into sequences and asks for a large WRITE in several R2Ts.
        self.max_transfer_bytes = max(self.block_size, limit // self.block_size * self.block_size)
        chunk = min(self.max_transfer_bytes, self.max_command_bytes)
        self._chunk = max(self.block_size, chunk // self.block_size * self.block_size)
        if self.on_capacity is not None:
            self.on_capacity(self)

    # ------------------------------------------------------------------ data path
    async def _rw(self, lba: int, view, write: bool) -> None:
        """One READ or WRITE of the whole blocks in ``view``, retried after UNIT ATTENTION.
        An underflow (GOOD, but fewer bytes moved) is retried for the remaining blocks while
        each answer moves at least one; one that moves none fails: a block that was not
        read is never taken as data, and one that was not written is never taken as done."""
        bs = self.block_size
        while True:
            blocks = len(view) // bs
            if write:
                cdb = scsi_cdb.write(lba, blocks)
                kw = {"write_data": view, "unrecallable": True}
            else:
                cdb = scsi_cdb.read(lba, blocks)
                kw = {"read_length": len(view), "read_buffer": view}
            inflight = self.inflight
            inflight[write] += 1
            if inflight[write] > self.max_inflight[write]:
                self.max_inflight[write] = inflight[write]
            try:
                result = await self.execute(self.lun, cdb, **kw)
            except ScsiError as exc:
                if not is_unit_attention(exc):
                    self._not_supported(exc)
                    raise
                self._unit_attention(exc)
                result = await self.command(cdb, **kw)
            finally:
                inflight[write] -= 1
            short = result.residual_count if result.underflow else 0
            if short <= 0:
                return
            done = (len(view) - short) // bs
            what = "WRITE" if write else "READ"
            if done <= 0:
                raise RemoteProtocolError(
                    f"LUN {self.lun}: {what} of {blocks} blocks at LBA {lba} moved "
                    f"{len(view) - short} bytes (underflow); not retrying for ever")
            log.info("LUN %d: %s of %d blocks at LBA %d moved %d of them; sending the rest "
                     "again", self.lun, what, blocks, lba, done)
            lba += done
            view = view[done * bs:]

    async def _transfer(self, lba: int, view: memoryview, write: bool) -> None:
        """READ into / WRITE from ``view`` (whole blocks at ``lba``), in commands of at most
        ``max_command_bytes`` (and the LUN's ``max_transfer_bytes``) that run concurrently.

        A failed READ chunk cancels its siblings. A failed WRITE chunk does not: the others
        run to their end, and then the errors are raised together. (A write cannot be taken
        back: once issued, each WRITE's caller waits for it to end even when cancelled, see
        ``Session.execute``; so the range lock the caller holds outlives every WRITE.)"""
        chunk = self._chunk
        if len(view) <= chunk:
            await self._rw(lba, view, write)
            return
        bs = self.block_size
        errors: list[Exception] = []

        async def part(lba: int, part_view: memoryview) -> None:
            try:
                await self._rw(lba, part_view, write)
            except Exception as exc:
                if not write:
                    raise
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for off in range(0, len(view), chunk):
                nursery.start_soon(part, lba + off // bs, view[off:off + chunk])
        if errors:
            raise ExceptionGroup(f"LUN {self.lun}: write of {len(view) // bs} blocks at LBA "
                                 f"{lba} failed", errors)

    async def _discard_locked(self, prov: Provisioning, offset: int, end: int, start_lba: int,
                              stop_lba: int) -> None:
        bs = self.block_size
        await self._unmap(prov, start_lba, stop_lba)
        await self._zero(offset, start_lba * bs)
        await self._zero(stop_lba * bs, end)

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """Read ``length`` bytes at ``offset``; short (or empty) at the end of the LUN."""
        bs = self.block_size
        size = self.num_blocks * bs
        if offset >= size or length <= 0:
            return b""
        if length > size - offset:
            length = size - offset
        if not (offset % bs or length % bs):        # whole blocks: read straight into it
            buf = bytearray(length)
            await self._transfer(offset // bs, memoryview(buf), False)
            return buf
        first = offset // bs
        last = (offset + length - 1) // bs
        buf = bytearray((last - first + 1) * bs)
        await self._transfer(first, memoryview(buf), False)
        start = offset - first * bs
        # any contiguous buffer will do for pyfuse3's read reply: no copy of the payload
        return memoryview(buf)[start:start + length]

    async def write(self, offset: int, data) -> int:
        """Write ``data`` at ``offset``; returns the bytes written (short at the end).

        Raises :class:`NoSpace` when ``offset`` is at or past the end: nothing is written
        beyond the LUN. Partial blocks are read, merged and written back under a lock that
        covers their blocks, so concurrent writes to the same block never lose each other.
        """
        bs = self.block_size
        size = self.num_blocks * bs
        length = len(data)
        if length == 0:
            return 0
        if offset >= size:
            raise NoSpace(f"write at offset {offset} is beyond the end of LUN {self.lun} "
                          f"({size} bytes)")
        if length > size - offset:
            length = size - offset
        data = memoryview(data)[:length]
        first = offset // bs
        last = (offset + length - 1) // bs
        entry = await self._locks.acquire(first, last)
        try:
            await self._write_locked(offset, data)
            return length
        except Exception as exc:
            if any(isinstance(e, ScsiError) and is_data_protect(e)
                   for e in leaf_exceptions(exc)):
                # the LUN was made read-only (tgt: readonly=1): re-read the WP bit so that
                # the raw file's mode and the info file say so (sd re-reads it the same way)
                try:
                    await self.read_write_protect()
                except Exception as again:      # the write's own error is the answer
                    log.debug("LUN %d: MODE SENSE after DATA PROTECT: %s", self.lun, again)
            raise
        finally:
            self._locks.release(entry)

    async def _write_locked(self, offset: int, data) -> None:
        """Write ``data`` (inside the LUN) at ``offset``; the caller holds the range lock of
        its blocks. Partial edge blocks are read, merged and written back."""
        bs = self.block_size
        length = len(data)
        first = offset // bs
        last = (offset + length - 1) // bs
        head = offset - first * bs
        tail = (last + 1) * bs - (offset + length)
        if head == 0 and tail == 0:
            await self._transfer(first, memoryview(data), True)
            return
        buf = bytearray((last - first + 1) * bs)
        view = memoryview(buf)
        # read only the edge blocks that are partly overwritten
        if head:
            await self._transfer(first, view[:bs], False)
        if tail and (last != first or not head):
            await self._transfer(last, view[len(buf) - bs:], False)
        view[head:head + length] = data
        await self._transfer(first, view, True)

    async def flush(self) -> None:
        """SYNCHRONIZE CACHE for the whole LUN."""
        await self.command(scsi_cdb.synchronize_cache())

    # ------------------------------------------------------------------ discard
    async def discard(self, offset: int, length: int) -> tuple[int, int]:
        """Discard ``length`` bytes at ``offset``: ``(bytes unmapped, bytes zeroed)``.

        Whole granules (``provisioning.granularity`` blocks from ``provisioning.alignment``)
        are unmapped with UNMAP or WRITE SAME(16) with UNMAP, in commands of at most
        ``provisioning.max_blocks`` blocks. The rest of the range - partial blocks at the
        edges, and whole blocks outside a whole granule - is written with zeros (partial blocks
        by read-modify-write). Unmapped blocks read as zeros only when ``provisioning.lbprz``.
        Everything runs under the range lock of the blocks touched, as writes do.

        Nothing is changed when the request is refused: ``ValueError`` for a negative offset
        or length, :class:`NoSpace` when the range runs past the end, :class:`NotSupported`
        when the LUN has no way to unmap (or refuses the command it advertised).
        """
        if offset < 0 or length < 0:
            raise ValueError(f"negative discard offset or length ({offset}, {length})")
        size = self.size
        if offset + length > size:
            raise NoSpace(f"discard of {length} bytes at offset {offset} runs past the end of "
                          f"LUN {self.lun} ({size} bytes)")
        if length == 0:
            return 0, 0
        prov = self.provisioning
        if prov.method is None:
            raise NotSupported(f"LUN {self.lun} supports neither UNMAP nor WRITE SAME with "
                               f"UNMAP (no logical block provisioning)")
        bs = self.block_size
        end = offset + length
        start_lba, stop_lba = granule_range(-(-offset // bs), end // bs, prov.granularity,
                                            prov.alignment)
        entry = await self._locks.acquire(offset // bs, (end - 1) // bs)
        try:
            if stop_lba > start_lba:
                await self._discard_locked(prov, offset, end, start_lba, stop_lba)
            else:
                await self._zero(offset, end)
        finally:
            self._locks.release(entry)
        unmapped = (stop_lba - start_lba) * bs
        return unmapped, length - unmapped

    async def _unmap(self, prov: Provisioning, lba: int, stop: int) -> None:
        """Unmap the blocks ``[lba, stop)``, one command per ``prov.max_blocks`` blocks."""
        block = bytes(self.block_size)
        while lba < stop:
            blocks = min(stop - lba, prov.max_blocks)
            if prov.method == DISCARD_UNMAP:
                params = scsi_cdb.unmap_parameter_list([(lba, blocks)])
                cdb, data = scsi_cdb.unmap(len(params)), params
            else:
                cdb, data = scsi_cdb.write_same16(lba, blocks, unmap=True), block
            try:
                await self.command(cdb, write_data=data, unrecallable=True)
            except ScsiError as exc:
                sense = exc.sense
                if sense is not None and sense.key == SenseKey.ILLEGAL_REQUEST \
                        and (sense.asc, sense.ascq) in ((0x20, 0x00), (0x24, 0x00)):
                    # invalid command operation code / invalid field in CDB: it was advertised
                    # but the LUN refuses it (nothing was unmapped by this command)
                    what = "UNMAP" if prov.method == DISCARD_UNMAP else \
                        "WRITE SAME(16) with UNMAP"
                    raise NotSupported(f"LUN {self.lun} refused {what}: {exc}") from exc
                raise
            lba += blocks

    # ------------------------------------------------------------------ fallocate
    async def punch_hole(self, offset: int, length: int) -> tuple[int, int]:
        """``fallocate(PUNCH_HOLE | KEEP_SIZE)``: the range reads as zeros afterwards, and
        what the LUN can deallocate of it is deallocated: ``(bytes unmapped, bytes zeroed)``.

        On a LUN whose unmapped blocks read as zeros (LBPRZ) this is :meth:`discard`. On one
        where they may not, whole blocks get WRITE SAME(16) with UNMAP and a block of zeros,
        which the target deallocates only where the blocks then read as those zeros. A LUN
        that can deallocate neither way raises :class:`NotSupported` (a discard must not turn
        into writing the whole range), as do the refusals :meth:`discard` names.
        """
        self._check_range(offset, length, "punch a hole of")
        if length == 0:
            return 0, 0
        prov = self.provisioning
        if prov.method is None:
            raise NotSupported(f"LUN {self.lun} supports neither UNMAP nor WRITE SAME with "
                               f"UNMAP (no logical block provisioning)")
        if prov.lbprz:
            return await self.discard(offset, length)
        if not (prov.method == DISCARD_WRITE_SAME_16 or (self.lbp is not None and self.lbp.lbpws)):
            raise NotSupported(f"LUN {self.lun} can unmap only with UNMAP, after which its "
                               f"blocks need not read as zeros (LBPRZ is not set)")
        return await self._write_same_zeros(offset, length, unmap=True)

    async def zero_range(self, offset: int, length: int) -> tuple[int, int]:
        """``fallocate(ZERO_RANGE)``: the range reads as zeros afterwards: ``(bytes
        unmapped, bytes zeroed)``. Unmapped with :meth:`discard` where the LUN reads zeros
        after it (LBPRZ), else WRITE SAME(16) of a block of zeros over whole blocks. Partial
        blocks at the edges are read, merged and written back, under the range lock.
        :class:`NotSupported` when the LUN refuses WRITE SAME (nothing is changed then)."""
        self._check_range(offset, length, "zero")
        if length == 0:
            return 0, 0
        prov = self.provisioning
        if prov.method is not None and prov.lbprz:
            return await self.discard(offset, length)
        return await self._write_same_zeros(offset, length, unmap=False)

    def _check_range(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length ({offset}, {length})")
        if offset + length > self.size:
            raise NoSpace(f"cannot {what} {length} bytes at offset {offset}: that runs past "
                          f"the end of LUN {self.lun} ({self.size} bytes)")

    async def _write_same_zeros(self, offset: int, length: int, *, unmap: bool
                                ) -> tuple[int, int]:
        """WRITE SAME(16) of a zero block over the whole blocks of the range (with the UNMAP
        bit if ``unmap``), partial edge blocks by read-modify-write, all under the range lock.
        The first WRITE SAME goes before anything else, so a LUN that refuses it is left as it
        was (:class:`NotSupported`)."""
        if self._write_same_refused:
            raise NotSupported(f"LUN {self.lun} refused WRITE SAME(16)")
        bs = self.block_size
        end = offset + length
        first, stop = -(-offset // bs), end // bs       # the whole blocks inside the range
        limit = (self.block_limits.max_write_same_length
                 if self.block_limits is not None else 0) or MAX_WRITE_SAME_BLOCKS
        limit = min(limit, MAX_WRITE_SAME_BLOCKS)
        block = bytes(bs)
        entry = await self._locks.acquire(offset // bs, (end - 1) // bs)
        try:
            lba = first
            while lba < stop:
                blocks = min(stop - lba, limit)
                try:
                    await self.command(scsi_cdb.write_same16(lba, blocks, unmap=unmap),
                                       write_data=block)
                except ScsiError as exc:
                    sense = exc.sense
                    if lba == first and sense is not None \
                            and sense.key == SenseKey.ILLEGAL_REQUEST \
                            and (sense.asc, sense.ascq) in ((0x20, 0x00), (0x24, 0x00)):
                        if not unmap:
                            self._write_same_refused = True
                        raise NotSupported(f"LUN {self.lun} refused WRITE SAME(16)"
                                           f"{' with UNMAP' if unmap else ''}: {exc}") from exc
                    raise
                lba += blocks
            if stop > first:
                await self._zero(offset, first * bs)
                await self._zero(stop * bs, end)
            else:
                await self._zero(offset, end)
        finally:
            self._locks.release(entry)
        whole = max(0, stop - first) * bs
        return (whole, length - whole) if unmap else (0, length)

    async def _zero(self, start: int, end: int) -> None:
        """Write zeros over the bytes ``[start, end)``; the caller holds their range lock."""
        if end <= start:
            return
        bs = self.block_size
        if start % bs or end - start < bs:          # a partial first block
            stop = min(end, (start // bs + 1) * bs)
            await self._write_locked(start, bytes(stop - start))
            start = stop
        if end > start and end % bs:                # a partial last block
            stop = end - end % bs
            await self._write_locked(max(start, stop), bytes(end - max(start, stop)))
            end = max(start, stop)
        if end > start:                             # whole blocks
            zeros = memoryview(bytes(min(end - start, max(ZERO_CHUNK, bs) // bs * bs)))
            while start < end:
                n = min(end - start, len(zeros))
                await self._transfer(start // bs, zeros[:n], True)
                start += n


async def execute_retrying(session: DeviceSession, lun: int, cdb: bytes, *,
                           on_unit_attention=None, **kw) -> TaskComplete:
    """``session.execute`` retried after UNIT ATTENTION, which reports one condition and does
    not run the command (capacity changed, LUNs changed, power on / reset, ...)."""
    for attempt in range(UA_RETRIES + 1):
        try:
            return await session.execute(lun, cdb, **kw)
        except ScsiError as exc:
            if not is_unit_attention(exc) or attempt == UA_RETRIES:
                raise
            # 29/xx (power on, reset) follows every new session: DEBUG; others (capacity or
            # LUNs changed, ...) are news for the log
            sense = exc.sense
            level = logging.DEBUG if sense is not None and sense.asc == 0x29 else logging.INFO
            log.log(level, "LUN %d: unit attention (%s); retrying", lun, exc)
            if on_unit_attention is not None:
                on_unit_attention(exc)
    raise AssertionError("unreachable")


async def read_data(session: DeviceSession, lun: int, cdb: bytes, alloc: int, *,
                    on_unit_attention=None, **kw: Any) -> bytes:
    """Run a data-in command with an ``alloc``-byte buffer; return the bytes that arrived.
    ``kw`` goes to ``session.execute`` (``fail_fast``, ``setup``)."""
    buf = bytearray(alloc)
    result = await execute_retrying(session, lun, cdb, read_length=alloc, read_buffer=buf,
                                    on_unit_attention=on_unit_attention, **kw)
    return bytes(buf[:alloc - result.residual_count]) if result.underflow else bytes(buf)


async def pr_out(session, lun: int, request: PrOut, **kw: Any) -> None:
    """Send one PERSISTENT RESERVE OUT (retried after UNIT ATTENTION, which does not run it).
    ``kw`` goes to ``session.execute`` (``setup``, ``fail_fast``)."""
    params = scsi_cdb.pr_out_parameter_list(request.key, request.sa_key, aptpl=request.aptpl,
                                            all_tg_pt=request.all_tg_pt)
    cdb = scsi_cdb.persistent_reserve_out(request.action, request.type,
                                          parameter_list_length=len(params))
    try:
        await execute_retrying(session, lun, cdb, write_data=params, **kw)
    except ScsiError as exc:
        raise _not_supported(exc, f"PERSISTENT RESERVE OUT ({request.action.name})") or exc


async def register_key(session, lun: int, key: int, *, aptpl: bool = False,
                       **kw: Any) -> None:
    """Register ``key`` for this I_T nexus with REGISTER AND IGNORE EXISTING KEY (what
    multipathd does for multipath.conf's reservation_key on every path)."""
    await pr_out(session, lun, PrOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
                                     sa_key=key, aptpl=aptpl), **kw)
