"""Which faults a seed injects, and when.

Owns: the fault kinds and their rates, the *swarm* choice of which kinds a seed enables (each
seed turns on a random subset, so a rare combination is not drowned by the others), the
horizon after which no fault happens and the ones still in effect are healed, the record of
every fault injected (numbered in order), and the set of fault numbers a replay suppresses
(to shrink a failing seed).

Two ways a fault happens:

* *rolled*: the target asks ``roll(kind)`` at the point where the fault would act (a PDU
  received, a command served, a login step). Every call draws one number from the fault RNG,
  enabled or not, so the stream of draws is the same in a replay with some faults suppressed.
* *timed*: :meth:`FaultPlan.run` sleeps an exponential time, picks an enabled timed kind and
  applies it to the target (stalls, restarts, floods, async events, a closed window, a
  capacity change).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio

from iscsifs.core.pdu import AsyncMessage, NopIn

# rolled kinds: probability per roll (before the seed's multiplier)
ROLLED = {
    "drop": 0.002,                  # per PDU received (before or after handling it)
    "close_after_login": 0.15,      # per login
    "login_fail": 0.15,
    "login_hang": 0.05,
    "redirect": 0.15,
    "reject_command": 0.01,         # per SCSI command
    "reject_data_out": 0.01,        # per Data-Out
    "busy": 0.01,                   # per READ/WRITE served
    "task_set_full": 0.01,
    "unit_attention": 0.01,
    "check_condition": 0.005,
    "swallow": 0.004,
    "slow": 0.004,
    "dup_response": 0.003,
    "underflow": 0.01,
    "short_read": 0.01,
    "overlong": 0.003,
    "tmf_ignore": 0.1,              # per TMF
    "tmf_refuse": 0.1,
}
# timed kinds: relative weight
TIMED = {
    "drop_mid": 3,
    "stall": 3,
    "nop_flood": 1,
    "restart": 2,
    "long_restart": 1,
    "window_closed": 1,
    "tmf_deaf": 1,
    "async_logout": 1,
    "async_renegotiate": 1,
    "capacity_change": 1,
    "restart_swap": 1,              # only with --lu-swap
}
ALL_KINDS = tuple(ROLLED) + tuple(TIMED)


@dataclass
class Fault:
    index: int          # order of firing in this run (for reading a trace)
    time: float
    kind: str
    detail: str = ""
    ordinal: int = 0    # the n-th fault of its kind: its name, ``kind#n``, in replays

    @property
    def name(self) -> str:
        return f"{self.kind}#{self.ordinal}"


@dataclass
class FaultPlan:
    seed: int
    horizon: float = 0.0                # faults stop here (set when the workload is ready)
    start: float = float("inf")         # and start here
    disabled: frozenset = frozenset()   # fault names (kind#n) to suppress (replay/shrink)
    keep: frozenset | None = None       # if set: suppress every fault not named here
    only: frozenset | None = None       # restrict to these kinds (--faults)
    lu_swap: bool = False
    canary: str | None = None           # a fault kind whose first firing is a violation
    rng: random.Random = field(init=False)
    enabled: dict = field(init=False)
    injected: list = field(init=False)
    suppressed: list = field(init=False)
    counter: int = 0
    world: object = None

    def __post_init__(self):
        self.rng = random.Random(f"faults-{self.seed}")
        rng = self.rng
        self.enabled = {}
        for kind, p in ROLLED.items():
            if rng.random() < 0.45:
                self.enabled[kind] = p * rng.choice((0.3, 1, 1, 3))
        self.timed_rate = rng.choice((0, 1 / 60, 1 / 30, 1 / 15))   # timed faults per second
        for kind, w in TIMED.items():
            if rng.random() < 0.45:
                self.enabled[kind] = w
        if not self.lu_swap:
            self.enabled.pop("restart_swap", None)
        if self.only is not None:
            self.enabled = {k: v for k, v in self.enabled.items() if k in self.only}
            for kind in sorted(self.only):
                self.enabled.setdefault(kind, ROLLED.get(kind, TIMED.get(kind, 1)))
            if any(k in TIMED for k in self.only) and not self.timed_rate:
                self.timed_rate = 1 / 30
        self.injected = []
        self.suppressed = []
        # one stream per kind (and one for the timed faults): suppressing a fault of one kind
        # leaves the draws of the others alone, so a shrunk replay stays close to the original
        self.streams = {kind: random.Random(f"faults-{self.seed}-{kind}") for kind in ROLLED}
        self.timed_rng = random.Random(f"faults-{self.seed}-timed")
        self.ordinals: dict[str, int] = {}

    @property
    def active(self) -> bool:
        now = trio.current_time()
        return self.start <= now < self.horizon

    def roll(self, kind: str, conn=None, detail: str = "") -> bool:
        draw = self.streams[kind].random()
        p = self.enabled.get(kind)
        if p is None or draw >= p or not self.active:
            return False
        return self._fire(kind, detail or (f"connection {conn.id}" if conn is not None else ""))

    def _fire(self, kind: str, detail: str) -> bool:
        self.counter += 1
        index = self.counter
        ordinal = self.ordinals[kind] = self.ordinals.get(kind, 0) + 1
        fault = Fault(index, trio.current_time(), kind, detail, ordinal)
        if fault.name in self.disabled or (self.keep is not None and fault.name not in self.keep):
            self.suppressed.append(fault)
            self.world.trace("fault-suppressed", index, fault.name, detail)
            return False
        self.injected.append(fault)
        self.world.trace("FAULT", index, fault.name, detail)
        if kind == self.canary:
            # the simulator's self-test: a "defect" that needs exactly this fault
            self.world.violation("canary", f"fault #{index} ({kind}) fired")
        return True

    # ------------------------------------------------------------------ timed faults
    async def run(self, target) -> None:
        rng = self.timed_rng
        timed = [(k, w) for k, w in self.enabled.items() if k in TIMED]
        if not timed or not self.timed_rate:
            return
        total = sum(w for _, w in timed)
        await trio.sleep_until(self.start)
        while True:
            await trio.sleep(rng.expovariate(self.timed_rate))
            if trio.current_time() >= self.horizon:
                return
            x = rng.random() * total
            for kind, w in timed:
                x -= w
                if x < 0:
                    break
            self.apply(kind, target)

    def apply(self, kind: str, target) -> None:
        world = self.world
        rng = self.timed_rng
        t = world.timeouts
        conns = [c for c in target.conns.values() if c.phase == "ffp" and not c.dead]
        # draw every parameter before deciding whether it fires (same stream in replays)
        a, b, c = rng.random(), rng.random(), rng.random()
        conn = conns[int(a * len(conns))] if conns else None
        if kind in ("drop_mid", "nop_flood", "async_logout", "async_renegotiate") and conn is None:
            return
        if kind == "drop_mid":
            if self._fire(kind, f"connection {conn.id}"):
                head = b"".join(_encode_nop_in(conn))
                conn.send(None, raw=head, mid=1 + int(b * 46))
                conn.close("fault: drop in the middle of a PDU", reset=c < 0.5)
        elif kind == "stall":
            portal = target.portals[int(a * len(target.portals))]
            seconds = 0.5 + b * 25
            if self._fire(kind, f"{portal.host} for {seconds:.1f} s"):
                target.stall(portal, seconds)
        elif kind == "nop_flood":
            # hundreds, or more NOP-Ins than any bound on the backlog of answers
            n = 200 + int(b * 3000) if b < 0.6 else 20000 + int(b * 10000)
            seconds = 2 + c * 20
            if self._fire(kind, f"connection {conn.id}: {n} NOP-Ins, not reading for "
                                f"{seconds:.1f} s"):
                now = trio.current_time()
                conn.paused_until = max(conn.paused_until, now + seconds)
                world.call_at(now + seconds, _pause_over, conn)
                for i in range(n):
                    conn.send(NopIn(itt=0xFFFFFFFF, ttt=0x10000 + i, lun=0,
                                    **conn.sns(advance=False)))
        elif kind in ("restart", "long_restart", "restart_swap"):
            if kind == "long_restart":
                down = t.replacement_timeout * (0.8 + 0.7 * b)
            else:
                down = b * 3 if c < 0.5 else b * 30
            if self._fire(kind, f"down for {down:.1f} s"):
                target.restart(down, swap=kind == "restart_swap")
        elif kind == "window_closed":
            seconds = 1 + b * 1.5 * t.command
            if self._fire(kind, f"for {seconds:.1f} s"):
                target.freeze_window(seconds)
        elif kind == "tmf_deaf":
            seconds = 5 + b * 60
            if self._fire(kind, f"for {seconds:.1f} s"):
                target.tmf_ignore_until = trio.current_time() + seconds
        elif kind == "async_logout":
            n = (1, 1, 2, 5, 20, 50)[int(b * 6)]
            within = 2 + int(c * 10)
            if self._fire(kind, f"connection {conn.id}: {n} event(s), within {within} s"):
                conn.async_logout_sent = True
                for _ in range(n):
                    conn.send(AsyncMessage(lun=0, async_event=1, async_vcode=0, parameter1=0,
                                           parameter2=0, parameter3=within, **conn.sns()))
                conn.logout_deadline = trio.current_time() + within + 1
                world.call_at(conn.logout_deadline, _logout_overdue, conn)
        elif kind == "async_renegotiate":
            within = 5 + int(b * 15)
            if self._fire(kind, f"connection {conn.id}: within {within} s"):
                conn.send(AsyncMessage(lun=0, async_event=4, async_vcode=0, parameter1=0,
                                       parameter2=0, parameter3=within, **conn.sns()))
                conn.renegotiate_deadline = trio.current_time() + within
        elif kind == "capacity_change":
            luns = sorted(target.lun_map)
            lun = luns[int(a * len(luns))]
            blocks = 1 + int(b * 64)
            if self._fire(kind, f"LUN {lun} grows by {blocks} blocks"):
                target.grow(lun, blocks)

    def heal(self, target) -> None:
        """The horizon: whatever is still broken is repaired (restart over, stalls end, the
        window opens, TMFs are answered, reads resume)."""
        now = trio.current_time()
        world = self.world
        world.trace("heal")
        if not target.up:
            target.down_until = now
            target.up = True
        for p in target.portals:
            if p.stalled_until > now:
                p.stalled_until = now
                target._unstall(p)
        target.tmf_ignore_until = min(target.tmf_ignore_until, now)
        if target.window_frozen_until > now:
            target.window_frozen_until = now
            target._thaw()
        for conn in target.conns.values():
            if conn.paused_until > now:
                conn.paused_until = now
                conn.pause_end = now


def _pause_over(conn) -> None:
    conn.pause_end = trio.current_time()


def _logout_overdue(conn) -> None:
    if not conn.dead and not conn.logged_out and conn.logout_deadline is not None \
            and trio.current_time() >= conn.logout_deadline:
        conn.close("the initiator did not log out when asked", reset=False)


def _encode_nop_in(conn):
    from iscsifs.core.pdu import encode
    return encode(NopIn(itt=0xFFFFFFFF, ttt=0xFFFFFFFF, lun=0, **conn.sns(advance=False)))
