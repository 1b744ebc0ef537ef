"""CHAP initiator (iscsifs.core.chap): responses, value parsing, mutual CHAP, secret hygiene."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, strategies as st

from iscsifs.core import chap
from iscsifs.core.chap import (
    ChapCredentials, ChapInitiator, chap_response, decode_binary, decode_number,
    normalize_algorithms,
)
from iscsifs.errors import AuthenticationError, ConfigError, LocalProtocolError

OUT_SECRET = "initiator-secret-1"
IN_SECRET = "target-secret-22"
HASHES = {"MD5": hashlib.md5, "SHA1": hashlib.sha1, "SHA256": hashlib.sha256,
          "SHA3-256": hashlib.sha3_256}
NUMBERS = {"MD5": 5, "SHA1": 6, "SHA256": 7, "SHA3-256": 8}


def creds(**kw):
    base = dict(username="alice", password=OUT_SECRET)
    base.update(kw)
    return ChapCredentials(**base)


def mutual_creds(**kw):
    return creds(username_in="tgt", password_in=IN_SECRET, **kw)


@pytest.fixture
def issued():
    """A private reflection registry so tests don't see each other's challenges."""
    return chap._IssuedChallenges()


def expected(alg, ident, secret, challenge):
    return HASHES[alg](bytes([ident]) + secret + challenge).hexdigest()


# --- responses -------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", list(HASHES))
def test_response_matches_hashlib(alg, issued):
    init = ChapInitiator(creds(algorithms=(alg,)), _issued=issued)
    assert init.first_keys() == [("CHAP_A", str(NUMBERS[alg]))]
    challenge = bytes(range(16)) + b"\xff" * 7
    out = init.receive([("CHAP_A", str(NUMBERS[alg])), ("CHAP_I", "17"),
                        ("CHAP_C", "0x" + challenge.hex())])
    assert out == [("CHAP_N", "alice"),
                   ("CHAP_R", "0x" + expected(alg, 17, OUT_SECRET.encode(), challenge))]
    assert init.done and init.algorithm == alg


def test_known_md5_vectors():
    # CHAP-MD5 vectors published with PEAR Crypt_CHAP's test suite (RFC 1994 construction).
    challenge = bytes.fromhex("102DB5DF085D3041")
    assert chap_response("MD5", 1, b"MyPw", challenge).hex() == \
        "8f028814450d66d94c72331ef455a172"
    assert chap_response("MD5", 1, b"sepp", challenge).hex() == \
        "d39bfaf5d6855a948c8c81a85947502c"


def test_md5_vector_through_initiator(issued):
    init = ChapInitiator(ChapCredentials("u", "MyPw"), _issued=issued)
    init.first_keys()
    out = init.receive([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x102DB5DF085D3041")])
    assert out[1] == ("CHAP_R", "0x8f028814450d66d94c72331ef455a172")


def test_offer_order_and_default():
    assert ChapInitiator(creds()).first_keys() == [("CHAP_A", "5")]
    all_algs = creds(algorithms=("SHA3-256", "SHA256", "SHA1", "MD5"))
    assert ChapInitiator(all_algs).first_keys() == [("CHAP_A", "8,7,6,5")]
    assert ChapInitiator(creds(algorithms=["md5", "sha1"])).first_keys() == [("CHAP_A", "5,6")]


def test_first_keys_twice_is_local_error():
    init = ChapInitiator(creds())
    init.first_keys()
    with pytest.raises(LocalProtocolError):
        init.first_keys()


def test_chap_a_alone_then_challenge(issued):
    init = ChapInitiator(creds(), _issued=issued)
    init.first_keys()
    assert init.receive([("CHAP_A", "5")]) is None
    out = init.receive([("CHAP_I", "0x0a"), ("CHAP_C", "0xabcd")])
    assert out[1][1] == "0x" + expected("MD5", 10, OUT_SECRET.encode(), b"\xab\xcd")


def test_non_chap_keys_ignored(issued):
    init = ChapInitiator(creds(), _issued=issued)
    init.first_keys()
    assert init.receive([("AuthMethod", "CHAP"), ("TargetPortalGroupTag", "1")]) is None


@pytest.mark.parametrize("answer", ["7", "6", "Reject", "None", "NotUnderstood", "5,7", "x",
                                    "0005x", ""])
def test_algorithm_not_offered(answer):
    init = ChapInitiator(creds(algorithms=("MD5",)))
    init.first_keys()
    with pytest.raises(AuthenticationError):
        init.receive([("CHAP_A", answer), ("CHAP_I", "1"), ("CHAP_C", "0x00")])


def test_challenge_before_algorithm():
    init = ChapInitiator(creds())
    init.first_keys()
    with pytest.raises(AuthenticationError, match="before CHAP_A"):
        init.receive([("CHAP_I", "1"), ("CHAP_C", "0x00")])


def test_duplicate_key_refused():
    init = ChapInitiator(creds())
    init.first_keys()
    with pytest.raises(AuthenticationError, match="twice"):
        init.receive([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_I", "2"), ("CHAP_C", "0x00")])


def test_failed_initiator_stays_failed():
    init = ChapInitiator(creds())
    init.first_keys()
    with pytest.raises(AuthenticationError):
        init.receive([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x0")])
    with pytest.raises(LocalProtocolError):
        init.receive([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x00")])


# --- value parsing ---------------------------------------------------------------------------

def test_hex_and_base64_equivalent(issued):
    challenge = bytes(range(40))
    answers = []
    for encoded in ("0x" + challenge.hex(), "0X" + challenge.hex().upper(),
                    "0b" + base64.b64encode(challenge).decode(),
                    "0B" + base64.b64encode(challenge).decode()):
        init = ChapInitiator(creds(), _issued=issued)
        init.first_keys()
        answers.append(init.receive([("CHAP_A", "5"), ("CHAP_I", "3"), ("CHAP_C", encoded)]))
    assert all(a == answers[0] for a in answers)


@pytest.mark.parametrize("value", ["0x0", "0xabc", "0x", "0b", "abcd", "0xzz", "0b!!!!",
                                   "0bYWJj=", "1234", "0x" + "00" * 1025,
                                   "0b" + base64.b64encode(b"\0" * 1025).decode()])
def test_bad_binary_values(value):
    with pytest.raises(AuthenticationError):
        decode_binary(value)


def test_binary_limit_exact():
    assert len(decode_binary("0x" + "ab" * 1024)) == 1024
    assert len(decode_binary("0b" + base64.b64encode(b"\1" * 1024).decode())) == 1024


def test_odd_hex_message():
    with pytest.raises(AuthenticationError, match="odd number"):
        decode_binary("0x123")


@pytest.mark.parametrize("value,number", [("0", 0), ("255", 255), ("0xff", 255), ("007", 7)])
def test_identifier_ok(value, number):
    assert decode_number(value) == number


@pytest.mark.parametrize("value", ["256", "-1", "0x100", "", "0x", "abc", "1e3", "١٢",
                                   "99999999999"])
def test_identifier_bad(value):
    with pytest.raises(AuthenticationError):
        decode_number(value)


def test_oversize_challenge_in_exchange():
    init = ChapInitiator(creds())
    init.first_keys()
    with pytest.raises(AuthenticationError, match="1024"):
        init.receive([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x" + "11" * 2000)])


@given(st.text(max_size=64))
def test_decode_binary_never_crashes(text):
    try:
        decode_binary(text)
    except AuthenticationError:
        pass


# --- mutual CHAP -----------------------------------------------------------------------------

def run_mutual(issued, alg="MD5"):
    init = ChapInitiator(mutual_creds(algorithms=(alg,)), _issued=issued)
    init.first_keys()
    out = dict(init.receive([("CHAP_A", str(NUMBERS[alg])), ("CHAP_I", "9"),
                             ("CHAP_C", "0x" + "42" * 16)]))
    return init, out


@pytest.mark.parametrize("alg", list(HASHES))
def test_mutual_ok(alg, issued):
    init, out = run_mutual(issued, alg)
    assert set(out) == {"CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"}
    our_id = int(out["CHAP_I"])
    our_challenge = decode_binary(out["CHAP_C"])
    assert len(our_challenge) >= max(16, HASHES[alg]().digest_size)
    assert init.awaiting_target and not init.done
    answer = expected(alg, our_id, IN_SECRET.encode(), our_challenge)
    init.verify([("CHAP_N", "tgt"), ("CHAP_R", "0x" + answer)])
    assert init.done


def test_mutual_base64_answer(issued):
    init, out = run_mutual(issued)
    digest = bytes.fromhex(expected("MD5", int(out["CHAP_I"]), IN_SECRET.encode(),
                                    decode_binary(out["CHAP_C"])))
    init.verify([("CHAP_N", "tgt"), ("CHAP_R", "0b" + base64.b64encode(digest).decode())])


def test_mutual_wrong_secret(issued):
    init, out = run_mutual(issued)
    answer = expected("MD5", int(out["CHAP_I"]), b"some-other-secret", decode_binary(
        out["CHAP_C"]))
    with pytest.raises(AuthenticationError, match="mutual"):
        init.verify([("CHAP_N", "tgt"), ("CHAP_R", "0x" + answer)])
    assert not init.done


def test_mutual_wrong_name(issued):
    init, out = run_mutual(issued)
    answer = expected("MD5", int(out["CHAP_I"]), IN_SECRET.encode(),
                      decode_binary(out["CHAP_C"]))
    with pytest.raises(AuthenticationError):
        init.verify([("CHAP_N", "mallory"), ("CHAP_R", "0x" + answer)])


def test_mutual_missing_answer(issued):
    init, _ = run_mutual(issued)
    with pytest.raises(AuthenticationError, match="did not authenticate"):
        init.verify([("CHAP_N", "tgt")])


def test_mutual_answer_with_our_own_secret_fails(issued):
    """A target answering with the initiator's secret (e.g. it reflected our challenge to
    another initiator session of ours) must fail."""
    init, out = run_mutual(issued)
    answer = expected("MD5", int(out["CHAP_I"]), OUT_SECRET.encode(),
                      decode_binary(out["CHAP_C"]))
    with pytest.raises(AuthenticationError, match="our own secret"):
        init.verify([("CHAP_N", "tgt"), ("CHAP_R", "0x" + answer)])


def test_reflected_challenge_refused(issued):
    first, out = run_mutual(issued)
    ours = out["CHAP_C"]
    # A second login: the "target" sends our own challenge, hoping we compute the answer.
    second = ChapInitiator(mutual_creds(), _issued=issued)
    second.first_keys()
    with pytest.raises(AuthenticationError, match="reflected"):
        second.receive([("CHAP_A", "5"), ("CHAP_I", out["CHAP_I"]), ("CHAP_C", ours)])


def test_reflection_uses_process_registry_by_default():
    first = ChapInitiator(mutual_creds())
    first.first_keys()
    out = dict(first.receive([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x" + "77" * 16)]))
    second = ChapInitiator(creds())
    second.first_keys()
    with pytest.raises(AuthenticationError, match="reflected"):
        second.receive([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", out["CHAP_C"])])


def test_challenges_never_reused(issued):
    seen = set()
    for _ in range(50):
        _, out = run_mutual(issued)
        assert out["CHAP_C"] not in seen
        seen.add(out["CHAP_C"])


def test_verify_not_mutual_is_local_error(issued):
    init = ChapInitiator(creds(), _issued=issued)
    init.first_keys()
    init.receive([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x01")])
    with pytest.raises(LocalProtocolError):
        init.verify([("CHAP_N", "x"), ("CHAP_R", "0x00")])


def test_response_before_challenge_refused():
    init = ChapInitiator(creds())
    init.first_keys()
    with pytest.raises(AuthenticationError):
        init.receive([("CHAP_N", "x"), ("CHAP_R", "0x00")])


# --- credentials -----------------------------------------------------------------------------

def test_equal_secrets_refused():
    with pytest.raises(ConfigError, match="no two CHAP secrets may be the same") as info:
        ChapCredentials("a", "same-secret-123", "b", "same-secret-123")
    assert "same-secret-123" not in str(info.value)


@pytest.mark.parametrize("kw", [
    dict(username="", password="", username_in="t", password_in=IN_SECRET),
    dict(username="a", password="", username_in="t", password_in=IN_SECRET),
    dict(username="", password=OUT_SECRET, username_in="t", password_in=IN_SECRET),
])
def test_in_without_out_refused(kw):
    with pytest.raises(ConfigError, match="username_in/password_in") as info:
        ChapCredentials(**kw)
    assert IN_SECRET not in str(info.value)


def test_half_mutual_refused():
    with pytest.raises(ConfigError):
        ChapCredentials("a", OUT_SECRET, username_in="t")
    with pytest.raises(ConfigError):
        ChapCredentials("a", OUT_SECRET, password_in=IN_SECRET)


def test_empty_and_oversize():
    with pytest.raises(ConfigError):
        ChapCredentials("a", "")
    with pytest.raises(ConfigError):
        ChapCredentials("", "x" * 20)
    with pytest.raises(ConfigError, match="256"):
        ChapCredentials("a", "x" * 257)


def test_algorithms_validated():
    assert normalize_algorithms("sha3-256, SHA256 ,md5") == ("SHA3-256", "SHA256", "MD5")
    for bad in ("", "SHA512", "MD5,MD5", ()):
        with pytest.raises(ConfigError):
            normalize_algorithms(bad)
    assert creds(algorithms=["sha1"]).algorithms == ("SHA1",)


def test_weak_warnings_no_secret():
    weak = ChapCredentials("alice", "short1", "tgt", "short2")
    assert len(weak.weak) == 2
    assert all("short1" not in w and "short2" not in w for w in weak.weak)
    assert mutual_creds().weak == []


def test_secrets_never_shown(issued):
    c = mutual_creds()
    for text in (repr(c), str(c), repr(ChapInitiator(c)), f"{c}", str([c])):
        assert OUT_SECRET not in text and IN_SECRET not in text
    assert "alice" in repr(c)
    # nor in any error raised during an exchange
    init, out = run_mutual(issued)
    try:
        init.verify([("CHAP_N", "tgt"), ("CHAP_R", "0x" + "00" * 16)])
    except AuthenticationError as exc:
        assert OUT_SECRET not in str(exc) and IN_SECRET not in str(exc)
        assert exc.exit_code == 24
    else:
        pytest.fail("verify accepted a wrong answer")


def test_bytes_secrets(issued):
    c = ChapCredentials("u", b"\x00\x01binary-secret")
    init = ChapInitiator(c, _issued=issued)
    init.first_keys()
    out = init.receive([("CHAP_A", "5"), ("CHAP_I", "2"), ("CHAP_C", "0x0102")])
    assert out[1][1] == "0x" + expected("MD5", 2, b"\x00\x01binary-secret", b"\x01\x02")
