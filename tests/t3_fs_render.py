"""fs/render.py, fs/tree.py and fs/errno_map.py: pure units (no mount, no target)."""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from iscsifs.core.names import Portal
from iscsifs.core.keys import NegotiatedParams
from iscsifs.core.state import ConnectionState, SessionState
from iscsifs.fs import errno_map, render
from iscsifs.core.names import valid_iscsi_name
from iscsifs.fs.tree import Kind, Tree
from iscsifs.initiator import LunEntry, SessionInfo, Timeouts

from fs_fake import HOSTILE_NAMES, FakeLun, FakeMultipath

IQN = "iqn.2026-11.org.example:disk1"
PORTAL = Portal("127.0.0.1", 3260, 1)


def session_info(**changes) -> SessionInfo:
    values = dict(
        target=IQN, portal=PORTAL, sid=7, initiator_name="iqn.2016-04.com.open-iscsi:abcdef",
        local_address="127.0.0.1", connection_state=ConnectionState.LOGGED_IN,
        session_state=SessionState.LOGGED_IN,
        timeouts=Timeouts(replacement_timeout=60),
        chap_username="alice", chap_username_in="target-bob",
        params=NegotiatedParams(header_digest=True, data_digest=False,
                                max_recv_data_segment_length=262144,
                                max_xmit_data_segment_length=65536, first_burst_length=65536,
                                max_burst_length=262144, immediate_data=True,
                                initial_r2t=False, max_outstanding_r2t=1),
        luns=(LunEntry(0, 0x0C, "storage array controller", None),
              LunEntry(1, 0, "disk", FakeLun(4096))),
        counters={"txdata_octets": 1000, "rxdata_octets": 2000, "scsicmd_pdus": 12,
                  "datain_pdus": 5, "digest_err": 0},
        isid=0x23D000000001, tsih=3)
    values.update(changes)
    return SessionInfo(**values)


# -- session file ------------------------------------------------------------------------------
def test_session_layout_matches_iscsiadm_P3():
    text = render.render_session(session_info(), IQN, PORTAL)
    lines = text.splitlines()
    assert lines[2] == f"Target: {IQN} (non-flash)"
    assert "\tCurrent Portal: 127.0.0.1:3260,1" in lines
    assert "\tPersistent Portal: 127.0.0.1:3260,1" in lines
    for heading in ("Interface:", "Timeouts:", "CHAP:", "Negotiated iSCSI params:",
                    "Attached SCSI devices:"):
        i = lines.index("\t\t" + heading)
        # each heading is framed by star lines, as iscsiadm prints them
        assert set(lines[i - 1].strip()) == {"*"} and set(lines[i + 1].strip()) == {"*"}
    expected = [
        "\t\tIface Name: default", "\t\tIface Transport: tcp",
        "\t\tIface Initiatorname: iqn.2016-04.com.open-iscsi:abcdef",
        "\t\tIface IPaddress: 127.0.0.1", "\t\tSID: 7",
        "\t\tiSCSI Connection State: LOGGED IN", "\t\tiSCSI Session State: LOGGED_IN",
        "\t\tRecovery Timeout: 60", "\t\tTarget Reset Timeout: 30",
        "\t\tLUN Reset Timeout: 30", "\t\tAbort Timeout: 15",
        "\t\tHeaderDigest: CRC32C", "\t\tDataDigest: None",
        "\t\tMaxRecvDataSegmentLength: 262144", "\t\tMaxXmitDataSegmentLength: 65536",
        "\t\tFirstBurstLength: 65536", "\t\tMaxBurstLength: 262144",
        "\t\tImmediateData: Yes", "\t\tInitialR2T: No", "\t\tMaxOutstandingR2T: 1",
    ]
    for line in expected:
        assert line in lines, line
    # the order of the blocks is iscsiadm's
    order = [lines.index(x) for x in ("\t\tInterface:", "\t\tSID: 7", "\t\tTimeouts:",
                                      "\t\tCHAP:", "\t\tNegotiated iSCSI params:",
                                      "\t\tAttached SCSI devices:")]
    assert order == sorted(order)
    # indentation is TABs only, never spaces
    for line in lines:
        assert not line.startswith(" "), repr(line)


