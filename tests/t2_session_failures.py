"""How a session fails: promptly, within its bounds, and never by replaying an answered command.

Every test runs on trio's MockClock (autojump) against the scripted target over a socketpair,
so a 30-second timeout takes no real time and the timing asserted is exact.
"""

from __future__ import annotations

import errno
import math

import pytest
import trio
import trio.testing

from fake_target import FakeTarget, breaking_connector, good_read, good_status, tmf_answer
from helpers import (ABORT_REFUSED, CONN_FAILED, ENDED_BY_LU_RESET, NO_CMDSN, READ_TIMED_OUT,
                     RECOVERY_FAILED, REPLACEMENT_EXPIRED, TMF_UNANSWERED)
from iscsifs.core.connection import (TMF_ABORT_TASK, TMF_LOGICAL_UNIT_RESET,
                                     TMF_TARGET_WARM_RESET)
from iscsifs.core.names import Portal
from iscsifs.core.pdu import (AsyncMessage, LogoutRequest, NopIn, NopOut, Reject,
                              ScsiResponse, TaskManagementRequest, TextRequest, encode)
from iscsifs.core.state import SessionState
from iscsifs.errors import (CommandTimeout, LocalProtocolError, PathFailed,
                            RemoteProtocolError, SessionFailed, leaf_exceptions)
from iscsifs.net.session import ASYNC_EVENTS_KEPT, Session, Timeouts

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
PAYLOAD = bytes(range(256)) * 16          # 4 KiB
EPS = 1e-6
BUSY_DELAY, BUSY_DELAY_MAX = 0.01, 1.0     # docs/failure.md: BUSY retried after 10 ms, doubling


def read10(lba: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 8, 0])


def write10(lba: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 1, 0])


async def open_session(target: FakeTarget, nursery, cmds_max: int | None = None,
                       **timeouts) -> Session:
    timeouts.setdefault("noop_out_interval", 0)
    extra = {} if cmds_max is None else {"cmds_max": cmds_max}
    with trio.fail_after(5):
        return await Session.connect(Portal("127.0.0.1", 3260), target.target_name,
                                     initiator_name=INITIATOR, nursery=nursery,
                                     timeouts=Timeouts(**timeouts),
                                     connector=target.socketpair_connector(nursery), **extra)


async def read(session, lba: int = 0) -> bytes:
    buf = bytearray(len(PAYLOAD))
    await session.execute(1, read10(lba), read_length=len(buf), read_buffer=buf)
    return bytes(buf)


def tmfs(target: FakeTarget) -> list[int]:
    return [p.function for _, p in target.received if isinstance(p, TaskManagementRequest)]


def answer_from_second_sight(seen: dict):
    """A script: the first time a CDB arrives it gets no answer; a re-sent one is answered."""
    def on_command(conn, cmd):
        key = bytes(cmd.cdb)
        seen[key] = seen.get(key, 0) + 1
        return [] if seen[key] == 1 else good_read(conn, cmd, PAYLOAD)
    return on_command


@NO_CMDSN
@pytest.mark.expect_log("CommandTimeout: .* -> EIO", logger="iscsifs.fs.errno_map")
async def test_command_the_window_never_admits_fails_at_command_timeout_without_abort(
        nursery, autojump_clock):
    from iscsifs.fs.errno_map import errno_for
    target = FakeTarget(window=0, on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery, command=10)
    start = trio.current_time()
    with trio.fail_after(30):
        with pytest.raises(CommandTimeout) as info:
            await read(session)
    # withdrawn at the command timeout: not before it, not after
    assert trio.current_time() - start == pytest.approx(10, abs=EPS)
    # what the reader of the file gets: EIO, as docs/failure.md says (not ETIMEDOUT)
    assert errno_for(info.value, "read") == errno.EIO
    assert target.commands_seen() == []          # it never had a CmdSN, so never went out
    assert tmfs(target) == []                    # and nothing was aborted
    assert target.connections == 1              # no protocol error, no relogin loop
    assert session.counters()["cmd_timeouts"] == 1
    await session.close()


@CONN_FAILED
@REPLACEMENT_EXPIRED
async def test_the_replacement_timeout_does_not_cut_a_relogin_short(nursery, autojump_clock):
    # the relogin logged in, and its setup (a login hook's command) is still running when the
    # replacement timeout expires: the waiting callers fail then, but the relogin goes on and
    # brings the session back on that connection; dropping a connection that works only
    # starts another attempt (simulator seed 145, conn.healthy_drop)
    def on_command(conn, cmd):
        if cmd.cdb[0] == 0x12:                          # the hook's INQUIRY
            if conn.number == 1:
                return good_read(conn, cmd, PAYLOAD)

            async def later():
                await trio.sleep(3)
                try:
                    await conn.send(*good_read(conn, cmd, PAYLOAD))
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass                                # the initiator dropped it
            nursery.start_soon(later)
            return []
        return [] if conn.number == 1 else good_read(conn, cmd, PAYLOAD)

    async def hook(session):
        await session.execute(1, bytes([0x12, 0, 0, 0, 36, 0]), read_length=36, setup=True)

    target = FakeTarget(on_command=on_command)
    with trio.fail_after(5):
        session = await Session.connect(
            Portal("127.0.0.1", 3260), target.target_name, initiator_name=INITIATOR,
            nursery=nursery, connector=target.socketpair_connector(nursery),
            timeouts=Timeouts(noop_out_interval=0, command=0, replacement_timeout=2,
                              login=15),
            login_hooks=[hook])
    states = []
    session.listeners.append(lambda s: states.append((s.session_state, trio.current_time())))
    outcome = {}

    async def reader():
        try:
            await read(session)
        except SessionFailed:
            outcome["failed_at"] = trio.current_time()

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        dropped_at = trio.current_time()
        await target.live[1].close()
    assert outcome["failed_at"] - dropped_at == pytest.approx(2, abs=EPS)
    with trio.fail_after(30):
        while not session.logged_in:
            await trio.sleep(0.1)
    assert [s for s, _ in states] == [SessionState.RECOVERING, SessionState.FAILED,
                                      SessionState.LOGGED_IN]
    assert states[-1][1] - dropped_at == pytest.approx(3, abs=EPS)
    assert target.connections == 2                      # the relogin's connection, kept
    assert await read(session) == PAYLOAD
    await session.close()


