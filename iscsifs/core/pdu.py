"""iSCSI PDUs: typed values, wire layouts, encoder and incremental decoder (RFC 7143 §11).

Owns: the ``Opcode`` enum, one frozen dataclass per PDU, the ``struct`` layout of every Basic
Header Segment, AHS handling (extended CDB), padding, CRC32C header/data digests, the SAM LUN
field helpers, and ``PduDecoder`` (bytes in -> PDU or need-more).

Must not know: sockets or any I/O, trio/asyncio/threads, sequence-number rules (CmdSN windows,
StatSN checking), tasks, login negotiation or text keys.  It checks that a PDU is *well formed*
(lengths, digests, opcode valid for the direction); whether it is *expected* is connection.py's
business.

Conventions:

* every PDU dataclass is ``frozen`` and ``slots``; ``data`` is the unpadded data segment;
* ``lun`` is the raw 8-byte LUN field as an int (see ``encode_lun`` / ``decode_lun``);
* the decoder returns ``data`` (and ``ScsiCommand.ahs``) as immutable ``bytes`` copied out of its
  buffer once, so a PDU never aliases the decoder's internal buffer -- except a Data-In payload
  when the decoder is told to ``borrow`` (the read path: see ``PduDecoder``);
* a decoded ``ScsiCommand.cdb`` is at least 16 bytes long (the BHS CDB field is fixed-size, so a
  short CDB comes back zero padded to 16), plus any extended-CDB AHS bytes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Callable, Union

from crc32c import crc32c

from iscsifs.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "Opcode", "RESERVED_TAG", "BHS_LEN", "MAX_DATA_SEGMENT_LENGTH",
    "NopOut", "ScsiCommand", "TaskManagementRequest", "LoginRequest", "TextRequest", "DataOut",
    "LogoutRequest", "SnackRequest",
    "NopIn", "ScsiResponse", "TaskManagementResponse", "LoginResponse", "TextResponse", "DataIn",
    "LogoutResponse", "R2T", "AsyncMessage", "Reject",
    "Pdu", "PDU_TYPES", "INITIATOR_OPCODES", "TARGET_OPCODES",
    "encode", "decode", "PduDecoder", "encode_lun", "decode_lun", "crc32c",
    "encode_scsi_command", "encode_data_out",
]


class Opcode(enum.IntEnum):
    """RFC 7143 §11.1.1 (initiator opcodes 0x00-0x1f, target opcodes 0x20-0x3f)."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


RESERVED_TAG = 0xFFFFFFFF
BHS_LEN = 48
MAX_DATA_SEGMENT_LENGTH = 0xFFFFFF   # DataSegmentLength is a 24-bit field (§11.2.1.5)
MAX_AHS_LENGTH = 255 * 4             # TotalAHSLength is one byte of 4-byte words (§11.2.1.4)
AHS_EXTENDED_CDB = 1                 # AHSType, §11.2.2.3
AHS_BIDI_READ_LENGTH = 2             # AHSType, §11.2.2.4

Data = Union[bytes, bytearray, memoryview]

# ---------------------------------------------------------------------------------------------
# Wire layouts.  All big-endian; "x" = reserved.  Every layout is the whole 48-byte BHS.
# The first 8 bytes are common to all PDUs (§11.2.1):
#   byte 0      .|I| Opcode     (bit 7 reserved, bit 6 = immediate delivery, bits 5-0 opcode)
#   byte 1      F + opcode-specific flags
#   bytes 2-3   opcode-specific
#   byte 4      TotalAHSLength (4-byte words)      } read together as one uint32 "length word":
#   bytes 5-7   DataSegmentLength (bytes, 24 bits) } TotalAHSLength << 24 | DataSegmentLength
#   bytes 8-15  LUN or opcode-specific
#   bytes 16-19 Initiator Task Tag
#   bytes 20-47 opcode-specific
# ---------------------------------------------------------------------------------------------

# §11.2.1: opcode byte and the length word, all the decoder needs to size a PDU.
_BHS_COMMON = struct.Struct(">B3xI")
# §11.2.2: AHSLength, AHSType, AHS-specific (reserved for the extended CDB)
_AHS_HEADER = struct.Struct(">HBB")
# §11.2.1.4 / §12.1: digests are CRC32C, sent least significant byte first
_DIGEST = struct.Struct("<I")

# §11.18 NOP-Out: opcode, flags(F=1), len, LUN, ITT, TTT, CmdSN, ExpStatSN, 16 reserved
_NOP_OUT = struct.Struct(">BB2xIQIIII16x")
# §11.3 SCSI Command: opcode, F|R|W|ATTR, len, LUN, ITT, Expected Data Transfer Length,
#   CmdSN, ExpStatSN, CDB (16)
_SCSI_COMMAND = struct.Struct(">BB2xIQIIII16s")
# §11.5 Task Management Function Request: opcode, F|Function, len, LUN, ITT,
#   Referenced Task Tag, CmdSN, ExpStatSN, RefCmdSN, ExpDataSN, 8 reserved
_TASK_MGMT_REQUEST = struct.Struct(">BB2xIQIIIIII8x")
# §11.12 Login Request: opcode, T|C|CSG|NSG, Version-max, Version-min, len,
#   ISID (6 bytes: high 16 bits + low 32 bits), TSIH, ITT, CID, 2 reserved, CmdSN, ExpStatSN,
#   16 reserved
_LOGIN_REQUEST = struct.Struct(">BBBBIHIHIH2xII16x")
# §11.10 Text Request: opcode, F|C, len, LUN, ITT, TTT, CmdSN, ExpStatSN, 16 reserved
_TEXT_REQUEST = struct.Struct(">BB2xIQIIII16x")
# §11.7.1 SCSI Data-Out: opcode, F, len, LUN, ITT, TTT, 4 reserved, ExpStatSN, 4 reserved,
#   DataSN, Buffer Offset, 4 reserved
_DATA_OUT = struct.Struct(">BB2xIQII4xI4xII4x")
# §11.14 Logout Request: opcode, F|Reason Code, len, 8 reserved, ITT, CID, 2 reserved,
#   CmdSN, ExpStatSN, 16 reserved
_LOGOUT_REQUEST = struct.Struct(">BB2xI8xIH2xII16x")
# §11.16 SNACK Request: opcode, F|Type, len, LUN, ITT, TTT/SNACK Tag, 4 reserved, ExpStatSN,
#   8 reserved, BegRun, RunLength
_SNACK_REQUEST = struct.Struct(">BB2xIQII4xI8xII")

