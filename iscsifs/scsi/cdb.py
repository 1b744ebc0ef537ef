"""SCSI command descriptor block (CDB) builders.

Owns: the byte layout of every CDB iscsifs sends (SPC-4 / SBC-3), one ``struct.Struct`` per
layout, and the choice between the 10- and 16-byte READ/WRITE/SYNCHRONIZE CACHE forms.
Knows nothing of iSCSI (no LUN field, no task attributes, no data direction bookkeeping) and
does no I/O. Every builder validates its arguments and raises ``LocalProtocolError`` for a
value that does not fit its field. The CONTROL byte is always 0 (no NACA, no linking).
"""

from __future__ import annotations

import enum
import struct

from iscsifs.errors import LocalProtocolError

__all__ = [
    "Opcode", "VpdPage", "READ_CAPACITY_16_SERVICE_ACTION", "READ_CAPACITY_16_DATA_LEN",
    "MAX_BLOCKS_10", "MAX_BLOCKS_16", "MAX_LBA_10", "MAX_LBA_16",
    "test_unit_ready", "inquiry", "read_capacity10", "read_capacity16", "report_luns",
    "read10", "write10", "read16", "write16", "read", "write", "fits_cdb10",
    "max_blocks_per_cdb", "synchronize_cache10", "synchronize_cache16", "synchronize_cache",
    "mode_sense6", "mode_sense10", "UNMAP_NO_LIMIT", "MAX_UNMAP_DESCRIPTORS", "unmap",
    "unmap_parameter_list", "write_same16",
    "PrInAction", "PrOutAction", "PrType", "PR_TYPE_NAMES", "persistent_reserve_in",
    "persistent_reserve_out", "pr_out_parameter_list", "REPORT_TARGET_PORT_GROUPS_SA",
    "report_target_port_groups",
]


class Opcode(enum.IntEnum):
    """Operation codes used by iscsifs (SPC-4 Annex D.3.1 / SBC-3 §5.1 table 13)."""

    TEST_UNIT_READY = 0x00
    INQUIRY = 0x12
    MODE_SENSE_6 = 0x1A
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    SYNCHRONIZE_CACHE_10 = 0x35
    UNMAP = 0x42
    PERSISTENT_RESERVE_IN = 0x5E
    PERSISTENT_RESERVE_OUT = 0x5F
    MODE_SENSE_10 = 0x5A
    READ_16 = 0x88
    WRITE_16 = 0x8A
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0
    MAINTENANCE_IN = 0xA3


class VpdPage(enum.IntEnum):
    """Vital product data page codes (SPC-4 §7.8.1 table 588, SBC-3 §6.5.1 table 182)."""

    SUPPORTED_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83
    BLOCK_LIMITS = 0xB0
    BLOCK_DEVICE_CHARACTERISTICS = 0xB1
    LOGICAL_BLOCK_PROVISIONING = 0xB2


READ_CAPACITY_16_SERVICE_ACTION = 0x10   # SBC-3 §5.16: SERVICE ACTION IN(16) / 10h
READ_CAPACITY_16_DATA_LEN = 32           # SBC-3 §5.16.2 table 65: parameter data length

MAX_LBA_10 = 0xFFFF_FFFF
MAX_BLOCKS_10 = 0xFFFF
MAX_LBA_16 = 0xFFFF_FFFF_FFFF_FFFF
MAX_BLOCKS_16 = 0xFFFF_FFFF

# CDB byte 1 flag bits (SBC-3 §5.11 READ(10) table 51, §5.32 WRITE(10), §5.22 SYNC CACHE(10))
_DPO = 0x10
_FUA = 0x08
_IMMED = 0x02
# SPC-4 §6.6.1 INQUIRY table 142
_EVPD = 0x01
# SBC-3 r35 §5.45 WRITE SAME(16): byte 1 bit 3 UNMAP (bit 4 ANCHOR, bit 0 NDOB: never set)
_WS_UNMAP = 0x08

