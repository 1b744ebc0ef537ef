"""A session's file in both its forms: ``session.json`` (schema ``iscsifs.session/1``,
docs/json.md) and the ``session`` text rendered from it (``iscsiadm -m session -P 3`` followed
by ``-s``'s counters), so the two never disagree.

Both readers of a session use this one layout: the mount serves the ``session`` file with it
(``fs/render.py`` builds the snapshot), and ``iscsifs session`` prints ``-P 0..3`` and ``-s``
from the ``session.json`` it reads (``cli/session.py``), choosing sections as iscsiadm does.

Owns: ``SESSION_SCHEMA``, ``session_text`` (the text in its parts: header, portal lines,
sections, counters), ``render_session_text``, ``check_session_facts`` (a snapshot read back
from a file is whole). Must not know: sessions, FUSE, where the files are. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from iscsifs import __version__
from iscsifs.config.keys import EMPTY, HIDDEN
from iscsifs.core.names import format_host

SESSION_SCHEMA = "iscsifs.session/1"
# the keys of a session.json snapshot, in the documented order (docs/json.md)
SESSION_KEYS = ("schema", "target", "logged_in", "current_portal", "persistent_portal", "iface",
                "sid", "connection_state", "session_state", "timeouts", "chap", "negotiated",
                "luns", "stats", "extended_stats")
# the sections of the text, in order (iscsiadm's headings)
INTERFACE, TIMEOUTS, CHAP, NEGOTIATED, ATTACHED = (
    "Interface:", "Timeouts:", "CHAP:", "Negotiated iSCSI params:", "Attached SCSI devices:")

_T1, _T2, _T3 = "\t", "\t\t", "\t\t\t"


@dataclass(frozen=True)
class Section:
    title: str
    stars: str                   # the line of stars above and below the title
    lines: list[str]


@dataclass(frozen=True)
class SessionText:
    """The ``session`` text of a logged-in session, in the parts ``iscsiadm -m session``
    prints at each level: ``header`` (the version lines, -P 3), ``target_line``,
    ``portal_lines`` (Current / Persistent Portal), the ``sections`` and ``stats`` (-s)."""

    header: list[str]
    target_line: str
    portal_lines: list[str]
    sections: list[Section] = field(default_factory=list)
    stats: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Every line of the ``session`` file."""
        out = [*self.header, self.target_line, *self.portal_lines]
        for s in self.sections:
            out += [f"{_T2}{s.stars}", f"{_T2}{s.title}", f"{_T2}{s.stars}", *s.lines]
        return out + ["", *self.stats]


def portal_text(portal: Mapping[str, Any]) -> str:
    """A snapshot's portal as iscsiadm writes it: ``10.0.0.5:3260,1``."""
    return f"{portal['address']},{portal['tpgt']}"


def _value(value: object) -> str:
    """A JSON fact as the text shows it: '' for null."""
    return "" if value is None else str(value)


def _yes_no(value: object) -> str:
    return "Yes" if value else "No"


def _section(title: str, lines: list[str], stars: int | None = None) -> Section:
    return Section(title, "*" * (stars or len(title)), lines)


