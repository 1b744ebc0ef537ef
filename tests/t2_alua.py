"""ALUA in the multipath layer (iscsifs/multipath.py), over real sessions to scripted target
ports of one logical unit in two target port groups (fake_target.AluaUnit), on trio's
MockClock; and RESERVATION CONFLICT, which is the LU's answer and never a path failure.

What is checked: active/optimized paths are preferred over active/non-optimized ones whatever
the portal order, standby and unavailable paths take no I/O, UNIT ATTENTION 2A/06 re-reads the
groups, a transition (NOT READY 04/0A) is retried until it ends or until
alua_transition_timeout (both bounds), data written while the states change reads back the
same, and the status file's states.
"""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from fake_target import ANO, AO, STANDBY, TRANSITIONING, UNAVAILABLE, AluaUnit, FakeTarget
from iscsifs.core.names import Portal
from iscsifs.core.pdu import ScsiResponse
from iscsifs.device import Lun
from iscsifs.fs.render import render_multipath
from iscsifs.multipath import MultipathDevice, Path
from iscsifs.net.session import Session, Timeouts
from iscsifs.scsi.parse import Inquiry
from iscsifs.scsi.sense import ScsiError, ScsiStatus, alua_not_ready, is_reservation_conflict

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
IQN = "iqn.2026-11.org.iscsifs.test:alua"
WWN = "naa.60000000000000000e00000000010001"
PORTAL_A = Portal("127.0.0.1", 3260)
PORTAL_B = Portal("127.0.0.2", 3260)
BS = AluaUnit.BS
TRANSITION_FAILED = pytest.mark.expect_log("still in an ALUA transition",
                                           logger="iscsifs.multipath")


async def connect(target: FakeTarget, portal: Portal, nursery) -> Session:
    with trio.fail_after(5):
        return await Session.connect(portal, IQN, initiator_name=INITIATOR, nursery=nursery,
                                     timeouts=Timeouts(noop_out_interval=0),
                                     connector=target.socketpair_connector(nursery))


def lun_on(session: Session, group: int, blocks: int) -> Lun:
    """LUN 1 on ``session`` as Lun.open finds it on a port of target port group ``group``
    (INQUIRY TPGS = 1, implicit ALUA)."""
    dev = Lun(session, 1)
    dev.block_size, dev.num_blocks, dev.wwn, dev.serial = BS, blocks, WWN, "beaf11"
    dev.inquiry = Inquiry(peripheral_qualifier=0, device_type=0, tpgs=1, vendor="ISCSIFS",
                          product="ALUA")
    dev.target_port_group = group
    return dev


async def two_ports(nursery, unit: AluaUnit, *, policy="failover", **kw):
    """Path A (127.0.0.1, first in portal order) on a port of group 1, path B on group 2."""
    ta, tb = unit.target("a", 1), unit.target("b", 2)
    sa, sb = await connect(ta, PORTAL_A, nursery), await connect(tb, PORTAL_B, nursery)
    blocks = len(unit.data) // BS
    la, lb = lun_on(sa, 1, blocks), lun_on(sb, 2, blocks)
    mdev = MultipathDevice(la, policy=policy, **kw)
    mdev.group.add(Path(IQN, PORTAL_A, la, 0))
    mdev.group.add(Path(IQN, PORTAL_B, lb, 1))
    return mdev, sa, sb


async def close(mdev, *sessions) -> None:
    mdev.group.close()
    for session in sessions:
        await session.close()


def table(mdev) -> list[tuple]:
    return [(s.portal, s.priority, s.group_active, s.alua_state, s.checker_state)
            for s in mdev.path_states()]


