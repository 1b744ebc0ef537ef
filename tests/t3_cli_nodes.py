"""``iscsifs node`` / ``iscsifs discovery`` / ``iscsifs login`` on the record database (temp
config dir, no target), secret references, and the mapping of records to login options
(iscsifs.nodeopts). Against a real tgtd: t4_cli.py."""

from __future__ import annotations

import math

import pytest

from helpers import ok, one_error_line, run_iscsifs, show_node
from iscsifs.config.nodedb import NodeDB
from iscsifs.core.names import Portal
from iscsifs.errors import ConfigError
from iscsifs.net.session import Timeouts
from iscsifs.nodeopts import node_options_from_db

T1 = "iqn.2026-11.org.iscsifs.test:node-a"
T2 = "iqn.2026-11.org.iscsifs.test:node-b"
SECRET = "a-long-enough-secret-1"
SECRET_IN = "another-long-secret-22"


# ------------------------------------------------------------------ node records
def test_node_round_trip(tmp_path):
    d = tmp_path / "cfg"
    one_error_line(run_iscsifs(d, "node"), 21)
    r = ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "new"))
    assert r.stdout == (f"New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] "
                        f"127.0.0.1,3260,1 {T1}] added\n")
    ok(run_iscsifs(d, "node", "-T", T2, "-p", "[::1]:3261", "-o", "new"))
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "10.0.0.5:3262,2", "-o", "new"))
    assert ok(run_iscsifs(d, "node")).stdout.splitlines() == [
        "10.0.0.5:3262,2 " + T1, "127.0.0.1:3260,1 " + T1, "[::1]:3261,1 " + T2]
    # open-iscsi's layout
    assert (d / "nodes" / T1 / "127.0.0.1,3260,1" / "default").is_file()
    assert (d / "nodes" / T2 / "::1,3261,1" / "default").is_file()

    keys = show_node(d, T1)
    assert keys["node.name"] == T1
    assert keys["node.conn[0].address"] == "127.0.0.1"
    assert keys["node.startup"] == "manual"
    assert keys["node.session.auth.password"] == "<empty>"
    # without -o, -T/-p show the record (iscsiadm -m node -T ... -p ...)
    r = ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1"))
    assert "node.name = " + T1 in r.stdout

    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "update",
           "-n", "node.startup", "-v", "automatic"))
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "update",
           "-n", "node.conn[0].iscsi.HeaderDigest", "-v", "crc32c,none"))
    keys = show_node(d, T1)
    assert keys["node.startup"] == "automatic"
    assert keys["node.conn[0].iscsi.HeaderDigest"] == "CRC32C,None"
    assert show_node(d, T1, "10.0.0.5:3262")["node.startup"] == "manual"   # other record untouched

    # -o new on an existing record leaves it alone
    r = ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "new"))
    assert "already exists" in r.stderr
    assert show_node(d, T1)["node.startup"] == "automatic"

    # update without -p: every record of the target
    ok(run_iscsifs(d, "node", "-T", T1, "-o", "update", "-n", "node.session.queue_depth", "-v", "64"))
    assert show_node(d, T1)["node.session.queue_depth"] == "64"
    assert show_node(d, T1, "10.0.0.5:3262,2")["node.session.queue_depth"] == "64"

    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "delete"))
    assert ok(run_iscsifs(d, "node")).stdout.splitlines() == [
        "10.0.0.5:3262,2 " + T1, "[::1]:3261,1 " + T2]
    one_error_line(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "delete"), 21)
    ok(run_iscsifs(d, "node", "-T", T1, "-o", "delete"))
    assert ok(run_iscsifs(d, "node")).stdout.splitlines() == ["[::1]:3261,1 " + T2]
    ok(run_iscsifs(d, "node", "-o", "delete"))          # iscsiadm: no -T/-p deletes every record
    one_error_line(run_iscsifs(d, "node"), 21)
    assert not (d / "nodes" / T1).exists()


