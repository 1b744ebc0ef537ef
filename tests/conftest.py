"""Shared fixtures: a private tgtd with a standard target, fresh targets, CI no-skip rule,
the layer markers and the log check (tests/logcheck.py). The layers: tests/README.md.

Fixtures (see iscsifs_testbed/tgtd.py for the Tgtd API):
  tgtd          session  Tgtd           one private tgtd per pytest run
  tgt_target    session  StandardTarget the standard targets (disk1: LUN 1/2/3, disk2: LUN 1)
  fresh_target  function TargetFactory  make throw-away targets (own tid, removed afterwards)
  two_portals   function TwoPortals     a private tgtd on 127.0.0.1:PORT and 127.0.0.2:PORT
  fuse_available function None          skips unless /dev/fuse is usable (root)
Tests using tgtd/tgt_target/fresh_target/fuse_available are marked ``integration``; every test
in a t4_* or t5_* file is marked ``slow`` (``pytest -m "not slow"`` runs t1-t3 in seconds).

CI rule: with CI set (not "", "0", "false") or ISCSIFS_NO_SKIP=1 (ISCSIFS_NO_SKIP=0 turns it
off), a skip whose reason mentions tgtd, tgtadm, fuse or root is reported as a failure.
Leak rule: a test that leaves a new FUSE mount under pytest's base temp dir, or leaves a tgtd
child process running that no long-lived fixture owns, fails in teardown (and the leak is
cleaned up); at the end of the run any remaining tgtd child or FUSE mount fails the run.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from iscsifs_testbed.tgtd import (INITIATOR_IQN, IQN1, IQN2, MiB, LunInfo, TargetInfo, Tgtd,
                                  TgtadmError, missing_requirements)

pytest_plugins = ("logcheck", "pytester")

INTEGRATION_FIXTURES = {"tgtd", "tgt_target", "fresh_target", "two_portals", "fuse_available"}
SLOW_LAYERS = ("t4_", "t5_")      # a real tgtd, real FUSE mounts

# ---------------------------------------------------------------- CI no-skip rule
_ENFORCED_SKIP = re.compile(r"tgtd|tgtadm|fuse|\broot\b", re.I)


def no_skip_enforced() -> bool:
    flag = os.environ.get("ISCSIFS_NO_SKIP")
    if flag is not None and flag.strip() != "":
        return flag.strip() not in ("0", "false", "no")
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no")


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _enforce(rep) -> None:
    if not rep.skipped or hasattr(rep, "wasxfail") or not no_skip_enforced():
        return
    reason = _skip_reason(rep.longrepr)
    if _ENFORCED_SKIP.search(reason):
        rep.outcome = "failed"
        rep.longrepr = (f"skip not allowed (CI / ISCSIFS_NO_SKIP=1): {reason}\n"
                        "integration prerequisites (tgt, /dev/fuse, root) must be present")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _enforce(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _enforce(outcome.get_result())


def pytest_report_header(config):
    return [f"iscsifs: no-skip rule for tgtd/fuse/root skips: "
            f"{'ON' if no_skip_enforced() else 'off'} (CI / ISCSIFS_NO_SKIP)"]


# ---------------------------------------------------------------- markers
def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs a real tgtd and/or /dev/fuse")
    config.addinivalue_line("markers", "slow: a t4/t5 test (real tgtd or FUSE mount) or a long "
                            "hypothesis run; deselect with -m 'not slow'")
    # mounts and CLI runs without config_dir= must never touch the machine's /etc/iscsifs;
    # mounts without logfile= log under a temp dir, not /var/log/iscsifs, and take their
    # session IDs from a temp counter, not /run/iscsifs/sid
    for var, prefix in (("ISCSIFS_CONFIG_DIR", "iscsifs-test-config-"),
                        ("ISCSIFS_LOG_DIR", "iscsifs-test-log-"),
                        ("ISCSIFS_RUN_DIR", "iscsifs-test-run-")):
        if var not in os.environ:
            os.environ[var] = tempfile.mkdtemp(prefix=prefix)
            config.add_cleanup(lambda var=var: shutil.rmtree(os.environ.pop(var),
                                                             ignore_errors=True))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if item.path.name.startswith(SLOW_LAYERS):
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------- leak checks
def _fuse_mounts() -> set[str]:
    out = set()
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            pre, _, post = line.partition(" - ")
            if post.split(" ", 1)[0].startswith("fuse"):
                out.add(pre.split()[4].replace("\\040", " "))
    except OSError:
        pass
    return out


def _tgtd_children() -> set[int]:
    """tgtd processes that descend from this pytest process."""
    me = os.getpid()
    parent: dict[int, int] = {}
    comm: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state in ("Z", "X"):
            continue
        ppid = int(ppid)
        parent[int(d)], comm[int(d)] = ppid, name
    found = set()
    for pid, name in comm.items():
        if name != "tgtd":
            continue
        p, hops = parent.get(pid, 0), 0
        while p > 1 and hops < 64:
            if p == me:
                found.add(pid)
                break
            p, hops = parent.get(p, 0), hops + 1
    return found


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except OSError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # not our direct child: someone else reaps it
            return
        time.sleep(0.02)


def _unmount(path: str) -> None:
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        try:
            if subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0:
                return
        except (OSError, subprocess.TimeoutExpired):
            continue


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _basetemp(config) -> str | None:
    try:
        return str(config._tmp_path_factory.getbasetemp())
    except Exception:
        return None


_mounts_before: dict[str, set[str]] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _mounts_before[item.nodeid] = _fuse_mounts()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    before = _mounts_before.pop(item.nodeid, set())
    problems = []
    base = _basetemp(item.config)
    if base:
        for m in sorted(_fuse_mounts() - before):
            if _under(m, base):
                problems.append(f"FUSE mount left behind: {m} (unmounted now)")
                _unmount(m)
    for t in list(Tgtd.live):
        if t.stalled:
            problems.append(f"{t!r} left stalled (SIGSTOP) by this test (resumed now)")
            t.resume()
    owned = {t.pid for t in list(Tgtd.live) if t.long_lived}
    for pid in sorted(_tgtd_children() - owned):
        problems.append(f"tgtd pid {pid} left running by this test (killed now)")
        for t in list(Tgtd.live):
            if t.pid == pid:
                t.stop()
                break
        else:
            _kill_and_reap(pid)
    if problems:
        pytest.fail("leak check: " + "; ".join(problems), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    problems = []
    for t in list(Tgtd.live):           # fixtures normally stopped these already
        problems.append(f"harness tgtd still running at exit: {t!r}")
        t.stop()
    for pid in sorted(_tgtd_children()):
        problems.append(f"tgtd child pid {pid} still running at exit (killed)")
        _kill_and_reap(pid)
    base = _basetemp(session.config)
    if base:
        for m in sorted(_fuse_mounts()):
            if _under(m, base):
                problems.append(f"FUSE mount left behind: {m} (unmounted)")
                _unmount(m)
    if problems:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        for p in problems:
            if tr is not None:
                tr.write_line(f"LEAK: {p}", red=True)
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tgtd():
    """The run's private tgtd (iscsifs_testbed.tgtd.Tgtd), started on first use."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    d = Tgtd()
    d.long_lived = True
    d.start()
    try:
        yield d
    finally:
        d.stop()


