"""PDU layouts, encode, and the incremental decoder (iscsifs.core.pdu)."""

import dataclasses
import struct

import pytest

from iscsifs.core import pdu as P
from iscsifs.core.pdu import (
    BHS_LEN, RESERVED_TAG, AsyncMessage, DataIn, DataOut, LoginRequest, LoginResponse,
    LogoutRequest, LogoutResponse, NopIn, NopOut, Opcode, PduDecoder, R2T, Reject, ScsiCommand,
    ScsiResponse, SnackRequest, TaskManagementRequest, TaskManagementResponse, TextRequest,
    TextResponse, crc32c, decode, decode_lun, encode, encode_lun,
)
from iscsifs.errors import LocalProtocolError, RemoteProtocolError

LUN5 = encode_lun(5)
LUN300 = encode_lun(300)

INITIATOR_PDUS = [
    NopOut(itt=1),
    NopOut(itt=RESERVED_TAG, ttt=0x55, lun=LUN5, cmd_sn=9, exp_stat_sn=4, immediate=True,
           data=b"ping!"),
    NopOut(itt=3, cmd_sn=0xFFFFFFFF, immediate=False, data=b"1234"),
    ScsiCommand(itt=7, lun=LUN5, cdb=bytes([0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0]).ljust(16, b"\0"),
                expected_data_transfer_length=4096, cmd_sn=7, exp_stat_sn=3, read=True,
                write=False),
    ScsiCommand(itt=8, lun=LUN300, cdb=bytes(range(1, 17)), expected_data_transfer_length=3,
                cmd_sn=8, exp_stat_sn=3, read=False, write=True, final=False, attr=2,
                immediate=True, data=b"abc"),
    ScsiCommand(itt=9, lun=0, cdb=bytes(range(32)), expected_data_transfer_length=0,
                cmd_sn=1, exp_stat_sn=1, read=True, write=True, attr=4),
    ScsiCommand(itt=10, lun=0, cdb=bytes(range(17)), expected_data_transfer_length=0,
                cmd_sn=1, exp_stat_sn=1, read=False, write=False,
                ahs=struct.pack(">HBBI", 5, 2, 0, 1234), data=b"z" * 9),
    TaskManagementRequest(itt=11, function=1, lun=LUN5, referenced_task_tag=7, cmd_sn=12,
                          exp_stat_sn=4, ref_cmd_sn=7, exp_data_sn=2),
    TaskManagementRequest(itt=12, function=5, lun=LUN5, referenced_task_tag=RESERVED_TAG,
                          cmd_sn=13, exp_stat_sn=4, immediate=False),
    LoginRequest(isid=0x00023D000001, tsih=0, itt=0, cid=0, cmd_sn=1, exp_stat_sn=0, csg=0,
                 nsg=1, transit=True, data=b"InitiatorName=iqn.2016-04.x:y\0"),
    LoginRequest(isid=0xFFFFFFFFFFFF, tsih=0x1234, itt=5, cid=7, cmd_sn=2, exp_stat_sn=9,
                 csg=1, nsg=3, transit=False, cont=True, version_max=1, version_min=0),
    TextRequest(itt=20, ttt=RESERVED_TAG, data=b"SendTargets=All\0"),
    TextRequest(itt=21, ttt=0x77, lun=LUN5, cmd_sn=3, exp_stat_sn=4, final=False, cont=True,
                immediate=False),
    DataOut(itt=7, ttt=0x99, lun=LUN5, exp_stat_sn=4, data_sn=0, buffer_offset=8192,
            final=True, data=b"\x01" * 1001),
    DataOut(itt=7, ttt=RESERVED_TAG, lun=0, exp_stat_sn=4, data_sn=3, buffer_offset=0,
            final=False),
    LogoutRequest(itt=30, reason=0, cid=0, cmd_sn=40, exp_stat_sn=41),
    LogoutRequest(itt=31, reason=2, cid=3, cmd_sn=40, exp_stat_sn=41, immediate=False),
    SnackRequest(itt=7, ttt=RESERVED_TAG, lun=LUN5, exp_stat_sn=4, beg_run=1, run_length=2,
                 type=1),
]

