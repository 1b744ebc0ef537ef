"""The full feature phase of one iSCSI connection, without I/O (h11 style).

Owns: Initiator Task Tags, CmdSN assignment and the CmdSN window (RFC 7143 §4.2.2.1), ExpStatSN,
the write path (immediate data, unsolicited Data-Out, R2T -> Data-Out, §4.2.5.2 / §11.7-11.8),
Data-In placement into the caller's buffer (§11.7), NOP-In/NOP-Out (§11.18-11.19), Async
Messages (§11.9), Reject (§11.17), Text (§11.10-11.11, C bit), Task Management (§11.5-11.6) and
Logout (§11.14-11.15) exchanges, and the ``iscsiadm -m session -s`` counters.

It must not know: sockets, trio, timers (timeouts are the session's business: it calls
``abandon()`` or ``task_management()``), SCSI semantics (status and sense are passed up as is),
or how PDUs are framed on the wire (``iscsifs.core.pdu``).

Use::

    conn = Connection(login_complete)
    itt = conn.start_command(lun, cdb, read_length=4096, read_buffer=buf)
    transport.send(conn.data_to_send())
    for pdu in decoded_pdus:
        for event in conn.receive_pdu(pdu):
            ...
        transport.send(conn.data_to_send())    # R2T answers, NOP replies, queued commands

The caller's buffers are used in place: write data goes out as memoryview slices of
``write_data``, and a Data-In payload (which the decoder may lend as a view of its receive
buffer) is copied once, straight into ``read_buffer``. SCSI Command and Data-Out PDUs are
encoded from the task's fields when they are taken by ``data_to_send()``; no PDU object is
built per command.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from iscsifs.core.keys import NegotiatedParams, TextAccumulator, encode_text
from iscsifs.core.pdu import (
    R2T,
    RESERVED_TAG,
    AsyncMessage,
    DataIn,
    DataOut,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Opcode,
    Reject,
    ScsiCommand,
    summary,
    ScsiResponse,
    TaskManagementRequest,
    TaskManagementResponse,
    TextRequest,
    TextResponse,
    encode,
    encode_data_out,
    decode_lun, encode_lun,
    encode_scsi_command,
)
from iscsifs.errors import LocalProtocolError, RemoteProtocolError

from iscsifs.core.serial import sn_le, sn_lt, sn_window_valid

log = logging.getLogger(__name__)

_MASK = 0xFFFFFFFF

# Task management function codes (RFC 7143 §11.5.1)
TMF_ABORT_TASK = 1
TMF_ABORT_TASK_SET = 2
TMF_CLEAR_ACA = 3
TMF_CLEAR_TASK_SET = 4
TMF_LOGICAL_UNIT_RESET = 5
TMF_TARGET_WARM_RESET = 6
TMF_TARGET_COLD_RESET = 7
TMF_TASK_REASSIGN = 8

# TMF response codes that mean "the referenced task(s) no longer exist at the target"
_TMF_DONE = (0, 1)   # Function complete, Task does not exist

# Reject reasons after which the rejected PDU may be sent again (§11.17.1)
_RESENDABLE = frozenset({0x02, 0x0A})

REJECT_REASONS = {
    0x02: "data digest error",
    0x03: "SNACK reject",
    0x04: "protocol error",
    0x05: "command not supported",
    0x06: "immediate command reject",
    0x07: "task in progress",
    0x08: "invalid data ack",
    0x09: "invalid PDU field",
    0x0A: "long operation reject",
    0x0B: "negotiation reset",
    0x0C: "waiting for logout",
}

COUNTER_NAMES = (
    "txdata_octets", "rxdata_octets", "noptx_pdus", "scsicmd_pdus", "tmfcmd_pdus", "login_pdus",
    "text_pdus", "dataout_pdus", "logout_pdus", "snack_pdus", "noprx_pdus", "scsirsp_pdus",
    "tmfrsp_pdus", "textrsp_pdus", "datain_pdus", "logoutrsp_pdus", "r2t_pdus", "async_pdus",
    "rjt_pdus", "digest_err", "timeout_err",
)

_TX_COUNTER = {
    NopOut: "noptx_pdus",
    ScsiCommand: "scsicmd_pdus",
    TaskManagementRequest: "tmfcmd_pdus",
    TextRequest: "text_pdus",
    DataOut: "dataout_pdus",
    LogoutRequest: "logout_pdus",
}


# --------------------------------------------------------------------------------------- events

class Event:
    """Base class of what ``Connection.receive_pdu`` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class TaskComplete(Event):
    """A SCSI command finished at the iSCSI level (Response 0x00). ``status`` is the SCSI status;
    ``data_length`` counts data bytes transferred (placed in the read buffer, or written out).
    ``buffer`` is the read buffer (the caller's, or one we allocated when none was given)."""

    itt: int
    status: int
    sense: bytes
    residual_count: int
    underflow: bool
    overflow: bool
    data_length: int
    buffer: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TaskFailed(Event):
    """A SCSI command ended without a SCSI status (target failure, reject, aborted by a TMF).
    ``aborted``: a task management function of ours ended it (the target never ran it to
    completion, so it may safely be issued again). ``plug``: the target rejected the command,
    so its CmdSN is a gap the target holds every later command behind; the ITT of the ABORT
    TASK queued to fill it and that CmdSN, ``(tmf_itt, cmd_sn)`` (``Connection.received``
    says when the target has it)."""

    itt: int
    reason: str
    aborted: bool = False
    plug: tuple[int, int] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TaskManagementComplete(Event):
    itt: int
    response: int


@dataclass(frozen=True, slots=True)
class TextComplete(Event):
    itt: int
    pairs: list


@dataclass(frozen=True, slots=True)
class NopReceived(Event):
    """The target answered our ``send_nop()`` ping."""

    itt: int