@dataclasses.dataclass(frozen=True)
class StandardTarget:
    """The session's standard targets.

    disk1 (tid 1, IQN1): LUN 1 64 MiB random, 512 B blocks; LUN 2 16 MiB random, 4096 B blocks;
                         LUN 3 8 MiB random, 512 B blocks, read-only
    disk2 (tid 2, IQN2): LUN 1 8 MiB random, 512 B blocks
    Shared by all tests of the run: tests that write must restore what they change or use
    fresh_target.  Backing files can be read directly to compare (``lun.path``).
    """
    tgtd: Tgtd
    host: str
    port: int
    disk1: TargetInfo
    disk2: TargetInfo
    initiator_name: str = INITIATOR_IQN

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def targets(self) -> tuple[TargetInfo, TargetInfo]:
        return (self.disk1, self.disk2)


@pytest.fixture(scope="session")
def tgt_target(tgtd) -> StandardTarget:
    spec = {
        1: (IQN1, [(1, 64 * MiB, 512, None), (2, 16 * MiB, 4096, None),
                   (3, 8 * MiB, 512, "readonly=1")]),
        2: (IQN2, [(1, 8 * MiB, 512, None)]),
    }
    infos = {}
    for tid, (iqn, luns) in spec.items():
        tgtd.add_target(tid, iqn)
        lun_infos = {}
        for lun, size, bs, params in luns:
            path = tgtd.make_backing_file(f"std-t{tid}-lun{lun}.img", size, "random")
            tgtd.add_lun(tid, lun, path, blocksize=bs, params=params)
            lun_infos[lun] = LunInfo(lun, path, size, bs, readonly=params == "readonly=1")
        tgtd.bind(tid, "ALL")
        infos[tid] = TargetInfo(tid, iqn, lun_infos, tgtd.host, tgtd.port)
    return StandardTarget(tgtd, tgtd.host, tgtd.port, infos[1], infos[2])


