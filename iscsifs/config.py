"""open-iscsi configuration files: iscsid.conf, node records, initiatorname.iscsi, iname.

Owns: parsing and validating ``key = value`` files in open-iscsi's format (iscsid.conf, node
``default`` records, ``st_config`` discovery records), the effective per-node and per-discovery
settings with open-iscsi's defaults, the persistent record database in open-iscsi's layout::

    <config_dir>/iscsid.conf                                  (optional global defaults)
    <config_dir>/initiatorname.iscsi
    <config_dir>/nodes/<target>/<addr>,<port>,<tpgt>/default
    <config_dir>/send_targets/<addr>,<port>/st_config

and generation of initiator names (``iscsi-iname``).

Must not know: sockets, trio, pyfuse3, logins. Names and addresses that came from a target are
untrusted: they are validated before being used as path components. Files holding secrets are
written atomically with mode 0600; secrets never appear in a repr, an exception or a warning.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from iscsifs.core.chap import ChapCredentials, normalize_algorithms
from iscsifs.errors import ConfigError

__all__ = [
    "DEFAULT_INAME_PREFIX", "DEFAULT_PORT", "OPEN_ISCSI_DIR", "RECORD_VERSION",
    "ConfFile", "DiscoverySettings", "DiscoveryUpdate", "NodeDB", "NodeRecord", "NodeSettings",
    "PortalKey", "ensure_initiator_name", "iname", "parse_conf", "read_initiator_name",
    "render_record", "valid_iscsi_name", "validate_host", "validate_iscsi_name",
    "validate_key", "write_initiator_name",
]

RECORD_VERSION = "2.1.11"
DEFAULT_PORT = 3260
DEFAULT_INAME_PREFIX = "iqn.2016-04.com.open-iscsi"
OPEN_ISCSI_DIR = "/etc/iscsi"
MAX_NAME_LENGTH = 223          # RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes
EMPTY = "<empty>"              # how open-iscsi writes an empty value
HIDDEN = "********"            # how secrets are shown

_SECRET_SUFFIXES = (".auth.password", ".auth.password_in")


def is_secret_key(key: str) -> bool:
    return key.endswith(_SECRET_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# Names and addresses
# ---------------------------------------------------------------------------------------------

_IQN_RE = re.compile(r"iqn\.\d{4}-\d{2}\.[^\s]+", re.IGNORECASE)
_EUI_RE = re.compile(r"eui\.[0-9a-f]{16}", re.IGNORECASE)
_NAA_RE = re.compile(r"naa\.(?:[0-9a-f]{16}|[0-9a-f]{32})", re.IGNORECASE)


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "empty name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7f or c.isspace() for c in name):
        return "contains control characters or white space"
    if "/" in name or "\\" in name:
        return "contains a slash"
    if ".." in name:
        return "contains '..'"
    if not (_IQN_RE.fullmatch(name) or _EUI_RE.fullmatch(name) or _NAA_RE.fullmatch(name)):
        return "not an iqn./eui./naa. name"
    return None


def valid_iscsi_name(name: object) -> bool:
    """True for a well-formed iqn./eui./naa. name that is safe as a path component."""
    return _name_problem(name) is None


def _printable(text: object, limit: int = 80) -> str:
    """A name for an error message: control characters escaped, length bounded."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def validate_iscsi_name(name: object, what: str = "target name") -> str:
    problem = _name_problem(name)
    if problem:
        raise ConfigError(f"invalid {what} {_printable(name)}: {problem}")
    assert isinstance(name, str)
    return name


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?")


def validate_host(host: object) -> str:
    """An IPv4/IPv6 address (brackets dropped, as open-iscsi stores it) or a DNS name."""
    if not isinstance(host, str) or not host:
        raise ConfigError(f"invalid portal address {_printable(host)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) <= 253 and _HOSTNAME_RE.fullmatch(host) and ".." not in host:
        return host
    raise ConfigError(f"invalid portal address {_printable(host)}")


def _validate_port(port: object) -> int:
    try:
        number = int(port)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"invalid port {_printable(port)}") from None
    if not 0 < number < 65536 or isinstance(port, bool):
        raise ConfigError(f"invalid port {_printable(port)}")
    return number


def _validate_tpgt(tpgt: object) -> int:
    try:
        number = int(tpgt)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"invalid target portal group tag {_printable(tpgt)}") from None
    if not 0 <= number < 65536:
        raise ConfigError(f"invalid target portal group tag {_printable(tpgt)}")
    return number