def test_session_chap_masks_and_usernames():
    text = render.render_session(session_info(), IQN, PORTAL)
    assert "\t\tusername: alice\n" in text
    assert "\t\tusername_in: target-bob\n" in text
    assert text.count("password: ********\n") == 1
    assert text.count("password_in: ********\n") == 1
    empty = render.render_session(session_info(chap_username=None, chap_username_in=None),
                                  IQN, PORTAL)
    assert "\t\tusername: <empty>\n" in empty and "\t\tusername_in: <empty>\n" in empty
    assert "password: ********" in empty      # masked even when there is no secret


def test_session_attached_luns_and_stats():
    text = render.render_session(session_info(), IQN, PORTAL)
    assert "\t\tscsi7 Channel 00 Id 0 Lun: 0\n" in text
    assert "\t\tscsi7 Channel 00 Id 0 Lun: 1\n" in text
    assert "\t\t\tAttached scsi disk luns/1/raw\t\tState: running\n" in text
    assert "luns/0/raw" not in text           # the controller LUN has no raw file
    stats = text[text.index("Stats for session"):].splitlines()
    assert stats[0] == f"Stats for session [sid: 7, target: {IQN}, portal: 127.0.0.1,3260]"
    assert stats[1] == "iSCSI SNMP:"
    names = [line.strip().split(":")[0] for line in stats[2:2 + len(render.COUNTER_NAMES)]]
    assert names == list(render.COUNTER_NAMES)
    assert "\ttxdata_octets: 1000" in stats and "\trxdata_octets: 2000" in stats
    assert "\tr2t_pdus: 0" in stats and "\ttimeout_err: 0" in stats


def test_session_failed_state_shows_devices_offline():
    text = render.render_session(session_info(session_state=SessionState.FAILED,
                                              connection_state=ConnectionState.TRANSPORT_WAIT),
                                 IQN, PORTAL)
    assert "\t\tiSCSI Connection State: TRANSPORT WAIT\n" in text
    assert "\t\tiSCSI Session State: FAILED\n" in text
    assert "State: transport-offline" in text        # the replacement timeout expired
    assert "Host Number: 7\tState: running" in text
    # while a relogin may still bring it back, iscsiadm's words are the same but the disks
    # are blocked, not offline
    text = render.render_session(session_info(session_state=SessionState.RECOVERING,
                                              connection_state=ConnectionState.IN_LOGIN),
                                 IQN, PORTAL)
    assert "\t\tiSCSI Connection State: IN LOGIN\n" in text
    assert "\t\tiSCSI Session State: FAILED\n" in text
    assert "State: blocked" in text and "transport-offline" not in text


def test_session_not_logged_in():
    text = render.render_session(None, IQN, PORTAL)
    assert text.startswith(f"Target: {IQN} (non-flash)\n")
    assert "not logged in" in text.lower()
    assert "127.0.0.1:3260,1" in text
    assert "Negotiated" not in text


def test_session_ipv6_portal():
    v6 = Portal("::1", 3260, 1)
    text = render.render_session(session_info(portal=v6), IQN, v6)
    assert "\tCurrent Portal: [::1]:3260,1\n" in text
    assert "portal: [::1],3260]" in text


def test_no_secret_in_session_text():
    # SessionInfo has no secret fields; make sure nothing that looks like one leaks from
    # a CHAP object either, whatever repr it has
    info = session_info()
    text = render.render_session(info, IQN, PORTAL)
    assert "secret" not in text.lower()
    assert "CHAP_R" not in text


def test_hostile_strings_are_escaped_in_text():
    evil = "iqn.2026-11.org.example:x\nInitiatorName=evil\x1b[31m"
    text = render.render_session(session_info(target=evil), evil, PORTAL)
    assert "\nInitiatorName=evil" not in text
    assert "\x1b" not in text
    assert "\\x0a" in text or "\\n" in text
    inq = SimpleNamespace(vendor="EVIL\r\n", product="P\x00Q", revision="1", device_type=0)
    info = render.render_lun_info(LunEntry(1, 0, "disk", FakeLun(4096, inquiry=inq)),
                                  evil, PORTAL)
    assert "\r" not in info and "\x00" not in info
    assert info.count("\n") == len(info.splitlines())


