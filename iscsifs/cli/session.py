"""``iscsifs session``: the sessions of every running iscsifs mount, in ``iscsiadm -m session``'s
shapes (``-P 0..3``, ``-s``), or as JSON.

Owns: finding the mounts (``/proc/self/mountinfo``, fstype ``fuse.iscsifs``), reading each
mount's own files, and printing them. No daemon is asked and nothing logs in: a mount's
top-level ``sessions`` file lists its live sessions (``tcp: [SID] ADDR:PORT,TPGT IQN``), and
only those sessions' ``portals/<ADDR:PORT>/targets/<IQN>/session`` files are read, so no
``targets/`` directory is listed (listing one runs discovery).

A mount whose daemon hangs must not hang the command: each mount is read in its own daemon
thread, and whatever has not answered by the deadline (``--timeout``, 5 s) is skipped with a
one-line warning. A FUSE read can't be given a timeout (O_NONBLOCK means nothing to it) and a
thread can't be cancelled, but a daemon thread doesn't keep the process alive: the kernel ends
its wait (a killable one) when the process exits.

The ``session`` file is parsed back into its sections (it is ``iscsiadm -m session -P 3`` plus
``-s``), and each print level shows the sections iscsiadm shows at that level:
-P 1 the portals, the interface, SID and states; -P 2 adds timeouts, CHAP (usernames only) and
the negotiated parameters; -P 3 adds the version lines and the attached LUNs. Session IDs are
unique across mounts (``mount/sids.py``), so ``-r SID`` picks one session.
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
from iscsifs.fs.render import DEVICE_TYPES
from iscsifs.mounttable import iscsifs_mounts
from iscsifs.scsi.parse import device_type_name

DEFAULT_TIMEOUT = 5.0
NO_SESSIONS = "No active sessions."
READ_LIMIT = 1 << 20           # a session file is a few KiB; never read more than this

# the sections of a session file, by their heading (between lines of stars)
LEVEL_OF_SECTION = {"Interface:": 1, "Timeouts:": 2, "CHAP:": 2,
                    "Negotiated iSCSI params:": 2, "Attached SCSI devices:": 3}


@dataclass
class SessionRecord:
    """One session, parsed from its mount's ``session`` file."""

    mount: str
    sid: int
    target: str
    portal: str                                 # persistent portal ADDR:PORT,TPGT (the dir)
    path: str                                   # the session file
    header: list[str] = field(default_factory=list)        # transport class, version
    portal_lines: list[str] = field(default_factory=list)  # Current / Persistent Portal
    # (heading, its line of stars, its lines), in file order
    sections: list[tuple[str, str, list[str]]] = field(default_factory=list)
    stats: list[str] = field(default_factory=list)         # "Stats for session ..." block
    extended: set[str] = field(default_factory=set)        # counters under "Extended"
    json_facts: dict[str, Any] | None = None               # the mount's session.json

    def values(self, heading: str) -> dict[str, Any]:
        """``key: value`` lines of one section as a dict (numbers as int)."""
        result: dict[str, Any] = {}
        for title, _stars, lines in self.sections:
            if title != heading:
                continue
            for line in lines:
                key, sep, value = line.strip().partition(": ")
                if sep and "\t" not in value:
                    result[key] = _number(value)
        return result

    def counters(self) -> dict[str, int]:
        result = {}
        for line in self.stats:
            if line.startswith("\t"):
                key, sep, value = line.strip().partition(": ")
                if sep and value.isdigit():
                    result[key] = int(value)
        return result

    def luns(self) -> list[dict[str, Any]]:
        """``Attached SCSI devices`` as session.json's ``luns`` (``raw`` relative to the
        target directory, as there)."""
        found: list[dict[str, Any]] = []
        for title, _stars, lines in self.sections:
            if title != "Attached SCSI devices:":
                continue
            for line in lines:
                text = line.strip()
                if " Lun: " in text and text.startswith("scsi"):
                    found.append({"lun": _number(text.rpartition(" Lun: ")[2]),
                                  "device_type": None, "type": None, "raw": None,
                                  "state": None})
                elif text.startswith("Attached ") and found:
                    what, _, state = text.partition("\t\tState: ")
                    if what.startswith("Attached scsi disk "):
                        found[-1].update(device_type=0, type="disk",
                                         raw=what[len("Attached scsi disk "):])
                    else:
                        name = what[len("Attached "):].replace(" (no raw file)", "")
                        found[-1].update(device_type=_DEVICE_TYPES.get(name), type=name)
                    found[-1]["state"] = state or None
        return found

    def raw_path(self, relative: str) -> str:
        return os.path.join(os.path.dirname(self.path), relative)

    def facts(self) -> dict[str, Any]:
        """The session as ``session.json`` has it (schema ``iscsifs.session/1``,
        docs/json.md on the ident branch): the mount's own ``session.json`` when it has one,
        else the same keys read back from the text file."""
        if self.json_facts is not None:
            return dict(self.json_facts)
        iface = self.values("Interface:")
        chap = self.values("CHAP:")
        portals = {line.strip().partition(": ")[0]: line.strip().partition(": ")[2]
                   for line in self.portal_lines}
        timeouts = {_TIMEOUT_KEYS.get(_json_key(k), _json_key(k)): v
                    for k, v in self.values("Timeouts:").items()}
        negotiated = {}
        for key, value in self.values("Negotiated iSCSI params:").items():
            if value in ("Yes", "No"):
                value = value == "Yes"
            negotiated[_snake(key)] = value
        counters = self.counters()
        stats = {k: counters.pop(k) for k in list(counters) if k not in self.extended}
        return {
            "schema": SESSION_SCHEMA, "target": self.target, "logged_in": True,
            "current_portal": _portal_facts(portals.get("Current Portal", self.portal)),
            "persistent_portal": _portal_facts(portals.get("Persistent Portal", self.portal)),
            "iface": {"name": iface.get("Iface Name"),
                      "transport": iface.get("Iface Transport"),
                      "initiator_name": iface.get("Iface Initiatorname"),
                      "ip_address": _none_if_empty(iface.get("Iface IPaddress"))},
            "sid": self.sid,
            "connection_state": iface.get("iSCSI Connection State"),
            "session_state": iface.get("iSCSI Session State"),
            "timeouts": timeouts,
            "chap": {"username": _none_if_empty(chap.get("username")),
                     "username_in": _none_if_empty(chap.get("username_in"))},
            "negotiated": negotiated, "luns": self.luns(), "stats": stats,
            "extended_stats": counters,
        }

    def as_json(self) -> dict[str, Any]:
        """One element of ``iscsifs session --json``: ``facts()`` plus where it came from."""
        return {**self.facts(), "mount": self.mount, "session_file": self.path}