class PortalKey(NamedTuple):
    """Where a node record lives: (host, port, tpgt). Any object with .host/.port/.tpgt (like
    core.discovery.Portal) is accepted wherever a PortalKey is."""

    host: str
    port: int = DEFAULT_PORT
    tpgt: int = 1

    @classmethod
    def of(cls, portal: Any) -> PortalKey:
        if isinstance(portal, tuple) and not hasattr(portal, "host"):
            portal = cls(*portal)
        host = validate_host(portal.host)
        port = _validate_port(getattr(portal, "port", DEFAULT_PORT))
        tpgt = _validate_tpgt(getattr(portal, "tpgt", 1))
        return cls(host, port, tpgt)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port},{self.tpgt}"

    @property
    def dirname(self) -> str:
        """open-iscsi's directory name: ``10.0.0.5,3260,1`` / ``fe80::1,3260,1``."""
        return f"{self.host},{self.port},{self.tpgt}"


def _discovery_portal(portal: Any) -> tuple[str, int]:
    if isinstance(portal, tuple) and not hasattr(portal, "host"):
        host, port = portal[0], (portal[1] if len(portal) > 1 else DEFAULT_PORT)
    else:
        host, port = portal.host, getattr(portal, "port", DEFAULT_PORT)
    return validate_host(host), _validate_port(port)


def _portal_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    problem = _name_problem(value)
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
    if value == "" and check not in (_ANY, _host_check):
        raise ValueError("a value is required")
    return check(value)


# ---------------------------------------------------------------------------------------------
# key = value files
# ---------------------------------------------------------------------------------------------

class ConfFile(dict):
    """The result of parse_conf: a ``dict[str, str]`` of validated values, plus
    ``warnings`` (unknown keys, duplicates), ``lines`` (key -> line number),
    ``path`` and ``record_version`` (from ``# BEGIN RECORD <ver>``, if any)."""

    def __init__(self, path: str | None = None):
        super().__init__()
        self.path = path
        self.warnings: list[str] = []
        self.lines: dict[str, int] = {}
        self.record_version: str | None = None

    def __repr__(self) -> str:
        shown = {k: (HIDDEN if is_secret_key(k) and v else v) for k, v in self.items()}
        return f"ConfFile({self.path!r}, {shown!r})"


_KEY_RE = re.compile(r"[A-Za-z0-9_.\[\]-]+")


def parse_conf(text: str, path: str | os.PathLike[str] | None = None) -> ConfFile:
    """Parse iscsid.conf / node record / st_config text.

    ``key = value`` (spaces around ``=`` optional), whole-line ``#`` comments (a ``#`` inside a
    value belongs to the value: secrets may contain one), blank lines, ``# BEGIN RECORD`` /
    ``# END RECORD`` markers, ``<empty>`` for an empty value. A malformed line or a bad value for
    a known key raises ConfigError naming file and line; unknown keys become warnings.
    """
    where = None if path is None else str(path)
    result = ConfFile(where)
    in_record = ended = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            marker = line.lstrip("#").strip()
            if marker.startswith("BEGIN RECORD"):
                if in_record or ended:
                    raise ConfigError("unexpected '# BEGIN RECORD'", where, lineno)
                in_record = True
                result.record_version = marker[len("BEGIN RECORD"):].strip() or None
            elif marker == "END RECORD":
                if not in_record:
                    raise ConfigError("'# END RECORD' without '# BEGIN RECORD'", where, lineno)
                in_record, ended = False, True
            continue
        if ended:
            raise ConfigError("text after '# END RECORD'", where, lineno)
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError("expected 'key = value'", where, lineno)
        if not key or not _KEY_RE.fullmatch(key):
            raise ConfigError(f"malformed key {_printable(key)}", where, lineno)
        try:
            value = validate_key(key, value)
        except ValueError as exc:
            shown = "" if is_secret_key(key) else f" {_printable(value)}"
            raise ConfigError(f"bad value{shown} for {key}: {exc}", where, lineno) from None
        if not is_known_key(key):
            result.warnings.append(
                f"{where or '<config>'}:{lineno}: unknown key {key} ignored")
        if key in result:
            result.warnings.append(
                f"{where or '<config>'}:{lineno}: {key} set again (line {result.lines[key]}); "
                "the last value wins")
        result[key] = value
        result.lines[key] = lineno
    if in_record:
        raise ConfigError("'# BEGIN RECORD' without '# END RECORD'", where, None)
    return result


def read_conf(path: str | os.PathLike[str]) -> ConfFile:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from None
    return parse_conf(text, path)


