"""The states of a session and of its connection, and every transition between them.

Owns: ``SessionState`` and ``ConnectionState``, the events that move them (``SessionEvent``),
the one transition table (``TRANSITIONS``), and the words iscsiadm shows for each state. Like
h11's ``_state.py``: an event that has no entry for the current state is an error at once
(``LocalProtocolError`` naming the state and the event), so what a session does can never drift
from what its state says, and no flag beside the state keeps a second, private account.

Knows nothing of I/O, timers or commands: ``iscsifs.net.session`` fires the events and acts on
the transitions (start a relogin, fail the waiting commands, notify its listeners). Read the
table as the session's life::

    FREE --login--> FREE/IN LOGIN --login done--> FREE/SETUP --opened--> LOGGED_IN/LOGGED IN
    LOGGED_IN --link failed--> RECOVERING/TRANSPORT WAIT --relogin ... opened--> LOGGED_IN
    RECOVERING --give up (replacement_timeout)--> FAILED --relogin ... opened--> LOGGED_IN
    any --close--> CLOSED (LOGGED IN: IN LOGOUT until the Logout ends, then FREE)
"""

from __future__ import annotations

import enum

from iscsifs.errors import LocalProtocolError


class SessionState(enum.Enum):
    """Where the session is; ``iscsiadm`` is the word ``iscsiadm -m session -P 3`` shows."""

    FREE = "free"               # not logged in yet: the first login (and its hooks) runs
    LOGGED_IN = "logged in"     # takes I/O
    RECOVERING = "recovering"   # its connection failed: relogin attempts; I/O waits for them
    FAILED = "failed"           # replacement_timeout expired (or the session never recovers):
                                # I/O fails at once; relogin attempts go on
    CLOSED = "closed"           # logged out by its owner; final

    @property
    def iscsiadm(self) -> str:
        return _SESSION_WORDS[self]

    @property
    def device_state(self) -> str:
        """The state of the session's SCSI devices, as Linux shows it in sysfs: ``running``,
        ``blocked`` while a relogin may still bring them back, ``transport-offline`` once the
        replacement timeout expired, ``offline`` after logout."""
        return _DEVICE_STATES[self]


class ConnectionState(enum.Enum):
    """Where the session's (one) connection is; ``iscsiadm`` as for ``SessionState``."""

    FREE = "free"                       # none
    TRANSPORT_WAIT = "transport wait"   # failed; waiting for the next login attempt
    IN_LOGIN = "in login"               # TCP connect and the login phase
    SETUP = "setup"                     # logged in; the login hooks run (setup commands only)
    LOGGED_IN = "logged in"             # full feature phase, taking I/O
    IN_LOGOUT = "in logout"             # a Logout Request is out (ours, or for the target)

    @property
    def iscsiadm(self) -> str:
        return _CONNECTION_WORDS[self]


class SessionEvent(enum.Enum):
    """What happens to a session; each one moves both machines by ``TRANSITIONS``."""

    LOGIN_STARTED = "login started"     # a login attempt: connect, login phase (redirects too)
    LOGIN_FAILED = "login failed"       # ... refused, timed out, or the connection went
    LOGIN_DONE = "login done"           # ... completed: the connection serves, hooks run
    OPENED = "opened"                   # the hooks are done: the session takes I/O
    LINK_FAILED = "link failed"         # the serving connection failed (reset, protocol error,
                                        # no NOP answer, error recovery gave up, hook failed)
    LOGOUT_STARTED = "logout started"   # a Logout Request for the target went out (async 1)
    GIVE_UP = "give up"                 # replacement_timeout expired (or no recovery at all)
    CLOSE = "close"                     # the owner logs out
    LOGGED_OUT = "logged out"           # our Logout ended (answered, timed out, connection lost)


S, C, E = SessionState, ConnectionState, SessionEvent

_SESSION_WORDS = {S.FREE: "FREE", S.LOGGED_IN: "LOGGED_IN", S.RECOVERING: "FAILED",
                  S.FAILED: "FAILED", S.CLOSED: "FREE"}
