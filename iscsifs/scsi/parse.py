"""Parsers for the data-in of SCSI commands iscsifs sends.

Owns: standard INQUIRY data (SPC-4 §6.6.2), the VPD pages 00h/80h/83h (SPC-4 §7.8), B0h
(SBC-3 §6.5.3) and B2h (SBC-3 r35 §6.6.4 / SBC-4 §6.6.6), READ CAPACITY(10)/(16) parameter
data (SBC-3 §5.15.2, §5.16.2), REPORT LUNS parameter data (SPC-4 §6.33) with LUN decoding
(SAM-5 §4.7), the WP bit of a MODE SENSE header (SPC-4 §7.5.5, SBC-3 §6.4.1), PERSISTENT
RESERVE IN parameter data (SPC-4 §6.13) and REPORT TARGET PORT GROUPS parameter data (SPC-4
§6.35). Knows nothing of iSCSI and does no I/O.

Every parser accepts truncated data (a short allocation length, or a residual): fields that
are missing read as 0/empty, and a length field that claims more than is present is clamped.
Data too short to hold its header, or that contradicts itself in a way that leaves nothing
usable, raises ``RemoteProtocolError``; nothing raises ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from iscsifs.errors import RemoteProtocolError
from iscsifs.scsi.cdb import VpdPage

__all__ = [
    "DeviceType", "device_type_name", "Inquiry", "parse_inquiry",
    "parse_vpd_supported_pages", "parse_vpd_serial",
    "Designator", "DesignatorType", "Association", "CodeSet", "parse_vpd_device_id", "pick_wwn",
    "BlockLimits", "parse_vpd_block_limits",
    "ProvisioningType", "LogicalBlockProvisioning", "parse_vpd_logical_block_provisioning",
    "Capacity", "parse_read_capacity10", "parse_read_capacity16",
    "decode_lun_entry", "parse_report_luns", "report_luns_needed", "parse_mode_sense_wp",
    "target_port_group", "relative_target_port",
    "PrKeys", "PrReservation", "PrCapabilities", "PrStatusDescriptor", "PrFullStatus",
    "parse_pr_read_keys", "parse_pr_read_reservation", "parse_pr_report_capabilities",
    "parse_pr_read_full_status", "transport_id_text",
    "AluaState", "TargetPortGroup", "parse_report_target_port_groups",
]

Buffer = bytes | bytearray | memoryview


class DeviceType(enum.IntEnum):
    """Peripheral device types (SPC-4 §6.6.2 table 146)."""

    DISK = 0x00
    TAPE = 0x01
    PRINTER = 0x02
    PROCESSOR = 0x03
    WRITE_ONCE = 0x04
    CD_DVD = 0x05
    SCANNER = 0x06
    OPTICAL = 0x07
    MEDIUM_CHANGER = 0x08
    COMMUNICATIONS = 0x09
    STORAGE_CONTROLLER = 0x0C
    ENCLOSURE = 0x0D
    SIMPLIFIED_DISK = 0x0E
    OPTICAL_CARD = 0x0F
    BRIDGE = 0x10
    OBJECT_STORAGE = 0x11
    AUTOMATION = 0x12
    SECURITY_MANAGER = 0x13
    ZONED_BLOCK = 0x14
    WELL_KNOWN_LU = 0x1E
    UNKNOWN = 0x1F


_DEVICE_TYPE_NAMES = {
    DeviceType.DISK: "disk",
    DeviceType.TAPE: "tape",
    DeviceType.PRINTER: "printer",
    DeviceType.PROCESSOR: "processor",
    DeviceType.WRITE_ONCE: "write-once",
    DeviceType.CD_DVD: "CD/DVD",
    DeviceType.SCANNER: "scanner",
    DeviceType.OPTICAL: "optical memory",
    DeviceType.MEDIUM_CHANGER: "medium changer",
    DeviceType.COMMUNICATIONS: "communications",
    DeviceType.STORAGE_CONTROLLER: "RAID/storage controller",
    DeviceType.ENCLOSURE: "enclosure services",
    DeviceType.SIMPLIFIED_DISK: "simplified disk",
    DeviceType.OPTICAL_CARD: "optical card reader/writer",
    DeviceType.BRIDGE: "bridge controller",
    DeviceType.OBJECT_STORAGE: "object storage",
    DeviceType.AUTOMATION: "automation/drive interface",
    DeviceType.SECURITY_MANAGER: "security manager",
    DeviceType.ZONED_BLOCK: "zoned block device",
    DeviceType.WELL_KNOWN_LU: "well known LU",
    DeviceType.UNKNOWN: "unknown",
}


def device_type_name(device_type: int) -> str:
    """``disk``, ``CD/DVD``, ``RAID/storage controller``, ... or ``type 0x15``."""
    name = _DEVICE_TYPE_NAMES.get(device_type)  # type: ignore[call-overload]
    return name if name is not None else f"type {device_type:#04x}"


def _whole_fields(raw: bytes, ends: tuple[int, ...], size: int) -> bytes:
    """Cut ``raw`` back to the last complete field (``ends``: field end offsets) and pad it
    with zeros to ``size``, so a field cut in half by truncation reads as 0, not as garbage."""
    keep = max((end for end in ends if end <= len(raw)), default=0)
    return raw[:keep].ljust(size, b"\0")


def _text(raw: Buffer) -> str:
    """ASCII field (SPC-4 §4.3.1): left-aligned, space padded; NULs tolerated."""
    return bytes(raw).decode("ascii", errors="replace").strip(" \0")


# ---------------------------------------------------------------------------------------------
# Standard INQUIRY
# ---------------------------------------------------------------------------------------------

# SPC-4 §6.6.2 table 145: peripheral qualifier + device type, RMB, version, flags + response
# data format, additional length, 3 flag bytes, T10 vendor (8), product (16), revision (4)
_INQUIRY = struct.Struct(">BBBBBBBB8s16s4s")   # 36 bytes


@dataclass(frozen=True, slots=True)
class Inquiry:
    """Standard INQUIRY data. Fields beyond a truncated answer read as 0/False/""."""

    peripheral_qualifier: int
    device_type: int
    removable: bool = False
    version: int = 0
    response_data_format: int = 0
    hisup: bool = False
    tpgs: int = 0
    protect: bool = False
    cmdque: bool = False
    vendor: str = ""
    product: str = ""
    revision: str = ""

    @property
    def device_type_name(self) -> str:
        return device_type_name(self.device_type)

    @property
    def connected(self) -> bool:
        """Qualifier 000b: a device of this type is connected to this LU (SPC-4 table 145)."""
        return self.peripheral_qualifier == 0

    @property
    def is_disk(self) -> bool:
        return self.connected and self.device_type in (DeviceType.DISK, DeviceType.SIMPLIFIED_DISK)


def parse_inquiry(data: Buffer) -> Inquiry:
    """Standard INQUIRY data (SPC-4 §6.6.2), whole or truncated (at least 1 byte)."""
    raw = bytes(data)
    if not raw:
        raise RemoteProtocolError("empty INQUIRY data")
    # ADDITIONAL LENGTH (byte 4) is not used to cut the data: the fields parsed here are in
    # the first 36 bytes, which every device returns, and some report a too-small length
    # (Linux scsi_probe_lun does the same).
    (b0, b1, version, b3, _add_len, b5, _b6, b7, vendor, product,
     revision) = _INQUIRY.unpack(raw.ljust(_INQUIRY.size, b"\0")[:_INQUIRY.size])
    return Inquiry(
        peripheral_qualifier=b0 >> 5,
        device_type=b0 & 0x1F,
        removable=bool(b1 & 0x80),
        version=version,
        response_data_format=b3 & 0x0F,
        hisup=bool(b3 & 0x10),
        tpgs=(b5 >> 4) & 0x03,
        protect=bool(b5 & 0x01),
        cmdque=bool(b7 & 0x02),
        vendor=_text(vendor),
        product=_text(product),
        revision=_text(revision),
    )


# ---------------------------------------------------------------------------------------------
# VPD pages
# ---------------------------------------------------------------------------------------------

# SPC-4 §7.8.1 table 587: peripheral qualifier + device type, page code, page length (2)
_VPD_HEADER = struct.Struct(">BBH")


def _vpd_body(data: Buffer, page: int) -> bytes:
    """The page's payload after the 4-byte header, clamped to what is present."""
    raw = bytes(data)
    if len(raw) < _VPD_HEADER.size:
        raise RemoteProtocolError(f"VPD page {page:#04x}: {len(raw)} bytes, no header")
    _b0, code, length = _VPD_HEADER.unpack_from(raw)
    if code != page:
        raise RemoteProtocolError(f"asked for VPD page {page:#04x}, got {code:#04x}")
    return raw[_VPD_HEADER.size:_VPD_HEADER.size + length]


