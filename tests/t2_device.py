"""A LUN over a session to the scripted target: how byte ranges become commands."""

from __future__ import annotations

import pytest
import trio

from fake_lu import FakeLU, LuTable, respond, sense_data
from fake_target import FakeTarget, good_read
from iscsifs.core.names import Portal
from iscsifs.core.pdu import DataIn, ScsiResponse
from iscsifs.device import DEFAULT_MAX_COMMAND, Lun, choose_provisioning, granule_range
from iscsifs.errors import NoSpace, NotSupported, SessionFailed
from iscsifs.net.session import Session, Timeouts
from iscsifs.scsi.parse import BlockLimits, LogicalBlockProvisioning
from iscsifs.scsi.sense import ScsiError, SenseKey

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
MiB = 1 << 20


def serve_reads(conn, cmd, pdu_size: int = 65536):
    """Answer any READ(10) with its bytes (byte at LUN offset x is x % 251), in Data-In PDUs
    of ``pdu_size`` bytes, the status in the last one."""
    lba = int.from_bytes(cmd.cdb[2:6], "big")
    n = cmd.expected_data_transfer_length
    data = bytes((lba * 512 + i) % 251 for i in range(n))
    pdus = []
    for sn, off in enumerate(range(0, n, pdu_size)):
        last = off + pdu_size >= n
        pdus.append(DataIn(itt=cmd.itt, ttt=0xFFFFFFFF, lun=0, data_sn=sn, buffer_offset=off,
                           residual_count=0, final=last, acknowledge=False, overflow=False,
                           underflow=False, status_present=last, status=0,
                           data=data[off:off + pdu_size], **conn.sns(last)))
    return pdus


async def lun_over_fake(target: FakeTarget, nursery, **kw) -> Lun:
    session = await Session.connect(Portal("127.0.0.1", 3260), target.target_name,
                                    initiator_name=INITIATOR, nursery=nursery,
                                    timeouts=Timeouts(noop_out_interval=0),
                                    connector=target.socketpair_connector(nursery))
    lun = Lun(session, 1, **kw)
    lun.block_size, lun.num_blocks = 512, 16 * MiB // 512     # as READ CAPACITY would say
    return lun


@pytest.mark.parametrize("max_command, commands", [(DEFAULT_MAX_COMMAND, 2), (MiB, 1),
                                                    (64 * 1024, 16)])
