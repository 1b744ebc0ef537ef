"""Test harness: a private istgt (Debian's ``istgt``, the FreeBSD-born userspace target) per
test, for interoperability with a target other than tgt.

``Istgt`` writes a private config dir (``istgt.conf``, ``auth.conf``) describing its targets,
picks a free TCP port on 127.0.0.1 (bind port 0) and runs ``istgt -D -c <conf>`` in the
foreground (``-D``: no detaching; it still writes its PID file, in the private dir). istgt reads
its config once, so targets are declared before ``start()``. After start we check that *our*
PID owns the listening socket, and retry with another port if not. LUNs are files under the
work dir. It stops only its own PID (SIGTERM, then SIGKILL), every wait bounded.

istgt's names: a target is ``<NodeBase>:<name>``; LUNs are numbered from 0 (``LUN0``). CHAP is
per target (``AuthMethod CHAP [Mutual]`` with an ``AuthGroup`` of auth.conf); digests per
target (``UseDigest Auto`` accepts what the initiator proposes, ``Header Data`` requires both).
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from iscsifs_testbed.tgtd import (_listening_inodes, _pid_socket_inodes, _set_pdeathsig,
                                  free_tcp_port)

HOST = "127.0.0.1"
NODE_BASE = "iqn.2026-11.org.iscsifs.istgt"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class IstgtError(RuntimeError):
    """The harness could not start or stop istgt."""


def missing_requirements() -> str | None:
    """Why a private istgt cannot run here (a skip reason), or None."""
    if shutil.which("istgt") is None:
        return "istgt harness: istgt not on PATH (install the 'istgt' package)"
    return None


@dataclasses.dataclass
class IstgtTarget:
    """One target: ``iqn`` (NodeBase:name), LUN n's backing file ``luns[n]``."""

    name: str
    luns: dict[int, Path]
    chap: tuple[str, str] | None = None            # (user, secret) the initiator must give
    mutual: tuple[str, str] | None = None          # (user, secret) the target answers with
    digest: str = "Auto"                           # UseDigest: Auto | Header | Data | ...
    params: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def iqn(self) -> str:
        return f"{NODE_BASE}:{self.name}"


class Istgt:
    """A private istgt: ``add_target`` ..., then ``start()`` / ``stop()`` or a context manager.
    After start: ``pid``, ``host``, ``port``, ``portal`` ("127.0.0.1:PORT"), ``workdir``."""

    def __init__(self, *, workdir: str | os.PathLike | None = None):
        self.host = HOST
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else \
            Path(tempfile.mkdtemp(prefix="iscsifs-istgt-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.targets: list[IstgtTarget] = []
        self.log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Istgt:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ targets
    def add_target(self, name: str, sizes: list[int], *, chap: tuple[str, str] | None = None,
                   mutual: tuple[str, str] | None = None, digest: str = "Auto",
                   **params: str) -> IstgtTarget:
        """A target with a LUN (0, 1, ...) per size in ``sizes`` (bytes, random data, 512 B
        blocks). ``params``: per-target iSCSI keys (``MaxBurstLength="4096"``, ...)."""
        if self.proc is not None:
            raise IstgtError("istgt reads its config at start: add targets before start()")
        luns = {}
        for n, size in enumerate(sizes):
            path = self.workdir / f"{name}-lun{n}.img"
            rng = random.Random(f"{name}-{n}")
            with open(path, "wb") as f:
                f.write(rng.randbytes(size))
            luns[n] = path
        target = IstgtTarget(name, luns, chap, mutual, digest, dict(params))
        self.targets.append(target)
        return target

    def config_text(self, port: int) -> tuple[str, str]:
        """(istgt.conf, auth.conf)."""
        w = self.workdir
        conf = [
            "[Global]",
            f'  NodeBase "{NODE_BASE}"',
            f"  PidFile {w / 'istgt.pid'}",
            f"  AuthFile {w / 'auth.conf'}",
            f"  MediaDirectory {w}",
            '  LogFacility "local7"',
            "  Timeout 30",
            "  NopInInterval 20",
            "  DiscoveryAuthMethod Auto",
            "  MaxSessions 16",
            "  MaxConnections 4",
            "  MaxR2T 32",
            "  MaxOutstandingR2T 16",
            "  DefaultTime2Wait 2",
            "  DefaultTime2Retain 60",
            "  FirstBurstLength 262144",
            "  MaxBurstLength 1048576",
            "  MaxRecvDataSegmentLength 262144",
            "  InitialR2T Yes",
            "  ImmediateData Yes",
            "  DataPDUInOrder Yes",
            "  DataSequenceInOrder Yes",
            "  ErrorRecoveryLevel 0",
            "",
            "[UnitControl]",            # required; without a Portal it listens nowhere
            "  AuthMethod CHAP Mutual",
            "  AuthGroup AuthGroup10000",
            "",
            "[PortalGroup1]",
            f"  Portal DA1 {self.host}:{port}",
            "",
            "[InitiatorGroup1]",
            '  InitiatorName "ALL"',
            "  Netmask 127.0.0.0/8",
            "",
        ]
        auth = ["[AuthGroup10000]", '  Auth "ctluser" "ctl-unused-secret"', ""]
        for n, t in enumerate(self.targets, start=1):
            method = "Auto"
            if t.chap:
                method = "CHAP Mutual" if t.mutual else "CHAP"
            conf += [f"[LogicalUnit{n}]", f"  TargetName {t.name}",
                     "  Mapping PortalGroup1 InitiatorGroup1", f"  AuthMethod {method}"]
            if t.chap:
                conf.append(f"  AuthGroup AuthGroup{n}")
                line = f'  Auth "{t.chap[0]}" "{t.chap[1]}"'
                if t.mutual:
                    line += f' "{t.mutual[0]}" "{t.mutual[1]}"'
                auth += [f"[AuthGroup{n}]", line, ""]
            conf += [f"  UseDigest {t.digest}", "  UnitType Disk"]
            conf += [f"  {k} {v}" for k, v in t.params.items()]
            conf += [f"  LUN{lun} Storage {path} Auto" for lun, path in t.luns.items()]
            conf.append("")
        return "\n".join(conf), "\n".join(auth)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Istgt:
        if self.proc is not None:
            raise IstgtError("istgt already started")
        reason = missing_requirements()
        if reason:
            raise IstgtError(reason)
        for attempt in range(4):
            if self._launch(free_tcp_port(self.host), attempt):
                return self
            self._terminate()
        raise IstgtError(f"istgt did not start after 4 attempts; log tail:\n{self.log_tail()}")

    def _launch(self, port: int, attempt: int) -> bool:
        conf, auth = self.config_text(port)
        (self.workdir / "istgt.conf").write_text(conf)
        auth_path = self.workdir / "auth.conf"
        auth_path.write_text(auth)
        auth_path.chmod(0o600)
        self.port = port
        self.log_path = self.workdir / f"istgt.{attempt}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["istgt", "-D", "-c", str(self.workdir / "istgt.conf")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_set_pdeathsig, close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _listening_inodes(self.proc.pid, port) & _pid_socket_inodes(self.proc.pid):
                return True
            time.sleep(0.02)
        return False

    def _terminate(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(STOP_TIMEOUT)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.proc = None

    def stop(self) -> None:
        """Stop our istgt (by its PID only); idempotent."""
        self._terminate()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace") \
                if self.log_path else ""
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<Istgt pid={self.pid} {self.host}:{self.port}>"
