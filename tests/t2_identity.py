"""Never write to the wrong logical unit: the Initiator re-reads each LUN's identity (VPD 0x80
and 0x83) after every relogin, before anything is re-issued, and on every rescan; LUN changes
the target reports (UNIT ATTENTION 3F/0E, the SCSI async event, ILLEGAL REQUEST 25/00) start a
rescan by themselves. Real Initiator, sessions and Luns over a socketpair to the scripted
target (``fake_lu.LuTable``), on trio's MockClock.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from fake_lu import FakeLU, LuTable, respond, sense_data
from fake_target import FakeTarget
from helpers import CONN_FAILED
from iscsifs.core.names import Portal
from iscsifs.core.pdu import AsyncMessage, LoginRequest, Reject, decode_lun, encode, encode_lun
from iscsifs.errors import NoSuchDevice
from iscsifs.initiator import Initiator, NodeOptions
from iscsifs.net.session import Timeouts
from iscsifs.scsi.sense import ScsiError

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
IQN = "iqn.2026-11.org.iscsifs.test:ident"
PORTAL = Portal("127.0.0.1", 3260)
PORTAL_B = Portal("127.0.0.2", 3260)
NAA_A = "60000000000000000e00000000010001"
NAA_B = "6001405aa00000000000000000000b0b"
LU_GONE = pytest.mark.expect_log(r"(After a relogin|On a rescan), LUN \d+ of .* (is another "
                                 r"logical unit|is not reported by the target any more)",
                                 logger="iscsifs.initiator")


def initiator(nursery, targets: dict[Portal, FakeTarget], **kw) -> Initiator:
    connectors = {p.host: t.socketpair_connector(nursery) for p, t in targets.items()}

    async def connect(portal: Portal):
        return await connectors[portal.host](portal)

    opts = kw.pop("options", None)
    return Initiator(initiator_name=INITIATOR, portals=list(targets), nursery=nursery,
                     timeouts=Timeouts(noop_out_interval=0),
                     node_options=(lambda t, p: opts) if opts else None,
                     connector=connect, **kw)


async def lun(init: Initiator, n: int, portal: Portal = PORTAL):
    entries = {e.lun: e for e in await init.luns(IQN, portal)}
    return entries[n].device if n in entries else None


async def wait_until(predicate, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.1)


def held_writes(conn, cmd) -> bool:
    """Writes on the first connection get no answer (in flight when it drops)."""
    return conn.number == 1 and cmd.cdb[0] == 0x2A


async def write_or_error(dev, data: bytes, results: list, offset: int = 0) -> None:
    try:
        results.append(await dev.write(offset, data))
    except NoSuchDevice as exc:
        results.append(exc)


@CONN_FAILED
@LU_GONE
async def test_after_a_relogin_another_lu_at_the_lun_fails_the_writer_and_gets_nothing(
        nursery, autojump_clock, caplog):
    lu_a, lu_b = FakeLU("beaf11", NAA_A), FakeLU("sn-new", NAA_B)
    table = LuTable({1: lu_a})
    target = FakeTarget(target_name=IQN, on_command=table)
    init = initiator(nursery, {PORTAL: target})
    heard: list = []
    init.watch_luns(lambda t, p, luns: heard.append({e.lun: e.device for e in luns}))
    dev = await lun(init, 1)
    assert (dev.serial, dev.wwn) == ("beaf11", "naa." + NAA_A)
    table.hold = held_writes
    results: list = []
    async with trio.open_nursery() as n:
        n.start_soon(write_or_error, dev, b"w" * 512, results)
        await trio.testing.wait_all_tasks_blocked()
        table.replace(1, lu_b)          # the target restarts with another LU at LUN 1
        await target.live[1].close()
    assert isinstance(results[0], NoSuchDevice) and dev.is_gone
    assert "sn-new" in str(results[0]) and "beaf11" in str(results[0])
    assert lu_a.writes == [] and lu_b.writes == []
    # on the new connection the identity was read before anything else went to LUN 1
    second = [(lun_, op) for c, lun_, op in table.commands if c == 2]
    assert second[:4] == [(1, 0x12)] * 4 and (1, 0x2A) not in second
    warning = [r.getMessage() for r in caplog.records if r.name == "iscsifs.initiator"
               and r.levelname == "WARNING"]
    assert len(warning) == 1
    assert warning[0] == (
        f"After a relogin, LUN 1 of {IQN} at 127.0.0.1:3260 is another logical unit (serial "
        f"'sn-new', WWN naa.{NAA_B}); it was serial 'beaf11', WWN naa.{NAA_A}. Its open files "
        f"fail with ENXIO (1 waiting command(s) answered so) and nothing more is sent to it")
    # the rescan that follows gives LUN 1 a new Lun, and says so
    await wait_until(lambda: _is_new(init, dev))
    new = await lun(init, 1)
    assert (new.serial, new.wwn) == ("sn-new", "naa." + NAA_B)
    assert heard[-1][1] is new
    # the old one stays bound to the old LU: it fails at once and sends nothing
    sent = len(table.commands)
    with pytest.raises(NoSuchDevice):
        await dev.write(0, b"x" * 512)
    with pytest.raises(NoSuchDevice):
        await dev.read(0, 512)
    with pytest.raises(NoSuchDevice):
        await dev.flush()
    assert len(table.commands) == sent
    assert await new.write(512, b"n" * 512) == 512
    assert lu_b.writes == [(1, b"n" * 512)] and lu_a.writes == []
    await init.aclose()


async def _is_new(init: Initiator, dev) -> bool:
    now = await lun(init, dev.lun)
    return now is not None and now is not dev


@CONN_FAILED
async def test_the_same_lu_after_a_relogin_gets_its_waiting_write(nursery, autojump_clock):
    lu_a = FakeLU("beaf11", NAA_A)
    table = LuTable({1: lu_a})
    target = FakeTarget(target_name=IQN, on_command=table)
    init = initiator(nursery, {PORTAL: target})
    dev = await lun(init, 1)
    table.hold = held_writes
    results: list = []
    async with trio.open_nursery() as n:
        n.start_soon(write_or_error, dev, b"w" * 512, results)
        await trio.testing.wait_all_tasks_blocked()
        await target.live[1].close()
    assert results == [512] and lu_a.writes == [(0, b"w" * 512)]
    second = [(lun_, op) for c, lun_, op in table.commands if c == 2]
    # the identity, the capacity (twice: UA 29/00 first), then the write
    assert second == [(1, 0x12)] * 4 + [(1, 0x9E), (1, 0x9E), (1, 0x2A)]
    assert not dev.is_gone and await lun(init, 1) is dev
    await init.aclose()


def _login_times(target: FakeTarget) -> dict[int, float]:
    """When each connection sent its first Login Request."""
    times: dict[int, float] = {}
    for (number, pdu), at in zip(target.received, target.received_at):
        if isinstance(pdu, LoginRequest):
            times.setdefault(number, at)
    return times


def _refuse_identity_reads(table: LuTable, how: str, count: int):
    """``on_command``: on connection 2 (the relogin), the first ``count`` identity reads of
    LUN 1 fail without saying anything about the LU: the INQUIRY is answered with a Reject
    (``how="reject"``), or its VPD 00h page with ABORTED COMMAND (``how="aborted"``);
    everything else is ``table``'s."""
    refused: list = []

    def on_command(conn, cmd):
        if conn.number == 2 and len(refused) < count and cmd.cdb[0] == 0x12 \
                and decode_lun(cmd.lun) == 1:
            if how == "reject":
                refused.append(cmd)
                table.commands.append((conn.number, 1, 0x12))
                return [Reject(reason=0x09, data_sn=0, data=bytes(encode(cmd)[0])[:48],
                               **conn.sns())]
            if cmd.cdb[1] & 1 and cmd.cdb[2] == 0x00:
                refused.append(cmd)
                table.commands.append((conn.number, 1, 0x12))
                return [respond(conn, cmd, 2, sense_data(0x0B, 0x00, 0x00))]
        return table(conn, cmd)
    return on_command


