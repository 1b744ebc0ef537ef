"""The filesystem's contract with the layers below (iscsifs/fs/backend.py), checked by mypy:
the real ``Lun``, ``MultipathDevice``, ``LunEntry``, ``SessionInfo`` and ``Initiator`` and the
fake of fs_fake.py implement the protocols, and every module of iscsifs/fs (rendering of the
session snapshot included) type-checks against them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import iscsifs.fs

FS_DIR = Path(iscsifs.fs.__file__).parent
TESTS_DIR = Path(__file__).parent

CONFORMANCE = '''
from iscsifs.device import Lun
from iscsifs.fs.backend import (Backend, BlockDevice, LunListing, MultipathBlockDevice,
                                SessionSnapshot)
from iscsifs.initiator import Initiator, LunEntry, SessionInfo
from iscsifs.multipath import MultipathDevice

from fs_fake import FakeInitiator, FakeLun, FakeLunEntry, FakeMultipath, FakeSessionInfo


def real_lun(x: Lun) -> BlockDevice:
    return x


def fake_lun(x: FakeLun) -> BlockDevice:
    return x


def real_multipath(x: MultipathDevice) -> MultipathBlockDevice:
    return x


def fake_multipath(x: FakeMultipath) -> MultipathBlockDevice:
    return x


def real_entry(x: LunEntry) -> LunListing:
    return x


def fake_entry(x: FakeLunEntry) -> LunListing:
    return x


def real_session(x: SessionInfo) -> SessionSnapshot:
    return x


def fake_session(x: FakeSessionInfo) -> SessionSnapshot:
    return x


def real_backend(x: Initiator) -> Backend:
    return x


def fake_backend(x: FakeInitiator) -> Backend:
    return x
'''


def mypy(tmp_path: Path, *files: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MYPYPATH=str(TESTS_DIR))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--no-error-summary", "--cache-dir", str(tmp_path / "mypy-cache"), *map(str, files)],
        capture_output=True, text=True, timeout=120, env=env)


def test_real_and_fake_backends_fit_the_filesystem(tmp_path):
    check = tmp_path / "conformance.py"
    check.write_text(CONFORMANCE)
    result = mypy(tmp_path, FS_DIR, check)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_device_that_does_not_fit_is_a_type_error(tmp_path):
    check = tmp_path / "misfit.py"
    check.write_text("from iscsifs.fs.backend import BlockDevice\n\n\n"
                     "class NoCapacity:\n    size = 0\n\n\n"
                     "def device(x: NoCapacity) -> BlockDevice:\n    return x\n")
    result = mypy(tmp_path, check)
    assert result.returncode == 1 and "BlockDevice" in result.stdout, result.stdout


def test_rendering_reads_the_session_snapshot_through_its_protocol(tmp_path):
    """fs/render.py reads a session's snapshot by the attributes SessionSnapshot declares: one
    that is not there is a type error (it used to be read through a getattr helper)."""
    check = tmp_path / "misread.py"
    check.write_text("from iscsifs.fs.backend import SessionSnapshot\n\n\n"
                     "def sid(x: SessionSnapshot) -> int:\n    return x.sid\n\n\n"
                     "def isid(x: SessionSnapshot) -> int:\n    return x.isid\n")
    result = mypy(tmp_path, check)
    assert result.returncode == 1, result.stdout
    assert '"SessionSnapshot" has no attribute "isid"' in result.stdout
    assert "misread.py:5" not in result.stdout
    import inspect

    from iscsifs.fs import render
    assert "getattr" not in inspect.getsource(render.session_facts)
    assert not hasattr(render, "_get")