@dataclass(frozen=True, slots=True)
class AsyncEventReceived(Event):
    pdu: AsyncMessage


@dataclass(frozen=True, slots=True)
class RejectReceived(Event):
    """The target rejected one of our PDUs; ``itt`` is the rejected PDU's ITT (None when the
    rejected header was not returned)."""

    reason: int
    itt: int | None


@dataclass(frozen=True, slots=True)
class LogoutComplete(Event):
    """``itt`` (an addition to the contract, not compared) is that of our Logout Request."""

    response: int
    time2wait: int
    time2retain: int
    itt: int | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------- internal records

class _Task:
    """One SCSI command, from start_command() to its status."""

    __slots__ = (
        "itt", "lun", "lun_field", "cdb", "read_length", "read_buffer", "read_view",
        "write_data", "write_view", "edtl", "cmd_sn", "seq", "sent", "done",
        "next_data_sn", "received", "ranges", "next_r2t_sn", "r2t_outstanding", "written",
        "immediate_data", "final",
    )

    def __init__(self, itt: int, lun: int, lun_field: int, cdb: bytes, read_length: int,
                 read_buffer: Any, read_view: memoryview | None, write_data: Any,
                 write_view: memoryview | None) -> None:
        self.itt = itt
        self.lun = lun
        self.lun_field = lun_field
        self.cdb = cdb
        self.read_length = read_length
        self.read_buffer = read_buffer
        self.read_view = read_view
        self.write_data = write_data
        self.write_view = write_view
        self.edtl = read_length if write_view is None else len(write_view)
        self.cmd_sn = -1
        self.seq = -1            # order in which PDUs were queued (for TMF scoping)
        self.sent = False
        self.done = False
        self.next_data_sn = 0    # next expected Data-In DataSN
        self.received = 0        # Data-In bytes placed (in order: also the next offset)
        self.ranges: list[int] | None = None   # flat [start, end, ...] when out of order
        self.next_r2t_sn = 0
        self.r2t_outstanding = 0
        self.written = 0         # write bytes handed to the transport
        self.immediate_data: Any = b""   # sent inside the SCSI Command PDU
        self.final = True        # F bit of the SCSI Command (no unsolicited Data-Out follows)


class _DataJob:
    """A run of Data-Out PDUs, expanded lazily in data_to_send() (unsolicited or one R2T)."""

    __slots__ = ("task", "ttt", "offset", "length", "r2t")

    def __init__(self, task: _Task, ttt: int, offset: int, length: int, r2t: bool) -> None:
        self.task = task
        self.ttt = ttt
        self.offset = offset
        self.length = length
        self.r2t = r2t


class _Op:
    """A non-SCSI exchange awaiting its answer: ping, text, TMF, logout."""

    __slots__ = ("kind", "itt", "seq", "function", "lun_field", "referenced_itt", "acc", "pairs")

    def __init__(self, kind: str, itt: int, seq: int) -> None:
        self.kind = kind
        self.itt = itt
        self.seq = seq
        self.function = 0
        self.lun_field = 0
        self.referenced_itt: int | None = None
        self.acc: TextAccumulator | None = None
        self.pairs: list | None = None


class _Gone:
    """Tombstone of an abandoned exchange in ``_itts``: later PDUs for its ITT are dropped
    without complaint, and the ITT is not reused while the target may still send them. A SCSI
    command's keeps its LUN, queue order and CmdSN, so that a reset that ends its task at the
    target frees it, and an ABORT TASK for it can still name its CmdSN."""

    __slots__ = ("lun_field", "seq", "cmd_sn")

    def __init__(self, lun_field: int | None = None, seq: int = -1, cmd_sn: int = -1) -> None:
        self.lun_field = lun_field      # None: not a SCSI command (a ping, text, TMF, logout)
        self.seq = seq
        self.cmd_sn = cmd_sn


_ABANDONED = _Gone()    # the tombstone of an exchange that is not a SCSI command
_FORGOTTEN = 64         # abandoned non-SCSI exchanges whose late answer is still dropped


def _tombstone(task: _Task) -> _Gone:
    return _Gone(task.lun_field, task.seq, task.cmd_sn)

Pdu = Union[NopIn, ScsiResponse, TaskManagementResponse, TextResponse, DataIn, LogoutResponse,
            R2T, AsyncMessage, Reject]


# ---------------------------------------------------------------------------------- connection

