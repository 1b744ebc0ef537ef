"""Tests for iscsifs.core.keys: text codec, C-bit accumulation and RFC 7143 §13 negotiation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.core.keys import (
    LoginParams,
    NegotiatedParams,
    Negotiator,
    TextAccumulator,
    decode_text,
    encode_text,
)
from iscsifs.errors import ConfigError, LocalProtocolError, LoginError, RemoteProtocolError


# ---------------------------------------------------------------------------------------------
# codec

def test_encode_decode_roundtrip():
    pairs = [("HeaderDigest", "CRC32C,None"), ("TargetAlias", "disk \u00e9"), ("X-com.a", "")]
    data = encode_text(pairs)
    assert data == "HeaderDigest=CRC32C,None\0TargetAlias=disk \u00e9\0X-com.a=\0".encode()
    assert decode_text(data) == pairs


def test_decode_value_may_contain_equals():
    assert decode_text(b"CHAP_C=0xab=\0") == [("CHAP_C", "0xab=")]


def test_decode_empty_and_padding():
    assert decode_text(b"") == []
    assert decode_text(b"A=1\0\0\0\0") == [("A", "1")]


def test_decode_unterminated_last_pair():
    assert decode_text(b"A=1\0B=2") == [("A", "1"), ("B", "2")]
    with pytest.raises(RemoteProtocolError):
        decode_text(b"A=1\0B=2", final=False)


@pytest.mark.parametrize("data", [
    b"NoEquals\0",
    b"=value\0",
    b"K" * 64 + b"=1\0",
    b"K\xff=1\0",
    b"1Key=1\0",
    b"Ke y=1\0",
    b"Key=\xff\xfe\0",
    b"Key=" + b"v" * 8193 + b"\0",
])
def test_decode_malformed(data):
    with pytest.raises(RemoteProtocolError):
        decode_text(data)


def test_decode_key_limits():
    assert decode_text(b"K" * 63 + b"=1\0") == [("K" * 63, "1")]
    assert decode_text(b"CHAP_C=" + b"a" * 8192 + b"\0")[0][1] == "a" * 8192


def test_decode_sendtargets_keys_not_length_checked():
    # discovery validates (and drops) these one by one instead of failing the whole answer
    long_name = "iqn.2001-04.com.example:" + "x" * 9000
    assert decode_text(f"TargetName={long_name}\0".encode()) == [("TargetName", long_name)]


def test_decode_keeps_duplicates_in_order():
    data = b"TargetName=a\0TargetAddress=1\0TargetName=b\0TargetAddress=2\0"
    assert [k for k, _ in decode_text(data)] == ["TargetName", "TargetAddress"] * 2


@pytest.mark.parametrize("pair", [("Bad=Key", "1"), ("", "1"), ("K" * 64, "1"),
                                  ("Key", "a\0b"), ("Key", "v" * 8193)])
def test_encode_rejects_bad_pairs(pair):
    with pytest.raises(LocalProtocolError):
        encode_text([pair])


@given(st.lists(st.tuples(
    st.from_regex(r"[A-Z][A-Za-z0-9._-]{0,20}", fullmatch=True),
    st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
            max_size=50))))
def test_roundtrip_property(pairs):
    assert decode_text(encode_text(pairs)) == pairs


# ---------------------------------------------------------------------------------------------
# TextAccumulator (C bit)

def test_accumulator_joins_split_pair():
    acc = TextAccumulator()
    data = encode_text([("TargetName", "iqn.2001-04.com.example:a"), ("TargetAddress", "h")])
    assert acc.add(data[:7], cont=True) is None
    assert acc.pending
    assert acc.add(data[7:20], cont=True) is None
    assert acc.add(data[20:], cont=False) == [("TargetName", "iqn.2001-04.com.example:a"),
                                              ("TargetAddress", "h")]
    assert not acc.pending
    assert acc.add(b"A=1\0", cont=False) == [("A", "1")]   # reusable


def test_accumulator_one_byte_at_a_time():
    data = encode_text([("A", "1"), ("Bb", "22"), ("Ccc", "333")])
    acc = TextAccumulator()
    for i in range(len(data) - 1):
        assert acc.add(data[i:i + 1], cont=True) is None
    assert acc.add(data[-1:], cont=False) == [("A", "1"), ("Bb", "22"), ("Ccc", "333")]


def test_accumulator_bound():
    acc = TextAccumulator(max_total=100)
    acc.add(b"A=" + b"x" * 90, cont=True)
    with pytest.raises(RemoteProtocolError):
        acc.add(b"y" * 20, cont=True)
    assert not acc.pending


def test_accumulator_default_bound_is_64k():
    acc = TextAccumulator()
    for _ in range(8):
        acc.add(b"x" * 8192, cont=True)
    with pytest.raises(RemoteProtocolError):
        acc.add(b"x", cont=False)


# ---------------------------------------------------------------------------------------------
# LoginParams / NegotiatedParams

def test_negotiated_defaults_are_rfc_defaults():
    p = NegotiatedParams()
    assert (p.header_digest, p.data_digest) == (False, False)
    assert p.max_recv_data_segment_length == p.max_xmit_data_segment_length == 8192
    assert (p.first_burst_length, p.max_burst_length) == (65536, 262144)
    assert (p.immediate_data, p.initial_r2t) == (True, True)
    assert (p.max_outstanding_r2t, p.max_connections) == (1, 1)
    assert (p.default_time2wait, p.default_time2retain, p.error_recovery_level) == (2, 20, 0)
    assert p.data_pdu_in_order and p.data_sequence_in_order
    assert p.target_portal_group_tag is None and p.target_alias is None


def test_login_params_defaults():
    p = LoginParams()
    assert p.max_recv_data_segment_length == 262144
    assert p.max_burst_length == 16776192
    assert p.initial_r2t is False and p.immediate_data is True


@pytest.mark.parametrize("kwargs", [
    {"header_digest": "MD5"}, {"data_digest": "crc32c"},
    {"max_recv_data_segment_length": 511}, {"max_recv_data_segment_length": 2**24},
    {"max_burst_length": 1024, "first_burst_length": 2048},
    {"error_recovery_level": 3}, {"max_outstanding_r2t": 0}, {"default_time2wait": 3601},
    {"immediate_data": "Yes"}, {"max_connections": True},
])
def test_login_params_validation(kwargs):
    with pytest.raises(ConfigError):
        LoginParams(**kwargs)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoginParams().header_digest = "CRC32C"   # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Negotiator: our offer

def test_offer_normal_contains_every_key():
    offer = dict(Negotiator(LoginParams(), "Normal").offer())
    assert offer == {
        "HeaderDigest": "None", "DataDigest": "None", "MaxRecvDataSegmentLength": "262144",
        "MaxConnections": "1", "InitialR2T": "No", "ImmediateData": "Yes",
        "MaxBurstLength": "16776192", "FirstBurstLength": "262144", "DefaultTime2Wait": "2",
        "DefaultTime2Retain": "0", "MaxOutstandingR2T": "1", "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes", "ErrorRecoveryLevel": "0"}


def test_offer_discovery_only_relevant_keys():
    offer = dict(Negotiator(LoginParams(max_recv_data_segment_length=32768), "Discovery").offer())
    assert set(offer) == {"HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength",
                          "DefaultTime2Wait", "DefaultTime2Retain", "ErrorRecoveryLevel"}
    assert offer["MaxRecvDataSegmentLength"] == "32768"


def test_offer_skips_first_burst_when_irrelevant():
    offer = dict(Negotiator(LoginParams(initial_r2t=True, immediate_data=False)).offer())
    assert "FirstBurstLength" not in offer


def test_offer_twice_is_local_error():
    n = Negotiator(LoginParams())
    n.offer()
    with pytest.raises(LocalProtocolError):
        n.offer()


def test_unknown_session_type():
    with pytest.raises(LocalProtocolError):
        Negotiator(LoginParams(), "Bogus")  # type: ignore[arg-type]


def negotiate(answers, params=LoginParams(), session_type="Normal"):
    n = Negotiator(params, session_type)
    n.offer()
    reply = n.receive(answers)
    return n, reply


TYPICAL = [("HeaderDigest", "None"), ("DataDigest", "None"),
           ("MaxRecvDataSegmentLength", "65536"), ("MaxConnections", "1"),
           ("InitialR2T", "Yes"), ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
           ("FirstBurstLength", "65536"), ("DefaultTime2Wait", "2"),
           ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"), ("DataPDUInOrder", "Yes"),
           ("DataSequenceInOrder", "Yes"), ("ErrorRecoveryLevel", "0")]


def test_typical_lio_answer():
    n, reply = negotiate(TYPICAL)
    assert reply == []
    r = n.result()
    assert r.max_recv_data_segment_length == 262144
    assert r.max_xmit_data_segment_length == 65536
    assert r.initial_r2t is True and r.immediate_data is True
    assert (r.first_burst_length, r.max_burst_length) == (65536, 262144)
    assert r.default_time2retain == 0


# -- list (digests) ---------------------------------------------------------------------------

@pytest.mark.parametrize("ours,answer,expected", [
    ("CRC32C,None", "CRC32C", True), ("CRC32C,None", "None", False),
    ("None,CRC32C", "CRC32C", True), ("CRC32C", "CRC32C", True), ("None", "None", False),
])
def test_digest_answers(ours, answer, expected):
    n, _ = negotiate([("HeaderDigest", answer), ("DataDigest", answer)],
                     LoginParams(header_digest=ours, data_digest=ours))
    assert n.result().header_digest is expected
    assert n.result().data_digest is expected


@pytest.mark.parametrize("ours,answer", [("None", "CRC32C"), ("CRC32C", "None"),
                                         ("CRC32C,None", "CRC32C,None"), ("None", "crc32c")])
def test_digest_answer_not_offered(ours, answer):
    with pytest.raises(RemoteProtocolError):
        negotiate([("HeaderDigest", answer)], LoginParams(header_digest=ours))


def test_digest_reject_when_none_acceptable_uses_default():
    n, _ = negotiate([("HeaderDigest", "Reject")], LoginParams(header_digest="CRC32C,None"))
    assert n.result().header_digest is False


def test_digest_reject_when_crc_required_fails():
    with pytest.raises(LoginError, match="HeaderDigest"):
        negotiate([("HeaderDigest", "Reject")], LoginParams(header_digest="CRC32C"))


@pytest.mark.parametrize("theirs,ours,answer,expected", [
    ("CRC32C,None", "None,CRC32C", "CRC32C", True),   # responder: first of the offer we support
    ("None,CRC32C", "CRC32C,None", "None", False),
    ("CRC32C", "CRC32C,None", "CRC32C", True),
    ("None", "None", "None", False),
])
def test_target_proposes_digest(theirs, ours, answer, expected):
    n = Negotiator(LoginParams(data_digest=ours), "Normal")   # did not offer: answer it
    assert n.receive([("DataDigest", theirs)]) == [("DataDigest", answer)]
    assert n.result().data_digest is expected


def test_target_proposes_digest_nothing_common():
    n = Negotiator(LoginParams(data_digest="None,CRC32C"))
    assert n.receive([("DataDigest", "X-vendor")]) == [("DataDigest", "Reject")]
    assert n.result().data_digest is False
    n = Negotiator(LoginParams(data_digest="CRC32C"))
    with pytest.raises(LoginError):
        n.receive([("DataDigest", "None")])


# -- numerical min / max -----------------------------------------------------------------------

@pytest.mark.parametrize("key,attr,answer", [
    ("MaxBurstLength", "max_burst_length", 65536),
    ("FirstBurstLength", "first_burst_length", 8192),
    ("MaxOutstandingR2T", "max_outstanding_r2t", 1),
    ("MaxConnections", "max_connections", 1),
    ("DefaultTime2Retain", "default_time2retain", 0),
    ("ErrorRecoveryLevel", "error_recovery_level", 0),
])
def test_min_answer_accepted(key, attr, answer):
    n, _ = negotiate([(key, str(answer))])
    assert getattr(n.result(), attr) == answer


@pytest.mark.parametrize("key,answer", [
    ("MaxBurstLength", "16776193"), ("MaxBurstLength", "511"), ("FirstBurstLength", "262145"),
    ("MaxOutstandingR2T", "2"), ("MaxOutstandingR2T", "0"), ("MaxConnections", "2"),
    ("DefaultTime2Retain", "1"), ("ErrorRecoveryLevel", "1"),
    ("DefaultTime2Wait", "1"), ("DefaultTime2Wait", "3601"),
    ("MaxBurstLength", "lots"), ("MaxBurstLength", "-1"), ("MaxBurstLength", ""),
    ("MaxBurstLength", "0xZZ"), ("MaxBurstLength", "1" * 30),
])
def test_numeric_answer_out_of_range(key, answer):
    with pytest.raises(RemoteProtocolError):
        negotiate([(key, answer)])


def test_max_answer():
    n, _ = negotiate([("DefaultTime2Wait", "10")])
    assert n.result().default_time2wait == 10


def test_hex_numbers_accepted():
    n, _ = negotiate([("MaxBurstLength", "0x10000")])
    assert n.result().max_burst_length == 65536


def test_target_proposes_max_burst_itself():
    n = Negotiator(LoginParams(max_burst_length=1048576), "Normal")
    assert n.receive([("MaxBurstLength", "262144")]) == [("MaxBurstLength", "262144")]
    assert n.result().max_burst_length == 262144
    n = Negotiator(LoginParams(max_burst_length=65536, first_burst_length=65536), "Normal")
    assert n.receive([("MaxBurstLength", "262144")]) == [("MaxBurstLength", "65536")]
    assert n.result().max_burst_length == 65536


def test_target_proposes_time2wait():
    n = Negotiator(LoginParams(default_time2wait=5))
    assert n.receive([("DefaultTime2Wait", "2")]) == [("DefaultTime2Wait", "5")]
    assert n.result().default_time2wait == 5


def test_target_proposes_out_of_range():
    n = Negotiator(LoginParams())
    with pytest.raises(RemoteProtocolError):
        n.receive([("MaxBurstLength", "100")])
    n = Negotiator(LoginParams())
    with pytest.raises(RemoteProtocolError):
        n.receive([("ErrorRecoveryLevel", "3")])


def test_target_proposes_special_value_is_error():
    n = Negotiator(LoginParams())
    with pytest.raises(RemoteProtocolError):
        n.receive([("MaxBurstLength", "Irrelevant")])


# -- booleans -------------------------------------------------------------------------------

def test_initial_r2t_or():
    n, _ = negotiate([("InitialR2T", "No")])
    assert n.result().initial_r2t is False
    n, _ = negotiate([("InitialR2T", "Yes")])
    assert n.result().initial_r2t is True
    with pytest.raises(RemoteProtocolError):      # we said Yes: OR cannot be No
        negotiate([("InitialR2T", "No")], LoginParams(initial_r2t=True))


def test_immediate_data_and():
    n, _ = negotiate([("ImmediateData", "No")])
    assert n.result().immediate_data is False
    with pytest.raises(RemoteProtocolError):      # we said No: AND cannot be Yes
        negotiate([("ImmediateData", "Yes")], LoginParams(immediate_data=False))


def test_optional_boolean_answers():
    # §6.2.2: OR with Yes and AND with No need no answer; the result follows our offer
    n, _ = negotiate([], LoginParams(initial_r2t=True, immediate_data=False,
                                     data_pdu_in_order=True))
    r = n.result()
    assert r.initial_r2t is True and r.immediate_data is False and r.data_pdu_in_order


def test_unanswered_key_keeps_default():
    n, _ = negotiate([])
    r = n.result()
    assert r.initial_r2t is True          # default: we offered No but got no answer
    assert r.max_burst_length == 262144
    assert r.max_xmit_data_segment_length == 8192
    assert r.max_recv_data_segment_length == 262144   # ours is declared regardless


@pytest.mark.parametrize("key", ["InitialR2T", "DataPDUInOrder", "DataSequenceInOrder"])
def test_or_keys_proposed_by_target(key):
    n = Negotiator(LoginParams(initial_r2t=False, data_pdu_in_order=False,
                               data_sequence_in_order=False))
    assert n.receive([(key, "No")]) == [(key, "No")]
    n = Negotiator(LoginParams(initial_r2t=False, data_pdu_in_order=False,
                               data_sequence_in_order=False))
    assert n.receive([(key, "Yes")]) == [(key, "Yes")]


def test_and_key_proposed_by_target():
    n = Negotiator(LoginParams(immediate_data=True))
    assert n.receive([("ImmediateData", "No")]) == [("ImmediateData", "No")]
    assert n.result().immediate_data is False
    n = Negotiator(LoginParams(immediate_data=False))
    assert n.receive([("ImmediateData", "Yes")]) == [("ImmediateData", "No")]


@pytest.mark.parametrize("value", ["yes", "True", "1", ""])
def test_bad_boolean(value):
    with pytest.raises(RemoteProtocolError):
        negotiate([("DataPDUInOrder", value)])


# -- declarative ----------------------------------------------------------------------------

def test_max_recv_data_segment_length_is_declarative():
    n, reply = negotiate([("MaxRecvDataSegmentLength", "8192")],
                         LoginParams(max_recv_data_segment_length=131072))
    assert reply == []
    r = n.result()
    assert r.max_recv_data_segment_length == 131072
    assert r.max_xmit_data_segment_length == 8192


@pytest.mark.parametrize("value", ["511", "16777216", "big"])
def test_max_recv_data_segment_length_range(value):
    with pytest.raises(RemoteProtocolError):
        negotiate([("MaxRecvDataSegmentLength", value)])


def test_target_declarations_captured():
    n = Negotiator(LoginParams())
    assert n.receive([("TargetPortalGroupTag", "3"), ("TargetAlias", "Big disk")]) == []
    n.offer()
    n.receive([("TargetPortalGroupTag", "3")])        # same value again: harmless
    r = n.result()
    assert r.target_portal_group_tag == 3 and r.target_alias == "Big disk"


def test_target_redeclares_with_other_value():
    n = Negotiator(LoginParams())
    n.receive([("TargetPortalGroupTag", "3")])
    with pytest.raises(RemoteProtocolError):
        n.receive([("TargetPortalGroupTag", "4")])


def test_tpgt_out_of_range():
    with pytest.raises(RemoteProtocolError):
        Negotiator(LoginParams()).receive([("TargetPortalGroupTag", "65536")])


@pytest.mark.expect_log("ignoring malformed TargetAlias", logger="iscsifs.core.keys")
def test_alias_with_control_characters_dropped():
    n = Negotiator(LoginParams())
    n.receive([("TargetAlias", "evil\x1b[2J")])
    assert n.result().target_alias is None


# -- special answers ------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["NotUnderstood", "Irrelevant", "Reject"])
def test_special_answers_keep_default(answer):
    n, _ = negotiate([("MaxBurstLength", answer), ("InitialR2T", answer)])
    r = n.result()
    assert r.max_burst_length == 262144 and r.initial_r2t is True


def test_first_burst_irrelevant():
    n, _ = negotiate([("InitialR2T", "Yes"), ("ImmediateData", "No"),
                      ("FirstBurstLength", "Irrelevant")])
    r = n.result()
    assert r.initial_r2t is True and r.immediate_data is False


def test_target_proposes_first_burst_when_irrelevant():
    n = Negotiator(LoginParams(initial_r2t=True, immediate_data=False))
    n.offer()
    assert n.receive([("FirstBurstLength", "65536")]) == [("FirstBurstLength", "Irrelevant")]


def test_first_burst_clamped_to_max_burst():
    n, _ = negotiate([("MaxBurstLength", "Reject"), ("FirstBurstLength", "262144")])
    r = n.result()
    assert r.max_burst_length == 262144 and r.first_burst_length == 262144
    n, _ = negotiate([("MaxBurstLength", "65536"), ("FirstBurstLength", "262144")])
    assert n.result().first_burst_length == 65536


def test_unknown_and_vendor_keys_not_understood():
    n, reply = negotiate([("X-com.example.Foo", "1"), ("FancyNewKey", "Yes"),
                          ("iSCSIProtocolLevel", "2")])
    assert reply == [("X-com.example.Foo", "NotUnderstood"), ("FancyNewKey", "NotUnderstood"),
                     ("iSCSIProtocolLevel", "NotUnderstood")]


def test_task_reporting_proposed_by_target():
    _, reply = negotiate([("TaskReporting", "ResponseFence,RFC3720")])
    assert reply == [("TaskReporting", "RFC3720")]
    _, reply = negotiate([("TaskReporting", "FastAbort")])
    assert reply == [("TaskReporting", "Reject")]


@pytest.mark.parametrize("key", ["OFMarker", "IFMarker", "OFMarkInt", "IFMarkInt"])
def test_obsolete_marker_keys_rejected(key):
    # RFC 7143 §13.26
    _, reply = negotiate([(key, "No")])
    assert reply == [(key, "Reject")]


@pytest.mark.parametrize("key", ["MaxConnections", "InitialR2T", "ImmediateData",
                                 "MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T",
                                 "DataPDUInOrder", "DataSequenceInOrder"])
def test_discovery_irrelevant_keys(key):
    n = Negotiator(LoginParams(), "Discovery")
    n.offer()
    value = {"InitialR2T": "Yes", "ImmediateData": "Yes", "DataPDUInOrder": "Yes",
             "DataSequenceInOrder": "Yes"}.get(key, "1024")
    assert n.receive([(key, value)]) == [(key, "Irrelevant")]


def test_discovery_negotiates_digest_and_segment_length():
    n, _ = negotiate([("HeaderDigest", "CRC32C"), ("DataDigest", "None"),
                      ("MaxRecvDataSegmentLength", "32768")],
                     LoginParams(header_digest="CRC32C,None", max_recv_data_segment_length=32768),
                     "Discovery")
    r = n.result()
    assert r.header_digest and not r.data_digest
    assert r.max_xmit_data_segment_length == r.max_recv_data_segment_length == 32768


# -- malformed answers ------------------------------------------------------------------------

def test_duplicate_key_in_one_response():
    with pytest.raises(RemoteProtocolError, match="twice"):
        negotiate([("MaxBurstLength", "65536"), ("MaxBurstLength", "65536")])


def test_key_renegotiated_in_later_response():
    n, _ = negotiate([("MaxBurstLength", "65536")])
    with pytest.raises(RemoteProtocolError, match="again"):
        n.receive([("MaxBurstLength", "65536")])


@pytest.mark.parametrize("key", ["AuthMethod", "CHAP_A", "InitiatorName", "SessionType",
                                 "TargetName", "SendTargets"])
def test_keys_the_target_must_not_send(key):
    with pytest.raises(RemoteProtocolError):
        negotiate([(key, "x")])


def test_value_too_long():
    with pytest.raises(RemoteProtocolError):
        negotiate([("MaxBurstLength", "0" * 256)])
