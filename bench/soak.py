#!/usr/bin/env python3
"""iscsifs soak run: fio --verify=crc32c for minutes while the target misbehaves.

Run by hand as root, never in CI:  ``bash bench/soak --minutes 5 [--seed S] [options]``
(or ``.venv/bin/python bench/soak.py ...``).

What it does:
* starts a private tgtd (free port, private control port) with one target and one LUN backed
  by a file (default 256 MiB on /dev/shm), and mounts iscsifs on it in the foreground as a
  child process (``mount.iscsifs PORTAL MNT -f -v -o foreground,config_dir=..,logfile=..``);
* runs fio rounds on the LUN (through a colon-free symlink) until the time is up. Each round
  is one fio process with a write+verify job (randwrite, libaio, direct=1, crc32c,
  verify_fatal) on one slot of the LUN, with a random block size and iodepth, plus a
  verify-only job re-reading a slot written by an earlier round, preferably one written
  before a fault ("write, fault, verify");
* meanwhile a fault thread (seeded) injects, every few seconds: ``drop`` (tgtadm delete
  conn), ``stall`` (SIGSTOP tgtd for a few seconds, then SIGCONT) and ``restart`` (SIGKILL
  tgtd, start a new one on the same port and control port with the same target and LUN
  file). After each fault it waits (bounded) for the fault to be survived: a direct 4 KiB
  read through the mount succeeds and the ``session`` file shows LOGGED_IN again;
* when the time is up it stops the faults, lets the current round finish, verifies every
  slot once more without faults, compares the whole LUN through the mount with the backing
  file (cmp), and prints a summary.

Exit status 0 only if there were no fio errors, no verify mismatches, every fault was
survived and the mount is healthy at the end. On failure the work directory (mount log,
tgtd logs, fio output, soak.log, summary.json) is kept and its paths are printed.

Everything it starts (tgtd, the mount daemon, fio) is stopped by PID on exit, also on
Ctrl-C / SIGTERM; every wait is bounded.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))

from _target import Tgtd, TgtError, free_tcp_port, missing_requirements  # noqa: E402,F401

MiB = 1 << 20
IQN = "iqn.2026-11.org.iscsifs.soak:lun"
INITIATOR = "iqn.2026-11.org.iscsifs.soak:initiator"
TID = 1
FAULT_KINDS = ("drop", "stall", "restart")
T0 = time.monotonic()
_soak_log = None            # file object, once the work dir exists


def log(msg: str) -> None:
    line = f"[soak {time.monotonic() - T0:7.1f}s] {msg}"
    print(line, file=sys.stderr, flush=True)
    if _soak_log is not None:
        try:
            _soak_log.write(line + "\n")
            _soak_log.flush()
        except (OSError, ValueError):
            pass


class Interrupted(BaseException):
    """SIGTERM / SIGHUP: stop and clean up like Ctrl-C."""


def _raise_interrupted(signum, frame):
    raise Interrupted(f"signal {signum}")


# ------------------------------------------------------------------------------- helpers
def run_bounded(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess | None:
    """subprocess.run with a timeout; None when it timed out (the child is killed)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        return None


def mountinfo_entry(path: Path) -> tuple[str, str] | None:
    """(major:minor, fstype) of the mount at ``path`` from /proc/self/mountinfo, or None.
    Never touches the mount itself (a hung FUSE daemon cannot block this)."""
    want = os.fspath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        f = line.split()
        if len(f) > 4 and f[4].replace("\\040", " ") == want:
            sep = f.index("-")
            found = (f[2], f[sep + 1])
    return found


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