class Connection:
    """Full-feature-phase state of one connection (see the module docstring)."""

    def __init__(self, login: Any, *, queue_depth: int = 32, cid: int | None = None) -> None:
        if queue_depth < 1:
            raise LocalProtocolError(f"queue_depth must be >= 1, not {queue_depth}")
        params: NegotiatedParams = login.params
        self.params = params
        self.queue_depth = queue_depth
        self.cid = getattr(login, "cid", 0) if cid is None else cid
        self.cmd_sn: int = login.cmd_sn & _MASK           # next CmdSN to assign
        self.exp_cmd_sn: int = login.exp_cmd_sn & _MASK
        self.max_cmd_sn: int = login.max_cmd_sn & _MASK
        self.exp_stat_sn: int = login.exp_stat_sn & _MASK
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

        self._hd = bool(params.header_digest)
        self._dd = bool(params.data_digest)
        self._mxdsl = params.max_xmit_data_segment_length
        self._first_burst = params.first_burst_length
        self._max_burst = params.max_burst_length
        self._max_r2t = params.max_outstanding_r2t
        self._immediate_data = params.immediate_data
        self._initial_r2t = params.initial_r2t
        self._in_order = params.data_pdu_in_order
        if self._mxdsl <= 0:
            raise LocalProtocolError("MaxXmitDataSegmentLength must be positive")

        self._next_itt = 1
        self._itts: dict[int, Any] = {}        # itt -> _Task | _Op | _Gone (tombstone)
        # ITTs of the latest abandoned pings, TMFs, text and logout exchanges: a late answer
        # to one is dropped, not taken as a protocol error. Bounded: a target that never
        # answers them costs no memory (ITTs are issued in order, so none is reused while
        # it is here).
        self._forgotten: deque[int] = deque(maxlen=_FORGOTTEN)
        # abandoned TMFs among them: a late answer still ends the tasks the TMF ended
        self._forgotten_tmfs: dict[int, _Op] = {}
        self._waiting: deque[_Task] = deque()  # commands not yet given a CmdSN
        self._in_flight = 0                    # SCSI commands sent, not complete
        self._outq: deque[Any] = deque()       # PDUs and _DataJobs, in wire order
        self._seq = 0
        self._broken: str | None = None
        self._logged_out = False               # a Logout Request has been queued
        self._plugs: dict[int, int] = {}       # ABORT TASK itt -> the rejected command's itt
        self._handlers = {
            DataIn: self._on_data_in,
            ScsiResponse: self._on_scsi_response,
            R2T: self._on_r2t,
            NopIn: self._on_nop_in,
            TextResponse: self._on_text_response,
            TaskManagementResponse: self._on_tmf_response,
            LogoutResponse: self._on_logout_response,
            AsyncMessage: self._on_async,
            Reject: self._on_reject,
        }

    # ------------------------------------------------------------------------------- state

    @property
    def outstanding(self) -> int:
        """SCSI commands on the wire whose status has not arrived."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """SCSI commands waiting for the CmdSN window or the queue depth."""
        return len(self._waiting)

    @property
    def itts_in_use(self) -> int:
        """Initiator Task Tags held: live exchanges plus tombstones of abandoned ones."""
        return len(self._itts)

    @property
    def tombstones(self) -> int:
        """ITTs of abandoned exchanges still reserved (their late PDUs are dropped)."""
        return sum(1 for item in self._itts.values() if type(item) is _Gone)

    def holds(self, itt: int) -> bool:
        """Whether the target may still hold SCSI command ``itt``: it was sent and neither its
        status nor a task management function that ended it has come, whether its caller
        still waits for it or it was abandoned."""
        item = self._itts.get(itt)
        if type(item) is _Task:
            return item.sent and not item.done
        return type(item) is _Gone and item.lun_field is not None

    def received(self, cmd_sn: int) -> bool:
        """Whether the target has acknowledged CmdSN ``cmd_sn`` (its ExpCmdSN is past it)."""
        return sn_lt(cmd_sn, self.exp_cmd_sn)

    @property
    def window_open(self) -> bool:
        """True when the next non-immediate command's CmdSN is inside [ExpCmdSN, MaxCmdSN]."""
        return sn_le(self.cmd_sn, self.max_cmd_sn)

    @property
    def accepts_commands(self) -> bool:
        """False once the connection is broken or a Logout Request has been queued."""
        return self._broken is None and not self._logged_out

    @property
    def broken(self) -> str | None:
        """The reason the connection is unusable (after a RemoteProtocolError), else None."""
        return self._broken

    # ------------------------------------------------------------------------------ outbound

    def start_command(self, lun: int, cdb: bytes, *, read_length: int = 0,
                      read_buffer: Any = None,
                      write_data: bytes | bytearray | memoryview | None = None) -> int:
        """Queue a SCSI command; returns its ITT. ``lun`` is the LUN number. A read lands in
        ``read_buffer`` (allocated here when None; it comes back in ``TaskComplete.buffer``)."""
        self._check_usable()
        if self._logged_out:
            raise LocalProtocolError("cannot start a command after logout")
        if not isinstance(cdb, (bytes, bytearray, memoryview)) or not 1 <= len(cdb) <= 260:
            raise LocalProtocolError("cdb must be 1..260 bytes")
        if read_length < 0:
            raise LocalProtocolError("read_length must not be negative")
        write_view = None
        if write_data is not None and len(write_data):
            if read_length:
                raise LocalProtocolError("bidirectional commands are not supported")
            write_view = memoryview(write_data)
            if write_view.format != "B" or write_view.ndim != 1:
                write_view = write_view.cast("B")
        read_view = None
        if read_length:
            if read_buffer is None:
                read_buffer = bytearray(read_length)
            read_view = memoryview(read_buffer)
            if read_view.readonly:
                raise LocalProtocolError("read_buffer must be writable")
            if read_view.format != "B" or read_view.ndim != 1:
                read_view = read_view.cast("B")
            if len(read_view) < read_length:
                raise LocalProtocolError(
                    f"read_buffer holds {len(read_view)} bytes, read_length is {read_length}")
        itt = self._alloc_itt()
        task = _Task(itt, lun, encode_lun(lun), bytes(cdb), read_length, read_buffer, read_view,
                     write_data, write_view)
        self._itts[itt] = task
        self._waiting.append(task)
        self._pump()
        return itt

    def send_nop(self) -> int:
        """Queue a NOP-Out ping (immediate); the answer is a ``NopReceived(itt)`` event."""
        self._check_usable()
        itt = self._alloc_itt()
        op = _Op("nop", itt, self._next_seq())
        self._itts[itt] = op
        self._outq.append(NopOut(itt=itt, ttt=RESERVED_TAG, lun=0, cmd_sn=self.cmd_sn,
                                 exp_stat_sn=self.exp_stat_sn, immediate=True))
        return itt

    def send_text(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Queue a Text Request (e.g. ``[("SendTargets", "All")]``); the answer, however many
        PDUs it spans, is one ``TextComplete(itt, pairs)``."""
        self._check_usable()
        if self._logged_out:
            raise LocalProtocolError("cannot send text after logout")
        data = encode_text(pairs)
        if len(data) > self._mxdsl:
            raise LocalProtocolError(
                f"text request of {len(data)} bytes exceeds MaxXmitDataSegmentLength "
                f"{self._mxdsl}")
        itt = self._alloc_itt()
        op = _Op("text", itt, self._next_seq())
        op.acc = TextAccumulator()
        op.pairs = []
        self._itts[itt] = op
        self._outq.append(TextRequest(itt=itt, ttt=RESERVED_TAG, lun=0, cmd_sn=self.cmd_sn,
                                      exp_stat_sn=self.exp_stat_sn, final=True, cont=False,
                                      immediate=True, data=data))
        return itt

    def task_management(self, function: int, lun: int, referenced_itt: int | None = None) -> int:
        """Queue a Task Management Function Request (immediate); the answer is a
        ``TaskManagementComplete``. When it succeeds, the tasks it ended are reported as
        ``TaskFailed`` (the target sends no status for them)."""
        self._check_usable()
        ref_cmd_sn = self.cmd_sn
        if function == TMF_ABORT_TASK:
            if referenced_itt is None:
                raise LocalProtocolError("ABORT TASK needs referenced_itt")
            task = self._itts.get(referenced_itt)
            if type(task) is _Task:
                if not task.sent:
                    raise LocalProtocolError(
                        f"task {referenced_itt:#x} has not been sent; use abandon()")
                ref_cmd_sn = task.cmd_sn
            elif type(task) is _Gone and task.lun_field is not None:
                ref_cmd_sn = task.cmd_sn        # abandoned, but maybe still at the target
        itt = self._alloc_itt()
        op = _Op("tmf", itt, self._next_seq())
        op.function = function
        op.lun_field = encode_lun(lun)
        op.referenced_itt = referenced_itt
        self._itts[itt] = op
        self._outq.append(TaskManagementRequest(
            itt=itt, function=function, lun=op.lun_field,
            referenced_task_tag=RESERVED_TAG if referenced_itt is None else referenced_itt,
            cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn, ref_cmd_sn=ref_cmd_sn,
            exp_data_sn=0, immediate=True))
        return itt

    def logout(self, reason: int = 0) -> int:
        """Queue a Logout Request (reason 0: close the session). No new commands may follow."""
        self._check_usable()
        itt = self._alloc_itt()
        self._itts[itt] = _Op("logout", itt, self._next_seq())
        self._logged_out = True
        self._outq.append(LogoutRequest(itt=itt, reason=reason, cid=self.cid, cmd_sn=self.cmd_sn,
                                        exp_stat_sn=self.exp_stat_sn, immediate=True))
        return itt

    def was_sent(self, itt: int) -> bool:
        """Whether SCSI command ``itt`` has a CmdSN (it is on its way, or at the target);
        False while it waits for the CmdSN window or the queue depth, and once it is over."""
        item = self._itts.get(itt)
        return type(item) is _Task and item.sent

    def abandon(self, itt: int) -> None:
        """Forget an exchange (a timed-out command being re-issued elsewhere, a lost ping).
        Later PDUs for it are dropped silently; its ITT is not reused while it may be live.
        Abandoning twice is harmless; an ITT never issued is a LocalProtocolError. A ping,
        TMF, text or logout exchange keeps no tombstone: only the latest few abandoned ones
        are remembered, so that a late answer is dropped."""
        item = self._itts.get(itt)
        if type(item) is _Gone or (item is None and itt in self._forgotten):
            return              # already forgotten (e.g. ended by a task management function)
        if item is None:
            raise LocalProtocolError(f"no exchange with ITT {itt:#x}")
        if type(item) is _Task:
            item.done = True
            if not item.sent:
                self._waiting.remove(item)
                del self._itts[itt]
                return
            self._in_flight -= 1
            self._itts[itt] = _tombstone(item)
        else:
            del self._itts[itt]             # no reset ends it: the target may never answer
            forgotten = self._forgotten
            if len(forgotten) == forgotten.maxlen:
                self._forgotten_tmfs.pop(forgotten[0], None)
            forgotten.append(itt)
            if item.kind == "tmf":
                self._forgotten_tmfs[itt] = item
        if self._broken is None:
            self._pump()

    def abort(self, itt: int) -> int | None:
        """The caller gave up on SCSI command ``itt``. One never sent is withdrawn; one sent is
        abandoned and an ABORT TASK for it is queued (RFC 7143 §11.5.1), so that the target
        ends it rather than wait for data nobody will send; its tombstone goes when the
        TMF's answer says the task is gone. Returns the TMF's ITT (None: none was needed)."""
        item = self._itts.get(itt)
        tmf = None
        if type(item) is _Task and item.sent and not item.done and self._broken is None:
            tmf = self.task_management(TMF_ABORT_TASK, item.lun, itt)
        self.abandon(itt)
        return tmf

    @property
    def has_output(self) -> bool:
        """Whether data_to_send() would return anything (cheap: no encoding)."""
        return bool(self._outq)

    def data_to_send(self) -> list[bytes | memoryview]:
        """Buffers to write, in order, for every PDU queued since the last call."""
        self._check_usable()
        out: list[bytes | memoryview] = []
        q = self._outq
        if not q:
            return out
        counters = self.counters
        hd, dd = self._hd, self._dd
        debug = log.isEnabledFor(logging.DEBUG)
        while q:
            item = q.popleft()
            kind = type(item)
            if kind is _Task:
                # sent even if abandoned meanwhile: its CmdSN must not leave a gap (§4.2.2.1)
                data = item.immediate_data
                if debug:
                    log.debug("send %s", summary(ScsiCommand(
                        itt=item.itt, lun=item.lun_field, cdb=item.cdb,
                        expected_data_transfer_length=item.edtl, cmd_sn=item.cmd_sn,
                        exp_stat_sn=self.exp_stat_sn, read=item.read_view is not None,
                        write=item.write_view is not None, final=item.final, data=data)))
                if len(item.cdb) <= 16:
                    out.extend(encode_scsi_command(
                        item.itt, item.lun_field, item.cdb, item.edtl, item.cmd_sn,
                        self.exp_stat_sn, item.read_view is not None,
                        item.write_view is not None, item.final, data, hd, dd))
                else:
                    out.extend(encode(ScsiCommand(
                        itt=item.itt, lun=item.lun_field, cdb=item.cdb,
                        expected_data_transfer_length=item.edtl, cmd_sn=item.cmd_sn,
                        exp_stat_sn=self.exp_stat_sn, read=item.read_view is not None,
                        write=item.write_view is not None, final=item.final, data=data),
                        header_digest=hd, data_digest=dd))
                counters["scsicmd_pdus"] += 1
                if data:
                    counters["txdata_octets"] += len(data)
                continue
            if kind is _DataJob:
                self._expand(item, out, debug)
                continue
            if debug:
                log.debug("send %s", summary(item))
            out.extend(encode(item, header_digest=hd, data_digest=dd))
            counters[_TX_COUNTER[kind]] += 1
        return out

    # ------------------------------------------------------------------------------- inbound

    def receive_pdu(self, pdu: Pdu) -> list[Event]:
        """Process one PDU from the target; returns the events it completes (often none)."""
        self._check_usable()
        handler = self._handlers.get(type(pdu))
        try:
            if handler is None:
                raise RemoteProtocolError(
                    f"unexpected {type(pdu).__name__} PDU in the full feature phase")
            # every target PDU of the full feature phase carries ExpCmdSN/MaxCmdSN
            self._update_cmd_window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
            events = handler(pdu)
        except RemoteProtocolError as exc:
            self._broken = exc.reason
            raise
        if self._waiting:
            self._pump()
        return events

    # ------------------------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise LocalProtocolError(f"connection is broken: {self._broken}")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _alloc_itt(self) -> int:
        itts = self._itts
        itt = self._next_itt
        for _ in range(len(itts) + 2):
            if itt != RESERVED_TAG and itt not in itts:
                break
            itt = (itt + 1) & _MASK
        else:  # pragma: no cover - needs 2^32 live exchanges
            raise LocalProtocolError("no free initiator task tag")
        self._next_itt = (itt + 1) & _MASK
        return itt

    def _pump(self) -> None:
        """Give waiting commands a CmdSN and queue them while the window and depth allow."""
        waiting = self._waiting
        while (waiting and not self._logged_out and self._in_flight < self.queue_depth
               and sn_le(self.cmd_sn, self.max_cmd_sn)):
            self._send_task(waiting.popleft())

    def _send_task(self, task: _Task) -> None:
        task.cmd_sn = self.cmd_sn
        self.cmd_sn = (self.cmd_sn + 1) & _MASK
        task.seq = self._next_seq()
        task.sent = True
        self._in_flight += 1
        wv = task.write_view
        if wv is not None:
            edtl = task.edtl
            imm_len = 0
            if self._immediate_data:
                imm_len = min(self._first_burst, self._mxdsl, edtl)
                task.immediate_data = wv[:imm_len]
            unsolicited = imm_len if self._initial_r2t else min(self._first_burst, edtl)
            task.written = imm_len
            if unsolicited > imm_len:
                task.final = False
        # the command itself is framed by data_to_send(), with the ExpStatSN of that moment
        self._outq.append(task)
        if not task.final:
            imm = len(task.immediate_data)
            self._outq.append(_DataJob(task, RESERVED_TAG, imm, unsolicited - imm, False))

    def _expand(self, job: _DataJob, out: list, debug: bool) -> None:
        """Data-Out PDUs for one unsolicited burst or one R2T (DataSN from 0, F on the last)."""
        task = job.task
        if job.r2t:
            task.r2t_outstanding -= 1
        if task.done:   # completed or abandoned meanwhile: the target wants no more data
            return
        if debug:
            log.debug("send Data-Out ITT %#x TTT %#x [%d, %d) in PDUs of <= %d bytes",
                      task.itt, job.ttt, job.offset, job.offset + job.length, self._mxdsl)
        wv = task.write_view
        mx = self._mxdsl
        hd, dd = self._hd, self._dd
        offset = job.offset
        end = offset + job.length
        data_sn = 0
        n = 0
        itt, ttt, lun, exp_stat_sn = task.itt, job.ttt, task.lun_field, self.exp_stat_sn
        while offset < end:
            nxt = min(offset + mx, end)
            out.extend(encode_data_out(itt, ttt, lun, exp_stat_sn, data_sn, offset, nxt == end,
                                       wv[offset:nxt], hd, dd))
            data_sn += 1
            n += 1
            offset = nxt
        self.counters["dataout_pdus"] += n
        self.counters["txdata_octets"] += job.length
        task.written += job.length

    def _update_cmd_window(self, exp: int, mx: int) -> None:
        """RFC 7143 §4.2.2.1: ignore a MaxCmdSN below ExpCmdSN-1; only move forward."""
        if exp == self.exp_cmd_sn and mx == self.max_cmd_sn:   # the common case
            return
        if not sn_window_valid(exp, mx):
            log.debug("ignoring ExpCmdSN %d / MaxCmdSN %d (MaxCmdSN < ExpCmdSN - 1)", exp, mx)
            return
        if sn_lt(self.max_cmd_sn, mx):
            self.max_cmd_sn = mx
        if sn_lt(self.exp_cmd_sn, exp):
            # ExpCmdSN beyond the next CmdSN would acknowledge commands never sent
            if sn_le(exp, self.cmd_sn):
                self.exp_cmd_sn = exp
            else:
                log.debug("ignoring ExpCmdSN %d beyond our next CmdSN %d", exp, self.cmd_sn)

    def _status_seen(self, stat_sn: int) -> None:
        """A PDU that consumed a StatSN: acknowledge it in ExpStatSN (never move backwards)."""
        if sn_le(self.exp_stat_sn, stat_sn):
            self.exp_stat_sn = (stat_sn + 1) & _MASK

    def _lookup_task(self, itt: int, what: str) -> _Task | None:
        task = self._itts.get(itt)
        if type(task) is _Task:
            if not task.sent:
                raise RemoteProtocolError(f"{what} for ITT {itt:#x}, a command not sent yet")
            return task
        if type(task) is _Gone:
            return None
        raise RemoteProtocolError(f"{what} for unknown ITT {itt:#x}")

    def _finish_task(self, task: _Task) -> None:
        task.done = True
        del self._itts[task.itt]
        self._in_flight -= 1

    # -- Data-In (§11.7)
    def _on_data_in(self, pdu: DataIn) -> list[Event]:
        self.counters["datain_pdus"] += 1
        data = pdu.data
        n = len(data)
        self.counters["rxdata_octets"] += n
        task = self._lookup_task(pdu.itt, "Data-In")
        if task is None:   # abandoned
            if pdu.status_present:
                self._status_seen(pdu.stat_sn)
                self._itts.pop(pdu.itt, None)
            return []
        view = task.read_view
        if view is None:
            raise RemoteProtocolError(f"Data-In for ITT {pdu.itt:#x}, which is not a read")
        if pdu.data_sn != task.next_data_sn:
            raise RemoteProtocolError(
                f"Data-In DataSN {pdu.data_sn} for ITT {pdu.itt:#x}, expected "
                f"{task.next_data_sn}")
        task.next_data_sn = (task.next_data_sn + 1) & _MASK
        off = pdu.buffer_offset
        end = off + n
        if end > task.read_length:
            raise RemoteProtocolError(
                f"Data-In [{off}, {end}) for ITT {pdu.itt:#x} beyond the expected "
                f"{task.read_length} bytes")
        if n:
            if self._in_order:
                if off != task.received:
                    raise RemoteProtocolError(
                        f"Data-In offset {off} for ITT {pdu.itt:#x}, expected {task.received} "
                        f"(DataPDUInOrder=Yes)")
            else:
                self._claim_range(task, off, end)
            view[off:end] = data
            task.received += n
        if not pdu.status_present:
            return []
        if not pdu.final:
            raise RemoteProtocolError("Data-In with the S bit but not the F bit")
        self._status_seen(pdu.stat_sn)
        return [self._complete(task, pdu.status, b"", pdu.residual_count, pdu.underflow,
                               pdu.overflow)]

    @staticmethod
    def _claim_range(task: _Task, start: int, end: int) -> None:
        """DataPDUInOrder=No: accept any order, but never overlapping data."""
        r = task.ranges   # sorted, disjoint, non-touching [s0, e0, s1, e1, ...]
        if r is None:
            task.ranges = [start, end]
            return
        i = bisect_left(r, start)
        if i % 2:                          # start falls inside (s, e] of range i // 2
            if r[i] != start:
                raise RemoteProtocolError(
                    f"Data-In [{start}, {end}) for ITT {task.itt:#x} overlaps data already "
                    f"received")
            # start == e: extends that range; must not run into the next one
            if i + 1 < len(r) and r[i + 1] < end:
                raise RemoteProtocolError(
                    f"Data-In [{start}, {end}) for ITT {task.itt:#x} overlaps data already "
                    f"received")
            if i + 1 < len(r) and r[i + 1] == end:
                del r[i:i + 2]             # merge with the next range
            else:
                r[i] = end
            return
        if i < len(r) and r[i] < end:      # i even: next range starts inside [start, end)
            raise RemoteProtocolError(
                f"Data-In [{start}, {end}) for ITT {task.itt:#x} overlaps data already received")
        if i < len(r) and r[i] == end:
            r[i] = start
        else:
            r[i:i] = [start, end]

    def _complete(self, task: _Task, status: int, sense: bytes, residual: int, underflow: bool,
                  overflow: bool) -> TaskComplete:
        if underflow and overflow:
            raise RemoteProtocolError(
                f"status for ITT {task.itt:#x} has both the overflow and underflow bits")
        if status == 0 and task.read_view is not None:
            # GOOD: every byte asked for arrived, but for an underflow's residual (§11.4.5);
            # a hole would be read as data that nobody wrote
            promised = task.read_length - (residual if underflow else 0)
            if task.received < promised:
                raise RemoteProtocolError(
                    f"status GOOD for ITT {task.itt:#x} after {task.received} of the "
                    f"{promised} bytes it promises")
        self._finish_task(task)
        return TaskComplete(
            itt=task.itt, status=status, sense=sense,
            residual_count=residual if (underflow or overflow) else 0,
            underflow=underflow, overflow=overflow,
            data_length=task.received if task.read_view is not None else task.written,
            buffer=task.read_buffer)

    # -- SCSI Response (§11.4)
    def _on_scsi_response(self, pdu: ScsiResponse) -> list[Event]:
        self.counters["scsirsp_pdus"] += 1
        self._status_seen(pdu.stat_sn)
        task = self._lookup_task(pdu.itt, "SCSI Response")
        if task is None:
            self._itts.pop(pdu.itt, None)
            return []
        if pdu.response != 0:
            self._finish_task(task)
            return [TaskFailed(pdu.itt, f"target failure (iSCSI response {pdu.response:#04x})")]
        sense = bytes(pdu.sense) if pdu.data else b""
        return [self._complete(task, pdu.status, sense, pdu.residual_count, pdu.underflow,
                               pdu.overflow)]

    # -- R2T (§11.8)
    def _on_r2t(self, pdu: R2T) -> list[Event]:
        self.counters["r2t_pdus"] += 1
        task = self._lookup_task(pdu.itt, "R2T")
        if task is None:
            return []
        if task.write_view is None:
            raise RemoteProtocolError(f"R2T for ITT {pdu.itt:#x}, which is not a write")
        length = pdu.desired_data_transfer_length
        off = pdu.buffer_offset
        if length == 0:
            raise RemoteProtocolError(f"R2T for ITT {pdu.itt:#x} asks for 0 bytes")
        if off + length > task.edtl:
            raise RemoteProtocolError(
                f"R2T [{off}, {off + length}) for ITT {pdu.itt:#x} beyond the "
                f"{task.edtl} bytes to write")
        if length > self._max_burst:
            raise RemoteProtocolError(
                f"R2T desired length {length} exceeds MaxBurstLength {self._max_burst}")
        if pdu.ttt == RESERVED_TAG:
            raise RemoteProtocolError("R2T with the reserved target transfer tag")
        if pdu.r2t_sn != task.next_r2t_sn:
            raise RemoteProtocolError(
                f"R2TSN {pdu.r2t_sn} for ITT {pdu.itt:#x}, expected {task.next_r2t_sn}")
        if task.r2t_outstanding >= self._max_r2t:
            raise RemoteProtocolError(
                f"more than MaxOutstandingR2T={self._max_r2t} R2Ts outstanding for ITT "
                f"{pdu.itt:#x}")
        task.next_r2t_sn = (task.next_r2t_sn + 1) & _MASK
        task.r2t_outstanding += 1
        self._outq.append(_DataJob(task, pdu.ttt, off, length, True))
        return []

    # -- NOP-In (§11.19)
    def _on_nop_in(self, pdu: NopIn) -> list[Event]:
        self.counters["noprx_pdus"] += 1
        if pdu.itt == RESERVED_TAG:
            # unsolicited: StatSN is not advanced; answer a ping that wants an answer
            if pdu.ttt != RESERVED_TAG:
                self._outq.append(NopOut(itt=RESERVED_TAG, ttt=pdu.ttt, lun=pdu.lun,
                                         cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn,
                                         immediate=True))
            return []
        self._status_seen(pdu.stat_sn)
        op = self._itts.get(pdu.itt)
        if type(op) is _Gone:
            del self._itts[pdu.itt]
            return []
        if op is None and self._late(pdu.itt):
            return []
        if type(op) is not _Op or op.kind != "nop":
            raise RemoteProtocolError(f"NOP-In for ITT {pdu.itt:#x}, which is not a ping of ours")
        del self._itts[pdu.itt]
        return [NopReceived(pdu.itt)]

    def _late(self, itt: int) -> bool:
        """Whether ``itt`` is an abandoned exchange's (its answer came late: drop it)."""
        if itt in self._forgotten:
            self._forgotten.remove(itt)
            return True
        return False

    def _take_op(self, itt: int, kind: str, what: str) -> _Op | None:
        """The request ``itt`` answers; None for an abandoned one (its ITT is then free)."""
        op = self._itts.get(itt)
        if type(op) is _Gone:
            return None
        if op is None and self._late(itt):
            return None
        if type(op) is not _Op or op.kind != kind:
            raise RemoteProtocolError(f"{what} for ITT {itt:#x}, which has no such request")
        return op

    # -- Text Response (§11.11)
    def _on_text_response(self, pdu: TextResponse) -> list[Event]:
        self.counters["textrsp_pdus"] += 1
        self._status_seen(pdu.stat_sn)
        op = self._take_op(pdu.itt, "text", "Text Response")
        if op is None:
            if pdu.final:
                self._itts.pop(pdu.itt, None)
            return []
        if pdu.final and pdu.cont:
            raise RemoteProtocolError("Text Response with both the F and C bits")
        pairs = op.acc.add(pdu.data, pdu.cont)
        if pairs is not None:
            op.pairs.extend(pairs)
            op.acc = TextAccumulator()
        if pdu.final:
            del self._itts[pdu.itt]
            return [TextComplete(pdu.itt, op.pairs)]
        if pdu.ttt == RESERVED_TAG:
            raise RemoteProtocolError("Text Response to be continued without a transfer tag")
        self._outq.append(TextRequest(itt=pdu.itt, ttt=pdu.ttt, lun=0, cmd_sn=self.cmd_sn,
                                      exp_stat_sn=self.exp_stat_sn, final=True, cont=False,
                                      immediate=True, data=b""))
        return []

    # -- Task Management Function Response (§11.6)
    def _on_tmf_response(self, pdu: TaskManagementResponse) -> list[Event]:
        self.counters["tmfrsp_pdus"] += 1
        self._status_seen(pdu.stat_sn)
        plugged = self._plugs.pop(pdu.itt, None)
        if plugged is not None and type(self._itts.get(plugged)) is _Gone:
            del self._itts[plugged]     # a rejected command's CmdSN is filled: ITT free
        op = self._take_op(pdu.itt, "tmf", "Task Management Response")
        self._itts.pop(pdu.itt, None)
        if op is None:
            # abandoned (its waiter escalated meanwhile), but the target did it: the tasks it
            # ended are over there, and the tombstones of those abandoned free their ITTs
            # (simulator seed 500062: a late ABORT TASK answer left its victim's ITT held)
            late = self._forgotten_tmfs.pop(pdu.itt, None)
            if late is not None and pdu.response in _TMF_DONE:
                return self._tasks_ended_by(late)
            return []
        events: list[Event] = [TaskManagementComplete(pdu.itt, pdu.response)]
        if pdu.response in _TMF_DONE:
            events.extend(self._tasks_ended_by(op))
        return events

    def _tasks_ended_by(self, op: _Op) -> list[Event]:
        """Tasks a successful TMF terminated (those queued before it, in its scope): the
        target sends no status for them, so their ITTs are free. Live ones are reported as
        ``TaskFailed(aborted=True)``; tombstones of abandoned ones just go."""
        f = op.function
        itts = self._itts
        if f == TMF_ABORT_TASK:
            item = itts.get(op.referenced_itt)
            victims = [(op.referenced_itt, item)] if item is not None else []
        elif f in (TMF_ABORT_TASK_SET, TMF_CLEAR_TASK_SET, TMF_LOGICAL_UNIT_RESET):
            victims = [(itt, t) for itt, t in itts.items()
                       if type(t) in (_Task, _Gone) and t.lun_field == op.lun_field]
        elif f in (TMF_TARGET_WARM_RESET, TMF_TARGET_COLD_RESET):
            victims = [(itt, t) for itt, t in itts.items()
                       if type(t) in (_Task, _Gone) and t.lun_field is not None]
        else:
            return []
        events: list[Event] = []
        for itt, task in victims:
            if type(task) is _Gone:
                if task.lun_field is not None and task.seq < op.seq:
                    del itts[itt]       # ended at the target: nothing more comes for it
            elif type(task) is _Task and task.sent and not task.done and task.seq < op.seq:
                # the target sends nothing for it after this answer: its ITT is free
                del itts[itt]
                task.done = True
                self._in_flight -= 1
                events.append(TaskFailed(task.itt, f"aborted by task management function {f}",
                                          aborted=True))
        return events

    def _command_rejected(self, task: _Task, reason: int, why: str) -> TaskFailed:
        """The target discarded a SCSI Command PDU (§11.17.1, §7.2): its CmdSN never arrived,
        and the target holds every later command until it does (§4.2.2.1). An ABORT TASK
        naming that CmdSN (RefCmdSN) fills the gap: the target counts a RefCmdSN inside its
        window as received (§11.5.1). The ITT stays reserved until the abort is answered.
        After a reason that allows sending the PDU again (a data digest error, a long
        operation reject) the task ends as ``aborted``: it never ran, so the session may
        issue it once more; after any other it fails."""
        tmf = self.task_management(TMF_ABORT_TASK, task.lun, task.itt)
        self._finish_task(task)
        self._itts[task.itt] = _ABANDONED      # not at the target: no reset ends it
        self._plugs[tmf] = task.itt
        return TaskFailed(task.itt, f"rejected by the target: {why}",
                          aborted=reason in _RESENDABLE, plug=(tmf, task.cmd_sn))

    def _abandoned_rejected(self, itt: int, gone: _Gone, why: str) -> TaskFailed:
        """A Reject of an abandoned command (its caller gave up, an ABORT TASK for it may be
        on its way): as for a live one, an ABORT TASK naming its CmdSN fills the gap, and
        the session's error recovery sees that it does (the earlier abort may be refused)."""
        tmf = self.task_management(TMF_ABORT_TASK, decode_lun(gone.lun_field), itt)
        self._itts[itt] = _ABANDONED
        self._plugs[tmf] = itt
        return TaskFailed(itt, f"rejected by the target: {why}", plug=(tmf, gone.cmd_sn))

    # -- Logout Response (§11.15)
    def _on_logout_response(self, pdu: LogoutResponse) -> list[Event]:
        self.counters["logoutrsp_pdus"] += 1
        self._status_seen(pdu.stat_sn)
        op = self._take_op(pdu.itt, "logout", "Logout Response")
        self._itts.pop(pdu.itt, None)
        if op is None:
            return []
        return [LogoutComplete(pdu.response, pdu.time2wait, pdu.time2retain, pdu.itt)]

    # -- Asynchronous Message (§11.9)
    def _on_async(self, pdu: AsyncMessage) -> list[Event]:
        self.counters["async_pdus"] += 1
        self._status_seen(pdu.stat_sn)
        return [AsyncEventReceived(pdu)]

    # -- Reject (§11.17)
    def _on_reject(self, pdu: Reject) -> list[Event]:
        self.counters["rjt_pdus"] += 1
        self._status_seen(pdu.stat_sn)
        hdr = pdu.data
        itt = pdu.rejected_itt
        if itt is None:
            log.warning("target rejected a PDU (%s) without returning its header",
                        REJECT_REASONS.get(pdu.reason, hex(pdu.reason)))
            return [RejectReceived(pdu.reason, None)]
        opcode = hdr[0] & 0x3F
        why = REJECT_REASONS.get(pdu.reason, f"reason {pdu.reason:#04x}")
        log.warning("target rejected a PDU (opcode %#04x, ITT %#x): %s", opcode, itt, why)
        events: list[Event] = [RejectReceived(pdu.reason, itt)]
        item = self._itts.get(itt)
        if item is None:
            return events
        if opcode == Opcode.DATA_OUT:
            # §7.2: a Reject never ends a task under way; the target ends it with a SCSI
            # Response (after a data digest error, CHECK CONDITION, §7.6): wait for that
            return events
        if type(item) is _Gone:
            if opcode == Opcode.SCSI_COMMAND and item.lun_field is not None:
                # an abandoned command's CmdSN never arrived either: it leaves the same gap
                events.append(self._abandoned_rejected(itt, item, why))
            else:
                del self._itts[itt]
        elif type(item) is _Task:
            if opcode in (Opcode.SCSI_COMMAND, Opcode.DATA_OUT) and item.sent:
                events.append(self._command_rejected(item, pdu.reason, why))
        elif opcode in (Opcode.NOP_OUT, Opcode.TEXT_REQUEST, Opcode.TASK_MGMT_REQUEST,
                        Opcode.LOGOUT_REQUEST):
            del self._itts[itt]   # that exchange is over; RejectReceived tells the caller
        return events