@CONN_FAILED
@pytest.mark.expect_log(r"relogin to .* failed: LUN 1 did not say which logical unit it is "
                        r"\(.*, 3 times\)", logger="iscsifs.net.session", optional=True)
@pytest.mark.expect_log("rejected a PDU", logger="iscsifs", optional=True)
@pytest.mark.parametrize("how", ["reject", "aborted"])
@pytest.mark.parametrize("refusals", [1, 3])
async def test_a_failed_identity_read_after_a_relogin_is_no_evidence_the_lu_changed(
        nursery, autojump_clock, caplog, how, refusals):
    # the relogin's INQUIRY to LUN 1 is rejected (or its VPD 00h answered ABORTED COMMAND):
    # that says nothing about which LU is there, so the LUN is not gone. Once: read again on
    # the same connection. Every time (3 attempts): that relogin fails, and the next one
    # (after the session's back-off) reads the identity. Either way the waiting write goes to
    # the same LU, after the check, and nothing else goes to LUN 1 before it
    lu_a = FakeLU("beaf11", NAA_A)
    table = LuTable({1: lu_a})
    target = FakeTarget(target_name=IQN, on_command=_refuse_identity_reads(table, how, refusals))
    init = initiator(nursery, {PORTAL: target})
    dev = await lun(init, 1)
    table.hold = held_writes
    results: list = []
    async with trio.open_nursery() as n:
        n.start_soon(write_or_error, dev, b"w" * 512, results)
        await trio.testing.wait_all_tasks_blocked()
        await target.live[1].close()
    assert results == [512] and not dev.is_gone
    assert lu_a.writes == [(0, b"w" * 512)]
    session = await init.session(IQN, PORTAL)
    assert session.reconnects == 1
    on_lun1 = {c: [op for c_, lun_, op in table.commands if c_ == c and lun_ == 1]
               for c in (2, 3)}
    if refusals == 1:
        assert target.connections == 2
        # the refused INQUIRY (a rejected one, or the standard one and VPD 00h), the four of
        # the check again, the capacity (twice: UA 29/00 first), then the write
        inquiries = 5 if how == "reject" else 6
        assert on_lun1[2] == [0x12] * inquiries + [0x9E, 0x9E, 0x2A]
    else:
        # nothing but the identity check went to LUN 1 on the connection that could not
        # check it; the next login was made after the back-off (0.5 s), not at once
        assert target.connections == 3
        assert set(on_lun1[2]) == {0x12}
        assert on_lun1[3][:4] == [0x12] * 4 and 0x2A in on_lun1[3]
        times = _login_times(target)
        assert 0.5 <= times[3] - times[2] < 1.0
        assert "(ABORTED COMMAND" in caplog.text or "(command failed: rejected" in caplog.text
    assert await lun(init, 1) is dev
    assert await dev.read(0, 512) == b"w" * 512
    await init.aclose()


