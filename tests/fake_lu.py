"""Logical units for the scripted target (``fake_target.FakeTarget(on_command=LuTable(...))``):
enough SCSI for ``device.Lun`` and the ``Initiator`` to find, identify and use them, as tgt
answers - and what tgt cannot be made to do on cue (a LUN number that names another logical
unit after a relogin, an async event, UNIT ATTENTION on a chosen command).

``LuTable`` answers INQUIRY (standard, VPD 00h/80h/83h), REPORT LUNS, READ CAPACITY(10/16),
MODE SENSE(6), TEST UNIT READY, SYNCHRONIZE CACHE, WRITE SAME(16) with UNMAP (``thin``
LUs) and READ/WRITE(10/16) (a write's data must come whole with the command: at most the
target's 8 KiB, or gathered from Data-Out by ``FakeTarget(transfers=True)``) for the LUs in
``luns`` (LUN 0 is a storage array controller, as tgt's). A LUN number it does not have
answers INQUIRY with peripheral qualifier 011b and everything else with ILLEGAL REQUEST
25/00, as tgt does. Every new connection gets UNIT ATTENTION 29/00 once per LU (tgt: "power
on, reset"); ``replace``, ``remove`` and ``add`` queue 3F/0E for the other LUs (tgt does);
``ua`` queues any other. ``port=(relative port, target port group)`` makes the table one
target port of an ALUA logical unit: INQUIRY reports TPGS (implicit) and VPD 83h that port's
designators (``fake_target.AluaUnit``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from iscsifs.core.pdu import DataIn, ScsiCommand, ScsiResponse, decode_lun

if TYPE_CHECKING:       # fake_target imports this module (AluaUnit)
    from fake_target import TargetConn


@dataclass
class FakeLU:
    """One logical unit: its blocks and its identity (VPD 80h serial, VPD 83h NAA)."""

    serial: str = "beaf11"
    naa: str = "60000000000000000e00000000010001"       # 16 bytes in hex
    blocks: int = 64
    block_size: int = 512
    data: bytearray = field(default_factory=bytearray)
    writes: list = field(default_factory=list)          # (lba, bytes) of each WRITE
    thin: bool = False          # LBPME: discards go out as WRITE SAME(16) with UNMAP
    vendor: str = "IET"         # standard INQUIRY (8 and 16 characters at most)
    product: str = "VIRTUAL-DISK"

    def __post_init__(self) -> None:
        if not self.data:
            seed = self.serial.encode()
            self.data = bytearray((seed * (self.blocks * self.block_size // len(seed) + 1))
                                  [:self.blocks * self.block_size])

    @property
    def wwn(self) -> str:
        return "naa." + self.naa


def sense_data(key: int, asc: int, ascq: int) -> bytes:
    """Fixed-format sense with its SenseLength prefix, for a SCSI Response's data segment."""
    sense = bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])
    return len(sense).to_bytes(2, "big") + sense


def respond(conn: TargetConn, cmd: ScsiCommand, status: int = 0, data: bytes = b""):
    return ScsiResponse(itt=cmd.itt, response=0, status=status, exp_data_sn=0,
                        bidi_read_residual_count=0, residual_count=0, overflow=False,
                        underflow=False, bidi_overflow=False, bidi_underflow=False, data=data,
                        **conn.sns())


def data_in(conn: TargetConn, cmd: ScsiCommand, payload: bytes):
    """The answer to a data-in command: at most the expected length, the rest as residual."""
    want = cmd.expected_data_transfer_length
    payload = payload[:want]
    short = want - len(payload)
    return DataIn(itt=cmd.itt, ttt=0xFFFFFFFF, lun=0, data_sn=0, buffer_offset=0,
                  residual_count=short, final=True, acknowledge=False, overflow=False,
                  underflow=short > 0, status_present=True, status=0, data=payload,
                  **conn.sns())


