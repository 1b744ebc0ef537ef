"""Text of the generated files: ``session`` and ``session.json``, ``luns/<n>/info`` and
``info.json``, ``InitiatorName`` and the multipath status files (``by-id/.multipath/<name>``);
the facts behind the ``user.iscsi.*`` attributes; and the ``by-path`` / ``by-id`` names.

Owns: the layouts. ``session`` follows ``iscsiadm -m session -P 3`` (TAB indents, the same
headings and key names, so admins recognise it and their greps keep working), followed by the
``iscsiadm -m session -s`` counters: its text is ``iscsifs/sessionfile.py``'s, which
``iscsifs session`` prints from ``session.json`` too. A multipath status file follows
``multipath -ll``. The
``by-id`` names are udev's ``/dev/disk/by-id`` names. Each text file and its JSON twin are
rendered from one snapshot (``session_facts``, ``lun_facts``: plain dicts in the documented
schema, docs/json.md), so they never disagree. Secrets never appear: CHAP passwords are always
printed as ``********``, whatever their value, the JSON has no password key, and SessionInfo
carries no secret in the first place.

Must not know: pyfuse3, trio, sessions. Input is the frozen snapshots from iscsifs/initiator.py
(SessionInfo, LunEntry); ``fs/backend.py`` declares what is read of them (``SessionSnapshot``,
``LunListing``, ``BlockDevice``), and mypy checks this module against it.

Names that come from the target (target name, alias, inquiry strings) are printed with control
characters escaped so that a hostile target cannot forge lines in these files.
"""

from __future__ import annotations

import json
import re
from typing import Any

from iscsifs.core.connection import COUNTER_NAMES   # iscsiadm -m session -s order
from iscsifs.core.names import Portal
from iscsifs.fs.backend import (BlockDevice, LunListing, MultipathBlockDevice, PathState,
                                SessionSnapshot)
from iscsifs.scsi.parse import device_type_name
from iscsifs.sessionfile import SESSION_SCHEMA, portal_text, render_session_text


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


def _path_name(st: PathState) -> str:
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