# -- info file ---------------------------------------------------------------------------------
def test_lun_info():
    dev = FakeLun(64 << 20, block_size=512, serial="beaf11", wwn="naa.600000001",
                  max_transfer_bytes=1 << 20)
    text = render.render_lun_info(LunEntry(1, 0, "disk", dev), IQN, PORTAL)
    lines = text.splitlines()
    for line in ("LUN: 1", "Device type: 0 (disk)", "Vendor: IET", "Product: VIRTUAL-DISK",
                 "Revision: 0001", "Serial: beaf11", "WWN: naa.600000001", "Block size: 512",
                 f"Capacity blocks: {(64 << 20) // 512}",
                 f"Capacity bytes: {64 << 20} (64.00 MiB)", "Max transfer: 1048576",
                 "Write protect: No",
                 f"By-path: ip-127.0.0.1:3260-iscsi-{IQN}-lun-1"):
        assert line in lines, line


def test_lun_info_write_protected_and_controller():
    dev = FakeLun(8192, write_protected=True, serial=None, wwn=None)
    text = render.render_lun_info(LunEntry(3, 0, "disk", dev), IQN, PORTAL)
    assert "Write protect: Yes" in text and "Serial: <none>" in text
    ctl = render.render_lun_info(LunEntry(0, 0x0C, "storage array controller", None),
                                 IQN, PORTAL)
    assert "Device type: 12 (storage array controller)" in ctl
    assert "Raw: none" in ctl


# -- JSON twins: same snapshot, documented schema ---------------------------------------------
def _text_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep and key not in out:
            out[key] = value
    return out


INFO_KEYS = ["schema", "lun", "target", "portal", "by_path", "device_type", "device_type_name",
             "vendor", "product", "revision", "raw", "serial", "wwn", "block_size",
             "capacity_blocks", "capacity_bytes", "max_transfer_bytes", "write_protected",
             "provisioning", "in_flight"]


@pytest.mark.parametrize("entry", [
    LunEntry(1, 0, "disk", FakeLun(64 << 20, serial="beaf11", wwn="naa.600000001")),
    LunEntry(2, 0, "disk", FakeLun(8192, block_size=4096, write_protected=True, serial=None,
                                   wwn=None)),
    LunEntry(0, 0x0C, "storage array controller", None),
])
def test_info_json_is_the_info_text_as_json(entry):
    import json
    doc = json.loads(render.render_lun_info_json(entry, IQN, PORTAL))
    assert list(doc) == INFO_KEYS and doc["schema"] == "iscsifs.info/1"
    text = _text_fields(render.render_lun_info(entry, IQN, PORTAL))
    assert text["LUN"] == str(doc["lun"]) and text["Target"] == doc["target"]
    assert text["Portal"] == f"{doc['portal']['address']},{doc['portal']['tpgt']}"
    assert doc["portal"] == {"address": "127.0.0.1:3260", "host": "127.0.0.1", "port": 3260,
                             "tpgt": 1}
    assert text["Device type"] == f"{doc['device_type']} ({doc['device_type_name']})"
    assert text["By-path"] == doc["by_path"]
    if entry.device is None:
        assert not doc["raw"] and doc["block_size"] is None and doc["provisioning"] is None
        assert doc["in_flight"] is None and "In flight" not in text
        assert doc["vendor"] is None and "Vendor" not in text
        return
    assert doc["raw"] is True
    for key, field in (("Vendor", "vendor"), ("Product", "product"), ("Revision", "revision"),
                       ("Block size", "block_size"), ("Capacity blocks", "capacity_blocks"),
                       ("Max transfer", "max_transfer_bytes")):
        assert text[key] == str(doc[field]), key
    assert text["Serial"] == (doc["serial"] or "<none>")
    assert text["WWN"] == (doc["wwn"] or "<none>")
    assert text["Capacity bytes"].split()[0] == str(doc["capacity_bytes"])
    assert text["Write protect"] == ("Yes" if doc["write_protected"] else "No")
    prov = doc["provisioning"]
    assert prov == {"type": "thin", "lbpme": True, "lbprz": True, "discard": "unmap",
                    "discard_granularity": entry.device.block_size, "discard_alignment": 0,
                    "discard_max_bytes": 0x7FFFFF * entry.device.block_size}
    assert text["Provisioning"] == prov["type"]
    assert text["Discard"].startswith("UNMAP, granularity "
                                      f"{prov['discard_granularity']} bytes")
    assert text["Discarded blocks read as zeros"] == "Yes"
    assert doc["in_flight"] == {"reads": 0, "writes": 0, "max_reads": 0, "max_writes": 0}
    assert text["In flight"] == "0 reads, 0 writes (most at once: 0 reads, 0 writes)"
    entry.device.inflight[:] = [1, 2]
    entry.device.max_inflight[:] = [3, 16]
    assert json.loads(render.render_lun_info_json(entry, IQN, PORTAL))["in_flight"] == {
        "reads": 1, "writes": 2, "max_reads": 3, "max_writes": 16}
    assert _text_fields(render.render_lun_info(entry, IQN, PORTAL))["In flight"] == \
        "1 reads, 2 writes (most at once: 3 reads, 16 writes)"


