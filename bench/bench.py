#!/usr/bin/env python3
"""iscsifs benchmark: iscsifs against qemu-storage-daemon's FUSE export and a null pyfuse3
file system (the ceiling), all three on the same private tgtd LUN, in one run.

Run as root: ``bash bench/run`` (or ``.venv/bin/python bench/bench.py``).

* One private tgtd (own control port, free iSCSI port on 127.0.0.1), one LUN of 1 GiB with 512 B
  blocks, random data, backed by a file on /dev/shm so the disk is never the bottleneck.
* Three subjects, all mounted for the whole run:
    iscsifs  ``mount.iscsifs PORTAL MNT -o foreground,config_dir=...`` (+ BENCH_MOUNT_OPTS), a
             child of this script, so its CPU time is counted
    qemu     ``qemu-storage-daemon --blockdev driver=iscsi,... --export type=fuse,...`` (libiscsi,
             C), exactly as ../shared/bench/anchors.sh starts it
    null     bench/nullfs.py: read returns a constant buffer, write returns len(buf)
* For each measure, for each round, the job runs on each subject in turn (the first subject
  rotates from round to round), so drift hits all three alike. The median of the rounds is
  reported.

Output (stdout), one ``name value unit`` line each; '#' lines are comments, progress is on
stderr. MB/s = 10^6 bytes/s.
    <subject>.<measure>            MB/s or IOPS
    ratio.<measure>                iscsifs / qemu
    ceiling.<measure>              iscsifs / null
    cpu.<subject>.<measure>        daemon CPU (user+system, its threads and children) s per GiB
    cpu_io.<subject>.<measure>     daemon CPU µs per I/O (4 KiB measures)
    rss.<subject>.after_seqread_1m_qd16   daemon VmRSS right after the qd16 x 1 MiB job (max)
    rss.<subject>.hwm_after_seqread_1m_qd16  daemon VmHWM at that point
    rss.<subject>.peak             daemon VmHWM at the end of the run
    verify.iscsifs.*               1 if fio --verify=crc32c passed on iscsifs (one job per
                                   shape of the measures: 64 KiB and 4 KiB at qd16, the 70/30
                                   mix, 1 MiB qd16, 16 threads, unaligned 1000 B)
and at the end a markdown table for docs/performance.md.

Knobs (environment):
    BENCH_RUNTIME=5      seconds per time-based fio job
    BENCH_ROUNDS=3       rounds (median of them)
    BENCH_ONLY=a,b       only these measures (names below)
    BENCH_SUBJECTS=iscsifs,qemu,null   a subset
    BENCH_MOUNT_OPTS=    extra -o options for mount.iscsifs (e.g. cache=page)
    BENCH_VERIFY=1       0 skips the fio --verify jobs on iscsifs
    BENCH_SIZE_MIB=1024  LUN size
    BENCH_KEEP=1         keep the work dir (fio json, daemon logs)
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from _target import Tgtd, missing_requirements  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
IQN = "iqn.2026-11.org.iscsifs.bench:lun"
INITIATOR = "iqn.2026-11.org.iscsifs.bench:initiator"
SIZE = int(os.environ.get("BENCH_SIZE_MIB", "1024")) * MiB
RUNTIME = int(os.environ.get("BENCH_RUNTIME", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
MOUNT_OPTS = os.environ.get("BENCH_MOUNT_OPTS", "").strip(",")
VERIFY = os.environ.get("BENCH_VERIFY", "1") != "0"
KEEP = os.environ.get("BENCH_KEEP", "0") == "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 60.0        # s for a subject to come up
ONE_PASS_TIMEOUT = 300      # s for one whole-LUN pass (dd, qemu-img, buffered fio)
STUCK_GRACE = 10.0          # s a killed job gets to go away before its daemon is killed
PROBE_TIMEOUT = 15          # s for a stat + 4 KiB read of a subject's file
PROBE = """import os, sys
f, size = sys.argv[1], int(sys.argv[2])
if os.stat(f).st_size != size:
    sys.exit(1)
