"""Names and addresses, one vocabulary for every layer.

Owns: ``Portal`` (host, port, portal group tag) and the one rule for a host (``check_host``),
how a portal is parsed (``parse_portal``: ``host``, ``host:port``, ``[v6]:port``, ``,tpgt``)
and written (``host_port``: ``10.0.0.5:3260``, ``[fe80::1]:3260``), the one rule for iSCSI
names (``iscsi_name_problem`` / ``valid_iscsi_name``: RFC 7143 §4.2.7, RFC 3722), which every
name from a target, a user or a file passes, and ``printable`` for showing an untrusted string
in one log or error line.

Pure: no I/O, no sessions. Names and addresses from a target are untrusted (they end up as file
names and node-record paths): they pass these checks before they are used.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

DEFAULT_PORT = 3260          # IANA iscsi-target port (RFC 7143 §13.8)
DEFAULT_TPGT = 1
MAX_NAME_LENGTH = 223        # RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes
MAX_ADDRESS_LENGTH = 255     # RFC 7143 §6.1: text values are at most 255 bytes

MAX_HOST_NAME_LENGTH = 253  # RFC 1035 §2.3.4 (a name's text without its trailing dot)
# one label of a host name: letters, digits, '-', '_' (names such as my_host resolve on most
# networks, and open-iscsi takes them), never starting with '-', 1-63 characters
_LABEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,62}\Z")
_NUMBER_RE = re.compile(r"[0-9]{1,5}\Z")
# RFC 7143 §4.2.7.2 (iqn.yyyy-mm.reversed-domain[:identifier]); eui.: 16 hex digits;
# naa.: 16 or 32 hex digits (RFC 3980).
_IQN_RE = re.compile(r"iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[A-Za-z0-9][^:]*(:.*)?\Z", re.DOTALL)
_EUI_RE = re.compile(r"eui\.[0-9A-Fa-f]{16}\Z")
_NAA_RE = re.compile(r"naa\.(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})\Z")


@dataclass(frozen=True, order=True)
class Portal:
    """A target portal: host (name, IPv4 or IPv6 address), TCP port and portal group tag."""

    host: str
    port: int = DEFAULT_PORT
    tpgt: int = DEFAULT_TPGT

    def __post_init__(self) -> None:
        # the one host rule; an address is kept as ipaddress writes it (fe80::1, no brackets)
        object.__setattr__(self, "host", check_host(self.host))
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 1 <= self.port <= 65535:
            raise ValueError(f"invalid port {self.port!r} (1-65535)")
        if isinstance(self.tpgt, bool) or not isinstance(self.tpgt, int) \
                or not 0 <= self.tpgt <= 65535:
            raise ValueError(f"invalid portal group tag {self.tpgt!r} (0-65535)")

    @property
    def address(self) -> str:
        """``host:port`` with IPv6 addresses in brackets (also a portal's directory name)."""
        return host_port(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.address},{self.tpgt}"


def format_host(host: str) -> str:
    """An IPv6 address in brackets, any other host as it is."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_port(host: str, port: int) -> str:
    """``10.0.0.5:3260`` / ``[fe80::1]:3260``: how a portal address is written everywhere."""
    return f"{format_host(host)}:{port}"


def printable(value: object, limit: int = 80) -> str:
    """An untrusted value for one log or error line: quoted, escaped to ASCII, bounded."""
    if isinstance(value, str) and len(value) > limit:
        size = len(value.encode("utf-8", "surrogatepass"))
        return f"{ascii(value[:limit])}... ({size} bytes)"
    return ascii(value)


def check_host(host: object) -> str:
    """The one rule for a portal's host, wherever it comes from (a user, a file, a target):
    an IPv4 address, an IPv6 address (brackets allowed and dropped; a ``%zone`` too), or a
    host name of dot-separated labels of letters, digits, ``-`` and ``_`` (none starting with
    ``-``, 63 characters at most, 253 in all; a trailing dot is allowed). Returns the host as
    it is stored and shown: addresses as ``ipaddress`` writes them (``fe80::1``), names as
    given. ValueError saying what is wrong otherwise."""
    if not isinstance(host, str) or not host:
        raise ValueError("empty host in portal")
    if host.startswith("[") and host.endswith("]") and ":" in host:
        host = host[1:-1]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host[:60]!r}") from None
    labels = host.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels if label):
        try:            # all digits: an IPv4 address, never a name a resolver reads as one
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host[:60]!r}") from None
    if len(host.removesuffix(".")) > MAX_HOST_NAME_LENGTH \
            or not all(_LABEL_RE.match(label) for label in labels):
        raise ValueError(f"invalid host name {host[:60]!r}")
    return host


def host_problem(host: object) -> str | None:
    """Why ``host`` breaks ``check_host``'s rule, or None."""
    try:
        check_host(host)
    except ValueError as exc:
        return str(exc)
    return None


def parse_portal(text: str, *, default_port: int = DEFAULT_PORT,
                 default_tpgt: int = DEFAULT_TPGT) -> Portal:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, each optionally followed by
    ``,tpgt`` (RFC 7143 §13.8 TargetAddress syntax). A bare IPv6 address without brackets is
    accepted (it cannot carry a port). ValueError otherwise, saying what is wrong (the caller
    names the text: ``bad portal '...': invalid port 'x'``)."""
    if not isinstance(text, str):
        raise ValueError("portal must be a string")
    text = text.strip()
    if not text:
        raise ValueError("empty portal address")
    tpgt = default_tpgt
    port = default_port
    if "," in text:
        text, _, tag = text.rpartition(",")
        if not _NUMBER_RE.match(tag):
            raise ValueError(f"invalid portal group tag {tag[:20]!r}")
        tpgt = int(tag)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']'")
        if rest:
            if not rest.startswith(":") or not _NUMBER_RE.match(rest[1:]):
                raise ValueError(f"invalid port {rest[1:21]!r}")
            port = int(rest[1:])
        if ":" not in host:
            raise ValueError("brackets are only for IPv6 addresses")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not _NUMBER_RE.match(port_text):
            raise ValueError(f"invalid port {port_text[:20]!r}")
        port = int(port_text)
    else:
        host = text       # a host name, an IPv4 address or a bare IPv6 address
    return Portal(host, port, tpgt)


def iscsi_name_problem(name: object) -> str | None:
    """Why ``name`` is not a well-formed iSCSI name that is also safe as a path component, or
    None if it is one: iqn./eui./naa. form (an iqn. date has a month 01-12), at most 223
    bytes, no ``/`` or ``\\``, no ``..``, no whitespace, control, format (zero-width) or other
    non-printable characters (RFC 7143 §4.2.7, RFC 3722 stringprep)."""
    if not isinstance(name, str) or not name:
        return "empty name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} bytes"
    if any(ch.isspace() or unicodedata.category(ch)[0] in ("C", "Z") for ch in name):
        return "contains control characters or white space"
    if "/" in name or "\\" in name:
        return "contains a slash"
    if ".." in name:
        return "contains '..'"
    prefix = name[:4].lower()
    form = {"iqn.": _IQN_RE, "eui.": _EUI_RE, "naa.": _NAA_RE}.get(prefix)
    if form is None or not form.match(prefix + name[4:]):
        return "not an iqn.yyyy-mm.domain[:id], eui. or naa. name"
    return None


def valid_iscsi_name(name: object) -> bool:
    """True if ``name`` is a well-formed iSCSI name that is also safe to use as a path
    component (see ``iscsi_name_problem``)."""
    return iscsi_name_problem(name) is None