def test_portal_filter_and_tpgt(tmp_path):
    d = tmp_path / "cfg"
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1,1", "-o", "new"))
    ok(run_iscsifs(d, "node", "-T", T2, "-p", "127.0.0.1:3260", "-o", "new"))
    assert len(ok(run_iscsifs(d, "node", "-p", "127.0.0.1", "-o", "show")).stdout.split("\n\n")) == 2
    one_error_line(run_iscsifs(d, "node", "-p", "127.0.0.1:3260,7", "-o", "show"), 21)
    one_error_line(run_iscsifs(d, "node", "-p", "127.0.0.2", "-o", "show"), 21)


@pytest.mark.parametrize("args, words", [
    (["-n", "node.no.such.key", "-v", "1"], "unknown node key"),
    (["-n", "node.startup", "-v", "sometimes"], "node.startup"),
    (["-n", "node.session.queue_depth", "-v", "lots"], "integer"),
    (["-n", "node.conn[0].iscsi.HeaderDigest", "-v", "MD5"], "HeaderDigest"),
    (["-n", "node.session.auth.chap_algs", "-v", "SHA512"], "SHA512"),
    (["-n", "node.name", "-v", "iqn.2026-11.org.x:other"], "cannot be changed"),
    (["-n", "node.session.iscsi.FirstBurstLength", "-v", "16777215"], "max_burst"),
    (["-n", "node.session.auth.password", "-v", "@/nonexistent/secret"], "cannot read"),
    (["-n", "node.startup"], "-v"),
])
def test_bad_updates_exit_7_one_line(tmp_path, args, words):
    d = tmp_path / "cfg"
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "new"))
    before = (d / "nodes" / T1 / "127.0.0.1,3260,1" / "default").read_text()
    line = one_error_line(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "update", *args), 7)
    assert words in line
    assert (d / "nodes" / T1 / "127.0.0.1,3260,1" / "default").read_text() == before


@pytest.mark.parametrize("args", [
    ["node", "-T", "not-an-iqn", "-p", "127.0.0.1", "-o", "new"],
    ["node", "-T", "iqn.2026-11.org.x:../../etc", "-p", "127.0.0.1", "-o", "new"],
    ["node", "-T", T1, "-p", "[::1", "-o", "new"],
    ["node", "-T", T1, "-o", "new"],
    ["discovery", "-p", "bad host!", "-o", "show"],
])
def test_bad_arguments_exit_7(tmp_path, args):
    one_error_line(run_iscsifs(tmp_path / "cfg", *args), 7)
    assert not (tmp_path / "cfg" / "nodes").exists() or \
        not any((tmp_path / "cfg" / "nodes").iterdir())


def test_secrets_by_reference_never_shown(tmp_path):
    d = tmp_path / "cfg"
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "new"))
    secret_file = tmp_path / "chap.secret"
    secret_file.write_text(SECRET + "\n")
    outputs = []
    for key, value, env in [
            ("node.session.auth.username", "alice", None),
            ("node.session.auth.password", f"@{secret_file}", None),
            ("node.session.auth.username_in", "target", None),
            ("node.session.auth.password_in", "env:MY_CHAP_IN", {"MY_CHAP_IN": SECRET_IN})]:
        r = ok(run_iscsifs(d, "node", "-T", T1, "-o", "update", "-n", key, "-v", value, env=env))
        outputs.append(r.stdout + r.stderr)
        assert "visible" not in r.stderr           # no ps warning for references
    record = (d / "nodes" / T1 / "127.0.0.1,3260,1" / "default")
    text = record.read_text()
    assert f"node.session.auth.password = {SECRET}\n" in text      # newline dropped
    assert f"node.session.auth.password_in = {SECRET_IN}\n" in text
    assert record.stat().st_mode & 0o777 == 0o600
    for args in (["node"], ["node", "-T", T1], ["node", "-T", T1, "-o", "show"],
                 ["node", "-p", "127.0.0.1", "-o", "show"]):
        r = ok(run_iscsifs(d, *args))
        outputs.append(r.stdout + r.stderr)
    keys = show_node(d, T1)
    assert keys["node.session.auth.password"] == "********"
    assert keys["node.session.auth.password_in"] == "********"
    assert keys["node.session.auth.username"] == "alice"
    for out in outputs:
        assert SECRET not in out and SECRET_IN not in out
    # the database gives the mount the real secrets
    opts = node_options_from_db(NodeDB(d))(T1, Portal("127.0.0.1", 3260))
    assert opts.chap.username == "alice" and opts.chap.secret == SECRET.encode()
    assert opts.chap.username_in == "target" and opts.chap.secret_in == SECRET_IN.encode()


