"""Text of the generated files: ``session`` and ``session.json``, ``luns/<n>/info`` and
``info.json``, ``InitiatorName`` and the multipath status files (``by-id/.multipath/<name>``);
the facts behind the ``user.iscsi.*`` attributes; and the ``by-path`` / ``by-id`` names.

Owns: the layouts. ``session`` follows ``iscsiadm -m session -P 3`` (TAB indents, the same
headings and key names, so admins recognise it and their greps keep working), followed by the
``iscsiadm -m session -s`` counters. A multipath status file follows ``multipath -ll``. The
``by-id`` names are udev's ``/dev/disk/by-id`` names. Each text file and its JSON twin are
rendered from one snapshot (``session_facts``, ``lun_facts``: plain dicts in the documented
schema, docs/json.md), so they never disagree. Secrets never appear: CHAP passwords are always
printed as ``********``, whatever their value, the JSON has no password key, and SessionInfo
carries no secret in the first place.

Must not know: pyfuse3, trio, sessions. Input is the frozen snapshots from iscsifs/initiator.py
(SessionInfo, LunEntry; ``fs/backend.py`` declares what is read of a LUN).

Names that come from the target (target name, alias, inquiry strings) are printed with control
characters escaped so that a hostile target cannot forge lines in these files.
"""

from __future__ import annotations

import json
import re
from typing import Any

from iscsifs import __version__
from iscsifs.config.keys import EMPTY, HIDDEN
from iscsifs.core.connection import COUNTER_NAMES   # iscsiadm -m session -s order
from iscsifs.core.discovery import Portal, format_host
from iscsifs.fs.backend import BlockDevice, LunListing, MultipathBlockDevice



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


# what udev keeps in a /dev/disk/by-id name (udev_replace_chars); the rest becomes '_'
_UDEV_UNSAFE = re.compile(r"[^0-9A-Za-z#+\-.:=@_]")
_HEX = re.compile(r"[0-9a-fA-F]+")


def udev_serial(identity: str) -> str | None:
    """udev's ID_SERIAL for a LUN identity (``Lun.wwn``), which dm-multipath takes as the
    WWID: the designator type as one hex digit (3 NAA, 2 EUI-64, 1 T10 vendor ID), then the
    designator (binary ones in lower-case hex; text with each run of whitespace as one '_'
    and characters outside ``0-9A-Za-z#+-.:=@_`` as '_'). None for anything else."""
    kind, _, value = identity.partition(".")
    if kind in ("naa", "eui"):
        if not _HEX.fullmatch(value):
            return None
        return ("3" if kind == "naa" else "2") + value.lower()
    if kind == "t10":
        text = _UDEV_UNSAFE.sub("_", "_".join(value.split()))
        return "1" + text if text else None
    return None


def by_id_name(identity: str) -> str | None:
    """The /dev/disk/by-id name udev gives a SCSI disk with this identity: ``wwn-0x<hex>``
    for an NAA name (udev's ID_WWN_WITH_EXTENSION), ``scsi-<ID_SERIAL>`` otherwise
    (``scsi-2<hex>`` for EUI-64, ``scsi-1<vendor id>`` for a T10 vendor ID). None when the
    identity is none of these. Safe as a file name: no '/', never '.' or '..'."""
    serial = udev_serial(identity)
    if serial is None:
        return None
    if serial[0] == "3":
        return "wwn-0x" + serial[1:]
    return "scsi-" + serial


def _multipath_size(n: int) -> str:
    """multipath -ll's size: 64M, 1.5G, 2T."""
    value, unit = float(n), ""
    for unit in ("K", "M", "G", "T", "P"):
        value /= 1024
        if value < 1024:
            break
    text = f"{value:.1f}".removesuffix(".0")
    return text + unit


