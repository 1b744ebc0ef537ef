"""iSNS discovery (net/isns.py) against a scripted iSNS server over a socketpair: the
register-query-deregister exchange for a server that answers *Source Unknown* (isnsd never
does), refusals and their exit codes, a server that breaks the protocol, and a server that
never answers (on MockClock: the wait is bounded, and not shorter than asked)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from iscsifs.core import isns as I
from iscsifs.core.discovery import DiscoveredTarget
from iscsifs.core.names import Portal
from iscsifs.errors import ConnectionLost, IsnsError
from iscsifs.exits import exit_code
from iscsifs.net.isns import isns_discover
from iscsifs.net.util import unwrap_group

INI = "iqn.2026-11.org.iscsifs.test:initiator"
T1 = "iqn.2026-11.org.iscsifs.test:disk1"
SERVER = Portal("127.0.0.1", 3205)


def targets_answer(request: I.IsnsRequest) -> I.IsnsResponse:
    return I.IsnsResponse(request.function, request.transaction_id, 0, request.keys, (
        I.Attribute.string(32, T1), I.Attribute.uint32(33, 1),
        I.Attribute.string(48, T1), I.Attribute.ip(49, "10.0.0.5"),
        I.Attribute.uint32(50, 3260), I.Attribute.uint32(51, 1)))


class FakeIsns:
    """Answers each request with ``script(request)`` (a response, raw bytes, or None to stay
    silent); keeps what it got."""

    def __init__(self, script):
        self.script = script
        self.requests: list[I.IsnsRequest] = []

    def connector(self, nursery: trio.Nursery):
        async def connect(portal: Portal) -> socket.socket:
            ours, theirs = socket.socketpair()
            nursery.start_soon(self.serve, theirs)
            return ours
        return connect

    async def serve(self, sock: socket.socket) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        decoder = I.IsnsDecoder()
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                decoder.feed(data)
                while (request := decoder.next_message()) is not None:
                    self.requests.append(request)
                    answer = self.script(request)
                    if answer is None:
                        continue
                    await stream.send_all(answer if isinstance(answer, bytes)
                                          else I.encode(answer))


async def run(script, **kwargs):
    fake = FakeIsns(script)
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            try:
                return fake, await isns_discover(SERVER, initiator_name=INI,
                                                 connector=fake.connector(nursery), **kwargs)
            finally:
                nursery.cancel_scope.cancel()


async def test_source_unknown_registers_queries_and_deregisters():
    registered = set()

    def script(req: I.IsnsRequest):
        if req.function == I.FunctionId.DEV_ATTR_QRY:
            if req.source.text() not in registered:
                return I.IsnsResponse(req.function, req.transaction_id, I.Status.SOURCE_UNKNOWN)
            return targets_answer(req)
        if req.function == I.FunctionId.DEV_ATTR_REG:
            registered.add(req.operating[0].text())
        elif req.function == I.FunctionId.DEV_DEREG:
            registered.discard(req.operating[0].text())
        return I.IsnsResponse(req.function, req.transaction_id, 0)

    fake, targets = await run(script)
    assert targets == [DiscoveredTarget(T1, (Portal("10.0.0.5", 3260, 1),))]
    assert [r.function for r in fake.requests] == [2, 1, 2, 4]
    assert len({r.transaction_id for r in fake.requests}) == 4
    assert all(r.source.text() == INI for r in fake.requests)
    assert registered == set()                      # deregistered again


@pytest.mark.parametrize("function,status,code", [
    (I.FunctionId.DEV_ATTR_QRY, I.Status.SOURCE_UNAUTHORIZED, 25),
    (I.FunctionId.DEV_ATTR_REG, I.Status.INVALID_REGISTRATION, 26),
])
async def test_refusals_are_isns_errors_with_iscsiadms_exit_codes(function, status, code):
    def script(req):
        if req.function == I.FunctionId.DEV_ATTR_QRY and function == I.FunctionId.DEV_ATTR_REG:
            return I.IsnsResponse(req.function, req.transaction_id, I.Status.SOURCE_UNKNOWN)
        return I.IsnsResponse(req.function, req.transaction_id, status)

    with pytest.raises(IsnsError) as info:
        await run(script)
    assert exit_code(info.value) == code
    assert I.status_text(status) in str(info.value)


async def test_no_such_entry_is_no_targets():
    _fake, targets = await run(lambda req: I.IsnsResponse(req.function, req.transaction_id,
                                                           I.Status.NO_SUCH_ENTRY))
    assert targets == []


async def test_a_wrong_answer_is_a_protocol_error_exit_25():
    def script(req):
        return I.IsnsResponse(req.function, (req.transaction_id + 1) & 0xFFFF, 0)

    with pytest.raises(IsnsError, match="broke the protocol: .*answered function") as info:
        await run(script)
    assert exit_code(info.value) == 25
    with pytest.raises(IsnsError, match="iSNSP version 2"):
        await run(lambda req: b"\0\2" + I.encode(targets_answer(req))[2:])


async def test_unsolicited_server_messages_are_ignored():
    def script(req):
        return I.encode(I.ServerMessage(I.FunctionId.ESI, 1)) + I.encode(targets_answer(req))

    _fake, targets = await run(script)
    assert [t.name for t in targets] == [T1]


async def test_a_silent_server_times_out_after_the_timeout(autojump_clock):
    start = trio.current_time()
    with pytest.raises(ConnectionLost, match="did not answer within 7 s"):
        await run(lambda req: None, timeout=7)
    assert 7 <= trio.current_time() - start < 7.5
