"""iSNSP, the Internet Storage Name Service Protocol (RFC 4171), as an iSCSI initiator uses it
to find targets: sans-IO, bytes in and typed messages out.

Owns: the PDU header and attribute TLV layouts, the function IDs, flags, attribute tags and
status codes an initiator meets, typed messages (``IsnsRequest`` and ``IsnsResponse``, plus
``ServerMessage`` for what a server sends unasked), ``encode`` (a message as one or more PDUs)
and ``IsnsDecoder`` (bytes in, whole messages out: the PDUs of a message reassembled, an
authentication block skipped), the three requests an initiator sends (``query_targets``,
``register_initiator``, ``deregister_initiator``: what open-iscsi's ``iscsiadm -m discovery
-t isns`` sends), and ``targets_from_response`` (a DevAttrQry answer -> ``DiscoveredTarget``).

Knows nothing of sockets or trio (``iscsifs.net.isns`` runs the exchange). What a server sends
is untrusted: every length is checked before use, iSCSI names pass ``valid_iscsi_name`` (an
invalid one is logged and dropped, never used as a path), and every error is a
``RemoteProtocolError``. Authentication blocks (RFC 4171 §6.5, DSA signatures) are skipped, not
verified, as open-iscsi's client does (it has no key either).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import struct
from dataclasses import dataclass

from iscsifs.core.discovery import DiscoveredTarget
from iscsifs.core.names import Portal, printable, valid_iscsi_name
from iscsifs.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

ISNS_PORT = 3205              # IANA's iSNS port (RFC 4171 §5.1)
ISNSP_VERSION = 1             # §5.1.1
# §5.1: the PDU Length field is 16 bits; we send payloads of at most this (a multiple of 4)
MAX_PDU_PAYLOAD = 65532
# What we accept as one reassembled message (a large database answer is a few hundred KiB)
MAX_MESSAGE = 4 << 20
MAX_STRING = 4096             # longest string attribute we accept (iSCSI names: 223 bytes)

# §5.1: iSNSP Version, Function ID, PDU Length, Flags, Transaction ID, Sequence ID
_HEADER = struct.Struct(">HHHHHH")
# §5.5: Attribute Tag, Attribute Length (then the value, Length bytes, a multiple of 4)
_TLV = struct.Struct(">II")
# §5.7: a response's payload starts with its Status Code
_STATUS = struct.Struct(">I")
# §6.1: Unsigned Integer attributes (node type, port, PG tag, ...)
_UINT32 = struct.Struct(">I")
# §5.1.4 / §6.5: an authentication block follows the PDU payload: Block Structure Descriptor,
# Authentication Block Length (of the whole block), then timestamp, SPI and signature
_AUTH_BLOCK = struct.Struct(">II")
_AUTH_BLOCK_MIN = 20          # BSD + length + 64-bit timestamp + SPI length

HEADER_SIZE = _HEADER.size


class FunctionId(enum.IntEnum):
    """§5.1.3: the functions (a response is the request's ID | RESPONSE)."""

    DEV_ATTR_REG = 0x0001
    DEV_ATTR_QRY = 0x0002
    DEV_GET_NEXT = 0x0003
    DEV_DEREG = 0x0004
    SCN_REG = 0x0005
    SCN_DEREG = 0x0006
    SCN_EVENT = 0x0007
    SCN = 0x0008
    DD_REG = 0x0009
    DD_DEREG = 0x000A
    DDS_REG = 0x000B
    DDS_DEREG = 0x000C
    ESI = 0x000D
    HEARTBEAT = 0x000E
    RESPONSE = 0x8000


# Messages a server sends without being asked; they carry no Source attribute (§5.6.5)
SERVER_FUNCTIONS = frozenset({FunctionId.SCN, FunctionId.ESI})


class Flag(enum.IntFlag):
    """§5.1.4: the Flags field."""

    CLIENT = 0x8000           # sender is the iSNS client
    SERVER = 0x4000           # sender is the iSNS server
    AUTH = 0x2000             # an authentication block follows the payload
    REPLACE = 0x1000          # DevAttrReg replaces the entity's registration
    LAST_PDU = 0x0800         # last PDU of the message
    FIRST_PDU = 0x0400        # first PDU of the message


class Tag(enum.IntEnum):
    """§6.1: the attribute tags an iSCSI initiator uses."""

    DELIMITER = 0
    ENTITY_IDENTIFIER = 1
    ENTITY_PROTOCOL = 2
    PORTAL_IP_ADDRESS = 16
    PORTAL_TCP_UDP_PORT = 17
    PORTAL_SYMBOLIC_NAME = 18
    ISCSI_NAME = 32
    ISCSI_NODE_TYPE = 33
    ISCSI_ALIAS = 34
    PG_ISCSI_NAME = 48
    PG_PORTAL_IP_ADDR = 49
    PG_PORTAL_TCP_UDP_PORT = 50
    PG_TAG = 51
    PG_INDEX = 52


class Status(enum.IntEnum):
    """§5.7.3: response status codes."""

    SUCCESSFUL = 0
    UNKNOWN_ERROR = 1
    MESSAGE_FORMAT_ERROR = 2
    INVALID_REGISTRATION = 3
    INVALID_QUERY = 5
    SOURCE_UNKNOWN = 6
    SOURCE_ABSENT = 7
    SOURCE_UNAUTHORIZED = 8
    NO_SUCH_ENTRY = 9
    VERSION_NOT_SUPPORTED = 10
    INTERNAL_ERROR = 11
    BUSY = 12
    OPTION_NOT_UNDERSTOOD = 13
    INVALID_UPDATE = 14
    MESSAGE_NOT_SUPPORTED = 15
    SCN_EVENT_REJECTED = 16
    SCN_REGISTRATION_REJECTED = 17
    ATTRIBUTE_NOT_IMPLEMENTED = 18
    ESI_NOT_AVAILABLE = 21
    INVALID_DEREGISTRATION = 22
    REGISTRATION_FEATURE_NOT_SUPPORTED = 23


def status_text(status: int) -> str:
    """``Source Unknown (status 6)``: a status code as a log or error line shows it."""
    try:
        name = Status(status).name.replace("_", " ").title().replace("Scn", "SCN") \
            .replace("Esi", "ESI")
    except ValueError:
        name = "unknown status"
    return f"{name} (status {status})"


class NodeType(enum.IntFlag):
    """§6.4.2: iSCSI Node Type bits (RFC bit 31 is the least significant)."""

    TARGET = 0x1
    INITIATOR = 0x2
    CONTROL = 0x4


_UDP_FLAG = 0x10000           # §6.3.2: bit 15 of a TCP/UDP Port attribute: the port is UDP

# Which object an attribute describes (§6.1 tag ranges), for splitting a response into objects
_ENTITY, _PORTAL, _NODE, _PG = "entity", "portal", "node", "portal group"


def _object_kind(tag: int) -> str | None:
    if 1 <= tag <= 15:
        return _ENTITY
    if 16 <= tag <= 31:
        return _PORTAL
    if 32 <= tag <= 47:
        return _NODE
    if 48 <= tag <= 63:
        return _PG
    return None


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


# ---------------------------------------------------------------------- attributes
@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute (§5.5): its tag and its value as on the wire (a multiple of 4 bytes).
    An empty value is a *nil* attribute: in a query, it asks for that attribute."""

    tag: int
    value: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.tag <= 0xFFFFFFFF:
            raise LocalProtocolError(f"iSNS attribute tag {self.tag} out of range")
        if len(self.value) % 4:
            raise LocalProtocolError(f"iSNS attribute {self.tag}: value of {len(self.value)} "
                                     "bytes is not a multiple of 4")

    @classmethod
    def string(cls, tag: int, text: str) -> Attribute:
        """§6.1 "String": UTF-8, NUL-terminated, padded to 4 bytes."""
        return cls(tag, _pad(text.encode("utf-8") + b"\0"))

    @classmethod
    def uint32(cls, tag: int, number: int) -> Attribute:
        return cls(tag, _UINT32.pack(number))

    @classmethod
    def ip(cls, tag: int, address: str) -> Attribute:
        """§6.3.1: 16 bytes, an IPv4 address as IPv4-mapped IPv6 (``::ffff:a.b.c.d``)."""
        addr = ipaddress.ip_address(address)
        if addr.version == 4:
            addr = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
        return cls(tag, addr.packed)

    @classmethod
    def nil(cls, tag: int) -> Attribute:
        return cls(tag)

    @property
    def is_nil(self) -> bool:
        return not self.value

    def text(self) -> str:
        """The value as a string (up to its NUL). RemoteProtocolError if it has no NUL, is
        too long or is not UTF-8."""
        end = self.value.find(b"\0")
        if end < 0:
            raise RemoteProtocolError(f"iSNS string attribute {self.tag} is not "
                                      "NUL-terminated")
        if end > MAX_STRING:
            raise RemoteProtocolError(f"iSNS string attribute {self.tag} is {end} bytes long")
        try:
            return self.value[:end].decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"iSNS string attribute {self.tag} is not UTF-8") \
                from None

    def number(self) -> int:
        if len(self.value) != 4:
            raise RemoteProtocolError(f"iSNS integer attribute {self.tag} has "
                                      f"{len(self.value)} bytes, not 4")
        return _UINT32.unpack(self.value)[0]

    def address(self) -> str:
        """An IP address attribute as text (an IPv4-mapped one as dotted IPv4)."""
        if len(self.value) != 16:
            raise RemoteProtocolError(f"iSNS address attribute {self.tag} has "
                                      f"{len(self.value)} bytes, not 16")
        addr = ipaddress.IPv6Address(self.value)
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if self.value[:12] == b"\0" * 12 and self.value[12:] != b"\0\0\0\0" \
                and self.value[12:] != b"\0\0\0\1":
            return str(ipaddress.IPv4Address(self.value[12:]))    # IPv4-compatible (old)
        return str(addr)

    def encode(self) -> bytes:
        return _TLV.pack(self.tag, len(self.value)) + self.value


DELIMITER = Attribute(Tag.DELIMITER)


def _encode_attributes(attrs) -> bytes:
    return b"".join(a.encode() for a in attrs)


def decode_attributes(payload: bytes | memoryview) -> list[Attribute]:
    """The TLVs of a payload, in order. RemoteProtocolError for a truncated one or a length
    that is not a multiple of 4."""
    view = memoryview(payload)
    attrs = []
    pos = 0
    while pos < len(view):
        if len(view) - pos < _TLV.size:
            raise RemoteProtocolError(f"iSNS message ends inside an attribute header "
                                      f"({len(view) - pos} bytes left)")
        tag, length = _TLV.unpack_from(view, pos)
        pos += _TLV.size
        if length % 4:
            raise RemoteProtocolError(f"iSNS attribute {tag} has length {length}, not a "
                                      "multiple of 4")
        if length > len(view) - pos:
            raise RemoteProtocolError(f"iSNS attribute {tag} of {length} bytes runs past the "
                                      f"end of the message ({len(view) - pos} bytes left)")
        attrs.append(Attribute(tag, bytes(view[pos:pos + length])))
        pos += length
    return attrs


def _split_delimited(attrs: list[Attribute]) -> tuple[tuple[Attribute, ...],
                                                      tuple[Attribute, ...]]:
    """(message key, operating attributes) around the first delimiter (§5.6.1); without a
    delimiter everything is message key."""
    for i, attr in enumerate(attrs):
        if attr.tag == Tag.DELIMITER:
            if attr.value:
                raise RemoteProtocolError("iSNS delimiter attribute with a value")
            return tuple(attrs[:i]), tuple(attrs[i + 1:])
    return tuple(attrs), ()


# ---------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class IsnsRequest:
    """A client's message (§5.6.1): Source, Message Key, Delimiter, Operating Attributes."""

    function: int
    transaction_id: int
    source: Attribute
    keys: tuple[Attribute, ...] = ()
    operating: tuple[Attribute, ...] = ()
    replace: bool = False

    def payload(self) -> bytes:
        return (self.source.encode() + _encode_attributes(self.keys) + DELIMITER.encode()
                + _encode_attributes(self.operating))

    @property
    def flags(self) -> int:
        return Flag.CLIENT | (Flag.REPLACE if self.replace else 0)


@dataclass(frozen=True, slots=True)
class IsnsResponse:
    """A server's answer (§5.7): Status Code, Message Key, Delimiter, Operating Attributes.
    ``function`` is the request's function ID (without ``RESPONSE``)."""

    function: int
    transaction_id: int
    status: int
    keys: tuple[Attribute, ...] = ()
    operating: tuple[Attribute, ...] = ()

    def payload(self) -> bytes:
        body = _STATUS.pack(self.status)
        if self.keys or self.operating:
            body += (_encode_attributes(self.keys) + DELIMITER.encode()
                     + _encode_attributes(self.operating))
        return body

    @property
    def flags(self) -> int:
        return Flag.SERVER


@dataclass(frozen=True, slots=True)
class ServerMessage:
    """A message a server sends unasked (SCN, ESI: §5.6.5.13, §5.6.5.14); an initiator that
    registered no portal never gets one, and ignores them."""

    function: int
    transaction_id: int
    attributes: tuple[Attribute, ...] = ()

    def payload(self) -> bytes:
        return _encode_attributes(self.attributes)

    @property
    def flags(self) -> int:
        return Flag.SERVER


IsnsMessage = IsnsRequest | IsnsResponse | ServerMessage


def encode(message: IsnsMessage) -> bytes:
    """A message as PDUs (§5.1), split every ``MAX_PDU_PAYLOAD`` bytes, sequence IDs from 0,
    FIRST_PDU on the first and LAST_PDU on the last."""
    function = message.function | (FunctionId.RESPONSE if isinstance(message, IsnsResponse)
                                    else 0)
    if not 0 <= message.transaction_id <= 0xFFFF:
        raise LocalProtocolError(f"iSNS transaction ID {message.transaction_id} out of range")
    payload = message.payload()
    chunks = [payload[i:i + MAX_PDU_PAYLOAD]
              for i in range(0, len(payload), MAX_PDU_PAYLOAD)] or [b""]
    if len(chunks) > 0xFFFF:
        raise LocalProtocolError("iSNS message too large")
    out = []
    for seq, chunk in enumerate(chunks):
        flags = message.flags
        if seq == 0:
            flags |= Flag.FIRST_PDU
        if seq == len(chunks) - 1:
            flags |= Flag.LAST_PDU
        out.append(_HEADER.pack(ISNSP_VERSION, function, len(chunk), flags,
                                message.transaction_id, seq))
        out.append(chunk)
    return b"".join(out)


def decode_message(function: int, transaction_id: int, flags: int,
                   payload: bytes) -> IsnsMessage:
    """A reassembled message's payload as a typed message."""
    if function & FunctionId.RESPONSE:
        if len(payload) < _STATUS.size:
            raise RemoteProtocolError(f"iSNS response of {len(payload)} bytes has no status")
        (status,) = _STATUS.unpack_from(payload)
        keys, operating = _split_delimited(decode_attributes(memoryview(payload)[4:]))
        return IsnsResponse(function & ~FunctionId.RESPONSE, transaction_id, status, keys,
                            operating)
    attrs = decode_attributes(payload)
    if function in SERVER_FUNCTIONS:
        return ServerMessage(function, transaction_id, tuple(attrs))
    if not attrs:
        raise RemoteProtocolError(f"iSNS request 0x{function:04x} has no Source attribute")
    keys, operating = _split_delimited(attrs[1:])
    return IsnsRequest(function, transaction_id, attrs[0], keys, operating,
                       bool(flags & Flag.REPLACE))


class IsnsDecoder:
    """Bytes in (``feed``), whole messages out (``next_message``, None until one is complete).

    The PDUs of one message must arrive in order (sequence IDs 0, 1, ...), the first with
    FIRST_PDU, the last with LAST_PDU, all with the same function and transaction ID. Once it
    has raised RemoteProtocolError the decoder stays broken (the connection is useless)."""

    def __init__(self, max_message: int = MAX_MESSAGE):
        self.max_message = max_message
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._current: tuple[int, int, int] | None = None   # (function, xid, flags)
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received that are not part of a returned message yet."""
        return len(self._buffer) + self._size

    def next_message(self) -> IsnsMessage | None:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> IsnsMessage | None:
        while True:
            buf = self._buffer
            if len(buf) < HEADER_SIZE:
                return None
            version, function, length, flags, xid, seq = _HEADER.unpack_from(buf)
            if version != ISNSP_VERSION:
                raise RemoteProtocolError(f"iSNSP version {version} is not supported "
                                          f"(expected {ISNSP_VERSION})")
            total = HEADER_SIZE + length
            if flags & Flag.AUTH:
                if len(buf) < total + _AUTH_BLOCK.size:
                    return None
                _bsd, auth_length = _AUTH_BLOCK.unpack_from(buf, total)
                if not _AUTH_BLOCK_MIN <= auth_length <= self.max_message:
                    raise RemoteProtocolError(f"iSNS authentication block of length "
                                              f"{auth_length}")
                total += auth_length
            if len(buf) < total:
                if total > self.max_message + HEADER_SIZE + MAX_PDU_PAYLOAD:
                    raise RemoteProtocolError(f"iSNS PDU of {total} bytes")
                return None
            payload = bytes(buf[HEADER_SIZE:HEADER_SIZE + length])
            del buf[:total]
            message = self._add_pdu(function, length, flags, xid, seq, payload)
            if message is not None:
                return message

    def _add_pdu(self, function: int, length: int, flags: int, xid: int, seq: int,
                 payload: bytes) -> IsnsMessage | None:
        if self._current is None:
            if not flags & Flag.FIRST_PDU or seq != 0:
                raise RemoteProtocolError(f"iSNS PDU (transaction {xid}, sequence {seq}) "
                                          "starts no message and continues none")
            self._current = (function, xid, flags)
        else:
            cur_function, cur_xid, _flags = self._current
            if (function, xid) != (cur_function, cur_xid) or seq != len(self._parts) \
                    or flags & Flag.FIRST_PDU:
                raise RemoteProtocolError(
                    f"iSNS PDU (function 0x{function:04x}, transaction {xid}, sequence {seq}) "
                    f"inside message 0x{cur_function:04x}/{cur_xid} at sequence "
                    f"{len(self._parts)}")
        self._size += length
        if self._size > self.max_message:
            raise RemoteProtocolError(f"iSNS message longer than {self.max_message} bytes")
        self._parts.append(payload)
        if not flags & Flag.LAST_PDU:
            return None
        function, xid, first_flags = self._current
        data = b"".join(self._parts)
        self._parts, self._size, self._current = [], 0, None
        return decode_message(function, xid, first_flags, data)


# ---------------------------------------------------------------------- an initiator's requests
# What a DevAttrQry for targets asks back (open-iscsi's list, plus the Entity Identifier, which
# tells the entities apart for servers that register no portal groups)
TARGET_QUERY_ATTRIBUTES = (
    Tag.ENTITY_IDENTIFIER, Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_TCP_UDP_PORT, Tag.ISCSI_NAME,
    Tag.ISCSI_NODE_TYPE, Tag.ISCSI_ALIAS, Tag.PG_ISCSI_NAME, Tag.PG_PORTAL_IP_ADDR,
    Tag.PG_PORTAL_TCP_UDP_PORT, Tag.PG_TAG,
)


def query_targets(source: str, transaction_id: int) -> IsnsRequest:
    """DevAttrQry (§5.6.5.2) for every iSCSI node of type Target the source may see, with
    their portals and portal groups."""
    return IsnsRequest(FunctionId.DEV_ATTR_QRY, transaction_id,
                       Attribute.string(Tag.ISCSI_NAME, source),
                       keys=(Attribute.uint32(Tag.ISCSI_NODE_TYPE, NodeType.TARGET),),
                       operating=tuple(Attribute.nil(t) for t in TARGET_QUERY_ATTRIBUTES))


def register_initiator(source: str, transaction_id: int) -> IsnsRequest:
    """DevAttrReg (§5.6.5.1) of the initiator node alone (no portal: the server then has no
    reason to send it ESI or SCN messages), for a server that lets only registered nodes
    query: open-iscsi does the same, and deregisters after the query."""
    return IsnsRequest(FunctionId.DEV_ATTR_REG, transaction_id,
                       Attribute.string(Tag.ISCSI_NAME, source),
                       operating=(Attribute.string(Tag.ISCSI_NAME, source),
                                  Attribute.uint32(Tag.ISCSI_NODE_TYPE, NodeType.INITIATOR)))


def deregister_initiator(source: str, transaction_id: int) -> IsnsRequest:
    """DevDereg (§5.6.5.4) of the initiator node registered by ``register_initiator``."""
    return IsnsRequest(FunctionId.DEV_DEREG, transaction_id,
                       Attribute.string(Tag.ISCSI_NAME, source),
                       operating=(Attribute.string(Tag.ISCSI_NAME, source),))


# ---------------------------------------------------------------------- a query's answer
@dataclass
class _Object:
    kind: str
    attrs: dict[int, Attribute]
    entity: int             # index of the entity it follows (-1: none seen)


def split_objects(attrs) -> list[_Object]:
    """The operating attributes of a DevAttrQry answer as objects (§5.6.5.2: each object's
    attributes together, its key first; an entity's portals and nodes after it)."""
    objects: list[_Object] = []
    entity = -1
    for attr in attrs:
        kind = _object_kind(attr.tag)
        if kind is None:
            continue
        cur = objects[-1] if objects else None
        # a new object: another kind, or an attribute this object already has (its key
        # attribute again: the next object of the same kind)
        if cur is None or cur.kind != kind or attr.tag in cur.attrs:
            if kind == _ENTITY:
                entity += 1
            cur = _Object(kind, {}, entity)
            objects.append(cur)
        cur.attrs[attr.tag] = attr
    return objects


def _portal(addr: Attribute | None, port: Attribute | None, tpgt: int) -> Portal | None:
    """A TCP portal from address and port attributes; None for a UDP port or missing parts.
    ValueError / RemoteProtocolError for bad values."""
    if addr is None or port is None or addr.is_nil or port.is_nil:
        return None
    number = port.number()
    if number & _UDP_FLAG:
        return None
    return Portal(addr.address(), number & 0xFFFF, tpgt)


def split_targets(response: IsnsResponse) -> tuple[list[DiscoveredTarget], list[str]]:
    """The targets of a DevAttrQry answer and their portals; and what was dropped, for the
    log (``(targets, rejected)``, as ``core.discovery.split_sendtargets``).

    A target's portals are those of its portal groups (§3.4: PG iSCSI Name, PG Portal, PG Tag;
    a PG with a nil tag grants no access). A target with no portal group at all is reached
    through every portal of its entity, with tag 1."""
    objects = split_objects(response.operating)
    rejected: list[str] = []
    order: list[str] = []
    nodes: dict[str, _Object] = {}
    for obj in objects:
        if obj.kind != _NODE or Tag.ISCSI_NAME not in obj.attrs:
            continue
        node_type = obj.attrs.get(Tag.ISCSI_NODE_TYPE)
        if node_type is None or node_type.is_nil or not node_type.number() & NodeType.TARGET:
            continue
        name = obj.attrs[Tag.ISCSI_NAME].text()
        if not valid_iscsi_name(name):
            rejected.append(f"invalid target name {printable(name)}")
            continue
        if name not in nodes:
            order.append(name)
            nodes[name] = obj
    portals: dict[str, list[Portal]] = {name: [] for name in order}
    with_groups: set[str] = set()
    for obj in objects:
        if obj.kind != _PG or Tag.PG_ISCSI_NAME not in obj.attrs:
            continue
        name = obj.attrs[Tag.PG_ISCSI_NAME].text()
        if name not in portals:
            continue
        with_groups.add(name)
        tag = obj.attrs.get(Tag.PG_TAG)
        if tag is None or tag.is_nil:
            continue                   # a nil PGT: no access through that portal
        try:
            portal = _portal(obj.attrs.get(Tag.PG_PORTAL_IP_ADDR),
                             obj.attrs.get(Tag.PG_PORTAL_TCP_UDP_PORT), tag.number())
        except ValueError as exc:
            rejected.append(f"invalid portal for {name}: {exc}")
            continue
        if portal is not None and portal not in portals[name]:
            portals[name].append(portal)
    for name in order:
        if name in with_groups:
            continue
        entity = nodes[name].entity
        for obj in objects:
            if obj.kind != _PORTAL or obj.entity != entity:
                continue
            try:
                portal = _portal(obj.attrs.get(Tag.PORTAL_IP_ADDRESS),
                                 obj.attrs.get(Tag.PORTAL_TCP_UDP_PORT), 1)
            except ValueError as exc:
                rejected.append(f"invalid portal for {name}: {exc}")
                continue
            if portal is not None and portal not in portals[name]:
                portals[name].append(portal)
    for name in order:
        if not portals[name]:
            rejected.append(f"target {name} has no portal an initiator may use")
    targets = [DiscoveredTarget(name, tuple(portals[name])) for name in order if portals[name]]
    return targets, rejected


def targets_from_response(response: IsnsResponse) -> list[DiscoveredTarget]:
    """``split_targets``, with what was dropped logged (a warning for bad names and
    addresses)."""
    targets, rejected = split_targets(response)
    for what in rejected:
        if what.startswith("target "):
            log.info("iSNS: %s", what)
        else:
            log.warning("iSNS discovery: dropping %s", what)
    return targets
