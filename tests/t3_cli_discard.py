"""``iscsifs discard`` without a mount: sizes, refusals before anything is sent, and the map
from the mount's errno to one line and iscsiadm's exit code (the real discard: t5_identity.py)."""

from __future__ import annotations

import errno

import pytest

from helpers import run_iscsifs
from iscsifs.cli.discard import MEANING, parse_size
from iscsifs.errors import QuietError
from iscsifs.exits import file_error


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("4096", 4096), ("1K", 1024), ("1KiB", 1024), ("1KB", 1000), ("3M", 3 << 20),
    ("2MiB", 2 << 20), ("1GB", 10**9), ("1g", 1 << 30), ("1T", 1 << 40), (" 7 ", 7),
])
def test_sizes_as_blkdiscard_takes_them(text, value):
    assert parse_size(text, "offset") == value


@pytest.mark.parametrize("text", ["", "-1", "1.5M", "M", "1X", "0x10", "1 M B"])
def test_bad_sizes_are_exit_7(text):
    with pytest.raises(QuietError) as info:
        parse_size(text, "length")
    assert info.value.exit_code == 7 and "bad length" in str(info.value)


def test_a_file_outside_iscsifs_is_refused(tmp_path):
    f = tmp_path / "plain"
    f.write_bytes(bytes(4096))
    r = run_iscsifs(tmp_path, "discard", str(f))
    assert r.returncode == 7
    assert r.stderr == f"iscsifs: discard {f}: not a raw or by-id file of an iscsifs mount\n"
    r = run_iscsifs(tmp_path, "discard", str(tmp_path / "missing"))
    assert r.returncode == 7 and "No such file or directory" in r.stderr
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("code, exit_code, words", [
    (errno.EOPNOTSUPP, 27, "supports neither UNMAP nor WRITE SAME with UNMAP"),
    (errno.ENOSPC, 7, "runs past the end"),
    (errno.EINVAL, 7, "bad range"),
    (errno.EROFS, 13, "write-protected or the mount is read-only"),
    (errno.EACCES, 13, "Permission denied"),
    (errno.EIO, 1, "I/O error"),
    (errno.ENOTCONN, 4, "not connected"),
    (errno.ETIMEDOUT, 4, "timed out"),
])
def test_errno_from_the_mount_becomes_one_line_and_an_iscsiadm_code(code, exit_code, words):
    err = file_error(OSError(code, "x"), "/mnt/san/raw", doing="discard", meaning=MEANING)
    assert err.exit_code == exit_code
    assert str(err).startswith("discard /mnt/san/raw: ") and words in str(err)
    assert "\n" not in str(err)