def render_record(keys: Mapping[str, str], *, hide_secrets: bool = True,
                  version: str | None = RECORD_VERSION) -> str:
    """``key = value`` text in open-iscsi's order, between record markers when ``version``.

    With ``hide_secrets`` passwords are shown as ``********`` (as ``iscsiadm -m node`` does).
    """
    lines = [f"# BEGIN RECORD {version}"] if version else []
    for key in _ordered(keys):
        value = keys[key]
        if hide_secrets and is_secret_key(key) and value:
            value = HIDDEN
        lines.append(f"{key} = {value if value != '' else EMPTY}")
    if version:
        lines.append("# END RECORD")
    return "\n".join(lines) + "\n"


def _ordered(keys: Iterable[str]) -> list[str]:
    order = {k: i for i, k in enumerate(KNOWN_KEYS)}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def _atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write via a temporary file in the same directory, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------
# Effective settings
# ---------------------------------------------------------------------------------------------

def _chap_from_keys(keys: Mapping[str, str], prefix: str,
                    strict: bool = True) -> tuple[ChapCredentials | None, str | None]:
    """(credentials, problem). Equal secrets always raise ConfigError. Incomplete credentials
    (half a pair, ``_in`` without the outgoing pair, authmethod CHAP without credentials) raise
    when ``strict``; otherwise they give ``(None, message)`` - a record being edited key by key
    passes through such states, and must not silently fall back to no authentication."""
    def get(name: str) -> str:
        value = keys.get(prefix + name, "")
        return "" if value == EMPTY else value
    method = get("authmethod") or "None"
    user, password = get("username"), get("password")
    user_in, password_in = get("username_in"), get("password_in")
    algs = normalize_algorithms(get("chap_algs") or "MD5")
    if password and password_in and password == password_in:
        raise ConfigError(f"no two CHAP secrets may be the same: {prefix}password and "
                          f"{prefix}password_in are equal")
    problem = None
    if (user_in or password_in) and not (user and password):
        problem = (f"{prefix}username_in/password_in are set without {prefix}username and "
                   f"{prefix}password")
    elif bool(user) != bool(password):
        problem = f"{prefix}username and {prefix}password must be set together"
    elif bool(user_in) != bool(password_in):
        problem = f"{prefix}username_in and {prefix}password_in must be set together"
    elif not user and method.lower() == "chap":
        problem = (f"{prefix}authmethod is CHAP but {prefix}username and {prefix}password "
                   "are not set")
    if problem is not None:
        if strict:
            raise ConfigError(problem)
        return None, problem
    if not user:
        return None, None
    try:
        return ChapCredentials(user, password, user_in or None, password_in or None, algs), None
    except ConfigError as exc:
        raise ConfigError(f"{prefix}*: {exc}") from None


def _chap_to_keys(auth: ChapCredentials | None, prefix: str) -> dict[str, str]:
    if auth is None:
        return {prefix + "authmethod": "None", prefix + "username": "",
                prefix + "password": "", prefix + "username_in": "",
                prefix + "password_in": "", prefix + "chap_algs": "MD5"}

    def text(v: str | bytes | None) -> str:
        if v is None:
            return ""
        return v if isinstance(v, str) else v.decode("utf-8", "surrogateescape")
    return {prefix + "authmethod": "CHAP", prefix + "username": auth.username,
            prefix + "password": text(auth.password),
            prefix + "username_in": auth.username_in or "",
            prefix + "password_in": text(auth.password_in),
            prefix + "chap_algs": ",".join(auth.algorithms)}


def _meta(key: str, kind: type) -> dict[str, Any]:
    return {"metadata": {"key": key, "kind": kind}}