TARGET_PDUS = [
    NopIn(itt=1, ttt=RESERVED_TAG, lun=0, stat_sn=5, exp_cmd_sn=6, max_cmd_sn=37),
    NopIn(itt=RESERVED_TAG, ttt=0xABCD, lun=LUN5, stat_sn=5, exp_cmd_sn=6, max_cmd_sn=5,
          data=b"xyz"),
    ScsiResponse(itt=7, response=0, status=0, stat_sn=10, exp_cmd_sn=8, max_cmd_sn=40,
                 exp_data_sn=1, bidi_read_residual_count=0, residual_count=0, overflow=False,
                 underflow=False, bidi_overflow=False, bidi_underflow=False),
    ScsiResponse(itt=8, response=1, status=2, stat_sn=11, exp_cmd_sn=9, max_cmd_sn=40,
                 exp_data_sn=0, bidi_read_residual_count=6, residual_count=512, overflow=True,
                 underflow=False, bidi_overflow=False, bidi_underflow=True,
                 data=b"\x00\x12" + b"\x70\x00\x05\x00\x00\x00\x00\x0a" + b"\x00" * 10),
    ScsiResponse(itt=9, response=0, status=0, stat_sn=12, exp_cmd_sn=9, max_cmd_sn=40,
                 exp_data_sn=0, bidi_read_residual_count=0, residual_count=3, overflow=False,
                 underflow=True, bidi_overflow=True, bidi_underflow=False),
    TaskManagementResponse(itt=11, response=0, stat_sn=13, exp_cmd_sn=13, max_cmd_sn=44),
    LoginResponse(isid=0x00023D000001, tsih=0x0102, itt=0, stat_sn=0, exp_cmd_sn=1,
                  max_cmd_sn=1, status_class=0, status_detail=0, csg=1, nsg=3, transit=True,
                  cont=False, version_max=0, version_active=0,
                  data=b"TargetPortalGroupTag=1\0HeaderDigest=None\0"),
    LoginResponse(isid=1, tsih=0, itt=4, stat_sn=1, exp_cmd_sn=1, max_cmd_sn=1,
                  status_class=2, status_detail=1, csg=0, nsg=0, transit=False, cont=True,
                  version_max=2, version_active=1),
    TextResponse(itt=20, ttt=RESERVED_TAG, lun=0, stat_sn=2, exp_cmd_sn=3, max_cmd_sn=3,
                 final=True, cont=False, data=b"TargetName=iqn.2003-01.a:b\0"),
    TextResponse(itt=20, ttt=0x66, lun=0, stat_sn=2, exp_cmd_sn=3, max_cmd_sn=3,
                 final=False, cont=True, data=b"TargetAddr"),
    DataIn(itt=7, ttt=RESERVED_TAG, lun=LUN5, stat_sn=0, exp_cmd_sn=8, max_cmd_sn=40,
           data_sn=0, buffer_offset=0, residual_count=0, final=False, acknowledge=False,
           overflow=False, underflow=False, status_present=False, status=0,
           data=bytes(range(256)) * 4),
    DataIn(itt=7, ttt=0x12, lun=LUN5, stat_sn=14, exp_cmd_sn=8, max_cmd_sn=40,
           data_sn=1, buffer_offset=1024, residual_count=99, final=True, acknowledge=True,
           overflow=True, underflow=True, status_present=True, status=0x02, data=b"tail!"),
    LogoutResponse(itt=30, response=0, stat_sn=15, exp_cmd_sn=41, max_cmd_sn=72,
                   time2wait=2, time2retain=20),
    R2T(itt=8, ttt=0x1000, lun=LUN300, stat_sn=9, exp_cmd_sn=9, max_cmd_sn=40, r2t_sn=0,
        buffer_offset=65536, desired_data_transfer_length=262144),
    AsyncMessage(lun=LUN5, stat_sn=16, exp_cmd_sn=9, max_cmd_sn=40, async_event=1,
                 async_vcode=0, parameter1=0, parameter2=0, parameter3=5),
    AsyncMessage(lun=0, stat_sn=17, exp_cmd_sn=9, max_cmd_sn=40, async_event=0,
                 async_vcode=7, parameter1=0xFFFF, parameter2=2, parameter3=3,
                 data=b"\x00\x08sense!!!"),
    Reject(reason=0x09, stat_sn=18, exp_cmd_sn=9, max_cmd_sn=40, data_sn=0,
           data=b"".join(encode(NopOut(itt=0x4242)))),
]

