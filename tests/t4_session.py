"""The trio session layer against a real tgtd: discovery, login, SCSI, data, faults."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import trio

from helpers import CONN_FAILED, REPLACEMENT_EXPIRED
from iscsifs.core.names import parse_portal
from iscsifs.core.keys import LoginParams
from iscsifs.device import Lun, NoSpace
from iscsifs.errors import LoginError, SessionFailed
from iscsifs.net.discovery import discover
from iscsifs.initiator import Initiator
from iscsifs.net.session import Session, Timeouts
from iscsifs.scsi.sense import ScsiError, SenseKey

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
MiB = 1024 * 1024


def portal_of(info):
    return parse_portal(f"{info.host}:{info.port}")


async def connect(info, nursery, **kw) -> Session:
    with trio.fail_after(20):
        return await Session.connect(portal_of(info), info.iqn, initiator_name=INITIATOR,
                                     nursery=nursery, **kw)


async def test_discovery_lists_configured_targets(tgt_target):
    with trio.fail_after(20):
        targets = await discover(parse_portal(tgt_target.portal), initiator_name=INITIATOR)
    names = {t.name for t in targets}
    assert {tgt_target.disk1.iqn, tgt_target.disk2.iqn} <= names
    for t in targets:
        assert all(p.port == tgt_target.port for p in t.portals)


async def test_cli_discover_prints_iscsiadm_format(tgt_target, tmp_path):
    env = dict(os.environ, ISCSIFS_CONFIG_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "iscsifs.cli", "discover", tgt_target.portal],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"{tgt_target.host}:{tgt_target.port},1 {tgt_target.disk1.iqn}" in lines
    assert f"{tgt_target.host}:{tgt_target.port},1 {tgt_target.disk2.iqn}" in lines


@pytest.mark.parametrize("portal, code, words", [
    ("127.0.0.1:1", 4, "refused"),
    ("not a portal:x", 7, "bad portal"),
    ("[::1", 7, "bad portal"),
])
def test_cli_discover_bad_portal_is_one_line(portal, code, words, tmp_path):
    env = dict(os.environ, ISCSIFS_CONFIG_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "iscsifs.cli", "discover", portal],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == code, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert words in out.stderr.lower()
    assert "Traceback" not in out.stderr


async def test_login_unknown_target_is_clear_error(tgt_target, nursery):
    with pytest.raises(LoginError) as info:
        with trio.fail_after(20):
            await Session.connect(parse_portal(tgt_target.portal),
                                  "iqn.2026-11.org.iscsifs.test:nope",
                                  initiator_name=INITIATOR, nursery=nursery)
    assert "not found" in str(info.value)


async def test_login_logout_and_scsi_identity(tgt_target, nursery):
    disk = tgt_target.disk1
    session = await connect(disk, nursery)
    try:
        assert tgt_target.tgtd.show_connections(disk.tid)
        initiator = Initiator(initiator_name=INITIATOR, portals=[portal_of(disk)],
                              nursery=nursery)
        with trio.fail_after(30):
            entries = await initiator.luns(disk.iqn, portal_of(disk))
        by_lun = {e.lun: e for e in entries}
        assert set(by_lun) == {0, 1, 2, 3}
        assert by_lun[0].device is None          # tgt's controller LUN
        for n, lun in disk.luns.items():
            dev = by_lun[n].device
            assert dev.block_size == lun.block_size
            assert dev.size == lun.size
            assert dev.write_protected == lun.readonly
            assert dev.inquiry.vendor.strip()
        await initiator.aclose()
    finally:
        with trio.fail_after(20):
            await session.close()
    with trio.fail_after(10):
        while tgt_target.tgtd.show_connections(disk.tid):
            await trio.sleep(0.05)


async def _round_trip(dev: Lun, backing: str, rng: random.Random, cases):
    for offset, length in cases:
        data = rng.randbytes(length)
        with trio.fail_after(60):
            assert await dev.write(offset, data) == length
            got = await dev.read(offset, length)
        assert bytes(got) == data
        with open(backing, "rb") as f:
            f.seek(offset)
            assert f.read(length) == data, (offset, length)


async def test_data_round_trip_many_offsets_and_sizes(fresh_target, nursery):
    info = fresh_target([(32 * MiB, 512), (16 * MiB, 4096)])
    session = await connect(info, nursery)
    rng = random.Random(7)
    for n in (1, 2):
        dev = await Lun.open(session, n)
        bs = dev.block_size
        cases = [(0, bs), (bs * 3, bs * 5), (17, 1), (bs - 1, 2), (12345, 70000),
                 (dev.size - bs, bs), (dev.size - 100, 100),
                 (bs * 11, 3 * MiB + 77),      # crosses the max transfer size
                 (5 * MiB + 3, 2 * MiB)]
        cases += [(rng.randrange(0, dev.size - 70000), rng.randrange(1, 70000))
                  for _ in range(20)]
        await _round_trip(dev, str(info.luns[n].path), rng, cases)
    await session.close()


async def test_reads_match_backing_file(tgt_target, nursery):
    disk = tgt_target.disk1
    session = await connect(disk, nursery)
    dev = await Lun.open(session, 1)
    with open(disk.luns[1].path, "rb") as f:
        expected = f.read()
    with trio.fail_after(60):
        got = await dev.read(0, dev.size)
    assert bytes(got) == expected
    assert await dev.read(dev.size, 10) == b""
    assert bytes(await dev.read(dev.size - 5, 10)) == expected[-5:]
    await session.close()


async def test_write_past_end_writes_nothing_beyond(fresh_target, nursery):
    info = fresh_target([(1 * MiB, 512)])
    session = await connect(info, nursery)
    dev = await Lun.open(session, 1)
    with pytest.raises(NoSpace):
        await dev.write(dev.size, b"x" * 10)
    assert await dev.write(dev.size - 4, b"abcdefgh") == 4
    with open(info.luns[1].path, "rb") as f:
        data = f.read()
    assert len(data) == 1 * MiB and data[-4:] == b"abcd"
    await session.close()


async def test_readonly_lun_rejects_writes(tgt_target, nursery):
    disk = tgt_target.disk1
    session = await connect(disk, nursery)
    dev = await Lun.open(session, 3)
    assert dev.write_protected
    with pytest.raises(ScsiError) as info:
        await dev.write(0, b"\0" * 512)
    assert info.value.sense.key == SenseKey.DATA_PROTECT
    await session.close()


async def test_many_concurrent_commands_one_session(fresh_target, nursery):
    info = fresh_target([(16 * MiB, 512)])
    session = await connect(info, nursery)
    dev = await Lun.open(session, 1)
    rng = random.Random(3)
    blobs = {i: rng.randbytes(64 * 1024) for i in range(64)}
    max_seen = 0

    async def writer(i):
        await dev.write(i * 128 * 1024, blobs[i])

    async def sample():
        nonlocal max_seen
        while True:
            link = session._link
            if link is not None:
                max_seen = max(max_seen, len(link.commands))
            await trio.sleep(0)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(sample)
            async with trio.open_nursery() as w:
                for i in blobs:
                    w.start_soon(writer, i)
            n.cancel_scope.cancel()
    assert max_seen > 8, "commands were not pipelined"
    with open(info.luns[1].path, "rb") as f:
        data = f.read()
    for i, blob in blobs.items():
        assert data[i * 128 * 1024:i * 128 * 1024 + len(blob)] == blob
    await session.close()


async def test_concurrent_unaligned_writes_same_block(fresh_target, nursery):
    info = fresh_target([(1 * MiB, 512)])
    session = await connect(info, nursery)
    dev = await Lun.open(session, 1)
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for i in range(16):
                n.start_soon(dev.write, 4096 + i * 8, bytes([65 + i]) * 8)
    with open(info.luns[1].path, "rb") as f:
        f.seek(4096)
        assert f.read(128) == b"".join(bytes([65 + i]) * 8 for i in range(16))
    await session.close()


@pytest.mark.parametrize("target_params, our_params", [
    ({"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"},
     LoginParams(header_digest="CRC32C", data_digest="CRC32C")),
    ({"HeaderDigest": "CRC32C"}, LoginParams(header_digest="CRC32C,None")),
    ({"InitialR2T": "Yes", "ImmediateData": "No"}, LoginParams()),
    ({"InitialR2T": "No", "ImmediateData": "Yes", "FirstBurstLength": "16384",
      "MaxBurstLength": "65536", "MaxRecvDataSegmentLength": "8192"}, LoginParams()),
    ({"InitialR2T": "Yes", "ImmediateData": "Yes"},
     LoginParams(initial_r2t=True, max_recv_data_segment_length=8192)),
])
async def test_negotiated_variants_move_data(fresh_target, nursery, target_params, our_params):
    info = fresh_target([(8 * MiB, 512)], params=target_params)
    session = await connect(info, nursery, params=our_params)
    neg = session.negotiated
    if "HeaderDigest" in target_params:
        assert neg.header_digest
    if "DataDigest" in target_params:
        assert neg.data_digest
    if target_params.get("InitialR2T") == "Yes":
        assert neg.initial_r2t
    if target_params.get("ImmediateData") == "No":
        assert not neg.immediate_data
    dev = await Lun.open(session, 1)
    rng = random.Random(11)
    await _round_trip(dev, str(info.luns[1].path), rng,
                      [(0, 512), (4096, 300 * 1024), (1 * MiB + 7, 1 * MiB), (77, 9000)])
    counters = session.counters()
    assert counters["scsicmd_pdus"] > 0 and counters["datain_pdus"] > 0
    await session.close()


@CONN_FAILED
async def test_dropped_connection_is_recovered(fresh_target, nursery):
    info = fresh_target([(4 * MiB, 512)])
    tgtd = fresh_target.tgtd
    session = await connect(info, nursery, timeouts=Timeouts(replacement_timeout=30))
    dev = await Lun.open(session, 1)
    data = os.urandom(64 * 1024)
    await dev.write(0, data)
    conns = tgtd.show_connections(info.tid)
    assert len(conns) == 1
    tgtd.drop_connection(info.tid, conns[0].sid, conns[0].cid)
    with trio.fail_after(30):
        assert bytes(await dev.read(0, len(data))) == data
        await dev.write(8192, data)
    assert session.reconnects >= 1
    assert session.logged_in
    await session.close()


@CONN_FAILED
async def test_stalled_target_detected_by_nop_and_recovered(fresh_target, nursery):
    info = fresh_target([(4 * MiB, 512)])
    tgtd = fresh_target.tgtd
    timeouts = Timeouts(noop_out_interval=1, noop_out_timeout=1, login=3,
                        replacement_timeout=60)
    session = await connect(info, nursery, timeouts=timeouts)
    dev = await Lun.open(session, 1)
    tgtd.stall()
    try:
        with trio.fail_after(15):
            while session.logged_in:
                await trio.sleep(0.05)
    finally:
        tgtd.resume()
    assert session.counters().get("timeout_err", 0) >= 1
    with trio.fail_after(40):
        assert len(await dev.read(0, 4096)) == 4096
    assert session.logged_in
    await session.close()


@CONN_FAILED
@REPLACEMENT_EXPIRED
async def test_replacement_timeout_fails_io(fresh_target, nursery):
    info = fresh_target([(4 * MiB, 512)])
    tgtd = fresh_target.tgtd
    timeouts = Timeouts(noop_out_interval=1, noop_out_timeout=1, login=1,
                        replacement_timeout=2)
    session = await connect(info, nursery, timeouts=timeouts)
    dev = await Lun.open(session, 1)
    tgtd.unbind(info.tid)           # relogin is refused from now on
    conns = tgtd.show_connections(info.tid)
    tgtd.drop_connection(info.tid, conns[0].sid, conns[0].cid)
    with trio.fail_after(20):
        with pytest.raises(SessionFailed):
            await dev.read(0, 4096)
    await session.close()


async def test_target_nop_pings_are_answered(fresh_target, nursery):
    info = fresh_target([(4 * MiB, 512)], params={"nop_interval": "1", "nop_count": "2"})
    session = await connect(info, nursery, timeouts=Timeouts(noop_out_interval=0))
    with trio.fail_after(15):
        while session.counters().get("noprx_pdus", 0) < 3:
            await trio.sleep(0.1)
    assert session.logged_in and session.reconnects == 0
    dev = await Lun.open(session, 1)
    assert len(await dev.read(0, 512)) == 512
    await session.close()
