"""One iSCSI session to one target portal, driven by trio.

Owns: the TCP transport of the session's (single) connection, the tasks that serve it (one
reader, one writer, one keepalive), login and relogin, and the commands until they complete.
A command belongs to the session, not to a connection: when a connection fails, the session
logs in again with the same ISID (session reinstatement, RFC 7143 §6.3.5) and re-issues every
unfinished command on the new connection. Commands wait while the session recovers; after
``replacement_timeout`` seconds they fail with :class:`SessionFailed` (open-iscsi's rule).

The protocol itself lives in :mod:`iscsifs.core`; this module only does I/O and timing.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from dataclasses import dataclass, field

import trio

from ..core.chap import ChapCredentials
from ..core.connection import (AsyncEventReceived, Connection, LogoutComplete, NopReceived,
                               RejectReceived, TaskComplete, TaskFailed,
                               TaskManagementComplete, TextComplete)
from ..core.discovery import Portal
from ..core.keys import LoginParams, NegotiatedParams
from ..core.login import Login, LoginComplete
from ..core.pdu import LoginResponse
from ..errors import (AuthenticationError, CommandTimeout, ConnectionLost, IscsiError,
                      RemoteProtocolError, SessionFailed)
from ..scsi.sense import check_status
from .transport import Transport

log = logging.getLogger(__name__)

_sid_counter = itertools.count(1)

# RFC 7143 §11.5.1: Task Management Function codes
TMF_ABORT_TASK = 1

# Reconnect back-off: first retry at once, then doubling up to this cap (seconds).
RETRY_CAP = 5.0
# A command is re-issued after at most this many connection failures, then fails (like the
# SCSI midlayer's retry limit): a target that logs in fine but breaks on one command must not
# keep it spinning forever.
MAX_REISSUE = 5


@dataclass(frozen=True)
class Timeouts:
    """Timeouts in seconds, open-iscsi's names and defaults (0 disables noop_out_*)."""

    login: float = 15
    logout: float = 15
    noop_out_interval: float = 5
    noop_out_timeout: float = 5
    replacement_timeout: float = 120
    abort: float = 15
    lu_reset: float = 30
    tgt_reset: float = 30
    command: float = 30


@dataclass(frozen=True)
class ScsiResult:
    """The outcome of a SCSI command that completed with GOOD status."""

    status: int
    sense: bytes
    residual_count: int
    underflow: bool
    overflow: bool