fd = os.open(f, os.O_RDONLY)
sys.exit(0 if len(os.pread(fd, 4096, 0)) == 4096 else 1)
"""

SUBJECTS = ("iscsifs", "qemu", "null")


@dataclass(frozen=True)
class Measure:
    name: str
    kind: str               # fio (time based) | fio_once | dd | qemu_img
    unit: str               # MB/s | IOPS
    rw: str = "read"
    bs: str = "1M"
    engine: str = "psync"
    qd: int = 1
    direct: int = 1
    jobs: int = 1           # fio numjobs (threads of one group)
    mix: int = 0            # randrw: percent of reads

    @property
    def small(self) -> bool:
        return self.unit == "IOPS"


MEASURES = [
    Measure("seqread_1m_qd1_direct", "fio", "MB/s", "read", "1M", "psync", 1, 1),
    Measure("seqread_1m_qd16", "fio", "MB/s", "read", "1M", "libaio", 16, 1),
    Measure("seqread_1m_buffered", "fio_once", "MB/s", "read", "1M", "psync", 1, 0),
    Measure("randread_4k_qd1", "fio", "IOPS", "randread", "4k", "psync", 1, 1),
    Measure("randread_4k_qd16", "fio", "IOPS", "randread", "4k", "libaio", 16, 1),
    Measure("seqwrite_1m_qd1", "fio", "MB/s", "write", "1M", "psync", 1, 1),
    Measure("randwrite_4k_qd1", "fio", "IOPS", "randwrite", "4k", "psync", 1, 1),
    # the wide set (what VMs and databases do), as ../shared/bench/anchors.sh BENCH_WIDE=1
    Measure("randread_64k_qd16", "fio", "IOPS", "randread", "64k", "libaio", 16, 1),
    Measure("randwrite_4k_qd16", "fio", "IOPS", "randwrite", "4k", "libaio", 16, 1),
    Measure("randrw70_4k_qd16", "fio", "IOPS", "randrw", "4k", "libaio", 16, 1, mix=70),
    Measure("seqwrite_1m_qd16", "fio", "MB/s", "write", "1M", "libaio", 16, 1),
    # 16 threads writing 4 KiB O_DIRECT (qemu's thread pool, databases): parallel direct writes
    Measure("randwrite_4k_16threads", "fio", "IOPS", "randwrite", "4k", "psync", 1, 1, jobs=16),
    Measure("dd_read", "dd", "MB/s"),
    Measure("qemu_img_convert_read", "qemu_img", "MB/s"),
]
RSS_MEASURE = "seqread_1m_qd16"


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float | None, unit: str) -> None:
    text = "n/a" if value is None else (f"{value:.3f}" if unit.startswith("x") else f"{value:.1f}")
    print(f"{name:<52} {text:>12} {unit}", flush=True)


def comment(text: str) -> None:
    print(f"# {text}", flush=True)


T0 = time.monotonic()


# ---------------------------------------------------------------- processes and /proc
def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime ticks of the whole process, all its threads)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        f = text.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(f[1]), int(f[11]) + int(f[12]))
    return table


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user+system) of pid, its threads and its live descendants."""
    if pid is None:
        return 0.0
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for p, (pp, _) in table.items():
        kids.setdefault(pp, []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += table.get(p, (0, 0))[1]
        todo.extend(kids.get(p, ()))
    return total / CLK_TCK


def proc_status_kib(pid: int | None, key: str) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def mounted(path: Path) -> bool:
    want = str(path)
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[4].replace("\\040", " ") == want:
                return True
    except OSError:
        pass
    return False


def mount_options(path: Path) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == str(path):
            return f"{f[5]} | {f[-1]}"
    return "?"


def _pdeathsig_term() -> None:     # in the child: SIGTERM it if this script dies
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def wait_pid(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def run_bounded(cmd: list[str], timeout: float, *, stdout=subprocess.DEVNULL,
                stderr_path: Path | None = None, on_stuck=None) -> tuple[int | None, str]:
    """Run cmd with a hard bound. On timeout: SIGKILL it; if it still hangs (a process blocked in
    a FUSE request cannot die before the daemon answers), call on_stuck() (kills the daemon) and
    wait again. Returns (exit code or None, stderr tail)."""
    err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err)
    finally:
        if stderr_path:
            err.close()
    tail = ""
    try:
        done = wait_pid(proc, timeout)
    except BaseException:          # Ctrl-C, SIGTERM: do not leave the job behind
        proc.kill()
        wait_pid(proc, STUCK_GRACE)
        raise
    if done:
        rc = proc.returncode
    else:
        proc.kill()
        if not wait_pid(proc, STUCK_GRACE) and on_stuck is not None:
            on_stuck()
            wait_pid(proc, STUCK_GRACE)
        rc, tail = None, f"timed out after {timeout:.0f}s; "
    if stderr_path:
        try:
            tail += stderr_path.read_bytes()[-400:].decode(errors="replace").strip()
        except OSError:
            pass
    return rc, tail


# ---------------------------------------------------------------- subjects
class SubjectDown(RuntimeError):
    pass


@dataclass
class Subject:
    name: str
    work: Path
    portal: str = ""
    proc: subprocess.Popen | None = None
    mnt: Path | None = None
    path: Path | None = None        # the colon-free file every job uses
    failed: str | None = None
    log_path: Path | None = None
    rss_after: list[float] = field(default_factory=list)
    hwm_after: list[float] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- start
    def command(self) -> list[str]:
        raise NotImplementedError

    def file_ready(self) -> Path | None:
        raise NotImplementedError

    def start(self) -> None:
        self.log_path = self.work / f"{self.name}.log"
        cmd = self.command()
        log(f"{self.name}: {shlex.join(cmd)}")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True, preexec_fn=_pdeathsig_term)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if not self.alive():
                raise SubjectDown(f"exited with {self.proc.returncode}: {self.log_tail()}")
            f = self.file_ready()
            if f is not None and self.probe(f):
                break
            if time.monotonic() > deadline:
                raise SubjectDown(f"not ready after {READY_TIMEOUT:.0f}s: {self.log_tail()}")
            time.sleep(0.2)
        link = self.work / f"{self.name}.raw"     # colon-free name for fio, dd and qemu-img
        if f != link:
            link.symlink_to(f)
        self.path = link

    def probe(self, f: Path) -> bool:
        """f has the LUN's size and its first 4 KiB can be read. In a child process: this
        script never touches a subject's files itself, so a hung daemon cannot hang it."""
        rc, _ = run_bounded([sys.executable, "-c", PROBE, str(f), str(SIZE)], PROBE_TIMEOUT,
                            on_stuck=self.kill_daemon)
        if rc is None:
            self.kill_daemon()
            raise SubjectDown(f"{f} did not answer within {PROBE_TIMEOUT}s: {self.log_tail()}")
        return rc == 0

    def log_tail(self, n: int = 500) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace").strip().replace("\n", " | ")
        except (OSError, AttributeError):
            return ""

    # -- stop
    def graceful_stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is not None and self.failed and self.alive():
            log(f"{self.name}: failed earlier ({self.failed[:80]}); SIGKILL")
            self.proc.kill()
            wait_pid(self.proc, 10)
        if self.proc is not None:
            self.graceful_stop()
            if not wait_pid(self.proc, 30):
                log(f"{self.name}: still running 30s after stop; SIGTERM")
                self.proc.terminate()
                if not wait_pid(self.proc, 10):
                    log(f"{self.name}: SIGKILL")
                    self.proc.kill()
                    wait_pid(self.proc, 10)
        if self.mnt is not None and mounted(self.mnt):
            log(f"{self.name}: {self.mnt} still mounted; unmounting")
            for cmd in (["fusermount3", "-u", str(self.mnt)], ["umount", str(self.mnt)],
                        ["umount", "-l", str(self.mnt)]):
                run_bounded(cmd, 20)
                if not mounted(self.mnt):
                    break

    def kill_daemon(self) -> None:
        """A job is stuck in a FUSE request: end the daemon so the kernel fails the request."""
        if self.alive():
            log(f"{self.name}: a job is stuck; killing the daemon (pid {self.pid})")
            self.proc.kill()
            wait_pid(self.proc, 10)
        self.failed = self.failed or "killed: a job was stuck in it"