def render_multipath(dev: MultipathBlockDevice, name: str) -> str:
    """``by-id/.multipath/<name>``: the device in ``multipath -ll``'s layout, then each path's
    counters. With ``failover`` every path is its own path group, in priority order; with
    ``round-robin`` the paths of equal priority are one group (all of them without ALUA,
    ``group_by_prio`` with it). With ALUA the hardware handler is ``1 alua``, the priorities
    are multipath's ``prio alua`` and the table shows each path's port group and state."""
    facts = multipath_facts(dev, name)
    lines = [
        f"{facts['name']} ({facts['wwid']}) {facts['vendor'] or ''},{facts['product'] or ''}",
        f"size={_multipath_size(facts['size_bytes'])} features={facts['features']} "
        f"hwhandler={facts['hwhandler']} wp={'ro' if facts['write_protected'] else 'rw'}",
    ]
    states = list(dev.path_states())
    groups: list[list[Any]] = []
    for st in states:
        if dev.policy != "failover" and groups and groups[-1][0].priority == st.priority:
            groups[-1].append(st)
        else:
            groups.append([st])
    for gi, group in enumerate(groups):
        last_group = gi == len(groups) - 1
        status = "active" if group[0].group_active else "enabled"
        prio = group[0].priority
        lines.append(f"{'`' if last_group else '|'}-+- policy='{dev.policy}' prio={prio} "
                     f"status={status}")
        for pi, st in enumerate(group):
            lead = " " if last_group else "|"
            branch = "`-" if pi == len(group) - 1 else "|-"
            lines.append(f"{lead} {branch} {_path_name(st)} {st.dm_state} "
                         f"{st.checker_state} {st.device_state}")
    names = [_path_name(st) for st in states]
    width = max([len("path")] + [len(n) for n in names])
    alua = facts["hwhandler"] != "'0'"
    head = f"{'path':<{width}}  {'ios':>10}  {'errors':>6}  {'failures':>8}"
    lines += ["", head + ("  alua" if alua else "")]
    for n, st, path in zip(names, states, facts["paths"]):
        row = f"{n:<{width}}  {st.ios:>10}  {st.errors:>6}  {st.failures:>8}"
        if alua:
            row += "  " + _alua_text(path)
        lines.append(row)
    retry = facts["no_path_retry"]
    lines += [
        "",
        f"active path switches: {dev.switches}",
        "no path: " + ("fail at once" if retry == 0 else "queue for ever" if retry < 0
                       else f"queue for at most {_number(retry)} s") + " (replacement_timeout)",
    ]
    return "\n".join(lines) + "\n"


def _alua_text(path: dict[str, Any]) -> str:
    if path["alua_state"] is None:
        return "-"
    tpg = path["target_port_group"]
    text = (f"tpg {tpg} " if tpg is not None else "") + path["alua_state"]
    return text + (" (preferred)" if path["preferred"] else "")


MULTIPATH_SCHEMA = "iscsifs.multipath/1"
PR_SCHEMA = "iscsifs.pr/1"


def _hex_key(key: int) -> str:
    return f"0x{int(key):x}"        # as sg_persist prints keys


def pr_facts(action: str, result: Any) -> dict[str, Any]:
    """A PERSISTENT RESERVE IN answer (``scsi.parse.PrKeys``, ``PrReservation``,
    ``PrCapabilities`` or ``PrFullStatus``) for ``user.iscsi.pr.<action>`` (schema
    ``iscsifs.pr/1``, docs/json.md). Keys are hex strings: 64 bits do not fit a JSON number
    every reader keeps exact."""
    facts: dict[str, Any] = {"schema": PR_SCHEMA, "service_action": action,
                             "generation": _int_or_none(getattr(result, "generation", None))}
    if action == "read_keys":
        facts["keys"] = [_hex_key(k) for k in result.keys]
    elif action == "read_reservation":
        facts["reservation"] = None if result.key is None else {
            "key": _hex_key(result.key), "scope": int(result.scope), "type": int(result.type)}
    elif action == "report_capabilities":
        facts["capabilities"] = {
            name: bool(getattr(result, name))
            for name in ("rlr_c", "crh", "sip_c", "atp_c", "ptpl_c", "tmv", "ptpl_a")}
        facts["capabilities"]["allow_commands"] = int(result.allow_commands)
        facts["capabilities"]["types"] = sorted(int(t) for t in result.types)
    elif action == "read_full_status":
        facts["registrations"] = [{
            "key": _hex_key(d.key), "all_tg_pt": bool(d.all_tg_pt),
            "holder": bool(d.holder), "scope": int(d.scope), "type": int(d.type),
            "relative_target_port": int(d.relative_target_port),
            "transport_id": d.transport_id.hex(),
        } for d in result.descriptors]
    return facts


