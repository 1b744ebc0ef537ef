"""Tests for iscsifs.scsi: CDB builders, sense parsing, data-in parsers.

CDBs are checked byte for byte against hand-assembled layouts from SPC-4 / SBC-3; parsers
against realistic target answers (Linux tgt, LIO) and fuzzed with hypothesis.
"""

from __future__ import annotations

import pickle
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from iscsifs.errors import IscsiError, LocalProtocolError, RemoteProtocolError
from iscsifs.scsi import cdb
from iscsifs.scsi.parse import (
    BlockLimits, Capacity, DesignatorType, DeviceType, Inquiry, LogicalBlockProvisioning,
    ProvisioningType, decode_lun_entry, device_type_name, parse_inquiry, parse_mode_sense_wp,
    parse_read_capacity10, parse_read_capacity16, parse_report_luns, parse_vpd_block_limits,
    parse_vpd_device_id, parse_vpd_logical_block_provisioning, parse_vpd_serial,
    parse_vpd_supported_pages, pick_wwn, report_luns_needed,
)
from iscsifs.scsi.sense import (
    ScsiError, ScsiStatus, SenseKey, asc_name, check_status, is_capacity_changed,
    is_data_protect, is_luns_changed, is_unit_attention, parse_sense,
)

H = bytes.fromhex


# =============================================================================================
# CDB builders
# =============================================================================================