class _KeyedSettings:
    """from_keys/to_keys for a dataclass whose fields carry their open-iscsi key."""

    AUTH_PREFIX = ""

    @classmethod
    def from_keys(cls, keys: Mapping[str, str], *,  # type: ignore[no-untyped-def]
                  strict: bool = True):
        """Settings from a key mapping (missing keys take the defaults). ConfigError if bad.

        With ``strict=False`` incomplete CHAP credentials don't raise: ``auth`` is None and
        ``auth_error`` says what is missing (``check()`` raises it). Bad values and equal
        secrets raise either way."""
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            key, kind = f.metadata.get("key"), f.metadata.get("kind")
            if key is None or key not in keys:
                continue
            try:
                text = validate_key(key, keys[key])
            except ValueError as exc:
                raise ConfigError(f"bad value for {key}: {exc}") from None
            if kind is bool:
                values[f.name] = text == "Yes"
            elif kind is int:
                values[f.name] = int(text)
            else:
                values[f.name] = text
        values["auth"], values["auth_error"] = _chap_from_keys(keys, cls.AUTH_PREFIX, strict)
        return cls(**values)

    def check(self) -> None:
        """ConfigError if these settings can't be used to log in (incomplete CHAP)."""
        error = getattr(self, "auth_error")
        if error:
            raise ConfigError(error)

    def to_keys(self) -> dict[str, str]:
        """All settings as open-iscsi keys (secrets included: for writing records only)."""
        keys: dict[str, str] = {}
        for f in fields(self):  # type: ignore[arg-type]
            key, kind = f.metadata.get("key"), f.metadata.get("kind")
            if key is None:
                continue
            value = getattr(self, f.name)
            keys[key] = ("Yes" if value else "No") if kind is bool else str(value)
        keys.update(_chap_to_keys(getattr(self, "auth"), self.AUTH_PREFIX))
        return keys

    @property
    def warnings(self) -> list[str]:
        """Messages for the caller to log: weak secrets, incomplete CHAP settings."""
        auth, error = getattr(self, "auth"), getattr(self, "auth_error")
        return (auth.weak if auth is not None else []) + ([error] if error else [])


@dataclass(frozen=True)
class NodeSettings(_KeyedSettings):
    """Effective settings of one node record, with open-iscsi's defaults."""

    AUTH_PREFIX = "node.session.auth."

    startup: str = field(default="manual", **_meta("node.startup", str))
    auth: ChapCredentials | None = None
    auth_error: str | None = None       # set by from_keys(strict=False) for incomplete CHAP
    replacement_timeout: int = field(
        default=120, **_meta("node.session.timeo.replacement_timeout", int))
    login_timeout: int = field(default=15, **_meta("node.conn[0].timeo.login_timeout", int))
    logout_timeout: int = field(default=15, **_meta("node.conn[0].timeo.logout_timeout", int))
    noop_out_interval: int = field(
        default=5, **_meta("node.conn[0].timeo.noop_out_interval", int))
    noop_out_timeout: int = field(default=5, **_meta("node.conn[0].timeo.noop_out_timeout", int))
    abort_timeout: int = field(default=15, **_meta("node.session.err_timeo.abort_timeout", int))
    lu_reset_timeout: int = field(
        default=30, **_meta("node.session.err_timeo.lu_reset_timeout", int))
    tgt_reset_timeout: int = field(
        default=30, **_meta("node.session.err_timeo.tgt_reset_timeout", int))
    initial_login_retry_max: int = field(
        default=8, **_meta("node.session.initial_login_retry_max", int))
    cmds_max: int = field(default=128, **_meta("node.session.cmds_max", int))
    queue_depth: int = field(default=32, **_meta("node.session.queue_depth", int))
    initial_r2t: bool = field(default=False, **_meta("node.session.iscsi.InitialR2T", bool))
    immediate_data: bool = field(default=True, **_meta("node.session.iscsi.ImmediateData", bool))
    first_burst_length: int = field(
        default=262144, **_meta("node.session.iscsi.FirstBurstLength", int))
    max_burst_length: int = field(
        default=16776192, **_meta("node.session.iscsi.MaxBurstLength", int))
    max_recv_data_segment_length: int = field(
        default=262144, **_meta("node.conn[0].iscsi.MaxRecvDataSegmentLength", int))
    header_digest: str = field(default="None", **_meta("node.conn[0].iscsi.HeaderDigest", str))
    data_digest: str = field(default="None", **_meta("node.conn[0].iscsi.DataDigest", str))


@dataclass(frozen=True)
class DiscoverySettings(_KeyedSettings):
    """Settings of one SendTargets discovery portal (``st_config``), open-iscsi's defaults."""

    AUTH_PREFIX = "discovery.sendtargets.auth."

    startup: str = field(default="manual", **_meta("discovery.startup", str))
    auth: ChapCredentials | None = None
    auth_error: str | None = None       # set by from_keys(strict=False) for incomplete CHAP
    login_timeout: int = field(
        default=15, **_meta("discovery.sendtargets.timeo.login_timeout", int))
    auth_timeout: int = field(
        default=45, **_meta("discovery.sendtargets.timeo.auth_timeout", int))
    active_timeout: int = field(
        default=30, **_meta("discovery.sendtargets.timeo.active_timeout", int))
    reopen_max: int = field(default=5, **_meta("discovery.sendtargets.reopen_max", int))
    max_recv_data_segment_length: int = field(
        default=32768, **_meta("discovery.sendtargets.iscsi.MaxRecvDataSegmentLength", int))