async def test_a_large_read_is_split_into_concurrent_commands(nursery, autojump_clock,
                                                              max_command, commands):
    target = FakeTarget(on_command=serve_reads)
    lun = await lun_over_fake(target, nursery, max_command_bytes=max_command)
    with trio.fail_after(10):
        data = await lun.read(3 * MiB, MiB)
    assert data == bytes((3 * MiB + i) % 251 for i in range(MiB))
    reads = [p for _, p in target.commands_seen(0x28)]
    assert len(reads) == commands
    assert {p.expected_data_transfer_length for p in reads} == {MiB // commands}
    await lun.session.close()


def read_only_at_the_target(state: dict):
    """Script: MODE SENSE(6) reports WP from ``state["wp"]``; a WRITE while it is set gets
    CHECK CONDITION, DATA PROTECT / WRITE PROTECTED (27/00), as tgt answers after
    ``tgtadm --op update --mode logicalunit --params readonly=1``."""
    def on_command(conn, cmd):
        if cmd.cdb[0] == 0x1A:                              # MODE SENSE(6)
            return good_read(conn, cmd, bytes([3, 0, 0x80 if state["wp"] else 0, 0]))
        status, data = 0, b""
        if cmd.cdb[0] in (0x2A, 0x8A) and state["wp"]:
            sense = bytes([0x70, 0, 0x07, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x27, 0x00, 0, 0, 0, 0])
            status, data = 2, len(sense).to_bytes(2, "big") + sense
        return [ScsiResponse(itt=cmd.itt, response=0, status=status, exp_data_sn=0,
                             bidi_read_residual_count=0, residual_count=0, overflow=False,
                             underflow=False, bidi_overflow=False, bidi_underflow=False,
                             data=data, **conn.sns())]
    return on_command


async def test_data_protect_on_a_write_rereads_the_write_protect_bit(nursery, autojump_clock):
    state = {"wp": False}
    target = FakeTarget(on_command=read_only_at_the_target(state))
    lun = await lun_over_fake(target, nursery)
    await lun.read_write_protect()
    assert not lun.write_protected
    with trio.fail_after(10):
        assert await lun.write(0, b"a" * 512) == 512
        state["wp"] = True                                   # readonly=1 at the target
        with pytest.raises(ScsiError) as info:
            await lun.write(512, b"b" * 512)
    assert info.value.sense.key == SenseKey.DATA_PROTECT
    assert lun.write_protected                               # MODE SENSE was asked again
    assert len(target.commands_seen(0x1A)) == 2
    # a write split into concurrent commands fails the same way (an exception group)
    lun.write_protected = False
    with trio.fail_after(10), pytest.raises(Exception) as info:
        await lun.write(0, bytes(2 * MiB))
    assert lun.write_protected
    await lun.session.close()

# -- discard -----------------------------------------------------------------------------------
class Disk:
    """An in-memory LUN for the scripted target: READ(10), WRITE(10) (immediate data only),
    UNMAP and WRITE SAME(16); ``refuse`` answers those two with ILLEGAL REQUEST 20/00."""

    def __init__(self, blocks: int, block_size: int = 512, refuse: bool = False):
        self.block_size = block_size
        self.data = bytearray(bytes(range(251)) * (blocks * block_size // 251 + 1))
        del self.data[blocks * block_size:]
        self.refuse = refuse
        self.unmapped: list[tuple[int, int]] = []       # (lba, blocks) per descriptor
        self.same: list[tuple[int, int]] = []           # (lba, blocks) written by WRITE SAME

    def __call__(self, conn, cmd):
        op, bs = cmd.cdb[0], self.block_size
        if op == 0x28:
            lba, n = int.from_bytes(cmd.cdb[2:6], "big"), int.from_bytes(cmd.cdb[7:9], "big")
            return good_read(conn, cmd, bytes(self.data[lba * bs:(lba + n) * bs]))
        if op == 0x2A:
            lba = int.from_bytes(cmd.cdb[2:6], "big")
            assert len(cmd.data) == cmd.expected_data_transfer_length     # immediate only
            self.data[lba * bs:lba * bs + len(cmd.data)] = cmd.data
        elif op in (0x42, 0x93) and self.refuse:
            sense = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 0])
            return [response(conn, cmd, 2, len(sense).to_bytes(2, "big") + sense)]
        elif op == 0x42:
            params = bytes(cmd.data)
            assert int.from_bytes(params[0:2], "big") == len(params) - 2
            assert int.from_bytes(params[2:4], "big") == len(params) - 8
            for off in range(8, len(params), 16):
                lba = int.from_bytes(params[off:off + 8], "big")
                n = int.from_bytes(params[off + 8:off + 12], "big")
                self.unmapped.append((lba, n))
                self.data[lba * bs:(lba + n) * bs] = bytes(n * bs)
        elif op == 0x93:
            assert cmd.cdb[1] in (0x00, 0x08) and len(cmd.data) == bs
            lba, n = int.from_bytes(cmd.cdb[2:10], "big"), int.from_bytes(cmd.cdb[10:14], "big")
            if cmd.cdb[1] == 0x08:                                        # UNMAP bit
                assert bytes(cmd.data) == bytes(bs)                       # with zeros
                self.unmapped.append((lba, n))
            else:
                self.same.append((lba, n))
            self.data[lba * bs:(lba + n) * bs] = bytes(cmd.data) * n
        return [response(conn, cmd, 0)]


def response(conn, cmd, status: int, data: bytes = b""):
    return ScsiResponse(itt=cmd.itt, response=0, status=status, exp_data_sn=0,
                        bidi_read_residual_count=0, residual_count=0, overflow=False,
                        underflow=False, bidi_overflow=False, bidi_underflow=False, data=data,
                        **conn.sns())


async def discard_lun(nursery, disk: Disk, *, lbpu=True, lbpws=True, lbpme=True,
                      max_unmap=0xFFFFFFFF, descriptors=0xFFFFFFFF, granularity=0,
                      alignment=None, max_write_same=0, lbprz=None) -> tuple[Lun, FakeTarget]:
    target = FakeTarget(on_command=disk)
    lun = await lun_over_fake(target, nursery)
    lun.block_size = disk.block_size
    lun.num_blocks = len(disk.data) // disk.block_size
    # as VPD B0h, B2h and READ CAPACITY(16) would say
    lun.block_limits = BlockLimits(max_unmap_lba_count=max_unmap,
                                   max_unmap_block_descriptor_count=descriptors,
                                   optimal_unmap_granularity=granularity,
                                   unmap_granularity_alignment=alignment,
                                   max_write_same_length=max_write_same)
    lbprz = lbpme if lbprz is None else lbprz
    lun.lbp = LogicalBlockProvisioning(lbpu=lbpu, lbpws=lbpws, lbprz_field=int(lbprz),
                                       provisioning_type=2 if lbpme else 0)
    lun.lbpme, lun.lbprz = lbpme, lbprz
    return lun, target


def ops(target) -> list[int]:
    return [p.cdb[0] for _, p in target.commands_seen()]


async def test_discard_unmaps_whole_blocks_and_zeroes_the_edges(nursery, autojump_clock):
    disk = Disk(64)
    before = bytes(disk.data)
    lun, target = await discard_lun(nursery, disk)
    with trio.fail_after(10):
        assert await lun.discard(1000, 20000) == (39 * 512, 20000 - 39 * 512)
    assert disk.unmapped == [(2, 39)]                      # blocks 2..40: whole ones only
    assert disk.data[1000:21000] == bytes(20000)
    assert disk.data[:1000] == before[:1000] and disk.data[21000:] == before[21000:]
    # the partial edge blocks were read, merged and written back
    assert sorted(ops(target)) == sorted([0x42, 0x28, 0x2A, 0x28, 0x2A])
    await lun.session.close()


async def test_discard_inside_one_block_only_writes_zeros(nursery, autojump_clock):
    disk = Disk(8)
    before = bytes(disk.data)
    lun, target = await discard_lun(nursery, disk)
    with trio.fail_after(10):
        assert await lun.discard(600, 100) == (0, 100)
    assert disk.unmapped == [] and 0x42 not in ops(target)
    assert disk.data[600:700] == bytes(100)
    assert disk.data[:600] + disk.data[700:] == before[:600] + before[700:]
    await lun.session.close()


async def test_discard_splits_unmap_at_the_max_lba_count(nursery, autojump_clock):
    disk = Disk(100)
    lun, target = await discard_lun(nursery, disk, max_unmap=16, descriptors=1)
    with trio.fail_after(10):
        assert await lun.discard(0, 100 * 512) == (100 * 512, 0)
    assert disk.unmapped == [(0, 16), (16, 16), (32, 16), (48, 16), (64, 16), (80, 16),
                             (96, 4)]
    assert set(ops(target)) == {0x42}
    assert all(len(p.data) == 8 + 16 for _, p in target.commands_seen(0x42))
    await lun.session.close()


async def test_discard_honours_granularity_and_alignment(nursery, autojump_clock):
    # granules of 8 blocks starting at LBA 3: 3, 11, 19, 27, ...
    disk = Disk(64)
    lun, target = await discard_lun(nursery, disk, granularity=8, alignment=3)
    with trio.fail_after(10):
        unmapped, zeroed = await lun.discard(512, 30 * 512)         # blocks 1..30
    assert disk.unmapped == [(3, 24)]                               # granules 3-10, 11-18, 19-26
    assert (unmapped, zeroed) == (24 * 512, 6 * 512)                # 1-2 and 27-30 zeroed
    assert disk.data[512:31 * 512] == bytes(30 * 512)
    assert 0x28 not in ops(target)         # whole blocks outside a granule: no read needed
    await lun.session.close()


async def test_discard_falls_back_to_write_same_16(nursery, autojump_clock):
    disk = Disk(64)
    lun, target = await discard_lun(nursery, disk, lbpu=False, max_write_same=10)
    assert lun.provisioning.method == "write_same_16"
    with trio.fail_after(10):
        await lun.discard(0, 25 * 512)
    assert disk.unmapped == [(0, 10), (10, 10), (20, 5)]
    assert set(ops(target)) == {0x93}
    await lun.session.close()


@pytest.mark.parametrize("kw", [dict(lbpme=False), dict(lbpu=False, lbpws=False),
                                dict(lbpws=False, max_unmap=0)])
async def test_discard_without_a_way_to_unmap_changes_nothing(nursery, autojump_clock, kw):
    disk = Disk(16)
    before = bytes(disk.data)
    lun, target = await discard_lun(nursery, disk, **kw)
    assert lun.provisioning.method is None
    with pytest.raises(NotSupported), trio.fail_after(10):
        await lun.discard(100, 4000)
    assert disk.data == before and target.commands_seen() == []
    await lun.session.close()


async def test_discard_refused_by_the_target_is_not_supported(nursery, autojump_clock):
    disk = Disk(16, refuse=True)
    lun, target = await discard_lun(nursery, disk)
    with pytest.raises(NotSupported, match="refused UNMAP"), trio.fail_after(10):
        await lun.discard(0, 4096)
    await lun.session.close()


async def test_discard_past_the_end_or_negative_changes_nothing(nursery, autojump_clock):
    disk = Disk(16)
    lun, target = await discard_lun(nursery, disk)
    with trio.fail_after(10):
        with pytest.raises(NoSpace):
            await lun.discard(8000, 193)           # 8193 > 8192
        with pytest.raises(ValueError):
            await lun.discard(-1, 10)
        assert await lun.discard(8192, 0) == (0, 0)
    assert target.commands_seen() == []
    await lun.session.close()


# -- fallocate: punch_hole and zero_range -----------------------------------------------------
async def test_punch_hole_and_zero_range_unmap_where_the_lun_reads_zeros(nursery,
                                                                         autojump_clock):
    disk = Disk(64)
    before = bytes(disk.data)
    lun, target = await discard_lun(nursery, disk)                 # LBPRZ: a discard each
    with trio.fail_after(10):
        assert await lun.punch_hole(1000, 20000) == (39 * 512, 20000 - 39 * 512)
        assert await lun.zero_range(24 * 1024, 8192) == (8192, 0)
    assert disk.unmapped == [(2, 39), (48, 16)] and disk.same == []
    assert disk.data[1000:21000] == bytes(20000) and disk.data[24576:32768] == bytes(8192)
    assert disk.data[21000:24576] == before[21000:24576]
    await lun.session.close()


async def test_zero_range_writes_same_zeros_on_a_lun_that_cannot_unmap(nursery,
                                                                        autojump_clock):
    disk = Disk(64)
    before = bytes(disk.data)
    lun, target = await discard_lun(nursery, disk, lbpme=False, max_write_same=16)
    with trio.fail_after(10):
        assert await lun.zero_range(1000, 20000) == (0, 20000)
    assert disk.same == [(2, 16), (18, 16), (34, 7)] and disk.unmapped == []
    assert disk.data[1000:21000] == bytes(20000)
    assert disk.data[:1000] == before[:1000] and disk.data[21000:] == before[21000:]
    # WRITE SAME first, then the partial edge blocks by read-modify-write
    assert ops(target)[:3] == [0x93] * 3 and sorted(ops(target)[3:]) == [0x28, 0x28, 0x2A, 0x2A]
    await lun.session.close()


async def test_punch_hole_without_lbprz_sends_write_same_with_unmap(nursery, autojump_clock):
    disk = Disk(64)
    lun, target = await discard_lun(nursery, disk, lbprz=False)
    with trio.fail_after(10):
        assert await lun.punch_hole(512, 10 * 512) == (10 * 512, 0)
    # the target deallocates only what then reads as the zeros it was sent
    assert disk.unmapped == [(1, 10)] and set(ops(target)) == {0x93}
    await lun.session.close()


@pytest.mark.parametrize("kw, match", [
    (dict(lbpme=False), "supports neither UNMAP nor WRITE SAME"),
    (dict(lbprz=False, lbpws=False), "need not read as zeros")])
async def test_punch_hole_that_cannot_deallocate_changes_nothing(nursery, autojump_clock, kw,
                                                                 match):
    disk = Disk(16)
    before = bytes(disk.data)
    lun, target = await discard_lun(nursery, disk, **kw)
    with pytest.raises(NotSupported, match=match), trio.fail_after(10):
        await lun.punch_hole(100, 4000)
    assert disk.data == before and target.commands_seen() == []
    await lun.session.close()


async def test_zero_range_refused_write_same_changes_nothing(nursery, autojump_clock):
    disk = Disk(16, refuse=True)
    before = bytes(disk.data)
    lun, target = await discard_lun(nursery, disk, lbpme=False)
    with trio.fail_after(10):
        with pytest.raises(NotSupported, match="refused WRITE SAME"):
            await lun.zero_range(100, 4000)
        assert ops(target) == [0x93]            # nothing else was sent: the edges are intact
        with pytest.raises(NotSupported):       # and it is not asked again
            await lun.zero_range(0, 512)
        with pytest.raises(NoSpace):
            await lun.zero_range(8000, 193)
    assert disk.data == before and ops(target) == [0x93]
    await lun.session.close()


@pytest.mark.parametrize("first, end, g, a, expected", [
    (0, 10, 1, 0, (0, 10)), (2, 21, 1, 0, (2, 21)), (1, 31, 8, 3, (3, 27)),
    (5, 13, 4, 0, (8, 12)), (5, 11, 4, 0, (5, 5)), (7, 7, 1, 0, (7, 7)),
    (0, 100, 16, 15, (15, 95)),
])
def test_granule_range(first, end, g, a, expected):
    assert granule_range(first, end, g, a) == expected


def test_provisioning_choice_follows_linux_sd():
    limits = BlockLimits(max_unmap_lba_count=0xFFFFFFFF, max_unmap_block_descriptor_count=1,
                         optimal_unmap_granularity=8, unmap_granularity_alignment=10)
    thin = LogicalBlockProvisioning(lbpu=True, lbpws=True, lbprz_field=1, provisioning_type=2)
    p = choose_provisioning(True, False, limits, thin)
    assert (p.method, p.max_blocks, p.granularity, p.alignment, p.lbprz) == \
        ("unmap", 0x7FFFFF, 8, 2, True)            # B2's LBPRZ counts too
    assert choose_provisioning(False, True, limits, thin).method is None    # no LBPME
    ws = LogicalBlockProvisioning(lbpws=True)
    assert choose_provisioning(True, False, limits, ws).method == "write_same_16"
    # no B2 page: UNMAP if B0 allows it, else WRITE SAME(16)
    assert choose_provisioning(True, False, limits, None).method == "unmap"
    assert choose_provisioning(True, False, None, None).method == "write_same_16"
    small = BlockLimits(max_unmap_lba_count=2048, max_unmap_block_descriptor_count=4)
    assert choose_provisioning(True, True, small, thin).max_blocks == 2048
    none = choose_provisioning(False, False, None, None)
    assert (none.method, none.max_blocks, none.provisioning_type) == (None, 0, None)


async def test_a_write_that_fails_below_scsi_raises_that_error(nursery, autojump_clock):
    # the DATA PROTECT check looked for sense in every error and broke on the others
    target = FakeTarget(on_command=serve_reads)
    lun = await lun_over_fake(target, nursery)
    await lun.session.close()
    with pytest.raises(SessionFailed):
        await lun.write(0, b"a" * 512)
    with pytest.raises(SessionFailed):
        await lun.write(100, b"a" * 10)       # read-modify-write: fails on the read


# -- short transfers ---------------------------------------------------------------------------
def data_in_status(conn, cmd, data: bytes, *, residual=0, underflow=False):
    return [DataIn(itt=cmd.itt, ttt=0xFFFFFFFF, lun=0, data_sn=0, buffer_offset=0,
                   residual_count=residual, final=True, acknowledge=False, overflow=False,
                   underflow=underflow, status_present=True, status=0, data=data,
                   **conn.sns())]


def short_once(disk: Disk, short: dict):
    """``disk``, except that the first READ (or WRITE) of more than one block is answered GOOD
    with an underflow after half of its blocks (``short["op"]``: 0x28 or 0x2A)."""
    def on_command(conn, cmd):
        op, bs = cmd.cdb[0], disk.block_size
        lba, n = int.from_bytes(cmd.cdb[2:6], "big"), int.from_bytes(cmd.cdb[7:9], "big")
        if op == short["op"] and n > 1 and not short.get("done"):
            short["done"] = True
            half = n // 2 * bs
            if op == 0x28:
                return data_in_status(conn, cmd, bytes(disk.data[lba * bs:lba * bs + half]),
                                      residual=n * bs - half, underflow=True)
            disk.data[lba * bs:lba * bs + half] = cmd.data[:half]
            return [ScsiResponse(itt=cmd.itt, response=0, status=0, exp_data_sn=0,
                                 bidi_read_residual_count=0, residual_count=n * bs - half,
                                 overflow=False, underflow=True, bidi_overflow=False,
                                 bidi_underflow=False, **conn.sns())]
        return disk(conn, cmd)
    return on_command


async def test_an_underflow_on_a_read_is_retried_for_the_remainder(nursery, autojump_clock):
    disk = Disk(64)
    target = FakeTarget(on_command=short_once(disk, {"op": 0x28}))
    lun = await lun_over_fake(target, nursery)
    lun.num_blocks = 64
    with trio.fail_after(10):
        data = await lun.read(512 * 8, 512 * 8)
    assert data == disk.data[512 * 8:512 * 16]                 # no zeros for the rest
    reads = [(int.from_bytes(p.cdb[2:6], "big"), int.from_bytes(p.cdb[7:9], "big"))
             for _, p in target.commands_seen(0x28)]
    assert reads == [(8, 8), (12, 4)]
    await lun.session.close()


async def test_an_underflow_on_a_write_is_retried_for_the_remainder(nursery, autojump_clock):
    disk = Disk(64)
    target = FakeTarget(on_command=short_once(disk, {"op": 0x2A}))
    lun = await lun_over_fake(target, nursery)
    lun.num_blocks = 64
    new = bytes(range(256)) * 16
    with trio.fail_after(10):
        assert await lun.write(512 * 8, new) == len(new)
    assert disk.data[512 * 8:512 * 16] == new
    writes = [(int.from_bytes(p.cdb[2:6], "big"), int.from_bytes(p.cdb[7:9], "big"))
              for _, p in target.commands_seen(0x2A)]
    assert writes == [(8, 8), (12, 4)]
    await lun.session.close()


@pytest.mark.expect_log("connection to .* failed: .*GOOD", logger="iscsifs.net.session")
@pytest.mark.expect_log("cannot re-issue|failed: the connection broke", optional=True)
async def test_a_short_read_without_underflow_is_never_written_back(nursery, autojump_clock):
    # a read-modify-write of a partial block whose READ is answered GOOD with no data and no
    # underflow: that is no data, and zeros must not go back over the block
    disk = Disk(16)
    before = bytes(disk.data)

    def on_command(conn, cmd):
        if cmd.cdb[0] == 0x28:
            return data_in_status(conn, cmd, b"")
        return disk(conn, cmd)

    target = FakeTarget(on_command=on_command)
    lun = await lun_over_fake(target, nursery)
    lun.num_blocks = 16
    with trio.fail_after(60), pytest.raises(Exception):
        await lun.write(100, b"new")
    assert target.commands_seen(0x2A) == []            # nothing was written back
    assert bytes(disk.data) == before
    await lun.session.close()


# -- capacity ----------------------------------------------------------------------------------
def capacity_target(rc16_failures: int | None):
    """READ CAPACITY(16) fails with ILLEGAL REQUEST the first ``rc16_failures`` times (None:
    always), then says 2**33 blocks of 512 bytes; READ CAPACITY(10) says FFFFFFFFh: "the
    capacity does not fit, use READ CAPACITY(16)" (SBC-3 §5.15.2)."""
    calls = {"rc16": 0}

    def on_command(conn, cmd):
        if cmd.cdb[0] == 0x9E and cmd.cdb[1] & 0x1F == 0x10:
            calls["rc16"] += 1
            if rc16_failures is None or calls["rc16"] <= rc16_failures:
                sense = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0])
                return [response(conn, cmd, 2, len(sense).to_bytes(2, "big") + sense)]
            data = (2 ** 33 - 1).to_bytes(8, "big") + (512).to_bytes(4, "big") + bytes(20)
            return good_read(conn, cmd, data)
        if cmd.cdb[0] == 0x25:
            return good_read(conn, cmd, bytes([0xFF] * 4) + (512).to_bytes(4, "big"))
        return []
    return on_command, calls