async def test_active_optimized_first_whatever_the_portal_order_and_standby_takes_no_io(
        nursery, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="iscsifs.multipath")
    unit = AluaUnit(groups={1: ANO, 2: AO})
    mdev, sa, sb = await two_ports(nursery, unit)
    assert await mdev.read(0, 4096) == unit.data[:4096]
    assert unit.served == {"b": 1}                      # B: active/optimized
    assert table(mdev) == [(PORTAL_B, 50, True, "active/optimized", "ready"),
                           (PORTAL_A, 10, False, "active/non-optimized", "ready")]
    text = render_multipath(mdev, "wwn-0x60000000000000000e00000000010001")
    assert "hwhandler='1 alua'" in text
    assert "|-+- policy='failover' prio=50 status=active" in text
    assert "`-+- policy='failover' prio=10 status=enabled" in text
    assert "tpg 2 active/optimized" in text

    unit.set_state(2, STANDBY)          # B's next command gets UNIT ATTENTION 2A/06
    unit.set_state(1, AO)
    assert await mdev.write(8192, b"x" * 4096) == 4096
    assert unit.served == {"b": 1, "a": 1} and unit.data[8192:12288] == b"x" * 4096
    assert table(mdev)[0][:4] == (PORTAL_A, 50, True, "active/optimized")
    assert table(mdev)[1] == (PORTAL_B, 1, False, "standby", "ghost")
    for _ in range(3):
        assert await mdev.read(8192, 4096) == b"x" * 4096
    assert unit.served["b"] == 1                        # standby: no I/O at all
    assert mdev.switches == 1
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("is standby (target port group 2)") for m in lines)
    await close(mdev, sa, sb)


async def test_round_robin_uses_the_best_group_only(nursery, autojump_clock):
    unit = AluaUnit(groups={1: AO, 2: ANO})
    mdev, sa, sb = await two_ports(nursery, unit, policy="round-robin")
    for i in range(4):
        assert await mdev.read(i * BS, BS) == unit.data[i * BS:(i + 1) * BS]
    assert unit.served == {"a": 4}
    assert [s.group_active for s in mdev.path_states()] == [True, False]
    unit.set_state(2, AO)
    for i in range(4):
        await mdev.read(i * BS, BS)
    assert unit.served["b"] >= 1 and unit.served["a"] >= 5     # both now, in turn
    await close(mdev, sa, sb)


async def test_a_state_change_without_unit_attention_is_found_from_the_sense(
        nursery, autojump_clock):
    unit = AluaUnit(groups={1: AO, 2: ANO})
    mdev, sa, sb = await two_ports(nursery, unit)
    await mdev.read(0, BS)
    unit.groups[1] = UNAVAILABLE        # no UA: the next command gets NOT READY 04/0C
    assert await mdev.read(0, 4096) == unit.data[:4096]
    assert unit.served == {"a": 1, "b": 1}
    assert table(mdev)[1] == (PORTAL_A, 0, False, "unavailable", "faulty")
    await close(mdev, sa, sb)


async def test_writes_and_reads_verify_across_a_transition_and_a_group_switch(
        nursery, autojump_clock):
    """A writer and a verifier run while group 1 (the only active one) goes into transition
    for 5 s and comes out standby while group 2 becomes active/optimized (a controller
    failover): nothing fails, and every block reads back what was last written to it."""
    unit = AluaUnit(blocks=512, groups={1: AO, 2: STANDBY})
    mdev, sa, sb = await two_ports(nursery, unit)
    rng = random.Random(14)
    mine = bytearray(unit.data)             # what the blocks must hold
    done = trio.Event()
    stalls: list[float] = []

    async def writer():
        while not done.is_set():
            lba = rng.randrange(0, 512 - 8)
            data = rng.randbytes(rng.choice((1, 4, 8)) * BS)
            start = trio.current_time()
            assert await mdev.write(lba * BS, data) == len(data)
            stalls.append(trio.current_time() - start)
            mine[lba * BS:lba * BS + len(data)] = data
            await trio.sleep(0.1)

    async def verifier():
        while not done.is_set():
            lba = rng.randrange(0, 512 - 8)
            got = await mdev.read(lba * BS, 8 * BS)
            # a block may be rewritten while the read runs: check against the writer's view
            # only when no write is in flight (the writer sleeps between writes)
            assert len(got) == 8 * BS
            await trio.sleep(0.05)

    async with trio.open_nursery() as n:
        n.start_soon(writer)
        n.start_soon(verifier)
        await trio.sleep(3)
        unit.set_state(1, TRANSITIONING)
        await trio.sleep(5)
        unit.set_state(1, STANDBY)
        unit.set_state(2, AO)
        await trio.sleep(3)
        done.set()
    assert await mdev.read(0, len(unit.data)) == bytes(mine) == bytes(unit.data)
    assert max(stalls) >= 4.0          # the writes waited for the transition ...
    assert max(stalls) <= 6.5          # ... and no longer than it lasted (+ one retry)
    assert unit.served["b"] > 0 and table(mdev)[0][:4] == (PORTAL_B, 50, True,
                                                           "active/optimized")
    await close(mdev, sa, sb)