@READ_TIMED_OUT
@pytest.mark.expect_log('ended by ABORT TASK', logger='iscsifs.net.error_handler')
async def test_command_timeout_starts_when_our_queue_depth_lets_a_command_out(
        nursery, autojump_clock):
    # queue depth 1 and a target that takes 2 s per command: five commands at once wait for
    # our own queue depth, up to 8 s, longer than command_timeout (5 s). That wait is ours,
    # not the target's window: as Linux's block layer, the timer starts when the command
    # goes to the target (its CmdSN), not while it is queued (simulator seed 106, with the
    # slow target the simulator had been told to leave out at that scale)
    arrived = {}

    def on_command(conn, cmd):
        lba = int.from_bytes(cmd.cdb[2:6], "big")
        arrived[lba] = trio.current_time()
        if lba == 32:
            return []                               # the last one is never answered

        async def later():
            await trio.sleep(2)
            await conn.send(*good_read(conn, cmd, PAYLOAD))
        nursery.start_soon(later)
        return []

    target = FakeTarget(on_command=on_command, on_tmf=tmf_answer)
    with trio.fail_after(5):
        session = await Session.connect(Portal("127.0.0.1", 3260), target.target_name,
                                        initiator_name=INITIATOR, nursery=nursery,
                                        timeouts=Timeouts(noop_out_interval=0, command=5),
                                        connector=target.socketpair_connector(nursery),
                                        queue_depth=1)
    outcome = {}

    async def reader(lba):
        try:
            outcome[lba] = (await read(session, lba), trio.current_time())
        except CommandTimeout as exc:
            outcome[lba] = (exc, trio.current_time())

    start = trio.current_time()
    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for lba in (0, 8, 16, 24, 32):
                n.start_soon(reader, lba)
                await trio.testing.wait_all_tasks_blocked()
    for i, lba in enumerate((0, 8, 16, 24)):
        assert outcome[lba][0] == PAYLOAD
        assert outcome[lba][1] - start == pytest.approx(2 * (i + 1), abs=EPS)
    # the last went out at 8 s and timed out command_timeout later: not before, not after
    assert arrived[32] - start == pytest.approx(8, abs=EPS)
    assert isinstance(outcome[32][0], CommandTimeout)
    assert outcome[32][1] - start == pytest.approx(8 + 5, abs=EPS)
    assert tmfs(target) == [TMF_ABORT_TASK]
    await session.close()


@CONN_FAILED
@REPLACEMENT_EXPIRED
async def test_replacement_timeout_fails_waiting_io_at_the_deadline_while_a_relogin_hangs(
        nursery, autojump_clock):
    target = FakeTarget(hang_login_after=1,
                        on_command=lambda conn, cmd: [] if conn.number == 1
                        else good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery, replacement_timeout=4, login=15,
                                 command=0)
    outcome = {}

    async def reader():
        try:
            await read(session)
        except SessionFailed:
            outcome["failed_at"] = trio.current_time()

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert len(target.commands_seen()) == 1
        dropped_at = trio.current_time()
        await target.live[1].close()
    # at the replacement timeout: not before it, and not after login_timeout (15 s)
    assert outcome["failed_at"] - dropped_at == pytest.approx(4, abs=EPS)
    assert target.connections >= 2                          # a relogin was being attempted
    with pytest.raises(SessionFailed):                      # new I/O fails at once meanwhile
        await read(session)
    # the attempts go on; the first one that works brings I/O back
    target.hang_login_after = None
    with trio.fail_after(30):
        while not session.logged_in:
            await trio.sleep(0.5)
    assert await read(session) == PAYLOAD
    await session.close()


@READ_TIMED_OUT
@ABORT_REFUSED
@ENDED_BY_LU_RESET
async def test_timed_out_command_escalates_from_abort_task_to_lu_reset(nursery, autojump_clock):
    seen: dict = {}

    def on_tmf(conn, req):
        # ABORT TASK is refused ("function rejected"), a LOGICAL UNIT RESET works
        return tmf_answer(conn, req, 5 if req.function == TMF_ABORT_TASK else 0)

    target = FakeTarget(on_command=answer_from_second_sight(seen), on_tmf=on_tmf)
    session = await open_session(target, nursery, command=5, abort=2, lu_reset=3)
    results = {}

    async def run(name, lba, delay):
        await trio.sleep(delay)
        try:
            results[name] = await read(session, lba)
        except CommandTimeout as exc:
            results[name] = exc

    start = trio.current_time()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(run, "timed out", 0, 0)
            n.start_soon(run, "bystander", 8, 1)
    assert tmfs(target) == [TMF_ABORT_TASK, TMF_LOGICAL_UNIT_RESET]
    # ABORT TASK at the command timeout (not before), the reset as soon as it was refused
    sent = [t - start for (_, p), t in zip(target.received, target.received_at)
            if isinstance(p, TaskManagementRequest)]
    assert sent == pytest.approx([5, 5], abs=EPS)
    assert isinstance(results["timed out"], CommandTimeout)
    # the reset also ended the other command on that LUN: its caller still waited, so it
    # went again and completed
    assert results["bystander"] == PAYLOAD
    assert seen == {read10(0).ljust(16, b"\0"): 1, read10(8).ljust(16, b"\0"): 2}
    assert target.connections == 1
    # the tasks the reset ended hold no ITT any more, however long the session lives
    assert session._link.conn.itts_in_use == 0
    await session.close()


@READ_TIMED_OUT
@TMF_UNANSWERED
@RECOVERY_FAILED
@CONN_FAILED
async def test_error_recovery_ends_by_dropping_the_connection_and_never_resends(
        nursery, autojump_clock):
    seen: dict = {}
    target = FakeTarget(on_command=answer_from_second_sight(seen))     # ignores every TMF
    session = await open_session(target, nursery, command=5, abort=1, lu_reset=1, tgt_reset=1)
    start = trio.current_time()
    with trio.fail_after(30):
        with pytest.raises(CommandTimeout):
            await read(session)
    # 5 s command timeout, then 1 s for each of the three TMFs, then the connection goes:
    # each step waits its whole timeout, no less
    assert trio.current_time() - start == pytest.approx(5 + 3, abs=EPS)
    assert tmfs(target) == [TMF_ABORT_TASK, TMF_LOGICAL_UNIT_RESET, TMF_TARGET_WARM_RESET]
    sent = [t - start for (_, p), t in zip(target.received, target.received_at)
            if isinstance(p, TaskManagementRequest)]
    assert sent == pytest.approx([5, 6, 7], abs=EPS)
    with trio.fail_after(30):
        while not session.logged_in or target.connections < 2:
            await trio.sleep(0.5)
    seen[read10(16).ljust(16, b"\0")] = 1          # answered at first sight
    assert await read(session, 16) == PAYLOAD          # the new connection works ...
    assert [n for n, p in target.commands_seen() if p.cdb[:10] == read10(0)] == [1]
    await session.close()


@CONN_FAILED
async def test_command_whose_start_failed_is_not_sent_after_a_relogin(nursery, autojump_clock,
                                                                      monkeypatch):
    # the start fails once only (on connection 1): had the session kept the command, the
    # relogin would send it, and the target would see it
    from iscsifs.core.connection import Connection
    real_start = Connection.start_command
    failed = []

    def start_command(self, lun, cdb, **kw):
        if cdb[0] == 0x2A and not failed:
            failed.append(cdb)
            raise LocalProtocolError("refused before it is sent")
        return real_start(self, lun, cdb, **kw)

    monkeypatch.setattr(Connection, "start_command", start_command)
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery)
    with pytest.raises(LocalProtocolError):
        await session.execute(1, write10(7), write_data=b"w" * 512)
    assert failed
    await target.live[1].close()
    with trio.fail_after(30):
        while not session.logged_in or target.connections < 2:
            await trio.sleep(0.5)
        assert await read(session) == PAYLOAD
    assert target.commands_seen(0x2A) == []
    await session.close()