ALL_PDUS = INITIATOR_PDUS + TARGET_PDUS
DIGESTS = [(False, False), (True, False), (False, True), (True, True)]


def _id(p):
    return type(p).__name__


def wire(p, hd=False, dd=False):
    return b"".join(bytes(b) for b in encode(p, header_digest=hd, data_digest=dd))


def decoder_for(p, **kw):
    is_target_pdu = P.OPCODES[type(p)] >= 0x20
    kw.setdefault("max_data_segment_length", 1 << 20)
    return PduDecoder(initiator_side=is_target_pdu, **kw)


def test_every_opcode_has_a_class_and_a_sample():
    assert set(P.PDU_TYPES) == set(Opcode)
    assert {type(p) for p in ALL_PDUS} == set(P.PDU_TYPES.values())
    for cls in P.PDU_TYPES.values():
        assert cls.__dataclass_params__.frozen
        assert hasattr(cls, "__slots__")
        assert [f.name for f in dataclasses.fields(cls)][-1] == "data"
        assert cls.__dataclass_fields__["data"].default == b""


# ------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("hd, dd", DIGESTS)
@pytest.mark.parametrize("p", ALL_PDUS, ids=_id)
def test_round_trip_whole(p, hd, dd):
    raw = wire(p, hd, dd)
    assert len(raw) % 4 == 0
    d = decoder_for(p, header_digest=hd, data_digest=dd)
    d.feed(raw)
    assert d.next_pdu() == p
    assert d.next_pdu() is None
    assert decode(raw, header_digest=hd, data_digest=dd) == p


@pytest.mark.parametrize("hd, dd", [(False, False), (True, True)])
@pytest.mark.parametrize("p", ALL_PDUS, ids=_id)
def test_round_trip_one_byte_at_a_time(p, hd, dd):
    raw = wire(p, hd, dd)
    d = decoder_for(p, header_digest=hd, data_digest=dd)
    got = []
    for i in range(len(raw)):
        d.feed(raw[i:i + 1])
        pdu = d.next_pdu()
        if pdu is not None:
            got.append((i, pdu))
    assert got == [(len(raw) - 1, p)]


@pytest.mark.parametrize("p", ALL_PDUS, ids=_id)
def test_trailing_data_stays_buffered(p):
    raw = wire(p)
    d = decoder_for(p)
    d.feed(raw + raw[:30])
    assert d.next_pdu() == p
    assert d.next_pdu() is None
    assert d.buffered == 30
    d.feed(raw[30:])
    assert d.next_pdu() == p
    assert d.buffered == 0


def test_many_pdus_in_one_feed_and_split_feeds():
    stream = b"".join(wire(p, True, True) for p in TARGET_PDUS) * 3
    for chunk in (1, 7, 48, 1000, len(stream)):
        d = PduDecoder(header_digest=True, data_digest=True, max_data_segment_length=4096)
        got = []
        for i in range(0, len(stream), chunk):
            d.feed(memoryview(stream)[i:i + chunk])
            while (pdu := d.next_pdu()) is not None:
                got.append(pdu)
        assert got == TARGET_PDUS * 3, chunk


def test_large_stream_compacts_buffer():
    p = DataIn(itt=1, ttt=RESERVED_TAG, lun=0, stat_sn=0, exp_cmd_sn=1, max_cmd_sn=1,
               data_sn=0, buffer_offset=0, residual_count=0, final=False, acknowledge=False,
               overflow=False, underflow=False, status_present=False, status=0,
               data=b"q" * 8000)
    raw = wire(p)
    d = PduDecoder(capacity=4 * len(raw))
    for _ in range(100):
        d.feed(raw[:5000])
        d.feed(raw[5000:] + raw[:100])
        assert d.next_pdu() == p
        d.feed(raw[100:])
        assert d.next_pdu() == p
    assert len(d._buf) == 4 * len(raw)      # reused from the front, never grown