def parse_vpd_supported_pages(data: Buffer) -> list[int]:
    """Supported VPD pages (SPC-4 §7.8.13): the list of page codes."""
    return list(_vpd_body(data, VpdPage.SUPPORTED_PAGES))


def parse_vpd_serial(data: Buffer) -> str:
    """Unit serial number (SPC-4 §7.8.15), stripped of padding."""
    return _text(_vpd_body(data, VpdPage.UNIT_SERIAL_NUMBER))


class CodeSet(enum.IntEnum):
    """Designator code set (SPC-4 §7.8.6.1 table 597 / table 485)."""

    BINARY = 1
    ASCII = 2
    UTF8 = 3


class Association(enum.IntEnum):
    """What a designator names (SPC-4 §7.8.6.1 table 598)."""

    LOGICAL_UNIT = 0
    TARGET_PORT = 1
    TARGET_DEVICE = 2


class DesignatorType(enum.IntEnum):
    """Designator types (SPC-4 §7.8.6.1 table 599)."""

    VENDOR_SPECIFIC = 0x0
    T10_VENDOR_ID = 0x1
    EUI64 = 0x2
    NAA = 0x3
    RELATIVE_TARGET_PORT = 0x4
    TARGET_PORT_GROUP = 0x5
    LOGICAL_UNIT_GROUP = 0x6
    MD5_LOGICAL_UNIT = 0x7
    SCSI_NAME_STRING = 0x8
    PROTOCOL_SPECIFIC_PORT = 0x9
    UUID = 0xA