def test_info_of_a_lun_without_provisioning():
    from iscsifs.device import Provisioning
    import json
    dev = FakeLun(8192, provisioning=Provisioning())
    entry = LunEntry(1, 0, "disk", dev)
    doc = json.loads(render.render_lun_info_json(entry, IQN, PORTAL))
    assert doc["provisioning"] == {"type": "full", "lbpme": False, "lbprz": False,
                                   "discard": None, "discard_granularity": None,
                                   "discard_alignment": None, "discard_max_bytes": None}
    text = render.render_lun_info(entry, IQN, PORTAL)
    assert "Discard: not supported\n" in text and "read as zeros" not in text


SESSION_KEYS = ["schema", "target", "logged_in", "current_portal", "persistent_portal",
                "iface", "sid", "connection_state", "session_state", "timeouts", "chap",
                "negotiated", "luns", "stats", "extended_stats"]


def test_session_json_is_the_session_text_as_json():
    import json
    info = session_info(counters={"txdata_octets": 1000, "scsicmd_pdus": 12,
                                  "reconnects": 2, "cmd_timeouts": 1})
    doc = json.loads(render.render_session_json(info, IQN, PORTAL))
    assert list(doc) == SESSION_KEYS and doc["schema"] == "iscsifs.session/1"
    text = render.render_session(info, IQN, PORTAL)
    fields = _text_fields(text)
    assert doc["logged_in"] is True and fields["Target"] == f"{doc['target']} (non-flash)"
    assert fields["Current Portal"] == "127.0.0.1:3260,1" == \
        f"{doc['current_portal']['address']},{doc['current_portal']['tpgt']}"
    assert doc["persistent_portal"] == doc["current_portal"]
    assert fields["Iface Initiatorname"] == doc["iface"]["initiator_name"]
    assert fields["Iface IPaddress"] == doc["iface"]["ip_address"]
    assert fields["SID"] == str(doc["sid"])
    assert fields["iSCSI Connection State"] == doc["connection_state"]
    assert fields["iSCSI Session State"] == doc["session_state"]
    for label, key in (("Recovery Timeout", "recovery_timeout"),
                       ("Target Reset Timeout", "target_reset_timeout"),
                       ("LUN Reset Timeout", "lun_reset_timeout"),
                       ("Abort Timeout", "abort_timeout"), ("Login Timeout", "login_timeout"),
                       ("Logout Timeout", "logout_timeout"),
                       ("NOP-Out Interval", "noop_out_interval"),
                       ("NOP-Out Timeout", "noop_out_timeout"),
                       ("Command Timeout", "command_timeout")):
        assert fields[label] == str(doc["timeouts"][key]), label
        assert isinstance(doc["timeouts"][key], int)
    assert doc["timeouts"]["recovery_timeout"] == 60
    assert doc["chap"] == {"username": "alice", "username_in": "target-bob"}
    neg = doc["negotiated"]
    for label, key in (("HeaderDigest", "header_digest"), ("DataDigest", "data_digest"),
                       ("MaxRecvDataSegmentLength", "max_recv_data_segment_length"),
                       ("MaxXmitDataSegmentLength", "max_xmit_data_segment_length"),
                       ("FirstBurstLength", "first_burst_length"),
                       ("MaxBurstLength", "max_burst_length"),
                       ("MaxOutstandingR2T", "max_outstanding_r2t")):
        assert fields[label] == str(neg[key]), label
    assert fields["ImmediateData"] == "Yes" and neg["immediate_data"] is True
    assert fields["InitialR2T"] == "No" and neg["initial_r2t"] is False
    assert doc["luns"] == [
        {"lun": 0, "device_type": 12, "type": "storage array controller", "raw": None,
         "state": "running"},
        {"lun": 1, "device_type": 0, "type": "disk", "raw": "luns/1/raw", "state": "running"}]
    assert "\t\t\tAttached scsi disk luns/1/raw\t\tState: running\n" in text
    assert list(doc["stats"]) == list(render.COUNTER_NAMES)
    for name, value in doc["stats"].items():
        assert f"\t{name}: {value}\n" in text
    assert doc["stats"]["txdata_octets"] == 1000 and doc["stats"]["r2t_pdus"] == 0
    assert doc["extended_stats"] == {"cmd_timeouts": 1, "reconnects": 2}
    assert "iSCSI Extended Statistics:\n\tcmd_timeouts: 1\n\treconnects: 2\n" in text


