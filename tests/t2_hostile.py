"""A hostile peer: malformed PDUs, bad digests, oversized lengths, hostile names.

Each case checks that the initiator drops the bad connection cleanly (no crash, no stray
exception), recovers by relogin where the target behaves the second time, and fails I/O with a
clean error where it never does.
"""

from __future__ import annotations

import pytest
import trio

from fake_target import FakeTarget, TargetThread, good_read
from helpers import (CONN_FAILED, READ_TIMED_OUT, RECOVERY_FAILED, TMF_UNANSWERED,
                     one_error_line, run_iscsifs)
from iscsifs.core.names import Portal
from iscsifs.core.keys import LoginParams
from iscsifs.core.pdu import R2T, DataIn, NopIn, ScsiResponse
from iscsifs.errors import AuthenticationError, RemoteProtocolError, SessionFailed
from iscsifs.net.discovery import discover
from iscsifs.net.session import Session, Timeouts

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
PAYLOAD = bytes(range(256)) * 16          # 4 KiB
FAST = Timeouts(login=2, replacement_timeout=3, noop_out_interval=0, command=5)


async def start(nursery, **kw) -> FakeTarget:
    target = FakeTarget(**kw)
    await target.start(nursery)
    return target


async def session_to(target, nursery, **kw) -> Session:
    with trio.fail_after(10):
        return await Session.connect(Portal("127.0.0.1", target.port), target.target_name,
                                     initiator_name=INITIATOR, nursery=nursery,
                                     timeouts=kw.pop("timeouts", FAST), **kw)


async def read4k(session) -> bytes:
    buf = bytearray(len(PAYLOAD))
    await session.execute(1, bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
                          read_length=len(buf), read_buffer=buf)
    return bytes(buf)


def bad_first_then_good(bad):
    """Script: the first connection gets ``bad(conn, cmd)``, later ones a good answer."""
    def on_command(conn, cmd):
        if conn.number == 1:
            return bad(conn, cmd)
        return good_read(conn, cmd, PAYLOAD)
    return on_command


@pytest.mark.parametrize("bad", [
    # Data-In beyond the expected transfer length
    lambda conn, cmd: [DataIn(itt=cmd.itt, ttt=0xFFFFFFFF, lun=0, data_sn=0,
                              buffer_offset=len(PAYLOAD), residual_count=0, final=True,
                              acknowledge=False, overflow=False, underflow=False,
                              status_present=True, status=0, data=b"x" * 512, **conn.sns())],
    # DataSegmentLength far beyond our MaxRecvDataSegmentLength (a header that lies)
    lambda conn, cmd: bytes([0x25, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF]) + bytes(40),
    # an opcode no target may send
    lambda conn, cmd: bytes([0x3A]) + bytes(47),
    # R2T for a read command, beyond any buffer
    lambda conn, cmd: [R2T(itt=cmd.itt, ttt=5, lun=0, r2t_sn=0, buffer_offset=1 << 30,
                           desired_data_transfer_length=4096, **conn.sns(False))],
    # SCSI Response whose sense length lies
    lambda conn, cmd: [ScsiResponse(itt=cmd.itt, response=0, status=2, exp_data_sn=0,
                                    bidi_read_residual_count=0, residual_count=0,
                                    overflow=False, underflow=False, bidi_overflow=False,
                                    bidi_underflow=False, data=b"\x00\xff\x70\x00",
                                    **conn.sns())],
], ids=["datain-beyond-buffer", "oversized-dsl", "bad-opcode", "r2t-on-read", "lying-sense"])
@CONN_FAILED
async def test_malformed_answer_drops_connection_and_recovers(nursery, bad):
    target = await start(nursery, on_command=bad_first_then_good(bad))
    session = await session_to(target, nursery)
    with trio.fail_after(15):
        try:
            data = await read4k(session)
        except Exception as exc:     # the lying sense may surface as a clean SCSI error
            from iscsifs.scsi.sense import ScsiError
            assert isinstance(exc, ScsiError), repr(exc)
        else:
            assert data == PAYLOAD
            assert session.reconnects == 1
            assert target.connections == 2
    await session.close()


@CONN_FAILED
async def test_bad_header_digest_is_detected_and_recovered(nursery):
    def corrupt(conn, cmd):
        from iscsifs.core.pdu import encode
        bufs = encode(good_read(conn, cmd, PAYLOAD)[0], header_digest=True, data_digest=False)
        raw = bytearray(b"".join(bytes(b) for b in bufs))
        raw[49] ^= 0xFF                  # flip a bit of the header digest
        return bytes(raw)

    target = await start(nursery, on_command=bad_first_then_good(corrupt), digests=True)
    session = await session_to(target, nursery,
                               params=LoginParams(header_digest="CRC32C"))
    assert session.negotiated.header_digest
    with trio.fail_after(15):
        assert await read4k(session) == PAYLOAD
    assert session.reconnects == 1
    await session.close()


@CONN_FAILED
async def test_target_that_never_behaves_fails_io_after_replacement_timeout(nursery):
    def always_bad(conn, cmd):
        return bytes([0x25, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF]) + bytes(40)

    target = await start(nursery, on_command=always_bad)
    session = await session_to(target, nursery)
    with trio.fail_after(20):
        with pytest.raises(SessionFailed):
            await read4k(session)
    assert target.connections >= 2
    await session.close()