# SPC-4 §7.8.6.1 table 596: protocol identifier + code set, PIV + association + designator
# type, reserved, designator length
_DESIGNATION = struct.Struct(">BBxB")


@dataclass(frozen=True, slots=True)
class Designator:
    """One designation descriptor of the Device Identification VPD page."""

    protocol_id: int
    code_set: int
    piv: bool
    association: int
    designator_type: int
    value: bytes

    @property
    def text(self) -> str:
        """``naa.<hex>``, ``eui.<hex>``, ``t10.<vendor id>``, a SCSI name string, or hex."""
        t = self.designator_type
        if t == DesignatorType.NAA:
            return "naa." + self.value.hex()
        if t == DesignatorType.EUI64:
            return "eui." + self.value.hex()
        if t == DesignatorType.T10_VENDOR_ID:
            return "t10." + _text(self.value)
        if t == DesignatorType.SCSI_NAME_STRING:
            return self.value.decode("utf-8", errors="replace").rstrip("\0")
        if self.code_set in (CodeSet.ASCII, CodeSet.UTF8):
            return self.value.decode("utf-8", errors="replace").strip(" \0")
        return self.value.hex()

    def __str__(self) -> str:
        return self.text


def parse_vpd_device_id(data: Buffer) -> list[Designator]:
    """Device Identification (SPC-4 §7.8.6): every complete designation descriptor, in order.

    A descriptor cut off by truncation (or a lying length) ends the list.
    """
    body = _vpd_body(data, VpdPage.DEVICE_IDENTIFICATION)
    out: list[Designator] = []
    offset = 0
    while offset + _DESIGNATION.size <= len(body):
        b0, b1, length = _DESIGNATION.unpack_from(body, offset)
        start = offset + _DESIGNATION.size
        value = body[start:start + length]
        if len(value) < length:
            break
        out.append(Designator(protocol_id=b0 >> 4, code_set=b0 & 0x0F, piv=bool(b1 & 0x80),
                              association=(b1 >> 4) & 0x03, designator_type=b1 & 0x0F,
                              value=value))
        offset = start + length
    return out


def _wwn_rank(d: Designator) -> tuple[int, int] | None:
    if d.association != Association.LOGICAL_UNIT or not d.value:
        return None
    if d.designator_type == DesignatorType.NAA:
        naa = d.value[0] >> 4   # 6 IEEE registered extended > 5 IEEE registered > the rest
        return (3, {6: 2, 5: 1}.get(naa, 0))
    if d.designator_type == DesignatorType.EUI64:
        return (2, 0)
    if d.designator_type == DesignatorType.T10_VENDOR_ID:
        return (1, 0)
    return None


def pick_wwn(designators: list[Designator]) -> str | None:
    """The logical unit's name, chosen as udev's scsi_id chooses ID_SERIAL (and so
    dm-multipath its WWID): NAA type 6, then type 5, then any other NAA, then EUI-64, then
    T10 vendor ID; among equals the first in the page. Only logical-unit designators count."""
    best: Designator | None = None
    best_rank: tuple[int, int] | None = None
    for d in designators:
        rank = _wwn_rank(d)
        if rank is not None and (best_rank is None or rank > best_rank):
            best, best_rank = d, rank
    return best.text if best is not None else None


# SBC-3 §6.5.3 table 193, after the VPD header: WSNZ, max COMPARE AND WRITE length,
# optimal transfer length granularity (2), max transfer length (4), optimal transfer length (4),
# max prefetch length (4), max UNMAP LBA count (4), max UNMAP block descriptor count (4),
# optimal unmap granularity (4), UGAVALID + unmap granularity alignment (4),
# max WRITE SAME length (8)
_BLOCK_LIMITS = struct.Struct(">BBHIIIIIIIQ")   # 40 bytes (page bytes 4..43)
_BLOCK_LIMITS_ENDS = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 40)