@CONN_FAILED
async def test_cancelled_command_is_not_sent_after_a_relogin(nursery, autojump_clock):
    seen: dict = {}
    target = FakeTarget(on_command=answer_from_second_sight(seen))
    session = await open_session(target, nursery, command=0)
    with trio.move_on_after(3):
        await read(session, 0)
    await target.live[1].close()
    with trio.fail_after(30):
        while not session.logged_in or target.connections < 2:
            await trio.sleep(0.5)
    seen[read10(8).ljust(16, b"\0")] = 1          # answer this one the first time
    assert await read(session, 8) == PAYLOAD
    assert [n for n, p in target.commands_seen() if p.cdb[:10] == read10(0)] == [1]
    await session.close()


@CONN_FAILED
async def test_unanswered_command_is_reissued_after_the_connection_drops(nursery, autojump_clock):
    seen: dict = {}
    target = FakeTarget(on_command=answer_from_second_sight(seen))
    session = await open_session(target, nursery, command=0)
    got = {}

    async def reader():
        got["data"] = await read(session, 0)

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await target.live[1].close()
    assert got["data"] == PAYLOAD
    assert [n for n, p in target.commands_seen() if p.cdb[:10] == read10(0)] == [1, 2]
    assert session.counters()["reconnects"] == 1 and "cmd_timeouts" not in session.counters()
    await session.close()


async def test_async_event_log_is_bounded(nursery, autojump_clock):
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery)
    conn = target.live[1]
    await trio.testing.wait_all_tasks_blocked()     # the target's own sends are over
    await conn.send(*[AsyncMessage(lun=0, async_event=0, async_vcode=0, parameter1=i,
                                   parameter2=0, parameter3=0, data=b"", **conn.sns())
                      for i in range(10 * ASYNC_EVENTS_KEPT)])
    await trio.testing.wait_all_tasks_blocked()
    assert len(session.async_events) == ASYNC_EVENTS_KEPT
    assert str(10 * ASYNC_EVENTS_KEPT - 1) in session.async_events[-1]
    assert await read(session) == PAYLOAD
    await session.close()


async def test_idle_connection_still_answers_target_pings(nursery, autojump_clock):
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery)
    assert await read(session) == PAYLOAD
    await trio.sleep(1)                              # an idle connection is still read
    conn = target.live[1]
    await conn.send(NopIn(itt=0xFFFFFFFF, ttt=0x1234, lun=0, **conn.sns(False)))
    with trio.fail_after(1):
        while not any(isinstance(p, NopOut) and p.ttt == 0x1234 for _, p in target.received):
            await trio.sleep(0.01)
    await session.close()


@CONN_FAILED
async def test_commands_held_by_a_session_are_bounded_by_cmds_max(nursery, autojump_clock):
    # node.session.cmds_max: callers beyond it wait for a slot instead of piling up commands
    target = FakeTarget(on_command=lambda conn, cmd: [] if conn.number == 1    # silent first
                        else good_read(conn, cmd, PAYLOAD))
    session = await Session.connect(Portal("127.0.0.1", 3260), target.target_name,
                                    initiator_name=INITIATOR, nursery=nursery,
                                    timeouts=Timeouts(noop_out_interval=0, command=0),
                                    connector=target.socketpair_connector(nursery),
                                    cmds_max=4)
    done = []

    async def reader(lba):
        done.append(await read(session, lba))

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for i in range(10):
                n.start_soon(reader, 8 * i)
            await trio.testing.wait_all_tasks_blocked()
            assert len(target.commands_seen()) == 4       # the other 6 callers wait
            assert len(session._unfinished) == 4
            await target.live[1].close()                  # all answered on the next one
    assert len(done) == 10 and all(d == PAYLOAD for d in done)
    await session.close()


@CONN_FAILED
async def test_fail_fast_command_is_answered_at_once_and_never_sent_again(
        nursery, autojump_clock):
    seen: dict = {}
    target = FakeTarget(on_command=answer_from_second_sight(seen), hang_login_after=1)
    session = await open_session(target, nursery, command=0, login=5)
    states = []
    session.listeners.append(lambda s: states.append(s.session_state))
    outcome = {}

    async def fast():
        try:
            await session.execute(1, read10(0), read_length=len(PAYLOAD),
                                  read_buffer=bytearray(len(PAYLOAD)), fail_fast=True)
        except PathFailed as exc:
            outcome["fast"] = (trio.current_time(), exc)

    async def ordinary():
        outcome["ordinary"] = await read(session, 8)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(fast)
            n.start_soon(ordinary)
            await trio.testing.wait_all_tasks_blocked()
            dropped = trio.current_time()
            await target.live[1].close()
            await trio.testing.wait_all_tasks_blocked()
            # the fail-fast command was answered at once; the ordinary one waits for a relogin
            assert outcome["fast"][0] == dropped and "ordinary" not in outcome
            assert "failed" in str(outcome["fast"][1])
            assert states == [SessionState.RECOVERING]
            with pytest.raises(PathFailed):          # a new one while down: at once too
                await session.execute(1, read10(16), read_length=512,
                                      read_buffer=bytearray(512), fail_fast=True)
            assert trio.current_time() == dropped
            target.hang_login_after = None           # relogins work again
    assert outcome["ordinary"] == PAYLOAD
    assert states[-1] is SessionState.LOGGED_IN
    # only the ordinary command went again on the new connection
    assert [n for n, p in target.commands_seen() if p.cdb[:10] == read10(0)] == [1]
    assert [n for n, p in target.commands_seen() if p.cdb[:10] == read10(8)] == [1, 3]
    assert not [p for _, p in target.commands_seen() if p.cdb[:10] == read10(16)]
    # once logged in again, fail-fast commands run as usual
    seen[read10(24).ljust(16, b"\0")] = 1
    buf = bytearray(len(PAYLOAD))
    await session.execute(1, read10(24), read_length=len(buf), read_buffer=buf, fail_fast=True)
    assert bytes(buf) == PAYLOAD
    await session.close()
    assert states[-1] is SessionState.CLOSED


@CONN_FAILED
async def test_a_send_failing_right_after_a_relogin_starts_another_recovery(
        nursery, autojump_clock):
    # connection 1 never answers the read and is dropped; connection 2 logs in and breaks
    # when the waiting read is re-issued on it; connection 3 answers it
    target = FakeTarget(on_command=lambda conn, cmd: [] if conn.number == 1
                        else good_read(conn, cmd, PAYLOAD))
    with trio.fail_after(5):
        session = await Session.connect(
            Portal("127.0.0.1", 3260), target.target_name, initiator_name=INITIATOR,
            nursery=nursery, timeouts=Timeouts(noop_out_interval=0, command=0),
            connector=breaking_connector(target, nursery, {2}))
    got = {}

    async def reader():
        got["data"] = await read(session)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await target.live[1].close()
    assert got["data"] == PAYLOAD
    assert target.connections == 3 and session.logged_in
    assert session.counters()["reconnects"] == 2
    await session.close()


