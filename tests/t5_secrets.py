"""Secrets never leak: a full debug-mode mount with mutual CHAP against tgtd (secrets from the
config dir's iscsid.conf, never the command line), I/O, every text file of the tree read, the
daemon's command line and environment - none of it contains either secret."""

from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import wait_for

from iscsifs_testbed.tgtd import MiB

HELPER = Path(__file__).resolve().parent.parent / "mount.iscsifs"
pytestmark = pytest.mark.integration

SECRET_OUT = "Init1ator-Secret-4f9a2c"      # we prove ourselves to the target with this
SECRET_IN = "Targ3t-Secret-81d0e7b5"        # the target proves itself to us with this



def _wait(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    return wait_for(predicate, timeout, interval)


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw)]


def _assert_clean(what: str, data: bytes) -> None:
    for secret in (SECRET_OUT, SECRET_IN):
        for form in _forms(secret):
            assert form not in data, f"a secret ({form[:4]!r}...) leaked into {what}"


def test_no_secret_anywhere(tgt_target, fresh_target, fuse_available, tmp_path):
    tgtd = fresh_target.tgtd
    t = fresh_target(luns=[(8 * MiB, 512)])
    fresh_target.add_account(t.tid, "sec-user", SECRET_OUT)
    fresh_target.add_account(t.tid, "sec-target", SECRET_IN, outgoing=True)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "iscsid.conf").write_text(
        "node.session.auth.authmethod = CHAP\n"
        "node.session.auth.username = sec-user\n"
        f"node.session.auth.password = {SECRET_OUT}\n"
        "node.session.auth.username_in = sec-target\n"
        f"node.session.auth.password_in = {SECRET_IN}\n")
    mp = tmp_path / "mnt"
    mp.mkdir()
    log_path = tmp_path / "debug.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(HELPER), t.portal, str(mp),
                                 "-o", f"debug,config_dir={conf}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: os.path.ismount(mp) or proc.poll() is not None), "no mount"
        assert os.path.ismount(mp), log_path.read_text()[-2000:]
        tdir = mp / "portals" / t.portal / "targets" / t.iqn
        # I/O through the mutually authenticated session
        raw = tdir / "luns" / "1" / "raw"
        data = os.urandom(MiB)
        subprocess.run(["dd", f"of={raw}", "bs=64k", "seek=3", "conv=notrunc,fsync",
                        "status=none"], input=data, check=True)
        out = subprocess.run(["dd", f"if={raw}", "bs=64k", "skip=3", "count=16", "status=none"],
                             capture_output=True, check=True).stdout
        assert out == data
        session = (tdir / "session").read_text()
        assert "\t\tusername: sec-user\n" in session
        assert "\t\tusername_in: sec-target\n" in session
        assert "\t\tpassword: ********\n" in session
        assert "\t\tpassword_in: ********\n" in session
        assert tgtd.show_connections(t.tid)
        # every text file of the tree (other targets refuse our mutual CHAP: errors are fine)
        seen = []
        for root, dirs, files in os.walk(mp, onerror=lambda e: None):
            for name in files:
                path = Path(root) / name
                if name == "raw" or path.is_symlink():
                    continue
                try:
                    content = path.read_bytes()
                except OSError:
                    continue
                _assert_clean(str(path), content)
                seen.append(name)
        assert {"session", "info", "InitiatorName"} <= set(seen)
        _assert_clean("by-path listing", "\n".join(os.listdir(mp / "by-path")).encode())
        # the daemon's command line and environment, and ps
        _assert_clean("cmdline", Path(f"/proc/{proc.pid}/cmdline").read_bytes())
        _assert_clean("environ", Path(f"/proc/{proc.pid}/environ").read_bytes())
        ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True,
                            check=True).stdout
        _assert_clean("ps", ps)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)
    assert _wait(lambda: not tgtd.show_connections(t.tid))
    log_text = log_path.read_bytes()
    assert b" DEBUG: " in log_text and b"CHAP" in log_text     # it really was a debug log
    _assert_clean("the debug log", log_text)
    # the records on disk hold the secrets (as open-iscsi's do) but only for root
    for record in (conf / "nodes").rglob("default"):
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
