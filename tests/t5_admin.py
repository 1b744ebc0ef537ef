"""An admin's day against real mounts: ``iscsifs session`` across mounts, a hung mount that is
skipped, logins at mount time (``login=automatic|all|lazy``) and the default log file.

With ``ISCSIFS_DOCS_CAPTURE=DIR`` set, the outputs shown in docs/admin.md are written there
(the docs' examples come from these runs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ok, run_iscsifs, wait_for
from mounting import Mount, mount

from iscsifs.config.locations import default_log_file
from iscsifs_testbed.tgtd import IQN1, IQN2

pytestmark = pytest.mark.integration


def capture(name: str, text: str) -> None:
    where = os.environ.get("ISCSIFS_DOCS_CAPTURE")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / name).write_text(text)


def admin_mount(tmp_path: Path, portal: str, name: str, *options: str,
                config_dir: Path | None = None, initiator: str | None = None) -> Mount:
    """A mount on ``tmp_path/name`` with a config dir of its own (``tmp_path/name-config``
    unless given)."""
    config_dir = config_dir or tmp_path / f"{name}-config"
    config_dir.mkdir(exist_ok=True)
    opts = [f"config_dir={config_dir}"] + ([f"initiator_name={initiator}"] if initiator else [])
    return mount(tmp_path / name, portal, *opts, *options)


def session_cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``iscsifs session ARGS`` as its own process (a hung read must not hang the tests).
    ARGS name the test's mount points: others may run on this machine."""
    return subprocess.run([sys.executable, "-m", "iscsifs.cli", "session", *args],
                          capture_output=True, text=True, timeout=timeout)


def by_path(mnt: Mount) -> list[str]:
    return sorted(os.listdir(mnt.path / "by-path"))


def test_session_command_across_mounts(tgt_target, fuse_available, tmp_path):
    portal = tgt_target.portal
    with admin_mount(tmp_path, portal, "a", initiator=tgt_target.initiator_name) as a, \
            admin_mount(tmp_path, portal, "b", initiator=tgt_target.initiator_name) as b:
        mps = (str(a.path), str(b.path))
        r = session_cmd(*mps)
        assert (r.returncode, r.stdout) == (21, ""), r
        assert r.stderr == "iscsifs: No active sessions.\n"
        os.listdir(a.target(IQN1) / "luns")
        os.listdir(a.target(IQN2) / "luns")
        os.listdir(b.target(IQN1) / "luns")

        r = ok(session_cmd(*mps))
        capture("session-P0.txt", r.stdout)
        lines = r.stdout.splitlines()
        assert len(lines) == 3, r.stdout
        sids = []
        for line in lines:
            m = re.fullmatch(rf"tcp: \[(\d+)\] {re.escape(portal)},1 (\S+) \(non-flash\)", line)
            assert m, line
            sids.append(int(m[1]))
        assert len(set(sids)) == 3 and sids == sorted(sids)       # unique across the mounts
        assert sorted(m.split()[3] for m in lines) == sorted([IQN1, IQN1, IQN2])
        # each mount's own files say the same, SIDs included
        for mnt in (a, b):
            for line in (mnt.path / "sessions").read_text().splitlines():
                assert line in lines
                sid, target = line.split()[1].strip("[]"), line.split()[3]
                assert f"\t\tSID: {sid}\n" in (mnt.target(target) / "session").read_text()

        p1 = ok(session_cmd(*mps, "-P", "1")).stdout
        assert p1.count(f"Target: {IQN1} (non-flash)\n") == 1        # grouped by target
        assert p1.count("\tPersistent Portal: ") == 2                 # same portal: once
        assert "\t\tSID: " in p1 and "Timeouts:" not in p1 and "Attached" not in p1
        p2 = ok(session_cmd(*mps, "-P", "2")).stdout
        assert "\t\tNegotiated iSCSI params:\n" in p2 and "\t\tCHAP:\n" in p2
        assert "Attached SCSI devices" not in p2 and "version" not in p2.split("\n")[0]
        p3 = ok(session_cmd(*mps, "-P", "3")).stdout
        capture("session-P3.txt", p3)
        assert p3.startswith("iSCSI Transport Class version ")
        raw = a.target(IQN1) / "luns" / "1" / "raw"
        assert f"\t\t\tAttached scsi disk {raw}\t\tState: running\n" in p3
        assert p3.count("Attached SCSI devices:") == 3

        capture("session-P1.txt", p1)
        one = ok(session_cmd(*mps, "-r", str(sids[0]), "-P", "1")).stdout
        assert one.count("\t\tSID: ") == 1 and f"\t\tSID: {sids[0]}\n" in one
        r = session_cmd(*mps, "-r", "999999")
        assert r.returncode == 21 and "no session with SID 999999" in r.stderr

        stats = ok(session_cmd(*mps, "-s")).stdout
        capture("session-s.txt", stats)
        assert stats.count("Stats for session [sid: ") == 3
        assert re.search(r"\n\tscsicmd_pdus: [1-9]\d*\n", stats)

        data = json.loads(ok(session_cmd(*mps, "--json")).stdout)
        capture("session-json.txt", json.dumps(data[0], indent=2) + "\n")
        assert [d["sid"] for d in data] == sids
        first = next(d for d in data if d["mount"] == str(a.path) and d["target"] == IQN1)
        assert first["schema"] == "iscsifs.session/1"
        assert first["persistent_portal"]["address"] == portal
        assert first["session_state"] == "LOGGED_IN"
        assert first["negotiated"]["max_burst_length"] > 0
        assert {d["lun"] for d in first["luns"]} == {0, 1, 2, 3}
        assert next(d for d in first["luns"] if d["lun"] == 1) == {
            "lun": 1, "device_type": 0, "type": "disk", "raw": "luns/1/raw",
            "state": "running"}
        assert next(d for d in first["luns"] if d["lun"] == 0)["device_type"] == 12
        assert Path(first["session_file"]).parent / "luns/1/raw" == raw
        assert "password" not in json.dumps(data)
        assert first["stats"]["scsicmd_pdus"] > 0

        # a hung daemon: that mount is skipped with a warning, within the bound
        pid = b.daemon_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            r = session_cmd(*mps, "--timeout", "1")
            took = time.monotonic() - start
        finally:
            os.kill(pid, signal.SIGCONT)
        assert r.returncode == 0, r
        assert r.stderr == f"iscsifs: {b.path}: no answer within 1 s; skipped\n"
        assert len(r.stdout.splitlines()) == 2 and str(took) and took < 15
        assert ok(session_cmd(*mps)).stdout == "\n".join(lines) + "\n"     # and it is back