# §11.19 NOP-In: opcode, F, len, LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN, 12 reserved
_NOP_IN = struct.Struct(">BB2xIQIIIII12x")
# §11.4 SCSI Response: opcode, F|o|u|O|U, Response, Status, len, 8 reserved, ITT,
#   SNACK Tag (ignored), StatSN, ExpCmdSN, MaxCmdSN, ExpDataSN,
#   Bidirectional Read Residual Count, Residual Count
_SCSI_RESPONSE = struct.Struct(">BBBBI8xI4xIIIIII")
# §11.6 Task Management Function Response: opcode, F, Response, 1 reserved, len, 8 reserved,
#   ITT, 4 reserved, StatSN, ExpCmdSN, MaxCmdSN, 12 reserved
_TASK_MGMT_RESPONSE = struct.Struct(">BBBxI8xI4xIII12x")
# §11.13 Login Response: opcode, T|C|CSG|NSG, Version-max, Version-active, len,
#   ISID (16 + 32 bits), TSIH, ITT, 4 reserved, StatSN, ExpCmdSN, MaxCmdSN,
#   Status-Class, Status-Detail, 10 reserved
_LOGIN_RESPONSE = struct.Struct(">BBBBIHIHI4xIIIBB10x")
# §11.11 Text Response: opcode, F|C, len, LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN,
#   12 reserved
_TEXT_RESPONSE = struct.Struct(">BB2xIQIIIII12x")
# §11.7.1 SCSI Data-In: opcode, F|A|O|U|S, 1 reserved, Status, len, LUN, ITT, TTT, StatSN,
#   ExpCmdSN, MaxCmdSN, DataSN, Buffer Offset, Residual Count
_DATA_IN = struct.Struct(">BBxBIQIIIIIIII")
# §11.15 Logout Response: opcode, F, Response, 1 reserved, len, 8 reserved, ITT, 4 reserved,
#   StatSN, ExpCmdSN, MaxCmdSN, 4 reserved, Time2Wait, Time2Retain, 4 reserved
_LOGOUT_RESPONSE = struct.Struct(">BBBxI8xI4xIII4xHH4x")
# §11.8 Ready To Transfer: opcode, F, len, LUN, ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN, R2TSN,
#   Buffer Offset, Desired Data Transfer Length
_R2T = struct.Struct(">BB2xIQIIIIIIII")
# §11.9 Asynchronous Message: opcode, F, len, LUN, ITT (0xffffffff), 4 reserved, StatSN,
#   ExpCmdSN, MaxCmdSN, AsyncEvent, AsyncVCode, Parameter1, Parameter2, Parameter3, 4 reserved
_ASYNC_MESSAGE = struct.Struct(">BB2xIQI4xIIIBBHHH4x")
# §11.17 Reject: opcode, F, Reason, 1 reserved, len, 8 reserved, ITT (0xffffffff),
#   4 reserved, StatSN, ExpCmdSN, MaxCmdSN, DataSN/R2TSN, 8 reserved
_REJECT = struct.Struct(">BBBxI8xI4xIIII8x")

# Flag bits (byte 0 and byte 1 of the BHS)
_I_BIT = 0x40            # §11.2.1.1 immediate delivery
_F_BIT = 0x80            # §11.2.1.2 final
_C_BIT = 0x40            # §11.10.2 / §11.12.2 continue (Text, Login)
_T_BIT = 0x80            # §11.12.1 transit (Login)
_R_BIT = 0x40            # §11.3.1 read (SCSI Command)
_W_BIT = 0x20            # §11.3.1 write
_ATTR_MASK = 0x07        # §11.3.1 task attributes
_A_BIT = 0x40            # §11.7.2 acknowledge (Data-In)
_RSP_BIDI_OVERFLOW = 0x10   # §11.4.1 o
_RSP_BIDI_UNDERFLOW = 0x08  # §11.4.1 u
_RSP_OVERFLOW = 0x04        # §11.4.1 O (also Data-In O)
_RSP_UNDERFLOW = 0x02       # §11.4.1 U (also Data-In U)
_S_BIT = 0x01               # §11.7.4 status present (Data-In)
_OPCODE_MASK = 0x3F

_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")   # indexed by length % 4


# ---------------------------------------------------------------------------------------------
# PDU values.  Field names follow RFC 7143 in snake_case; docs/contracts.md fixes the order.
# ---------------------------------------------------------------------------------------------

# Initiator -> target

@dataclass(frozen=True, slots=True)
class NopOut:
    """§11.18. Ping (ITT set, TTT reserved) or answer to a target NOP-In (ITT reserved)."""

    itt: int
    ttt: int = RESERVED_TAG
    lun: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    immediate: bool = True
    data: Data = b""


@dataclass(frozen=True, slots=True)
class ScsiCommand:
    """§11.3. ``cdb`` longer than 16 bytes is sent as an extended-CDB AHS automatically;
    ``ahs`` carries any further (raw, 4-byte padded) AHS segments."""

    itt: int
    lun: int
    cdb: bytes
    expected_data_transfer_length: int
    cmd_sn: int
    exp_stat_sn: int
    read: bool
    write: bool
    final: bool = True
    attr: int = 1   # SIMPLE (§11.3.1: 0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA)
    immediate: bool = False
    ahs: bytes = b""
    data: Data = b""


@dataclass(frozen=True, slots=True)
class TaskManagementRequest:
    """§11.5. ``function``: 1 ABORT TASK, 2 ABORT TASK SET, 3 CLEAR ACA, 4 CLEAR TASK SET,
    5 LOGICAL UNIT RESET, 6 TARGET WARM RESET, 7 TARGET COLD RESET, 8 TASK REASSIGN."""

    itt: int
    function: int
    lun: int
    referenced_task_tag: int
    cmd_sn: int
    exp_stat_sn: int
    ref_cmd_sn: int = 0
    exp_data_sn: int = 0
    immediate: bool = True
    data: Data = b""


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """§11.12. Always sent with the I bit. ``isid`` is the 48-bit ISID as an int."""

    isid: int
    tsih: int
    itt: int
    cid: int
    cmd_sn: int
    exp_stat_sn: int
    csg: int
    nsg: int
    transit: bool
    cont: bool = False
    version_max: int = 0
    version_min: int = 0
    data: Data = b""


@dataclass(frozen=True, slots=True)
class TextRequest:
    """§11.10.  (``cmd_sn``/``exp_stat_sn`` default to 0 only because ``lun`` has a default.)"""

    itt: int
    ttt: int
    lun: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    final: bool = True
    cont: bool = False
    immediate: bool = True
    data: Data = b""


@dataclass(frozen=True, slots=True)
class DataOut:
    """§11.7. Solicited (TTT from the R2T) or unsolicited (TTT reserved) write data."""

    itt: int
    ttt: int
    lun: int
    exp_stat_sn: int
    data_sn: int
    buffer_offset: int
    final: bool
    data: Data = b""


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """§11.14. ``reason``: 0 close session, 1 close connection, 2 remove for recovery."""

    itt: int
    reason: int
    cid: int
    cmd_sn: int
    exp_stat_sn: int
    immediate: bool = True
    data: Data = b""