async def test_a_caller_waiting_for_a_cmds_max_slot_hears_of_close(nursery, autojump_clock):
    target = FakeTarget(on_command=lambda conn, cmd: [])          # never answers
    session = await open_session(target, nursery, cmds_max=1, command=0)
    outcome = {}

    async def reader(name, lba):
        try:
            await read(session, lba)
        except SessionFailed as exc:
            outcome[name] = (trio.current_time(), exc)

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(reader, "first", 0)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(reader, "second", 8)           # waits for the one slot
            await trio.testing.wait_all_tasks_blocked()
            closed_at = trio.current_time()
            await session.close()
    assert outcome["first"][0] == outcome["second"][0] == closed_at
    assert len(target.commands_seen()) == 1             # the second one never went out


@CONN_FAILED
@REPLACEMENT_EXPIRED
async def test_a_caller_waiting_for_a_cmds_max_slot_hears_of_the_replacement_timeout(
        nursery, autojump_clock):
    target = FakeTarget(on_command=lambda conn, cmd: [], hang_login_after=1)
    session = await open_session(target, nursery, cmds_max=1, command=0,
                                 replacement_timeout=4, login=15)
    outcome = {}

    async def reader(name, lba):
        try:
            await read(session, lba)
        except SessionFailed:
            outcome[name] = trio.current_time()

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(reader, "first", 0)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(reader, "second", 8)
            await trio.testing.wait_all_tasks_blocked()
            dropped_at = trio.current_time()
            await target.live[1].close()
    # both fail at the deadline, not before and not after
    assert outcome["first"] - dropped_at == pytest.approx(4, abs=EPS)
    assert outcome["second"] - dropped_at == pytest.approx(4, abs=EPS)
    assert len(target.commands_seen()) == 1
    await session.close()