@dataclass(frozen=True, slots=True)
class BlockLimits:
    """Block Limits VPD page (B0h). Lengths are in logical blocks; 0 = no limit/not reported.

    Except for UNMAP (SBC-3 r35 §6.6.3): a MAXIMUM UNMAP LBA COUNT or MAXIMUM UNMAP BLOCK
    DESCRIPTOR COUNT of 0 means the device server does not implement UNMAP, and FFFFFFFFh means
    no limit. OPTIMAL UNMAP GRANULARITY 0 or 1 means every block; ``unmap_granularity_alignment``
    is None unless UGAVALID is set.
    """

    max_transfer_length: int = 0
    optimal_transfer_length: int = 0
    optimal_transfer_length_granularity: int = 0
    max_compare_and_write_length: int = 0
    max_prefetch_length: int = 0
    max_unmap_lba_count: int = 0
    max_unmap_block_descriptor_count: int = 0
    optimal_unmap_granularity: int = 0
    unmap_granularity_alignment: int | None = None
    max_write_same_length: int = 0
    wsnz: bool = False


def parse_vpd_block_limits(data: Buffer) -> BlockLimits:
    """Block Limits (SBC-3 §6.5.3). Old short pages (length 0Ch) give the fields they have."""
    body = _vpd_body(data, VpdPage.BLOCK_LIMITS)
    (b4, cw, otlg, mtl, otl, mpl, mulc, mubdc, oug, uga,
     mwsl) = _BLOCK_LIMITS.unpack(_whole_fields(body, _BLOCK_LIMITS_ENDS, _BLOCK_LIMITS.size))
    return BlockLimits(
        max_transfer_length=mtl,
        optimal_transfer_length=otl,
        optimal_transfer_length_granularity=otlg,
        max_compare_and_write_length=cw,
        max_prefetch_length=mpl,
        max_unmap_lba_count=mulc,
        max_unmap_block_descriptor_count=mubdc,
        optimal_unmap_granularity=oug,
        unmap_granularity_alignment=uga & 0x7FFF_FFFF if uga & 0x8000_0000 else None,
        max_write_same_length=mwsl,
        wsnz=bool(b4 & 0x01),
    )


class ProvisioningType(enum.IntEnum):
    """PROVISIONING TYPE of the Logical Block Provisioning VPD page (SBC-4 §6.6.6)."""

    FULL = 0            # fully provisioned, or not reported
    RESOURCE = 1        # resource provisioned
    THIN = 2            # thin provisioned


# SBC-3 r35 §6.6.4 / SBC-4 §6.6.6, after the VPD header: threshold exponent;
# LBPU (bit 7), LBPWS (6), LBPWS10 (5), LBPRZ (bits 4-2; one bit, bit 2, in SBC-3), ANC_SUP (1),
# DP (0); minimum percentage (bits 7-3) + provisioning type (bits 2-0); threshold percentage
_LBP = struct.Struct(">BBBB")      # page bytes 4..7; a provisioning group descriptor may follow
_LBP_ENDS = (1, 2, 3, 4)


@dataclass(frozen=True, slots=True)
class LogicalBlockProvisioning:
    """Logical Block Provisioning VPD page (B2h): which commands unmap, and what an unmapped
    block reads as. Fields beyond a truncated answer read as 0/False."""

    threshold_exponent: int = 0
    lbpu: bool = False          # UNMAP is supported
    lbpws: bool = False         # WRITE SAME(16) with the UNMAP bit is supported
    lbpws10: bool = False       # WRITE SAME(10) with the UNMAP bit is supported
    lbprz_field: int = 0        # SBC-4 LBPRZ field: xx1b zeros, 010b the initialization pattern
    anc_sup: bool = False       # anchored LBAs are supported
    dp: bool = False            # a provisioning group descriptor follows
    minimum_percentage: int = 0
    provisioning_type: int = ProvisioningType.FULL
    threshold_percentage: int = 0

    @property
    def lbprz(self) -> bool:
        """An unmapped block reads as zeros (LBPRZ field xx1b)."""
        return bool(self.lbprz_field & 0x01)


def parse_vpd_logical_block_provisioning(data: Buffer) -> LogicalBlockProvisioning:
    """Logical Block Provisioning (SBC-3 r35 §6.6.4, SBC-4 §6.6.6). The provisioning group
    descriptor (present when DP is set) is not parsed."""
    body = _vpd_body(data, VpdPage.LOGICAL_BLOCK_PROVISIONING)
    exponent, b5, b6, threshold = _LBP.unpack(_whole_fields(body, _LBP_ENDS, _LBP.size))
    return LogicalBlockProvisioning(
        threshold_exponent=exponent,
        lbpu=bool(b5 & 0x80),
        lbpws=bool(b5 & 0x40),
        lbpws10=bool(b5 & 0x20),
        lbprz_field=(b5 >> 2) & 0x07,
        anc_sup=bool(b5 & 0x02),
        dp=bool(b5 & 0x01),
        minimum_percentage=b6 >> 3,
        provisioning_type=b6 & 0x07,
        threshold_percentage=threshold,
    )