class Iscsifs(Subject):
    def command(self) -> list[str]:
        self.mnt = self.work / "iscsifs"
        self.mnt.mkdir()
        cfg = self.work / "iscsifs-config"
        cfg.mkdir()
        opts = (f"foreground,config_dir={cfg},initiator_name={INITIATOR}"
                + (f",{MOUNT_OPTS}" if MOUNT_OPTS else ""))       # later options win
        exe = shutil.which("mount.iscsifs") or str(REPO / ".venv/bin/mount.iscsifs")
        return [exe, self.portal, str(self.mnt), "-o", opts]

    def file_ready(self) -> Path | None:
        f = self.mnt / "portals" / self.portal / "targets" / IQN / "luns" / "1" / "raw"
        return f if mounted(self.mnt) else None

    def graceful_stop(self) -> None:       # umount: iscsifs logs out, then exits
        if self.alive() and mounted(self.mnt):
            rc, err = run_bounded(["umount", str(self.mnt)], 30, stderr_path=self.work / "umount.err")
            if rc == 0:
                return
            log(f"iscsifs: umount failed ({err}); SIGTERM")
        super().graceful_stop()


class Qemu(Subject):
    def command(self) -> list[str]:
        self.mnt = self.work / "qemu.raw"
        self.mnt.touch()
        host, port = self.portal.rsplit(":", 1)
        return ["qemu-storage-daemon",
                "--blockdev", f"driver=iscsi,node-name=lun0,transport=tcp,portal={host}:{port},"
                              f"target={IQN},lun=1",
                "--export", f"type=fuse,id=exp0,node-name=lun0,mountpoint={self.mnt},writable=on"]

    def file_ready(self) -> Path | None:
        return self.mnt if mounted(self.mnt) else None