class TestCdb:
    def test_test_unit_ready(self):
        assert cdb.test_unit_ready() == bytes(6)

    def test_inquiry_standard(self):
        assert cdb.inquiry() == H("12 00 00 00 ff 00")
        assert cdb.inquiry(alloc=36) == H("12 00 00 00 24 00")
        assert cdb.inquiry(alloc=0x1234) == H("12 00 00 12 34 00")

    def test_inquiry_vpd(self):
        assert cdb.inquiry(evpd=True, page=0x83, alloc=0x200) == H("12 01 83 02 00 00")
        assert cdb.inquiry(True, 0xB0, 64) == H("12 01 b0 00 40 00")
        assert cdb.inquiry(evpd=True) == H("12 01 00 00 ff 00")

    def test_inquiry_page_without_evpd(self):
        with pytest.raises(LocalProtocolError):
            cdb.inquiry(page=0x80)

    @pytest.mark.parametrize("kw", [{"alloc": -1}, {"alloc": 0x10000},
                                    {"evpd": True, "page": 0x100}, {"alloc": 1.5}])
    def test_inquiry_range(self, kw):
        with pytest.raises(LocalProtocolError):
            cdb.inquiry(**kw)

    def test_read_capacity10(self):
        assert cdb.read_capacity10() == H("25 00 00000000 0000 00 00")
        assert len(cdb.read_capacity10()) == 10

    def test_read_capacity16(self):
        assert cdb.read_capacity16() == H("9e 10 0000000000000000 00000020 00 00")
        assert cdb.read_capacity16(alloc=0x1000) == H("9e 10 0000000000000000 00001000 00 00")
        assert len(cdb.read_capacity16()) == 16

    def test_report_luns(self):
        assert cdb.report_luns(4096) == H("a0 00 00 000000 00001000 00 00")
        assert cdb.report_luns(16, select_report=2) == H("a0 00 02 000000 00000010 00 00")
        assert len(cdb.report_luns()) == 12

    @pytest.mark.parametrize("alloc", [0, 15, 2**32])
    def test_report_luns_alloc_range(self, alloc):
        with pytest.raises(LocalProtocolError):
            cdb.report_luns(alloc)

    def test_read10_write10(self):
        assert cdb.read10(0x12345678, 0x9ABC) == H("28 00 12345678 00 9abc 00")
        assert cdb.write10(0x12345678, 0x9ABC) == H("2a 00 12345678 00 9abc 00")
        assert cdb.read10(1, 8, fua=True) == H("28 08 00000001 00 0008 00")
        assert cdb.write10(1, 8, fua=True, dpo=True) == H("2a 18 00000001 00 0008 00")

    def test_read16_write16(self):
        assert cdb.read16(0x0123456789ABCDEF, 0x11223344) == \
            H("88 00 0123456789abcdef 11223344 00 00")
        assert cdb.write16(0x0123456789ABCDEF, 0x11223344, fua=True) == \
            H("8a 08 0123456789abcdef 11223344 00 00")

    @pytest.mark.parametrize("fn,lba,blocks", [
        (cdb.read10, 2**32, 1), (cdb.read10, 0, 2**16), (cdb.read10, -1, 1),
        (cdb.write10, 0, -1), (cdb.read16, 2**64, 1), (cdb.read16, 0, 2**32),
        (cdb.write16, 2**64 - 1, 2), (cdb.read, -1, 1), (cdb.write, 0, 2**32),
    ])
    def test_rw_range(self, fn, lba, blocks):
        with pytest.raises(LocalProtocolError):
            fn(lba, blocks)

    @pytest.mark.parametrize("lba,blocks,size", [
        (0, 1, 10),
        (0, 0, 10),                      # 0 blocks is a legal no-op transfer
        (0, 0xFFFF, 10),
        (0, 0x10000, 16),                # transfer length needs 4 bytes
        (0xFFFF_FFFE, 1, 10),
        (0xFFFF_FFFF, 1, 10),            # last 32-bit addressable block
        (0xFFFF_FFFF, 2, 16),            # would straddle 2**32
        (0xFFFF_0000, 0x10000, 16),
        (0xFFFF_0001, 0xFFFF, 10),       # ends exactly at 2**32
        (2**32, 1, 16),
        (2**64 - 1, 1, 16),
    ])
    def test_read_write_selection(self, lba, blocks, size):
        r = cdb.read(lba, blocks)
        w = cdb.write(lba, blocks, fua=True)
        assert len(r) == len(w) == size
        assert r[0] == (0x28 if size == 10 else 0x88)
        assert w[0] == (0x2A if size == 10 else 0x8A)
        assert w[1] == 0x08
        if size == 10:
            assert struct.unpack(">IxH", r[2:9]) == (lba, blocks)
        else:
            assert struct.unpack(">QI", r[2:14]) == (lba, blocks)

    def test_use_16(self):
        assert cdb.read(0, 1, use_16=True) == H("88 00 0000000000000000 00000001 00 00")
        assert cdb.write(0, 1, use_16=True)[0] == 0x8A

    def test_fits_and_max_blocks(self):
        assert cdb.fits_cdb10(0, 0xFFFF)
        assert not cdb.fits_cdb10(0xFFFF_FFFF, 2)
        assert not cdb.fits_cdb10(2**32, 0)       # no block to address, but the LBA itself
        assert cdb.max_blocks_per_cdb(0) == 0xFFFF_FFFF
        assert cdb.max_blocks_per_cdb(2**64 - 3) == 3
        with pytest.raises(LocalProtocolError):
            cdb.max_blocks_per_cdb(-1)

    def test_synchronize_cache(self):
        assert cdb.synchronize_cache() == H("35 00 00000000 00 0000 00")
        assert cdb.synchronize_cache10(0x10, 0x20, immed=True) == H("35 02 00000010 00 0020 00")
        assert cdb.synchronize_cache16(2**40, 7) == H("91 00 0000010000000000 00000007 00 00")
        assert cdb.synchronize_cache(2**32, 0)[0] == 0x91
        assert cdb.synchronize_cache(0xFFFF_FFFF, 0)[0] == 0x35   # to end: no range to fit
        assert cdb.synchronize_cache(0xFFFF_FFFF, 2)[0] == 0x91
        assert cdb.synchronize_cache(0, 0x10000)[0] == 0x91
        assert cdb.synchronize_cache(use_16=True) == H("91 00 0000000000000000 00000000 00 00")
        with pytest.raises(LocalProtocolError):
            cdb.synchronize_cache(-1)

    def test_unmap(self):
        assert cdb.unmap(24) == H("42 00 00000000 00 0018 00")
        # sg_unmap's example: header (data length n-1, descriptor length n-7), then descriptors
        params = cdb.unmap_parameter_list([(0x12345677, 1), (0x12340000, 3333)])
        assert params == H("0026 0020 00000000"
                           "0000000012345677 00000001 00000000"
                           "0000000012340000 00000d05 00000000")
        assert len(cdb.unmap_parameter_list([(0, 1)] * cdb.MAX_UNMAP_DESCRIPTORS)) <= 0xFFFF

    @pytest.mark.parametrize("extents", [[], [(0, 0)], [(-1, 1)], [(0, 2**32)],
                                         [(2**64 - 1, 2)], [(0, 1)] * 4096])
    def test_unmap_parameter_list_range(self, extents):
        with pytest.raises(LocalProtocolError):
            cdb.unmap_parameter_list(extents)

    def test_unmap_range(self):
        with pytest.raises(LocalProtocolError):
            cdb.unmap(0x10000)

    def test_write_same16(self):
        assert cdb.write_same16(0x10, 8, unmap=True) == \
            H("93 08 0000000000000010 00000008 00 00")
        assert cdb.write_same16(2**40, 1) == H("93 00 0000010000000000 00000001 00 00")
        for lba, blocks in ((0, 0), (-1, 1), (0, 2**32), (2**64 - 1, 2)):
            with pytest.raises(LocalProtocolError):
                cdb.write_same16(lba, blocks)     # 0 blocks would mean "to the end"

    def test_mode_sense6(self):
        assert cdb.mode_sense6() == H("1a 00 3f 00 c0 00")
        assert cdb.mode_sense6(0x08, dbd=True, alloc=4) == H("1a 08 08 00 04 00")
        assert cdb.mode_sense6(0x3F, 0xFF, pc=2, alloc=255) == H("1a 00 bf ff ff 00")

    def test_mode_sense10(self):
        assert cdb.mode_sense10() == H("5a 00 3f 00 000000 0200 00")
        assert cdb.mode_sense10(0x08, dbd=True, llbaa=True, pc=1, alloc=0x1234) == \
            H("5a 18 48 00 000000 1234 00")

    @pytest.mark.parametrize("kw", [{"page": 0x40}, {"pc": 4}, {"subpage": 256},
                                    {"alloc": 256}])
    def test_mode_sense6_range(self, kw):
        with pytest.raises(LocalProtocolError):
            cdb.mode_sense6(**kw)

    def test_mode_sense10_range(self):
        with pytest.raises(LocalProtocolError):
            cdb.mode_sense10(alloc=0x10000)

    @given(lba=st.integers(0, 2**64 - 1), blocks=st.integers(0, 2**32 - 1),
           fua=st.booleans())
    @example(lba=2**32, blocks=0, fua=False)       # no block, but an LBA READ(10) can't hold
    def test_read_roundtrip(self, lba, blocks, fua):
        if lba + blocks > 2**64:
            with pytest.raises(LocalProtocolError):
                cdb.read(lba, blocks, fua=fua)
            return
        c = cdb.read(lba, blocks, fua=fua)
        if len(c) == 10:
            op, flags, got_lba, group, got_blocks, control = struct.unpack(">BBIBHB", c)
            assert lba < 2**32 and lba + blocks <= 2**32 and blocks < 2**16
        else:
            op, flags, got_lba, got_blocks, group, control = struct.unpack(">BBQIBB", c)
            assert not (lba < 2**32 and lba + blocks <= 2**32 and blocks < 2**16)
        assert (got_lba, got_blocks, flags, group, control) == (lba, blocks, 8 * fua, 0, 0)


