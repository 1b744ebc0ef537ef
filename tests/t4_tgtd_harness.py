"""Tests of the tgtd harness (iscsifs_testbed.tgtd) and the conftest rules themselves."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iscsifs_testbed.tgtd import IQN1, IQN2, SOCKET_DIR, MiB, Tgtd, TgtadmError, _pid_alive

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------ a tiny raw iSCSI login
def _login_pdu(flags: int, pairs, itt: int, cmd_sn: int, exp_stat_sn: int, tsih: int = 0) -> bytes:
    data = b"".join(f"{k}={v}\0".encode() for k, v in pairs)
    bhs = struct.pack(">BBBBB3s6sHIHHII16x", 0x43, flags, 0, 0, 0, len(data).to_bytes(3, "big"),
                      bytes.fromhex("400001370000"), tsih, itt, 0, 0, cmd_sn, exp_stat_sn)
    return bhs + data + b"\0" * (-len(data) % 4)


def _recv_pdu(s: socket.socket) -> tuple[bytes, bytes]:
    def rx(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf
    hdr = rx(48)
    dlen = int.from_bytes(hdr[5:8], "big")
    return hdr, rx(dlen + (-dlen % 4))[:dlen]


def raw_login(host: str, port: int, target: str,
              initiator: str = "iqn.2026-11.org.iscsifs.test:harness") -> socket.socket:
    """Security -> operational -> full feature, no auth, no digests. Independent of iscsifs."""
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(_login_pdu(0x81, [("InitiatorName", initiator), ("TargetName", target),
                                ("SessionType", "Normal"), ("AuthMethod", "None")], 1, 0, 0))
    hdr, _ = _recv_pdu(s)
    assert hdr[0] & 0x3F == 0x23 and hdr[36] == 0, f"login failed: class {hdr[36]} detail {hdr[37]}"
    tsih = int.from_bytes(hdr[14:16], "big")
    stat_sn = int.from_bytes(hdr[24:28], "big")
    s.sendall(_login_pdu(0x87, [("HeaderDigest", "None"), ("DataDigest", "None")],
                         2, 0, stat_sn + 1, tsih))
    hdr, _ = _recv_pdu(s)
    assert hdr[36] == 0 and hdr[1] & 0x83 == 0x83, f"login stage 2 failed: {hdr[:4].hex()}"
    return s


# ------------------------------------------------------------ tests
def test_tgtd_is_private_and_answers(tgtd):
    assert tgtd.running and tgtd.pid and os.path.exists(f"/proc/{tgtd.pid}")
    assert (SOCKET_DIR / f"socket.{tgtd.ctl}").exists()
    assert "iscsi: ready" in tgtd.show_system()
    cmdline = Path(f"/proc/{tgtd.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:4] == [b"tgtd", b"-f", b"-C", str(tgtd.ctl).encode()]
    assert f"portal=127.0.0.1:{tgtd.port}".encode() in cmdline
    assert tgtd.log_path and tgtd.log_path.exists()


def test_standard_targets_visible(tgt_target):
    t = tgt_target
    out = t.tgtd.show_targets()
    assert f"Target 1: {IQN1}" in out and f"Target 2: {IQN2}" in out
    assert t.disk1.iqn == IQN1 and t.disk2.iqn == IQN2 and t.portal == f"127.0.0.1:{t.port}"
    assert sorted(t.disk1.luns) == [1, 2, 3] and sorted(t.disk2.luns) == [1]
    expect = {(1, 1): (64 * MiB, 512, False), (1, 2): (16 * MiB, 4096, False),
              (1, 3): (8 * MiB, 512, True), (2, 1): (8 * MiB, 512, False)}
    for (tid, lun), (size, bs, ro) in expect.items():
        info = (t.disk1 if tid == 1 else t.disk2).luns[lun]
        assert (info.size, info.block_size, info.readonly) == (size, bs, ro)
        assert info.path.stat().st_size == size
        assert f"Backing store path: {info.path}" in out
    # the per-LUN blocks of tgtadm's output, for target 1
    t1 = out.split(f"Target 2:")[0]
    lun_blocks = {int(b.split("\n", 1)[0]): b for b in t1.split("LUN: ")[1:]}
    assert "Block size: 512" in lun_blocks[1] and "Readonly: No" in lun_blocks[1]
    assert "Block size: 4096" in lun_blocks[2]
    assert "Readonly: Yes" in lun_blocks[3]
    assert out.count("ACL information:\n        ALL") == 2
    with open(t.disk1.luns[1].path, "rb") as f:
        head = f.read(4096)
    assert head != bytes(4096)  # random fill


def test_portal_accepts_tcp(tgt_target):
    with socket.create_connection((tgt_target.host, tgt_target.port), timeout=5):
        pass


def test_tgtadm_errors_carry_stderr(tgtd, tgt_target):
    with pytest.raises(TgtadmError) as ei:
        tgtd.add_target(1, IQN1)
    assert "already exists" in ei.value.stderr
    assert "already exists" in str(ei.value)


def test_fresh_target_params_and_accounts(fresh_target):
    t = fresh_target([(4 * MiB, 512), (1 * MiB, 4096, "readonly=1", "zero")],
                     params={"HeaderDigest": "CRC32C", "InitialR2T": "No"})
    d = fresh_target.tgtd
    assert t.tid >= 100 and d.tids().count(t.tid) == 1
    p = d.target_params(t.tid)
    assert p["HeaderDigest"] == "CRC32C" and p["InitialR2T"] == "No"
    for name, value in (("ImmediateData", "No"), ("MaxRecvDataSegmentLength", "65536"),
                        ("FirstBurstLength", "32768"), ("MaxBurstLength", "131072"),
                        ("nop_interval", "3"), ("nop_count", "2"), ("DataDigest", "CRC32C")):
        d.set_param(t.tid, name, value)
        assert d.target_params(t.tid)[name] == value
    assert t.luns[2].readonly and t.luns[2].path.stat().st_blocks == 0  # sparse zero fill
    fresh_target.add_account(t.tid, "harnessuser", "harness-secret-1")
    assert "harnessuser" in d.tgtadm("--mode", "account", "--op", "show")
    d.add_account("harnessout", "harness-secret-2")
    d.bind_account(t.tid, "harnessout", outgoing=True)
    shown = d.show_targets()
    assert "harnessout (outgoing)" in shown
    d.unbind_account(t.tid, "harnessout", outgoing=True)
    d.delete_account("harnessout")
    assert "harnessout" not in d.tgtadm("--mode", "account", "--op", "show")
    d.unbind(t.tid, "ALL")
    d.delete_lun(t.tid, 2)
    assert f"Backing store path: {t.luns[2].path}" not in d.show_targets()


def test_fresh_target_removed_afterwards(tgtd):
    # runs after the test above (same module order): its tid must be gone
    assert all(tid < 100 for tid in tgtd.tids())
    assert "harnessuser" not in tgtd.tgtadm("--mode", "account", "--op", "show")


def test_connections_show_and_drop(fresh_target):
    t = fresh_target([(1 * MiB, 512)], params={"nop_interval": 0})
    d = fresh_target.tgtd
    assert d.show_connections(t.tid) == []
    s = raw_login(t.host, t.port, t.iqn)
    try:
        (c,) = d.wait_connections(t.tid, 1)
        assert c.initiator == "iqn.2026-11.org.iscsifs.test:harness" and c.address == "127.0.0.1"
        d.drop_connection(t.tid, c.sid, c.cid)
        s.settimeout(5)
        assert s.recv(100) == b""           # the target closed it
        d.wait_connections(t.tid, 0)
    finally:
        s.close()


def test_login_to_standard_target(tgt_target):
    s = raw_login(tgt_target.host, tgt_target.port, tgt_target.disk2.iqn)
    try:
        assert len(tgt_target.tgtd.wait_connections(2, 1)) == 1
    finally:
        s.close()
    tgt_target.tgtd.wait_connections(2, 0)


def test_stall_and_resume(tgt_target):
    d = tgt_target.tgtd
    d.stall()
    try:
        state = Path(f"/proc/{d.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state in ("T", "t")
    finally:
        d.resume()
    assert "iscsi: ready" in d.show_system()


def test_kill_and_restart_on_the_same_ports(tmp_path):
    other = Tgtd()
    other.start()
    try:
        pid, ctl, port = other.pid, other.ctl, other.port
        other.add_target(5, "iqn.2026-11.org.iscsifs.test:crash")
        assert other.kill_and_restart() >= 1
        assert (other.ctl, other.port) == (ctl, port) and other.pid != pid
        assert not _pid_alive(pid)
        assert other.tids() == []                     # a crash forgets the configuration
        other.add_target(5, "iqn.2026-11.org.iscsifs.test:crash")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        other.stop()


def test_second_instance_and_stop_cleans_up(tgtd, tmp_path):
    other = Tgtd()
    other.start()
    pid, ctl, workdir = other.pid, other.ctl, other.workdir
    try:
        assert ctl != tgtd.ctl and other.port != tgtd.port
        sock = SOCKET_DIR / f"socket.{ctl}"
        assert sock.exists()
        other.add_target(5, "iqn.2026-11.org.iscsifs.test:other")
        lun = other.make_backing_file("x.img", 1 * MiB, "zero")
        other.add_lun(5, 1, lun)
        other.bind(5)
        with socket.create_connection(("127.0.0.1", other.port), timeout=5):
            pass
    finally:
        t0 = time.monotonic()
        other.stop()
    assert time.monotonic() - t0 < 20
    assert not os.path.exists(f"/proc/{pid}") or \
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not (SOCKET_DIR / f"socket.{ctl}").exists()
    assert not (SOCKET_DIR / f"socket.{ctl}.lock").exists()
    assert not workdir.exists()
    other.stop()  # idempotent
    assert tgtd.running  # the session one is untouched


def test_stop_kills_a_stalled_tgtd():
    d = Tgtd()
    d.start()
    pid = d.pid
    d.stall()
    d.stop()
    assert not os.path.exists(f"/proc/{pid}")


# ------------------------------------------------------------ conftest rules, in a child pytest
def _child_pytest(tmp_path: Path, body: str, env_extra: dict) -> subprocess.CompletedProcess:
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(HERE / "conftest.py", proj / "conftest.py")
    shutil.copy(HERE / "logcheck.py", proj / "logcheck.py")
    (proj / "test_child.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ISCSIFS_NO_SKIP")}
    # the child's conftest imports iscsifs_testbed, which lives in the checkout (not installed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent),
                                                      os.environ.get("PYTHONPATH")]))
    env.update(env_extra)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", f"--basetemp={tmp_path / 'bt'}", str(proj)],
                          cwd=proj, env=env, capture_output=True, text=True, timeout=120)


SKIPPING = """
import pytest
def test_needs_tgtd():
    pytest.skip("tgtd not on PATH")