# Block Limits VPD page: "no limit" in MAXIMUM UNMAP LBA COUNT / BLOCK DESCRIPTOR COUNT
UNMAP_NO_LIMIT = 0xFFFF_FFFF
# The most descriptors one UNMAP parameter list can carry (its 16-bit length fields)
MAX_UNMAP_DESCRIPTORS = (0xFFFF - 8) // 16
# SPC-4 §6.11.1 MODE SENSE(6) table 164 / §6.12 MODE SENSE(10) table 172
_DBD = 0x08
_LLBAA = 0x10

# ---------------------------------------------------------------------------------------------
# Layouts. ``x`` marks reserved/obsolete bytes that are always sent as zero.
# ---------------------------------------------------------------------------------------------

# TEST UNIT READY, SPC-4 §6.47 table 300: opcode, 4 reserved, control
_TEST_UNIT_READY = struct.Struct(">B4xB")
# INQUIRY, SPC-4 §6.6.1 table 142: opcode, EVPD (bit 0), page code, allocation length (2),
# control
_INQUIRY = struct.Struct(">BBBHB")
# READ CAPACITY(10), SBC-3 §5.15.1 table 62: opcode, reserved, LBA (obsolete, 4), reserved (2),
# PMI (bit 0, obsolete), control
_READ_CAPACITY_10 = struct.Struct(">Bx4x2xBB")
# SERVICE ACTION IN(16) / READ CAPACITY(16), SBC-3 §5.16.1 table 64: opcode, service action
# (bits 4-0), LBA (obsolete, 8), allocation length (4), PMI (bit 0, obsolete), control
_READ_CAPACITY_16 = struct.Struct(">BB8xIBB")
# REPORT LUNS, SPC-4 §6.33 table 284: opcode, reserved, select report, reserved (3),
# allocation length (4), reserved, control
_REPORT_LUNS = struct.Struct(">BxB3xIxB")
# READ(10)/WRITE(10), SBC-3 §5.11 table 51 / §5.32 table 107, and SYNCHRONIZE CACHE(10),
# SBC-3 §5.22 table 84: opcode, flags, LBA (4), group number (bits 4-0),
# transfer length / number of logical blocks (2), control
_CDB10 = struct.Struct(">BBIBHB")
# READ(16)/WRITE(16), SBC-3 §5.13 table 56 / §5.34 table 111, and SYNCHRONIZE CACHE(16),
# SBC-3 §5.23 table 85: opcode, flags, LBA (8), transfer length / number of logical blocks (4),
# group number (bits 4-0), control
_CDB16 = struct.Struct(">BBQIBB")
# MODE SENSE(6), SPC-4 §6.11.1 table 164: opcode, DBD (bit 3), PC (bits 7-6) + page code
# (bits 5-0), subpage code, allocation length (1), control
_MODE_SENSE_6 = struct.Struct(">BBBBBB")
# MODE SENSE(10), SPC-4 §6.12 table 172: opcode, LLBAA (bit 4) + DBD (bit 3), PC + page code,
# subpage code, reserved (3), allocation length (2), control
_MODE_SENSE_10 = struct.Struct(">BBBB3xHB")
# UNMAP, SBC-3 r35 §5.28.1: opcode, ANCHOR (bit 0), reserved (4), group number
# (bits 4-0), parameter list length (2), control
_UNMAP = struct.Struct(">BB4xBHB")
# UNMAP parameter list header, §5.28.2: UNMAP data length (2), UNMAP block descriptor data
# length (2), reserved (4); then block descriptors (§5.28.3): LBA (8), number of blocks (4),
# reserved (4)
_UNMAP_HEADER = struct.Struct(">HH4x")
_UNMAP_DESCRIPTOR = struct.Struct(">QI4x")
# PERSISTENT RESERVE IN, SPC-4 §6.13.1 table 166: opcode, service action (bits 4-0),
# reserved (5), allocation length (2), control
_PR_IN = struct.Struct(">BB5xHB")
# PERSISTENT RESERVE OUT, SPC-4 §6.14.1 table 180: opcode, service action (bits 4-0),
# scope (bits 7-4) + type (bits 3-0), reserved (2), parameter list length (4), control
_PR_OUT = struct.Struct(">BBB2xIB")
# PERSISTENT RESERVE OUT basic parameter list, SPC-4 §6.14.3 table 185: reservation key (8),
# service action reservation key (8), obsolete (4), SPEC_I_PT (bit 3) + ALL_TG_PT (bit 2) +
# APTPL (bit 0), reserved, obsolete (2)
_PR_OUT_PARAMETERS = struct.Struct(">QQ4xBx2x")    # 24 bytes
# MAINTENANCE IN / REPORT TARGET PORT GROUPS, SPC-4 §6.35 table 290: opcode, parameter data
# format (bits 7-5) + service action (bits 4-0), reserved (4), allocation length (4),
# reserved, control
_REPORT_TPGS = struct.Struct(">BB4xIxB")