# =============================================================================================
# Sense data
# =============================================================================================

def fixed_sense(key, asc, ascq, *, info=0, valid=False, code=0x70, add_len=10, sks=b"\0\0\0",
                flags=0):
    return (bytes([code | (0x80 if valid else 0), 0, flags | key]) + info.to_bytes(4, "big")
            + bytes([add_len]) + bytes(4) + bytes([asc, ascq, 0]) + sks)


class TestSense:
    def test_fixed_medium_error(self):
        raw = fixed_sense(0x3, 0x11, 0x00, info=0x1234, valid=True)
        assert len(raw) == 18
        s = parse_sense(raw)
        assert s.key is SenseKey.MEDIUM_ERROR
        assert (s.asc, s.ascq) == (0x11, 0)
        assert s.information == 0x1234 and s.valid
        assert not s.deferred and not s.descriptor_format
        assert s.sense_key_specific is None
        assert str(s) == "MEDIUM ERROR: Unrecovered read error (11/00)"

    def test_fixed_deferred_and_flags(self):
        s = parse_sense(fixed_sense(0x3, 0x0C, 0x00, code=0x71, flags=0x20))
        assert s.deferred and s.ili and not s.eom
        assert s.response_code == 0x71
        assert str(s) == "MEDIUM ERROR: Write error (0C/00) [deferred]"

    def test_fixed_field_pointer(self):
        # INVALID FIELD IN CDB, SKSV, C/D=1 (in CDB), BPV with bit 3, byte 1
        s = parse_sense(fixed_sense(0x5, 0x24, 0x00, sks=H("cb 00 01")))
        assert s.field_pointer == (True, 1, 3)
        assert s.progress is None

    def test_fixed_progress(self):
        s = parse_sense(fixed_sense(0x2, 0x04, 0x04, sks=H("80 80 00")))
        assert s.progress == 0.5
        assert s.field_pointer is None
        assert str(s) == "NOT READY: Logical unit not ready, format in progress (04/04)"

    def test_linux_tgt_short_fixed(self):
        # tgt's sense_data_build: fixed format, additional length 0x0a, 18 bytes
        raw = H("70 00 06 00000000 0a 00000000 29 00 00 000000")
        s = parse_sense(raw)
        assert is_unit_attention(s)
        assert str(s) == "UNIT ATTENTION: Power on, reset, or bus device reset occurred (29/00)"

    @pytest.mark.parametrize("length", range(3, 18))
    def test_fixed_truncated(self, length):
        raw = fixed_sense(0x3, 0x11, 0x01, info=7, valid=True, sks=H("80 00 05"))[:length]
        s = parse_sense(raw)
        assert s.key is SenseKey.MEDIUM_ERROR
        assert s.asc == (0x11 if length > 12 else 0)
        assert s.ascq == (0x01 if length > 13 else 0)
        assert (s.information is not None) == (length >= 7)
        assert s.sense_key_specific is None

    def test_fixed_additional_length_lies_short(self):
        # additional length 4: only bytes up to 11 count; ASC/ASCQ not in range -> 0
        s = parse_sense(fixed_sense(0x5, 0x24, 0x00, add_len=4))
        assert (s.key, s.asc, s.ascq) == (SenseKey.ILLEGAL_REQUEST, 0, 0)
        assert len(s.raw) == 12

    def test_fixed_additional_length_lies_long(self):
        s = parse_sense(fixed_sense(0x5, 0x20, 0x00, add_len=200))
        assert (s.asc, s.ascq) == (0x20, 0)
        assert str(s) == "ILLEGAL REQUEST: Invalid command operation code (20/00)"

    def test_descriptor_format(self):
        info_desc = H("00 0a 80 00 0000000123456789")
        sks_desc = H("02 06 00 00 c0 0002 00")
        fru_desc = H("03 02 00 07")
        block_desc = H("05 02 00 20")
        body = info_desc + sks_desc + fru_desc + block_desc
        raw = H("72 05 24 00 00 00 00") + bytes([len(body)]) + body
        s = parse_sense(raw)
        assert s.descriptor_format and not s.deferred
        assert s.key is SenseKey.ILLEGAL_REQUEST
        assert (s.asc, s.ascq) == (0x24, 0)
        assert s.information == 0x123456789 and s.valid
        assert s.field_pointer == (True, 2, None)
        assert s.fru == 7
        assert s.ili
        assert [d[0] for d in s.descriptors] == [0, 2, 3, 5]
        assert str(s) == "ILLEGAL REQUEST: Invalid field in CDB (24/00)"

    def test_descriptor_capacity_changed_deferred(self):
        s = parse_sense(H("73 06 2a 09 00 00 00 00"))
        assert s.deferred and is_capacity_changed(s) and not is_luns_changed(s)

    def test_descriptor_minimal(self):
        s = parse_sense(H("72 06"))
        assert s.key is SenseKey.UNIT_ATTENTION and s.asc == 0 and s.descriptors == ()
        assert parse_sense(H("72 06 3f")).asc == 0x3F

    def test_descriptor_truncated_descriptor(self):
        body = H("00 0a 80 00 0000000000000001") + H("02 06 00 00 80")  # second cut short
        raw = H("72 03 11 00 00 00 00 14") + body
        s = parse_sense(raw)
        assert s.information == 1
        assert s.sense_key_specific is None
        assert len(s.descriptors) == 1

    def test_descriptor_additional_length_bounds(self):
        body = H("03 02 00 09")
        s = parse_sense(H("72 04 44 00 00 00 00 00") + body)   # add len 0: descriptor ignored
        assert s.fru == 0 and s.descriptors == ()
        assert str(s) == "HARDWARE ERROR: Internal target failure (44/00)"

    def test_vendor_format(self):
        s = parse_sense(H("7f 01 02 03"))
        assert s.key is SenseKey.VENDOR_SPECIFIC

    @pytest.mark.parametrize("raw", [b"", H("00"), H("00 00 00 00 00 00 00 00"), H("70"),
                                     H("70 00"), H("72"), H("f1 00"), H("42 05 24 00")])
    def test_garbage(self, raw):
        with pytest.raises(RemoteProtocolError):
            parse_sense(raw)

    def test_valid_bit_on_response_code(self):
        s = parse_sense(fixed_sense(0x3, 0x11, 0, valid=True, code=0x70))
        assert s.response_code == 0x70

    def test_memoryview_input(self):
        raw = bytearray(fixed_sense(0x7, 0x27, 0x00))
        s = parse_sense(memoryview(raw))
        assert str(s) == "DATA PROTECT: Write protected (27/00)"

    @given(st.binary(max_size=300))
    @settings(max_examples=500)
    def test_fuzz(self, raw):
        try:
            s = parse_sense(raw)
        except RemoteProtocolError:
            return
        assert isinstance(s.key, SenseKey)
        assert 0 <= s.asc <= 255 and 0 <= s.ascq <= 255
        str(s)
        _ = s.field_pointer, s.progress

    @given(st.sampled_from([0x70, 0x71, 0x72, 0x73]), st.binary(max_size=100))
    def test_fuzz_valid_codes(self, code, rest):
        raw = bytes([code]) + rest
        try:
            s = parse_sense(raw)
        except RemoteProtocolError:
            assert len(raw) < (3 if code < 0x72 else 2)
            return
        assert s.response_code == code


