"""The workload: what the filesystem would ask of the initiator, chosen by the seed.

Owns: the *files* (a ``raw`` file is the ``device.Lun`` of one LUN at one portal, a ``by-id``
file the ``multipath.MultipathDevice`` of one logical unit; both reach the same disk at once),
the client tasks that read, write (aligned and not: every write's cells carry a new write id),
flush and discard through them, sometimes inside a cancel scope that fires mid-call, and after a
read re-read the capacity when a UNIT ATTENTION said it changed (as ``fs/ops.py`` does); the
admin task that lists ``by-id``, rescans, logs out and in again, and races a listing with a
logout; then the three phases after the fault horizon: *liveness* (every file works again,
``by-id`` lists every logical unit, every file knows the new size), *unmount* (sometimes with
I/O in flight) and the final check of every disk cell.

Every call goes through :meth:`Workload.call`, which decides whether its error is allowed:
the library's own errors are (faults happen), except BUSY, TASK SET FULL and UNIT ATTENTION
reaching a caller, and any exception that is not the library's.
"""

from __future__ import annotations

import itertools
import re
import traceback

import trio

from iscsifs.core.discovery import Portal
from iscsifs.core.keys import LoginParams
from iscsifs.errors import IscsiError, leaf_exceptions
from iscsifs.initiator import Initiator, NodeOptions
from iscsifs.scsi.sense import ScsiError, SenseKey

from . import disk
from .disk import BLOCK, CELL

INITIATOR = "iqn.2026-11.org.iscsifs.sim:initiator"
_BUSY_STATUSES = (0x08, 0x28)
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")     # object addresses differ from run to run


class File:
    __slots__ = ("name", "dev", "tag", "kind", "pair", "dead")

    def __init__(self, name, dev, tag, kind, pair):
        self.name = name
        self.dev = dev
        self.tag = tag
        self.kind = kind
        self.pair = pair
        self.dead = False