# ---------------------------------------------------------------------------------------------
# READ CAPACITY
# ---------------------------------------------------------------------------------------------

# SBC-3 §5.15.2 table 63: returned logical block address (4), logical block length (4)
_RC10 = struct.Struct(">II")
# SBC-3 §5.16.2 table 65: returned LBA (8), logical block length (4), P_TYPE + PROT_EN,
# P_I_EXPONENT + LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT, LBPME + LBPRZ + lowest aligned
# LBA (14 bits, 2 bytes)
_RC16 = struct.Struct(">QIBBH")   # 16 bytes; bytes 16..31 reserved
_RC16_ENDS = (8, 12, 13, 14, 16)


@dataclass(frozen=True, slots=True)
class Capacity:
    """READ CAPACITY result. ``needs_16``: RC(10) said "too big, ask READ CAPACITY(16)"."""

    last_lba: int
    block_size: int
    needs_16: bool = False
    protection_type: int | None = None      # P_TYPE + 1 when PROT_EN, else None
    logical_per_physical_exponent: int = 0
    lbpme: bool = False                     # thin provisioned (UNMAP supported)
    lbprz: bool = False                     # unmapped blocks read as zeros
    lowest_aligned_lba: int = 0

    @property
    def num_blocks(self) -> int:
        return self.last_lba + 1

    @property
    def size(self) -> int:
        """Capacity in bytes."""
        return self.num_blocks * self.block_size

    @property
    def physical_block_size(self) -> int:
        return self.block_size << self.logical_per_physical_exponent


def _check_block_size(block_size: int) -> None:
    if block_size == 0:
        raise RemoteProtocolError("READ CAPACITY returned a logical block length of 0")


def parse_read_capacity10(data: Buffer) -> Capacity:
    """READ CAPACITY(10) data (SBC-3 §5.15.2). LBA FFFFFFFFh sets ``needs_16``."""
    raw = bytes(data)
    if len(raw) < _RC10.size:
        raise RemoteProtocolError(f"READ CAPACITY(10) data of {len(raw)} bytes (need 8)")
    last_lba, block_size = _RC10.unpack_from(raw)
    _check_block_size(block_size)
    return Capacity(last_lba=last_lba, block_size=block_size, needs_16=last_lba == 0xFFFF_FFFF)


def parse_read_capacity16(data: Buffer) -> Capacity:
    """READ CAPACITY(16) data (SBC-3 §5.16.2); at least the 12 bytes of LBA and length."""
    raw = bytes(data)
    if len(raw) < 12:
        raise RemoteProtocolError(f"READ CAPACITY(16) data of {len(raw)} bytes (need 12)")
    last_lba, block_size, b12, b13, b14_15 = _RC16.unpack(
        _whole_fields(raw, _RC16_ENDS, _RC16.size))
    _check_block_size(block_size)
    return Capacity(
        last_lba=last_lba,
        block_size=block_size,
        protection_type=((b12 >> 1) & 0x07) + 1 if b12 & 0x01 else None,
        logical_per_physical_exponent=b13 & 0x0F,
        lbpme=bool(b14_15 & 0x8000),
        lbprz=bool(b14_15 & 0x4000),
        lowest_aligned_lba=b14_15 & 0x3FFF,
    )


# ---------------------------------------------------------------------------------------------
# REPORT LUNS
# ---------------------------------------------------------------------------------------------

# SPC-4 §6.33 table 286: LUN list length (4), reserved (4), then 8-byte LUN entries
_REPORT_LUNS_HEADER = struct.Struct(">I4x")
_ADDRESS_PERIPHERAL = 0b00
_ADDRESS_FLAT = 0b01


def decode_lun_entry(entry: Buffer) -> int | None:
    """An 8-byte single-level LUN (SAM-5 §4.7) as a number, or None if not representable.

    Peripheral device addressing (00b, bus 0) gives 0-255, flat space addressing (01b)
    0-16383. Multi-level LUNs, other buses, logical unit / extended addressing (e.g. well
    known LUs) give None.
    """
    raw = bytes(entry)
    if len(raw) != 8 or any(raw[2:]):
        return None
    method = raw[0] >> 6
    if method == _ADDRESS_PERIPHERAL:
        return raw[1] if raw[0] & 0x3F == 0 else None
    if method == _ADDRESS_FLAT:
        return ((raw[0] & 0x3F) << 8) | raw[1]
    return None