class TestAscNames:
    @pytest.mark.parametrize("asc,ascq,name", [
        (0x04, 0x00, "Logical unit not ready, cause not reportable"),
        (0x04, 0x01, "Logical unit is in process of becoming ready"),
        (0x04, 0x02, "Logical unit not ready, initializing command required"),
        (0x11, 0x00, "Unrecovered read error"),
        (0x0C, 0x00, "Write error"),
        (0x20, 0x00, "Invalid command operation code"),
        (0x21, 0x00, "Logical block address out of range"),
        (0x24, 0x00, "Invalid field in CDB"),
        (0x25, 0x00, "Logical unit not supported"),
        (0x27, 0x00, "Write protected"),
        (0x28, 0x00, "Not ready to ready change, medium may have changed"),
        (0x29, 0x00, "Power on, reset, or bus device reset occurred"),
        (0x29, 0x07, "I_T nexus loss occurred"),
        (0x2A, 0x09, "Capacity data has changed"),
        (0x2A, 0x01, "Mode parameters changed"),
        (0x3F, 0x0E, "Reported luns data has changed"),
        (0x3A, 0x00, "Medium not present"),
        (0x44, 0x00, "Internal target failure"),
        (0x47, 0x00, "SCSI parity error"),
        (0x3E, 0x01, "Logical unit failure"),
        (0x3E, 0x02, "Timeout on logical unit"),
    ])
    def test_known(self, asc, ascq, name):
        assert asc_name(asc, ascq) == name

    def test_family_and_unknown(self):
        assert asc_name(0x04, 0x7E) == "Logical unit not ready"
        assert asc_name(0x29, 0x7E) == "Power on, reset, or bus device reset occurred"
        assert asc_name(0x80, 0x00) == "Vendor specific"
        assert asc_name(0x04, 0x90) == "Vendor specific"
        assert asc_name(0x7E, 0x7E) == "Unknown additional sense code"

    def test_sense_key_labels(self):
        assert SenseKey.ILLEGAL_REQUEST.label == "ILLEGAL REQUEST"
        assert SenseKey(0xC).label == "RESERVED"
        assert [SenseKey(i) for i in range(16)]


