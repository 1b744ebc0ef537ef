"""Tests for iscsifs.core.login: the Login state machine driven by scripted Login Responses."""

from __future__ import annotations

import pytest

from iscsifs.core.keys import LoginParams, decode_text, encode_text
from iscsifs.core.login import Login, LoginComplete
from iscsifs.core.pdu import LoginRequest, LoginResponse, NopIn, decode, encode
from iscsifs.errors import (
    EXIT_AUTH_FAILED,
    EXIT_LOGIN_FAILED,
    AuthenticationError,
    LocalProtocolError,
    LoginError,
    RemoteProtocolError,
)

ISID = 0x80_12_34_56_78_9A
TARGET = "iqn.2003-01.org.example:disk1"
INITIATOR = "iqn.2016-04.com.open-iscsi:0123456789ab"

OP_ANSWERS = [("HeaderDigest", "None"), ("DataDigest", "None"),
              ("MaxRecvDataSegmentLength", "65536"), ("MaxConnections", "1"),
              ("InitialR2T", "Yes"), ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
              ("FirstBurstLength", "65536"), ("DefaultTime2Wait", "2"),
              ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"),
              ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"),
              ("ErrorRecoveryLevel", "0")]


def pairs_of(req: LoginRequest):
    return decode_text(req.data)


class Target:
    """Builds Login Responses that mirror the request, with StatSN counting from 1000."""

    def __init__(self, stat_sn=1000, tsih=0x2A):
        self.stat_sn = stat_sn
        self.tsih = tsih

    def reply(self, req: LoginRequest, pairs=(), *, transit=None, nsg=None, cont=False,
              status=(0, 0), data=None, **override) -> LoginResponse:
        transit = req.transit if transit is None else transit
        nsg = (req.nsg if transit else 0) if nsg is None else nsg
        final = transit and nsg == 3
        fields = dict(isid=req.isid, tsih=self.tsih if final else 0, itt=req.itt,
                      stat_sn=self.stat_sn, exp_cmd_sn=req.cmd_sn, max_cmd_sn=req.cmd_sn + 31,
                      status_class=status[0], status_detail=status[1], csg=req.csg, nsg=nsg,
                      transit=transit, cont=cont, version_max=0, version_active=0,
                      data=encode_text(pairs) if data is None else data)
        fields.update(override)
        self.stat_sn += 1
        return LoginResponse(**fields)


def make_login(**kw) -> Login:
    args = dict(initiator_name=INITIATOR, target_name=TARGET, isid=ISID,
                params=LoginParams())
    args.update(kw)
    return Login(**args)


def plain_login(login: Login, target: Target, sec_pairs=(("AuthMethod", "None"),
                                                          ("TargetPortalGroupTag", "1")),
                op_pairs=OP_ANSWERS):
    req = login.start()
    req = login.receive(target.reply(req, sec_pairs))
    assert isinstance(req, LoginRequest) and req.csg == 1
    return req, login.receive(target.reply(req, op_pairs))


# ---------------------------------------------------------------------------------------------
# the happy path

def test_first_request_security_stage():
    login = make_login(initiator_alias="host1", cmd_sn=7, exp_stat_sn=0)
    req = login.start()
    assert (req.csg, req.nsg, req.transit, req.cont) == (0, 1, True, False)
    assert (req.isid, req.tsih, req.cid, req.cmd_sn) == (ISID, 0, 0, 7)
    assert (req.version_max, req.version_min) == (0, 0)
    assert pairs_of(req) == [("InitiatorName", INITIATOR), ("InitiatorAlias", "host1"),
                             ("SessionType", "Normal"), ("TargetName", TARGET),
                             ("AuthMethod", "None")]