def report_luns_needed(data: Buffer) -> int:
    """The allocation length the whole answer needs (to re-issue when it was truncated)."""
    raw = bytes(data)
    if len(raw) < 4:
        raise RemoteProtocolError(f"REPORT LUNS data of {len(raw)} bytes has no list length")
    return int.from_bytes(raw[:4], "big") + _REPORT_LUNS_HEADER.size


def parse_report_luns(data: Buffer) -> list[int]:
    """LUN numbers from REPORT LUNS data (SPC-4 §6.33), in the target's order, deduplicated.

    A truncated list yields the complete entries present (see :func:`report_luns_needed`).
    Entries that are not single-level peripheral/flat LUNs are skipped.
    """
    raw = bytes(data)
    if len(raw) < _REPORT_LUNS_HEADER.size:
        raise RemoteProtocolError(f"REPORT LUNS data of {len(raw)} bytes (need 8)")
    (list_length,) = _REPORT_LUNS_HEADER.unpack_from(raw)
    body = raw[_REPORT_LUNS_HEADER.size:_REPORT_LUNS_HEADER.size + list_length]
    luns: dict[int, None] = {}
    for offset in range(0, len(body) - 7, 8):
        lun = decode_lun_entry(body[offset:offset + 8])
        if lun is not None:
            luns[lun] = None
    return list(luns)


# ---------------------------------------------------------------------------------------------
# MODE SENSE
# ---------------------------------------------------------------------------------------------

_WP = 0x80   # SBC-3 §6.4.1 table 178: device-specific parameter bit 7 for direct-access


def parse_mode_sense_wp(data: Buffer, ten: bool) -> bool:
    """The WP bit from a MODE SENSE(6) (``ten=False``) or (10) parameter header.

    SPC-4 §7.5.5 tables 452/453: the device-specific parameter is byte 2 of the 6-byte
    header and byte 3 of the 8-byte one.
    """
    raw = bytes(data)
    index = 3 if ten else 2
    if len(raw) <= index:
        raise RemoteProtocolError(
            f"MODE SENSE({10 if ten else 6}) data of {len(raw)} bytes has no device-specific "
            "parameter")
    return bool(raw[index] & _WP)


# ---------------------------------------------------------------------------------------------
# Target port designators of VPD 83h (ALUA)
# ---------------------------------------------------------------------------------------------

def _port_designator(designators: list[Designator], dtype: int) -> int | None:
    for d in designators:
        if d.association == Association.TARGET_PORT and d.designator_type == dtype \
                and len(d.value) >= 4:
            return int.from_bytes(d.value[2:4], "big")
    return None


def target_port_group(designators: list[Designator]) -> int | None:
    """The target port group of the port the page came through: the Target Port Group
    designator (SPC-4 §7.8.6.7: reserved (2), group (2)), or None."""
    return _port_designator(designators, DesignatorType.TARGET_PORT_GROUP)


def relative_target_port(designators: list[Designator]) -> int | None:
    """The relative target port identifier (SPC-4 §7.8.6.6: obsolete (2), identifier (2)) of
    the port the page came through, or None."""
    return _port_designator(designators, DesignatorType.RELATIVE_TARGET_PORT)


# ---------------------------------------------------------------------------------------------
# PERSISTENT RESERVE IN
# ---------------------------------------------------------------------------------------------

# SPC-4 §6.13.2 table 168 / §6.13.3 table 169 / §6.13.5 table 178: PRGENERATION (4),
# ADDITIONAL LENGTH (4)
_PR_HEADER = struct.Struct(">II")
# SPC-4 §6.13.3.3 table 170: reservation key (8), obsolete (4), reserved, scope + type,
# obsolete (2)
_PR_RESERVATION = struct.Struct(">Q4xxBxx")    # 16 bytes
# SPC-4 §6.13.4 table 172: length (2), RLR_C + CRH + SIP_C + ATP_C + PTPL_C, TMV + ALLOW
# COMMANDS + PTPL_A, persistent reservation type mask (2), reserved (2)
_PR_CAPABILITIES = struct.Struct(">HBBH2x")    # 8 bytes
# SPC-4 §6.13.5.2 table 179: reservation key (8), reserved (4), ALL_TG_PT + R_HOLDER, scope +
# type, reserved (4), relative target port identifier (2), additional descriptor length (4)
_PR_STATUS = struct.Struct(">Q4xBB4xHI")      # 24 bytes, then a TransportID


@dataclass(frozen=True, slots=True)
class PrKeys:
    """READ KEYS: the generation and every registered key (one per registered I_T nexus)."""

    generation: int
    keys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PrReservation:
    """READ RESERVATION: the reservation, if one is held (``key`` None: none)."""

    generation: int
    key: int | None = None
    scope: int = 0
    type: int = 0


