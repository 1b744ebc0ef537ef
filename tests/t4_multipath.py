"""The facade's multipath grouping (``Initiator.multipath``) against real tgtds, no mount: one
device per LUN identity with a path per portal, priorities in portal order, I/O through it,
paths that go with a logout, and a LUN that only claims the same identity kept out."""

from __future__ import annotations

import pytest
import trio

from iscsifs.core.names import parse_portal
from iscsifs.initiator import Initiator

INITIATOR = "iqn.2026-11.org.iscsifs.test:mp-initiator"
NAA1 = "naa.60000000000000000e00000000010001"      # tgt: target id 1, LUN 1
NAA2 = "naa.60000000000000000e00000000010002"


async def test_one_device_per_identity_with_a_path_per_portal(two_portals, nursery):
    pa, pb = map(parse_portal, two_portals.portals)
    iqn = two_portals.iqn
    initiator = Initiator(initiator_name=INITIATOR, portals=[pa, pb], nursery=nursery)
    try:
        with trio.fail_after(30):
            devices = await initiator.multipath([(iqn, pa), (iqn, pb)])
        assert sorted(d.identity for d in devices) == [NAA1, NAA2]
        dev = next(d for d in devices if d.identity == NAA1)
        assert [(s.portal, s.lun, s.priority, s.dm_state) for s in dev.path_states()] == [
            (pa, 1, 2, "active"), (pb, 1, 1, "active")]
        assert dev.size == 48 << 20 and dev.serial and dev.inquiry.vendor.strip() == "IET"
        data = two_portals.backing[1].read_bytes()
        with trio.fail_after(30):
            assert bytes(await dev.read(0, 1 << 20)) == data[:1 << 20]
            assert await dev.write(4096 + 7, b"multipath") == 9
        assert two_portals.backing[1].read_bytes()[4103:4112] == b"multipath"
        assert dev.path_states()[0].ios > 0 and dev.path_states()[1].ios == 0   # failover
        assert dev.active_path().portal == pa
        # asking again finds the same device and adds no path twice
        with trio.fail_after(30):
            again = await initiator.multipath([(iqn, pa), (iqn, pb)])
        assert dev in again and len(dev.path_states()) == 2
        # the raw files' devices are the paths' devices
        entries = await initiator.luns(iqn, pb)
        assert dev.path_states()[1].device is next(e.device for e in entries if e.lun == 1)
        # a logout takes its paths away; the device goes on through the others
        await initiator.logout(iqn, pa)
        assert [s.portal for s in dev.path_states()] == [pb]
        with trio.fail_after(30):
            assert bytes(await dev.read(0, 4096)) == data[:4096]
    finally:
        with trio.fail_after(30):
            await initiator.aclose()


@pytest.mark.expect_log(f"LUN 1 of .* reports the identity {NAA1} but 98304 blocks instead "
                        f"of 131072; not used as a path", logger="iscsifs.initiator")
@pytest.mark.expect_log(f"LUN 2 of .* reports the identity {NAA2} but block size 512 instead "
                        f"of 4096; not used as a path", logger="iscsifs.initiator")
async def test_a_lun_that_only_claims_the_identity_is_not_a_path(two_portals, tgt_target,
                                                                 nursery):
    # tgt derives the NAA name from the target id and LUN number, so LUN 1 of target 1 has
    # the same identity on every tgtd: the capacity (and serial) check keeps them apart
    std, private = parse_portal(tgt_target.portal), parse_portal(two_portals.portals[0])
    initiator = Initiator(initiator_name=INITIATOR, portals=[std, private], nursery=nursery)
    try:
        with trio.fail_after(30):
            devices = await initiator.multipath([(tgt_target.disk1.iqn, std),
                                                 (two_portals.iqn, private)])
        dev = next(d for d in devices if d.identity == NAA1)
        assert [s.portal for s in dev.path_states()] == [std]
        assert dev.size == tgt_target.disk1.luns[1].size
    finally:
        with trio.fail_after(30):
            await initiator.aclose()