def test_full_login_without_auth():
    login = make_login(cmd_sn=5)
    target = Target()
    req = login.start()
    req2 = login.receive(target.reply(req, [("AuthMethod", "None"),
                                            ("TargetPortalGroupTag", "1"),
                                            ("TargetAlias", "disk one")]))
    assert isinstance(req2, LoginRequest)
    assert (req2.csg, req2.nsg, req2.transit) == (1, 3, True)
    assert req2.exp_stat_sn == 1001          # first StatSN initialises ExpStatSN
    assert req2.cmd_sn == 5 and req2.itt == req.itt
    offer = dict(pairs_of(req2))
    assert offer["MaxRecvDataSegmentLength"] == "262144"
    done = login.receive(target.reply(req2, OP_ANSWERS))
    assert isinstance(done, LoginComplete)
    assert done.tsih == 0x2A and done.isid == ISID
    assert done.cmd_sn == 5 and done.exp_cmd_sn == 5 and done.max_cmd_sn == 36
    assert done.exp_stat_sn == 1002
    assert done.auth_method == "None"
    p = done.params
    assert p.target_portal_group_tag == 1 and p.target_alias == "disk one"
    assert p.max_xmit_data_segment_length == 65536
    assert p.initial_r2t is True and p.immediate_data is True
    assert login.done
    with pytest.raises(LocalProtocolError):
        login.receive(target.reply(req2, []))


def test_requests_survive_the_wire():
    login = make_login()
    req = login.start()
    wire = b"".join(bytes(b) for b in encode(req))
    assert decode(wire) == req


def test_discovery_login():
    login = make_login(target_name=None, session_type="Discovery",
                       params=LoginParams(max_recv_data_segment_length=32768))
    target = Target()
    req = login.start()
    keys = dict(pairs_of(req))
    assert keys["SessionType"] == "Discovery" and "TargetName" not in keys
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    offer = dict(pairs_of(req))
    assert "MaxBurstLength" not in offer and "InitialR2T" not in offer
    assert offer["MaxRecvDataSegmentLength"] == "32768"
    done = login.receive(target.reply(req, [("HeaderDigest", "None"), ("DataDigest", "None"),
                                            ("MaxRecvDataSegmentLength", "8192")]))
    assert isinstance(done, LoginComplete)
    assert done.params.max_recv_data_segment_length == 32768
    assert done.params.max_xmit_data_segment_length == 8192


def test_normal_session_needs_target_name():
    with pytest.raises(LocalProtocolError):
        make_login(target_name=None)


@pytest.mark.parametrize("kw", [{"isid": 1 << 48}, {"isid": -1}, {"tsih": 70000},
                                {"session_type": "Other"}, {"initiator_name": ""}])
def test_bad_arguments(kw):
    with pytest.raises(LocalProtocolError):
        make_login(**kw)


def test_start_twice_and_receive_before_start():
    login = make_login()
    with pytest.raises(LocalProtocolError):
        login.receive(Target().reply(LoginRequest(ISID, 0, 0, 0, 0, 0, 0, 1, True)))
    login.start()
    with pytest.raises(LocalProtocolError):
        login.start()


def test_target_stays_in_security_then_transits():
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")], transit=False))
    assert (req.csg, req.transit) == (0, True) and req.data == b""
    req = login.receive(target.reply(req, []))
    assert req.csg == 1


def test_operational_two_rounds_with_target_proposal():
    login = make_login(params=LoginParams(max_burst_length=1048576, first_burst_length=65536))
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    # the target answers some keys, proposes one of its own and does not transit yet
    req = login.receive(target.reply(req, [("HeaderDigest", "None"), ("X-com.example.Q", "1"),
                                           ("OFMarker", "No")], transit=False))
    assert (req.csg, req.nsg, req.transit) == (1, 3, True)
    assert pairs_of(req) == [("X-com.example.Q", "NotUnderstood"), ("OFMarker", "Reject")]
    done = login.receive(target.reply(req, [("MaxBurstLength", "262144")]))
    assert isinstance(done, LoginComplete)
    assert done.params.max_burst_length == 262144


def test_target_transits_while_proposing_is_error():
    # a key we know and would have to answer, proposed in the final response: nothing can
    # carry our answer any more
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    with pytest.raises(RemoteProtocolError, match="proposing TaskReporting"):
        login.receive(target.reply(req, [("TaskReporting", "RFC3720")]))


@pytest.mark.parametrize("unknown", [[("X-com.example.Q", "1")], [("iSCSIProtocolLevel", "2")],
                                     [("X#vendor", "a"), ("Y-new-key", "b")]])
def test_keys_we_do_not_understand_in_the_final_response_are_ignored(unknown):
    # RFC 7143 §6.2: a key not understood is answered NotUnderstood, which tells the target
    # only that we will not use it; in the final response there is no request left to say
    # it in, and refusing the login over it would only hurt interoperability
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    done = login.receive(target.reply(req, OP_ANSWERS + unknown))
    assert isinstance(done, LoginComplete)
    assert done.params.max_xmit_data_segment_length == 65536