SESSION_SCHEMA = "iscsifs.session/1"
# the text file's timeout names -> session.json's keys
_TIMEOUT_KEYS = {"nop_out_interval": "noop_out_interval", "nop_out_timeout": "noop_out_timeout"}
# a device type's name in the file -> its number (SPC names from scsi.parse and fs.render)
_DEVICE_TYPES = {**{name: n for n, name in DEVICE_TYPES.items()},
                 **{device_type_name(n): n for n in range(32)}}


def _none_if_empty(value: Any) -> Any:
    return None if value in (None, "", "<empty>") else value


def _snake(name: str) -> str:
    """``MaxRecvDataSegmentLength`` -> ``max_recv_data_segment_length``."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and name[i - 1].islower():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _portal_facts(text: str) -> dict[str, Any]:
    """``127.0.0.1:3260,1`` / ``[::1]:3260,1`` -> session.json's portal object."""
    address, _, tpgt = text.rpartition(",") if "," in text else (text, "", "")
    host, _, port = address.rpartition(":")
    return {"address": address, "host": host.strip("[]"),
            "port": int(port) if port.isdigit() else None,
            "tpgt": int(tpgt) if tpgt.isdigit() else None}


def _json_key(name: str) -> str:
    """``Recovery Timeout`` -> ``recovery_timeout``, ``NOP-Out Interval`` -> ``nop_out_interval``."""
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def _number(text: str) -> Any:
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return text


