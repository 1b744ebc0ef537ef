"""iSCSI text keys: the key=value codec and the operational-parameter negotiation.

Owns: encoding/decoding of text data segments (RFC 7143 §6.1), joining text that spans
several PDUs with the C bit (§6.1, §11.10.2, §11.12.2), the parameters we propose
(`LoginParams`), the negotiation rules of RFC 7143 §6.2 and §13 (`Negotiator`) and their
outcome (`NegotiatedParams`).

Knows nothing of PDUs, sockets or the login state machine: `iscsifs.core.login` feeds the
pairs in and sends the answers out. Security keys (AuthMethod, CHAP_*) belong to
`iscsifs.core.login` / `iscsifs.core.chap`, not here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Literal

from iscsifs.errors import ConfigError, LocalProtocolError, LoginError, RemoteProtocolError

log = logging.getLogger(__name__)

Pairs = list[tuple[str, str]]

# RFC 7143 §6.1: a key name is at most 63 bytes; a standard-label starts with a capital
# letter, vendor keys start with "X-" / "X#". We accept letters, digits and . - + @ _ #.
MAX_KEY_LENGTH = 63
# RFC 7143 §6.1: "the maximum length of an individual value ... is 255 bytes" for most keys;
# some (CHAP_C / CHAP_R, binary values) are longer. We bound any value at 8192 bytes, the
# minimum amount of key=value data every implementation must accept (§6.1).
MAX_VALUE_LENGTH = 255
MAX_DATA_VALUE_LENGTH = 8192
# Keys answering a SendTargets request (RFC 7143 §13.3, Appendix C). Their values are not
# length-checked here: `iscsifs.core.discovery` validates them one by one and drops bad
# entries instead of failing the whole discovery. The accumulated text is still bounded.
SENDTARGETS_ANSWER_KEYS = frozenset({"TargetName", "TargetAddress", "TargetAlias"})
DEFAULT_MAX_TEXT = 64 * 1024

_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9.\-+@_#]*\Z")

# Special answers (RFC 7143 §6.2)
NOT_UNDERSTOOD = "NotUnderstood"
IRRELEVANT = "Irrelevant"
REJECT = "Reject"
_SPECIAL = (NOT_UNDERSTOOD, IRRELEVANT, REJECT)

MAX_SEGMENT = 2**24 - 1   # numerical-value-512-to-(2**24-1) (RFC 7143 §13.12-§13.14)


# ---------------------------------------------------------------------------------------------
# codec (RFC 7143 §6.1)

def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``key=value\\0`` for every pair, in order. LocalProtocolError on a malformed pair."""
    out = bytearray()
    for key, value in pairs:
        if not _KEY_RE.match(key) or len(key.encode()) > MAX_KEY_LENGTH:
            raise LocalProtocolError(f"invalid text key {key!r}")
        raw = value.encode("utf-8")
        if b"\0" in raw:
            raise LocalProtocolError(f"value of {key} contains a NUL byte")
        if len(raw) > MAX_DATA_VALUE_LENGTH:
            raise LocalProtocolError(f"value of {key} is {len(raw)} bytes (limit "
                                     f"{MAX_DATA_VALUE_LENGTH})")
        out += key.encode("ascii") + b"=" + raw + b"\0"
    return bytes(out)