@CONN_FAILED
@REPLACEMENT_EXPIRED
async def test_a_fail_fast_caller_waiting_for_a_cmds_max_slot_hears_of_the_failure_at_once(
        nursery, autojump_clock):
    # the one slot is held by an ordinary command, which waits for the relogin; a fail-fast
    # (multipath) caller waiting for that slot is answered when the path fails, not when the
    # slot comes free at the replacement timeout (simulator seed 154)
    target = FakeTarget(on_command=lambda conn, cmd: [], hang_login_after=1)
    session = await open_session(target, nursery, cmds_max=1, command=0,
                                 replacement_timeout=20, login=5)
    outcome = {}

    async def ordinary():
        try:
            await read(session, 0)
        except SessionFailed:
            outcome["ordinary"] = trio.current_time()

    async def fast():
        try:
            await session.execute(1, read10(8), read_length=512, read_buffer=bytearray(512),
                                  fail_fast=True)
        except PathFailed as exc:
            outcome["fast"] = (trio.current_time(), exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(ordinary)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(fast)                          # waits for the one slot
            await trio.testing.wait_all_tasks_blocked()
            assert "fast" not in outcome
            dropped = trio.current_time()
            await target.live[1].close()
            await trio.testing.wait_all_tasks_blocked()
            assert outcome["fast"][0] == dropped        # at once, not at the give-up
            assert "ordinary" not in outcome            # that one waits for the relogin
    assert outcome["ordinary"] - dropped == pytest.approx(20, abs=EPS)
    assert len(target.commands_seen()) == 1             # the fail-fast one never went out
    await session.close()


def write_held(held: list):
    """A script: WRITEs are held (their ScsiCommand kept in ``held``, no answer), anything
    else is read data."""
    def on_command(conn, cmd):
        if cmd.cdb[0] == 0x2A:
            held.append(cmd)
            return []
        return good_read(conn, cmd, PAYLOAD)
    return on_command


async def test_a_cancelled_callers_command_is_aborted_at_the_target(nursery, autojump_clock):
    held: list = []
    target = FakeTarget(on_command=write_held(held), on_tmf=tmf_answer)
    session = await open_session(target, nursery, command=0)
    start = trio.current_time()
    with trio.move_on_after(1):
        await session.execute(1, write10(7), write_data=bytes(512))
    await trio.testing.wait_all_tasks_blocked()
    (cmd,) = held
    aborts = [p for _, p in target.received if isinstance(p, TaskManagementRequest)]
    # ABORT TASK for it, naming its ITT and CmdSN, sent the moment the caller left
    assert [(p.function, p.referenced_task_tag, p.ref_cmd_sn) for p in aborts] == \
        [(TMF_ABORT_TASK, cmd.itt, cmd.cmd_sn)]
    assert trio.current_time() - start == pytest.approx(1, abs=EPS)
    # the target said it is gone: nothing of it is kept
    conn = session._link.conn
    assert conn.itts_in_use == 0 and conn.tombstones == 0
    assert await read(session) == PAYLOAD          # and the connection goes on
    assert target.connections == 1
    await session.close()


async def test_a_cancelled_writer_waits_for_its_unrecallable_write_to_end(nursery, autojump_clock):
    # a WRITE of a Lun cannot be taken back (docs/failure.md): once issued, its caller is not
    # let go when cancelled, but waits for the answer, and only then is cancelled. No ABORT
    # TASK is sent for it: it was never given up
    held: list = []
    target = FakeTarget(on_command=write_held(held), on_tmf=tmf_answer)
    session = await open_session(target, nursery, command=0)
    outcome: dict = {}

    async def writer():
        with trio.move_on_after(1):
            outcome["result"] = await session.execute(1, write10(7), write_data=bytes(512),
                                                      unrecallable=True)
        outcome["left"] = trio.current_time()

    start = trio.current_time()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(writer)
            await trio.sleep(5)
            assert "left" not in outcome            # cancelled at 1 s, still waiting
            (cmd,) = held
            await target.live[1].send(*good_status(target.live[1], cmd))
    assert outcome["left"] - start == pytest.approx(5, abs=EPS)
    assert outcome["result"].status == 0
    assert tmfs(target) == []
    await session.close()


async def test_a_writer_waiting_out_its_write_hears_when_the_sessions_nursery_goes(
        nursery, autojump_clock):
    # the nursery the session was given is cancelled without close() (its owner goes away):
    # no task of the session is left to answer a caller waiting out an unrecallable WRITE, so
    # the session closes at once and answers it (it would otherwise wait for ever)
    held: list = []
    target = FakeTarget(on_command=write_held(held), on_tmf=tmf_answer)
    outcome: dict = {}
    owner = trio.CancelScope()

    async def run_session(task_status=trio.TASK_STATUS_IGNORED):
        with owner:
            async with trio.open_nursery() as own:
                task_status.started(await open_session(target, own, command=0))
                await trio.sleep_forever()

    async def writer(session):
        with trio.move_on_after(1):
            try:
                await session.execute(1, write10(7), write_data=bytes(512), unrecallable=True)
            except SessionFailed as exc:
                outcome["error"] = exc
        outcome["left"] = trio.current_time()

    start = trio.current_time()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            session = await n.start(run_session)
            n.start_soon(writer, session)
            await trio.sleep(3)
            assert "left" not in outcome and len(held) == 1
            owner.cancel()
    assert outcome["left"] - start == pytest.approx(3, abs=EPS)
    assert "was stopped" in str(outcome["error"])
    assert session.session_state is SessionState.CLOSED


@CONN_FAILED
async def test_a_writer_waiting_for_a_relogin_hears_when_the_sessions_nursery_goes(
        nursery, autojump_clock):
    # the same while the session is relogging in: its WRITE was issued on a connection that
    # failed, so its caller waits for the relogin to re-issue it; the relogins fail, and the
    # nursery goes away during them (the recovery task answers the caller on its way out)
    held: list = []
    target = FakeTarget(on_command=write_held(held), on_tmf=tmf_answer)
    outcome: dict = {}
    owner = trio.CancelScope()

    async def run_session(task_status=trio.TASK_STATUS_IGNORED):
        with owner:
            async with trio.open_nursery() as own:
                base = target.socketpair_connector(own)
                made = [0]

                async def connect(portal):
                    made[0] += 1
                    if made[0] > 1:
                        raise OSError(errno.ECONNREFUSED, "refused")
                    return await base(portal)
                with trio.fail_after(5):
                    session = await Session.connect(
                        Portal("127.0.0.1", 3260), target.target_name,
                        initiator_name=INITIATOR, nursery=own, connector=connect,
                        timeouts=Timeouts(command=0, noop_out_interval=0))
                task_status.started(session)
                await trio.sleep_forever()

    async def writer(session):
        with trio.move_on_after(1):
            try:
                await session.execute(1, write10(7), write_data=bytes(512), unrecallable=True)
            except SessionFailed as exc:
                outcome["error"] = exc
        outcome["left"] = trio.current_time()

    start = trio.current_time()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            session = await n.start(run_session)
            n.start_soon(writer, session)
            await trio.testing.wait_all_tasks_blocked()
            await target.live[1].close()                # the connection fails under it
            await trio.sleep(3)
            assert session.session_state is SessionState.RECOVERING
            assert "left" not in outcome and len(held) == 1
            owner.cancel()
    assert outcome["left"] - start == pytest.approx(3, abs=EPS)
    assert "was stopped" in str(outcome["error"])
    assert session.session_state is SessionState.CLOSED


async def test_a_cancelled_caller_leaves_only_once_its_command_is_out(nursery, autojump_clock):
    # the target stops reading, so commands wait in the send backlog; a caller cancelled
    # meanwhile must not be answered while its SCSI Command can still be put on the wire
    # after it (simulator seed 8): its command has a CmdSN and goes out (the target would
    # otherwise hold every later command behind the gap), then its ABORT TASK; the caller
    # leaves when that is done
    import socket as socketmod
    held: list = []
    target = FakeTarget(on_command=write_held(held), on_tmf=tmf_answer)
    session = await open_session(target, nursery, command=0)
    transport = session._link.transport
    transport.sock.setsockopt(socketmod.SOL_SOCKET, socketmod.SO_SNDBUF, 4096)
    target.live[1].stream.socket.setsockopt(socketmod.SOL_SOCKET, socketmod.SO_RCVBUF, 4096)
    await trio.testing.wait_all_tasks_blocked()
    target.pause_reading(1)
    outcome = {}

    async def write(lba, cancel_after=math.inf):
        with trio.move_on_after(cancel_after):
            await session.execute(1, write10(lba), write_data=bytes(8192))
        outcome[lba] = trio.current_time()

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            lba = 0
            while not transport.backlog:               # fill the socket
                n.start_soon(write, lba)
                lba += 1
                await trio.testing.wait_all_tasks_blocked()
            n.start_soon(write, 1000, 1)               # its command waits in the backlog
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await trio.sleep(5)
            assert 1000 not in outcome                  # cancelled at 1 s, but not gone
            target.resume_reading(1)
            while 1000 not in outcome:
                await trio.sleep(0.1)
            n.cancel_scope.cancel()
    assert outcome[1000] - start >= 5
    (cmd,) = [p for _, p in target.commands_seen() if p.cdb[:10] == write10(1000)]
    aborts = [p for _, p in target.received if isinstance(p, TaskManagementRequest)]
    assert (aborts[0].referenced_task_tag, aborts[0].ref_cmd_sn) == (cmd.itt, cmd.cmd_sn)
    await session.close()


async def test_a_failed_chunk_leaves_its_siblings_to_end_at_the_target(nursery, autojump_clock):
    # Lun._transfer once cancelled the other chunks of a write when one failed: the caller
    # had its error while a sibling was still live at the target (defect 3's trigger). Now
    # the siblings run to their end first (a write cannot be taken back: Session.execute's
    # ``unrecallable``), and the caller hears of the failure only then
    from iscsifs.device import Lun
    from iscsifs.scsi.sense import ScsiError
    held: list = []

    def on_command(conn, cmd):
        lba = int.from_bytes(cmd.cdb[2:6], "big")
        if cmd.cdb[0] == 0x2A and lba == 0:         # MEDIUM ERROR for the first chunk
            sense = bytes([0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x0C, 0x00, 0, 0, 0, 0])
            return [ScsiResponse(itt=cmd.itt, response=0, status=2, exp_data_sn=0,
                                 bidi_read_residual_count=0, residual_count=0, overflow=False,
                                 underflow=False, bidi_overflow=False, bidi_underflow=False,
                                 data=len(sense).to_bytes(2, "big") + sense, **conn.sns())]
        held.append(cmd)
        return []

    target = FakeTarget(on_command=on_command, on_tmf=tmf_answer)
    session = await open_session(target, nursery, command=0)
    lun = Lun(session, 1, max_command_bytes=64 * 1024)
    lun.block_size, lun.num_blocks = 512, 4096
    outcome: dict = {}

    async def writer():
        try:
            await lun.write(0, bytes(128 * 1024))
        except Exception as exc:
            outcome["error"] = (exc, trio.current_time())

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            (sibling,) = held
            assert not outcome                      # the failed chunk waits for its sibling
            await trio.sleep(2)
            landed = trio.current_time()
            await target.live[1].send(*good_status(target.live[1], sibling))
    exc, when = outcome["error"]
    assert [type(e) for e in leaf_exceptions(exc)] == [ScsiError]
    assert when == landed
    assert not [p for _, p in target.received if isinstance(p, TaskManagementRequest)]
    assert session._link.conn.itts_in_use == 0
    await session.close()


def tmf_times(target: FakeTarget, start: float) -> dict:
    """{function: [seconds after ``start`` each such TMF arrived]}."""
    out: dict = {}
    for (_, p), t in zip(target.received, target.received_at):
        if isinstance(p, TaskManagementRequest):
            out.setdefault(p.function, []).append(pytest.approx(t - start, abs=EPS))
    return out


@pytest.mark.expect_log('ABORT TASK for command 0x2a .* got no answer',
                        logger='iscsifs.net.error_handler')
@pytest.mark.expect_log('ended by LOGICAL UNIT RESET', logger='iscsifs.net.error_handler')
async def test_an_unanswered_abort_of_a_cancelled_command_is_escalated(nursery, autojump_clock):
    # the target ignores the ABORT TASK sent for a cancelled caller's write (simulator seed
    # 2): it would wait for that write's data for ever; a LOGICAL UNIT RESET ends it
    held: list = []
    target = FakeTarget(on_command=write_held(held),
                        on_tmf=lambda conn, req: [] if req.function == TMF_ABORT_TASK
                        else tmf_answer(conn, req))
    session = await open_session(target, nursery, command=0, abort=2, lu_reset=3, tgt_reset=4)
    with trio.move_on_after(1):
        await session.execute(1, write10(7), write_data=bytes(512))
    cancelled = trio.current_time()
    (write,) = held
    with trio.fail_after(30):
        while TMF_LOGICAL_UNIT_RESET not in tmfs(target):
            await trio.sleep(0.1)
        await trio.testing.wait_all_tasks_blocked()
    assert not session._link.conn.holds(write.itt)
    # ABORT TASK at once, the reset when abort_timeout has passed, not before
    assert tmf_times(target, cancelled) == {TMF_ABORT_TASK: [0], TMF_LOGICAL_UNIT_RESET: [2]}
    # the write's ITT is free, and the unanswered ABORT TASK holds none either (a late
    # answer to it would be dropped: core/connection.py remembers the latest few)
    assert (session._link.conn.tombstones, session._link.conn.itts_in_use) == (0, 0)
    assert await read(session) == PAYLOAD          # the connection goes on
    assert target.connections == 1
    await session.close()


@TMF_UNANSWERED
@RECOVERY_FAILED
@CONN_FAILED
async def test_a_cancelled_command_the_target_will_not_abort_ends_with_its_connection(
        nursery, autojump_clock):
    held: list = []
    target = FakeTarget(on_command=write_held(held))        # ignores every TMF
    session = await open_session(target, nursery, command=0, abort=2, lu_reset=3, tgt_reset=4)
    with trio.move_on_after(1):
        await session.execute(1, write10(7), write_data=bytes(512))
    cancelled = trio.current_time()
    with trio.fail_after(60):
        while target.connections < 2 or not session.logged_in:
            await trio.sleep(0.1)
    # each step its whole timeout: ABORT TASK, LU RESET, TARGET WARM RESET, then the drop
    assert tmf_times(target, cancelled) == {TMF_ABORT_TASK: [0], TMF_LOGICAL_UNIT_RESET: [2],
                                            TMF_TARGET_WARM_RESET: [5]}
    assert session.counters()["reconnects"] == 1
    assert len(target.commands_seen(0x2A)) == 1     # and the write was never sent again
    assert await read(session) == PAYLOAD
    await session.close()


def status_only(conn, cmd, status: int):
    return [ScsiResponse(itt=cmd.itt, response=0, status=status, exp_data_sn=0,
                         bidi_read_residual_count=0, residual_count=0, overflow=False,
                         underflow=False, bidi_overflow=False, bidi_underflow=False,
                         **conn.sns())]


async def test_busy_is_retried_with_backoff(nursery, autojump_clock):
    answers = iter([0x08, 0x08, 0x08])              # BUSY three times, then the data

    def on_command(conn, cmd):
        status = next(answers, None)
        return good_read(conn, cmd, PAYLOAD) if status is None else status_only(conn, cmd,
                                                                                 status)

    target = FakeTarget(on_command=on_command)
    session = await open_session(target, nursery, command=30)
    start = trio.current_time()
    with trio.fail_after(30):
        assert await read(session) == PAYLOAD
    sent = [t - start for t in target_times(target)]
    # as Linux's SCSI layer does: again after a pause that doubles, each a new command
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert gaps == pytest.approx([BUSY_DELAY, 2 * BUSY_DELAY, 4 * BUSY_DELAY], abs=EPS)
    assert session.counters()["busy_retries"] == 3
    await session.close()


async def test_busy_for_ever_fails_at_the_command_timeout(nursery, autojump_clock):
    from iscsifs.scsi.sense import ScsiError, ScsiStatus
    target = FakeTarget(on_command=lambda conn, cmd: status_only(conn, cmd, 0x08))
    session = await open_session(target, nursery, command=5)
    start = trio.current_time()
    with trio.fail_after(30), pytest.raises(ScsiError) as info:
        await read(session)
    took = trio.current_time() - start
    assert info.value.status == ScsiStatus.BUSY
    # retried up to the command timeout: the last try was less than one pause before it
    assert 5 - BUSY_DELAY_MAX - EPS <= took <= 5 + EPS
    assert len(target.commands_seen()) > 5
    await session.close()


async def test_task_set_full_is_retried_and_shrinks_the_queue_depth(nursery, autojump_clock):
    held: list = []
    seen = {"max": 0, "full": 0}

    def on_command(conn, cmd):
        if len(held) < 2 and not seen.get("released"):
            held.append((conn, cmd))                    # two the target sits on
            seen["max"] = max(seen["max"], len(held))
            return []
        if len(held) >= 2:
            seen["full"] += 1
            return status_only(conn, cmd, 0x28)         # TASK SET FULL
        return good_read(conn, cmd, PAYLOAD)

    target = FakeTarget(on_command=on_command)
    session = await open_session(target, nursery, command=30)
    results = []

    async def reader(lba):
        results.append(await read(session, lba))

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for i in range(8):
                n.start_soon(reader, 8 * i)
            await trio.testing.wait_all_tasks_blocked()
            assert seen["full"] == 6
            assert session._link.conn.queue_depth == 2     # what the target holds
            await trio.sleep(1)                            # the retries wait for a slot
            assert seen["full"] == 6
            seen["released"] = True
            release = list(held)
            held.clear()
            for conn, cmd in release:
                await conn.send(*good_read(conn, cmd, PAYLOAD))
    assert results == [PAYLOAD] * 8
    assert session.counters()["queue_full"] == 6
    await session.close()


def target_times(target):
    return target.command_times



@pytest.mark.expect_log('target rejected a PDU', logger='iscsifs.core.connection')
@pytest.mark.expect_log('rejected a PDU \\(reason 0x09\\)', logger='iscsifs.net.session')
@pytest.mark.expect_log('ABORT TASK filling the CmdSN gap .* got no answer; dropping',
                        logger='iscsifs.net.error_handler')
@CONN_FAILED
async def test_a_cmdsn_gap_the_target_does_not_fill_ends_with_its_connection(
        nursery, autojump_clock):
    # as above, but the target ignores the ABORT TASK that names the rejected CmdSN
    # (simulator seed 59): every later command would wait behind the gap for ever
    held: list = []
    expected = {}

    def on_command(conn, cmd):
        if conn.number > 1:
            return good_read(conn, cmd, PAYLOAD)
        expected.setdefault("sn", cmd.cmd_sn)
        if cmd.cdb[2:6] == bytes(4):
            conn.exp_cmd_sn = cmd.cmd_sn                    # not received: a gap
            return [Reject(reason=0x09, data_sn=0, data=bytes(encode(cmd)[0])[:48],
                           **conn.sns())]
        if cmd.cmd_sn != expected["sn"]:
            conn.exp_cmd_sn = expected["sn"]
            held.append(cmd)
            return []
        expected["sn"] += 1
        return good_read(conn, cmd, PAYLOAD)

    target = FakeTarget(on_command=on_command)              # ignores every TMF
    session = await open_session(target, nursery, command=0, abort=2)
    outcome = {}

    async def rejected():
        with pytest.raises(RemoteProtocolError, match="rejected"):
            await read(session, 0)
        outcome["rejected"] = trio.current_time()

    async def later():
        outcome["later"] = await read(session, 8)
        outcome["later at"] = trio.current_time()

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(rejected)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            n.start_soon(later)
    assert len(held) == 1                               # the target held it behind the gap
    assert outcome["later"] == PAYLOAD                  # it went again after the relogin
    # the connection went when abort_timeout had passed without an answer, not before
    assert outcome["later at"] - start == pytest.approx(2, abs=0.01)
    assert target.connections == 2
    await session.close()


@pytest.mark.expect_log('target rejected a PDU', logger='iscsifs.core.connection')
@pytest.mark.expect_log('rejected a PDU \\(reason 0x02\\)', logger='iscsifs.net.session')
async def test_a_rejected_data_out_waits_for_the_tasks_response(nursery, autojump_clock):
    # DataDigest: one Data-Out arrives damaged; the target rejects it and ends the task with
    # CHECK CONDITION (RFC 7143 §7.6). The write fails; the connection does not.
    from iscsifs.scsi.sense import ScsiError, SenseKey
    sense = bytes([0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x47, 0x05, 0, 0, 0, 0])

    def on_command(conn, cmd):
        if cmd.cdb[0] == 0x2A:
            assert not cmd.final        # InitialR2T=No: the rest comes as unsolicited Data-Out
            return []
        return good_read(conn, cmd, PAYLOAD)

    def on_data_out(conn, pdu):
        if not pdu.final:
            return []
        bhs = bytes(encode(pdu)[0])[:48]
        return [Reject(reason=0x02, data_sn=0, data=bhs, **conn.sns()),
                ScsiResponse(itt=pdu.itt, response=0, status=2, exp_data_sn=0,
                             bidi_read_residual_count=0, residual_count=0, overflow=False,
                             underflow=False, bidi_overflow=False, bidi_underflow=False,
                             data=len(sense).to_bytes(2, "big") + sense, **conn.sns())]

    target = FakeTarget(on_command=on_command, on_data_out=on_data_out)
    session = await open_session(target, nursery, command=30)
    with trio.fail_after(10), pytest.raises(ScsiError) as info:
        await session.execute(1, write10(0), write_data=bytes(16384))
    assert info.value.sense.key == SenseKey.ABORTED_COMMAND
    assert await read(session) == PAYLOAD
    assert target.connections == 1                 # the connection was never dropped
    await session.close()



@pytest.mark.expect_log('target rejected a PDU', logger='iscsifs.core.connection')
@pytest.mark.expect_log('rejected a PDU \\(reason 0x09\\)', logger='iscsifs.net.session')
async def test_a_rejected_command_does_not_stall_the_commands_after_it(nursery, autojump_clock):
    # a target that, as RFC 7143 §4.2.2.1 says, runs commands in CmdSN order only: after it
    # rejected one (discarding it), it holds every later command until that CmdSN is filled
    held: list = []
    expected = {}                                       # the CmdSN the target runs next

    def on_command(conn, cmd):
        expected.setdefault("sn", cmd.cmd_sn)
        if cmd.cdb[2:6] == bytes(4):                    # LBA 0: rejected, CmdSN not counted
            bhs = bytes(encode(cmd)[0])[:48]
            return [Reject(reason=0x09, data_sn=0, data=bhs, **conn.sns())]
        if cmd.cmd_sn != expected["sn"]:                # a gap before it: held
            held.append(cmd)
            return []
        expected["sn"] += 1
        return good_read(conn, cmd, PAYLOAD)

    def on_tmf(conn, req):
        answer = tmf_answer(conn, req, 1)               # task does not exist
        if req.function == TMF_ABORT_TASK and req.ref_cmd_sn == expected["sn"]:
            expected["sn"] += 1                          # §11.5.1: counted as received
            while held and held[0].cmd_sn == expected["sn"]:
                cmd = held.pop(0)
                expected["sn"] += 1
                answer += good_read(conn, cmd, PAYLOAD)
        return answer

    target = FakeTarget(on_command=on_command, on_tmf=on_tmf)
    session = await open_session(target, nursery, command=0)
    outcome = {}

    async def rejected():
        with pytest.raises(RemoteProtocolError, match="rejected"):
            await read(session, 0)
        outcome["rejected"] = True

    async def later():
        outcome["later"] = await read(session, 8)

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(rejected)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(later)
    assert outcome == {"rejected": True, "later": PAYLOAD}
    assert target.connections == 1 and held == []
    await session.close()


@pytest.mark.expect_log('target rejected a PDU', logger='iscsifs.core.connection')
@pytest.mark.expect_log('rejected a PDU \\(reason 0x02\\)', logger='iscsifs.net.session')
async def test_a_command_rejected_for_a_digest_error_is_sent_again(nursery, autojump_clock):
    rejected = []

    def on_command(conn, cmd):
        if not rejected:                               # its immediate data arrived damaged
            rejected.append(cmd)
            return [Reject(reason=0x02, data_sn=0, data=bytes(encode(cmd)[0])[:48],
                           **conn.sns())]
        return good_read(conn, cmd, PAYLOAD)

    target = FakeTarget(on_command=on_command, on_tmf=lambda conn, req: tmf_answer(conn, req, 1))
    session = await open_session(target, nursery, command=0)
    with trio.fail_after(10):
        assert await read(session) == PAYLOAD
    (first, again) = [p for _, p in target.commands_seen()]
    assert first.cdb == again.cdb and again.cmd_sn == first.cmd_sn + 1
    assert [(p.referenced_task_tag, p.ref_cmd_sn) for _, p in target.received
            if isinstance(p, TaskManagementRequest)] == [(first.itt, first.cmd_sn)]
    await session.close()



async def test_a_nop_flood_cannot_grow_the_send_backlog_without_bound(nursery, autojump_clock,
                                                                      monkeypatch):
    # the target pings (NOP-In that wants an answer) and never reads: the answers must not
    # pile up without limit; the session stops reading until the socket drains
    import socket as socketmod
    from iscsifs.net import session as session_module
    monkeypatch.setattr(session_module, "MAX_BACKLOG_BUFFERS", 64, raising=False)
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery)
    transport = session._link.transport
    transport.sock.setsockopt(socketmod.SOL_SOCKET, socketmod.SO_SNDBUF, 4096)
    conn = target.live[1]
    # one receive takes at most what the target's socket holds: about 4 KiB, 85 pings
    conn.stream.socket.setsockopt(socketmod.SOL_SOCKET, socketmod.SO_SNDBUF, 4096)
    await trio.testing.wait_all_tasks_blocked()
    target.pause_reading(1)
    peak = 0

    async def flood():
        for i in range(300):
            await conn.send(*[NopIn(itt=0xFFFFFFFF, ttt=10 * i + j, lun=0, **conn.sns(False))
                              for j in range(10)])

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(flood)
            for _ in range(50):
                await trio.testing.wait_all_tasks_blocked()
                peak = max(peak, transport.backlog)
                await trio.sleep(0.1)
            # the limit, plus the answers one receive asks for (unbounded, it reached 2900)
            assert peak <= 64 + 200
            target.resume_reading(1)                 # it reads again: every ping answered
    await trio.testing.wait_all_tasks_blocked()
    answered = {p.ttt for _, p in target.received if isinstance(p, NopOut)}
    assert answered >= set(range(3000))
    assert await read(session) == PAYLOAD
    await session.close()


