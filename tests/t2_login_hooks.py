"""Login hooks: what a session runs after every login, before it takes I/O.

A hook (``Session(login_hooks=...)``) sends its own commands with ``execute(..., setup=True)``:
re-reading a LUN's identity after a relogin, registering a reservation key on a new I_T nexus.
Until the hooks are done, other commands wait (or, fail-fast, are refused), and a command
re-issued after a relogin goes out only after them. MockClock, scripted target over a
socketpair.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from fake_target import FakeTarget, good_read
from helpers import CONN_FAILED, _session_log
from iscsifs.core.names import Portal
from iscsifs.errors import ConnectionLost, NoSuchDevice, PathFailed
from iscsifs.net.session import Session, Timeouts

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
PAYLOAD = bytes(range(256)) * 16          # 4 KiB
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
HOOK_FAILED = _session_log("relogin to .* failed: ")


def read10(lba: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 8, 0])


def answer_all(seen: list):
    def on_command(conn, cmd):
        seen.append((conn.number, bytes(cmd.cdb[:1])))
        return good_read(conn, cmd, PAYLOAD[:cmd.expected_data_transfer_length])
    return on_command


async def connect(target: FakeTarget, nursery, hooks, **timeouts) -> Session:
    timeouts.setdefault("noop_out_interval", 0)
    with trio.fail_after(5):
        return await Session.connect(Portal("127.0.0.1", 3260), target.target_name,
                                     initiator_name=INITIATOR, nursery=nursery,
                                     timeouts=Timeouts(**timeouts), login_hooks=hooks,
                                     connector=target.socketpair_connector(nursery))


async def read(session: Session, lun: int = 1) -> bytes:
    buf = bytearray(len(PAYLOAD))
    await session.execute(lun, read10(0), read_length=len(buf), read_buffer=buf)
    return bytes(buf)


async def inquiry_hook(session: Session) -> None:
    buf = bytearray(96)
    await session.execute(1, INQUIRY, read_length=96, read_buffer=buf, setup=True)


async def test_hook_runs_at_the_first_login_before_the_session_takes_io(nursery,
                                                                          autojump_clock):
    seen: list = []
    states = []

    async def hook(session):
        states.append(session.logged_in)
        with pytest.raises(PathFailed):     # ordinary fail-fast I/O is refused meanwhile
            await session.execute(1, read10(0), read_length=4096, fail_fast=True)
        await inquiry_hook(session)

    session = await connect(FakeTarget(on_command=answer_all(seen)), nursery, [hook])
    assert states == [False] and session.logged_in
    assert await read(session) == PAYLOAD
    assert seen == [(1, b"\x12"), (1, b"\x28")]
    with pytest.raises(PathFailed):         # setup commands only while setting up
        await session.execute(1, INQUIRY, read_length=96, setup=True)
    await session.close()


async def test_failing_hook_fails_the_first_login_and_leaves_nothing(nursery, autojump_clock):
    async def hook(session):
        await inquiry_hook(session)
        raise NoSuchDevice("LUN 1 is another logical unit now")

    target = FakeTarget(on_command=answer_all([]))
    with pytest.raises(NoSuchDevice):
        await connect(target, nursery, [hook])
    with trio.fail_after(5):
        while target.live:              # the connection was closed
            await trio.sleep(0.1)
    assert target.connections == 1


@CONN_FAILED
async def test_after_a_relogin_the_hook_runs_before_waiting_commands_are_reissued(
        nursery, autojump_clock):
    seen: list = []
    answered = {"reads": 0}

    def on_command(conn, cmd):
        seen.append((conn.number, bytes(cmd.cdb[:1])))
        if cmd.cdb[0] == 0x28 and conn.number == 1:
            return []                   # the first read is never answered on connection 1
        return good_read(conn, cmd, PAYLOAD[:cmd.expected_data_transfer_length])

    target = FakeTarget(on_command=on_command)
    session = await connect(target, nursery, [inquiry_hook], command=0)
    got = {}

    async def reader():
        got["data"] = await read(session)

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await target.live[1].close()
    assert got["data"] == PAYLOAD
    assert seen == [(1, b"\x12"), (1, b"\x28"), (2, b"\x12"), (2, b"\x28")]
    assert session.reconnects == 1
    await session.close()


@CONN_FAILED
@HOOK_FAILED
async def test_a_hook_that_fails_after_a_relogin_is_a_failed_relogin_and_is_retried(
        nursery, autojump_clock):
    seen: list = []
    calls = []

    async def hook(session):
        calls.append(trio.current_time())
        await inquiry_hook(session)
        if len(calls) == 2:
            raise ConnectionLost("identity could not be read")

    target = FakeTarget(on_command=answer_all(seen))
    session = await connect(target, nursery, [hook], command=0)
    await target.live[1].close()
    with trio.fail_after(60):
        while session.reconnects < 1:
            await trio.sleep(0.1)
    assert len(calls) == 3 and target.connections == 3
    assert calls[2] - calls[1] == pytest.approx(0.5, abs=1e-6)   # the relogin back-off
    assert await read(session) == PAYLOAD
    await session.close()


@CONN_FAILED
async def test_a_hook_can_fail_the_commands_waiting_for_one_lun(nursery, autojump_clock):
    def on_command(conn, cmd):
        if conn.number == 1 and cmd.cdb[0] == 0x28:
            return []
        return good_read(conn, cmd, PAYLOAD[:cmd.expected_data_transfer_length])

    failed = []

    async def hook(session):
        if session.reconnects == 0 and session.tsih and failed == [] and \
                target.connections == 2:
            failed.append(session.fail_waiting(2, NoSuchDevice("LUN 2 changed")))

    target = FakeTarget(on_command=on_command)
    session = await connect(target, nursery, [hook], command=0)
    results: dict = {}

    async def reader(lun):
        try:
            results[lun] = await read(session, lun)
        except NoSuchDevice as exc:
            results[lun] = exc

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(reader, 1)
            n.start_soon(reader, 2)
            await trio.testing.wait_all_tasks_blocked()
            await target.live[1].close()
    assert failed == [1]
    assert results[1] == PAYLOAD and isinstance(results[2], NoSuchDevice)
    await session.close()


@CONN_FAILED
async def test_hook_commands_need_no_command_slot(nursery, autojump_clock):
    # cmds_max=1 and the one slot held by a read waiting for the relogin: the hook's own
    # commands still go out (they used to wait for the slot, and the read for the hook)
    def on_command(conn, cmd):
        if conn.number == 1 and cmd.cdb[0] == 0x28:
            return []
        return good_read(conn, cmd, PAYLOAD[:cmd.expected_data_transfer_length])

    target = FakeTarget(on_command=on_command)
    with trio.fail_after(5):
        session = await Session.connect(Portal("127.0.0.1", 3260), target.target_name,
                                        initiator_name=INITIATOR, nursery=nursery,
                                        timeouts=Timeouts(noop_out_interval=0, command=0),
                                        login_hooks=[inquiry_hook], cmds_max=1,
                                        connector=target.socketpair_connector(nursery))
    got = {}

    async def reader():
        got["data"] = await read(session)

    with trio.fail_after(10):           # well within login_timeout (15 s): no stall
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await target.live[1].close()
    assert got["data"] == PAYLOAD and session.reconnects == 1
    await session.close()


async def test_fail_waiting_answers_callers_waiting_for_a_command_slot(nursery, autojump_clock):
    # cmds_max=1, the slot held by a read to LUN 1: reads to LUN 2 wait for it. fail_waiting
    # answers them, even one whose slot has just come but that has not run yet, and none of
    # their commands is ever sent
    release = trio.Event()
    held: list = []

    def on_command(conn, cmd):
        if cmd.cdb[0] == 0x28 and not release.is_set() and not held:
            held.append(cmd)
            return []
        return good_read(conn, cmd, PAYLOAD[:cmd.expected_data_transfer_length])

    target = FakeTarget(on_command=on_command)
    with trio.fail_after(5):
        session = await Session.connect(Portal("127.0.0.1", 3260), target.target_name,
                                        initiator_name=INITIATOR, nursery=nursery,
                                        timeouts=Timeouts(noop_out_interval=0), cmds_max=1,
                                        connector=target.socketpair_connector(nursery))
    results: dict = {}

    async def reader(name, lun):
        try:
            results[name] = await read(session, lun)
        except NoSuchDevice as exc:
            results[name] = exc

    async def first_then_fail():
        results["a"] = await read(session, 1)
        # the slot went to "c" as the read above returned; "c" has not run yet
        results["failed"] = session.fail_waiting(2, NoSuchDevice("LUN 2 is gone"))

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(first_then_fail)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(reader, "b", 2)
            await trio.testing.wait_all_tasks_blocked()
            assert session.fail_waiting(2, NoSuchDevice("LUN 2 is gone")) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert isinstance(results["b"], NoSuchDevice)
            n.start_soon(reader, "c", 2)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
            conn = target.live[1]
            await conn.send(*good_read(conn, held[0], PAYLOAD))
    assert results["a"] == PAYLOAD and results["failed"] == 1
    assert isinstance(results["c"], NoSuchDevice)
    assert not [p for _, p in target.commands_seen(0x28) if p.lun != held[0].lun]
    assert await read(session, 2) == PAYLOAD         # the slot came back
    await session.close()