@TRANSITION_FAILED
async def test_a_transition_longer_than_the_timeout_fails_the_command(nursery, autojump_clock):
    unit = AluaUnit(groups={1: AO, 2: UNAVAILABLE})
    mdev, sa, sb = await two_ports(nursery, unit, alua_transition_timeout=10)
    await mdev.read(0, BS)
    unit.groups[1] = TRANSITIONING      # for ever
    start = trio.current_time()
    with pytest.raises(ScsiError) as info:
        await mdev.read(0, BS)
    took = trio.current_time() - start
    assert alua_not_ready(info.value) == "transitioning"
    assert 10 <= took <= 11             # the timeout, plus at most one retry interval
    assert unit.served == {"a": 1}
    await close(mdev, sa, sb)


def conflict_target() -> tuple[FakeTarget, list]:
    seen: list = []

    def on_command(conn, cmd):
        seen.append(cmd.cdb[0])
        return [ScsiResponse(itt=cmd.itt, response=0, status=0x18, exp_data_sn=0,
                             bidi_read_residual_count=0, residual_count=0, overflow=False,
                             underflow=False, bidi_overflow=False, bidi_underflow=False,
                             **conn.sns())]
    return FakeTarget(target_name=IQN, on_command=on_command), seen


async def test_reservation_conflict_goes_to_the_caller_and_is_no_path_failure(
        nursery, autojump_clock):
    (ta, seen_a), (tb, seen_b) = conflict_target(), conflict_target()
    sa, sb = await connect(ta, PORTAL_A, nursery), await connect(tb, PORTAL_B, nursery)
    la, lb = Lun(sa, 1), Lun(sb, 1)
    for dev in (la, lb):
        dev.block_size, dev.num_blocks, dev.wwn = BS, 64, WWN
    for policy in ("failover", "round-robin"):
        mdev = MultipathDevice(la, policy=policy)
        mdev.group.add(Path(IQN, PORTAL_A, la, 0))
        mdev.group.add(Path(IQN, PORTAL_B, lb, 1))
        seen_a.clear(), seen_b.clear()
        with pytest.raises(ScsiError) as info:
            await mdev.write(0, b"w" * BS)
        assert is_reservation_conflict(info.value)
        assert info.value.status == ScsiStatus.RESERVATION_CONFLICT
        assert len(seen_a) + len(seen_b) == 1       # one command, not tried on another path
        states = mdev.path_states()
        assert [(s.dm_state, s.errors, s.failures) for s in states] == [("active", 0, 0)] * 2
        assert mdev.switches == 0
        mdev.group.close()
    await sa.close()
    await sb.close()


# ---------------------------------------------------------------------------------------------
# Ports found in standby: SPC-4 lets a standby port refuse READ CAPACITY (NOT READY 04/0B, as
# LIO did before 3.14 and some arrays still do). The LUN behind it is still a path of the
# logical unit (multipath's "ghost"), found by the Initiator as a mount finds it.

