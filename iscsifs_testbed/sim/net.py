"""The simulated network: in-memory TCP connections between the real initiator and the
simulated target.

Owns: :class:`Pipe` (one direction of a connection: bytes in order, each chunk tagged with the
*wire sequence number* at which the initiator's ``sendmsg`` accepted it), :class:`SimConn` (a
connection: two pipes, FIN and RST), and :class:`SimTransport`, a subclass of the product's
``net.transport.Transport`` that keeps all of its send logic (the synchronous ``send``, the
backlog, ``drain``, ``flush``) and replaces only what touches a socket: ``sendmsg`` goes to a
fake socket whose buffer holds ``capacity`` bytes (so a target that stops reading makes the
real backlog grow), ``receive`` copies from the pipe into the real PDU decoder, ``aclose``
sends FIN, or RST after ``reset_on_close``.

Semantics copied from TCP: bytes written before a FIN are delivered, then EOF; an RST
discards what the receiver has not read yet, and the receiver sees ECONNRESET. After the peer
closed, a send either fails (EPIPE) or is silently discarded (the first write after a FIN).
"""

from __future__ import annotations

import errno
import socket
from collections import deque

import trio

from iscsifs.errors import ConnectionLost
from iscsifs.net.transport import Transport


class Pipe:
    """One direction of a connection."""

    __slots__ = ("chunks", "size", "capacity", "eof", "reset", "_event")

    def __init__(self, capacity: float):
        self.chunks: deque[list] = deque()      # [bytes, wire seq]
        self.size = 0
        self.capacity = capacity
        self.eof = False        # the writer closed (FIN): EOF once drained
        self.reset = False      # RST: unread bytes are gone
        self._event: trio.Event | None = None

    @property
    def room(self) -> float:
        return self.capacity - self.size

    def write(self, data: bytes, seq: int) -> None:
        if self.reset or self.eof or not data:
            return
        self.chunks.append([data, seq])
        self.size += len(data)
        self.notify()

    def read_chunk(self, limit: int) -> tuple[bytes, int]:
        """At most ``limit`` bytes of the oldest chunk, and that chunk's wire seq."""
        head = self.chunks[0]
        data, seq = head
        if len(data) <= limit:
            self.chunks.popleft()
        else:
            head[0] = data[limit:]
            data = data[:limit]
        self.size -= len(data)
        self.notify()
        return data, seq

    def close(self) -> None:
        self.eof = True
        self.notify()

    def kill(self) -> None:
        self.reset = True
        self.chunks.clear()
        self.size = 0
        self.notify()

    def notify(self) -> None:
        ev = self._event
        if ev is not None:
            self._event = None
            ev.set()

    async def wait(self) -> None:
        """Until anything changes (data, room, FIN, RST)."""
        ev = self._event
        if ev is None:
            ev = self._event = trio.Event()
        await ev.wait()


class SimConn:
    """One TCP connection: ``up`` initiator -> target, ``down`` target -> initiator."""

    def __init__(self, world, cid: int, portal, capacity: int):
        self.world = world
        self.id = cid
        self.portal = portal
        self.up = Pipe(capacity)
        self.down = Pipe(float("inf"))
        self.initiator_closed = False
        self.initiator_reset = False
        self.target_closed = False
        self.target_reset = False
        # after the target's FIN: does the initiator's next send fail (EPIPE) or vanish?
        self.send_fails_after_fin = True
        self.transport: SimTransport | None = None

    # -- the target's side
    def target_close(self, reset: bool) -> None:
        """The target closes: FIN (what it sent is still delivered) or RST."""
        if self.target_closed:
            if reset and not self.target_reset:
                self.target_reset = True
                self.down.kill()
                self.up.kill()
            return
        self.target_closed = True
        self.target_reset = reset
        if reset:
            self.down.kill()
            self.up.kill()
        else:
            self.down.close()
            self.up.notify()

    # -- the initiator's side
    def initiator_close(self, reset: bool) -> None:
        if self.initiator_closed:
            return
        self.initiator_closed = True
        self.initiator_reset = reset
        self.initiator_closed_at = trio.current_time()
        if reset:
            self.up.kill()
            self.down.kill()
        else:
            self.up.close()
            self.down.notify()


class SimSocket:
    """The socket a SimTransport's inherited code calls (sendmsg, setsockopt, ...)."""

    def __init__(self, conn: SimConn):
        self.conn = conn
        self.linger0 = False

    def setblocking(self, flag: bool) -> None:
        pass

    def getsockname(self):
        return ("127.0.0.100", 40000 + self.conn.id)

    def setsockopt(self, level, option, value) -> None:
        if option == socket.SO_LINGER:
            self.linger0 = True

    def close(self) -> None:
        pass

    def sendmsg(self, buffers) -> int:
        conn = self.conn
        pipe = conn.up
        if conn.initiator_closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if pipe.reset:
            raise OSError(errno.ECONNRESET, "Connection reset by peer")
        if conn.target_closed:
            if conn.send_fails_after_fin:
                raise OSError(errno.EPIPE, "Broken pipe")
            conn.send_fails_after_fin = True        # the RST comes back: the next one fails
            return sum(len(b) for b in buffers)
        room = pipe.room
        if room <= 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        data = b"".join(buffers)
        if len(data) > room:
            data = data[:int(room)]
        pipe.write(data, conn.world.next_seq())
        return len(data)


class SimTransport(Transport):
    """The product's Transport over a SimConn (see the module docstring)."""

    def __init__(self, conn: SimConn, portal):
        super().__init__(SimSocket(conn), portal)
        self.conn = conn
        conn.transport = self

    async def _writable(self) -> None:
        conn = self.conn
        while True:
            if self._closed:
                raise ConnectionLost(f"connection to {self._where()} is closed")
            pipe = conn.up
            if pipe.reset or conn.target_closed or pipe.room > 0:
                return
            await pipe.wait()

    async def receive(self) -> None:
        pipe = self.conn.down
        waited = False
        while True:
            if self._closed:
                raise ConnectionLost(f"connection to {self._where()} is closed")
            if pipe.reset:
                raise ConnectionLost(f"connection to {self._where()} lost: ECONNRESET "
                                     f"Connection reset by peer")
            if pipe.size:
                break
            if pipe.eof:
                raise ConnectionLost(f"connection to {self._where()} closed by the target")
            waited = True
            await pipe.wait()
        if not waited:
            await trio.lowlevel.checkpoint()
            if self._closed or pipe.reset or not pipe.size:
                return
        data, _seq = pipe.read_chunk(1 << 20)
        n = len(data)
        decoder = self.decoder
        decoder.get_buffer(n)[:n] = data
        decoder.buffer_updated(n)
        self.rx_bytes += n

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backlog.clear()
        getattr(self, "_batch", []).clear()
        self._backlog_changed.set()
        sent = getattr(self, "_backlog_sent", None)
        if sent is not None:
            sent.set()
        wake = getattr(self, "_wake_sent", None)
        if wake is not None:
            wake()
        self.conn.initiator_close(reset=self.sock.linger0)
        await trio.lowlevel.checkpoint()