def render_pr_json(action: str, result: Any) -> str:
    return _json(pr_facts(action, result))


def multipath_facts(dev: MultipathBlockDevice, name: str) -> dict[str, Any]:
    """The snapshot behind ``by-id/.multipath/<name>`` and ``<name>.json`` (schema
    ``iscsifs.multipath/1``, docs/json.md)."""
    inq = dev.inquiry
    states = list(dev.path_states())
    alua = any(getattr(st, "alua_state", None) is not None for st in states)
    retry = dev.no_path_retry
    return {
        "schema": MULTIPATH_SCHEMA,
        "name": clean(name),
        "identity": clean(dev.identity),
        "wwid": udev_serial(dev.identity) or clean(dev.identity),
        "vendor": clean(str(inq.vendor or "").strip()) or None if inq is not None else None,
        "product": clean(str(inq.product or "").strip()) or None if inq is not None else None,
        "size_bytes": int(dev.size),
        "write_protected": bool(dev.write_protected),
        "policy": dev.policy,
        "features": "'1 queue_if_no_path'" if retry != 0 else "'0'",
        "hwhandler": "'1 alua'" if alua else "'0'",
        "no_path_retry": _number(retry),
        "active_path_switches": int(dev.switches),
        "paths": [{
            "portal": portal_facts(st.portal),
            "target": clean(st.target),
            "lun": int(st.lun),
            "priority": int(st.priority),
            "group_active": bool(st.group_active),
            "dm_state": st.dm_state,
            "checker_state": st.checker_state,
            "device_state": st.device_state,
            "alua_state": getattr(st, "alua_state", None),
            "target_port_group": getattr(st, "target_port_group", None),
            "preferred": bool(getattr(st, "preferred", False)),
            "ios": int(st.ios),
            "errors": int(st.errors),
            "failures": int(st.failures),
        } for st in states],
    }


def render_multipath_json(dev: MultipathBlockDevice, name: str) -> str:
    """``by-id/.multipath/<name>.json``: the same snapshot as the status file, as JSON."""
    return _json(multipath_facts(dev, name))


def _path_name(st: Any) -> str:
    return f"{st.portal.address} {clean(st.target)} lun {int(st.lun)}"


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


SESSION_SCHEMA = "iscsifs.session/1"
INFO_SCHEMA = "iscsifs.info/1"


def portal_facts(portal: Portal | None) -> dict[str, Any] | None:
    """A portal for the JSON files: ``address`` is ``host:port`` (IPv6 in brackets)."""
    if portal is None:
        return None
    return {"address": portal.address, "host": portal.host, "port": portal.port,
            "tpgt": portal.tpgt}


