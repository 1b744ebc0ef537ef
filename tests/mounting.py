"""Real mounts for the t5 tests: ``mount.iscsifs`` run as users run it (it daemonizes and
returns once the file system is ready, or failed), and unmounting that checks the target saw
every session go (unmount must log out).

    m = mount(tmp_path / "mnt", portal, "config_dir=...", tgtd=tgtd, tids=[tid])
    with m: ...                     # or m.unmount(): fusermount3 -u, bounded waits

Every wait is bounded (``helpers.wait_for``); nothing here sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from helpers import wait_for

HELPER = Path(__file__).resolve().parent.parent / "mount.iscsifs"


def run_helper(spec: str, mountpoint: Path, *args: str,
               timeout: float = 60) -> subprocess.CompletedProcess:
    """``mount.iscsifs SPEC MOUNTPOINT ARGS...`` (daemonized unless ARGS say otherwise)."""
    return subprocess.run([sys.executable, str(HELPER), spec, str(mountpoint), *args],
                          capture_output=True, text=True, timeout=timeout)


def no_sessions(tgtd, tids: Iterable[int]) -> bool:
    """None of these targets of our private tgtd shows a connection."""
    return all(not tgtd.show_connections(tid) for tid in tids)


def unmount(path: Path, tgtd=None, tids: Iterable[int] = (), timeout: float = 20) -> None:
    """``fusermount3 -u`` (if mounted), then wait until it is gone and, with ``tgtd``, until
    ``tids`` show no session."""
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", str(path)], check=False, capture_output=True,
                       timeout=30)
    assert wait_for(lambda: not os.path.ismount(path), timeout=timeout), "still mounted"
    if tgtd is not None:
        tids = list(tids)
        assert wait_for(lambda: no_sessions(tgtd, tids), timeout=timeout), \
            "a session survived the unmount"


class Mount:
    """A mounted iscsifs: its paths, its daemon, and unmounting it (also as a context
    manager). ``log`` and ``config_dir`` are what its ``logfile=`` / ``config_dir=`` said."""

    def __init__(self, path: Path, portal: str, tgtd=None, tids: Iterable[int] = (), *,
                 result: subprocess.CompletedProcess | None = None,
                 log: Path | None = None, config_dir: Path | None = None):
        self.path = path
        self.portal = portal
        self.tgtd = tgtd
        self.tids = list(tids)
        self.result = result
        self.log = log
        self.config_dir = config_dir

    @property
    def stderr(self) -> str:
        return self.result.stderr if self.result is not None else ""

    @property
    def targets(self) -> Path:
        return self.path / "portals" / self.portal / "targets"

    def target(self, iqn: str) -> Path:
        return self.targets / iqn

    def raw(self, iqn: str, lun: int) -> Path:
        return self.target(iqn) / "luns" / str(lun) / "raw"

    def daemon_pid(self) -> int:
        """The PID of this mount's daemon (its command line names the mount point)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(self.path).encode() in argv and any(a.endswith(b"mount.iscsifs")
                                                      for a in argv):
                return int(entry)
        raise AssertionError(f"no daemon for {self.path}")

    def unmount(self) -> None:
        unmount(self.path, self.tgtd, self.tids)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()


def mount(path: Path, portal: str, *options: str, flags: Iterable[str] = (), tgtd=None,
          tids: Iterable[int] = (), timeout: float = 90) -> Mount:
    """Mount ``portal`` (a portal or a comma-separated list) on ``path`` (created if
    missing) with ``-o OPTIONS`` and ``flags``; asserts that it mounted."""
    path.mkdir(parents=True, exist_ok=True)
    args = [*flags] + (["-o", ",".join(options)] if options else [])
    result = run_helper(portal, path, *args, timeout=timeout)
    assert result.returncode == 0, result.stderr
    assert os.path.ismount(path)
    given = dict(o.split("=", 1) for o in options if "=" in o)
    return Mount(path, portal, tgtd, tids, result=result,
                 log=Path(given["logfile"]) if "logfile" in given else None,
                 config_dir=Path(given["config_dir"]) if "config_dir" in given else None)