def test_login_at_mount(tgt_target, fresh_target, fuse_available, tmp_path):
    portal = tgt_target.portal
    name = tgt_target.initiator_name
    conf = tmp_path / "conf"
    conf.mkdir()
    ok(run_iscsifs(conf, "discover", portal))
    ok(run_iscsifs(conf, "node", "-T", IQN2, "-p", portal, "-o", "update",
                   "-n", "node.startup", "-v", "automatic"))
    # login=automatic (the default): only the record marked automatic, LUNs listed at once
    with admin_mount(tmp_path, portal, "auto", config_dir=conf, initiator=name) as m:
        links = by_path(m)
        capture("by-path-automatic.txt", "\n".join(links) + "\n")
        assert links == [f"ip-{portal}-iscsi-{IQN2}-lun-1"]
        assert os.readlink(m.path / "by-path" / links[0]) == \
            f"../portals/{portal}/targets/{IQN2}/luns/1/raw"
        sessions = (m.path / "sessions").read_text()
        capture("sessions-automatic.txt", sessions)
        assert [line.split()[3] for line in sessions.splitlines()] == [IQN2]
    with admin_mount(tmp_path, portal, "all", "login=all", config_dir=conf,
                     initiator=name) as m:
        assert by_path(m) == sorted([f"ip-{portal}-iscsi-{IQN1}-lun-{n}" for n in (1, 2, 3)]
                                    + [f"ip-{portal}-iscsi-{IQN2}-lun-1"])
    with admin_mount(tmp_path, portal, "lazy", "login=lazy", config_dir=conf,
                     initiator=name) as m:
        assert by_path(m) == []
        assert (m.path / "sessions").read_text() == ""


def test_failed_automatic_login_is_a_warning(tgt_target, fresh_target, fuse_available,
                                             tmp_path):
    """A target that refuses us (no ACL for our address) does not fail the mount."""
    refusing = fresh_target(bind=None)
    conf = tmp_path / "conf"
    conf.mkdir()
    ok(run_iscsifs(conf, "discover", tgt_target.portal))
    ok(run_iscsifs(conf, "node", "-T", refusing.iqn, "-p", tgt_target.portal, "-o", "new"))
    for iqn in (refusing.iqn, IQN2):
        ok(run_iscsifs(conf, "node", "-T", iqn, "-p", tgt_target.portal, "-o", "update",
                       "-n", "node.startup", "-v", "automatic"))
    log = tmp_path / "mount.log"
    with admin_mount(tmp_path, tgt_target.portal, "m", f"logfile={log}", config_dir=conf,
                     initiator=tgt_target.initiator_name) as m:
        # on the terminal too, as what mounted but not as asked
        assert m.result.stderr == (
            f"mount.iscsifs: warning: login=automatic: login to {refusing.iqn} at "
            f"{tgt_target.portal} failed: target not found (status 0x0203); it is tried "
            "again on first use\n")
        assert by_path(m) == [f"ip-{tgt_target.portal}-iscsi-{IQN2}-lun-1"]
        text = log.read_text()
        capture("mount-log-failed-login.txt", text)
        warnings = [line for line in text.splitlines() if " WARNING: " in line]
        assert len(warnings) == 1, text
        assert f"login to {refusing.iqn} at {tgt_target.portal} failed" in warnings[0]
        assert "login=automatic: 1 of 2 target(s) logged in" in text


def test_default_log_file(tgt_target, fuse_available, tmp_path):
    """Without logfile= the daemon logs to LOG_DIR/<escaped mount point>.log (0600): one
    line per login and logout."""
    with admin_mount(tmp_path, tgt_target.portal, "logged",
                     initiator=tgt_target.initiator_name) as m:
        path = Path(default_log_file(str(m.path)))
        assert path.parent == Path(os.environ["ISCSIFS_LOG_DIR"])
        assert path.name == str(m.path).strip("/").replace("-", "\\x2d").replace("/", "-") \
            + ".log"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        os.listdir(m.target(IQN1) / "luns")
        sid = (m.path / "sessions").read_text().split()[1].strip("[]")
    # umount returns before the daemon has logged out
    assert wait_for(lambda: "logged out of" in path.read_text()), path.read_text()
    text = path.read_text()
    capture("mount-log.txt", text)
    assert f"INFO: mounted {tgt_target.portal} on {m.path}" in text
    assert re.search(rf"INFO: logged in to {IQN1} at {tgt_target.portal} "
                     rf"\(sid {sid}, tsih \d+\)\n", text)
    assert f"INFO: logged out of {IQN1} at {tgt_target.portal} (sid {sid})\n" in text
    assert "logged in to discovery" not in text  # discovery sessions log at DEBUG only
    assert " DEBUG: " not in text