def test_login_that_never_converges():
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    with pytest.raises(RemoteProtocolError, match="did not complete"):
        for _ in range(100):
            req = login.receive(target.reply(req, [], transit=False))


# ---------------------------------------------------------------------------------------------
# C bit

def test_multi_pdu_login_response():
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    data = encode_text(OP_ANSWERS)
    parts = [data[:10], data[10:100], data[100:]]
    for part in parts[:-1]:
        cont_req = login.receive(target.reply(req, data=part, transit=False, cont=True))
        assert isinstance(cont_req, LoginRequest)
        assert (cont_req.csg, cont_req.transit, cont_req.cont, cont_req.data) == (1, False,
                                                                                 False, b"")
        assert cont_req.exp_stat_sn == target.stat_sn
        req = cont_req
    # our request to transit still stands: the final part may carry T=1
    done = login.receive(target.reply(req, data=parts[-1], transit=True, nsg=3))
    assert isinstance(done, LoginComplete)
    assert done.params.max_xmit_data_segment_length == 65536
    assert done.exp_stat_sn == target.stat_sn


def test_multi_pdu_response_final_part_without_transit():
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    data = encode_text(OP_ANSWERS)
    req = login.receive(target.reply(req, data=data[:33], transit=False, cont=True))
    req = login.receive(target.reply(req, data=data[33:], transit=False))
    assert req.transit and req.data == b"" and req.csg == 1
    assert isinstance(login.receive(target.reply(req, [])), LoginComplete)


def test_continued_response_without_transit_request():
    login = make_login(chap=_creds())          # first request has T=0
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, data=b"AuthMe", transit=False, cont=True))
    with pytest.raises(RemoteProtocolError, match="T bit"):
        login.receive(target.reply(req, data=b"thod=None\0", transit=True, nsg=1))


def test_multi_pdu_security_response():
    login = make_login()
    target = Target()
    req = login.start()
    data = encode_text([("TargetAlias", "a" * 100), ("AuthMethod", "None")])
    req = login.receive(target.reply(req, data=data[:50], transit=False, cont=True))
    assert req.csg == 0 and not req.transit and req.data == b""
    req = login.receive(target.reply(req, data=data[50:], transit=False))
    assert req.csg == 0 and req.transit
    req = login.receive(target.reply(req, []))
    assert req.csg == 1


def test_response_with_t_and_c():
    login = make_login()
    req = login.start()
    with pytest.raises(RemoteProtocolError):
        login.receive(Target().reply(req, [("AuthMethod", "None")], cont=True))


def test_response_to_our_continued_request_must_be_empty():
    login = make_login()
    login.start()
    req = login._send(0, 1, True, [("X-a", "b" * 8000), ("X-c", "d" * 8000)])
    assert req.cont and not req.transit and len(req.data) == 8192
    target = Target()
    nxt = login.receive(target.reply(req, [], transit=False))
    assert not nxt.cont and nxt.transit and nxt.exp_stat_sn == 1001
    assert decode_text(req.data + nxt.data) == [("X-a", "b" * 8000), ("X-c", "d" * 8000)]

    login = make_login()
    login.start()
    req = login._send(0, 1, True, [("X-a", "b" * 5000), ("X-c", "d" * 5000)])
    with pytest.raises(RemoteProtocolError):
        login.receive(target.reply(req, [("AuthMethod", "None")], transit=False))


# ---------------------------------------------------------------------------------------------
# header checks

@pytest.mark.parametrize("override,match", [
    ({"itt": 5}, "ITT"),
    ({"isid": ISID + 1}, "ISID"),
    ({"version_active": 1}, "version"),
    ({"csg": 1}, "stage"),
    ({"status_detail": 3}, "status"),
])
def test_bad_response_headers(override, match):
    login = make_login()
    req = login.start()
    with pytest.raises(RemoteProtocolError, match=match):
        login.receive(Target().reply(req, [("AuthMethod", "None")], **override))


def test_target_transits_when_we_did_not_ask():
    login = make_login(chap=_creds())
    req = login.start()
    assert not req.transit
    with pytest.raises(RemoteProtocolError, match="T bit"):
        login.receive(Target().reply(req, [("AuthMethod", "None")], transit=True, nsg=1))


