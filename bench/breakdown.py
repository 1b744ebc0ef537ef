#!/usr/bin/env python3
"""Where one small READ spends its time: a per-request breakdown of the command path.

Run as root: ``.venv/bin/python bench/breakdown.py [--seconds 10] [--bs 4k] [--rw randread]``.
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

    def send(self, buffers):
        first = "send_in" not in mark
        if first:
            mark["send_in"] = now()
        orig_send(self, buffers)
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
def _fio(raw: str, rw: str, bs: str, seconds: int) -> dict:
    out = subprocess.run(
        ["fio", "--name=breakdown", f"--filename={raw.replace(':', chr(92) + ':')}",
         f"--rw={rw}", f"--bs={bs}", "--ioengine=psync", "--iodepth=1", "--direct=1",
         "--time_based", f"--runtime={seconds}", "--size=256M", "--allow_file_create=0",
         "--norandommap", "--randrepeat=0", "--output-format=json"],
        capture_output=True, text=True, timeout=seconds + 120, check=True)
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    return job["write" if "write" in rw else "read"]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--daemon":
        return run_daemon(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--bs", default="4k")
    ap.add_argument("--rw", default="randread", choices=("randread", "read"))
    ap.add_argument("-o", "--mount-options", default="")
    args = ap.parse_args()

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
        daemon = subprocess.Popen([sys.executable, __file__, "--daemon", str(stats),
                                   tgtd.portal, str(mnt), "-o", opts],
                                  stdout=subprocess.DEVNULL, stderr=open(work / "mount.log", "w"))
        raw = f"{mnt}/portals/{tgtd.portal}/targets/{IQN}/luns/1/raw"
        deadline = time.monotonic() + 30
        while not os.path.exists(raw):
            if time.monotonic() > deadline or daemon.poll() is not None:
                print(f"breakdown: the mount did not come up; see {work}/mount.log",
                      file=sys.stderr)
                return 1
            time.sleep(0.1)
        _fio(raw, args.rw, args.bs, 2)                       # warm up
        cpu0 = _cpu_seconds(daemon.pid)
        t0 = time.monotonic()
        result = _fio(raw, args.rw, args.bs, args.seconds)
        wall = time.monotonic() - t0
        cpu = _cpu_seconds(daemon.pid) - cpu0
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
        daemon.wait(timeout=60)
        daemon = None
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


if __name__ == "__main__":
    sys.exit(main())
