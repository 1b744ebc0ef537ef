"""fs/render.py, fs/tree.py and fs/errno_map.py: pure units (no mount, no target)."""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from iscsifs.core.discovery import Portal
from iscsifs.core.keys import NegotiatedParams
from iscsifs.fs import errno_map, render
from iscsifs.core.discovery import valid_iscsi_name
from iscsifs.fs.tree import Kind, Tree
from iscsifs.initiator import LunEntry, SessionInfo, Timeouts

from fs_fake import HOSTILE_NAMES, FakeLun

IQN = "iqn.2026-11.org.example:disk1"
PORTAL = Portal("127.0.0.1", 3260, 1)


def session_info(**changes) -> SessionInfo:
    values = dict(
        target=IQN, portal=PORTAL, sid=7, initiator_name="iqn.2016-04.com.open-iscsi:abcdef",
        local_address="127.0.0.1", connection_state="LOGGED IN", session_state="LOGGED_IN",
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
    text = render.render_session(session_info(session_state="FAILED",
                                              connection_state="TRANSPORT WAIT"), IQN, PORTAL)
    assert "\t\tiSCSI Connection State: TRANSPORT WAIT\n" in text
    assert "State: transport-offline" in text


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
    assert [n.name for n in tree.children(tree.child(luns, "0"))] == ["info"]
    assert [n.name for n in tree.children(tree.child(luns, "1"))] == ["info", "raw"]
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
    assert errno_map.errno_for(errors.CommandTimeout("slow"), "r") == errno.ETIMEDOUT
    assert errno_map.errno_for(errors.RemoteProtocolError("bad"), "r") == errno.EIO
    assert errno_map.errno_for(errors.ConfigError("bad"), "r") == errno.EINVAL
    assert errno_map.errno_for(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "d") \
        == errno.ECONNREFUSED
    login = errors.LoginError("could not connect")
    login.__cause__ = OSError(errno.EHOSTUNREACH, "no route")
    assert errno_map.errno_for(login, "l") == errno.EHOSTUNREACH
    group = ExceptionGroup("x", [errors.CommandTimeout("slow")])
    assert errno_map.errno_for(group, "r") == errno.ETIMEDOUT
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