@CONN_FAILED
async def test_many_logout_requests_from_the_target_make_one_logout(nursery, autojump_clock):
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery)
    conn = target.live[1]
    await trio.testing.wait_all_tasks_blocked()
    await conn.send(*[AsyncMessage(lun=0, async_event=1, async_vcode=0, parameter1=0,
                                   parameter2=0, parameter3=10, data=b"", **conn.sns())
                      for _ in range(50)])
    with trio.fail_after(30):
        while not session.logged_in or target.connections < 2:
            await trio.sleep(0.1)
    assert [(n, p.reason) for n, p in target.received if isinstance(p, LogoutRequest)] == \
        [(1, 2)]                                    # "remove the connection for recovery"
    assert session.counters()["logout_pdus"] == 1  # and no other one was sent
    assert await read(session) == PAYLOAD
    await session.close()


async def renegotiation_asked(target: FakeTarget, times: int = 1) -> None:
    conn = target.live[1]
    await trio.testing.wait_all_tasks_blocked()
    await conn.send(*[AsyncMessage(lun=0, async_event=4, async_vcode=0, parameter1=0,
                                   parameter2=0, parameter3=0, data=b"", **conn.sns())
                      for _ in range(times)])
    await trio.testing.wait_all_tasks_blocked()


async def test_a_renegotiation_request_is_answered_with_a_text_request(nursery, autojump_clock):
    # RFC 7143 §11.9.1, AsyncEvent 4: the initiator MUST send a Text Request (it may be empty)
    # on the same connection as early as possible, or log out
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery)
    asked = trio.current_time()
    await renegotiation_asked(target, times=3)
    texts = [(n, p) for n, p in target.received if isinstance(p, TextRequest)]
    assert [(n, p.data, p.final) for n, p in texts] == [(1, b"", True)]   # one at a time
    assert trio.current_time() == asked                                  # at once
    # the target wanted nothing changed: the connection goes on
    assert await read(session) == PAYLOAD
    assert target.connections == 1 and session.logged_in
    await session.close()


