"""``iscsifs session``: the sessions of every running iscsifs mount, in ``iscsiadm -m session``'s
shapes (``-P 0..3``, ``-s``), or as JSON.

Owns: finding the mounts (``mounttable``: fstype ``fuse.iscsifs``), reading each mount's own
files, and printing them. No daemon is asked and nothing logs in: a mount's top-level
``sessions`` file lists its live sessions (``tcp: [SID] ADDR:PORT,TPGT IQN``), and only those
sessions' ``portals/<ADDR:PORT>/targets/<IQN>/session.json`` files are read, so no
``targets/`` directory is listed (listing one runs discovery).

A mount whose daemon hangs must not hang the command: each mount is read in its own daemon
thread, and whatever has not answered by the deadline (``--timeout``, 5 s) is skipped with a
one-line warning. A FUSE read can't be given a timeout (O_NONBLOCK means nothing to it) and a
thread can't be cancelled, but a daemon thread doesn't keep the process alive: the kernel ends
its wait (a killable one) when the process exits.

Each session is read from its ``session.json`` (schema ``iscsifs.session/1``, docs/json.md)
and printed by ``iscsifs.sessionfile``, the layout the mount's ``session`` text file has, at
the print level asked: -P 1 the portals, the interface, SID and states; -P 2 adds timeouts,
CHAP (usernames only) and the negotiated parameters; -P 3 adds the version lines and the
attached LUNs. Session IDs are unique across mounts (``mount/sids.py``), so ``-r SID`` picks
one session.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from iscsifs.errors import EXIT_INVALID_ARGUMENT, EXIT_NO_OBJECTS, QuietError
from iscsifs.mounttable import iscsifs_mounts
from iscsifs.sessionfile import (ATTACHED, CHAP, INTERFACE, NEGOTIATED, TIMEOUTS, SessionText,
                                 check_session_facts, session_text)

DEFAULT_TIMEOUT = 5.0
NO_SESSIONS = "No active sessions."
READ_LIMIT = 1 << 20           # a session.json is a few KiB; never read more than this

# the print level (-P) from which iscsiadm shows each section
LEVEL_OF_SECTION = {INTERFACE: 1, TIMEOUTS: 2, CHAP: 2, NEGOTIATED: 2, ATTACHED: 3}


@dataclass
class SessionRecord:
    """One session of one mount: its ``session.json`` snapshot."""

    mount: str
    sid: int
    target: str
    portal: str                                 # persistent portal ADDR:PORT,TPGT (the dir)
    path: str                                   # the session.json file
    facts: dict[str, Any] = field(default_factory=dict)

    def raw_path(self, relative: str) -> str:
        return os.path.join(os.path.dirname(self.path), relative)

    def text(self) -> SessionText:
        """The session in the ``session`` file's layout, with absolute ``raw`` paths."""
        return session_text(self.facts, raw_path=self.raw_path)

    def as_json(self) -> dict[str, Any]:
        """One element of ``iscsifs session --json``: the snapshot plus where it came from."""
        return {**self.facts, "mount": self.mount, "session_file": self.path}


