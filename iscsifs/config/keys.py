"""The configuration keys: every open-iscsi key we know, the check its value passes, and
the checks of names and addresses used as values or as path components.

Owns: ``KNOWN_KEYS`` (key -> value check, in open-iscsi's record order), ``validate_key``,
secret keys (``is_secret_key``, shown as ``HIDDEN``), ``validate_iscsi_name`` and
``validate_host`` (ConfigError naming the bad value; the rules themselves are
``iscsifs.core.names``'s ``iscsi_name_problem`` and ``check_host``). Pure: no files, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from iscsifs.core.chap import normalize_algorithms
from iscsifs.core.names import check_host, iscsi_name_problem, printable
from iscsifs.errors import ConfigError

EMPTY = "<empty>"              # how open-iscsi writes an empty value
HIDDEN = "********"            # how secrets are shown

_SECRET_SUFFIXES = (".auth.password", ".auth.password_in")


def is_secret_key(key: str) -> bool:
    return key.endswith(_SECRET_SUFFIXES)


def validate_iscsi_name(name: object, what: str = "target name") -> str:
    problem = iscsi_name_problem(name)
    if problem:
        raise ConfigError(f"invalid {what} {printable(name)}: {problem}")
    assert isinstance(name, str)
    return name


def validate_host(host: object) -> str:
    """A portal's host as records store it (``core.names.check_host``: addresses without
    brackets, as open-iscsi stores them); ConfigError naming the bad value."""
    try:
        return check_host(host)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Keys and their value checks
# ---------------------------------------------------------------------------------------------

def _int_check(lo: int | None = 0, hi: int | None = None) -> Callable[[str], str]:
    def check(value: str) -> str:
        text = value.strip()
        if not re.fullmatch(r"-?[0-9]{1,10}", text):
            raise ValueError("expected an integer")
        number = int(text)
        if lo is not None and number < lo:
            raise ValueError(f"must be at least {lo}")
        if hi is not None and number > hi:
            raise ValueError(f"must be at most {hi}")
        return str(number)
    return check


def _choice_check(*choices: str) -> Callable[[str], str]:
    by_lower = {c.lower(): c for c in choices}

    def check(value: str) -> str:
        choice = by_lower.get(value.strip().lower())
        if choice is None:
            raise ValueError("expected one of " + ", ".join(choices))
        return choice
    return check


def _digest_check(value: str) -> str:
    items = [v.strip().lower() for v in value.split(",")]
    names = {"none": "None", "crc32c": "CRC32C"}
    if not items or any(i not in names for i in items) or len(set(items)) != len(items):
        raise ValueError("expected None, CRC32C, 'CRC32C,None' or 'None,CRC32C'")
    return ",".join(names[i] for i in items)


def _algs_check(value: str) -> str:
    try:
        return ",".join(normalize_algorithms(value))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _string_check(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        raise ValueError("contains control characters")
    return value


def _name_check(value: str) -> str:
    problem = iscsi_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _host_check(value: str) -> str:
    if value == "":
        return value
    try:
        return validate_host(value)
    except ConfigError:
        raise ValueError("not an IP address or host name") from None


def _ip_check(value: str) -> str:
    """An IP address (a source address to bind to: no host names), or empty for none."""
    text = value.strip()
    if text in ("", "default"):
        return ""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("not an IP address") from None


_ANY = _string_check
_YESNO = _choice_check("Yes", "No")
_STARTUP = _choice_check("manual", "automatic", "onboot")
_AUTHMETHOD = _choice_check("None", "CHAP")
_SEGMENT = _int_check(512, 2**24 - 1)
_TIMEOUT = _int_check(0, 2**31 - 1)

# Every key open-iscsi writes in a node record / iscsid.conf, with its check.
KNOWN_KEYS: dict[str, Callable[[str], str]] = {
    "iscsid.startup": _ANY,
    "iscsid.safe_logout": _YESNO,
    "iscsid.ipc_auth_uid": _ANY,
    "node.name": _name_check,
    "node.tpgt": _int_check(0, 65535),
    "node.startup": _STARTUP,
    "node.leading_login": _YESNO,
    "iface.ipaddress": _ip_check,
    "node.discovery_address": _host_check,
    "node.discovery_port": _int_check(0, 65535),
    "node.discovery_type": _choice_check("send_targets", "static", "isns", "fw", "slp"),
    "node.session.initial_cmdsn": _int_check(0),
    "node.session.initial_login_retry_max": _int_check(0, 2**31 - 1),
    "node.session.xmit_thread_priority": _int_check(-20, 20),
    "node.session.cmds_max": _int_check(2, 2048),
    "node.session.queue_depth": _int_check(1, 1024),
    "node.session.nr_sessions": _int_check(1, 64),
    "node.session.scan": _choice_check("auto", "manual"),
    "node.session.reopen_max": _int_check(0),
    "node.session.auth.authmethod": _AUTHMETHOD,
    "node.session.auth.username": _ANY,
    "node.session.auth.password": _ANY,
    "node.session.auth.username_in": _ANY,
    "node.session.auth.password_in": _ANY,
    "node.session.auth.chap_algs": _algs_check,
    "node.session.timeo.replacement_timeout": _int_check(None, 2**31 - 1),
    "node.session.err_timeo.abort_timeout": _TIMEOUT,
    "node.session.err_timeo.lu_reset_timeout": _TIMEOUT,
    "node.session.err_timeo.tgt_reset_timeout": _TIMEOUT,
    "node.session.err_timeo.host_reset_timeout": _TIMEOUT,
    "node.session.iscsi.FastAbort": _YESNO,
    "node.session.iscsi.InitialR2T": _YESNO,
    "node.session.iscsi.ImmediateData": _YESNO,
    "node.session.iscsi.FirstBurstLength": _SEGMENT,
    "node.session.iscsi.MaxBurstLength": _SEGMENT,
    "node.session.iscsi.DefaultTime2Retain": _int_check(0, 3600),
    "node.session.iscsi.DefaultTime2Wait": _int_check(0, 3600),
    "node.session.iscsi.MaxConnections": _int_check(1, 65535),
    "node.session.iscsi.MaxOutstandingR2T": _int_check(1, 65535),
    "node.session.iscsi.ERL": _int_check(0, 2),
    "node.conn[0].address": _host_check,
    "node.conn[0].port": _int_check(1, 65535),
    "node.conn[0].startup": _STARTUP,
    "node.conn[0].tcp.window_size": _int_check(0),
    "node.conn[0].tcp.type_of_service": _int_check(0, 255),
    "node.conn[0].timeo.logout_timeout": _TIMEOUT,
    "node.conn[0].timeo.login_timeout": _TIMEOUT,
    "node.conn[0].timeo.auth_timeout": _TIMEOUT,
    "node.conn[0].timeo.active_timeout": _TIMEOUT,
    "node.conn[0].timeo.noop_out_interval": _TIMEOUT,
    "node.conn[0].timeo.noop_out_timeout": _TIMEOUT,
    "node.conn[0].iscsi.MaxXmitDataSegmentLength": _int_check(0, 2**24 - 1),
    "node.conn[0].iscsi.MaxRecvDataSegmentLength": _SEGMENT,
    "node.conn[0].iscsi.HeaderDigest": _digest_check,
    "node.conn[0].iscsi.DataDigest": _digest_check,
    "node.conn[0].iscsi.IFMarker": _YESNO,
    "node.conn[0].iscsi.OFMarker": _YESNO,
    "discovery.startup": _STARTUP,
    "discovery.type": _choice_check("sendtargets", "isns", "static", "fw", "slp"),
    "discovery.sendtargets.address": _host_check,
    "discovery.sendtargets.port": _int_check(1, 65535),
    "discovery.sendtargets.auth.authmethod": _AUTHMETHOD,
    "discovery.sendtargets.auth.username": _ANY,
    "discovery.sendtargets.auth.password": _ANY,
    "discovery.sendtargets.auth.username_in": _ANY,
    "discovery.sendtargets.auth.password_in": _ANY,
    "discovery.sendtargets.auth.chap_algs": _algs_check,
    "discovery.sendtargets.timeo.login_timeout": _TIMEOUT,
    "discovery.sendtargets.timeo.auth_timeout": _TIMEOUT,
    "discovery.sendtargets.timeo.active_timeout": _TIMEOUT,
    "discovery.sendtargets.use_discoveryd": _YESNO,
    "discovery.sendtargets.discoveryd_poll_inval": _TIMEOUT,
    "discovery.sendtargets.reopen_max": _int_check(0),
    "discovery.sendtargets.iscsi.MaxRecvDataSegmentLength": _SEGMENT,
}
# Families of keys open-iscsi knows and we carry along unchecked (network interfaces, iSNS).
_KNOWN_PREFIXES = ("iface.", "discovery.isns.", "isns.", "discovery.slp.", "node.conn[0].iser.")


def is_known_key(key: str) -> bool:
    return key in KNOWN_KEYS or key.startswith(_KNOWN_PREFIXES)


def validate_key(key: str, value: str) -> str:
    """The normalised value for a known key; ValueError (message without the value) if bad.
    Unknown keys are passed through unchanged (callers decide whether that is a warning)."""
    if value == EMPTY:
        value = ""
    check = KNOWN_KEYS.get(key)
    if check is None:
        return _string_check(value)
    if value == "" and check not in (_ANY, _host_check, _ip_check):
        raise ValueError("a value is required")
    return check(value)

