"""The invariants, checked after every step.

A *step* is one PDU received and handled by the simulated target (the checks that cost little
run there), and one tick of a one-second heartbeat of simulated time (the time bounds, the
queues, the target's waiting tasks); the read rule runs when a read returns, the disk rule at
the end. The first violation ends the run.

What is watched, and how (``invariant`` names as the report counts them):

* ``bound.*`` - every ``Session.execute`` (the simulator wraps it, and ``Session.close``) is
  recorded with its start and end. While a session is down, a caller waits at most
  ``replacement_timeout`` (``bound.replacement``), a fail-fast (multipath) caller not at all
  (``bound.fail_fast``); once ``close()`` returned nobody waits (``bound.closed``). A
  ``CommandTimeout`` never comes before ``command_timeout`` and a give-up never before
  ``replacement_timeout`` (``bound.early``).
* ``wire.after_answer`` - a SCSI Command reaching the wire must belong to a caller still
  waiting (same session, LUN and CDB); ``wire.failed_write`` - a write's data is never first
  put on the wire after its caller was told it failed.
* ``data.*`` - the read rule of :mod:`.model` for every read and, at the end, for every cell of
  every disk; a write's cells must carry its LU's tag and their own position
  (``data.wrong_lu``, ``data.misplaced``).
* ``queue.*`` - the transport backlog, the ITT tombstones (in number, and none left for a
  task a TMF on its own connection ended), the async event log, and at most one Logout
  Request per connection.
* ``target.*`` - no task waits for Data-Out, and no command for a CmdSN gap, longer than
  ``command_timeout`` plus the whole escalation after the initiator could have given up; an
  Async renegotiation request is answered (Text or Logout) in time.
* ``conn.healthy_drop`` - the initiator closes a connection only for a reason: the target
  misbehaved, stalled or ignored a TMF, asked for a logout, ended a task without a word (another
  connection's reset, TAS=0), rejected a relogin's identity INQUIRY ``IDENTITY_ATTEMPTS``
  times (the LUN cannot be verified: the relogin fails), or the initiator logged out.
* ``error.*`` - a caller never sees BUSY, TASK SET FULL or UNIT ATTENTION (they are retried),
  nor an exception that is not the library's (a ``KeyError`` is a bug).
* ``liveness``, ``by_id.lost``, ``unmount.*`` - checked by the workload (:mod:`.workload`).
"""

from __future__ import annotations

import math
from collections import Counter

import trio

from iscsifs.errors import CommandTimeout, SessionFailed
from iscsifs.initiator import IDENTITY_ATTEMPTS
from iscsifs.scsi.sense import ScsiError
from iscsifs.net import session as _session_mod
from iscsifs.net.session import RETRY_CAP

from . import disk
from .disk import CELL
from .model import Model

EPS = 0.01
_BUSY_PAUSE = getattr(_session_mod, "BUSY_DELAY_MAX", 0.0)


class ExecRec:
    __slots__ = ("session", "info", "lun", "cdb", "fail_fast", "start", "start_t", "end",
                 "end_t", "setup")

    def __init__(self, session, info, lun, cdb, fail_fast, start, start_t, setup=False):
        self.setup = setup          # a login hook's command: part of a login
        self.session = session
        self.info = info
        self.lun = lun
        self.cdb = bytes(cdb)
        self.fail_fast = fail_fast
        self.start = start
        self.start_t = start_t
        self.end = None
        self.end_t = None


class SessInfo:
    def __init__(self, session, now: float):
        self.session = session
        self.down_since = None if session.logged_in else now
        self.outages: list[list[float]] = []        # [start, end] (end inf while down)
        if self.down_since is not None:
            self.outages.append([now, math.inf])
        self.closed_at: float | None = None
        self.close_started: float | None = None
        self.last_attempt = -math.inf        # the last time it opened a connection


