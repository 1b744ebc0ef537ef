#!/usr/bin/env python3
"""iscsifs benchmark: throughput, IOPS and memory of a real mount on a private tgtd.

Run as root: ``.venv/bin/python bench/bench.py`` (or ``bash bench/run``). It starts a private
tgtd with one LUN on /dev/shm (tmpfs, so the disk is never the bottleneck), mounts it with
mount.iscsifs once per cache mode, and runs the same fio / dd / qemu-img set on each mount.
Output: one ``name value unit`` line per measurement on stdout (MB/s = 10^6 bytes/s, IOPS,
MiB); progress on stderr. Speed goals live here, never in the unit tests.

Knobs (environment): BENCH_SIZE_MIB=1024 (LUN size), BENCH_RUNTIME=8 (seconds per fio job),
BENCH_MODES="direct page" (mount cache modes), BENCH_KEEP=1 (keep the work dir).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iscsifs.localtarget import Tgtd, missing_requirements  # noqa: E402

IQN = "iqn.2026-11.org.iscsifs.bench:lun"
SIZE = int(os.environ.get("BENCH_SIZE_MIB", "1024")) * 1024 * 1024
RUNTIME = int(os.environ.get("BENCH_RUNTIME", "8"))
MODES = os.environ.get("BENCH_MODES", "direct page").split()


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str) -> None:
    print(f"{name:<44} {value:12.1f} {unit}", flush=True)


def fio(name: str, path: str, rw: str, bs: str, qd: int, direct: int, *, engine="psync",
        time_based=True, extra=()) -> dict:
    escaped = path.replace(":", "\\:")          # ':' separates file names for fio
    args = ["fio", f"--name={name}", f"--filename={escaped}", f"--rw={rw}", f"--bs={bs}",
            f"--iodepth={qd}", f"--ioengine={engine}", f"--direct={direct}",
            f"--size={SIZE}", "--numjobs=1", f"--runtime={RUNTIME}", "--allow_file_create=0",
            "--fallocate=none", "--randrepeat=0", "--norandommap", "--output-format=json",
            *extra]
    if time_based:
        args.append("--time_based")
    out = subprocess.run(args, capture_output=True, text=True, timeout=RUNTIME + 300)
    if out.returncode != 0:
        raise RuntimeError(f"fio {name}: {out.stderr.strip()[:300]}")
    text = out.stdout
    job = json.loads(text[text.index("{"):])["jobs"][0]
    return job["write" if "write" in rw else "read"]


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return time.monotonic() - start


def daemon_pid(mnt: str) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"mount.iscsifs .* {mnt}"], capture_output=True,
                         text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def peak_rss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_mode(mode: str, portal: str, work: Path) -> None:
    mnt = work / f"mnt-{mode}"
    mnt.mkdir()
    cfg = work / "config"
    cfg.mkdir(exist_ok=True)
    subprocess.run([shutil.which("mount.iscsifs") or "mount.iscsifs", portal, str(mnt),
                    "-o", f"cache={mode},config_dir={cfg}"], check=True, timeout=60)
    try:
        raw = f"{mnt}/portals/{portal}/targets/{IQN}/luns/1/raw"
        deadline = time.monotonic() + 30
        while not os.path.exists(raw):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{raw} did not appear")
            time.sleep(0.1)
        pid = daemon_pid(str(mnt))
        p = f"{mode}"
        log(f"{mode}: fio jobs on {raw}")
        r = fio(f"{p}.seqread_1m", raw, "read", "1M", 1, 1)
        emit(f"{p}.seqread_1m_qd1_direct", r["bw_bytes"] / 1e6, "MB/s")
        r = fio(f"{p}.seqwrite_1m", raw, "write", "1M", 1, 1)
        emit(f"{p}.seqwrite_1m_qd1_direct", r["bw_bytes"] / 1e6, "MB/s")
        r = fio(f"{p}.seqread_1m_buf", raw, "read", "1M", 1, 0)
        emit(f"{p}.seqread_1m_qd1_buffered", r["bw_bytes"] / 1e6, "MB/s")
        for qd in (1, 16):
            r = fio(f"{p}.randread_4k_qd{qd}", raw, "randread", "4k", qd, 1, engine="libaio")
            emit(f"{p}.randread_4k_qd{qd}_direct", r["iops"], "IOPS")
        r = fio(f"{p}.randwrite_4k_qd16", raw, "randwrite", "4k", 16, 1, engine="libaio")
        emit(f"{p}.randwrite_4k_qd16_direct", r["iops"], "IOPS")
        wall = timed(["dd", f"if={raw}", "of=/dev/null", "bs=1M"])
        emit(f"{p}.dd_read_whole_lun", SIZE / wall / 1e6, "MB/s")
        if shutil.which("qemu-img"):
            wall = timed(["qemu-img", "convert", "-n", "-f", "raw", raw, "--target-image-opts",
                          f"driver=null-co,size={SIZE}"])
            emit(f"{p}.qemu_img_convert_read", SIZE / wall / 1e6, "MB/s")
        log(f"{mode}: fio --verify")
        fio(f"{p}.verify", raw, "randwrite", "64k", 8, 1, engine="libaio", time_based=False,
            extra=["--verify=crc32c", "--do_verify=1", "--verify_state_save=0", f"--size={min(SIZE, 256 << 20)}"])
        emit(f"{p}.fio_verify_ok", 1, "bool")
        emit(f"{p}.daemon_peak_rss", peak_rss_mib(pid), "MiB")
    finally:
        subprocess.run(["umount", str(mnt)], timeout=60)


def main() -> int:
    reason = missing_requirements()
    if reason or shutil.which("fio") is None:
        print(f"bench: cannot run: {reason or 'fio missing'}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="iscsifs-bench."))
    lun = Path("/dev/shm") / f"iscsifs-bench.{os.getpid()}.lun"
    tgtd = Tgtd(workdir=work / "tgtd")
    try:
        log(f"filling {lun} ({SIZE >> 20} MiB)")
        subprocess.run(["head", "-c", str(SIZE), "/dev/urandom"], stdout=lun.open("wb"),
                       check=True)
        tgtd.start()
        tgtd.add_target(1, IQN)
        tgtd.add_lun(1, 1, lun, blocksize=512)
        tgtd.bind(1, "ALL")
        print(f"# iscsifs bench: LUN {SIZE >> 20} MiB on tmpfs, runtime {RUNTIME}s, "
              f"portal {tgtd.portal}, cpus {os.cpu_count()}")
        for mode in MODES:
            run_mode(mode, tgtd.portal, work)
        return 0
    finally:
        tgtd.stop()
        lun.unlink(missing_ok=True)
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