class TestScsiError:
    def test_check_status_good(self):
        assert check_status(0, b"") is None
        assert check_status(ScsiStatus.CONDITION_MET) is None

    def test_check_condition(self):
        raw = fixed_sense(0x3, 0x11, 0x00)
        with pytest.raises(ScsiError) as info:
            check_status(2, raw)
        err = info.value
        assert isinstance(err, IscsiError)
        assert err.status is ScsiStatus.CHECK_CONDITION
        assert err.sense.key is SenseKey.MEDIUM_ERROR
        assert err.key is SenseKey.MEDIUM_ERROR
        assert err.sense_bytes == raw
        assert str(err) == "MEDIUM ERROR: Unrecovered read error (11/00)"

    @pytest.mark.parametrize("status,text", [
        (0x08, "BUSY"), (0x18, "RESERVATION CONFLICT"), (0x28, "TASK SET FULL"),
        (0x30, "ACA ACTIVE"), (0x40, "TASK ABORTED"), (0x99, "status 0x99"),
    ])
    def test_other_status(self, status, text):
        with pytest.raises(ScsiError) as info:
            check_status(status, b"")
        assert info.value.status == status
        assert info.value.sense is None
        assert str(info.value) == text

    def test_check_condition_garbage_sense(self):
        with pytest.raises(ScsiError) as info:
            check_status(2, H("00 01 02"))
        assert info.value.sense is None
        assert info.value.sense_bytes == H("00 01 02")
        assert str(info.value) == "CHECK CONDITION without usable sense data"

    def test_check_condition_no_sense(self):
        with pytest.raises(ScsiError) as info:
            check_status(2)
        assert info.value.sense is None

    def test_helpers_accept_error(self):
        err = ScsiError(2, parse_sense(fixed_sense(0x6, 0x3F, 0x0E)))
        assert is_unit_attention(err) and is_luns_changed(err) and not is_capacity_changed(err)
        assert not is_unit_attention(None)
        assert not is_unit_attention(ScsiError(8))
        cap = ScsiError(2, parse_sense(fixed_sense(0x6, 0x2A, 0x09)))
        assert is_capacity_changed(cap)
        # 2A/09 with another key is not a capacity-changed unit attention
        assert not is_capacity_changed(parse_sense(fixed_sense(0x5, 0x2A, 0x09)))

    def test_helpers_take_any_exception(self):
        # device.Lun.write asks is_data_protect() of every leaf of a failed write's error,
        # which may be a CommandTimeout or SessionFailed (found by the simulator: it raised
        # AttributeError, so a timed-out write failed with a traceback instead of EIO)
        from iscsifs.errors import CommandTimeout, SessionFailed
        for exc in (CommandTimeout("timed out"), SessionFailed("gone"), ValueError("x")):
            assert not is_data_protect(exc)
            assert not is_unit_attention(exc)
            assert not is_capacity_changed(exc) and not is_luns_changed(exc)
        assert is_data_protect(ScsiError(2, parse_sense(fixed_sense(0x7, 0x27, 0))))

    def test_pickle(self):
        err = ScsiError(2, parse_sense(fixed_sense(0x3, 0x11, 0)), fixed_sense(0x3, 0x11, 0))
        again = pickle.loads(pickle.dumps(err))
        assert str(again) == str(err) and again.sense == err.sense

    def test_sense_is_frozen(self):
        s = parse_sense(fixed_sense(0x3, 0x11, 0))
        with pytest.raises(AttributeError):
            s.asc = 1   # type: ignore[misc]


# =============================================================================================
# Data-in parsers
# =============================================================================================

def std_inquiry(b0, vendor, product, revision, *, rmb=0, version=0x05, add_len=0x3B):
    return (bytes([b0, rmb, version, 0x12, add_len, 0x00, 0x00, 0x02])
            + vendor.ljust(8).encode() + product.ljust(16).encode()
            + revision.ljust(4).encode() + bytes(60 - 36 + 4))


TGT_DISK = std_inquiry(0x00, "IET", "VIRTUAL-DISK", "0001")
TGT_CONTROLLER = std_inquiry(0x0C, "IET", "Controller", "0001")


class TestInquiry:
    def test_tgt_disk(self):
        inq = parse_inquiry(TGT_DISK)
        assert inq == Inquiry(peripheral_qualifier=0, device_type=0, removable=False,
                              version=5, response_data_format=2, hisup=True, tpgs=0,
                              protect=False, cmdque=True, vendor="IET",
                              product="VIRTUAL-DISK", revision="0001")
        assert inq.device_type_name == "disk"
        assert inq.is_disk and inq.connected

    def test_tgt_controller(self):
        inq = parse_inquiry(TGT_CONTROLLER)
        assert inq.device_type == DeviceType.STORAGE_CONTROLLER
        assert inq.device_type_name == "RAID/storage controller"
        assert not inq.is_disk
        assert inq.product == "Controller"

    def test_no_lun(self):
        # qualifier 011b, type 1Fh: no device on this LUN (tgt's TYPE_NO_LUN)
        inq = parse_inquiry(H("7f") + bytes(35))
        assert inq.peripheral_qualifier == 3 and inq.device_type == 0x1F
        assert not inq.connected and inq.device_type_name == "unknown"

    def test_cdrom_removable(self):
        inq = parse_inquiry(std_inquiry(0x05, "QEMU", "QEMU CD-ROM", "2.5+", rmb=0x80))
        assert inq.removable and inq.device_type_name == "CD/DVD"

    def test_names(self):
        assert device_type_name(0x01) == "tape"
        assert device_type_name(0x15) == "type 0x15"

    @pytest.mark.parametrize("length", range(1, 37))
    def test_truncated(self, length):
        inq = parse_inquiry(TGT_DISK[:length])
        assert inq.device_type == 0
        assert "IET".startswith(inq.vendor)
        assert "VIRTUAL-DISK".startswith(inq.product)
        if length >= 36:
            assert inq.revision == "0001"

    def test_lying_additional_length(self):
        inq = parse_inquiry(std_inquiry(0x00, "LIO-ORG", "disk0", "4.0", add_len=0))
        assert (inq.vendor, inq.product, inq.revision) == ("LIO-ORG", "disk0", "4.0")

    def test_nul_padded_and_non_ascii(self):
        raw = bytearray(TGT_DISK)
        raw[8:16] = b"AB\0\0\0\0\0\0"
        raw[16:20] = b"\xff\xfeXY"
        inq = parse_inquiry(bytes(raw))
        assert inq.vendor == "AB"
        assert "XY" in inq.product

    def test_empty(self):
        with pytest.raises(RemoteProtocolError):
            parse_inquiry(b"")


def vpd(page, body, b0=0x00):
    return bytes([b0, page]) + len(body).to_bytes(2, "big") + body