def test_session_json_has_no_secret_and_a_not_logged_in_form():
    import json
    raw = render.render_session_json(session_info(), IQN, PORTAL)
    assert "password" not in raw and "********" not in raw
    doc = json.loads(render.render_session_json(None, IQN, PORTAL))
    assert list(doc) == SESSION_KEYS
    assert doc["logged_in"] is False and doc["session_state"] == "NOT LOGGED IN"
    assert doc["persistent_portal"]["address"] == "127.0.0.1:3260"
    assert doc["current_portal"] is None and doc["sid"] is None and doc["luns"] == []
    text = render.render_session(None, IQN, PORTAL)
    assert f"iSCSI Session State: {doc['session_state']}" in text


def test_json_escapes_hostile_strings():
    import json
    evil = "iqn.2026-11.org.example:x\nInitiatorName=evil\x1b[31m"
    raw = render.render_session_json(session_info(target=evil), evil, PORTAL)
    assert raw.isascii() and "\x1b" not in raw
    doc = json.loads(raw)
    assert doc["target"] == render.clean(evil) and "\n" not in doc["target"]
    inq = SimpleNamespace(vendor="EV\r\nIL", product="caf\u00e9", revision="1", device_type=0)
    raw = render.render_lun_info_json(LunEntry(1, 0, "disk", FakeLun(4096, inquiry=inq)),
                                      evil, PORTAL)
    assert raw.isascii()
    doc = json.loads(raw)
    assert doc["vendor"] == "EV\\x0d\\x0aIL" and doc["product"] == "caf\u00e9"


def test_initiator_name_file():
    assert render.render_initiator_name("iqn.2016-04.com.open-iscsi:ab") == \
        "InitiatorName=iqn.2016-04.com.open-iscsi:ab\n"


# -- tree: names -------------------------------------------------------------------------------
def test_portal_dir_names():
    tree = Tree([Portal("127.0.0.1", 3260), Portal("::1", 3260)])
    assert [n.name for n in tree.portal_nodes()] == ["127.0.0.1:3260", "[::1]:3260"]
    tree = Tree([Portal("127.0.0.1", 3260), Portal("::1", 3261)])
    assert [n.name for n in tree.children(tree.portals_dir)] == ["127.0.0.1:3260", "[::1]:3261"]
    assert tree.by_path("portals", "[::1]:3261", "targets").kind is Kind.TARGETS