@dataclass(frozen=True, slots=True)
class SnackRequest:
    """§11.16. Not part of the contract's core set (we run ErrorRecoveryLevel 0), here so that
    every initiator opcode can be encoded and decoded. ``type``: 0 Data/R2T, 1 Status,
    2 DataACK, 3 R-Data."""

    itt: int
    ttt: int
    lun: int
    exp_stat_sn: int
    beg_run: int
    run_length: int
    type: int = 0
    data: Data = b""


# Target -> initiator

@dataclass(frozen=True, slots=True)
class NopIn:
    """§11.19. Answer to our ping (TTT reserved) or target ping (TTT set, ITT reserved)."""

    itt: int
    ttt: int
    lun: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    data: Data = b""


@dataclass(frozen=True, slots=True)
class ScsiResponse:
    """§11.4. ``response`` 0 = command completed at target; ``status`` is the SCSI status."""

    itt: int
    response: int
    status: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    exp_data_sn: int
    bidi_read_residual_count: int
    residual_count: int
    overflow: bool
    underflow: bool
    bidi_overflow: bool
    bidi_underflow: bool
    data: Data = b""

    @property
    def sense(self) -> bytes:
        """The sense data (§11.4.7.2: 2-byte SenseLength, then sense, then response data).

        ``b""`` when there is no data segment.  RemoteProtocolError if the data segment is too
        short for the SenseLength it declares.
        """
        data = self.data
        if not data:
            return b""
        if len(data) < 2:
            raise RemoteProtocolError(
                f"SCSI Response data segment of {len(data)} byte(s) has no SenseLength")
        sense_length = (data[0] << 8) | data[1]
        if sense_length > len(data) - 2:
            raise RemoteProtocolError(
                f"SCSI Response SenseLength {sense_length} exceeds the "
                f"{len(data) - 2} sense bytes present")
        return bytes(data[2:2 + sense_length])


@dataclass(frozen=True, slots=True)
class TaskManagementResponse:
    """§11.6. ``response``: 0 complete, 1 task does not exist, 2 LUN does not exist, ..."""

    itt: int
    response: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    data: Data = b""


@dataclass(frozen=True, slots=True)
class LoginResponse:
    """§11.13."""

    isid: int
    tsih: int
    itt: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    status_class: int
    status_detail: int
    csg: int
    nsg: int
    transit: bool
    cont: bool
    version_max: int
    version_active: int
    data: Data = b""


@dataclass(frozen=True, slots=True)
class TextResponse:
    """§11.11."""

    itt: int
    ttt: int
    lun: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    final: bool
    cont: bool
    data: Data = b""


@dataclass(frozen=True, slots=True)
class DataIn:
    """§11.7. ``stat_sn``, ``status`` (and the residual fields) mean something only when
    ``status_present`` (S bit) is set."""

    itt: int
    ttt: int
    lun: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    data_sn: int
    buffer_offset: int
    residual_count: int
    final: bool
    acknowledge: bool
    overflow: bool
    underflow: bool
    status_present: bool
    status: int
    data: Data = b""


@dataclass(frozen=True, slots=True)
class LogoutResponse:
    """§11.15. ``response``: 0 closed, 1 CID not found, 2 recovery not supported,
    3 cleanup failed."""

    itt: int
    response: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    time2wait: int
    time2retain: int
    data: Data = b""


@dataclass(frozen=True, slots=True)
class R2T:
    """§11.8."""

    itt: int
    ttt: int
    lun: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    r2t_sn: int
    buffer_offset: int
    desired_data_transfer_length: int
    data: Data = b""


@dataclass(frozen=True, slots=True)
class AsyncMessage:
    """§11.9. ``async_event``: 0 SCSI async event (sense in data), 1 logout requested,
    2 connection dropped, 3 all connections dropped, 4 renegotiate, 255 vendor specific."""

    lun: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    async_event: int
    async_vcode: int
    parameter1: int
    parameter2: int
    parameter3: int
    data: Data = b""

    @property
    def sense(self) -> bytes:
        """The sense data of a SCSI async event (§11.9.4: 2-byte SenseLength, sense data,
        then iSCSI event data); ``b""`` when there is none or it is cut short."""
        data = self.data
        if len(data) < 2:
            return b""
        sense_length = (data[0] << 8) | data[1]
        if sense_length > len(data) - 2:
            return b""
        return bytes(data[2:2 + sense_length])


@dataclass(frozen=True, slots=True)
class Reject:
    """§11.17. ``data`` is the header of the rejected PDU."""

    reason: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    data_sn: int
    data: Data = b""

    @property
    def rejected_itt(self) -> int | None:
        """The ITT of the rejected PDU (bytes 16-19 of its header), or None if absent."""
        if len(self.data) < BHS_LEN:
            return None
        return int.from_bytes(self.data[16:20], "big")


Pdu = Union[
    NopOut, ScsiCommand, TaskManagementRequest, LoginRequest, TextRequest, DataOut,
    LogoutRequest, SnackRequest,
    NopIn, ScsiResponse, TaskManagementResponse, LoginResponse, TextResponse, DataIn,
    LogoutResponse, R2T, AsyncMessage, Reject,
]

PDU_TYPES: dict[Opcode, type] = {
    Opcode.NOP_OUT: NopOut,
    Opcode.SCSI_COMMAND: ScsiCommand,
    Opcode.TASK_MGMT_REQUEST: TaskManagementRequest,
    Opcode.LOGIN_REQUEST: LoginRequest,
    Opcode.TEXT_REQUEST: TextRequest,
    Opcode.DATA_OUT: DataOut,
    Opcode.LOGOUT_REQUEST: LogoutRequest,
    Opcode.SNACK_REQUEST: SnackRequest,
    Opcode.NOP_IN: NopIn,
    Opcode.SCSI_RESPONSE: ScsiResponse,
    Opcode.TASK_MGMT_RESPONSE: TaskManagementResponse,
    Opcode.LOGIN_RESPONSE: LoginResponse,
    Opcode.TEXT_RESPONSE: TextResponse,
    Opcode.DATA_IN: DataIn,
    Opcode.LOGOUT_RESPONSE: LogoutResponse,
    Opcode.R2T: R2T,
    Opcode.ASYNC_MESSAGE: AsyncMessage,
    Opcode.REJECT: Reject,
}
OPCODES: dict[type, Opcode] = {cls: op for op, cls in PDU_TYPES.items()}
INITIATOR_OPCODES = frozenset(op for op in Opcode if op < 0x20)   # what a target receives
TARGET_OPCODES = frozenset(op for op in Opcode if op >= 0x20)     # what an initiator receives


# ---------------------------------------------------------------------------------------------
# LUN field (SAM-5 §4.7: single level, peripheral or flat space addressing)
# ---------------------------------------------------------------------------------------------