@pytest.mark.parametrize("nsg", [0, 2, 3])
def test_bad_next_stage(nsg):
    login = make_login()
    req = login.start()
    with pytest.raises(RemoteProtocolError):
        login.receive(Target().reply(req, [("AuthMethod", "None")], nsg=nsg))


def test_final_tsih_zero():
    login = make_login()
    target = Target(tsih=0)
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    with pytest.raises(RemoteProtocolError, match="TSIH"):
        login.receive(target.reply(req, OP_ANSWERS))


def test_tsih_for_added_connection():
    login = make_login(tsih=0x2A, cid=1)
    target = Target(tsih=0x2B)
    req = login.start()
    assert req.tsih == 0x2A and req.cid == 1
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    with pytest.raises(RemoteProtocolError, match="TSIH"):
        login.receive(target.reply(req, OP_ANSWERS))


def test_not_a_login_response():
    login = make_login()
    login.start()
    with pytest.raises(RemoteProtocolError):
        login.receive(NopIn(itt=0, ttt=0xFFFFFFFF, lun=0, stat_sn=0, exp_cmd_sn=0,
                            max_cmd_sn=0))


@pytest.mark.expect_log("StatSN .* resynchronising", logger="iscsifs.core.login")
def test_statsn_gap_is_resynchronised(caplog):
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    target.stat_sn += 5
    done = login.receive(target.reply(req, OP_ANSWERS))
    assert done.exp_stat_sn == 1007
    assert "StatSN" in caplog.text


def test_failed_login_stays_failed():
    login = make_login()
    target = Target()
    req = login.start()
    with pytest.raises(RemoteProtocolError):
        login.receive(target.reply(req, [("AuthMethod", "None")], itt=9))
    with pytest.raises(LocalProtocolError):
        login.receive(target.reply(req, [("AuthMethod", "None")]))


def test_duplicate_key_in_security_response():
    login = make_login()
    req = login.start()
    with pytest.raises(RemoteProtocolError, match="twice"):
        login.receive(Target().reply(req, [("AuthMethod", "None"), ("AuthMethod", "None")]))


def test_operational_violation_names_target():
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    with pytest.raises(RemoteProtocolError, match=TARGET):
        login.receive(target.reply(req, [("MaxBurstLength", "99999999")]))


# ---------------------------------------------------------------------------------------------
# status classes (RFC 7143 §11.13.5)

@pytest.mark.parametrize("detail,text", [
    (0, "initiator error"), (2, "authorization failure"), (3, "target not found"),
    (4, "target removed"), (5, "unsupported iSCSI version"), (6, "too many connections"),
    (7, "missing parameter"), (8, "cannot include"), (9, "session type not supported"),
    (10, "session does not exist"), (11, "invalid request during login"),
])
def test_initiator_error_statuses(detail, text):
    login = make_login()
    req = login.start()
    with pytest.raises(LoginError) as info:
        login.receive(Target().reply(req, status=(2, detail), transit=False))
    exc = info.value
    assert (exc.status_class, exc.status_detail) == (2, detail)
    assert text in str(exc) and TARGET in str(exc)
    assert "\n" not in str(exc)
    assert f"0x02{detail:02x}" in str(exc)


def test_authentication_failure_without_chap():
    login = make_login()
    req = login.start()
    with pytest.raises(AuthenticationError) as info:
        login.receive(Target().reply(req, status=(2, 1), transit=False))
    assert info.value.exit_code == EXIT_AUTH_FAILED
    assert "authentication failure" in str(info.value)
    assert "CHAP" in str(info.value) and "not configured" in str(info.value)


def test_authentication_failure_with_chap_has_no_secret():
    creds = _creds()
    login = make_login(chap=creds)
    req = login.start()
    req = login.receive(Target().reply(req, [("AuthMethod", "CHAP")]))
    with pytest.raises(AuthenticationError) as info:
        login.receive(Target().reply(req, status=(2, 1), transit=False))
    assert "authentication failure" in str(info.value)
    assert "initiator-secret" not in str(info.value)


