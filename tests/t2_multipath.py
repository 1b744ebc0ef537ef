"""The multipath layer (iscsifs/multipath.py) over real sessions, each to a scripted target
serving the same blocks (the same logical unit behind two portals), on trio's MockClock.

What is checked: a failed path's commands are issued again on another path at once (no wait
for a relogin or for replacement_timeout), failover and failback, round-robin, the bounded
wait while no path is healthy, and the path states, counters and log lines.
"""

from __future__ import annotations

import logging
import os

import pytest
import trio
import trio.testing

from fake_target import FakeTarget, good_read, good_status
from helpers import CONN_FAILED
from iscsifs.core.names import Portal
from iscsifs.core.pdu import ScsiResponse
from iscsifs.device import Lun
from iscsifs.errors import SessionFailed
from iscsifs.multipath import MultipathDevice, Path
from iscsifs.net.session import Session, Timeouts
from iscsifs.scsi.sense import ScsiError

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
IQN = "iqn.2026-11.org.iscsifs.test:mp"
WWN = "naa.60000000000000000e00000000010001"
PORTAL_A = Portal("127.0.0.1", 3260)
PORTAL_B = Portal("127.0.0.2", 3260)
BS = 512
BLOCKS = 256

NO_PATH = pytest.mark.expect_log("no healthy path left", logger="iscsifs.multipath")


class Disk:
    """The blocks of one logical unit, whichever target is asked."""

    def __init__(self) -> None:
        self.data = bytearray(os.urandom(BS * BLOCKS))

    def target(self, held: dict | None = None, name: str = "x") -> FakeTarget:
        """A target exporting this disk as LUN 1; commands get no answer while
        ``held[name]`` is true."""
        def on_command(conn, cmd):
            if held is not None and held.get(name):
                return []
            lba = int.from_bytes(cmd.cdb[2:6], "big")
            count = int.from_bytes(cmd.cdb[7:9], "big")
            if cmd.cdb[0] == 0x28:
                return good_read(conn, cmd, bytes(self.data[lba * BS:(lba + count) * BS]))
            if cmd.cdb[0] == 0x2A:
                self.data[lba * BS:lba * BS + len(cmd.data)] = bytes(cmd.data)
            return good_status(conn, cmd)
        return FakeTarget(target_name=IQN, on_command=on_command)


def reads(target: FakeTarget) -> int:
    return len(target.commands_seen(0x28))


async def connect(target: FakeTarget, portal: Portal, nursery, **timeouts) -> Session:
    timeouts.setdefault("noop_out_interval", 0)
    with trio.fail_after(5):
        return await Session.connect(portal, IQN, initiator_name=INITIATOR, nursery=nursery,
                                     timeouts=Timeouts(**timeouts),
                                     connector=target.socketpair_connector(nursery))


def lun_on(session: Session) -> Lun:
    """LUN 1 on ``session``, as Lun.open would have found it."""
    dev = Lun(session, 1)
    dev.block_size, dev.num_blocks, dev.wwn, dev.serial = BS, BLOCKS, WWN, "beaf11"
    return dev


async def two_paths(nursery, ta: FakeTarget, tb: FakeTarget, *, policy="failover",
                    no_path_retry=120, **timeouts):
    sa = await connect(ta, PORTAL_A, nursery, **timeouts)
    sb = await connect(tb, PORTAL_B, nursery, **timeouts)
    la, lb = lun_on(sa), lun_on(sb)
    mdev = MultipathDevice(la, policy=policy, no_path_retry=no_path_retry)
    mdev.group.add(Path(IQN, PORTAL_A, la, 0))
    mdev.group.add(Path(IQN, PORTAL_B, lb, 1))
    return mdev, sa, sb


async def wait_logged_in(session: Session) -> None:
    with trio.fail_after(120):
        while not session.logged_in:
            await trio.sleep(0.5)