def session_facts(info: SessionSnapshot | None, target: str, portal: Portal) -> dict[str, Any]:
    """The snapshot behind ``session`` and ``session.json`` (schema ``iscsifs.session/1``,
    docs/json.md): what ``iscsiadm -m session -P 3 -s`` shows, never a secret.

    info is the backend's ``SessionSnapshot`` (``initiator.SessionInfo``), or None before
    login (the keys are the same; the values are null).
    """
    facts: dict[str, Any] = {
        "schema": SESSION_SCHEMA,
        "target": clean(target if info is None else info.target),
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
    timeouts, params = info.timeouts, info.params
    state, connection = info.session_state, info.connection_state
    counters = dict(info.counters)
    stats = {name: int(counters.pop(name, 0)) for name in COUNTER_NAMES}
    facts.update({
        "current_portal": portal_facts(info.portal or portal),
        "iface": {
            "name": "default",
            "transport": "tcp",
            "initiator_name": clean(info.initiator_name),
            "ip_address": clean(info.local_address) or None,
        },
        "sid": _int_or_none(info.sid),
        "connection_state": connection.iscsiadm,
        "session_state": state.iscsiadm,
        "timeouts": {
            "recovery_timeout": _number(timeouts.replacement_timeout),
            "target_reset_timeout": _number(timeouts.tgt_reset),
            "lun_reset_timeout": _number(timeouts.lu_reset),
            "abort_timeout": _number(timeouts.abort),
            "login_timeout": _number(timeouts.login),
            "logout_timeout": _number(timeouts.logout),
            "noop_out_interval": _number(timeouts.noop_out_interval),
            "noop_out_timeout": _number(timeouts.noop_out_timeout),
            "command_timeout": _number(timeouts.command),
        },
        # usernames only: no password is in the snapshot, and none is ever rendered
        "chap": {"username": clean(info.chap_username) if info.chap_username else None,
                 "username_in": clean(info.chap_username_in) if info.chap_username_in
                 else None},
        "negotiated": {
            "header_digest": _digest(params.header_digest),
            "data_digest": _digest(params.data_digest),
            "max_recv_data_segment_length": _int_or_none(params.max_recv_data_segment_length),
            "max_xmit_data_segment_length": _int_or_none(params.max_xmit_data_segment_length),
            "first_burst_length": _int_or_none(params.first_burst_length),
            "max_burst_length": _int_or_none(params.max_burst_length),
            "immediate_data": bool(params.immediate_data),
            "initial_r2t": bool(params.initial_r2t),
            "max_outstanding_r2t": _int_or_none(params.max_outstanding_r2t),
        },
        "luns": [{
            "lun": int(entry.lun),
            "device_type": int(entry.device_type),
            "type": clean(_type_name(entry)),
            "raw": f"luns/{int(entry.lun)}/raw" if entry.device is not None else None,
            "state": state.device_state,
        } for entry in sorted(info.luns, key=lambda e: int(e.lun))],
        "stats": stats,
        "extended_stats": {clean(name): _number(counters[name]) for name in sorted(counters)},
    })
    return facts


def render_session(info: SessionSnapshot | None, target: str, portal: Portal) -> str:
    """The ``session`` file: ``iscsiadm -m session -P 3`` layout + ``-s`` counters.

    info is an iscsifs.initiator.SessionInfo, or None before login.
    """
    return render_session_text(session_facts(info, target, portal))


def render_session_json(info: SessionSnapshot | None, target: str, portal: Portal) -> str:
    """The ``session.json`` file: the same snapshot as ``session``, as JSON."""
    return _json(session_facts(info, target, portal))


def _json(facts: dict[str, Any]) -> str:
    # ASCII only (anything else \u-escaped); keys in the documented order
    return json.dumps(facts, indent=2, ensure_ascii=True) + "\n"


def _type_name(entry: LunListing) -> str:
    if entry.type_name:
        return str(entry.type_name)
    return device_type_name(int(entry.device_type))


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

    def inquiry_text(value: str | None) -> str | None:
        return clean(str(value or "").strip()) or None

    facts: dict[str, Any] = {
        "schema": INFO_SCHEMA,
        "lun": int(lun),
        "target": clean(target) if target is not None else None,
        "portal": portal_facts(portal),
        "by_path": by_path_name(target, portal, lun)
        if target is not None and portal is not None else None,
        "device_type": int(device_type) if device_type is not None else None,
        "device_type_name": clean(type_name) if type_name else (
            device_type_name(int(device_type)) if device_type is not None else None),
        "vendor": inquiry_text(inq.vendor if inq is not None else None),
        "product": inquiry_text(inq.product if inq is not None else None),
        "revision": inquiry_text(inq.revision if inq is not None else None),
        "raw": dev is not None,
        "serial": None,
        "wwn": None,
        "block_size": None,
        "capacity_blocks": None,
        "capacity_bytes": None,
        "max_transfer_bytes": None,
        "write_protected": None,
        "provisioning": None,
        "in_flight": None,
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
            "in_flight": {"reads": int(dev.inflight[0]), "writes": int(dev.inflight[1]),
                          "max_reads": int(dev.max_inflight[0]),
                          "max_writes": int(dev.max_inflight[1])},
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
        lines.append(f"Portal: {portal_text(facts['portal'])}")
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
        io = facts["in_flight"]
        lines.append(f"In flight: {io['reads']} reads, {io['writes']} writes (most at once: "
                     f"{io['max_reads']} reads, {io['max_writes']} writes)")
    else:
        lines.append("Raw: none (not a block device)")
    if facts["by_path"] is not None:
        lines.append(f"By-path: {facts['by_path']}")
    return "\n".join(lines) + "\n"
