"""Property tests for the PDU codec: the decoder only ever raises RemoteProtocolError, and
every generated PDU survives encode -> decode unchanged."""

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsifs.core import pdu as P
from iscsifs.core.pdu import PduDecoder, decode, encode
from iscsifs.errors import RemoteProtocolError

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)

# Field name -> strategy (anything not listed is a u32).
FIELD_STRATEGIES = {
    "lun": u64,
    "isid": st.integers(0, (1 << 48) - 1),
    "tsih": u16, "cid": u16, "time2wait": u16, "time2retain": u16,
    "parameter1": u16, "parameter2": u16, "parameter3": u16,
    "status": u8, "response": u8, "status_class": u8, "status_detail": u8,
    "version_max": u8, "version_min": u8, "version_active": u8,
    "async_event": u8, "async_vcode": u8,
    "csg": st.integers(0, 3), "nsg": st.integers(0, 3),
    "attr": st.integers(0, 7), "type": st.integers(0, 15),
    "function": st.integers(0, 0x7F),
    # 16..80 bytes: a decoded CDB is never shorter than the 16-byte BHS field
    "cdb": st.binary(min_size=16, max_size=80),
    "ahs": st.just(b""),
    "data": st.binary(max_size=300),
}


def _strategy_for(cls):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in FIELD_STRATEGIES:
            s = FIELD_STRATEGIES[f.name]
        elif f.type in (bool, "bool"):
            s = st.booleans()
        else:
            s = u32
        if cls is P.LogoutRequest and f.name == "reason":
            s = st.integers(0, 0x7F)
        elif cls is P.Reject and f.name == "reason":
            s = u8
        kwargs[f.name] = s
    return st.builds(cls, **kwargs)


pdus = st.one_of([_strategy_for(cls) for cls in P.PDU_TYPES.values()])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(pdu=pdus, hd=st.booleans(), dd=st.booleans(), chunk=st.integers(1, 64))
def test_round_trip_property(pdu, hd, dd, chunk):
    raw = b"".join(bytes(b) for b in encode(pdu, header_digest=hd, data_digest=dd))
    assert len(raw) % 4 == 0
    assert decode(raw, header_digest=hd, data_digest=dd) == pdu
    d = PduDecoder(initiator_side=P.OPCODES[type(pdu)] >= 0x20, header_digest=hd,
                   data_digest=dd, max_data_segment_length=len(pdu.data))
    got = []
    for i in range(0, len(raw), chunk):
        d.feed(raw[i:i + chunk])
        while (p := d.next_pdu()) is not None:
            got.append(p)
    assert got == [pdu]
    assert d.buffered == 0


def _drain(d, data, chunk):
    try:
        for i in range(0, len(data), chunk):
            d.feed(data[i:i + chunk])
            while True:
                p = d.next_pdu()
                if p is None:
                    break
                assert type(p) in P.OPCODES
                # the properties must not blow up with anything but RemoteProtocolError
                if isinstance(p, P.ScsiResponse):
                    try:
                        p.sense
                    except RemoteProtocolError:
                        pass
                if isinstance(p, P.Reject):
                    p.rejected_itt
    except RemoteProtocolError as exc:
        assert exc.reason
        # and it stays broken
        try:
            d.next_pdu()
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("decoder recovered after an error")


@settings(max_examples=500)
@given(data=st.binary(max_size=600), side=st.booleans(), hd=st.booleans(), dd=st.booleans(),
       limit=st.integers(0, 1024), chunk=st.integers(1, 100))
def test_random_bytes_only_raise_remote_protocol_error(data, side, hd, dd, limit, chunk):
    d = PduDecoder(initiator_side=side, header_digest=hd, data_digest=dd,
                   max_data_segment_length=limit)
    _drain(d, data, chunk)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(pdu=pdus, hd=st.booleans(), dd=st.booleans(), chunk=st.integers(1, 100),
       flips=st.lists(st.tuples(st.integers(0, 10_000), u8), min_size=1, max_size=4),
       cut=st.integers(0, 10_000))
def test_mutated_pdus_only_raise_remote_protocol_error(pdu, hd, dd, chunk, flips, cut):
    raw = bytearray(b"".join(bytes(b) for b in encode(pdu, header_digest=hd, data_digest=dd)))
    for pos, value in flips:
        raw[pos % len(raw)] = value
    raw = bytes(raw[:max(1, cut % (len(raw) + 1))]) + bytes(raw)
    for side in (True, False):
        d = PduDecoder(initiator_side=side, header_digest=hd, data_digest=dd,
                       max_data_segment_length=512)
        _drain(d, raw, chunk)


@settings(max_examples=200)
@given(data=st.binary(max_size=400))
def test_decode_only_raises_remote_protocol_error(data):
    try:
        p = decode(data)
    except RemoteProtocolError:
        return
    assert type(p) in P.OPCODES


@given(itt=u32, lun=u64, cdb=st.binary(min_size=1, max_size=16), edtl=u32, cmd_sn=u32,
       exp_stat_sn=u32, read=st.booleans(), write=st.booleans(), final=st.booleans(),
       data=st.binary(max_size=300), hd=st.booleans(), dd=st.booleans())
def test_fast_scsi_command_encoder_matches_the_dataclass_one(itt, lun, cdb, edtl, cmd_sn,
                                                             exp_stat_sn, read, write, final,
                                                             data, hd, dd):
    fast = P.encode_scsi_command(itt, lun, cdb, edtl, cmd_sn, exp_stat_sn, read, write, final,
                                 data, hd, dd)
    slow = encode(P.ScsiCommand(itt=itt, lun=lun, cdb=cdb, expected_data_transfer_length=edtl,
                                cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn, read=read, write=write,
                                final=final, data=data), header_digest=hd, data_digest=dd)
    assert b"".join(map(bytes, fast)) == b"".join(map(bytes, slow))


@given(itt=u32, ttt=u32, lun=u64, exp_stat_sn=u32, data_sn=u32, offset=u32,
       final=st.booleans(), data=st.binary(max_size=300), hd=st.booleans(), dd=st.booleans())
def test_fast_data_out_encoder_matches_the_dataclass_one(itt, ttt, lun, exp_stat_sn, data_sn,
                                                         offset, final, data, hd, dd):
    fast = P.encode_data_out(itt, ttt, lun, exp_stat_sn, data_sn, offset, final, data, hd, dd)
    slow = encode(P.DataOut(itt=itt, ttt=ttt, lun=lun, exp_stat_sn=exp_stat_sn, data_sn=data_sn,
                            buffer_offset=offset, final=final, data=data),
                  header_digest=hd, data_digest=dd)
    assert b"".join(map(bytes, fast)) == b"".join(map(bytes, slow))
