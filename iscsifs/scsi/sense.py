"""SCSI status, sense data and the error they make.

Owns: the SCSI status byte values (SAM-5 §5.3), sense data parsing in fixed (70h/71h) and
descriptor (72h/73h) format (SPC-4 §4.5), the names of sense keys and of the common additional
sense codes (SPC-4 Annex D.2), and ``ScsiError``. Knows nothing of iSCSI (the SenseLength
prefix of the data segment is stripped by ``core.pdu``) nor of errno (the FUSE layer maps sense
keys to errno in one place).

Parsing follows the robustness rules of Linux ``scsi_normalize_sense``: what is present is
used, the ADDITIONAL SENSE LENGTH limits what is looked at, and missing fields read as zero.
Only data that cannot be sense data at all raises ``RemoteProtocolError``; nothing here raises
``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from iscsifs.errors import IscsiError, RemoteProtocolError

__all__ = [
    "ScsiStatus", "SenseKey", "Sense", "ScsiError", "parse_sense", "asc_name", "check_status",
    "is_unit_attention", "is_capacity_changed", "is_luns_changed", "is_data_protect",
    "is_reservation_conflict", "is_alua_state_changed", "alua_not_ready",
    "RESPONSE_FIXED_CURRENT", "RESPONSE_FIXED_DEFERRED",
    "RESPONSE_DESCRIPTOR_CURRENT", "RESPONSE_DESCRIPTOR_DEFERRED",
]


class ScsiStatus(enum.IntEnum):
    """SCSI status codes (SAM-5 §5.3.1 table 38)."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40

    @property
    def label(self) -> str:
        """The name as the standard spells it: ``CHECK CONDITION``."""
        return self.name.replace("_", " ")


