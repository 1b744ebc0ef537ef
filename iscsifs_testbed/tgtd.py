"""Test harness: a private tgtd (Linux SCSI target framework) per test run.

``Tgtd`` starts its own ``tgtd -f -C <ctl> --iscsi portal=127.0.0.1:<port>``:

* control port (``-C``): the first number in a pid-derived window of
  ``CTL_RANGE`` that we can lock (``flock`` on a file in the temp dir, held
  while the daemon lives, so parallel test runs never pick the same one), that
  has no ``/var/run/tgtd/socket.N`` and no tgtd answering on it;
* iSCSI portal: a free TCP port on 127.0.0.1 (bind port 0); after start we
  check that *our* tgtd owns the listening socket (tgtd keeps running when the
  portal cannot be bound) and retry with another port if not.

It stops only its own PID: targets deleted, ``--mode sys --op delete``, then
SIGTERM / SIGKILL, every wait bounded; the socket files it created are removed.
The child also gets PR_SET_PDEATHSIG so a killed pytest does not leave it behind.

Everything that talks to tgtadm raises ``TgtadmError`` carrying tgtadm's stderr.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable

MiB = 1 << 20
IQN1 = "iqn.2026-11.org.iscsifs.test:disk1"        # the standard targets (conftest tgt_target)
IQN2 = "iqn.2026-11.org.iscsifs.test:disk2"
INITIATOR_IQN = "iqn.2026-11.org.iscsifs.test:initiator"

SOCKET_DIR = Path("/var/run/tgtd")
CTL_RANGE = range(1000, 3000)          # control port numbers we may use (bench uses 7..60)
LOCK_DIR = Path(tempfile.gettempdir()) / "iscsifs-tgtd-locks"
HOST = "127.0.0.1"
TGTADM_TIMEOUT = 15.0                  # seconds for one tgtadm call
START_TIMEOUT = 10.0                   # seconds for tgtd to answer tgtadm
STOP_TIMEOUT = 5.0                     # seconds per stop stage


class TgtError(RuntimeError):
    """The harness could not do what was asked (start, stop, port selection)."""


class TgtadmError(TgtError):
    """tgtadm failed; ``.stderr`` holds its message, ``.returncode`` its exit status."""

    def __init__(self, args: list[str], returncode: int | None, stderr: str, stdout: str = ""):
        self.args_ = list(args)
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.stdout = stdout
        super().__init__(f"{' '.join(args)} -> exit {returncode}: {self.stderr or '(no stderr)'}")


@dataclasses.dataclass(frozen=True)
class Connection:
    """One row of ``tgtadm --op show --mode conn``."""
    sid: int
    cid: int
    initiator: str
    address: str | None = None


@dataclasses.dataclass(frozen=True)
class LunInfo:
    lun: int
    path: Path
    size: int               # bytes
    block_size: int
    readonly: bool = False

    @property
    def num_blocks(self) -> int:
        return self.size // self.block_size


@dataclasses.dataclass(frozen=True)
class TargetInfo:
    tid: int
    iqn: str
    luns: dict[int, LunInfo]
    host: str
    port: int

    @property
    def portal(self) -> str:
        """``127.0.0.1:PORT`` (what a user would type)."""
        return f"{self.host}:{self.port}"


def missing_requirements() -> str | None:
    """Why a private tgtd cannot run here (a skip reason), or None."""
    missing = [t for t in ("tgtd", "tgtadm") if shutil.which(t) is None]
    if missing:
        return f"tgtd harness: {' and '.join(missing)} not on PATH (install the 'tgt' package)"
    if os.geteuid() != 0:
        return f"tgtd harness: tgtd needs root (running as uid {os.geteuid()})"
    return None


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _listening_inodes(pid: int, port: int) -> set[str]:
    """Inodes of LISTEN sockets on 127.0.0.1:port (or any addr) seen from pid's netns."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != "0A":  # 0A = LISTEN
                continue
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def _pid_socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_tcp_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Tgtd:
    """A private tgtd.  Use as a context manager or call ``start()`` / ``stop()``.

    Attributes after ``start()``: ``pid``, ``ctl`` (the -C number), ``host``,
    ``port``, ``portal`` ("127.0.0.1:PORT"), ``workdir`` (temp dir with the log
    and backing files), ``log_path``.
    """

    live: "set[Tgtd]" = set()     # started and not yet stopped (strong refs: leak cleanup)

    def __init__(self, *, host: str = HOST, workdir: str | os.PathLike | None = None,
                 keep_workdir: bool = False):
        self.host = host
        self.port: int | None = None
        self.ctl: int | None = None
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.keep_workdir = keep_workdir
        self.log_path: Path | None = None
        self.long_lived = False      # set by session-scoped fixtures (leak checker)
        self._lock_fd: int | None = None
        self._created_socket_files: list[Path] = []
        self._stalled = False
        self._tids: set[int] = set()
        self._accounts: set[str] = set()

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Tgtd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Tgtd":
        if self.proc is not None:
            raise TgtError("tgtd already started")
        reason = missing_requirements()
        if reason:
            raise TgtError(reason)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="iscsifs-tgtd-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        last = ""
        for attempt in range(4):
            self._pick_ctl()
            try:
                if self._launch(free_tcp_port(self.host), attempt):
                    Tgtd.live.add(self)
                    return self
                last = self.log_tail()
            except BaseException:
                self._terminate()
                self._release_ctl()
                raise
            self._terminate()
            self._release_ctl()
        raise TgtError(f"tgtd did not start after 4 attempts; log tail:\n{last}")

    def _pick_ctl(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        n = len(CTL_RANGE)
        first = (os.getpid() * 7 + random.randrange(64)) % n
        for i in range(n):
            ctl = CTL_RANGE[(first + i) % n]
            lock = LOCK_DIR / f"ctl.{ctl}.lock"
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    continue
                raise
            sock = SOCKET_DIR / f"socket.{ctl}"
            if sock.exists() or sock.with_name(sock.name + ".lock").exists() or self._answers(ctl):
                os.close(fd)
                continue
            self.ctl, self._lock_fd = ctl, fd
            return
        raise TgtError(f"no free tgtd control port in {CTL_RANGE}")

    def _release_ctl(self) -> None:
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = None

    @staticmethod
    def _answers(ctl: int) -> bool:
        try:
            r = subprocess.run(["tgtadm", "-C", str(ctl), "--mode", "sys", "--op", "show"],
                               capture_output=True, timeout=5)
        except subprocess.TimeoutExpired:
            return True  # something is there, but hung: not ours to use
        return r.returncode == 0

    def _launch(self, port: int, attempt: int) -> bool:
        assert self.workdir is not None and self.ctl is not None
        self.port = port
        self.log_path = self.workdir / f"tgtd.{attempt}.log"
        sock = SOCKET_DIR / f"socket.{self.ctl}"
        self._created_socket_files = [p for p in (sock, sock.with_name(sock.name + ".lock"))
                                      if not p.exists()]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["tgtd", "-f", "-C", str(self.ctl), "--iscsi", f"portal={self.host}:{port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_set_pdeathsig, close_fds=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            r = subprocess.run(["tgtadm", "-C", str(self.ctl), "--mode", "sys", "--op", "show"],
                               capture_output=True, text=True, timeout=5)
            if r.returncode == 0:
                if "failed to create/bind to portal" in self.log_tail():
                    return False
                # tgtd stays up when the portal bind fails: check the listener is ours
                mine = _listening_inodes(self.pid, port) & _pid_socket_inodes(self.pid)
                if mine:
                    return True
            time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        """Stop our process (no tgtadm), bounded; remove socket files we created."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            if self._stalled:
                self.resume()
            for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None:
            try:
                proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
        for p in self._created_socket_files:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self._created_socket_files = []
        self.proc = None

    def stop(self) -> None:
        """Delete targets, shut tgtd down, kill it if it does not go; idempotent."""
        if self.proc is None:
            self._release_ctl()
            return
        try:
            if self.proc.poll() is None:
                if self._stalled:
                    self.resume()
                try:
                    for tid in self.tids():
                        try:
                            self.delete_target(tid, force=True)
                        except TgtadmError:
                            pass
                    self._tgtadm(["--mode", "sys", "--op", "delete"], lld=False, timeout=5)
                except (TgtadmError, subprocess.TimeoutExpired):
                    pass
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            self._terminate()
        finally:
            self._release_ctl()
            Tgtd.live.discard(self)
            if self._own_workdir and not self.keep_workdir and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    # ------------------------------------------------------------ tgtadm
    def _tgtadm(self, args: Iterable[str], *, lld: bool = True,
                timeout: float = TGTADM_TIMEOUT) -> str:
        if self.ctl is None or self.proc is None:
            raise TgtError("tgtd is not running")
        cmd = ["tgtadm", "-C", str(self.ctl)] + (["--lld", "iscsi"] if lld else []) + [str(a) for a in args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise TgtadmError(cmd, None, f"timed out after {timeout}s"
                              + (" (tgtd is stalled)" if self._stalled else "")) from e
        if r.returncode != 0:
            raise TgtadmError(cmd, r.returncode, r.stderr, r.stdout)
        return r.stdout

    def tgtadm(self, *args: str, lld: bool = True) -> str:
        """Run any tgtadm command against this tgtd; returns stdout."""
        return self._tgtadm(args, lld=lld)

    def show_system(self) -> str:
        return self._tgtadm(["--mode", "sys", "--op", "show"], lld=False)

    def show_targets(self) -> str:
        return self._tgtadm(["--mode", "target", "--op", "show"])

    def tids(self) -> list[int]:
        return [int(m) for m in re.findall(r"^Target (\d+):", self.show_targets(), re.M)]

    def target_params(self, tid: int) -> dict[str, str]:
        """``--op show --mode target --tid T``: the key=value parameter list."""
        out = self._tgtadm(["--mode", "target", "--op", "show", "--tid", tid])
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def add_target(self, tid: int, iqn: str) -> None:
        self._tgtadm(["--mode", "target", "--op", "new", "--tid", tid, "--targetname", iqn])
        self._tids.add(tid)

    def delete_target(self, tid: int, force: bool = True) -> None:
        self._tgtadm(["--mode", "target", "--op", "delete", "--tid", tid]
                     + (["--force"] if force else []))
        self._tids.discard(tid)

    def add_lun(self, tid: int, lun: int, path: str | os.PathLike, blocksize: int = 512,
                params: str | None = None, bstype: str | None = None) -> None:
        """New LU; ``params`` like "readonly=1" (applied with --op update: tgt 1.0.85
        refuses --params on --op new)."""
        args = ["--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", lun,
                "--backing-store", os.fspath(path), "--blocksize", blocksize]
        if bstype:
            args += ["--bstype", bstype]
        self._tgtadm(args)
        if params:
            try:
                self.update_lun(tid, lun, params)
            except TgtadmError:
                self.delete_lun(tid, lun)
                raise

    def update_lun(self, tid: int, lun: int, params: str) -> None:
        self._tgtadm(["--mode", "logicalunit", "--op", "update", "--tid", tid, "--lun", lun,
                      "--params", params])

    def delete_lun(self, tid: int, lun: int) -> None:
        self._tgtadm(["--mode", "logicalunit", "--op", "delete", "--tid", tid, "--lun", lun])

    def bind(self, tid: int, address: str = "ALL") -> None:
        self._tgtadm(["--mode", "target", "--op", "bind", "--tid", tid,
                      "--initiator-address", address])

    def unbind(self, tid: int, address: str = "ALL") -> None:
        self._tgtadm(["--mode", "target", "--op", "unbind", "--tid", tid,
                      "--initiator-address", address])

    def set_param(self, tid: int, name: str, value: str | int) -> None:
        """Target parameter (HeaderDigest, DataDigest, InitialR2T, ImmediateData,
        MaxRecvDataSegmentLength, FirstBurstLength, MaxBurstLength, nop_interval,
        nop_count, ...).  Applies to logins after the change."""
        self._tgtadm(["--mode", "target", "--op", "update", "--tid", tid, "-n", name, "-v", value])

    def add_portal(self, host: str, port: int | None = None) -> str:
        """Listen on another address too (``--op new --mode portal``), on our port unless
        ``port`` is given; returns the portal as ``host:port``. Every target is reachable
        there, and SendTargets lists it."""
        portal = f"{host}:{port if port is not None else self.port}"
        self._tgtadm(["--mode", "portal", "--op", "new", "--param", f"portal={portal}"])
        return portal

    def delete_portal(self, portal: str) -> None:
        self._tgtadm(["--mode", "portal", "--op", "delete", "--param", f"portal={portal}"])

    def show_portals(self) -> list[str]:
        """``--op show --mode portal``: the portals tgtd listens on (``host:port``)."""
        out = self._tgtadm(["--mode", "portal", "--op", "show"])
        return re.findall(r"^Portal:\s*(\S+?),\d+$", out, re.M)

    def use_isns(self, host: str, port: int) -> None:
        """Register every target with the iSNS server at host:port (tgt's iSNS client: it
        registers its targets, portals and portal groups, and each target added later).
        tgt 1.0.85's registration is broken with more than one portal (open-isns refuses
        the first target's: an Entity Protocol attribute between portals), and ``iSNS Off``
        hangs tgtadm: use a tgtd of one portal, and stop it rather than switching iSNS off."""
        for name, value in (("iSNSServerIP", host), ("iSNSServerPort", port), ("iSNS", "On")):
            self._tgtadm(["--mode", "sys", "--op", "update", "--name", name, "-v", value],
                         lld=False)

    def show_connections(self, tid: int) -> list[Connection]:
        out = self._tgtadm(["--mode", "conn", "--op", "show", "--tid", tid])
        conns: list[Connection] = []
        sid: int | None = None
        cur: dict | None = None

        def flush():
            if cur is not None:
                conns.append(Connection(**cur))
        for raw in out.splitlines():
            line = raw.strip()
            if m := re.match(r"Session:\s*(\d+)", line):
                flush(); cur = None
                sid = int(m.group(1))
            elif (m := re.match(r"Connection:\s*(\d+)", line)) and sid is not None:
                flush()
                cur = {"sid": sid, "cid": int(m.group(1)), "initiator": "", "address": None}
            elif cur is not None and line.startswith("Initiator:"):
                words = line.split(":", 1)[1].split()
                cur["initiator"] = words[0] if words else ""
            elif cur is not None and line.startswith("IP Address:"):
                cur["address"] = line.split(":", 1)[1].strip()
        flush()
        return conns

    def drop_connection(self, tid: int, sid: int, cid: int) -> None:
        self._tgtadm(["--mode", "conn", "--op", "delete", "--tid", tid, "--sid", sid, "--cid", cid])

    def drop_all_connections(self, tid: int) -> int:
        n = 0
        for c in self.show_connections(tid):
            try:
                self.drop_connection(tid, c.sid, c.cid)
                n += 1
            except TgtadmError:
                pass  # went away by itself
        return n

    def wait_connections(self, tid: int, count: int, timeout: float = 10.0) -> list[Connection]:
        """Poll (bounded) until the target has exactly ``count`` connections."""
        deadline = time.monotonic() + timeout
        while True:
            conns = self.show_connections(tid)
            if len(conns) == count or time.monotonic() >= deadline:
                if len(conns) != count:
                    raise TgtError(f"tid {tid}: {len(conns)} connections after {timeout}s, wanted {count}")
                return conns
            time.sleep(0.05)

    def add_account(self, user: str, password: str) -> None:
        self._tgtadm(["--mode", "account", "--op", "new", "--user", user, "--password", password])
        self._accounts.add(user)

    def bind_account(self, tid: int, user: str, outgoing: bool = False) -> None:
        self._tgtadm(["--mode", "account", "--op", "bind", "--tid", tid, "--user", user]
                     + (["--outgoing"] if outgoing else []))

    def unbind_account(self, tid: int, user: str, outgoing: bool = False) -> None:
        self._tgtadm(["--mode", "account", "--op", "unbind", "--tid", tid, "--user", user]
                     + (["--outgoing"] if outgoing else []))

    def delete_account(self, user: str) -> None:
        self._tgtadm(["--mode", "account", "--op", "delete", "--user", user])
        self._accounts.discard(user)

    # ------------------------------------------------------------ faults
    def stall(self) -> None:
        """SIGSTOP tgtd (connections stay open, nothing is answered; tgtadm hangs)."""
        if self.proc is None or self.pid is None:
            raise TgtError("tgtd is not running")
        os.kill(self.pid, signal.SIGSTOP)
        self._stalled = True
        deadline = time.monotonic() + 5  # SIGSTOP is asynchronous: wait until it took effect
        while time.monotonic() < deadline and _proc_state(self.pid) not in ("T", "t", "Z", None):
            time.sleep(0.005)

    def resume(self) -> None:
        if self.pid is not None and _pid_alive(self.pid):
            os.kill(self.pid, signal.SIGCONT)
        self._stalled = False

    def kill_and_restart(self, downtime: float = 0.0, timeout: float = 30.0) -> int:
        """A target crash and restart: SIGKILL tgtd, wait ``downtime`` s, start a new tgtd
        on the same portal and control port. Its targets, LUNs and accounts are gone (the
        caller configures them again, as an admin's start-up script would). Returns the
        number of launches it took; TgtError when it cannot restart within ``timeout``.

        Start tgtd and call this from the same thread: the child dies with the thread that
        started it (PR_SET_PDEATHSIG)."""
        if self.proc is None or self.port is None:
            raise TgtError("tgtd is not running")
        port = self.port
        if self._stalled:
            self.resume()
        self.proc.kill()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise TgtError(f"tgtd pid {self.pid} did not die after SIGKILL") from None
        for path in self._created_socket_files:      # it had no chance to remove them
            path.unlink(missing_ok=True)
        self._created_socket_files = []
        self.proc = None
        self._tids.clear()
        self._accounts.clear()
        time.sleep(downtime)
        deadline = time.monotonic() + timeout
        launches = 0
        while True:
            if _port_free(self.host, port):
                launches += 1
                if self._launch(port, 100 + launches):
                    return launches
                self._terminate()
            if time.monotonic() > deadline:
                raise TgtError(f"tgtd did not restart on port {port} within {timeout:g} s; "
                               f"log tail:\n{self.log_tail(600)}")
            time.sleep(0.1)

    # ------------------------------------------------------------ files
    def make_backing_file(self, name: str, size: int, fill: str = "random",
                          seed: int | None = None) -> Path:
        """A backing file under the work dir: "zero" is sparse, "random" is
        pseudo-random (seeded from ``name`` unless ``seed`` is given: reproducible)."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="iscsifs-tgtd-"))
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad backing file name {name!r}")
        path = self.workdir / name
        if fill == "zero":
            with open(path, "wb") as f:
                f.truncate(size)
        elif fill == "random":
            rng = random.Random(seed if seed is not None else name)
            chunk = 1 << 20
            with open(path, "wb") as f:
                left = size
                while left > 0:
                    n = min(chunk, left)
                    f.write(rng.randbytes(n))
                    left -= n
        else:
            raise ValueError(f"fill must be 'random' or 'zero', not {fill!r}")
        return path

    def __repr__(self) -> str:
        return f"<Tgtd pid={self.pid} ctl={self.ctl} portal={self.host}:{self.port}>"
