"""One simulated run (a seed), many runs, replays and shrinking.

Owns: :class:`World` (what one run shares: the seed's random streams, the mock clock's timers,
the trace, the target, the fault plan, the checker, the workload), the patches that make a run
deterministic and observable (trio's scheduler seeded, the session's random ISIDs drawn from
the seed, ``Session.execute`` and ``Session.close`` recorded, the product's log lines put in the
trace), :func:`run_seed`, :func:`shrink` and the formatting of a failure report.

Determinism: trio shuffles each batch of runnable tasks with a module-level
``random.Random`` (``trio._core._run._r``); with ``_ALLOW_DETERMINISTIC_SCHEDULING`` set (what
trio's own Hypothesis plugin does) it first sorts the batch by task creation order, so seeding
``_r`` makes the schedule a function of the seed. The clock is a ``MockClock`` with
``autojump_threshold=0``; nothing reads real time, nothing does real I/O; ISIDs come from the
seed. The same seed gives the same trace, in this process or another (``scripts/sim`` fixes
``PYTHONHASHSEED``).
"""

from __future__ import annotations

import contextlib
import hashlib
import errno
import heapq
import itertools
import logging
import random
import time
import traceback
import types
from dataclasses import dataclass, field

import trio
import trio.testing

from iscsifs.core.discovery import Portal
from iscsifs.core.pdu import (R2T, AsyncMessage, DataIn, DataOut, LoginRequest, LoginResponse,
                              LogoutRequest, LogoutResponse, NopIn, NopOut, Reject, ScsiCommand,
                              ScsiResponse, TaskManagementRequest, TaskManagementResponse,
                              TextRequest, TextResponse)
from iscsifs.errors import ConnectionLost
from iscsifs.net import session as session_mod
from iscsifs.net.session import RETRY_CAP, Session, Timeouts

from .checker import Checker
from .disk import CELLS_PER_BLOCK, LogicalUnit
from .faults import FaultPlan
from .net import SimConn, SimTransport
from .target import PortalSpec, Target, TargetParams
from .workload import Workload

TARGET = "iqn.2026-11.org.iscsifs.sim:target"


@dataclass
class Result:
    seed: int
    violation: tuple | None          # (invariant, message, sim time)
    trace: list
    faults: list
    suppressed: list
    checks: dict
    wall: float
    sim_time: float
    disabled: frozenset = frozenset()
    keep: frozenset | None = None
    ops: dict = field(default_factory=dict)
    enabled: tuple = ()
    max_seen: dict = field(default_factory=dict)
    violations: dict = field(default_factory=dict)      # invariant -> messages (keep_going)

    @property
    def failed(self) -> bool:
        return self.violation is not None