class SenseKey(enum.IntEnum):
    """Sense keys (SPC-4 §4.5.6 table 44). All 16 values exist, so any nibble converts."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    RESERVED_C = 0xC        # was EQUAL (obsolete since SPC-3)
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    COMPLETED = 0xF         # SPC-5

    @property
    def label(self) -> str:
        """The name as the standard spells it: ``MEDIUM ERROR``."""
        return "RESERVED" if self is SenseKey.RESERVED_C else self.name.replace("_", " ")


RESPONSE_FIXED_CURRENT = 0x70
RESPONSE_FIXED_DEFERRED = 0x71
RESPONSE_DESCRIPTOR_CURRENT = 0x72
RESPONSE_DESCRIPTOR_DEFERRED = 0x73
_RESPONSE_VENDOR = 0x7F

# Fixed format, SPC-4 §4.5.3 table 41: response code, obsolete, flags + sense key,
# information (4), additional sense length, command-specific information (4), ASC, ASCQ,
# FRU code, sense key specific (3)
_FIXED = struct.Struct(">BxBIBIBBB3s")   # 18 bytes
# Descriptor format, SPC-4 §4.5.2 table 27: response code, sense key, ASC, ASCQ,
# SDAT_OVFL (byte 4 bit 7), reserved (2), additional sense length
_DESCRIPTOR = struct.Struct(">BBBBB2xB")  # 8 bytes
_U64 = struct.Struct(">Q")

# Sense data descriptor types (SPC-4 §4.5.2.1 table 28)
_DESC_INFORMATION = 0x00
_DESC_COMMAND_SPECIFIC = 0x01
_DESC_SENSE_KEY_SPECIFIC = 0x02
_DESC_FRU = 0x03
_DESC_STREAM = 0x04
_DESC_BLOCK = 0x05

_SKSV = 0x80


@dataclass(frozen=True, slots=True)
class Sense:
    """Parsed sense data. Fields a short or descriptor-less answer lacks read as 0/None/False.

    ``information`` is present (not None) whenever the data carries the field; ``valid`` says
    whether the device claims it is meaningful (VALID bit). ``sense_key_specific`` holds the 3
    SKS bytes only when SKSV is set.
    """

    response_code: int
    key: SenseKey
    asc: int = 0
    ascq: int = 0
    information: int | None = None
    valid: bool = False
    deferred: bool = False
    descriptor_format: bool = False
    filemark: bool = False
    eom: bool = False
    ili: bool = False
    sdat_ovfl: bool = False
    command_specific: int | None = None
    fru: int = 0
    sense_key_specific: bytes | None = None
    descriptors: tuple[tuple[int, bytes], ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def asc_ascq(self) -> tuple[int, int]:
        return (self.asc, self.ascq)

    @property
    def description(self) -> str:
        """The name of the ASC/ASCQ pair (:func:`asc_name`)."""
        return asc_name(self.asc, self.ascq)

    @property
    def field_pointer(self) -> tuple[bool, int, int | None] | None:
        """For ILLEGAL REQUEST with SKSV: (in_cdb, byte offset, bit or None) (SPC-4 §4.5.2.4.2)."""
        sks = self.sense_key_specific
        if sks is None or self.key is not SenseKey.ILLEGAL_REQUEST:
            return None
        in_cdb = bool(sks[0] & 0x40)
        bit = sks[0] & 0x07 if sks[0] & 0x08 else None
        return (in_cdb, (sks[1] << 8) | sks[2], bit)

    @property
    def progress(self) -> float | None:
        """Progress indication 0.0-1.0 for NOT READY / NO SENSE with SKSV (SPC-4 §4.5.2.4.4)."""
        sks = self.sense_key_specific
        if sks is None or self.key not in (SenseKey.NOT_READY, SenseKey.NO_SENSE):
            return None
        return ((sks[1] << 8) | sks[2]) / 65536

    def __str__(self) -> str:
        text = f"{self.key.label}: {self.description} ({self.asc:02X}/{self.ascq:02X})"
        return text + " [deferred]" if self.deferred else text


def parse_sense(data: bytes | bytearray | memoryview) -> Sense:
    """Parse sense data in fixed or descriptor format (SPC-4 §4.5).

    Truncated data or a lying ADDITIONAL SENSE LENGTH gives a ``Sense`` of what is there.
    Empty data, an unknown response code, or too little to hold the sense key raises
    ``RemoteProtocolError``.
    """
    raw = bytes(data)
    if not raw:
        raise RemoteProtocolError("empty sense data")
    code = raw[0] & 0x7F
    if code in (RESPONSE_FIXED_CURRENT, RESPONSE_FIXED_DEFERRED):
        return _parse_fixed(raw, code)
    if code in (RESPONSE_DESCRIPTOR_CURRENT, RESPONSE_DESCRIPTOR_DEFERRED):
        return _parse_descriptor(raw, code)
    if code == _RESPONSE_VENDOR:
        # Vendor-specific format: nothing standard to read but the fact that it failed.
        return Sense(response_code=code, key=SenseKey.VENDOR_SPECIFIC, raw=raw)
    raise RemoteProtocolError(f"sense data with unknown response code {raw[0]:#04x}")


def _parse_fixed(raw: bytes, code: int) -> Sense:
    if len(raw) < 3:
        raise RemoteProtocolError(f"fixed format sense data of {len(raw)} bytes has no sense key")
    if len(raw) >= 8:
        # SPC-4 §4.5.3: the additional sense length bounds the rest (n - 7).
        raw = raw[:8 + raw[7]]
    padded = raw.ljust(_FIXED.size, b"\0")[:_FIXED.size]
    (first, flags, information, _add_len, command_specific, asc, ascq, fru,
     sks) = _FIXED.unpack(padded)
    present = len(raw)
    return Sense(
        response_code=code,
        key=SenseKey(flags & 0x0F),
        asc=asc if present > 12 else 0,
        ascq=ascq if present > 13 else 0,
        information=information if present >= 7 else None,
        valid=bool(first & 0x80) and present >= 7,
        deferred=code == RESPONSE_FIXED_DEFERRED,
        descriptor_format=False,
        filemark=bool(flags & 0x80),
        eom=bool(flags & 0x40),
        ili=bool(flags & 0x20),
        sdat_ovfl=bool(flags & 0x10),
        command_specific=command_specific if present >= 12 else None,
        fru=fru if present > 14 else 0,
        sense_key_specific=sks if present >= 18 and sks[0] & _SKSV else None,
        raw=raw,
    )


def _parse_descriptor(raw: bytes, code: int) -> Sense:
    if len(raw) < 2:
        raise RemoteProtocolError("descriptor format sense data of 1 byte has no sense key")
    if len(raw) >= 8:
        raw = raw[:8 + raw[7]]
    padded = raw.ljust(_DESCRIPTOR.size, b"\0")[:_DESCRIPTOR.size]
    _first, key, asc, ascq, byte4, _add_len = _DESCRIPTOR.unpack(padded)
    present = len(raw)

    descriptors: list[tuple[int, bytes]] = []
    information = command_specific = None
    valid = filemark = eom = ili = False
    fru = 0
    sks: bytes | None = None
    offset = 8
    while offset + 2 <= len(raw):
        dtype, dlen = raw[offset], raw[offset + 1]
        body = raw[offset + 2:offset + 2 + dlen]
        if len(body) < dlen:
            break   # truncated descriptor: keep what was complete
        descriptors.append((dtype, body))
        offset += 2 + dlen
        if dtype in (_DESC_INFORMATION, _DESC_COMMAND_SPECIFIC) and len(body) >= 10:
            # SPC-4 §4.5.2.2/3: VALID (byte 2 bit 7, information only), reserved, 8-byte value
            (value,) = _U64.unpack_from(body, 2)
            if dtype == _DESC_INFORMATION:
                information, valid = value, bool(body[0] & 0x80)
            else:
                command_specific = value
        elif dtype == _DESC_SENSE_KEY_SPECIFIC and len(body) >= 5 and body[2] & _SKSV:
            sks = bytes(body[2:5])   # SPC-4 §4.5.2.4
        elif dtype == _DESC_FRU and len(body) >= 2:
            fru = body[1]            # SPC-4 §4.5.2.5
        elif dtype == _DESC_STREAM and len(body) >= 2:
            filemark = bool(body[1] & 0x80)   # SSC-4 stream commands descriptor
            eom = bool(body[1] & 0x40)
            ili = bool(body[1] & 0x20)
        elif dtype == _DESC_BLOCK and len(body) >= 2:
            ili = bool(body[1] & 0x20)        # SBC-3 §4.18.2 block commands descriptor

    return Sense(
        response_code=code,
        key=SenseKey(key & 0x0F),
        asc=asc if present > 2 else 0,
        ascq=ascq if present > 3 else 0,
        information=information,
        valid=valid,
        deferred=code == RESPONSE_DESCRIPTOR_DEFERRED,
        descriptor_format=True,
        filemark=filemark,
        eom=eom,
        ili=ili,
        sdat_ovfl=bool(byte4 & 0x80),
        command_specific=command_specific,
        fru=fru,
        sense_key_specific=sks,
        descriptors=tuple(descriptors),
        raw=raw,
    )


# ---------------------------------------------------------------------------------------------
# ASC/ASCQ names (SPC-4 Annex D.2 table D.1; t10.org asc-num.txt)
# ---------------------------------------------------------------------------------------------

_ASC_NAMES: dict[tuple[int, int], str] = {
    (0x00, 0x00): "No additional sense information",
    (0x00, 0x06): "I/O process terminated",
    (0x00, 0x16): "Operation in progress",
    (0x00, 0x17): "Cleaning requested",
    (0x00, 0x1D): "ATA pass through information available",
    (0x02, 0x00): "No seek complete",
    (0x03, 0x00): "Peripheral device write fault",
    (0x04, 0x00): "Logical unit not ready, cause not reportable",
    (0x04, 0x01): "Logical unit is in process of becoming ready",
    (0x04, 0x02): "Logical unit not ready, initializing command required",
    (0x04, 0x03): "Logical unit not ready, manual intervention required",
    (0x04, 0x04): "Logical unit not ready, format in progress",
    (0x04, 0x05): "Logical unit not ready, rebuild in progress",
    (0x04, 0x06): "Logical unit not ready, recalculation in progress",
    (0x04, 0x07): "Logical unit not ready, operation in progress",
    (0x04, 0x08): "Logical unit not ready, long write in progress",
    (0x04, 0x09): "Logical unit not ready, self-test in progress",
    (0x04, 0x0A): "Logical unit not accessible, asymmetric access state transition",
    (0x04, 0x0B): "Logical unit not accessible, target port in standby state",
    (0x04, 0x0C): "Logical unit not accessible, target port in unavailable state",
    (0x04, 0x0D): "Logical unit not ready, structure check required",
    (0x04, 0x0E): "Logical unit not ready, security session in progress",
    (0x04, 0x10): "Logical unit not ready, auxiliary memory not accessible",
    (0x04, 0x11): "Logical unit not ready, notify (enable spinup) required",
    (0x04, 0x12): "Logical unit not ready, offline",
    (0x04, 0x13): "Logical unit not ready, SA creation in progress",
    (0x04, 0x14): "Logical unit not ready, space allocation in progress",
    (0x04, 0x1A): "Logical unit not ready, start stop unit command in progress",
    (0x04, 0x1B): "Logical unit not ready, sanitize in progress",
    (0x04, 0x1C): "Logical unit not ready, additional power use not yet granted",
    (0x05, 0x00): "Logical unit does not respond to selection",
    (0x08, 0x00): "Logical unit communication failure",
    (0x08, 0x01): "Logical unit communication time-out",
    (0x08, 0x02): "Logical unit communication parity error",
    (0x0C, 0x00): "Write error",
    (0x0C, 0x02): "Write error - auto reallocation failed",
    (0x0C, 0x03): "Write error - recommend reassignment",
    (0x0E, 0x01): "Information unit too short",
    (0x0E, 0x02): "Information unit too long",
    (0x0E, 0x03): "Invalid field in command information unit",
    (0x10, 0x01): "Logical block guard check failed",
    (0x10, 0x02): "Logical block application tag check failed",
    (0x10, 0x03): "Logical block reference tag check failed",
    (0x11, 0x00): "Unrecovered read error",
    (0x11, 0x01): "Read retries exhausted",
    (0x11, 0x02): "Error too long to correct",
    (0x11, 0x04): "Unrecovered read error - auto reallocate failed",
    (0x11, 0x0B): "Unrecovered read error - recommend reassignment",
    (0x11, 0x0C): "Unrecovered read error - recommend rewrite the data",
    (0x14, 0x01): "Record not found",
    (0x15, 0x00): "Random positioning error",
    (0x17, 0x00): "Recovered data with no error correction applied",
    (0x18, 0x00): "Recovered data with error correction applied",
    (0x1A, 0x00): "Parameter list length error",
    (0x1D, 0x00): "Miscompare during verify operation",
    (0x20, 0x00): "Invalid command operation code",
    (0x20, 0x02): "Access denied - no access rights",
    (0x21, 0x00): "Logical block address out of range",
    (0x21, 0x01): "Invalid element address",
    (0x24, 0x00): "Invalid field in CDB",
    (0x25, 0x00): "Logical unit not supported",
    (0x26, 0x00): "Invalid field in parameter list",
    (0x26, 0x01): "Parameter not supported",
    (0x26, 0x02): "Parameter value invalid",
    (0x27, 0x00): "Write protected",
    (0x27, 0x01): "Hardware write protected",
    (0x27, 0x02): "Logical unit software write protected",
    (0x27, 0x07): "Space allocation failed write protect",
    (0x28, 0x00): "Not ready to ready change, medium may have changed",
    (0x29, 0x00): "Power on, reset, or bus device reset occurred",
    (0x29, 0x01): "Power on occurred",
    (0x29, 0x02): "SCSI bus reset occurred",
    (0x29, 0x03): "Bus device reset function occurred",
    (0x29, 0x04): "Device internal reset",
    (0x29, 0x05): "Transceiver mode changed to single-ended",
    (0x29, 0x06): "Transceiver mode changed to LVD",
    (0x29, 0x07): "I_T nexus loss occurred",
    (0x2A, 0x00): "Parameters changed",
    (0x2A, 0x01): "Mode parameters changed",
    (0x2A, 0x02): "Log parameters changed",
    (0x2A, 0x03): "Reservations preempted",
    (0x2A, 0x04): "Reservations released",
    (0x2A, 0x05): "Registrations preempted",
    (0x2A, 0x06): "Asymmetric access state changed",
    (0x2A, 0x07): "Implicit asymmetric access state transition failed",
    (0x2A, 0x09): "Capacity data has changed",
    (0x2A, 0x10): "Timestamp changed",
    (0x2C, 0x00): "Command sequence error",
    (0x2F, 0x00): "Commands cleared by another initiator",
    (0x2F, 0x01): "Commands cleared by power loss notification",
    (0x2F, 0x02): "Commands cleared by device server",
    (0x30, 0x00): "Incompatible medium installed",
    (0x31, 0x00): "Medium format corrupted",
    (0x32, 0x00): "No defect spare location available",
    (0x37, 0x00): "Rounded parameter",
    (0x38, 0x07): "Thin provisioning soft threshold reached",
    (0x39, 0x00): "Saving parameters not supported",
    (0x3A, 0x00): "Medium not present",
    (0x3A, 0x01): "Medium not present - tray closed",
    (0x3A, 0x02): "Medium not present - tray open",
    (0x3D, 0x00): "Invalid bits in identify message",
    (0x3E, 0x00): "Logical unit has not self-configured yet",
    (0x3E, 0x01): "Logical unit failure",
    (0x3E, 0x02): "Timeout on logical unit",
    (0x3E, 0x03): "Logical unit failed self-test",
    (0x3E, 0x04): "Logical unit unable to update self-test log",
    (0x3F, 0x00): "Target operating conditions have changed",
    (0x3F, 0x01): "Microcode has been changed",
    (0x3F, 0x02): "Changed operating definition",
    (0x3F, 0x03): "Inquiry data has changed",
    (0x3F, 0x04): "Component device attached",
    (0x3F, 0x05): "Device identifier changed",
    (0x3F, 0x06): "Redundancy group created or modified",
    (0x3F, 0x07): "Redundancy group deleted",
    (0x3F, 0x0E): "Reported luns data has changed",
    (0x3F, 0x0F): "Echo buffer overwritten",
    (0x3F, 0x10): "Medium loadable",
    (0x3F, 0x11): "Medium auxiliary memory accessible",
    (0x43, 0x00): "Message error",
    (0x44, 0x00): "Internal target failure",
    (0x45, 0x00): "Select or reselect failure",
    (0x47, 0x00): "SCSI parity error",
    (0x47, 0x01): "Data phase CRC error detected",
    (0x47, 0x02): "SCSI parity error detected during ST data phase",
    (0x47, 0x03): "Information unit iuCRC error detected",
    (0x47, 0x04): "Asynchronous information protection error detected",
    (0x47, 0x05): "Protocol service CRC error",
    (0x48, 0x00): "Initiator detected error message received",
    (0x49, 0x00): "Invalid message error",
    (0x4A, 0x00): "Command phase error",
    (0x4B, 0x00): "Data phase error",
    (0x4B, 0x01): "Invalid target port transfer tag received",
    (0x4B, 0x02): "Too much write data",
    (0x4B, 0x03): "ACK/NAK timeout",
    (0x4B, 0x04): "NAK received",
    (0x4B, 0x05): "Data offset error",
    (0x4B, 0x06): "Initiator response timeout",
    (0x4C, 0x00): "Logical unit failed self-configuration",
    (0x4E, 0x00): "Overlapped commands attempted",
    (0x53, 0x02): "Medium removal prevented",
    (0x55, 0x03): "Insufficient resources",
    (0x55, 0x04): "Insufficient registration resources",
    (0x5D, 0x00): "Failure prediction threshold exceeded",
    (0x5E, 0x00): "Low power condition on",
    (0x65, 0x00): "Voltage fault",
    (0x68, 0x00): "Logical unit not configured",
}

# Names for an ASC whose ASCQ is not in the table above (a family of related conditions).
_ASC_FAMILIES: dict[int, str] = {
    0x04: "Logical unit not ready",
    0x08: "Logical unit communication failure",
    0x0C: "Write error",
    0x10: "Logical block protection error",
    0x11: "Unrecovered read error",
    0x27: "Write protected",
    0x29: "Power on, reset, or bus device reset occurred",
    0x2A: "Parameters changed",
    0x2F: "Commands cleared",
    0x3A: "Medium not present",
    0x3E: "Logical unit failure",
    0x3F: "Target operating conditions have changed",
    0x47: "SCSI parity error",
    0x4B: "Data phase error",
    0x5D: "Failure prediction threshold exceeded",
}


def asc_name(asc: int, ascq: int) -> str:
    """A readable name for an additional sense code / qualifier pair (never raises)."""
    name = _ASC_NAMES.get((asc, ascq))
    if name is not None:
        return name
    if asc >= 0x80 or ascq >= 0x80:
        return "Vendor specific"
    return _ASC_FAMILIES.get(asc, "Unknown additional sense code")


# ---------------------------------------------------------------------------------------------
# The error and status checking
# ---------------------------------------------------------------------------------------------

def _status_label(status: int) -> str:
    try:
        return ScsiStatus(status).label
    except ValueError:
        return f"status {status:#04x}"


class ScsiError(IscsiError):
    """A command ended with a SCSI status other than GOOD.

    ``status`` is a ``ScsiStatus`` (or the raw int for a value SAM does not define), ``sense``
    the parsed sense data when the target sent any that parses, ``sense_bytes`` the raw bytes.
    """

    def __init__(self, status: int, sense: Sense | None = None, sense_bytes: bytes = b""):
        try:
            self.status: ScsiStatus | int = ScsiStatus(status)
        except ValueError:
            self.status = status
        self.sense = sense
        self.sense_bytes = bytes(sense_bytes)
        if sense is not None:
            message = str(sense)
        elif self.status == ScsiStatus.CHECK_CONDITION:
            message = "CHECK CONDITION without usable sense data"
        else:
            message = _status_label(status)
        super().__init__(message)

    @property
    def key(self) -> SenseKey | None:
        return self.sense.key if self.sense is not None else None

    def __reduce__(self):   # keep it picklable despite the custom __init__
        return (type(self), (int(self.status), self.sense, self.sense_bytes))


def _sense_of(what: Sense | BaseException | None) -> Sense | None:
    """The sense data of ``what``: a Sense, a ScsiError, or any other exception (a leaf of a
    failed command's error: CommandTimeout, SessionFailed, ...), which has none."""
    if isinstance(what, ScsiError):
        return what.sense
    return what if isinstance(what, Sense) else None


def is_unit_attention(what: Sense | ScsiError | None) -> bool:
    """Whether this is a UNIT ATTENTION (the command was not executed; usually retry it)."""
    sense = _sense_of(what)
    return sense is not None and sense.key is SenseKey.UNIT_ATTENTION


def is_capacity_changed(what: Sense | ScsiError | None) -> bool:
    """UNIT ATTENTION 2A/09 CAPACITY DATA HAS CHANGED (re-read the capacity)."""
    sense = _sense_of(what)
    return is_unit_attention(sense) and sense is not None and sense.asc_ascq == (0x2A, 0x09)


def is_luns_changed(what: Sense | ScsiError | None) -> bool:
    """UNIT ATTENTION 3F/0E REPORTED LUNS DATA HAS CHANGED (re-run REPORT LUNS)."""
    sense = _sense_of(what)
    return is_unit_attention(sense) and sense is not None and sense.asc_ascq == (0x3F, 0x0E)


def is_data_protect(what: Sense | ScsiError | None) -> bool:
    """DATA PROTECT (e.g. 27/00 WRITE PROTECTED): the medium refuses the write."""
    sense = _sense_of(what)
    return sense is not None and sense.key is SenseKey.DATA_PROTECT


def is_reservation_conflict(what: ScsiError | None) -> bool:
    """Status RESERVATION CONFLICT (18h): another I_T nexus holds a persistent reservation
    that excludes this command. The logical unit's answer, not the path's."""
    return isinstance(what, ScsiError) and what.status == ScsiStatus.RESERVATION_CONFLICT


def is_alua_state_changed(what: Sense | ScsiError | None) -> bool:
    """UNIT ATTENTION 2A/06 ASYMMETRIC ACCESS STATE CHANGED (re-read the port groups)."""
    sense = _sense_of(what)
    return is_unit_attention(sense) and sense is not None and sense.asc_ascq == (0x2A, 0x06)


# NOT READY 04/0A, 04/0B, 04/0C (SPC-4 §5.16.2.5): the port is in transition, standby or
# unavailable; the ALUA state names of scsi.parse.AluaState
_ALUA_NOT_READY = {0x0A: "transitioning", 0x0B: "standby", 0x0C: "unavailable"}


def alua_not_ready(what: Sense | ScsiError | None) -> str | None:
    """``"transitioning"``, ``"standby"`` or ``"unavailable"`` for NOT READY 04/0A, 04/0B
    or 04/0C (the target port is not in an active ALUA state); else None."""
    sense = _sense_of(what)
    if sense is None or sense.key is not SenseKey.NOT_READY or sense.asc != 0x04:
        return None
    return _ALUA_NOT_READY.get(sense.ascq)


def check_status(status: int, sense_bytes: bytes | bytearray | memoryview = b"") -> None:
    """Return on GOOD (or CONDITION MET), raise ``ScsiError`` for any other status.

    Sense data that does not parse still gives a ``ScsiError`` (with ``sense=None`` and the
    raw bytes in ``sense_bytes``): the command failed either way, and that is what matters.
    """
    if status in (ScsiStatus.GOOD, ScsiStatus.CONDITION_MET):
        return
    raw = bytes(sense_bytes)
    sense: Sense | None = None
    if raw:
        try:
            sense = parse_sense(raw)
        except RemoteProtocolError:
            sense = None
    raise ScsiError(status, sense, raw)