def test_receive_into_get_buffer_whole_and_split():
    p = DataIn(itt=1, ttt=RESERVED_TAG, lun=0, stat_sn=0, exp_cmd_sn=1, max_cmd_sn=1,
               data_sn=0, buffer_offset=0, residual_count=0, final=False, acknowledge=False,
               overflow=False, underflow=False, status_present=False, status=0,
               data=b"z" * 20000)
    raw = wire(p) * 3
    d = PduDecoder(max_data_segment_length=65536, capacity=1024)
    got = []
    for i in range(0, len(raw), 777):          # any chunking, as recv_into would deliver it
        piece = raw[i:i + 777]
        view = d.get_buffer(len(piece))
        assert len(view) >= len(piece)
        view[:len(piece)] = piece
        d.buffer_updated(len(piece))
        while (pdu := d.next_pdu()) is not None:
            got.append(pdu)
    assert got == [p, p, p] and d.buffered == 0
    # room for the whole PDU being received is offered at once
    d.feed(raw[:100])
    assert len(d.get_buffer(1)) >= len(wire(p)) - 100


def test_buffer_updated_beyond_the_offer_is_a_local_error():
    d = PduDecoder(capacity=64)
    view = d.get_buffer(10)
    with pytest.raises(LocalProtocolError):
        d.buffer_updated(len(view) + 1)


def test_borrowed_data_in_payload_is_a_view_until_the_next_receive():
    p = DataIn(itt=1, ttt=RESERVED_TAG, lun=0, stat_sn=0, exp_cmd_sn=1, max_cmd_sn=1,
               data_sn=0, buffer_offset=0, residual_count=0, final=True, acknowledge=False,
               overflow=False, underflow=False, status_present=True, status=0,
               data=b"payload!")
    nop = NopIn(itt=2, ttt=RESERVED_TAG, lun=0, stat_sn=1, exp_cmd_sn=1, max_cmd_sn=1,
                data=b"ping")
    d = PduDecoder(borrow=True)
    d.feed(wire(p) + wire(nop))
    got = d.next_pdu()
    assert isinstance(got.data, memoryview) and got.data == b"payload!" and got == p
    assert isinstance(d.next_pdu().data, bytes)      # only Data-In payloads are borrowed


def test_digest_settings_can_change_between_pdus():
    p = NopIn(itt=1, ttt=RESERVED_TAG, lun=0, stat_sn=1, exp_cmd_sn=1, max_cmd_sn=1, data=b"a")
    d = PduDecoder()
    d.feed(wire(p) + wire(p, True, True))
    assert d.next_pdu() == p
    d.header_digest = d.data_digest = True
    assert d.next_pdu() == p


def test_decoded_data_is_bytes_and_independent_of_buffer():
    p = TARGET_PDUS[-1]
    d = PduDecoder()
    d.feed(wire(p))
    got = d.next_pdu()
    assert type(got.data) is bytes
    d.feed(b"more")      # would fail with BufferError if a view into the buffer were alive
    assert got == p


def test_encode_does_not_copy_data_and_memoryview_data():
    payload = bytearray(b"\x07" * 4097)
    view = memoryview(payload)
    p = DataOut(itt=1, ttt=2, lun=0, exp_stat_sn=0, data_sn=0, buffer_offset=0, final=True,
                data=view)
    bufs = encode(p, data_digest=True)
    assert bufs[1] is view
    assert bytes(bufs[2]) == b"\0\0\0"
    assert len(bufs) == 4
    got = decode(b"".join(bytes(b) for b in bufs), data_digest=True)
    assert got.data == bytes(payload)
    assert struct.unpack_from(">I", bufs[0], 4)[0] == 4097


# ------------------------------------------------------------------------- layout by hand

