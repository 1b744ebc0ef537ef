"""A scripted iSCSI target for hostile cases that no real target produces.

It logs in anyone (AuthMethod None, or CHAP through a hook), answers the operational keys the
initiator offers, serves SendTargets from a list, answers NOP-Out and Logout, and hands every
SCSI command to a script that returns the PDUs to send back (or raw bytes). It listens on a
loopback address (127.0.0.1 unless told). Real data-path tests use tgtd; this exists for
malformed PDUs, bad digests, oversized lengths, hostile names and CHAP algorithms tgt gets
wrong, for what tgt cannot do (ALUA: ``AluaUnit``), and for timing cases that must run on
trio's MockClock: ``socketpair_connector()`` gives a ``Session`` a connector that joins it to
this target over a socketpair in the same trio run, so no real time passes. ``TargetThread``
serves targets on real sockets and the real clock from a thread of their own, for a mount in
another process.

Scripts see each write's data in its command. By default the target takes only what came
with the command (immediate data), and Data-Out goes to ``on_data_out``; with
``transfers=True`` it gathers the unsolicited Data-Out, asks for the rest with R2T (RFC 7143
§11.8), and splits the Data-In of an answer at the initiator's MaxRecvDataSegmentLength, as a
real target does.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import trio

from fake_lu import FakeLU, LuTable
from iscsifs.core.keys import decode_text, encode_text
from iscsifs.core.pdu import (R2T, DataIn, DataOut, LoginRequest, LoginResponse, LogoutRequest,
                              LogoutResponse, NopIn, NopOut, PduDecoder, ScsiCommand,
                              ScsiResponse, TaskManagementRequest, TaskManagementResponse,
                              TextRequest, TextResponse, encode)


@dataclass
class TargetConn:
    """State of one accepted connection, handed to scripts."""

    stream: trio.SocketStream
    number: int
    stat_sn: int = 1
    exp_cmd_sn: int = 0
    header_digest: bool = False
    data_digest: bool = False
    logged_in: bool = False
    window: int = 32                # MaxCmdSN - ExpCmdSN + 1; 0 keeps the window shut
    send_lock: trio.Lock = field(default_factory=trio.Lock)   # the target's and the test's
    max_xmit: int = 8192            # the initiator's MaxRecvDataSegmentLength
    max_burst: int = 262144         # MaxBurstLength, as negotiated
    writes: dict = field(default_factory=dict)     # ITT -> _Write being gathered (transfers)
    next_ttt: int = 1

    async def close(self) -> None:
        """Drop the connection (as ``tgtadm --op delete --mode conn`` does)."""
        await self.stream.aclose()

    def sns(self, status: bool = True) -> dict:
        """StatSN / ExpCmdSN / MaxCmdSN for a response (advances StatSN when ``status``)."""
        values = dict(stat_sn=self.stat_sn, exp_cmd_sn=self.exp_cmd_sn,
                      max_cmd_sn=(self.exp_cmd_sn + self.window - 1) & 0xFFFFFFFF)
        if status:
            self.stat_sn += 1
        return values

    async def send(self, *pdus, raw: bytes = b"") -> None:
        out = bytearray()
        for pdu in pdus:
            for buf in encode(pdu, header_digest=self.header_digest,
                              data_digest=self.data_digest if self.logged_in else False):
                out += buf
        out += raw
        async with self.send_lock:
            await self.stream.send_all(bytes(out))


@dataclass
class _Write:
    """A write command whose data is still coming (``FakeTarget(transfers=True)``)."""

    cmd: ScsiCommand
    data: bytearray
    received: int
    r2t_sn: int = 0
    ttt: int | None = None      # the R2T being answered, if any


def split_data_in(pdu: DataIn, limit: int) -> list[DataIn]:
    """``pdu`` as Data-In PDUs of at most ``limit`` bytes each (DataSN counting from the
    PDU's own, offsets following it); status, F bit and residual only on the last."""
    data = bytes(pdu.data)
    if len(data) <= limit:
        return [pdu]
    out = []
    for n, off in enumerate(range(0, len(data), limit)):
        last = off + limit >= len(data)
        out.append(dataclasses.replace(
            pdu, data=data[off:off + limit], data_sn=pdu.data_sn + n,
            buffer_offset=pdu.buffer_offset + off, final=pdu.final if last else False,
            status_present=pdu.status_present if last else False,
            residual_count=pdu.residual_count if last else 0,
            underflow=pdu.underflow if last else False,
            overflow=pdu.overflow if last else False))
    return out


def tmf_answer(conn: TargetConn, req: TaskManagementRequest, response: int = 0):
    """A Task Management Function Response (0: function complete)."""
    return [TaskManagementResponse(itt=req.itt, response=response, **conn.sns())]


def good_read(conn: TargetConn, cmd: ScsiCommand, payload: bytes):
    """A well-formed answer to a read: one Data-In with status (and, for a payload shorter
    than the command asked for, the underflow and its residual, RFC 7143 §11.4.5)."""
    payload = payload[:cmd.expected_data_transfer_length]
    short = cmd.expected_data_transfer_length - len(payload)
    return [DataIn(itt=cmd.itt, ttt=0xFFFFFFFF, lun=0, data_sn=0, buffer_offset=0,
                   residual_count=short, final=True, acknowledge=False, overflow=False,
                   underflow=short > 0, status_present=True, status=0, data=payload,
                   **conn.sns())]


def good_status(conn: TargetConn, cmd: ScsiCommand):
    """A SCSI Response with GOOD status and no data (the answer to a write)."""
    return [ScsiResponse(itt=cmd.itt, response=0, status=0, exp_data_sn=0,
                         bidi_read_residual_count=0, residual_count=0, overflow=False,
                         underflow=False, bidi_overflow=False, bidi_underflow=False,
                         **conn.sns())]


@dataclass
class FakeTarget:
    """``on_command(conn, cmd) -> list of PDUs | bytes``; ``sendtargets``: raw key pairs
    (``sendtargets_raw``: the answer's bytes as they are, for malformed ones).

    ``on_tmf(conn, req) -> list of PDUs``: answers to task management requests (none by
    default: a target that ignores them). ``on_data_out(conn, pdu) -> list of PDUs``: answers
    to Data-Out PDUs (none by default). ``hang_login_after=N``: connections after the N-th
    get no login answer at all. ``answer_nops=False``: pings get no answer. ``window``: the
    command window of new connections. ``transfers``: gather write data (unsolicited
    Data-Out, then R2T) before ``on_command`` sees the write, and split Data-In at the
    initiator's MaxRecvDataSegmentLength. ``tpgt``: the TargetPortalGroupTag of the login.
    ``received`` records every PDU as (connection number, PDU), ``command_times`` when each
    SCSI command arrived; ``live`` the open connections.
    """

    target_name: str = "iqn.2026-11.org.iscsifs.test:fake"
    on_command: Callable | None = None
    on_tmf: Callable | None = None
    on_data_out: Callable | None = None     # (conn, DataOut) -> list of PDUs
    sendtargets: list = field(default_factory=list)
    sendtargets_raw: bytes | None = None    # the Text Response's data as is (malformed ones)
    digests: bool = False           # accept CRC32C digests when offered
    login_hook: Callable | None = None   # (conn, req, pairs) -> list of answer pairs or None
    hang_login_after: int | None = None
    window: int = 32
    transfers: bool = False
    tpgt: int = 1
    connections: int = 0
    port: int = 0
    received: list = field(default_factory=list)
    received_at: list = field(default_factory=list)       # trio time of each of ``received``
    answer_nops: bool = True        # False: a target that stopped answering pings
    command_times: list = field(default_factory=list)     # trio time of each SCSI command
    live: dict = field(default_factory=dict)
    _reading: dict = field(default_factory=dict)    # connection number -> Event while paused

    def pause_reading(self, number: int) -> None:
        """Stop reading connection ``number`` (its sender fills the socket, then waits)."""
        self._reading.setdefault(number, trio.Event())

    def resume_reading(self, number: int) -> None:
        event = self._reading.pop(number, None)
        if event is not None:
            event.set()

    def socketpair_connector(self, nursery: trio.Nursery):
        """A ``Session`` connector that serves each connection from this target over a
        socketpair, in ``nursery`` (use with MockClock: nothing waits on real time)."""
        async def connect(portal):
            ours, theirs = socket.socketpair()
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
            nursery.start_soon(self._handle, stream)
            await trio.lowlevel.checkpoint()
            return ours
        return connect

    def commands_seen(self, opcode_byte: int | None = None) -> list:
        """SCSI commands received, as (connection number, PDU), optionally by CDB opcode."""
        return [(n, p) for n, p in self.received if isinstance(p, ScsiCommand)
                and (opcode_byte is None or p.cdb[0] == opcode_byte)]

    async def start(self, nursery: trio.Nursery, host: str = "127.0.0.1") -> None:
        """Listen on a free port of ``host`` (a loopback address) in ``nursery``."""
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host=host))
        for listener in listeners:
            sock = listener.socket
            if sock.family.name == "AF_INET":
                self.port = sock.getsockname()[1]
        assert self.port

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = TargetConn(stream, self.connections, window=self.window)
        self.live[conn.number] = conn
        decoder = PduDecoder(initiator_side=False, max_data_segment_length=1 << 20)
        try:
            while True:
                paused = self._reading.get(conn.number)
                if paused is not None:
                    await paused.wait()
                data = await stream.receive_some(65536)
                if not data:
                    return
                decoder.feed(data)
                while (pdu := decoder.next_pdu()) is not None:
                    if await self._dispatch(conn, pdu, decoder) is False:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.live.pop(conn.number, None)
            await stream.aclose()

    async def _dispatch(self, conn: TargetConn, pdu, decoder: PduDecoder):
        self.received.append((conn.number, pdu))
        self.received_at.append(trio.current_time())
        if isinstance(pdu, LoginRequest):
            if self.hang_login_after is not None and conn.number > self.hang_login_after:
                return True         # connected, but no login answer ever

            return await self._login(conn, pdu, decoder)
        if isinstance(pdu, ScsiCommand):
            self.command_times.append(trio.current_time())
            if not pdu.immediate:
                conn.exp_cmd_sn = pdu.cmd_sn + 1
            if (self.transfers and pdu.write
                    and len(pdu.data) < pdu.expected_data_transfer_length):
                write = _Write(pdu, bytearray(pdu.expected_data_transfer_length),
                               len(pdu.data))
                write.data[:len(pdu.data)] = pdu.data
                conn.writes[pdu.itt] = write
                if pdu.final:               # no unsolicited Data-Out follows
                    await self._ask_for_data(conn, write)
                return True
            return await self._command(conn, pdu)
        elif isinstance(pdu, TextRequest):
            if not pdu.immediate:
                conn.exp_cmd_sn = pdu.cmd_sn + 1
            data = self.sendtargets_raw
            if data is None:
                data = encode_text(self.sendtargets)
            await conn.send(TextResponse(itt=pdu.itt, ttt=0xFFFFFFFF, lun=0, final=True,
                                         cont=False, data=data, **conn.sns()))
        elif isinstance(pdu, DataOut) and pdu.itt in conn.writes:
            write = conn.writes[pdu.itt]
            write.data[pdu.buffer_offset:pdu.buffer_offset + len(pdu.data)] = pdu.data
            write.received += len(pdu.data)
            if write.received >= len(write.data):
                del conn.writes[pdu.itt]
                return await self._command(conn, dataclasses.replace(write.cmd,
                                                                     data=bytes(write.data)))
            if pdu.final:                   # the unsolicited burst or our R2T's is complete
                await self._ask_for_data(conn, write)
        elif isinstance(pdu, DataOut):
            answer = self.on_data_out(conn, pdu) if self.on_data_out else []
            if answer:
                await conn.send(*answer)
        elif isinstance(pdu, TaskManagementRequest):
            answer = self.on_tmf(conn, pdu) if self.on_tmf else []
            if answer:
                await conn.send(*answer)
        elif isinstance(pdu, NopOut):
            if pdu.itt != 0xFFFFFFFF and self.answer_nops:
                await conn.send(NopIn(itt=pdu.itt, ttt=0xFFFFFFFF, lun=0, data=pdu.data,
                                      **conn.sns()))
        elif isinstance(pdu, LogoutRequest):
            await conn.send(LogoutResponse(itt=pdu.itt, response=0, time2wait=0, time2retain=0,
                                           **conn.sns()))
            return False
        return True

    async def _command(self, conn: TargetConn, cmd: ScsiCommand) -> bool:
        answer = self.on_command(conn, cmd) if self.on_command else []
        if isinstance(answer, (bytes, bytearray)):
            await conn.send(raw=bytes(answer))
        elif answer is False:
            return False
        else:
            if self.transfers:
                answer = [piece for pdu in answer
                          for piece in (split_data_in(pdu, conn.max_xmit)
                                        if isinstance(pdu, DataIn) else [pdu])]
            await conn.send(*answer)
        return True

    async def _ask_for_data(self, conn: TargetConn, write: _Write) -> None:
        """One R2T for the next burst of ``write``'s data (MaxOutstandingR2T is 1: data
        arrives in order, so what is missing starts at ``received``)."""
        write.ttt, conn.next_ttt = conn.next_ttt, conn.next_ttt + 1
        length = min(len(write.data) - write.received, conn.max_burst)
        await conn.send(R2T(itt=write.cmd.itt, ttt=write.ttt, lun=write.cmd.lun,
                            r2t_sn=write.r2t_sn, buffer_offset=write.received,
                            desired_data_transfer_length=length, **conn.sns(status=False)))
        write.r2t_sn += 1

    async def _login(self, conn: TargetConn, req: LoginRequest, decoder: PduDecoder):
        conn.exp_cmd_sn = req.cmd_sn
        pairs = decode_text(req.data)
        answer: list[tuple[str, str]] = []
        status = (0, 0)
        if self.login_hook is not None:
            hooked = self.login_hook(conn, req, pairs)
            if hooked is not None:
                answer, status, nsg, transit = hooked
                await self._login_reply(conn, req, answer, status, req.csg, nsg, transit)
                return status == (0, 0)
        if req.csg == 0:
            answer.append(("AuthMethod", "None"))
            answer.append(("TargetPortalGroupTag", str(self.tpgt)))
            nsg, transit = (req.nsg, req.transit)
        else:
            for key, value in pairs:
                if key in ("HeaderDigest", "DataDigest"):
                    choice = "None"
                    if self.digests and "CRC32C" in value.split(","):
                        choice = "CRC32C"
                    answer.append((key, choice))
                elif key == "MaxRecvDataSegmentLength":
                    conn.max_xmit = int(value)
                    answer.append((key, "8192"))
                elif key == "MaxBurstLength":
                    conn.max_burst = int(value)
                    answer.append((key, value))
                elif key in ("InitiatorName", "SessionType", "TargetName", "InitiatorAlias",
                             "X-com.example:whatever"):
                    continue
                else:
                    answer.append((key, value))
            nsg, transit = 3, True
        await self._login_reply(conn, req, answer, status, req.csg, nsg, transit)
        if transit and nsg == 3:
            keys = dict(answer)
            conn.logged_in = True
            conn.header_digest = keys.get("HeaderDigest") == "CRC32C"
            conn.data_digest = keys.get("DataDigest") == "CRC32C"
            decoder.header_digest = conn.header_digest
            decoder.data_digest = conn.data_digest
        return True

    async def _login_reply(self, conn, req, answer, status, csg, nsg, transit):
        await conn.send(LoginResponse(
            isid=req.isid, tsih=1 if transit and nsg == 3 else 0, itt=req.itt,
            status_class=status[0], status_detail=status[1], csg=csg, nsg=nsg if transit else 0,
            transit=transit, cont=False, version_max=0, version_active=0,
            data=encode_text(answer), **conn.sns()))


