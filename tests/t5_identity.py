"""LUN identity and discard on real mounts against the private tgtd: the ``user.iscsi.*``
attributes read with getfattr, ``info.json`` / ``session.json`` against their text twins, and
``iscsifs discard`` on a LUN with ``thin_provisioning=1`` (tgt punches holes in the backing
file) and on one without."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import wait_for
from mounting import mount

from iscsifs_testbed.tgtd import MiB

pytestmark = pytest.mark.integration


@pytest.fixture
def thin(fresh_target, fuse_available, tmp_path):
    """A target with LUN 1 thin provisioned (16 MiB, 512 B blocks) and LUN 2 not (8 MiB, 4 KiB
    blocks), both full of random data, mounted; yields (target, its directory in the mount)."""
    t = fresh_target(luns=[(16 * MiB, 512, "thin_provisioning=1"), (8 * MiB, 4096)])
    (tmp_path / "conf").mkdir()
    with mount(tmp_path / "mnt", t.portal, f"config_dir={tmp_path / 'conf'}",
               f"logfile={tmp_path / 'mount.log'}", tgtd=fresh_target.tgtd, tids=[t.tid]) as m:
        yield t, m.target(t.iqn)


def iscsifs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iscsifs.cli", *args], capture_output=True,
                          text=True, timeout=60)


def getfattr(path: Path) -> dict[str, str]:
    out = subprocess.run(["getfattr", "-d", "--absolute-names", str(path)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    attrs = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            attrs[name] = json.loads(value)       # getfattr quotes the text value
    return attrs


def test_discard_on_a_thin_lun_unmaps_and_zeroes_while_mounted(thin):
    t, tdir = thin
    raw, backing = tdir / "luns" / "1" / "raw", t.luns[1].path
    info = json.loads((tdir / "luns" / "1" / "info.json").read_text())
    assert info["provisioning"]["discard"] == "unmap" and info["provisioning"]["lbprz"]
    start, length = 2 * MiB + 1000, 3 * MiB + 333            # unaligned at both ends
    pattern = os.urandom(6 * MiB)
    fd = os.open(raw, os.O_RDWR)
    try:
        assert os.pwrite(fd, pattern, 1 * MiB) == len(pattern)
        os.fsync(fd)
        blocks_before = os.stat(backing).st_blocks
        # the file stays open and in use: the discard goes through the mount's own session
        r = iscsifs("discard", "-v", "--offset", str(start), "--length", str(length), str(raw))
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{raw}: Discarded {length} bytes from the offset {start}\n"
        assert r.stderr == ""
        data = os.pread(fd, 6 * MiB, 1 * MiB)
    finally:
        os.close(fd)
    lo, hi = start - MiB, start - MiB + length
    assert data[lo:hi] == bytes(length)                      # the range reads back as zeros
    assert data[:lo] == pattern[:lo] and data[hi:] == pattern[hi:]   # the rest is untouched
    with open(backing, "rb") as f:                           # and so says the target
        f.seek(MiB)
        assert f.read(6 * MiB) == data
    freed = (blocks_before - os.stat(backing).st_blocks) * 512
    assert freed >= length - 64 * 1024, (blocks_before, freed)   # tgt punched the hole


def test_discard_on_a_lun_without_thin_provisioning_fails_clearly(thin):
    t, tdir = thin
    raw = tdir / "luns" / "2" / "raw"
    before = t.luns[2].path.read_bytes()
    r = iscsifs("discard", str(raw))
    assert r.returncode == 27
    assert r.stderr == (f"iscsifs: discard {raw}: the LUN supports neither UNMAP nor WRITE SAME "
                        "with UNMAP (no logical block provisioning)\n")
    assert t.luns[2].path.read_bytes() == before
    info = json.loads((tdir / "luns" / "2" / "info.json").read_text())
    assert info["provisioning"]["discard"] is None and info["provisioning"]["type"] == "full"
    # a range past the end is refused before anything is sent
    r = iscsifs("discard", "--offset", "16M", "--length", "1", str(tdir / "luns" / "1" / "raw"))
    assert r.returncode == 7 and "runs past the end of the LUN" in r.stderr


def test_getfattr_shows_the_lun_identity(thin):
    t, tdir = thin
    for n, block_size in ((1, 512), (2, 4096)):
        raw = tdir / "luns" / str(n) / "raw"
        attrs = getfattr(raw)
        info = json.loads((tdir / "luns" / str(n) / "info.json").read_text())
        assert attrs == {
            "user.iscsi.wwn": info["wwn"],
            "user.iscsi.serial": info["serial"],
            "user.iscsi.vendor": "IET",
            "user.iscsi.product": "VIRTUAL-DISK",
            "user.iscsi.revision": info["revision"],
            "user.iscsi.block_size": str(block_size),
            "user.iscsi.target": t.iqn,
            "user.iscsi.portal": t.portal,
            "user.iscsi.lun": str(n),
        }
        assert info["wwn"].startswith("naa.") and info["serial"]
        assert os.getxattr(raw, "user.iscsi.lun") == str(n).encode()
        with pytest.raises(OSError) as exc:
            os.setxattr(raw, "user.iscsi.vendor", b"X")
        assert exc.value.errno == 1                                  # EPERM: read-only
        with pytest.raises(OSError) as exc:
            os.getxattr(raw, "user.iscsi.discard")                   # write-only
        assert exc.value.errno == 61                                 # ENODATA
    assert os.listxattr(tdir / "luns" / "1" / "info") == []


def test_json_files_match_their_text_twins(thin):
    t, tdir = thin
    before = json.loads((tdir / "session.json").read_text())
    assert before["logged_in"] is False and before["session_state"] == "NOT LOGGED IN"
    assert sorted(os.listdir(tdir / "luns"), key=int) == ["0", "1", "2"]       # logs in
    assert sorted(os.listdir(tdir / "luns" / "0")) == ["info", "info.json"]
    assert sorted(os.listdir(tdir)) == ["luns", "rescan", "session", "session.json"]
    for n in (0, 1, 2):
        text = (tdir / "luns" / str(n) / "info").read_text()
        doc = json.loads((tdir / "luns" / str(n) / "info.json").read_text())
        assert doc["schema"] == "iscsifs.info/1" and doc["lun"] == n
        assert f"LUN: {n}\n" in text and f"By-path: {doc['by_path']}\n" in text
        if n:
            lun = t.luns[n]
            assert (doc["block_size"], doc["capacity_bytes"]) == (lun.block_size, lun.size)
            assert f"Serial: {doc['serial']}\n" in text and f"WWN: {doc['wwn']}\n" in text
            assert f"Provisioning: {doc['provisioning']['type']}\n" in text
    session = (tdir / "session").read_text()
    doc = json.loads((tdir / "session.json").read_text())
    assert doc["schema"] == "iscsifs.session/1" and doc["logged_in"] is True
    assert doc["target"] == t.iqn and doc["current_portal"]["address"] == t.portal
    assert f"\tCurrent Portal: {t.portal},{doc['current_portal']['tpgt']}\n" in session
    assert f"\t\tSID: {doc['sid']}\n" in session
    assert doc["session_state"] == "LOGGED_IN" and doc["connection_state"] == "LOGGED IN"
    neg = doc["negotiated"]
    assert f"\t\tMaxRecvDataSegmentLength: {neg['max_recv_data_segment_length']}\n" in session
    assert f"\t\tFirstBurstLength: {neg['first_burst_length']}\n" in session
    assert [(lun["lun"], lun["raw"]) for lun in doc["luns"]] == \
        [(0, None), (1, "luns/1/raw"), (2, "luns/2/raw")]
    assert doc["stats"]["scsicmd_pdus"] > 0 and doc["stats"]["login_pdus"] >= 1
    assert "password" not in (tdir / "session.json").read_text()


def test_by_id_files_carry_the_identity_and_discard(thin):
    t, tdir = thin
    raw = tdir / "luns" / "1" / "raw"
    mp = tdir.parents[3]
    wwn = json.loads((tdir / "luns" / "1" / "info.json").read_text())["wwn"]
    by_id = mp / "by-id" / f"wwn-0x{wwn.removeprefix('naa.')}"
    assert wait_for(by_id.exists, timeout=30)
    # one path: the by-id file names the same target, portal and LUN as the raw file, and
    # says it has that one path
    attrs = getfattr(by_id)
    assert (attrs.pop("user.iscsi.paths"), attrs.pop("user.iscsi.paths_active")) == ("1", "1")
    assert attrs == getfattr(raw)
    pattern = os.urandom(MiB)
    with open(by_id, "r+b", buffering=0) as f:
        f.seek(4 * MiB)
        f.write(pattern)
        os.fsync(f.fileno())
    r = iscsifs("discard", "--offset", str(4 * MiB + 4096), "--length", str(8192), str(by_id))
    assert r.returncode == 0, r.stderr
    with open(raw, "rb") as f:
        f.seek(4 * MiB)
        data = f.read(MiB)
    assert data[4096:12288] == bytes(8192)
    assert data[:4096] == pattern[:4096] and data[12288:] == pattern[12288:]