class TestVpd:
    def test_supported_pages(self):
        assert parse_vpd_supported_pages(vpd(0x00, H("00 80 83 b0 b1 b2"))) == \
            [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]

    def test_supported_pages_truncated(self):
        assert parse_vpd_supported_pages(vpd(0x00, H("00 80 83 b0"))[:6]) == [0x00, 0x80]

    def test_wrong_page(self):
        with pytest.raises(RemoteProtocolError):
            parse_vpd_supported_pages(vpd(0x80, b"abc"))

    def test_too_short(self):
        with pytest.raises(RemoteProtocolError):
            parse_vpd_serial(H("00 80 00"))

    def test_serial_tgt(self):
        # tgt right-aligns the serial in a space-filled field
        assert parse_vpd_serial(vpd(0x80, b"            beaf11")) == "beaf11"
        assert parse_vpd_serial(vpd(0x80, b"")) == ""

    def test_serial_truncated(self):
        assert parse_vpd_serial(vpd(0x80, b"SERIAL0123")[:10]) == "SERIAL"

    def test_device_id_tgt(self):
        t10 = H("02 01 00 10") + b"IET     00010001"
        naa = H("01 03 00 10") + H("60000000000000000e00000000010001")
        name = H("53 a8 00 18") + b"iqn.2001-04.com.ex:t1\0\0\0"
        ds = parse_vpd_device_id(vpd(0x83, t10 + naa + name))
        assert [d.designator_type for d in ds] == [
            DesignatorType.T10_VENDOR_ID, DesignatorType.NAA, DesignatorType.SCSI_NAME_STRING]
        assert ds[0].text == "t10.IET     00010001"
        assert ds[1].text == "naa.60000000000000000e00000000010001"
        assert ds[2].protocol_id == 5 and ds[2].piv and ds[2].association == 2
        assert str(ds[2]) == "iqn.2001-04.com.ex:t1"
        assert pick_wwn(ds) == "naa.60000000000000000e00000000010001"

    def test_pick_wwn_preference(self):
        eui = H("01 02 00 08 0011223344556677")
        naa5 = H("01 03 00 08 5001405abcdef012")
        naa6 = H("01 03 00 10 6001405abcdef0123456789abcdef012")
        port_naa = H("01 13 00 08 5000000000000001")   # association: target port
        t10 = H("02 01 00 0c") + b"LIO-ORG abcd"
        assert pick_wwn(parse_vpd_device_id(vpd(0x83, t10 + eui))) == "eui.0011223344556677"
        assert pick_wwn(parse_vpd_device_id(vpd(0x83, naa5 + naa6))) == \
            "naa.6001405abcdef0123456789abcdef012"
        assert pick_wwn(parse_vpd_device_id(vpd(0x83, port_naa + t10))) == "t10.LIO-ORG abcd"
        assert pick_wwn(parse_vpd_device_id(vpd(0x83, port_naa))) is None
        assert pick_wwn([]) is None

    def test_pick_wwn_follows_udev_scsi_id_order(self):
        # scsi_id's search list: NAA 6, NAA 5, any other NAA (the first one), EUI-64 (the
        # first one), T10 vendor ID; logical-unit designators only
        naa2 = H("01 03 00 08 2000000000000002")
        naa3 = H("01 03 00 08 3000000000000003")
        naa5 = H("01 03 00 08 5001405abcdef012")
        eui8 = H("01 02 00 08 0011223344556677")
        eui12 = H("01 02 00 0c 001122334455667788990011")
        t10 = H("02 01 00 0c") + b"LIO-ORG abcd"
        pick = lambda *ds: pick_wwn(parse_vpd_device_id(vpd(0x83, b"".join(ds))))  # noqa: E731
        assert pick(naa3, naa2) == "naa.3000000000000003"     # neither 5 nor 6: the first
        assert pick(naa2, naa3) == "naa.2000000000000002"
        assert pick(naa2, naa5) == "naa.5001405abcdef012"
        assert pick(eui8, eui12) == "eui.0011223344556677"    # the first EUI-64, not the longest
        assert pick(eui12, eui8) == "eui.001122334455667788990011"
        assert pick(t10, eui8, naa3) == "naa.3000000000000003"

    def test_device_id_truncated(self):
        naa = H("01 03 00 10 60000000000000000e00000000010001")
        eui = H("01 02 00 08 0011223344556677")
        page = vpd(0x83, naa + eui)
        assert len(parse_vpd_device_id(page)) == 2
        assert len(parse_vpd_device_id(page[:-1])) == 1
        assert len(parse_vpd_device_id(page[:4 + 20])) == 1
        assert parse_vpd_device_id(page[:6]) == []
        # page length claims more than present
        assert len(parse_vpd_device_id(H("00 83 01 00") + naa)) == 1

    def test_block_limits_full(self):
        body = (H("01 01 0008") + struct.pack(">IIIIIII", 0x4000, 0x400, 0, 0x10000, 16, 8,
                                              0x80000003) + struct.pack(">Q", 0xFFFF))
        body += bytes(0x3C - len(body))
        bl = parse_vpd_block_limits(vpd(0xB0, body))
        assert bl == BlockLimits(max_transfer_length=0x4000, optimal_transfer_length=0x400,
                                 optimal_transfer_length_granularity=8,
                                 max_compare_and_write_length=1, max_prefetch_length=0,
                                 max_unmap_lba_count=0x10000,
                                 max_unmap_block_descriptor_count=16,
                                 optimal_unmap_granularity=8, unmap_granularity_alignment=3,
                                 max_write_same_length=0xFFFF, wsnz=True)

    def test_block_limits_short_page(self):
        # SBC-2 era targets: page length 0Ch (only up to optimal transfer length)
        body = H("00 00 0001") + struct.pack(">II", 2048, 128)
        bl = parse_vpd_block_limits(vpd(0xB0, body))
        assert (bl.max_transfer_length, bl.optimal_transfer_length) == (2048, 128)
        assert bl.max_unmap_lba_count == 0 and bl.unmap_granularity_alignment is None

    def test_block_limits_truncated_mid_field(self):
        # a field cut in half reads as 0 (no limit), never as its high bytes alone
        body = H("00 00 0001") + struct.pack(">II", 0x12345678, 128)
        bl = parse_vpd_block_limits(vpd(0xB0, body)[:10])
        assert bl.optimal_transfer_length_granularity == 1
        assert bl.max_transfer_length == 0
        bl = parse_vpd_block_limits(vpd(0xB0, body)[:15])
        assert (bl.max_transfer_length, bl.optimal_transfer_length) == (0x12345678, 0)

    def test_block_limits_no_limit(self):
        assert parse_vpd_block_limits(vpd(0xB0, b"")) == BlockLimits()


    def test_logical_block_provisioning_tgt(self):
        # tgt with thin_provisioning=1: LBPU, LBPWS, LBPWS10, LBPRZ; thin
        lbp = parse_vpd_logical_block_provisioning(H("00 b2 0004 00 e4 02 00"))
        assert lbp == LogicalBlockProvisioning(lbpu=True, lbpws=True, lbpws10=True,
                                               lbprz_field=1, provisioning_type=2)
        assert lbp.lbprz and lbp.provisioning_type == ProvisioningType.THIN
        # tgt without it: nothing, fully provisioned
        assert parse_vpd_logical_block_provisioning(H("00 b2 0004 00 00 00 00")) == \
            LogicalBlockProvisioning()

    def test_logical_block_provisioning_fields(self):
        lbp = parse_vpd_logical_block_provisioning(vpd(0xB2, H("0c 4b 51 32") + bytes(8)))
        assert lbp.threshold_exponent == 12 and not lbp.lbpu and lbp.lbpws
        assert lbp.lbprz_field == 0b010 and not lbp.lbprz   # the initialization pattern
        assert lbp.anc_sup and lbp.dp
        assert (lbp.minimum_percentage, lbp.provisioning_type) == (10, 1)
        assert lbp.threshold_percentage == 0x32

    @pytest.mark.parametrize("length, lbpu", [(4, False), (5, False), (6, True), (8, True)])
    def test_logical_block_provisioning_truncated(self, length, lbpu):
        page = H("00 b2 0004 00 e4 02 00")[:length]
        lbp = parse_vpd_logical_block_provisioning(page)
        assert lbp.lbpu == lbpu
        assert lbp.provisioning_type == (2 if length >= 7 else 0)

    def test_logical_block_provisioning_lies(self):
        # the page length claims more than is there, or less: only what is present counts
        assert parse_vpd_logical_block_provisioning(H("00 b2 00ff 00 80")).lbpu
        assert not parse_vpd_logical_block_provisioning(H("00 b2 0001 00 80 02")).lbpu
        with pytest.raises(RemoteProtocolError):
            parse_vpd_logical_block_provisioning(H("00 b0 0004 00 e4 02 00"))
        with pytest.raises(RemoteProtocolError):
            parse_vpd_logical_block_provisioning(H("00 b2 00"))

    @given(st.binary(max_size=80))
    @settings(max_examples=200)
    def test_logical_block_provisioning_fuzz(self, raw):
        try:
            parse_vpd_logical_block_provisioning(b"\x00\xb2" + raw)
        except RemoteProtocolError:
            pass