def test_literal_and_weak_secret_warnings(tmp_path):
    d = tmp_path / "cfg"
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "new"))
    ok(run_iscsifs(d, "node", "-T", T1, "-o", "update", "-n", "node.session.auth.username", "-v", "u"))
    r = ok(run_iscsifs(d, "node", "-T", T1, "-o", "update", "-n", "node.session.auth.password",
               "-v", "short"))
    assert "ps" in r.stderr and "@FILE" in r.stderr       # literal secret: visible in ps
    assert "shorter than 12 bytes" in r.stderr            # weak
    assert "short" not in r.stderr.replace("shorter", "")
    # equal secrets refused, without echoing them
    ok(run_iscsifs(d, "node", "-T", T1, "-o", "update", "-n", "node.session.auth.username_in",
           "-v", "t"))
    line = one_error_line(run_iscsifs(d, "node", "-T", T1, "-o", "update", "-n",
                              "node.session.auth.password_in", "-v", "env:S",
                              env={"S": "short"}), 7)
    assert "same" in line and "short" not in line.replace("shorter", "")


def test_discovery_records(tmp_path):
    d = tmp_path / "cfg"
    one_error_line(run_iscsifs(d, "discovery"), 21)
    ok(run_iscsifs(d, "discovery", "-p", "10.0.0.5", "-o", "new"))
    ok(run_iscsifs(d, "discovery", "-p", "[fe80::1]:3261", "-o", "update",
           "-n", "discovery.sendtargets.auth.username", "-v", "disc"))
    assert ok(run_iscsifs(d, "discovery")).stdout.splitlines() == [
        "10.0.0.5:3260 via sendtargets", "[fe80::1]:3261 via sendtargets"]
    assert (d / "send_targets" / "10.0.0.5,3260" / "st_config").is_file()
    secret_file = tmp_path / "s"
    secret_file.write_text(SECRET)
    ok(run_iscsifs(d, "discovery", "-p", "[fe80::1]:3261", "-o", "update",
           "-n", "discovery.sendtargets.auth.password", "-v", f"@{secret_file}"))
    r = ok(run_iscsifs(d, "discovery", "-p", "[fe80::1]:3261", "-o", "show"))
    assert "discovery.sendtargets.auth.username = disc" in r.stdout
    assert "discovery.sendtargets.auth.password = ********" in r.stdout
    assert SECRET not in r.stdout + r.stderr
    assert NodeDB(d).discovery_chap(("fe80::1", 3261)).secret == SECRET.encode()
    one_error_line(run_iscsifs(d, "discovery", "-p", "10.0.0.5", "-o", "update",
                       "-n", "node.startup", "-v", "manual"), 7)
    one_error_line(run_iscsifs(d, "discovery", "-p", "10.0.0.9", "-o", "delete"), 21)
    ok(run_iscsifs(d, "discovery", "-p", "10.0.0.5", "-o", "delete"))
    assert ok(run_iscsifs(d, "discovery")).stdout.splitlines() == ["[fe80::1]:3261 via sendtargets"]