@READ_TIMED_OUT
@TMF_UNANSWERED
@RECOVERY_FAILED
@CONN_FAILED
async def test_silent_target_command_times_out(nursery):
    target = await start(nursery, on_command=lambda conn, cmd: [])
    session = await session_to(target, nursery,
                               timeouts=Timeouts(login=2, command=1, abort=1, lu_reset=1,
                                                 tgt_reset=1, noop_out_interval=0))
    from iscsifs.errors import CommandTimeout
    with trio.fail_after(10):
        with pytest.raises(CommandTimeout):
            await read4k(session)
    await session.close()


async def test_target_nop_in_is_answered(nursery):
    seen = []

    def ping_then_answer(conn, cmd):
        seen.append(cmd)
        return [NopIn(itt=0xFFFFFFFF, ttt=77, lun=0, **conn.sns(False))] + \
            good_read(conn, cmd, PAYLOAD)

    target = await start(nursery, on_command=ping_then_answer)
    session = await session_to(target, nursery)
    with trio.fail_after(10):
        assert await read4k(session) == PAYLOAD
        while session.counters().get("noptx_pdus", 0) < 1:
            await trio.sleep(0.01)
    await session.close()


@pytest.mark.expect_log('dropping invalid target name', logger='iscsifs.core.discovery')
async def test_hostile_target_names_are_dropped(nursery):
    hostile = [
        ("TargetName", "iqn.2026-11.org.iscsifs.test:good"),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", "../../etc/passwd"),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", "iqn.2026-11.org.example:a/../../b"),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", "iqn.2026-11.org.example:ctl\x07bell"),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", "iqn.2026-11.org.example:" + "x" * 300),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", "iqn.2026-11.org.iscsifs.test:v6"),
        ("TargetAddress", "[::1]:3261,2"),
    ]
    target = await start(nursery, sendtargets=hostile)
    with trio.fail_after(10):
        found = await discover(Portal("127.0.0.1", target.port), initiator_name=INITIATOR,
                               timeouts=FAST)
    names = [t.name for t in found]
    assert names == ["iqn.2026-11.org.iscsifs.test:good", "iqn.2026-11.org.iscsifs.test:v6"]
    v6 = found[1].portals[0]
    assert (v6.host, v6.port, v6.tpgt) == ("::1", 3261, 2)
    assert str(v6) == "[::1]:3261,2"


# ---------------------------------------------------------------------------------------------
# what the user reads when the target breaks the protocol or refuses the login: one line that
# says why, composed once (no "X: X: ...", no "text request failed", no class name)

MALFORMED = [b"garbage\0", b"TargetAddress=127.0.0.1:3260,1\0TargetName=iqn.2026-11.org.x:y\0"]


@pytest.mark.parametrize("raw", MALFORMED)
async def test_malformed_sendtargets_answer_raises_the_protocol_error(nursery, raw):
    target = await start(nursery, sendtargets_raw=raw)
    with trio.fail_after(10):
        with pytest.raises(RemoteProtocolError) as info:
            await discover(Portal("127.0.0.1", target.port), initiator_name=INITIATOR,
                           timeouts=FAST)
    assert ("text item without '='" in str(info.value)
            or "TargetAddress before any TargetName" in str(info.value))


@pytest.mark.parametrize("raw", MALFORMED)
def test_cli_discover_of_a_malformed_answer_is_one_line_with_exit_19(tmp_path, raw):
    target = FakeTarget(sendtargets_raw=raw)
    with TargetThread() as thread:      # the CLI runs its own trio.run
        port = thread.serve(target)
        r = run_iscsifs(tmp_path / "cfg", "discover", f"127.0.0.1:{port}", "--no-record",
                        "--initiator-name", INITIATOR)
    line = one_error_line(r, 19)
    reason = ("text item without '=': b'garbage'" if raw == MALFORMED[0]
              else "SendTargets answer has a TargetAddress before any TargetName")
    assert line == f"iscsifs: discovery on portal 127.0.0.1:{port} failed: {reason}"


def _refuse_chap(conn, req, pairs):
    """Login hook: choose CHAP, then answer the CHAP_A offer with authentication failure."""
    keys = dict(pairs)
    if "AuthMethod" in keys:
        return [("AuthMethod", "CHAP")], (0, 0), 0, False
    return [], (2, 1), 0, False


async def test_authentication_failure_names_the_login_once(nursery):
    from iscsifs.core.chap import ChapCredentials
    target = await start(nursery, login_hook=_refuse_chap)
    with pytest.raises(AuthenticationError) as info:
        await session_to(target, nursery, chap=ChapCredentials("alice", "initiator-secret"))
    who = f"{target.target_name} at 127.0.0.1:{target.port}"
    assert str(info.value) == (f"authentication failed for {who}: authentication failure "
                               "(status 0x0201); check the CHAP username and password")
    assert info.value.who == who


@pytest.mark.expect_log("opendir: ConnectionLost: .* -> ECONNREFUSED",
                        logger="iscsifs.fs.errno_map")
async def test_a_refused_connect_keeps_its_errno(nursery):
    """The errno survives up to the FUSE layer (ls of a mkdir'd portal where nothing listens
    said EIO, not ECONNREFUSED)."""
    import errno
    import socket
    from iscsifs.errors import ConnectionLost
    from iscsifs.fs.errno_map import errno_for
    with socket.socket() as s:                  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with trio.fail_after(10), pytest.raises(ConnectionLost) as info:
        await discover(Portal("127.0.0.1", port), initiator_name=INITIATOR, timeouts=FAST)
    assert info.value.errno == errno.ECONNREFUSED
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert errno_for(info.value, "opendir") == errno.ECONNREFUSED
