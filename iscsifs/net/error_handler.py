"""Command timeouts and error recovery for one connection: open-iscsi's SCSI error handler.

Owns: the command watchdog (``command_timeout`` from when a command was issued on the
connection) and the escalation for a command that timed out, one command at a time: ABORT TASK
(``abort_timeout``), then LOGICAL UNIT RESET (``lu_reset_timeout``), then TARGET WARM RESET
(``tgt_reset_timeout``), then dropping the connection (the session's relogin reinstates the
session, which ends every task of the old connection at the target).

The rule it keeps: a caller is answered "timed out" only once its command can no longer run at
the target (a TMF confirmed it, or the connection is gone). A command that never got a CmdSN
(the target keeps its window shut) is simply withdrawn: it was never sent.

Knows nothing of logins, relogins or callers: it works on one connection (``link``: its
``conn``, ``commands``, ``timed_out`` queue and ``recovery_wanted`` event) and hands its results
to the session through the callables it was given.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio

from ..core.connection import (TMF_ABORT_TASK, TMF_LOGICAL_UNIT_RESET, TMF_TARGET_WARM_RESET,
                               TaskManagementComplete)
from ..errors import CommandTimeout, ConnectionLost

log = logging.getLogger(__name__)

# TMF responses (RFC 7143 §11.6.1) after which the referenced task no longer exists.
TMF_COMPLETE = 0
TMF_NO_TASK = 1


class ErrorHandler:
    """The watchdog and the escalation of one connection (run both in its nursery)."""

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

    async def watchdog(self) -> None:
        """Time out commands ``timeouts.command`` after they were issued (one timer for the
        connection). A command that never got a CmdSN is withdrawn and fails; one that was
        sent goes to error recovery."""
        link = self.link
        timeout = self.timeouts.command
        commands = link.commands
        while True:
            now = trio.current_time()
            wake = now + timeout
            for cmd in list(commands.values()):
                if cmd.timed_out:
                    continue
                if cmd.deadline > now:
                    wake = cmd.deadline     # commands are in issue order: this is the next
                    break
                if link.conn.was_sent(cmd.itt):
                    cmd.timed_out = True
                    link.timed_out.append(cmd)
                    link.recovery_wanted.set()
                else:
                    log.warning("%s: command 0x%s got no CmdSN within %g s (the target keeps "
                                "its command window closed)", self._who(), cmd.cdb[:1].hex(),
                                timeout)
                    del commands[cmd.itt]
                    link.conn.abandon(cmd.itt)
                    self._complete(cmd, None, self._timeout_error())
            link.push()
            await trio.sleep_until(wake)

    async def run(self) -> None:
        """open-iscsi's escalation for timed-out commands, one at a time."""
        link = self.link
        t = self.timeouts
        while True:
            if not link.timed_out:
                await link.recovery_wanted.wait()
                link.recovery_wanted = trio.Event()
                continue
            cmd = link.timed_out.popleft()
            if cmd.done:
                continue
            what = f"command 0x{cmd.cdb[:1].hex()} to LUN {cmd.lun}"
            log.warning("%s: %s timed out after %g s; aborting it", self._who(), what, t.command)
            steps = ((TMF_ABORT_TASK, t.abort, "ABORT TASK"),
                     (TMF_LOGICAL_UNIT_RESET, t.lu_reset, "LOGICAL UNIT RESET"),
                     (TMF_TARGET_WARM_RESET, t.tgt_reset, "TARGET WARM RESET"))
            for function, timeout, name in steps:
                if cmd.done:
                    break
                response = await self._task_management(function, cmd, timeout)
                if response in (TMF_COMPLETE, TMF_NO_TASK) and (
                        function == TMF_ABORT_TASK or response == TMF_COMPLETE):
                    log.warning("%s: %s ended by %s", self._who(), what, name)
                    if not cmd.done:    # "no such task": the TMF's events did not end it
                        link.conn.abandon(cmd.itt)
                        self._complete(cmd, None, self._timeout_error())
                    break
                log.warning("%s: %s for %s %s", self._who(), name, what,
                            "got no answer" if response is None else
                            f"failed (response {response})")
            else:
                if not cmd.done:
                    log.error("%s: error recovery for %s failed; dropping the connection",
                              self._who(), what)
                    self._link_failed(link, ConnectionLost(
                        f"error recovery for a timed-out {what} failed"))
                    return

    async def _task_management(self, function: int, cmd: Any, timeout: float) -> int | None:
        """Send one TMF about ``cmd``; its response code, or None (no answer in time)."""
        link = self.link
        ref = cmd.itt if function == TMF_ABORT_TASK else None
        if function == TMF_ABORT_TASK and not link.conn.was_sent(cmd.itt):
            return TMF_NO_TASK
        itt = link.conn.task_management(function, cmd.lun, ref)
        result = None
        with trio.move_on_after(timeout):
            result = await self._request(link, itt)
        if result is None:
            if not link.failed:
                link.conn.abandon(itt)
            return None
        if isinstance(result, TaskManagementComplete):
            return result.response
        return -1       # rejected