def summary(pdu) -> str:
    """One line naming a PDU and its header fields; the data segment only by its length
    (debug traces must not dump payloads, and login data is never shown)."""
    fields = []
    for name in pdu.__dataclass_fields__:
        if name == "data":
            fields.append(f"data_len={len(pdu.data)}")
        elif name == "ahs":
            fields.append(f"ahs_len={len(pdu.ahs)}")
        else:
            value = getattr(pdu, name)
            if name in ("itt", "ttt", "isid"):
                fields.append(f"{name}={value:#x}")
            elif name == "lun":
                try:
                    fields.append(f"lun={decode_lun(value)}")
                except ValueError:       # an addressing method we don't decode: the raw field
                    fields.append(f"lun={value:#018x}")
            elif name == "cdb":
                fields.append(f"cdb={bytes(value).hex()}")
            else:
                fields.append(f"{name}={value!r}")
    return f"{type(pdu).__name__}({', '.join(fields)})"


def encode_lun(lun: int) -> int:
    """LUN number -> 8-byte LUN field as an int.

    Peripheral device addressing (method 00b, bus 0) for LUN < 256, flat space addressing
    (method 01b) for LUN < 16384.  ValueError otherwise.
    """
    if 0 <= lun < 256:
        return lun << 48
    if 256 <= lun < 0x4000:
        return (0x4000 | lun) << 48
    raise ValueError(f"LUN {lun} is outside 0..16383 (single-level peripheral/flat addressing)")


def decode_lun(field: int) -> int:
    """8-byte LUN field as an int -> LUN number (inverse of ``encode_lun``).

    ValueError for address methods other than peripheral (bus 0) and flat space, and for
    multi-level LUNs.
    """
    if not 0 <= field < 1 << 64:
        raise ValueError(f"LUN field {field:#x} is not 64 bits")
    first = field >> 48
    if field & 0xFFFF_FFFF_FFFF:
        raise ValueError(f"multi-level LUN field {field:016x} is not supported")
    method = first >> 14
    if method == 0:            # peripheral device addressing: bus (6 bits), target/LUN (8 bits)
        if first >> 8:
            raise ValueError(f"peripheral LUN field {field:016x} addresses bus {first >> 8}")
        return first
    if method == 1:            # flat space addressing: 14-bit LUN
        return first & 0x3FFF
    raise ValueError(f"LUN field {field:016x} uses unsupported address method {method}")


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def _op(opcode: int, immediate: bool) -> int:
    return opcode | _I_BIT if immediate else opcode


def _enc_nop_out(p: NopOut, dsl: int) -> bytes:
    return _NOP_OUT.pack(_op(Opcode.NOP_OUT, p.immediate), _F_BIT, dsl, p.lun, p.itt, p.ttt,
                         p.cmd_sn, p.exp_stat_sn)


def _enc_scsi_command(p: ScsiCommand, dsl: int) -> bytes:
    cdb = p.cdb
    if p.attr & ~_ATTR_MASK:
        raise LocalProtocolError(f"task attribute {p.attr} does not fit in 3 bits")
    flags = ((_F_BIT if p.final else 0) | (_R_BIT if p.read else 0)
             | (_W_BIT if p.write else 0) | p.attr)
    ahs = b""
    if len(cdb) > 16:
        extra = bytes(cdb[16:])
        # §11.2.2.3: AHSLength counts the reserved byte plus the extended CDB, not the padding;
        # the segment (4-byte AHS header + extra) is padded to a multiple of 4
        ahs = (_AHS_HEADER.pack(len(extra) + 1, AHS_EXTENDED_CDB, 0) + extra
               + _PADS[len(extra) & 3])
    if p.ahs:
        if len(p.ahs) & 3:
            raise LocalProtocolError(f"AHS of {len(p.ahs)} bytes is not padded to 4 bytes")
        ahs += bytes(p.ahs)
    if len(ahs) > MAX_AHS_LENGTH:
        raise LocalProtocolError(
            f"AHS of {len(ahs)} bytes exceeds {MAX_AHS_LENGTH} (CDB too long?)")
    word = (len(ahs) << 22) | dsl     # TotalAHSLength in words << 24 | DataSegmentLength
    bhs = _SCSI_COMMAND.pack(_op(Opcode.SCSI_COMMAND, p.immediate), flags, word, p.lun, p.itt,
                             p.expected_data_transfer_length, p.cmd_sn, p.exp_stat_sn,
                             bytes(cdb[:16]))   # struct pads a short CDB with zeros
    return bhs + ahs if ahs else bhs


def _enc_task_mgmt_request(p: TaskManagementRequest, dsl: int) -> bytes:
    if not 0 <= p.function < 0x80:
        raise LocalProtocolError(f"task management function {p.function} out of range")
    return _TASK_MGMT_REQUEST.pack(_op(Opcode.TASK_MGMT_REQUEST, p.immediate),
                                   _F_BIT | p.function, dsl, p.lun, p.itt,
                                   p.referenced_task_tag, p.cmd_sn, p.exp_stat_sn,
                                   p.ref_cmd_sn, p.exp_data_sn)


def _stage_flags(transit: bool, cont: bool, csg: int, nsg: int) -> int:
    if not (0 <= csg <= 3 and 0 <= nsg <= 3):
        raise LocalProtocolError(f"login stage CSG={csg} NSG={nsg} out of range")
    return (_T_BIT if transit else 0) | (_C_BIT if cont else 0) | (csg << 2) | nsg


def _enc_login_request(p: LoginRequest, dsl: int) -> bytes:
    if not 0 <= p.isid < 1 << 48:
        raise LocalProtocolError(f"ISID {p.isid:#x} is not 48 bits")
    return _LOGIN_REQUEST.pack(Opcode.LOGIN_REQUEST | _I_BIT,   # §11.12: I is always 1
                               _stage_flags(p.transit, p.cont, p.csg, p.nsg),
                               p.version_max, p.version_min, dsl, p.isid >> 32,
                               p.isid & 0xFFFFFFFF, p.tsih, p.itt, p.cid, p.cmd_sn,
                               p.exp_stat_sn)


def _enc_text_request(p: TextRequest, dsl: int) -> bytes:
    flags = (_F_BIT if p.final else 0) | (_C_BIT if p.cont else 0)
    return _TEXT_REQUEST.pack(_op(Opcode.TEXT_REQUEST, p.immediate), flags, dsl, p.lun, p.itt,
                              p.ttt, p.cmd_sn, p.exp_stat_sn)


def _enc_data_out(p: DataOut, dsl: int) -> bytes:
    return _DATA_OUT.pack(Opcode.DATA_OUT, _F_BIT if p.final else 0, dsl, p.lun, p.itt, p.ttt,
                          p.exp_stat_sn, p.data_sn, p.buffer_offset)


def _enc_logout_request(p: LogoutRequest, dsl: int) -> bytes:
    if not 0 <= p.reason < 0x80:
        raise LocalProtocolError(f"logout reason {p.reason} out of range")
    return _LOGOUT_REQUEST.pack(_op(Opcode.LOGOUT_REQUEST, p.immediate), _F_BIT | p.reason,
                                dsl, p.itt, p.cid, p.cmd_sn, p.exp_stat_sn)