@pytest.mark.expect_log("skipping target with unusable name", logger="iscsifs.fs.tree")
@pytest.mark.parametrize("name", HOSTILE_NAMES + [
    "", ".", "iqn.2026-11.org.example:a\x00b", "iqn.2026-11.org.example:tab\tx",
    "iqn.2026-11.org.example:\u202ertl", "/etc/passwd", "iqn.2026-11.org.example:" + "é" * 110,
])
def test_hostile_target_names_never_become_paths(name, caplog):
    assert not valid_iscsi_name(name)
    tree = Tree([PORTAL])
    targets = tree.targets_dir(PORTAL)
    with caplog.at_level(logging.WARNING, logger="iscsifs.fs.tree"):
        made = tree.set_targets(targets, [name, IQN])
    assert [n.name for n in made] == [IQN]
    assert [n.name for n in tree.children(targets)] == [IQN]
    assert caplog.records, "a skipped name must be logged"
    for record in caplog.records:
        assert "\n" not in record.getMessage()
    # listing again does not warn again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iscsifs.fs.tree"):
        tree.set_targets(targets, [name, IQN])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_inodes_are_stable_per_path_and_never_reused():
    tree = Tree([PORTAL])
    targets = tree.targets_dir(PORTAL)
    assert targets.children is None                 # not listed yet
    first = tree.set_targets(targets, [IQN, "iqn.2026-11.org.example:disk2"])
    inodes = {n.name: n.inode for n in first}
    tree.set_targets(targets, ["iqn.2026-11.org.example:disk2"])   # disk1 vanished
    assert [n.name for n in tree.children(targets)] == ["iqn.2026-11.org.example:disk2"]
    again = tree.set_targets(targets, [IQN])         # disk1 is back: same inode
    assert again[0].inode == inodes[IQN]
    allocated = [n.inode for n in tree._nodes.values()]
    assert len(allocated) == len(set(allocated))


def test_luns_tree_and_counts():
    tree = Tree([PORTAL])
    targets = tree.targets_dir(PORTAL)
    (tnode,) = tree.set_targets(targets, [IQN])
    luns = tree.child(tnode, "luns")
    assert tree.subdir_count(luns) is None           # unknown until listed
    tree.set_luns(luns, [LunEntry(0, 0x0C, "storage array controller", None),
                         LunEntry(1, 0, "disk", FakeLun(4096)),
                         LunEntry(2, 0, "disk", FakeLun(8192))])
    assert [n.name for n in tree.children(luns)] == ["0", "1", "2"]
    assert [n.name for n in tree.children(tree.child(luns, "0"))] == ["info", "info.json"]
    assert [n.name for n in tree.children(tree.child(luns, "1"))] == \
        ["info", "info.json", "raw"]
    assert [n.name for n in tree.children(tnode)] == ["session", "session.json", "luns",
                                                      "rescan"]
    assert tree.subdir_count(luns) == 3
    assert tree.subdir_count(tnode) == 1
    assert sum(d.size for d in tree.listed_devices()) == 4096 + 8192
    # a rescan that drops LUN 2 removes it from statfs and the listing
    tree.set_luns(luns, [LunEntry(1, 0, "disk", tree.child(luns, "1").entry.device)])
    assert sum(d.size for d in tree.listed_devices()) == 4096


# -- errno mapping -----------------------------------------------------------------------------
def _scsi(key, asc=0, ascq=0, status=2):
    from iscsifs.scsi.sense import ScsiError, Sense, SenseKey
    return ScsiError(status, Sense(0x70, SenseKey(key), asc, ascq))


@pytest.mark.expect_log(r" -> E[A-Z]+$", logger="iscsifs.fs.errno_map", optional=True)
@pytest.mark.parametrize("exc_factory, expected", [
    (lambda: _scsi(0x7, 0x27, 0x00), errno.EROFS),        # DATA PROTECT
    (lambda: _scsi(0x3, 0x11, 0x00), errno.EIO),          # MEDIUM ERROR
    (lambda: _scsi(0x4, 0x44, 0x00), errno.EIO),          # HARDWARE ERROR
    (lambda: _scsi(0x5, 0x21, 0x00), errno.ENOSPC),       # LBA out of range
    (lambda: _scsi(0x5, 0x24, 0x00), errno.EINVAL),       # invalid field in CDB
    (lambda: _scsi(0x2, 0x04, 0x02), errno.EIO),          # NOT READY
    (lambda: _scsi(0x6, 0x29, 0x00), errno.EIO),          # UNIT ATTENTION
    (lambda: _scsi(0xB, 0x47, 0x00), errno.EIO),          # ABORTED COMMAND
])
def test_scsi_errors_map_by_sense_key(exc_factory, expected):
    assert errno_map.errno_for(exc_factory(), "test") == expected