@CONN_FAILED
@pytest.mark.expect_log("no healthy path left", logger="iscsifs.multipath")
@pytest.mark.parametrize("answer", ["good", "aborted"])
async def test_a_relogin_reads_the_capacity_the_new_nexus_was_not_told_of(
        nursery, autojump_clock, answer):
    # the simulator's seed 312: the LU grew while the session was down, and the relogin is a
    # new I_T nexus (a restarted target, a redirection to another portal group) that gets
    # UNIT ATTENTION 29/00 only, never 2A/09. The relogin reads the capacity, and by-id
    # follows; when that READ CAPACITY fails, the next I/O reads it
    lu_a = FakeLU("beaf11", NAA_A)
    table = LuTable({1: lu_a})

    aborted: set = set()

    def on_command(conn, cmd):
        op = cmd.cdb[0]
        if answer == "aborted" and conn.number == 2 and op in (0x9E, 0x25) \
                and op not in aborted:          # READ CAPACITY(16), then (10): the hook's
            aborted.add(op)
            return [respond(conn, cmd, 2, sense_data(0x0B, 0x00, 0x00))]
        return table(conn, cmd)

    target = FakeTarget(target_name=IQN, on_command=on_command)
    init = initiator(nursery, {PORTAL: target})
    (mdev,) = await init.multipath([(IQN, PORTAL)])
    dev = await lun(init, 1)
    assert dev.size == mdev.size == 64 * 512
    lu_a.data.extend(bytes(64 * 512))
    lu_a.blocks = 128
    await target.live[1].close()
    session = await init.session(IQN, PORTAL)
    await wait_until(lambda: _reconnected(session))
    assert not dev.is_gone
    if answer == "good":
        assert dev.size == mdev.size == 128 * 512
        assert not dev.capacity_changed and not mdev.capacity_changed
    else:
        assert dev.size == 64 * 512 and dev.capacity_changed
        await dev.read_capacity()           # what the FUSE layer does after the next I/O
        assert dev.size == mdev.size == 128 * 512
    assert await mdev.write(100 * 512, b"g" * 512) == 512
    assert lu_a.data[100 * 512:101 * 512] == b"g" * 512
    await init.aclose()


