"""open-iscsi configuration files and the node record database (iscsifs.config.*)."""

from __future__ import annotations

import os
import re
import stat
from collections import namedtuple

import pytest
from hypothesis import given, strategies as st

from iscsifs.config.conffile import parse_conf, render_record
from iscsifs.config.initiatorname import (ensure_initiator_name, iname, read_initiator_name,
                                          write_initiator_name)
from iscsifs.config.keys import validate_host, validate_iscsi_name
from iscsifs.config.nodedb import NodeDB
from iscsifs.config.settings import DiscoverySettings, NodeSettings
from iscsifs.core.chap import ChapCredentials
from iscsifs.core.names import Portal, parse_portal, valid_iscsi_name
from iscsifs.errors import ConfigError

T1 = "iqn.2003-01.org.example:t1"
T2 = "iqn.2003-01.org.example:t2"
SECRET = "node-secret-0001"
SECRET_IN = "target-secret-002"
P1 = Portal("10.0.0.5", 3260, 1)
OtherPortal = namedtuple("OtherPortal", "host port tpgt")   # like core.names.Portal


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# --- parse_conf ------------------------------------------------------------------------------

def test_parse_comments_spacing_and_markers():
    text = """
# a comment
   # indented comment
# BEGIN RECORD 2.1.11
node.startup=automatic
node.session.cmds_max   =    64
node.conn[0].iscsi.HeaderDigest =CRC32C,None
node.session.auth.username= bob
node.session.auth.password = pa#ss word
node.session.auth.username_in = <empty>
# END RECORD
"""
    conf = parse_conf(text, "/x/default")
    assert conf == {
        "node.startup": "automatic",
        "node.session.cmds_max": "64",
        "node.conn[0].iscsi.HeaderDigest": "CRC32C,None",
        "node.session.auth.username": "bob",
        "node.session.auth.password": "pa#ss word",
        "node.session.auth.username_in": "",
    }
    assert conf.record_version == "2.1.11"
    assert conf.warnings == []
    assert conf.lines["node.session.cmds_max"] == 6
    assert "pa#ss" not in repr(conf)


def test_parse_normalises_case():
    conf = parse_conf("node.session.iscsi.InitialR2T = yes\n"
                      "node.conn[0].iscsi.DataDigest = crc32c\n"
                      "node.session.auth.authmethod = chap\n"
                      "node.session.auth.chap_algs = sha256, md5\n")
    assert conf["node.session.iscsi.InitialR2T"] == "Yes"
    assert conf["node.conn[0].iscsi.DataDigest"] == "CRC32C"
    assert conf["node.session.auth.authmethod"] == "CHAP"
    assert conf["node.session.auth.chap_algs"] == "SHA256,MD5"


def test_unknown_keys_warned_not_fatal():
    conf = parse_conf("node.session.frobnicate = 3\niface.transport_name = tcp\n"
                      "node.startup = manual\nnode.startup = onboot\n", "/etc/x.conf")
    assert conf["node.session.frobnicate"] == "3"
    assert conf["node.startup"] == "onboot"
    assert any("/etc/x.conf:1" in w and "frobnicate" in w for w in conf.warnings)
    assert not any("iface.transport_name" in w for w in conf.warnings)
    assert any("/etc/x.conf:4" in w and "last value wins" in w for w in conf.warnings)


@pytest.mark.parametrize("line", [
    "node.startup", "= value", "bad key = 1", "node.session.cmds_max = many",
    "node.session.cmds_max = 1", "node.session.cmds_max =", "node.startup = sometimes",
    "node.session.iscsi.InitialR2T = maybe", "node.conn[0].iscsi.HeaderDigest = MD5",
    "node.conn[0].iscsi.HeaderDigest = None,None", "node.session.auth.authmethod = Kerberos",
    "node.session.auth.chap_algs = SHA512", "node.conn[0].timeo.login_timeout = -1",
    "node.session.iscsi.FirstBurstLength = 99999999", "node.conn[0].port = 70000",
    "node.name = not-an-iqn", "node.session.cmds_max = ١٢٨",
])
def test_bad_lines_name_file_and_line(line):
    text = "# header\nnode.tpgt = 1\n" + line + "\n"
    with pytest.raises(ConfigError) as info:
        parse_conf(text, "/etc/iscsi/iscsid.conf")
    assert str(info.value).startswith("/etc/iscsi/iscsid.conf:3: ")
    assert info.value.path == "/etc/iscsi/iscsid.conf" and info.value.line == 3


