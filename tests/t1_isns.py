"""The iSNSP codec (core/isns.py): PDU layout, attributes, reassembly, the requests an initiator
sends, what a DevAttrQry answer means; the decoder fuzzed with hypothesis (it only ever raises
RemoteProtocolError, and every message survives encode -> decode, whole or byte by byte)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iscsifs.core import isns as I
from iscsifs.core.discovery import DiscoveredTarget
from iscsifs.core.names import Portal
from iscsifs.errors import LocalProtocolError, RemoteProtocolError

INI = "iqn.2026-11.org.iscsifs.test:initiator"
T1 = "iqn.2026-11.org.iscsifs.test:disk1"
T2 = "iqn.2026-11.org.iscsifs.test:disk2"


def decode_all(data: bytes, chunk: int | None = None) -> list:
    d = I.IsnsDecoder()
    out = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        d.feed(data[i:i + step])
        while (m := d.next_message()) is not None:
            out.append(m)
    assert d.pending == 0
    return out


# ---------------------------------------------------------------------- wire layout
def test_query_for_targets_is_what_open_iscsi_sends():
    raw = I.encode(I.query_targets(INI, 0x1234))
    version, function, length, flags, xid, seq = struct.unpack_from(">HHHHHH", raw)
    assert (version, function, xid, seq) == (1, 0x0002, 0x1234, 0)
    assert flags == 0x8000 | 0x0800 | 0x0400          # client, last PDU, first PDU
    assert length == len(raw) - 12 and length % 4 == 0
    payload = raw[12:]
    # Source: iSCSI Name (tag 32), NUL-terminated and padded to 4 bytes
    tag, n = struct.unpack_from(">II", payload)
    assert tag == 32 and payload[8:8 + n] == INI.encode() + b"\0" * (n - len(INI))
    rest = payload[8 + n:]
    # Message Key: iSCSI Node Type = Target; then the delimiter
    assert rest[:12] == struct.pack(">III", 33, 4, 1)
    assert rest[12:20] == struct.pack(">II", 0, 0)
    # Operating Attributes: nil attributes asking for names, portals and portal groups
    asked = [struct.unpack_from(">II", rest, 20 + 8 * i) for i in range((len(rest) - 20) // 8)]
    assert all(n == 0 for _t, n in asked)
    assert {t for t, _n in asked} >= {16, 17, 32, 33, 48, 49, 50, 51}


def test_registration_and_deregistration_of_the_initiator():
    reg = decode_all(I.encode(I.register_initiator(INI, 5)))[0]
    assert reg.function == I.FunctionId.DEV_ATTR_REG and reg.keys == ()
    assert [a.tag for a in reg.operating] == [32, 33]
    assert reg.operating[0].text() == INI
    assert reg.operating[1].number() == I.NodeType.INITIATOR
    dereg = decode_all(I.encode(I.deregister_initiator(INI, 6)))[0]
    assert dereg.function == I.FunctionId.DEV_DEREG
    assert [a.text() for a in dereg.operating] == [INI]


def test_attribute_values():
    assert I.Attribute.string(32, "abc").value == b"abc\0"
    assert I.Attribute.string(32, "abcd").value == b"abcd\0\0\0\0"
    ip4 = I.Attribute.ip(16, "10.0.0.5")
    assert ip4.value == b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 5])
    assert ip4.address() == "10.0.0.5"
    assert I.Attribute.ip(16, "fe80::1").address() == "fe80::1"
    assert I.Attribute(16, b"\0" * 12 + bytes([192, 168, 1, 2])).address() == "192.168.1.2"
    assert I.Attribute.uint32(51, 7).number() == 7
    with pytest.raises(LocalProtocolError):
        I.Attribute(32, b"abc")                     # not a multiple of 4
    with pytest.raises(RemoteProtocolError, match="not NUL-terminated"):
        I.Attribute(32, b"abcd").text()
    with pytest.raises(RemoteProtocolError, match="not UTF-8"):
        I.Attribute(32, b"\xff\xfe\0\0").text()
    with pytest.raises(RemoteProtocolError, match="not 4"):
        I.Attribute(33, b"\0" * 8).number()
    with pytest.raises(RemoteProtocolError, match="not 16"):
        I.Attribute(16, b"\0" * 4).address()


def test_status_text():
    assert I.status_text(6) == "Source Unknown (status 6)"
    assert I.status_text(8) == "Source Unauthorized (status 8)"
    assert I.status_text(99) == "unknown status (status 99)"


# ---------------------------------------------------------------------- reassembly
def _pdu(function, flags, xid, seq, payload, *, version=1):
    return struct.pack(">HHHHHH", version, function, len(payload), flags, xid, seq) + payload


def _response_payload(status, operating=()):
    return I.IsnsResponse(2, 1, status, (), tuple(operating)).payload()


def test_a_message_in_several_pdus_is_reassembled():
    big = tuple(I.Attribute.string(32, f"iqn.2026-11.org.x:{i:05d}" + "y" * 100)
                for i in range(1200))               # ~150 KiB: three PDUs
    response = I.IsnsResponse(I.FunctionId.DEV_ATTR_QRY, 77, 0, (), big)
    raw = I.encode(response)
    assert raw.count(struct.pack(">HH", 1, 0x8002)) >= 3
    assert decode_all(raw) == [response]
    assert decode_all(raw, chunk=4093) == [response]


def test_out_of_order_and_foreign_pdus_are_protocol_errors():
    payload = _response_payload(0)
    first = 0x4000 | 0x0400
    last = 0x4000 | 0x0800
    cases = [
        _pdu(0x8002, last, 1, 1, payload),                          # continues nothing
        _pdu(0x8002, first, 1, 0, payload) + _pdu(0x8002, last, 1, 2, b""),   # seq gap
        _pdu(0x8002, first, 1, 0, payload) + _pdu(0x8002, last, 2, 1, b""),   # other xid
        _pdu(0x8002, first, 1, 0, payload) + _pdu(0x8002, first, 1, 1, b""),  # FIRST again
        _pdu(0x8002, first | last, 1, 0, payload, version=2),       # version
        _pdu(0x8002, first | last, 1, 0, b"\0\0"),                  # no status
        _pdu(0x8002, first | last, 1, 0, _response_payload(0) + struct.pack(">II", 32, 3)
             + b"abc\0"),                                           # length not x4
        _pdu(0x8002, first | last, 1, 0, _response_payload(0) + struct.pack(">II", 32, 64)),
    ]
    for raw in cases:
        d = I.IsnsDecoder()
        d.feed(raw)
        with pytest.raises(RemoteProtocolError):
            while d.next_message() is not None:
                pass
        with pytest.raises(RemoteProtocolError):         # and it stays broken
            d.next_message()


def test_too_long_a_message_is_refused_before_it_is_all_there():
    d = I.IsnsDecoder(max_message=100_000)
    part = b"\0" * 60_000
    d.feed(_pdu(0x8002, 0x4000 | 0x0400, 1, 0, part) + _pdu(0x8002, 0x4000, 1, 1, part))
    with pytest.raises(RemoteProtocolError, match="longer than"):
        d.next_message()


def test_an_authentication_block_is_skipped():
    payload = _response_payload(0)
    auth = struct.pack(">II", 2, 28) + b"\0" * 20           # BSD, length, timestamp, ...
    raw = _pdu(0x8002, 0x4000 | 0x2000 | 0x0c00, 9, 0, payload) + auth
    assert decode_all(raw) == [I.IsnsResponse(2, 9, 0)]
    assert decode_all(raw, chunk=1) == [I.IsnsResponse(2, 9, 0)]
    d = I.IsnsDecoder()
    d.feed(_pdu(0x8002, 0x4000 | 0x2000 | 0x0c00, 9, 0, payload) + struct.pack(">II", 2, 4))
    with pytest.raises(RemoteProtocolError, match="authentication block"):
        d.next_message()


def test_server_messages_are_typed_apart():
    esi = I.ServerMessage(I.FunctionId.ESI, 3, (I.Attribute.string(1, "entity"),))
    assert decode_all(I.encode(esi)) == [esi]


# ---------------------------------------------------------------------- the answer
def _portal_attrs(tag_ip, tag_port, host, port, udp=False):
    return (I.Attribute.ip(tag_ip, host),
            I.Attribute.uint32(tag_port, port | (0x10000 if udp else 0)))


def answer(*attrs) -> I.IsnsResponse:
    return I.IsnsResponse(I.FunctionId.DEV_ATTR_QRY, 1, 0,
                          (I.Attribute.uint32(33, 1),), tuple(attrs))


def node(name, node_type=I.NodeType.TARGET):
    return (I.Attribute.string(32, name), I.Attribute.uint32(33, node_type))


def pg(name, host, port, tag):
    return ((I.Attribute.string(48, name),) + _portal_attrs(49, 50, host, port)
            + ((I.Attribute.uint32(51, tag),) if tag is not None else (I.Attribute.nil(51),)))


def test_targets_and_portal_groups_as_open_isns_answers():
    # what isnsd answers for two targets tgt registered (entity, node, portal, PG each)
    resp = answer(
        I.Attribute.string(1, "127.0.0.1"), *node(T1),
        *_portal_attrs(16, 17, "127.0.0.1", 3260), *pg(T1, "127.0.0.1", 3260, 1),
        I.Attribute.string(1, "127.0.0.1"), *node(T2),
        *_portal_attrs(16, 17, "127.0.0.1", 3260), *pg(T2, "127.0.0.1", 3260, 1),
        *pg(T2, "fe80::1", 3261, 7),
    )
    assert I.targets_from_response(resp) == [
        DiscoveredTarget(T1, (Portal("127.0.0.1", 3260, 1),)),
        DiscoveredTarget(T2, (Portal("127.0.0.1", 3260, 1), Portal("fe80::1", 3261, 7))),
    ]


def test_initiators_nil_tags_udp_and_bad_names_are_left_out(caplog):
    resp = answer(
        I.Attribute.string(1, "e1"), *node(INI, I.NodeType.INITIATOR),
        *node(T1), *pg(T1, "10.0.0.5", 3260, None),           # nil PGT: no access there
        *pg(T1, "10.0.0.6", 3260, 2),
        *pg(T1, "10.0.0.7", 3260, 3)[:1], I.Attribute.ip(49, "10.0.0.7"),
        I.Attribute.uint32(50, 3260 | 0x10000), I.Attribute.uint32(51, 3),   # UDP
        *node("iqn.2026-11.org.evil:../../etc"), *pg("iqn.2026-11.org.evil:../../etc",
                                                     "10.0.0.5", 3260, 1),
    )
    targets, rejected = I.split_targets(resp)
    assert targets == [DiscoveredTarget(T1, (Portal("10.0.0.6", 3260, 2),))]
    assert any("invalid target name" in r for r in rejected)


def test_without_portal_groups_the_entity_portals_are_used_with_tag_1():
    resp = answer(
        I.Attribute.string(1, "e1"), *_portal_attrs(16, 17, "10.0.0.5", 3260),
        *_portal_attrs(16, 17, "10.0.0.6", 3260), *node(T1),
        I.Attribute.string(1, "e2"), *_portal_attrs(16, 17, "10.0.0.9", 3260), *node(T2),
    )
    assert I.targets_from_response(resp) == [
        DiscoveredTarget(T1, (Portal("10.0.0.5", 3260, 1), Portal("10.0.0.6", 3260, 1))),
        DiscoveredTarget(T2, (Portal("10.0.0.9", 3260, 1),)),
    ]


def test_a_target_with_no_usable_portal_is_dropped():
    targets, rejected = I.split_targets(answer(*node(T1), *pg(T1, "10.0.0.5", 3260, None)))
    assert targets == []
    assert rejected == [f"target {T1} has no portal an initiator may use"]


# ---------------------------------------------------------------------- fuzz
u16 = st.integers(0, 0xFFFF)
tags = st.sampled_from([1, 2, 16, 17, 32, 33, 34, 48, 49, 50, 51, 52, 99, 2065])
attrs = st.builds(lambda tag, words: I.Attribute(tag, words),
                  tags, st.binary(max_size=40).map(lambda b: b + b"\0" * (-len(b) % 4)))
attr_tuples = st.lists(attrs, max_size=12).map(tuple)
messages = st.one_of(
    st.builds(I.IsnsRequest, st.sampled_from([1, 2, 3, 4, 5, 6]), u16, attrs, attr_tuples,
              attr_tuples.map(lambda t: tuple(a for a in t if a.tag)), st.booleans()),
    st.builds(I.IsnsResponse, st.sampled_from([1, 2, 3, 4]), u16, st.integers(0, 30),
              attr_tuples.map(lambda t: tuple(a for a in t if a.tag)),
              attr_tuples.map(lambda t: tuple(a for a in t if a.tag))),
    st.builds(I.ServerMessage, st.sampled_from([8, 13]), u16, attr_tuples),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages, chunk=st.integers(1, 64))
def test_round_trip_property(message, chunk):
    if isinstance(message, I.IsnsRequest) and any(a.tag == 0 for a in message.keys):
        return                  # a delimiter inside the key ends the key: not a round trip
    raw = I.encode(message)
    assert decode_all(raw) == [message]
    assert decode_all(raw, chunk=chunk) == [message]


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), chunk=st.integers(1, 50))
def test_decoder_only_raises_remote_protocol_error(data, chunk):
    d = I.IsnsDecoder(max_message=4096)
    try:
        for i in range(0, len(data), chunk):
            d.feed(data[i:i + chunk])
            while (m := d.next_message()) is not None:
                if isinstance(m, I.IsnsResponse):
                    I.split_targets(m)
    except RemoteProtocolError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.lists(attrs, max_size=30))
def test_any_answer_gives_valid_targets_or_a_protocol_error(body):
    try:
        targets, _rejected = I.split_targets(answer(*body))
    except RemoteProtocolError:
        return
    for t in targets:
        assert t.portals
        assert all(isinstance(p, Portal) for p in t.portals)