class World:
    def __init__(self, seed: int, *, disabled=frozenset(), keep=None, only=None,
                 lu_swap=False, keep_going: bool = False, canary: str | None = None):
        self.seed = seed
        # keep_going: record every kind of violation and run on (to tell several defects
        # apart); otherwise the first violation ends the run
        self.keep_going = keep_going
        self.violations: dict[str, list[str]] = {}
        crng = random.Random(f"config-{seed}")
        self.wrng = random.Random(f"workload-{seed}")
        self.target_rng = random.Random(f"target-{seed}")
        self.net_rng = random.Random(f"net-{seed}")
        self.seq = 0
        self.trace_list: list = []
        self.failed: tuple | None = None
        self.closing = False
        self.last_warning: str | None = None
        self.warnings: list[str] = []
        self.limits: dict = {"tombstones": 8}
        self.transports: list = []
        self.conn_ids = itertools.count(1)
        self._heap: list = []
        self._tn = 0
        self._tev: trio.Event | None = None
        self.nursery = None
        self.root = None
        self.faults = FaultPlan(seed, disabled=frozenset(disabled),
                                keep=None if keep is None else frozenset(keep), only=only,
                                lu_swap=lu_swap, canary=canary)
        self.faults.world = self
        self.checker = Checker(self)

        # the configuration this seed runs
        scale = crng.choice((0.2, 0.5, 1.0))
        self.timeouts = Timeouts(
            login=15 * scale, logout=15 * scale,
            noop_out_interval=crng.choice((5, 5, 5, 0)) * scale, noop_out_timeout=5 * scale,
            replacement_timeout=crng.choice((10, 20, 30, 60, 120)) * scale,
            abort=15 * scale, lu_reset=30 * scale, tgt_reset=30 * scale, command=30 * scale)
        self.duration = crng.choice((60, 120, 240))
        self.up_capacity = crng.choice((16384, 32768, 65536, 262144))
        host_count = crng.choice((1, 2, 2))
        portals = [PortalSpec(f"127.0.0.{i + 1}", 3260, 1 + i) for i in range(host_count)]
        portals.append(PortalSpec("127.0.0.9", 3260, 9, hidden=True))
        self.pairs_portals = [(Portal(p.host, p.port), p) for p in portals if not p.hidden]
        lun_map = {}
        for n in range(crng.choice((1, 1, 2))):
            lun_map[n] = LogicalUnit(1 + n, crng.choice((64, 128, 256)),
                                     granularity=crng.choice((1, 1, 8)),
                                     max_transfer_blocks=crng.choice((0, 0, 16, 128)),
                                     unmap=crng.random() < 0.7)
        fb = crng.choice((512, 4096, 65536))
        mb = crng.choice((4096, 16384, 262144))
        params = TargetParams(initial_r2t=crng.random() < 0.5,
                              immediate_data=crng.random() < 0.7,
                              first_burst=min(fb, mb), max_burst=mb,
                              mrdsl=crng.choice((2048, 8192, 65536)),
                              window=crng.choice((4, 16, 64)),
                              # a slow target with every scale of timeouts too (scale 0.2
                              # makes command_timeout 6 s: 64 commands queued behind a queue
                              # depth of 1 at 0.1 s each wait longer than that for their turn,
                              # which is not a timeout: their timers start with their CmdSN)
                              service=crng.choice(((0.0, 0.001), (0.0, 0.02), (0.001, 0.2))),
                              r2t_delay=crng.choice((0.0, 0.002, 0.02)))
        self.target = Target(self, TARGET, portals, lun_map, params)
        self.lu_by_wwn: dict[str, LogicalUnit] = {}
        self.all_lus: list[LogicalUnit] = []
        for lu in lun_map.values():
            self.lu_added(lu)
        self.isids = itertools.count(crng.randrange(1 << 20))

    # ------------------------------------------------------------------ bookkeeping
    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def trace(self, *items) -> None:
        self.trace_list.append((trio.current_time(), *items))

    def trace_pdu(self, direction: str, conn, pdu) -> None:
        self.trace_list.append((trio.current_time(), direction, conn.id, brief(pdu)))

    @property
    def stopped(self) -> bool:
        """A violation ended the run (checks stop, so that one failure is reported)."""
        return self.failed is not None and not self.keep_going

    def violation(self, invariant: str, message: str) -> None:
        if self.stopped:
            return
        now = trio.current_time()
        msgs = self.violations.setdefault(invariant, [])
        if len(msgs) >= 8 or message in msgs:
            return
        msgs.append(message)
        self.trace("VIOLATION", invariant, message)
        if self.failed is None:
            self.failed = (invariant, message, now)
        if not self.keep_going and self.root is not None:
            self.root.cancel()

    def step(self) -> None:
        self.checker.step()

    def lu_added(self, lu: LogicalUnit) -> None:
        self.lu_by_wwn[lu.wwn] = lu
        self.all_lus.append(lu)
        self.checker.model.add_lu(lu.tag, lu.blocks * CELLS_PER_BLOCK)

    def lu_grew(self, lu: LogicalUnit) -> None:
        self.checker.model.grow_lu(lu.tag, lu.blocks * CELLS_PER_BLOCK)

    # ------------------------------------------------------------------ timers
    def call_at(self, when: float, fn, *args, **kw) -> None:
        entry = (when, self._tn, fn, args, kw)
        self._tn += 1
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry and self._tev is not None:
            self._tev.set()

    async def _timers(self) -> None:
        heap = self._heap
        while True:
            if not heap:
                self._tev = trio.Event()
                await self._tev.wait()
                continue
            when = heap[0][0]
            if when > trio.current_time():
                self._tev = trio.Event()
                with trio.move_on_at(when):
                    await self._tev.wait()
                continue
            _, _, fn, args, kw = heapq.heappop(heap)
            fn(*args, **kw)
            if self._tn % 16 == 0:
                await trio.lowlevel.checkpoint()

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(1)
            self.checker.heartbeat()

    # ------------------------------------------------------------------ network
    async def connect(self, portal: Portal) -> SimTransport:
        """The Session's transport factory: a new in-memory connection to ``portal``."""
        await trio.sleep(self.net_rng.uniform(0, 0.005))
        target = self.target
        spec = target.portal_at(portal.host, portal.port)
        if spec is None or not target.up:
            raise ConnectionLost(f"cannot connect to {portal.host}:{portal.port}: Connection "
                                 f"refused", errno=errno.ECONNREFUSED)
        conn = SimConn(self, next(self.conn_ids), portal, self.up_capacity)
        self.trace("connect", conn.id, portal.host)
        target.accept(conn, spec)
        transport = SimTransport(conn, portal)
        self.transports.append(transport)
        return transport

    # ------------------------------------------------------------------ the run
    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.root = nursery.cancel_scope
            nursery.start_soon(self._timers)
            nursery.start_soon(self._heartbeat)
            t = self.timeouts
            per_exec = t.replacement_timeout + t.command + t.abort + t.lu_reset + t.tgt_reset \
                + t.login + RETRY_CAP
            limit = 120 + self.duration + 12 * per_exec + 4 * t.logout + 300
            with trio.move_on_after(limit):
                await self.scenario()
            if trio.current_time() >= limit:
                self.violation("bound.never_returned", f"the run did not end within {limit:g} s "
                               f"of simulated time; {self.pending_summary()}; last: "
                               f"{self.trace_list[-1] if self.trace_list else ''}")
            nursery.cancel_scope.cancel()

    async def scenario(self) -> None:
        t = self.timeouts
        wl = self.workload = Workload(self)
        ok, exc = None, None
        with trio.move_on_after(120):
            ok, exc = await wl.call("setup", wl.setup)
        if not ok:
            self.violation("liveness", f"setup without faults failed: "
                           f"{exc if ok is False else 'timed out'}")
            return
        cmds = self.limits["cmds_max"]
        per_cmd = wl.max_command_bytes + 64 * (wl.max_command_bytes // 512 + 2)
        # the session's own bound on the backlog (16384 buffers when it states none), plus
        # what its commands may add between two checks
        declared = getattr(session_mod, "MAX_BACKLOG_BUFFERS", 16384)
        self.limits["backlog_bytes"] = declared * 64 + cmds * per_cmd + 65536
        self.limits["backlog_buffers"] = declared + cmds * 3 * (wl.max_command_bytes // 512 + 2) \
            + 512
        now = trio.current_time()
        faults = self.faults
        faults.start = now
        faults.horizon = horizon = now + self.duration
        self.nursery.start_soon(faults.run, self.target)
        escalation = t.command + t.abort + t.lu_reset + t.tgt_reset
        recovery = t.login + RETRY_CAP + 2
        per_exec = t.replacement_timeout + escalation + t.login + RETRY_CAP
        async with trio.open_nursery() as clients:
            self.active = 0
            per_client = max(1, wl.ops // wl.clients)
            for i in range(wl.clients):
                clients.start_soon(self._client, wl, i, per_client, horizon)
            if wl.admin_on:
                clients.start_soon(self._admin, wl, horizon)
            await trio.sleep_until(horizon)
            faults.heal(self.target)
            self.trace("horizon")
            await trio.sleep(recovery)
            with trio.move_on_after(2 * escalation + per_exec + 30) as scope:
                await wl.liveness()
            if scope.cancelled_caught:
                self.violation("liveness", "I/O did not complete after the faults stopped "
                               f"(within {2 * escalation + per_exec + 30:g} s)")
            deadline = trio.current_time() + 8 * per_exec
            while self.active and trio.current_time() < deadline:
                await trio.sleep(1)
            if self.active:
                self.violation("bound.never_returned", f"{self.active} client(s) still waiting "
                               f"{8 * per_exec:g} s after the faults stopped; "
                               f"{self.pending_summary()}")
            clients.cancel_scope.cancel()
        if self.stopped:
            return
        await wl.unmount()
        await trio.sleep(1)
        if self.stopped:
            return
        if self.checker.pending:
            self.violation("unmount.pending", f"after unmount: {self.pending_summary()}")
            return
        left = [s for s in self.target.sessions.values()
                if s.conn is not None and not s.conn.dead and not s.conn.logged_out]
        if left:
            self.violation("unmount.session_left", f"{len(left)} session(s) still logged in "
                           f"at the target after unmount (ISID "
                           f"{', '.join(hex(s.nexus[1]) for s in left)})")
            return
        self.checker.final_disks(self.all_lus)

    def pending_summary(self) -> str:
        recs = list(self.checker.pending)
        if not recs:
            return "no command pending"
        now = trio.current_time()
        return f"{len(recs)} command(s) pending, e.g. " + ", ".join(
            f"0x{r.cdb[:1].hex()} on sid {r.session.sid} ({r.session.session_state}) for "
            f"{now - r.start_t:.1f} s" for r in recs[:3])

    async def _client(self, wl, i, ops, horizon) -> None:
        self.active += 1
        try:
            await wl.client(i, ops, horizon)
        finally:
            self.active -= 1

    async def _admin(self, wl, horizon) -> None:
        self.active += 1
        try:
            await wl.admin(horizon)
        finally:
            self.active -= 1


# ---------------------------------------------------------------------- trace formatting
def brief(pdu) -> tuple:
    if pdu is None:
        return ("raw",)
    t = type(pdu)
    if t is ScsiCommand:
        return ("SCSI Command", pdu.itt, pdu.cmd_sn, pdu.cdb[0],
                int.from_bytes(pdu.cdb[2:6], "big") if pdu.cdb[0] in (0x28, 0x2A) else None,
                pdu.expected_data_transfer_length, len(pdu.data))
    if t is DataOut:
        return ("Data-Out", pdu.itt, pdu.ttt, pdu.buffer_offset, len(pdu.data), pdu.final)
    if t is DataIn:
        return ("Data-In", pdu.itt, pdu.data_sn, pdu.buffer_offset, len(pdu.data),
                pdu.status if pdu.status_present else None)
    if t is ScsiResponse:
        return ("SCSI Response", pdu.itt, pdu.stat_sn, pdu.status, pdu.residual_count,
                pdu.underflow)
    if t is R2T:
        return ("R2T", pdu.itt, pdu.ttt, pdu.buffer_offset, pdu.desired_data_transfer_length)
    if t in (NopIn, NopOut):
        return (t.__name__, pdu.itt, pdu.ttt)
    if t is TaskManagementRequest:
        return ("TMF", pdu.itt, pdu.function, pdu.referenced_task_tag, pdu.ref_cmd_sn)
    if t is TaskManagementResponse:
        return ("TMF Response", pdu.itt, pdu.response)
    if t is LoginRequest:
        return ("Login", pdu.isid, pdu.csg, pdu.nsg, pdu.transit)
    if t is LoginResponse:
        return ("Login Response", pdu.status_class, pdu.status_detail, pdu.tsih, pdu.transit)
    if t is LogoutRequest:
        return ("Logout", pdu.itt, pdu.reason)
    if t is LogoutResponse:
        return ("Logout Response", pdu.itt, pdu.response)
    if t is Reject:
        return ("Reject", pdu.reason, pdu.rejected_itt)
    if t is AsyncMessage:
        return ("Async", pdu.async_event, pdu.parameter3)
    if t in (TextRequest, TextResponse):
        return (t.__name__, pdu.itt)
    return (t.__name__,)


def format_entry(e: tuple) -> str:
    t = f"{e[0]:10.4f}"
    kind = e[1]
    if kind in (">", "<") and len(e) == 4 and isinstance(e[3], tuple):
        b = e[3]
        arrow = "I->T" if kind == ">" else "T->I"
        fields = []
        for v in b[1:]:
            if isinstance(v, int) and not isinstance(v, bool) and v > 0xFFFF:
                fields.append(hex(v))
            else:
                fields.append(str(v))
        return f"{t}  {arrow} c{e[2]:<3} {b[0]}  {' '.join(fields)}"
    return f"{t}  {' '.join(str(x) for x in e[1:])}"


def format_report(result: Result, *, tail: int = 120, replay: str | None = None) -> str:
    lines = []
    inv, msg, when = result.violation
    lines.append(f"seed {result.seed}: VIOLATION {inv} at t={when:.3f}: {msg}")
    lines.append(f"replay: {replay or replay_command(result)}")
    lines.append(f"faults injected ({len(result.faults)}): " + ", ".join(
        f"{f.name}@{f.time:.2f}" + (f" ({f.detail})" if f.detail else "")
        for f in result.faults) if result.faults else "faults injected: none")
    lines.append(f"trace (last {tail} events):")
    for e in result.trace[-tail:]:
        lines.append("  " + format_entry(e))
    return "\n".join(lines)


def trace_digest(result: Result) -> str:
    """A short hash of the whole trace: equal digests, equal runs."""
    h = hashlib.sha256()
    for e in result.trace:
        h.update(format_entry(e).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def replay_command(result: Result) -> str:
    cmd = f"bash scripts/sim --seed {result.seed}"
    if result.keep is not None:
        cmd += " --keep " + (",".join(sorted(result.keep)) or "none")
    if result.disabled:
        cmd += " --without " + ",".join(sorted(result.disabled))
    return cmd


# ---------------------------------------------------------------------- running
_ISID_COUNTER: list = []


@contextlib.contextmanager
def _patched(world: World):
    """Make the run deterministic and observable (see the module docstring)."""
    from trio._core import _run as trio_run
    saved_flag = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = trio_run._r.getstate()
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True
    trio_run._r.seed(world.seed)
    saved_secrets = session_mod.secrets
    session_mod.secrets = types.SimpleNamespace(
        randbits=lambda k: next(world.isids) & ((1 << k) - 1))
    orig_execute = Session.execute
    orig_close = Session.close

    async def execute(self, lun, cdb, **kw):
        checker = world.checker
        rec = checker.exec_start(self, lun, cdb, kw.get("fail_fast", False),
                                 kw.get("setup", False))
        try:
            result = await orig_execute(self, lun, cdb, **kw)
        except BaseException as exc:
            checker.exec_end(rec, exc)
            raise
        checker.exec_end(rec, None)
        return result

    async def close(self):
        world.checker.close_started(self)
        try:
            await orig_close(self)
        finally:
            world.checker.close_done(self)

    Session.execute = execute
    Session.close = close
    logger = logging.getLogger("iscsifs")
    saved_log = (logger.level, logger.propagate)
    handler = _TraceHandler(world)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_log[0])
        logger.propagate = saved_log[1]
        Session.execute = orig_execute
        Session.close = orig_close
        session_mod.secrets = saved_secrets
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag
        trio_run._r.setstate(saved_state)


class _TraceHandler(logging.Handler):
    def __init__(self, world: World):
        super().__init__(logging.INFO)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:       # pragma: no cover - a broken log call
            msg = str(record.msg)
        try:
            now = trio.current_time()
        except RuntimeError:
            now = -1.0
        self.world.trace_list.append((now, "log", record.levelname, record.name, msg))
        if record.levelno >= logging.WARNING:
            self.world.last_warning = msg
            w = self.world.warnings
            w.append(msg)
            if len(w) > 4:
                del w[0]


def run_seed(seed: int, *, disabled=frozenset(), keep=None, only=None, lu_swap: bool = False,
             keep_going: bool = False, canary: str | None = None) -> Result:
    """Run one seed. ``disabled``: fault names (``kind#n``) to suppress; ``keep``: suppress
    every fault but these; ``only``: fault kinds allowed; ``keep_going``: record every kind of
    violation instead of stopping at the first; ``canary``: a fault kind whose firing is
    itself a violation (the simulator's self-test)."""
    world = World(seed, disabled=disabled, keep=keep, only=only, lu_swap=lu_swap,
                  keep_going=keep_going, canary=canary)
    started = time.perf_counter()
    clock = trio.testing.MockClock(autojump_threshold=0)
    with _patched(world):
        try:
            trio.run(world.main, clock=clock)
        except BaseException as exc:       # a crash of the product or of the simulator
            if world.failed is None:
                tb = "".join(traceback.format_exception(exc)[-12:])
                world.failed = ("crash", f"{type(exc).__name__}: {exc}\n{tb}", clock.current_time())
    wall = time.perf_counter() - started
    wl = getattr(world, "workload", None)
    return Result(seed, world.failed, world.trace_list, list(world.faults.injected),
                  list(world.faults.suppressed), dict(world.checker.checks), wall,
                  clock.current_time(), frozenset(disabled),
                  None if keep is None else frozenset(keep), dict(wl.op_counts) if wl else {},
                  tuple(sorted(world.faults.enabled)), dict(world.checker.max_seen),
                  dict(world.violations))


def shrink(result: Result, *, only=None, lu_swap=False, canary=None, log=None) -> Result:
    """A failing run with fewer faults that fails the same invariant.

    A replay can suppress faults by name (``kind#n``, the n-th fault of a kind; every kind
    draws from its own random stream, so the others are unchanged until the runs diverge).
    First try each fault alone (most defects need one), then suppress the faults one at a
    time, last first, keeping every suppression under which the run still fails the same way."""
    inv = result.violation[0]
    names = [f.name for f in result.faults]

    def still_fails(**kw):
        trial = run_seed(result.seed, only=only, lu_swap=lu_swap, canary=canary, **kw)
        return trial if trial.failed and trial.violation[0] == inv else None

    if not names:
        return result
    for name in reversed(names):
        trial = still_fails(keep=frozenset({name}))
        if trial is not None:
            if log:
                log(f"  {name} alone is enough")
            return trial
    best = result
    for name in reversed(names):
        trial = still_fails(disabled=best.disabled | {name})
        if trial is not None:
            best = trial
            if log:
                log(f"  without {name}: still fails")
        elif log:
            log(f"  {name} is needed")
    return best
