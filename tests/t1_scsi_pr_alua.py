"""iscsifs.scsi for persistent reservations and ALUA: the PERSISTENT RESERVE IN/OUT and REPORT
TARGET PORT GROUPS CDBs byte for byte (SPC-4 §6.13, §6.14, §6.35), their parameter data
parsed from what tgt and LIO send, the port designators of VPD 83h, the sense helpers, and the
parsers fuzzed (never anything but a result or RemoteProtocolError)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.errors import LocalProtocolError, RemoteProtocolError
from iscsifs.scsi import cdb
from iscsifs.scsi.parse import (
    AluaState, PrCapabilities, PrKeys, PrReservation, parse_pr_read_full_status,
    parse_pr_read_keys, parse_pr_read_reservation, parse_pr_report_capabilities,
    parse_report_target_port_groups, parse_vpd_device_id, relative_target_port,
    target_port_group, transport_id_text,
)
from iscsifs.scsi.sense import (ScsiError, ScsiStatus, Sense, SenseKey, alua_not_ready,
                                is_alua_state_changed, is_reservation_conflict)

H = bytes.fromhex


class TestCdbs:
    def test_persistent_reserve_in(self):
        assert cdb.persistent_reserve_in(cdb.PrInAction.READ_KEYS) == H("5e00 0000000000 2000 00")
        assert cdb.persistent_reserve_in(3, alloc=0x1234) == H("5e03 0000000000 1234 00")

    def test_persistent_reserve_out(self):
        # RESERVE, LU_SCOPE, Write Exclusive, 24 bytes of parameters
        assert cdb.persistent_reserve_out(cdb.PrOutAction.RESERVE, cdb.PrType.WRITE_EXCLUSIVE) \
            == H("5f01 01 0000 00000018 00")
        assert cdb.persistent_reserve_out(6) == H("5f06 00 0000 00000018 00")

    def test_pr_out_parameter_list(self):
        data = cdb.pr_out_parameter_list(0x123ABC, 0xFFFF_FFFF_FFFF_FFFF, aptpl=True,
                                         all_tg_pt=True)
        assert data == H("0000000000123abc ffffffffffffffff 00000000 05 00 0000")
        assert cdb.pr_out_parameter_list() == bytes(24)

    @pytest.mark.parametrize("call", [
        lambda: cdb.persistent_reserve_in(0x20),
        lambda: cdb.persistent_reserve_in(0, alloc=0x10000),
        lambda: cdb.persistent_reserve_out(0, 16),
        lambda: cdb.pr_out_parameter_list(1 << 64),
        lambda: cdb.pr_out_parameter_list(0, -1),
        lambda: cdb.report_target_port_groups(alloc=3),
    ])
    def test_ranges(self, call):
        with pytest.raises(LocalProtocolError):
            call()

    def test_report_target_port_groups(self):
        assert cdb.report_target_port_groups(0x400) == H("a30a 00000000 00000400 00 00")
        assert cdb.report_target_port_groups(0x400, extended=True)[1] == 0x2A


class TestPersistentReserveIn:
    def test_read_keys(self):
        data = H("00000007 00000010 0000000000123abc 00000000000000ff")
        assert parse_pr_read_keys(data) == PrKeys(7, (0x123ABC, 0xFF))
        assert parse_pr_read_keys(H("00000000 00000000")) == PrKeys(0, ())

    def test_read_keys_truncated_keeps_whole_keys(self):
        data = H("00000002 00000018 0000000000000001 0000000000000002 00000000")
        assert parse_pr_read_keys(data).keys == (1, 2)

    def test_read_reservation(self):
        data = H("00000003 00000010 0000000000123abc 00000000 00 01 0000")
        assert parse_pr_read_reservation(data) == PrReservation(3, 0x123ABC, 0, 1)
        none = parse_pr_read_reservation(H("00000003 00000000"))
        assert none == PrReservation(3) and none.key is None

    def test_report_capabilities_tgt(self):
        # CRH 0, PTPL_C and PTPL_A 1, TMV, every type
        caps = parse_pr_report_capabilities(H("0008 01 81 ea01 0000"))
        assert caps == PrCapabilities(rlr_c=False, crh=False, sip_c=False, atp_c=False,
                                      ptpl_c=True, tmv=True, allow_commands=0, ptpl_a=True,
                                      types=frozenset({1, 3, 5, 6, 7, 8}))

    def test_report_capabilities_bad_length(self):
        with pytest.raises(RemoteProtocolError):
            parse_pr_report_capabilities(H("0010 00 00 0000 0000"))
        with pytest.raises(RemoteProtocolError):
            parse_pr_report_capabilities(H("0008 00"))

    def test_read_full_status(self):
        name = b"iqn.2026-11.org.example:a\0\0\0"
        tid = bytes([0x05, 0]) + len(name).to_bytes(2, "big") + name
        desc = (H("0000000000000abc 00000000 01 05 00000000 0002") + len(tid).to_bytes(4, "big")
                + tid)
        status = parse_pr_read_full_status(H("00000009") + len(desc).to_bytes(4, "big") + desc)
        assert status.generation == 9 and len(status.descriptors) == 1
        d = status.descriptors[0]
        assert (d.key, d.holder, d.all_tg_pt, d.type, d.relative_target_port) == \
            (0xABC, True, False, 5, 2)
        assert transport_id_text(d.transport_id) == "iqn.2026-11.org.example:a"
        assert transport_id_text(b"\x00\x00") is None

    def test_header_too_short(self):
        with pytest.raises(RemoteProtocolError):
            parse_pr_read_keys(H("000000"))


class TestAlua:
    def test_rtpg_two_groups(self):
        # group 1 active/optimized + preferred, port 1; group 2 standby, ports 2 and 3
        data = H("0000001c"
                 "80 8f 0001 00 00 00 01 0000 0001"
                 "02 0f 0002 00 02 00 02 0000 0002 0000 0003")
        g1, g2 = parse_report_target_port_groups(data)
        assert (g1.group, g1.state, g1.preferred, g1.ports) == \
            (1, AluaState.ACTIVE_OPTIMIZED, True, (1,))
        assert g1.supported == {AluaState.TRANSITIONING, AluaState.UNAVAILABLE,
                                AluaState.STANDBY, AluaState.ACTIVE_NON_OPTIMIZED,
                                AluaState.ACTIVE_OPTIMIZED}
        assert (g2.group, g2.state, g2.status_code, g2.ports) == \
            (2, AluaState.STANDBY, 2, (2, 3))
        assert g2.state_label == "standby"

    def test_rtpg_extended_header_and_reserved_state(self):
        data = H("0000000c 10 3c 0000" "07 01 0005 00 00 00 00")
        (g,) = parse_report_target_port_groups(data)
        assert g.group == 5 and g.state == 7 and g.state_label == "reserved state 0x7"

    def test_rtpg_truncated(self):
        data = H("00000018" "00 01 0001 00 00 00 02 0000 0001")   # one port of two
        assert parse_report_target_port_groups(data) == []
        with pytest.raises(RemoteProtocolError):
            parse_report_target_port_groups(H("0000"))

    def test_port_designators(self):
        page = H("0083 0024"
                 "0103 0010 60000000000000000e00000000010001"      # NAA, LU
                 "0114 0004 00000002"                               # relative port 2
                 "0115 0004 00000007")                              # target port group 7
        ids = parse_vpd_device_id(page)
        assert target_port_group(ids) == 7 and relative_target_port(ids) == 2
        assert target_port_group(ids[:1]) is None

    def test_sense_helpers(self):
        def err(key, asc, ascq):
            return ScsiError(ScsiStatus.CHECK_CONDITION, Sense(0x70, SenseKey(key), asc, ascq))
        assert alua_not_ready(err(2, 4, 0x0A)) == "transitioning"
        assert alua_not_ready(err(2, 4, 0x0B)) == "standby"
        assert alua_not_ready(err(2, 4, 0x0C)) == "unavailable"
        assert alua_not_ready(err(2, 4, 0x01)) is None
        assert alua_not_ready(err(6, 0x2A, 0x06)) is None
        assert is_alua_state_changed(err(6, 0x2A, 0x06))
        assert not is_alua_state_changed(err(6, 0x2A, 0x09))
        assert is_reservation_conflict(ScsiError(0x18))
        assert not is_reservation_conflict(err(5, 0x24, 0))


@given(st.binary(max_size=300))
def test_parsers_fuzzed(raw):
    for parse in (parse_pr_read_keys, parse_pr_read_reservation, parse_pr_report_capabilities,
                  parse_pr_read_full_status, parse_report_target_port_groups):
        try:
            parse(raw)
        except RemoteProtocolError:
            pass
    transport_id_text(raw)
