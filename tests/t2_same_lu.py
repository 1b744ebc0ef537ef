"""One logical unit reached through several files at once (``raw`` and ``by-id``, the ``raw``
files of two portals): what the Initiator shares between them. Real Initiator, sessions, Luns
and multipath device over socketpairs to scripted targets serving the same blocks, on trio's
MockClock.
"""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

from fake_lu import FakeLU, LuTable
from fake_target import FakeTarget
from iscsifs.core.names import Portal
from iscsifs.core.pdu import LogoutRequest
from iscsifs.fs.errno_map import classify
from iscsifs.initiator import Initiator
from iscsifs.net.session import Timeouts

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
IQN = "iqn.2026-11.org.iscsifs.test:same-lu"
PORTAL_A = Portal("127.0.0.1", 3260)
PORTAL_B = Portal("127.0.0.2", 3260)
NAA = "60000000000000000e00000000010001"


def initiator(nursery, targets: dict[Portal, FakeTarget]) -> Initiator:
    connectors = {p.host: t.socketpair_connector(nursery) for p, t in targets.items()}

    async def connect(portal: Portal):
        return await connectors[portal.host](portal)

    return Initiator(initiator_name=INITIATOR, portals=list(targets), nursery=nursery,
                     timeouts=Timeouts(noop_out_interval=0), connector=connect)


async def one_lu_two_portals(nursery, **lu):
    """The same LU as LUN 1 behind two portals: (LU, initiator, raw A, raw B, by-id)."""
    shared = FakeLU("beaf11", NAA, **lu)
    init = initiator(nursery, {PORTAL_A: FakeTarget(target_name=IQN,
                                                    on_command=LuTable({1: shared})),
                               PORTAL_B: FakeTarget(target_name=IQN,
                                                    on_command=LuTable({1: shared}))})
    (mdev,) = await init.multipath([(IQN, PORTAL_A), (IQN, PORTAL_B)])
    raw_a = {e.lun: e.device for e in await init.luns(IQN, PORTAL_A)}[1]
    raw_b = {e.lun: e.device for e in await init.luns(IQN, PORTAL_B)}[1]
    for dev in (raw_a, raw_b):
        await dev.read(0, 512)           # each path's UNIT ATTENTION 29/00 taken
    return shared, init, raw_a, raw_b, mdev


@pytest.mark.parametrize("pair", ["raw and by-id", "two portals' raw", "by-id and raw B",
                                  "discard on by-id, write on raw"])
async def test_unaligned_updates_of_one_block_through_two_files_are_never_lost(
        nursery, autojump_clock, pair):
    shared, init, raw_a, raw_b, mdev = await one_lu_two_portals(nursery, thin=True)
    first, second = {"raw and by-id": (raw_a, mdev), "two portals' raw": (raw_a, raw_b),
                     "by-id and raw B": (mdev, raw_b),
                     "discard on by-id, write on raw": (mdev, raw_a)}[pair]
    before = bytes(shared.data[:1024])
    async with trio.open_nursery() as n:        # both read block 0, merge, write it back
        if pair.startswith("discard"):
            n.start_soon(first.discard, 100, 300)       # zeros over 100..400 of block 0
        else:
            n.start_soon(first.write, 100, b"A" * 300)
        n.start_soon(second.write, 450, b"B" * 40)
    fill = b"\0" if pair.startswith("discard") else b"A"
    want = before[:100] + fill * 300 + before[400:450] + b"B" * 40 + before[490:1024]
    assert bytes(shared.data[:1024]) == want
    await init.aclose()


def grow(lu: FakeLU, blocks: int) -> None:
    lu.data.extend(bytes((blocks - lu.blocks) * lu.block_size))
    lu.blocks = blocks


async def test_a_capacity_change_seen_through_by_id_reaches_the_paths(nursery, autojump_clock):
    shared = FakeLU("beaf11", NAA)
    table = LuTable({1: shared})
    init = initiator(nursery, {PORTAL_A: FakeTarget(target_name=IQN, on_command=table)})
    (mdev,) = await init.multipath([(IQN, PORTAL_A)])
    raw = {e.lun: e.device for e in await init.luns(IQN, PORTAL_A)}[1]
    await raw.read(0, 512)
    grow(shared, 128)
    table.ua(1, 0x2A, 0x09)              # CAPACITY DATA HAS CHANGED, to the next command
    await mdev.read(0, 512)              # by-id takes it
    assert mdev.capacity_changed
    await mdev.read_capacity()           # what the FUSE layer does next (refresh_capacity)
    assert mdev.size == raw.size == 128 * 512 and not raw.capacity_changed
    # the identity guard keeps the group's own path: by-id is still there, one path
    assert await init.multipath([(IQN, PORTAL_A)]) == [mdev]
    assert len(mdev.group.paths) == 1
    # and the other way round: raw sees it first; by-id takes the size it read at once
    grow(shared, 192)
    table.ua(1, 0x2A, 0x09)
    await raw.read(0, 512)
    assert raw.capacity_changed
    await raw.read_capacity()
    assert raw.size == mdev.size == 192 * 512 and not mdev.capacity_changed
    assert await init.multipath([(IQN, PORTAL_A)]) == [mdev]
    assert len(mdev.group.paths) == 1
    await init.aclose()


