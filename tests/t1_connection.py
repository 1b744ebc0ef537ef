"""Full-feature-phase Connection against a scripted in-memory target.

The target side is played by the tests: they feed target PDU dataclasses to
``Connection.receive_pdu`` and decode what ``data_to_send()`` produced with a target-side
``PduDecoder``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsifs.core.connection import (
    COUNTER_NAMES,
    AsyncEventReceived,
    Connection,
    LogoutComplete,
    NopReceived,
    RejectReceived,
    TaskComplete,
    TaskFailed,
    TaskManagementComplete,
    TextComplete,
)
from iscsifs.core.keys import NegotiatedParams, encode_text
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
    PduDecoder,
    Reject,
    ScsiCommand,
    ScsiResponse,
    TaskManagementRequest,
    TaskManagementResponse,
    TextRequest,
    TextResponse,
    encode,
    encode_lun,
)
from iscsifs.errors import LocalProtocolError, RemoteProtocolError

M32 = 0xFFFFFFFF
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0])


@dataclass(frozen=True)
class FakeLogin:   # the fields of LoginComplete the connection uses
    params: NegotiatedParams
    cmd_sn: int = 10
    exp_cmd_sn: int = 10
    max_cmd_sn: int = 41
    exp_stat_sn: int = 100
    tsih: int = 1
    isid: int = 0x023D00000001
    auth_method: str = "None"


class Target:
    """A scripted target: tracks StatSN and the window it advertises."""

    def __init__(self, conn: Connection, *, stat_sn: int = 100, exp_cmd_sn: int = 10,
                 max_cmd_sn: int = 41) -> None:
        self.conn = conn
        self.stat_sn = stat_sn
        self.exp_cmd_sn = exp_cmd_sn
        self.max_cmd_sn = max_cmd_sn
        self.decoder = PduDecoder(initiator_side=False, max_data_segment_length=1 << 24 - 1)

    def sent(self) -> list:
        bufs = self.conn.data_to_send()
        self.decoder.feed(b"".join(bytes(b) for b in bufs))
        out = []
        while (pdu := self.decoder.next_pdu()) is not None:
            out.append(pdu)
        assert self.decoder.buffered == 0
        return out

    def _sn(self) -> dict:
        return dict(exp_cmd_sn=self.exp_cmd_sn, max_cmd_sn=self.max_cmd_sn)

    def _status(self) -> int:
        sn = self.stat_sn
        self.stat_sn = (sn + 1) & M32
        return sn

    def feed(self, pdu) -> list:
        return self.conn.receive_pdu(pdu)

    def response(self, itt, *, status=0, response=0, sense=b"", residual=0, underflow=False,
                 overflow=False, exp_data_sn=0):
        data = (len(sense).to_bytes(2, "big") + sense) if sense else b""
        return self.feed(ScsiResponse(
            itt=itt, response=response, status=status, stat_sn=self._status(), **self._sn(),
            exp_data_sn=exp_data_sn, bidi_read_residual_count=0, residual_count=residual,
            overflow=overflow, underflow=underflow, bidi_overflow=False, bidi_underflow=False,
            data=data))

    def data_in(self, itt, offset, data, *, data_sn, status=None, residual=0, underflow=False,
                overflow=False, final=None):
        sp = status is not None
        return self.feed(DataIn(
            itt=itt, ttt=RESERVED_TAG, lun=0, stat_sn=self._status() if sp else 0, **self._sn(),
            data_sn=data_sn, buffer_offset=offset, residual_count=residual,
            final=sp if final is None else final, acknowledge=False, overflow=overflow,
            underflow=underflow, status_present=sp, status=status or 0, data=data))

    def r2t(self, itt, offset, length, *, r2t_sn, ttt=0x1000):
        return self.feed(R2T(itt=itt, ttt=ttt, lun=0, stat_sn=self.stat_sn, **self._sn(),
                             r2t_sn=r2t_sn, buffer_offset=offset,
                             desired_data_transfer_length=length))

    def nop_in(self, itt=RESERVED_TAG, ttt=RESERVED_TAG, lun=0):
        stat_sn = self.stat_sn if itt == RESERVED_TAG else self._status()
        return self.feed(NopIn(itt=itt, ttt=ttt, lun=lun, stat_sn=stat_sn, **self._sn()))


def make(*, queue_depth=32, cmd_sn=10, max_cmd_sn=41, **params):
    defaults = dict(max_xmit_data_segment_length=8192, first_burst_length=65536,
                    max_burst_length=262144, immediate_data=True, initial_r2t=True)
    defaults.update(params)
    login = FakeLogin(NegotiatedParams(**defaults), cmd_sn=cmd_sn, exp_cmd_sn=cmd_sn,
                      max_cmd_sn=max_cmd_sn)
    conn = Connection(login, queue_depth=queue_depth)
    return conn, Target(conn, exp_cmd_sn=cmd_sn, max_cmd_sn=max_cmd_sn)


def payload(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


# ----------------------------------------------------------------------------- basic commands

def test_read_single_data_in_with_status():
    conn, tgt = make()
    buf = bytearray(4096)
    itt = conn.start_command(3, READ10, read_length=4096, read_buffer=buf)
    assert itt != RESERVED_TAG
    (cmd,) = tgt.sent()
    assert isinstance(cmd, ScsiCommand)
    assert (cmd.itt, cmd.lun, cmd.cdb[:10]) == (itt, encode_lun(3), READ10)
    assert cmd.read and not cmd.write and cmd.final and not cmd.immediate
    assert cmd.expected_data_transfer_length == 4096
    assert cmd.cmd_sn == 10 and cmd.exp_stat_sn == 100
    assert conn.outstanding == 1 and conn.cmd_sn == 11

    data = payload(4096)
    events = tgt.data_in(itt, 0, data, data_sn=0, status=0)
    assert events == [TaskComplete(itt, 0, b"", 0, False, False, 4096)]
    assert events[0].buffer is buf
    assert bytes(buf) == data
    assert conn.outstanding == 0 and conn.exp_stat_sn == 101


def test_read_several_data_in_then_scsi_response():
    conn, tgt = make()
    buf = memoryview(bytearray(10000))
    itt = conn.start_command(0, READ10, read_length=10000, read_buffer=buf)
    tgt.sent()
    data = payload(10000)
    assert tgt.data_in(itt, 0, data[:4000], data_sn=0) == []
    assert tgt.data_in(itt, 4000, data[4000:8000], data_sn=1) == []
    assert tgt.data_in(itt, 8000, data[8000:], data_sn=2, final=True) == []
    (ev,) = tgt.response(itt, exp_data_sn=3)
    assert ev == TaskComplete(itt, 0, b"", 0, False, False, 10000)
    assert bytes(buf) == data


def test_read_status_in_last_data_in_with_underflow():
    conn, tgt = make()
    buf = bytearray(8192)
    itt = conn.start_command(0, READ10, read_length=8192, read_buffer=buf)
    tgt.sent()
    tgt.data_in(itt, 0, b"a" * 1000, data_sn=0)
    (ev,) = tgt.data_in(itt, 1000, b"b" * 1000, data_sn=1, status=0, residual=6192,
                        underflow=True)
    assert ev == TaskComplete(itt, 0, b"", 6192, True, False, 2000)
    assert buf[:2000] == b"a" * 1000 + b"b" * 1000


@pytest.mark.parametrize("residual, underflow", [(0, False), (1000, True)])
def test_good_status_after_fewer_bytes_than_promised_is_a_protocol_error(residual, underflow):
    # 8192 asked, 2000 sent, and the status says GOOD with no underflow (or one that accounts
    # for only 1000 of the 6192 missing bytes): the rest of the buffer was never written
    conn, tgt = make()
    buf = bytearray(b"x" * 8192)
    itt = conn.start_command(0, READ10, read_length=8192, read_buffer=buf)
    tgt.sent()
    tgt.data_in(itt, 0, b"a" * 2000, data_sn=0)
    with pytest.raises(RemoteProtocolError, match="2000 of the"):
        tgt.response(itt, residual=residual, underflow=underflow)
    assert conn.broken


def test_residual_overflow_in_scsi_response():
    conn, tgt = make()
    itt = conn.start_command(0, READ10, read_length=512)
    tgt.sent()
    tgt.data_in(itt, 0, payload(512), data_sn=0)
    (ev,) = tgt.response(itt, residual=512, overflow=True)
    assert (ev.residual_count, ev.overflow, ev.underflow, ev.data_length) == (512, True, False,
                                                                              512)
    assert bytes(ev.buffer) == payload(512)   # buffer allocated by the connection


def test_residual_without_flag_is_reported_as_zero():
    conn, tgt = make()
    itt = conn.start_command(0, READ10, read_length=512)
    tgt.sent()
    tgt.data_in(itt, 0, payload(512), data_sn=0)
    (ev,) = tgt.response(itt, residual=99)
    assert ev.residual_count == 0


def test_overflow_and_underflow_together_is_a_protocol_error():
    conn, tgt = make()
    itt = conn.start_command(0, READ10, read_length=512)
    tgt.sent()
    with pytest.raises(RemoteProtocolError):
        tgt.response(itt, residual=1, overflow=True, underflow=True)


def test_check_condition_sense():
    conn, tgt = make()
    itt = conn.start_command(0, bytes(6))
    (cmd,) = tgt.sent()
    assert not cmd.read and not cmd.write and cmd.expected_data_transfer_length == 0
    sense = bytes([0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0])
    (ev,) = tgt.response(itt, status=2, sense=sense)
    assert ev.status == 2 and ev.sense == sense


def test_lying_sense_length_is_a_protocol_error():
    conn, tgt = make()
    itt = conn.start_command(0, bytes(6))
    tgt.sent()
    bad = ScsiResponse(itt=itt, response=0, status=2, stat_sn=100, exp_cmd_sn=11, max_cmd_sn=41,
                       exp_data_sn=0, bidi_read_residual_count=0, residual_count=0,
                       overflow=False, underflow=False, bidi_overflow=False,
                       bidi_underflow=False, data=b"\x00\x40abc")
    with pytest.raises(RemoteProtocolError):
        tgt.feed(bad)


def test_iscsi_response_failure_gives_task_failed():
    conn, tgt = make()
    itt = conn.start_command(0, bytes(6))
    tgt.sent()
    (ev,) = tgt.response(itt, response=1)
    assert isinstance(ev, TaskFailed) and ev.itt == itt
    assert conn.outstanding == 0


# ----------------------------------------------------------------------------- Data-In checks

@pytest.mark.parametrize("offset,length,data_sn,why", [
    (4000, 200, 0, "beyond"),      # past read_length
    (100, 100, 0, "offset"),       # gap at the start
    (0, 100, 1, "DataSN"),         # DataSN skips
])
def test_bad_first_data_in(offset, length, data_sn, why):
    conn, tgt = make()
    itt = conn.start_command(0, READ10, read_length=4096)
    tgt.sent()
    with pytest.raises(RemoteProtocolError, match=why):
        tgt.data_in(itt, offset, bytes(length), data_sn=data_sn)
    assert conn.broken
    with pytest.raises(LocalProtocolError):
        conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        conn.start_command(0, READ10, read_length=1)
    assert conn.was_sent(itt) and conn.outstanding == 1     # still there for the session


def test_data_in_overlap_and_backwards():
    conn, tgt = make()
    itt = conn.start_command(0, READ10, read_length=4096)
    tgt.sent()
    tgt.data_in(itt, 0, bytes(1000), data_sn=0)
    with pytest.raises(RemoteProtocolError, match="offset"):
        tgt.data_in(itt, 500, bytes(1000), data_sn=1)
    conn, tgt = make()
    itt = conn.start_command(0, READ10, read_length=4096)
    tgt.sent()
    tgt.data_in(itt, 0, bytes(1000), data_sn=0)
    with pytest.raises(RemoteProtocolError, match="DataSN"):
        tgt.data_in(itt, 1000, bytes(1000), data_sn=0)


def test_data_in_out_of_order_when_negotiated():
    conn, tgt = make(data_pdu_in_order=False)
    buf = bytearray(3000)
    itt = conn.start_command(0, READ10, read_length=3000, read_buffer=buf)
    tgt.sent()
    data = payload(3000)
    tgt.data_in(itt, 2000, data[2000:], data_sn=0)
    tgt.data_in(itt, 0, data[:1000], data_sn=1)
    with pytest.raises(RemoteProtocolError, match="overlaps"):
        tgt.data_in(itt, 900, data[900:2100], data_sn=2)


def test_data_in_out_of_order_assembles():
    conn, tgt = make(data_pdu_in_order=False)
    buf = bytearray(3000)
    itt = conn.start_command(0, READ10, read_length=3000, read_buffer=buf)
    tgt.sent()
    data = payload(3000)
    tgt.data_in(itt, 2000, data[2000:], data_sn=0)
    tgt.data_in(itt, 0, data[:1000], data_sn=1)
    (ev,) = tgt.data_in(itt, 1000, data[1000:2000], data_sn=2, status=0)
    assert ev.data_length == 3000 and bytes(buf) == data


def test_data_in_for_unknown_or_write_task():
    conn, tgt = make()
    with pytest.raises(RemoteProtocolError, match="unknown ITT"):
        tgt.data_in(1234, 0, b"x", data_sn=0)
    conn, tgt = make()
    itt = conn.start_command(0, WRITE10, write_data=b"x" * 512)
    tgt.sent()
    with pytest.raises(RemoteProtocolError, match="not a read"):
        tgt.data_in(itt, 0, b"x", data_sn=0)


def test_status_without_final_bit():
    conn, tgt = make()
    itt = conn.start_command(0, READ10, read_length=10)
    tgt.sent()
    with pytest.raises(RemoteProtocolError, match="F bit"):
        tgt.data_in(itt, 0, bytes(10), data_sn=0, status=0, final=False)


def test_response_for_unknown_itt_is_protocol_error():
    conn, tgt = make()
    with pytest.raises(RemoteProtocolError, match="unknown ITT"):
        tgt.response(77)


# ----------------------------------------------------------------------------- CmdSN window

def test_window_closed_commands_wait_then_go():
    conn, tgt = make(cmd_sn=10, max_cmd_sn=11)   # room for CmdSN 10 and 11
    itts = [conn.start_command(0, bytes(6)) for _ in range(4)]
    cmds = tgt.sent()
    assert [c.cmd_sn for c in cmds] == [10, 11]
    assert [c.itt for c in cmds] == itts[:2]
    assert not conn.window_open and conn.queued == 2
    # a NOP-In with a stale MaxCmdSN changes nothing
    tgt.max_cmd_sn = 9
    tgt.nop_in()
    assert tgt.sent() == [] and conn.max_cmd_sn == 11
    # the target completes one command and opens the window by one
    tgt.exp_cmd_sn, tgt.max_cmd_sn = 12, 12
    tgt.response(itts[0])
    (cmd,) = tgt.sent()
    assert (cmd.itt, cmd.cmd_sn) == (itts[2], 12)
    tgt.max_cmd_sn = 20
    tgt.nop_in()
    (cmd,) = tgt.sent()
    assert (cmd.itt, cmd.cmd_sn) == (itts[3], 13)
    assert conn.queued == 0 and conn.window_open


def test_zero_window_at_login():
    conn, tgt = make(cmd_sn=5, max_cmd_sn=4)   # MaxCmdSN = ExpCmdSN - 1: closed
    conn.start_command(0, bytes(6))
    assert tgt.sent() == [] and not conn.window_open
    tgt.exp_cmd_sn, tgt.max_cmd_sn = 5, 5
    tgt.nop_in()
    (cmd,) = tgt.sent()
    assert cmd.cmd_sn == 5


def test_invalid_window_update_ignored():
    conn, tgt = make(cmd_sn=10, max_cmd_sn=20)
    tgt.exp_cmd_sn, tgt.max_cmd_sn = 10, 8   # MaxCmdSN < ExpCmdSN - 1: ignore both
    tgt.nop_in()
    assert (conn.exp_cmd_sn, conn.max_cmd_sn) == (10, 20)


def test_cmd_sn_wraps_around():
    conn, tgt = make(cmd_sn=M32 - 1, max_cmd_sn=1)
    itts = [conn.start_command(0, bytes(6)) for _ in range(5)]
    cmds = tgt.sent()
    assert [c.cmd_sn for c in cmds] == [M32 - 1, M32, 0, 1]
    assert conn.queued == 1
    tgt.exp_cmd_sn, tgt.max_cmd_sn = 1, 2
    tgt.response(itts[0])
    (cmd,) = tgt.sent()
    assert cmd.cmd_sn == 2 and conn.exp_cmd_sn == 1 and conn.max_cmd_sn == 2


def test_queue_depth_limits_in_flight():
    conn, tgt = make(queue_depth=2)
    itts = [conn.start_command(0, bytes(6)) for _ in range(3)]
    assert len(tgt.sent()) == 2 and conn.outstanding == 2 and conn.queued == 1
    tgt.response(itts[1])
    (cmd,) = tgt.sent()
    assert cmd.itt == itts[2]


def test_immediate_pdus_carry_cmd_sn_without_advancing():
    conn, tgt = make(cmd_sn=10, max_cmd_sn=9)   # window closed: still allowed
    nop = conn.send_nop()
    (p,) = tgt.sent()
    assert isinstance(p, NopOut) and p.immediate and p.cmd_sn == 10 and p.itt == nop
    assert conn.cmd_sn == 10
    tgt.max_cmd_sn = 20
    tgt.nop_in()   # opens the window
    conn.start_command(0, bytes(6))
    (cmd,) = tgt.sent()
    assert cmd.cmd_sn == 10 and conn.cmd_sn == 11


def test_exp_stat_sn_tracks_statuses():
    conn, tgt = make()
    itt = conn.start_command(0, bytes(6))
    tgt.sent()
    tgt.nop_in()                     # unsolicited NOP-In does not advance StatSN
    assert conn.exp_stat_sn == 100
    tgt.response(itt)
    assert conn.exp_stat_sn == 101
    conn.send_nop()
    (p,) = tgt.sent()
    assert p.exp_stat_sn == 101


def test_itts_unique_and_never_reserved():
    conn, tgt = make(max_cmd_sn=10 + 100)
    conn._next_itt = M32 - 1   # force the wrap
    itts = [conn.start_command(0, bytes(6)) for _ in range(4)]
    assert RESERVED_TAG not in itts and len(set(itts)) == 4
    # an in-flight ITT is skipped when the counter comes round again
    conn._next_itt = itts[2]
    nxt = conn.send_nop()
    assert nxt not in itts


# ------------------------------------------------------------------------------------ writes

def _write_flow(conn, tgt, data, *, r2ts, mxdsl):
    """Run a write: return the list of (ttt, data_sn, offset, len, final) Data-Outs and the
    immediate data length."""
    itt = conn.start_command(0, WRITE10, write_data=data)
    pdus = tgt.sent()
    cmd = pdus[0]
    assert isinstance(cmd, ScsiCommand) and cmd.write and not cmd.read
    assert cmd.expected_data_transfer_length == len(data)
    outs = [p for p in pdus[1:]]
    received = bytearray(len(data))
    received[:len(cmd.data)] = cmd.data
    for sn, (off, ln) in enumerate(r2ts):
        tgt.r2t(itt, off, ln, r2t_sn=sn, ttt=0x100 + sn)
        outs += tgt.sent()
    for p in outs:
        assert isinstance(p, DataOut) and p.itt == itt
        assert len(p.data) <= mxdsl
        received[p.buffer_offset:p.buffer_offset + len(p.data)] = p.data
    assert bytes(received) == data
    return itt, cmd, [(p.ttt, p.data_sn, p.buffer_offset, len(p.data), p.final) for p in outs]


def test_write_immediate_data_only_initial_r2t_yes():
    conn, tgt = make(immediate_data=True, initial_r2t=True, max_xmit_data_segment_length=1024,
                     first_burst_length=2048, max_burst_length=2048)
    data = payload(5000)
    itt, cmd, outs = _write_flow(conn, tgt, data, r2ts=[(1024, 2048), (3072, 1928)], mxdsl=1024)
    assert len(cmd.data) == 1024 and cmd.final
    assert outs == [
        (0x100, 0, 1024, 1024, False), (0x100, 1, 2048, 1024, True),
        (0x101, 0, 3072, 1024, False), (0x101, 1, 4096, 904, True),
    ]
    (ev,) = tgt.response(itt)
    assert ev.data_length == 5000 and conn.counters["txdata_octets"] == 5000


def test_write_no_immediate_initial_r2t_yes():
    conn, tgt = make(immediate_data=False, initial_r2t=True, max_xmit_data_segment_length=1000)
    data = payload(2500)
    itt, cmd, outs = _write_flow(conn, tgt, data, r2ts=[(0, 2500)], mxdsl=1000)
    assert cmd.data == b"" and cmd.final
    assert outs == [(0x100, 0, 0, 1000, False), (0x100, 1, 1000, 1000, False),
                    (0x100, 2, 2000, 500, True)]


def test_write_immediate_and_unsolicited_initial_r2t_no():
    conn, tgt = make(immediate_data=True, initial_r2t=False, max_xmit_data_segment_length=1000,
                     first_burst_length=3500, max_burst_length=4000)
    data = payload(6000)
    itt, cmd, outs = _write_flow(conn, tgt, data, r2ts=[(3500, 2500)], mxdsl=1000)
    assert len(cmd.data) == 1000 and not cmd.final   # unsolicited Data-Out follows
    assert outs == [
        (RESERVED_TAG, 0, 1000, 1000, False), (RESERVED_TAG, 1, 2000, 1000, False),
        (RESERVED_TAG, 2, 3000, 500, True),
        (0x100, 0, 3500, 1000, False), (0x100, 1, 4500, 1000, False), (0x100, 2, 5500, 500, True),
    ]


def test_write_unsolicited_without_immediate():
    conn, tgt = make(immediate_data=False, initial_r2t=False, max_xmit_data_segment_length=1000,
                     first_burst_length=1500)
    data = payload(1200)   # all of it fits in the first burst: no R2T needed
    itt, cmd, outs = _write_flow(conn, tgt, data, r2ts=[], mxdsl=1000)
    assert cmd.data == b"" and not cmd.final
    assert outs == [(RESERVED_TAG, 0, 0, 1000, False), (RESERVED_TAG, 1, 1000, 200, True)]


def test_write_small_fits_in_immediate():
    conn, tgt = make(immediate_data=True, initial_r2t=False)
    data = payload(512)
    itt, cmd, outs = _write_flow(conn, tgt, data, r2ts=[], mxdsl=8192)
    assert bytes(cmd.data) == data and cmd.final and outs == []


def test_write_immediate_limited_by_first_burst():
    conn, tgt = make(immediate_data=True, initial_r2t=True, max_xmit_data_segment_length=8192,
                     first_burst_length=512)
    itt, cmd, outs = _write_flow(conn, tgt, payload(3000), r2ts=[(512, 2488)], mxdsl=8192)
    assert len(cmd.data) == 512
    assert outs == [(0x100, 0, 512, 2488, True)]


def test_write_data_is_not_copied():
    conn, tgt = make(immediate_data=True, initial_r2t=True, max_xmit_data_segment_length=1024)
    data = bytearray(payload(4096))
    itt = conn.start_command(0, WRITE10, write_data=data)
    bufs = conn.data_to_send()
    views = [b for b in bufs if isinstance(b, memoryview)]
    assert views and all(v.obj is data for v in views)
    tgt.r2t(itt, 1024, 3072, r2t_sn=0)
    bufs = conn.data_to_send()
    views = [b for b in bufs if isinstance(b, memoryview)]
    assert len(views) == 3 and all(v.obj is data for v in views)


@pytest.mark.parametrize("offset,length,why", [
    (0, 0, "0 bytes"),
    (4000, 200, "beyond"),
    (0, 5000, "beyond"),
])
def test_bad_r2t(offset, length, why):
    conn, tgt = make(immediate_data=False)
    itt = conn.start_command(0, WRITE10, write_data=payload(4096))
    tgt.sent()
    with pytest.raises(RemoteProtocolError, match=why):
        tgt.r2t(itt, offset, length, r2t_sn=0)


def test_r2t_beyond_max_burst_and_unknown_itt_and_read_task():
    conn, tgt = make(immediate_data=False, max_burst_length=1024)
    itt = conn.start_command(0, WRITE10, write_data=payload(4096))
    tgt.sent()
    with pytest.raises(RemoteProtocolError, match="MaxBurstLength"):
        tgt.r2t(itt, 0, 2048, r2t_sn=0)
    conn, tgt = make()
    with pytest.raises(RemoteProtocolError, match="unknown ITT"):
        tgt.r2t(5, 0, 10, r2t_sn=0)
    conn, tgt = make()
    itt = conn.start_command(0, READ10, read_length=10)
    tgt.sent()
    with pytest.raises(RemoteProtocolError, match="not a write"):
        tgt.r2t(itt, 0, 10, r2t_sn=0)


def test_max_outstanding_r2t():
    conn, tgt = make(immediate_data=False, max_outstanding_r2t=2)
    itt = conn.start_command(0, WRITE10, write_data=payload(4096))
    tgt.sent()
    tgt.r2t(itt, 0, 1024, r2t_sn=0)
    tgt.r2t(itt, 1024, 1024, r2t_sn=1)
    with pytest.raises(RemoteProtocolError, match="MaxOutstandingR2T"):
        tgt.r2t(itt, 2048, 1024, r2t_sn=2)


def test_r2t_no_longer_outstanding_once_answered():
    conn, tgt = make(immediate_data=False, max_outstanding_r2t=1)
    itt = conn.start_command(0, WRITE10, write_data=payload(4096))
    tgt.sent()
    for i in range(4):
        tgt.r2t(itt, i * 1024, 1024, r2t_sn=i)
        assert len(tgt.sent()) == 1
    assert tgt.response(itt)[0].status == 0


def test_r2t_sn_out_of_order():
    conn, tgt = make(immediate_data=False)
    itt = conn.start_command(0, WRITE10, write_data=payload(4096))
    tgt.sent()
    with pytest.raises(RemoteProtocolError, match="R2TSN"):
        tgt.r2t(itt, 0, 1024, r2t_sn=1)


def test_no_data_out_after_early_status():
    conn, tgt = make(immediate_data=False)
    itt = conn.start_command(0, WRITE10, write_data=payload(4096))
    tgt.sent()
    tgt.r2t(itt, 0, 4096, r2t_sn=0)
    tgt.response(itt, status=2)        # CHECK CONDITION before we sent the data
    assert tgt.sent() == []


@settings(max_examples=150, deadline=None)
@given(length=st.integers(1, 20000), mxdsl=st.integers(1, 5000),
       first_burst=st.integers(1, 8000), extra_burst=st.integers(0, 8000),
       immediate=st.booleans(), initial_r2t=st.booleans())
def test_write_covers_every_byte_once(length, mxdsl, first_burst, extra_burst, immediate,
                                      initial_r2t):
    max_burst = first_burst + extra_burst
    conn, tgt = make(immediate_data=immediate, initial_r2t=initial_r2t,
                     max_xmit_data_segment_length=mxdsl, first_burst_length=first_burst,
                     max_burst_length=max_burst, max_cmd_sn=1000)
    data = payload(length)
    itt = conn.start_command(0, WRITE10, write_data=data)
    pdus = tgt.sent()
    got = bytearray(length)
    covered = 0
    cmd = pdus[0]
    got[:len(cmd.data)] = cmd.data
    covered += len(cmd.data)
    unsolicited = pdus[1:]
    for i, p in enumerate(unsolicited):
        assert p.ttt == RESERVED_TAG and p.data_sn == i and p.buffer_offset == covered
        assert 0 < len(p.data) <= mxdsl and p.final == (i == len(unsolicited) - 1)
        got[covered:covered + len(p.data)] = p.data
        covered += len(p.data)
    assert covered <= first_burst and len(cmd.data) <= mxdsl
    assert cmd.final == (not unsolicited)
    if initial_r2t:
        assert not unsolicited
    else:
        assert covered == min(first_burst, length)
    sn = 0
    while covered < length:
        n = min(max_burst, length - covered)
        tgt.r2t(itt, covered, n, r2t_sn=sn, ttt=sn)
        outs = tgt.sent()
        for i, p in enumerate(outs):
            assert p.ttt == sn and p.data_sn == i and p.buffer_offset == covered
            assert 0 < len(p.data) <= mxdsl and p.final == (i == len(outs) - 1)
            got[covered:covered + len(p.data)] = p.data
            covered += len(p.data)
        sn += 1
    assert covered == length and bytes(got) == data
    (ev,) = tgt.response(itt)
    assert ev.data_length == length


# ----------------------------------------------------------------------------- NOP, text, ...

def test_target_nop_in_is_answered():
    conn, tgt = make()
    lun = encode_lun(2)
    assert tgt.nop_in(ttt=0x55, lun=lun) == []
    (p,) = tgt.sent()
    assert isinstance(p, NopOut)
    assert (p.itt, p.ttt, p.lun, p.immediate, p.cmd_sn) == (RESERVED_TAG, 0x55, lun, True, 10)
    assert tgt.nop_in() == [] and tgt.sent() == []   # TTT reserved: no answer
    assert conn.counters["noprx_pdus"] == 2 and conn.counters["noptx_pdus"] == 1


def test_our_ping_is_answered():
    conn, tgt = make()
    itt = conn.send_nop()
    (p,) = tgt.sent()
    assert (p.itt, p.ttt) == (itt, RESERVED_TAG)
    assert tgt.nop_in(itt=itt) == [NopReceived(itt)]
    assert conn.exp_stat_sn == 101
    with pytest.raises(RemoteProtocolError):
        tgt.nop_in(itt=itt)   # answered twice


def test_text_with_continuation():
    conn, tgt = make()
    itt = conn.send_text([("SendTargets", "All")])
    (req,) = tgt.sent()
    assert isinstance(req, TextRequest) and req.final and req.ttt == RESERVED_TAG
    assert req.data == b"SendTargets=All\0"
    text = encode_text([("TargetName", "iqn.2001-04.com.example:a"),
                        ("TargetAddress", "10.0.0.1:3260,1"),
                        ("TargetName", "iqn.2001-04.com.example:b")])
    # first PDU: split mid-pair with the C bit
    assert tgt.feed(TextResponse(itt=itt, ttt=0x77, lun=0, stat_sn=tgt._status(), **tgt._sn(),
                                 final=False, cont=True, data=text[:20])) == []
    (cont,) = tgt.sent()
    assert (cont.itt, cont.ttt, cont.data, cont.final) == (itt, 0x77, b"", True)
    assert tgt.feed(TextResponse(itt=itt, ttt=0x77, lun=0, stat_sn=tgt._status(), **tgt._sn(),
                                 final=False, cont=False, data=text[20:])) == []
    tgt.sent()
    more = encode_text([("TargetAddress", "10.0.0.2:3260,1")])
    (ev,) = tgt.feed(TextResponse(itt=itt, ttt=RESERVED_TAG, lun=0, stat_sn=tgt._status(),
                                  **tgt._sn(), final=True, cont=False, data=more))
    assert ev == TextComplete(itt, [
        ("TargetName", "iqn.2001-04.com.example:a"), ("TargetAddress", "10.0.0.1:3260,1"),
        ("TargetName", "iqn.2001-04.com.example:b"), ("TargetAddress", "10.0.0.2:3260,1")])
    assert conn.counters["text_pdus"] == 3 and conn.counters["textrsp_pdus"] == 3


def test_text_response_with_f_and_c():
    conn, tgt = make()
    itt = conn.send_text([("SendTargets", "All")])
    tgt.sent()
    with pytest.raises(RemoteProtocolError):
        tgt.feed(TextResponse(itt=itt, ttt=RESERVED_TAG, lun=0, stat_sn=100, **tgt._sn(),
                              final=True, cont=True, data=b"a=b\0"))


@pytest.mark.expect_log('target rejected a PDU', logger='iscsifs.core.connection')
@pytest.mark.parametrize("reason, resend", [(0x09, False), (0x05, False), (0x02, True)])
def test_reject_of_scsi_command_fills_its_cmdsn_and_fails_the_task(reason, resend):
    # RFC 7143 §4.2.2.1 / §11.5.1: the target discarded the command, so it still waits for its
    # CmdSN and holds every later command; an ABORT TASK naming that CmdSN (RefCmdSN) makes
    # the target count it as received. A reason after which the PDU may be sent again (a
    # data digest error) ends the task as "aborted": the session issues it once more.
    conn, tgt = make()
    itt = conn.start_command(2, bytes(6))
    bhs = bytes(encode(ScsiCommand(itt=itt, lun=0, cdb=bytes(6), expected_data_transfer_length=0,
                                   cmd_sn=10, exp_stat_sn=100, read=False, write=False))[0])
    tgt.sent()
    events = tgt.feed(Reject(reason=reason, stat_sn=tgt._status(), **tgt._sn(), data_sn=0,
                             data=bhs))
    assert events == [RejectReceived(reason, itt), TaskFailed(itt, events[1].reason, resend)]
    assert "rejected" in events[1].reason
    assert conn.outstanding == 0 and conn.exp_stat_sn == 101
    later = conn.start_command(2, bytes(6))
    abort, cmd = tgt.sent()
    assert isinstance(abort, TaskManagementRequest)
    assert (abort.function, abort.referenced_task_tag, abort.ref_cmd_sn, abort.lun) == \
        (1, itt, 10, encode_lun(2))
    assert abort.immediate and abort.cmd_sn == 11       # RefCmdSN below it: inside the window
    assert isinstance(cmd, ScsiCommand) and (cmd.itt, cmd.cmd_sn) == (later, 11)
    assert itt != later                                 # its ITT is kept until the answer
    # the session is told which ABORT TASK fills which CmdSN (error recovery drops the
    # connection if the target leaves the gap open), and when the target has it
    assert events[1].plug == (abort.itt, 10)
    assert not conn.received(10)
    tgt.exp_cmd_sn = 11
    tgt.feed(TaskManagementResponse(itt=abort.itt, response=1, stat_sn=tgt._status(),
                                    **tgt._sn()))
    assert conn.itts_in_use == 1                        # only the later command is left


@pytest.mark.expect_log('target rejected a PDU', logger='iscsifs.core.connection')
def test_reject_of_an_abandoned_command_fills_its_cmdsn_too():
    # simulator seed 1247: the caller gave up (ABORT TASK queued, later refused by the
    # target), then the Reject of its SCSI Command came; the tombstone was dropped and
    # nothing filled the CmdSN, so the target held every later command for ever
    conn, tgt = make()
    itt = conn.start_command(2, bytes(6))
    bhs = bytes(encode(ScsiCommand(itt=itt, lun=0, cdb=bytes(6), expected_data_transfer_length=0,
                                   cmd_sn=10, exp_stat_sn=100, read=False, write=False))[0])
    tgt.sent()
    first = conn.abort(itt)
    tgt.sent()
    events = tgt.feed(Reject(reason=0x09, stat_sn=tgt._status(), **tgt._sn(), data_sn=0,
                             data=bhs))
    assert [type(e) for e in events] == [RejectReceived, TaskFailed]
    (abort,) = tgt.sent()
    assert isinstance(abort, TaskManagementRequest) and abort.itt != first
    assert (abort.function, abort.referenced_task_tag, abort.ref_cmd_sn) == (1, itt, 10)
    assert events[1].plug == (abort.itt, 10) and not events[1].aborted
    tgt.feed(TaskManagementResponse(itt=first, response=5, stat_sn=tgt._status(), **tgt._sn()))
    tgt.exp_cmd_sn = 11
    tgt.feed(TaskManagementResponse(itt=abort.itt, response=0, stat_sn=tgt._status(),
                                    **tgt._sn()))
    assert conn.received(10) and conn.itts_in_use == 0


@pytest.mark.expect_log('target rejected a PDU', logger='iscsifs.core.connection')
def test_reject_of_a_data_out_leaves_the_task_to_its_response():
    # RFC 7143 §7.2: a Reject does not end a task that is under way; the target ends it
    # with a SCSI Response (§7.6: CHECK CONDITION after a data digest error)
    conn, tgt = make(immediate_data=False, max_xmit_data_segment_length=1024)
    itt = conn.start_command(0, WRITE10, write_data=payload(2048))
    tgt.sent()
    tgt.r2t(itt, 0, 2048, r2t_sn=0)
    first, second = tgt.sent()
    bhs = bytes(encode(second, header_digest=False, data_digest=False)[0])[:48]
    events = tgt.feed(Reject(reason=0x02, stat_sn=tgt._status(), **tgt._sn(), data_sn=0,
                             data=bhs))
    assert events == [RejectReceived(0x02, itt)]
    assert conn.outstanding == 1 and conn.was_sent(itt)
    sense = bytes([0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x47, 0x05, 0, 0, 0, 0])
    (ev,) = tgt.response(itt, status=2, sense=sense)
    assert isinstance(ev, TaskComplete) and ev.status == 2 and ev.itt == itt
    assert conn.outstanding == 0 and conn.itts_in_use == 0 and not conn.broken


@pytest.mark.expect_log('target rejected a PDU', logger='iscsifs.core.connection')
def test_reject_of_ping_and_short_reject():
    conn, tgt = make()
    itt = conn.send_nop()
    (p,) = tgt.sent()
    bhs = bytes(encode(p)[0])
    assert tgt.feed(Reject(reason=0x05, stat_sn=tgt._status(), **tgt._sn(), data_sn=0,
                           data=bhs)) == [RejectReceived(0x05, itt)]
    assert tgt.feed(Reject(reason=0x04, stat_sn=tgt._status(), **tgt._sn(), data_sn=0,
                           data=b"")) == [RejectReceived(0x04, None)]
    assert conn.counters["rjt_pdus"] == 2


def test_async_message():
    conn, tgt = make()
    msg = AsyncMessage(lun=0, stat_sn=tgt._status(), **tgt._sn(), async_event=1, async_vcode=0,
                       parameter1=0, parameter2=0, parameter3=5)
    assert tgt.feed(msg) == [AsyncEventReceived(msg)]
    assert conn.exp_stat_sn == 101 and conn.counters["async_pdus"] == 1


def test_logout():
    conn, tgt = make()
    itt = conn.logout()
    (req,) = tgt.sent()
    assert isinstance(req, LogoutRequest) and req.itt == itt and req.reason == 0
    assert req.immediate and req.cmd_sn == 10
    with pytest.raises(LocalProtocolError):
        conn.start_command(0, bytes(6))
    (ev,) = tgt.feed(LogoutResponse(itt=itt, response=0, stat_sn=tgt._status(), **tgt._sn(),
                                    time2wait=2, time2retain=20))
    assert ev == LogoutComplete(0, 2, 20) and ev.itt == itt
    assert conn.counters["logout_pdus"] == 1 and conn.counters["logoutrsp_pdus"] == 1


def test_abort_task():
    conn, tgt = make()
    itt = conn.start_command(1, READ10, read_length=4096)
    other = conn.start_command(1, READ10, read_length=4096)
    tgt.sent()
    tmf = conn.task_management(1, 1, referenced_itt=itt)
    (req,) = tgt.sent()
    assert isinstance(req, TaskManagementRequest)
    assert (req.function, req.lun, req.referenced_task_tag, req.ref_cmd_sn) == (
        1, encode_lun(1), itt, 10)
    events = tgt.feed(TaskManagementResponse(itt=tmf, response=0, stat_sn=tgt._status(),
                                             **tgt._sn()))
    assert events[0] == TaskManagementComplete(tmf, 0)
    assert [type(e) for e in events[1:]] == [TaskFailed] and events[1].itt == itt
    assert conn.outstanding == 1
    # the aborted task's ITT is free again: the target sends nothing for it after the TMF's
    # answer (what it sent before, the connection delivered first); the other task goes on
    assert conn.itts_in_use == 1 and conn.tombstones == 0
    assert tgt.data_in(other, 0, bytes(4096), data_sn=0, status=0)[0].itt == other
    assert conn.counters["tmfcmd_pdus"] == 1 and conn.counters["tmfrsp_pdus"] == 1
    assert conn.itts_in_use == 0


def test_lun_reset_fails_tasks_on_that_lun_only():
    conn, tgt = make()
    a = conn.start_command(1, bytes(6))
    b = conn.start_command(2, bytes(6))
    tgt.sent()
    tmf = conn.task_management(5, 1)
    tgt.sent()
    c = conn.start_command(1, bytes(6))   # sent after the reset: not affected
    tgt.sent()
    events = tgt.feed(TaskManagementResponse(itt=tmf, response=0, stat_sn=tgt._status(),
                                             **tgt._sn()))
    assert [e.itt for e in events if isinstance(e, TaskFailed)] == [a]
    assert events[1].aborted
    assert conn.was_sent(b) and conn.was_sent(c) and not conn.was_sent(a)
    assert conn.outstanding == 2
    assert (conn.itts_in_use, conn.tombstones) == (2, 0)    # the reset's victim left nothing


def test_abandon_sent_and_queued_commands():
    conn, tgt = make(cmd_sn=10, max_cmd_sn=10)
    wbuf = payload(100)
    a = conn.start_command(0, WRITE10, write_data=wbuf)
    rbuf = bytearray(10)
    b = conn.start_command(4, READ10, read_length=10, read_buffer=rbuf)
    tgt.sent()
    assert conn.was_sent(a) and not conn.was_sent(b)       # b waits for the window
    assert (conn.outstanding, conn.queued) == (1, 1)
    conn.abandon(b)                # queued: just forgotten
    conn.abandon(a)                # in flight: its late response is dropped
    assert (conn.outstanding, conn.queued) == (0, 0)
    assert not conn.was_sent(a)
    conn.abandon(a)                # twice: harmless
    assert tgt.response(a) == []   # late response dropped, tombstone cleared
    with pytest.raises(LocalProtocolError):
        conn.abandon(a)
    with pytest.raises(LocalProtocolError):
        conn.abandon(0x4242)


def test_unanswered_tmfs_and_pings_hold_no_itt_for_ever():
    # issue 15 (found by the simulator, seed 77): every TMF the target dropped kept an ITT
    # tombstone for the connection's life
    conn, tgt = make()
    lost = []
    for i in range(200):
        lost.append(conn.task_management(5, 1) if i % 2 else conn.send_nop())
        tgt.sent()
        conn.abandon(lost[-1])
        conn.abandon(lost[-1])          # twice: harmless
    assert (conn.itts_in_use, conn.tombstones) == (0, 0)
    # a late answer to one of the latest is dropped; an answer to one long forgotten is a
    # protocol error, like one to an ITT never issued
    assert tgt.feed(TaskManagementResponse(itt=lost[-1], response=0, stat_sn=tgt._status(),
                                           **tgt._sn())) == []
    assert tgt.nop_in(itt=lost[-2]) == []
    with pytest.raises(RemoteProtocolError):
        tgt.nop_in(itt=lost[-2])        # answered twice
    conn, tgt = make()
    first = conn.send_nop()
    conn.abandon(first)
    for _ in range(100):
        conn.abandon(conn.send_nop())
    with pytest.raises(RemoteProtocolError):
        tgt.nop_in(itt=first)


def test_a_late_answer_to_an_abandoned_abort_task_still_frees_its_victims_itt():
    # simulator seed 500062: an ABORT TASK nobody waited for any more (error recovery had
    # escalated to a LOGICAL UNIT RESET) was answered late; the answer was dropped, and with
    # it the news that the aborted task had ended: its tombstone kept the ITT
    conn, tgt = make()
    a = conn.start_command(1, READ10, read_length=10)
    tgt.sent()
    tmf = conn.abort(a)                 # the caller gave up: ABORT TASK, and a tombstone
    tgt.sent()
    assert (conn.itts_in_use, conn.tombstones) == (2, 1)
    conn.abandon(tmf)                   # its answer is awaited no more
    assert tgt.feed(TaskManagementResponse(itt=tmf, response=0, stat_sn=tgt._status(),
                                           **tgt._sn())) == []
    assert (conn.itts_in_use, conn.tombstones) == (0, 0)
    # a live command such a late answer ends is reported as aborted (the session re-issues it)
    b = conn.start_command(1, READ10, read_length=10)
    tgt.sent()
    reset = conn.task_management(5, 1)
    tgt.sent()
    conn.abandon(reset)
    events = tgt.feed(TaskManagementResponse(itt=reset, response=0, stat_sn=tgt._status(),
                                             **tgt._sn()))
    assert [(type(e), e.itt, e.aborted) for e in events] == [(TaskFailed, b, True)]
    assert conn.itts_in_use == 0


def test_abort_of_a_sent_command_asks_the_target_to_end_it():
    conn, tgt = make(cmd_sn=10, max_cmd_sn=10)
    a = conn.start_command(3, WRITE10, write_data=payload(100000))
    b = conn.start_command(4, READ10, read_length=10)
    tgt.sent()
    assert conn.abort(b) is None               # never sent: withdrawn, nothing to abort
    tmf = conn.abort(a)
    (req,) = tgt.sent()
    assert isinstance(req, TaskManagementRequest) and req.itt == tmf
    assert (req.function, req.referenced_task_tag, req.ref_cmd_sn, req.lun) == \
        (1, a, 10, encode_lun(3))
    # its R2T, still on the way, gets no Data-Out; the answer to the abort frees its ITT
    assert tgt.r2t(a, 8192, 8192, r2t_sn=0) == [] and tgt.sent() == []
    assert conn.tombstones == 1
    tgt.feed(TaskManagementResponse(itt=tmf, response=0, stat_sn=tgt._status(), **tgt._sn()))
    assert (conn.itts_in_use, conn.tombstones, conn.outstanding) == (0, 0, 0)


def test_a_reset_frees_the_tombstones_of_abandoned_commands_it_ended():
    # an abandoned command may still be at the target; a LOGICAL UNIT RESET (of its LUN)
    # or TARGET WARM RESET sent after it ends it there, so its tombstone goes with the answer
    conn, tgt = make()
    a = conn.start_command(1, bytes(6))
    b = conn.start_command(2, bytes(6))
    c = conn.start_command(1, bytes(6))
    tgt.sent()
    for itt in (a, b, c):
        conn.abandon(itt)
    assert conn.tombstones == 3 and all(conn.holds(itt) for itt in (a, b, c))
    # ABORT TASK for an abandoned command still names its CmdSN
    abort = conn.task_management(1, 1, referenced_itt=c)
    (req,) = tgt.sent()
    assert (req.referenced_task_tag, req.ref_cmd_sn) == (c, 12)
    tgt.feed(TaskManagementResponse(itt=abort, response=0, stat_sn=tgt._status(), **tgt._sn()))
    assert not conn.holds(c)
    reset = conn.task_management(5, 1)
    d = conn.start_command(1, bytes(6))         # after the reset: not ended by it
    tgt.sent()
    conn.abandon(d)
    assert tgt.feed(TaskManagementResponse(itt=reset, response=0, stat_sn=tgt._status(),
                                           **tgt._sn())) == [TaskManagementComplete(reset, 0)]
    assert not conn.holds(a) and conn.holds(b) and conn.holds(d)
    warm = conn.task_management(6, 0)
    tgt.sent()
    tgt.feed(TaskManagementResponse(itt=warm, response=0, stat_sn=tgt._status(), **tgt._sn()))
    assert conn.itts_in_use == 0 and conn.tombstones == 0


def test_unexpected_pdu_type_breaks_connection():
    conn, tgt = make()
    with pytest.raises(RemoteProtocolError):
        conn.receive_pdu(NopOut(itt=1))
    with pytest.raises(LocalProtocolError):
        conn.receive_pdu(NopIn(itt=RESERVED_TAG, ttt=RESERVED_TAG, lun=0, stat_sn=100,
                               exp_cmd_sn=10, max_cmd_sn=41))


def test_local_misuse():
    conn, tgt = make()
    with pytest.raises(LocalProtocolError):
        conn.start_command(0, READ10, read_length=100, read_buffer=bytearray(10))
    with pytest.raises(LocalProtocolError):
        conn.start_command(0, READ10, read_length=10, write_data=b"x")
    with pytest.raises(LocalProtocolError):
        conn.start_command(0, READ10, read_length=10, read_buffer=b"0123456789")
    with pytest.raises(LocalProtocolError):
        conn.start_command(0, b"")
    with pytest.raises(LocalProtocolError):
        Connection(FakeLogin(NegotiatedParams()), queue_depth=0)


def test_counters():
    conn, tgt = make(immediate_data=True, initial_r2t=True, max_xmit_data_segment_length=1000)
    assert set(conn.counters) == set(COUNTER_NAMES) and not any(conn.counters.values())
    r = conn.start_command(0, READ10, read_length=3000)
    w = conn.start_command(0, WRITE10, write_data=payload(2000))
    tgt.sent()
    tgt.data_in(r, 0, bytes(1500), data_sn=0)
    tgt.data_in(r, 1500, bytes(1500), data_sn=1, status=0)
    tgt.r2t(w, 1000, 1000, r2t_sn=0)
    tgt.sent()
    tgt.response(w)
    c = conn.counters
    assert c["scsicmd_pdus"] == 2 and c["datain_pdus"] == 2 and c["rxdata_octets"] == 3000
    assert c["r2t_pdus"] == 1 and c["dataout_pdus"] == 1 and c["txdata_octets"] == 2000
    assert c["scsirsp_pdus"] == 1


def test_digests_follow_negotiation():
    conn, tgt = make(header_digest=True, data_digest=True)
    tgt.decoder.header_digest = tgt.decoder.data_digest = True
    conn.start_command(0, WRITE10, write_data=payload(100))
    (cmd,) = tgt.sent()
    assert bytes(cmd.data) == payload(100)


def test_built_from_a_real_login_complete():
    from iscsifs.core.login import LoginComplete
    login = LoginComplete(params=NegotiatedParams(), tsih=5, isid=1, cmd_sn=7, exp_cmd_sn=7,
                          max_cmd_sn=8, exp_stat_sn=3, auth_method="None")
    conn = Connection(login)
    tgt = Target(conn, stat_sn=3, exp_cmd_sn=7, max_cmd_sn=8)
    conn.start_command(0, bytes(6))
    (cmd,) = tgt.sent()
    assert (cmd.cmd_sn, cmd.exp_stat_sn) == (7, 3)
