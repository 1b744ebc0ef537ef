"""Interoperability with a second target: the discovery, read/write, CHAP and digest checks that
run against tgt elsewhere (t4_cli, t5_mount_io, t4_chap, t5_mount_io's digests), run against
Debian's istgt (iscsifs_testbed/istgt.py: a private istgt on a free port, file LUNs).

One istgt for the module, with four targets: ``disk`` (two LUNs: istgt numbers them from 0),
``chap`` (one-way CHAP), ``mutual`` (mutual CHAP) and ``digest`` (``UseDigest Header Data``:
istgt offers CRC32C for both; it still accepts an initiator that wants none).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import ok, one_error_line, run_iscsifs
from mounting import mount as mount_helper
from mounting import unmount

from iscsifs_testbed.istgt import Istgt, missing_requirements
from iscsifs_testbed.tgtd import MiB

pytestmark = pytest.mark.integration

INI = "iqn.2026-11.org.iscsifs.test:istgt-initiator"
USER, SECRET = "istgt-user", "istgt-Secret-1"          # istgt wants 12-16 byte secrets
TUSER, TSECRET = "istgt-target", "istgt-Mutual-2"
WRONG = "istgt-Wrong-999"


@pytest.fixture(scope="module")
def istgt(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        pytest.fail(reason)
    target = Istgt(workdir=tmp_path_factory.mktemp("istgt"))
    target.add_target("disk", [8 * MiB, 4 * MiB])
    target.add_target("chap", [1 * MiB], chap=(USER, SECRET))
    target.add_target("mutual", [1 * MiB], chap=(USER, SECRET), mutual=(TUSER, TSECRET))
    target.add_target("digest", [4 * MiB], digest="Header Data")
    target.start()
    try:
        yield target
    finally:
        target.stop()


def iqn(istgt: Istgt, name: str) -> str:
    return next(t.iqn for t in istgt.targets if t.name == name)


def backing(istgt: Istgt, name: str, lun: int) -> Path:
    return next(t.luns[lun] for t in istgt.targets if t.name == name)


def mount(istgt: Istgt, tmp_path: Path, *options: str) -> Path:
    return mount_helper(tmp_path / "mnt", istgt.portal, f"initiator_name={INI}",
                        f"config_dir={tmp_path / 'cfg'}", f"logfile={tmp_path / 'mount.log'}",
                        *options, timeout=60).path


def test_discovery(istgt, tmp_path):
    r = ok(run_iscsifs(tmp_path / "cfg", "discover", istgt.portal, "--initiator-name", INI))
    assert sorted(r.stdout.splitlines()) == sorted(
        f"{istgt.portal},1 {t.iqn}" for t in istgt.targets)
    r = ok(run_iscsifs(tmp_path / "cfg", "node"))
    assert len(r.stdout.splitlines()) == 4


def test_read_write_through_a_mount(istgt, fuse_available, tmp_path):
    mp = mount(istgt, tmp_path)
    try:
        luns = mp / "portals" / istgt.portal / "targets" / iqn(istgt, "disk") / "luns"
        assert sorted(os.listdir(luns)) == ["0", "1"]
        for lun, size in ((0, 8 * MiB), (1, 4 * MiB)):
            raw = luns / str(lun) / "raw"
            assert raw.stat().st_size == size
            src = tmp_path / f"src{lun}"
            src.write_bytes(os.urandom(MiB + 1234))
            subprocess.run(["dd", f"if={src}", f"of={raw}", "bs=64k", "seek=777",
                            "oflag=seek_bytes", "conv=notrunc,fsync", "status=none"],
                           check=True, timeout=60)
            data = backing(istgt, "disk", lun).read_bytes()
            assert data[777:777 + MiB + 1234] == src.read_bytes()
            subprocess.run(["cmp", str(raw), str(backing(istgt, "disk", lun))], check=True,
                           timeout=60)
    finally:
        unmount(mp)


def test_chap_one_way_and_mutual(istgt, tmp_path):
    cfg = tmp_path / "cfg"
    ok(run_iscsifs(cfg, "discover", istgt.portal, "--initiator-name", INI))
    secrets = {"S": SECRET, "T": TSECRET, "W": WRONG}

    def update(name: str, key: str, value: str):
        ok(run_iscsifs(cfg, "node", "-T", iqn(istgt, name), "-o", "update", "-n",
                       f"node.session.auth.{key}", "-v", value, env=secrets))

    def login(name: str):
        return run_iscsifs(cfg, "login", "-T", iqn(istgt, name), "--initiator-name", INI)

    r = login("chap")                          # no credentials: istgt refuses
    assert r.returncode in (19, 24), r.stderr
    update("chap", "username", USER)
    update("chap", "password", "env:W")
    assert one_error_line(login("chap"), 24).startswith(
        f"iscsifs: authentication failed for {iqn(istgt, 'chap')} at {istgt.portal}")
    update("chap", "password", "env:S")
    assert "successful" in ok(login("chap")).stdout
    # mutual: the target must prove it knows TSECRET
    for key, value in (("username", USER), ("password", "env:S"),
                       ("username_in", TUSER), ("password_in", "env:W")):
        update("mutual", key, value)
    assert one_error_line(login("mutual"), 24)
    update("mutual", "password_in", "env:T")
    assert "successful" in ok(login("mutual")).stdout


def test_header_and_data_digests(istgt, fuse_available, tmp_path):
    mp = mount(istgt, tmp_path, "header_digest=crc32c", "data_digest=crc32c")
    try:
        tdir = mp / "portals" / istgt.portal / "targets" / iqn(istgt, "digest")
        raw = tdir / "luns" / "0" / "raw"
        data = os.urandom(2 * MiB)
        fd = os.open(raw, os.O_RDWR)
        try:
            os.pwrite(fd, data, 512 * 3)
            os.fsync(fd)
            assert os.pread(fd, len(data), 512 * 3) == data
        finally:
            os.close(fd)
        assert backing(istgt, "digest", 0).read_bytes()[1536:1536 + len(data)] == data
        text = (tdir / "session").read_text()
        assert "\t\tHeaderDigest: CRC32C\n" in text and "\t\tDataDigest: CRC32C\n" in text
        assert "digest_err: 0" in text
    finally:
        unmount(mp)