# ---------------------------------------------------------------------------------------------
# initiatorname.iscsi and iscsi-iname
# ---------------------------------------------------------------------------------------------

def iname(prefix: str = DEFAULT_INAME_PREFIX) -> str:
    """A new initiator name ``<prefix>:<12 hex digits>`` (open-iscsi's ``iscsi-iname -p``)."""
    if not prefix.lower().startswith("iqn."):
        raise ConfigError(f"prefix {_printable(prefix)} must start with 'iqn.'")
    name = f"{prefix}:{secrets.token_hex(6)}"
    problem = _name_problem(name)
    if problem:
        raise ConfigError(f"prefix {_printable(prefix)} gives an invalid name: {problem}")
    return name


def read_initiator_name(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``(InitiatorName, InitiatorAlias or None)`` from an initiatorname.iscsi file."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", where) from None
    name = alias = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError("expected 'InitiatorName=...'", where, lineno)
        if key == "InitiatorName":
            problem = _name_problem(value)
            if problem:
                raise ConfigError(f"invalid InitiatorName: {problem}", where, lineno)
            name = value
        elif key == "InitiatorAlias":
            if any(ord(c) < 0x20 for c in value):
                raise ConfigError("InitiatorAlias contains control characters", where, lineno)
            alias = value or None
        else:
            raise ConfigError(f"unknown key {_printable(key)}", where, lineno)
    if name is None:
        raise ConfigError("no InitiatorName= line", where)
    return name, alias


def write_initiator_name(path: str | os.PathLike[str], name: str,
                         alias: str | None = None) -> None:
    validate_iscsi_name(name, "initiator name")
    if alias is not None and any(ord(c) < 0x20 for c in alias):
        raise ConfigError("InitiatorAlias contains control characters")
    text = ("## iscsifs initiator name (open-iscsi initiatorname.iscsi format)\n"
            f"InitiatorName={name}\n")
    if alias:
        text += f"InitiatorAlias={alias}\n"
    _atomic_write(Path(path), text, 0o600)


def ensure_initiator_name(config_dir: str | os.PathLike[str], *,
                          open_iscsi_dir: str | os.PathLike[str] | None = None,
                          prefix: str = DEFAULT_INAME_PREFIX) -> tuple[str, str | None]:
    """Our initiator name: ``<config_dir>/initiatorname.iscsi``; else (when ``open_iscsi_dir``
    is given and holds one) open-iscsi's; else a new name, generated and saved."""
    ours = Path(config_dir) / "initiatorname.iscsi"
    if ours.exists():
        return read_initiator_name(ours)
    if open_iscsi_dir is not None:
        theirs = Path(open_iscsi_dir) / "initiatorname.iscsi"
        if theirs.is_file() and os.access(theirs, os.R_OK):
            return read_initiator_name(theirs)
    name = iname(prefix)
    write_initiator_name(ours, name)
    return name, None


# ---------------------------------------------------------------------------------------------
# The node database
# ---------------------------------------------------------------------------------------------

_IDENTITY_KEYS = ("node.name", "node.tpgt", "node.conn[0].address", "node.conn[0].port")
_DISCOVERY_IDENTITY_KEYS = ("discovery.sendtargets.address", "discovery.sendtargets.port",
                            "discovery.type")


@dataclass(frozen=True)
class NodeRecord:
    """One node record: a target reachable at one portal, and its settings."""

    target: str
    portal: PortalKey
    settings: NodeSettings
    discovery_address: str | None = None
    discovery_port: int | None = None
    discovery_type: str = "static"
    keys: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __str__(self) -> str:          # iscsiadm -m node output line
        return f"{self.portal} {self.target}"

    def render(self, hide_secrets: bool = True) -> str:
        return render_record(self.keys, hide_secrets=hide_secrets)


@dataclass
class DiscoveryUpdate:
    """What record_discovery did: records now on disk for the reported targets, the ones it
    created, and messages about names/addresses it refused (never used as paths)."""

    records: list[NodeRecord] = field(default_factory=list)
    added: list[NodeRecord] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _targets_of(targets: Iterable[Any]) -> list[tuple[object, list[Any]]]:
    out = []
    for item in targets:
        if hasattr(item, "name") and hasattr(item, "portals"):
            out.append((item.name, list(item.portals)))
        else:
            name, portals = item
            out.append((name, list(portals)))
    return out