class TargetFactory:
    """``fresh_target(luns=..., iqn=None, bind="ALL", params=None) -> TargetInfo``.

    luns: list of ``(size_bytes, block_size)`` or ``(size, block_size, lu_params)`` or
          ``(size, block_size, lu_params, fill)``, numbered 1.. (default one 8 MiB LUN,
          512 B blocks, random fill).
    params: target parameters set before binding, e.g. {"HeaderDigest": "CRC32C"}.
    bind: initiator address to bind ("ALL"), or None to leave the target unbound.
    Also ``add_account(tid, user, password, outgoing=False)`` (account created and bound;
    deleted at teardown).  ``.tgtd`` is the session Tgtd.  Everything is removed afterwards.
    """

    _next_tid = 100

    def __init__(self, tgtd: Tgtd, name: str):
        self.tgtd = tgtd
        self._name = re.sub(r"[^a-z0-9.-]", "-", name.lower())[:60].strip("-") or "t"
        self._tids: list[int] = []
        self._accounts: list[str] = []
        self._files: list[Path] = []

    def __call__(self, luns=None, *, iqn: str | None = None, bind: str | None = "ALL",
                 params: dict | None = None) -> TargetInfo:
        tid = TargetFactory._next_tid
        TargetFactory._next_tid += 1
        iqn = iqn or f"iqn.2026-11.org.iscsifs.test:fresh-{tid}-{self._name}"
        luns = luns if luns is not None else [(8 * MiB, 512)]
        self.tgtd.add_target(tid, iqn)
        self._tids.append(tid)
        infos = {}
        for n, spec in enumerate(luns, start=1):
            size, bs = spec[0], spec[1]
            lu_params = spec[2] if len(spec) > 2 else None
            fill = spec[3] if len(spec) > 3 else "random"
            path = self.tgtd.make_backing_file(f"fresh-t{tid}-lun{n}.img", size, fill)
            self._files.append(path)
            self.tgtd.add_lun(tid, n, path, blocksize=bs, params=lu_params)
            infos[n] = LunInfo(n, path, size, bs,
                               readonly=bool(lu_params and "readonly=1" in lu_params))
        for k, v in (params or {}).items():
            self.tgtd.set_param(tid, k, v)
        if bind:
            self.tgtd.bind(tid, bind)
        return TargetInfo(tid, iqn, infos, self.tgtd.host, self.tgtd.port)

    def add_account(self, tid: int, user: str, password: str, outgoing: bool = False) -> None:
        self.tgtd.add_account(user, password)
        self._accounts.append(user)
        self.tgtd.bind_account(tid, user, outgoing=outgoing)

    def cleanup(self) -> None:
        if self.tgtd.running:
            self.tgtd.resume()          # a test may have left it stalled
            for tid in self._tids:
                try:
                    self.tgtd.delete_target(tid, force=True)
                except TgtadmError:
                    pass
            for user in self._accounts:
                try:
                    self.tgtd.delete_account(user)
                except TgtadmError:
                    pass
        for p in self._files:
            try:
                p.unlink()
            except OSError:
                pass


@pytest.fixture
def fresh_target(tgtd, request):
    factory = TargetFactory(tgtd, request.node.name)
    try:
        yield factory
    finally:
        factory.cleanup()


@dataclasses.dataclass(frozen=True)
class TwoPortals:
    """A private tgtd listening on two addresses: one target (tid 1, ``iqn``) with LUN 1
    48 MiB and LUN 2 8 MiB (512 B blocks, random), reachable at both ``portals``
    (127.0.0.1:PORT and 127.0.0.2:PORT). ``backing[n]`` is LUN n's file."""
    tgtd: Tgtd
    iqn: str
    backing: dict
    portals: tuple[str, str]


@pytest.fixture
def two_portals(tmp_path):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    tgtd = Tgtd(workdir=tmp_path / "tgtd-two-portals")
    tgtd.start()
    try:
        iqn = "iqn.2026-11.org.iscsifs.test:multipath"
        tgtd.add_target(1, iqn)
        backing = {}
        for lun, size in ((1, 48 * MiB), (2, 8 * MiB)):
            backing[lun] = tgtd.make_backing_file(f"mp-lun{lun}.img", size, "random")
            tgtd.add_lun(1, lun, backing[lun])
        tgtd.bind(1, "ALL")
        second = tgtd.add_portal("127.0.0.2")
        yield TwoPortals(tgtd, iqn, backing, (tgtd.portal, second))
    finally:
        tgtd.stop()


@pytest.fixture
def fuse_available():
    """Skip (reason mentions /dev/fuse / root) unless FUSE mounts can work here."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse not present (load the fuse module)")
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse not accessible: needs root or fuse group")
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        pytest.skip(f"pyfuse3 (fuse) not importable: {e}")