def test_authorization_failure_is_auth_error():
    # open-iscsi reports both 0x0201 and 0x0202 as "login auth failed" (exit 24)
    login = make_login()
    req = login.start()
    with pytest.raises(AuthenticationError) as info:
        login.receive(Target().reply(req, status=(2, 2), transit=False))
    assert info.value.exit_code == EXIT_AUTH_FAILED


@pytest.mark.parametrize("detail,text", [(0, "target error"), (1, "service unavailable"),
                                         (2, "out of resources"), (9, "target error")])
def test_target_error_statuses(detail, text):
    login = make_login()
    req = login.start()
    with pytest.raises(LoginError) as info:
        login.receive(Target().reply(req, status=(3, detail), transit=False))
    assert not isinstance(info.value, AuthenticationError)
    assert info.value.exit_code == EXIT_LOGIN_FAILED
    assert text in str(info.value) and TARGET in str(info.value)


@pytest.mark.parametrize("detail,text", [(1, "temporarily"), (2, "permanently")])
def test_redirect(detail, text):
    login = make_login()
    req = login.start()
    with pytest.raises(LoginError) as info:
        login.receive(Target().reply(req, [("TargetAddress", "10.0.0.9:3261")],
                                     status=(1, detail), transit=False))
    assert info.value.target_address == "10.0.0.9:3261"
    assert (info.value.status_class, info.value.status_detail) == (1, detail)
    assert text in str(info.value) and "10.0.0.9:3261" in str(info.value)


def test_redirect_without_address():
    login = make_login()
    req = login.start()
    with pytest.raises(LoginError) as info:
        login.receive(Target().reply(req, data=b"\xff\xff", status=(1, 1), transit=False))
    assert info.value.target_address is None


def test_unknown_status_class():
    login = make_login()
    req = login.start()
    with pytest.raises(LoginError, match="0x0700"):
        login.receive(Target().reply(req, status=(7, 0), transit=False))


def test_discovery_messages_name_the_session():
    login = make_login(target_name=None, session_type="Discovery")
    req = login.start()
    with pytest.raises(LoginError, match="discovery"):
        login.receive(Target().reply(req, status=(2, 9), transit=False))


# ---------------------------------------------------------------------------------------------
# AuthMethod answers

def test_target_requires_chap_but_none_configured():
    login = make_login()
    req = login.start()
    with pytest.raises(AuthenticationError) as info:
        login.receive(Target().reply(req, [("AuthMethod", "CHAP")], transit=False))
    msg = str(info.value)
    assert "CHAP" in msg and "required" in msg and "not configured" in msg and TARGET in msg
    assert info.value.exit_code == EXIT_AUTH_FAILED


def test_target_rejects_none():
    login = make_login()
    req = login.start()
    with pytest.raises(AuthenticationError, match="not configured"):
        login.receive(Target().reply(req, [("AuthMethod", "Reject")], transit=False))


def test_target_chooses_method_not_offered():
    login = make_login()
    req = login.start()
    with pytest.raises(RemoteProtocolError, match="SRP"):
        login.receive(Target().reply(req, [("AuthMethod", "SRP")], transit=False))


def test_target_omits_auth_method_and_transits():
    login = make_login()
    req = login.start()
    req = login.receive(Target().reply(req, [("TargetPortalGroupTag", "1")]))
    assert req.csg == 1


def test_target_omits_auth_method_without_transit():
    login = make_login()
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("TargetPortalGroupTag", "1")], transit=False))
    assert req.csg == 0
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    assert req.csg == 1


# ---------------------------------------------------------------------------------------------
# CHAP

chap = pytest.importorskip("iscsifs.core.chap")


def _creds(mutual=False):
    if mutual:
        return chap.ChapCredentials("alice", "initiator-secret", username_in="tgt",
                                    password_in="target-secret-x")
    return chap.ChapCredentials("alice", "initiator-secret")


def _chap_r(identifier: int, secret: bytes, challenge: bytes) -> str:
    return "0x" + chap.chap_response("MD5", identifier, secret, challenge).hex()


