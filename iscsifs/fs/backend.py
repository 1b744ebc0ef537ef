"""What the filesystem needs from the layers below, declared as ``typing.Protocol``.

The real implementations are ``iscsifs.initiator.Initiator`` (a ``Backend``), its
``LunEntry`` values (``LunListing``) and ``iscsifs.device.Lun`` (a ``BlockDevice``); the
tests' in-memory ``tests/fs_fake.py`` implements the same protocols. ``tests/t3_fs_contract.py``
has mypy check that both sides fit, so a change to either shows up as a type error rather than
as an ``AttributeError`` in a FUSE handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from iscsifs.core.discovery import Portal


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

    luns_changed: bool
    """A command saw UNIT ATTENTION 3F/0E: the target's LUN list changed (the filesystem
    rescans and clears it)."""

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """``length`` bytes at ``offset``; short (or empty) at the end. Any contiguous buffer
        will do: pyfuse3 replies from it without a copy."""
    async def write(self, offset: int, data: bytes | memoryview) -> int:
        """Write at ``offset``; short at the end, ``errors.NoSpace`` at or beyond it."""
    async def flush(self) -> None:
        """SYNCHRONIZE CACHE."""
    async def read_capacity(self) -> None:
        """Read the capacity again (after a resize); clears ``capacity_changed``."""
    async def read_write_protect(self) -> None:
        """Read ``write_protected`` again (MODE SENSE). ``write`` does it itself when the
        target answers DATA PROTECT."""


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
    def session_info(self, target: str, portal: Portal) -> object:
        """A snapshot for the ``session`` file (``initiator.SessionInfo``, read by
        ``fs/render.py``), or None before the first login."""
    def logged_in_targets(self, portal: Portal) -> list[str]: ...
    async def logout(self, target: str, portal: Portal) -> None: ...
    async def aclose(self) -> None:
        """Log every session out."""