class Null(Subject):
    def command(self) -> list[str]:
        self.mnt = self.work / "null"
        self.mnt.mkdir()
        return [sys.executable, str(HERE / "nullfs.py"), str(self.mnt), str(SIZE)]

    def file_ready(self) -> Path | None:
        return self.mnt / "lun" if mounted(self.mnt) else None


# ---------------------------------------------------------------- jobs
@dataclass
class Sample:
    value: float
    cpu_per_gib: float | None
    cpu_us_per_io: float | None


def drop_cache(s: Subject) -> None:
    """Drop the page cache of the subject's file (POSIX_FADV_DONTNEED), in a child process."""
    rc, _ = run_bounded(["dd", f"if={s.path}", "iflag=nocache", "count=0", "status=none"],
                        PROBE_TIMEOUT, on_stuck=s.kill_daemon)
    if rc is None:
        raise SubjectDown(f"stalled: dropping the page cache of {s.path} took > {PROBE_TIMEOUT}s")


def run_job(m: Measure, s: Subject, rnd: int, work: Path) -> Sample:
    """One run of one measure on one subject; raises RuntimeError on failure."""
    if not s.alive():
        raise SubjectDown(f"daemon exited ({s.proc.returncode if s.proc else '?'}): {s.log_tail()}")
    tag = f"{m.name}.{s.name}.{rnd}"
    path = str(s.path)
    err = work / f"{tag}.err"
    if m.kind in ("fio_once", "dd", "qemu_img"):
        drop_cache(s)
    cpu0 = tree_cpu_seconds(s.pid)
    t0 = time.monotonic()
    if m.kind.startswith("fio"):
        out = work / f"{tag}.json"
        args = ["fio", f"--name={m.name}", f"--filename={path.replace(':', chr(92) + ':')}",
                f"--rw={m.rw}", f"--bs={m.bs}", f"--ioengine={m.engine}", f"--iodepth={m.qd}",
                f"--direct={m.direct}", f"--size={SIZE}", f"--numjobs={m.jobs}",
                "--group_reporting", "--allow_file_create=0",
                "--fallocate=none", "--randrepeat=0", "--norandommap", "--output-format=json",
                f"--output={out}"]
        if m.mix:
            args.append(f"--rwmixread={m.mix}")
        if "write" not in m.rw and m.rw != "randrw":
            args.append("--readonly")
        if m.kind == "fio":
            args += [f"--runtime={RUNTIME}", "--time_based"]
            timeout = RUNTIME + 60
        else:
            args.append("--invalidate=1")
            timeout = ONE_PASS_TIMEOUT
        rc, tail = run_bounded(args, timeout, stderr_path=err, on_stuck=s.kill_daemon)
        cpu = tree_cpu_seconds(s.pid) - cpu0
        if rc is None:
            raise SubjectDown(f"stalled: fio {tail}")
        if rc != 0:
            raise RuntimeError(f"fio exit {rc}: {tail}")
        text = out.read_text()
        both = json.loads(text[text.index("{"):])["jobs"][0]
        parts = [both["read"], both["write"]] if m.rw == "randrw" else \
            [both["write" if "write" in m.rw else "read"]]
        nbytes = sum(j.get("io_bytes", 0) for j in parts)
        if nbytes <= 0:
            raise RuntimeError("fio moved no data")
        value = sum(j["iops"] for j in parts) if m.unit == "IOPS" else \
            sum(j["bw_bytes"] for j in parts) / 1e6
        nios = sum(j["total_ios"] for j in parts)
    else:
        if m.kind == "dd":
            cmd = ["dd", f"if={path}", "of=/dev/null", "bs=1M"]
        else:
            cmd = ["qemu-img", "convert", "-U", "-n", "-f", "raw", path, "--target-image-opts",
                   f"driver=null-co,size={SIZE}"]
        rc, tail = run_bounded(cmd, ONE_PASS_TIMEOUT, stderr_path=err, on_stuck=s.kill_daemon)
        wall = time.monotonic() - t0
        cpu = tree_cpu_seconds(s.pid) - cpu0
        if rc is None:
            raise SubjectDown(f"stalled: {cmd[0]} {tail}")
        if rc != 0:
            raise RuntimeError(f"{cmd[0]} exit {rc}: {tail}")
        value, nbytes, nios = SIZE / wall / 1e6, SIZE, 0
    if m.name == RSS_MEASURE:
        rss, hwm = proc_status_kib(s.pid, "VmRSS"), proc_status_kib(s.pid, "VmHWM")
        if rss is not None:
            s.rss_after.append(rss / 1024)
            s.hwm_after.append(hwm / 1024)
    return Sample(value, cpu / (nbytes / GiB) if nbytes else None,
                  cpu * 1e6 / nios if (m.small and nios) else None)