def test_show_says_chap_when_credentials_are_set(tmp_path):
    """The effective method: CHAP is used whenever a username and password are set, so
    ``-o show`` must not say ``authmethod = None`` then (it did, misleading newcomers)."""
    d = tmp_path / "cfg"
    secret_file = tmp_path / "s"
    secret_file.write_text(SECRET)
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "new"))
    assert show_node(d, T1)["node.session.auth.authmethod"] == "None"
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "update",
                   "-n", "node.session.auth.username", "-v", "alice"))
    assert show_node(d, T1)["node.session.auth.authmethod"] == "None"      # half a pair
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1", "-o", "update",
                   "-n", "node.session.auth.password", "-v", f"@{secret_file}"))
    keys = show_node(d, T1)
    assert keys["node.session.auth.authmethod"] == "CHAP"
    assert keys["node.session.auth.password"] == "********"
    # the stored record is not rewritten by showing it
    record = d / "nodes" / T1 / "127.0.0.1,3260,1" / "default"
    assert "node.session.auth.authmethod = CHAP" not in record.read_text()
    # discovery records the same way
    ok(run_iscsifs(d, "discovery", "-p", "10.0.0.5", "-o", "new"))
    for key, value in (("username", "disc"), ("password", f"@{secret_file}")):
        ok(run_iscsifs(d, "discovery", "-p", "10.0.0.5", "-o", "update",
                       "-n", f"discovery.sendtargets.auth.{key}", "-v", value))
    r = ok(run_iscsifs(d, "discovery", "-p", "10.0.0.5", "-o", "show"))
    assert "discovery.sendtargets.auth.authmethod = CHAP" in r.stdout.splitlines()


@pytest.mark.parametrize("text,problem", [
    ("bad!!", "invalid host name 'bad!!'"),
    ("1.2.3.4:99999", "invalid port 99999 (1-65535)"),
])
def test_bad_portal_is_said_once(tmp_path, text, problem):
    # it read "bad portal 'bad!!': invalid portal 'bad!!': invalid host name 'bad!!'"
    line = one_error_line(run_iscsifs(tmp_path / "cfg", "discover", text), 7)
    assert line == f"iscsifs: bad portal '{text}': {problem}"


def test_one_line_names_the_login_once():
    """exits.quiet_error composes the line from the error's fields: the words of the error and the
    name of the login, each once (it read "authentication failed for X at P: authentication
    failed for X at P: login to X failed: ...")."""
    from iscsifs.exits import quiet_error
    from iscsifs.errors import AuthenticationError, LoginError, RemoteProtocolError
    who = f"{T1} at 127.0.0.1:3260"
    words = "authentication failure (status 0x0201); check the CHAP username and password"
    auth = AuthenticationError(words, 2, 1).located(T1).located(who)
    assert str(auth) == f"authentication failed for {who}: {words}"
    line = quiet_error(auth, doing=f"login to {who}", who=who)
    assert (str(line), line.exit_code) == (f"authentication failed for {who}: {words}", 24)
    assert str(quiet_error(auth)) == f"authentication failed for {who}: {words}"
    refused = LoginError("target not found (status 0x0203)", 2, 3).located(who)
    line = quiet_error(refused, doing=f"login to {who}", who=who)
    assert (str(line), line.exit_code) == (
        f"login to {who} failed: target not found (status 0x0203)", 19)
    broken = RemoteProtocolError("final Login Response has TSIH 0").located(who)
    assert str(quiet_error(broken, doing=f"login to {who}")) == \
        f"login to {who} failed: final Login Response has TSIH 0"
    disc = AuthenticationError(words, 2, 1).located("discovery at 127.0.0.1:3260")
    assert str(quiet_error(disc, doing="discovery on portal 127.0.0.1:3260")) == \
        f"discovery on portal 127.0.0.1:3260 failed: {words}"