class LuTable:
    """``on_command`` for ``FakeTarget``: the LUs of one target by LUN number."""

    def __init__(self, luns: dict[int, FakeLU], port: tuple[int, int] | None = None):
        self.luns = dict(luns)
        self.port = port        # (relative target port, target port group): ALUA
        self.pending: dict[int, list[tuple[int, int]]] = {}     # LUN -> queued UA (asc, ascq)
        self.commands: list[tuple[int, int, int]] = []          # (connection, LUN, opcode)
        self._connections_seen: set[int] = set()
        self.hold = None        # (conn, cmd) -> True: leave this command unanswered

    # -- changes at the target --------------------------------------------------------------
    def _others(self, lun: int, asc: int, ascq: int) -> None:
        for n in self.luns:
            if n != lun:
                self.pending.setdefault(n, []).append((asc, ascq))
        self.pending.setdefault(0, []).append((asc, ascq))

    def replace(self, lun: int, lu: FakeLU) -> None:
        """Another logical unit at ``lun`` (tgtadm delete + new, or a restart with another
        configuration)."""
        self.luns[lun] = lu
        self.pending.pop(lun, None)
        self._others(lun, 0x3F, 0x0E)

    def add(self, lun: int, lu: FakeLU) -> None:
        self.replace(lun, lu)

    def remove(self, lun: int) -> None:
        self.luns.pop(lun, None)
        self.pending.pop(lun, None)
        self._others(lun, 0x3F, 0x0E)

    def ua(self, lun: int, asc: int, ascq: int) -> None:
        self.pending.setdefault(lun, []).append((asc, ascq))

    def writes_to(self, lu: FakeLU) -> list:
        return lu.writes

    # -- commands -----------------------------------------------------------------------------
    def __call__(self, conn: TargetConn, cmd: ScsiCommand):
        lun = decode_lun(cmd.lun)
        op = cmd.cdb[0]
        self.commands.append((conn.number, lun, op))
        if conn.number not in self._connections_seen:     # a new nexus: power on / reset
            self._connections_seen.add(conn.number)
            for n in self.luns:
                self.pending.setdefault(n, []).insert(0, (0x29, 0x00))
        if self.hold is not None and self.hold(conn, cmd):
            return []
        if op == 0x12:                                  # INQUIRY: no UA, as SPC says
            return [self._inquiry(conn, cmd, lun)]
        if op == 0xA0:                                  # REPORT LUNS clears 3F/0E
            for queue in self.pending.values():
                queue[:] = [ua for ua in queue if ua != (0x3F, 0x0E)]
            body = b"".join(bytes([0, n, 0, 0, 0, 0, 0, 0]) for n in sorted({0, *self.luns}))
            return [data_in(conn, cmd, struct.pack(">II", len(body), 0) + body)]
        lu = self.luns.get(lun)
        if lu is None:
            if lun == 0 and op == 0x00:
                return [respond(conn, cmd)]
            return [respond(conn, cmd, 2, sense_data(0x05, 0x25, 0x00))]
        queue = self.pending.get(lun)
        if queue:
            asc, ascq = queue.pop(0)
            return [respond(conn, cmd, 2, sense_data(0x06, asc, ascq))]
        return self._disk(conn, cmd, lu, op)

    def _inquiry(self, conn: TargetConn, cmd: ScsiCommand, lun: int):
        lu = self.luns.get(lun)
        evpd, page = cmd.cdb[1] & 1, cmd.cdb[2]
        if lun == 0 and lu is None:
            qualifier_type = 0x0C                   # storage array controller
        elif lu is None:
            qualifier_type = 0x7F                   # 011b: no LU can be here
        else:
            qualifier_type = 0x00
        if not evpd:
            tpgs = 0x10 if self.port is not None and lu is not None else 0   # implicit ALUA
            vendor, product = (lu.vendor, lu.product) if lu is not None else \
                ("IET", "VIRTUAL-DISK")
            std = bytes([qualifier_type, 0, 5, 0x12, 91, tpgs, 0, 0x02]) + \
                vendor.encode().ljust(8) + product.encode().ljust(16) + b"0001"
            return data_in(conn, cmd, std.ljust(96, b"\0"))
        if lu is None:
            return data_in(conn, cmd, bytes([qualifier_type, page, 0, 0]))
        if page == 0x00:
            body = bytes([0x00, 0x80, 0x83])
        elif page == 0x80:
            body = lu.serial.encode().rjust(36)
        elif page == 0x83:
            naa = bytes.fromhex(lu.naa)
            body = bytes([0x01, 0x03, 0, len(naa)]) + naa
            if self.port is not None:       # SPC-4 §7.8.6.6-7, association 01b: this port
                relative, group = self.port
                body += bytes([0x01, 0x14, 0, 4, 0, 0]) + relative.to_bytes(2, "big")
                body += bytes([0x01, 0x15, 0, 4, 0, 0]) + group.to_bytes(2, "big")
        else:
            return respond(conn, cmd, 2, sense_data(0x05, 0x24, 0x00))
        return data_in(conn, cmd, bytes([0, page]) + len(body).to_bytes(2, "big") + body)

    def _disk(self, conn: TargetConn, cmd: ScsiCommand, lu: FakeLU, op: int):
        bs = lu.block_size
        if op == 0x9E:                                  # READ CAPACITY(16)
            lbp = 0xC000 if lu.thin else 0                  # LBPME, LBPRZ
            return [data_in(conn, cmd, struct.pack(">QIBBH", lu.blocks - 1, bs, 0, 0, lbp)
                            .ljust(32, b"\0"))]
        if op == 0x93 and lu.thin:                      # WRITE SAME(16) with UNMAP
            lba = int.from_bytes(cmd.cdb[2:10], "big")
            count = int.from_bytes(cmd.cdb[10:14], "big")
            lu.data[lba * bs:(lba + count) * bs] = bytes(count * bs)
            return [respond(conn, cmd)]
        if op == 0x25:
            return [data_in(conn, cmd, struct.pack(">II", lu.blocks - 1, bs))]
        if op == 0x1A:                                  # MODE SENSE(6): not write protected
            return [data_in(conn, cmd, bytes([3, 0, 0, 0]))]
        if op in (0x00, 0x35, 0x91):                    # TUR, SYNCHRONIZE CACHE(10/16)
            return [respond(conn, cmd)]
        if op in (0x28, 0x88, 0x2A, 0x8A):
            if op in (0x28, 0x2A):
                lba = int.from_bytes(cmd.cdb[2:6], "big")
                count = int.from_bytes(cmd.cdb[7:9], "big")
            else:
                lba = int.from_bytes(cmd.cdb[2:10], "big")
                count = int.from_bytes(cmd.cdb[10:14], "big")
            if lba + count > lu.blocks:
                return [respond(conn, cmd, 2, sense_data(0x05, 0x21, 0x00))]
            if op in (0x28, 0x88):
                return [data_in(conn, cmd, bytes(lu.data[lba * bs:(lba + count) * bs]))]
            data = bytes(cmd.data)
            assert len(data) == count * bs, "writes must carry their data in the command"
            lu.data[lba * bs:lba * bs + len(data)] = data
            lu.writes.append((lba, data))
            return [respond(conn, cmd)]
        return [respond(conn, cmd, 2, sense_data(0x05, 0x20, 0x00))]