def test_negative_replacement_timeout_allowed():
    assert parse_conf("node.session.timeo.replacement_timeout = -1\n")[
        "node.session.timeo.replacement_timeout"] == "-1"


def test_bad_secret_value_not_echoed():
    with pytest.raises(ConfigError) as info:
        parse_conf("node.session.auth.password = abc\x01def\n", "f")
    assert "abc" not in str(info.value)


@pytest.mark.parametrize("text", [
    "# END RECORD\n",
    "# BEGIN RECORD 2.1\nnode.startup = manual\n",
    "# BEGIN RECORD 2.1\n# END RECORD\nnode.startup = manual\n",
])
def test_record_marker_errors(text):
    with pytest.raises(ConfigError):
        parse_conf(text, "rec")


def test_render_parse_round_trip():
    keys = NodeSettings().to_keys()
    keys["node.name"] = T1
    text = render_record(keys, hide_secrets=False)
    assert text.startswith("# BEGIN RECORD 2.1.11\n") and text.endswith("# END RECORD\n")
    assert "node.session.auth.username = <empty>" in text
    assert dict(parse_conf(text)) == keys


def test_render_hides_secrets():
    keys = {"node.session.auth.password": SECRET, "node.session.auth.password_in": ""}
    text = render_record(keys)
    assert SECRET not in text and "node.session.auth.password = ********" in text
    assert "node.session.auth.password_in = <empty>" in text


# --- settings --------------------------------------------------------------------------------

def test_node_defaults_are_open_iscsi_defaults():
    s = NodeSettings()
    assert (s.startup, s.auth, s.replacement_timeout, s.login_timeout, s.logout_timeout) == \
        ("manual", None, 120, 15, 15)
    assert (s.noop_out_interval, s.noop_out_timeout, s.abort_timeout, s.lu_reset_timeout,
            s.tgt_reset_timeout) == (5, 5, 15, 30, 30)
    assert (s.initial_login_retry_max, s.cmds_max, s.queue_depth) == (8, 128, 32)
    assert (s.initial_r2t, s.immediate_data, s.first_burst_length, s.max_burst_length) == \
        (False, True, 262144, 16776192)
    assert (s.max_recv_data_segment_length, s.header_digest, s.data_digest) == \
        (262144, "None", "None")
    assert NodeSettings.from_keys({}) == s
    assert DiscoverySettings().max_recv_data_segment_length == 32768
    assert DiscoverySettings().auth is None


def test_settings_from_and_to_keys():
    keys = {"node.startup": "automatic", "node.session.iscsi.InitialR2T": "Yes",
            "node.conn[0].timeo.noop_out_interval": "0",
            "node.session.auth.authmethod": "CHAP", "node.session.auth.username": "u",
            "node.session.auth.password": SECRET, "node.session.auth.username_in": "t",
            "node.session.auth.password_in": SECRET_IN,
            "node.session.auth.chap_algs": "SHA256,MD5"}
    s = NodeSettings.from_keys(keys)
    assert s.startup == "automatic" and s.initial_r2t and s.noop_out_interval == 0
    assert s.auth == ChapCredentials("u", SECRET, "t", SECRET_IN, ("SHA256", "MD5"))
    back = s.to_keys()
    assert {k: back[k] for k in keys} == keys
    assert NodeSettings.from_keys(back) == s
    assert SECRET not in repr(s) and SECRET_IN not in repr(s)


def test_chap_used_when_credentials_set():
    s = NodeSettings.from_keys({"node.session.auth.username": "u",
                                "node.session.auth.password": SECRET})
    assert s.auth is not None and s.auth.username == "u"


