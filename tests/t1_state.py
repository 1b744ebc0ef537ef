"""The session's one table of states (iscsifs.core.state), checked as a whole.

Every state both machines can reach together is walked from the start; the pairs found must
keep the rules the session relies on, every event missing from the table must be refused at
once with the state and the event named, and the words shown are iscsiadm's.
"""

from __future__ import annotations

import pytest

from iscsifs.core.state import (TRANSITIONS, ConnectionState, SessionEvent, SessionState,
                                SessionStateMachine)
from iscsifs.errors import LocalProtocolError

S, C, E = SessionState, ConnectionState, SessionEvent


def machine_at(session: SessionState, connection: ConnectionState) -> SessionStateMachine:
    sm = SessionStateMachine()
    sm.session, sm.connection = session, connection
    return sm


def reachable() -> dict[tuple[SessionState, ConnectionState], set[SessionEvent]]:
    """Each pair of states reachable from (FREE, FREE), with the events it accepts."""
    seen: dict = {}
    todo = [(S.FREE, C.FREE)]
    while todo:
        pair = todo.pop()
        if pair in seen:
            continue
        seen[pair] = set()
        for event in E:
            sm = machine_at(*pair)
            try:
                sm.process(event)
            except LocalProtocolError:
                continue
            seen[pair].add(event)
            todo.append((sm.session, sm.connection))
    return seen


def test_the_reachable_pairs_keep_the_sessions_rules():
    pairs = reachable()
    for (session, connection), events in pairs.items():
        # I/O goes out only on a connection in the full feature phase
        if session is S.LOGGED_IN:
            assert connection in (C.LOGGED_IN, C.IN_LOGOUT), (session, connection)
        # a connection takes I/O only for a logged-in session (or logs out for a closed one)
        if connection in (C.LOGGED_IN, C.IN_LOGOUT):
            assert session in (S.LOGGED_IN, S.CLOSED), (session, connection)
        # login hooks run only while the session does not take I/O yet
        if connection is C.SETUP:
            assert session in (S.FREE, S.RECOVERING, S.FAILED)
        # every state but the end can be closed, and the end is quiet
        if session is not S.CLOSED:
            assert E.CLOSE in events
    assert (S.CLOSED, C.FREE) in pairs and pairs[(S.CLOSED, C.FREE)] == set()
    # and every state of either machine is used
    assert {s for s, _ in pairs} == set(S) and {c for _, c in pairs} == set(C)


def test_a_relogin_is_the_only_way_back_to_logged_in():
    for (session, connection), events in reachable().items():
        if E.OPENED in events:
            assert connection is C.SETUP and session is not S.LOGGED_IN
    assert E.GIVE_UP in reachable()[(S.RECOVERING, C.TRANSPORT_WAIT)]
    assert E.GIVE_UP not in reachable()[(S.LOGGED_IN, C.LOGGED_IN)]


@pytest.mark.parametrize("event", list(E))
def test_an_event_without_an_entry_is_an_error_naming_state_and_event(event):
    for (session, connection), events in reachable().items():
        if event in events:
            continue
        sm = machine_at(session, connection)
        with pytest.raises(LocalProtocolError) as info:
            sm.process(event)
        text = str(info.value)
        assert event.name in text and session.name in text and connection.name in text
        assert (sm.session, sm.connection) == (session, connection)     # nothing changed


def test_a_life_in_events():
    sm = SessionStateMachine()
    life = [(E.LOGIN_STARTED, S.FREE, C.IN_LOGIN), (E.LOGIN_DONE, S.FREE, C.SETUP),
            (E.OPENED, S.LOGGED_IN, C.LOGGED_IN),
            (E.LINK_FAILED, S.RECOVERING, C.TRANSPORT_WAIT),
            (E.LOGIN_STARTED, S.RECOVERING, C.IN_LOGIN),
            (E.LOGIN_FAILED, S.RECOVERING, C.TRANSPORT_WAIT),
            (E.GIVE_UP, S.FAILED, C.TRANSPORT_WAIT),
            (E.LOGIN_STARTED, S.FAILED, C.IN_LOGIN), (E.LOGIN_DONE, S.FAILED, C.SETUP),
            (E.OPENED, S.LOGGED_IN, C.LOGGED_IN),
            (E.CLOSE, S.CLOSED, C.IN_LOGOUT), (E.LOGGED_OUT, S.CLOSED, C.FREE)]
    for event, session, connection in life:
        before = (sm.session, sm.connection)
        assert sm.process(event) == before
        assert (sm.session, sm.connection) == (session, connection), event


def test_the_words_are_iscsiadms():
    assert {s.iscsiadm for s in S} == {"FREE", "LOGGED_IN", "FAILED"}
    assert {c.iscsiadm for c in C} == {"FREE", "TRANSPORT WAIT", "IN LOGIN", "LOGGED IN",
                                       "IN LOGOUT"}
    assert S.RECOVERING.device_state == "blocked"
    assert S.FAILED.device_state == "transport-offline"
    assert S.LOGGED_IN.device_state == "running"
    assert set(TRANSITIONS) == {"session", "connection"}