def _number(value: object) -> int | float | None:
    """120.0 -> 120; other numbers as they are; anything else -> None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _portal_text(p: dict[str, Any]) -> str:
    return f"{p['address']},{p['tpgt']}"


def session_facts(info: Any, target: str, portal: Portal) -> dict[str, Any]:
    """The snapshot behind ``session`` and ``session.json`` (schema ``iscsifs.session/1``,
    docs/json.md): what ``iscsiadm -m session -P 3 -s`` shows, never a secret.

    info is an iscsifs.initiator.SessionInfo, or None before login (the keys are the same;
    the values are null).
    """
    facts: dict[str, Any] = {
        "schema": SESSION_SCHEMA,
        "target": clean(target if info is None else _get(info, "target", target)),
        "logged_in": info is not None,
        "current_portal": None,
        "persistent_portal": portal_facts(portal),
        "iface": None,
        "sid": None,
        "connection_state": None,
        "session_state": "NOT LOGGED IN",
        "timeouts": None,
        "chap": None,
        "negotiated": None,
        "luns": [],
        "stats": None,
        "extended_stats": None,
    }
    if info is None:
        return facts
    timeouts = _get(info, "timeouts")
    params = _get(info, "params")
    user = _get(info, "chap_username")
    user_in = _get(info, "chap_username_in")
    state = str(_get(info, "session_state", "") or "FREE")
    device_state = _device_state(state)
    counters = dict(_get(info, "counters", {}) or {})
    stats = {name: int(counters.pop(name, 0)) for name in COUNTER_NAMES}
    luns = sorted(_get(info, "luns", ()) or (), key=lambda e: int(e.lun))
    facts.update({
        "current_portal": portal_facts(_get(info, "portal", portal) or portal),
        "iface": {
            "name": "default",
            "transport": "tcp",
            "initiator_name": clean(_get(info, "initiator_name", "")),
            "ip_address": clean(_get(info, "local_address", "")) or None,
        },
        "sid": _int_or_none(_get(info, "sid", 0)),
        "connection_state": clean(_get(info, "connection_state", "FREE")),
        "session_state": clean(state),
        "timeouts": {
            "recovery_timeout": _number(_get(timeouts, "replacement_timeout")),
            "target_reset_timeout": _number(_get(timeouts, "tgt_reset")),
            "lun_reset_timeout": _number(_get(timeouts, "lu_reset")),
            "abort_timeout": _number(_get(timeouts, "abort")),
            "login_timeout": _number(_get(timeouts, "login")),
            "logout_timeout": _number(_get(timeouts, "logout")),
            "noop_out_interval": _number(_get(timeouts, "noop_out_interval")),
            "noop_out_timeout": _number(_get(timeouts, "noop_out_timeout")),
            "command_timeout": _number(_get(timeouts, "command")),
        },
        # usernames only: no password is in SessionInfo, and none is ever rendered
        "chap": {"username": clean(user) if user else None,
                 "username_in": clean(user_in) if user_in else None},
        "negotiated": {
            "header_digest": _digest(_get(params, "header_digest", False)),
            "data_digest": _digest(_get(params, "data_digest", False)),
            "max_recv_data_segment_length":
                _int_or_none(_get(params, "max_recv_data_segment_length")),
            "max_xmit_data_segment_length":
                _int_or_none(_get(params, "max_xmit_data_segment_length")),
            "first_burst_length": _int_or_none(_get(params, "first_burst_length")),
            "max_burst_length": _int_or_none(_get(params, "max_burst_length")),
            "immediate_data": bool(_get(params, "immediate_data", False)),
            "initial_r2t": bool(_get(params, "initial_r2t", True)),
            "max_outstanding_r2t": _int_or_none(_get(params, "max_outstanding_r2t")),
        },
        "luns": [{
            "lun": int(entry.lun),
            "device_type": int(entry.device_type),
            "type": clean(_type_name(entry)),
            "raw": f"luns/{int(entry.lun)}/raw" if _get(entry, "device") is not None else None,
            "state": device_state,
        } for entry in luns],
        "stats": stats,
        "extended_stats": {clean(name): _number(counters[name]) for name in sorted(counters)},
    })
    return facts


def render_not_logged_in(facts: dict[str, Any]) -> str:
    return (
        f"Target: {facts['target']} (non-flash)\n"
        f"\tPersistent Portal: {_portal_text(facts['persistent_portal'])}\n"
        f"\t\tiSCSI Session State: {facts['session_state']}\n"
        f"\tThis target is not logged in. Listing luns/ or opening a LUN's raw file logs in;\n"
        f"\tunmounting logs out.\n"
    )


def _text_value(value: object) -> str:
    """A JSON fact as the text file shows it: '' for null."""
    return "" if value is None else str(value)


def render_session(info: Any, target: str, portal: Portal) -> str:
    """The ``session`` file: ``iscsiadm -m session -P 3`` layout + ``-s`` counters.

    info is an iscsifs.initiator.SessionInfo, or None before login.
    """
    return render_session_text(session_facts(info, target, portal))


def render_session_json(info: Any, target: str, portal: Portal) -> str:
    """The ``session.json`` file: the same snapshot as ``session``, as JSON."""
    return _json(session_facts(info, target, portal))


def render_session_text(facts: dict[str, Any]) -> str:
    """The ``session`` text of a :func:`session_facts` snapshot."""
    if not facts["logged_in"]:
        return render_not_logged_in(facts)
    t1, t2, t3 = "\t", "\t\t", "\t\t\t"
    iface, timeouts, chap, params = (facts["iface"], facts["timeouts"], facts["chap"],
                                     facts["negotiated"])
    sid = facts["sid"] if facts["sid"] is not None else 0
    current = facts["current_portal"]
    lines = [
        "iSCSI Transport Class version userspace (iscsifs)",
        f"version iscsifs {__version__}",
        f"Target: {facts['target']} (non-flash)",
        f"{t1}Current Portal: {_portal_text(current)}",
        f"{t1}Persistent Portal: {_portal_text(facts['persistent_portal'])}",
    ]
    _star_heading(lines, t2, "Interface:")
    lines += [
        f"{t2}Iface Name: {iface['name']}",
        f"{t2}Iface Transport: {iface['transport']}",
        f"{t2}Iface Initiatorname: {iface['initiator_name']}",
        f"{t2}Iface IPaddress: {iface['ip_address'] or '<empty>'}",
        f"{t2}SID: {sid}",
        f"{t2}iSCSI Connection State: {facts['connection_state']}",
        f"{t2}iSCSI Session State: {facts['session_state']}",
    ]
    _star_heading(lines, t2, "Timeouts:")
    lines += [
        f"{t2}Recovery Timeout: {_text_value(timeouts['recovery_timeout'])}",
        f"{t2}Target Reset Timeout: {_text_value(timeouts['target_reset_timeout'])}",
        f"{t2}LUN Reset Timeout: {_text_value(timeouts['lun_reset_timeout'])}",
        f"{t2}Abort Timeout: {_text_value(timeouts['abort_timeout'])}",
        # not in iscsiadm's block, but "the timeouts in force" for this mount
        f"{t2}Login Timeout: {_text_value(timeouts['login_timeout'])}",
        f"{t2}Logout Timeout: {_text_value(timeouts['logout_timeout'])}",
        f"{t2}NOP-Out Interval: {_text_value(timeouts['noop_out_interval'])}",
        f"{t2}NOP-Out Timeout: {_text_value(timeouts['noop_out_timeout'])}",
        f"{t2}Command Timeout: {_text_value(timeouts['command_timeout'])}",
    ]
    _star_heading(lines, t2, "CHAP:")
    lines += [
        f"{t2}username: {chap['username'] or EMPTY}",
        f"{t2}password: {HIDDEN}",
        f"{t2}username_in: {chap['username_in'] or EMPTY}",
        f"{t2}password_in: {HIDDEN}",
    ]
    title = "Negotiated iSCSI params:"
    lines += [f"{t2}{'*' * 24}", f"{t2}{title}", f"{t2}{'*' * 24}"]
    lines += [
        f"{t2}HeaderDigest: {params['header_digest']}",
        f"{t2}DataDigest: {params['data_digest']}",
        f"{t2}MaxRecvDataSegmentLength: {_text_value(params['max_recv_data_segment_length'])}",
        f"{t2}MaxXmitDataSegmentLength: {_text_value(params['max_xmit_data_segment_length'])}",
        f"{t2}FirstBurstLength: {_text_value(params['first_burst_length'])}",
        f"{t2}MaxBurstLength: {_text_value(params['max_burst_length'])}",
        f"{t2}ImmediateData: {_yes_no(params['immediate_data'])}",
        f"{t2}InitialR2T: {_yes_no(params['initial_r2t'])}",
        f"{t2}MaxOutstandingR2T: {_text_value(params['max_outstanding_r2t'])}",
    ]
    lines += [f"{t2}{'*' * 24}", f"{t2}Attached SCSI devices:", f"{t2}{'*' * 24}"]
    state = _device_state(facts["session_state"])
    lines.append(f"{t2}Host Number: {sid}\tState: {state}")
    for lun in facts["luns"]:
        lines.append(f"{t2}scsi{sid} Channel 00 Id 0 Lun: {lun['lun']}")
        if lun["raw"] is not None:
            lines.append(f"{t3}Attached scsi disk {lun['raw']}\t\tState: {lun['state']}")
        else:
            lines.append(f"{t3}Attached {lun['type']} (no raw file)\t\tState: {lun['state']}")
    # iscsiadm -m session -s
    lines += [
        "",
        f"Stats for session [sid: {sid}, target: {facts['target']}, "
        f"portal: {format_host(current['host'])},{current['port']}]",
        "iSCSI SNMP:",
    ]
    for name, value in facts["stats"].items():
        lines.append(f"{t1}{name}: {value}")
    if facts["extended_stats"]:
        lines.append("iSCSI Extended Statistics:")
        for name, value in facts["extended_stats"].items():
            lines.append(f"{t1}{name}: {_text_value(value)}")
    return "\n".join(lines) + "\n"


def _json(facts: dict[str, Any]) -> str:
    # ASCII only (anything else \u-escaped); keys in the documented order
    return json.dumps(facts, indent=2, ensure_ascii=True) + "\n"


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


PROVISIONING_TYPES = {0: "full", 1: "resource", 2: "thin"}
DISCARD_METHODS = {"unmap": "UNMAP", "write_same_16": "WRITE SAME(16) with UNMAP"}


def provisioning_facts(dev: BlockDevice) -> dict[str, Any]:
    """Logical block provisioning and discard, with Linux's queue/discard_* names in bytes."""
    prov = dev.provisioning
    bs = dev.block_size
    ptype = prov.provisioning_type
    if ptype is None:           # no VPD B2h page: READ CAPACITY(16)'s LBPME decides
        ptype = 2 if prov.lbpme else 0
    method = prov.method if prov.method in DISCARD_METHODS else None
    return {
        "type": PROVISIONING_TYPES.get(ptype, f"type {int(ptype)}"),
        "lbpme": bool(prov.lbpme),
        "lbprz": bool(prov.lbprz),
        "discard": method,
        "discard_granularity": prov.granularity * bs if method else None,
        "discard_alignment": prov.alignment * bs if method else None,
        "discard_max_bytes": prov.max_blocks * bs if method else None,
    }


