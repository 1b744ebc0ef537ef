"""What the filesystem needs from the layers below, declared as ``typing.Protocol``.

The real implementations are ``iscsifs.initiator.Initiator`` (a ``Backend``), its
``LunEntry`` values (``LunListing``) and ``SessionInfo`` snapshots (``SessionSnapshot``),
``iscsifs.device.Lun`` (a ``BlockDevice``) and
``iscsifs.multipath.MultipathDevice`` (a ``MultipathBlockDevice``); the tests' in-memory
``tests/fs_fake.py`` implements the same protocols. ``tests/t3_fs_contract.py``
has mypy check that both sides fit, so a change to either shows up as a type error rather than
as an ``AttributeError`` in a FUSE handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from iscsifs.core.names import Portal
from iscsifs.core.state import ConnectionState, SessionState
from iscsifs.device import PrOut
from iscsifs.scsi.cdb import PrInAction


class Inquiry(Protocol):
    """The standard INQUIRY data shown in ``info`` (``scsi.parse.Inquiry``)."""

    @property
    def vendor(self) -> str: ...
    @property
    def product(self) -> str: ...
    @property
    def revision(self) -> str: ...
    @property
    def device_type(self) -> int: ...


class Provisioning(Protocol):
    """Logical block provisioning of a LUN and how it discards (``device.Provisioning``)."""

    @property
    def lbpme(self) -> bool: ...
    @property
    def lbprz(self) -> bool:
        """Unmapped blocks read as zeros."""
    @property
    def provisioning_type(self) -> int | None:
        """VPD B2h: 0 full, 1 resource, 2 thin; None without the page."""
    @property
    def method(self) -> str | None:
        """How ``discard`` unmaps: ``"unmap"``, ``"write_same_16"``, or None (it can't)."""
    @property
    def max_blocks(self) -> int:
        """Blocks per UNMAP / WRITE SAME command."""
    @property
    def granularity(self) -> int:
        """Blocks: only whole granules are unmapped."""
    @property
    def alignment(self) -> int:
        """LBA of the first granule boundary (modulo the granularity)."""


class BlockDevice(Protocol):
    """One LUN as bytes: what a ``raw`` file reads, writes and shows (``device.Lun``)."""

    @property
    def size(self) -> int:
        """Capacity in bytes."""
    @property
    def block_size(self) -> int: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def max_transfer_bytes(self) -> int:
        """The largest single transfer the target accepts (st_blksize of ``raw``)."""
    @property
    def write_protected(self) -> bool: ...
    @property
    def inquiry(self) -> Inquiry | None: ...
    @property
    def serial(self) -> str | None: ...
    @property
    def wwn(self) -> str | None: ...
    @property
    def capacity_changed(self) -> bool:
        """A command saw UNIT ATTENTION 2A/09: ``read_capacity()`` before trusting ``size``."""

    inflight: list[int]
    """READ and WRITE commands running now: ``[reads, writes]``."""
    max_inflight: list[int]
    """The most READ and WRITE commands that ran at once: ``[reads, writes]``."""

    luns_changed: bool
    """A command saw UNIT ATTENTION 3F/0E: the target's LUN list changed (the filesystem
    rescans and clears it)."""

    @property
    def is_gone(self) -> bool:
        """Its logical unit is not at its LUN number any more (removed, or another one is
        there now): every operation fails with ``errors.NoSuchDevice``."""

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """``length`` bytes at ``offset``; short (or empty) at the end. Any contiguous buffer
        will do: pyfuse3 replies from it without a copy."""
    async def write(self, offset: int, data: bytes | memoryview) -> int:
        """Write at ``offset``; short at the end, ``errors.NoSpace`` at or beyond it."""
    async def flush(self) -> None:
        """SYNCHRONIZE CACHE."""
    @property
    def provisioning(self) -> Provisioning: ...
    async def discard(self, offset: int, length: int) -> tuple[int, int]:
        """Unmap whole granules, write zeros over the rest of the range; returns (bytes
        unmapped, bytes zeroed). ``ValueError`` for a negative range, ``errors.NoSpace`` past
        the end, ``errors.NotSupported`` when the LUN can't unmap; nothing changes then."""
    async def punch_hole(self, offset: int, length: int) -> tuple[int, int]:
        """``fallocate(PUNCH_HOLE)``: deallocate what the LUN can so that the whole range
        reads as zeros; returns (bytes unmapped, bytes zeroed). ``errors.NotSupported`` when
        the LUN can't deallocate (nothing changes then); range errors as ``discard``."""
    async def zero_range(self, offset: int, length: int) -> tuple[int, int]:
        """``fallocate(ZERO_RANGE)``: the range reads as zeros (unmapped where the LUN reads
        zeros after that, else WRITE SAME); returns (bytes unmapped, bytes zeroed).
        ``errors.NotSupported`` when the LUN refuses WRITE SAME."""
    async def read_capacity(self) -> None:
        """Read the capacity again (after a resize); clears ``capacity_changed``."""
    async def read_write_protect(self) -> None:
        """Read ``write_protected`` again (MODE SENSE). ``write`` does it itself when the
        target answers DATA PROTECT."""
    async def persistent_reserve_in(self, action: PrInAction) -> Any:
        """PERSISTENT RESERVE IN: ``scsi.parse.PrKeys``, ``PrReservation``,
        ``PrCapabilities`` or ``PrFullStatus``; ``errors.NotSupported`` when the LUN refuses
        the service action."""
    async def persistent_reserve_out(self, request: PrOut) -> None:
        """PERSISTENT RESERVE OUT (a multipath device: REGISTER and RELEASE on every path);
        RESERVATION CONFLICT is a ``ScsiError``, a refused service action
        ``errors.NotSupported``."""


class PathState(Protocol):
    """One path of a multipath device, as the status file shows it
    (``multipath.PathState``)."""

    @property
    def portal(self) -> Portal: ...
    @property
    def target(self) -> str: ...
    @property
    def lun(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def group_active(self) -> bool:
        """I/O goes to this path's group (failover: this is the active path)."""
    @property
    def dm_state(self) -> str:
        """active | failed"""
    @property
    def checker_state(self) -> str:
        """ready | faulty"""
    @property
    def device_state(self) -> str:
        """running | blocked | offline"""
    @property
    def ios(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def device(self) -> BlockDevice:
        """The path's own device (the per-portal ``raw``)."""
    @property
    def alua_state(self) -> str | None:
        """``active/optimized``, ``active/non-optimized``, ``standby``, ``unavailable``,
        ``transitioning``, ...; None when the LUN has no ALUA."""
    @property
    def target_port_group(self) -> int | None: ...
    @property
    def preferred(self) -> bool:
        """The target port group's PREF bit."""


class MultipathBlockDevice(BlockDevice, Protocol):
    """A logical unit through all of its paths: a ``by-id`` file
    (``multipath.MultipathDevice``)."""

    @property
    def identity(self) -> str:
        """``naa.<hex>``, ``eui.<hex>`` or ``t10.<text>`` (VPD 0x83)."""
    @property
    def policy(self) -> str:
        """failover | round-robin"""
    @property
    def switches(self) -> int:
        """Times the active path changed."""
    @property
    def no_path_retry(self) -> float:
        """Seconds I/O waits while no path is healthy (replacement_timeout; <0: for ever)."""
    def path_states(self) -> Sequence[PathState]:
        """Every path, in priority order."""
    def active_path(self) -> PathState | None:
        """The path the next command goes to (None: no path is healthy)."""
    def last_path(self) -> PathState | None:
        """The path that answered the last command (None before the first)."""


class LunListing(Protocol):
    """One entry of a target's LUN list (``initiator.LunEntry``)."""

    @property
    def lun(self) -> int: ...
    @property
    def device_type(self) -> int: ...
    @property
    def type_name(self) -> str: ...
    @property
    def device(self) -> BlockDevice | None:
        """None for a LUN that is not a disk (tgt's controller LUN 0)."""


class SessionTimeouts(Protocol):
    """The timeouts in force for a session, in seconds (``net.session.Timeouts``)."""

    @property
    def login(self) -> float: ...
    @property
    def logout(self) -> float: ...
    @property
    def noop_out_interval(self) -> float: ...
    @property
    def noop_out_timeout(self) -> float: ...
    @property
    def replacement_timeout(self) -> float: ...
    @property
    def abort(self) -> float: ...
    @property
    def lu_reset(self) -> float: ...
    @property
    def tgt_reset(self) -> float: ...
    @property
    def command(self) -> float: ...


class NegotiatedParameters(Protocol):
    """What the login negotiated (``core.keys.NegotiatedParams``)."""

    @property
    def header_digest(self) -> bool: ...
    @property
    def data_digest(self) -> bool: ...
    @property
    def max_recv_data_segment_length(self) -> int: ...
    @property
    def max_xmit_data_segment_length(self) -> int: ...
    @property
    def first_burst_length(self) -> int: ...
    @property
    def max_burst_length(self) -> int: ...
    @property
    def immediate_data(self) -> bool: ...
    @property
    def initial_r2t(self) -> bool: ...
    @property
    def max_outstanding_r2t(self) -> int: ...


class SessionSnapshot(Protocol):
    """One session at one moment, for the ``session`` file and ``session.json``
    (``initiator.SessionInfo``). It holds no secret: CHAP usernames only."""

    @property
    def target(self) -> str: ...
    @property
    def portal(self) -> Portal:
        """Where the connection is now (the Current Portal; differs from the node's after a
        login redirection)."""
    @property
    def sid(self) -> int: ...
    @property
    def initiator_name(self) -> str: ...
    @property
    def local_address(self) -> str: ...
    @property
    def connection_state(self) -> ConnectionState:
        """``.iscsiadm``: the words iscsiadm shows (LOGGED IN, TRANSPORT WAIT, ...)."""
    @property
    def session_state(self) -> SessionState:
        """``.iscsiadm`` (LOGGED_IN, FAILED, FREE), ``.device_state`` (running, blocked, ...)."""
    @property
    def timeouts(self) -> SessionTimeouts: ...
    @property
    def chap_username(self) -> str | None: ...
    @property
    def chap_username_in(self) -> str | None: ...
    @property
    def params(self) -> NegotiatedParameters: ...
    @property
    def luns(self) -> Sequence[LunListing]: ...
    @property
    def counters(self) -> Mapping[str, int]:
        """``iscsiadm -m session -s``'s counters by name, then any of our own."""


class Target(Protocol):
    """One target of a SendTargets answer (``core.discovery.DiscoveredTarget``)."""

    @property
    def name(self) -> str: ...


class Backend(Protocol):
    """The initiator as the filesystem uses it (``initiator.Initiator``)."""

    async def discover(self, portal: Portal, *, refresh: bool = False) -> Sequence[Target]:
        """SendTargets at ``portal`` (cached unless ``refresh``)."""
    def forget_discovery(self, portal: Portal) -> None:
        """Drop the cached answer of ``portal``."""
    async def luns(self, target: str, portal: Portal) -> Sequence[LunListing]:
        """The LUNs of a target; logs in on first use."""
    async def rescan(self, target: str, portal: Portal) -> Sequence[LunListing]:
        """REPORT LUNS again and every capacity re-read (``iscsiadm -m node -R``)."""
    def session_info(self, target: str, portal: Portal) -> SessionSnapshot | None:
        """A snapshot for the ``session`` file and ``session.json``, or None before the first
        login."""
    def logged_in_targets(self, portal: Portal) -> list[str]: ...
    async def logout(self, target: str, portal: Portal) -> None: ...
    async def multipath(self, pairs: Sequence[tuple[str, Portal]]
                        ) -> Sequence[MultipathBlockDevice]:
        """The disk LUNs of these targets grouped by identity, one device each; logs in
        where needed."""
    def watch_luns(self, callback: Callable[[str, Portal, Sequence[LunListing]], None]
                   ) -> None:
        """Have ``callback(target, portal, luns)`` called with every new LUN list of a
        target: after a listing or a rescan, and after a LUN change the backend saw by itself
        (UNIT ATTENTION 3F/0E, an async event, another logical unit found after a relogin)."""
    async def aclose(self) -> None:
        """Log every session out."""