def test_login_request_known_bytes():
    p = LoginRequest(isid=0x00023D000001, tsih=0, itt=0x12345678, cid=0, cmd_sn=1,
                     exp_stat_sn=0, csg=0, nsg=1, transit=True, data=b"ab=c\0")
    expected = bytes([
        0x43,                     # I bit | opcode 0x03 (§11.12: I is always 1)
        0x81,                     # T=1, C=0, CSG=0, NSG=1
        0x00, 0x00,               # Version-max, Version-min
        0x00,                     # TotalAHSLength
        0x00, 0x00, 0x05,         # DataSegmentLength
        0x00, 0x02, 0x3D, 0x00, 0x00, 0x01,   # ISID
        0x00, 0x00,               # TSIH
        0x12, 0x34, 0x56, 0x78,   # ITT
        0x00, 0x00,               # CID
        0x00, 0x00,               # reserved
        0x00, 0x00, 0x00, 0x01,   # CmdSN
        0x00, 0x00, 0x00, 0x00,   # ExpStatSN
    ]) + bytes(16) + b"ab=c\0" + b"\0\0\0"
    assert len(expected) == 56
    assert wire(p) == expected
    assert decode(expected) == p


def test_scsi_command_known_bytes():
    cdb = bytes([0x28, 0, 0, 0, 0x10, 0x00, 0, 0, 0x08, 0])     # READ(10) LBA 16, 8 blocks
    p = ScsiCommand(itt=1, lun=encode_lun(300), cdb=cdb.ljust(16, b"\0"),
                    expected_data_transfer_length=4096, cmd_sn=7, exp_stat_sn=3, read=True,
                    write=False)
    expected = bytes([
        0x01,                     # opcode, I=0
        0xC1,                     # F | R | ATTR=1 (simple)
        0x00, 0x00,               # reserved
        0x00, 0x00, 0x00, 0x00,   # TotalAHSLength, DataSegmentLength
        0x41, 0x2C, 0, 0, 0, 0, 0, 0,   # LUN 300, flat space addressing
        0x00, 0x00, 0x00, 0x01,   # ITT
        0x00, 0x00, 0x10, 0x00,   # Expected Data Transfer Length
        0x00, 0x00, 0x00, 0x07,   # CmdSN
        0x00, 0x00, 0x00, 0x03,   # ExpStatSN
    ]) + cdb + bytes(6)
    assert len(expected) == BHS_LEN
    assert wire(p) == expected
    assert decode(expected) == p
    # a short CDB is zero padded in the BHS
    short = dataclasses.replace(p, cdb=cdb)
    assert wire(short) == expected
    assert decode(wire(short)).cdb == cdb.ljust(16, b"\0")


def test_scsi_command_extended_cdb_ahs_layout():
    cdb = bytes(range(1, 33))    # 32-byte CDB -> 16 in the BHS, 16 in an extended CDB AHS
    p = ScsiCommand(itt=2, lun=0, cdb=cdb, expected_data_transfer_length=0, cmd_sn=1,
                    exp_stat_sn=1, read=False, write=False, data=b"d")
    raw = wire(p, hd=True)
    assert raw[4] == 5                                   # TotalAHSLength: 20 bytes = 5 words
    assert raw[5:8] == b"\0\0\x01"
    assert raw[32:48] == cdb[:16]
    ahs = raw[48:68]
    assert ahs[:4] == bytes([0x00, 0x11, 0x01, 0x00])    # AHSLength 17, type 1, reserved
    assert ahs[4:] == cdb[16:]
    assert raw[68:72] == struct.pack("<I", crc32c(raw[:68]))   # header digest covers the AHS
    assert raw[72:] == b"d\0\0\0"
    assert decode(raw, header_digest=True) == p


def test_scsi_command_odd_extended_cdb_is_padded():
    p = ScsiCommand(itt=2, lun=0, cdb=bytes(range(1, 19)), expected_data_transfer_length=0,
                    cmd_sn=1, exp_stat_sn=1, read=False, write=False)
    raw = wire(p)
    assert raw[4] == 2                                   # 4 + 2 bytes -> padded to 8
    assert raw[48:56] == bytes([0, 3, 1, 0, 17, 18, 0, 0])
    assert decode(raw) == p