def lun_facts(dev: BlockDevice | None, *, lun: int, target: str | None = None,
              portal: Portal | None = None, device_type: int | None = None,
              type_name: str | None = None) -> dict[str, Any]:
    """The snapshot behind ``info``, ``info.json`` and the ``user.iscsi.*`` extended
    attributes of one LUN (schema ``iscsifs.info/1``, docs/json.md). Strings from the target
    are one printable line (``clean``); what the LUN does not report is None."""
    inq = dev.inquiry if dev is not None else None
    if device_type is None and inq is not None:
        device_type = int(inq.device_type)

    def inquiry_text(name: str) -> str | None:
        return clean(str(getattr(inq, name, "") or "").strip()) or None

    facts: dict[str, Any] = {
        "schema": INFO_SCHEMA,
        "lun": int(lun),
        "target": clean(target) if target is not None else None,
        "portal": portal_facts(portal),
        "by_path": by_path_name(target, portal, lun)
        if target is not None and portal is not None else None,
        "device_type": int(device_type) if device_type is not None else None,
        "device_type_name": clean(type_name) if type_name else (
            DEVICE_TYPES.get(int(device_type), f"type {int(device_type):#04x}")
            if device_type is not None else None),
        "vendor": inquiry_text("vendor"),
        "product": inquiry_text("product"),
        "revision": inquiry_text("revision"),
        "raw": dev is not None,
        "serial": None,
        "wwn": None,
        "block_size": None,
        "capacity_blocks": None,
        "capacity_bytes": None,
        "max_transfer_bytes": None,
        "write_protected": None,
        "provisioning": None,
    }
    if dev is not None:
        facts.update({
            "serial": clean(dev.serial) if dev.serial else None,
            "wwn": clean(dev.wwn) if dev.wwn else None,
            "block_size": int(dev.block_size),
            "capacity_blocks": int(dev.num_blocks),
            "capacity_bytes": int(dev.size),
            "max_transfer_bytes": int(dev.max_transfer_bytes) or None,
            "write_protected": bool(dev.write_protected),
            "provisioning": provisioning_facts(dev),
        })
    return facts


