"""A TCP connection that carries iSCSI PDUs.

Owns: the socket, the PDU decoder, the order of outgoing bytes (one ``trio.StrictFIFOLock``) and
the byte counters. Knows nothing of sessions, CmdSN or SCSI: it moves PDUs. Exactly one task may
call :meth:`Transport.receive_pdu` at a time (the login code, then the session's reader task).
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from ..core.discovery import Portal
from ..core.pdu import PduDecoder, encode, summary
from ..errors import ConnectionLost, os_reason

log = logging.getLogger(__name__)

# Receive this much per recv call: several maximal PDUs when the target streams Data-In.
RECV_CHUNK = 1024 * 1024
# Buffers smaller than this are joined before sending; larger ones go out as they are.
COALESCE = 64 * 1024


class Transport:
    """One TCP stream: ordered sends under a lock, PDUs out of an incremental decoder."""

    def __init__(self, stream: trio.SocketStream, portal: Portal):
        self.stream = stream
        self.portal = portal
        self.decoder = PduDecoder()
        self.send_lock = trio.StrictFIFOLock()
        self.header_digest = False      # digests start after login (RFC 7143 §13.1)
        self.data_digest = False
        self.tx_bytes = 0
        self.rx_bytes = 0
        self._closed = False
        sock = stream.socket
        try:
            self.local_address = sock.getsockname()[0]
        except OSError:  # pragma: no cover - socket already dead
            self.local_address = ""

    @classmethod
    async def open(cls, portal: Portal) -> Transport:
        """Connect to a portal. The caller bounds the time with ``fail_after``."""
        try:
            stream = await trio.open_tcp_stream(portal.host, portal.port)
        except OSError as exc:
            reason = os_reason(exc)
            if isinstance(exc, socket.gaierror):
                reason = f"cannot resolve {portal.host}"
            raise ConnectionLost(f"cannot connect to {portal.host}:{portal.port}: {reason}") from None
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        return cls(stream, portal)

    def set_digests(self, header: bool, data: bool, max_recv: int) -> None:
        """Switch the decoder to the values negotiated at login (§13.1, §13.12)."""
        self.decoder.header_digest = header
        self.decoder.data_digest = data
        self.decoder.max_data_segment_length = max_recv
        self.header_digest = header
        self.data_digest = data

    async def send_pdu(self, pdu) -> None:
        """Encode and send one PDU (login and logout; the full feature phase uses send_buffers)."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("send %s", summary(pdu))
        await self.send_buffers(encode(pdu, header_digest=self.header_digest,
                                       data_digest=self.data_digest))

    async def send_buffers(self, buffers) -> None:
        """Send encoded PDU bytes in order (login and logout PDUs)."""
        if buffers:
            async with self.send_lock:
                await self._send(buffers)

    async def send_pending(self, take) -> None:
        """Send what ``take()`` returns, taken while holding the send lock.

        ``take`` is ``Connection.data_to_send``: whoever holds the lock drains every PDU the
        state machine queued so far, so PDUs leave in exactly the order they were produced,
        whichever task sends them. The send itself is shielded: a cancelled caller must never
        leave half a PDU on the wire (closing the stream still interrupts it).
        """
        async with self.send_lock:
            buffers = take()
            if buffers:
                with trio.CancelScope(shield=True):
                    await self._send(buffers)

    async def _send(self, buffers) -> None:
        """Small pieces are joined, large payloads (write data) go out as they are."""
        pending = bytearray()
        try:
            for buf in buffers:
                n = len(buf)
                if n == 0:
                    continue
                self.tx_bytes += n
                if n < COALESCE:
                    pending += buf
                    if len(pending) >= COALESCE:
                        await self.stream.send_all(pending)
                        pending = bytearray()
                else:
                    if pending:
                        await self.stream.send_all(pending)
                        pending = bytearray()
                    await self.stream.send_all(buf)
            if pending:
                await self.stream.send_all(pending)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"connection to {self.portal} lost while sending: {_why(exc)}") from None

    async def receive_pdu(self):
        """Return the next PDU from the target; raises ConnectionLost at EOF or on error."""
        decoder = self.decoder
        while True:
            pdu = decoder.next_pdu()
            if pdu is not None:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("recv %s", summary(pdu))
                return pdu
            try:
                data = await self.stream.receive_some(RECV_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"connection to {self.portal} lost: {_why(exc)}") from None
            if not data:
                raise ConnectionLost(f"connection to {self.portal} closed by the target")
            self.rx_bytes += len(data)
            decoder.feed(data)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, OSError):
                pass


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)) + " " + (exc.strerror or "")
    return str(exc) or type(exc).__name__