async def test_read_capacity_10_saying_ffffffff_asks_read_capacity_16_again(nursery,
                                                                            autojump_clock):
    on_command, calls = capacity_target(rc16_failures=1)
    lun = await lun_over_fake(FakeTarget(on_command=on_command), nursery)
    with trio.fail_after(10):
        await lun.read_capacity()
    assert (lun.num_blocks, lun.block_size) == (2 ** 33, 512)
    assert calls["rc16"] == 2
    await lun.session.close()


async def test_a_capacity_that_only_read_capacity_16_can_say_is_never_guessed(nursery,
                                                                              autojump_clock):
    on_command, calls = capacity_target(rc16_failures=None)
    lun = await lun_over_fake(FakeTarget(on_command=on_command), nursery)
    lun.num_blocks = 0
    with trio.fail_after(10), pytest.raises(ScsiError):
        await lun.read_capacity()
    assert lun.num_blocks != 2 ** 32           # not sized at "exactly 2**32 blocks"
    await lun.session.close()


@pytest.mark.parametrize("how", ["cancelled caller", "failed sibling chunk"])
async def test_a_write_given_up_by_its_caller_keeps_its_blocks_until_it_ended(
        nursery, autojump_clock, how):
    # simulator seed 7192: a read-modify-write whose caller was cancelled while its WRITE
    # was still live at the target released its range lock at once; a later write to the
    # same block went through, and then the first WRITE landed with the stale bytes it had
    # read around its own, undoing an acknowledged write. A write runs to its end with its
    # blocks locked, whatever becomes of its caller; a failed chunk does not cancel the others
    lu = FakeLU("beaf11", "60000000000000000e00000000010001", blocks=64)
    table = LuTable({1: lu})
    held: list = []
    first_write = {"cancelled caller": lambda cmd: int.from_bytes(cmd.cdb[2:6], "big") == 0,
                   "failed sibling chunk": lambda cmd: int.from_bytes(cmd.cdb[2:6], "big") == 1}
    table.hold = lambda conn, cmd: cmd.cdb[0] == 0x2A and not held and \
        first_write[how](cmd) and not held.append((conn, cmd))
    if how == "failed sibling chunk":
        failing = table.__call__

        def on_command(conn, cmd):          # the chunk at LBA 0 fails at once
            if cmd.cdb[0] == 0x2A and int.from_bytes(cmd.cdb[2:6], "big") == 0:
                return [respond(conn, cmd, 2, sense_data(0x03, 0x0C, 0x00))]
            return failing(conn, cmd)
    target = FakeTarget(on_command=table if how == "cancelled caller" else on_command)
    lun = await lun_over_fake(target, nursery, max_command_bytes=512)
    lun.num_blocks = 64
    await lun.read(0, 512)                   # the UNIT ATTENTION 29/00 of the new nexus
    before = bytes(lu.data[:1024])
    outcome: dict = {}

    async def first():
        try:
            with trio.move_on_after(1):      # the caller gives up (a cancelled request)
                if how == "cancelled caller":
                    await lun.write(100, b"A" * 300)            # reads block 0, writes it
                else:
                    await lun.write(0, b"A" * 1024)             # blocks 0 and 1, two chunks
        except Exception as exc:
            outcome["first"] = exc
        outcome["first_done"] = trio.current_time()

    async def second():
        await lun.write(450, b"B" * 40) if how == "cancelled caller" \
            else await lun.write(600, b"B" * 40)
        outcome["second_done"] = trio.current_time()

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            assert held                                         # its WRITE is at the target
            n.start_soon(second)
            await trio.sleep(5)
            # the second write waits for the blocks: nothing of it reached the target
            assert "second_done" not in outcome
            conn, cmd = held[0]
            await conn.send(*table._disk(conn, cmd, lu, 0x2A))  # the held WRITE lands now
    # the first caller heard of its write only once it had ended, before the second went
    assert outcome["first_done"] <= outcome["second_done"]
    if how == "cancelled caller":
        want = before[:100] + b"A" * 300 + before[400:450] + b"B" * 40 + before[490:1024]
    else:
        assert isinstance(outcome["first"], Exception)          # the LBA 0 chunk failed
        want = before[:512] + b"A" * 88 + b"B" * 40 + b"A" * (1024 - 640)
    assert bytes(lu.data[:1024]) == want
    await lun.session.close()