def _enc_snack_request(p: SnackRequest, dsl: int) -> bytes:
    if not 0 <= p.type < 0x10:
        raise LocalProtocolError(f"SNACK type {p.type} out of range")
    return _SNACK_REQUEST.pack(Opcode.SNACK_REQUEST, _F_BIT | p.type, dsl, p.lun, p.itt,
                               p.ttt, p.exp_stat_sn, p.beg_run, p.run_length)


def _enc_nop_in(p: NopIn, dsl: int) -> bytes:
    return _NOP_IN.pack(Opcode.NOP_IN, _F_BIT, dsl, p.lun, p.itt, p.ttt, p.stat_sn,
                        p.exp_cmd_sn, p.max_cmd_sn)


def _enc_scsi_response(p: ScsiResponse, dsl: int) -> bytes:
    flags = (_F_BIT | (_RSP_BIDI_OVERFLOW if p.bidi_overflow else 0)
             | (_RSP_BIDI_UNDERFLOW if p.bidi_underflow else 0)
             | (_RSP_OVERFLOW if p.overflow else 0) | (_RSP_UNDERFLOW if p.underflow else 0))
    return _SCSI_RESPONSE.pack(Opcode.SCSI_RESPONSE, flags, p.response, p.status, dsl, p.itt,
                               p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn, p.exp_data_sn,
                               p.bidi_read_residual_count, p.residual_count)


def _enc_task_mgmt_response(p: TaskManagementResponse, dsl: int) -> bytes:
    return _TASK_MGMT_RESPONSE.pack(Opcode.TASK_MGMT_RESPONSE, _F_BIT, p.response, dsl, p.itt,
                                    p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn)


def _enc_login_response(p: LoginResponse, dsl: int) -> bytes:
    if not 0 <= p.isid < 1 << 48:
        raise LocalProtocolError(f"ISID {p.isid:#x} is not 48 bits")
    return _LOGIN_RESPONSE.pack(Opcode.LOGIN_RESPONSE,
                                _stage_flags(p.transit, p.cont, p.csg, p.nsg),
                                p.version_max, p.version_active, dsl, p.isid >> 32,
                                p.isid & 0xFFFFFFFF, p.tsih, p.itt, p.stat_sn, p.exp_cmd_sn,
                                p.max_cmd_sn, p.status_class, p.status_detail)


def _enc_text_response(p: TextResponse, dsl: int) -> bytes:
    flags = (_F_BIT if p.final else 0) | (_C_BIT if p.cont else 0)
    return _TEXT_RESPONSE.pack(Opcode.TEXT_RESPONSE, flags, dsl, p.lun, p.itt, p.ttt,
                               p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn)


def _enc_data_in(p: DataIn, dsl: int) -> bytes:
    flags = ((_F_BIT if p.final else 0) | (_A_BIT if p.acknowledge else 0)
             | (_RSP_OVERFLOW if p.overflow else 0) | (_RSP_UNDERFLOW if p.underflow else 0)
             | (_S_BIT if p.status_present else 0))
    return _DATA_IN.pack(Opcode.DATA_IN, flags, p.status, dsl, p.lun, p.itt, p.ttt, p.stat_sn,
                         p.exp_cmd_sn, p.max_cmd_sn, p.data_sn, p.buffer_offset,
                         p.residual_count)


def _enc_logout_response(p: LogoutResponse, dsl: int) -> bytes:
    return _LOGOUT_RESPONSE.pack(Opcode.LOGOUT_RESPONSE, _F_BIT, p.response, dsl, p.itt,
                                 p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn, p.time2wait,
                                 p.time2retain)


def _enc_r2t(p: R2T, dsl: int) -> bytes:
    return _R2T.pack(Opcode.R2T, _F_BIT, dsl, p.lun, p.itt, p.ttt, p.stat_sn, p.exp_cmd_sn,
                     p.max_cmd_sn, p.r2t_sn, p.buffer_offset, p.desired_data_transfer_length)


def _enc_async_message(p: AsyncMessage, dsl: int) -> bytes:
    return _ASYNC_MESSAGE.pack(Opcode.ASYNC_MESSAGE, _F_BIT, dsl, p.lun, RESERVED_TAG,
                               p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn, p.async_event,
                               p.async_vcode, p.parameter1, p.parameter2, p.parameter3)


def _enc_reject(p: Reject, dsl: int) -> bytes:
    return _REJECT.pack(Opcode.REJECT, _F_BIT, p.reason, dsl, RESERVED_TAG, p.stat_sn,
                        p.exp_cmd_sn, p.max_cmd_sn, p.data_sn)


_ENCODERS: dict[type, Callable[..., bytes]] = {
    NopOut: _enc_nop_out,
    ScsiCommand: _enc_scsi_command,
    TaskManagementRequest: _enc_task_mgmt_request,
    LoginRequest: _enc_login_request,
    TextRequest: _enc_text_request,
    DataOut: _enc_data_out,
    LogoutRequest: _enc_logout_request,
    SnackRequest: _enc_snack_request,
    NopIn: _enc_nop_in,
    ScsiResponse: _enc_scsi_response,
    TaskManagementResponse: _enc_task_mgmt_response,
    LoginResponse: _enc_login_response,
    TextResponse: _enc_text_response,
    DataIn: _enc_data_in,
    LogoutResponse: _enc_logout_response,
    R2T: _enc_r2t,
    AsyncMessage: _enc_async_message,
    Reject: _enc_reject,
}


def encode(pdu: Pdu, *, header_digest: bool = False,
           data_digest: bool = False) -> list[bytes | memoryview]:
    """Serialize ``pdu`` into the buffers to write, in order.

    ``[BHS(+AHS)(+HeaderDigest), data, padding, DataDigest]``, leaving out empty parts (the data
    digest is present only with a non-empty data segment, §11.2.1.5).  The data segment object is
    passed through as is, not copied.  LocalProtocolError for a value that does not fit its field.
    """
    try:
        encoder = _ENCODERS[type(pdu)]
    except KeyError:
        raise LocalProtocolError(f"cannot encode {type(pdu).__name__}: not a PDU") from None
    data = pdu.data
    dsl = data.nbytes if type(data) is memoryview else len(data)
    if dsl > MAX_DATA_SEGMENT_LENGTH:
        raise LocalProtocolError(f"data segment of {dsl} bytes exceeds 2^24-1")
    try:
        header = encoder(pdu, dsl)
    except struct.error as exc:
        raise LocalProtocolError(f"{type(pdu).__name__} field out of range: {exc}") from None
    return _frame(header, data, dsl, header_digest, data_digest)


def _frame(header: bytes, data: Data, dsl: int, header_digest: bool,
           data_digest: bool) -> list[bytes | memoryview]:
    """Header digest, data segment, padding and data digest around an encoded header."""
    if header_digest:
        header += _DIGEST.pack(crc32c(header))
    if not dsl:
        return [header]
    pad = _PADS[dsl & 3]
    out: list[bytes | memoryview] = [header, data]
    if pad:
        out.append(pad)
    if data_digest:
        digest = crc32c(data)
        if pad:
            digest = crc32c(pad, digest)
        out.append(_DIGEST.pack(digest))
    return out