@pytest.mark.expect_log(r" -> E[A-Z]+$", logger="iscsifs.fs.errno_map")
def test_other_errors_map():
    from iscsifs import errors
    from iscsifs.errors import NoSpace
    assert errno_map.errno_for(NoSpace("beyond"), "w") == errno.ENOSPC
    assert errno_map.errno_for(errors.AuthenticationError("auth failed", 2, 1), "l") == \
        errno.EACCES
    assert errno_map.errno_for(errors.LoginError("authorization", 2, 2), "l") == errno.EACCES
    assert errno_map.errno_for(errors.LoginError("not found", 2, 3), "l") == errno.ENOENT
    assert errno_map.errno_for(errors.LoginError("target error", 3, 1), "l") == errno.EIO
    assert errno_map.errno_for(errors.ConnectionLost("gone"), "r") == errno.EIO
    assert errno_map.errno_for(errors.SessionFailed("gone"), "r") == errno.EIO
    # a timed-out command is an I/O error, as Linux's SCSI layer reports one
    assert errno_map.errno_for(errors.CommandTimeout("slow"), "r") == errno.EIO
    assert errno_map.errno_for(errors.RemoteProtocolError("bad"), "r") == errno.EIO
    assert errno_map.errno_for(errors.ConfigError("bad"), "r") == errno.EINVAL
    assert errno_map.errno_for(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "d") \
        == errno.ECONNREFUSED
    login = errors.LoginError("could not connect")
    login.__cause__ = OSError(errno.EHOSTUNREACH, "no route")
    assert errno_map.errno_for(login, "l") == errno.EHOSTUNREACH
    group = ExceptionGroup("x", [errors.CommandTimeout("slow")])
    assert errno_map.errno_for(group, "r") == errno.EIO
    # a portal that cannot be reached: the socket's errno (ls said EIO for a refused mkdir'd
    # portal); a connection lost later, with no such errno, stays EIO
    for code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT):
        assert errno_map.errno_for(errors.ConnectionLost("cannot connect", errno=code),
                                   "opendir") == code
    assert errno_map.errno_for(errors.ConnectionLost("odd", errno=errno.ENOMEM), "r") == \
        errno.EIO


@pytest.mark.expect_log("NOT READY", logger="iscsifs.fs.errno_map")
def test_not_ready_logs_the_sense(caplog):
    with caplog.at_level(logging.WARNING, logger="iscsifs.fs.errno_map"):
        errno_map.errno_for(_scsi(0x2, 0x04, 0x02), "read")
    (record,) = caplog.records
    assert "NOT READY" in record.getMessage() and "04/02" in record.getMessage()


@pytest.mark.expect_log("unexpected KeyError", logger="iscsifs.fs.errno_map")
def test_unexpected_error_logs_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger="iscsifs.fs.errno_map"):
        assert errno_map.errno_for(KeyError("bug"), "getattr") == errno.EIO
    (record,) = caplog.records
    assert record.exc_info is not None


async def test_decorator_turns_everything_into_fuse_errors():
    from iscsifs.errors import NoSpace

    class H:
        @errno_map.fuse_errors
        async def write(self, exc):
            await trio.sleep(0)
            raise exc

    with pytest.raises(pyfuse3.FUSEError) as info:
        await H().write(NoSpace("x"))
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(pyfuse3.FUSEError) as info:
        await H().write(pyfuse3.FUSEError(errno.EBADF))
    assert info.value.errno == errno.EBADF
    with pytest.raises(pyfuse3.FUSEError) as info:
        await H().write(_scsi(0x7, 0x27, 0x00))
    assert info.value.errno == errno.EROFS
    # cancellation is not an error to translate: it passes through to its scope

    class Slow:
        @errno_map.fuse_errors
        async def read(self):
            await trio.sleep(10)

    with trio.move_on_after(0.01) as scope:
        await Slow().read()
    assert scope.cancelled_caught