class Workload:
    def __init__(self, world):
        self.world = world
        rng = self.rng = world.wrng
        self.clients = rng.choice((1, 2, 3, 4, 6, 8, 12, 20))
        self.ops = rng.choice((40, 80, 150, 250))
        self.p_cancel = rng.choice((0.0, 0.0, 0.05, 0.2))
        self.p_unaligned = rng.choice((0.0, 0.3, 0.7))
        self.weights = {"read": rng.choice((2, 4)), "write": rng.choice((2, 4)),
                        "flush": rng.choice((0, 1)), "discard": rng.choice((0, 0, 1))}
        self.max_len = rng.choice((1024, 4096, 16384, 65536))
        self.admin_on = rng.random() < 0.5
        self.race_logout = self.admin_on and rng.random() < 0.5
        self.unmount_midflight = rng.random() < 0.4
        # a hot spot: every client works on the same few blocks (races between files)
        self.hot_blocks = rng.choice((2, 4, 16)) if rng.random() < 0.5 else 0
        # bursts: runs of operations back to back (concurrent calls overlap in time)
        self.burst = rng.choice((1, 1, 4, 8))
        # clients start their bursts together, on a shared grid (calls overlap)
        self.grid = rng.choice((0, 0, 2.0, 5.0))
        self.use_raw = rng.random() < 0.85
        self.use_by_id = rng.random() < 0.7 or not self.use_raw
        self.files: list[File] = []
        self.initiator: Initiator | None = None
        self.names = itertools.count()
        self.op_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ setup
    def make_initiator(self) -> Initiator:
        world = self.world
        rng = self.rng
        fb = rng.choice((512, 4096, 65536, 262144))
        mb = rng.choice((4096, 16384, 262144))
        params = LoginParams(
            immediate_data=rng.random() < 0.6, initial_r2t=rng.random() < 0.5,
            first_burst_length=min(fb, mb), max_burst_length=mb,
            max_recv_data_segment_length=rng.choice((4096, 8192, 262144)))
        cmds_max = rng.choice((2, 4, 8, 16, 128))
        queue_depth = rng.choice((1, 4, 32))
        sids = itertools.count(1)
        world.limits["cmds_max"] = cmds_max
        self.max_command_bytes = rng.choice((2048, 4096, 8192, 65536))
        return Initiator(
            initiator_name=INITIATOR, portals=[p for p, _ in world.pairs_portals],
            nursery=world.nursery, timeouts=world.timeouts, login_params=params,
            queue_depth=queue_depth, max_command_bytes=self.max_command_bytes,
            node_options=lambda t, p: NodeOptions(cmds_max=cmds_max, queue_depth=queue_depth),
            multipath_policy=rng.choice(("failover", "round-robin")),
            sid_source=lambda: next(sids), transport_factory=world.connect)

    @property
    def pairs(self) -> list[tuple[str, Portal]]:
        return [(self.world.target.name, p) for p, _ in self.world.pairs_portals]

    async def setup(self) -> None:
        self.initiator = self.make_initiator()
        if self.use_raw:
            for pair in self.pairs:
                await self.open_raw(pair)
        if self.use_by_id:
            await self.list_by_id()

    async def open_raw(self, pair) -> None:
        entries = await self.initiator.luns(*pair)
        known = {id(f.dev) for f in self.files}
        for e in entries:
            if e.device is not None and id(e.device) not in known:
                self.add_file("raw", e.device, pair)

    async def list_by_id(self):
        mdevs = await self.initiator.multipath(self.pairs)
        known = {id(f.dev) for f in self.files}
        for m in mdevs:
            if id(m) not in known:
                self.add_file("by-id", m, None)
        return mdevs

    def add_file(self, kind, dev, pair) -> None:
        lu = self.world.lu_by_wwn.get(dev.wwn)
        if lu is None:
            self.world.violation("data.wrong_lu", f"a {kind} file reports WWN {dev.wwn}, which "
                                 f"no logical unit has")
            return
        where = f"{pair[1].host}/lun{dev.lun}" if pair else dev.wwn[-6:]
        name = f"{kind}#{next(self.names)}({where})"
        self.files.append(File(name, dev, lu.tag, kind, pair))
        self.world.trace("file", name, lu.tag)

    def live_files(self) -> list[File]:
        return [f for f in self.files if not f.dead]

    # ------------------------------------------------------------------ calls
    async def call(self, what: str, fn, *args):
        """Run ``fn(*args)``; returns ``(ok, result)``. Disallowed errors are violations."""
        world = self.world
        world.trace("call", what)
        try:
            result = await fn(*args)
        except BaseException as exc:
            world.trace("error", what, type(exc).__name__,
                        _ADDRESS.sub("", str(exc))[:160])
            self.judge(what, exc)
            if any(isinstance(leaf, trio.Cancelled) for leaf in leaf_exceptions(exc)):
                raise
            return False, exc
        world.trace("done", what)
        return True, result

    def judge(self, what: str, exc: BaseException) -> None:
        world = self.world
        for leaf in leaf_exceptions(exc):
            if isinstance(leaf, trio.Cancelled):
                continue
            if isinstance(leaf, ScsiError):
                # (BUSY and TASK SET FULL: the checker judges each command, against
                # command_timeout)
                if leaf.sense is not None and leaf.sense.key is SenseKey.UNIT_ATTENTION:
                    world.violation("error.transient", f"{what}: the caller got UNIT "
                                    f"ATTENTION ({leaf}), which is to be retried")
                    return
                continue
            if isinstance(leaf, IscsiError):
                continue
            if isinstance(leaf, trio.ClosedResourceError) and world.closing:
                continue
            tb = "".join(traceback.format_exception(leaf, chain=False)[-4:]).strip()
            world.violation("error.unexpected", f"{what}: {type(leaf).__name__}: {leaf}\n{tb}")
            return

    # ------------------------------------------------------------------ operations
    def pick_range(self, f: File, size: int, unaligned: bool) -> tuple[int, int]:
        rng = self.rng
        unit = CELL if unaligned else BLOCK
        if self.hot_blocks:
            size = min(size, self.hot_blocks * BLOCK)
        units = size // unit
        off = rng.randrange(units) * unit
        n = rng.randint(1, max(1, self.max_len // unit)) * unit
        return off, min(n, size - off)

    async def op(self, name: str) -> None:
        world = self.world
        rng = self.rng
        files = self.live_files()
        if not files:
            return
        f = rng.choice(files)
        dev = f.dev
        size = dev.size
        if size <= 0:
            return
        self.op_counts[name] = self.op_counts.get(name, 0) + 1
        unaligned = rng.random() < self.p_unaligned
        # cancel scopes that fire while the call's commands are on the wire (target service
        # times are 0-200 ms)
        cancel_after = rng.expovariate(1 / rng.choice((0.0005, 0.002, 0.05))) \
            if rng.random() < self.p_cancel else None
        with trio.move_on_after(cancel_after if cancel_after is not None else float("inf")):
            if name == "read":
                off, n = self.pick_range(f, size, unaligned)
                await self.read(f, off, n)
            elif name == "write":
                off, n = self.pick_range(f, size, unaligned)
                await self.write(f, off, n)
            elif name == "discard":
                off, n = self.pick_range(f, size, unaligned)
                await self.discard(f, off, n)
            elif name == "flush":
                await self.call(f"{f.name} flush", dev.flush)
        if getattr(dev, "capacity_changed", False) and not world.stopped:
            await self.call(f"{f.name} read capacity", dev.read_capacity)

    async def read(self, f: File, off: int, n: int, *, must: bool = False) -> bool:
        world = self.world
        what = f"{f.name} read [{off}, {off + n})"
        rs = world.next_seq()
        ok, data = await self.call(what, f.dev.read, off, n)
        re = world.next_seq()
        if not ok:
            if must:
                world.violation("liveness", f"{what} failed after the faults stopped: "
                                f"{_leaves(data)}")
            return False
        whole = len(data) // CELL * CELL
        world.checker.read_done(what, f.tag, off, bytes(data[:whole]), rs, re)
        return True

    async def write(self, f: File, off: int, n: int, *, must: bool = False) -> bool:
        world = self.world
        model = world.checker.model
        what = f"{f.name} write [{off}, {off + n})"
        rec = model.new_write(f.tag, off // CELL, n // CELL, False, world.next_seq(), what)
        data = disk.stamp(f.tag, rec.wid, off // CELL, n // CELL)
        outcome = "cancel"
        result = None
        try:
            ok, result = await self.call(what, f.dev.write, off, data)
            outcome = "ok" if ok else "error"
        finally:
            model.answered(rec, outcome, world.next_seq())
        if must and outcome != "ok":
            world.violation("liveness", f"{what} failed after the faults stopped: "
                            f"{_leaves(result)}")
        return outcome == "ok"

    async def discard(self, f: File, off: int, n: int) -> None:
        world = self.world
        model = world.checker.model
        what = f"{f.name} discard [{off}, {off + n})"
        rec = model.new_write(f.tag, off // CELL, n // CELL, True, world.next_seq(), what)
        outcome = "cancel"
        try:
            ok, result = await self.call(what, f.dev.discard, off, n)
            outcome = "ok" if ok else "error"
        finally:
            model.answered(rec, outcome, world.next_seq())

    async def client(self, i: int, ops: int, until: float) -> None:
        rng = self.rng
        names = [k for k, w in self.weights.items() for _ in range(w)]
        span = max(1.0, until - trio.current_time())
        think = span / max(1, ops) * self.burst
        for n in range(ops):
            pause = rng.expovariate(1 / think if n % self.burst == 0 else 1000)
            if self.grid and n % self.burst == 0:
                now = trio.current_time()
                wake = (int((now + pause) / self.grid) + 1) * self.grid + rng.uniform(0, 0.002)
                pause = wake - now
            await trio.sleep(min(pause, max(0.0, until - trio.current_time())))
            if trio.current_time() >= until or self.world.stopped:
                return
            await self.op(rng.choice(names))

    async def admin(self, until: float) -> None:
        rng = self.rng
        world = self.world
        while True:
            await trio.sleep(rng.uniform(5, 40))
            if trio.current_time() >= until or world.stopped:
                return
            pair = rng.choice(self.pairs)
            action = rng.choice(("list", "rescan", "logout", "login", "race"
                                 if self.race_logout else "list"))
            where = f"{pair[1].host}"
            if action == "list":
                await self.call("by-id listing", self.list_by_id)
            elif action == "rescan":
                await self.call(f"rescan {where}", self.initiator.rescan, *pair)
            elif action == "logout":
                await self.logout(pair)
            elif action == "login":
                await self.call(f"login {where}", self.open_raw, pair)
            elif action == "race":
                # a listing that logs in (the session is gone) while the target is removed
                await self.logout(pair)
                async with trio.open_nursery() as n:
                    n.start_soon(self.call, f"login {where} (racing a logout)", self.open_raw,
                                 pair)
                    await trio.sleep(rng.uniform(0, 0.02))
                    n.start_soon(self.logout, pair)

    async def logout(self, pair) -> None:
        for f in self.files:
            if f.pair == pair:
                f.dead = True
        await self.call(f"logout {pair[1].host}", self.initiator.logout, *pair)

    # ------------------------------------------------------------------ after the horizon

    async def _all_listed_live(self) -> bool:
        """After the faults: by-id lists and every LU is in it (a violation if not)."""
        ok, mdevs = await self.call("by-id listing (liveness)", self.list_by_id)
        if not ok:
            self.world.violation("liveness", f"by-id listing failed after the faults "
                                 f"stopped: {mdevs}")
            return False
        return self.all_listed(mdevs)
    async def liveness(self) -> None:
        """Every file works again: sessions back, whole-LU reads, a write read back,
        ``by-id`` lists every logical unit and every file knows its LU's size. (A file of a
        logical unit that a restart replaced - ``--lu-swap`` - is gone: it is left out.)"""
        world = self.world
        current = {lu.tag for lu in world.target.lun_map.values()}
        for f in self.files:
            if f.tag not in current:
                f.dead = True
        for pair in self.pairs:
            ok, exc = await self.call(f"login {pair[1].host} (liveness)", self.open_raw, pair)
            if not ok:
                world.violation("liveness", f"cannot log in to {pair[1].host} after the "
                                f"faults stopped: {exc}")
                return
        if not await self._all_listed_live():
            return
        for f in self.live_files():
            if not await self.read(f, 0, f.dev.size, must=True):
                return
            if getattr(f.dev, "capacity_changed", False):
                ok, exc = await self.call(f"{f.name} read capacity", f.dev.read_capacity)
                if not ok:
                    world.violation("liveness", f"{f.name}: read capacity failed after the "
                                    f"faults stopped: {exc}")
                    return
        if not await self._all_listed_live():
            return
        for f in self.live_files():
            lu = world.lu_by_wwn.get(f.dev.wwn)
            if lu is not None and f.dev.num_blocks != lu.blocks:
                world.violation("by_id.size", f"{f.name} still has {f.dev.num_blocks} blocks; "
                                f"the LU has {lu.blocks} (a capacity change was missed)")
                return
        rng = self.rng
        for f in self.live_files():
            size = f.dev.size
            off = rng.randrange(size // CELL) * CELL
            n = min(size - off, rng.randint(1, 64) * CELL)
            if not await self.write(f, off, n, must=True):
                return
            if not await self.read(f, max(0, off - BLOCK), min(size, off + n + BLOCK)
                                   - max(0, off - BLOCK), must=True):
                return

    def all_listed(self, mdevs) -> bool:
        """by-id lists every logical unit (every path is logged in, faults are over)."""
        listed = {m.wwn for m in mdevs}
        for lu in self.world.target.lun_map.values():
            if lu.wwn not in listed:
                self.world.violation("by_id.lost", f"by-id does not list {lu.wwn} (LU tag "
                                     f"{lu.tag}) although its paths are logged in")
                return False
        return True

    async def unmount(self) -> None:
        world = self.world
        t = world.timeouts
        if self.unmount_midflight:
            async with trio.open_nursery() as burst:
                for i in range(min(self.clients, 6)):
                    burst.start_soon(self.client, 1000 + i, 20, trio.current_time() + 5)
                await trio.sleep(self.rng.uniform(0, 2))
                await self._aclose(t)
        else:
            await self._aclose(t)

    async def _aclose(self, t) -> None:
        world = self.world
        world.closing = True
        started = trio.current_time()
        with trio.move_on_after(t.logout + 5) as scope:
            await self.call("unmount", self.initiator.aclose)
        if scope.cancelled_caught:
            world.violation("unmount.slow", f"unmount took longer than logout_timeout "
                            f"({t.logout:g} s) + 5 s")
            return
        world.trace("unmounted", trio.current_time() - started)


def _leaves(exc) -> str:
    """The distinct errors inside ``exc`` (a nursery's group of chunk errors), one line."""
    if exc is None:
        return "cancelled"
    seen: dict[str, int] = {}
    for leaf in leaf_exceptions(exc):
        text = f"{type(leaf).__name__}: {leaf}"
        seen[text] = seen.get(text, 0) + 1
    return "; ".join(f"{t}" + (f" (x{n})" if n > 1 else "") for t, n in seen.items())