def test_needs_fuse():
    pytest.skip("/dev/fuse missing")
def test_other_skip():
    pytest.skip("not relevant on this platform")
@pytest.mark.xfail(reason="tgtd quirk")
def test_xfail():
    assert False
"""


@pytest.mark.parametrize("env,rc,summary", [
    ({}, 0, "3 skipped, 1 xfailed"),
    ({"ISCSIFS_NO_SKIP": "1"}, 1, "2 failed, 1 skipped, 1 xfailed"),
    ({"CI": "true"}, 1, "2 failed, 1 skipped, 1 xfailed"),
    ({"CI": "true", "ISCSIFS_NO_SKIP": "0"}, 0, "3 skipped, 1 xfailed"),
])
def test_ci_turns_prerequisite_skips_into_failures(tmp_path, env, rc, summary):
    r = _child_pytest(tmp_path, SKIPPING, env)
    assert r.returncode == rc, r.stdout + r.stderr
    assert summary in r.stdout, r.stdout
    if rc:
        assert "skip not allowed" in r.stdout


def test_ci_rule_covers_module_level_skip(tmp_path):
    body = 'import pytest\npytest.skip("needs root", allow_module_level=True)\n'
    r = _child_pytest(tmp_path, body, {"ISCSIFS_NO_SKIP": "1"})
    assert r.returncode != 0 and "skip not allowed" in r.stdout, r.stdout


def test_leak_check_fails_a_test_that_leaves_tgtd(tmp_path):
    body = ("from iscsifs_testbed.tgtd import Tgtd\n"
            "def test_leaky():\n    Tgtd().start()\n"
            "def test_after():\n    pass\n")
    r = _child_pytest(tmp_path, body, {})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "left running by this test" in r.stdout and "2 passed, 1 error" in r.stdout, r.stdout
    assert "test_after" not in r.stdout and "LEAK:" not in r.stdout  # cleaned up at once


@pytest.mark.parametrize("no_skip,rc", [("0", 0), ("1", 1)])
def test_missing_tgtd_skips_or_fails(tmp_path, no_skip, rc):
    body = "def test_uses_tgtd(tgtd):\n    pass\n"
    r = _child_pytest(tmp_path, body, {"PATH": "/usr/bin:/bin", "ISCSIFS_NO_SKIP": no_skip})
    assert r.returncode == rc, r.stdout + r.stderr
    if rc:
        assert "skip not allowed" in r.stdout and "tgtd and tgtadm not on PATH" in r.stdout
    else:
        assert "1 skipped" in r.stdout


def test_leak_check_resumes_a_stalled_tgtd(tmp_path):
    body = ("import pytest\nfrom iscsifs_testbed.tgtd import Tgtd\n"
            "@pytest.fixture(scope='session')\ndef d():\n"
            "    t = Tgtd(); t.long_lived = True; t.start(); yield t; t.stop()\n"
            "def test_stalls(d):\n    d.stall()\n"
            "def test_after(d):\n    assert not d.stalled and 'ready' in d.show_system()\n")
    r = _child_pytest(tmp_path, body, {})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "left stalled" in r.stdout and "2 passed, 1 error" in r.stdout, r.stdout
