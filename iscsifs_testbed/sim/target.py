"""The simulated iSCSI target: portals, login, sessions, the CmdSN window, SCSI on in-memory
disks, R2T and Data-Out, TMF, NOP, Async, Logout, restarts - and the faults the seed asks for.

It speaks through the product's PDU codec (``iscsifs.core.pdu``: ``PduDecoder`` on the target
side, ``encode``), never through the initiator's state machines, so a bug there cannot hide
itself. It is strict where a real target is: commands are executed in CmdSN order (a command
after a gap waits for it, RFC 7143 §4.2.2.1), non-immediate commands outside the window are
ignored, Data-Out must answer an R2T or stay within FirstBurstLength, immediate data only when
negotiated; what the initiator gets wrong there is reported as a violation.

Everything here is synchronous and runs in trio tasks of the simulation's nursery: one reader
task per connection, and timers from :meth:`World.call_at` (command service times, the ends
of stalls). A *stall* stops a portal (reads, sends and timers) as SIGSTOP would; a *restart*
resets every connection, forgets every session and task (a write whose data was complete is
applied or not, at random, at that moment) and refuses connections for a while; the disks
stay. A connection's tasks end when the connection dies (DefaultTime2Retain=0).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import trio

from iscsifs.core.keys import decode_text, encode_text
from iscsifs.core.pdu import (R2T, AsyncMessage, DataIn, DataOut, LoginRequest, LoginResponse,
                              LogoutRequest, LogoutResponse, NopIn, NopOut, PduDecoder, Reject,
                              ScsiCommand, ScsiResponse, TaskManagementRequest,
                              TaskManagementResponse, TextRequest, TextResponse, decode_lun,
                              encode, encode_lun, summary)
from iscsifs.errors import RemoteProtocolError

from . import disk
from .disk import BLOCK, CELL, CELLS_PER_BLOCK, LogicalUnit

RESERVED = 0xFFFFFFFF
MASK = 0xFFFFFFFF

_GOOD, _CHECK, _BUSY, _TSF = 0x00, 0x02, 0x08, 0x28
_NO_UA_OPCODES = (0x12, 0xA0, 0x03)      # INQUIRY, REPORT LUNS, REQUEST SENSE (SPC-4 §5.14)
_READS = (0x28, 0x88)
_WRITES = (0x2A, 0x8A)


def sn_lt(a: int, b: int) -> bool:
    return a != b and ((b - a) & MASK) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


@dataclass
class TargetParams:
    """What the target wants at login and how it behaves (chosen by the seed)."""

    initial_r2t: bool = True
    immediate_data: bool = True
    first_burst: int = 65536
    max_burst: int = 262144
    mrdsl: int = 8192               # the target's MaxRecvDataSegmentLength
    window: int = 32                # command credit: MaxCmdSN - ExpCmdSN + 1
    status_in_data: float = 0.7     # probability that a read's status rides on its Data-In
    service: tuple = (0.0, 0.002)   # command service time, seconds (uniform)
    r2t_delay: float = 0.0          # an R2T goes out up to this long after it could


@dataclass
class PortalSpec:
    host: str
    port: int
    tpgt: int
    hidden: bool = False            # reached only through a login redirection
    stalled_until: float = 0.0


@dataclass
class TTask:
    itt: int
    lun: int
    cdb: bytes
    edtl: int
    read: bool
    write: bool
    cmd_sn: int
    immediate: bool
    arrived: float
    data: bytearray | None = None
    received: int = 0               # write bytes received
    unsolicited_left: int = 0       # unsolicited Data-Out bytes still expected
    r2t_offset: int = 0             # next offset to ask for
    r2t_sn: int = 0
    r2t: tuple | None = None        # (ttt, offset, length, got) of the outstanding R2T
    state: str = "held"             # held | data | service | done
    data_wait_since: float | None = None
    data_error: bool = False
    fault: str | None = None


@dataclass
class TSession:
    nexus: tuple
    tsih: int
    exp_cmd_sn: int
    max_cmd_sn: int
    credit: int
    conn: "TConn | None" = None
    held: dict = field(default_factory=dict)       # cmd_sn -> ScsiCommand / None (plugged)
    gap_since: float | None = None
    frozen: bool = False            # window_closed: MaxCmdSN does not move


class TConn:
    """The target's end of one connection."""

    def __init__(self, target: "Target", sim, portal: PortalSpec):
        self.target = target
        self.world = target.world
        self.sim = sim
        self.id = sim.id
        self.portal = portal
        self.decoder = PduDecoder(initiator_side=False, max_data_segment_length=8192)
        self.stat_sn = 1000 + (sim.id * 7919) % 50000
        self.phase = "login"
        self.session: TSession | None = None
        self.tasks: dict[int, TTask] = {}
        self.ttt = 0x100
        self.dead = False
        self.logouts = 0
        self.logout_deadline: float | None = None
        self.renegotiate_deadline: float | None = None
        self.misbehaved = False         # we sent something a conforming target never sends
        self.tmf_fault = False          # we ignored or refused a TMF on it
        # another connection's reset ended one of its tasks without a word (TAS=0, as tgt
        # does): to the initiator that is a command the target never answers
        self.silent_kill = False
        self.rejected_commands = 0      # SCSI Commands we rejected (reject_command)
        # ITT -> when a TMF on this connection ended that task (its answer says so, so the
        # initiator must free the ITT), until the ITT comes again with a new command
        self.tmf_ended: dict[int, float] = {}
        self.async_logout_sent = False
        self.logged_out = False
        self.window_closed = False      # its command window was held shut at some time
        self.paused_until = 0.0
        self.pause_end = -1e9
        self.login_isid = 0
        self.login_name = ""
        self.login_stage_keys: dict[str, str] = {}
        self.negotiated: dict[str, object] = {}
        self.init_mrdsl = 8192          # the initiator's MaxRecvDataSegmentLength
        self.redirected = False
        self.close_after_login: str | None = None
        self.login_hang = False
        self.pending_out: list[bytes] = []
        self.last_rx = trio.current_time()

    # ------------------------------------------------------------------ plumbing
    def sns(self, advance: bool = True) -> dict:
        sess = self.session
        if sess is None:
            exp, mx = 0, 0
        else:
            exp, mx = sess.exp_cmd_sn, sess.max_cmd_sn
        v = dict(stat_sn=self.stat_sn, exp_cmd_sn=exp, max_cmd_sn=mx)
        if advance:
            self.stat_sn = (self.stat_sn + 1) & MASK
        return v

    def stalled(self) -> bool:
        return self.portal.stalled_until > trio.current_time()

    def send(self, pdu, *, raw: bytes | None = None, mid: int | None = None) -> None:
        """Encode and send ``pdu`` (or ``raw`` bytes); ``mid``: only its first ``mid`` bytes,
        then the connection is cut (a drop in the middle of a PDU)."""
        if self.dead or self.sim.target_closed:
            return
        data = raw if raw is not None else b"".join(encode(pdu))
        self.world.trace_pdu("<", self, pdu)
        if mid is not None:
            data = data[:mid]
        if self.stalled():
            self.pending_out.append(data)
            return
        self.sim.down.write(data, 0)

    def flush_pending(self) -> None:
        if self.pending_out and not self.stalled() and not self.dead:
            for data in self.pending_out:
                self.sim.down.write(data, 0)
            self.pending_out.clear()

    def close(self, reason: str, *, reset: bool) -> None:
        """The target ends the connection: its tasks end with it."""
        if self.dead:
            return
        self.world.trace("tclose", self.id, reason, "RST" if reset else "FIN")
        self.flush_pending()
        self.dead = True
        self.sim.target_close(reset)
        self._end_tasks(reason)

    def _end_tasks(self, why: str) -> None:
        rng = self.world.target_rng
        for task in list(self.tasks.values()):
            if task.state == "service" and task.write and not task.data_error \
                    and task.fault in (None, "slow", "dup_response") \
                    and task.received >= task.edtl and rng.random() < 0.5:
                # the backend write was under way: it lands now or never
                self.target.apply_write(self, task, final=True)
            task.state = "done"
        self.tasks.clear()
        sess = self.session
        if sess is not None and sess.conn is self:
            sess.conn = None
            sess.held.clear()
            sess.gap_since = None

    # ------------------------------------------------------------------ reader
    async def run(self) -> None:
        pipe = self.sim.up
        world = self.world
        budget = 0
        try:
            while True:
                if self.dead:
                    return
                if pipe.reset:
                    self._initiator_gone(reset=True)
                    return
                now = trio.current_time()
                hold = max(self.portal.stalled_until, self.paused_until)
                if hold > now:
                    # in steps: a heal at the horizon may end the stall early
                    await trio.sleep_until(min(hold, now + 0.5))
                    continue
                if self.pending_out:
                    self.flush_pending()
                if not pipe.size:
                    if pipe.eof:
                        self._initiator_gone(reset=False)
                        return
                    await pipe.wait()
                    continue
                data, seq = pipe.read_chunk(65536)
                self.last_rx = now
                self.decoder.feed(data)
                while not self.dead:
                    try:
                        pdu = self.decoder.next_pdu()
                    except RemoteProtocolError as exc:
                        world.violation("protocol", f"the initiator sent a malformed PDU on "
                                        f"connection {self.id}: {exc}")
                        return
                    if pdu is None:
                        break
                    world.trace_pdu(">", self, pdu)
                    if self.phase == "ffp" and world.faults.roll("drop", conn=self):
                        self.close("fault: drop before a PDU", reset=world.target_rng.random() < 0.5)
                        return
                    self.handle(pdu, seq)
                    world.step()
                    if self.phase == "ffp" and not self.dead and world.faults.roll("drop",
                                                                                     conn=self):
                        self.close("fault: drop after a PDU", reset=world.target_rng.random() < 0.5)
                        return
                budget += 1
                if budget % 8 == 0:
                    await trio.lowlevel.checkpoint()
        finally:
            self.target.conns.pop(self.id, None)

    def _initiator_gone(self, reset: bool) -> None:
        self.world.trace("iclose", self.id, "RST" if reset else "FIN")
        if self.phase == "ffp" and not self.sim.target_closed:
            self.world.checker.initiator_closed(self)
        self.dead = True
        self.sim.target_close(reset)
        self._end_tasks("initiator closed")

    def handle(self, pdu, seq: int) -> None:
        if self.phase == "login":
            if isinstance(pdu, LoginRequest):
                self.on_login(pdu)
            else:
                self.world.violation("protocol", f"{type(pdu).__name__} during login on "
                                     f"connection {self.id}")
            return
        if self.logged_out and not isinstance(pdu, LogoutRequest):
            self.world.trace("ignored", self.id, "after logout")
            return
        if isinstance(pdu, ScsiCommand):
            self.on_command(pdu, seq)
        elif isinstance(pdu, DataOut):
            self.on_data_out(pdu, seq)
        elif isinstance(pdu, NopOut):
            self.on_nop_out(pdu)
        elif isinstance(pdu, TaskManagementRequest):
            self.on_tmf(pdu)
        elif isinstance(pdu, LogoutRequest):
            self.on_logout(pdu)
        elif isinstance(pdu, TextRequest):
            self.on_text(pdu)
        else:
            self.world.violation("protocol", f"unexpected {type(pdu).__name__} in the full "
                                 f"feature phase on connection {self.id}")

    # ------------------------------------------------------------------ login
    def on_login(self, req: LoginRequest) -> None:
        target = self.target
        world = self.world
        faults = world.faults
        pairs = dict(decode_text(req.data))
        if req.csg == 0:
            self.login_isid = req.isid
            self.login_name = pairs.get("InitiatorName", "")
            if pairs.get("TargetName") != target.name:
                self._login_reply(req, [], (2, 3), 0, False)     # not found
                self.close("login: unknown target", reset=False)
                return
            if self.login_hang or faults.roll("login_hang", conn=self):
                self.login_hang = True
                return
            if faults.roll("login_fail", conn=self):
                status = world.target_rng.choice([(3, 1), (3, 0), (3, 2)])
                self._login_reply(req, [], status, 0, False)
                self.close("login: refused", reset=False)
                return
            if not self.portal.hidden and faults.roll("redirect", conn=self):
                others = [p for p in target.portals if p is not self.portal]
                if others:
                    to = world.target_rng.choice(others)
                    detail = world.target_rng.choice([1, 2])
                    self._login_reply(req, [("TargetAddress", f"{to.host}:{to.port},{to.tpgt}")],
                                      (1, detail), 0, False)
                    self.close("login: redirected", reset=False)
                    return
            if self.portal.hidden and not self.redirected:
                pass    # a hidden portal takes logins too (after a redirection)
            self._login_reply(req, [("AuthMethod", "None"),
                                    ("TargetPortalGroupTag", str(self.portal.tpgt))],
                              (0, 0), req.nsg, req.transit)
            return
        if self.login_hang:
            return
        answer = self._negotiate(pairs)
        final = req.transit and req.nsg == 3
        if not final:
            self._login_reply(req, answer, (0, 0), 0, False)
            return
        sess = target.login_session(self, req)
        self._login_reply(req, answer, (0, 0), 3, True, tsih=sess.tsih)
        self.phase = "ffp"
        self.decoder.max_data_segment_length = target.params.mrdsl
        world.checker.login_done(self)
        if faults.roll("close_after_login", conn=self):
            self.sim.send_fails_after_fin = world.target_rng.random() < 0.7
            self.close("fault: close right after login", reset=world.target_rng.random() < 0.3)

    def _negotiate(self, pairs: dict) -> list:
        p = self.target.params
        out = []
        neg = self.negotiated
        for key, value in pairs.items():
            if key in ("HeaderDigest", "DataDigest"):
                out.append((key, "None"))
            elif key == "MaxRecvDataSegmentLength":
                self.init_mrdsl = int(value)
                out.append((key, str(p.mrdsl)))
            elif key == "MaxConnections":
                out.append((key, "1"))
            elif key == "InitialR2T":
                v = value == "Yes" or p.initial_r2t
                neg[key] = v
                out.append((key, "Yes" if v else "No"))
            elif key == "ImmediateData":
                v = value == "Yes" and p.immediate_data
                neg[key] = v
                out.append((key, "Yes" if v else "No"))
            elif key == "MaxBurstLength":
                v = min(int(value), p.max_burst)
                neg[key] = v
                out.append((key, str(v)))
            elif key == "FirstBurstLength":
                v = min(int(value), p.first_burst)
                neg[key] = v
                out.append((key, str(v)))
            elif key == "DefaultTime2Wait":
                out.append((key, value))
            elif key == "DefaultTime2Retain":
                out.append((key, "0"))
            elif key == "MaxOutstandingR2T":
                neg[key] = 1
                out.append((key, "1"))
            elif key in ("DataPDUInOrder", "DataSequenceInOrder"):
                out.append((key, "Yes"))
            elif key == "ErrorRecoveryLevel":
                out.append((key, "0"))
            elif key in ("InitiatorName", "InitiatorAlias", "SessionType", "TargetName"):
                continue
            else:
                out.append((key, "NotUnderstood"))
        neg.setdefault("InitialR2T", True)
        neg.setdefault("ImmediateData", True)
        neg.setdefault("MaxBurstLength", 262144)
        neg.setdefault("FirstBurstLength", 65536)
        neg["FirstBurstLength"] = min(neg["FirstBurstLength"], neg["MaxBurstLength"])
        return out

    def _login_reply(self, req, pairs, status, nsg, transit, tsih: int = 0) -> None:
        sess = self.session
        exp = sess.exp_cmd_sn if sess is not None else req.cmd_sn
        mx = sess.max_cmd_sn if sess is not None else (req.cmd_sn + 31) & MASK
        self.send(LoginResponse(
            isid=req.isid, tsih=tsih, itt=req.itt, status_class=status[0],
            status_detail=status[1], csg=req.csg, nsg=nsg if transit else 0, transit=transit,
            cont=False, version_max=0, version_active=0, data=encode_text(pairs),
            stat_sn=self.stat_sn, exp_cmd_sn=exp, max_cmd_sn=mx))
        self.stat_sn = (self.stat_sn + 1) & MASK

    # ------------------------------------------------------------------ CmdSN
    def _window_ok(self, cmd_sn: int) -> bool:
        sess = self.session
        return sn_le(sess.exp_cmd_sn, cmd_sn) and sn_le(cmd_sn, sess.max_cmd_sn)

    def advance_window(self) -> None:
        sess = self.session
        if sess is None or sess.frozen:
            return
        mx = (sess.exp_cmd_sn + sess.credit - 1) & MASK
        if sn_lt(sess.max_cmd_sn, mx):
            sess.max_cmd_sn = mx

    def _consume(self, cmd_sn: int) -> None:
        """``cmd_sn`` arrived in order: advance ExpCmdSN, then run what waited for it."""
        sess = self.session
        sess.exp_cmd_sn = (cmd_sn + 1) & MASK
        while sess.exp_cmd_sn in sess.held:
            sn = sess.exp_cmd_sn
            item = sess.held.pop(sn)
            sess.exp_cmd_sn = (sn + 1) & MASK
            if item is not None and not self.dead:
                self._start(item)
        sess.gap_since = trio.current_time() if sess.held else None
        self.advance_window()

    # ------------------------------------------------------------------ SCSI Command
    def on_command(self, pdu: ScsiCommand, seq: int) -> None:
        world = self.world
        sess = self.session
        world.checker.command_on_wire(self, pdu, seq)
        if pdu.data:
            world.checker.data_on_wire(pdu.data, seq)
        if not pdu.immediate and not self._window_ok(pdu.cmd_sn):
            if sn_lt(pdu.cmd_sn, sess.exp_cmd_sn):
                world.trace("ignored", self.id, "duplicate CmdSN", pdu.cmd_sn)
                return
            world.violation("protocol", f"the initiator sent CmdSN {pdu.cmd_sn} outside the "
                            f"window [{sess.exp_cmd_sn}, {sess.max_cmd_sn}] on connection "
                            f"{self.id}")
            return
        if world.faults.roll("reject_command", conn=self):
            self.rejected_commands += 1
            # §11.17: rejected, so not received: its CmdSN stays expected (a gap)
            self.send(Reject(reason=0x09, data_sn=0, data=b"".join(encode(pdu))[:48],
                             **self.sns()))
            return
        old = self.tasks.get(pdu.itt)
        if old is not None and old.state != "done":
            world.violation("protocol", f"the initiator reused ITT {pdu.itt:#x} while its "
                            f"task is still live at the target (connection {self.id})")
            return
        lun = decode_lun(pdu.lun)
        task = TTask(pdu.itt, lun, bytes(pdu.cdb), pdu.expected_data_transfer_length,
                     pdu.read, pdu.write, pdu.cmd_sn, pdu.immediate, trio.current_time())
        self.tasks[pdu.itt] = task
        self.tmf_ended.pop(pdu.itt, None)
        if pdu.write:
            neg = self.negotiated
            task.data = bytearray(task.edtl)
            imm = len(pdu.data)
            if imm and not neg["ImmediateData"]:
                world.violation("protocol", "immediate data sent with ImmediateData=No")
            if imm > min(neg["FirstBurstLength"], self.target.params.mrdsl):
                world.violation("protocol", f"{imm} bytes of immediate data exceed "
                                f"FirstBurstLength/MaxRecvDataSegmentLength")
            if imm > task.edtl:
                world.violation("protocol", "immediate data beyond the expected length")
            task.data[:imm] = pdu.data
            task.received = imm
            if not pdu.final:
                if neg["InitialR2T"]:
                    world.violation("protocol", "unsolicited Data-Out (F=0) with InitialR2T=Yes")
                task.unsolicited_left = min(neg["FirstBurstLength"], task.edtl) - imm
                if task.unsolicited_left <= 0:
                    world.violation("protocol", "F=0 but no unsolicited data may follow")
            task.r2t_offset = task.received + task.unsolicited_left
        if pdu.immediate:
            self._start(task)
            return
        if pdu.cmd_sn == sess.exp_cmd_sn:
            self._start(task)
            self._consume(pdu.cmd_sn)      # then what waited for this CmdSN
            return
        sess.held[pdu.cmd_sn] = task
        if sess.gap_since is None:
            sess.gap_since = trio.current_time()

    def _start(self, task: TTask) -> None:
        """``task`` may run now (CmdSN order): ask for its data, or serve it."""
        if task.state != "held" or self.dead:
            return
        if task.write and task.received < task.edtl:
            task.state = "data"
            task.data_wait_since = trio.current_time()
            self._next_r2t(task)
            return
        self._serve(task)

    def _next_r2t(self, task: TTask) -> None:
        if task.r2t is not None or task.unsolicited_left or task.state != "data":
            return
        delay = self.target.params.r2t_delay
        if delay and task.r2t_offset < task.edtl:
            # a target that asks for data when it has a buffer for it, a little later
            task.r2t = ("pending",)
            self.world.call_at(trio.current_time() + self.world.target_rng.uniform(0, delay),
                               self._r2t_now, task)
            return
        self._send_r2t(task)

    def _r2t_now(self, task: TTask) -> None:
        if task.r2t != ("pending",) or task.state != "data" or self.dead:
            return
        if self.stalled():
            self.world.call_at(self.portal.stalled_until, self._r2t_now, task)
            return
        task.r2t = None
        self._send_r2t(task)

    def _send_r2t(self, task: TTask) -> None:
        if task.r2t_offset >= task.edtl:
            if task.received >= task.edtl:
                self._serve(task)
            return
        length = min(self.negotiated["MaxBurstLength"], task.edtl - task.r2t_offset)
        self.ttt = (self.ttt + 1) & 0x7FFFFFFF
        task.r2t = (self.ttt, task.r2t_offset, length, 0)
        task.data_wait_since = trio.current_time()
        self.send(R2T(itt=task.itt, ttt=self.ttt, lun=encode_lun(task.lun), r2t_sn=task.r2t_sn,
                      buffer_offset=task.r2t_offset, desired_data_transfer_length=length,
                      **self.sns(advance=False)))
        task.r2t_sn += 1
        task.r2t_offset += length

    # ------------------------------------------------------------------ Data-Out
    def on_data_out(self, pdu: DataOut, seq: int) -> None:
        world = self.world
        if pdu.data:
            world.checker.data_on_wire(pdu.data, seq)
        task = self.tasks.get(pdu.itt)
        if task is None or task.state == "done":
            world.trace("ignored", self.id, "Data-Out for no live task", pdu.itt)
            return
        if not task.write:
            world.violation("protocol", f"Data-Out for ITT {pdu.itt:#x}, a read")
            return
        n = len(pdu.data)
        if n > self.target.params.mrdsl:
            world.violation("protocol", "Data-Out beyond MaxRecvDataSegmentLength")
            return
        if world.faults.roll("reject_data_out", conn=self):
            self.send(Reject(reason=world.target_rng.choice([0x09, 0x02]), data_sn=0,
                             data=b"".join(encode(pdu))[:48], **self.sns()))
            # the task cannot complete without those bytes: it ends with CHECK CONDITION
            task.data_error = True
            task.state = "done"
            self.tasks.pop(task.itt, None)
            self.send(ScsiResponse(itt=task.itt, response=0, status=_CHECK, exp_data_sn=0,
                                   bidi_read_residual_count=0, residual_count=0, overflow=False,
                                   underflow=False, bidi_overflow=False, bidi_underflow=False,
                                   data=disk.sense(0x0B, 0x4B, 0x00), **self.sns()))
            return
        off = pdu.buffer_offset
        if pdu.ttt == RESERVED:
            if n > task.unsolicited_left or off != task.received:
                world.violation("protocol", f"unsolicited Data-Out [{off}, {off + n}) for ITT "
                                f"{pdu.itt:#x} beyond FirstBurstLength or out of order")
                return
            task.unsolicited_left -= n
            if pdu.final != (task.unsolicited_left == 0):
                world.violation("protocol", "unsolicited Data-Out F bit misplaced")
        else:
            r = task.r2t
            if r is None or len(r) != 4 or r[0] != pdu.ttt:
                world.violation("protocol", f"Data-Out with TTT {pdu.ttt:#x} that no "
                                f"outstanding R2T gave (ITT {pdu.itt:#x})")
                return
            ttt, r_off, r_len, got = r
            if off != r_off + got or got + n > r_len:
                world.violation("protocol", f"Data-Out [{off}, {off + n}) outside its R2T "
                                f"[{r_off}, {r_off + r_len})")
                return
            got += n
            if pdu.final != (got == r_len):
                world.violation("protocol", "solicited Data-Out F bit misplaced")
            task.r2t = None if got == r_len else (ttt, r_off, r_len, got)
        task.data[off:off + n] = pdu.data
        task.received += n
        task.data_wait_since = trio.current_time()
        if task.state == "data":
            if task.received >= task.edtl and task.r2t is None and not task.unsolicited_left:
                self._serve(task)
            else:
                self._next_r2t(task)

    # ------------------------------------------------------------------ service
    def _serve(self, task: TTask) -> None:
        task.state = "service"
        task.data_wait_since = None
        world = self.world
        faults = world.faults
        op = task.cdb[0]
        rng = world.target_rng
        delay = rng.uniform(*self.target.params.service)
        fault = None
        if op in _READS or op in _WRITES:
            for kind in ("busy", "task_set_full", "unit_attention", "check_condition",
                         "swallow", "slow", "dup_response", "underflow"):
                if faults.roll(kind, conn=self):
                    fault = kind
                    break
            if fault is None and op in _READS:
                for kind in ("short_read", "overlong"):
                    if faults.roll(kind, conn=self):
                        fault = kind
                        break
        task.fault = fault
        if fault == "swallow":
            return                      # held until a TMF or the connection ends it
        if fault == "slow":
            delay = world.timeouts.command * rng.uniform(0.7, 1.6)
        world.call_at(trio.current_time() + delay, self._finish, task)

    def _finish(self, task: TTask) -> None:
        if task.state != "service" or self.dead:
            return
        if self.stalled():
            self.world.call_at(self.portal.stalled_until, self._finish, task)
            return
        task.state = "done"
        self.tasks.pop(task.itt, None)
        self.target.execute(self, task)

    # -- responses
    def respond(self, task: TTask, status: int = _GOOD, sense: bytes = b"", *,
                data: bytes | None = None, residual: int = 0, underflow: bool = False,
                overflow: bool = False) -> None:
        lun = encode_lun(task.lun)
        if data is not None and len(data):
            mx = self.init_mrdsl
            burst = self.negotiated.get("MaxBurstLength", 262144)
            with_status = status == _GOOD and not sense and \
                self.world.target_rng.random() < self.target.params.status_in_data
            n = len(data)
            off = 0
            sn = 0
            while off < n:
                end = min(off + mx, n, (off // burst + 1) * burst)
                last = end == n
                s_bit = last and with_status
                self.send(DataIn(itt=task.itt, ttt=RESERVED, lun=lun, data_sn=sn,
                                 buffer_offset=off, residual_count=residual if s_bit else 0,
                                 final=last or end % burst == 0, acknowledge=False,
                                 overflow=overflow and s_bit, underflow=underflow and s_bit,
                                 status_present=s_bit, status=status if s_bit else 0,
                                 data=data[off:end], **self.sns(advance=s_bit)))
                sn += 1
                off = end
            if with_status:
                return
        self.send(ScsiResponse(itt=task.itt, response=0, status=status, exp_data_sn=0,
                               bidi_read_residual_count=0, residual_count=residual,
                               overflow=overflow, underflow=underflow, bidi_overflow=False,
                               bidi_underflow=False, data=sense, **self.sns()))

    # ------------------------------------------------------------------ other PDUs
    def on_nop_out(self, pdu: NopOut) -> None:
        if not pdu.immediate:
            self._consume_plain(pdu.cmd_sn)
        if pdu.itt != RESERVED:
            self.send(NopIn(itt=pdu.itt, ttt=RESERVED, lun=pdu.lun, data=pdu.data,
                            **self.sns()))

    def _consume_plain(self, cmd_sn: int) -> None:
        sess = self.session
        if cmd_sn == sess.exp_cmd_sn:
            self._consume(cmd_sn)
        elif self._window_ok(cmd_sn):
            sess.held[cmd_sn] = None

    def on_text(self, pdu: TextRequest) -> None:
        if not pdu.immediate:
            self._consume_plain(pdu.cmd_sn)
        self.renegotiate_deadline = None
        self.send(TextResponse(itt=pdu.itt, ttt=RESERVED, lun=0, final=True, cont=False,
                               data=b"", **self.sns()))

    def on_logout(self, pdu: LogoutRequest) -> None:
        self.logouts += 1
        self.world.checker.logout_request(self)
        if self.logouts > 1:
            return
        self.logged_out = True
        self.logout_deadline = None
        self.renegotiate_deadline = None
        self.send(LogoutResponse(itt=pdu.itt, response=0, time2wait=0, time2retain=0,
                                 **self.sns()))
        if pdu.reason == 0 and self.session is not None:
            self.target.end_session(self.session)
        # the initiator closes the connection; we do too, a little later
        self.world.call_at(trio.current_time() + 0.5, self.close, "logout", reset=False)

    def on_tmf(self, pdu: TaskManagementRequest) -> None:
        world = self.world
        target = self.target
        if target.tmf_ignore_until > trio.current_time() or world.faults.roll("tmf_ignore",
                                                                              conn=self):
            self.tmf_fault = True
            return
        if world.faults.roll("tmf_refuse", conn=self):
            self.tmf_fault = True
            self.send(TaskManagementResponse(itt=pdu.itt, response=5, **self.sns()))
            return
        f = pdu.function
        lun = decode_lun(pdu.lun)
        response = 0
        if f == 1:      # ABORT TASK
            task = self.tasks.get(pdu.referenced_task_tag)
            sess = self.session
            if task is not None and task.state != "done":
                self._kill(task, "ABORT TASK")
            elif sess is not None and self._window_ok(pdu.ref_cmd_sn) \
                    and sn_lt(pdu.ref_cmd_sn, pdu.cmd_sn) and pdu.ref_cmd_sn not in sess.held:
                # §11.5.1: a task never received whose RefCmdSN is in the window: the CmdSN
                # counts as received
                world.trace("plug", self.id, pdu.ref_cmd_sn)
                if pdu.ref_cmd_sn == sess.exp_cmd_sn:
                    self._consume(pdu.ref_cmd_sn)
                else:
                    sess.held[pdu.ref_cmd_sn] = None
            else:
                response = 1
        elif f in (2, 4, 5):    # ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET
            for conn in list(target.conns.values()):
                if f != 5 and conn is not self:
                    continue
                for task in list(conn.tasks.values()):
                    if task.lun == lun and task.state != "done":
                        conn._kill(task, "LU RESET" if f == 5 else "ABORT TASK SET", self)
            if f == 5:
                target.unit_attention(lun, 0x29, 0x03, except_nexus=self.session.nexus
                                      if self.session else None)
        elif f in (6, 7):
            for conn in list(target.conns.values()):
                for task in list(conn.tasks.values()):
                    if task.state != "done":
                        conn._kill(task, "TARGET RESET", self)
            for n in target.lun_map:
                target.unit_attention(n, 0x29, 0x02, except_nexus=self.session.nexus
                                      if self.session else None)
        else:
            response = 5
        self.send(TaskManagementResponse(itt=pdu.itt, response=response, **self.sns()))

    def _kill(self, task: TTask, why: str, by=None) -> None:
        self.world.trace("kill", self.id, task.itt, why)
        if by is not None and by is not self:
            self.silent_kill = True
        else:
            self.tmf_ended[task.itt] = trio.current_time()
        task.state = "done"
        self.tasks.pop(task.itt, None)
        sess = self.session
        if sess is not None and sess.held.get(task.cmd_sn) is task:
            sess.held[task.cmd_sn] = None       # its CmdSN still counts


class Target:
    """One target (IQN) behind one or more portals, exporting ``lun_map``."""

    def __init__(self, world, name: str, portals: list[PortalSpec], lun_map: dict,
                 params: TargetParams):
        self.world = world
        self.name = name
        self.portals = portals
        self.lun_map: dict[int, LogicalUnit] = lun_map
        self.params = params
        self.up = True
        self.down_until = 0.0
        self.generation = 0
        self.conns: dict[int, TConn] = {}
        self.sessions: dict[tuple, TSession] = {}
        self.ua: dict[tuple, list] = {}            # (nexus, lun) -> [(asc, ascq)]
        self.nexus_gen: dict[tuple, int] = {}
        self.known_nexus: dict[tuple, None] = {}   # every I_T nexus ever logged in
        self.tsih = 0
        self.tmf_ignore_until = 0.0
        self.window_frozen_until = 0.0
        self.last_unstall = -1e9
        self.next_tag = 1 + max(lu.tag for lu in lun_map.values())

    def portal_at(self, host: str, port: int) -> PortalSpec | None:
        for p in self.portals:
            if p.host == host and p.port == port:
                return p
        return None

    def accept(self, sim, portal: PortalSpec) -> None:
        conn = TConn(self, sim, portal)
        self.conns[sim.id] = conn
        self.world.nursery.start_soon(conn.run)

    # -- sessions
    def login_session(self, conn: TConn, req: LoginRequest) -> TSession:
        nexus = (conn.login_name, req.isid, conn.portal.tpgt)
        old = self.sessions.pop(nexus, None)
        if old is not None:         # reinstatement (§6.3.5): the old one ends now
            self.world.trace("reinstate", nexus[1], old.tsih)
            if old.conn is not None:
                old.conn.close("session reinstated", reset=True)
        self.tsih = self.tsih % 0xFFFE + 1
        exp = req.cmd_sn & MASK
        sess = TSession(nexus, self.tsih, exp, (exp + self.params.window - 1) & MASK,
                        self.params.window, conn)
        if self.window_frozen_until > trio.current_time():
            sess.frozen = True
            sess.max_cmd_sn = (exp - 1) & MASK
            conn.window_closed = True
        self.sessions[nexus] = sess
        conn.session = sess
        self.known_nexus[nexus] = None
        if self.nexus_gen.get(nexus) != self.generation:
            self.nexus_gen[nexus] = self.generation
            for n in self.lun_map:
                self.ua.setdefault((nexus, n), []).append((0x29, 0x00))
        return sess

    def end_session(self, sess: TSession) -> None:
        if self.sessions.get(sess.nexus) is sess:
            del self.sessions[sess.nexus]

    def logged_in(self) -> list[TSession]:
        return [s for s in self.sessions.values() if s.conn is not None and not s.conn.dead]

    def unit_attention(self, lun: int, asc: int, ascq: int, except_nexus=None) -> None:
        for nexus in self.known_nexus:
            if nexus != except_nexus:
                q = self.ua.setdefault((nexus, lun), [])
                if (asc, ascq) not in q and len(q) < 3:
                    q.append((asc, ascq))

    # -- SCSI
    def execute(self, conn: TConn, task: TTask) -> None:
        world = self.world
        cdb = task.cdb
        op = cdb[0]
        lu = self.lun_map.get(task.lun)
        sess = conn.session
        fault = task.fault
        if op not in _NO_UA_OPCODES and lu is not None and sess is not None:
            q = self.ua.get((sess.nexus, task.lun))
            if fault == "unit_attention":
                q = self.ua.setdefault((sess.nexus, task.lun), [])
                if len(q) < 3:
                    q.insert(0, (0x29, 0x00))
            if q:
                asc, ascq = q.pop(0)
                conn.respond(task, _CHECK, disk.sense(0x06, asc, ascq))
                return
        if fault == "busy":
            conn.respond(task, _BUSY)
            return
        if fault == "task_set_full":
            conn.respond(task, _TSF)
            return
        if lu is None:
            if op == 0x12:
                conn.respond(task, data=bytes([0x7F]) + bytes(35), residual=task.edtl - 36,
                             underflow=task.edtl > 36)
            elif op == 0xA0:
                self._report_luns(conn, task)
            else:
                conn.respond(task, _CHECK, disk.sense(0x05, 0x25, 0x00))
            return
        if op in _READS or op in _WRITES:
            if op in (0x28, 0x2A):
                lba, blocks = struct.unpack_from(">IxH", cdb, 2)
            else:
                lba, blocks = struct.unpack_from(">QI", cdb, 2)
            if blocks * BLOCK != task.edtl:
                world.violation("protocol", f"CDB of {blocks} blocks with an expected length "
                                f"of {task.edtl}")
            if lba + blocks > lu.blocks:
                conn.respond(task, _CHECK, disk.sense(0x05, 0x21, 0x00))
                return
            if fault == "check_condition":
                conn.respond(task, _CHECK, disk.sense(0x03, 0x11 if op in _READS else 0x0C, 0))
                return
            if op in _READS:
                data = bytes(lu.data[lba * BLOCK:(lba + blocks) * BLOCK])
                if fault in ("short_read", "underflow") and blocks:
                    if fault == "short_read":
                        conn.misbehaved = True  # GOOD, fewer bytes, no U bit: not allowed
                    cut = world.target_rng.randrange(0, len(data) // CELL) * CELL
                    conn.respond(task, data=data[:cut], residual=len(data) - cut,
                                 underflow=fault == "underflow")
                    return
                if fault == "overlong":
                    conn.misbehaved = True
                    conn.respond(task, data=data + bytes(BLOCK))
                    return
                conn.respond(task, data=data)
                if fault == "dup_response":
                    conn.misbehaved = True
                    conn.respond(task)
                return
            # write
            if fault == "underflow" and blocks > 1:
                keep = world.target_rng.randrange(1, blocks)
                self.apply_write(conn, task, lba=lba, length=keep * BLOCK)
                conn.respond(task, residual=(blocks - keep) * BLOCK, underflow=True)
                return
            self.apply_write(conn, task, lba=lba)
            conn.respond(task)
            if fault == "dup_response":
                conn.misbehaved = True
                conn.respond(task)
            return
        if op == 0x12:
            evpd = cdb[1] & 1
            alloc = int.from_bytes(cdb[3:5], "big")
            data = lu.vpd(cdb[2]) if evpd else lu.inquiry()
            if data is None:
                conn.respond(task, _CHECK, disk.sense(0x05, 0x24, 0x00))
                return
            self._data(conn, task, data[:alloc])
        elif op == 0x25:
            self._data(conn, task, lu.capacity10())
        elif op == 0x9E and cdb[1] & 0x1F == 0x10:
            self._data(conn, task, lu.capacity16()[:int.from_bytes(cdb[10:14], "big")])
        elif op == 0xA0:
            self._report_luns(conn, task)
        elif op == 0x1A:
            self._data(conn, task, lu.mode_sense6()[:cdb[4]])
        elif op in (0x00, 0x35, 0x91):
            conn.respond(task)
        elif op == 0x42:
            self._unmap(conn, task, lu)
        elif op == 0x93:
            lba, blocks = struct.unpack_from(">QI", cdb, 2)
            if lba + blocks > lu.blocks:
                conn.respond(task, _CHECK, disk.sense(0x05, 0x21, 0x00))
                return
            if cdb[1] & 0x08:
                self.zero(lu, lba, blocks)
            else:
                block = bytes(task.data[:BLOCK])
                self.apply_raw(conn, lu, lba, block * blocks)
            conn.respond(task)
        else:
            conn.respond(task, _CHECK, disk.sense(0x05, 0x20, 0x00))

    def _data(self, conn: TConn, task: TTask, data: bytes) -> None:
        data = data[:task.edtl]
        short = task.edtl - len(data)
        conn.respond(task, data=data, residual=short, underflow=short > 0)

    def _report_luns(self, conn: TConn, task: TTask) -> None:
        self._data(conn, task, disk.report_luns(self.lun_map))

    def _unmap(self, conn: TConn, task: TTask, lu: LogicalUnit) -> None:
        params = bytes(task.data or b"")
        if len(params) < 8:
            conn.respond(task, _CHECK, disk.sense(0x05, 0x26, 0x00))
            return
        n = int.from_bytes(params[2:4], "big") // 16
        extents = [struct.unpack_from(">QI", params, 8 + 16 * i) for i in range(n)]
        for lba, blocks in extents:
            if lba + blocks > lu.blocks:
                conn.respond(task, _CHECK, disk.sense(0x05, 0x21, 0x00))
                return
        for lba, blocks in extents:
            self.zero(lu, lba, blocks)
        conn.respond(task)

    def zero(self, lu: LogicalUnit, lba: int, blocks: int) -> None:
        lu.data[lba * BLOCK:(lba + blocks) * BLOCK] = bytes(blocks * BLOCK)

    def apply_write(self, conn: TConn, task: TTask, *, lba: int | None = None,
                    length: int | None = None, final: bool = False) -> None:
        """Put a WRITE's data on its LU (at once: a write is atomic here)."""
        cdb = task.cdb
        if lba is None:
            if cdb[0] == 0x2A:
                lba = struct.unpack_from(">I", cdb, 2)[0]
            else:
                lba = struct.unpack_from(">Q", cdb, 2)[0]
        lu = self.lun_map.get(task.lun)
        if lu is None or task.data is None:
            return
        data = task.data if length is None else task.data[:length]
        if lba * BLOCK + len(data) > len(lu.data):
            return
        self.apply_raw(conn, lu, lba, data)

    def apply_raw(self, conn: TConn, lu: LogicalUnit, lba: int, data) -> None:
        self.world.checker.applying(lu, lba * CELLS_PER_BLOCK, data)
        lu.data[lba * BLOCK:lba * BLOCK + len(data)] = data

    # -- faults that concern the whole target
    def restart(self, down_for: float, swap: bool) -> None:
        world = self.world
        world.trace("restart", down_for, swap)
        for conn in list(self.conns.values()):
            conn.close("target restart", reset=True)
        self.conns.clear()
        self.sessions.clear()
        # a capacity change not yet reported survives the restart (the initiator must still
        # learn of it); every other condition is replaced by "power on" at the next login
        self.ua = {k: [(0x2A, 0x09)] for k, q in self.ua.items() if (0x2A, 0x09) in q}
        self.nexus_gen.clear()
        self.generation += 1
        self.up = False
        self.down_until = trio.current_time() + down_for
        self.tmf_ignore_until = 0.0
        self.window_frozen_until = 0.0
        for p in self.portals:
            p.stalled_until = 0.0
        if swap:
            n = world.target_rng.choice(sorted(self.lun_map))
            old = self.lun_map[n]
            new = LogicalUnit(self.next_tag, old.blocks, granularity=old.granularity,
                              max_transfer_blocks=old.max_transfer_blocks)
            self.next_tag += 1
            self.lun_map[n] = new
            world.lu_added(new)
        world.call_at(self.down_until, self._come_up)

    def _come_up(self) -> None:
        if trio.current_time() >= self.down_until:
            self.up = True
            self.world.trace("target up")

    def stall(self, portal: PortalSpec, seconds: float) -> None:
        until = trio.current_time() + seconds
        portal.stalled_until = max(portal.stalled_until, until)
        self.world.trace("stall", portal.host, seconds)
        self.world.call_at(until, self._unstall, portal)

    def _unstall(self, portal: PortalSpec) -> None:
        self.last_unstall = trio.current_time()
        for conn in list(self.conns.values()):
            if conn.portal is portal:
                conn.pause_end = trio.current_time()
                conn.flush_pending()

    def freeze_window(self, seconds: float) -> None:
        self.window_frozen_until = trio.current_time() + seconds
        for sess in self.sessions.values():
            sess.frozen = True
            if sess.conn is not None:
                sess.conn.window_closed = True
        self.world.call_at(self.window_frozen_until, self._thaw)

    def _thaw(self) -> None:
        if trio.current_time() < self.window_frozen_until:
            return
        for sess in self.sessions.values():
            sess.frozen = False
            conn = sess.conn
            if conn is not None and not conn.dead:
                conn.advance_window()
                # tell the initiator: an unsolicited NOP-In carries the new MaxCmdSN
                conn.send(NopIn(itt=RESERVED, ttt=RESERVED, lun=0, **conn.sns(advance=False)))

    def grow(self, lun: int, blocks: int) -> None:
        lu = self.lun_map.get(lun)
        if lu is None:
            return
        lu.grow(blocks)
        self.world.lu_grew(lu)
        self.unit_attention(lun, 0x2A, 0x09)


__all__ = ["Target", "TargetParams", "PortalSpec", "TConn", "summary"]