@pytest.mark.parametrize("keys,match", [
    ({"node.session.auth.username": "u", "node.session.auth.password": SECRET,
      "node.session.auth.username_in": "t", "node.session.auth.password_in": SECRET},
     "no two CHAP secrets may be the same"),
    ({"node.session.auth.username_in": "t", "node.session.auth.password_in": SECRET_IN},
     "username_in/password_in"),
    ({"node.session.auth.authmethod": "CHAP"}, "authmethod is CHAP"),
    ({"node.session.auth.username": "u"}, "must be set together"),
    ({"node.session.cmds_max": "x"}, "cmds_max"),
])
def test_settings_validation(keys, match):
    with pytest.raises(ConfigError, match=match) as info:
        NodeSettings.from_keys(keys)
    assert SECRET not in str(info.value) and SECRET_IN not in str(info.value)


def test_discovery_settings_keys():
    s = DiscoverySettings.from_keys({
        "discovery.sendtargets.auth.username": "d",
        "discovery.sendtargets.auth.password": SECRET,
        "discovery.sendtargets.iscsi.MaxRecvDataSegmentLength": "65536"})
    assert s.auth.username == "d" and s.max_recv_data_segment_length == 65536
    assert s.to_keys()["discovery.sendtargets.auth.authmethod"] == "CHAP"


def test_weak_secret_warning_passed_up():
    s = NodeSettings.from_keys({"node.session.auth.username": "u",
                                "node.session.auth.password": "shortpw"})
    assert len(s.warnings) == 1 and "shortpw" not in s.warnings[0]


def test_non_strict_equal_secrets_still_refused():
    with pytest.raises(ConfigError, match="no two CHAP secrets"):
        NodeSettings.from_keys({"node.session.auth.password": SECRET,
                                "node.session.auth.password_in": SECRET}, strict=False)
    s = NodeSettings.from_keys({"node.session.auth.password": SECRET}, strict=False)
    assert s.auth is None and s.auth_error and SECRET not in s.auth_error


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    T1, "iqn.2016-04.com.open-iscsi:0123456789ab", "eui.02004567A425678D",
    "naa.52004567BA64678D", "naa.62004567BA64678D0123456789ABCDEF", "iqn.2001-04.com.example",
])
def test_valid_names(name):
    assert valid_iscsi_name(name)


@pytest.mark.parametrize("name", [
    "", "iqn.2003-01.org.example:../../etc", "iqn.2003-01.org.example/evil",
    "iqn.2003-01.org.example:a\x00b", "iqn.2003-01.org.example:a\nb", "iqn.2003-01.x y",
    "iqn." + "a" * 220, "foo.bar", "eui.123", "naa.12345", "..", "iqn.2003-01.org.ex:a\\b",
    "iqn.x", None, 42,
])
def test_invalid_names(name):
    assert not valid_iscsi_name(name)
    with pytest.raises(ConfigError):
        validate_iscsi_name(name)