@pytest.mark.expect_log("no healthy path left", logger="iscsifs.multipath", optional=True)
@pytest.mark.parametrize("case", ["one path out", "every path out", "stale raw"])
async def test_a_path_that_comes_back_after_a_capacity_change_is_a_path_again(
        nursery, autojump_clock, caplog, case):
    # the simulator's seed 44: by-id's paths leave with a logout (rmdir of the target), the
    # LU grows meanwhile, and the LUN that comes back is judged against what by-id knew.
    # "one path out": by-id still has path A, which has not seen the change yet; "every path
    # out": by-id has no path that could have seen it; "stale raw": B's raw was opened
    # before the change and has not seen it yet, by-id has. Either way it is the same LU:
    # the path is added again and every file shows the new size
    shared = FakeLU("beaf11", NAA)
    tables = {PORTAL_A: LuTable({1: shared}), PORTAL_B: LuTable({1: shared})}
    init = initiator(nursery, {p: FakeTarget(target_name=IQN, on_command=t)
                               for p, t in tables.items()})
    pairs = [(IQN, PORTAL_A), (IQN, PORTAL_B)]
    (mdev,) = await init.multipath(pairs)
    await mdev.read(0, 512)
    await init.logout(IQN, PORTAL_B)
    if case == "every path out":
        await init.logout(IQN, PORTAL_A)
    if case == "stale raw":
        await init.luns(IQN, PORTAL_B)      # logged in again, raw opened: not a path yet
    grow(shared, 128)
    for table in tables.values():
        table.ua(1, 0x2A, 0x09)            # to each nexus, at its next command
    if case == "stale raw":
        await mdev.read(0, 512)             # by-id sees it through A, and re-reads
        await mdev.read_capacity()
        assert mdev.size == 128 * 512
    assert await init.multipath(pairs) == [mdev]
    assert [p.portal for p in mdev.group.paths] == [PORTAL_A, PORTAL_B]
    raws = [{e.lun: e.device for e in await init.luns(*pair)}[1] for pair in pairs]
    assert [p.device for p in mdev.group.paths] == raws
    assert mdev.size == raws[0].size == raws[1].size == 128 * 512
    assert "not used as a path" not in caplog.text
    # the new blocks are usable through by-id, on both paths
    assert await mdev.write(100 * 512, b"n" * 512) == 512
    assert shared.data[100 * 512:101 * 512] == b"n" * 512
    await init.aclose()


@pytest.mark.expect_log(f"LUN 1 of {IQN} at 127.0.0.2:3260 reports the identity naa.{NAA} but "
                        f"96 blocks instead of 64; not used as a path", logger="iscsifs.initiator")
async def test_two_lus_that_claim_one_identity_stay_apart(nursery, autojump_clock):
    # tgt derives its names from the target id and LUN number: LUN 1 of target 1 has the
    # same NAA name and serial on every tgtd. Read again, their capacities still differ
    lu_a, lu_b = FakeLU("beaf11", NAA), FakeLU("beaf11", NAA, blocks=96)
    init = initiator(nursery, {PORTAL_A: FakeTarget(target_name=IQN,
                                                    on_command=LuTable({1: lu_a})),
                               PORTAL_B: FakeTarget(target_name=IQN,
                                                    on_command=LuTable({1: lu_b}))})
    (mdev,) = await init.multipath([(IQN, PORTAL_A), (IQN, PORTAL_B)])
    assert [p.portal for p in mdev.group.paths] == [PORTAL_A] and mdev.size == 64 * 512
    raw_b = {e.lun: e.device for e in await init.luns(IQN, PORTAL_B)}[1]
    assert raw_b.size == 96 * 512
    await init.aclose()


@pytest.mark.parametrize("call", ["luns", "rescan"])
@pytest.mark.parametrize("ending", ["logout", "unmount"])
@pytest.mark.parametrize("during", ["login", "scan"])
async def test_a_listing_racing_a_logout_ends_cleanly_and_leaves_no_session(
        nursery, autojump_clock, call, ending, during):
    # rmdir of the target (logout) or unmount (aclose) while the listing's login, or its
    # REPORT LUNS, still runs
    table = LuTable({1: FakeLU("beaf11", NAA)})
    target = FakeTarget(target_name=IQN, on_command=table)
    inner = target.socketpair_connector(nursery)
    gate = trio.Event()

    async def slow_connect(portal: Portal):
        if during == "login":
            await gate.wait()
        return await inner(portal)

    if during == "scan":
        table.hold = lambda conn, cmd: cmd.cdb[0] == 0xA0 and not gate.is_set()
    init = Initiator(initiator_name=INITIATOR, portals=[PORTAL_A], nursery=nursery,
                     timeouts=Timeouts(noop_out_interval=0), connector=slow_connect)
    failed: list = []

    async def listing():
        try:
            await getattr(init, call)(IQN, PORTAL_A)
        except Exception as exc:
            failed.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(listing)
            await trio.testing.wait_all_tasks_blocked()
            if ending == "logout":
                await init.logout(IQN, PORTAL_A)
            else:
                await init.aclose()
            gate.set()
        while target.live:                  # the session it logged in is logged out again
            await trio.sleep(0.1)
    assert len(failed) == 1 and not isinstance(failed[0], KeyError)
    assert classify(failed[0]) == (errno.ENOENT, logging.INFO)     # a clean, quiet ENOENT
    assert any(isinstance(p, LogoutRequest) for _, p in target.received)
    assert init.logged_in_targets(PORTAL_A) == []
    await init.aclose()