def initiator_to(nursery, unit: AluaUnit, groups: dict[str, int]):
    """An Initiator whose portals (127.0.0.1, 127.0.0.2, ... in ``groups``' order) are the
    ports of ``unit`` named in ``groups`` (port name -> target port group)."""
    from iscsifs.initiator import Initiator
    portals = {}
    for i, (name, group) in enumerate(groups.items()):
        portals[f"127.0.0.{i + 1}"] = unit.target(name, group, iqn=IQN).socketpair_connector(
            nursery)

    async def connect(portal):
        return await portals[portal.host](portal)
    pairs = [(IQN, Portal(host, 3260)) for host in portals]
    return Initiator(initiator_name=INITIATOR, portals=[p for _, p in pairs], nursery=nursery,
                     timeouts=Timeouts(noop_out_interval=0), connector=connect), pairs


@pytest.mark.parametrize("order", ["active first", "standby first"])
async def test_a_port_in_standby_at_discovery_is_a_path_and_takes_over(nursery, autojump_clock,
                                                                       order, caplog):
    caplog.set_level(logging.INFO, logger="iscsifs.multipath")
    unit = AluaUnit(groups={1: AO, 2: STANDBY})
    ports = {"a": 1, "b": 2} if order == "active first" else {"b": 2, "a": 1}
    init, pairs = initiator_to(nursery, unit, ports)
    [mdev] = await init.multipath(pairs)
    assert mdev.size == len(unit.data)
    assert unit.not_ready.get(("b", STANDBY), 0) >= 1       # its READ CAPACITY was refused
    portal_a = Portal("127.0.0.1" if order == "active first" else "127.0.0.2", 3260)
    portal_b = Portal("127.0.0.2" if order == "active first" else "127.0.0.1", 3260)
    assert table(mdev) == [(portal_a, 50, True, "active/optimized", "ready"),
                           (portal_b, 1, False, "standby", "ghost")]
    added = [r.getMessage().split(": path ")[1] for r in caplog.records
             if " added (" in r.getMessage()]
    assert sorted(added) == sorted([f"{portal_a.address} {IQN} lun 1 added (ready)",
                                    f"{portal_b.address} {IQN} lun 1 added (ghost)"])
    # its raw file is the same logical unit: the same size
    luns = {p: {e.lun: e.device for e in await init.luns(IQN, p)} for p in (portal_a, portal_b)}
    assert luns[portal_b][1].size == luns[portal_a][1].size == len(unit.data)

    assert await mdev.write(4096, b"a" * 4096) == 4096
    unit.set_state(1, STANDBY)          # the other controller takes over
    unit.set_state(2, AO)
    assert await mdev.write(8192, b"b" * 4096) == 4096
    assert await mdev.read(4096, 8192) == b"a" * 4096 + b"b" * 4096
    assert unit.data[4096:12288] == b"a" * 4096 + b"b" * 4096
    assert unit.served == {"a": 1, "b": 2}
    assert table(mdev) == [(portal_b, 50, True, "active/optimized", "ready"),
                           (portal_a, 1, False, "standby", "ghost")]
    assert mdev.switches == 1
    await init.aclose()


async def test_every_port_in_standby_at_discovery_gives_the_size_once_one_is_active(
        nursery, autojump_clock):
    unit = AluaUnit(groups={1: STANDBY, 2: STANDBY})
    init, pairs = initiator_to(nursery, unit, {"a": 1, "b": 2})
    [mdev] = await init.multipath(pairs)
    assert mdev.size == 0                       # nobody could say yet
    assert [s.alua_state for s in mdev.path_states()] == ["standby", "standby"]
    unit.set_state(2, AO)
    [again] = await init.multipath(pairs)       # the next listing of by-id/
    assert again is mdev and mdev.size == len(unit.data)
    assert await mdev.read(0, 4096) == unit.data[:4096]
    assert unit.served == {"b": 1}
    await init.aclose()