# The two PDUs of the data path, encoded straight from their field values (no PDU object per
# command): byte for byte what ``encode(ScsiCommand(...))`` / ``encode(DataOut(...))`` give.

def encode_scsi_command(itt: int, lun: int, cdb: bytes, edtl: int, cmd_sn: int,
                        exp_stat_sn: int, read: bool, write: bool, final: bool, data: Data,
                        header_digest: bool = False,
                        data_digest: bool = False) -> list[bytes | memoryview]:
    """A SIMPLE, non-immediate SCSI Command (§11.3) with a CDB of at most 16 bytes."""
    dsl = len(data)
    flags = ((_F_BIT if final else 0) | (_R_BIT if read else 0) | (_W_BIT if write else 0)
             | 1)
    header = _SCSI_COMMAND.pack(Opcode.SCSI_COMMAND, flags, dsl, lun, itt, edtl, cmd_sn,
                                exp_stat_sn, cdb)
    if not dsl and not header_digest:
        return [header]
    return _frame(header, data, dsl, header_digest, data_digest)


def encode_data_out(itt: int, ttt: int, lun: int, exp_stat_sn: int, data_sn: int,
                    buffer_offset: int, final: bool, data: Data, header_digest: bool = False,
                    data_digest: bool = False) -> list[bytes | memoryview]:
    """One Data-Out PDU (§11.7)."""
    dsl = len(data)
    header = _DATA_OUT.pack(Opcode.DATA_OUT, _F_BIT if final else 0, dsl, lun, itt, ttt,
                            exp_stat_sn, data_sn, buffer_offset)
    return _frame(header, data, dsl, header_digest, data_digest)


# ---------------------------------------------------------------------------------------------
# Decoding.  Each _dec_* takes (buf, pos, ahs, data): the BHS starts at buf[pos].
# ---------------------------------------------------------------------------------------------

def _dec_nop_out(buf, pos, ahs, data):
    b0, _f, _w, lun, itt, ttt, cmd_sn, exp_stat_sn = _NOP_OUT.unpack_from(buf, pos)
    return NopOut(itt, ttt, lun, cmd_sn, exp_stat_sn, bool(b0 & _I_BIT), data)


def _dec_scsi_command(buf, pos, ahs, data):
    (b0, flags, _w, lun, itt, edtl, cmd_sn, exp_stat_sn,
     cdb) = _SCSI_COMMAND.unpack_from(buf, pos)
    extra_ahs = b""
    if ahs:
        ext_cdb, extra_ahs = _split_ahs(ahs)
        if ext_cdb:
            cdb += ext_cdb
    return ScsiCommand(itt, lun, cdb, edtl, cmd_sn, exp_stat_sn, bool(flags & _R_BIT),
                       bool(flags & _W_BIT), bool(flags & _F_BIT), flags & _ATTR_MASK,
                       bool(b0 & _I_BIT), extra_ahs, data)


def _dec_task_mgmt_request(buf, pos, ahs, data):
    (b0, flags, _w, lun, itt, ref_tag, cmd_sn, exp_stat_sn, ref_cmd_sn,
     exp_data_sn) = _TASK_MGMT_REQUEST.unpack_from(buf, pos)
    return TaskManagementRequest(itt, flags & 0x7F, lun, ref_tag, cmd_sn, exp_stat_sn,
                                 ref_cmd_sn, exp_data_sn, bool(b0 & _I_BIT), data)


def _dec_login_request(buf, pos, ahs, data):
    (_b0, flags, vmax, vmin, _w, isid_hi, isid_lo, tsih, itt, cid, cmd_sn,
     exp_stat_sn) = _LOGIN_REQUEST.unpack_from(buf, pos)
    return LoginRequest((isid_hi << 32) | isid_lo, tsih, itt, cid, cmd_sn, exp_stat_sn,
                        (flags >> 2) & 3, flags & 3, bool(flags & _T_BIT), bool(flags & _C_BIT),
                        vmax, vmin, data)


def _dec_text_request(buf, pos, ahs, data):
    b0, flags, _w, lun, itt, ttt, cmd_sn, exp_stat_sn = _TEXT_REQUEST.unpack_from(buf, pos)
    return TextRequest(itt, ttt, lun, cmd_sn, exp_stat_sn, bool(flags & _F_BIT),
                       bool(flags & _C_BIT), bool(b0 & _I_BIT), data)


def _dec_data_out(buf, pos, ahs, data):
    (_b0, flags, _w, lun, itt, ttt, exp_stat_sn, data_sn,
     offset) = _DATA_OUT.unpack_from(buf, pos)
    return DataOut(itt, ttt, lun, exp_stat_sn, data_sn, offset, bool(flags & _F_BIT), data)


def _dec_logout_request(buf, pos, ahs, data):
    b0, flags, _w, itt, cid, cmd_sn, exp_stat_sn = _LOGOUT_REQUEST.unpack_from(buf, pos)
    return LogoutRequest(itt, flags & 0x7F, cid, cmd_sn, exp_stat_sn, bool(b0 & _I_BIT), data)


def _dec_snack_request(buf, pos, ahs, data):
    (_b0, flags, _w, lun, itt, ttt, exp_stat_sn, beg_run,
     run_length) = _SNACK_REQUEST.unpack_from(buf, pos)
    return SnackRequest(itt, ttt, lun, exp_stat_sn, beg_run, run_length, flags & 0x0F, data)


def _dec_nop_in(buf, pos, ahs, data):
    _b0, _f, _w, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn = _NOP_IN.unpack_from(buf, pos)
    return NopIn(itt, ttt, lun, stat_sn, exp_cmd_sn, max_cmd_sn, data)


def _dec_scsi_response(buf, pos, ahs, data):
    (_b0, flags, response, status, _w, itt, stat_sn, exp_cmd_sn, max_cmd_sn, exp_data_sn,
     bidi_residual, residual) = _SCSI_RESPONSE.unpack_from(buf, pos)
    return ScsiResponse(itt, response, status, stat_sn, exp_cmd_sn, max_cmd_sn, exp_data_sn,
                        bidi_residual, residual, bool(flags & _RSP_OVERFLOW),
                        bool(flags & _RSP_UNDERFLOW), bool(flags & _RSP_BIDI_OVERFLOW),
                        bool(flags & _RSP_BIDI_UNDERFLOW), data)


def _dec_task_mgmt_response(buf, pos, ahs, data):
    (_b0, _f, response, _w, itt, stat_sn, exp_cmd_sn,
     max_cmd_sn) = _TASK_MGMT_RESPONSE.unpack_from(buf, pos)
    return TaskManagementResponse(itt, response, stat_sn, exp_cmd_sn, max_cmd_sn, data)


