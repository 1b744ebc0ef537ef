"""One iSCSI session to one target portal, driven by trio.

Owns: the session's (single) connection and the tasks that serve it (a reader, a backlog
writer, the keepalive, the command watchdog and error recovery), login and relogin, and every
SCSI command from the moment its caller hands it over until the caller has its answer.

The command path is short: the caller's own task gives the command to the protocol state
machine and sends its PDU (``Transport.send`` never yields); the reader task receives the
answer into the caller's buffer and wakes the caller. Nothing else runs per command.

The session's state and its connection's live in one state machine
(:mod:`iscsifs.core.state`): every change is an event looked up in one table, and what the
session does (start a relogin, fail waiting commands, take I/O) follows from the transition,
never from a flag beside it. Command timeouts and the escalation for a timed-out command are
:mod:`iscsifs.net.error_handler`'s.

Commands belong to the session, not to a connection. When a connection fails, the session
logs in again with the same ISID (session reinstatement, RFC 7143 §6.3.5) and re-issues every
command whose caller is still waiting. Two rules keep that safe:

* a command whose caller has been answered (status, error, timeout, cancellation) is never
  sent again, on any connection;
* a caller is answered "timed out" only once its command can no longer run at the target:
  after ABORT TASK, a LOGICAL UNIT RESET or TARGET WARM RESET confirmed it, or after its
  connection was dropped (open-iscsi's error handler order, each step bounded by its timeout).

Waiting is bounded too: a command that never got a CmdSN (the target keeps the window shut)
fails after ``command_timeout``; while the session is down, commands wait at most
``replacement_timeout`` (a deadline, on a timer of its own: a login attempt still running
then goes on), after which they, and new ones, fail at once until a relogin succeeds.

A *fail-fast* command (``execute(..., fail_fast=True)``, what the multipath layer sends, as
dm-multipath marks its requests REQ_FAILFAST_TRANSPORT) is not held across a connection
failure: it is answered ``PathFailed`` at once, and so is a new one while the session is down.
It is never sent again by the session; the session itself goes on logging in again in the
background, and ``listeners`` hear of every change of state (logged in, failed, closed).

The protocol itself lives in :mod:`iscsifs.core`; this module only does I/O and timing.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import trio

from ..core.chap import ChapCredentials
from ..core.connection import (AsyncEventReceived, Connection, LogoutComplete, NopReceived,
                               RejectReceived, TaskComplete, TaskFailed,
                               TaskManagementComplete, TextComplete)
from ..core.names import Portal, parse_portal, printable
from ..core.keys import LoginParams, NegotiatedParams
from ..core.login import Login, LoginComplete
from ..core.pdu import AsyncMessage, LoginResponse
from ..core.state import ConnectionState, SessionEvent, SessionState, SessionStateMachine
from ..errors import (AuthenticationError, CommandTimeout, ConnectionLost, IscsiError,
                      LoginError, PathFailed, RemoteProtocolError, SessionFailed)
from ..scsi.sense import ScsiStatus, check_status
from .error_handler import ErrorHandler, Recovery, describe
from .transport import Connector, Transport, open_tcp

log = logging.getLogger(__name__)

_sid_counter = itertools.count(1)

# Reconnect back-off: first retry at once, then doubling up to this cap (seconds).
RETRY_CAP = 5.0
# A command is re-issued after at most this many connection failures, then fails (like the
# SCSI midlayer's retry limit): a target that logs in fine but breaks on one command must not
# keep it spinning forever.
MAX_REISSUE = 5
# Login redirections followed before a login gives up (a target that redirects in a loop).
MAX_REDIRECTS = 4
# BUSY and TASK SET FULL: sent again after this pause, doubling up to the cap (seconds), within
# command_timeout (SAM-5 §5.3: the device server did not run the command).
BUSY_DELAY = 0.01
BUSY_DELAY_MAX = 1.0
_TASK_SET_FULL = ScsiStatus.TASK_SET_FULL
_RETRIED_STATUS = (ScsiStatus.BUSY, ScsiStatus.TASK_SET_FULL)
# Asynchronous events kept for the session file (the newest).
ASYNC_EVENTS_KEPT = 32

# The reader stops reading while more buffers than this wait for the socket (what the target
# makes us send, NOP-Out answers to a ping flood, Data-Out for its R2Ts, cannot pile up), and
# goes on once half of them went out.
MAX_BACKLOG_BUFFERS = 16384

S, C, E = SessionState, ConnectionState, SessionEvent

ScsiResult = TaskComplete      # what execute() returns: status GOOD, residuals, data length

# Run after every login (the first and each relogin), before the session takes I/O: the hook
# sends its own commands with ``execute(..., setup=True)`` (e.g. re-reading a LUN's identity,
# registering a reservation key). A hook that raises makes that login a failed one.
LoginHook = Callable[["Session"], Awaitable[None]]


@dataclass(frozen=True)
class Timeouts:
    """Timeouts in seconds, open-iscsi's names and defaults (0 disables noop_out_* and
    command; a negative replacement timeout waits for a relogin forever)."""

    login: float = 15
    logout: float = 15
    noop_out_interval: float = 5
    noop_out_timeout: float = 5
    replacement_timeout: float = 120
    abort: float = 15
    lu_reset: float = 30
    tgt_reset: float = 30
    command: float = 30


class _Command:
    """A SCSI command, owned by the session from ``execute()`` until its caller is answered."""

    __slots__ = ("lun", "cdb", "read_length", "read_buffer", "write_data", "task", "done",
                 "result", "error", "link", "itt", "attempts", "deadline", "timed_out",
                 "fail_fast", "setup", "unrecallable")

    def __init__(self, lun: int, cdb: bytes, read_length: int, read_buffer, write_data,
                 fail_fast: bool = False, setup: bool = False, unrecallable: bool = False):
        self.lun = lun
        self.unrecallable = unrecallable    # once issued, its caller waits for its end
        self.fail_fast = fail_fast or setup  # answered PathFailed instead of waiting for a relogin
        self.setup = setup          # a login hook's: goes out before the session takes I/O
        self.cdb = cdb
        self.read_length = read_length
        self.read_buffer = read_buffer
        self.write_data = write_data
        self.task = None            # the caller's trio task while it sleeps
        self.done = False           # the caller has (or is getting) its answer
        self.result: TaskComplete | None = None
        self.error: BaseException | None = None
        self.link: _Link | None = None   # the connection it is issued on; None: waiting
        self.itt = 0
        self.attempts = 0
        self.deadline = math.inf    # command timeout on its current connection
        self.timed_out = False      # the watchdog handed it to error recovery


class _SlotWaiter:
    """A caller waiting for a ``cmds_max`` slot (its command does not exist yet)."""

    __slots__ = ("lun", "fail_fast", "scope", "error")

    def __init__(self, lun: int, fail_fast: bool):
        self.lun = lun
        self.fail_fast = fail_fast
        self.scope = trio.CancelScope()
        self.error: BaseException | None = None   # set by fail_waiting: answer this


class _Request:
    """A non-SCSI exchange (NOP, text, TMF, logout) waiting for its answer."""

    __slots__ = ("event", "result")

    def __init__(self):
        self.event = trio.Event()
        self.result = None


class _Link:
    """One logged-in connection: transport, protocol state, its commands and its tasks."""

    def __init__(self, transport: Transport, conn: Connection, command_timeout: float = 0):
        self.transport = transport
        self.conn = conn
        self.scope = trio.CancelScope()
        self.commands: dict[int, _Command] = {}     # itt -> command, in the order issued
        # commands that got no CmdSN when issued (our queue depth or the target's window
        # held them), in that order: their command_timeout starts when they get one
        self.unsent: deque[_Command] = deque()
        self.command_timeout = command_timeout
        self.requests: dict[int, _Request] = {}
        self.last_rx = trio.current_time()
        self.failed = False
        self.error: BaseException | None = None     # why it failed (the first reason)
        self.handler: ErrorHandler | None = None    # its watchdog and error recovery
        self.renegotiating = False      # answering the target's AsyncEvent 4
        # an AsyncEvent 1 that came while the login hooks ran: acted on once it serves
        self.deferred_async: list = []

    def push(self, batch: bool = False) -> None:
        """Send whatever the state machine has queued (synchronous; ordered). ``batch``: with
        what other tasks queue in this scheduler pass, in one ``sendmsg`` after it."""
        conn = self.conn
        if conn.has_output:
            if self.unsent:
                self._started()
            self.transport.send(conn.data_to_send(), batch=batch)

    def _started(self) -> None:
        """Commands that waited for a CmdSN and go out now: their command_timeout starts
        (Linux starts a request's timer when the driver takes it, not while it is queued)."""
        unsent, conn = self.unsent, self.conn
        deadline = trio.current_time() + self.command_timeout
        while unsent:
            cmd = unsent[0]
            if not cmd.done and cmd.link is self and not cmd.timed_out:
                if not conn.was_sent(cmd.itt):
                    break       # it waits still, and so do those after it (they go in order)
                cmd.deadline = deadline
            unsent.popleft()


class Session:
    """A session to ``target_name`` at ``portal``; use :meth:`connect` to make one."""

    def __init__(self, portal: Portal, target_name: str | None, *, initiator_name: str,
                 nursery: trio.Nursery, params: LoginParams | None = None,
                 chap: ChapCredentials | None = None, timeouts: Timeouts | None = None,
                 initiator_alias: str | None = None, queue_depth: int = 32,
                 cmds_max: int = 128, recover: bool = True, connector: Connector = open_tcp,
                 sid: int | None = None, login_hooks: Sequence[LoginHook] = (),
                 transport_factory: Callable[[Portal], Awaitable[Transport]] | None = None):
        self.portal = portal                # the persistent portal (the node's)
        self.current_portal = portal        # where the connection is (after redirections)
        self._login_portal = portal         # where the next login starts
        self.target_name = target_name
        self.session_type = "Normal" if target_name else "Discovery"
        self.initiator_name = initiator_name
        self.initiator_alias = initiator_alias
        self.params = params or LoginParams()
        self.chap = chap
        self.timeouts = timeouts or Timeouts()
        self.queue_depth = queue_depth
        self.recover = recover
        self.connector = connector
        # opens a Transport to a portal (default: a TCP connection made by ``connector``);
        # the deterministic simulator (iscsifs_testbed.sim) passes an in-memory one
        self.transport_factory = transport_factory
        # the session ID iscsiadm would show; the mount passes machine-wide unique ones
        self.sid = next(_sid_counter) if sid is None else sid
        # ISID type 0x80 "random" (RFC 7143 §11.12.5): T=10b, then 24 random bits, qualifier 0.
        self.isid = (0x80 << 40) | (secrets.randbits(24) << 16)
        self.tsih = 0
        self.negotiated: NegotiatedParams | None = None
        self._sm = SessionStateMachine()
        self.local_address = ""
        self.reconnects = 0
        self.async_events: deque[str] = deque(maxlen=ASYNC_EVENTS_KEPT)
        self._nursery = nursery
        self._link: _Link | None = None
        # every command whose caller still waits, in arrival order (bounded by cmds_max)
        self._unfinished: dict[_Command, None] = {}
        self._admission = trio.Semaphore(cmds_max)
        self._slot_waiters: set[_SlotWaiter] = set()    # callers waiting for a slot
        self._recovery_scope: trio.CancelScope | None = None
        self._counters_base: dict[str, int] = {}
        # called (synchronously, with the session) after every change of session_state
        self.listeners: list[Callable[[Session], None]] = []
        # called (synchronously, with the session and the AsyncMessage) for every
        # asynchronous message, before the session acts on it (e.g. a SCSI async event
        # saying the target's LUNs changed)
        self.async_listeners: list[Callable[[Session, AsyncMessage], None]] = []
        # awaited, in order, after every login before the session takes I/O (LoginHook)
        self.login_hooks: list[LoginHook] = list(login_hooks)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    async def connect(cls, portal: Portal, target_name: str | None, **kwargs) -> Session:
        """Log in and start the connection's tasks. Raises LoginError, ConnectionLost, ..."""
        session = cls(portal, target_name, **kwargs)
        session._fire(E.LOGIN_STARTED)
        try:
            link = await session._login()
        except BaseException:
            session._fire(E.CLOSE)
            raise
        session._start(link)
        try:
            await session._run_login_hooks(link)
        except BaseException:
            session._fire(E.CLOSE)
            session._drop_link(link)
            raise
        session._open()
        # one INFO line per login and logout of a normal session (the mount's log shows
        # them by default); discovery sessions come and go with every listing: DEBUG
        log.log(session._level, "logged in to %s (sid %d, tsih %d)", session._who(),
                session.sid, session.tsih)
        return session

    @property
    def _level(self) -> int:
        return logging.INFO if self.target_name else logging.DEBUG

    @property
    def session_state(self) -> SessionState:
        return self._sm.session

    @property
    def connection_state(self) -> ConnectionState:
        return self._sm.connection

    @property
    def logged_in(self) -> bool:
        return self._sm.session is S.LOGGED_IN

    def _fire(self, event: SessionEvent) -> SessionState:
        """Move the state machine (``core.state``); listeners hear of a new session state.
        Returns the session state before the event."""
        before, _ = self._sm.process(event)
        if self._sm.session is not before:
            self._notify()
        return before

    async def _login(self) -> _Link:
        """Log in at the persistent portal, following the target's redirections (RFC 7143
        §11.13.5: status 0x0101 moved temporarily, 0x0102 moved permanently, with a
        TargetAddress) for at most ``MAX_REDIRECTS`` hops, each within ``login_timeout``.
        The caller fires LOGIN_STARTED before and LOGIN_DONE / LOGIN_FAILED after.
        A temporary redirection holds for this connection only: the next login starts at
        the persistent portal again; a permanent one is where later logins start."""
        portal = self._login_portal
        for hop in range(MAX_REDIRECTS + 1):
            try:
                link = await self._login_at(portal)
            except LoginError as exc:
                if exc.status_class != 1 or hop == MAX_REDIRECTS:
                    raise
                new = self._redirect_target(exc)
                permanent = exc.status_detail == 2
                log.info("%s redirects the login from %s to %s (%s)", self._who(), portal,
                         new, "permanently" if permanent else "temporarily")
                if permanent:
                    self._login_portal = new
                portal = new
                continue
            self.current_portal = portal
            return link
        raise AssertionError("unreachable")

    def _redirect_target(self, exc: LoginError) -> Portal:
        text = exc.target_address
        try:
            if not text:
                raise ValueError("no TargetAddress")
            return parse_portal(text)
        except ValueError as why:
            raise LoginError(f"redirected to an unusable address {printable(text or '')!r}: "
                             f"{why}", exc.status_class,
                             exc.status_detail).located(self._who()) from None

    async def _login_at(self, portal: Portal) -> _Link:
        """Open a connection to ``portal`` and run the login phase on it (RFC 7143 §6),
        within ``login_timeout``."""
        try:
            with trio.fail_after(self.timeouts.login):
                if self.transport_factory is not None:
                    transport = await self.transport_factory(portal)
                else:
                    transport = await Transport.open(portal, self.connector)
                try:
                    complete = await self._login_exchange(transport)
                except BaseException:
                    await transport.aclose()
                    raise
        except trio.TooSlowError:
            raise ConnectionLost(f"timed out after {self.timeouts.login:g} s",
                                 errno=errno.ETIMEDOUT).located(self._who()) from None
        except (LoginError, RemoteProtocolError) as exc:   # name the target and the portal
            raise exc.located(self._who())
        self.tsih = complete.tsih
        self.negotiated = complete.params
        self.local_address = transport.local_address
        transport.set_digests(complete.params.header_digest, complete.params.data_digest,
                              complete.params.max_recv_data_segment_length)
        conn = Connection(complete, queue_depth=self.queue_depth)
        log.debug("login to %s complete (sid %d, tsih %d)", self._who(), self.sid, self.tsih)
        return _Link(transport, conn, max(self.timeouts.command, 0))

    async def _login_exchange(self, transport: Transport) -> LoginComplete:
        # Every login, first or after a failure, asks for a new session (TSIH 0) with the same
        # ISID: the target then reinstates the session, dropping the old one (§6.3.5).
        login = Login(initiator_name=self.initiator_name, target_name=self.target_name,
                      isid=self.isid, tsih=0, session_type=self.session_type,
                      params=self.params, chap=self.chap, initiator_alias=self.initiator_alias)
        request = login.start()
        while True:
            self._count("login_pdus")
            await transport.send_pdu(request)
            response = await transport.receive_pdu()
            if not isinstance(response, LoginResponse):
                raise RemoteProtocolError(
                    f"expected a Login Response during login, got {type(response).__name__}")
            step = login.receive(response)
            if isinstance(step, LoginComplete):
                return step
            request = step

    def _start(self, link: _Link) -> None:
        """Serve a logged-in connection; it takes only setup commands until ``_open``."""
        link.handler = ErrorHandler(link, self.timeouts, who=self._who,
                                    complete=self._complete, timeout_error=self._timeout_error,
                                    link_failed=self._link_failed, request=self._request)
        self._link = link
        self._fire(E.LOGIN_DONE)
        self._nursery.start_soon(self._serve, link)

    async def _run_login_hooks(self, link: _Link) -> None:
        """Run the login hooks on ``link``, within ``login_timeout`` in all. Any failure (the
        hook's, the connection's, the time) is a ConnectionLost or the hook's IscsiError."""
        if not self.login_hooks:
            return
        try:
            with trio.fail_after(self.timeouts.login):
                for hook in self.login_hooks:
                    await hook(self)
        except trio.TooSlowError:
            raise ConnectionLost(f"login to {self._who()}: setup after login did not finish "
                                 f"within {self.timeouts.login:g} s",
                                 errno=errno.ETIMEDOUT) from None
        if link.failed:
            raise ConnectionLost(f"connection to {self._who()} failed during setup after "
                                 f"login: {link.error}")

    def _open(self) -> None:
        """The session takes I/O: logged in, and the commands waiting for it go out. A
        request to log out that came during the login hooks is acted on now."""
        self._fire(E.OPENED)
        link = self._link
        if link is not None and link.deferred_async:
            deferred, link.deferred_async = link.deferred_async, []
            for pdu in deferred:
                self._act_on_async(link, pdu)

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(self)

    def _who(self) -> str:
        return f"{self.target_name or 'discovery'} at {self.portal.host}:{self.portal.port}"

    def _count(self, name: str, n: int = 1) -> None:
        self._counters_base[name] = self._counters_base.get(name, 0) + n

    async def close(self) -> None:
        """Log out (bounded by the logout timeout) and stop the connection's tasks."""
        if self._sm.session is S.CLOSED:
            return
        link = self._begin_close()
        if self._sm.connection is C.IN_LOGOUT:       # it was logged in: log out
            assert link is not None
            with trio.move_on_after(self.timeouts.logout):
                try:
                    await self._request(link, link.conn.logout(0))
                except IscsiError as exc:
                    log.debug("logout from %s: %s", self._who(), exc)
        self._end_close(link, "logged out")
        log.log(self._level, "logged out of %s (sid %d)", self._who(), self.sid)

    def _begin_close(self) -> _Link | None:
        """CLOSED from here on (no relogin, no new command); returns the link to log out."""
        if self._recovery_scope is not None:
            self._recovery_scope.cancel()
        self._sm.process(E.CLOSE)              # listeners hear of it once it is over
        return self._link

    def _end_close(self, link: _Link | None, how: str) -> None:
        """Drop the connection and answer every caller: the session is over."""
        if self._sm.connection is C.IN_LOGOUT:
            self._sm.process(E.LOGGED_OUT)
        self._drop_link(link)
        self._fail_waiting(SessionFailed(f"session to {self._who()} was {how}"))
        self._notify()

    def _drop_link(self, link: _Link | None) -> None:
        if link is None or link.failed:
            return
        link.failed = True
        # nothing more leaves for it, whichever of its tasks would have sent next: callers
        # answered from here on know that their commands' PDUs are not put on the wire later
        link.transport.discard()
        link.scope.cancel()
        for request in link.requests.values():
            request.event.set()
        link.requests.clear()
        if self._link is link:
            self._counters_base = self.counters()
            self._link = None

    # ------------------------------------------------------------------ connection tasks
    async def _serve(self, link: _Link) -> None:
        try:
            with link.scope:
                try:
                    async with trio.open_nursery() as nursery:
                        handler = link.handler
                        nursery.start_soon(self._reader, link)
                        nursery.start_soon(link.transport.drain)
                        nursery.start_soon(handler.run)
                        if self.timeouts.noop_out_interval > 0 and \
                                self.session_type == "Normal":
                            nursery.start_soon(self._keepalive, link)
                        if self.timeouts.command > 0:
                            nursery.start_soon(handler.watchdog)
                except* (IscsiError, OSError) as group:
                    self._link_failed(link, group.exceptions[0])
                finally:
                    link.transport.discard()    # (cancelled from outside too: nothing waits)
        finally:
            self._abandon_if_cancelled()
        await link.transport.aclose()

    def _abandon_if_cancelled(self) -> None:
        """From a session task that is ending: if the nursery the session was given is being
        cancelled (its owner goes away without ``close()``), no task is left to answer the
        callers, so close at once (no Logout) and answer them all now. Callers of a command
        that cannot be taken back wait for it (``_abort_wait``): they are not left waiting."""
        if trio.current_effective_deadline() != -math.inf or self._sm.session is S.CLOSED:
            return
        self._end_close(self._begin_close(), "stopped")

    async def _reader(self, link: _Link) -> None:
        transport, conn = link.transport, link.conn
        decoder = transport.decoder
        commands = link.commands
        complete = self._complete
        try:
            while True:
                await transport.receive()
                link.last_rx = trio.current_time()
                while (pdu := decoder.next_pdu()) is not None:
                    for event in conn.receive_pdu(pdu):
                        if type(event) is TaskComplete:
                            if event.status == _TASK_SET_FULL:
                                self._queue_full(link)
                            cmd = commands.pop(event.itt, None)
                            if cmd is not None:
                                complete(cmd, event, None)
                        else:
                            self._dispatch(link, event)
                link.push()     # R2T answers, NOP replies, commands the window let through
                if transport.backlog > MAX_BACKLOG_BUFFERS:
                    await transport.wait_backlog(MAX_BACKLOG_BUFFERS // 2)
        except IscsiError as exc:
            # at once, so that no command is given to this connection any more
            self._link_failed(link, exc)

    def _queue_full(self, link: _Link) -> None:
        """TASK SET FULL: the connection's queue depth drops to the commands the target still
        holds (Linux's scsi_track_queue_full does the same, by steps); a new connection
        starts at the configured depth again."""
        self._count("queue_full")
        conn = link.conn
        depth = max(1, conn.outstanding)
        if depth < conn.queue_depth:
            log.info("%s: TASK SET FULL with %d commands at the target; queue depth %d -> %d",
                     self._who(), conn.outstanding, conn.queue_depth, depth)
            conn.queue_depth = depth

    def _dispatch(self, link: _Link, event) -> None:
        if isinstance(event, TaskFailed):
            cmd = link.commands.pop(event.itt, None)
            if event.plug is not None:
                # a rejected command: the target holds every later one until its CmdSN is
                # filled by the ABORT TASK queued for it; error recovery sees that it is
                tmf, cmd_sn = event.plug
                link.handler.recover(Recovery(
                    event.itt, cmd.lun if cmd else 0,
                    describe(cmd) if cmd else f"a command (ITT {event.itt:#x})",
                    tmf=tmf, request=self._expect(link, tmf), cmd_sn=cmd_sn))
            if cmd is None:
                return
            if cmd.timed_out:
                self._complete(cmd, None, self._timeout_error())
            elif event.aborted:
                # ended by a reset we sent for another command: it never completed at the
                # target and its caller still waits, so it goes again
                cmd.link = None
                self._reissue(link, cmd)
            else:
                self._complete(cmd, None, RemoteProtocolError(f"command failed: {event.reason}"))
        elif isinstance(event, (NopReceived, TextComplete, TaskManagementComplete,
                                LogoutComplete, RejectReceived)):
            request = link.requests.pop(event.itt, None) if event.itt is not None else None
            if request is not None:
                request.result = event
                request.event.set()
            if isinstance(event, RejectReceived):
                log.warning("%s rejected a PDU (reason 0x%02x)", self._who(), event.reason)
        elif isinstance(event, AsyncEventReceived):
            self._async_event(link, event.pdu)

    async def _keepalive(self, link: _Link) -> None:
        """NOP-Out after noop_out_interval of silence; no answer in noop_out_timeout: fail."""
        interval, timeout = self.timeouts.noop_out_interval, self.timeouts.noop_out_timeout
        while True:
            await trio.sleep_until(link.last_rx + interval)
            if trio.current_time() < link.last_rx + interval:
                continue
            itt = link.conn.send_nop()
            with trio.move_on_after(timeout if timeout > 0 else math.inf):
                await self._request(link, itt)
                continue
            link.conn.abandon(itt)
            self._count("timeout_err")
            raise ConnectionLost(f"no answer to NOP-Out from {self._who()} within {timeout:g} s")

    def _expect(self, link: _Link, itt: int) -> _Request:
        """Register request ``itt`` (already queued) so that its answer is kept."""
        request = _Request()
        link.requests[itt] = request
        return request

    async def _request(self, link: _Link, itt: int):
        """Send what the state machine queued for request ``itt`` and wait for its answer
        (None if the connection failed meanwhile)."""
        self._expect(link, itt)
        request = link.requests[itt]
        link.push()
        try:
            await request.event.wait()
        finally:
            link.requests.pop(itt, None)
        return request.result

    def _async_event(self, link: _Link, pdu) -> None:
        """RFC 7143 §11.9.1 AsyncEvent codes."""
        code = pdu.async_event
        self.async_events.append(f"event {code} (parameters {pdu.parameter1}, {pdu.parameter2}, "
                                 f"{pdu.parameter3})")
        for listener in list(self.async_listeners):
            listener(self, pdu)
        if code == 1 and link is self._link and self._sm.connection is C.SETUP:
            log.debug("%s: async event %d during the login hooks; acted on after them",
                      self._who(), code)
            link.deferred_async.append(pdu)
            return
        self._act_on_async(link, pdu)

    def _act_on_async(self, link: _Link, pdu) -> None:
        code = pdu.async_event
        if code == 0:
            log.info("%s: asynchronous SCSI event", self._who())
        elif code == 1:
            if link is not self._link or self._sm.connection is not C.LOGGED_IN:
                log.debug("%s asks again to log out; one logout is under way", self._who())
                return
            log.info("%s asks us to log out within %d s; reconnecting", self._who(), pdu.parameter3)
            self._fire(E.LOGOUT_STARTED)
            self._nursery.start_soon(self._logout_and_reconnect, link)
        elif code in (2, 3):
            log.info("%s will drop the connection; relogin after %d s", self._who(), pdu.parameter2)
        elif code == 4:
            self._nursery.start_soon(self._renegotiate, link)
        else:
            log.info("%s: async event %d", self._who(), code)

    async def _logout_and_reconnect(self, link: _Link) -> None:
        if link.failed:
            return
        with trio.move_on_after(self.timeouts.logout):
            try:
                await self._request(link, link.conn.logout(2))   # reason 2: remove for recovery
            except IscsiError as exc:
                log.debug("logout for recovery from %s: %s", self._who(), exc)
        self._link_failed(link, ConnectionLost("target requested logout"))

    async def _renegotiate(self, link: _Link) -> None:
        """AsyncEvent 4 (RFC 7143 §11.9.1): the target asks to renegotiate. Answered at once
        with a Text Request without keys on the same connection (one at a time). If the
        target's answer proposes keys to change, or none comes within ``login_timeout``,
        the connection is logged out for recovery and the relogin negotiates every key anew
        (the section's other answer), instead of changing limits under commands in flight."""
        serving = (C.LOGGED_IN, C.SETUP)   # (during the login hooks too: it wants an answer
        if link.failed or link.renegotiating or self._sm.connection not in serving:    # in time)
            return
        log.info("%s asks to renegotiate parameters; sending a Text Request", self._who())
        link.renegotiating = True
        try:
            result = None
            with trio.move_on_after(self.timeouts.login):
                result = await self._request(link, link.conn.send_text([]))
            if link.failed or self._sm.connection not in serving:
                return
            if isinstance(result, TextComplete) and not result.pairs:
                return                              # nothing to change
            keys = ", ".join(k for k, _ in result.pairs) if isinstance(result, TextComplete) \
                else None
            log.info("%s: renegotiation %s; logging out to log in again", self._who(),
                     f"proposes {keys}" if keys else "got no answer")
            if self._sm.connection is C.SETUP:      # the login fails; the next one negotiates
                self._link_failed(link, ConnectionLost(f"{self._who()} asked to renegotiate "
                                                       f"during the setup after login"))
                return
            self._fire(E.LOGOUT_STARTED)
            await self._logout_and_reconnect(link)
        finally:
            link.renegotiating = False

    # ------------------------------------------------------------------ commands
    async def execute(self, lun: int, cdb: bytes, *, read_length: int = 0, read_buffer=None,
                      write_data=None, fail_fast: bool = False, setup: bool = False,
                      unrecallable: bool = False) -> ScsiResult:
        """Run one SCSI command; returns on GOOD status, raises ScsiError otherwise.

        Raises SessionFailed when the session is closed or could not be recovered in time,
        CommandTimeout when the command timed out (or the caller was cancelled). With
        ``fail_fast``, PathFailed when the connection is down or fails before the answer. In
        every case where this raises, the command will not be sent again.

        BUSY and TASK SET FULL are sent again (a new command each time) after a pause of
        ``BUSY_DELAY`` doubling up to ``BUSY_DELAY_MAX``, while the next try starts within
        ``command_timeout`` of the first, as Linux's SCSI layer requeues them; TASK SET FULL
        also lowers the connection's queue depth to what the target holds.

        ``setup`` is for login hooks (``LoginHook``): the command goes out on the connection
        being set up, before the session takes other I/O, and fails fast like ``fail_fast``.

        ``unrecallable`` (a WRITE, UNMAP or WRITE SAME of ``device.Lun``): once the command
        was issued its caller is not let go when cancelled, but waits for it to end (answered,
        or ended by error recovery, the replacement timeout or ``close()``) and is cancelled
        only then, as a process waits for a write it cannot take back; see ``_abort_wait``.
        """
        timeout = self.timeouts.command
        deadline = trio.current_time() + timeout if timeout > 0 else math.inf
        delay = BUSY_DELAY
        while True:
            result = await self._execute_once(lun, cdb, read_length, read_buffer, write_data,
                                              fail_fast, setup, unrecallable)
            status = result.status
            if status in _RETRIED_STATUS and trio.current_time() + delay <= deadline:
                self._count("busy_retries")
                log.debug("%s: command 0x%s answered status 0x%02x; again in %g s",
                          self._who(), cdb[:1].hex(), status, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, BUSY_DELAY_MAX)
                continue
            if status:
                check_status(status, result.sense)
            return result

    async def _execute_once(self, lun: int, cdb: bytes, read_length: int, read_buffer,
                            write_data, fail_fast: bool, setup: bool,
                            unrecallable: bool) -> ScsiResult:
        """One command, whatever its status (``execute`` without the BUSY retries)."""
        refusal = self._refusal(setup, fail_fast)
        if refusal is not None:
            raise refusal
        # a login hook's commands take no cmds_max slot: the slots may all be held by
        # commands waiting for this very login to finish
        if not setup:
            try:
                self._admission.acquire_nowait()
            except trio.WouldBlock:
                await self._wait_for_slot(lun, fail_fast)
                # the session may have closed or given up while we waited for the slot
                refusal = self._refusal(setup, fail_fast)
                if refusal is not None:
                    self._admission.release()
                    raise refusal
        cmd = _Command(lun, cdb, read_length, read_buffer, write_data, fail_fast, setup,
                       unrecallable)
        self._unfinished[cmd] = None
        try:
            link = self._link
            if link is not None and (self._sm.connection is C.SETUP) == setup:
                self._issue(link, cmd)
            elif cmd.fail_fast:     # the connection changed while we waited for admission
                self._complete(cmd, None, PathFailed(f"session to {self._who()} is not "
                                                     f"logged in"))
            if not cmd.done:
                cmd.task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(_abort_wait(cmd))
        finally:
            if not setup:
                self._admission.release()
            if not cmd.done:
                self._forget(cmd)       # the caller is leaving unanswered: never send it again
                if not setup:
                    # (a login hook's caller leaves only when the hooks failed or the session
                    # closes: either way its connection is dropped, with what waits to be
                    # sent, so its login stays within login_timeout)
                    await self._sent_before_answer(cmd.link)
        if cmd.error is not None:
            await self._sent_before_answer(cmd.link)
            raise cmd.error
        result = cmd.result
        if result.status:               # an error status (BUSY / TASK SET FULL go again)
            await self._sent_before_answer(cmd.link)
        return result

    @staticmethod
    async def _sent_before_answer(link: _Link | None) -> None:
        """Before a caller hears that its command failed, or leaves it (cancelled): let what
        was queued for the connection so far, its command's PDUs among them, go to the
        socket first. A caller is never answered while its command can still be put on the
        wire after that (the command has a CmdSN, so it cannot be taken back without
        leaving a gap the target holds every later command behind). Bounded: a connection
        that is given up drops what waits (``Transport.discard``), and error recovery or the
        NOP ping give up on one whose target stopped reading."""
        if link is None or link.failed:
            return
        transport = link.transport
        unsent = transport.unsent
        if unsent:
            with trio.CancelScope(shield=True):
                await transport.wait_sent(transport.tx_bytes + unsent)

    def _refusal(self, setup: bool, fail_fast: bool) -> IscsiError | None:
        """Why the session takes no such command now (None: it does, or it waits)."""
        state, conn = self._sm.session, self._sm.connection
        if state is S.CLOSED:
            return SessionFailed(f"session to {self._who()} is closed")
        if setup:
            if conn is not C.SETUP:
                return PathFailed(f"session to {self._who()} is not setting up a login")
            return None
        if state is S.LOGGED_IN:
            return None
        if fail_fast:
            return PathFailed(f"session to {self._who()} is not logged in")
        if state is S.FAILED:
            return SessionFailed(f"session to {self._who()} is not logged in")
        return None         # FREE, RECOVERING: it waits for the (re)login

    def _issue(self, link: _Link, cmd: _Command) -> None:
        """Give ``cmd`` to the connection and send it (no await: callers rely on that)."""
        if cmd.attempts > MAX_REISSUE:
            self._complete(cmd, None, SessionFailed(
                f"command to {self._who()} failed: the connection broke {cmd.attempts - 1} "
                f"times while it ran"))
            return
        conn = link.conn
        if not conn.accepts_commands:   # logging out or broken: wait for the next connection
            if cmd.fail_fast:
                self._complete(cmd, None, PathFailed(f"connection to {self._who()} is "
                                                     f"going away"))
            return
        cmd_sn = conn.cmd_sn
        cmd.itt = itt = conn.start_command(cmd.lun, cmd.cdb, read_length=cmd.read_length,
                                           read_buffer=cmd.read_buffer,
                                           write_data=cmd.write_data)
        cmd.link = link
        cmd.attempts += 1
        timeout = self.timeouts.command
        if timeout > 0:
            cmd.deadline = trio.current_time() + timeout
            if conn.cmd_sn == cmd_sn:   # no CmdSN yet (the commands before it wait too):
                link.unsent.append(cmd)  # its deadline starts again when it has one
        else:
            cmd.deadline = math.inf
        link.commands[itt] = cmd
        try:
            # alone on the connection (queue depth 1): at once; else with the other commands
            # issued in this scheduler pass, in one sendmsg
            link.push(batch=len(link.commands) > 1)
        except ConnectionLost as exc:
            self._link_failed(link, exc)

    def _reissue(self, link: _Link, cmd: _Command) -> None:
        """``_issue`` from a task that is not the command's caller: a local error fails the
        command instead of the task."""
        try:
            self._issue(link, cmd)
        except IscsiError as exc:
            log.error("%s: cannot re-issue a command: %s", self._who(), exc)
            self._complete(cmd, None, exc)

    def _complete(self, cmd: _Command, result, error) -> None:
        """Answer the caller of ``cmd`` (result or error) and forget the command."""
        if cmd.done:
            return
        cmd.done = True
        cmd.result, cmd.error = result, error
        del self._unfinished[cmd]
        link = cmd.link
        if link is not None and link.commands.get(cmd.itt) is cmd:
            del link.commands[cmd.itt]
        task = cmd.task
        if task is not None:
            cmd.task = None
            trio.lowlevel.reschedule(task)

    def _forget(self, cmd: _Command) -> None:
        """The caller left without an answer (cancelled, or an error on its own path). Its
        command is never sent again; one the target may hold is aborted there (ABORT TASK at
        once, escalated by error recovery if the target does not answer it)."""
        cmd.done = True
        self._unfinished.pop(cmd, None)
        link = cmd.link
        if link is not None and link.commands.get(cmd.itt) is cmd:
            del link.commands[cmd.itt]
            if link.failed:
                return
            conn = link.conn
            if cmd.timed_out:
                conn.abandon(cmd.itt)       # its error recovery goes on without a caller
                return
            tmf = conn.abort(cmd.itt)
            if tmf is not None:
                link.handler.recover(Recovery(cmd.itt, cmd.lun, describe(cmd) + " (given up "
                                              "by its caller)", tmf=tmf,
                                              request=self._expect(link, tmf)))
            try:
                link.push()
            except ConnectionLost as exc:
                self._link_failed(link, exc)

    async def _wait_for_slot(self, lun: int, fail_fast: bool) -> None:
        """Wait for a ``cmds_max`` slot; ``_answer_slot_waiters`` ends the wait with an error
        (and the slot, if it came meanwhile, goes back)."""
        waiter = _SlotWaiter(lun, fail_fast)
        self._slot_waiters.add(waiter)
        try:
            with waiter.scope:
                await self._admission.acquire()
        finally:
            self._slot_waiters.discard(waiter)
        if waiter.error is not None:
            if not waiter.scope.cancelled_caught:
                self._admission.release()
            raise waiter.error

    def fail_waiting(self, lun: int, error: BaseException) -> int:
        """Answer ``error`` to every caller whose command for ``lun`` waits for the session
        to take I/O again, or for a ``cmds_max`` slot (a login hook's way of keeping them off
        a logical unit that is no longer the one they were meant for): none of those commands
        is ever sent. Returns how many callers there were."""
        waiting = [cmd for cmd in self._unfinished if cmd.lun == lun and cmd.link is None]
        for cmd in waiting:
            self._complete(cmd, None, error)
        return len(waiting) + self._answer_slot_waiters(error, lambda w: w.lun == lun)

    def _answer_slot_waiters(self, error: BaseException, which=None) -> int:
        """End the wait of every caller waiting for a ``cmds_max`` slot (``which``: those it
        is true for) with ``error``: none of their commands is ever sent."""
        answered = [w for w in self._slot_waiters
                    if w.error is None and (which is None or which(w))]
        for waiter in answered:
            waiter.error = error
            waiter.scope.cancel()
        return len(answered)

    def _fail_waiting(self, error: BaseException, setup: bool = True) -> None:
        """Answer ``error`` to every caller (``setup`` False: but a login hook's): those whose
        command waits, and those waiting for a slot (they are not left to find the error when
        a slot comes free)."""
        for cmd in list(self._unfinished):
            if setup or not cmd.setup:
                self._complete(cmd, None, error)
        self._answer_slot_waiters(error)

    def _timeout_error(self) -> CommandTimeout:
        self._count("cmd_timeouts")
        return CommandTimeout(f"command to {self._who()} timed out after "
                              f"{self.timeouts.command:g} s")

    # ------------------------------------------------------------------ recovery
    def _link_failed(self, link: _Link, exc: BaseException) -> None:
        if link.failed:
            return
        link.error = exc
        was_current = self._link is link
        self._drop_link(link)
        # what the socket still holds must never reach the target later: close with a reset
        link.transport.reset_on_close()
        # commands of this connection wait for the next one, except those in error
        # recovery (their connection is gone with them) and fail-fast ones: they fail now
        for cmd in list(link.commands.values()):
            cmd.link = None
            if cmd.timed_out:
                self._complete(cmd, None, self._timeout_error())
            elif cmd.fail_fast:
                link.conn.abandon(cmd.itt)      # a late Data-In must not touch its buffer
                self._complete(cmd, None, PathFailed(f"connection to {self._who()} "
                                                     f"failed: {exc}"))
        link.commands.clear()
        if not was_current or self._sm.session is S.CLOSED:
            return
        # a session that does not recover hands the failure to its caller, who reports it
        log.log(logging.WARNING if self.recover else logging.INFO,
                "connection to %s failed: %s", self._who(), exc)
        if self._fire(E.LINK_FAILED) is not S.LOGGED_IN:
            return      # a login's setup failed: connect() raises, or the relogins go on
        # fail-fast callers still waiting for a cmds_max slot are answered now too: the slots
        # may all be held by commands that wait for the relogin
        self._answer_slot_waiters(PathFailed(f"connection to {self._who()} failed: {exc}"),
                                  lambda w: w.fail_fast)
        if not self.recover:
            self._fire(E.GIVE_UP)
            self._fail_waiting(SessionFailed(f"connection to {self._who()} lost: {exc}"))
        else:
            self._nursery.start_soon(self._recover)

    def _give_up(self) -> None:
        self._fire(E.GIVE_UP)
        log.error("%s: replacement timeout (%g s) expired; failing I/O", self._who(),
                  self.timeouts.replacement_timeout)
        # a relogin's setup commands go on: they are that attempt's, bounded by login_timeout
        self._fail_waiting(SessionFailed(
            f"session to {self._who()} could not be recovered within "
            f"{self.timeouts.replacement_timeout:g} s"), setup=False)

    async def _recover(self) -> None:
        """Relogin with the same ISID until it works (started by the LOGGED_IN -> RECOVERING
        transition; it ends when the session is LOGGED_IN again or CLOSED, and close()
        cancels it). ``replacement_timeout`` after the failure, on a timer of its own,
        waiting commands fail and new ones fail at once (RECOVERING -> FAILED); the attempts
        go on, the one running then too (each is bounded by ``login_timeout``: cutting it
        short would only drop a connection that may be about to work), and the first that
        works ends that."""
        try:
            with trio.CancelScope() as scope:
                self._recovery_scope = scope
                limit = self.timeouts.replacement_timeout
                timer = trio.CancelScope()
                async with trio.open_nursery() as nursery:
                    if limit == 0:
                        self._give_up()                 # fail at once
                    elif 0 < limit < math.inf:
                        nursery.start_soon(self._give_up_at, trio.current_time() + limit,
                                           timer)
                    await self._relogin_until_done(timer)
                    timer.cancel()
        finally:
            self._abandon_if_cancelled()

    async def _give_up_at(self, deadline: float, timer: trio.CancelScope) -> None:
        with timer:
            await trio.sleep_until(deadline)
            # (a relogin that worked cancels the timer first, also in this very instant)
            if not timer.cancel_called and self._sm.session is S.RECOVERING:
                self._give_up()

    async def _relogin_until_done(self, timer: trio.CancelScope) -> None:
        failed_at = trio.current_time()
        last_error = ""
        delay = 0.0
        while self._sm.session in (S.RECOVERING, S.FAILED):
            if delay:
                await trio.sleep(delay)
                if self._sm.session is S.CLOSED:
                    return
            delay = min(max(delay * 2, 0.5), RETRY_CAP)
            link = None
            self._fire(E.LOGIN_STARTED)
            try:
                link = await self._login()
            # one line per reason: a long outage repeats the same one every
            # RETRY_CAP seconds, and those repeats go to DEBUG
            except AuthenticationError as exc:
                last_error = _log_once(logging.ERROR, last_error, "relogin to %s: %s",
                                       self._who(), exc.detail)
            except (IscsiError, OSError) as exc:
                last_error = _log_once(
                    logging.INFO, last_error, "relogin to %s failed: %s", self._who(),
                    exc.detail if isinstance(exc, IscsiError) else exc)
            if self._sm.session is S.CLOSED:
                if link is not None:
                    await link.transport.aclose()
                return
            if link is None:
                self._fire(E.LOGIN_FAILED)
                continue
            self._start(link)
            try:
                await self._run_login_hooks(link)
            except (IscsiError, OSError) as exc:
                last_error = _log_once(logging.WARNING, last_error,
                                       "relogin to %s failed: %s", self._who(),
                                       exc.detail if isinstance(exc, IscsiError) else exc)
                self._link_failed(link, exc)
                continue
            if self._sm.session is S.CLOSED:
                return
            self.reconnects += 1
            self._count("reconnects")
            # LOGGED_IN: a failure from here on (even while re-issuing below) is a new one,
            # with a recovery (and a replacement timer) of its own
            timer.cancel()
            self._open()
            log.info("relogged in to %s (sid %d, tsih %d) %.1f s after the connection "
                     "failed", self._who(), self.sid, self.tsih,
                     trio.current_time() - failed_at)
            for cmd in list(self._unfinished):
                if cmd.link is None and not cmd.done:
                    self._reissue(link, cmd)
                    if link.failed:
                        break
            return

    # ------------------------------------------------------------------ text
    async def text(self, pairs) -> list[tuple[str, str]]:
        """A Text request/response exchange (SendTargets on a discovery session)."""
        link = self._link
        if link is None or self._sm.session is S.CLOSED:
            raise SessionFailed(f"session to {self._who()} is not logged in")
        result = None
        with trio.move_on_after(self.timeouts.login):
            result = await self._request(link, link.conn.send_text(pairs))
        if isinstance(result, TextComplete):
            return result.pairs
        if isinstance(link.error, RemoteProtocolError):    # e.g. a malformed answer
            raise RemoteProtocolError(link.error.detail) from link.error
        if link.error is not None:
            raise ConnectionLost(f"text request to {self._who()} failed: {link.error}",
                                 errno=getattr(link.error, "errno", None))
        raise ConnectionLost(f"text request to {self._who()} got no answer within "
                             f"{self.timeouts.login:g} s", errno=errno.ETIMEDOUT)

    def counters(self) -> dict[str, int]:
        """``iscsiadm -m session -s`` counters, summed over this session's connections."""
        total = dict(self._counters_base)
        link = self._link
        if link is not None:
            for name, value in link.conn.counters.items():
                total[name] = total.get(name, 0) + value
        return total


def _log_once(level: int, last: str, fmt: str, *args: object) -> str:
    """Log ``fmt % args`` at ``level`` unless it is the same text as ``last`` (then DEBUG);
    returns the text, for the next call's ``last``."""
    text = fmt % args
    log.log(level if text != last else logging.DEBUG, "%s", text)
    return text


def _abort_wait(cmd: _Command):
    """Abort function for a caller sleeping on ``cmd``: a cancelled caller just stops
    waiting (``execute`` then withdraws the command) - unless the command is
    ``unrecallable`` and was issued. A WRITE whose data may be on its way cannot be taken
    back, so its caller waits for it to end and is cancelled only then: the range lock the
    caller holds outlives the WRITE, so a given-up write never lands after a later write to
    its blocks (docs/failure.md, "A write cannot be taken back")."""
    def abort(raise_cancel):
        if cmd.unrecallable and cmd.attempts:
            return trio.lowlevel.Abort.FAILED
        cmd.task = None
        return trio.lowlevel.Abort.SUCCEEDED
    return abort