def decode_text(data: bytes | bytearray | memoryview, *, final: bool = True) -> Pairs:
    """Split a complete text data segment into (key, value) pairs, in order.

    Every pair must end with NUL (RFC 7143 §6.1); an unterminated last pair is accepted only
    when ``final`` is true (some targets omit the last NUL). Empty strings between NULs (and
    NUL padding) are skipped. Duplicate keys are *not* rejected here: SendTargets answers
    repeat TargetName/TargetAddress; `Negotiator` rejects duplicates where they are illegal.
    Raises RemoteProtocolError for anything malformed.
    """
    raw = bytes(data)
    if not raw:
        return []
    chunks = raw.split(b"\0")
    last = chunks.pop()          # b"" when the data ended with NUL
    if last:
        if not final:
            raise RemoteProtocolError("text data ends in the middle of a key=value pair")
        chunks.append(last)
    pairs: Pairs = []
    for chunk in chunks:
        if not chunk:
            continue
        key_raw, sep, value_raw = chunk.partition(b"=")
        if not sep:
            raise RemoteProtocolError(f"text item without '=': {_preview(chunk)}")
        if len(key_raw) > MAX_KEY_LENGTH:
            raise RemoteProtocolError(f"text key longer than {MAX_KEY_LENGTH} bytes: "
                                      f"{_preview(key_raw)}")
        try:
            key = key_raw.decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"text key is not ASCII: {_preview(key_raw)}") from None
        if not _KEY_RE.match(key):
            raise RemoteProtocolError(f"invalid text key {_preview(key_raw)}")
        if len(value_raw) > MAX_DATA_VALUE_LENGTH and key not in SENDTARGETS_ANSWER_KEYS:
            raise RemoteProtocolError(f"value of {key} is {len(value_raw)} bytes "
                                      f"(limit {MAX_DATA_VALUE_LENGTH})")
        try:
            value = value_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"value of {key} is not valid UTF-8") from None
        pairs.append((key, value))
    return pairs


def _preview(raw: bytes, limit: int = 40) -> str:
    text = repr(raw[:limit])
    return text + ("..." if len(raw) > limit else "")


class TextAccumulator:
    """Joins text split over several PDUs with the C (continue) bit (RFC 7143 §6.1, §11.10.2).

    ``add(data, cont)`` returns None while ``cont`` is true, and the decoded pairs of the
    whole text on the PDU with ``cont`` false; then it is ready for the next text.
    """

    def __init__(self, max_total: int = DEFAULT_MAX_TEXT):
        self.max_total = max_total
        self._buf = bytearray()
        self._segments = 0

    @property
    def pending(self) -> bool:
        """True while a continued text is half received."""
        return self._segments > 0

    def add(self, data: bytes | bytearray | memoryview, cont: bool) -> Pairs | None:
        if len(self._buf) + len(data) > self.max_total:
            self.reset()
            raise RemoteProtocolError(f"text spanning PDUs exceeds {self.max_total} bytes")
        self._buf += data
        self._segments += 1
        if cont:
            return None
        raw = bytes(self._buf)
        self.reset()
        return decode_text(raw, final=True)

    def reset(self) -> None:
        self._buf = bytearray()
        self._segments = 0


# ---------------------------------------------------------------------------------------------
# parameters

DIGEST_CHOICES = ("None", "CRC32C", "CRC32C,None", "None,CRC32C")
SessionType = Literal["Normal", "Discovery"]


@dataclass(frozen=True)
class NegotiatedParams:
    """The outcome of the login negotiation. Defaults are the RFC 7143 §13 defaults."""

    header_digest: bool = False
    data_digest: bool = False
    max_recv_data_segment_length: int = 8192      # what WE declared we accept
    max_xmit_data_segment_length: int = 8192      # the target's MaxRecvDataSegmentLength
    first_burst_length: int = 65536
    max_burst_length: int = 262144
    immediate_data: bool = True
    initial_r2t: bool = True
    max_outstanding_r2t: int = 1
    max_connections: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 20
    error_recovery_level: int = 0
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    target_portal_group_tag: int | None = None
    target_alias: str | None = None


