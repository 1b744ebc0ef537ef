"""A LUN over a session to the scripted target: how byte ranges become commands."""

from __future__ import annotations

import pytest
import trio

from fake_target import FakeTarget
from iscsifs.core.discovery import Portal
from iscsifs.core.pdu import DataIn, ScsiResponse
from iscsifs.device import DEFAULT_MAX_COMMAND, Lun
from iscsifs.net.session import Session, Timeouts
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
            header = bytes([3, 0, 0x80 if state["wp"] else 0, 0])
            return [DataIn(itt=cmd.itt, ttt=0xFFFFFFFF, lun=0, data_sn=0, buffer_offset=0,
                           residual_count=0, final=True, acknowledge=False, overflow=False,
                           underflow=False, status_present=True, status=0, data=header,
                           **conn.sns())]
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
