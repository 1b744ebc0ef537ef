"""Text of the generated files: ``session``, ``luns/<n>/info`` and ``InitiatorName``.

Owns: the layouts. ``session`` follows ``iscsiadm -m session -P 3`` (TAB indents, the same
headings and key names, so admins recognise it and their greps keep working), followed by the
``iscsiadm -m session -s`` counters. Secrets never appear: CHAP passwords are always printed as
``********``, whatever their value, and SessionInfo carries no secret in the first place.

Must not know: pyfuse3, trio, sessions. Input is the frozen snapshots from iscsifs/initiator.py
(SessionInfo, LunEntry; ``fs/backend.py`` declares what is read of a LUN).

Names that come from the target (target name, alias, inquiry strings) are printed with control
characters escaped so that a hostile target cannot forge lines in these files.
"""

from __future__ import annotations

from typing import Any

from iscsifs import __version__
from iscsifs.config.keys import EMPTY, HIDDEN
from iscsifs.core.connection import COUNTER_NAMES   # iscsiadm -m session -s order
from iscsifs.core.discovery import Portal, format_host
from iscsifs.fs.backend import LunListing



# SPC-4 peripheral device types, for LUNs whose LunEntry has no type_name
DEVICE_TYPES = {
    0x00: "disk", 0x01: "tape", 0x02: "printer", 0x03: "processor", 0x04: "worm",
    0x05: "cd/dvd", 0x06: "scanner", 0x07: "optical", 0x08: "medium changer",
    0x09: "communications", 0x0C: "storage array controller", 0x0D: "enclosure services",
    0x0E: "simplified disk", 0x0F: "optical card", 0x11: "object storage", 0x12: "automation",
    0x14: "host managed zoned block", 0x1E: "well known lu", 0x1F: "unknown",
}


