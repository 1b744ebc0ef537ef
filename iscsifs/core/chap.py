"""CHAP authentication, initiator side (RFC 7143 §12.1.3, RFC 1994).

Owns: the CHAP credentials object (validation of the secrets an admin configured) and the
initiator's half of the CHAP exchange inside the login security phase:

    initiator                          target
    CHAP_A=<A1,A2...>          ->
                               <-      CHAP_A=<A> CHAP_I=<I> CHAP_C=<C>
    CHAP_N=<N> CHAP_R=<R>
    [CHAP_I=<I2> CHAP_C=<C2>]  ->      (the bracketed part only for mutual CHAP)
                               <-      [CHAP_N=<N2> CHAP_R=<R2>]

Response = H(identifier octet || secret || challenge), H being the hash CHAP_A selected.

Must not know: PDUs, sockets, trio, logging of values. Secrets never appear in a repr, a str, an
exception message or a log line; comparisons of responses are constant time.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from iscsifs.errors import AuthenticationError, ConfigError, LocalProtocolError

__all__ = [
    "ALGORITHMS",
    "ChapCredentials",
    "ChapInitiator",
    "MAX_BINARY_LENGTH",
    "MAX_SECRET_LENGTH",
    "WEAK_SECRET_LENGTH",
    "chap_response",
    "decode_binary",
    "decode_number",
    "normalize_algorithms",
]

#: CHAP_C / CHAP_R values are bounded to this many bytes once decoded (RFC 7143 §12.1.3).
MAX_BINARY_LENGTH = 1024
#: open-iscsi's AUTH_STR_MAX_LEN: usernames and secrets longer than this are refused.
MAX_SECRET_LENGTH = 256
#: RFC 7143 §12.1.3: secrets should carry at least 96 bits; shorter ones are warned about.
WEAK_SECRET_LENGTH = 12
#: the challenge we send for mutual CHAP is never shorter than this (and at least a digest).
MIN_CHALLENGE_LENGTH = 16


@dataclass(frozen=True)
class _Algorithm:
    name: str          # as written in node.session.auth.chap_algs
    number: int        # the CHAP_A value (IANA "PPP Authentication Algorithms")
    hash: Callable[..., "hashlib._Hash"]

    @property
    def digest_size(self) -> int:
        return self.hash().digest_size


#: By open-iscsi name. Note tgt answers CHAP_A=7 but computes SHA-1 (not SHA-256): offer MD5 to tgt.
ALGORITHMS: dict[str, _Algorithm] = {
    "SHA3-256": _Algorithm("SHA3-256", 8, hashlib.sha3_256),
    "SHA256": _Algorithm("SHA256", 7, hashlib.sha256),
    "SHA1": _Algorithm("SHA1", 6, hashlib.sha1),
    "MD5": _Algorithm("MD5", 5, hashlib.md5),
}
_BY_NUMBER = {alg.number: alg for alg in ALGORITHMS.values()}


def normalize_algorithms(algorithms: str | Iterable[str]) -> tuple[str, ...]:
    """``"sha256, MD5"`` or ``["SHA256", "MD5"]`` -> ``("SHA256", "MD5")``.

    Raises ConfigError for an empty list, an unknown name or a name given twice.
    """
    if isinstance(algorithms, str):
        items = [a.strip() for a in algorithms.split(",")]
    else:
        items = [str(a).strip() for a in algorithms]
    result: list[str] = []
    for item in items:
        name = item.upper()
        if name not in ALGORITHMS:
            raise ConfigError(
                f"unknown CHAP algorithm {item!r} (choose from {', '.join(ALGORITHMS)})")
        if name in result:
            raise ConfigError(f"CHAP algorithm {name} listed twice")
        result.append(name)
    if not result:
        raise ConfigError("no CHAP algorithm configured")
    return tuple(result)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


@dataclass(frozen=True)
class ChapCredentials:
    """CHAP credentials as configured (open-iscsi ``*.auth.username/password[_in]``).

    ``username``/``password`` authenticate us to the target (one-way CHAP); ``username_in``/
    ``password_in`` are what the target must prove (mutual CHAP). ``algorithms`` is the ordered
    list offered in CHAP_A (names among SHA3-256, SHA256, SHA1, MD5).
    """

    username: str
    password: str | bytes = field(repr=False)
    username_in: str | None = None
    password_in: str | bytes | None = field(default=None, repr=False)
    algorithms: tuple[str, ...] = ("MD5",)

    def __post_init__(self) -> None:
        has_in = bool(self.username_in) or bool(self.password_in)
        has_out = bool(self.username) and bool(self.password)
        if has_in and not has_out:
            raise ConfigError(
                "username_in/password_in (mutual CHAP) need username and password as well")
        if not self.username:
            raise ConfigError("CHAP username is empty")
        if not self.password:
            raise ConfigError(f"CHAP password for user {self.username!r} is empty")
        if has_in and not (self.username_in and self.password_in):
            raise ConfigError("mutual CHAP needs both username_in and password_in")
        for what, value in (("username", self.username), ("password", self.password),
                            ("username_in", self.username_in),
                            ("password_in", self.password_in)):
            if value is not None and len(_as_bytes(value)) > MAX_SECRET_LENGTH:
                raise ConfigError(f"CHAP {what} is longer than {MAX_SECRET_LENGTH} bytes")
        if self.password_in and hmac.compare_digest(_as_bytes(self.password),
                                                     _as_bytes(self.password_in)):
            raise ConfigError(
                "no two CHAP secrets may be the same: password and password_in are equal")
        object.__setattr__(self, "algorithms", normalize_algorithms(self.algorithms))

    @property
    def mutual(self) -> bool:
        """True when the target must authenticate itself too."""
        return bool(self.password_in)

    @property
    def secret(self) -> bytes:
        return _as_bytes(self.password)

    @property
    def secret_in(self) -> bytes | None:
        return None if self.password_in is None else _as_bytes(self.password_in)

    @property
    def weak(self) -> list[str]:
        """Warnings for the caller to log (never containing a secret)."""
        warnings = []
        if len(self.secret) < WEAK_SECRET_LENGTH:
            warnings.append(
                f"CHAP password for user {self.username!r} is shorter than "
                f"{WEAK_SECRET_LENGTH} bytes (RFC 7143 asks for at least 96 bits)")
        secret_in = self.secret_in
        if secret_in and len(secret_in) < WEAK_SECRET_LENGTH:
            warnings.append(
                f"CHAP password_in for user {self.username_in!r} is shorter than "
                f"{WEAK_SECRET_LENGTH} bytes (RFC 7143 asks for at least 96 bits)")
        return warnings


def chap_response(algorithm: str, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """H(identifier || secret || challenge) for the named algorithm (RFC 1994 §4.1)."""
    h = ALGORITHMS[algorithm].hash()
    h.update(bytes((identifier,)))
    h.update(secret)
    h.update(challenge)
    return h.digest()


def decode_binary(value: str, what: str = "value", limit: int = MAX_BINARY_LENGTH) -> bytes:
    """Decode an RFC 7143 §6.1 binary value: ``0x<hex>`` or ``0b<base64>``, at most ``limit``
    bytes. Odd-length hex is refused (a malformed-input class seen in CVEs).
    Raises AuthenticationError (the value came from the target during CHAP).
    """
    prefix, body = value[:2], value[2:]
    if not body:
        raise AuthenticationError(f"CHAP: empty {what} from target")
    if prefix in ("0x", "0X"):
        if len(body) > 2 * limit:
            raise AuthenticationError(f"CHAP: {what} from target is longer than {limit} bytes")
        if len(body) % 2:
            raise AuthenticationError(
                f"CHAP: {what} from target has an odd number of hex digits")
        try:
            return bytes.fromhex(body)
        except ValueError:
            raise AuthenticationError(f"CHAP: {what} from target is not valid hex") from None
    if prefix in ("0b", "0B"):
        if len(body) > 4 * ((limit + 2) // 3):
            raise AuthenticationError(f"CHAP: {what} from target is longer than {limit} bytes")
        try:
            if len(body) % 4:       # RFC 4648 encoding with padding, as RFC 7143 §6.1 uses
                raise ValueError
            data = base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise AuthenticationError(
                f"CHAP: {what} from target is not valid base64") from None
        if not data:
            raise AuthenticationError(f"CHAP: empty {what} from target")
        if len(data) > limit:
            raise AuthenticationError(f"CHAP: {what} from target is longer than {limit} bytes")
        return data
    raise AuthenticationError(
        f"CHAP: {what} from target must start with 0x (hex) or 0b (base64)")


def decode_number(value: str, what: str = "CHAP_I") -> int:
    """Decode an RFC 7143 numerical value (decimal or ``0x`` hex) that must fit one octet."""
    text = value.strip()
    try:
        if text[:2] in ("0x", "0X"):
            digits = text[2:]
            if not digits or len(digits) > 8:
                raise ValueError
            number = int(digits, 16)
        else:
            if not text.isascii() or not text.isdigit() or len(text) > 8:
                raise ValueError
            number = int(text, 10)
    except ValueError:
        raise AuthenticationError(f"CHAP: {what} from target is not a number") from None
    if not 0 <= number <= 255:
        raise AuthenticationError(f"CHAP: {what} from target is not one octet (0..255)")
    return number


class _IssuedChallenges:
    """Challenges this process has sent, so that one reflected back at us is recognised."""

    def __init__(self, capacity: int = 4096):
        self._order: deque[bytes] = deque()
        self._set: set[bytes] = set()
        self._capacity = capacity

    def add(self, challenge: bytes) -> None:
        if challenge in self._set:
            return
        self._order.append(challenge)
        self._set.add(challenge)
        while len(self._order) > self._capacity:
            self._set.discard(self._order.popleft())

    def __contains__(self, challenge: object) -> bool:
        return challenge in self._set


_ISSUED = _IssuedChallenges()


class _State(enum.Enum):
    IDLE = "idle"                  # nothing sent yet
    OFFERED = "offered"            # CHAP_A sent, waiting for CHAP_A/I/C
    SELECTED = "selected"          # CHAP_A chosen, CHAP_I/CHAP_C not seen yet
    AWAIT_TARGET = "await-target"  # mutual: our challenge sent, waiting for CHAP_N/CHAP_R
    DONE = "done"
    FAILED = "failed"


class ChapInitiator:
    """The initiator's side of one CHAP exchange (one per connection login).

    ``first_keys()`` -> ``[("CHAP_A", ...)]``; ``receive(pairs)`` with the target's keys ->
    our ``CHAP_N``/``CHAP_R`` (plus ``CHAP_I``/``CHAP_C`` for mutual) or None if the target
    has not sent its challenge yet; ``verify(pairs)`` checks the target's mutual answer.
    Any failure raises AuthenticationError and leaves the object failed.
    """

    def __init__(self, creds: ChapCredentials, *, _issued: _IssuedChallenges | None = None):
        self._creds = creds
        self._issued = _ISSUED if _issued is None else _issued
        self._state = _State.IDLE
        self._offered = [ALGORITHMS[name] for name in creds.algorithms]
        self._algorithm: _Algorithm | None = None
        self._our_id: int | None = None
        self._our_challenge: bytes | None = None

    def __repr__(self) -> str:
        alg = self._algorithm.name if self._algorithm else None
        return f"<ChapInitiator user={self._creds.username!r} state={self._state.value} alg={alg}>"

    # -- state queries -----------------------------------------------------------------------
    @property
    def mutual(self) -> bool:
        return self._creds.mutual

    @property
    def algorithm(self) -> str | None:
        """The algorithm the target selected (None before its CHAP_A)."""
        return self._algorithm.name if self._algorithm else None

    @property
    def done(self) -> bool:
        """True once our response is sent (one-way) or the target's verified (mutual)."""
        return self._state is _State.DONE

    @property
    def awaiting_target(self) -> bool:
        """True while the target still owes us its mutual CHAP_N/CHAP_R."""
        return self._state is _State.AWAIT_TARGET

    # -- the exchange ------------------------------------------------------------------------
    def first_keys(self) -> list[tuple[str, str]]:
        if self._state is not _State.IDLE:
            raise LocalProtocolError(f"CHAP_A already offered (state {self._state.value})")
        self._state = _State.OFFERED
        return [("CHAP_A", ",".join(str(alg.number) for alg in self._offered))]

    def receive(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]] | None:
        """Handle the target's CHAP_A/CHAP_I/CHAP_C; return our answer, or None to wait."""
        if self._state not in (_State.OFFERED, _State.SELECTED):
            raise LocalProtocolError(f"CHAP receive() in state {self._state.value}")
        try:
            keys = self._chap_keys(pairs)
            for unexpected in ("CHAP_N", "CHAP_R"):
                if unexpected in keys:
                    raise AuthenticationError(
                        f"CHAP: target sent {unexpected} before we answered its challenge")
            if "CHAP_A" in keys:
                if self._state is not _State.OFFERED:
                    raise AuthenticationError("CHAP: target sent CHAP_A twice")
                self._select(keys["CHAP_A"])
                self._state = _State.SELECTED
            has_i, has_c = "CHAP_I" in keys, "CHAP_C" in keys
            if not (has_i or has_c):
                return None
            if self._algorithm is None:
                raise AuthenticationError("CHAP: target sent a challenge before CHAP_A")
            if not (has_i and has_c):
                missing = "CHAP_C" if has_i else "CHAP_I"
                raise AuthenticationError(f"CHAP: target's challenge lacks {missing}")
            return self._respond(decode_number(keys["CHAP_I"]),
                                 decode_binary(keys["CHAP_C"], "CHAP_C"))
        except AuthenticationError:
            self._state = _State.FAILED
            raise

    def verify(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Check the target's mutual CHAP answer; AuthenticationError if it is not right."""
        if self._state is not _State.AWAIT_TARGET:
            raise LocalProtocolError(f"CHAP verify() in state {self._state.value}")
        try:
            self._verify(self._chap_keys(pairs))
        except AuthenticationError:
            self._state = _State.FAILED
            raise
        self._state = _State.DONE

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _chap_keys(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        keys: dict[str, str] = {}
        for key, value in pairs:
            if not key.startswith("CHAP_"):
                continue            # AuthMethod, TargetPortalGroupTag, ...: the login's business
            if key in keys:
                raise AuthenticationError(f"CHAP: target sent {key} twice")
            keys[key] = value
        return keys

    def _select(self, value: str) -> None:
        if value in ("Reject", "NotUnderstood", "Irrelevant", "None"):
            raise AuthenticationError(
                "CHAP: target accepts none of the offered algorithms ("
                + ", ".join(alg.name for alg in self._offered) + ")")
        ok = value.isascii() and value.isdigit() and len(value) <= 3
        alg = _BY_NUMBER.get(int(value, 10)) if ok else None
        if alg is None or alg not in self._offered:
            raise AuthenticationError("CHAP: target selected an algorithm we did not offer")
        self._algorithm = alg

    def _respond(self, identifier: int, challenge: bytes) -> list[tuple[str, str]]:
        assert self._algorithm is not None
        if challenge in self._issued:
            raise AuthenticationError(
                "CHAP: target reflected one of our own challenges back at us")
        answer = [
            ("CHAP_N", self._creds.username),
            ("CHAP_R", "0x" + chap_response(self._algorithm.name, identifier,
                                           self._creds.secret, challenge).hex()),
        ]
        if not self._creds.mutual:
            self._state = _State.DONE
            return answer
        length = max(MIN_CHALLENGE_LENGTH, self._algorithm.digest_size)
        ours = secrets.token_bytes(length)
        while ours == challenge or ours in self._issued:      # never reuse, never mirror
            ours = secrets.token_bytes(length)
        self._our_id = secrets.randbelow(256)
        self._our_challenge = ours
        self._issued.add(ours)
        self._state = _State.AWAIT_TARGET
        return answer + [("CHAP_I", str(self._our_id)), ("CHAP_C", "0x" + ours.hex())]

    def _verify(self, keys: dict[str, str]) -> None:
        assert self._algorithm is not None and self._our_challenge is not None
        assert self._our_id is not None
        for key in ("CHAP_A", "CHAP_I", "CHAP_C"):
            if key in keys:
                raise AuthenticationError(f"CHAP: target sent {key} in its mutual answer")
        if "CHAP_N" not in keys or "CHAP_R" not in keys:
            raise AuthenticationError(
                "CHAP: target did not authenticate itself (no CHAP_N/CHAP_R for mutual CHAP)")
        name = keys["CHAP_N"].encode("utf-8", "surrogateescape")
        expected_name = (self._creds.username_in or "").encode("utf-8")
        response = decode_binary(keys["CHAP_R"], "CHAP_R")
        secret_in = self._creds.secret_in
        assert secret_in is not None
        mine = chap_response(self._algorithm.name, self._our_id, self._creds.secret,
                             self._our_challenge)
        if hmac.compare_digest(response, mine):
            raise AuthenticationError(
                "CHAP: target answered with our own secret (target and initiator secrets "
                "must differ)")
        expected = chap_response(self._algorithm.name, self._our_id, secret_in,
                                 self._our_challenge)
        name_ok = hmac.compare_digest(name, expected_name)
        response_ok = hmac.compare_digest(response, expected)
        if not (name_ok and response_ok):
            raise AuthenticationError(
                "CHAP: target failed mutual authentication (wrong username_in or password_in)")
