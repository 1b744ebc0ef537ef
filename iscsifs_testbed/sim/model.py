"""The data model: which write each cell of a logical unit may hold when it is read.

Owns: one record per write (the LU, the cells it covers, when its call started and was
answered - in *sequence numbers*, the simulation's total order of events - and how: ok, error,
cancelled, still pending), the history of writes per cell, the first time each write's data was
seen on the wire, and the read rule.

The read rule, for a read that started at ``rs`` and returned at ``re`` and a cell it saw holding
write ``w``: ``w`` must have covered that cell, must have started before ``re``, may have landed
(it succeeded, is still pending, was cancelled, or failed only after some of its data had been
put on the wire: "in doubt"), and must not be superseded: no write of that cell that succeeded
started after ``w`` was answered and was answered before ``rs``. A zero cell was discarded (any
discard of the cell may be it). Write id 0 is the LU's initial content.

Sequence numbers, not times: with a mock clock many events share one instant. A call's start
is numbered before its first command can reach the wire, its end after its caller resumed, so
the rule never blames the initiator for the checker's own lateness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .disk import CELL, GARBAGE, ZERO

INF = math.inf


@dataclass(slots=True)
class WriteRec:
    wid: int
    tag: int
    first: int          # first cell
    count: int
    zero: bool          # a discard (its cells become zeros)
    start: float
    end: float = INF
    outcome: str = "pending"    # ok | error | cancel | pending
    what: str = ""


class Model:
    def __init__(self):
        self.writes: dict[int, WriteRec] = {0: WriteRec(0, 0, 0, 0, False, -1, -1, "ok",
                                                        "initial content")}
        self.hist: dict[int, list[list[int]]] = {}   # LU tag -> per cell: write ids
        self.wire_first: dict[int, float] = {}      # wid -> seq first seen on the wire
        self.next_wid = 1

    def add_lu(self, tag: int, cells: int) -> None:
        self.hist[tag] = [[0] for _ in range(cells)]

    def grow_lu(self, tag: int, cells: int) -> None:
        h = self.hist[tag]
        h.extend([0] for _ in range(cells - len(h)))

    def new_write(self, tag: int, first: int, count: int, zero: bool, seq: float,
                  what: str) -> WriteRec:
        wid = self.next_wid
        self.next_wid += 1
        rec = WriteRec(wid, tag, first, count, zero, seq, what=what)
        self.writes[wid] = rec
        h = self.hist[tag]
        if first + count > len(h):
            h.extend([0] for _ in range(first + count - len(h)))
        for c in range(first, first + count):
            h[c].append(wid)
        return rec

    def answered(self, rec: WriteRec, outcome: str, seq: float) -> None:
        rec.outcome = outcome
        rec.end = INF if outcome == "cancel" else seq

    def may_have_landed(self, rec: WriteRec) -> bool:
        if rec.outcome != "error" or rec.zero:
            return True
        return self.wire_first.get(rec.wid, INF) < rec.end

    def check_cell(self, tag: int, cell: int, value: int, rs: float, re: float) -> str | None:
        """None if a read [rs, re] of ``cell`` may return write ``value`` (or ZERO), else why
        not. A cell's history is in start order, so only writes after ``value``'s own entry
        can supersede it."""
        h = self.hist[tag]
        if cell >= len(h):
            return f"cell {cell} is beyond the LU"
        hist = h[cell]
        writes = self.writes
        why = None
        for i in range(len(hist) - 1, -1, -1):
            w = hist[i]
            rec = writes[w]
            if value == ZERO:
                if not rec.zero:
                    continue
            elif w != value:
                continue
            if rec.start >= re:
                why = why or f"write {w} started after the read returned"
                continue
            if not self.may_have_landed(rec):
                why = f"write {w} ({rec.what}) landed although its caller was told it " \
                      f"failed before any of its data was sent"
                continue
            end = rec.end
            newer = None
            if end != INF:
                for k in hist[i + 1:]:
                    kr = writes[k]
                    if kr.outcome == "ok" and kr.start > end and kr.end < rs:
                        newer = kr
                        break
            if newer is not None:
                why = f"stale: write {w} ({rec.what}) was superseded by write {newer.wid} " \
                      f"({newer.what}), acknowledged before the read started (a lost update)"
                continue
            return None
        if why is None:
            if value == ZERO:
                why = "zeros where no discard ever reached"
            else:
                why = f"write {value} never covered this cell"
        return why

    def check_read(self, tag: int, first_cell: int, runs, rs: float, re: float) -> str | None:
        """Check what a read [rs, re] of the cells from ``first_cell`` returned, as
        :func:`disk.runs` describes it."""
        h = self.hist[tag]
        writes = self.writes
        for i, k, t, wid, c in runs:
            cell = first_cell + i
            if wid == GARBAGE:
                return f"cell {cell} (byte {cell * CELL}): bytes nobody wrote"
            if wid != ZERO:
                if t != tag:
                    return f"cell {cell} (byte {cell * CELL}) holds data of another logical " \
                           f"unit (tag {t}, write {wid})"
                if c != cell:
                    return f"cell {cell} (byte {cell * CELL}) holds data written for cell {c} " \
                           f"(write {wid})"
                rec = writes.get(wid)
                fast = rec is not None and rec.start < re and self.may_have_landed(rec)
            else:
                fast = False
            for j in range(cell, cell + k):
                if fast and j < len(h) and h[j][-1] == wid:
                    continue
                why = self.check_cell(tag, j, wid, rs, re)
                if why is not None:
                    shown = "zeros" if wid == ZERO else f"write {wid}"
                    return f"cell {j} (byte {j * CELL}) read {shown}: {why}"
        return None
