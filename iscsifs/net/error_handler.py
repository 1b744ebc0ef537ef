"""Command timeouts and error recovery for one connection: open-iscsi's SCSI error handler.

Owns: the command watchdog (``command_timeout`` from when a command got its CmdSN, see
:meth:`ErrorHandler.watchdog`) and the *recoveries*: every SCSI command the target must be made
to end, and every CmdSN gap it must be made to fill:

* a command that timed out (its caller waits for the outcome),
* a command whose caller gave it up while the target may still hold it (cancelled: the session
  queued ABORT TASK for it at once),
* the CmdSN of a command the target rejected, which it holds every later command behind (the
  connection queued an ABORT TASK naming that CmdSN at once, RFC 7143 §11.5.1).

A command goes through ABORT TASK (``abort_timeout``), then LOGICAL UNIT RESET
(``lu_reset_timeout``), then TARGET WARM RESET (``tgt_reset_timeout``), then the connection is
dropped (the session's relogin reinstates the session, which ends every task of the old
connection at the target); it stops at the first step after which the target no longer holds
the task. A gap goes from its ABORT TASK straight to dropping the connection: no reset fills a
gap (a task management function acts on the commands before its own CmdSN, and the target may
postpone it until they have all arrived, §11.5.1). Recoveries run side by side, each within its
own bounds; a reset that another one has under way for the same LUN (or the target) is waited
for, not sent again, so that one failure does not reset a LUN many times over.

The rule it keeps: a caller is answered "timed out" only once its command can no longer run at
the target (a TMF confirmed it, or the connection is gone). A command that never got a CmdSN
(the target keeps its window shut) is simply withdrawn: it was never sent.

Knows nothing of logins, relogins or callers: it works on one connection (``link``: its
``conn``, ``commands`` and ``requests``) and hands its results to the session through the
callables it was given.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Awaitable, Callable

import trio

from ..core.connection import (TMF_ABORT_TASK, TMF_LOGICAL_UNIT_RESET, TMF_TARGET_WARM_RESET,
                               TaskManagementComplete)
from ..errors import CommandTimeout, ConnectionLost

log = logging.getLogger(__name__)

# TMF responses (RFC 7143 §11.6.1) after which the referenced task no longer exists.
TMF_COMPLETE = 0
TMF_NO_TASK = 1


class Recovery:
    """One task the target must end (``cmd_sn`` None), or one CmdSN gap it must fill.

    ``cmd``: the session's command when its caller waits for the outcome (it timed out);
    ``tmf`` / ``request``: an ABORT TASK already sent for it and the session's request record
    that receives its answer (registered when it was queued, so that no answer is missed)."""

    __slots__ = ("itt", "lun", "what", "cmd", "tmf", "request", "cmd_sn", "since")

    def __init__(self, itt: int, lun: int, what: str, *, cmd: Any = None,
                 tmf: int | None = None, request: Any = None, cmd_sn: int | None = None):
        self.itt = itt
        self.lun = lun
        self.what = what
        self.cmd = cmd
        self.tmf = tmf
        self.request = request
        self.cmd_sn = cmd_sn
        self.since = trio.current_time()


class _Reset:
    """A LOGICAL UNIT RESET or TARGET WARM RESET under way, for recoveries that need one too."""

    __slots__ = ("done", "response")

    def __init__(self):
        self.done = trio.Event()
        self.response: int | None = None


class ErrorHandler:
    """The watchdog and the recoveries of one connection (run both in its nursery)."""

    def __init__(self, link: Any, timeouts: Any, *, who: Callable[[], str],
                 complete: Callable[[Any, Any, BaseException | None], None],
                 timeout_error: Callable[[], CommandTimeout],
                 link_failed: Callable[[Any, BaseException], None],
                 request: Callable[[Any, int], Awaitable[Any]]):
        self.link = link
        self.timeouts = timeouts
        self._who = who
        self._complete = complete                   # answer a command's caller
        self._timeout_error = timeout_error         # a counted CommandTimeout
        self._link_failed = link_failed             # drop the connection
        self._request = request                     # send a request, await its answer
        self._queue: deque[Recovery] = deque()      # recoveries not started yet
        self._wanted = trio.Event()
        self._resets: dict[tuple, _Reset] = {}      # (function, lun or None) -> under way

    def recover(self, recovery: Recovery) -> None:
        """Start ``recovery`` (synchronous: :meth:`run` starts its task)."""
        self._queue.append(recovery)
        self._wanted.set()

    async def watchdog(self) -> None:
        """Time out commands at their ``deadline`` (one timer for the connection): the session
        sets it ``timeouts.command`` after a command was issued, and again when one that had
        to wait for its CmdSN gets it. One that was sent then goes to error recovery. One
        still without a CmdSN is withdrawn and fails when the target's window holds it back
        (the window is closed); while it only waits for our own queue depth its timer has
        not started (Linux's block layer does not time out requests the driver has not
        taken yet) and the deadline moves on."""
        link = self.link
        timeout = self.timeouts.command
        commands = link.commands
        conn = link.conn
        while True:
            now = trio.current_time()
            wake = now + timeout
            for cmd in list(commands.values()):
                if cmd.timed_out:
                    continue
                if cmd.deadline > now:
                    wake = min(wake, cmd.deadline)
                    continue
                if conn.was_sent(cmd.itt):
                    cmd.timed_out = True
                    self.recover(Recovery(cmd.itt, cmd.lun, describe(cmd), cmd=cmd))
                elif conn.window_open:
                    cmd.deadline = now + timeout    # our own queue depth holds it
                    wake = min(wake, cmd.deadline)
                else:
                    log.warning("%s: command 0x%s got no CmdSN within %g s (the target keeps "
                                "its command window closed)", self._who(), cmd.cdb[:1].hex(),
                                timeout)
                    del commands[cmd.itt]
                    conn.abandon(cmd.itt)
                    self._complete(cmd, None, self._timeout_error())
            link.push()
            await trio.sleep_until(wake)

    async def run(self) -> None:
        """Start a task for every recovery (they end with the connection)."""
        async with trio.open_nursery() as nursery:
            while True:
                while self._queue:
                    nursery.start_soon(self._recover, self._queue.popleft())
                await self._wanted.wait()
                self._wanted = trio.Event()

    async def _recover(self, rec: Recovery) -> None:
        if rec.cmd_sn is not None:
            await self._fill_gap(rec)
            return
        link, conn, t = self.link, self.link.conn, self.timeouts
        what = rec.what
        if rec.cmd is not None:
            log.warning("%s: %s timed out after %g s; aborting it", self._who(), what, t.command)
        steps = ((TMF_ABORT_TASK, t.abort, "ABORT TASK"),
                 (TMF_LOGICAL_UNIT_RESET, t.lu_reset, "LOGICAL UNIT RESET"),
                 (TMF_TARGET_WARM_RESET, t.tgt_reset, "TARGET WARM RESET"))
        for function, timeout, name in steps:
            if not conn.holds(rec.itt):         # its status came, or a TMF ended it
                self._settle(rec)
                return
            if function == TMF_ABORT_TASK:
                if rec.request is not None:     # sent when its caller gave it up
                    response = await self._answer(rec, rec.since + timeout)
                else:
                    response = await self._task_management(function, rec, timeout)
                ended = response in (TMF_COMPLETE, TMF_NO_TASK)
            else:
                response = await self._reset(function, rec, timeout)
                ended = response == TMF_COMPLETE and not conn.holds(rec.itt)
            if ended:
                # a given-up command's ABORT TASK that worked is the normal case
                quiet = rec.request is not None and function == TMF_ABORT_TASK
                log.log(logging.DEBUG if quiet else logging.WARNING, "%s: %s ended by %s",
                        self._who(), what, name)
                self._settle(rec)
                return
            log.warning("%s: %s for %s %s", self._who(), name, what,
                        "got no answer" if response is None else
                        f"failed (response {response})")
        if not conn.holds(rec.itt):
            self._settle(rec)
            return
        log.error("%s: error recovery for %s failed; dropping the connection", self._who(),
                  what)
        self._link_failed(link, ConnectionLost(f"error recovery for {what} failed"))

    async def _fill_gap(self, rec: Recovery) -> None:
        """A rejected command's CmdSN: its ABORT TASK was sent when the Reject came."""
        conn = self.link.conn
        response = await self._answer(rec, rec.since + self.timeouts.abort)
        if response in (TMF_COMPLETE, TMF_NO_TASK) or conn.received(rec.cmd_sn):
            return
        log.error("%s: the ABORT TASK filling the CmdSN gap of %s (CmdSN %d) %s; dropping "
                  "the connection", self._who(), rec.what, rec.cmd_sn,
                  "got no answer" if response is None else f"failed (response {response})")
        self._link_failed(self.link, ConnectionLost(
            f"the target holds every command behind the CmdSN of {rec.what}"))

    def _settle(self, rec: Recovery) -> None:
        """The target no longer holds the task: a caller still waiting hears "timed out"."""
        cmd = rec.cmd
        if cmd is not None and not cmd.done:
            if self.link.conn.holds(cmd.itt):
                self.link.conn.abandon(cmd.itt)
            self._complete(cmd, None, self._timeout_error())

    async def _answer(self, rec: Recovery, deadline: float) -> int | None:
        """The answer to ``rec``'s ABORT TASK sent earlier: its response code, None (no
        answer by ``deadline``) or -1 (rejected)."""
        link = self.link
        request = rec.request
        with trio.move_on_at(deadline):
            await request.event.wait()
        link.requests.pop(rec.tmf, None)
        return self._response(rec.tmf, request.result)

    async def _task_management(self, function: int, rec: Recovery, timeout: float) -> int | None:
        """Send one TMF about ``rec``'s task; its response code, None (no answer in time) or
        -1 (rejected)."""
        conn = self.link.conn
        ref = rec.itt if function == TMF_ABORT_TASK else None
        if function == TMF_ABORT_TASK and not conn.holds(rec.itt):
            return TMF_NO_TASK
        itt = conn.task_management(function, rec.lun, ref)
        result = None
        with trio.move_on_after(timeout):
            result = await self._request(self.link, itt)
        return self._response(itt, result)

    def _response(self, itt: int, result: Any) -> int | None:
        if result is None:
            if not self.link.failed:
                self.link.conn.abandon(itt)
            return None
        if isinstance(result, TaskManagementComplete):
            return result.response
        return -1       # rejected

    async def _reset(self, function: int, rec: Recovery, timeout: float) -> int | None:
        """A LOGICAL UNIT RESET of ``rec``'s LUN or a TARGET WARM RESET. One already under way
        for that scope (another recovery's) is waited for instead; if it worked but was sent
        before this task (so did not end it), this one sends its own."""
        key = (function, rec.lun if function == TMF_LOGICAL_UNIT_RESET else None)
        shared = self._resets.get(key)
        if shared is not None:
            await shared.done.wait()        # bounded by that reset's own timeout
            if shared.response != TMF_COMPLETE or not self.link.conn.holds(rec.itt):
                return shared.response
        shared = self._resets[key] = _Reset()
        try:
            shared.response = await self._task_management(function, rec, timeout)
        finally:
            if self._resets.get(key) is shared:
                del self._resets[key]
            shared.done.set()
        return shared.response


def describe(cmd: Any) -> str:
    """How log lines name a command (``command 0x2a to LUN 1``)."""
    return f"command 0x{cmd.cdb[:1].hex()} to LUN {cmd.lun}"