def clean(value: object) -> str:
    """One line of text: control and other non-printable characters escaped as \\xNN."""
    text = "" if value is None else str(value)
    out = []
    for ch in text:
        if ch.isprintable() and ch not in "\t":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _num(value: object) -> str:
    """120.0 -> '120'; other numbers as they are; None -> ''."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _yes_no(value: object) -> str:
    return "Yes" if value else "No"


def _digest(value: object) -> str:
    if isinstance(value, str):
        return value
    return "CRC32C" if value else "None"


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return getattr(obj, name, default) if obj is not None else default


def by_path_name(target: str, portal: Portal, lun: int) -> str:
    """The udev /dev/disk/by-path name open-iscsi users know: ip-ADDR:PORT-iscsi-IQN-lun-N."""
    return f"ip-{portal.address}-iscsi-{clean(target)}-lun-{lun}"


def render_initiator_name(name: str) -> str:
    return f"InitiatorName={clean(name)}\n"


def session_line(sid: int, portal: Portal, target: str) -> str:
    """One line of ``iscsiadm -m session`` (-P 0): ``tcp: [SID] ADDR:PORT,TPGT IQN (non-flash)``,
    with the persistent portal (the ``portals/`` directory the session belongs to)."""
    return f"tcp: [{int(sid)}] {portal} {clean(target)} (non-flash)"


def render_session_list(sessions: list[tuple[int, Portal, str]]) -> str:
    """The top-level ``sessions`` file: one ``session_line`` per live session, by SID. Empty
    when nothing is logged in."""
    return "".join(session_line(sid, portal, target) + "\n"
                   for sid, portal, target in sorted(sessions, key=lambda s: s[0]))


def _star_heading(lines: list[str], indent: str, title: str) -> None:
    stars = "*" * len(title)
    lines += [f"{indent}{stars}", f"{indent}{title}", f"{indent}{stars}"]


def render_not_logged_in(target: str, portal: Portal) -> str:
    return (
        f"Target: {clean(target)} (non-flash)\n"
        f"\tPersistent Portal: {portal}\n"
        f"\t\tiSCSI Session State: NOT LOGGED IN\n"
        f"\tThis target is not logged in. Listing luns/ or opening a LUN's raw file logs in;\n"
        f"\tunmounting logs out.\n"
    )


def render_session(info: Any, target: str, portal: Portal) -> str:
    """The ``session`` file: ``iscsiadm -m session -P 3`` layout + ``-s`` counters.

    info is an iscsifs.initiator.SessionInfo, or None before login.
    """
    if info is None:
        return render_not_logged_in(target, portal)
    t1, t2, t3 = "\t", "\t\t", "\t\t\t"
    cur_portal = _get(info, "portal", portal) or portal
    timeouts = _get(info, "timeouts")
    params = _get(info, "params")
    lines = [
        "iSCSI Transport Class version userspace (iscsifs)",
        f"version iscsifs {__version__}",
        f"Target: {clean(_get(info, 'target', target))} (non-flash)",
        f"{t1}Current Portal: {cur_portal}",
        f"{t1}Persistent Portal: {portal}",
    ]
    _star_heading(lines, t2, "Interface:")
    lines += [
        f"{t2}Iface Name: default",
        f"{t2}Iface Transport: tcp",
        f"{t2}Iface Initiatorname: {clean(_get(info, 'initiator_name', ''))}",
        f"{t2}Iface IPaddress: {clean(_get(info, 'local_address', '') or '<empty>')}",
        f"{t2}SID: {_get(info, 'sid', 0)}",
        f"{t2}iSCSI Connection State: {clean(_get(info, 'connection_state', 'FREE'))}",
        f"{t2}iSCSI Session State: {clean(_get(info, 'session_state', 'FREE'))}",
    ]
    _star_heading(lines, t2, "Timeouts:")
    lines += [
        f"{t2}Recovery Timeout: {_num(_get(timeouts, 'replacement_timeout'))}",
        f"{t2}Target Reset Timeout: {_num(_get(timeouts, 'tgt_reset'))}",
        f"{t2}LUN Reset Timeout: {_num(_get(timeouts, 'lu_reset'))}",
        f"{t2}Abort Timeout: {_num(_get(timeouts, 'abort'))}",
        # not in iscsiadm's block, but "the timeouts in force" for this mount
        f"{t2}Login Timeout: {_num(_get(timeouts, 'login'))}",
        f"{t2}Logout Timeout: {_num(_get(timeouts, 'logout'))}",
        f"{t2}NOP-Out Interval: {_num(_get(timeouts, 'noop_out_interval'))}",
        f"{t2}NOP-Out Timeout: {_num(_get(timeouts, 'noop_out_timeout'))}",
        f"{t2}Command Timeout: {_num(_get(timeouts, 'command'))}",
    ]
    _star_heading(lines, t2, "CHAP:")
    user = _get(info, "chap_username")
    user_in = _get(info, "chap_username_in")
    lines += [
        f"{t2}username: {clean(user) if user else EMPTY}",
        f"{t2}password: {HIDDEN}",
        f"{t2}username_in: {clean(user_in) if user_in else EMPTY}",
        f"{t2}password_in: {HIDDEN}",
    ]
    title = "Negotiated iSCSI params:"
    lines += [f"{t2}{'*' * 24}", f"{t2}{title}", f"{t2}{'*' * 24}"]
    lines += [
        f"{t2}HeaderDigest: {_digest(_get(params, 'header_digest', False))}",
        f"{t2}DataDigest: {_digest(_get(params, 'data_digest', False))}",
        f"{t2}MaxRecvDataSegmentLength: {_get(params, 'max_recv_data_segment_length', '')}",
        f"{t2}MaxXmitDataSegmentLength: {_get(params, 'max_xmit_data_segment_length', '')}",
        f"{t2}FirstBurstLength: {_get(params, 'first_burst_length', '')}",
        f"{t2}MaxBurstLength: {_get(params, 'max_burst_length', '')}",
        f"{t2}ImmediateData: {_yes_no(_get(params, 'immediate_data', False))}",
        f"{t2}InitialR2T: {_yes_no(_get(params, 'initial_r2t', True))}",
        f"{t2}MaxOutstandingR2T: {_get(params, 'max_outstanding_r2t', '')}",
    ]
    lines += [f"{t2}{'*' * 24}", f"{t2}Attached SCSI devices:", f"{t2}{'*' * 24}"]
    state = _device_state(_get(info, "session_state", ""))
    sid = _get(info, "sid", 0)
    luns = sorted(_get(info, "luns", ()) or (), key=lambda e: int(e.lun))
    lines.append(f"{t2}Host Number: {sid}\tState: {state}")
    for entry in luns:
        lines.append(f"{t2}scsi{sid} Channel 00 Id 0 Lun: {int(entry.lun)}")
        if _get(entry, "device") is not None:
            lines.append(f"{t3}Attached scsi disk luns/{int(entry.lun)}/raw\t\tState: {state}")
        else:
            lines.append(f"{t3}Attached {clean(_type_name(entry))} (no raw file)"
                         f"\t\tState: {state}")
    # iscsiadm -m session -s
    counters = dict(_get(info, "counters", {}) or {})
    lines += [
        "",
        f"Stats for session [sid: {sid}, target: {clean(_get(info, 'target', target))}, "
        f"portal: {format_stats_portal(cur_portal)}]",
        "iSCSI SNMP:",
    ]
    for name in COUNTER_NAMES:
        lines.append(f"{t1}{name}: {int(counters.pop(name, 0))}")
    if counters:
        lines.append("iSCSI Extended Statistics:")
        for name in sorted(counters):
            lines.append(f"{t1}{clean(name)}: {counters[name]}")
    return "\n".join(lines) + "\n"


def format_stats_portal(portal: Portal) -> str:
    # iscsiadm -s writes the portal as addr,port
    return f"{format_host(portal.host)},{portal.port}"


def _device_state(session_state: str) -> str:
    state = str(session_state or "").upper()
    if state == "LOGGED_IN":
        return "running"
    if state == "FAILED":
        return "transport-offline"
    return "blocked"


def _type_name(entry: LunListing) -> str:
    if entry.type_name:
        return str(entry.type_name)
    return DEVICE_TYPES.get(int(entry.device_type), f"type {int(entry.device_type):#04x}")


def _size_text(n: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n} B"


def render_lun_info(entry: LunListing, target: str | None = None,
                    portal: Portal | None = None) -> str:
    """The ``info`` file of one LUN (an iscsifs.initiator.LunEntry)."""
    lun = int(entry.lun)
    dev = entry.device
    inq = dev.inquiry if dev is not None else None
    dtype = entry.device_type
    dtype_text = f"{int(dtype)} ({_type_name(entry)})" if dtype is not None else _type_name(entry)
    lines = [f"LUN: {lun}"]
    if target is not None:
        lines.append(f"Target: {clean(target)}")
    if portal is not None:
        lines.append(f"Portal: {portal}")
    lines.append(f"Device type: {dtype_text}")
    if inq is not None:
        lines += [
            f"Vendor: {clean(str(inq.vendor or '').strip())}",
            f"Product: {clean(str(inq.product or '').strip())}",
            f"Revision: {clean(str(inq.revision or '').strip())}",
        ]
    if dev is not None:
        size = dev.size
        lines += [
            f"Serial: {clean(dev.serial) if dev.serial else '<none>'}",
            f"WWN: {clean(dev.wwn) if dev.wwn else '<none>'}",
            f"Block size: {dev.block_size}",
            f"Capacity blocks: {dev.num_blocks}",
            f"Capacity bytes: {size} ({_size_text(size)})",
            f"Max transfer: {dev.max_transfer_bytes if dev.max_transfer_bytes else '<unlimited>'}",
            f"Write protect: {_yes_no(dev.write_protected)}",
        ]
    else:
        lines.append("Raw: none (not a block device)")
    if target is not None and portal is not None:
        lines.append(f"By-path: {by_path_name(target, portal, lun)}")
    return "\n".join(lines) + "\n"
