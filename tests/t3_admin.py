"""The admin's tools without a mount: log file names and handling, session IDs shared by
mounts, the top-level ``sessions`` file, and ``iscsifs session``'s parser and printers over
session files rendered by ``fs/render.py`` (the same code a mount serves them with)."""

from __future__ import annotations

import json
import re
import logging
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import trio

from helpers import run_iscsifs

from iscsifs.cli import session as session_cli
from iscsifs.config import locations
from iscsifs.core.names import Portal
from iscsifs.errors import ConnectionLost, QuietError
from iscsifs.fs import render
from iscsifs.logs import MountLogHandler, setup_logging
from iscsifs.mount import main as mount_main
from iscsifs.mount.options import parse_args
from iscsifs.mount.sids import SidCounter
from iscsifs.mounttable import iscsifs_mounts

from fs_fake import DISK1, FakeInitiator, make_session_info, standard_targets
from t3_fs_ops import PORTAL, list_luns, make_ops, walk

pytestmark = pytest.mark.expect_log("skipping target with unusable name",
                                    logger="iscsifs.fs.tree", optional=True)

DISK2 = "iqn.2026-11.org.example:disk2"


# ------------------------------------------------------------------ log and run locations
@pytest.mark.parametrize("path, escaped", [
    ("/mnt/san", "mnt-san"), ("/", "-"), ("/mnt/my-san/", "mnt-my\\x2dsan"),
    ("/srv/.hidden/a.b", "srv-.hidden-a.b"), ("/.x", "\\x2ex"), ("/mnt/a b", "mnt-a\\x20b"),
    ("/mnt/ü", "mnt-\\xc3\\xbc"), ("/mnt//x/../y", "mnt-y"),
])
def test_escape_path_is_systemd_escape(path, escaped):
    assert locations.escape_path(path) == escaped
    if shutil.which("systemd-escape") and ".." not in path:   # it refuses unnormalized paths
        out = subprocess.run(["systemd-escape", "--path", path], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == escaped


def test_default_log_and_run_dirs(monkeypatch):
    for var in ("ISCSIFS_LOG_DIR", "ISCSIFS_RUN_DIR", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert locations.default_log_file("/mnt/san") == "/var/log/iscsifs/mnt-san.log"
    assert locations.default_run_dir() == "/run/iscsifs"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/u")
    assert locations.default_log_file("/home/u/san") == \
        "/home/u/.local/state/iscsifs/home-u-san.log"
    monkeypatch.setenv("XDG_STATE_HOME", "/s")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert locations.default_log_dir() == "/s/iscsifs"
    assert locations.default_run_dir() == "/run/user/1000/iscsifs"
    monkeypatch.setenv("ISCSIFS_LOG_DIR", "/l")
    monkeypatch.setenv("ISCSIFS_RUN_DIR", "/r")
    assert locations.default_log_file("/m") == "/l/m.log"
    assert locations.default_run_dir() == "/r"


# ------------------------------------------------------------------ session IDs
def test_sid_counter_is_shared_by_every_user_of_the_file(tmp_path):
    a, b = SidCounter(str(tmp_path / "run")), SidCounter(str(tmp_path / "run"))
    assert [a.next(), b.next(), a.next(), b.next()] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "sid").read_text() == "4\n"
    (tmp_path / "run" / "sid").write_text("garbage\n")
    assert a.next() == 1                            # a damaged file starts again


def test_sid_counter_without_a_usable_dir_numbers_per_process(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    counter = SidCounter(str(tmp_path / "file"))    # a file where the dir should be
    with caplog.at_level(logging.DEBUG, logger="iscsifs.mount.sids"):
        first, second = counter.next(), counter.next()
    assert second == first + 1 and first > 1
    assert sum("numbering per process" in r.message for r in caplog.records) == 1


# ------------------------------------------------------------------ the log file
def test_mount_log_handler_mode_rotation_and_logrotate(tmp_path):
    path = tmp_path / "m.log"
    handler = MountLogHandler(str(path), max_bytes=200)
    log = logging.getLogger("iscsifs.test.admin")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("first line")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for n in range(10):
            log.warning("line %d %s", n, "x" * 30)
        assert path.with_name("m.log.1").exists()          # size bound: one old file kept
        assert path.stat().st_size < 200
        assert "line 9" in path.read_text()
        os.rename(path, tmp_path / "rotated")               # logrotate, no copytruncate
        log.warning("after rotation")
        assert path.read_text() == "after rotation\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        log.removeHandler(handler)
        handler.close()
        log.propagate = True


def test_setup_logging_to_a_file_keeps_info_and_drops_debug(tmp_path):
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    path = tmp_path / "d.log"
    try:
        setup_logging(logfile=str(path), syslog=False)
        logging.getLogger("iscsifs.net.session").info("logged in to X")
        logging.getLogger("iscsifs.net.session").debug("a PDU")
        assert root.level == logging.INFO
    finally:
        for h in [h for h in root.handlers if h not in saved[0]]:
            root.removeHandler(h)
            h.close()
        root.setLevel(saved[1])
    text = path.read_text()
    assert "iscsifs.net.session INFO: logged in to X\n" in text and "a PDU" not in text


def test_mount_log_file_is_resolved_before_the_daemon_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ISCSIFS_LOG_DIR", str(tmp_path / "logs"))
    opts = parse_args(["127.0.0.1", str(tmp_path / "mnt")])
    mount_main.resolve_logfile(opts)
    expected = tmp_path / "logs" / (locations.escape_path(str(tmp_path / "mnt")) + ".log")
    assert opts.logfile == str(expected) and expected.exists()
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    # foreground without logfile=: stderr; logfile=syslog: as it says
    fg = parse_args(["127.0.0.1", str(tmp_path / "mnt"), "-f"])
    mount_main.resolve_logfile(fg)
    assert fg.logfile is None
    sl = parse_args(["127.0.0.1", str(tmp_path / "mnt"), "-o", "logfile=syslog"])
    mount_main.resolve_logfile(sl)
    assert sl.logfile == "syslog"
    # the default dir can't be made: a warning, and syslog
    (tmp_path / "blocker").write_text("")
    monkeypatch.setenv("ISCSIFS_LOG_DIR", str(tmp_path / "blocker" / "logs"))
    opts = parse_args(["127.0.0.1", str(tmp_path / "mnt")])
    mount_main.resolve_logfile(opts)
    assert opts.logfile == "syslog"
    assert capsys.readouterr().err.startswith("mount.iscsifs: warning: cannot log to ")
    # a given file that can't be made: exit 7
    opts = parse_args(["127.0.0.1", str(tmp_path / "mnt"), "-o",
                       f"logfile={tmp_path}/blocker/x.log"])
    with pytest.raises(QuietError) as info:
        mount_main.resolve_logfile(opts)
    assert info.value.exit_code == 7 and "cannot open log file" in str(info.value)


def test_login_option():
    assert parse_args(["h", "/m"]).login == "automatic"
    for mode in ("automatic", "all", "lazy"):
        assert parse_args(["h", "/m", "-o", f"login={mode}"]).login == mode
    with pytest.raises(QuietError) as info:
        parse_args(["h", "/m", "-o", "login=boot"])
    assert info.value.exit_code == 7
    assert str(info.value) == "bad value for login: 'boot' (expected automatic, all, lazy)"


# ------------------------------------------------------------------ mountinfo
def test_iscsifs_mounts_reads_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "90 22 0:50 / /mnt/san rw,nosuid,nodev - fuse.iscsifs iscsifs rw,user_id=0\n"
        "91 22 0:51 / /mnt/with\\040space rw - fuse.iscsifs iscsifs rw\n"
        "92 22 0:52 / /mnt/other rw - fuse.sshfs host: rw\n"
        "garbage line\n")
    assert iscsifs_mounts(str(info)) == ["/mnt/san", "/mnt/with space"]
    assert iscsifs_mounts(str(tmp_path / "missing")) == []


# ------------------------------------------------------------------ the sessions file
async def test_sessions_file_lists_live_sessions_without_logging_in():
    ops, fake = make_ops()
    attr = await walk(ops, "sessions")
    assert stat.S_IMODE(attr.st_mode) == 0o444
    assert ops.render_text(ops.tree.node(attr.st_ino)) == b""
    assert fake.logged_in == set()                     # reading it logged nothing in
    await list_luns(ops)
    text = ops.render_text(ops.tree.node(attr.st_ino)).decode()
    assert text == f"tcp: [3] 127.0.0.1:3260,1 {DISK1} (non-flash)\n"
    assert session_cli.parse_session_list(text + "junk\ntcp: [x] a b\n") == \
        [(3, "127.0.0.1:3260,1", DISK1)]


# ------------------------------------------------------------------ iscsifs session
def fake_mount(root: Path, sessions: list[tuple[int, str]]) -> Path:
    """A directory laid out like a mount: sessions + each session's files (text and JSON),
    rendered by the mount's own code."""
    luns = tuple(standard_targets()[DISK1])
    lines = []
    for sid, target in sessions:
        info = make_session_info(target, PORTAL, luns, sid=sid)
        d = root / "portals" / PORTAL.address / "targets" / target
        d.mkdir(parents=True, exist_ok=True)
        (d / "session").write_text(render.render_session(info, target, PORTAL))
        (d / "session.json").write_text(render.render_session_json(info, target, PORTAL))
        lines.append((sid, PORTAL, target))
    (root / "sessions").write_text(render.render_session_list(lines))
    return root


def records(*mounts: Path) -> list[session_cli.SessionRecord]:
    return [r for m in mounts for r in session_cli.read_mount(str(m))]


def test_print_levels_show_iscsiadms_sections(tmp_path):
    a = fake_mount(tmp_path / "a", [(4, DISK1), (7, DISK2)])
    b = fake_mount(tmp_path / "b", [(5, DISK1)])
    recs = records(a, b)
    assert session_cli.render_flat(recs) == (
        f"tcp: [4] 127.0.0.1:3260,1 {DISK1} (non-flash)\n"
        f"tcp: [5] 127.0.0.1:3260,1 {DISK1} (non-flash)\n"
        f"tcp: [7] 127.0.0.1:3260,1 {DISK2} (non-flash)\n")
    p1 = session_cli.render_tree(recs, 1)
    assert p1.startswith(f"Target: {DISK1} (non-flash)\n\tCurrent Portal: 127.0.0.1:3260,1\n"
                         "\tPersistent Portal: 127.0.0.1:3260,1\n\t\t**********\n"
                         "\t\tInterface:\n\t\t**********\n\t\tIface Name: default\n")
    assert p1.count("Target: ") == 2 and p1.count("Persistent Portal") == 2
    # the second session to the same target and portal: a blank line instead, as iscsiadm
    assert "\t\tiSCSI Session State: LOGGED_IN\n\n\t\t**********\n" in p1
    assert "Timeouts" not in p1 and "Negotiated" not in p1 and "version" not in p1
    p2 = session_cli.render_tree(recs, 2)
    for heading in ("Timeouts:", "CHAP:", "Negotiated iSCSI params:"):
        assert p2.count(f"\t\t{heading}\n") == 3
    assert "Attached" not in p2 and "********\n" in p2          # passwords stay hidden
    p3 = session_cli.render_tree(recs, 3)
    assert p3.startswith("iSCSI Transport Class version userspace (iscsifs)\nversion iscsifs ")
    raw = a / "portals" / PORTAL.address / "targets" / DISK1 / "luns" / "1" / "raw"
    assert f"\t\t\tAttached scsi disk {raw}\t\tState: running\n" in p3
    # one session's -P 3 (from its session.json) is its session file, less the counters, with
    # absolute paths: one layout for both
    single = session_cli.render_tree([recs[0]], 3)
    original = (a / "portals" / PORTAL.address / "targets" / DISK1 / "session").read_text()
    expected = original.split("\n\nStats for session")[0].replace(
        "Attached scsi disk luns/", f"Attached scsi disk {raw.parent.parent}/") + "\n"
    assert single == expected
    stats = session_cli.render_stats(recs)
    assert [line for line in stats.splitlines() if line.startswith("Stats")] == [
        f"Stats for session [sid: {sid}, target: {t}, portal: 127.0.0.1,3260]"
        for sid, t in ((4, DISK1), (5, DISK1), (7, DISK2))]
    text4 = (a / "portals" / PORTAL.address / "targets" / DISK1 / "session").read_text()
    assert session_cli.render_stats([recs[0]]) == "Stats for session" + \
        text4.split("\n\nStats for session")[1]


def test_json_is_session_json_schema(tmp_path):
    """--json: each session is its mount's session.json (schema iscsifs.session/1), the only
    file of a session the command reads."""
    m = fake_mount(tmp_path / "a", [(4, DISK1)])
    rec = records(m)[0]
    data = rec.as_json()
    assert list(data)[:3] == ["schema", "target", "logged_in"]
    assert data["schema"] == "iscsifs.session/1" and data["sid"] == 4
    assert data["mount"] == str(m) and data["session_file"] == rec.path
    assert rec.path.endswith(f"/targets/{DISK1}/session.json")
    assert {k: v for k, v in data.items() if k not in ("mount", "session_file")} == \
        json.loads(Path(rec.path).read_text())
    portal = {"address": "127.0.0.1:3260", "host": "127.0.0.1", "port": 3260, "tpgt": 1}
    assert data["current_portal"] == data["persistent_portal"] == portal
    assert data["iface"] == {"name": "default", "transport": "tcp",
                             "initiator_name": "iqn.2016-04.com.open-iscsi:0123456789ab",
                             "ip_address": "127.0.0.1"}
    assert data["chap"] == {"username": "alice", "username_in": None}
    assert "password" not in json.dumps(data)
    assert data["timeouts"]["recovery_timeout"] == 120
    assert data["timeouts"]["noop_out_interval"] == 5
    assert data["negotiated"]["max_burst_length"] == 262144
    assert data["negotiated"]["initial_r2t"] in (True, False)
    assert set(data["negotiated"]) == {
        "header_digest", "data_digest", "max_recv_data_segment_length",
        "max_xmit_data_segment_length", "first_burst_length", "max_burst_length",
        "immediate_data", "initial_r2t", "max_outstanding_r2t"}
    assert data["luns"][0] == {"lun": 0, "device_type": 12,
                               "type": "storage array controller", "raw": None,
                               "state": "running"}
    assert data["luns"][1] == {"lun": 1, "device_type": 0, "type": "disk",
                               "raw": "luns/1/raw", "state": "running"}
    assert data["stats"]["txdata_octets"] >= 0 and "reconnects" not in data["stats"]
    # the text file is never read: without session.json there is no session to show
    (Path(rec.path).parent / "session").write_text("garbage\n")
    assert records(m)[0].facts == rec.facts
    Path(rec.path).unlink()
    assert records(m) == []


@pytest.mark.parametrize("change", [
    {"sid": 5}, {"schema": "iscsifs.session/2"}, {"logged_in": False}, {"iface": None},
    {"luns": [{"lun": 1}]}, "drop:timeouts", "not-json", "list",
])
def test_a_session_json_that_is_not_this_sessions_whole_snapshot_is_skipped(tmp_path, change):
    m = fake_mount(tmp_path / "a", [(4, DISK1), (7, DISK2)])
    path = m / "portals" / PORTAL.address / "targets" / DISK2 / "session.json"
    data = json.loads(path.read_text())
    if change == "not-json":
        path.write_text("{not json")
    elif change == "list":
        path.write_text("[]")
    else:
        if isinstance(change, str):
            del data[change.removeprefix("drop:")]
        else:
            data.update(change)
        path.write_text(json.dumps(data))
    assert [r.sid for r in records(m)] == [4]


def test_a_file_that_no_longer_matches_is_skipped(tmp_path):
    """Logged out (or another session) between reading ``sessions`` and the session file."""
    m = fake_mount(tmp_path / "a", [(4, DISK1), (7, DISK2)])
    path = m / "portals" / PORTAL.address / "targets" / DISK2 / "session.json"
    path.write_text(render.render_session_json(None, DISK2, PORTAL))
    assert [r.sid for r in records(m)] == [4]
    (m / "sessions").write_text("tcp: [9] 127.0.0.1:3260,1 ../../etc (non-flash)\n")
    assert records(m) == []


def test_a_hung_mount_is_skipped_within_the_bound(tmp_path):
    good = fake_mount(tmp_path / "good", [(4, DISK1)])
    hung = tmp_path / "hung"
    hung.mkdir()
    os.mkfifo(hung / "sessions")           # open() blocks: no writer, as a stopped daemon
    start = time.monotonic()
    results = session_cli.collect([str(good), str(hung), str(tmp_path / "gone")], 0.5)
    assert time.monotonic() - start < 5
    assert [r.done.is_set() for r in results] == [True, False, True]
    assert [rec.sid for rec in results[0].records] == [4]
    assert results[2].error == "No such file or directory"
    with open(hung / "sessions", "w"):     # let the abandoned thread finish
        pass


def test_session_command(tmp_path, monkeypatch):
    a = fake_mount(tmp_path / "a", [(4, DISK1)])
    b = fake_mount(tmp_path / "b", [(5, DISK1)])
    mounts = [str(a), str(b)]
    monkeypatch.setattr(session_cli, "iscsifs_mounts", lambda: list(mounts))
    r = run_iscsifs(tmp_path, "session")
    assert (r.returncode, r.stderr) == (0, "")
    assert len(r.stdout.splitlines()) == 2
    r = run_iscsifs(tmp_path, "session", str(b))
    assert r.stdout == f"tcp: [5] 127.0.0.1:3260,1 {DISK1} (non-flash)\n"
    r = run_iscsifs(tmp_path, "session", "-r", "5", "-P", "1")
    assert r.returncode == 0 and r.stdout.count("\t\tSID: 5\n") == 1
    assert json.loads(run_iscsifs(tmp_path, "session", "--json").stdout)[1]["sid"] == 5
    r = run_iscsifs(tmp_path, "session", "-P", "4")
    assert (r.returncode, r.stderr) == (7, "iscsifs: invalid info level 4; try 0 - 3\n")
    # --json holds every detail: -P or -s beside it would be dropped silently, so refused
    for extra, flag in ((("-P", "1"), "-P"), (("-s",), "-s")):
        r = run_iscsifs(tmp_path, "session", "--json", *extra)
        assert (r.returncode, r.stdout, r.stderr) == (
            7, "", f"iscsifs: --json prints every detail of each session: it takes no {flag}\n")
    mounts.clear()
    r = run_iscsifs(tmp_path, "session")
    assert (r.returncode, r.stdout, r.stderr) == (21, "", "iscsifs: No active sessions.\n")
    assert run_iscsifs(tmp_path, "session", "--json").stdout == "[]\n"
    r = run_iscsifs(tmp_path, "session", str(tmp_path))
    assert (r.returncode, r.stderr) == (7, f"iscsifs: {tmp_path} is not an iscsifs mount "
                                           "point\n")
    mounts.append(str(tmp_path / "gone"))
    r = run_iscsifs(tmp_path, "session")
    assert r.returncode == 21
    assert r.stderr == (f"iscsifs: {tmp_path}/gone: No such file or directory; skipped\n"
                        "iscsifs: No active sessions.\n")


# ------------------------------------------------------------------ man pages
ROOT = Path(__file__).resolve().parent.parent
MAN = {name: ROOT / "man" / name for name in ("mount.iscsifs.8", "iscsifs.8")}


def mount_option_names() -> set[str]:
    """Every option mount.iscsifs accepts, read from the parser itself: ``name=`` for the
    options that take a value, ``name`` for the others."""
    import ast
    import inspect

    from iscsifs.mount import options
    tree = ast.parse(inspect.getsource(options.apply_option))
    names = set()
    for cmp in ast.walk(tree):
        if not isinstance(cmp, ast.Compare) or not isinstance(cmp.left, ast.Name):
            continue
        suffix = "=" if cmp.left.id == "key" else ""
        for comparator in cmp.comparators:
            for node in ast.walk(comparator):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and node.value.replace("_", "").isalnum():
                    names.add(node.value + suffix)
    names |= {k + "=" for k in options.TIMEOUT_OPTIONS}
    return names | options.FUSE_PASSTHROUGH | options.IGNORED_OPTIONS


def man_text(path: Path) -> str:
    """The page as a reader sees it (groff's ASCII output, hyphens and all)."""
    out = subprocess.run(["groff", "-man", "-Tascii", "-P", "-cbou", str(path)],
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_man_pages_parse_without_warnings():
    if not shutil.which("groff"):
        pytest.skip("groff is missing (scripts/setup installs groff-base)")
    for path in MAN.values():
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                           capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (0, ""), (path.name, r.stderr)
        text = man_text(path)
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "FILES",
                        "EXAMPLES", "SEE ALSO"):
            assert f"\n{section}\n" in text, (path.name, section)


def test_man_pages_render_with_man():
    if not shutil.which("man"):
        pytest.skip("man is missing (scripts/setup installs man-db)")
    r = subprocess.run(["man", "-l", str(MAN["iscsifs.8"])], capture_output=True, text=True,
                       env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat"}, timeout=60)
    assert r.returncode == 0 and "iscsifs - iSCSI discovery" in r.stdout, r.stderr


def test_mount_man_page_and_docs_name_every_option():
    names = mount_option_names()
    assert {"login=", "logfile=", "ro", "cache=", "login_timeout=", "nofail"} <= names
    docs = (ROOT / "docs" / "mount-options.md").read_text()
    man = (man_text(MAN["mount.iscsifs.8"]) if shutil.which("groff")
           else MAN["mount.iscsifs.8"].read_text().replace("\\-", "-"))
    for name in sorted(names):
        pattern = rf"(?<![\w-]){re.escape(name)}" + ("" if name.endswith("=") else r"(?![\w])")
        assert re.search(pattern, man), f"mount.iscsifs.8 does not mention {name}"
        assert re.search(pattern, docs), f"docs/mount-options.md does not mention {name}"


def test_iscsifs_man_page_names_every_command_and_option():
    from iscsifs.cli.main import build_parser
    parser = build_parser()
    man = (man_text(MAN["iscsifs.8"]) if shutil.which("groff")
           else MAN["iscsifs.8"].read_text().replace("\\-", "-"))
    subparsers = next(a for a in parser._actions if a.choices and a.dest == "command")
    assert set(subparsers.choices) >= {"discover", "node", "discovery", "login", "iname",
                                       "session"}
    for name, sub in [("", parser), *subparsers.choices.items()]:
        if name:
            assert f"iscsifs {name}" in man, f"iscsifs.8 does not show iscsifs {name}"
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", man), \
                    f"iscsifs.8 does not mention {name} {option}"


def test_man_pages_are_installed_with_the_package():
    cfg = (ROOT / "setup.cfg").read_text()
    section = cfg.split("[options.data_files]")[1].split("\n[")[0]
    assert "share/man/man8 =" in section
    for name in MAN:
        assert f"man/{name}" in section
    assert sorted(p.name for p in (ROOT / "man").iterdir()) == sorted(MAN)


# ------------------------------------------------------------------ login= at mount time
class SlowFake(FakeInitiator):
    """DISK1 answers; "slow" never does; "broken" refuses."""

    async def luns(self, target, portal):
        if target.endswith(":slow"):
            await trio.sleep_forever()
        if target.endswith(":broken"):
            raise ConnectionLost("connection refused")
        return await super().luns(target, portal)


@pytest.mark.parametrize("mode, tried", [("automatic", 2), ("all", 3), ("lazy", 0)])
async def test_login_at_mount(mode, tried, tmp_path, autojump_clock, expect_log):
    from iscsifs.config.nodedb import NodeDB
    from iscsifs.fs.namespace import Namespace
    from iscsifs.fs.records import NodeRecords
    from iscsifs.fs.tree import Tree
    from iscsifs.mount.lifetime import login_at_mount
    slow, broken = "iqn.2026-11.org.example:slow", "iqn.2026-11.org.example:broken"
    targets = {**standard_targets(), slow: [], broken: []}
    db = NodeDB(str(tmp_path))
    for target in targets:
        db.add(target, PORTAL)
    for target in (DISK1, slow):
        db.update(target, PORTAL, "node.startup", "automatic")
    db.add("iqn.2026-11.org.example:gone", Portal("127.0.0.2", 3260))
    fake = SlowFake(targets)
    namespace = Namespace(fake, Tree([PORTAL]), records=NodeRecords(db))
    if mode != "lazy":
        expect_log(rf"login={mode}: login to {slow} at 127.0.0.1:3260 failed: timed out")
    if mode == "all":
        expect_log(rf"login=all: login to {broken} at 127.0.0.1:3260 failed: "
                   "connection refused")
    start = trio.current_time()
    await login_at_mount(namespace, NodeRecords(db), mode, [PORTAL], 30.0)
    assert trio.current_time() - start == pytest.approx(30.0 if tried else 0.0)  # concurrent
    assert fake.logged_in == ({(DISK1, PORTAL)} if tried else set())
    luns = namespace.tree.by_path("portals", PORTAL.address, "targets", DISK1, "luns")
    assert (luns is not None and luns.children is not None) == bool(tried)