class Checker:
    def __init__(self, world):
        self.world = world
        self.model = Model()
        self.pending: dict[ExecRec, None] = {}
        self.by_key: dict[tuple, list[ExecRec]] = {}
        self.sessions: list[SessInfo] = []
        self.checks: Counter = Counter()
        self.max_seen: Counter = Counter()      # queue high-water marks

    # ------------------------------------------------------------------ helpers
    def fail(self, invariant: str, message: str) -> None:
        self.world.violation(invariant, message)

    @property
    def t(self):
        return self.world.timeouts

    def escalation(self) -> float:
        t = self.t
        return t.command + t.abort + t.lu_reset + t.tgt_reset

    # ------------------------------------------------------------------ sessions
    def info(self, session) -> SessInfo:
        info = getattr(session, "_sim_info", None)
        if info is None:
            info = SessInfo(session, trio.current_time())
            session._sim_info = info
            self.sessions.append(info)
            session.listeners.append(self._session_changed)
            # see its relogin attempts: the transport factory (the simulator's seam) per session
            factory = session.transport_factory

            async def attempt(portal, info=info, factory=factory):
                info.last_attempt = trio.current_time()
                return await factory(portal)
            session.transport_factory = attempt
        return info

    def _session_changed(self, session) -> None:
        info = session._sim_info
        now = trio.current_time()
        if session.logged_in:
            if info.down_since is not None:
                info.outages[-1][1] = now
            info.down_since = None
        elif info.down_since is None and info.close_started is None:
            info.down_since = now
            info.outages.append([now, math.inf])
        self.world.trace("session", session.sid, session.session_state)

    def close_started(self, session) -> None:
        self.info(session).close_started = trio.current_time()

    def close_done(self, session) -> None:
        info = self.info(session)
        info.closed_at = trio.current_time()

    # ------------------------------------------------------------------ execute
    def exec_start(self, session, lun, cdb, fail_fast, setup=False) -> ExecRec:
        info = self.info(session)
        rec = ExecRec(session, info, lun, cdb, fail_fast, self.world.next_seq(),
                      trio.current_time(), setup)
        self.pending[rec] = None
        self.world.trace_list.append((rec.start_t, "exec", rec.start, session.sid,
                                      rec.cdb[:1].hex(), "ff" if fail_fast else "",
                                      "setup" if setup else ""))
        # the PDU's CDB field is 16 bytes: shorter CDBs arrive padded with zeros
        self.by_key.setdefault((session.isid, lun, rec.cdb.ljust(16, b"\0")), []).append(rec)
        return rec

    def exec_end(self, rec: ExecRec, exc: BaseException | None) -> None:
        world = self.world
        rec.end = world.next_seq()
        rec.end_t = now = trio.current_time()
        self.pending.pop(rec, None)
        world.trace_list.append((now, "exec-end", rec.start, type(exc).__name__ if exc
                                 else "ok"))
        if world.stopped:
            return
        self.checks["bound.exec"] += 1
        self._check_waited(rec, now)
        if exc is None or isinstance(exc, trio.Cancelled):
            return
        t = self.t
        elapsed = now - rec.start_t
        info = rec.info
        status = getattr(exc, "status", None)
        if isinstance(exc, ScsiError) and status in (0x08, 0x28) \
                and elapsed < t.command - _BUSY_PAUSE - EPS:
            # BUSY / TASK SET FULL are retried for command_timeout (Linux requeues them)
            self.fail("error.transient", f"command 0x{rec.cdb[:1].hex()} (sid "
                      f"{rec.session.sid}) failed with status {status:#04x} after "
                      f"{elapsed:.3f} s, within command_timeout ({t.command:g} s): BUSY and "
                      f"TASK SET FULL are to be retried")
        elif isinstance(exc, CommandTimeout) and elapsed < t.command - EPS:
            self.fail("bound.early", f"CommandTimeout after {elapsed:.3f} s, before "
                      f"command_timeout ({t.command:g} s): {exc}")
        elif isinstance(exc, SessionFailed) and info.close_started is None \
                and info.down_since is not None and not rec.fail_fast and not rec.setup \
                and now < info.down_since + t.replacement_timeout - EPS:
            self.fail("bound.early", f"SessionFailed {now - info.down_since:.3f} s into an "
                      f"outage, before replacement_timeout ({t.replacement_timeout:g} s): {exc}")

    def _check_waited(self, rec: ExecRec, now: float) -> None:
        """Did ``rec`` wait (until ``now``) where no caller may?"""
        info = rec.info
        t = self.t
        if rec.setup:
            # a login hook's command is part of a login: login_timeout bounds it
            if now - rec.start_t > t.login + EPS:
                self.fail("bound.login", f"setup command 0x{rec.cdb[:1].hex()} (sid "
                          f"{rec.session.sid}) waited {now - rec.start_t:.2f} s, past "
                          f"login_timeout ({t.login:g} s)")
            return
        # a fail-fast command is answered at once - or, if it was pausing between BUSY
        # retries when the path failed, when that pause ends
        limit = _BUSY_PAUSE if rec.fail_fast else t.replacement_timeout
        for start, end in info.outages:
            if end <= rec.start_t or start >= now:
                continue
            given_up = start + limit
            since = max(rec.start_t, given_up)
            until = min(now, end)
            if since + EPS < until and (info.close_started is None
                                        or info.close_started > since + EPS):
                if rec.fail_fast:
                    self.fail("bound.fail_fast", f"a fail-fast command 0x{rec.cdb[:1].hex()} "
                              f"(issued at {rec.start_t:.3f}) waited {until - start:.2f} s "
                              f"while its session (sid {rec.session.sid}) was down (since "
                              f"{start:.3f})")
                else:
                    self.fail("bound.replacement", f"command 0x{rec.cdb[:1].hex()} (sid "
                              f"{rec.session.sid}) still waited {until - start:.2f} s into an "
                              f"outage that began at {start:.2f}, past replacement_timeout "
                              f"({t.replacement_timeout:g} s)")
                return
        if info.closed_at is not None and now > max(info.closed_at, rec.start_t) + EPS:
            self.fail("bound.closed", f"command 0x{rec.cdb[:1].hex()} (sid {rec.session.sid}) "
                      f"waited {now - max(info.closed_at, rec.start_t):.2f} s after its "
                      f"session was closed")

    def command_on_wire(self, tconn, pdu, seq: int) -> None:
        """A SCSI Command reached the target: its caller must still be waiting."""
        self.checks["wire.after_answer"] += 1
        key = (tconn.login_isid, _lun_number(pdu.lun), bytes(pdu.cdb).ljust(16, b"\0"))
        recs = self.by_key.get(key)
        if recs:
            live = [r for r in recs if r.end is None or r.end > seq]
            self.by_key[key] = live
            if any(r.start < seq for r in live):
                return
        self.fail("wire.after_answer", f"SCSI Command 0x{bytes(pdu.cdb[:1]).hex()} (ITT "
                  f"{pdu.itt:#x}, CmdSN {pdu.cmd_sn}) was put on the wire (connection "
                  f"{tconn.id}) when no caller was waiting for it")

    # ------------------------------------------------------------------ data
    def data_on_wire(self, data, seq: int) -> None:
        model = self.model
        first = model.wire_first
        writes = model.writes
        for w in set(disk.write_ids(data)):
            if w in first or w not in writes or not w:
                continue
            first[w] = seq
            rec = writes[w]
            if rec.outcome == "error" and seq > rec.end:
                self.fail("wire.failed_write", f"data of write {w} ({rec.what}) was first put "
                          f"on the wire after its caller was told it failed")

    def applying(self, lu, first_cell: int, data) -> None:
        """The target is about to put ``data`` on ``lu`` from cell ``first_cell``."""
        self.checks["data.apply"] += 1
        for i, k, tag, wid, cell in disk.runs(data):
            if wid == disk.ZERO:
                continue
            if wid == disk.GARBAGE:
                self.fail("data.misplaced", f"a write to LU tag {lu.tag} carries bytes nobody "
                          f"wrote at cell {first_cell + i}")
                return
            if tag != lu.tag:
                self.fail("data.wrong_lu", f"write {wid}, made for LU tag {tag}, reached LU "
                          f"tag {lu.tag} ({lu.wwn}) at cell {first_cell + i}")
                return
            if cell != first_cell + i:
                self.fail("data.misplaced", f"write {wid} for cell {cell} landed at cell "
                          f"{first_cell + i} of LU tag {lu.tag}")
                return

    def read_done(self, what: str, tag: int, offset: int, data, rs: float, re: float) -> None:
        self.checks["data.read"] += 1
        first = offset // CELL
        why = self.model.check_read(tag, first, disk.runs(data), rs, re)
        if why is not None:
            self.fail("data.read", f"{what}: {why}")

    def final_disks(self, lus) -> None:
        seq = self.world.next_seq()
        for lu in lus:
            self.checks["data.final"] += 1
            why = self.model.check_read(lu.tag, 0, disk.runs(lu.data), seq, seq)
            if why is not None:
                self.fail("data.final", f"LU tag {lu.tag} at the end: {why}")
                return

    # ------------------------------------------------------------------ target events
    def login_done(self, tconn) -> None:
        self.checks["login"] += 1

    def logout_request(self, tconn) -> None:
        self.checks["queue.logouts"] += 1
        if tconn.logouts > 1:
            self.fail("queue.logouts", f"{tconn.logouts} Logout Requests on connection "
                      f"{tconn.id} (one is the most a connection needs)")

    def initiator_closed(self, tconn) -> None:
        """The initiator closed a connection in the full feature phase: only for a reason."""
        self.checks["conn.healthy_drop"] += 1
        world = self.world
        now = getattr(tconn.sim, "initiator_closed_at", None) or trio.current_time()
        t = self.t
        quiet = t.noop_out_interval + t.noop_out_timeout + 1
        if tconn.logged_out or tconn.misbehaved or tconn.tmf_fault or tconn.async_logout_sent \
                or tconn.renegotiate_deadline is not None or tconn.window_closed \
                or tconn.silent_kill or tconn.rejected_commands >= IDENTITY_ATTEMPTS:
            # (a window held shut: commands, a login's setup ones too, may time out)
            return
        if max(tconn.portal.stalled_until, tconn.paused_until) > now - quiet \
                or tconn.pause_end > now - quiet or tconn.target.last_unstall > now - quiet:
            return
        if world.closing or world.target_rng is None:
            return
        if any(info.session.isid == tconn.login_isid and info.close_started is not None
               for info in self.sessions):
            return      # a logout (rmdir, unmount) closes it, even in the middle of a login
        why = " / ".join(world.warnings[-3:]) or "no reason logged"
        self.fail("conn.healthy_drop", f"the initiator dropped connection {tconn.id} to a "
                  f"target that answered everything correctly; last warnings: {why}")

    # ------------------------------------------------------------------ per step / beat
    def step(self) -> None:
        self.checks["step"] += 1

    def heartbeat(self) -> None:
        world = self.world
        if world.stopped:
            return
        now = trio.current_time()
        self.checks["heartbeat"] += 1
        for rec in list(self.pending):
            self._check_waited(rec, now)
            if world.stopped:
                return
        self._stuck(now)
        self._queues()
        self._target_waits(now)

    def _stuck(self, now: float) -> None:
        """No session stays down without trying to log in again (``session.stuck``)."""
        t = self.t
        # the back-off is at most RETRY_CAP, and the give-up at replacement_timeout may
        # start one more wait: two RETRY_CAPs and a login attempt (the login phase within
        # login_timeout, then its setup commands within another)
        bound = 2 * RETRY_CAP + 2 * t.login + 1
        for info in self.sessions:
            if info.down_since is None or info.close_started is not None:
                continue
            self.checks["session.stuck"] += 1
            last = max(info.down_since, info.last_attempt)
            if now - last > bound:
                self.fail("session.stuck", f"session {info.session.sid} has been down since "
                          f"{info.down_since:.2f} and has not tried to log in again for "
                          f"{now - last:.1f} s (relogin attempts come at least every "
                          f"{bound:g} s)")
                return

    def _queues(self) -> None:
        world = self.world
        w = world
        now = trio.current_time()
        for transport in list(w.transports):
            if transport._closed:
                w.transports.remove(transport)
                continue
            n = len(transport._backlog)
            if not n:
                continue
            nbytes = sum(len(b) for b in transport._backlog)
            self.max_seen["backlog_buffers"] = max(self.max_seen["backlog_buffers"], n)
            self.checks["queue.backlog"] += 1
            if n > w.limits["backlog_buffers"] or nbytes > w.limits["backlog_bytes"]:
                self.fail("queue.backlog", f"the transport backlog of connection "
                          f"{transport.conn.id} holds {n} buffers, {nbytes} bytes (bound "
                          f"{w.limits['backlog_buffers']} buffers, {w.limits['backlog_bytes']} "
                          f"bytes)")
                return
        target = w.target
        for info in self.sessions:
            s = info.session
            self.checks["queue.async_events"] += 1
            if len(s.async_events) > 64:
                self.fail("queue.async_events", f"session {s.sid} keeps {len(s.async_events)} "
                          f"async events")
                return
            tomb = _tombstones(s)
            if tomb is None:
                continue
            conn_t = None
            for c in target.conns.values():
                if c.login_isid == s.isid and c.phase == "ffp" and not c.dead:
                    conn_t = c
            # only when the wire is quiet: PDUs the target has not read yet (a stall, a
            # pause, a backlog) or answers the initiator has not read are no leak
            if conn_t is None or conn_t.sim.down.size or conn_t.sim.up.size \
                    or conn_t.stalled() or conn_t.paused_until > trio.current_time() \
                    or (conn_t.sim.transport is not None and conn_t.sim.transport._backlog):
                continue
            self.checks["queue.tombstones"] += 1
            self.max_seen["tombstones"] = max(self.max_seen["tombstones"], tomb)
            live = len(conn_t.tasks)
            bound = live + w.limits["tombstones"]
            if tomb > bound:
                self.fail("queue.tombstones", f"session {s.sid} keeps {tomb} ITT tombstones "
                          f"while the target holds {live} of its tasks (bound {bound})")
                return
            # and each one precisely: a task a TMF on this connection ended (its answer came
            # more than a second ago) leaves no tombstone
            link = getattr(s, "_link", None)
            if link is None or conn_t.sim.transport is not getattr(link, "transport", None):
                continue
            itts = link.conn._itts
            for itt, when in conn_t.tmf_ended.items():
                item = itts.get(itt)
                if now - when > 1 and type(item).__name__ == "_Gone":
                    self.checks["queue.tombstones"] += 1
                    self.fail("queue.tombstones", f"session {s.sid} keeps the ITT {itt:#x} "
                              f"of a task a TMF ended {now - when:.1f} s ago (the TMF's "
                              f"answer frees it)")
                    return

    def _target_waits(self, now: float) -> None:
        world = self.world
        target = world.target
        bound = self.escalation() + 5
        for conn in list(target.conns.values()):
            if conn.dead or conn.phase != "ffp":
                continue
            if conn.stalled() or conn.paused_until > now:
                continue
            quiet_since = max(conn.pause_end, target.last_unstall)
            for task in conn.tasks.values():
                since = task.data_wait_since
                if task.state == "data" and since is not None and since > quiet_since \
                        and now - since > bound:
                    self.checks["target.data_out_wait"] += 1
                    self.fail("target.data_out_wait", f"the target has waited {now - since:.1f}"
                              f" s for Data-Out of ITT {task.itt:#x} (connection {conn.id}), "
                              f"longer than command_timeout and the whole escalation "
                              f"({bound:g} s): the initiator gave the command up without "
                              f"ending it")
                    return
            sess = conn.session
            if sess is not None and sess.gap_since is not None and sess.held \
                    and now - max(sess.gap_since, quiet_since) > bound:
                self.checks["target.cmdsn_gap"] += 1
                self.fail("target.cmdsn_gap", f"the target has held {len(sess.held)} "
                          f"command(s) for {now - sess.gap_since:.1f} s waiting for CmdSN "
                          f"{sess.exp_cmd_sn} (connection {conn.id}), which never came")
                return
            if conn.renegotiate_deadline is not None and now > conn.renegotiate_deadline:
                self.checks["target.renegotiate"] += 1
                self.fail("target.renegotiate", f"the target asked to renegotiate (Async "
                          f"event 4) on connection {conn.id} and got neither a Text Request "
                          f"nor a Logout in time")
                return


def _lun_number(field: int) -> int:
    from iscsifs.core.pdu import decode_lun
    return decode_lun(field)


def _tombstones(session) -> int | None:
    """ITT tombstones (abandoned exchanges) of the session's current connection (reads the
    session's private ``_link``: the only place that knows its connection)."""
    link = getattr(session, "_link", None)
    conn = getattr(link, "conn", None)
    return None if conn is None else conn.tombstones
