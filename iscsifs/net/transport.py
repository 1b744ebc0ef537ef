"""A TCP connection that carries iSCSI PDUs.

Owns: the socket, the receive buffer (the PDU decoder's), the order of outgoing bytes and the
byte counters. Knows nothing of sessions, CmdSN or SCSI: it moves bytes and PDUs.

Sending never yields to the scheduler: :meth:`Transport.send` hands the socket as much as it
takes at once (``sendmsg``, many PDUs per call, the caller's buffers as they are) and keeps the
rest, in order, for :meth:`Transport.drain`, which a task of the session runs. Because ``send``
is synchronous, the order of calls is the order on the wire: whoever takes bytes from the
protocol state machine and passes them here in the same step keeps PDUs in the order the state
machine produced them, whichever task that is.

``send(..., batch=True)`` (the session passes it while other commands are in flight) only
queues the buffers and wakes :meth:`drain`, which runs after every task of the current
scheduler pass: the PDUs that several callers produced in one pass leave in one ``sendmsg``.
On loopback a ``sendmsg`` also runs the receiver's side of TCP and wakes the target, so at
queue depth 16 one call for several commands saves most of that cost; a command sent with
nothing else in flight (queue depth 1) still goes at once. Any send first takes what is queued,
so the order on the wire stays the order of the calls.

Receiving goes straight into the decoder's buffer (``recv_into``). Exactly one task at a time
may receive (the login code, then the session's reader task).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from collections import deque
from typing import Awaitable, Callable, Iterable

import trio

from ..core.names import Portal
from ..core.pdu import RECEIVE_CHUNK, PduDecoder, encode, summary
from ..errors import ConnectionLost, SourceAddressError, os_errno, os_reason

log = logging.getLogger(__name__)

# At most this many buffers per sendmsg() (the kernel's IOV_MAX is 1024).
_IOV_BATCH = 512

Connector = Callable[[Portal], Awaitable[socket.socket]]
# Linux: bind() picks no port until connect() does (so many connections may share a source
# address without running out of ports); not in the socket module's constants
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def open_tcp(portal: Portal) -> socket.socket:
    """Connect to a portal (every address it resolves to, trio's happy eyeballs)."""
    try:
        stream = await trio.open_tcp_stream(portal.host, portal.port)
    except OSError as exc:
        # the words every command uses for a portal it cannot reach (mount.iscsifs's check too)
        raise ConnectionLost(f"cannot connect to {portal.address}: "
                             f"{os_reason(exc, portal.host)}", errno=os_errno(exc)) from None
    return _plain_socket(stream.socket)


def _plain_socket(trio_sock) -> socket.socket:
    sock = socket.socket(trio_sock.family, trio_sock.type, trio_sock.proto,
                         fileno=trio_sock.detach())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    return sock


def source_family(source_address: str) -> int:
    """AF_INET or AF_INET6 for a source address (ValueError if it is not an IP address)."""
    return socket.AF_INET6 if ipaddress.ip_address(source_address).version == 6 \
        else socket.AF_INET


async def open_tcp_from(portal: Portal, source_address: str) -> socket.socket:
    """Connect to a portal from ``source_address`` (bound before connecting, as open-iscsi's
    ``iface.ipaddress``): the portal's addresses of that family are tried in turn.
    SourceAddressError if the address cannot be bound here, ConnectionLost otherwise."""
    where = portal.address
    try:
        family = source_family(source_address)
    except ValueError:
        raise SourceAddressError(f"source address {source_address!r} is not an IP address",
                                 errno=errno.EINVAL) from None
    version = "IPv6" if family == socket.AF_INET6 else "IPv4"
    try:
        infos = await trio.socket.getaddrinfo(portal.host, portal.port, family,
                                              socket.SOCK_STREAM)
    except socket.gaierror:
        infos = []
    if not infos:
        raise SourceAddressError(f"cannot connect to {where} from source address "
                                 f"{source_address}: {portal.host} has no {version} address",
                                 errno=errno.EADDRNOTAVAIL)
    last: OSError | None = None
    for fam, kind, proto, _name, sockaddr in infos:
        sock = trio.socket.socket(fam, kind, proto)
        try:
            if fam == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            try:
                await sock.bind((source_address, 0))
            except OSError as exc:
                raise SourceAddressError(
                    f"cannot bind to source address {source_address}: {os_reason(exc)}",
                    errno=exc.errno) from None
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return _plain_socket(sock)
    assert last is not None
    raise ConnectionLost(f"cannot connect to {where} from {source_address}: "
                         f"{os_reason(last, portal.host)}", errno=os_errno(last))


def tcp_connector(source_address: str | None = None) -> Connector:
    """The connector for every connection of a session or a discovery: ``open_tcp``, or
    ``open_tcp_from(source_address)`` when a source address is configured."""
    if not source_address:
        return open_tcp

    async def connect(portal: Portal) -> socket.socket:
        return await open_tcp_from(portal, source_address)
    connect.source_address = source_address  # type: ignore[attr-defined]
    return connect


class Transport:
    """One connection: synchronous ordered sends with a backlog, receives into the decoder."""

    def __init__(self, sock: socket.socket, portal: Portal):
        sock.setblocking(False)
        self.sock = sock
        self.portal = portal
        # Data-In payloads are lent to the connection, which copies them into the reader's
        # buffer before the next receive: one copy per byte read.
        self.decoder = PduDecoder(borrow=True, capacity=RECEIVE_CHUNK)
        self.header_digest = False      # digests start after login (RFC 7143 §13.1)
        self.data_digest = False
        self.tx_bytes = 0
        self.rx_bytes = 0
        self._backlog: deque[memoryview] = deque()   # bytes the socket did not take yet
        self._backlog_changed = trio.Event()
        self._backlog_sent = trio.Event()           # set (and replaced) as drain() sends
        self._sent_event: trio.Event | None = None  # wait_sent() waits for more to go out
        self._batch: list = []          # buffers queued by send(batch=True) for drain()
        self.sendmsg_calls = 0
        self._error: ConnectionLost | None = None
        self._closed = False
        try:
            self.local_address = sock.getsockname()[0]
        except (OSError, IndexError):  # pragma: no cover - socket already dead / AF_UNIX
            self.local_address = ""
        if not isinstance(self.local_address, str):
            self.local_address = ""

    @classmethod
    async def open(cls, portal: Portal, connector: Connector = open_tcp) -> Transport:
        """Connect to a portal. The caller bounds the time with ``fail_after``."""
        return cls(await connector(portal), portal)

    def set_digests(self, header: bool, data: bool, max_recv: int) -> None:
        """Switch the decoder to the values negotiated at login (§13.1, §13.12)."""
        self.decoder.header_digest = header
        self.decoder.data_digest = data
        self.decoder.max_data_segment_length = max_recv
        self.header_digest = header
        self.data_digest = data

    # ------------------------------------------------------------------ sending
    @property
    def backlog(self) -> int:
        """Buffers waiting for the socket (0 when everything sent was taken at once)."""
        return len(self._backlog)

    @property
    def unsent(self) -> int:
        """Bytes passed to :meth:`send` that the socket has not taken yet: everything sent so
        far has left the process once ``tx_bytes`` reaches ``tx_bytes + unsent``."""
        return sum(map(len, self._batch)) + sum(map(len, self._backlog))

    async def wait_sent(self, mark: int) -> None:
        """Wait until ``tx_bytes`` reaches ``mark`` (the socket took everything up to it), or
        until nothing more will be sent (:meth:`discard`, a send error, :meth:`aclose`)."""
        while self.tx_bytes < mark and self._error is None and not self._closed:
            if self._sent_event is None:
                self._sent_event = trio.Event()
            await self._sent_event.wait()

    def _wake_sent(self) -> None:
        event = self._sent_event
        if event is not None:
            self._sent_event = None
            event.set()

    def discard(self) -> None:
        """Give the connection up: what waits to be sent is dropped and :meth:`send` fails
        from now on, at once, whatever task would have sent it next (:meth:`aclose` still
        closes the socket)."""
        if self._error is None:
            self._error = ConnectionLost(f"connection to {self._where()} was given up")
        self._backlog.clear()
        self._batch.clear()
        self._backlog_changed.set()
        self._backlog_sent.set()
        self._wake_sent()

    def send(self, buffers: Iterable[bytes | bytearray | memoryview], *,
             batch: bool = False) -> None:
        """Send ``buffers`` after everything sent before; never blocks, never yields.

        What the socket does not take now stays queued for :meth:`drain`. With ``batch``,
        nothing is sent now: :meth:`drain` sends the buffers of every such call of this
        scheduler pass together. The buffers are not copied: the caller must not change them
        until they are sent (a write's data stays put until its command completes, which is
        after it was sent).
        """
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ConnectionLost(f"connection to {self._where()} is closed")
        if batch:
            if not self._batch:
                self._backlog_changed.set()      # drain() runs after this pass
            self._batch.extend(buffers)
            return
        if self._batch:
            buffers = self._batch + list(buffers)
            self._batch = []
        self._send_now(buffers)

    def _send_now(self, buffers) -> None:
        if self._backlog:
            self._backlog.extend(memoryview(b).cast("B") for b in buffers if len(b))
            return
        if not isinstance(buffers, list):
            buffers = list(buffers)
        start = 0
        while start < len(buffers):
            batch = buffers[start:start + _IOV_BATCH]
            want = sum(map(len, batch))
            sent = self._sendmsg(batch)
            self.tx_bytes += sent
            if sent < want:
                self._queue_rest(batch, sent)
                self._backlog.extend(memoryview(b).cast("B")
                                     for b in buffers[start + _IOV_BATCH:] if len(b))
                self._backlog_changed.set()
                break
            start += _IOV_BATCH
        if self._sent_event is not None:
            self._wake_sent()

    def _sendmsg(self, buffers) -> int:
        self.sendmsg_calls += 1
        try:
            return self.sock.sendmsg(buffers)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._error = ConnectionLost(
                f"connection to {self._where()} lost while sending: {_why(exc)}")
            raise self._error from None

    def _queue_rest(self, batch, sent: int) -> None:
        for buf in batch:
            n = len(buf)
            if sent >= n:
                sent -= n
                continue
            view = memoryview(buf).cast("B")
            self._backlog.append(view[sent:] if sent else view)
            sent = 0

    def _push_backlog(self) -> int:
        backlog = self._backlog
        sent = self._sendmsg([backlog[i] for i in range(min(len(backlog), _IOV_BATCH))])
        self.tx_bytes += sent
        left = sent
        while left:
            head = backlog[0]
            if left >= len(head):
                left -= len(head)
                backlog.popleft()
            else:
                backlog[0] = head[left:]
                left = 0
        return sent

    async def _writable(self) -> None:
        try:
            await trio.lowlevel.wait_writable(self.sock)
        except trio.ClosedResourceError:
            raise ConnectionLost(f"connection to {self._where()} is closed") from None

    async def drain(self) -> None:
        """Run forever (in the session's nursery): send the backlog whenever the socket can
        take it. Raises ConnectionLost when the socket fails."""
        while True:
            if self._batch:
                buffers, self._batch = self._batch, []
                self._send_now(buffers)
            if not self._backlog:
                await self._backlog_changed.wait()
                self._backlog_changed = trio.Event()
                continue
            await self._writable()
            while self._backlog and self._push_backlog():
                pass
            self._backlog_sent.set()
            self._backlog_sent = trio.Event()
            self._wake_sent()

    async def wait_backlog(self, buffers: int) -> None:
        """Wait until at most ``buffers`` buffers wait for the socket (``drain`` must run)."""
        while len(self._backlog) > buffers:
            await self._backlog_sent.wait()

    async def flush(self) -> None:
        """Wait until everything sent so far is in the socket (the login phase, before any
        task runs :meth:`drain`)."""
        if self._batch:
            buffers, self._batch = self._batch, []
            self._send_now(buffers)
        while self._backlog:
            await self._writable()
            self._push_backlog()

    async def send_pdu(self, pdu) -> None:
        """Encode and send one PDU, and wait until it is out (the login phase)."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("send %s", summary(pdu))
        self.send(encode(pdu, header_digest=self.header_digest, data_digest=self.data_digest))
        await self.flush()

    # ------------------------------------------------------------------ receiving
    async def receive(self) -> None:
        """Wait for bytes and receive them into the decoder; ConnectionLost at EOF or error."""
        try:
            await trio.lowlevel.wait_readable(self.sock)
        except trio.ClosedResourceError:
            raise ConnectionLost(f"connection to {self._where()} is closed") from None
        try:
            n = self.sock.recv_into(self.decoder.get_buffer())
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise ConnectionLost(f"connection to {self._where()} lost: {_why(exc)}") from None
        if not n:
            raise ConnectionLost(f"connection to {self._where()} closed by the target")
        self.decoder.buffer_updated(n)
        self.rx_bytes += n

    async def receive_pdu(self):
        """Return the next PDU from the target (the login phase)."""
        decoder = self.decoder
        while True:
            pdu = decoder.next_pdu()
            if pdu is not None:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("recv %s", summary(pdu))
                return pdu
            await self.receive()

    def reset_on_close(self) -> None:
        """Make :meth:`aclose` reset the connection (SO_LINGER 0): whatever the kernel still
        holds to send is discarded, so a failed connection's commands cannot reach the target
        later, when the network comes back."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:         # already closed, or a socket that has no linger (AF_UNIX)
            pass

    async def aclose(self) -> None:
        """Close the socket; a task waiting on it gets ConnectionLost."""
        if self._closed:
            return
        self._closed = True
        self._backlog.clear()
        self._batch.clear()
        self._backlog_changed.set()
        self._backlog_sent.set()
        self._wake_sent()
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
        await trio.lowlevel.checkpoint()

    def _where(self) -> str:
        return f"{self.portal.host}:{self.portal.port}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)) + " " + (exc.strerror or "")
    return str(exc) or type(exc).__name__