# -- by-id names and the multipath status file -------------------------------------------------
@pytest.mark.parametrize("identity, serial, name", [
    ("naa.60000000000000000e00000000010001", "360000000000000000e00000000010001",
     "wwn-0x60000000000000000e00000000010001"),
    ("naa.5001405ABCDEF012", "35001405abcdef012", "wwn-0x5001405abcdef012"),
    ("eui.0011223344556677", "20011223344556677", "scsi-20011223344556677"),
    ("t10.IET     00010001", "1IET_00010001", "scsi-1IET_00010001"),
    ("t10.LIO-ORG abcd/../x\nevil", "1LIO-ORG_abcd_.._x_evil", "scsi-1LIO-ORG_abcd_.._x_evil"),
    ("t10.\ufffd\x01", "1__", "scsi-1__"),
    ("naa.12zz", None, None),
    ("t10.   ", None, None),
    ("iqn.2026-11.org.example:lu", None, None),
])
def test_by_id_names_follow_udev(identity, serial, name):
    assert render.udev_serial(identity) == serial
    assert render.by_id_name(identity) == name
    if name is not None:
        assert "/" not in name and name not in (".", "..") and valid_name_chars(name)


def valid_name_chars(name: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "#+-.:=@_") for c in name)


def multipath_device(policy: str = "failover") -> FakeMultipath:
    dev = FakeMultipath(FakeLun(64 << 20), policy=policy)
    dev.paths = [(IQN, PORTAL, 1), (IQN, Portal("127.0.0.2", 3260), 1)]
    return dev


def test_multipath_status_layout_failover():
    dev = multipath_device()
    dev.down.add((IQN, PORTAL, 1))
    dev.switches = 1
    text = render.render_multipath(dev, "wwn-0x60000000000000000e00000000010001")
    assert text == (
        "wwn-0x60000000000000000e00000000010001 (360000000000000000e00000000010001) "
        "IET,VIRTUAL-DISK\n"
        "size=64M features='1 queue_if_no_path' hwhandler='0' wp=rw\n"
        "|-+- policy='failover' prio=2 status=enabled\n"
        f"| `- 127.0.0.1:3260 {IQN} lun 1 failed faulty blocked\n"
        "`-+- policy='failover' prio=1 status=active\n"
        f"  `- 127.0.0.2:3260 {IQN} lun 1 active ready running\n"
        "\n"
        f"{'path':<{len(f'127.0.0.1:3260 {IQN} lun 1')}}         ios  errors  failures\n"
        f"127.0.0.1:3260 {IQN} lun 1           0       0         1\n"
        f"127.0.0.2:3260 {IQN} lun 1           0       0         0\n"
        "\n"
        "active path switches: 1\n"
        "no path: queue for at most 120 s (replacement_timeout)\n")


def test_multipath_status_round_robin_is_one_group():
    dev = multipath_device("round-robin")
    dev.no_path_retry = 0
    dev.lun.write_protected = True
    lines = render.render_multipath(dev, "x").splitlines()
    assert lines[1] == "size=64M features='0' hwhandler='0' wp=ro"
    assert lines[2] == "`-+- policy='round-robin' prio=1 status=active"
    assert lines[3].startswith("  |- 127.0.0.1:3260 ") and lines[4].startswith("  `- 127.0.0.2")
    assert lines[-1] == "no path: fail at once (replacement_timeout)"


def test_multipath_status_escapes_what_the_target_sent():
    dev = multipath_device()
    dev.lun.inquiry = SimpleNamespace(vendor="EVIL\nX", product="P\x1b[2J", revision="1",
                                      device_type=0)
    text = render.render_multipath(dev, "wwn-0x1")
    assert "EVIL\\x0aX,P\\x1b[2J" in text.splitlines()[0]
    assert len(text.splitlines()) == 13


@pytest.mark.parametrize("n, text", [(1 << 20, "1M"), (64 << 20, "64M"), (3 << 29, "1.5G"),
                                     (2 << 40, "2T"), (512, "0.5K")])
def test_multipath_size(n, text):
    assert render._multipath_size(n) == text