def median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verify(s: Subject, work: Path) -> None:
    """fio --verify=crc32c on iscsifs: the speed must not come from a broken path."""
    region = f"--size={min(SIZE, 128 * MiB)}"
    jobs = [
        # one per shape of the measures, so that none of them is fast by being wrong
        ("randwrite_64k_qd16", ["--rw=randwrite", "--bs=64k", "--ioengine=libaio",
                                "--iodepth=16", "--direct=1", region]),
        ("randwrite_4k_qd16", ["--rw=randwrite", "--bs=4k", "--ioengine=libaio", "--iodepth=16",
                               "--direct=1", region]),
        ("randrw70_4k_qd16", ["--rw=randrw", "--rwmixread=70", "--bs=4k", "--ioengine=libaio",
                              "--iodepth=16", "--direct=1", region]),
        ("seqwrite_1m_qd16", ["--rw=write", "--bs=1M", "--ioengine=libaio", "--iodepth=16",
                              "--direct=1", region]),
        # 16 threads, each verifying its own 8 MiB (the regions do not overlap)
        ("randwrite_4k_16threads", ["--rw=randwrite", "--bs=4k", "--ioengine=psync",
                                    "--numjobs=16", "--direct=1", f"--size={8 * MiB}",
                                    f"--offset_increment={8 * MiB}"]),
        # 1000 B at offsets that are multiples of 1000: read-modify-write of the edge blocks
        ("randwrite_1000b_unaligned", ["--rw=randwrite", "--bs=1000", "--ioengine=psync",
                                       "--iodepth=1", "--direct=0", "--offset=128M",
                                       f"--size={2 * MiB}"]),
    ]
    for name, extra in jobs:
        if not s.alive():
            emit(f"verify.{s.name}.{name}", 0, "bool")
            continue
        args = ["fio", f"--name=verify_{name}", f"--filename={s.path}", *extra,
                "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
                "--allow_file_create=0", "--fallocate=none", "--output-format=json",
                f"--output={work / f'verify.{name}.json'}"]
        log(f"{s.name}: fio --verify ({name})")
        rc, tail = run_bounded(args, ONE_PASS_TIMEOUT, stderr_path=work / f"verify.{name}.err",
                               on_stuck=s.kill_daemon)
        ok = rc == 0
        if not ok:
            comment(f"verify.{s.name}.{name} FAILED (exit {rc}): {tail}")
        emit(f"verify.{s.name}.{name}", 1 if ok else 0, "bool")