@CONN_FAILED
async def test_a_renegotiation_that_changes_keys_logs_out_and_in_again(nursery, autojump_clock):
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery)
    target.sendtargets = [("MaxBurstLength", "65536")]    # the Text Response proposes keys
    await renegotiation_asked(target)
    with trio.fail_after(30):
        while not session.logged_in or target.connections < 2:
            await trio.sleep(0.1)
    # it logged out (reason 2: for recovery) and a new login negotiated everything again
    assert [(n, p.reason) for n, p in target.received if isinstance(p, LogoutRequest)] == \
        [(1, 2)]
    assert await read(session) == PAYLOAD
    await session.close()



@CONN_FAILED
async def test_an_unanswered_ping_fails_the_connection_at_interval_plus_timeout(
        nursery, autojump_clock):
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD),
                        answer_nops=False)
    session = await open_session(target, nursery, noop_out_interval=5, noop_out_timeout=3)
    states = []
    session.listeners.append(lambda s: states.append((trio.current_time(), s.session_state)))
    assert await read(session) == PAYLOAD
    quiet_from = trio.current_time()                 # the last PDU from the target
    with trio.fail_after(60):
        while not states:
            await trio.sleep(0.1)
    pings = [t - quiet_from for (_, p), t in zip(target.received, target.received_at)
             if isinstance(p, NopOut)]
    # a ping after noop_out_interval of silence, the failure noop_out_timeout after it
    assert pings[:1] == pytest.approx([5], abs=EPS)
    assert states[0][0] - quiet_from == pytest.approx(5 + 3, abs=EPS)
    assert states[0][1] is SessionState.RECOVERING
    await session.close()