def kill_group(proc: subprocess.Popen | None, wait: float = 10.0) -> None:
    """SIGKILL the process group we created for ``proc`` (start_new_session), bounded wait."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} did not die within {wait:g}s of SIGKILL (stuck in the kernel?)")
        return
    # fio's job processes are in the same group; they may take a moment (in-flight AIO)
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    log(f"process group {proc.pid} still has members {wait:g}s after SIGKILL")


# ------------------------------------------------------------------------------- target
class SoakTgtd(Tgtd):
    """The harness's Tgtd plus what the soak needs and the harness lacks: a SIGKILL and
    restart on the same portal port and control port, with the same target and LUN file."""

    def configure(self, lun_path: Path, block_size: int) -> None:
        # LUN before bind: a relogin that races the restart must never see a target
        # without its LUN (it would get LOGICAL UNIT NOT SUPPORTED, i.e. EIO)
        self.add_target(TID, IQN)
        self.add_lun(TID, 1, lun_path, blocksize=block_size)
        self.bind(TID)

    def kill_and_restart_configured(self, lun_path: Path, block_size: int,
                                    downtime: float, timeout: float = 30.0) -> str:
        """The harness's crash-and-restart on the same ports, then the same target and LUN
        file again. Returns a short description; raises RuntimeError when it cannot."""
        old_pid = self.pid
        try:
            launches = self.kill_and_restart(downtime, timeout)
        except TgtError as exc:
            raise RuntimeError(str(exc)) from None
        self.restarts = getattr(self, "restarts", 0) + 1
        self.configure(lun_path, block_size)
        return f"pid {old_pid} -> {self.pid} (downtime {downtime:.1f}s, {launches} launch(es))"


# ------------------------------------------------------------------------------- mount
class Mount:
    def __init__(self, mnt: Path, portal: str, work: Path, options: list[str], debug: bool):
        self.mnt = mnt
        self.portal = portal
        self.logfile = work / "mount.log"
        self.stderr_path = work / "mount.stderr"
        self.cfg = work / "config"
        self.options = options
        self.debug = debug
        self.proc: subprocess.Popen | None = None
        self.target_dir = mnt / "portals" / portal / "targets" / IQN
        self.raw = self.target_dir / "luns" / "1" / "raw"
        self.session_path = self.target_dir / "session"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        self.cfg.mkdir(exist_ok=True)
        opts = ["foreground", f"config_dir={self.cfg}", f"logfile={self.logfile}",
                f"initiator_name={INITIATOR}"] + self.options
        cmd = [sys.executable, str(REPO / "mount.iscsifs"), self.portal, str(self.mnt),
               "-d" if self.debug else "-v", "-o", ",".join(opts)]
        log("mount: " + " ".join(cmd))
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while mountinfo_entry(self.mnt) is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount.iscsifs exited {self.proc.returncode}: "
                                   f"{self.stderr_path.read_text(errors='replace')[-800:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.mnt} not mounted after {timeout:g}s")
            time.sleep(0.1)
        # the first look at luns/ logs in (bounded: a child process)
        r = run_bounded(["stat", "-c", "%s", str(self.raw)], timeout)
        if r is None or r.returncode != 0:
            raise RuntimeError(f"{self.raw} did not appear: {r.stderr if r else 'timed out'}")

    def session(self, timeout: float = 10.0) -> dict | None:
        """The parsed ``session`` file (states, counters), or None if reading it failed."""
        r = run_bounded(["cat", str(self.session_path)], timeout)
        if r is None or r.returncode != 0:
            return None
        text = r.stdout
        out: dict = {"text": text}
        m = re.search(r"iSCSI Connection State: (.*)", text)
        out["conn_state"] = m.group(1).strip() if m else "?"
        m = re.search(r"iSCSI Session State: (.*)", text)
        out["session_state"] = m.group(1).strip() if m else "?"
        for name, value in re.findall(r"^\t([a-z_]+): (\d+)$", text, re.M):
            out[name] = int(value)
        m = re.search(r"reconnect\w*:\s*(\d+)", text, re.I)
        out["reconnects"] = int(m.group(1)) if m else None
        return out

    def healthy_session(self, timeout: float = 10.0) -> bool:
        s = self.session(timeout)
        return bool(s) and s["session_state"] == "LOGGED_IN" and s["conn_state"] == "LOGGED IN"

    def probe(self, offset: int, timeout: float) -> tuple[bool, str]:
        """One direct 4 KiB read through the mount (in a child process: bounded)."""
        r = run_bounded(["dd", f"if={self.raw}", "of=/dev/null", "bs=4096", "count=1",
                         f"skip={offset // 4096}", "iflag=direct", "status=none"], timeout)
        if r is None:
            return False, f"read hung > {timeout:.0f}s"
        if r.returncode != 0:
            return False, r.stderr.strip()[-200:]
        return True, ""

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def logins(self) -> int:
        return len(re.findall(r"logged in to .*" + re.escape(IQN), self.log_text()))

    def stop(self) -> None:
        """umount, then make sure the daemon we started is gone and nothing is left mounted."""
        if self.proc is None:
            return
        deadline = time.monotonic() + 30
        while mountinfo_entry(self.mnt) is not None:
            r = run_bounded(["umount", str(self.mnt)], 30)
            if r is not None and r.returncode == 0:
                break
            busy = r is not None and "busy" in r.stderr
            if not busy or time.monotonic() > deadline:
                log(f"umount {self.mnt}: {'timed out' if r is None else r.stderr.strip()}")
                break
            time.sleep(0.5)                       # a killed fio may still be closing the file
        if self.proc.poll() is None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                log(f"mount daemon pid {self.proc.pid} still running 30s after umount: SIGTERM")
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    log(f"mount daemon pid {self.proc.pid}: SIGKILL")
                    kill_group(self.proc)
        entry = mountinfo_entry(self.mnt)
        if entry is not None:
            minor = entry[0].split(":")[1]
            abort = Path(f"/sys/fs/fuse/connections/{minor}/abort")
            if abort.exists():
                try:
                    abort.write_text("1")
                except OSError:
                    pass
            run_bounded(["umount", "-l", str(self.mnt)], 15)
            if mountinfo_entry(self.mnt) is not None:
                log(f"WARNING: {self.mnt} is still mounted")
        if self.proc.returncode not in (None, 0):
            log(f"mount daemon exited with {self.proc.returncode}")


# ------------------------------------------------------------------------------- fio
@dataclasses.dataclass
class JobSpec:
    name: str
    slot: int
    offset: int
    size: int
    bs: str
    iodepth: int
    seed: int
    verify_only: bool
    pre_fault: bool = False            # verify-only of data written before a fault

    def section(self) -> str:
        lines = [f"[{self.name}]", "rw=randwrite", f"offset={self.offset}", f"size={self.size}",
                 f"bs={self.bs}", f"iodepth={self.iodepth}", f"randseed={self.seed}"]
        lines.append("verify_only=1" if self.verify_only else "do_verify=1")
        return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Slot:
    index: int
    offset: int
    size: int
    written: JobSpec | None = None     # the last write+verify job that completed cleanly
    written_at: float = 0.0            # monotonic time it completed
    busy: bool = False


@dataclasses.dataclass
class Stats:
    rounds: int = 0
    jobs: int = 0
    write_jobs: int = 0
    verify_only_jobs: int = 0
    post_fault_verifies: int = 0       # verify-only jobs of data written before a fault
    bytes_written: int = 0
    bytes_verified: int = 0
    errors: int = 0
    mismatches: int = 0
    error_kinds: dict = dataclasses.field(default_factory=dict)
    problems: list = dataclasses.field(default_factory=list)   # one line each, for the summary

    def error(self, kind: str, detail: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        self.problems.append(f"error {kind}: {detail}")
        log(f"FIO ERROR {kind}: {detail}")

    def mismatch(self, detail: str) -> None:
        self.mismatches += 1
        self.problems.append(f"MISMATCH: {detail}")
        log(f"VERIFY MISMATCH: {detail}")


class FioRunner:
    def __init__(self, link: Path, work: Path, args, stats: Stats, rng: random.Random):
        self.link = link
        self.work = work
        self.args = args
        self.stats = stats
        self.rng = rng
        self.proc: subprocess.Popen | None = None
        self.round = 0
        self.closed = False
        self._lock = threading.Lock()

    def run(self, jobs: list[JobSpec], timeout: float) -> dict[str, dict]:
        """One fio process with ``jobs``; returns {jobname: result} and counts bytes,
        errors and mismatches. result = {"ok": bool, "mismatch": bool}."""
        self.round += 1
        self.stats.rounds += 1
        n = self.round
        jobfile = self.work / "round.fio"
        jobfile.write_text(
            "[global]\n"
            f"filename={self.link}\nioengine=libaio\ndirect=1\nverify=crc32c\n"
            # thread=1: jobs are threads of this one fio process (forked job processes
            # call setsid() and would escape a kill of fio's process group)
            "verify_fatal=1\nverify_state_save=0\nallow_file_create=0\nrandrepeat=0\nthread=1\n"
            "group_reporting=0\n\n" + "".join(j.section() for j in jobs))
        desc = ", ".join(f"{j.name}[slot {j.slot} bs={j.bs} qd={j.iodepth}]" for j in jobs)
        log(f"round {n}: {desc}")
        out_path, err_path = self.work / "fio.out", self.work / "fio.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            with self._lock:
                if self.closed:
                    return {j.name: {"ok": False, "mismatch": False} for j in jobs}
                self.proc = subprocess.Popen(["fio", "--output-format=json", str(jobfile)],
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                             start_new_session=True, close_fds=True)
            try:
                rc = self.proc.wait(timeout)
                hung = False
            except subprocess.TimeoutExpired:
                hung = True
                kill_group(self.proc)
                rc = self.proc.returncode
            finally:
                if self.proc.poll() is None:           # Ctrl-C while waiting
                    kill_group(self.proc)
        self.proc = None
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        results = {j.name: {"ok": False, "mismatch": False} for j in jobs}
        parsed: dict[str, dict] = {}
        try:
            for job in json.loads(stdout[stdout.index("{"):])["jobs"]:
                parsed[job["jobname"]] = job
        except (ValueError, KeyError):
            pass
        bad = hung or rc != 0
        for spec in jobs:
            job = parsed.get(spec.name)
            if self.closed:
                continue                          # we killed it: shutting down
            self.stats.jobs += 1
            if spec.verify_only:
                self.stats.verify_only_jobs += 1
            else:
                self.stats.write_jobs += 1
            if job is None:
                continue
            if not spec.verify_only:
                self.stats.bytes_written += int(job["write"]["io_bytes"])
            self.stats.bytes_verified += int(job["read"]["io_bytes"])
            code = int(job.get("error", 0))
            if code == 0 and not hung:
                results[spec.name]["ok"] = True
            elif code == errno.EILSEQ:
                results[spec.name]["mismatch"] = True
                self.stats.mismatch(f"round {n} job {spec.name} (slot {spec.slot}, bs={spec.bs},"
                                    f" qd={spec.iodepth}, seed={spec.seed}): "
                                    + _verify_lines(_job_lines(stderr, spec)))
            elif code != 0:
                name = errno.errorcode.get(code, str(code))
                self.stats.error(name, f"round {n} job {spec.name} (slot {spec.slot}): "
                                 + _error_lines(_job_lines(stderr, spec)))
        if self.closed:
            return results
        if hung:
            self.stats.error("fio-hung", f"round {n}: fio still running after {timeout:.0f}s;"
                             f" killed")
        elif rc != 0 and not any(int(parsed.get(j.name, {}).get("error", 0)) for j in jobs):
            # fio failed without a job error we could attribute (no JSON, crash, ...)
            self.stats.error(f"fio-exit-{rc}", f"round {n}: "
                             + (stderr.strip()[-300:] or stdout.strip()[-300:]))
        if bad or any(not r["ok"] for r in results.values()):
            keep = self.work / f"fio-round{n}"
            shutil.copy(jobfile, keep.with_suffix(".fio"))
            shutil.copy(out_path, keep.with_suffix(".out"))
            shutil.copy(err_path, keep.with_suffix(".err"))
        return results

    def stop(self) -> None:
        """Kill the running fio (if any) and start no other."""
        with self._lock:
            self.closed = True
            proc = self.proc
        kill_group(proc)


def _job_lines(stderr: str, spec: JobSpec) -> str:
    """The stderr lines of one job: fio names the file, not the job, so pick the lines whose
    offset= lies in the job's slot (and the lines that follow them, e.g. Expected/Received)."""
    out, keep = [], True
    for ln in stderr.splitlines():
        m = re.search(r"offset=(\d+)", ln)
        if m:
            keep = spec.offset <= int(m.group(1)) < spec.offset + spec.size
        if keep:
            out.append(ln)
    return "\n".join(out)