# ---------------------------------------------------------------- main
def header(tgtd, subjects: list[Subject]) -> None:
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except Exception:
            return "?"
    commit = first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    comment(f"iscsifs bench {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
            f"kernel {os.uname().release} cpus {os.cpu_count()} "
            f"loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    comment(f"iscsifs {commit} | {first_line(['fio', '--version'])} | "
            f"{first_line(['qemu-storage-daemon', '--version'])} | {first_line(['tgtd', '-V'])}")
    comment(f"tgtd pid {tgtd.pid} ctl {tgtd.ctl} portal {tgtd.portal}, LUN 1 {SIZE >> 20} MiB, "
            f"512 B blocks, on /dev/shm; runtime {RUNTIME}s, rounds {ROUNDS}, "
            f"BENCH_MOUNT_OPTS={MOUNT_OPTS or '(none)'}")
    for s in subjects:
        if s.failed:
            comment(f"{s.name}: DID NOT COME UP: {s.failed}")
        else:
            target = f" -> {os.readlink(s.path)}" if s.path.is_symlink() else ""
            comment(f"{s.name}: pid {s.pid}, file {s.path}{target}, "
                    f"mount {mount_options(s.mnt)}")


def table(results: dict, subjects: list[str], measures: list[Measure], mem: dict) -> None:
    def fmt(v, unit):
        if v is None:
            return "–"
        if unit in ("x",):
            return f"{v:.2f}"
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

    cols = ["iscsifs", "qemu", "null"]
    print()
    print("| measure | iscsifs | qemu-storage-daemon | null pyfuse3 | iscsifs/qemu | iscsifs/null |")
    print("|---|---:|---:|---:|---:|---:|")

    def row(label, vals, unit, lower_is_better=False):
        v = [vals.get(c) if c in subjects else None for c in cols]
        rq, rn = ratio(v[0], v[1]), ratio(v[0], v[2])
        print(f"| {label} | " + " | ".join(fmt(x, unit) for x in v)
              + f" | {fmt(rq, 'x')} | {fmt(rn, 'x')} |")

    for m in measures:
        row(f"{m.name} ({m.unit})", {s: results[m.name][s].get("value") for s in subjects}, m.unit)
    for m in measures:
        row(f"CPU {m.name} (s/GiB)", {s: results[m.name][s].get("cpu") for s in subjects}, "s")
    for m in measures:
        if m.small:
            row(f"CPU {m.name} (µs/IO)", {s: results[m.name][s].get("cpu_io") for s in subjects}, "us")
    for key, label in (("after", "RSS after qd16 × 1 MiB (MiB)"),
                       ("hwm_after", "peak RSS up to qd16 × 1 MiB (MiB)"),
                       ("peak", "peak RSS, whole run (MiB)")):
        row(label, {s: mem.get(s, {}).get(key) for s in subjects}, "MiB")
    print()
    print(f"Median of {ROUNDS} rounds, {RUNTIME} s per time-based fio job, 1 MB/s = 10^6 B/s, "
          f"LUN {SIZE >> 20} MiB on tmpfs behind tgtd. CPU = user+system time of the FUSE daemon "
          "(its threads and children); CPU and RSS rows: lower is better, a ratio above 1 means "
          "iscsifs uses more.")