def _check(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LocalProtocolError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise LocalProtocolError(f"{name} {value} out of range [{low}, {high:#x}]")
    return value


def _rw_flags(dpo: bool, fua: bool) -> int:
    return (_DPO if dpo else 0) | (_FUA if fua else 0)


# ---------------------------------------------------------------------------------------------
# SPC commands
# ---------------------------------------------------------------------------------------------

def test_unit_ready() -> bytes:
    """TEST UNIT READY (SPC-4 §6.47): no data."""
    return _TEST_UNIT_READY.pack(Opcode.TEST_UNIT_READY, 0)


def inquiry(evpd: bool = False, page: int = 0, alloc: int = 255) -> bytes:
    """INQUIRY (SPC-4 §6.6): standard data, or the VPD ``page`` when ``evpd``.

    The default allocation length of 255 keeps the high byte 0, which SPC-2 devices (that
    had a one-byte allocation length at byte 4) also understand.
    """
    _check("page", page, 0, 0xFF)
    _check("alloc", alloc, 0, 0xFFFF)
    if not evpd and page != 0:
        # SPC-4 §6.6.1: EVPD=0 with a non-zero page code is an ILLEGAL REQUEST.
        raise LocalProtocolError("INQUIRY page code needs evpd=True")
    return _INQUIRY.pack(Opcode.INQUIRY, _EVPD if evpd else 0, page, alloc, 0)


def report_luns(alloc: int = 4096, select_report: int = 0) -> bytes:
    """REPORT LUNS (SPC-4 §6.33). ``alloc`` must be at least 16 (§6.33: smaller may fail)."""
    _check("alloc", alloc, 16, 0xFFFF_FFFF)
    _check("select_report", select_report, 0, 0xFF)
    return _REPORT_LUNS.pack(Opcode.REPORT_LUNS, select_report, alloc, 0)


def mode_sense6(page: int = 0x3F, subpage: int = 0, *, pc: int = 0, dbd: bool = False,
                alloc: int = 192) -> bytes:
    """MODE SENSE(6) (SPC-4 §6.11). ``pc``: 0 current, 1 changeable, 2 default, 3 saved."""
    _check("page", page, 0, 0x3F)
    _check("subpage", subpage, 0, 0xFF)
    _check("pc", pc, 0, 3)
    _check("alloc", alloc, 0, 0xFF)
    return _MODE_SENSE_6.pack(Opcode.MODE_SENSE_6, _DBD if dbd else 0, (pc << 6) | page,
                              subpage, alloc, 0)


def mode_sense10(page: int = 0x3F, subpage: int = 0, *, pc: int = 0, dbd: bool = False,
                 llbaa: bool = False, alloc: int = 512) -> bytes:
    """MODE SENSE(10) (SPC-4 §6.12)."""
    _check("page", page, 0, 0x3F)
    _check("subpage", subpage, 0, 0xFF)
    _check("pc", pc, 0, 3)
    _check("alloc", alloc, 0, 0xFFFF)
    flags = (_DBD if dbd else 0) | (_LLBAA if llbaa else 0)
    return _MODE_SENSE_10.pack(Opcode.MODE_SENSE_10, flags, (pc << 6) | page, subpage, alloc, 0)


# ---------------------------------------------------------------------------------------------
# SBC commands
# ---------------------------------------------------------------------------------------------

def read_capacity10() -> bytes:
    """READ CAPACITY(10) (SBC-3 §5.15): 8 bytes of parameter data."""
    return _READ_CAPACITY_10.pack(Opcode.READ_CAPACITY_10, 0, 0)


def read_capacity16(alloc: int = READ_CAPACITY_16_DATA_LEN) -> bytes:
    """READ CAPACITY(16) (SBC-3 §5.16): SERVICE ACTION IN(16) with service action 10h."""
    _check("alloc", alloc, 0, 0xFFFF_FFFF)
    return _READ_CAPACITY_16.pack(Opcode.SERVICE_ACTION_IN_16, READ_CAPACITY_16_SERVICE_ACTION,
                                  alloc, 0, 0)


def _cdb10(opcode: int, flags: int, lba: int, blocks: int) -> bytes:
    _check("lba", lba, 0, MAX_LBA_10)
    _check("blocks", blocks, 0, MAX_BLOCKS_10)
    return _CDB10.pack(opcode, flags, lba, 0, blocks, 0)


def _cdb16(opcode: int, flags: int, lba: int, blocks: int) -> bytes:
    _check("lba", lba, 0, MAX_LBA_16)
    _check("blocks", blocks, 0, MAX_BLOCKS_16)
    if lba + blocks > MAX_LBA_16 + 1:
        raise LocalProtocolError(f"lba {lba} + blocks {blocks} runs past the 64-bit LBA space")
    return _CDB16.pack(opcode, flags, lba, blocks, 0, 0)


def read10(lba: int, blocks: int, *, fua: bool = False, dpo: bool = False) -> bytes:
    """READ(10) (SBC-3 §5.11). A transfer length of 0 transfers nothing (not 65536)."""
    return _cdb10(Opcode.READ_10, _rw_flags(dpo, fua), lba, blocks)


def write10(lba: int, blocks: int, *, fua: bool = False, dpo: bool = False) -> bytes:
    """WRITE(10) (SBC-3 §5.32)."""
    return _cdb10(Opcode.WRITE_10, _rw_flags(dpo, fua), lba, blocks)


def read16(lba: int, blocks: int, *, fua: bool = False, dpo: bool = False) -> bytes:
    """READ(16) (SBC-3 §5.13)."""
    return _cdb16(Opcode.READ_16, _rw_flags(dpo, fua), lba, blocks)


def write16(lba: int, blocks: int, *, fua: bool = False, dpo: bool = False) -> bytes:
    """WRITE(16) (SBC-3 §5.34)."""
    return _cdb16(Opcode.WRITE_16, _rw_flags(dpo, fua), lba, blocks)


def fits_cdb10(lba: int, blocks: int) -> bool:
    """Whether a 10-byte CDB can address ``blocks`` blocks starting at ``lba``.

    Stricter than "lba < 2**32": every block of the range must have a 32-bit address, so a
    transfer never straddles the 2**32 boundary with a 10-byte CDB (as Linux sd does).
    """
    return (0 <= blocks <= MAX_BLOCKS_10 and 0 <= lba <= MAX_LBA_10
            and lba + blocks <= MAX_LBA_10 + 1)


def max_blocks_per_cdb(lba: int) -> int:
    """The most blocks one :func:`read`/:func:`write` CDB can carry starting at ``lba``."""
    _check("lba", lba, 0, MAX_LBA_16)
    return min(MAX_BLOCKS_16, MAX_LBA_16 + 1 - lba)


def read(lba: int, blocks: int, *, fua: bool = False, dpo: bool = False,
         use_16: bool = False) -> bytes:
    """READ(10) when it can address the whole range, else READ(16) (or always when use_16)."""
    if not use_16 and fits_cdb10(lba, blocks):
        return read10(lba, blocks, fua=fua, dpo=dpo)
    return read16(lba, blocks, fua=fua, dpo=dpo)


def write(lba: int, blocks: int, *, fua: bool = False, dpo: bool = False,
          use_16: bool = False) -> bytes:
    """WRITE(10) when it can address the whole range, else WRITE(16) (or always when use_16)."""
    if not use_16 and fits_cdb10(lba, blocks):
        return write10(lba, blocks, fua=fua, dpo=dpo)
    return write16(lba, blocks, fua=fua, dpo=dpo)


def synchronize_cache10(lba: int = 0, blocks: int = 0, *, immed: bool = False) -> bytes:
    """SYNCHRONIZE CACHE(10) (SBC-3 §5.22). ``blocks`` 0 = from ``lba`` to the end."""
    return _cdb10(Opcode.SYNCHRONIZE_CACHE_10, _IMMED if immed else 0, lba, blocks)


def synchronize_cache16(lba: int = 0, blocks: int = 0, *, immed: bool = False) -> bytes:
    """SYNCHRONIZE CACHE(16) (SBC-3 §5.23). ``blocks`` 0 = from ``lba`` to the end."""
    return _cdb16(Opcode.SYNCHRONIZE_CACHE_16, _IMMED if immed else 0, lba, blocks)


def synchronize_cache(lba: int = 0, blocks: int = 0, *, immed: bool = False,
                      use_16: bool = False) -> bytes:
    """SYNCHRONIZE CACHE(10) when the range fits, else (16). Defaults flush the whole medium."""
    _check("lba", lba, 0, MAX_LBA_16)
    _check("blocks", blocks, 0, MAX_BLOCKS_16)
    fits = lba <= MAX_LBA_10 and blocks <= MAX_BLOCKS_10 and (
        blocks == 0 or lba + blocks <= MAX_LBA_10 + 1)
    if fits and not use_16:
        return synchronize_cache10(lba, blocks, immed=immed)
    return synchronize_cache16(lba, blocks, immed=immed)


def unmap(parameter_list_length: int) -> bytes:
    """UNMAP (SBC-3 r35 §5.28, SBC-4 §5.31): the parameter list (see
    :func:`unmap_parameter_list`) goes out as the command's data. ANCHOR is never set."""
    _check("parameter_list_length", parameter_list_length, 0, 0xFFFF)
    return _UNMAP.pack(Opcode.UNMAP, 0, 0, parameter_list_length, 0)


def unmap_parameter_list(extents: list[tuple[int, int]]) -> bytes:
    """The UNMAP parameter list (SBC-3 r35 §5.28.2): one block descriptor per
    ``(lba, blocks)`` extent, at most :data:`MAX_UNMAP_DESCRIPTORS` of them."""
    if not 1 <= len(extents) <= MAX_UNMAP_DESCRIPTORS:
        raise LocalProtocolError(f"{len(extents)} UNMAP block descriptors (1 to "
                                 f"{MAX_UNMAP_DESCRIPTORS})")
    out = bytearray()
    for lba, blocks in extents:
        _check("lba", lba, 0, MAX_LBA_16)
        _check("blocks", blocks, 1, MAX_BLOCKS_16)
        if lba + blocks > MAX_LBA_16 + 1:
            raise LocalProtocolError(f"lba {lba} + blocks {blocks} runs past the 64-bit LBA space")
        out += _UNMAP_DESCRIPTOR.pack(lba, blocks)
    return _UNMAP_HEADER.pack(len(out) + 6, len(out)) + bytes(out)


def write_same16(lba: int, blocks: int, *, unmap: bool = False) -> bytes:
    """WRITE SAME(16) (SBC-3 r35 §5.45, SBC-4 §5.50): one block of data, written (or, with
    ``unmap``, unmapped where the device can) over ``blocks`` blocks from ``lba``. ``blocks``
    must not be 0: for WRITE SAME, 0 means "to the end of the medium"."""
    _check("blocks", blocks, 1, MAX_BLOCKS_16)
    return _cdb16(Opcode.WRITE_SAME_16, _WS_UNMAP if unmap else 0, lba, blocks)


# ---------------------------------------------------------------------------------------------
# Persistent reservations (SPC-4 §5.13, §6.13, §6.14)
# ---------------------------------------------------------------------------------------------

class PrInAction(enum.IntEnum):
    """PERSISTENT RESERVE IN service actions (SPC-4 §6.13.1 table 167)."""

    READ_KEYS = 0x00
    READ_RESERVATION = 0x01
    REPORT_CAPABILITIES = 0x02
    READ_FULL_STATUS = 0x03


class PrOutAction(enum.IntEnum):
    """PERSISTENT RESERVE OUT service actions (SPC-4 §6.14.2 table 181)."""

    REGISTER = 0x00
    RESERVE = 0x01
    RELEASE = 0x02
    CLEAR = 0x03
    PREEMPT = 0x04
    PREEMPT_AND_ABORT = 0x05
    REGISTER_AND_IGNORE_EXISTING_KEY = 0x06
    REGISTER_AND_MOVE = 0x07
    REPLACE_LOST_RESERVATION = 0x08


class PrType(enum.IntEnum):
    """Persistent reservation types (SPC-4 §6.13.3.4 table 175)."""

    WRITE_EXCLUSIVE = 0x1
    EXCLUSIVE_ACCESS = 0x3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8


# The names sg_persist prints for the TYPE field (0..15; the gaps are obsolete codes)
PR_TYPE_NAMES = (
    "obsolete [0]", "Write Exclusive", "obsolete [2]", "Exclusive Access", "obsolete [4]",
    "Write Exclusive, registrants only", "Exclusive Access, registrants only",
    "Write Exclusive, all registrants", "Exclusive Access, all registrants",
    "obsolete [9]", "obsolete [0xa]", "obsolete [0xb]", "obsolete [0xc]", "obsolete [0xd]",
    "obsolete [0xe]", "obsolete [0xf]",
)

_SPEC_I_PT = 0x08
_ALL_TG_PT = 0x04
_APTPL = 0x01
MAX_KEY = 0xFFFF_FFFF_FFFF_FFFF


def persistent_reserve_in(service_action: int, alloc: int = 8192) -> bytes:
    """PERSISTENT RESERVE IN (SPC-4 §6.13): READ KEYS, READ RESERVATION, REPORT CAPABILITIES
    or READ FULL STATUS (``PrInAction``)."""
    _check("service_action", service_action, 0, 0x1F)
    _check("alloc", alloc, 0, 0xFFFF)
    return _PR_IN.pack(Opcode.PERSISTENT_RESERVE_IN, service_action, alloc, 0)


def persistent_reserve_out(service_action: int, pr_type: int = 0, *, scope: int = 0,
                           parameter_list_length: int = _PR_OUT_PARAMETERS.size) -> bytes:
    """PERSISTENT RESERVE OUT (SPC-4 §6.14) with the basic parameter list (24 bytes, see
    :func:`pr_out_parameter_list`) as its data. ``scope`` 0 is LU_SCOPE, the only one SPC-4
    keeps."""
    _check("service_action", service_action, 0, 0x1F)
    _check("pr_type", pr_type, 0, 0xF)
    _check("scope", scope, 0, 0xF)
    _check("parameter_list_length", parameter_list_length, 0, 0xFFFF_FFFF)
    return _PR_OUT.pack(Opcode.PERSISTENT_RESERVE_OUT, service_action, (scope << 4) | pr_type,
                        parameter_list_length, 0)


def pr_out_parameter_list(reservation_key: int = 0, service_action_key: int = 0, *,
                          aptpl: bool = False, all_tg_pt: bool = False) -> bytes:
    """The basic PERSISTENT RESERVE OUT parameter list (SPC-4 §6.14.3), without TransportIDs
    (SPEC_I_PT is never set)."""
    _check("reservation_key", reservation_key, 0, MAX_KEY)
    _check("service_action_key", service_action_key, 0, MAX_KEY)
    flags = (_ALL_TG_PT if all_tg_pt else 0) | (_APTPL if aptpl else 0)
    return _PR_OUT_PARAMETERS.pack(reservation_key, service_action_key, flags)


# ---------------------------------------------------------------------------------------------
# Asymmetric logical unit access (SPC-4 §5.16)
# ---------------------------------------------------------------------------------------------

REPORT_TARGET_PORT_GROUPS_SA = 0x0A      # SPC-4 §6.35: MAINTENANCE IN service action 0Ah


def report_target_port_groups(alloc: int = 1024, *, extended: bool = False) -> bytes:
    """REPORT TARGET PORT GROUPS (SPC-4 §6.35): MAINTENANCE IN with service action 0Ah.
    ``extended`` asks for the extended header (parameter data format 001b), which adds the
    implicit transition time."""
    _check("alloc", alloc, 4, 0xFFFF_FFFF)
    return _REPORT_TPGS.pack(Opcode.MAINTENANCE_IN,
                             (0x20 if extended else 0) | REPORT_TARGET_PORT_GROUPS_SA, alloc, 0)
