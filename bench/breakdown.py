#!/usr/bin/env python3
"""Where one small READ spends its time: a per-request breakdown of the command path.

Run as root: ``.venv/bin/python bench/breakdown.py [--seconds 10] [--bs 4k] [--rw randread]
[--qd 16]``.
It starts a private tgtd (LUN on tmpfs), runs the mount daemon *in this interpreter's code*
with timestamps taken at the boundaries of each layer (wrappers installed before the mount
starts: nothing in the product carries probe code), runs fio at queue depth 1, unmounts, and
prints the mean microseconds per request spent in each stage:

  outside the handler   FUSE round trip: kernel, pyfuse3's dispatch and reply, and fio itself
  fs + device           the read handler and ``Lun.read`` before and after the session
  session (issue)       ``Session.execute`` up to the encoder: admission, ``start_command``
  encode                ``Connection.data_to_send``: the SCSI Command PDU
  send syscall          ``sendmsg`` (on loopback it also runs the target's receive path)
  target                from the send until the answer is received: tgtd, the loopback,
                        the wakeups, and the event loop turning round
  receive + decode      ``recv_into``, the decoder, the state machine, the dispatch
  hand-off              the reader task wakes the caller until the caller runs again

The wrappers cost about a microsecond per boundary; compare runs of this tool with each other.
Only meaningful at queue depth 1 (one request in flight, so the stages are sequential).

With ``--qd N`` (N > 1, libaio) the requests overlap and the daemon is busy on its core, so the
breakdown is of its CPU time instead: the daemon runs without wrappers, py-spy (``pip install
py-spy``) samples it while fio runs, and each sample goes to the stage of its innermost frame;
the shares times the daemon's CPU per I/O give microseconds per request:

  FUSE requests         pyfuse3 (Cython) with its read() and writev() on /dev/fuse
  sendmsg               the send syscall; on loopback it also runs the target's receive path
  recv_into             the receive syscall
  epoll                 trio's epoll_wait and epoll_ctl
  trio scheduling       task switches: rescheduling, outcomes, the run loop
  fs + device           fs/ handlers and device.Lun
  session + transport   net/: execute, issue, the reader loop, batching
  protocol core         core/ and scsi/: PDU encode and decode, the state machine, CDBs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

IQN = "iqn.2026-11.org.iscsifs.bench:breakdown"
STAGES = ("outside the handler", "fs + device", "session (issue)", "encode", "send syscall",
          "target", "receive + decode", "hand-off")
CPU_STAGES = ("FUSE requests", "sendmsg", "recv_into", "epoll", "trio scheduling", "fs + device",
              "session + transport", "protocol core", "other")


def cpu_stage(frame: str) -> str:
    """The stage of a py-spy frame (``function (file:line)``)."""
    if "Transport._sendmsg" in frame:
        return "sendmsg"
    if "Transport.receive " in frame:
        return "recv_into"
    if "async_wrapper" in frame or "_pyfuse3.py" in frame or "pyfuse3/" in frame:
        return "FUSE requests"
    if "_io_epoll" in frame:
        return "epoll"
    if "iscsifs/fs/" in frame or "iscsifs/device.py" in frame or "multipath.py" in frame:
        return "fs + device"
    if "iscsifs/net/" in frame:
        return "session + transport"
    if "iscsifs/core/" in frame or "iscsifs/scsi/" in frame:
        return "protocol core"
    if "trio/" in frame or "outcome/" in frame or "attrs generated" in frame:
        return "trio scheduling"
    return "other"


def cpu_split(raw: Path) -> dict[str, float]:
    """Shares of the daemon's samples by stage, from py-spy's raw (collapsed) output. A
    dataclass ``__init__`` (``<string>``) counts for the code that built it."""
    counts = dict.fromkeys(CPU_STAGES, 0)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        leaf = frames[-1]
        if "<string>" in leaf and len(frames) > 1:
            leaf = frames[-2]
        counts[cpu_stage(leaf)] += int(n)
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in counts.items()}


# --------------------------------------------------------------------------- daemon side
def _install_probes(sums: dict) -> None:
    """Wrap the layer boundaries of the command path with timestamp recorders."""
    from iscsifs.core.connection import Connection
    from iscsifs.net import session as session_mod
    from iscsifs.net.transport import Transport

    now = time.perf_counter_ns
    mark: dict[str, int] = {}

    def add(stage: str, start: str, end: str) -> None:
        if start in mark and end in mark:
            sums[stage] = sums.get(stage, 0) + mark[end] - mark[start]

    from iscsifs.fs.ops import Operations as ops_cls
    orig_read = ops_cls.read

    async def read(self, fh, off, size):
        mark.clear()
        mark["handler_in"] = now()
        try:
            return await orig_read(self, fh, off, size)
        finally:
            mark["handler_out"] = now()
            if "exec_in" in mark and "exec_out" in mark:
                sums["requests"] = sums.get("requests", 0) + 1
                sums["handler"] = sums.get("handler", 0) + mark["handler_out"] - mark["handler_in"]
                add("fs + device", "handler_in", "exec_in")
                add("fs + device", "exec_out", "handler_out")
                add("session (issue)", "exec_in", "encode_in")
                add("encode", "encode_in", "encode_out")
                add("send syscall", "send_in", "send_out")
                add("target", "send_out", "received")
                add("receive + decode", "received", "completed")
                add("hand-off", "completed", "exec_out")

    ops_cls.read = read

    orig_execute = session_mod.Session.execute

    async def execute(self, *a, **kw):
        mark.setdefault("exec_in", now())
        try:
            return await orig_execute(self, *a, **kw)
        finally:
            mark["exec_out"] = now()

    session_mod.Session.execute = execute

    orig_dts = Connection.data_to_send

    def data_to_send(self):
        first = "encode_in" not in mark
        if first:
            mark["encode_in"] = now()
        out = orig_dts(self)
        if first:
            mark["encode_out"] = now()
        return out

    Connection.data_to_send = data_to_send

    orig_send = Transport.send

    def send(self, buffers, *, batch=False):
        first = "send_in" not in mark
        if first:
            mark["send_in"] = now()
        orig_send(self, buffers, batch=batch)
        if first:
            mark["send_out"] = now()

    Transport.send = send

    orig_receive = Transport.receive

    async def receive(self):
        await orig_receive(self)
        if "send_out" in mark and "received" not in mark:
            mark["received"] = now()

    Transport.receive = receive

    orig_complete = session_mod.Session._complete

    def complete(self, cmd, result, error):
        if "received" in mark and "completed" not in mark:
            mark["completed"] = now()
        return orig_complete(self, cmd, result, error)

    session_mod.Session._complete = complete


def run_daemon(argv: list[str]) -> int:
    out_path = argv.pop(0)
    sums: dict = {}
    _install_probes(sums)
    from iscsifs.mount.main import main
    code = main(argv)
    Path(out_path).write_text(json.dumps(sums))
    return code


# --------------------------------------------------------------------------- driver
def _fio(raw: str, rw: str, bs: str, seconds: int, qd: int = 1) -> dict:
    engine = ["--ioengine=psync", "--iodepth=1"] if qd == 1 else \
        ["--ioengine=libaio", f"--iodepth={qd}"]
    out = subprocess.run(
        ["fio", "--name=breakdown", f"--filename={raw.replace(':', chr(92) + ':')}",
         f"--rw={rw}", f"--bs={bs}", *engine, "--direct=1", "--rwmixread=70",
         "--time_based", f"--runtime={seconds}", "--size=256M", "--allow_file_create=0",
         "--norandommap", "--randrepeat=0", "--output-format=json"],
        capture_output=True, text=True, timeout=seconds + 120, check=True)
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    parts = [job["read"], job["write"]] if rw == "randrw" else \
        [job["write" if "write" in rw else "read"]]
    return {"iops": sum(p["iops"] for p in parts),
            "total_ios": sum(p["total_ios"] for p in parts)}


def _py_spy() -> str | None:
    return shutil.which("py-spy") or (str(REPO / ".venv/bin/py-spy")
                                      if (REPO / ".venv/bin/py-spy").exists() else None)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--daemon":
        return run_daemon(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--bs", default="4k")
    ap.add_argument("--rw", default="randread",
                    choices=("randread", "read", "randwrite", "write", "randrw"))
    ap.add_argument("--qd", type=int, default=1,
                    help="queue depth; above 1: libaio, and a breakdown of the daemon's CPU")
    ap.add_argument("-o", "--mount-options", default="")
    ap.add_argument("--keep-profile", metavar="FILE", type=Path,
                    help="with --qd above 1: keep py-spy's raw (collapsed) samples here")
    args = ap.parse_args()
    if args.qd == 1 and args.rw not in ("randread", "read"):
        ap.error("at queue depth 1 the breakdown follows reads only (--rw randread or read)")

    from _target import Tgtd, missing_requirements
    reason = missing_requirements()
    if reason or not shutil.which("fio"):
        print(f"breakdown: cannot run: {reason or 'fio missing'}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="iscsifs-breakdown."))
    lun = Path("/dev/shm") / f"iscsifs-breakdown.{os.getpid()}.lun"
    mnt, cfg, stats = work / "mnt", work / "cfg", work / "stats.json"
    mnt.mkdir()
    cfg.mkdir()
    tgtd = Tgtd(workdir=work / "tgtd")
    daemon = None
    try:
        with lun.open("wb") as f:
            f.truncate(256 << 20)
        tgtd.start()
        tgtd.add_target(1, IQN)
        tgtd.add_lun(1, 1, lun)
        tgtd.bind(1, "ALL")
        opts = f"foreground,config_dir={cfg}" + (f",{args.mount_options}"
                                                 if args.mount_options else "")
        if args.qd == 1:            # the wrappers: timestamps at the layer boundaries
            cmd = [sys.executable, __file__, "--daemon", str(stats)]
        else:                       # the product as it is; py-spy samples it
            cmd = [sys.executable, str(REPO / "mount.iscsifs")]
        daemon = subprocess.Popen([*cmd, tgtd.portal, str(mnt), "-o", opts],
                                  stdout=subprocess.DEVNULL, stderr=open(work / "mount.log", "w"))
        raw = f"{mnt}/portals/{tgtd.portal}/targets/{IQN}/luns/1/raw"
        deadline = time.monotonic() + 30
        while not os.path.exists(raw):
            if time.monotonic() > deadline or daemon.poll() is not None:
                print(f"breakdown: the mount did not come up; see {work}/mount.log",
                      file=sys.stderr)
                return 1
            time.sleep(0.1)
        _fio(raw, args.rw, args.bs, 2, args.qd)              # warm up
        spy = None
        profile = work / "py-spy.txt"
        if args.qd > 1 and _py_spy():
            spy = subprocess.Popen([_py_spy(), "record", "-p", str(daemon.pid), "-r", "250",
                                    "-d", str(max(1, args.seconds - 1)), "--format", "raw",
                                    "-o", str(profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0 = _cpu_seconds(daemon.pid)
        t0 = time.monotonic()
        result = _fio(raw, args.rw, args.bs, args.seconds, args.qd)
        wall = time.monotonic() - t0
        cpu = _cpu_seconds(daemon.pid) - cpu0
        split = None
        if spy is not None:
            spy.wait(timeout=60)
            split = cpu_split(profile) if profile.exists() else None
            if args.keep_profile and profile.exists():
                shutil.copyfile(profile, args.keep_profile)
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
        daemon.wait(timeout=60)
        daemon = None
        if args.qd > 1:
            return _report_cpu(args, result, wall, cpu, split)
        sums = json.loads(stats.read_text())
    finally:
        if daemon is not None:
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)
            daemon.kill()
            daemon.wait()
        tgtd.stop()
        lun.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)

    n = sums.get("requests", 0)
    if not n:
        print("breakdown: no request was measured", file=sys.stderr)
        return 1
    ios = result["total_ios"]
    period = wall / max(ios, 1) * 1e6         # µs between requests as fio saw them
    per = {k: sums.get(k, 0) / n / 1000 for k in STAGES[1:]}
    per["outside the handler"] = period - sums["handler"] / n / 1000
    print(f"# {args.rw} {args.bs} qd1 for {args.seconds} s: {result['iops']:.0f} IOPS, "
          f"{period:.1f} µs per request, daemon CPU {cpu / max(ios, 1) * 1e6:.1f} µs "
          f"per request ({n} requests timed)")
    print("| stage | µs per request | share |")
    print("|---|---:|---:|")
    for stage in STAGES:
        print(f"| {stage} | {per[stage]:.1f} | {per[stage] / period:.0%} |")
    print(f"| total | {period:.1f} | 100% |")
    return 0


def _report_cpu(args, result: dict, wall: float, cpu: float,
                split: dict[str, float] | None) -> int:
    ios = max(result["total_ios"], 1)
    per_io = cpu / ios * 1e6
    print(f"# {args.rw} {args.bs} libaio qd{args.qd} for {args.seconds} s: "
          f"{result['iops']:.0f} IOPS, daemon CPU {per_io:.1f} µs per request "
          f"({cpu / wall:.0%} of a core)")
    if split is None:
        print("# no CPU split: py-spy is not installed (pip install py-spy)")
        return 0
    print("| stage | CPU µs per request | share |")
    print("|---|---:|---:|")
    for stage in CPU_STAGES:
        if split[stage] >= 0.0005:
            print(f"| {stage} | {split[stage] * per_io:.1f} | {split[stage]:.0%} |")
    print(f"| total | {per_io:.1f} | 100% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