def check_condition(conn: TargetConn, cmd: ScsiCommand, key: int, asc: int, ascq: int):
    """CHECK CONDITION with fixed-format sense data KEY/ASC/ASCQ."""
    sense = bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])
    return [ScsiResponse(itt=cmd.itt, response=0, status=2, exp_data_sn=0,
                         bidi_read_residual_count=0, residual_count=0, overflow=False,
                         underflow=False, bidi_overflow=False, bidi_underflow=False,
                         data=len(sense).to_bytes(2, "big") + sense, **conn.sns())]


# ALUA states (SPC-4 §6.35 table 292)
AO, ANO, STANDBY, UNAVAILABLE, TRANSITIONING = 0x0, 0x1, 0x2, 0x3, 0xF
_NOT_READY = {STANDBY: 0x0B, UNAVAILABLE: 0x0C, TRANSITIONING: 0x0A}


# Commands a port answers in each state other than active (SPC-4 §5.16.2.4.4-6: INQUIRY,
# REPORT LUNS, REQUEST SENSE, REPORT TARGET PORT GROUPS; in standby also MODE SENSE and
# PERSISTENT RESERVE IN/OUT); anything else is NOT READY
_ANSWERED_ALWAYS = frozenset({0x12, 0xA0, 0x03, 0xA3})
_ANSWERED_IN = {STANDBY: _ANSWERED_ALWAYS | {0x1A, 0x5A, 0x5E, 0x5F},
                UNAVAILABLE: _ANSWERED_ALWAYS, TRANSITIONING: _ANSWERED_ALWAYS}