@dataclass(eq=False)
class _Command:
    """A SCSI command owned by the session until it completes (re-issued after a relogin)."""

    lun: int
    cdb: bytes
    read_length: int = 0
    read_buffer: object = None
    write_data: object = None
    done: trio.Event = field(default_factory=trio.Event)
    result: object = None
    error: BaseException | None = None
    itt: int | None = None
    attempts: int = 0
    sent_at: float = 0.0        # when it was handed to the current connection
    aborting: bool = False

    def finish(self, result=None, error=None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


@dataclass(eq=False)
class _Waiter:
    """A non-SCSI request (text, NOP, TMF, logout) waiting for its answer."""

    done: trio.Event = field(default_factory=trio.Event)
    result: object = None


class _Link:
    """One logged-in connection: its transport, its protocol state and its task scope."""

    def __init__(self, transport: Transport, conn: Connection):
        self.transport = transport
        self.conn = conn
        self.scope = trio.CancelScope()
        self.kick = trio.Event()
        self.last_rx = trio.current_time()
        self.failed = False

    def wake_writer(self) -> None:
        self.kick.set()


class Session:
    """A session to ``target_name`` at ``portal``; use :meth:`connect` to make one."""

    def __init__(self, portal: Portal, target_name: str | None, *, initiator_name: str,
                 nursery: trio.Nursery, params: LoginParams | None = None,
                 chap: ChapCredentials | None = None, timeouts: Timeouts | None = None,
                 initiator_alias: str | None = None, queue_depth: int = 32,
                 recover: bool = True):
        self.portal = portal
        self.target_name = target_name
        self.session_type = "Normal" if target_name else "Discovery"
        self.initiator_name = initiator_name
        self.initiator_alias = initiator_alias
        self.params = params or LoginParams()
        self.chap = chap
        self.timeouts = timeouts or Timeouts()
        self.queue_depth = queue_depth
        self.recover = recover
        self.sid = next(_sid_counter)
        # ISID type 0x80 "random" (RFC 7143 §11.12.5): T=10b, then 24 random bits, qualifier 0.
        self.isid = (0x80 << 40) | (secrets.randbits(24) << 16)
        self.tsih = 0
        self.negotiated: NegotiatedParams | None = None
        self.connection_state = "FREE"
        self.session_state = "FREE"
        self.local_address = ""
        self.reconnects = 0
        self._nursery = nursery
        self._link: _Link | None = None
        self._commands: dict[int, _Command] = {}    # itt -> command, on the current link
        self._unfinished: set[_Command] = set()      # every command not yet completed
        self._waiters: dict[int, _Waiter] = {}
        self._state_changed = trio.Event()
        self._recovering = False
        self._given_up = False          # replacement timeout expired: fail I/O at once
        self._closed = False
        self._counters_base: dict[str, int] = {}
        self.async_events: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    async def connect(cls, portal: Portal, target_name: str | None, **kwargs) -> Session:
        """Log in and start the connection's tasks. Raises LoginError, ConnectionLost, ..."""
        session = cls(portal, target_name, **kwargs)
        link = await session._login()
        session._install(link)
        return session

    @property
    def logged_in(self) -> bool:
        return self.session_state == "LOGGED_IN"

    async def _login(self) -> _Link:
        """Open a TCP connection and run the login phase on it (RFC 7143 §6)."""
        self.connection_state = "IN LOGIN"
        try:
            with trio.fail_after(self.timeouts.login):
                transport = await Transport.open(self.portal)
                try:
                    complete = await self._login_exchange(transport)
                except BaseException:
                    await transport.aclose()
                    raise
        except trio.TooSlowError:
            self.connection_state = "FREE"
            raise ConnectionLost(f"login to {self._who()} timed out after "
                                 f"{self.timeouts.login:g} s") from None
        except AuthenticationError as exc:
            self.connection_state = "FREE"
            raise AuthenticationError(f"authentication failed for {self._who()}: {exc}",
                                      exc.status_class, exc.status_detail) from None
        except BaseException:
            self.connection_state = "FREE"
            raise
        self.tsih = complete.tsih
        self.negotiated = complete.params
        self.local_address = transport.local_address
        transport.set_digests(complete.params.header_digest, complete.params.data_digest,
                              complete.params.max_recv_data_segment_length)
        conn = Connection(complete, queue_depth=self.queue_depth)
        log.info("logged in to %s (sid %d, tsih %d)", self._who(), self.sid, self.tsih)
        return _Link(transport, conn)

    async def _login_exchange(self, transport: Transport) -> LoginComplete:
        # Every login, first or after a failure, asks for a new session (TSIH 0) with the same
        # ISID: the target then reinstates the session, dropping the old one (§6.3.5).
        login = Login(initiator_name=self.initiator_name, target_name=self.target_name,
                      isid=self.isid, tsih=0, session_type=self.session_type,
                      params=self.params, chap=self.chap, initiator_alias=self.initiator_alias)
        request = login.start()
        while True:
            self._counters_base["login_pdus"] = self._counters_base.get("login_pdus", 0) + 1
            await transport.send_pdu(request)
            response = await transport.receive_pdu()
            if not isinstance(response, LoginResponse):
                raise RemoteProtocolError(
                    f"expected a Login Response during login, got {type(response).__name__}")
            step = login.receive(response)
            if isinstance(step, LoginComplete):
                return step
            request = step

    def _install(self, link: _Link) -> None:
        self._link = link
        self.connection_state = "LOGGED IN"
        self.session_state = "LOGGED_IN"
        self._given_up = False
        self._nursery.start_soon(self._serve, link)
        self._notify()

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()

    def _who(self) -> str:
        return f"{self.target_name or 'discovery'} at {self.portal.host}:{self.portal.port}"

    async def close(self) -> None:
        """Log out (bounded by the logout timeout) and stop the connection's tasks."""
        if self._closed:
            return
        self._closed = True
        link = self._link
        if link is not None and not link.failed and self.logged_in:
            self.connection_state = "IN LOGOUT"
            try:
                with trio.move_on_after(self.timeouts.logout):
                    waiter = self._register(link.conn.logout(0))
                    link.wake_writer()
                    await waiter.done.wait()
            except IscsiError as exc:
                log.debug("logout from %s: %s", self._who(), exc)
        self._drop_link(link)
        self.connection_state = "FREE"
        self.session_state = "FREE"
        error = SessionFailed(f"session to {self._who()} was logged out")
        for cmd in list(self._unfinished):
            cmd.finish(error=error)
        self._unfinished.clear()
        self._notify()
        log.info("logged out of %s", self._who())

    def _drop_link(self, link: _Link | None) -> None:
        if link is None:
            return
        link.failed = True
        link.scope.cancel()
        if self._link is link:
            self._counters_base = self.counters()
            self._link = None
            self._commands.clear()

    # ------------------------------------------------------------------ connection tasks
    async def _serve(self, link: _Link) -> None:
        with link.scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, link)
                    nursery.start_soon(self._writer, link)
                    if self.timeouts.noop_out_interval > 0 and self.session_type == "Normal":
                        nursery.start_soon(self._keepalive, link)
                    if self.timeouts.command > 0:
                        nursery.start_soon(self._watchdog, link, nursery)
            except* (IscsiError, OSError, trio.BrokenResourceError) as group:
                self._link_failed(link, group.exceptions[0])
        await link.transport.aclose()

    async def _reader(self, link: _Link) -> None:
        transport, conn = link.transport, link.conn
        while True:
            pdu = await transport.receive_pdu()
            link.last_rx = trio.current_time()
            for event in conn.receive_pdu(pdu):
                self._dispatch(link, event)
            if conn.has_output:         # R2T answers, NOP replies, commands the window freed
                link.wake_writer()

    async def _writer(self, link: _Link) -> None:
        """Sends what the reader's events queued (R2T answers, NOP replies, freed window)."""
        conn, transport = link.conn, link.transport
        while True:
            await link.kick.wait()
            link.kick = trio.Event()
            await transport.send_pending(conn.data_to_send)

    async def _watchdog(self, link: _Link, nursery: trio.Nursery) -> None:
        """A command silent for ``timeouts.command`` gets ABORT TASK and fails (one timer per
        connection, not one per command)."""
        timeout = self.timeouts.command
        while True:
            await trio.sleep(min(1.0, timeout / 4))
            now = trio.current_time()
            for cmd in list(self._commands.values()):
                if not cmd.aborting and now - cmd.sent_at >= timeout:
                    cmd.aborting = True
                    nursery.start_soon(self._abort, link, cmd)

    async def _keepalive(self, link: _Link) -> None:
        """NOP-Out after noop_out_interval of silence; no answer in noop_out_timeout: fail."""
        interval, timeout = self.timeouts.noop_out_interval, self.timeouts.noop_out_timeout
        while True:
            await trio.sleep_until(link.last_rx + interval)
            if trio.current_time() < link.last_rx + interval:
                continue
            waiter = self._register(link.conn.send_nop())
            link.wake_writer()
            with trio.move_on_after(timeout if timeout > 0 else float("inf")):
                await waiter.done.wait()
            if not waiter.done.is_set():
                self._counters_base["timeout_err"] = self._counters_base.get("timeout_err", 0) + 1
                raise ConnectionLost(f"no answer to NOP-Out from {self._who()} within {timeout:g} s")

    def _dispatch(self, link: _Link, event) -> None:
        if isinstance(event, TaskComplete):
            cmd = self._commands.pop(event.itt, None)
            if cmd is not None:
                self._unfinished.discard(cmd)
                cmd.finish(result=event)
        elif isinstance(event, TaskFailed):
            cmd = self._commands.pop(event.itt, None)
            if cmd is not None:
                self._unfinished.discard(cmd)
                if cmd.aborting:    # our ABORT TASK after a timeout ended it
                    cmd.finish(error=CommandTimeout(f"command to {self._who()} timed out "
                                                    f"after {self.timeouts.command:g} s"))
                else:
                    cmd.finish(error=RemoteProtocolError(f"command failed: {event.reason}"))
        elif isinstance(event, (NopReceived, TextComplete, TaskManagementComplete, LogoutComplete)):
            waiter = self._waiters.pop(event.itt, None)
            if waiter is not None:
                waiter.result = event
                waiter.done.set()
        elif isinstance(event, AsyncEventReceived):
            self._async_event(link, event.pdu)
        elif isinstance(event, RejectReceived):
            log.warning("%s rejected a PDU (reason 0x%02x)", self._who(), event.reason)
            if event.itt is not None and event.itt in self._waiters:
                waiter = self._waiters.pop(event.itt)
                waiter.result = event
                waiter.done.set()

    def _async_event(self, link: _Link, pdu) -> None:
        """RFC 7143 §11.9.1 AsyncEvent codes."""
        code = pdu.async_event
        self.async_events.append(f"event {code} (parameters {pdu.parameter1}, {pdu.parameter2}, "
                                 f"{pdu.parameter3})")
        if code == 0:
            log.info("%s: asynchronous SCSI event", self._who())
        elif code == 1:
            log.info("%s asks us to log out within %d s; reconnecting", self._who(), pdu.parameter3)
            self._nursery.start_soon(self._logout_and_reconnect, link)
        elif code in (2, 3):
            log.info("%s will drop the connection; relogin after %d s", self._who(), pdu.parameter2)
        elif code == 4:
            log.info("%s asks to renegotiate parameters (ignored)", self._who())
        else:
            log.info("%s: async event %d", self._who(), code)

    async def _logout_and_reconnect(self, link: _Link) -> None:
        if link.failed:
            return
        with trio.move_on_after(self.timeouts.logout):
            waiter = self._register(link.conn.logout(2))  # reason 2: remove for recovery
            link.wake_writer()
            await waiter.done.wait()
        self._link_failed(link, ConnectionLost("target requested logout"))

    def _register(self, itt: int) -> _Waiter:
        waiter = _Waiter()
        self._waiters[itt] = waiter
        return waiter

    # ------------------------------------------------------------------ recovery
    def _link_failed(self, link: _Link, exc: BaseException) -> None:
        if link.failed:
            return
        was_current = self._link is link
        self._drop_link(link)
        if not was_current or self._closed:
            return
        log.warning("connection to %s failed: %s", self._who(), exc)
        self.connection_state = "TRANSPORT WAIT"
        self.session_state = "FAILED"
        for waiter in self._waiters.values():
            waiter.done.set()
        self._waiters.clear()
        self._notify()
        if self.recover and not self._recovering:
            self._recovering = True
            self._nursery.start_soon(self._recover)
        elif not self.recover:
            self._fail_all(SessionFailed(f"connection to {self._who()} lost: {exc}"))

    def _fail_all(self, error: BaseException) -> None:
        for cmd in list(self._unfinished):
            cmd.finish(error=error)
        self._unfinished.clear()

    async def _recover(self) -> None:
        """Relogin with the same ISID until it works; fail I/O after replacement_timeout."""
        try:
            deadline = trio.current_time() + self.timeouts.replacement_timeout
            delay = 0.0
            while not self._closed:
                if not self._given_up and trio.current_time() >= deadline:
                    self._given_up = True
                    log.error("%s: replacement timeout (%g s) expired; failing I/O",
                              self._who(), self.timeouts.replacement_timeout)
                    self._fail_all(SessionFailed(
                        f"session to {self._who()} could not be recovered within "
                        f"{self.timeouts.replacement_timeout:g} s"))
                    self._notify()
                await trio.sleep(delay)
                delay = min(max(delay * 2, 0.5), RETRY_CAP)
                if self._closed:
                    return
                try:
                    link = await self._login()
                except AuthenticationError as exc:
                    log.error("relogin to %s: %s", self._who(), exc)
                    continue
                except (IscsiError, OSError) as exc:
                    log.info("relogin to %s failed: %s", self._who(), exc)
                    continue
                if self._closed:
                    await link.transport.aclose()
                    return
                self.reconnects += 1
                self._install(link)
                self._reissue(link)
                return
        finally:
            self._recovering = False

    def _reissue(self, link: _Link) -> None:
        for cmd in list(self._unfinished):
            if cmd.attempts > MAX_REISSUE:
                self._unfinished.discard(cmd)
                cmd.finish(error=SessionFailed(
                    f"command to {self._who()} failed: the connection broke "
                    f"{cmd.attempts} times while it ran"))
                continue
            self._start(link, cmd)
        link.wake_writer()

    # ------------------------------------------------------------------ commands
    def _start(self, link: _Link, cmd: _Command) -> None:
        itt = link.conn.start_command(cmd.lun, cmd.cdb, read_length=cmd.read_length,
                                      read_buffer=cmd.read_buffer, write_data=cmd.write_data)
        cmd.itt = itt
        cmd.attempts += 1
        cmd.sent_at = trio.current_time()
        cmd.aborting = False
        self._commands[itt] = cmd

    async def _wait_logged_in(self) -> _Link:
        while True:
            if self._closed:
                raise SessionFailed(f"session to {self._who()} is closed")
            if self._link is not None and self.logged_in:
                return self._link
            if self._given_up or not self.recover:
                raise SessionFailed(f"session to {self._who()} is not logged in")
            await self._state_changed.wait()

    async def execute(self, lun: int, cdb: bytes, *, read_length: int = 0, read_buffer=None,
                      write_data=None) -> ScsiResult:
        """Run one SCSI command; returns on GOOD status, raises ScsiError otherwise."""
        link = await self._wait_logged_in()
        cmd = _Command(lun, bytes(cdb), read_length, read_buffer, write_data)
        self._unfinished.add(cmd)
        self._start(link, cmd)
        # the writer task sends it: at queue depth it sends many commands in one write
        link.wake_writer()
        await self._wait_command(cmd)
        if cmd.error is not None:
            raise cmd.error
        event = cmd.result
        check_status(event.status, event.sense)
        return ScsiResult(event.status, event.sense, event.residual_count, event.underflow,
                          event.overflow)

    async def _wait_command(self, cmd: _Command) -> None:
        """Wait for completion (the watchdog times it out, recovery re-issues it)."""
        try:
            await cmd.done.wait()
        except BaseException:
            # cancelled (e.g. the FUSE request was interrupted): forget it on the wire
            if not cmd.done.is_set():
                self._forget(cmd)
                cmd.finish(error=CommandTimeout("command cancelled"))
            raise

    def _forget(self, cmd: _Command) -> None:
        self._unfinished.discard(cmd)
        link = self._link
        if cmd.itt is not None and self._commands.pop(cmd.itt, None) is cmd and link is not None:
            link.conn.abandon(cmd.itt)

    async def _abort(self, link: _Link, cmd: _Command) -> None:
        if cmd.done.is_set() or self._commands.get(cmd.itt) is not cmd:
            return
        log.warning("%s: command 0x%s timed out after %g s; aborting", self._who(),
                    cmd.cdb[:1].hex(), self.timeouts.command)
        with trio.move_on_after(self.timeouts.abort):
            waiter = self._register(link.conn.task_management(TMF_ABORT_TASK, cmd.lun, cmd.itt))
            link.wake_writer()
            await waiter.done.wait()
        self._forget(cmd)
        cmd.finish(error=CommandTimeout(
            f"command to {self._who()} timed out after {self.timeouts.command:g} s"))

    # ------------------------------------------------------------------ text, ping
    async def text(self, pairs) -> list[tuple[str, str]]:
        """A Text request/response exchange (SendTargets on a discovery session)."""
        link = await self._wait_logged_in()
        waiter = self._register(link.conn.send_text(pairs))
        link.wake_writer()
        with trio.fail_after(self.timeouts.login):
            await waiter.done.wait()
        if not isinstance(waiter.result, TextComplete):
            raise ConnectionLost(f"text request to {self._who()} failed")
        return waiter.result.pairs

    async def ping(self) -> float:
        """NOP-Out ping; returns the round-trip time in seconds."""
        link = await self._wait_logged_in()
        start = trio.current_time()
        waiter = self._register(link.conn.send_nop())
        link.wake_writer()
        with trio.fail_after(self.timeouts.noop_out_timeout or 5):
            await waiter.done.wait()
        return trio.current_time() - start

    def counters(self) -> dict[str, int]:
        """``iscsiadm -m session -s`` counters, summed over this session's connections."""
        total = dict(self._counters_base)
        link = self._link
        if link is not None:
            for name, value in link.conn.counters.items():
                total[name] = total.get(name, 0) + value
        return total