class NodeDB:
    """Node and discovery records under ``config_dir`` in open-iscsi's layout.

    Defaults for new records: built-in open-iscsi defaults, overridden by
    ``<open_iscsi_dir>/iscsid.conf`` when ``use_open_iscsi`` (and readable), overridden by
    ``<config_dir>/iscsid.conf``. ``warnings`` collects messages for the caller to log
    (unknown keys, weak secrets, unreadable records skipped by list_nodes).
    """

    def __init__(self, config_dir: str | os.PathLike[str], *, use_open_iscsi: bool = False,
                 open_iscsi_dir: str | os.PathLike[str] = OPEN_ISCSI_DIR):
        self.config_dir = Path(config_dir)
        self.nodes_dir = self.config_dir / "nodes"
        self.send_targets_dir = self.config_dir / "send_targets"
        self.warnings: list[str] = []
        self.defaults: dict[str, str] = {}
        self.defaults.update(NodeSettings().to_keys())
        self.defaults.update(DiscoverySettings().to_keys())
        candidates = []
        if use_open_iscsi:
            candidates.append(Path(open_iscsi_dir) / "iscsid.conf")
        candidates.append(self.config_dir / "iscsid.conf")
        self.sources: list[Path] = []
        for source in candidates:
            if source.is_file() and os.access(source, os.R_OK):
                conf = read_conf(source)
                self.warnings.extend(conf.warnings)
                self.defaults.update(conf)
                self.sources.append(source)
        # Fail early (naming the files) if the defaults make no sense together.
        for cls in (NodeSettings, DiscoverySettings):
            try:
                cls.from_keys(self.defaults)
            except ConfigError as exc:
                where = " + ".join(str(s) for s in self.sources) or None
                raise ConfigError(f"defaults: {exc}", where) from None

    # -- paths -------------------------------------------------------------------------------
    def _node_dir(self, target: str) -> Path:
        return self.nodes_dir / validate_iscsi_name(target)

    def _record_path(self, target: str, portal: PortalKey) -> Path:
        return self._node_dir(target) / portal.dirname / "default"

    def _st_path(self, host: str, port: int) -> Path:
        return self.send_targets_dir / f"{host},{port}" / "st_config"

    # -- reading -----------------------------------------------------------------------------
    def _load(self, target: str, portal: PortalKey, strict: bool = True) -> NodeRecord:
        path = self._record_path(target, portal)
        conf = read_conf(path)
        self.warnings.extend(conf.warnings)
        keys = dict(self.defaults)
        keys.update(conf)
        # The path is the identity (as for open-iscsi); keep the keys consistent with it.
        keys.update({"node.name": target, "node.tpgt": str(portal.tpgt),
                     "node.conn[0].address": portal.host, "node.conn[0].port": str(portal.port)})
        try:
            settings = NodeSettings.from_keys(keys, strict=strict)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(path)) from None
        d_addr = keys.get("node.discovery_address") or None
        d_port = keys.get("node.discovery_port")
        return NodeRecord(target, portal, settings,
                          discovery_address=d_addr,
                          discovery_port=int(d_port) if d_addr and d_port else None,
                          discovery_type=keys.get("node.discovery_type") or "static",
                          keys={k: v for k, v in keys.items() if not k.startswith("discovery.")})

    def get(self, target: str, portal: Any, *, strict: bool = True) -> NodeRecord:
        """The record for (target, portal); ConfigError if there is none or it is invalid.
        ``strict=False`` returns a record with incomplete CHAP settings too (``auth`` None,
        ``settings.auth_error`` set): for showing and editing, never for logging in."""
        key = PortalKey.of(portal)
        path = self._record_path(target, key)
        if not path.is_file():
            raise ConfigError(f"no record for {target} at {key}")
        return self._load(target, key, strict)

    def exists(self, target: str, portal: Any) -> bool:
        return self._record_path(target, PortalKey.of(portal)).is_file()

    def _scan(self) -> list[tuple[str, PortalKey]]:
        found = []
        if not self.nodes_dir.is_dir():
            return found
        for tdir in sorted(self.nodes_dir.iterdir()):
            if not valid_iscsi_name(tdir.name) or not tdir.is_dir():
                self.warnings.append(f"{tdir}: not a node record directory, skipped")
                continue
            for pdir in sorted(tdir.iterdir()):
                try:
                    host, port, tpgt = pdir.name.rsplit(",", 2)
                    portal = PortalKey.of((host, port, tpgt))
                except (ValueError, ConfigError):
                    self.warnings.append(f"{pdir}: not a portal directory, skipped")
                    continue
                if (pdir / "default").is_file():
                    found.append((tdir.name, portal))
        return found

    def list_nodes(self, target: str | None = None, *, strict: bool = True) -> list[NodeRecord]:
        """All valid records (optionally of one target); invalid ones are skipped with a
        warning in ``self.warnings``. ``strict`` as for get()."""
        records = []
        for name, portal in self._scan():
            if target is not None and name != target:
                continue
            try:
                records.append(self._load(name, portal, strict))
            except ConfigError as exc:
                self.warnings.append(f"record skipped: {exc}")
        return records

    # -- writing -----------------------------------------------------------------------------
    def _write(self, path: Path, keys: Mapping[str, str]) -> None:
        _atomic_write(path, render_record(keys, hide_secrets=False), 0o600)

    def _node_keys(self, target: str, portal: PortalKey, settings: NodeSettings | None,
                   discovered_from: tuple[str, int] | None) -> dict[str, str]:
        keys = {k: v for k, v in self.defaults.items() if k.startswith("node.")}
        if settings is not None:
            keys.update(settings.to_keys())
        keys.update({"node.name": target, "node.tpgt": str(portal.tpgt),
                     "node.conn[0].address": portal.host,
                     "node.conn[0].port": str(portal.port)})
        if discovered_from is None:
            keys.update({"node.discovery_address": "", "node.discovery_port": "0",
                         "node.discovery_type": "static"})
        else:
            keys.update({"node.discovery_address": discovered_from[0],
                         "node.discovery_port": str(discovered_from[1]),
                         "node.discovery_type": "send_targets"})
        return keys

    def add(self, target: str, portal: Any, settings: NodeSettings | None = None,
            discovered_from: Any = None, *, overwrite: bool = False) -> NodeRecord:
        """Create a record (``iscsiadm -m node -o new``). An existing record is returned
        unchanged unless ``overwrite``."""
        validate_iscsi_name(target)
        key = PortalKey.of(portal)
        path = self._record_path(target, key)
        if path.is_file() and not overwrite:
            return self._load(target, key)
        source = None if discovered_from is None else _discovery_portal(discovered_from)
        keys = self._node_keys(target, key, settings, source)
        try:
            NodeSettings.from_keys(keys)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(path)) from None
        self._write(path, keys)
        return self._load(target, key)

    def update(self, target: str, portal: Any, key: str, value: str) -> NodeRecord:
        """Set one key of a record (``iscsiadm -m node -o update -n KEY -v VALUE``).

        The value is validated; equal CHAP secrets are refused. CHAP credentials may be left
        incomplete between updates (username now, password next): the returned record then
        has ``settings.auth_error`` set and the record can't be used to log in until fixed."""
        record = self.get(target, portal, strict=False)
        path = self._record_path(target, record.portal)
        if key in _IDENTITY_KEYS:
            raise ConfigError(f"{key} cannot be changed (it names the record)", str(path))
        if not key.startswith("node.") or key not in KNOWN_KEYS:
            raise ConfigError(f"unknown node key {_printable(key)}", str(path))
        try:
            value = validate_key(key, value)
        except ValueError as exc:
            shown = "" if is_secret_key(key) else f" {_printable(value)}"
            raise ConfigError(f"bad value{shown} for {key}: {exc}", str(path)) from None
        on_disk = dict(read_conf(path))
        on_disk[key] = value
        merged = dict(record.keys)
        merged[key] = value
        try:
            NodeSettings.from_keys(merged, strict=False)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(path)) from None
        self._write(path, on_disk)
        return self._load(target, record.portal, strict=False)

    def delete(self, target: str, portal: Any = None) -> int:
        """Delete the record of (target, portal), or all of target's records. Returns how many
        were deleted (0: none found)."""
        tdir = self._node_dir(target)
        if portal is None:
            portals = [p for name, p in self._scan() if name == target]
        else:
            portals = [PortalKey.of(portal)]
        count = 0
        for key in portals:
            pdir = tdir / key.dirname
            if (pdir / "default").is_file():
                shutil.rmtree(pdir)
                count += 1
        _rmdir_if_empty(tdir)
        return count

    # -- discovery ---------------------------------------------------------------------------
    def list_discovery(self) -> list[tuple[str, int]]:
        """(host, port) of every SendTargets discovery record."""
        found = []
        if not self.send_targets_dir.is_dir():
            return found
        for d in sorted(self.send_targets_dir.iterdir()):
            try:
                host, port = d.name.rsplit(",", 1)
                found.append(_discovery_portal((host, port)))
            except (ValueError, ConfigError):
                continue
            if not (d / "st_config").is_file():
                found.pop()
        return found

    def _discovery_keys(self, host: str, port: int) -> dict[str, str]:
        keys = {k: v for k, v in self.defaults.items() if k.startswith("discovery.")}
        path = self._st_path(host, port)
        if path.is_file():
            conf = read_conf(path)
            self.warnings.extend(conf.warnings)
            keys.update(conf)
        keys.update({"discovery.type": "sendtargets", "discovery.sendtargets.address": host,
                     "discovery.sendtargets.port": str(port)})
        return keys

    def discovery_settings(self, portal: Any, *, strict: bool = True) -> DiscoverySettings:
        """Settings for discovery at ``portal`` (its st_config, else the defaults)."""
        host, port = _discovery_portal(portal)
        try:
            return DiscoverySettings.from_keys(self._discovery_keys(host, port), strict=strict)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(self._st_path(host, port))) from None

    def discovery_chap(self, portal: Any) -> ChapCredentials | None:
        """CHAP credentials for a discovery session at ``portal`` (None: no authentication).
        ConfigError if they are configured but incomplete or invalid."""
        return self.discovery_settings(portal).auth

    def update_discovery(self, portal: Any, key: str, value: str) -> DiscoverySettings:
        """Set one key of a discovery record (created with the defaults if missing)."""
        host, port = _discovery_portal(portal)
        path = self._st_path(host, port)
        if key in _DISCOVERY_IDENTITY_KEYS:
            raise ConfigError(f"{key} cannot be changed (it names the record)", str(path))
        if not key.startswith("discovery.") or key not in KNOWN_KEYS:
            raise ConfigError(f"unknown discovery key {_printable(key)}", str(path))
        try:
            value = validate_key(key, value)
        except ValueError as exc:
            shown = "" if is_secret_key(key) else f" {_printable(value)}"
            raise ConfigError(f"bad value{shown} for {key}: {exc}", str(path)) from None
        keys = self._discovery_keys(host, port)
        keys[key] = value
        try:
            settings = DiscoverySettings.from_keys(keys, strict=False)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(path)) from None
        self._write(path, keys)
        return settings

    def record_discovery(self, portal: Any, targets: Iterable[Any]) -> DiscoveryUpdate:
        """Store a SendTargets answer from ``portal``: writes its st_config if missing and adds
        a record for every (target, portal) not yet known. Existing records - and so per-node
        settings - are never touched. Invalid names or addresses are refused (``rejected``)."""
        host, port = _discovery_portal(portal)
        st = self._st_path(host, port)
        if not st.is_file():
            self._write(st, self._discovery_keys(host, port))
        result = DiscoveryUpdate()
        for name, portals in _targets_of(targets):
            if not valid_iscsi_name(name):
                result.rejected.append(
                    f"target name {_printable(name)} from {_portal_text(host, port)} refused: "
                    f"{_name_problem(name)}")
                continue
            assert isinstance(name, str)
            for p in portals:
                try:
                    key = PortalKey.of(p)
                except (ConfigError, AttributeError, TypeError) as exc:
                    result.rejected.append(f"portal of {name} refused: {exc}")
                    continue
                existed = self._record_path(name, key).is_file()
                try:
                    record = self.add(name, key, discovered_from=(host, port))
                except ConfigError as exc:
                    result.rejected.append(f"record for {name} at {key} unusable: {exc}")
                    continue
                result.records.append(record)
                if not existed:
                    result.added.append(record)
        return result

    def _discovered_from(self, host: str, port: int) -> list[NodeRecord]:
        return [r for r in self.list_nodes(strict=False)
                if r.discovery_type == "send_targets" and r.discovery_address == host
                and r.discovery_port == port]

    def prune_discovery(self, portal: Any, targets: Iterable[Any]) -> list[NodeRecord]:
        """Delete records discovered from ``portal`` that its latest answer (``targets``) no
        longer lists. Hand-added records and those of other portals stay. Returns the deleted."""
        host, port = _discovery_portal(portal)
        reported = set()
        for name, portals in _targets_of(targets):
            for p in portals:
                try:
                    reported.add((name, PortalKey.of(p)))
                except (ConfigError, AttributeError, TypeError):
                    continue
        gone = [r for r in self._discovered_from(host, port)
                if (r.target, r.portal) not in reported]
        for record in gone:
            self.delete(record.target, record.portal)
        return gone

    def delete_discovery(self, portal: Any) -> int:
        """``iscsiadm -m discovery -p P -o delete``: drop P's st_config and the node records
        discovered from it. Returns the number of node records deleted."""
        host, port = _discovery_portal(portal)
        count = 0
        for record in self._discovered_from(host, port):
            count += self.delete(record.target, record.portal)
        st_dir = self._st_path(host, port).parent
        if st_dir.is_dir():
            shutil.rmtree(st_dir)
        return count


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
