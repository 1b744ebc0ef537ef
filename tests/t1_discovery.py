"""Tests for iscsifs.core.names (portals, iSCSI name validation) and iscsifs.core.discovery
(SendTargets parsing)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsifs.core.discovery import (DiscoveredTarget, parse_sendtargets, sendtargets_request,
                                    split_sendtargets)
from iscsifs.core.names import Portal, check_host, parse_portal, valid_iscsi_name
from iscsifs.core.keys import decode_text
from iscsifs.errors import RemoteProtocolError

T1 = "iqn.2003-01.org.example:disk1"
T2 = "iqn.2003-01.org.example:disk2"


# ---------------------------------------------------------------------------------------------
# Portal

@pytest.mark.parametrize("text,portal", [
    ("10.0.0.5", Portal("10.0.0.5", 3260, 1)),
    ("10.0.0.5:3261", Portal("10.0.0.5", 3261, 1)),
    ("10.0.0.5:3261,7", Portal("10.0.0.5", 3261, 7)),
    ("10.0.0.5,7", Portal("10.0.0.5", 3260, 7)),
    ("storage.example.com:3260", Portal("storage.example.com", 3260, 1)),
    ("[::1]", Portal("::1", 3260, 1)),
    ("[::1]:3262", Portal("::1", 3262, 1)),
    ("[fe80::1:2]:3260,2", Portal("fe80::1:2", 3260, 2)),
    ("[1080:0:0:0:8:800:200C:417A],65", Portal("1080:0:0:0:8:800:200C:417A", 3260, 65)),
    ("::1", Portal("::1", 3260, 1)),
    (" 10.0.0.5 ", Portal("10.0.0.5", 3260, 1)),
])
def test_parse_portal(text, portal):
    assert parse_portal(text) == portal


@pytest.mark.parametrize("text", [
    "", "   ", ":3260", "host:", "host:port", "host:70000", "host:0", "[::1", "[::1]x",
    "[::1]:", "[10.0.0.1]:3260", "[nothex::zz]:3260", "host:3260,", "host:3260,x",
    "host:3260,70000", "bad host", "a/b", "../etc", "host\x00", "a..b", "1.2.3.4:32 60",
])
def test_parse_portal_rejects(text):
    with pytest.raises(ValueError):
        parse_portal(text)


@pytest.mark.parametrize("text,problem", [
    ("bad!!", "invalid host name 'bad!!'"), ("1.2.3.4:99999", "invalid port 99999 (1-65535)"),
    ("host:x", "invalid port 'x'"), ("[::1", "missing ']'"),
    ("[10.0.0.1]:3260", "brackets are only for IPv6 addresses"),
    ("host:3260,x", "invalid portal group tag 'x'"),
])
def test_parse_portal_says_what_is_wrong_without_repeating_the_text(text, problem):
    # the caller names the text ("bad portal 'bad!!': ..."); it used to be said twice
    with pytest.raises(ValueError) as info:
        parse_portal(text)
    assert str(info.value) == problem


def test_portal_str():
    assert str(Portal("127.0.0.1")) == "127.0.0.1:3260,1"
    assert str(Portal("::1")) == "[::1]:3260,1"
    assert Portal("::1", 3261).address == "[::1]:3261"
    assert str(Portal("h.example", 3262, 5)) == "h.example:3262,5"


@pytest.mark.parametrize("portal", [Portal("10.1.2.3", 3261, 4), Portal("::1"),
                                    Portal("fe80::1", 1, 0), Portal("san1")])
def test_portal_str_roundtrip(portal):
    assert parse_portal(str(portal)) == portal


def test_portal_order_and_hash():
    ps = [Portal("b"), Portal("a", 3261), Portal("a", 3260, 2), Portal("a")]
    assert sorted(ps) == [Portal("a"), Portal("a", 3260, 2), Portal("a", 3261), Portal("b")]
    assert len({Portal("a"), Portal("a", 3260, 1)}) == 1


@pytest.mark.parametrize("kw", [{"port": 0}, {"port": 65536}, {"tpgt": -1},
                                {"tpgt": 65536}, {"port": True}, {"host": ""}])
def test_portal_validation(kw):
    args = {"host": "h", **kw}
    with pytest.raises(ValueError):
        Portal(**args)


# ---------------------------------------------------------------------------------------------
# the one host rule

@pytest.mark.parametrize("host,stored", [
    ("my_host", "my_host"),                      # resolvers take it; so do we, everywhere
    ("_srv.example", "_srv.example"), ("san-1.example.com.", "san-1.example.com."),
    ("10.0.0.5", "10.0.0.5"), ("FE80::0001", "fe80::1"), ("[::1]", "::1"),
    ("fe80::1%eth0", "fe80::1%eth0"), ("a" * 63 + ".b", "a" * 63 + ".b"),
])
def test_one_host_rule_accepts_and_normalises(host, stored):
    assert check_host(host) == stored
    assert Portal(host).host == stored
    assert parse_portal(f"[{stored}]:3261" if ":" in stored else f"{host}:3261") == \
        Portal(stored, 3261)


@pytest.mark.parametrize("host,problem", [
    ("", "empty host in portal"), ("a..b", "invalid host name 'a..b'"),
    ("-opt", "invalid host name '-opt'"), ("a.-b", "invalid host name 'a.-b'"),
    ("bad host", "invalid host name 'bad host'"), ("a/b", "invalid host name 'a/b'"),
    ("a" * 64, "invalid host name"), ("a." * 127 + "bc", "invalid host name"),
    ("010.0.0.1", "invalid IPv4 address '010.0.0.1'"), ("1.2.3.256", "invalid IPv4 address"),
    ("1.2.3", "invalid IPv4 address"), ("fe80::zz", "invalid IPv6 address 'fe80::zz'"),
    ("[10.0.0.1]", "invalid host name"),
])
def test_one_host_rule_refuses(host, problem):
    with pytest.raises(ValueError, match=problem.replace(".", r"\.").replace("(", r"\(")):
        check_host(host)
    with pytest.raises(ValueError):
        Portal(host)


@given(st.text(max_size=40))
def test_check_host_is_idempotent_and_what_it_returns_is_a_portal(text):
    try:
        host = check_host(text)
    except ValueError:
        return
    assert check_host(host) == host
    assert Portal(host).host == host
    assert parse_portal(Portal(host).address) == Portal(host)


# ---------------------------------------------------------------------------------------------
# names

@pytest.mark.parametrize("name", [
    "iqn.2003-01.org.example:disk1",
    "iqn.1992-04.com.os-vendor.plan9:cdrom.12345",
    "iqn.2001-04.com.example",
    "iqn.2004-04.com.qnap:ts-459:iscsi.vol.abc123",
    "IQN.2003-01.org.Example:Disk",
    "eui.02004567A425678D",
    "naa.52004567BA64678D",
    "naa.62004567BA64678D0123456789ABCDEF",
    "iqn.2003-01.org.example:" + "a" * (223 - 24),
    "iqn.2003-01.org.example:d\u00efsk",
])
def test_valid_names(name):
    assert valid_iscsi_name(name)


@pytest.mark.parametrize("name", [
    "", "disk1", "iqn.", "iqn.2003.org.example", "iqn.2003-13.org.example",
    "iqn.2003-00.org.example", "iqn.03-01.org.example", "iqn.2003-01.:x",
    "iqn.2003-01.org.example:" + "a" * 200,           # > 223 bytes
    "iqn.2003-01.org.example:../../etc/passwd", "iqn.2003-01.org.example:a/b",
    "iqn.2003-01.org.example:..", "iqn.2003-01.org..example:x",
    "iqn.2003-01.org.example:a\x00b", "iqn.2003-01.org.example:a\nb",
    "iqn.2003-01.org.example:a b", "iqn.2003-01.org.example:a\x1b[31m",
    "iqn.2003-01.org.example:a\u200bb", "iqn.2003-01.org.example:a\\b",
    "eui.02004567A425678", "eui.02004567A425678G", "naa.1234", "naa." + "1" * 20,
    "iqn.2003-01.org.example:\ud800",
])
def test_invalid_names(name):
    assert not valid_iscsi_name(name)


def test_non_string_name():
    assert not valid_iscsi_name(None)
    assert not valid_iscsi_name(b"iqn.2003-01.org.example:x")


@given(st.text(max_size=300))
def test_valid_names_are_path_safe(name):
    if valid_iscsi_name(name):
        assert "/" not in name and ".." not in name and "\0" not in name
        assert len(name.encode()) <= 223
        assert name not in (".", "..")
        assert all(ch.isprintable() for ch in name)


# ---------------------------------------------------------------------------------------------
# SendTargets

def test_sendtargets_request():
    assert sendtargets_request() == [("SendTargets", "All")]
    assert sendtargets_request(T1) == [("SendTargets", T1)]


def test_parse_sendtargets_typical():
    data = (f"TargetName={T1}\0TargetAddress=10.0.0.5:3260,1\0"
            f"TargetAddress=[fd00::5]:3260,2\0"
            f"TargetName={T2}\0TargetAddress=10.0.0.6,3\0").encode()
    targets = parse_sendtargets(decode_text(data))
    assert targets == [
        DiscoveredTarget(T1, (Portal("10.0.0.5", 3260, 1), Portal("fd00::5", 3260, 2))),
        DiscoveredTarget(T2, (Portal("10.0.0.6", 3260, 3),)),
    ]


def test_parse_sendtargets_empty():
    assert parse_sendtargets([]) == []


def test_target_without_address_has_no_portals():
    assert parse_sendtargets([("TargetName", T1)]) == [DiscoveredTarget(T1, ())]


def test_address_before_name_is_error():
    with pytest.raises(RemoteProtocolError):
        parse_sendtargets([("TargetAddress", "10.0.0.5:3260,1"), ("TargetName", T1)])


@pytest.mark.expect_log("dropping invalid target name", logger="iscsifs.core.discovery")
def test_invalid_names_dropped_and_reported(caplog):
    pairs = [("TargetName", "iqn.2003-01.org.example:../../../etc"),
             ("TargetAddress", "10.0.0.5:3260,1"),
             ("TargetName", T1), ("TargetAddress", "10.0.0.5:3260,1"),
             ("TargetName", "evil\x1b[2J"), ("TargetAddress", "10.0.0.7")]
    targets, rejected = split_sendtargets(pairs)
    assert targets == [DiscoveredTarget(T1, (Portal("10.0.0.5"),))]
    assert len(rejected) == 2
    assert all("\x1b" not in r for r in rejected)
    with caplog.at_level(logging.WARNING, logger="iscsifs.core.discovery"):
        assert parse_sendtargets(pairs) == targets
    assert caplog.text.count("dropping") == 2


def test_invalid_addresses_dropped():
    pairs = [("TargetName", T1), ("TargetAddress", "not a host:3260,1"),
             ("TargetAddress", "10.0.0.5:99999,1"), ("TargetAddress", "x" * 300),
             ("TargetAddress", "10.0.0.5:3260,1")]
    targets, rejected = split_sendtargets(pairs)
    assert targets == [DiscoveredTarget(T1, (Portal("10.0.0.5"),))]
    assert len(rejected) == 3


def test_duplicate_target_names_merged_and_portals_deduplicated():
    pairs = [("TargetName", T1), ("TargetAddress", "10.0.0.5:3260,1"),
             ("TargetName", T2),
             ("TargetName", T1), ("TargetAddress", "10.0.0.5:3260,1"),
             ("TargetAddress", "10.0.0.6:3260,1")]
    assert parse_sendtargets(pairs) == [
        DiscoveredTarget(T1, (Portal("10.0.0.5"), Portal("10.0.0.6"))),
        DiscoveredTarget(T2, ()),
    ]


def test_other_keys_ignored():
    pairs = [("TargetName", T1), ("TargetAlias", "x"), ("X-vendor", "y"),
             ("TargetAddress", "h:3260,1")]
    assert parse_sendtargets(pairs) == [DiscoveredTarget(T1, (Portal("h"),))]


@pytest.mark.expect_log("dropping invalid target name", logger="iscsifs.core.discovery")
def test_huge_untrusted_name_from_wire_is_dropped():
    long_name = "iqn.2003-01.org.example:" + "x" * 10000
    pairs = decode_text(f"TargetName={long_name}\0TargetAddress=h\0".encode())
    assert parse_sendtargets(pairs) == []


@given(st.lists(st.tuples(st.sampled_from(["TargetName", "TargetAddress", "X"]),
                          st.text(max_size=40)), max_size=20))
@pytest.mark.expect_log("dropping invalid target name", logger="iscsifs.core.discovery", optional=True)
def test_parse_never_crashes(pairs):
    try:
        targets = parse_sendtargets(pairs)
    except RemoteProtocolError:
        return
    for target in targets:
        assert valid_iscsi_name(target.name)