def main() -> int:
    reason = missing_requirements()
    for tool in ("fio", "dd", "qemu-img", "qemu-storage-daemon", "umount", "fusermount3"):
        if reason is None and shutil.which(tool) is None:
            reason = f"{tool} is not on PATH"
    if reason is None and not os.path.exists("/dev/fuse"):
        reason = "/dev/fuse is missing"
    if reason:
        print(f"bench: cannot run: {reason}", file=sys.stderr)
        return 1
    only = [x for x in os.environ.get("BENCH_ONLY", "").replace(" ", ",").split(",") if x]
    names = [m.name for m in MEASURES]
    unknown = [x for x in only if x not in names]
    want_subjects = [x for x in os.environ.get("BENCH_SUBJECTS", ",".join(SUBJECTS))
                     .replace(" ", ",").split(",") if x]
    unknown += [x for x in want_subjects if x not in SUBJECTS]
    if unknown:
        print(f"bench: unknown measure/subject {unknown}; measures: {names}; subjects: {SUBJECTS}",
              file=sys.stderr)
        return 7
    measures = [m for m in MEASURES if not only or m.name in only]
    shm_free = shutil.disk_usage("/dev/shm").free
    if shm_free < SIZE + 64 * MiB:
        print(f"bench: /dev/shm has {shm_free >> 20} MiB free, needs {(SIZE >> 20) + 64}",
              file=sys.stderr)
        return 1

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    work = Path(tempfile.mkdtemp(prefix="iscsifs-bench."))
    lun = Path("/dev/shm") / f"iscsifs-bench.{os.getpid()}.lun"
    tgtd = Tgtd(workdir=work / "tgtd")
    subjects: list[Subject] = []
    try:
        log(f"filling {lun} with {SIZE >> 20} MiB of random data")
        with open(lun, "wb") as f:
            subprocess.run(["head", "-c", str(SIZE), "/dev/urandom"], stdout=f, check=True,
                           timeout=300)
        tgtd.start()
        tgtd.add_target(1, IQN)
        tgtd.add_lun(1, 1, lun, blocksize=512)
        tgtd.bind(1, "ALL")
        log(f"tgtd pid {tgtd.pid} on {tgtd.portal}")
        classes = {"iscsifs": Iscsifs, "qemu": Qemu, "null": Null}
        for name in SUBJECTS:
            if name not in want_subjects:
                continue
            s = classes[name](name, work, tgtd.portal)
            subjects.append(s)
            try:
                s.start()
            except (SubjectDown, OSError) as exc:
                s.failed = str(exc)
                log(f"{name}: did not come up: {exc}")
        header(tgtd, subjects)
        if not any(s.failed is None for s in subjects):
            comment("no subject came up")
            return 1

        results: dict[str, dict[str, dict]] = {}
        for m in measures:
            samples: dict[str, list[Sample]] = {s.name: [] for s in subjects}
            for rnd in range(ROUNDS):
                k = rnd % len(subjects)
                for s in subjects[k:] + subjects[:k]:
                    if s.failed:
                        continue
                    log(f"{m.name} round {rnd + 1}/{ROUNDS}: {s.name}")
                    try:
                        samples[s.name].append(run_job(m, s, rnd, work))
                    except SubjectDown as exc:
                        s.failed = str(exc)
                        comment(f"{s.name} went down during {m.name}: {exc}")
                    except (RuntimeError, OSError, ValueError, KeyError) as exc:
                        comment(f"{s.name}.{m.name} round {rnd + 1} failed: {exc}")
            results[m.name] = {}
            for s in subjects:
                got = samples[s.name]
                r = results[m.name][s.name] = {
                    "value": median([x.value for x in got]),
                    "cpu": median([x.cpu_per_gib for x in got]),
                    "cpu_io": median([x.cpu_us_per_io for x in got]),
                }
                emit(f"{s.name}.{m.name}", r["value"], m.unit)
                if len(got) > 1:
                    comment(f"{s.name}.{m.name} rounds: " + " ".join(f"{x.value:.1f}" for x in got))
            res = results[m.name]
            if "iscsifs" in res and "qemu" in res:
                emit(f"ratio.{m.name}", ratio(res["iscsifs"]["value"], res["qemu"]["value"]),
                     "x(iscsifs/qemu)")
            if "iscsifs" in res and "null" in res:
                emit(f"ceiling.{m.name}", ratio(res["iscsifs"]["value"], res["null"]["value"]),
                     "x(iscsifs/null)")
            for s in subjects:
                emit(f"cpu.{s.name}.{m.name}", res[s.name]["cpu"], "s/GiB")
                if m.small:
                    emit(f"cpu_io.{s.name}.{m.name}", res[s.name]["cpu_io"], "us/IO")

        mem: dict[str, dict] = {}
        for s in subjects:
            peak = proc_status_kib(s.pid, "VmHWM") if s.alive() else None
            mem[s.name] = {"after": max(s.rss_after) if s.rss_after else None,
                           "hwm_after": max(s.hwm_after) if s.hwm_after else None,
                           "peak": peak / 1024 if peak is not None else None}
            emit(f"rss.{s.name}.after_{RSS_MEASURE}", mem[s.name]["after"], "MiB")
            emit(f"rss.{s.name}.hwm_after_{RSS_MEASURE}", mem[s.name]["hwm_after"], "MiB")
            emit(f"rss.{s.name}.peak", mem[s.name]["peak"], "MiB")

        isc = next((s for s in subjects if s.name == "iscsifs"), None)
        if VERIFY and isc is not None and isc.failed is None:
            verify(isc, work)
        for s in subjects:
            if s.failed:
                comment(f"{s.name}: FAILED: {s.failed}")
        table(results, [s.name for s in subjects], measures, mem)
        print()
        comment(f"loadavg at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
                f"total {time.monotonic() - T0:.0f}s")
        return 0 if all(s.failed is None for s in subjects) else 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)      # let cleanup finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for s in reversed(subjects):
            try:
                s.stop()
            except Exception as exc:     # noqa: BLE001 - keep cleaning
                log(f"{s.name}: stop failed: {exc}")
        leftover = False
        for s in subjects:
            if s.proc is not None and s.proc.poll() is None:
                log(f"WARNING: {s.name} pid {s.pid} is still running")
            if s.mnt is not None and mounted(s.mnt):
                log(f"WARNING: {s.mnt} is still mounted")
                leftover = True
            text = s.log_tail(100_000) if s.log_path else ""
            if text and s.name == "iscsifs":
                lines = text.split(" | ")
                comment(f"iscsifs log: {len(lines)} line(s), last: {' | '.join(lines[-3:])[:600]}")
        try:
            tgtd.stop()
        finally:
            lun.unlink(missing_ok=True)
            if KEEP or leftover:      # never rmtree through a mount that is still there
                log(f"work dir kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        log(f"done in {time.monotonic() - T0:.0f}s")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