@dataclass(frozen=True, slots=True)
class PrCapabilities:
    """REPORT CAPABILITIES (SPC-4 §6.13.4): flags as sg_persist names them, and the type
    mask as the set of reservation types the LUN supports (valid only when ``tmv``)."""

    rlr_c: bool
    crh: bool
    sip_c: bool
    atp_c: bool
    ptpl_c: bool
    tmv: bool
    allow_commands: int
    ptpl_a: bool
    types: frozenset[int]


@dataclass(frozen=True, slots=True)
class PrStatusDescriptor:
    """One registered I_T nexus of READ FULL STATUS."""

    key: int
    all_tg_pt: bool
    holder: bool
    scope: int
    type: int
    relative_target_port: int
    transport_id: bytes


@dataclass(frozen=True, slots=True)
class PrFullStatus:
    generation: int
    descriptors: tuple[PrStatusDescriptor, ...]


def _pr_body(data: Buffer, what: str) -> tuple[int, bytes]:
    raw = bytes(data)
    if len(raw) < _PR_HEADER.size:
        raise RemoteProtocolError(f"PERSISTENT RESERVE IN ({what}) data of {len(raw)} bytes "
                                  f"(need 8)")
    generation, length = _PR_HEADER.unpack_from(raw)
    return generation, raw[_PR_HEADER.size:_PR_HEADER.size + length]


def parse_pr_read_keys(data: Buffer) -> PrKeys:
    """READ KEYS parameter data (SPC-4 §6.13.2); keys cut off by truncation are left out."""
    generation, body = _pr_body(data, "READ KEYS")
    keys = tuple(int.from_bytes(body[i:i + 8], "big") for i in range(0, len(body) - 7, 8))
    return PrKeys(generation, keys)


def parse_pr_read_reservation(data: Buffer) -> PrReservation:
    """READ RESERVATION parameter data (SPC-4 §6.13.3): no reservation when the additional
    length is 0 (or too short for the 16-byte descriptor)."""
    generation, body = _pr_body(data, "READ RESERVATION")
    if len(body) < _PR_RESERVATION.size:
        return PrReservation(generation)
    key, scope_type = _PR_RESERVATION.unpack_from(body)
    return PrReservation(generation, key, scope_type >> 4, scope_type & 0x0F)


# PERSISTENT RESERVATION TYPE MASK bits (SPC-4 §6.13.4 table 174): bit -> type
_TYPE_MASK = ((0x8000, 7), (0x4000, 6), (0x2000, 5), (0x0800, 3), (0x0200, 1), (0x0001, 8))


def parse_pr_report_capabilities(data: Buffer) -> PrCapabilities:
    """REPORT CAPABILITIES parameter data (SPC-4 §6.13.4); its LENGTH field must say 8."""
    raw = bytes(data)
    if len(raw) < _PR_CAPABILITIES.size:
        raise RemoteProtocolError(f"PERSISTENT RESERVE IN (REPORT CAPABILITIES) data of "
                                  f"{len(raw)} bytes (need 8)")
    length, b2, b3, mask = _PR_CAPABILITIES.unpack_from(raw)
    if length != _PR_CAPABILITIES.size:
        raise RemoteProtocolError(f"PERSISTENT RESERVE IN (REPORT CAPABILITIES) says length "
                                  f"{length} (expected 8)")
    return PrCapabilities(
        rlr_c=bool(b2 & 0x80), crh=bool(b2 & 0x10), sip_c=bool(b2 & 0x08),
        atp_c=bool(b2 & 0x04), ptpl_c=bool(b2 & 0x01), tmv=bool(b3 & 0x80),
        allow_commands=(b3 >> 4) & 0x07, ptpl_a=bool(b3 & 0x01),
        types=frozenset(t for bit, t in _TYPE_MASK if mask & bit))


def parse_pr_read_full_status(data: Buffer) -> PrFullStatus:
    """READ FULL STATUS parameter data (SPC-4 §6.13.5): every complete descriptor."""
    generation, body = _pr_body(data, "READ FULL STATUS")
    out = []
    offset = 0
    while offset + _PR_STATUS.size <= len(body):
        key, flags, scope_type, rtp, tid_len = _PR_STATUS.unpack_from(body, offset)
        start = offset + _PR_STATUS.size
        tid = body[start:start + tid_len]
        if len(tid) < tid_len:
            break
        out.append(PrStatusDescriptor(key, bool(flags & 0x02), bool(flags & 0x01),
                                      scope_type >> 4, scope_type & 0x0F, rtp, tid))
        offset = start + tid_len
    return PrFullStatus(generation, tuple(out))


_TPROTO_ISCSI = 0x5