async def close(mdev: MultipathDevice, *sessions: Session) -> None:
    """As at unmount: the device stops following its paths, then the sessions log out."""
    mdev.group.close()
    for session in sessions:
        await session.close()


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "iscsifs.multipath"]


@CONN_FAILED
async def test_failover_reissues_on_the_other_path_at_once_and_fails_back(
        nursery, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="iscsifs.multipath")
    disk, held = Disk(), {}
    ta, tb = disk.target(held, "a"), disk.target()
    mdev, sa, sb = await two_paths(nursery, ta, tb)
    assert await mdev.write(0, b"w" * 4096) == 4096
    assert await mdev.read(0, 4096) == b"w" * 4096
    assert (reads(ta), reads(tb)) == (1, 0) and len(tb.commands_seen()) == 0   # A is active
    assert mdev.active_path().portal == PORTAL_A

    held["a"] = True                     # A takes the next read and never answers ...
    ta.hang_login_after = 1              # ... and, once dropped, cannot log in again
    got = {}

    async def reader():
        got["data"] = await mdev.read(4096, 8192)
        got["at"] = trio.current_time()

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert reads(ta) == 2 and "data" not in got
        dropped = trio.current_time()
        await ta.live[1].close()
    assert got["data"] == disk.data[4096:12288]
    assert got["at"] == dropped          # at once: no relogin, no replacement_timeout
    assert reads(tb) == 1 and reads(ta) == 2
    states = mdev.path_states()
    assert [(s.dm_state, s.checker_state, s.device_state) for s in states] == [
        ("failed", "faulty", "blocked"), ("active", "ready", "running")]
    assert [s.group_active for s in states] == [False, True]
    assert (states[0].failures, states[0].errors, states[1].ios) == (1, 1, 1)
    assert mdev.active_path().portal == PORTAL_B and mdev.switches == 1

    held["a"] = False
    ta.hang_login_after = None           # A answers logins again: the session comes back
    await wait_logged_in(sa)
    assert await mdev.read(0, 512) == b"w" * 512
    assert reads(ta) == 3 and reads(tb) == 1    # failback: I/O is on A again
    assert mdev.switches == 2
    assert [s.dm_state for s in mdev.path_states()] == ["active", "active"]
    a, b = f"{PORTAL_A.address} {IQN} lun 1", f"{PORTAL_B.address} {IQN} lun 1"
    log = messages(caplog)
    assert f"{WWN}: path {a} failed" in log
    assert f"{WWN}: active path switched from {a} to {b}" in log
    assert f"{WWN}: path {a} reinstated" in log
    assert f"{WWN}: active path switched from {b} to {a}" in log
    await close(mdev, sa, sb)


@CONN_FAILED
async def test_round_robin_spreads_commands_and_survives_a_path_loss(nursery, autojump_clock):
    disk, held = Disk(), {}
    ta, tb = disk.target(held, "a"), disk.target()
    mdev, sa, sb = await two_paths(nursery, ta, tb, policy="round-robin")
    for i in range(6):
        assert await mdev.read(i * 512, 512) == disk.data[i * 512:(i + 1) * 512]
    assert (reads(ta), reads(tb)) == (3, 3)
    assert [s.group_active for s in mdev.path_states()] == [True, True]

    held["a"] = True
    ta.hang_login_after = 1
    results = {}

    async def reader(i):
        results[i] = await mdev.read(i * 4096, 4096)

    async with trio.open_nursery() as n:
        for i in range(4):
            n.start_soon(reader, i)
        await trio.testing.wait_all_tasks_blocked()
        assert reads(ta) == 5 and len(results) == 2   # two wait at A, two were answered by B
        await ta.live[1].close()
    assert results == {i: disk.data[i * 4096:(i + 1) * 4096] for i in range(4)}
    assert reads(tb) == 3 + 2 + 2
    await close(mdev, sa, sb)


