"""The demo (``bash scripts/demo``, or ``python -m iscsifs_testbed.demo`` in a checkout): the
whole product on a throwaway local target.

Starts a private tgtd on 127.0.0.1 (a free port, its own control port) with a scratch target of
two LUNs backed by sparse files in a temp dir, then does what an admin would: discovery, mount,
browse the tree, read the session file, write and read back data with dd, check it with cmp
against the backing file, fsync, unmount. Every command is printed before it runs, like a
shell session. Everything it started is stopped (by PID) and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .tgtd import Tgtd, missing_requirements

DEMO_IQN = "iqn.2026-11.org.iscsifs.demo:scratch"
MiB = 1 << 20


def _run(cmd: list[str], *, check: bool = True, quiet_output: bool = False) -> str:
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = (proc.stdout + proc.stderr).rstrip()
    if out and not quiet_output:
        print(out, flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"iscsifs-demo: {cmd[0]} failed with exit {proc.returncode}")
    return proc.stdout


def _bin(name: str) -> str:
    """A console script next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def _wait_mounted(path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"iscsifs-demo: {path} did not get mounted within {timeout:g} s")
        time.sleep(0.05)


def run(keep: bool = False, mountpoint: str | None = None) -> int:
    reason = missing_requirements()
    if reason:
        print(f"iscsifs-demo: {reason}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="iscsifs-demo."))
    mnt = mountpoint or str(work / "san")
    os.makedirs(mnt, exist_ok=True)
    tgtd = Tgtd(workdir=work / "tgtd")
    mounted = False
    try:
        tgtd.start()
        lun1 = tgtd.make_backing_file("scratch-lun1.img", 64 * MiB, "zero")
        lun2 = tgtd.make_backing_file("scratch-lun2.img", 16 * MiB, "zero")
        tgtd.add_target(1, DEMO_IQN)
        tgtd.add_lun(1, 1, lun1, blocksize=512)
        tgtd.add_lun(1, 2, lun2, blocksize=4096)
        tgtd.bind(1, "ALL")
        portal = tgtd.portal
        print(f"# throwaway tgtd (pid {tgtd.pid}) serving {DEMO_IQN} at {portal}: "
              f"LUN 1 64 MiB (512 B blocks), LUN 2 16 MiB (4096 B blocks)\n", flush=True)
        env_cfg = str(work / "config")
        os.environ["ISCSIFS_CONFIG_DIR"] = env_cfg
        _run([_bin("iscsifs"), "discover", portal])
        log_file = work / "mount.log"
        _run([_bin("mount.iscsifs"), portal, mnt, "-o",
              f"config_dir={env_cfg},logfile={log_file}"])
        mounted = True
        _wait_mounted(mnt)
        tdir = f"{mnt}/portals/{portal}/targets/{DEMO_IQN}"
        _run(["ls", "-l", f"{tdir}/luns/1"])
        _run(["find", mnt, "-mindepth", "1"])
        _run(["cat", f"{tdir}/luns/1/info"])
        sample = work / "sample.bin"
        sample.write_bytes(os.urandom(4 * MiB))
        _run(["dd", f"if={sample}", f"of={tdir}/luns/1/raw", "bs=1M", "seek=3",
              "conv=notrunc,fsync", "status=none"])
        _run(["cmp", "-n", str(4 * MiB), "-i", f"0:{3 * MiB}", str(sample), str(lun1)])
        print("# cmp: the backing file on the target holds what dd wrote", flush=True)
        _run(["dd", f"if={tdir}/luns/1/raw", "of=/dev/null", "bs=1M", "iflag=direct"])
        if shutil.which("qemu-img"):
            _run(["qemu-img", "info", "-f", "raw", f"{tdir}/luns/2/raw"])
        _run(["cat", f"{tdir}/session"])
        _run([_bin("iscsifs"), "session", mnt])
        if keep:
            print(f"\n# mounted at {mnt}; press Ctrl-C to unmount and stop the target",
                  flush=True)
            try:
                while os.path.ismount(mnt):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        _run(["umount", mnt])
        mounted = False
        deadline = time.monotonic() + 20      # umount returns before the daemon logs out
        while "logged out of" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        sessions = tgtd.show_connections(1)
        print(f"# after umount the target has {len(sessions)} session(s)", flush=True)
        _run(["grep", "-E", "logged (in to|out of)", str(log_file)])
        return 0
    finally:
        if mounted and os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True, timeout=30)
        tgtd.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iscsifs-demo",
        description="Run iscsifs against a throwaway local tgtd target (needs root and tgt).")
    parser.add_argument("--keep", action="store_true", help="stay mounted until Ctrl-C")
    parser.add_argument("mountpoint", nargs="?", help="where to mount (default: a temp dir)")
    args = parser.parse_args(argv)
    return run(args.keep, args.mountpoint)


if __name__ == "__main__":
    sys.exit(main())
