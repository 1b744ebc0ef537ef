"""A LUN's contract with its session (``device.DeviceSession``), checked by mypy: what a
``Lun`` asks of its session (``execute``, ``logged_in``) is what ``net.session.Session`` and
``multipath.PathGroup`` (the session of a ``MultipathDevice``) both have, and device.py and
multipath.py type-check against it."""

from __future__ import annotations

from pathlib import Path

import iscsifs

from t3_fs_contract import mypy

PACKAGE = Path(iscsifs.__file__).parent

CONFORMANCE = '''
from iscsifs.device import DeviceSession, Lun
from iscsifs.multipath import MultipathDevice, PathGroup
from iscsifs.net.session import Session


def session(x: Session) -> DeviceSession:
    return x


def path_group(x: PathGroup) -> DeviceSession:
    return x


def lun_over_a_session(s: Session) -> Lun:
    return Lun(s, 1)


def lun_over_paths(template: Lun) -> DeviceSession:
    return MultipathDevice(template).session
'''


def test_session_and_path_group_are_device_sessions(tmp_path):
    check = tmp_path / "conformance.py"
    check.write_text(CONFORMANCE)
    result = mypy(tmp_path, PACKAGE / "device.py", PACKAGE / "multipath.py", check)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_session_without_execute_is_a_type_error(tmp_path):
    check = tmp_path / "misfit.py"
    check.write_text("from iscsifs.device import Lun\n\n\n"
                     "class OnlyState:\n    logged_in = True\n\n\n"
                     "def lun(x: OnlyState) -> Lun:\n    return Lun(x, 1)\n")
    result = mypy(tmp_path, check)
    assert result.returncode == 1 and "DeviceSession" in result.stdout, result.stdout