def parse_session_list(text: str) -> list[tuple[int, str, str]]:
    """The top-level ``sessions`` file -> (sid, portal ADDR:PORT,TPGT, target) per line."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        # tcp: [SID] ADDR:PORT,TPGT IQN (non-flash)
        if len(parts) < 4 or parts[0] != "tcp:" or not (parts[1].startswith("[")
                                                         and parts[1].endswith("]")):
            continue
        sid_text = parts[1][1:-1]
        if sid_text.isdigit():
            found.append((int(sid_text), parts[2], parts[3]))
    return found


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(READ_LIMIT).decode("utf-8", "replace")


def read_facts(path: str, sid: int) -> dict[str, Any]:
    """The ``session.json`` at ``path``, checked to be session ``sid``'s logged-in snapshot
    (``sessionfile.check_session_facts``); OSError or ValueError otherwise."""
    return check_session_facts(json.loads(_read(path)), sid)


def read_mount(mount: str) -> list[SessionRecord]:
    """Every live session of one mount (blocking reads of its files)."""
    records = []
    for sid, portal, target in parse_session_list(_read(os.path.join(mount, "sessions"))):
        address = portal.rpartition(",")[0] or portal
        if "/" in address or "/" in target or target in (".", ".."):
            continue                      # names are checked by the mount; never trust them
        path = os.path.join(mount, "portals", address, "targets", target, "session.json")
        try:
            facts = read_facts(path, sid)
        except (OSError, ValueError):
            continue                      # logged out between the two reads
        records.append(SessionRecord(mount=mount, sid=sid, target=target, portal=portal,
                                     path=path, facts=facts))
    return records


@dataclass
class MountResult:
    mount: str
    records: list[SessionRecord] | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


def collect(mounts: list[str], timeout: float) -> list[MountResult]:
    """Read every mount in its own daemon thread; those not done by ``timeout`` keep
    ``done`` unset (their thread is abandoned)."""
    results = [MountResult(m) for m in mounts]

    def work(result: MountResult) -> None:
        try:
            result.records = read_mount(result.mount)
        except OSError as exc:
            result.error = exc.strerror or str(exc)
        except Exception as exc:          # noqa: BLE001 - one broken mount, not the command
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            result.done.set()

    for result in results:
        threading.Thread(target=work, args=(result,), daemon=True,
                         name=f"iscsifs-session {result.mount}").start()
    deadline = time.monotonic() + timeout
    for result in results:
        result.done.wait(max(0.0, deadline - time.monotonic()))
    return results


# ------------------------------------------------------------------------------ printing
def _grouped(records: list[SessionRecord]) -> list[SessionRecord]:
    """iscsiadm's order: sessions of one target together (in order of their first SID),
    by SID within it."""
    first: dict[str, int] = {}
    for r in sorted(records, key=lambda r: r.sid):
        first.setdefault(r.target, r.sid)
    return sorted(records, key=lambda r: (first[r.target], r.sid))


def render_flat(records: list[SessionRecord]) -> str:
    return "".join(f"tcp: [{r.sid}] {r.portal} {r.target} (non-flash)\n"
                   for r in sorted(records, key=lambda r: r.sid))


def render_tree(records: list[SessionRecord], level: int) -> str:
    out: list[str] = []
    ordered = _grouped(records)
    if level >= 3 and ordered:
        out += ordered[0].text().header
    prev: SessionRecord | None = None
    for r in ordered:
        text = r.text()
        if prev is None or prev.target != r.target:
            out.append(text.target_line)
            prev = None
        if prev is None or prev.portal != r.portal:
            out += text.portal_lines
        else:
            out.append("")
        for section in text.sections:
            if LEVEL_OF_SECTION.get(section.title, 3) > level:
                continue
            out += [f"\t\t{section.stars}", f"\t\t{section.title}", f"\t\t{section.stars}",
                    *section.lines]
        prev = r
    return "\n".join(out) + "\n" if out else ""


def render_stats(records: list[SessionRecord]) -> str:
    return "".join("\n".join(r.text().stats) + "\n"
                   for r in sorted(records, key=lambda r: r.sid))


def run(args: Any) -> int:
    if args.print_level is not None and not 0 <= args.print_level <= 3:
        raise QuietError(f"invalid info level {args.print_level}; try 0 - 3",
                         EXIT_INVALID_ARGUMENT)
    if args.timeout <= 0:
        raise QuietError("--timeout must be positive", EXIT_INVALID_ARGUMENT)
    if args.json and (args.print_level is not None or args.stats):
        # iscsiadm has no --json; rather than drop -P or -s silently, say so
        raise QuietError("--json prints every detail of each session: it takes no "
                         f"{'-P' if args.print_level is not None else '-s'}",
                         EXIT_INVALID_ARGUMENT)
    mounts = iscsifs_mounts()
    if args.mountpoints:
        wanted = [os.path.abspath(m) for m in args.mountpoints]
        for m in wanted:
            if m not in mounts:
                raise QuietError(f"{m} is not an iscsifs mount point", EXIT_INVALID_ARGUMENT)
        mounts = [m for m in mounts if m in wanted]
    records: list[SessionRecord] = []
    for result in collect(mounts, args.timeout):
        if not result.done.is_set():
            print(f"iscsifs: {result.mount}: no answer within {args.timeout:g} s; skipped",
                  file=sys.stderr, flush=True)
        elif result.error is not None:
            print(f"iscsifs: {result.mount}: {result.error}; skipped", file=sys.stderr,
                  flush=True)
        else:
            records += result.records or []
    if args.sid is not None:
        records = [r for r in records if r.sid == args.sid]
        if not records:
            raise QuietError(f"no session with SID {args.sid}", EXIT_NO_OBJECTS)
    if args.json:
        print(json.dumps([r.as_json() for r in sorted(records, key=lambda r: r.sid)],
                         indent=2))
        return 0
    if not records:
        raise QuietError(NO_SESSIONS, EXIT_NO_OBJECTS)
    if args.stats:
        sys.stdout.write(render_stats(records))
    elif not args.print_level:
        sys.stdout.write(render_flat(records))
    else:
        sys.stdout.write(render_tree(records, args.print_level))
    return 0


_EPILOG = """\
examples (iscsiadm -m session equivalents):
  iscsifs session                     tcp: [SID] ADDR:PORT,TPGT IQN (non-flash), one per session
  iscsifs session -P 3                portals, interface, state, timeouts, CHAP usernames,
                                      negotiated parameters, attached LUNs
  iscsifs session -s                  the counters (txdata_octets, scsicmd_pdus, ...)
  iscsifs session -r 3 -P 1           one session by its SID
  iscsifs session --json              a JSON list: each session as its session.json
                                      (schema iscsifs.session/1) plus mount, session_file
  iscsifs session /mnt/san            only the sessions of that mount

Reads the files of every mounted iscsifs (its top-level sessions file, then each session's
portals/<portal>/targets/<iqn>/session.json); never logs in. A mount that does not answer
within --timeout seconds is skipped with a warning. --json takes no -P or -s.
exit codes: 0 ok, 7 invalid argument, 21 no active sessions (--json prints [] instead).
"""


def add_commands(subparsers: Any) -> None:
    """Add ``session`` to the ``iscsifs`` command line."""
    import argparse
    p = subparsers.add_parser("session", help="sessions of the running mounts "
                              "(iscsiadm -m session)", epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mountpoints", nargs="*", metavar="MOUNTPOINT",
                   help="only these mounts (default: every iscsifs mount)")
    p.add_argument("-P", "--print", dest="print_level", type=int, metavar="N",
                   help="detail level 0-3, as iscsiadm -P (default 0: one line each)")
    p.add_argument("-s", "--stats", action="store_true", help="the counters of each session")
    p.add_argument("-r", "--sid", type=int, metavar="SID", help="only this session")
    p.add_argument("--json", action="store_true", help="a JSON list of the sessions")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"skip a mount that does not answer within S seconds "
                        f"(default {DEFAULT_TIMEOUT:g})")
    p.set_defaults(run=run, is_async=False)