_DEVICE_STATES = {S.FREE: "blocked", S.LOGGED_IN: "running", S.RECOVERING: "blocked",
                  S.FAILED: "transport-offline", S.CLOSED: "offline"}
_CONNECTION_WORDS = {C.FREE: "FREE", C.TRANSPORT_WAIT: "TRANSPORT WAIT", C.IN_LOGIN: "IN LOGIN",
                     C.SETUP: "IN LOGIN", C.LOGGED_IN: "LOGGED IN", C.IN_LOGOUT: "IN LOGOUT"}


def _down(state: SessionState) -> dict[SessionEvent, SessionState]:
    """A session without a connection that takes I/O: logins come and go, it stays put."""
    return {E.LOGIN_STARTED: state, E.LOGIN_FAILED: state, E.LOGIN_DONE: state,
            E.LINK_FAILED: state, E.OPENED: S.LOGGED_IN, E.CLOSE: S.CLOSED}


# The one table: machine -> state -> event -> next state. An event a machine lists for some
# state must be listed for its current state, or it is an error; an event a machine never lists
# leaves it as it is (GIVE_UP does not touch the connection).
TRANSITIONS: dict[str, dict] = {
    "session": {
        S.FREE: _down(S.FREE),
        S.LOGGED_IN: {E.LINK_FAILED: S.RECOVERING, E.LOGOUT_STARTED: S.LOGGED_IN,
                      E.CLOSE: S.CLOSED},
        S.RECOVERING: {**_down(S.RECOVERING), E.GIVE_UP: S.FAILED},
        S.FAILED: _down(S.FAILED),
        S.CLOSED: {E.LOGGED_OUT: S.CLOSED},
    },
    "connection": {
        C.FREE: {E.LOGIN_STARTED: C.IN_LOGIN, E.CLOSE: C.FREE},
        C.TRANSPORT_WAIT: {E.LOGIN_STARTED: C.IN_LOGIN, E.CLOSE: C.FREE},
        C.IN_LOGIN: {E.LOGIN_DONE: C.SETUP, E.LOGIN_FAILED: C.TRANSPORT_WAIT,
                     E.CLOSE: C.FREE},
        C.SETUP: {E.OPENED: C.LOGGED_IN, E.LINK_FAILED: C.TRANSPORT_WAIT, E.CLOSE: C.FREE},
        C.LOGGED_IN: {E.LINK_FAILED: C.TRANSPORT_WAIT, E.LOGOUT_STARTED: C.IN_LOGOUT,
                      E.CLOSE: C.IN_LOGOUT},
        C.IN_LOGOUT: {E.LINK_FAILED: C.TRANSPORT_WAIT, E.LOGGED_OUT: C.FREE, E.CLOSE: C.FREE},
    },
}

_KNOWN = {machine: frozenset(e for row in table.values() for e in row)
          for machine, table in TRANSITIONS.items()}


class SessionStateMachine:
    """The two states of one session and the only way to change them: :meth:`process`."""

    def __init__(self) -> None:
        self.session = SessionState.FREE
        self.connection = ConnectionState.FREE

    def process(self, event: SessionEvent) -> tuple[SessionState, ConnectionState]:
        """Apply ``event`` to both machines at once; returns the states before it. Raises
        ``LocalProtocolError`` (and changes nothing) when either machine has no entry for it
        in its current state."""
        before = (self.session, self.connection)
        after = tuple(self._next(machine, state, event)
                      for machine, state in zip(("session", "connection"), before))
        self.session, self.connection = after
        return before

    def _next(self, machine: str, state: enum.Enum, event: SessionEvent):
        if event not in _KNOWN[machine]:
            return state
        try:
            return TRANSITIONS[machine][state][event]
        except KeyError:
            raise LocalProtocolError(
                f"can't handle event {event.name} in {machine} state {state.name} "
                f"(session {self.session.name}, connection {self.connection.name})") from None

    def __repr__(self) -> str:
        return f"<SessionStateMachine {self.session.name}/{self.connection.name}>"
