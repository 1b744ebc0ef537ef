"""Persistent reservations without a target: the ``user.iscsi.pr*`` extended attributes of
``raw`` and ``by-id`` files on the in-memory backend (PR IN as JSON, PR OUT requests, their
errno), the ``iscsifs pr`` command line (sg_persist's refusals, its output lines, exit codes)
and ``reservation_key=`` parsing. The real thing against tgt: t5_reservations.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pyfuse3
import pytest

from fs_fake import DISK1, FakeInitiator, standard_targets
from helpers import run_iscsifs
from iscsifs.cli.pr import CAPABILITY_TYPES, TYPE_NAMES, format_pr_in
from iscsifs.core.names import Portal
from iscsifs.errors import QuietError
from iscsifs.fs import xattrs
from iscsifs.fs.ops import Operations
from iscsifs.fs.tree import Tree
from iscsifs.mount.options import parse_args, parse_reservation_key

PORTAL = Portal("127.0.0.1", 3260)


async def raw_inode(ops: Operations) -> int:
    inode = pyfuse3.ROOT_INODE
    for name in ("portals", PORTAL.address, "targets", DISK1, "luns", "1", "raw"):
        inode = (await ops.lookup(inode, name.encode())).st_ino
    return inode


def make_ops():
    fake = FakeInitiator(standard_targets())
    return Operations(fake, Tree([PORTAL]), initiator_name="iqn.x:y"), fake


async def test_pr_in_and_out_through_the_extended_attributes():
    ops, fake = make_ops()
    inode = await raw_inode(ops)
    lun = fake.targets[DISK1][1].device
    keys = json.loads(await ops.getxattr(inode, b"user.iscsi.pr.read_keys"))
    assert keys == {"schema": "iscsifs.pr/1", "service_action": "read_keys", "generation": 0,
                    "keys": []}
    await ops.setxattr(inode, b"user.iscsi.pr", b"register key=0 sa_key=0x123abc")
    await ops.setxattr(inode, b"user.iscsi.pr", b"reserve key=123abc type=1")
    res = json.loads(await ops.getxattr(inode, b"user.iscsi.pr.read_reservation"))
    assert res["reservation"] == {"key": "0x123abc", "scope": 0, "type": 1}
    assert lun.pr_reservation == (0x123ABC, 1)
    caps = json.loads(await ops.getxattr(inode, b"user.iscsi.pr.report_capabilities"))
    assert caps["capabilities"]["types"] == [1, 3, 5, 6, 7, 8]
    # the control attributes are not listed (getfattr -d must not run PR IN)
    names = await ops.listxattr(inode)
    assert b"user.iscsi.product" in names
    assert not any(n == b"user.iscsi.pr" or n.startswith(b"user.iscsi.pr.") for n in names)


@pytest.mark.parametrize("value, code", [
    (b"reserve key=0x1 type=1", errno.EBADE),           # not the registered key: conflict
    (b"unknown", errno.EINVAL),
    (b"reserve type=16", errno.EINVAL),
    (b"register sa_key=0x10000000000000000", errno.EINVAL),
    (b"reserve key=zz", errno.EINVAL),
    (b"\xff", errno.EINVAL),
])
async def test_pr_out_errors(value, code):
    ops, _ = make_ops()
    inode = await raw_inode(ops)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.setxattr(inode, b"user.iscsi.pr", value)
    assert info.value.errno == code


async def test_read_full_status_unsupported_is_eopnotsupp():
    ops, _ = make_ops()
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getxattr(await raw_inode(ops), b"user.iscsi.pr.read_full_status")
    assert info.value.errno == errno.EOPNOTSUPP


def test_parse_pr_out_keeps_keys_out_of_its_errors():
    req = xattrs.parse_pr_out(b"preempt_abort key=0xabc sa_key=0xdef type=5 aptpl all_tg_pt")
    assert (req.key, req.sa_key, req.type, req.aptpl, req.all_tg_pt) == (0xABC, 0xDEF, 5,
                                                                         True, True)
    assert "abc" not in repr(req)
    with pytest.raises(ValueError) as info:
        xattrs.parse_pr_out(b"reserve key=0xSECRETKEY")
    assert "SECRET" not in str(info.value)


def test_sg_persist_lines():
    gen = {"schema": "iscsifs.pr/1", "generation": 0x1f}
    assert format_pr_in({**gen, "service_action": "read_keys", "keys": ["0x1", "0xabc"]}) == [
        "  PR generation=0x1f, 2 registered reservation keys follow:", "    0x1", "    0xabc"]
    assert format_pr_in({**gen, "service_action": "read_reservation", "reservation": {
        "key": "0xabc", "scope": 0, "type": 6}}) == [
        "  PR generation=0x1f, Reservation follows:", "    Key=0xabc",
        "    scope: LU_SCOPE,  type: Exclusive Access, registrants only"]
    caps = {"rlr_c": False, "crh": True, "sip_c": False, "atp_c": True, "ptpl_c": True,
            "tmv": True, "ptpl_a": False, "allow_commands": 0, "types": [1, 3]}
    lines = format_pr_in({**gen, "service_action": "report_capabilities",
                          "capabilities": caps})
    assert lines[2] == "  Compatible Reservation Handling(CRH): 1"
    assert lines[-6:] == [f"      {TYPE_NAMES[t]}: {int(t in (1, 3))}"
                          for t in CAPABILITY_TYPES]
    tid = (bytes([5, 0, 0, 12]) + b"iqn.x:host\0\0").hex()
    assert format_pr_in({**gen, "service_action": "read_full_status", "registrations": [
        {"key": "0x5", "all_tg_pt": False, "holder": True, "scope": 0, "type": 1,
         "relative_target_port": 1, "transport_id": tid}]}) == [
        "  PR generation=0x1f", "    Key=0x5", "      All target ports bit clear",
        "      Relative port address: 0x1", "      << Reservation holder >>",
        "      scope: LU_SCOPE,  type: Write Exclusive", "      Transport Id of initiator:",
        "        iSCSI name: iqn.x:host"]


@pytest.mark.skipif(shutil.which("sg_persist") is None, reason="sg3-utils not installed")
def test_the_fixed_texts_are_those_of_the_installed_sg_persist():
    """Every fixed text of the output is in Debian's sg_persist binary (its format strings),
    so the lines match what it prints for the same answers."""
    binary = subprocess.run(["strings", "-n", "4", shutil.which("sg_persist")],
                            capture_output=True, text=True, check=True).stdout
    for text in ("there are NO registered reservation keys", "1 registered reservation key "
                 "follows:", "registered reservation keys follow:", "Reservation follows:",
                 "there is NO reservation held", "scope: LU_SCOPE, ",
                 "Replace Lost Reservation Capable(RLR_C): %d",
                 "Compatible Reservation Handling(CRH): %d", "Type Mask Valid(TMV): %d",
                 "Persist Through Power Loss Active(PTPL_A): %d",
                 "    Support indicated in Type mask:", "<< Reservation holder >>",
                 "not reservation holder", "  Peripheral device type: %s",
                 "PR out: command (%s) successful", *TYPE_NAMES[1:9:2][1:], "Write Exclusive"):
        assert text in binary, text


@pytest.mark.parametrize("args, words", [
    (["--out", "--register", "--reserve"], "one and only one appropriate service action"),
    (["--out"], "one and only one appropriate service action"),
    (["--register"], "the '--out' option must be given"),
    (["--in", "--out", "--register"], "choose '--in' _or_ '--out'"),
    (["-k", "-r"], "too many service actions"),
    (["--param-rk=xyz", "-k"], "is not a hex number"),
    (["--prout-type=16", "-k"], "0 to 15"),
])
def test_bad_options_are_one_line_and_exit_7(tmp_path, args, words):
    f = tmp_path / "raw"
    f.write_bytes(b"")
    r = run_iscsifs(tmp_path, "pr", *args, str(f))
    assert r.returncode == 7 and words in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_file_outside_iscsifs_is_refused(tmp_path):
    f = tmp_path / "plain"
    f.write_bytes(b"x")
    r = run_iscsifs(tmp_path, "pr", str(f))
    assert r.returncode == 7
    assert r.stderr.endswith(f"iscsifs: pr {f}: not a raw or by-id file of an iscsifs mount\n")
    assert r.stderr.startswith(">> No service action given")


@pytest.mark.parametrize("value, key, aptpl", [
    ("0x123abc", 0x123ABC, False), ("123ABC", 0x123ABC, False),
    ("0xffffffffffffffff", (1 << 64) - 1, False), ("0x1:aptpl", 1, True),
])
def test_reservation_key_option(value, key, aptpl):
    assert parse_reservation_key(value) == (key, aptpl)
    opts = parse_args(["127.0.0.1", "/mnt", "-o", f"reservation_key={value}"])
    assert (opts.reservation_key, opts.reservation_aptpl) == (key, aptpl)
    if key > 0xFFFF:
        assert str(key) not in repr(opts) and hex(key)[2:] not in repr(opts)


@pytest.mark.parametrize("value", ["", "0x", "0x0", "0x1ffffffffffffffff", "0xg",
                                   "0x1:apt", "12 34"])
def test_bad_reservation_key_is_exit_7_without_the_key(value):
    with pytest.raises(QuietError) as info:
        parse_reservation_key(value)
    assert info.value.exit_code == 7 and "reservation_key" in str(info.value)
    assert len(value) < 4 or value not in str(info.value)


def test_alua_transition_timeout_option():
    assert parse_args(["127.0.0.1", "/mnt"]).alua_transition_timeout == 60
    opts = parse_args(["127.0.0.1", "/mnt", "-o", "alua_transition_timeout=5"])
    assert opts.alua_transition_timeout == 5
    with pytest.raises(QuietError):
        parse_args(["127.0.0.1", "/mnt", "-o", "alua_transition_timeout=-1"])


def test_pr_xattr_names():
    assert sorted(xattrs.PR_IN) == sorted(
        f"user.iscsi.pr.{n}".encode() for n in ("read_keys", "read_reservation",
                                                "report_capabilities", "read_full_status"))
    assert os.path.basename("user.iscsi.pr") == "user.iscsi.pr"
