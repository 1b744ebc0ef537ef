"""Login redirection (RFC 7143 §11.13.5): the scripted target at one portal sends the login
elsewhere with status 0x0101 (temporarily) or 0x0102 (permanently) and a TargetAddress."""

from __future__ import annotations

import pytest
import trio

from fake_target import FakeTarget, good_read
from helpers import CONN_FAILED
from iscsifs.core.names import Portal
from iscsifs.errors import LoginError
from iscsifs.net.session import MAX_REDIRECTS, Session, Timeouts

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
PAYLOAD = bytes(range(256)) * 16
HOME = Portal("127.0.0.1", 3260)


def redirecting(address: str, detail: int):
    def hook(conn, req, pairs):
        return [("TargetAddress", address)], (1, detail), req.nsg, False
    return hook


def connector(nursery, targets: dict[int, FakeTarget]):
    """Join each portal (by port) to its scripted target over a socketpair."""
    joined = {port: t.socketpair_connector(nursery) for port, t in targets.items()}

    async def connect(portal):
        if portal.port not in joined:
            raise OSError(111, "Connection refused")
        return await joined[portal.port](portal)
    return connect


async def read(session) -> bytes:
    buf = bytearray(len(PAYLOAD))
    await session.execute(1, bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
                          read_length=len(buf), read_buffer=buf)
    return bytes(buf)


async def session_at(portal, nursery, targets) -> Session:
    with trio.fail_after(10):
        return await Session.connect(portal, "iqn.2026-11.org.iscsifs.test:fake",
                                     initiator_name=INITIATOR, nursery=nursery,
                                     timeouts=Timeouts(noop_out_interval=0),
                                     connector=connector(nursery, targets))


@CONN_FAILED
@pytest.mark.parametrize("detail, home_logins_after_drop", [(1, 2), (2, 1)])
async def test_login_follows_a_redirection(nursery, autojump_clock, detail,
                                           home_logins_after_drop):
    home = FakeTarget(login_hook=redirecting("127.0.0.1:3261,2", detail))
    away = FakeTarget(on_command=lambda conn, cmd: good_read(conn, cmd, PAYLOAD))
    session = await session_at(HOME, nursery, {3260: home, 3261: away})
    assert session.portal == HOME                                 # Persistent Portal
    assert session.current_portal == Portal("127.0.0.1", 3261, 2)   # Current Portal
    assert await read(session) == PAYLOAD
    assert away.commands_seen() and not home.commands_seen()
    # after the connection drops, a temporary redirection starts over at the persistent
    # portal; a permanent one goes straight to the new address
    await away.live[1].close()
    with trio.fail_after(30):
        while not session.logged_in or away.connections < 2:
            await trio.sleep(0.5)
    assert home.connections == home_logins_after_drop
    assert await read(session) == PAYLOAD
    await session.close()


async def test_redirection_loop_is_bounded(nursery, autojump_clock):
    home = FakeTarget(login_hook=redirecting("127.0.0.1:3260", 1))      # to itself
    with pytest.raises(LoginError, match="moved temporarily"):
        await session_at(HOME, nursery, {3260: home})
    assert home.connections == MAX_REDIRECTS + 1


@pytest.mark.parametrize("address", ["", "not a portal:x", "[::1"])
async def test_redirection_to_an_unusable_address_is_a_clear_error(nursery, autojump_clock,
                                                                   address):
    home = FakeTarget(login_hook=redirecting(address, 2))
    with pytest.raises(LoginError, match="redirected to an unusable address"):
        await session_at(HOME, nursery, {3260: home})
    assert home.connections == 1