class TestCapacity:
    def test_rc10(self):
        cap = parse_read_capacity10(H("001fffff 00000200"))
        assert cap == Capacity(last_lba=0x1FFFFF, block_size=512)
        assert cap.num_blocks == 0x200000 and cap.size == 1 << 30
        assert not cap.needs_16

    def test_rc10_needs_16(self):
        assert parse_read_capacity10(H("ffffffff 00000200")).needs_16

    @pytest.mark.parametrize("raw", [b"", H("00000000 000002"), H("00000010 00000000")])
    def test_rc10_bad(self, raw):
        with pytest.raises(RemoteProtocolError):
            parse_read_capacity10(raw)

    def test_rc16(self):
        raw = H("00000001ffffffff 00001000 05 03 c0 07") + bytes(16)
        cap = parse_read_capacity16(raw)
        assert cap.last_lba == 0x1FFFFFFFF and cap.block_size == 4096
        assert cap.size == 0x200000000 * 4096
        assert cap.protection_type == 3
        assert cap.logical_per_physical_exponent == 3 and cap.physical_block_size == 32768
        assert cap.lbpme and cap.lbprz and cap.lowest_aligned_lba == 7
        assert not cap.needs_16

    def test_rc16_plain_and_truncated(self):
        cap = parse_read_capacity16(H("00000000000fffff 00000200"))
        assert cap == Capacity(last_lba=0xFFFFF, block_size=512)
        assert cap.protection_type is None and cap.physical_block_size == 512
        cap = parse_read_capacity16(H("00000000000fffff 00000200 00 02"))
        assert cap.logical_per_physical_exponent == 2
        cap = parse_read_capacity16(H("00000000000fffff 00000200 00 02 bf"))
        assert cap.lowest_aligned_lba == 0 and not cap.lbpme   # half a field: ignored

    @pytest.mark.parametrize("raw", [b"", H("00000000000fffff 000002"),
                                     H("00000000000fffff 00000000")])
    def test_rc16_bad(self, raw):
        with pytest.raises(RemoteProtocolError):
            parse_read_capacity16(raw)


