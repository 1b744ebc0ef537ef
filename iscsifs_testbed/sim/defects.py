"""Which known defect (issue 15) a violation points at: the triage behind the caught-defects
table of docs/failure.md.

A run in *keep-going* mode records every kind of violation (not only the first), with the
faults it injected; :func:`attribute` names the defects they show, by the invariant, the words
of the message and the faults that were needed. It is a triage aid: the table is checked by
replaying the first seed of each defect by hand.
"""

from __future__ import annotations

import re

DEFECTS = {
    1: "session stuck FAILED after a failed re-issue",
    2: "callers waiting for a cmds_max slot escape the give-up and close()",
    3: "abandoned command left at the target waiting for Data-Out",
    4: "short READ / underflow taken as data",
    5: "BUSY / TASK SET FULL fail the I/O at once",
    6: "rejected Data-Out frees the ITT; its response drops the connection",
    7: "tombstones of aborted tasks never freed",
    8: "transport backlog unbounded (NOP-In flood)",
    9: "one Logout Request per async logout event",
    13: "lost update between files of one logical unit",
    14: "capacity change seen through by-id breaks by-id",
    15: "luns()/rescan() racing a logout",
    17: "rejected SCSI Command leaves a CmdSN gap",
    18: "Async event 4 (renegotiate) ignored",
    # found by the simulator, not in the issue
    "A1": "a command still in the transport backlog goes out after its caller was answered",
    "A2": "commands waiting for our own queue depth time out as if the window were closed",
    "A3": "the replacement timeout cuts a relogin's setup short and drops its connection",
    "I1": "a failed identity INQUIRY after a relogin (a Reject) marks the LUN gone for good",
    "I2": "a capacity change made before a relogin's new I_T nexus existed is never learned",
}


def attribute(violations: dict[str, list[str]], fault_kinds: set[str]) -> dict:
    """Defect number -> the (first) violation that shows it."""
    found: dict = {}

    def note(n, inv: str, msg: str) -> None:
        found.setdefault(n, f"{inv}: {msg.splitlines()[0]}")

    stuck = "session.stuck" in violations
    for inv, msgs in violations.items():
        for msg in msgs:
            if inv == "session.stuck":
                note(1, inv, msg)
            elif inv in ("bound.replacement", "bound.closed", "unmount.pending",
                         "bound.fail_fast") and not stuck:
                # a session stuck FAILED (1) also makes callers wait past the give-up
                note(2, inv, msg)
            elif inv == "target.data_out_wait":
                note(3, inv, msg)
            elif inv in ("data.read", "data.final"):
                # a read taken as data leaves zeros (4); an acknowledged write the target
                # only partly did (underflow) or a lost update (13) leaves older data
                partial = fault_kinds & {"short_read", "underflow"}
                if "read zeros" in msg and ("stale" not in msg or partial) \
                        or "stale" in msg and "underflow" in fault_kinds:
                    note(4, inv, msg)
                elif "stale" in msg:
                    note(13, inv, msg)
            elif inv == "error.transient" and re.search(r"BUSY|TASK SET FULL", msg):
                note(5, inv, msg)
            elif inv == "conn.healthy_drop" and "unknown ITT" in msg \
                    and "reject_data_out" in fault_kinds:
                note(6, inv, msg)
            elif inv == "conn.healthy_drop" and "replacement timeout" in msg:
                note("A3", inv, msg)
            elif inv == "queue.tombstones":
                note(7, inv, msg)
            elif inv == "queue.backlog":
                note(8, inv, msg)
            elif inv == "queue.logouts":
                note(9, inv, msg)
            elif inv == "by_id.size" and msg.startswith("raw#"):
                # a raw file that never learned the size: its nexus was not told (I2)
                note("I2", inv, msg)
            elif inv in ("by_id.lost", "by_id.size"):
                note(14, inv, msg)
            elif inv == "error.unexpected" and "KeyError" in msg or inv == "unmount.session_left":
                note(15, inv, msg)
            elif inv == "target.cmdsn_gap":
                note(17, inv, msg)
            elif inv == "target.renegotiate":
                note(18, inv, msg)
            elif inv in ("wire.after_answer", "wire.failed_write"):
                note("A1", inv, msg)
            elif inv in ("liveness", "bound.never_returned"):
                # what is left broken when the faults stop: the CmdSN gap (17) holds every
                # later command; a by-id without paths after a capacity change (14); a LUN
                # taken for gone although no restart put another LU behind it (I1)
                if "NoSuchDevice" in msg and "restart_swap" not in fault_kinds:
                    note("I1", inv, msg)
                elif "reject_command" in fault_kinds and "timed out" in msg:
                    note(17, inv, msg)
                elif "CommandTimeout" in msg:
                    # once the faults stopped nothing times out, unless a command's timer
                    # ran while our own queue depth held it (a slow target at depth 1)
                    note("A2", inv, msg)
                elif "no path is available" in msg and "capacity_change" in fault_kinds:
                    note(14, inv, msg)
    return found