def transport_id_text(tid: bytes) -> str | None:
    """The initiator of an iSCSI TransportID (SPC-4 §7.6.4.6): ``iqn...`` or
    ``iqn...,i,0x<isid>``; None for another protocol or a malformed one."""
    if len(tid) < 4 or tid[0] & 0x0F != _TPROTO_ISCSI:
        return None
    length = int.from_bytes(tid[2:4], "big")
    name = tid[4:4 + length].split(b"\0", 1)[0]
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# REPORT TARGET PORT GROUPS
# ---------------------------------------------------------------------------------------------

class AluaState(enum.IntEnum):
    """Asymmetric access states (SPC-4 §6.35 table 292)."""

    ACTIVE_OPTIMIZED = 0x0
    ACTIVE_NON_OPTIMIZED = 0x1
    STANDBY = 0x2
    UNAVAILABLE = 0x3
    LBA_DEPENDENT = 0x4
    OFFLINE = 0xE
    TRANSITIONING = 0xF

    @property
    def label(self) -> str:
        """``active/optimized``, ``active/non-optimized``, ``standby``, ... (Linux's names)."""
        return _ALUA_LABELS[self]


_ALUA_LABELS = {
    AluaState.ACTIVE_OPTIMIZED: "active/optimized",
    AluaState.ACTIVE_NON_OPTIMIZED: "active/non-optimized",
    AluaState.STANDBY: "standby",
    AluaState.UNAVAILABLE: "unavailable",
    AluaState.LBA_DEPENDENT: "lba-dependent",
    AluaState.OFFLINE: "offline",
    AluaState.TRANSITIONING: "transitioning",
}

# SPC-4 §6.35 table 291 (after the 4-byte RETURN DATA LENGTH, or the 8-byte extended header):
# PREF + asymmetric access state, T_SUP O_SUP LBD_SUP U_SUP S_SUP AN_SUP AO_SUP, target port
# group (2), reserved, status code, vendor specific, target port count; then 4 bytes per
# port: obsolete (2), relative target port identifier (2)
_TPG_DESCRIPTOR = struct.Struct(">BBHxBBB")    # 8 bytes
_RTPG_EXTENDED = 0x10       # FORMAT TYPE 001b in byte 4 bits 6-4


@dataclass(frozen=True, slots=True)
class TargetPortGroup:
    """One target port group of REPORT TARGET PORT GROUPS. ``state`` is an ``AluaState``
    (or the raw int for a reserved value); ``supported`` the states the group may take."""

    group: int
    state: AluaState | int
    preferred: bool
    supported: frozenset[int]
    status_code: int
    ports: tuple[int, ...]

    @property
    def state_label(self) -> str:
        return self.state.label if isinstance(self.state, AluaState) else \
            f"reserved state {int(self.state):#x}"


# support bits of byte 1 -> the state each allows
_SUPPORT_BITS = ((0x80, AluaState.TRANSITIONING), (0x40, AluaState.OFFLINE),
                 (0x10, AluaState.LBA_DEPENDENT), (0x08, AluaState.UNAVAILABLE),
                 (0x04, AluaState.STANDBY), (0x02, AluaState.ACTIVE_NON_OPTIMIZED),
                 (0x01, AluaState.ACTIVE_OPTIMIZED))


def parse_report_target_port_groups(data: Buffer) -> list[TargetPortGroup]:
    """REPORT TARGET PORT GROUPS parameter data (SPC-4 §6.35), in the length-only or the
    extended header format. A descriptor cut off by truncation ends the list."""
    raw = bytes(data)
    if len(raw) < 4:
        raise RemoteProtocolError(f"REPORT TARGET PORT GROUPS data of {len(raw)} bytes "
                                  f"(need 4)")
    length = int.from_bytes(raw[:4], "big")
    header = 8 if len(raw) >= 8 and (raw[4] & 0x70) == _RTPG_EXTENDED else 4
    body = raw[header:4 + length]
    groups = []
    offset = 0
    while offset + _TPG_DESCRIPTOR.size <= len(body):
        b0, b1, group, status, _vendor, count = _TPG_DESCRIPTOR.unpack_from(body, offset)
        start = offset + _TPG_DESCRIPTOR.size
        ports_raw = body[start:start + 4 * count]
        if len(ports_raw) < 4 * count:
            break
        try:
            state: AluaState | int = AluaState(b0 & 0x0F)
        except ValueError:
            state = b0 & 0x0F
        groups.append(TargetPortGroup(
            group=group, state=state, preferred=bool(b0 & 0x80),
            supported=frozenset(s for bit, s in _SUPPORT_BITS if b1 & bit),
            status_code=status,
            ports=tuple(int.from_bytes(ports_raw[i + 2:i + 4], "big")
                        for i in range(0, len(ports_raw), 4))))
        offset = start + 4 * count
    return groups