def _dec_login_response(buf, pos, ahs, data):
    (_b0, flags, vmax, vactive, _w, isid_hi, isid_lo, tsih, itt, stat_sn, exp_cmd_sn,
     max_cmd_sn, status_class, status_detail) = _LOGIN_RESPONSE.unpack_from(buf, pos)
    return LoginResponse((isid_hi << 32) | isid_lo, tsih, itt, stat_sn, exp_cmd_sn, max_cmd_sn,
                         status_class, status_detail, (flags >> 2) & 3, flags & 3,
                         bool(flags & _T_BIT), bool(flags & _C_BIT), vmax, vactive, data)


def _dec_text_response(buf, pos, ahs, data):
    (_b0, flags, _w, lun, itt, ttt, stat_sn, exp_cmd_sn,
     max_cmd_sn) = _TEXT_RESPONSE.unpack_from(buf, pos)
    return TextResponse(itt, ttt, lun, stat_sn, exp_cmd_sn, max_cmd_sn, bool(flags & _F_BIT),
                        bool(flags & _C_BIT), data)


def _dec_data_in(buf, pos, ahs, data):
    (_b0, flags, status, _w, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, offset,
     residual) = _DATA_IN.unpack_from(buf, pos)
    return DataIn(itt, ttt, lun, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, offset, residual,
                  bool(flags & _F_BIT), bool(flags & _A_BIT), bool(flags & _RSP_OVERFLOW),
                  bool(flags & _RSP_UNDERFLOW), bool(flags & _S_BIT), status, data)


def _dec_logout_response(buf, pos, ahs, data):
    (_b0, _f, response, _w, itt, stat_sn, exp_cmd_sn, max_cmd_sn, time2wait,
     time2retain) = _LOGOUT_RESPONSE.unpack_from(buf, pos)
    return LogoutResponse(itt, response, stat_sn, exp_cmd_sn, max_cmd_sn, time2wait,
                          time2retain, data)


def _dec_r2t(buf, pos, ahs, data):
    (_b0, _f, _w, lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn, offset,
     desired) = _R2T.unpack_from(buf, pos)
    return R2T(itt, ttt, lun, stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn, offset, desired, data)


def _dec_async_message(buf, pos, ahs, data):
    (_b0, _f, _w, lun, _itt, stat_sn, exp_cmd_sn, max_cmd_sn, event, vcode, p1, p2,
     p3) = _ASYNC_MESSAGE.unpack_from(buf, pos)
    return AsyncMessage(lun, stat_sn, exp_cmd_sn, max_cmd_sn, event, vcode, p1, p2, p3, data)


def _dec_reject(buf, pos, ahs, data):
    (_b0, _f, reason, _w, _itt, stat_sn, exp_cmd_sn, max_cmd_sn,
     data_sn) = _REJECT.unpack_from(buf, pos)
    return Reject(reason, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, data)


_DecodeFn = Callable[[bytearray, int, bytes, bytes], "Pdu"]
_DECODERS: dict[int, _DecodeFn] = {
    Opcode.NOP_OUT: _dec_nop_out,
    Opcode.SCSI_COMMAND: _dec_scsi_command,
    Opcode.TASK_MGMT_REQUEST: _dec_task_mgmt_request,
    Opcode.LOGIN_REQUEST: _dec_login_request,
    Opcode.TEXT_REQUEST: _dec_text_request,
    Opcode.DATA_OUT: _dec_data_out,
    Opcode.LOGOUT_REQUEST: _dec_logout_request,
    Opcode.SNACK_REQUEST: _dec_snack_request,
    Opcode.NOP_IN: _dec_nop_in,
    Opcode.SCSI_RESPONSE: _dec_scsi_response,
    Opcode.TASK_MGMT_RESPONSE: _dec_task_mgmt_response,
    Opcode.LOGIN_RESPONSE: _dec_login_response,
    Opcode.TEXT_RESPONSE: _dec_text_response,
    Opcode.DATA_IN: _dec_data_in,
    Opcode.LOGOUT_RESPONSE: _dec_logout_response,
    Opcode.R2T: _dec_r2t,
    Opcode.ASYNC_MESSAGE: _dec_async_message,
    Opcode.REJECT: _dec_reject,
}
# Plain-int keys so that lookups by the masked opcode byte need no enum conversion.
_TARGET_DECODERS = {int(op): fn for op, fn in _DECODERS.items() if op in TARGET_OPCODES}
_INITIATOR_DECODERS = {int(op): fn for op, fn in _DECODERS.items() if op in INITIATOR_OPCODES}
_ALL_DECODERS = {int(op): fn for op, fn in _DECODERS.items()}


def _split_ahs(ahs: bytes) -> tuple[bytes, bytes]:
    """Walk the AHS segments (§11.2.2). Returns (extended CDB bytes, other segments raw)."""
    end = len(ahs)
    off = 0
    ext_cdb = b""
    others = []
    while off < end:
        if end - off < 4:
            raise RemoteProtocolError(
                f"AHS overflow: {end - off} trailing byte(s) at AHS offset {off}")
        ahs_length, ahs_type, _specific = _AHS_HEADER.unpack_from(ahs, off)
        seg_end = off + 3 + ahs_length
        if seg_end > end:
            raise RemoteProtocolError(
                f"AHS overflow: AHSLength {ahs_length} at offset {off} runs past "
                f"TotalAHSLength ({end} bytes)")
        padded_end = (seg_end + 3) & ~3
        if ahs_type == AHS_EXTENDED_CDB:
            if ext_cdb or ahs_length < 2:
                raise RemoteProtocolError("malformed or duplicate extended CDB AHS")
            ext_cdb = ahs[off + 4:seg_end]
        else:
            others.append(ahs[off:padded_end])
        off = padded_end
    return ext_cdb, b"".join(others)


# Free space the decoder offers per receive: enough for several maximal PDUs at once.
RECEIVE_CHUNK = 1 << 20