@pytest.mark.parametrize("initial_r2t", [False, True])
async def test_the_scripted_target_moves_data_as_a_real_target_does(nursery, autojump_clock,
                                                                    initial_r2t):
    """``FakeTarget(transfers=True)`` (what tests/t5_alua.py mounts): the data of a write
    comes as immediate data, unsolicited Data-Out and Data-Out answering its R2Ts (its
    MaxRecvDataSegmentLength is 8 KiB), and a read's Data-In in PDUs of at most our
    MaxRecvDataSegmentLength (our decoder refuses a longer one: the 512 KiB reads pass)."""
    from iscsifs.core.keys import LoginParams
    from iscsifs.core.pdu import DataOut

    lu = FakeLU(blocks=4 * MiB // 512)
    target = FakeTarget(on_command=LuTable({1: lu}), transfers=True)
    params = LoginParams(initial_r2t=initial_r2t, first_burst_length=65536,
                         max_recv_data_segment_length=65536)
    session = await Session.connect(Portal("127.0.0.1", 3260), target.target_name,
                                    initiator_name=INITIATOR, nursery=nursery, params=params,
                                    timeouts=Timeouts(noop_out_interval=0),
                                    connector=target.socketpair_connector(nursery))
    lun = Lun(session, 1)
    lun.block_size, lun.num_blocks = 512, lu.blocks
    data = bytes(range(256)) * (MiB // 256)
    with trio.fail_after(10):
        assert await lun.write(512, data) == MiB
        assert await lun.read(512, MiB) == data
    assert bytes(lu.data[512:512 + MiB]) == data
    assert [len(d) for _, d in lu.writes] == [512 * 1024] * 2    # max_command_bytes each
    outs = [p for _, p in target.received if isinstance(p, DataOut)]
    assert max(len(p.data) for p in outs) == 8192
    # each WRITE (the first one again after its UNIT ATTENTION 29/00): 8 KiB immediate, the
    # rest of the 64 KiB first burst unsolicited unless InitialR2T=Yes, the rest on R2Ts
    writes = [p.itt for _, p in target.commands_seen(0x2A)]
    assert len(writes) == 3
    for itt in writes:
        mine = [p for p in outs if p.itt == itt]
        free = sum(len(p.data) for p in mine if p.ttt == 0xFFFFFFFF)
        assert free == (0 if initial_r2t else 65536 - 8192)
        assert sum(len(p.data) for p in mine) == 512 * 1024 - 8192
    assert not target.live[1].writes                    # nothing left half-gathered
    await session.close()