def info_facts(entry: LunListing, target: str | None = None,
               portal: Portal | None = None) -> dict[str, Any]:
    """:func:`lun_facts` of one entry of a target's LUN list."""
    return lun_facts(entry.device, lun=int(entry.lun), target=target, portal=portal,
                     device_type=entry.device_type, type_name=_type_name(entry))


def render_lun_info(entry: LunListing, target: str | None = None,
                    portal: Portal | None = None) -> str:
    """The ``info`` file of one LUN (an iscsifs.initiator.LunEntry)."""
    return render_info_text(info_facts(entry, target, portal))


def render_lun_info_json(entry: LunListing, target: str | None = None,
                         portal: Portal | None = None) -> str:
    """The ``info.json`` file: the same snapshot as ``info``, as JSON."""
    return _json(info_facts(entry, target, portal))


def render_info_text(facts: dict[str, Any]) -> str:
    """The ``info`` text of a :func:`lun_facts` snapshot."""
    lines = [f"LUN: {facts['lun']}"]
    if facts["target"] is not None:
        lines.append(f"Target: {facts['target']}")
    if facts["portal"] is not None:
        lines.append(f"Portal: {_portal_text(facts['portal'])}")
    dtype = facts["device_type"]
    name = facts["device_type_name"] or ""
    lines.append(f"Device type: {dtype} ({name})" if dtype is not None else
                 f"Device type: {name}")
    if facts["vendor"] is not None or facts["product"] is not None:
        lines += [
            f"Vendor: {facts['vendor'] or ''}",
            f"Product: {facts['product'] or ''}",
            f"Revision: {facts['revision'] or ''}",
        ]
    if facts["raw"]:
        size = facts["capacity_bytes"]
        lines += [
            f"Serial: {facts['serial'] or '<none>'}",
            f"WWN: {facts['wwn'] or '<none>'}",
            f"Block size: {facts['block_size']}",
            f"Capacity blocks: {facts['capacity_blocks']}",
            f"Capacity bytes: {size} ({_size_text(size)})",
            f"Max transfer: {facts['max_transfer_bytes'] or '<unlimited>'}",
            f"Write protect: {_yes_no(facts['write_protected'])}",
        ]
        prov = facts["provisioning"]
        lines.append(f"Provisioning: {prov['type']}")
        if prov["discard"] is None:
            lines.append("Discard: not supported")
        else:
            lines += [
                f"Discard: {DISCARD_METHODS[prov['discard']]}, granularity "
                f"{prov['discard_granularity']} bytes, at most {prov['discard_max_bytes']} "
                f"bytes per command",
                f"Discarded blocks read as zeros: {_yes_no(prov['lbprz'])}",
            ]
    else:
        lines.append("Raw: none (not a block device)")
    if facts["by_path"] is not None:
        lines.append(f"By-path: {facts['by_path']}")
    return "\n".join(lines) + "\n"