@CONN_FAILED
async def test_relogin_attempts_back_off_from_half_a_second_to_five(nursery, autojump_clock):
    target = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await open_session(target, nursery)
    refusing = {"on": True}

    def refuse(conn, req, pairs):          # "target error: service unavailable" (0x0301)
        if not refusing["on"]:
            return None
        return [], (3, 1), req.nsg, False

    target.login_hook = refuse
    dropped = trio.current_time()
    await target.live[1].close()
    with trio.fail_after(60):
        while target.connections < 8:
            await trio.sleep(0.1)
    refusing["on"] = False
    with trio.fail_after(60):
        while not session.logged_in:
            await trio.sleep(0.1)
    starts = [t - dropped for (_, p), t in zip(target.received, target.received_at)
              if type(p).__name__ == "LoginRequest" and p.csg == 0][1:]
    # at once, then after 0.5, 1, 2, 4 s and then every 5 s (RETRY_CAP)
    assert starts[:8] == pytest.approx([0, 0.5, 1.5, 3.5, 7.5, 12.5, 17.5, 22.5], abs=EPS)
    await session.close()


async def test_noop_out_timeout_0_never_fails_the_connection(nursery, autojump_clock):
    """noop_out_timeout=0 (docs/mount-options.md): a ping still goes out after
    noop_out_interval of silence, but one that gets no answer is waited for without limit,
    so pings never fail the connection (noop_out_interval=0 sends none at all)."""
    def pings(target: FakeTarget) -> list[NopOut]:
        return [p for _, p in target.received if isinstance(p, NopOut) and p.itt != 0xFFFFFFFF]

    target = FakeTarget(answer_nops=False, on_command=lambda conn, cmd: good_read(
        conn, cmd, PAYLOAD))
    session = await open_session(target, nursery, noop_out_interval=5, noop_out_timeout=0)
    states = []
    session.listeners.append(lambda s: states.append(s.session_state))
    await trio.sleep(3600)
    assert session.session_state is SessionState.LOGGED_IN and states == []
    assert len(pings(target)) == 1 and target.connections == 1
    assert await read(session) == PAYLOAD
    await session.close()
    quiet = FakeTarget(answer_nops=False)
    session = await open_session(quiet, nursery, noop_out_interval=0, noop_out_timeout=5)
    await trio.sleep(3600)
    assert session.session_state is SessionState.LOGGED_IN and pings(quiet) == []
    await session.close()