def test_iname_format():
    names = {iname() for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert re.fullmatch(r"iqn\.2016-04\.com\.open-iscsi:[0-9a-f]{12}", name)
        assert valid_iscsi_name(name)
    assert re.fullmatch(r"iqn\.2001-04\.com\.example:[0-9a-f]{12}",
                        iname("iqn.2001-04.com.example"))
    for bad in ("foo", "eui.1234", "iqn." + "a" * 220, "iqn.2001-04.x/y"):
        with pytest.raises(ConfigError):
            iname(bad)


# --- initiatorname.iscsi ---------------------------------------------------------------------

def test_initiator_name_round_trip(tmp_path):
    path = tmp_path / "initiatorname.iscsi"
    write_initiator_name(path, "iqn.1993-08.org.debian:01:abcdef", "host1")
    assert read_initiator_name(path) == ("iqn.1993-08.org.debian:01:abcdef", "host1")
    assert mode(path) == 0o600
    write_initiator_name(path, "iqn.1993-08.org.debian:01:abcdef")
    assert read_initiator_name(path) == ("iqn.1993-08.org.debian:01:abcdef", None)


def test_initiator_name_open_iscsi_file(tmp_path):
    path = tmp_path / "initiatorname.iscsi"
    path.write_text("## DO NOT EDIT OR REMOVE THIS FILE!\n## comment\n"
                    "InitiatorName=iqn.1993-08.org.debian:01:2f7e1d1c\n")
    assert read_initiator_name(path) == ("iqn.1993-08.org.debian:01:2f7e1d1c", None)


@pytest.mark.parametrize("text", ["", "# only\n", "InitiatorName=bogus\n",
                                  "InitiatorName iqn.2001-04.com.x:a\n",
                                  "Foo=bar\nInitiatorName=iqn.2001-04.com.x:a\n"])
def test_initiator_name_bad(tmp_path, text):
    path = tmp_path / "initiatorname.iscsi"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_initiator_name(path)
    assert str(path) in str(info.value)


def test_write_initiator_name_validates(tmp_path):
    with pytest.raises(ConfigError):
        write_initiator_name(tmp_path / "n", "not-a-name")
    assert not (tmp_path / "n").exists()


def test_ensure_initiator_name_generates_once(tmp_path):
    name, alias = ensure_initiator_name(tmp_path)
    assert alias is None and name.startswith("iqn.2016-04.com.open-iscsi:")
    assert read_initiator_name(tmp_path / "initiatorname.iscsi") == (name, None)
    assert ensure_initiator_name(tmp_path) == (name, None)


def test_ensure_initiator_name_prefers_open_iscsi(tmp_path):
    system = tmp_path / "etc"
    system.mkdir()
    write_initiator_name(system / "initiatorname.iscsi", "iqn.1993-08.org.debian:01:abc")
    ours = tmp_path / "ours"
    assert ensure_initiator_name(ours, open_iscsi_dir=system)[0] == \
        "iqn.1993-08.org.debian:01:abc"
    assert ensure_initiator_name(ours)[0].startswith("iqn.2016-04")


# --- NodeDB ----------------------------------------------------------------------------------

@pytest.fixture
def db(tmp_path):
    return NodeDB(tmp_path / "cfg")


def test_add_writes_open_iscsi_layout(db):
    record = db.add(T1, P1)
    path = db.config_dir / "nodes" / T1 / "10.0.0.5,3260,1" / "default"
    assert path.is_file() and mode(path) == 0o600
    text = path.read_text()
    assert text.startswith("# BEGIN RECORD 2.1.11\n") and text.rstrip().endswith("# END RECORD")
    conf = parse_conf(text, str(path))
    assert conf.warnings == []
    assert conf["node.name"] == T1 and conf["node.tpgt"] == "1"
    assert conf["node.conn[0].address"] == "10.0.0.5" and conf["node.conn[0].port"] == "3260"
    assert conf["node.discovery_type"] == "static"
    assert record.settings == NodeSettings()
    assert record.target == T1 and record.portal == P1
    assert str(record) == "10.0.0.5:3260,1 " + T1


def test_record_round_trip_with_settings(db):
    settings = NodeSettings(startup="automatic", header_digest="CRC32C,None",
                            replacement_timeout=-1, queue_depth=64,
                            auth=ChapCredentials("u", SECRET, "t", SECRET_IN))
    db.add(T1, OtherPortal("10.0.0.5", 3260, 1), settings)
    again = NodeDB(db.config_dir).get(T1, P1)
    assert again.settings == settings
    assert db.list_nodes() == [again]
    assert SECRET not in repr(again) and SECRET not in render_record(again.keys)
    assert SECRET in render_record(again.keys, hide_secrets=False)


def test_ipv6_portal_stored_like_open_iscsi(db):
    db.add(T1, ("[fe80::1]", 3261, 2))
    assert (db.config_dir / "nodes" / T1 / "fe80::1,3261,2" / "default").is_file()
    [record] = db.list_nodes()
    assert record.portal == Portal("fe80::1", 3261, 2)
    assert str(record.portal) == "[fe80::1]:3261,2"


@pytest.mark.parametrize("spec", ["my_host", "my_host:3261,2", "SAN-1.example.", "[FE80::1]",
                                  "10.0.0.7:3262"])
def test_every_portal_the_mount_takes_can_be_saved_as_a_record(db, spec):
    """One portal type and one host rule: what parse_portal (the mount, the CLI) accepts, the
    node database stores and reads back as the same Portal (``my_host`` used to be taken by
    the mount and refused by the records)."""
    portal = parse_portal(spec)
    record = db.add(T1, portal)
    assert record.portal == portal
    assert validate_host(portal.host) == portal.host
    [again] = NodeDB(db.config_dir).list_nodes()
    assert again.portal == portal and isinstance(again.portal, Portal)
    assert db.record_path(T1, portal).is_file()
    assert db.discovery_settings(portal) is not None       # a discovery record too
    db.record_discovery(portal, [(T2, [portal])])
    assert db.exists(T2, portal)


def test_add_existing_is_not_clobbered(db):
    db.add(T1, P1, NodeSettings(startup="automatic"))
    assert db.add(T1, P1).settings.startup == "automatic"
    assert db.add(T1, P1, NodeSettings(), overwrite=True).settings.startup == "manual"


def test_update_validated(db):
    db.add(T1, P1)
    record = db.update(T1, P1, "node.conn[0].iscsi.DataDigest", "crc32c")
    assert record.settings.data_digest == "CRC32C"
    assert db.get(T1, P1).settings.data_digest == "CRC32C"
    with pytest.raises(ConfigError, match="default"):
        db.update(T1, P1, "node.session.cmds_max", "lots")
    with pytest.raises(ConfigError, match="unknown"):
        db.update(T1, P1, "node.session.nonsense", "1")
    with pytest.raises(ConfigError, match="cannot be changed"):
        db.update(T1, P1, "node.name", T2)
    with pytest.raises(ConfigError):
        db.update(T2, P1, "node.startup", "automatic")     # no such record


def test_update_chap_key_by_key_and_equal_secret_refused(db):
    db.add(T1, P1)
    half = db.update(T1, P1, "node.session.auth.username", "u")
    # mid-edit: readable for editing, but never silently "no authentication" for a login
    assert half.settings.auth is None and "must be set together" in half.settings.auth_error
    with pytest.raises(ConfigError, match="must be set together"):
        half.settings.check()
    with pytest.raises(ConfigError, match="must be set together"):
        db.get(T1, P1)
    assert db.list_nodes() == [] and len(db.list_nodes(strict=False)) == 1
    done = db.update(T1, P1, "node.session.auth.password", SECRET)
    assert done.settings.auth_error is None and done.settings.auth.username == "u"
    assert db.get(T1, P1).settings.auth.username == "u"
    db.update(T1, P1, "node.session.auth.username_in", "t")
    with pytest.raises(ConfigError, match="no two CHAP secrets") as info:
        db.update(T1, P1, "node.session.auth.password_in", SECRET)
    assert SECRET not in str(info.value)
    # the bad value was not written
    text = (db.config_dir / "nodes" / T1 / "10.0.0.5,3260,1" / "default").read_text()
    assert "node.session.auth.password_in = <empty>" in text
    db.update(T1, P1, "node.session.auth.password_in", SECRET_IN)
    assert db.get(T1, P1).settings.auth.mutual


def test_bad_target_names_refused(db):
    for bad in ("iqn.2003-01.org.example:../../../etc", "../x", "iqn.2003-01.a/b",
                "iqn.2003-01.org.example:a\nb"):
        with pytest.raises(ConfigError):
            db.add(bad, P1)
    assert not (db.config_dir / "nodes").exists() or \
        list((db.config_dir / "nodes").iterdir()) == []
    with pytest.raises(ConfigError):
        db.add(T1, ("10.0.0.5/../../x", 3260, 1))


def test_discovery_records_and_rediscovery_keeps_overrides(db):
    disc = ("10.0.0.5", 3260)
    result = db.record_discovery(disc, [(T1, [P1]), (T2, [P1, Portal("10.0.0.6", 3260, 2)])])
    assert len(result.added) == 3 and result.rejected == []
    st = db.config_dir / "send_targets" / "10.0.0.5,3260" / "st_config"
    assert st.is_file() and mode(st) == 0o600
    conf = parse_conf(st.read_text(), str(st))
    assert conf["discovery.sendtargets.address"] == "10.0.0.5"
    assert conf["discovery.sendtargets.iscsi.MaxRecvDataSegmentLength"] == "32768"
    record = db.get(T1, P1)
    assert record.discovery_type == "send_targets"
    assert (record.discovery_address, record.discovery_port) == ("10.0.0.5", 3260)

    db.update(T1, P1, "node.startup", "automatic")
    db.update(T1, P1, "node.session.auth.username", "u")
    db.update(T1, P1, "node.session.auth.password", SECRET)
    again = db.record_discovery(disc, [(T1, [P1]), (T2, [P1])])
    assert again.added == []
    kept = db.get(T1, P1)
    assert kept.settings.startup == "automatic" and kept.settings.auth.username == "u"
    # T2 at 10.0.0.6 is no longer reported, but record_discovery alone doesn't drop it
    assert len(db.list_nodes()) == 3


def test_record_discovery_accepts_discovered_target_objects(db):
    DiscoveredTarget = namedtuple("DiscoveredTarget", "name portals")
    result = db.record_discovery(OtherPortal("10.0.0.5", 3260, 1),
                                 [DiscoveredTarget(T1, (OtherPortal("10.0.0.5", 3260, 1),))])
    assert [r.target for r in result.added] == [T1]


def test_record_discovery_refuses_hostile_names(db):
    result = db.record_discovery(("10.0.0.5", 3260), [
        ("iqn.2003-01.org.example:../../../../tmp/pwn", [P1]),
        ("iqn.2003-01.org.example:x/y", [P1]),
        ("iqn.2003-01.org.example:a\x00b", [P1]),
        (T1, [("evil/../host", 3260, 1), P1]),
    ])
    assert [r.target for r in result.records] == [T1]
    assert len(result.rejected) == 4
    assert all("\x00" not in msg for msg in result.rejected)
    dirs = sorted(p.name for p in (db.config_dir / "nodes").iterdir())
    assert dirs == [T1]


def test_delete(db):
    db.add(T1, P1)
    db.add(T1, Portal("10.0.0.6", 3260, 1))
    db.add(T2, P1)
    assert db.delete(T1, P1) == 1
    assert db.delete(T1, P1) == 0
    assert [r.target for r in db.list_nodes()] == [T1, T2]
    assert db.delete(T1) == 1
    assert not (db.config_dir / "nodes" / T1).exists()
    assert [r.target for r in db.list_nodes()] == [T2]


def test_delete_discovery(db):
    db.record_discovery(("10.0.0.5", 3260), [(T1, [P1])])
    db.record_discovery(("10.0.0.9", 3260), [(T2, [Portal("10.0.0.9", 3260, 1)])])
    db.add(T2, P1)                                            # hand-added: stays
    assert db.list_discovery() == [("10.0.0.5", 3260), ("10.0.0.9", 3260)]
    assert db.delete_discovery(("10.0.0.5", 3260)) == 1
    assert not (db.config_dir / "send_targets" / "10.0.0.5,3260").exists()
    assert db.list_discovery() == [("10.0.0.9", 3260)]
    assert sorted((r.target, str(r.portal)) for r in db.list_nodes()) == [
        (T2, "10.0.0.5:3260,1"), (T2, "10.0.0.9:3260,1")]


def test_discovery_settings_and_update(db):
    assert db.discovery_settings(("10.0.0.5", 3260)) == DiscoverySettings()
    db.update_discovery(("10.0.0.5", 3260), "discovery.sendtargets.auth.username", "d")
    s = db.update_discovery(("10.0.0.5", 3260), "discovery.sendtargets.auth.password", SECRET)
    assert s.auth.username == "d"
    assert db.discovery_chap(("10.0.0.5", 3260)).username == "d"
    assert db.discovery_chap(("10.0.0.6", 3260)) is None
    assert NodeDB(db.config_dir).discovery_settings(("10.0.0.5", 3260)).auth.username == "d"
    st = db.config_dir / "send_targets" / "10.0.0.5,3260" / "st_config"
    assert mode(st) == 0o600
    with pytest.raises(ConfigError):
        db.update_discovery(("10.0.0.5", 3260), "node.startup", "manual")
    with pytest.raises(ConfigError):
        db.update_discovery(("10.0.0.5", 3260), "discovery.sendtargets.address", "1.2.3.4")


def test_iscsid_conf_defaults(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "iscsid.conf").write_text(
        "node.startup = automatic\nnode.session.auth.username = global\n"
        f"node.session.auth.password = {SECRET}\nnode.frob = 1\n"
        "discovery.sendtargets.iscsi.MaxRecvDataSegmentLength = 65536\n")
    db = NodeDB(cfg)
    assert any("node.frob" in w for w in db.warnings)
    record = db.add(T1, P1)
    assert record.settings.startup == "automatic"
    assert record.settings.auth.username == "global"
    assert db.discovery_settings(("1.2.3.4", 3260)).max_recv_data_segment_length == 65536


def test_open_iscsi_defaults_only_when_asked(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "iscsid.conf").write_text("node.session.cmds_max = 256\n")
    assert NodeDB(tmp_path / "a").add(T1, P1).settings.cmds_max == 128
    db = NodeDB(tmp_path / "b", use_open_iscsi=True, open_iscsi_dir=etc)
    assert db.add(T1, P1).settings.cmds_max == 256


def test_bad_iscsid_conf_names_file_and_line(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "iscsid.conf").write_text("# x\n\nnode.session.queue_depth = deep\n")
    with pytest.raises(ConfigError, match=re.escape(f"{cfg / 'iscsid.conf'}:3:")):
        NodeDB(cfg)


def test_inconsistent_iscsid_conf_refused(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "iscsid.conf").write_text("node.session.auth.authmethod = CHAP\n")
    with pytest.raises(ConfigError, match="authmethod is CHAP"):
        NodeDB(cfg)


def test_broken_record_skipped_in_listing(db):
    db.add(T1, P1)
    db.add(T2, P1)
    path = db.config_dir / "nodes" / T2 / "10.0.0.5,3260,1" / "default"
    path.write_text("# BEGIN RECORD 2.1.11\nnode.startup = whenever\n# END RECORD\n")
    assert [r.target for r in db.list_nodes()] == [T1]
    assert any(str(path) in w for w in db.warnings)
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2")):
        db.get(T2, P1)


def test_reads_open_iscsi_written_record(db):
    """A record as open-iscsi writes it (with iface keys and <empty>) is read as is."""
    path = db.config_dir / "nodes" / T1 / "192.168.1.10,3260,1" / "default"
    path.parent.mkdir(parents=True)
    path.write_text(f"""# BEGIN RECORD 2.1.11
node.name = {T1}
node.tpgt = 1
node.startup = automatic
node.leading_login = No
iface.iscsi_ifacename = default
iface.net_ifacename = <empty>
iface.transport_name = tcp
node.discovery_address = 192.168.1.10
node.discovery_port = 3260
node.discovery_type = send_targets
node.session.initial_cmdsn = 0
node.session.auth.authmethod = None
node.session.auth.username = <empty>
node.session.auth.password = <empty>
node.session.timeo.replacement_timeout = 120
node.session.err_timeo.host_reset_timeout = 60
node.session.iscsi.FastAbort = Yes
node.conn[0].address = 192.168.1.10
node.conn[0].port = 3260
node.conn[0].tcp.window_size = 524288
node.conn[0].iscsi.HeaderDigest = None
# END RECORD
""")
    [record] = db.list_nodes()
    assert db.warnings == []
    assert record.settings.startup == "automatic" and record.settings.auth is None
    assert record.discovery_type == "send_targets"
    # an update keeps the keys we do not model
    db.update(T1, record.portal, "node.startup", "manual")
    text = path.read_text()
    assert "iface.transport_name = tcp" in text and "node.startup = manual" in text


# --- properties ------------------------------------------------------------------------------


@given(st.text(max_size=200))
def test_parse_conf_only_raises_config_error(text):
    try:
        parse_conf(text, "fuzz")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz")


@given(st.text(max_size=60))
def test_accepted_names_are_safe_path_components(suffix):
    name = "iqn.2003-01.org.example:" + suffix
    if valid_iscsi_name(name):
        assert "/" not in name and ".." not in name and "\x00" not in name
        assert all(ord(c) >= 0x20 for c in name)
        assert len(name.encode()) <= 223


def test_atomic_write_leaves_no_temp_files(db):
    db.add(T1, P1)
    for i in range(3):
        db.update(T1, P1, "node.session.queue_depth", str(10 + i))
    pdir = db.config_dir / "nodes" / T1 / "10.0.0.5,3260,1"
    assert [p.name for p in pdir.iterdir()] == ["default"]
    assert db.get(T1, P1).settings.queue_depth == 12