@CONN_FAILED
@LU_GONE
async def test_a_lun_removed_while_the_session_was_down_is_gone_without_a_relogin_loop(
        nursery, autojump_clock):
    lu_a, lu_2 = FakeLU("beaf11", NAA_A), FakeLU("beaf12", NAA_B)
    table = LuTable({1: lu_a, 2: lu_2})
    target = FakeTarget(target_name=IQN, on_command=table)
    init = initiator(nursery, {PORTAL: target})
    dev = await lun(init, 1)
    table.hold = held_writes
    results: list = []
    async with trio.open_nursery() as n:
        n.start_soon(write_or_error, dev, b"w" * 512, results)
        await trio.testing.wait_all_tasks_blocked()
        table.remove(1)
        await target.live[1].close()
    assert isinstance(results[0], NoSuchDevice) and lu_a.writes == []
    await wait_until(lambda: _lun_missing(init, 1))
    session = await init.session(IQN, PORTAL)
    assert session.reconnects == 1 and target.connections == 2     # one relogin, no loop
    assert (await lun(init, 2)).serial == "beaf12"
    await init.aclose()


async def _lun_missing(init: Initiator, n: int) -> bool:
    return await lun(init, n) is None


@CONN_FAILED
@LU_GONE
async def test_callers_waiting_for_a_command_slot_are_answered_too(nursery, autojump_clock):
    # cmds_max=1: the first write holds the only slot, the second waits for it; both were
    # meant for the old LU and neither may reach the new one when the slot frees up
    lu_a, lu_b = FakeLU("beaf11", NAA_A), FakeLU("sn-new", NAA_B)
    table = LuTable({1: lu_a})
    target = FakeTarget(target_name=IQN, on_command=table)
    init = initiator(nursery, {PORTAL: target}, options=NodeOptions(cmds_max=1))
    dev = await lun(init, 1)
    table.hold = held_writes
    results: list = []
    async with trio.open_nursery() as n:
        n.start_soon(write_or_error, dev, b"1" * 512, results)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(write_or_error, dev, b"2" * 512, results, 512)
        await trio.testing.wait_all_tasks_blocked()
        table.replace(1, lu_b)
        await target.live[1].close()
    assert len(results) == 2 and all(isinstance(r, NoSuchDevice) for r in results)
    assert lu_a.writes == [] and lu_b.writes == []
    assert not [c for c in table.commands if c[0] == 2 and c[2] == 0x2A]
    await init.aclose()


@LU_GONE
async def test_unit_attention_3f0e_rescans_by_itself(nursery, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="iscsifs.initiator")
    lu_a = FakeLU("beaf11", NAA_A)
    table = LuTable({1: lu_a})
    target = FakeTarget(target_name=IQN, on_command=table)
    init = initiator(nursery, {PORTAL: target})
    heard: list = []
    init.watch_luns(lambda t, p, luns: heard.append(sorted(e.lun for e in luns)))
    dev = await lun(init, 1)
    assert heard == [[0, 1]]
    await dev.read(0, 512)                  # takes the 29/00 of the new nexus
    lu_2 = FakeLU("beaf12", NAA_B)
    table.add(2, lu_2)                      # tgtadm --op new: 3F/0E for the other LUs
    assert await dev.read(0, 512) == bytes(lu_a.data[:512])     # sees it, retries
    await wait_until(lambda: _lun_present(init, 2))
    assert heard[-1] == [0, 1, 2]
    dev2 = await lun(init, 2)
    assert await dev2.read(0, 512) == bytes(lu_2.data[:512])
    # removed: the next command of any LU of the session starts the rescan; the removed
    # LUN's Lun is gone and fails without sending anything
    table.remove(2)
    await dev.read(0, 512)
    await wait_until(lambda: _lun_missing(init, 2))
    assert heard[-1] == [0, 1] and dev2.is_gone
    sent = len(table.commands)
    with pytest.raises(NoSuchDevice):
        await dev2.read(0, 512)
    assert len(table.commands) == sent
    assert "LUNs rescanned after a change: 0, 1, 2" in caplog.text
    await init.aclose()


async def _lun_present(init: Initiator, n: int) -> bool:
    return await lun(init, n) is not None


@LU_GONE
async def test_a_command_to_a_removed_lun_fails_enxio_and_rescans(nursery, autojump_clock):
    table = LuTable({1: FakeLU("beaf11", NAA_A), 2: FakeLU("beaf12", NAA_B)})
    target = FakeTarget(target_name=IQN, on_command=table)
    init = initiator(nursery, {PORTAL: target})
    dev2 = await lun(init, 2)
    await dev2.read(0, 512)
    table.remove(2)
    with pytest.raises(ScsiError) as info:          # 25/00: the FUSE layer makes it ENXIO
        await dev2.read(0, 512)
    assert info.value.sense.asc_ascq == (0x25, 0x00)
    await wait_until(lambda: _lun_missing(init, 2))
    assert dev2.is_gone
    await init.aclose()