def test_target_pdu_flag_bytes():
    di = TARGET_PDUS[11]            # DataIn with every flag set
    raw = wire(di)
    assert raw[0] == 0x25 and raw[1] == 0xC7 and raw[3] == 0x02
    sr = TARGET_PDUS[3]             # ScsiResponse overflow + bidi underflow
    raw = wire(sr)
    assert raw[:4] == bytes([0x21, 0x80 | 0x08 | 0x04, 1, 2])
    lr = TARGET_PDUS[6]
    raw = wire(lr)
    assert raw[:4] == bytes([0x23, 0x87, 0, 0])
    assert raw[36:38] == b"\0\0"
    am = TARGET_PDUS[14]
    raw = wire(am)
    assert raw[16:20] == b"\xff\xff\xff\xff" and raw[36] == 1 and raw[42:44] == b"\0\x05"


def test_immediate_bit():
    assert wire(NopOut(itt=1))[0] == 0x40
    assert wire(NopOut(itt=1, immediate=False))[0] == 0x00
    assert wire(TextRequest(itt=1, ttt=RESERVED_TAG))[:2] == b"\x44\x80"
    assert wire(LogoutRequest(itt=1, reason=1, cid=0, cmd_sn=0, exp_stat_sn=0))[:2] == b"\x46\x81"


def test_digests_little_endian_rfc3720_vectors():
    # RFC 3720 appendix B.4: CRC32C of 32 zero bytes is sent as aa 36 91 8a
    p = NopIn(itt=1, ttt=RESERVED_TAG, lun=0, stat_sn=0, exp_cmd_sn=0, max_cmd_sn=0,
              data=bytes(32))
    bufs = encode(p, data_digest=True)
    assert bytes(bufs[-1]) == bytes([0xAA, 0x36, 0x91, 0x8A])
    p = dataclasses.replace(p, data=b"\xff" * 32)
    assert bytes(encode(p, data_digest=True)[-1]) == bytes([0x43, 0xAB, 0xA8, 0x62])
    p = dataclasses.replace(p, data=bytes(range(32)))
    assert bytes(encode(p, data_digest=True)[-1]) == bytes([0x4E, 0x79, 0xDD, 0x46])


def test_data_digest_covers_padding_and_is_absent_without_data():
    p = NopIn(itt=1, ttt=RESERVED_TAG, lun=0, stat_sn=0, exp_cmd_sn=0, max_cmd_sn=0,
              data=b"abcde")
    bufs = encode(p, header_digest=True, data_digest=True)
    assert [len(b) for b in bufs] == [52, 5, 3, 4]
    assert bytes(bufs[3]) == struct.pack("<I", crc32c(b"abcde\0\0\0"))
    empty = encode(dataclasses.replace(p, data=b""), header_digest=True, data_digest=True)
    assert len(empty) == 1 and len(empty[0]) == 52


@pytest.mark.parametrize("n, field", [
    (0, 0), (1, 0x0001 << 48), (255, 0x00FF << 48), (256, 0x4100 << 48),
    (300, 0x412C << 48), (16383, 0x7FFF << 48),
])
def test_lun_addressing(n, field):
    assert encode_lun(n) == field
    assert decode_lun(field) == n


@pytest.mark.parametrize("n", [-1, 16384, 1 << 20])
def test_encode_lun_out_of_range(n):
    with pytest.raises(ValueError):
        encode_lun(n)


@pytest.mark.parametrize("field", [
    0x0105 << 48,            # peripheral, bus 1
    0x8000 << 48,            # logical unit addressing
    0xC000 << 48,            # extended addressing
    (0x0001 << 48) | 1,      # second level
    1 << 64,
])
def test_decode_lun_unsupported(field):
    with pytest.raises(ValueError):
        decode_lun(field)


# ------------------------------------------------------------------------------ sense / reject

def _rsp(data):
    return ScsiResponse(itt=1, response=0, status=2, stat_sn=0, exp_cmd_sn=0, max_cmd_sn=0,
                        exp_data_sn=0, bidi_read_residual_count=0, residual_count=0,
                        overflow=False, underflow=False, bidi_overflow=False,
                        bidi_underflow=False, data=data)