_READ_WRITE = frozenset({0x28, 0x2A, 0x88, 0x8A})


def _good(answer) -> bool:
    return all(getattr(pdu, "status", 0) == 0 for pdu in answer)


class AluaUnit:
    """One logical unit with asymmetric access (SPC-4 §5.16) behind several targets: each
    target is one target port, in a target port group (``groups``: group -> state).

    The LU is a ``fake_lu.FakeLU`` (``lu``, its blocks ``data``, random at first) at LUN
    ``lun``, answered through a ``fake_lu.LuTable`` per port: INQUIRY with TPGS (implicit ALUA)
    and the port's relative port and group designators in VPD 83h (relative port = group),
    REPORT LUNS, READ CAPACITY, MODE SENSE, READ/WRITE(10/16), ... when the port's group is
    active (optimized or non-optimized). In standby, unavailable or transition the port
    answers only what SPC-4 lists for that state and NOT READY 04/0B, 04/0C or 04/0A to the
    rest (READ CAPACITY too); REPORT TARGET PORT GROUPS reports every group. ``set_state``
    changes a group's state and makes the next command of every connection get UNIT
    ATTENTION 2A/06, as an implicit ALUA transition does.

    Counters, by port name: ``served`` READ/WRITEs done, ``rtpg`` REPORT TARGET PORT GROUPS
    answered, ``not_ready`` commands answered NOT READY (by (port name, state))."""

    BS = 512

    def __init__(self, blocks: int = 256, groups: dict[int, int] | None = None, lun: int = 1):
        self.lu = FakeLU(blocks=blocks, block_size=self.BS,
                         data=bytearray(os.urandom(self.BS * blocks)),
                         vendor="ISCSIFS", product="ALUA")
        self.lun = lun
        self.groups = dict(groups or {1: AO, 2: ANO})
        self.preferred: set[int] = set()
        self.ua: set[tuple[str, int]] = set()       # (port name, conn number) owed a 2A/06
        self.served: dict[str, int] = {}            # port name -> READ/WRITE done
        self.rtpg: dict[str, int] = {}              # port name -> RTPGs answered
        self.not_ready: dict[tuple[str, int], int] = {}     # (port name, state) -> answers
        self.ports: dict[str, tuple[int, FakeTarget]] = {}

    @property
    def data(self) -> bytearray:
        return self.lu.data

    def set_state(self, group: int, state: int) -> None:
        self.groups[group] = state
        for name, (_, target) in self.ports.items():
            self.ua.update((name, n) for n in target.live)

    def rtpg_data(self) -> bytes:
        body = b""
        for group, state in sorted(self.groups.items()):
            pref = 0x80 if group in self.preferred else 0
            body += bytes([pref | state, 0x8F]) + group.to_bytes(2, "big") + bytes([0, 0, 0, 1])
            body += (0).to_bytes(2, "big") + group.to_bytes(2, "big")   # relative port = group
        return len(body).to_bytes(4, "big") + body

    def target(self, name: str, group: int, iqn: str = "iqn.2026-11.org.iscsifs.test:alua",
               **kw) -> FakeTarget:
        """The target port ``name`` in ``group`` (``kw`` goes to ``FakeTarget``)."""
        table = LuTable({self.lun: self.lu}, port=(group, group))

        def on_command(conn, cmd):
            op = cmd.cdb[0]
            if op == 0xA3 and cmd.cdb[1] & 0x1F == 0x0A:
                self.rtpg[name] = self.rtpg.get(name, 0) + 1
                return good_read(conn, cmd, self.rtpg_data()[:cmd.expected_data_transfer_length])
            if op in (0x12, 0xA0, 0x03):            # never a unit attention (SPC-4 §5.14)
                return table(conn, cmd)
            if (name, conn.number) in self.ua:
                self.ua.discard((name, conn.number))
                return check_condition(conn, cmd, 0x6, 0x2A, 0x06)
            state = self.groups[group]
            if state in _NOT_READY and op not in _ANSWERED_IN[state]:
                key = (name, state)
                self.not_ready[key] = self.not_ready.get(key, 0) + 1
                return check_condition(conn, cmd, 0x2, 0x04, _NOT_READY[state])
            answer = table(conn, cmd)
            if op in _READ_WRITE and _good(answer):
                self.served[name] = self.served.get(name, 0) + 1
            return answer
        target = FakeTarget(target_name=iqn, on_command=on_command, **kw)
        self.ports[name] = (group, target)
        return target


