"""A LUN over a session to the scripted target: how byte ranges become commands."""

from __future__ import annotations

import pytest
import trio

from fake_target import FakeTarget
from iscsifs.core.discovery import Portal
from iscsifs.core.pdu import DataIn
from iscsifs.device import DEFAULT_MAX_COMMAND, Lun
from iscsifs.net.session import Session, Timeouts

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