def parse_session_file(text: str, *, mount: str, path: str, sid: int, target: str,
                       portal: str) -> SessionRecord:
    """A ``session`` file (``fs/render.render_session``'s layout) -> its parts. Raises
    ValueError when it is not a logged-in session's file (e.g. logged out meanwhile)."""
    record = SessionRecord(mount=mount, sid=sid, target=target, portal=portal, path=path)
    body, _, stats = text.partition("\n\nStats for session ")
    if stats:
        record.stats = ("Stats for session " + stats).rstrip("\n").split("\n")
        _, _, extended = stats.partition("\niSCSI Extended Statistics:\n")
        record.extended = {line.strip().partition(": ")[0] for line in extended.splitlines()
                           if line.startswith("\t")}
    lines = body.rstrip("\n").split("\n")
    current: list[str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        text_ = line.strip()
        is_stars = bool(text_) and set(text_) == {"*"}
        if is_stars and i + 2 < len(lines) and set(lines[i + 2].strip()) == {"*"}:
            current = []
            record.sections.append((lines[i + 1].strip(), text_, current))
            i += 3
            continue
        if current is not None:
            current.append(line)
        elif line.startswith("\t"):
            record.portal_lines.append(line)
        elif line.startswith("Target: "):
            pass
        elif line:
            record.header.append(line)
        i += 1
    file_sid = record.values("Interface:").get("SID")
    if file_sid != sid:
        raise ValueError(f"session file shows SID {file_sid}, not {sid}")
    return record


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


def _read_facts(path: str, sid: int) -> dict[str, Any] | None:
    """A ``session.json`` of schema iscsifs.session/1 for this SID, or None (none there:
    older mounts have only the text file)."""
    try:
        data = json.loads(_read(path))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SESSION_SCHEMA \
            or data.get("sid") != sid:
        return None
    return data


def read_mount(mount: str, *, facts: bool = False) -> list[SessionRecord]:
    """Every live session of one mount (blocking reads of its files); with ``facts`` also
    each ``session.json`` there is."""
    records = []
    for sid, portal, target in parse_session_list(_read(os.path.join(mount, "sessions"))):
        address = portal.rpartition(",")[0] or portal
        if "/" in address or "/" in target or target in (".", ".."):
            continue                      # names are checked by the mount; never trust them
        path = os.path.join(mount, "portals", address, "targets", target, "session")
        try:
            record = parse_session_file(_read(path), mount=mount, path=path, sid=sid,
                                        target=target, portal=portal)
        except (OSError, ValueError):
            continue                      # logged out between the two reads
        if facts:
            record.json_facts = _read_facts(path + ".json", sid)
        records.append(record)
    return records


@dataclass
class MountResult:
    mount: str
    records: list[SessionRecord] | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


def collect(mounts: list[str], timeout: float, *, facts: bool = False) -> list[MountResult]:
    """Read every mount in its own daemon thread; those not done by ``timeout`` keep
    ``done`` unset (their thread is abandoned)."""
    results = [MountResult(m) for m in mounts]

    def work(result: MountResult) -> None:
        try:
            result.records = read_mount(result.mount, facts=facts)
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
        out += ordered[0].header
    prev: SessionRecord | None = None
    for r in ordered:
        if prev is None or prev.target != r.target:
            out.append(f"Target: {r.target} (non-flash)")
            prev = None
        if prev is None or prev.portal != r.portal:
            out += r.portal_lines
        else:
            out.append("")
        for title, stars, lines in r.sections:
            if LEVEL_OF_SECTION.get(title, 3) > level:
                continue
            out += [f"\t\t{stars}", f"\t\t{title}", f"\t\t{stars}"]
            for line in lines:
                if line.startswith("\t\t\tAttached scsi disk "):
                    rel, sep, state = line[len("\t\t\tAttached scsi disk "):].partition("\t")
                    line = f"\t\t\tAttached scsi disk {r.raw_path(rel)}{sep}{state}"
                out.append(line)
        prev = r
    return "\n".join(out) + "\n" if out else ""


def render_stats(records: list[SessionRecord]) -> str:
    return "".join("\n".join(r.stats) + "\n" for r in sorted(records, key=lambda r: r.sid))


def run(args: Any) -> int:
    if args.print_level is not None and not 0 <= args.print_level <= 3:
        raise QuietError(f"invalid info level {args.print_level}; try 0 - 3",
                         EXIT_INVALID_ARGUMENT)
    if args.timeout <= 0:
        raise QuietError("--timeout must be positive", EXIT_INVALID_ARGUMENT)
    mounts = iscsifs_mounts()
    if args.mountpoints:
        wanted = [os.path.abspath(m) for m in args.mountpoints]
        for m in wanted:
            if m not in mounts:
                raise QuietError(f"{m} is not an iscsifs mount point", EXIT_INVALID_ARGUMENT)
        mounts = [m for m in mounts if m in wanted]
    records: list[SessionRecord] = []
    for result in collect(mounts, args.timeout, facts=args.json):
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
portals/<portal>/targets/<iqn>/session); never logs in. A mount that does not answer within
--timeout seconds is skipped with a warning.
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