class PduDecoder:
    """Incremental PDU decoder: receive into ``get_buffer()`` (or ``feed()`` bytes), then call
    ``next_pdu()`` until it returns None.

    ``initiator_side=True`` (we are the initiator) accepts target opcodes only; ``False`` (a test
    target) accepts initiator opcodes only.  ``max_data_segment_length`` (our
    MaxRecvDataSegmentLength), ``header_digest`` and ``data_digest`` may be changed between PDUs
    (they apply from the next header parsed).

    Data segments are returned as ``bytes``, except the payload of a Data-In PDU when ``borrow``
    is set: then it is a ``memoryview`` of the decoder's own buffer, valid only until the next
    ``get_buffer()`` / ``feed()`` call. The connection copies it straight into the reader's
    buffer, so a read is copied once in user space.

    The receive buffer is never resized in place (a live view would forbid it): it is reused
    from the front, and replaced by a larger one only when a single PDU does not fit.

    Any malformed input raises RemoteProtocolError; from then on every call raises it again.
    """

    __slots__ = ("max_data_segment_length", "header_digest", "data_digest", "borrow",
                 "_initiator_side", "_table", "_buf", "_view", "_start", "_end", "_pending",
                 "_error")

    def __init__(self, *, max_data_segment_length: int = 8192, header_digest: bool = False,
                 data_digest: bool = False, initiator_side: bool = True, borrow: bool = False,
                 capacity: int = 1 << 16):
        self.max_data_segment_length = max_data_segment_length
        self.header_digest = header_digest
        self.data_digest = data_digest
        self.borrow = borrow
        self.initiator_side = initiator_side
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self._start = 0               # first unconsumed byte
        self._end = 0                 # end of the bytes received
        # header of the PDU being received, parsed once:
        # (decode fn, AHS length, header length incl. digest, DataSegmentLength, total, digest?)
        self._pending: tuple | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def initiator_side(self) -> bool:
        """True: we are the initiator and accept target PDUs; False: the reverse."""
        return self._initiator_side

    @initiator_side.setter
    def initiator_side(self, value: bool) -> None:
        self._initiator_side = bool(value)
        self._table = _TARGET_DECODERS if value else _INITIATOR_DECODERS

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as PDUs."""
        return self._end - self._start

    def get_buffer(self, sizehint: int = RECEIVE_CHUNK) -> memoryview:
        """Writable space to receive into (``sock.recv_into``); then call ``buffer_updated``.

        It holds at least ``sizehint`` bytes, and always room for the rest of the PDU being
        received, so one PDU never needs two buffers.
        """
        if self._error is not None:
            raise RemoteProtocolError(self._error.reason)
        pending = self._pending
        need = sizehint
        if pending is not None:
            need = max(need, pending[4] - (self._end - self._start))
        if len(self._buf) - self._end < need:
            self._make_room(need)
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last ``get_buffer()`` view."""
        if not 0 <= nbytes <= len(self._buf) - self._end:
            raise LocalProtocolError(f"buffer_updated({nbytes}) beyond the buffer offered")
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (a copy; ``get_buffer`` avoids it)."""
        n = len(data)
        self.get_buffer(n)[:n] = data
        self._end += n

    def _make_room(self, need: int) -> None:
        start, end = self._start, self._end
        live = end - start
        if live + need <= len(self._buf):
            if live:
                tail = bytes(self._view[start:end])
                self._view[:live] = tail
            self._start, self._end = 0, live
            return
        bigger = bytearray(max(2 * len(self._buf), live + need))
        bigger[:live] = self._view[start:end]
        self._buf = bigger
        self._view = memoryview(bigger)
        self._start, self._end = 0, live

    def next_pdu(self) -> Pdu | None:
        """The next complete PDU, or None if more bytes are needed."""
        if self._error is not None:
            raise RemoteProtocolError(self._error.reason)
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> Pdu | None:
        buf = self._buf
        pos = self._start
        avail = self._end - pos
        pending = self._pending
        if pending is None:
            if avail < BHS_LEN:
                return None
            b0, word = _BHS_COMMON.unpack_from(buf, pos)
            opcode = b0 & _OPCODE_MASK
            fn = self._table.get(opcode)
            if fn is None:
                raise self._unknown_opcode(opcode)
            ahs_len = (word >> 24) << 2
            dsl = word & 0xFFFFFF
            hdr_len = BHS_LEN + ahs_len
            if self.header_digest:
                if avail < hdr_len + 4:
                    return None
                actual = crc32c(self._view[pos:pos + hdr_len])
                expected = _DIGEST.unpack_from(buf, pos + hdr_len)[0]
                if actual != expected:
                    raise RemoteProtocolError(
                        f"header digest mismatch on {_opname(opcode)}: received {expected:#010x}, "
                        f"computed {actual:#010x}")
                hdr_len += 4
            limit = self.max_data_segment_length
            if dsl > limit:
                raise RemoteProtocolError(
                    f"{_opname(opcode)} DataSegmentLength {dsl} exceeds "
                    f"MaxRecvDataSegmentLength {limit}")
            digest = self.data_digest and dsl > 0
            total = hdr_len + ((dsl + 3) & ~3) + (4 if digest else 0)
            pending = self._pending = (fn, ahs_len, hdr_len, dsl, total, digest)
        fn, ahs_len, hdr_len, dsl, total, digest = pending
        if avail < total:
            return None
        data_start = pos + hdr_len
        if dsl:
            view = self._view
            if digest:
                padded_end = data_start + ((dsl + 3) & ~3)
                actual = crc32c(view[data_start:padded_end])
                expected = _DIGEST.unpack_from(buf, padded_end)[0]
                if actual != expected:
                    raise RemoteProtocolError(
                        f"data digest mismatch on {_opname(buf[pos] & _OPCODE_MASK)}: "
                        f"received {expected:#010x}, computed {actual:#010x}")
            if self.borrow and fn is _dec_data_in:
                data = view[data_start:data_start + dsl]
            else:
                data = bytes(view[data_start:data_start + dsl])
        else:
            data = b""
        ahs = bytes(buf[pos + BHS_LEN:pos + BHS_LEN + ahs_len]) if ahs_len else b""
        if ahs and fn is not _dec_scsi_command:
            _split_ahs(ahs)          # AHS is only defined for SCSI Command: validate, drop
        pdu = fn(buf, pos, ahs, data)
        self._pending = None
        pos += total
        if pos == self._end:
            self._start = self._end = 0
        else:
            self._start = pos
        return pdu

    def _unknown_opcode(self, opcode: int) -> RemoteProtocolError:
        if self._table is _ALL_DECODERS:
            return RemoteProtocolError(f"unknown opcode {opcode:#04x}")
        side = "target" if self._table is _TARGET_DECODERS else "initiator"
        return RemoteProtocolError(f"opcode {_opname(opcode)} is not a valid {side} PDU")


def _opname(opcode: int) -> str:
    try:
        return f"{Opcode(opcode).name} ({opcode:#04x})"
    except ValueError:
        return f"{opcode:#04x}"


def decode(buf: bytes | bytearray | memoryview, *, header_digest: bool = False,
           data_digest: bool = False,
           max_data_segment_length: int = MAX_DATA_SEGMENT_LENGTH) -> Pdu:
    """Decode exactly one complete PDU of either direction.

    RemoteProtocolError if ``buf`` is malformed, incomplete, or has bytes after the PDU.
    """
    decoder = PduDecoder(max_data_segment_length=max_data_segment_length,
                         header_digest=header_digest, data_digest=data_digest)
    decoder._table = _ALL_DECODERS
    decoder.feed(buf)
    pdu = decoder.next_pdu()
    if pdu is None:
        raise RemoteProtocolError(f"truncated PDU ({len(buf)} bytes)")
    if decoder.buffered:
        raise RemoteProtocolError(f"{decoder.buffered} bytes after the end of the PDU")
    return pdu
