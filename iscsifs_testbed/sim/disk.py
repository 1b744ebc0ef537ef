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
from array import array
from itertools import groupby

CELL = 16
BLOCK = 512
CELLS_PER_BLOCK = BLOCK // CELL
MAGIC = 0xC5
ZERO = -1           # a zero cell (discarded)
GARBAGE = -2        # bytes nobody wrote

# A cell is four native 32-bit words: MAGIC | tag << 8, the write id, the cell's index, and a
# check word (base(wid) + index), so that stamping and decoding run in C: strided memoryview
# slices and array('I', range(...)), never a Python loop per cell.
_K = 0x9E3779B1
_SPAN = (1 << 32) - (1 << 26)       # cell indices stay below 2**26
_ZEROS = bytes(1 << 20)


def _base(wid: int) -> int:
    return (wid * _K) % _SPAN


def stamp(tag: int, wid: int, first_cell: int, count: int) -> bytes:
    """``count`` cells of write ``wid`` on the LU tagged ``tag``, from cell ``first_cell``."""
    data = bytearray(count * CELL)
    mv = memoryview(data).cast("I")
    mv[0::4] = array("I", [MAGIC | tag << 8]) * count
    mv[1::4] = array("I", [wid]) * count
    mv[2::4] = array("I", range(first_cell, first_cell + count))
    b = _base(wid) + first_cell
    mv[3::4] = array("I", range(b, b + count))
    return bytes(data)


def runs(data) -> list[tuple[int, int, int, int, int]]:
    """The cells of ``data`` as runs ``(i, k, tag, wid, cell)``: ``k`` cells from index ``i``
    of ``data`` made by write ``wid`` of LU ``tag`` for cells ``cell``..``cell + k - 1``.
    ``wid`` is ZERO for zero cells and GARBAGE for bytes no write made (tag, cell -1)."""
    n = len(data) // CELL
    if not n:
        return []
    mv = memoryview(data)[:n * CELL].cast("B").cast("I")
    heads = mv[0::4].tolist()
    wids = mv[1::4].tolist()
    cells = mv[2::4].tolist()
    checks = mv[3::4].tolist()
    out = []
    i = 0
    for (h, w), grp in groupby(zip(heads, wids)):
        k = len(list(grp))
        out.extend(_classify(data, i, k, h, w, cells, checks))
        i += k
    return out


def _classify(data, i, k, h, w, cells, checks):
    if h == 0 and w == 0:
        raw = bytes(memoryview(data)[i * CELL:(i + k) * CELL])
        if raw == _ZEROS[:len(raw)]:
            return [(i, k, -1, ZERO, -1)]
        return _slow(data, i, k, cells, checks)
    if h & 0xFF == MAGIC and h >> 16 == 0:
        c = cells[i]
        b = _base(w) + c
        if cells[i:i + k] == list(range(c, c + k)) and checks[i:i + k] == list(range(b, b + k)):
            return [(i, k, h >> 8, w, c)]
    return _slow(data, i, k, cells, checks)


def _slow(data, i, k, cells, checks):
    """Cell by cell (a run that is not one clean piece of one write)."""
    mv = memoryview(data).cast("B")
    out = []
    for j in range(i, i + k):
        h, w, c, chk = memoryview(bytes(mv[j * CELL:(j + 1) * CELL])).cast("I").tolist()
        if h == 0 and w == 0 and c == 0 and chk == 0:
            item = (j, 1, -1, ZERO, -1)
        elif h & 0xFF == MAGIC and h >> 16 == 0 and chk == (_base(w) + c) & 0xFFFFFFFF:
            item = (j, 1, h >> 8, w, c)
        else:
            item = (j, 1, -1, GARBAGE, -1)
        if out and out[-1][3] == item[3] and out[-1][2] == item[2] and item[3] != GARBAGE \
                and (item[3] == ZERO or out[-1][4] + out[-1][1] == item[4]):
            p = out[-1]
            out[-1] = (p[0], p[1] + 1, p[2], p[3], p[4])
        else:
            out.append(item)
    return out


def write_ids(data) -> list[int]:
    """The write id field of every whole cell of ``data`` (cheap)."""
    n = len(data) // CELL
    if not n:
        return []
    return memoryview(data)[:n * CELL].cast("B").cast("I")[1::4].tolist()


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