def _verify_lines(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines()
             if "verify" in ln or "Expected" in ln or "Received" in ln or "bad magic" in ln]
    return " | ".join(lines[:4]) or stderr.strip()[-300:]


def _error_lines(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if "error" in ln.lower()]
    return " | ".join(lines[:3]) or stderr.strip()[-300:]


# ------------------------------------------------------------------------------- faults
@dataclasses.dataclass
class Fault:
    kind: str
    at: float                      # seconds since start
    detail: str = ""
    survived: bool = False
    recovery_s: float | None = None
    relogins: int = 0
    failure: str = ""
    errors_before: int = 0         # fio errors + mismatches counted before this fault
    io_errors: int = 0             # ... counted from this fault until the next one (or end)


class FaultInjector:
    """Runs in the main thread, never in a helper thread: the harness starts tgtd with
    PR_SET_PDEATHSIG, which kills tgtd when the *thread* that started it exits."""

    def __init__(self, args, tgtd: SoakTgtd, mount: Mount, lun_path: Path,
                 stop: threading.Event, stats: Stats):
        self.args = args
        self.tgtd = tgtd
        self.mount = mount
        self.lun_path = lun_path
        self.stop_event = stop            # set: stop now (interrupts a stall)
        self.rng = random.Random(f"{args.seed}-faults")
        self.faults: list[Fault] = []
        self.last_fault_at = 0.0          # monotonic time of the last fault injected
        self.fatal: str | None = None     # the run must stop (target or mount gone)
        self.stats = stats

    def run(self, end: float, keep_going) -> None:
        """Inject faults until ``end`` (monotonic) or ``keep_going()`` is false."""
        lo, hi = self.args.interval
        while keep_going():
            pause = self.rng.uniform(lo, hi)
            if time.monotonic() + pause >= end:
                self.stop_event.wait(max(end - time.monotonic(), 0))
                return
            if self.stop_event.wait(pause) or not keep_going():
                return
            kind = self.rng.choice(self.args.faults)
            fault = Fault(kind, time.monotonic() - T0,
                          errors_before=self.stats.errors + self.stats.mismatches)
            logins_before = self.mount.logins()
            self.last_fault_at = time.monotonic()
            log(f"fault #{len(self.faults) + 1} {kind}: injecting")
            try:
                fault.detail = self.inject(kind)
            except Exception as e:   # noqa: BLE001 - record and go on (or stop: fatal)
                fault.failure = f"injection failed: {e}"
                self.faults.append(fault)
                log(f"fault {kind}: {fault.failure}")
                if kind == "restart":
                    self.fatal = fault.failure
                    return
                continue
            self.faults.append(fault)
            log(f"fault #{len(self.faults)} {kind}: done: {fault.detail}")
            self.check_recovered(fault, logins_before)
            if not self.mount.alive():
                self.fatal = "the mount daemon exited"
                return

    def inject(self, kind: str) -> str:
        if kind == "drop":
            n = self.tgtd.drop_all_connections(TID)
            return f"{n} connection(s) dropped"
        if kind == "stall":
            lo, hi = self.args.stall
            d = self.rng.uniform(lo, hi)
            self.tgtd.stall()
            try:
                self.stop_event.wait(d)
            finally:
                self.tgtd.resume()
            return f"tgtd pid {self.tgtd.pid} stopped for {d:.1f}s"
        if kind == "restart":
            lo, hi = self.args.restart_downtime
            t = time.monotonic()
            detail = self.tgtd.kill_and_restart_configured(self.lun_path, self.args.block_size,
                                                self.rng.uniform(lo, hi))
            return f"{detail}, back after {time.monotonic() - t:.1f}s"
        raise ValueError(kind)

    def check_recovered(self, fault: Fault, logins_before: int) -> None:
        """Survived = a direct read through the mount works and the session is LOGGED_IN,
        within --recover-timeout seconds of the end of the fault."""
        start = time.monotonic()
        deadline = start + self.args.recover_timeout
        lun_bytes = self.args.size_mib * MiB
        why = ""
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            ok, why = self.mount.probe(self.rng.randrange(lun_bytes // 4096) * 4096,
                                       max(left, 1))
            if ok and self.mount.healthy_session(min(10, max(left, 1))):
                fault.survived = True
                fault.recovery_s = time.monotonic() - start
                break
            if not self.mount.alive():
                why = "mount daemon exited"
                break
            why = why or "session not LOGGED_IN"
            time.sleep(0.5)
        fault.relogins = self.mount.logins() - logins_before
        if fault.survived:
            log(f"  survived: I/O works again after {fault.recovery_s:.1f}s "
                f"({fault.relogins} relogin(s))")
        else:
            fault.failure = f"not recovered within {self.args.recover_timeout:g}s: {why}"
            log(f"  NOT SURVIVED: {fault.failure}")


# ------------------------------------------------------------------------------- the run
def parse_range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(":")
    a, b = float(lo), float(hi or lo)
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError(f"bad range {text!r} (want LO:HI, 0 <= LO <= HI)")
    return a, b


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="iscsifs soak: fio --verify=crc32c under faults",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    p.add_argument("--faults", default=",".join(FAULT_KINDS),
                   help="comma-separated fault kinds to pick from: drop, stall, restart "
                        "(repeat one to weight it)")
    p.add_argument("--interval", type=parse_range, default=(3.0, 10.0),
                   help="LO:HI seconds between the recovery of one fault and the next one")
    p.add_argument("--stall", type=parse_range, default=(2.0, 15.0),
                   help="LO:HI seconds tgtd stays SIGSTOPped (capped below replacement_timeout)")
    p.add_argument("--restart-downtime", type=parse_range, default=(0.0, 3.0),
                   help="LO:HI seconds between killing tgtd and starting the new one")
    p.add_argument("--recover-timeout", type=float, default=60.0,
                   help="seconds after a fault within which I/O must work again")
    p.add_argument("--size-mib", type=int, default=256, help="LUN size")
    p.add_argument("--slot-mib", type=int, default=32, help="size of the region one job uses")
    p.add_argument("--block-size", type=int, default=512, help="LUN logical block size")
    p.add_argument("--lun-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                   help="where the LUN backing file lives (default: /dev/shm, else the work dir)")
    p.add_argument("--workdir", default=None, help="parent of the work dir (default: $TMPDIR)")
    p.add_argument("--bs", default="4k,16k,64k,256k,1m", help="block sizes fio picks from")
    p.add_argument("--iodepth", default="1,4,16,32", help="iodepths fio picks from")
    p.add_argument("--no-verify-only", action="store_true",
                   help="no verify-only job beside each write job")
    p.add_argument("--round-timeout", type=float, default=None,
                   help="seconds one fio round may take (default: 2*replacement_timeout+120)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (and LUN file)")
    g = p.add_argument_group("mount options (passed as -o KEY=VALUE)")
    g.add_argument("--cache", choices=("direct", "page"), default="direct")
    g.add_argument("--replacement-timeout", type=float, default=120.0)
    g.add_argument("--noop-out-interval", type=float, default=None)
    g.add_argument("--noop-out-timeout", type=float, default=None)
    g.add_argument("--command-timeout", type=float, default=None)
    g.add_argument("--login-timeout", type=float, default=None)
    g.add_argument("-o", "--mount-option", action="append", default=[],
                   help="any other mount option, e.g. -o header_digest=crc32c (repeatable)")
    g.add_argument("--debug", action="store_true", help="mount with -d (one log line per PDU)")
    a = p.parse_args(argv)
    if a.seed is None:
        a.seed = int(time.time()) % 1000000
    a.faults = [f.strip() for f in a.faults.split(",") if f.strip()]
    bad = [f for f in a.faults if f not in FAULT_KINDS]
    if bad or not a.faults:
        p.error(f"--faults: unknown kind(s) {bad}; choose from {FAULT_KINDS}")
    rt = a.replacement_timeout
    if rt >= 0 and a.stall[1] > rt - 5:
        a.stall = (min(a.stall[0], max(rt - 5, 0)), max(rt - 5, 0))
    if a.round_timeout is None:
        a.round_timeout = 2 * (rt if rt >= 0 else 120) + 120
    a.bs_list = [b.strip() for b in a.bs.split(",") if b.strip()]
    a.qd_list = [int(q) for q in a.iodepth.split(",") if q.strip()]
    if a.size_mib < 2 * a.slot_mib:
        p.error("--size-mib must hold at least two slots of --slot-mib")
    return a


def mount_options(a) -> list[str]:
    opts = [f"cache={a.cache}", f"replacement_timeout={a.replacement_timeout:g}"]
    for key in ("noop_out_interval", "noop_out_timeout", "command_timeout", "login_timeout"):
        v = getattr(a, key)
        if v is not None:
            opts.append(f"{key}={v:g}")
    return opts + a.mount_option


def pick_jobs(a, rng: random.Random, slots: list[Slot], injector: FaultInjector | None,
              n: int) -> list[JobSpec]:
    jobs = []
    free = [s for s in slots if not s.busy]
    # the verify-only job: prefer a slot written before the most recent fault
    written = [s for s in free if s.written is not None]
    vslot = None
    if written and not a.no_verify_only:
        last_fault = injector.last_fault_at if injector else 0.0
        pre_fault = [s for s in written if s.written_at < last_fault]
        vslot = rng.choice(pre_fault or written)
        w = vslot.written
        jobs.append(dataclasses.replace(w, name=f"v{n}", verify_only=True,
                                        pre_fault=vslot.written_at < last_fault))
    wslot = rng.choice([s for s in free if s is not vslot])
    jobs.append(JobSpec(f"w{n}", wslot.index, wslot.offset, wslot.size, rng.choice(a.bs_list),
                        rng.choice(a.qd_list), rng.randrange(1, 2**31), False))
    return jobs


def soak(a) -> int:
    global _soak_log
    reason = missing_requirements()
    for tool in ("fio", "dd", "umount", "cmp"):
        if shutil.which(tool) is None:
            reason = reason or f"{tool} is not installed"
    if not os.path.exists("/dev/fuse"):
        reason = reason or "/dev/fuse is missing"
    if reason:
        print(f"soak: cannot run: {reason}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="iscsifs-soak-", dir=a.workdir))
    mnt = Path(tempfile.mkdtemp(prefix="iscsifs-soak-mnt-", dir=a.workdir))  # never inside work
    _soak_log = open(work / "soak.log", "w")
    lun_path = (Path(a.lun_dir) if a.lun_dir else work) / f"{work.name}-lun1.img"
    rng = random.Random(a.seed)
    stats = Stats()
    stop = threading.Event()
    tgtd: SoakTgtd | None = None
    mount: Mount | None = None
    fio: FioRunner | None = None
    injector: FaultInjector | None = None
    loop: FioLoop | None = None
    ok = False
    healthy = False
    summary: dict = {}
    log(f"seed {a.seed}; work dir {work}; LUN file {lun_path} ({a.size_mib} MiB)")
    old_handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    # also when started with SIGINT ignored (e.g. `cmd &` in a script)
    old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(lun_path, "wb") as f:
            f.truncate(a.size_mib * MiB)
        tgtd = SoakTgtd(workdir=work, keep_workdir=True)
        tgtd.start()
        tgtd.configure(lun_path, a.block_size)
        log(f"tgtd pid {tgtd.pid} ctl {tgtd.ctl} portal {tgtd.portal}")
        mount = Mount(mnt, tgtd.portal, work, mount_options(a), a.debug)
        mount.start()
        log(f"mount daemon pid {mount.pid}; raw file {mount.raw}")
        link = work / "lun.raw"                     # fio splits --filename at ':'
        link.symlink_to(mount.raw)
        slot_size = a.slot_mib * MiB
        slots = [Slot(i, i * slot_size, slot_size) for i in range(a.size_mib // a.slot_mib)]
        fio = FioRunner(link, work, a, stats, rng)
        injector = FaultInjector(a, tgtd, mount, lun_path, stop, stats)
        loop = FioLoop(a, rng, fio, slots, injector, stats, mount)
        start = time.monotonic()
        end = start + a.minutes * 60
        loop.start()
        injector.run(end, lambda: loop.is_alive() and mount.alive())
        fault_time = time.monotonic() - start
        if injector.fatal or not loop.is_alive() or not mount.alive():
            log("stopping early: " + (injector.fatal or loop.crashed
                                      or ("the mount daemon exited" if not mount.alive()
                                          else "the fio loop ended")))
        log("faults stopped; letting the current fio round finish")
        loop.finish.set()
        loop.join(a.round_timeout + 30)
        if loop.is_alive():
            log("WARNING: the fio round did not finish in time; killing fio")
            fio.stop()
            loop.join(30)
        fio.closed = False                       # the final verify round below
        # after the last fault: the session must come back, then verify everything once more
        recovered = wait_healthy(mount, a.recover_timeout)
        log(f"after the faults: session {'LOGGED_IN' if recovered else 'NOT healthy'}")
        final = [dataclasses.replace(s.written, name=f"final{s.index}", verify_only=True)
                 for s in slots if s.written is not None]
        if final and mount.alive():
            log(f"final verify of {len(final)} slot(s), no faults")
            fio.run(final, a.round_timeout)
        cmp_ok = final_cmp(mount, lun_path, stats, a.round_timeout)
        session = mount.session() or {}
        probe_ok = mount.probe(0, 30)[0] if mount.alive() else False
        healthy = (mount.alive() and recovered and probe_ok
                   and session.get("session_state") == "LOGGED_IN"
                   and mountinfo_entry(mnt) is not None)
        rss = peak_rss_mib(mount.pid)
        faults = injector.faults
        bounds = [f.errors_before for f in faults[1:]] + [stats.errors + stats.mismatches]
        for f, nxt in zip(faults, bounds):
            f.io_errors = nxt - f.errors_before
        survived = sum(f.survived for f in faults)
        rec = [f.recovery_s for f in faults if f.recovery_s is not None]
        mlog = mount.log_text()
        summary = {
            "seed": a.seed,
            "duration_s": round(time.monotonic() - start, 1),
            "fault_phase_s": round(fault_time, 1),
            "mount_options": mount_options(a),
            "faults_injected": len(faults),
            "faults_by_kind": {k: sum(f.kind == k for f in faults) for k in a.faults},
            "faults_survived": survived,
            "faults_with_io_errors": sum(f.io_errors > 0 for f in faults),
            "survived_by_kind": {k: sum(f.kind == k and f.survived for f in faults)
                                 for k in a.faults},
            "recovery_s_max": round(max(rec), 1) if rec else None,
            "recovery_s_mean": round(sum(rec) / len(rec), 1) if rec else None,
            "fio_rounds": stats.rounds,
            "write_jobs": stats.write_jobs,
            "verify_only_jobs": stats.verify_only_jobs,
            "post_fault_verifies": stats.post_fault_verifies,
            "bytes_written": stats.bytes_written,
            "bytes_verified": stats.bytes_verified,
            "fio_errors": stats.errors,
            "fio_error_kinds": stats.error_kinds,
            "verify_mismatches": stats.mismatches,
            "final_cmp": "same" if cmp_ok else "DIFFERENT/failed",
            "logins_in_log": mount.logins(),
            "reconnects": max(mount.logins() - 1, 0),
            "session_file_reconnects": session.get("reconnects"),
            "session_state_at_end": session.get("session_state"),
            "session_counters": {k: session.get(k) for k in
                                 ("login_pdus", "scsicmd_pdus", "tmfcmd_pdus", "timeout_err",
                                  "txdata_octets", "rxdata_octets") if k in session},
            "log_conn_failed": len(re.findall(r"connection to .* failed", mlog)),
            "log_relogin_failed": len(re.findall(r"relogin to .* failed", mlog)),
            "log_command_timeouts": len(re.findall(r"timed out after .* aborting", mlog)),
            "log_replacement_timeouts": len(re.findall(r"replacement timeout", mlog)),
            "log_errors": len(re.findall(r" ERROR: ", mlog)),
            "log_tracebacks": mlog.count("Traceback"),
            "daemon_peak_rss_mib": round(rss, 1),
            "tgtd_restarts": getattr(tgtd, "restarts", 0),
            "healthy_at_end": healthy,
            "faults": [dataclasses.asdict(f) for f in faults],
            "problems": stats.problems,
        }
        ok = (stats.mismatches == 0 and stats.errors == 0 and healthy and cmp_ok
              and survived == len(faults) and not injector.fatal and not loop.crashed)
    except (KeyboardInterrupt, Interrupted) as e:
        log(f"interrupted ({type(e).__name__} {e}); cleaning up")
    except Exception as e:  # noqa: BLE001
        log(f"FAILED: {type(e).__name__}: {e}")
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)     # cleanup is bounded: let it finish
        stop.set()
        if tgtd is not None and tgtd.stalled:
            tgtd.resume()
        if loop is not None:
            loop.finish.set()
        if fio is not None:
            fio.stop()
        if loop is not None and loop.is_alive():
            loop.join(30)
        if mount is not None:
            mount.stop()
        if tgtd is not None:
            try:
                tgtd.stop()
            except Exception as e:  # noqa: BLE001
                log(f"tgtd stop: {e}")
        if summary:
            print_summary(summary, ok)
            (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if mountinfo_entry(mnt) is None:
            try:
                mnt.rmdir()
            except OSError as e:
                log(f"left {mnt}: {e}")
        if not a.keep:
            try:
                lun_path.unlink()
            except FileNotFoundError:
                pass
        if ok and not a.keep:
            _soak_log.close()
            _soak_log = None
            shutil.rmtree(work, ignore_errors=True)
        else:
            (work / "lun.raw").unlink(missing_ok=True)
            print(f"kept: {work}", file=sys.stderr)
            for p in sorted(work.glob("*.log")) + sorted(work.glob("fio-round*.err")):
                print(f"  {p}", file=sys.stderr)
        for s, h in old_handlers.items():
            signal.signal(s, h)
    return 0 if ok else 1


def run_round(a, rng, fio: FioRunner, slots: list[Slot], injector: FaultInjector,
              stats: Stats, n: int) -> None:
    jobs = pick_jobs(a, rng, slots, injector, n)
    by_slot = {s.index: s for s in slots}
    for j in jobs:
        by_slot[j.slot].busy = True
        if not j.verify_only:
            by_slot[j.slot].written = None       # being rewritten: no longer verifiable
        elif j.pre_fault:
            stats.post_fault_verifies += 1
    try:
        results = fio.run(jobs, a.round_timeout)
    finally:
        for j in jobs:
            by_slot[j.slot].busy = False
    for j in jobs:
        r = results[j.name]
        slot = by_slot[j.slot]
        if not j.verify_only and r["ok"]:
            slot.written, slot.written_at = j, time.monotonic()
        elif j.verify_only and not r["ok"] and not r["mismatch"]:
            pass                                  # an error, not evidence against the data
        elif j.verify_only and r["mismatch"]:
            slot.written = None                   # reported once; don't report it again


class FioLoop(threading.Thread):
    """fio rounds one after another until ``finish`` is set (the current round completes)."""

    def __init__(self, a, rng, fio: FioRunner, slots: list[Slot], injector: FaultInjector,
                 stats: Stats, mount: Mount):
        super().__init__(name="fio", daemon=True)
        self.a, self.rng, self.fio, self.slots = a, rng, fio, slots
        self.injector, self.stats, self.mount = injector, stats, mount
        self.finish = threading.Event()
        self.crashed: str | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.finish.is_set() and not self.fio.closed and self.mount.alive():
                n += 1
                before = self.stats.errors
                run_round(self.a, self.rng, self.fio, self.slots, self.injector, self.stats, n)
                if self.stats.errors != before:
                    self.finish.wait(1.0)        # don't spin on a failing session
        except Exception as e:  # noqa: BLE001
            self.crashed = f"fio loop crashed: {type(e).__name__}: {e}"
            log(self.crashed)


def wait_healthy(mount: Mount, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and mount.alive():
        if mount.probe(0, max(deadline - time.monotonic(), 1))[0] and mount.healthy_session():
            return True
        time.sleep(0.5)
    return False


def final_cmp(mount: Mount, lun_path: Path, stats: Stats, timeout: float) -> bool:
    """The whole LUN through the mount (direct reads) equals the backing file."""
    if not mount.alive():
        return False
    log("final cmp: the LUN through the mount vs the backing file")
    r = run_bounded(["cmp", str(mount.raw), str(lun_path)], timeout)
    if r is None:
        stats.error("cmp-hung", f"cmp still running after {timeout:.0f}s")
        return False
    if r.returncode == 1:
        stats.mismatch(f"cmp: {r.stdout.strip() or r.stderr.strip()}")
        return False
    if r.returncode != 0:
        stats.error("cmp", r.stderr.strip()[-300:])
        return False
    return True


def print_summary(s: dict, ok: bool) -> None:
    def gib(n: int) -> str:
        return f"{n / (1 << 30):.2f} GiB ({n} bytes)"
    kinds = ", ".join(f"{k} {s['faults_by_kind'][k]} ({s['survived_by_kind'][k]} survived)"
                      for k in s["faults_by_kind"])
    lines = [
        "",
        f"=== iscsifs soak: {'PASS' if ok else 'FAIL'} (seed {s['seed']}) ===",
        f"duration            {s['duration_s']} s (faults for {s['fault_phase_s']} s)",
        f"mount options       {','.join(s['mount_options'])}",
        f"faults injected     {s['faults_injected']}: {kinds}",
        f"faults survived     {s['faults_survived']}/{s['faults_injected']} (session back and a"
        f" direct read works; recovery mean {s['recovery_s_mean']} s, max"
        f" {s['recovery_s_max']} s); {s['faults_with_io_errors']} fault(s) had fio errors"
        f" before the next fault",
        f"fio rounds          {s['fio_rounds']} ({s['write_jobs']} write+verify jobs,"
        f" {s['verify_only_jobs']} verify-only, {s['post_fault_verifies']} of them across a fault)",
        f"bytes written       {gib(s['bytes_written'])}",
        f"bytes verified      {gib(s['bytes_verified'])}",
        f"fio errors          {s['fio_errors']} {s['fio_error_kinds'] or ''}",
        f"verify mismatches   {s['verify_mismatches']} (must be 0); final cmp: {s['final_cmp']}",
        f"reconnects          {s['reconnects']} (logins in the mount log: {s['logins_in_log']};"
        f" session file: {s['session_file_reconnects'] if s['session_file_reconnects'] is not None else 'no reconnect counter'})",
        f"session at end      {s['session_state_at_end']} {s['session_counters']}",
        f"mount log           {s['log_conn_failed']} connection failures,"
        f" {s['log_relogin_failed']} failed relogins, {s['log_command_timeouts']} command"
        f" timeouts, {s['log_replacement_timeouts']} replacement timeouts,"
        f" {s['log_errors']} ERROR lines, {s['log_tracebacks']} tracebacks",
        f"daemon peak RSS     {s['daemon_peak_rss_mib']} MiB",
        f"tgtd restarts       {s['tgtd_restarts']}",
        f"healthy at end      {s['healthy_at_end']}",
    ]
    for f in s["faults"]:
        if not f["survived"] or f["io_errors"]:
            lines.append(f"  fault {f['kind']} at {f['at']:.0f}s: {f['detail']}; "
                         f"{f['failure'] or 'recovered'}; {f['io_errors']} fio error(s) after it")
    for p in s["problems"][:8]:
        lines.append(f"  {p[:240]}")
    if len(s["problems"]) > 8:
        lines.append(f"  ... {len(s['problems']) - 8} more in summary.json / soak.log")
    print("\n".join(lines), flush=True)


def main() -> int:
    return soak(parse_args())


if __name__ == "__main__":
    sys.exit(main())
