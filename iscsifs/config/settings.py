"""The effective settings of a node record and of a discovery portal, with open-iscsi's
defaults: ``NodeSettings`` and ``DiscoverySettings``, each field carrying its open-iscsi key.

Owns: keys -> typed settings (``from_keys``) and back (``to_keys``), and the CHAP credentials
among them (incomplete or equal secrets refused). Pure: no files, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from iscsifs.config.keys import EMPTY, validate_key
from iscsifs.core.chap import ChapCredentials, normalize_algorithms
from iscsifs.core.discovery import DISCOVERY_MAX_RECV
from iscsifs.errors import ConfigError


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


def with_effective_authmethod(keys: Mapping[str, str]) -> dict[str, str]:
    """``keys`` with each ``*.auth.authmethod`` as a login uses it: ``CHAP`` wherever that
    prefix's username and password are both set, whatever the record says (a login offers
    CHAP whenever it has credentials), so that ``-o show`` does not say None while CHAP is
    used. The stored record is not changed."""
    shown = dict(keys)
    for prefix in (NodeSettings.AUTH_PREFIX, DiscoverySettings.AUTH_PREFIX):
        def get(name: str) -> str:
            value = keys.get(prefix + name, "")
            return "" if value == EMPTY else value
        if prefix + "authmethod" in keys and get("username") and get("password"):
            shown[prefix + "authmethod"] = "CHAP"
    return shown


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
    # the local address every connection to the node is bound to ("": the kernel chooses)
    source_address: str = field(default="", **_meta("iface.ipaddress", str))
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
        default=DISCOVERY_MAX_RECV,
        **_meta("discovery.sendtargets.iscsi.MaxRecvDataSegmentLength", int))