@CONN_FAILED
@NO_PATH
async def test_no_path_waits_at_most_no_path_retry_then_fails(nursery, autojump_clock):
    disk, held = Disk(), {"a": True, "b": True}
    ta, tb = disk.target(held, "a"), disk.target(held, "b")
    mdev, sa, sb = await two_paths(nursery, ta, tb, no_path_retry=10, login=2)
    ta.hang_login_after = tb.hang_login_after = 1
    failed = {}

    async def reader():
        try:
            await mdev.read(0, 512)
        except SessionFailed as exc:
            failed["at"], failed["error"] = trio.current_time(), exc

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await ta.live[1].close()
        await trio.testing.wait_all_tasks_blocked()
        await tb.live[1].close()
    assert 10 - 1e-6 <= failed["at"] - start <= 10 + 1e-6
    assert "no path is available (none for 10 s)" in str(failed["error"])
    assert not mdev.session.logged_in and not sa.logged_in     # DeviceSession's state
    with pytest.raises(SessionFailed):          # past the limit: fail at once
        await mdev.read(0, 512)
    assert trio.current_time() == failed["at"]
    held["b"] = False
    tb.hang_login_after = None
    await wait_logged_in(sb)
    assert mdev.session.logged_in                       # one path is enough
    assert await mdev.read(0, 512) == disk.data[:512]
    await close(mdev, sa, sb)


@CONN_FAILED
@NO_PATH
async def test_io_waiting_for_a_path_completes_when_one_comes_back(nursery, autojump_clock):
    disk, held = Disk(), {"a": True, "b": True}
    ta, tb = disk.target(held, "a"), disk.target(held, "b")
    mdev, sa, sb = await two_paths(nursery, ta, tb, no_path_retry=30, login=2)
    ta.hang_login_after = tb.hang_login_after = 1
    got = {}

    async def reader():
        got["data"] = await mdev.read(0, 512)
        got["at"] = trio.current_time()

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await ta.live[1].close()
        await tb.live[1].close()
        start = trio.current_time()
        await trio.sleep(5)
        assert "data" not in got
        held["b"] = False
        tb.hang_login_after = None
    assert got["data"] == disk.data[:512]
    # once a path is back (not before: B was released 5 s in), within a login attempt
    # (2 s) and a relogin pause (at most 5 s)
    assert 5 - 1e-6 <= got["at"] - start <= 5 + 2 + 5 + 1e-6
    await close(mdev, sa, sb)


async def test_a_scsi_error_is_the_callers_and_not_retried_elsewhere(nursery, autojump_clock):
    disk = Disk()
    ta, tb = disk.target(), disk.target()

    def medium_error(conn, cmd):         # MEDIUM ERROR, UNRECOVERED READ ERROR (11/00)
        sense = bytes([0x70, 0, 0x03, 0, 0, 0, 0, 10]) + bytes(4) + bytes([0x11, 0x00]) + bytes(4)
        return [ScsiResponse(itt=cmd.itt, response=0, status=2, exp_data_sn=0,
                             bidi_read_residual_count=0, residual_count=0, overflow=False,
                             underflow=False, bidi_overflow=False, bidi_underflow=False,
                             data=len(sense).to_bytes(2, "big") + sense, **conn.sns())]

    ta.on_command = medium_error
    mdev, sa, sb = await two_paths(nursery, ta, tb)
    with pytest.raises(ScsiError):
        await mdev.read(0, 512)
    assert reads(tb) == 0
    await close(mdev, sa, sb)


async def test_a_path_whose_session_logs_out_is_skipped(nursery, autojump_clock):
    disk = Disk()
    ta, tb = disk.target(), disk.target()
    mdev, sa, sb = await two_paths(nursery, ta, tb)
    await sa.close()
    assert await mdev.read(0, 512) == disk.data[:512]
    assert reads(tb) == 1
    assert [s.device_state for s in mdev.path_states()] == ["offline", "running"]
    mdev.group.remove(lambda p: p.session is sa)
    assert [s.portal for s in mdev.path_states()] == [PORTAL_B]
    await close(mdev, sb)