def test_sense_property():
    assert _rsp(b"").sense == b""
    assert _rsp(b"\x00\x03abcRESPONSE").sense == b"abc"
    assert _rsp(b"\x00\x00").sense == b""
    assert _rsp(memoryview(b"\x00\x01z")).sense == b"z"


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x05abcd", b"\xff\xff"])
def test_sense_length_lies(data):
    with pytest.raises(RemoteProtocolError, match="Sense"):
        _rsp(data).sense


def test_reject_rejected_itt():
    assert TARGET_PDUS[-1].rejected_itt == 0x4242
    assert dataclasses.replace(TARGET_PDUS[-1], data=b"short").rejected_itt is None


# ---------------------------------------------------------------------------------- bad input

def _broken(d, raw, match):
    d.feed(raw)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        d.next_pdu()
    assert info.value.reason
    # the decoder stays broken
    with pytest.raises(RemoteProtocolError):
        d.next_pdu()
    with pytest.raises(RemoteProtocolError):
        d.feed(b"x")
    return info.value


def _nop_in(data=b""):
    return NopIn(itt=1, ttt=RESERVED_TAG, lun=0, stat_sn=0, exp_cmd_sn=0, max_cmd_sn=0, data=data)


@pytest.mark.parametrize("opcode", [0x00, 0x01, 0x05, 0x07, 0x10, 0x1F, 0x27, 0x30, 0x3E])
def test_unknown_opcode_for_initiator(opcode):
    raw = bytearray(wire(_nop_in()))
    raw[0] = opcode
    _broken(PduDecoder(), bytes(raw), "opcode")


@pytest.mark.parametrize("opcode", [0x20, 0x21, 0x25, 0x3F, 0x07, 0x11])
def test_unknown_opcode_for_target(opcode):
    raw = bytearray(wire(NopOut(itt=1)))
    raw[0] = opcode
    _broken(PduDecoder(initiator_side=False), bytes(raw), "opcode")


def test_decode_any_side_unknown_opcode():
    raw = bytearray(wire(NopOut(itt=1)))
    raw[0] = 0x3A
    with pytest.raises(RemoteProtocolError, match="opcode"):
        decode(bytes(raw))


def test_data_segment_length_beyond_limit():
    raw = wire(_nop_in(b"x" * 8193))
    err = _broken(PduDecoder(max_data_segment_length=8192), raw[:BHS_LEN], "DataSegmentLength")
    assert "8193" in err.reason and "8192" in err.reason


def test_data_segment_length_at_limit_is_fine():
    p = _nop_in(b"x" * 8192)
    d = PduDecoder(max_data_segment_length=8192)
    d.feed(wire(p))
    assert d.next_pdu() == p


def test_max_24_bit_data_segment_length_rejected_early():
    raw = bytearray(wire(_nop_in()))
    raw[5:8] = b"\xff\xff\xff"
    # with a huge configured limit, 2^24-1 is acceptable and the decoder just waits for data
    d = PduDecoder(max_data_segment_length=1 << 30)
    d.feed(bytes(raw))
    assert d.next_pdu() is None
    _broken(PduDecoder(), bytes(raw), "DataSegmentLength")


def test_encode_rejects_oversized_data():
    big = memoryview(bytearray(1 << 24))
    with pytest.raises(LocalProtocolError):
        encode(_nop_in(big))


def test_encode_rejects_out_of_range_fields():
    with pytest.raises(LocalProtocolError):
        encode(NopOut(itt=1 << 32))
    with pytest.raises(LocalProtocolError):
        encode(dataclasses.replace(INITIATOR_PDUS[9], isid=1 << 48))
    with pytest.raises(LocalProtocolError):
        encode(dataclasses.replace(INITIATOR_PDUS[9], csg=4))
    with pytest.raises(LocalProtocolError):
        encode(dataclasses.replace(INITIATOR_PDUS[3], attr=8))
    with pytest.raises(LocalProtocolError):
        encode(dataclasses.replace(INITIATOR_PDUS[3], ahs=b"abc"))
    with pytest.raises(LocalProtocolError):
        encode(dataclasses.replace(INITIATOR_PDUS[3], cdb=bytes(16 + 1020)))
    with pytest.raises(LocalProtocolError):
        encode("not a pdu")