class TargetThread:
    """Scripted targets on real sockets and the real clock, in a trio run of their own in a
    thread (for a mount in another process, or a command that runs its own ``trio.run``)::

        with TargetThread() as thread:
            port = thread.serve(target, "127.0.0.1")
            thread.call(unit.set_state, 1, STANDBY)     # in the targets' trio thread
            thread.start_soon(scenario)                 # an async function, there

    Leaving the block cancels everything (the targets close their connections) and joins
    the thread, bounded."""

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True,
                                        name="fake-targets")

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._token, self._nursery = trio.lowlevel.current_trio_token(), nursery
            self._started.set()
            await trio.sleep_forever()

    def __enter__(self) -> TargetThread:
        self._thread.start()
        assert self._started.wait(10), "the targets' trio thread did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(lambda: self._nursery.cancel_scope.cancel())
        self._thread.join(10)
        assert not self._thread.is_alive(), "the targets' trio thread did not end"

    def call(self, fn: Callable, *args):
        """``fn(*args)`` in the targets' thread (between their steps); its result."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def serve(self, target: FakeTarget, host: str = "127.0.0.1") -> int:
        """Start ``target`` listening on a free port of ``host``; the port."""
        async def start():
            await target.start(self._nursery, host)
            return target.port
        return trio.from_thread.run(start, trio_token=self._token)

    def start_soon(self, fn: Callable, *args) -> None:
        """Run the async function ``fn(*args)`` in the targets' thread, in the background."""
        self.call(self._nursery.start_soon, fn, *args)


class _BreakOnCommand(socket.socket):
    """A socket whose first send of a SCSI Command PDU fails with EPIPE (as a send does right
    after the target closed the connection): the break happens exactly there, whatever order
    trio runs the tasks in."""

    def sendmsg(self, buffers, *args):
        buffers = list(buffers)
        if buffers and len(buffers[0]) and bytes(buffers[0][:1])[0] & 0x3F == 0x01:
            raise BrokenPipeError(32, "Broken pipe")
        return super().sendmsg(buffers, *args)


def breaking_connector(target: FakeTarget, nursery: trio.Nursery, broken: set):
    """``target.socketpair_connector`` whose connections numbered in ``broken`` (1, 2, ...)
    fail when the initiator sends its first SCSI command on them (after a good login)."""
    base = target.socketpair_connector(nursery)
    made = [0]

    async def connect(portal):
        made[0] += 1
        sock = await base(portal)
        if made[0] in broken:
            return _BreakOnCommand(fileno=sock.detach())
        return sock
    return connect
