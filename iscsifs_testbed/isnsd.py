"""Test harness: a private iSNS server (Debian's open-isns-server, ``isnsd``) per test.

Debian's isnsd, run from its package config, listens on port 3205 of every address and keeps
its database in /var/lib/isns. Ours runs ``isnsd -f -c <private config>`` with:

* ``BindAddress = 127.0.0.1:<free port>``: one address, a port chosen free (bind port 0), so
  it never meets a system isnsd on 3205 nor another test run's (after start we check that
  *our* PID owns the listening socket, and retry with another port if not);
* no ``Database`` (in memory), ``ControlSocket`` and ``PIDFile`` in its own temp dir;
* ``Security = 0`` (no DSA signatures: open-iscsi's client and ours sign nothing);
* ``DefaultDiscoveryDomain = 1`` unless asked otherwise: nodes in no discovery domain see each
  other, so an initiator that never registered may query the targets tgt registered (without
  it, isnsd shows an unregistered initiator nothing).

It stops only its own PID (SIGTERM, then SIGKILL), every wait bounded. tgt registers with it
through ``tgtadm --op update --mode sys --name iSNSServerIP/iSNSServerPort/iSNS``
(``Tgtd.use_isns``); ``register`` adds what another client would (``isnsadm --register``).

tgt 1.0.85's iSNS client has two bugs that shape the tests: it registers nothing usable when it
listens on more than one portal, and it keeps a single SCN socket, so once isnsd opened one SCN
connection per registered target (two targets: two connections) the next SCN - and every
query from an initiator isnsd has not seen before makes one - blocks tgtd in a read on the
other socket. A tgtd that registers with isnsd here has one portal and one target; further
targets come from ``register``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from iscsifs_testbed.tgtd import (_listening_inodes, _pid_socket_inodes, _set_pdeathsig,
                                  free_tcp_port)

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SOURCE_NAME = "iqn.2026-11.org.iscsifs.test:isnsd"


class IsnsdError(RuntimeError):
    """The harness could not start or stop isnsd."""


def missing_requirements() -> str | None:
    """Why a private isnsd cannot run here (a skip reason), or None."""
    if shutil.which("isnsd") is None:
        return "isnsd harness: isnsd not on PATH (install the 'open-isns-server' package)"
    return None


class Isnsd:
    """A private isnsd: ``start()`` / ``stop()`` or a context manager. After start: ``pid``,
    ``host``, ``port``, ``address`` ("127.0.0.1:PORT"), ``workdir``, ``log_path``."""

    def __init__(self, *, default_dd: bool = True, workdir: str | os.PathLike | None = None):
        self.default_dd = default_dd
        self.host = HOST
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Isnsd:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def config_text(self, port: int) -> str:
        assert self.workdir is not None
        return "\n".join([
            f"SourceName = {SOURCE_NAME}",
            f"BindAddress = {self.host}:{port}",
            f"ControlSocket = {self.workdir / 'isnsctl'}",
            f"PIDFile = {self.workdir / 'isnsd.pid'}",
            f"DefaultDiscoveryDomain = {1 if self.default_dd else 0}",
            "SLPRegister = 0",
            "Security = 0",
            "ESIRetries = 0",
            "RegistrationPeriod = 10m",
            "",
        ])

    def start(self) -> Isnsd:
        if self.proc is not None:
            raise IsnsdError("isnsd already started")
        reason = missing_requirements()
        if reason:
            raise IsnsdError(reason)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="iscsifs-isnsd-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(4):
            if self._launch(free_tcp_port(self.host), attempt):
                self._admin_node()
                return self
            self._terminate()
        raise IsnsdError(f"isnsd did not start after 4 attempts; log tail:\n{self.log_tail()}")

    def _launch(self, port: int, attempt: int) -> bool:
        assert self.workdir is not None
        conf = self.workdir / "isnsd.conf"
        conf.write_text(self.config_text(port))
        self.port = port
        self.log_path = self.workdir / f"isnsd.{attempt}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["isnsd", "-f", "-4", "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_set_pdeathsig,
                close_fds=True)
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
        """Stop our isnsd (by its PID only); idempotent."""
        self._terminate()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace") \
                if self.log_path else ""
        except OSError:
            return ""

    def _isnsadm(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        assert self.workdir is not None
        return subprocess.run(["isnsadm", "-c", str(self.workdir / "isnsadm.conf"), "--local",
                               *args], capture_output=True, text=True, timeout=timeout)

    def _admin_node(self) -> None:
        """Register a control node through the control socket: its queries see the whole
        database, whatever the discovery domains (what ``query`` uses)."""
        assert self.workdir is not None
        (self.workdir / "isnsadm.conf").write_text("\n".join([
            f"ControlSocket = {self.workdir / 'isnsctl'}",
            f"SourceName = {SOURCE_NAME}-admin", "Security = 0", ""]))
        r = self._isnsadm("--register", "control")
        if r.returncode != 0:
            raise IsnsdError(f"isnsadm --local --register control: {r.stderr.strip()}")

    def query(self, *args: str, timeout: float = 10) -> str:
        """``isnsadm --local`` as the admin's control node (e.g. ``"--query",
        "iscsi-node-type=Target"``): its stdout."""
        return self._isnsadm(*args, timeout=timeout).stdout

    def register(self, *objects: str, timeout: float = 10) -> None:
        """Register objects as another client would (``isnsadm --register``), e.g.
        ``"entity=e1", "target=iqn...", "portal=127.0.0.3:3260", "pg,pgt=5"``."""
        r = subprocess.run(["isnsadm", "-c", "/dev/null", "-s", self.address, "--register",
                            *objects], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise IsnsdError(f"isnsadm --register {' '.join(objects)}: {r.stderr.strip()}")

    def __repr__(self) -> str:
        return f"<Isnsd pid={self.pid} {self.host}:{self.port}>"