@pytest.mark.parametrize("hd", [False, True])
def test_header_digest_mismatch(hd):
    raw = bytearray(wire(_nop_in(b"abc"), hd=True))
    if hd:
        raw[48] ^= 1          # corrupt the digest itself
    else:
        raw[20] ^= 1          # corrupt the header
    _broken(PduDecoder(header_digest=True), bytes(raw), "header digest")


@pytest.mark.parametrize("where", ["data", "pad", "digest"])
def test_data_digest_mismatch(where):
    raw = bytearray(wire(_nop_in(b"abcde"), dd=True))
    raw[{"data": 49, "pad": 54, "digest": 57}[where]] ^= 0x80
    _broken(PduDecoder(data_digest=True), bytes(raw), "data digest")


def _with_ahs(p, ahs):
    raw = bytearray(wire(p))
    raw[4] = len(ahs) // 4
    return bytes(raw[:BHS_LEN]) + ahs + bytes(raw[BHS_LEN:])


@pytest.mark.parametrize("ahs", [
    struct.pack(">HBB", 5, 1, 0),                            # AHSLength runs past the end
    struct.pack(">HBB", 0xFFFF, 2, 0) + bytes(4),
    struct.pack(">HBBI", 5, 2, 0, 0) + struct.pack(">HBB", 9, 1, 0),
    struct.pack(">HBB", 1, 1, 0),                            # empty extended CDB
    struct.pack(">HBBI", 5, 1, 0, 0) + struct.pack(">HBBI", 5, 1, 0, 0),
])
def test_ahs_overflow_and_malformed(ahs):
    assert len(ahs) % 4 == 0
    p = INITIATOR_PDUS[3]
    _broken(PduDecoder(initiator_side=False), _with_ahs(p, ahs), "AHS")


def test_ahs_on_target_pdu_is_validated_and_ignored():
    p = _nop_in(b"hi")
    good = struct.pack(">HBBI", 5, 2, 0, 7)
    d = PduDecoder()
    d.feed(_with_ahs(p, good))
    assert d.next_pdu() == p
    _broken(PduDecoder(), _with_ahs(p, struct.pack(">HBB", 40, 2, 0)), "AHS overflow")


def test_bidi_ahs_kept_raw():
    p = INITIATOR_PDUS[6]
    got = decode(wire(p))
    assert got.ahs == p.ahs and got.cdb == p.cdb


def test_decode_requires_exactly_one_pdu():
    raw = wire(_nop_in(b"abc"))
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode(raw[:-1])
    with pytest.raises(RemoteProtocolError, match="after"):
        decode(raw + b"\0\0\0\0")
    with pytest.raises(RemoteProtocolError):
        decode(b"")


def test_pdus_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        INITIATOR_PDUS[0].itt = 5


def test_summary_shows_the_lun_number_not_the_raw_field():
    # a debug line for a command to LUN 1 said lun=281474976710656 (the raw 8-byte field)
    line = P.summary(ScsiCommand(itt=1, lun=encode_lun(1), cdb=bytes(16), cmd_sn=0,
                                 exp_stat_sn=0, expected_data_transfer_length=512, read=True,
                                 write=False))
    assert "lun=1," in line and "281474976710656" not in line
    assert "lun=300," in P.summary(ScsiCommand(itt=1, lun=LUN300, cdb=bytes(16), cmd_sn=0,
                                               exp_stat_sn=0, expected_data_transfer_length=0,
                                               read=False, write=False))
    # a field that does not decode (extended addressing, method 11b) is shown in hex
    odd = 0xC1 << 56
    assert f"lun={odd:#018x}" in P.summary(NopIn(itt=1, ttt=0xFFFFFFFF, lun=odd, stat_sn=0,
                                                 exp_cmd_sn=0, max_cmd_sn=0))
