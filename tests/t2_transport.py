"""net/transport.py over a socketpair, and the session's use of it: what goes out when, in
which order, and in how many ``sendmsg`` calls."""

from __future__ import annotations

import socket

import trio
import trio.testing

from fake_target import FakeTarget
from iscsifs.core.discovery import Portal
from iscsifs.net.transport import Transport
from t2_device import lun_over_fake, serve_reads


def pair() -> tuple[Transport, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    return Transport(ours, Portal("127.0.0.1", 3260)), theirs


def received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except BlockingIOError:
        return b""


async def test_a_plain_send_goes_at_once_and_batched_ones_after_the_pass(nursery):
    transport, peer = pair()
    nursery.start_soon(transport.drain)
    await trio.testing.wait_all_tasks_blocked()
    transport.send([b"one"])
    assert received(peer) == b"one"                 # synchronous: no task had to run
    calls = transport.sendmsg_calls
    transport.send([b"a", b"b"], batch=True)
    transport.send([b"c"], batch=True)
    assert received(peer) == b"" and transport.sendmsg_calls == calls
    await trio.testing.wait_all_tasks_blocked()     # the pass ends: drain() sends them
    assert received(peer) == b"abc" and transport.sendmsg_calls == calls + 1
    # a plain send takes what is batched first: the order of the calls is the order on the wire
    transport.send([b"d"], batch=True)
    transport.send([b"e"])
    assert received(peer) == b"de" and transport.sendmsg_calls == calls + 2
    await trio.testing.wait_all_tasks_blocked()
    assert received(peer) == b"" and transport.sendmsg_calls == calls + 2
    await transport.aclose()
    peer.close()


async def test_commands_issued_in_one_pass_share_a_sendmsg(nursery, autojump_clock):
    target = FakeTarget(on_command=serve_reads)
    lun = await lun_over_fake(target, nursery)
    transport = lun.session._link.transport
    with trio.fail_after(10):
        assert await lun.read(0, 4096) == bytes(i % 251 for i in range(4096))
        alone = transport.sendmsg_calls
        results = {}

        async def read(n: int) -> None:
            results[n] = await lun.read(n * 4096, 4096)

        async with trio.open_nursery() as readers:       # 16 readers start in one pass
            for n in range(16):
                readers.start_soon(read, n)
    # the first goes alone, at once; the other 15 leave together after that pass
    assert transport.sendmsg_calls - alone <= 2
    for n in range(16):
        assert results[n] == bytes((n * 4096 + i) % 251 for i in range(4096))
    assert lun.max_inflight == [16, 0]
    await lun.session.close()