def test_chap_offer_and_one_way_flow():
    login = make_login(chap=_creds())
    target = Target()
    req = login.start()
    assert dict(pairs_of(req))["AuthMethod"] == "CHAP,None"
    assert not req.transit
    req = login.receive(target.reply(req, [("AuthMethod", "CHAP"),
                                           ("TargetPortalGroupTag", "1")]))
    assert pairs_of(req) == [("CHAP_A", "5")] and not req.transit and req.csg == 0
    challenge = bytes(range(16))
    req = login.receive(target.reply(req, [("CHAP_A", "5"), ("CHAP_I", "7"),
                                           ("CHAP_C", "0x" + challenge.hex())]))
    answer = dict(pairs_of(req))
    assert answer["CHAP_N"] == "alice"
    assert answer["CHAP_R"] == _chap_r(7, b"initiator-secret", challenge)
    assert req.transit and req.nsg == 1 and req.csg == 0
    req = login.receive(target.reply(req, []))
    assert req.csg == 1
    done = login.receive(target.reply(req, OP_ANSWERS))
    assert done.auth_method == "CHAP"
    assert done.params.target_portal_group_tag == 1


def test_chap_algorithm_then_challenge_separately():
    login = make_login(chap=_creds())
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "CHAP")]))
    req = login.receive(target.reply(req, [("CHAP_A", "5")]))
    assert req.data == b"" and not req.transit
    req = login.receive(target.reply(req, [("CHAP_I", "1"), ("CHAP_C", "0x" + "ab" * 16)]))
    assert "CHAP_R" in dict(pairs_of(req))


def test_chap_target_picks_none():
    login = make_login(chap=_creds())
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "None")]))
    assert req.csg == 0 and req.transit and req.data == b""
    req = login.receive(target.reply(req, []))
    assert req.csg == 1


def test_mutual_chap_flow():
    login = make_login(chap=_creds(mutual=True))
    target = Target()
    req = login.start()
    assert dict(pairs_of(req))["AuthMethod"] == "CHAP"    # None is not acceptable
    req = login.receive(target.reply(req, [("AuthMethod", "CHAP")]))
    req = login.receive(target.reply(req, [("CHAP_A", "5"), ("CHAP_I", "3"),
                                           ("CHAP_C", "0x" + "11" * 16)]))
    ours = dict(pairs_of(req))
    ident = int(ours["CHAP_I"])
    challenge = bytes.fromhex(ours["CHAP_C"][2:])
    good = _chap_r(ident, b"target-secret-x", challenge)
    req = login.receive(target.reply(req, [("CHAP_N", "tgt"), ("CHAP_R", good)]))
    assert req.csg == 1
    assert isinstance(login.receive(target.reply(req, OP_ANSWERS)), LoginComplete)


def test_mutual_chap_wrong_target_response():
    login = make_login(chap=_creds(mutual=True))
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "CHAP")]))
    req = login.receive(target.reply(req, [("CHAP_A", "5"), ("CHAP_I", "3"),
                                           ("CHAP_C", "0x" + "11" * 16)]))
    with pytest.raises(AuthenticationError) as info:
        login.receive(target.reply(req, [("CHAP_N", "tgt"), ("CHAP_R", "0x" + "00" * 16)]))
    assert TARGET in str(info.value)
    assert "secret" not in str(info.value).replace("password_in", "")


def test_mutual_chap_target_skips_its_proof():
    login = make_login(chap=_creds(mutual=True))
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "CHAP")]))
    req = login.receive(target.reply(req, [("CHAP_A", "5"), ("CHAP_I", "3"),
                                           ("CHAP_C", "0x" + "11" * 16)]))
    with pytest.raises(AuthenticationError):
        login.receive(target.reply(req, []))


def test_mutual_chap_target_picks_none():
    login = make_login(chap=_creds(mutual=True))
    req = login.start()
    with pytest.raises(AuthenticationError, match="mutual"):    # we did not offer None
        login.receive(Target().reply(req, [("AuthMethod", "None")], transit=False))


def test_chap_target_transits_early():
    login = make_login(chap=_creds())
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "CHAP")]))
    req = login.receive(target.reply(req, [("CHAP_A", "5"), ("CHAP_I", "3"),
                                           ("CHAP_C", "0x" + "11" * 16)]))
    # after our response the target sends stray CHAP keys
    with pytest.raises(RemoteProtocolError):
        login.receive(target.reply(req, [("CHAP_A", "5")]))