async def test_the_scsi_async_event_rescans(nursery, autojump_clock):
    table = LuTable({1: FakeLU("beaf11", NAA_A)})
    target = FakeTarget(target_name=IQN, on_command=table)
    init = initiator(nursery, {PORTAL: target})
    await lun(init, 1)
    table.luns[2] = FakeLU("beaf12", NAA_B)         # added, and no command will see a UA
    conn = target.live[1]
    await conn.send(AsyncMessage(lun=encode_lun(0), async_event=0, async_vcode=0,
                                 parameter1=0, parameter2=0, parameter3=0,
                                 data=sense_data(0x06, 0x3F, 0x0E), **conn.sns()))
    await wait_until(lambda: _lun_present(init, 2))
    # a capacity change announced the same way: the size follows
    table.luns[1].blocks = 128
    table.luns[1].data.extend(bytes(64 * 512))
    await conn.send(AsyncMessage(lun=encode_lun(1), async_event=0, async_vcode=0,
                                 parameter1=0, parameter2=0, parameter3=0,
                                 data=sense_data(0x06, 0x2A, 0x09), **conn.sns()))
    await wait_until(lambda: _size_is(init, 1, 128 * 512))
    await init.aclose()


async def _size_is(init: Initiator, n: int, size: int) -> bool:
    return (await lun(init, n)).size == size


@LU_GONE
async def test_a_rescan_tells_a_replaced_lu_and_a_returning_lun_apart(nursery, autojump_clock):
    lu_a = FakeLU("beaf11", NAA_A)
    table = LuTable({1: lu_a})
    target = FakeTarget(target_name=IQN, on_command=table)
    init = initiator(nursery, {PORTAL: target})
    old = await lun(init, 1)
    # replaced between two rescans, same size: only the identity tells
    table.luns[1] = FakeLU("sn-new", NAA_B)
    await init.rescan(IQN, PORTAL)
    new = await lun(init, 1)
    assert old.is_gone and new is not old and new.serial == "sn-new"
    # leaves REPORT LUNS, then comes back (even as the same LU): a new Lun, never the old
    del table.luns[1]
    await init.rescan(IQN, PORTAL)
    assert new.is_gone and await lun(init, 1) is None
    table.luns[1] = lu_a
    await init.rescan(IQN, PORTAL)
    back = await lun(init, 1)
    assert back not in (old, new) and not back.is_gone and back.serial == "beaf11"
    with pytest.raises(NoSuchDevice):
        await old.write(0, b"x" * 512)
    assert lu_a.writes == []
    await init.aclose()


@CONN_FAILED
@LU_GONE
@pytest.mark.expect_log("no healthy path left", logger="iscsifs.multipath")  # B's drop
async def test_multipath_paths_are_checked_the_same_way(nursery, autojump_clock):
    shared = FakeLU("beaf11", NAA_A)
    table_a, table_b = LuTable({1: shared}), LuTable({1: shared, 2: FakeLU("beaf12", NAA_B)})
    ta = FakeTarget(target_name=IQN, on_command=table_a)
    tb = FakeTarget(target_name=IQN, on_command=table_b)
    init = initiator(nursery, {PORTAL: ta, PORTAL_B: tb})
    devices = {m.identity: m for m in await init.multipath([(IQN, PORTAL), (IQN, PORTAL_B)])}
    both, only_b = devices["naa." + NAA_A], devices["naa." + NAA_B]
    assert len(both.group.paths) == 2 and len(only_b.group.paths) == 1
    # portal B's target restarts with other LUs at 1 and 2
    table_b.luns[1] = other = FakeLU("sn-other", "600140500000000000000000000000cc")
    table_b.luns[2] = FakeLU("sn-other2", "600140500000000000000000000000dd")
    await tb.live[1].close()
    session_b = await init.session(IQN, PORTAL_B)
    await wait_until(lambda: _reconnected(session_b))
    # LUN 1: its path through B is gone, A carries the I/O; nothing went to B's new LU
    assert [p.portal for p in both.group.paths] == [PORTAL]
    assert await both.write(0, b"m" * 512) == 512
    assert shared.data[:512] == b"m" * 512 and other.writes == []
    # LUN 2 had only that path: its by-id device is gone
    assert only_b.is_gone
    with pytest.raises(NoSuchDevice):
        await only_b.read(0, 512)
    await init.aclose()


async def _reconnected(session) -> bool:
    return session.reconnects >= 1 and session.logged_in