def test_login_unreachable_portal(tmp_path):
    d = tmp_path / "cfg"
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1:1", "-o", "new"))
    ok(run_iscsifs(d, "node", "-T", T1, "-p", "127.0.0.1:1", "-o", "update",
           "-n", "node.conn[0].timeo.login_timeout", "-v", "3"))
    r = run_iscsifs(d, "login", "-T", T1)
    line = one_error_line(r, 4)
    assert line == (f"iscsifs: login to {T1} at 127.0.0.1:1 failed: cannot connect to "
                    "127.0.0.1:1: Connection refused")


# ------------------------------------------------------------------ nodeopts mapping
def test_node_options_mapping(tmp_path):
    db = NodeDB(tmp_path)
    db.add(T1, ("127.0.0.1", 3260, 1))
    options = node_options_from_db(db)
    assert options(T2, Portal("127.0.0.1")) is None          # no record: defaults apply
    assert options("not a name", Portal("127.0.0.1")) is None
    opts = options(T1, Portal("127.0.0.1"))
    assert opts.chap is None
    assert opts.login_params.header_digest == "None"
    assert opts.login_params.max_recv_data_segment_length == 262144
    assert opts.login_params.immediate_data is True and opts.login_params.initial_r2t is False
    assert opts.timeouts == Timeouts(login=15, logout=15, noop_out_interval=5,
                                     noop_out_timeout=5, replacement_timeout=120, abort=15,
                                     lu_reset=30, tgt_reset=30)
    assert opts.queue_depth == 32
    for key, value in [("node.conn[0].iscsi.HeaderDigest", "CRC32C"),
                       ("node.conn[0].iscsi.DataDigest", "None,CRC32C"),
                       ("node.conn[0].iscsi.MaxRecvDataSegmentLength", "65536"),
                       ("node.session.iscsi.FirstBurstLength", "65536"),
                       ("node.session.iscsi.MaxBurstLength", "131072"),
                       ("node.session.iscsi.ImmediateData", "No"),
                       ("node.session.iscsi.InitialR2T", "Yes"),
                       ("node.session.timeo.replacement_timeout", "-1"),
                       ("node.conn[0].timeo.login_timeout", "7"),
                       ("node.conn[0].timeo.noop_out_interval", "0"),
                       ("node.session.err_timeo.lu_reset_timeout", "11"),
                       ("node.session.queue_depth", "8"),
                       ("node.session.auth.username", "u"),
                       ("node.session.auth.password", SECRET),
                       ("node.session.auth.chap_algs", "SHA256,MD5")]:
        db.update(T1, ("127.0.0.1", 3260, 1), key, value)
    opts = options(T1, Portal("127.0.0.1", 3260, 1))
    p = opts.login_params
    assert (p.header_digest, p.data_digest) == ("CRC32C", "None,CRC32C")
    assert (p.max_recv_data_segment_length, p.first_burst_length, p.max_burst_length) == \
        (65536, 65536, 131072)
    assert (p.immediate_data, p.initial_r2t) == (False, True)
    t = opts.timeouts
    assert math.isinf(t.replacement_timeout) and t.login == 7 and t.noop_out_interval == 0
    assert t.lu_reset == 11 and opts.queue_depth == 8
    assert opts.chap.username == "u" and opts.chap.algorithms == ("SHA256", "MD5")
    # a hand-typed portal (tpgt 1) finds a record stored under another tpgt
    db.add(T2, ("127.0.0.1", 3260, 5))
    assert options(T2, Portal("127.0.0.1")) is not None


def test_node_options_incomplete_chap_is_an_error(tmp_path):
    db = NodeDB(tmp_path)
    db.add(T1, ("127.0.0.1", 3260, 1))
    db.update(T1, ("127.0.0.1", 3260, 1), "node.session.auth.username", "u")
    with pytest.raises(ConfigError) as excinfo:
        node_options_from_db(db)(T1, Portal("127.0.0.1"))
    assert "default" in str(excinfo.value)          # names the record file