def report_luns_data(entries, list_length=None):
    body = b"".join(entries)
    n = len(body) if list_length is None else list_length
    return n.to_bytes(4, "big") + bytes(4) + body


class TestReportLuns:
    def test_tgt(self):
        # tgt: LUN 0 controller, LUN 1 disk, LUN 300 (flat addressing above 255)
        data = report_luns_data([H("0000000000000000"), H("0001000000000000"),
                                 H("412c000000000000")])
        assert parse_report_luns(data) == [0, 1, 300]
        assert report_luns_needed(data) == 32

    def test_flat_and_peripheral(self):
        assert decode_lun_entry(H("4005000000000000")) == 5
        assert decode_lun_entry(H("7fff000000000000")) == 16383
        assert decode_lun_entry(H("00ff000000000000")) == 255

    @pytest.mark.parametrize("entry", [
        "0105000000000000",   # peripheral, bus 1
        "8001000000000000",   # logical unit addressing
        "c101000000000000",   # well known LU (REPORT LUNS W-LUN)
        "0001000200000000",   # two-level LUN
        "00",                 # wrong size
    ])
    def test_unrepresentable(self, entry):
        assert decode_lun_entry(H(entry)) is None
        if len(entry) == 16:
            assert parse_report_luns(report_luns_data([H(entry)])) == []

    def test_dedup_and_order(self):
        data = report_luns_data([H("0003000000000000"), H("4003000000000000"),
                                 H("0001000000000000")])
        assert parse_report_luns(data) == [3, 1]

    def test_truncated(self):
        entries = [bytes([0, i]) + bytes(6) for i in range(10)]
        data = report_luns_data(entries)
        short = data[:8 + 16 + 5]   # two full entries, a partial one
        assert parse_report_luns(short) == [0, 1]
        assert report_luns_needed(short) == 88

    def test_list_length_smaller_than_data(self):
        data = report_luns_data([H("0000000000000000"), H("0001000000000000")], list_length=8)
        assert parse_report_luns(data) == [0]

    def test_empty(self):
        assert parse_report_luns(report_luns_data([])) == []

    @pytest.mark.parametrize("raw", [b"", H("00000008 000000")])
    def test_too_short(self, raw):
        with pytest.raises(RemoteProtocolError):
            parse_report_luns(raw)
        if len(raw) < 4:
            with pytest.raises(RemoteProtocolError):
                report_luns_needed(raw)


class TestModeSense:
    def test_six(self):
        assert parse_mode_sense_wp(H("0b 00 80 08") + bytes(8), ten=False)
        assert not parse_mode_sense_wp(H("03 00 00 00"), ten=False)
        assert not parse_mode_sense_wp(H("03 00 10 00"), ten=False)   # DPOFUA only

    def test_ten(self):
        assert parse_mode_sense_wp(H("0006 00 80 00 00 0000"), ten=True)
        assert not parse_mode_sense_wp(H("0006 00 10 00 00 0000"), ten=True)
        assert parse_mode_sense_wp(H("0006 00 80"), ten=True)   # truncated after the byte

    @pytest.mark.parametrize("raw,ten", [(b"", False), (H("03 00"), False), (H("0006 00"), True)])
    def test_short(self, raw, ten):
        with pytest.raises(RemoteProtocolError):
            parse_mode_sense_wp(raw, ten)


# =============================================================================================
# Fuzz: every parser either returns or raises RemoteProtocolError
# =============================================================================================

PARSERS = [
    parse_inquiry, parse_vpd_supported_pages, parse_vpd_serial, parse_vpd_device_id,
    parse_vpd_block_limits, parse_read_capacity10, parse_read_capacity16, parse_report_luns,
    report_luns_needed, lambda d: parse_mode_sense_wp(d, False),
    lambda d: parse_mode_sense_wp(d, True), lambda d: pick_wwn(parse_vpd_device_id(d)),
]


@pytest.mark.parametrize("parser", PARSERS)
@given(raw=st.binary(max_size=300))
@settings(max_examples=300)
def test_fuzz_parsers(parser, raw):
    try:
        result = parser(raw)
    except RemoteProtocolError:
        return
    repr(result)


@given(page=st.sampled_from([0x00, 0x80, 0x83, 0xB0]), body=st.binary(max_size=200),
       claimed=st.integers(0, 0xFFFF))
@settings(max_examples=500)
def test_fuzz_vpd_pages_with_header(page, body, claimed):
    """Well-formed header, random body and length: parsers must not fail at all."""
    raw = bytes([0, page]) + claimed.to_bytes(2, "big") + body
    parser = {0x00: parse_vpd_supported_pages, 0x80: parse_vpd_serial,
              0x83: lambda d: [d.text for d in parse_vpd_device_id(d)],
              0xB0: parse_vpd_block_limits}[page]
    parser(raw)


@given(entries=st.lists(st.binary(min_size=8, max_size=8), max_size=20),
       cut=st.integers(0, 200), claimed=st.integers(0, 2**32 - 1))
def test_fuzz_report_luns(entries, cut, claimed):
    raw = report_luns_data(entries, claimed)
    raw = raw[:max(8, len(raw) - cut)]
    luns = parse_report_luns(raw)
    assert all(0 <= lun < 16384 for lun in luns)
    assert len(luns) == len(set(luns))