def test_chap_reflected_challenge_fails():
    login = make_login(chap=_creds(mutual=True))
    target = Target()
    req = login.start()
    req = login.receive(target.reply(req, [("AuthMethod", "CHAP")]))
    req = login.receive(target.reply(req, [("CHAP_A", "5"), ("CHAP_I", "3"),
                                           ("CHAP_C", "0x" + "22" * 16)]))
    ours = dict(pairs_of(req))
    # a second connection whose target reflects our challenge back at us
    login2 = make_login(chap=_creds(mutual=True))
    t2 = Target()
    r2 = login2.start()
    r2 = login2.receive(t2.reply(r2, [("AuthMethod", "CHAP")]))
    with pytest.raises(AuthenticationError):
        login2.receive(t2.reply(r2, [("CHAP_A", "5"), ("CHAP_I", ours["CHAP_I"]),
                                     ("CHAP_C", ours["CHAP_C"])]))


def test_failure_status_checked_before_header_fields():
    # tgt answers a failed login with ISID 0; the status is what matters
    login = make_login()
    req = login.start()
    with pytest.raises(LoginError, match="target not found"):
        login.receive(Target().reply(req, status=(2, 3), transit=False, isid=0, itt=0x1234))


# ---------------------------------------------------------------------------------------------
# one message, composed once (a login failure used to read "login to T failed: login to T
# failed: ..." once every layer had added its prefix)

def test_failure_names_the_target_once_and_keeps_the_bare_reason():
    login = make_login(chap=_creds())
    req = login.start()
    req = login.receive(Target().reply(req, [("AuthMethod", "CHAP")]))
    with pytest.raises(AuthenticationError) as info:
        login.receive(Target().reply(req, status=(2, 1), transit=False))
    exc = info.value
    assert exc.detail == ("authentication failure (status 0x0201); check the CHAP username "
                          "and password")
    assert str(exc) == f"authentication failed for {TARGET}: {exc.detail}"
    # the session names the portal too: the name is replaced, never stacked
    exc.located(f"{TARGET} at 127.0.0.1:3260")
    assert str(exc) == f"authentication failed for {TARGET} at 127.0.0.1:3260: {exc.detail}"
    assert str(exc).count("authentication fail") == 2      # "failed for" + "failure (status"


# ---------------------------------------------------------------------------------------------
# CHAP algorithms a target mishandles (tgt answers CHAP_A=7 but computes SHA-1, and ends the
# login with 0x0200 for an algorithm it lacks): the error names the key that fixes it

@pytest.mark.parametrize("algs,status,session_type,key", [
    (("SHA256",), (2, 0), "Normal", "node.session.auth.chap_algs"),
    (("SHA256", "MD5"), (2, 1), "Normal", "node.session.auth.chap_algs"),
    (("SHA1",), (2, 0), "Discovery", "discovery.sendtargets.auth.chap_algs"),
])
def test_chap_failure_after_offering_more_than_md5_names_chap_algs(algs, status, session_type,
                                                                   key):
    creds = chap.ChapCredentials("alice", "initiator-secret", algorithms=algs)
    login = make_login(chap=creds, session_type=session_type)
    req = login.start()
    req = login.receive(Target().reply(req, [("AuthMethod", "CHAP")]))
    assert pairs_of(req) == [("CHAP_A", ",".join(str(chap.ALGORITHMS[a].number)
                                                 for a in algs))]
    with pytest.raises(LoginError) as info:
        login.receive(Target().reply(req, status=status, transit=False))
    text = str(info.value)
    assert f"set {key} = MD5" in text and f"({','.join(algs)};" in text
    assert "\n" not in text and "initiator-secret" not in text


@pytest.mark.parametrize("algs,auth,status", [
    (("MD5",), "CHAP", (2, 0)),          # MD5 only: nothing to change
    (("SHA256",), "None", (2, 0)),       # the target did not choose CHAP
    (("SHA256",), "CHAP", (2, 3)),       # target not found: unrelated to CHAP
])
def test_no_chap_algs_hint_where_it_cannot_help(algs, auth, status):
    creds = chap.ChapCredentials("alice", "initiator-secret", algorithms=algs)
    login = make_login(chap=creds)
    req = login.start()
    if auth == "CHAP":
        req = login.receive(Target().reply(req, [("AuthMethod", auth)]))
    with pytest.raises(LoginError) as info:
        login.receive(Target().reply(req, status=status, transit=False))
    assert "chap_algs" not in str(info.value)