@dataclass(frozen=True)
class LoginParams:
    """What we propose at login (open-iscsi's defaults, see iscsid.conf)."""

    header_digest: str = "None"
    data_digest: str = "None"
    max_recv_data_segment_length: int = 262144
    first_burst_length: int = 262144
    max_burst_length: int = 16776192
    immediate_data: bool = True
    initial_r2t: bool = False
    max_outstanding_r2t: int = 1
    max_connections: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 0
    error_recovery_level: int = 0
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True

    def __post_init__(self) -> None:
        for name in ("header_digest", "data_digest"):
            if getattr(self, name) not in DIGEST_CHOICES:
                raise ConfigError(f"{name} must be one of {', '.join(DIGEST_CHOICES)}, "
                                  f"not {getattr(self, name)!r}")
        for name in ("immediate_data", "initial_r2t", "data_pdu_in_order",
                     "data_sequence_in_order"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a boolean")
        for name, (lo, hi) in _NUMERIC_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be an integer from {lo} to {hi}, not {value!r}")
        if self.first_burst_length > self.max_burst_length:
            raise ConfigError("first_burst_length must not exceed max_burst_length "
                              "(RFC 7143 §13.14)")


_NUMERIC_RANGES = {
    "max_recv_data_segment_length": (512, MAX_SEGMENT),
    "first_burst_length": (512, MAX_SEGMENT),
    "max_burst_length": (512, MAX_SEGMENT),
    "max_outstanding_r2t": (1, 65535),
    "max_connections": (1, 65535),
    "default_time2wait": (0, 3600),
    "default_time2retain": (0, 3600),
    "error_recovery_level": (0, 2),
}


# ---------------------------------------------------------------------------------------------
# negotiation rules (RFC 7143 §6.2, §13)

@dataclass(frozen=True)
class _Spec:
    key: str
    attr: str                   # NegotiatedParams / LoginParams field
    kind: str                   # list | min | max | or | and | declarative
    lo: int = 0
    hi: int = 0
    normal_only: bool = False   # "Irrelevant when: SessionType=Discovery"


_SPECS = {s.key: s for s in (
    _Spec("HeaderDigest", "header_digest", "list"),                           # §13.1
    _Spec("DataDigest", "data_digest", "list"),                               # §13.1
    _Spec("MaxConnections", "max_connections", "min", 1, 65535, True),        # §13.2
    _Spec("InitialR2T", "initial_r2t", "or", normal_only=True),               # §13.10
    _Spec("ImmediateData", "immediate_data", "and", normal_only=True),        # §13.11
    _Spec("MaxRecvDataSegmentLength", "max_recv_data_segment_length",
          "declarative", 512, MAX_SEGMENT),                                   # §13.12
    _Spec("MaxBurstLength", "max_burst_length", "min", 512, MAX_SEGMENT, True),    # §13.13
    _Spec("FirstBurstLength", "first_burst_length", "min", 512, MAX_SEGMENT, True),  # §13.14
    _Spec("DefaultTime2Wait", "default_time2wait", "max", 0, 3600),           # §13.15
    _Spec("DefaultTime2Retain", "default_time2retain", "min", 0, 3600),       # §13.16
    _Spec("MaxOutstandingR2T", "max_outstanding_r2t", "min", 1, 65535, True),  # §13.17
    _Spec("DataPDUInOrder", "data_pdu_in_order", "or", normal_only=True),     # §13.18
    _Spec("DataSequenceInOrder", "data_sequence_in_order", "or", normal_only=True),  # §13.19
    _Spec("ErrorRecoveryLevel", "error_recovery_level", "min", 0, 2),         # §13.20
)}

# Order of our offer (the order open-iscsi uses).
_OFFER_ORDER = ("HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength", "MaxConnections",
                "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
                "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T",
                "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel")

# RFC 7143 §13 "Obsoleted Keys": the RFC 3720 marker keys; a responder answers "Reject".
_OBSOLETE_KEYS = frozenset({"IFMarker", "OFMarker", "IFMarkInt", "OFMarkInt"})
# Keys the target declares (no answer): TargetAlias §13.6, TargetPortalGroupTag §13.9.
_TARGET_DECLARATIONS = frozenset({"TargetAlias", "TargetPortalGroupTag"})
# Declarations the target may repeat with the same value.
_REDECLARABLE = frozenset({"TargetAlias", "TargetPortalGroupTag", "MaxRecvDataSegmentLength"})
# Keys a target must never send during operational negotiation.
_NOT_FROM_TARGET = frozenset({"InitiatorName", "InitiatorAlias", "SessionType", "SendTargets",
                              "AuthMethod", "TargetName"})

_DEFAULTS = NegotiatedParams()


def _parse_number(key: str, value: str) -> int:
    """decimal-constant or hex-constant (RFC 7143 §6.1 numerical-value)."""
    try:
        if value[:2] in ("0x", "0X"):
            if not re.fullmatch(r"[0-9A-Fa-f]{1,16}", value[2:]):
                raise ValueError
            return int(value[2:], 16)
        if not re.fullmatch(r"[0-9]{1,20}", value):
            raise ValueError
        return int(value)
    except ValueError:
        raise RemoteProtocolError(f"{key}={value[:40]!r} is not a number") from None


def _parse_bool(key: str, value: str) -> bool:
    if value == "Yes":
        return True
    if value == "No":
        return False
    raise RemoteProtocolError(f"{key}={value[:40]!r} is not Yes or No")


def _yes_no(flag: bool) -> str:
    return "Yes" if flag else "No"


class Negotiator:
    """Operational-parameter negotiation for one login (RFC 7143 §6.2, §13).

    ``offer()`` gives our proposals; ``receive(pairs)`` takes one complete response (the
    text of all its C-bit PDUs), checks the answers to our offers, and returns our answers
    to the keys the target proposed (to send in the next Login Request); ``result()`` gives
    the NegotiatedParams. Every violation raises RemoteProtocolError; a digest the target
    refuses while our configuration requires it raises LoginError.
    """

    def __init__(self, params: LoginParams, session_type: SessionType = "Normal"):
        if session_type not in ("Normal", "Discovery"):
            raise LocalProtocolError(f"unknown session type {session_type!r}")
        self.params = params
        self.session_type = session_type
        self._offer_made = False
        self._offered: dict[str, str] = {}     # key -> value we proposed
        self._values: dict[str, object] = {}   # key -> negotiated value (our attr types)
        self._seen: set[str] = set()           # keys the target has sent (any stage)
        self._target_mrdsl: int | None = None
        self._tpgt: int | None = None
        self._alias: str | None = None

    # -- our side ---------------------------------------------------------------------------

    def _relevant(self, key: str) -> bool:
        return not (_SPECS[key].normal_only and self.session_type == "Discovery")

    def _our_value(self, spec: _Spec) -> str:
        value = getattr(self.params, spec.attr)
        if spec.kind in ("or", "and"):
            return _yes_no(value)
        return str(value)

    def offer(self) -> Pairs:
        """Our proposals, for the first operational-stage Login Request."""
        if self._offer_made:
            raise LocalProtocolError("offer() called twice")
        pairs: Pairs = []
        for key in _OFFER_ORDER:
            if not self._relevant(key) or key in self._seen:
                continue
            # §13.14: FirstBurstLength is irrelevant when InitialR2T=Yes and ImmediateData=No;
            # with our own offer saying so, the outcome can only be that (OR / AND).
            if (key == "FirstBurstLength" and self.params.initial_r2t
                    and not self.params.immediate_data):
                continue
            value = self._our_value(_SPECS[key])
            pairs.append((key, value))
            if key != "MaxRecvDataSegmentLength":
                self._offered[key] = value
        self._offer_made = True
        return pairs

    # -- their side --------------------------------------------------------------------------

    def receive(self, pairs: Iterable[tuple[str, str]]) -> Pairs:
        """Check one response's keys; return our answers to the target's own proposals."""
        pairs = list(pairs)
        keys = [k for k, _ in pairs]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise RemoteProtocolError(f"key {sorted(dup)[0]} sent twice in one response")
        answers: Pairs = []
        for key, value in pairs:
            if key in self._seen and key in _REDECLARABLE and self._same_declaration(key, value):
                continue
            if key in self._seen:
                # §6.2: renegotiating/redeclaring a key during login must be detected and the
                # initiator MUST drop the connection.
                raise RemoteProtocolError(f"target sent {key} again during the same login")
            self._seen.add(key)
            answer = self._receive_one(key, value)
            if answer is not None:
                answers.append((key, answer))
        return answers

    def _receive_one(self, key: str, value: str) -> str | None:
        if key in _TARGET_DECLARATIONS:
            self._declaration(key, value)
            return None
        if key.startswith("CHAP_") or key in _NOT_FROM_TARGET:
            raise RemoteProtocolError(f"target sent {key} during operational negotiation")
        if key.startswith(("X-", "X#")):
            log.debug("answering NotUnderstood to vendor key %s", key)
            return NOT_UNDERSTOOD
        if key in _OBSOLETE_KEYS:
            return REJECT
        if key == "TaskReporting":
            # RFC 7143 §13.23: we implement only the RFC 3720 semantics (list negotiation)
            return "RFC3720" if "RFC3720" in value.split(",") else REJECT
        spec = _SPECS.get(key)
        if spec is None:
            log.info("target proposed unknown key %s; answering NotUnderstood", key)
            return NOT_UNDERSTOOD
        if len(value.encode()) > MAX_VALUE_LENGTH:
            raise RemoteProtocolError(f"value of {key} is longer than {MAX_VALUE_LENGTH} bytes")
        if spec.kind == "declarative":
            if value in _SPECIAL:
                log.info("target answered %s=%s; assuming the default", key, value)
                return None
            number = _parse_number(key, value)
            if not spec.lo <= number <= spec.hi:
                raise RemoteProtocolError(f"{key}={number} is out of range "
                                          f"{spec.lo}..{spec.hi}")
            self._target_mrdsl = number
            return None
        if key in self._offered:
            self._answer(spec, value)
            return None
        return self._respond(spec, value)

    def _same_declaration(self, key: str, value: str) -> bool:
        """A declarative key sent again with the same value (harmless, some targets do)."""
        try:
            if key == "TargetPortalGroupTag":
                return _parse_number(key, value) == self._tpgt
            if key == "MaxRecvDataSegmentLength":
                return _parse_number(key, value) == self._target_mrdsl
        except RemoteProtocolError:
            return False
        return value == self._alias

    def _declaration(self, key: str, value: str) -> None:
        if key == "TargetPortalGroupTag":
            # §13.9: 16-bit binary-value
            tag = _parse_number(key, value)
            if not 0 <= tag <= 65535:
                raise RemoteProtocolError(f"TargetPortalGroupTag={tag} is out of range")
            self._tpgt = tag
        else:
            # §13.6: a human-readable name; shown to users, so refuse control characters
            if len(value.encode()) > MAX_VALUE_LENGTH or any(
                    ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                log.warning("ignoring malformed TargetAlias from the target")
                return
            self._alias = value

    def _answer(self, spec: _Spec, value: str) -> None:
        """The target's answer to a key we offered."""
        key = spec.key
        offered = self._offered[key]
        if value in _SPECIAL:
            if value == IRRELEVANT and key == "FirstBurstLength":
                log.debug("target answered FirstBurstLength=Irrelevant")
            else:
                log.info("target answered %s=%s to %s=%s; using the default", key, value,
                         key, offered)
            if spec.kind == "list":
                self._list_default(key, offered)
            return
        if spec.kind == "list":
            ours = offered.split(",")
            if value not in ours:
                raise RemoteProtocolError(f"target chose {key}={value[:40]!r}, "
                                          f"not one of {offered}")
            self._values[key] = value == "CRC32C"
        elif spec.kind in ("min", "max"):
            number = _parse_number(key, value)
            ours_n = int(offered)
            if spec.kind == "min":
                ok = spec.lo <= number <= ours_n
            else:
                ok = ours_n <= number <= spec.hi
            if not ok:
                raise RemoteProtocolError(f"target answered {key}={number} to our {ours_n} "
                                          f"({'at most' if spec.kind == 'min' else 'at least'}"
                                          f" ours, range {spec.lo}..{spec.hi})")
            self._values[key] = number
        else:   # or / and
            answer = _parse_bool(key, value)
            ours_b = offered == "Yes"
            if spec.kind == "or" and ours_b and not answer:
                raise RemoteProtocolError(f"target answered {key}=No to Yes (result is OR)")
            if spec.kind == "and" and not ours_b and answer:
                raise RemoteProtocolError(f"target answered {key}=Yes to No (result is AND)")
            self._values[key] = answer

    def _list_default(self, key: str, offered: str) -> None:
        # the key keeps its default, None; refuse if our configuration excludes it
        if "None" not in offered.split(","):
            raise LoginError(f"target refused {key}={offered}, which the configuration "
                             f"requires")

    def _respond(self, spec: _Spec, value: str) -> str:
        """Our answer to a key the target proposed (we did not offer it)."""
        key = spec.key
        if value in _SPECIAL:
            raise RemoteProtocolError(f"target proposed {key}={value}")
        if not self._relevant(key):
            # §13: irrelevant for discovery sessions
            return IRRELEVANT
        if spec.kind == "list":
            theirs = value.split(",")
            ours = getattr(self.params, spec.attr).split(",")
            for choice in theirs:          # §6.2.1: the first of the offered list we support
                if choice in ours:
                    self._values[key] = choice == "CRC32C"
                    return choice
            self._list_default(key, ",".join(ours))
            return REJECT
        if spec.kind in ("min", "max"):
            number = _parse_number(key, value)
            if not spec.lo <= number <= spec.hi:
                raise RemoteProtocolError(f"{key}={number} is out of range {spec.lo}..{spec.hi}")
            if key == "FirstBurstLength" and self._first_burst_irrelevant():
                return IRRELEVANT
            ours_n = getattr(self.params, spec.attr)
            result = min(number, ours_n) if spec.kind == "min" else max(number, ours_n)
            self._values[key] = result
            return str(result)
        theirs_b = _parse_bool(key, value)
        ours_b = getattr(self.params, spec.attr)
        result_b = (theirs_b or ours_b) if spec.kind == "or" else (theirs_b and ours_b)
        self._values[key] = result_b
        return _yes_no(result_b)

    def _first_burst_irrelevant(self) -> bool:
        return (self._bool("InitialR2T", "initial_r2t")
                and not self._bool("ImmediateData", "immediate_data"))

    def _bool(self, key: str, attr: str) -> bool:
        if key in self._values:
            return bool(self._values[key])
        if key in self._offered:
            # no answer yet: OR with our Yes is Yes, AND with our No is No (§6.2.2);
            # otherwise assume the target will agree with our offer
            return self._offered[key] == "Yes"
        return getattr(_DEFAULTS, attr)

    # -- outcome ----------------------------------------------------------------------------

    def result(self) -> NegotiatedParams:
        """The negotiated parameters (RFC 7143 §13 result functions)."""
        values: dict[str, object] = {}
        for key, spec in _SPECS.items():
            if spec.kind == "declarative":
                continue
            if key in self._values:
                values[spec.attr] = self._values[key]
            elif key in self._offered:
                offered = self._offered[key]
                # §6.2.2: answers are optional when OR got Yes or AND got No
                if (spec.kind == "or" and offered == "Yes") or \
                        (spec.kind == "and" and offered == "No"):
                    values[spec.attr] = offered == "Yes"
                elif key not in self._seen:
                    log.info("target did not answer %s=%s; using the default", key, offered)
        fields = {**{f: getattr(_DEFAULTS, f) for f in _DEFAULTS.__dataclass_fields__},
                  **values}
        fields["max_recv_data_segment_length"] = self.params.max_recv_data_segment_length
        if self._target_mrdsl is not None:
            fields["max_xmit_data_segment_length"] = self._target_mrdsl
        fields["target_portal_group_tag"] = self._tpgt
        fields["target_alias"] = self._alias
        if fields["first_burst_length"] > fields["max_burst_length"]:   # §13.14
            log.info("FirstBurstLength %d exceeds MaxBurstLength %d; using %d",
                     fields["first_burst_length"], fields["max_burst_length"],
                     fields["max_burst_length"])
            fields["first_burst_length"] = fields["max_burst_length"]
        return NegotiatedParams(**fields)
