"""The simulated logical units: an in-memory disk each, with the bytes the checker can read.

Owns: the *cell* format every byte on a simulated disk is made of, :class:`LogicalUnit` (the
disk, its identity - serial, WWN, a one-byte tag - and its provisioning), and the SCSI data the
target returns about it (INQUIRY and VPD pages, READ CAPACITY, REPORT LUNS, MODE SENSE, sense).

A cell is 16 bytes: magic, the LU's tag, the id of the write that put it there, the cell's own
index on the LU and a check word. Every workload write is made of cells stamped with a new
write id, so a read tells, cell by cell, which write (and which LU, which place) its bytes come
from; write id 0 is the LU's initial content. A cell of 16 zero bytes was discarded (the LU
reads zeros where it unmapped: LBPRZ). Anything else was written by nobody.
"""

from __future__ import annotations

import struct

CELL = 16
BLOCK = 512
CELLS_PER_BLOCK = BLOCK // CELL
MAGIC = 0xC5
ZERO = -1           # a zero cell (discarded)
GARBAGE = -2        # bytes nobody wrote

_STRUCTS: dict[int, struct.Struct] = {}


def _cells_struct(n: int) -> struct.Struct:
    s = _STRUCTS.get(n)
    if s is None:
        s = _STRUCTS[n] = struct.Struct(">" + "BBHIII" * n)
    return s


_WIDS: dict[int, struct.Struct] = {}


def _wids_struct(n: int) -> struct.Struct:
    s = _WIDS.get(n)
    if s is None:
        s = _WIDS[n] = struct.Struct(">" + "4xI8x" * n)
    return s


def check_word(tag: int, wid: int, cell: int) -> int:
    return ((wid * 0x9E3779B1) ^ (cell * 0x85EBCA77) ^ (tag * 0xC2B2AE3D) ^ 0x5A5A5A5A) \
        & 0xFFFFFFFF


def stamp(tag: int, wid: int, first_cell: int, count: int) -> bytes:
    """``count`` cells of write ``wid`` on the LU tagged ``tag``, from cell ``first_cell``."""
    flat: list[int] = []
    ext = flat.extend
    for cell in range(first_cell, first_cell + count):
        ext((MAGIC, tag, 0, wid, cell, check_word(tag, wid, cell)))
    return _cells_struct(count).pack(*flat)


def decode(data, first_cell: int) -> list[tuple[int, int, int]]:
    """``(tag, wid, cell)`` per cell of ``data`` (whole cells); ``wid`` is ZERO for a zero
    cell and GARBAGE for bytes no write made (then tag and cell are -1)."""
    n = len(data) // CELL
    flat = _cells_struct(n).unpack_from(data)
    out = []
    app = out.append
    for i in range(n):
        magic, tag, pad, wid, cell, chk = flat[6 * i:6 * i + 6]
        if magic == MAGIC and not pad and chk == check_word(tag, wid, cell):
            app((tag, wid, cell))
        elif not (magic or tag or pad or wid or cell or chk):
            app((-1, ZERO, first_cell + i))
        else:
            app((-1, GARBAGE, -1))
    return out


def write_ids(data) -> tuple[int, ...]:
    """The write id field of every whole cell of ``data`` (cheap: one unpack)."""
    n = len(data) // CELL
    if not n:
        return ()
    return _wids_struct(n).unpack_from(data)


class LogicalUnit:
    """One disk. ``tag`` (1-255) is in every cell it holds."""

    def __init__(self, tag: int, blocks: int, *, granularity: int = 1,
                 max_transfer_blocks: int = 0, unmap: bool = True, write_same: bool = True):
        self.tag = tag
        self.serial = f"SIM{tag:04d}"
        self.wwn_bytes = bytes.fromhex(f"6001405{tag:025x}")     # NAA 6, 16 bytes
        self.wwn = "naa." + self.wwn_bytes.hex()
        self.data = bytearray(stamp(tag, 0, 0, blocks * CELLS_PER_BLOCK))
        self.granularity = granularity
        self.max_transfer_blocks = max_transfer_blocks
        self.unmap = unmap
        self.write_same = write_same

    @property
    def blocks(self) -> int:
        return len(self.data) // BLOCK

    def grow(self, blocks: int) -> None:
        start = self.blocks * CELLS_PER_BLOCK
        self.data += stamp(self.tag, 0, start, blocks * CELLS_PER_BLOCK)

    # -- SCSI data -------------------------------------------------------------------------
    def inquiry(self) -> bytes:
        return struct.pack(">BBBBBBBB8s16s4s", 0x00, 0, 6, 0x02, 91, 0, 0, 0x02,
                           b"SIM     ", f"DISK{self.tag:<12d}".encode(), b"0001").ljust(96, b"\0")

    def vpd(self, page: int) -> bytes | None:
        if page == 0x00:
            pages = bytes([0x00, 0x80, 0x83, 0xB0, 0xB2])
            return bytes([0, 0x00, 0, len(pages)]) + pages
        if page == 0x80:
            sn = self.serial.encode()
            return bytes([0, 0x80, 0, len(sn)]) + sn
        if page == 0x83:
            desc = bytes([0x01, 0x03, 0, len(self.wwn_bytes)]) + self.wwn_bytes
            return bytes([0, 0x83]) + len(desc).to_bytes(2, "big") + desc
        if page == 0xB0:
            body = struct.pack(">BBHIIIIIIIQ", 0, 0, 1, self.max_transfer_blocks, 0, 0,
                               0xFFFFFFFF if self.unmap else 0, 16 if self.unmap else 0,
                               self.granularity, 0, 0x10000)
            return bytes([0, 0xB0, 0, 0x3C]) + body.ljust(0x3C, b"\0")
        if page == 0xB2:
            flags = (0x80 if self.unmap else 0) | (0x40 if self.write_same else 0) | 0x04
            return bytes([0, 0xB2, 0, 4, 0, flags, 2, 0])
        return None

    def capacity10(self) -> bytes:
        return struct.pack(">II", self.blocks - 1, BLOCK)

    def capacity16(self) -> bytes:
        return struct.pack(">QIBBH", self.blocks - 1, BLOCK, 0, 0, 0x8000 | 0x4000).ljust(32,
                                                                                          b"\0")

    @staticmethod
    def mode_sense6() -> bytes:
        return bytes([3, 0, 0, 0])


def report_luns(numbers) -> bytes:
    body = b"".join(bytes([0, n, 0, 0, 0, 0, 0, 0]) for n in sorted(numbers))
    return len(body).to_bytes(4, "big") + bytes(4) + body


def sense(key: int, asc: int, ascq: int) -> bytes:
    """Fixed-format sense data (SPC-4 §4.5.3), with the iSCSI SenseLength prefix."""
    raw = bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])
    return len(raw).to_bytes(2, "big") + raw
