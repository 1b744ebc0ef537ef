"""iSNS discovery (RFC 4171) over one short TCP connection to the iSNS server.

Owns: the exchange ``iscsiadm -m discovery -t isns`` makes: a DevAttrQry for the targets the
initiator may see; if the server answers *Source Unknown* (it lets only registered nodes ask),
a DevAttrReg of the initiator, the query again, and a DevDereg afterwards. The protocol itself
(messages, TLVs, reassembly, what the answer means) is ``iscsifs.core.isns``; this module only
moves bytes. The caller bounds the whole exchange with ``fail_after``; each answer is also
awaited at most ``timeout`` seconds.
"""

from __future__ import annotations

import logging
import secrets

import trio

from ..core.discovery import DiscoveredTarget
from ..core.isns import (IsnsDecoder, IsnsRequest, IsnsResponse, Status,
                         deregister_initiator, encode, query_targets, register_initiator,
                         status_text, targets_from_response)
from ..core.names import Portal
from ..errors import ConnectionLost, IsnsError, RemoteProtocolError
from .transport import Connector, open_tcp

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536


class _Client:
    """One connection to an iSNS server: a request, then its answer."""

    def __init__(self, stream: trio.SocketStream, server: Portal, timeout: float):
        self.stream = stream
        self.server = server
        self.timeout = timeout
        self.decoder = IsnsDecoder()
        self._xid = secrets.randbelow(0xF000)

    def next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFF
        return self._xid

    async def call(self, request: IsnsRequest) -> IsnsResponse:
        where = self.server.address
        try:
            await self.stream.send_all(encode(request))
            with trio.fail_after(self.timeout):
                while True:
                    message = self.decoder.next_message()
                    if message is None:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                        if not data:
                            raise ConnectionLost(f"iSNS server {where} closed the connection")
                        self.decoder.feed(data)
                        continue
                    if not isinstance(message, IsnsResponse):
                        log.debug("iSNS server %s sent function 0x%04x unasked; ignored",
                                  where, message.function)
                        continue
                    if (message.function, message.transaction_id) != \
                            (request.function, request.transaction_id):
                        raise RemoteProtocolError(
                            f"iSNS server {where} answered function 0x{message.function:04x} "
                            f"transaction {message.transaction_id} to function "
                            f"0x{request.function:04x} transaction {request.transaction_id}")
                    return message
        except trio.TooSlowError:
            raise ConnectionLost(f"iSNS server {where} did not answer within "
                                 f"{self.timeout:g} s") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise ConnectionLost(f"connection to iSNS server {where} lost: {exc}") from None


async def isns_discover(server: Portal, *, initiator_name: str, timeout: float = 15,
                        connector: Connector = open_tcp) -> list[DiscoveredTarget]:
    """The targets (and their portals) the iSNS ``server`` lets ``initiator_name`` see.

    IsnsError when the server refuses (its status code says why) or breaks the protocol,
    ConnectionLost when it cannot be reached or does not answer within ``timeout`` per
    message."""
    try:
        return await _discover(server, initiator_name, timeout, connector)
    except RemoteProtocolError as exc:
        raise IsnsError(f"iSNS server {server.address} broke the protocol: {exc}") from None


async def _discover(server: Portal, initiator_name: str, timeout: float,
                    connector: Connector) -> list[DiscoveredTarget]:
    with trio.fail_after(timeout):
        sock = await connector(server)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    async with stream:
        client = _Client(stream, server, timeout)
        answer = await client.call(query_targets(initiator_name, client.next_xid()))
        registered = False
        if answer.status == Status.SOURCE_UNKNOWN:
            # the server lets only registered nodes query: register, ask, deregister
            log.debug("iSNS server %s does not know %s: registering it for the query",
                      server.address, initiator_name)
            reg = await client.call(register_initiator(initiator_name, client.next_xid()))
            if reg.status != Status.SUCCESSFUL:
                raise IsnsError(f"iSNS server {server.address} refused to register "
                                f"{initiator_name}: {status_text(reg.status)}", reg.status,
                                registration=True)
            registered = True
            answer = await client.call(query_targets(initiator_name, client.next_xid()))
        try:
            if answer.status == Status.NO_SUCH_ENTRY:
                targets: list[DiscoveredTarget] = []     # open-isns: nothing matched
            elif answer.status != Status.SUCCESSFUL:
                raise IsnsError(f"iSNS server {server.address} refused the query: "
                                f"{status_text(answer.status)}", answer.status)
            else:
                targets = targets_from_response(answer)
        finally:
            if registered:
                with trio.move_on_after(timeout):
                    try:
                        dereg = await client.call(deregister_initiator(initiator_name,
                                                                       client.next_xid()))
                        if dereg.status != Status.SUCCESSFUL:
                            log.info("iSNS server %s: deregistering %s: %s", server.address,
                                     initiator_name, status_text(dereg.status))
                    except ConnectionLost as exc:
                        log.info("iSNS server %s: deregistering %s: %s", server.address,
                                 initiator_name, exc)
    log.info("iSNS discovery at %s found %d target(s)", server.address, len(targets))
    return targets