def session_text(facts: Mapping[str, Any], *,
                 raw_path: Callable[[str], str] = lambda relative: relative) -> SessionText:
    """The text of a logged-in session's snapshot. ``raw_path`` turns a LUN's ``raw`` (relative
    to the target's directory) into the path shown."""
    iface, timeouts, chap, params = (facts["iface"], facts["timeouts"], facts["chap"],
                                     facts["negotiated"])
    sid = facts["sid"] if facts["sid"] is not None else 0
    current = facts["current_portal"]
    # the SCSI host of an iscsi_tcp session stays "running" through a session's recovery; its
    # disks show the session's state (each LUN's "state", core.state.SessionState.device_state)
    attached = [f"{_T2}Host Number: {sid}\tState: running"]
    for lun in facts["luns"]:
        attached.append(f"{_T2}scsi{sid} Channel 00 Id 0 Lun: {lun['lun']}")
        if lun["raw"] is not None:
            attached.append(f"{_T3}Attached scsi disk {raw_path(lun['raw'])}\t\t"
                            f"State: {lun['state']}")
        else:
            attached.append(f"{_T3}Attached {lun['type']} (no raw file)\t\tState: {lun['state']}")
    stats = [f"Stats for session [sid: {sid}, target: {facts['target']}, "
             f"portal: {format_host(current['host'])},{current['port']}]", "iSCSI SNMP:"]
    stats += [f"{_T1}{name}: {value}" for name, value in facts["stats"].items()]
    if facts["extended_stats"]:
        stats.append("iSCSI Extended Statistics:")
        stats += [f"{_T1}{name}: {_value(value)}"
                  for name, value in facts["extended_stats"].items()]
    return SessionText(
        header=["iSCSI Transport Class version userspace (iscsifs)",
                f"version iscsifs {__version__}"],
        target_line=f"Target: {facts['target']} (non-flash)",
        portal_lines=[f"{_T1}Current Portal: {portal_text(current)}",
                      f"{_T1}Persistent Portal: {portal_text(facts['persistent_portal'])}"],
        sections=[
            _section(INTERFACE, [
                f"{_T2}Iface Name: {iface['name']}",
                f"{_T2}Iface Transport: {iface['transport']}",
                f"{_T2}Iface Initiatorname: {iface['initiator_name']}",
                f"{_T2}Iface IPaddress: {iface['ip_address'] or EMPTY}",
                f"{_T2}SID: {sid}",
                f"{_T2}iSCSI Connection State: {facts['connection_state']}",
                f"{_T2}iSCSI Session State: {facts['session_state']}",
            ]),
            _section(TIMEOUTS, [
                f"{_T2}Recovery Timeout: {_value(timeouts['recovery_timeout'])}",
                f"{_T2}Target Reset Timeout: {_value(timeouts['target_reset_timeout'])}",
                f"{_T2}LUN Reset Timeout: {_value(timeouts['lun_reset_timeout'])}",
                f"{_T2}Abort Timeout: {_value(timeouts['abort_timeout'])}",
                # not in iscsiadm's block, but "the timeouts in force" for this mount
                f"{_T2}Login Timeout: {_value(timeouts['login_timeout'])}",
                f"{_T2}Logout Timeout: {_value(timeouts['logout_timeout'])}",
                f"{_T2}NOP-Out Interval: {_value(timeouts['noop_out_interval'])}",
                f"{_T2}NOP-Out Timeout: {_value(timeouts['noop_out_timeout'])}",
                f"{_T2}Command Timeout: {_value(timeouts['command_timeout'])}",
            ]),
            _section(CHAP, [        # usernames only: passwords are never in a snapshot
                f"{_T2}username: {chap['username'] or EMPTY}",
                f"{_T2}password: {HIDDEN}",
                f"{_T2}username_in: {chap['username_in'] or EMPTY}",
                f"{_T2}password_in: {HIDDEN}",
            ]),
            _section(NEGOTIATED, [
                f"{_T2}HeaderDigest: {params['header_digest']}",
                f"{_T2}DataDigest: {params['data_digest']}",
                f"{_T2}MaxRecvDataSegmentLength: "
                f"{_value(params['max_recv_data_segment_length'])}",
                f"{_T2}MaxXmitDataSegmentLength: "
                f"{_value(params['max_xmit_data_segment_length'])}",
                f"{_T2}FirstBurstLength: {_value(params['first_burst_length'])}",
                f"{_T2}MaxBurstLength: {_value(params['max_burst_length'])}",
                f"{_T2}ImmediateData: {_yes_no(params['immediate_data'])}",
                f"{_T2}InitialR2T: {_yes_no(params['initial_r2t'])}",
                f"{_T2}MaxOutstandingR2T: {_value(params['max_outstanding_r2t'])}",
            ], stars=24),
            _section(ATTACHED, attached, stars=24),
        ],
        stats=stats)


def render_not_logged_in(facts: Mapping[str, Any]) -> str:
    return (
        f"Target: {facts['target']} (non-flash)\n"
        f"\tPersistent Portal: {portal_text(facts['persistent_portal'])}\n"
        f"\t\tiSCSI Session State: {facts['session_state']}\n"
        f"\tThis target is not logged in. Listing luns/ or opening a LUN's raw file logs in;\n"
        f"\tunmounting logs out.\n"
    )


def render_session_text(facts: Mapping[str, Any]) -> str:
    """The ``session`` file of a snapshot: ``iscsiadm -m session -P 3`` and ``-s``."""
    if not facts["logged_in"]:
        return render_not_logged_in(facts)
    return "\n".join(session_text(facts).lines()) + "\n"


def check_session_facts(data: object, sid: int | None = None) -> dict[str, Any]:
    """``data`` (read back from a ``session.json``) as a logged-in session's snapshot of this
    schema, with every key ``session_text`` reads; ValueError saying what is missing. With
    ``sid``, it must be that session's."""
    if not isinstance(data, dict) or data.get("schema") != SESSION_SCHEMA:
        raise ValueError(f"not a {SESSION_SCHEMA} snapshot")
    missing = [key for key in SESSION_KEYS if key not in data]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    if not data["logged_in"]:
        raise ValueError("not logged in")
    if sid is not None and data["sid"] != sid:
        raise ValueError(f"the snapshot is of SID {data['sid']}, not {sid}")
    try:
        session_text(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"incomplete snapshot ({type(exc).__name__}: {exc})") from None
    return data
