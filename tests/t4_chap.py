"""CHAP end to end: against a real tgtd (MD5, the only algorithm tgt gets right) for normal and
discovery sessions, and against the scripted target for SHA-1 / SHA-256 / SHA3-256, whose
login hook checks our answers with hashlib and answers mutual challenges itself.

tgt facts used here: an account bound to a target (``--tid``) guards logins to that target;
an account bound without ``--tid`` guards discovery sessions; ``--outgoing`` is the account
the target proves itself with (mutual CHAP).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from fake_target import FakeTarget
from iscsifs_testbed.tgtd import Tgtd
from iscsifs.core.chap import ChapCredentials
from iscsifs.core.names import Portal, parse_portal
from iscsifs.device import Lun
from iscsifs.errors import AuthenticationError, ConfigError
from iscsifs.net.discovery import discover
from iscsifs.net.session import Session, Timeouts

INITIATOR = "iqn.2026-11.org.iscsifs.test:initiator"
MiB = 1 << 20

USER, SECRET = "chapuser", "initiator-secret-1"
TUSER, TSECRET = "chaptarget", "target-secret-22"
WRONG = "wrong-secret-333"


def portal_of(info) -> Portal:
    return parse_portal(f"{info.host}:{info.port}")


async def connect(info, nursery, chap, **kw) -> Session:
    with trio.fail_after(20):
        return await Session.connect(portal_of(info), info.iqn, initiator_name=INITIATOR,
                                     nursery=nursery, chap=chap, recover=False, **kw)


def assert_no_secret(text: str) -> None:
    for s in (SECRET, TSECRET, WRONG):
        assert s not in text


def cli(config_dir: Path, *args: str, env: dict | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iscsifs.cli", "--config-dir", str(config_dir),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def secret_file(tmp_path: Path, value: str) -> str:
    path = tmp_path / f"secret-{secrets.token_hex(4)}"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return f"@{path}"


# ------------------------------------------------------------------ normal sessions, tgtd
async def test_one_way_chap_logs_in_and_moves_data(fresh_target, nursery):
    info = fresh_target([(4 * MiB, 512)])
    fresh_target.add_account(info.tid, USER, SECRET)
    session = await connect(info, nursery, ChapCredentials(USER, SECRET))
    dev = await Lun.open(session, 1)
    data = secrets.token_bytes(4096)
    await dev.write(8192, data)
    await dev.flush()
    assert bytes(await dev.read(8192, 4096)) == data
    with open(info.luns[1].path, "rb") as f:
        f.seek(8192)
        assert f.read(4096) == data
        f.seek(0)
        head = f.read(512)
    assert bytes(await dev.read(0, 512)) == head
    await session.close()


async def test_wrong_secret_is_authentication_error_without_secret(fresh_target, nursery):
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    with pytest.raises(AuthenticationError) as excinfo:
        await connect(info, nursery, ChapCredentials(USER, WRONG))
    message = str(excinfo.value)
    assert "authentication fail" in message
    assert info.iqn in message
    assert_no_secret(message)
    assert_no_secret(repr(excinfo.value))
    assert excinfo.value.exit_code == 24


async def test_wrong_username_is_authentication_error(fresh_target, nursery):
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    with pytest.raises(AuthenticationError):
        await connect(info, nursery, ChapCredentials("someone-else", SECRET))


def _node_with_chap(config_dir: Path, tmp_path: Path, info, password: str,
                    **extra: str) -> None:
    r = cli(config_dir, "node", "-T", info.iqn, "-p", info.portal, "-o", "new")
    assert r.returncode == 0, r.stderr
    updates = {"node.session.auth.authmethod": "CHAP", "node.session.auth.username": USER,
               "node.session.auth.password": secret_file(tmp_path, password), **extra}
    for key, value in updates.items():
        r = cli(config_dir, "node", "-T", info.iqn, "-p", info.portal, "-o", "update",
                "-n", key, "-v", value)
        assert r.returncode == 0, r.stderr
        assert_no_secret(r.stdout + r.stderr)


def test_cli_login_right_and_wrong_secret(fresh_target, tmp_path):
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    good, bad = tmp_path / "good", tmp_path / "bad"
    _node_with_chap(good, tmp_path, info, SECRET)
    _node_with_chap(bad, tmp_path, info, WRONG)

    r = cli(good, "login", "-T", info.iqn, "-p", info.portal)
    assert r.returncode == 0, r.stderr
    who = f"[iface: default, target: {info.iqn}, portal: {info.host},{info.port}]"
    assert r.stdout.splitlines() == [f"Logging in to {who}", f"Login to {who} successful."]

    r = cli(bad, "login", "-T", info.iqn, "-p", info.portal)
    assert r.returncode == 24, (r.stdout, r.stderr)
    assert r.stdout.splitlines() == [f"Logging in to {who}"]
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    # the login named once (it was said three times, each layer adding its own prefix)
    assert lines[0] == (
        f"iscsifs: authentication failed for {info.iqn} at {info.host}:{info.port}: "
        "authentication failure (status 0x0201); check the CHAP username and password")
    assert_no_secret(r.stdout + r.stderr)

    # --all goes through every record: same outcome, same code
    r = cli(bad, "login", "--all")
    assert r.returncode == 24
    # nothing matching: 21
    r = cli(good, "login", "-T", "iqn.2026-11.org.iscsifs.test:absent")
    assert r.returncode == 21 and r.stderr.count("\n") == 1


@pytest.mark.parametrize("algs", ["SHA256", "SHA256,MD5", "SHA1"])
def test_cli_login_with_chap_algs_tgt_mishandles_names_chap_algs(fresh_target, tmp_path, algs):
    """tgt answers CHAP_A=7 (SHA-256) but computes SHA-1, and refuses SHA-1 (6) outright:
    both end in "initiator error (status 0x0200)". The line names the key that fixes it,
    and with that fix the same record logs in."""
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    cfg = tmp_path / "cfg"
    _node_with_chap(cfg, tmp_path, info, SECRET, **{"node.session.auth.chap_algs": algs})
    r = cli(cfg, "login", "-T", info.iqn, "-p", info.portal)
    assert r.returncode == 19, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert lines == [f"iscsifs: login to {info.iqn} at {info.host}:{info.port} failed: "
                     "initiator error (status 0x0200); the target may lack or mishandle the "
                     f"CHAP algorithms offered ({algs}; tgt gets SHA256 wrong): set "
                     "node.session.auth.chap_algs = MD5"], lines
    r = cli(cfg, "node", "-T", info.iqn, "-p", info.portal, "-o", "update",
            "-n", "node.session.auth.chap_algs", "-v", "MD5")
    assert r.returncode == 0, r.stderr
    r = cli(cfg, "login", "-T", info.iqn, "-p", info.portal)
    assert r.returncode == 0, r.stderr


async def test_mutual_chap_right_target_secret(fresh_target, nursery):
    info = fresh_target([(2 * MiB, 512)])
    fresh_target.add_account(info.tid, USER, SECRET)
    fresh_target.add_account(info.tid, TUSER, TSECRET, outgoing=True)
    session = await connect(info, nursery, ChapCredentials(USER, SECRET, TUSER, TSECRET))
    dev = await Lun.open(session, 1)
    with open(info.luns[1].path, "rb") as f:
        assert bytes(await dev.read(0, 4096)) == f.read(4096)
    await session.close()


async def test_mutual_chap_wrong_target_secret_refused_by_us(fresh_target, nursery):
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    fresh_target.add_account(info.tid, TUSER, TSECRET, outgoing=True)
    with pytest.raises(AuthenticationError) as excinfo:
        await connect(info, nursery, ChapCredentials(USER, SECRET, TUSER, WRONG))
    message = str(excinfo.value)
    assert "mutual" in message            # we refused the target, not the other way round
    assert_no_secret(message)
    # the connection was closed by us: tgtd forgets it
    fresh_target.tgtd.wait_connections(info.tid, 0)


async def test_mutual_chap_wrong_target_username_refused(fresh_target, nursery):
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    fresh_target.add_account(info.tid, TUSER, TSECRET, outgoing=True)
    with pytest.raises(AuthenticationError):
        await connect(info, nursery, ChapCredentials(USER, SECRET, "not-the-target", TSECRET))


def test_mutual_chap_through_cli_record(fresh_target, tmp_path):
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    fresh_target.add_account(info.tid, TUSER, TSECRET, outgoing=True)
    d = tmp_path / "cfg"
    _node_with_chap(d, tmp_path, info, SECRET,
                    **{"node.session.auth.username_in": TUSER})
    # an env: reference to an unset variable is a clear error (and nothing is written)
    env = dict(os.environ)
    env.pop("ISCSIFS_TEST_SECRET_IN", None)
    r = subprocess.run([sys.executable, "-m", "iscsifs.cli", "--config-dir", str(d), "node",
                        "-T", info.iqn, "-o", "update", "-n", "node.session.auth.password_in",
                        "-v", "env:ISCSIFS_TEST_SECRET_IN"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 7 and "ISCSIFS_TEST_SECRET_IN" in r.stderr
    # username_in without password_in: the record can't be used to log in
    r = cli(d, "login", "-T", info.iqn)
    assert r.returncode == 7, r.stderr
    r = cli(d, "node", "-T", info.iqn, "-o", "update", "-n", "node.session.auth.password_in",
            "-v", "env:ISCSIFS_TEST_SECRET_IN", env={"ISCSIFS_TEST_SECRET_IN": TSECRET})
    assert r.returncode == 0, r.stderr
    r = cli(d, "login", "-T", info.iqn)
    assert r.returncode == 0, r.stderr
    r = cli(d, "node", "-T", info.iqn, "-o", "update", "-n", "node.session.auth.password_in",
            "-v", "env:ISCSIFS_TEST_SECRET_IN", env={"ISCSIFS_TEST_SECRET_IN": WRONG})
    assert r.returncode == 0, r.stderr
    r = cli(d, "login", "-T", info.iqn)
    assert r.returncode == 24, r.stderr
    assert "mutual" in r.stderr
    assert_no_secret(r.stdout + r.stderr)


def test_equal_secrets_refused_before_any_connection(fresh_target, tmp_path):
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    with pytest.raises(ConfigError) as excinfo:
        ChapCredentials(USER, SECRET, TUSER, SECRET)
    assert "same" in str(excinfo.value)
    assert_no_secret(str(excinfo.value))

    d = tmp_path / "cfg"
    _node_with_chap(d, tmp_path, info, SECRET,
                    **{"node.session.auth.username_in": TUSER})
    # the CLI refuses to store equal secrets ...
    r = cli(d, "node", "-T", info.iqn, "-o", "update", "-n", "node.session.auth.password_in",
            "-v", secret_file(tmp_path, SECRET))
    assert r.returncode == 7
    assert len(r.stderr.splitlines()) == 1 and "same" in r.stderr
    assert_no_secret(r.stdout + r.stderr)
    # ... and a hand-edited record with equal secrets never reaches the target
    record = next((d / "nodes" / info.iqn).glob("*/default"))
    text = record.read_text().replace("node.session.auth.password_in = <empty>",
                                      f"node.session.auth.password_in = {SECRET}")
    assert f"password_in = {SECRET}" in text
    record.write_text(text)
    r = cli(d, "login", "-T", info.iqn)
    assert r.returncode == 7, (r.stdout, r.stderr)
    assert "same" in r.stderr
    assert_no_secret(r.stdout + r.stderr)
    assert fresh_target.tgtd.show_connections(info.tid) == []


async def test_target_requires_chap_none_configured(fresh_target, nursery, tmp_path):
    info = fresh_target()
    fresh_target.add_account(info.tid, USER, SECRET)
    with pytest.raises(AuthenticationError) as excinfo:
        await connect(info, nursery, None)
    message = str(excinfo.value)
    assert "CHAP" in message and "not configured" in message
    # and through the CLI: exit 24, the same explanation
    d = tmp_path / "cfg"
    assert cli(d, "node", "-T", info.iqn, "-p", info.portal, "-o", "new").returncode == 0
    r = cli(d, "login", "-T", info.iqn)
    assert r.returncode == 24
    assert "not configured" in r.stderr


# ------------------------------------------------------------------ discovery, tgtd
@pytest.fixture
def disc_tgtd(tgtd):
    """A private tgtd whose discovery sessions need CHAP (a global account binding would
    affect every other test using the shared tgtd)."""
    d = Tgtd()
    d.start()
    try:
        d.add_target(1, "iqn.2026-11.org.iscsifs.test:disc-a")
        d.bind(1)
        d.add_account(USER, SECRET)
        d.tgtadm("--mode", "account", "--op", "bind", "--user", USER)   # no --tid: discovery
        yield d
    finally:
        d.stop()


async def test_discovery_one_way_chap(disc_tgtd):
    portal = Portal(disc_tgtd.host, disc_tgtd.port)
    with trio.fail_after(20):
        targets = await discover(portal, initiator_name=INITIATOR,
                                 chap=ChapCredentials(USER, SECRET))
    assert [t.name for t in targets] == ["iqn.2026-11.org.iscsifs.test:disc-a"]
    for chap in (None, ChapCredentials(USER, WRONG)):
        with pytest.raises(AuthenticationError) as excinfo:
            with trio.fail_after(20):
                await discover(portal, initiator_name=INITIATOR, chap=chap)
        assert_no_secret(str(excinfo.value))
        if chap is None:
            assert "not configured" in str(excinfo.value)


async def test_discovery_mutual_chap(disc_tgtd):
    disc_tgtd.add_account(TUSER, TSECRET)
    disc_tgtd.tgtadm("--mode", "account", "--op", "bind", "--user", TUSER, "--outgoing")
    portal = Portal(disc_tgtd.host, disc_tgtd.port)
    with trio.fail_after(20):
        targets = await discover(portal, initiator_name=INITIATOR,
                                 chap=ChapCredentials(USER, SECRET, TUSER, TSECRET))
    assert len(targets) == 1
    with pytest.raises(AuthenticationError) as excinfo:
        with trio.fail_after(20):
            await discover(portal, initiator_name=INITIATOR,
                           chap=ChapCredentials(USER, SECRET, TUSER, WRONG))
    assert "mutual" in str(excinfo.value)


def test_cli_discover_uses_discovery_record_chap(disc_tgtd, tmp_path):
    d = tmp_path / "cfg"
    portal = f"{disc_tgtd.host}:{disc_tgtd.port}"
    r = cli(d, "discover", portal)
    assert r.returncode == 24, (r.stdout, r.stderr)
    for key, value in (("discovery.sendtargets.auth.authmethod", "CHAP"),
                       ("discovery.sendtargets.auth.username", USER),
                       ("discovery.sendtargets.auth.password", secret_file(tmp_path, SECRET))):
        r = cli(d, "discovery", "-p", portal, "-o", "update", "-n", key, "-v", value)
        assert r.returncode == 0, r.stderr
    r = cli(d, "discover", portal)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{portal},1 iqn.2026-11.org.iscsifs.test:disc-a"]
    show = cli(d, "discovery", "-p", portal)
    assert show.returncode == 0
    assert "discovery.sendtargets.auth.password = ********" in show.stdout
    assert_no_secret(show.stdout + show.stderr)
    # iscsiadm's spelling does the same
    r = cli(d, "discovery", "-t", "st", "-p", portal)
    assert r.returncode == 0, r.stderr
    r = cli(d, "discovery", "-p", portal, "-o", "update", "-n",
            "discovery.sendtargets.auth.password", "-v", secret_file(tmp_path, WRONG))
    assert r.returncode == 0
    r = cli(d, "discover", portal)
    assert r.returncode == 24
    assert len(r.stderr.splitlines()) == 1
    assert_no_secret(r.stdout + r.stderr)


# ------------------------------------------------------------------ scripted peer: algorithms
_HASHES = {5: hashlib.md5, 6: hashlib.sha1, 7: hashlib.sha256, 8: hashlib.sha3_256}
_NUMBERS = {"MD5": 5, "SHA1": 6, "SHA256": 7, "SHA3-256": 8}


class ChapPeer:
    """A login hook doing the target's half of CHAP with hashlib (RFC 7143 §12.1.3)."""

    def __init__(self, *, accept=(8, 7, 6, 5), user=USER, secret=SECRET,
                 target_user=None, target_secret=None):
        self.accept = accept
        self.user, self.secret = user, secret.encode()
        self.target_user = target_user
        self.target_secret = target_secret.encode() if target_secret else None
        self.state: dict[int, dict] = {}
        self.chosen: list[int] = []
        self.verified = 0

    def __call__(self, conn, req, pairs):
        if req.csg != 0:
            return None                      # operational stage: the fake's default
        keys = dict(pairs)
        st = self.state.setdefault(conn.number, {})
        if "AuthMethod" in keys:
            if "CHAP" not in keys["AuthMethod"].split(","):
                return [], (2, 1), 0, False  # CHAP required
            return [("AuthMethod", "CHAP"), ("TargetPortalGroupTag", "1")], (0, 0), 1, False
        if "CHAP_A" in keys:
            offered = [int(a) for a in keys["CHAP_A"].split(",")]
            alg = next((a for a in offered if a in self.accept), None)
            if alg is None:
                return [("CHAP_A", "Reject")], (2, 1), 0, False
            self.chosen.append(alg)
            st.update(alg=alg, id=secrets.randbelow(256), challenge=secrets.token_bytes(32))
            return [("CHAP_A", str(alg)), ("CHAP_I", str(st["id"])),
                    ("CHAP_C", "0x" + st["challenge"].hex())], (0, 0), 1, False
        if "CHAP_R" in keys:
            h = _HASHES[st["alg"]]
            expected = h(bytes([st["id"]]) + self.secret + st["challenge"]).hexdigest()
            if keys.get("CHAP_N") != self.user or keys["CHAP_R"].lower() != "0x" + expected:
                return [], (2, 1), 0, False
            self.verified += 1
            answer = []
            if "CHAP_C" in keys:
                if self.target_secret is None:
                    return [], (2, 1), 0, False
                ident = int(keys["CHAP_I"])
                challenge = bytes.fromhex(keys["CHAP_C"][2:])
                response = h(bytes([ident]) + self.target_secret + challenge).hexdigest()
                answer = [("CHAP_N", self.target_user), ("CHAP_R", "0x" + response)]
            return answer, (0, 0), 1, True
        return [], (0, 0), 1, False


FAST = Timeouts(login=5, noop_out_interval=0)


async def _fake(nursery, peer) -> FakeTarget:
    target = FakeTarget(login_hook=peer, sendtargets=[
        ("TargetName", "iqn.2026-11.org.iscsifs.test:fake"), ("TargetAddress", "127.0.0.1:3260,1")])
    await target.start(nursery)
    return target


@pytest.mark.parametrize("alg", ["SHA1", "SHA256", "SHA3-256", "MD5"])
async def test_algorithms_checked_by_hashlib_peer(nursery, alg):
    peer = ChapPeer(accept=(_NUMBERS[alg],))
    target = await _fake(nursery, peer)
    creds = ChapCredentials(USER, SECRET, algorithms=("SHA3-256", "SHA256", "SHA1", "MD5"))
    with trio.fail_after(10):
        session = await Session.connect(Portal("127.0.0.1", target.port), target.target_name,
                                        initiator_name=INITIATOR, nursery=nursery, chap=creds,
                                        timeouts=FAST, recover=False)
    assert peer.chosen == [_NUMBERS[alg]] and peer.verified == 1
    await session.close()


@pytest.mark.parametrize("alg", ["SHA1", "SHA256", "SHA3-256"])
async def test_mutual_algorithms_with_hashlib_peer(nursery, alg):
    peer = ChapPeer(accept=(_NUMBERS[alg],), target_user=TUSER, target_secret=TSECRET)
    target = await _fake(nursery, peer)
    creds = ChapCredentials(USER, SECRET, TUSER, TSECRET, algorithms=(alg,))
    with trio.fail_after(10):
        session = await Session.connect(Portal("127.0.0.1", target.port), target.target_name,
                                        initiator_name=INITIATOR, nursery=nursery, chap=creds,
                                        timeouts=FAST, recover=False)
    await session.close()
    bad = ChapPeer(accept=(_NUMBERS[alg],), target_user=TUSER, target_secret=WRONG)
    target = await _fake(nursery, bad)
    with pytest.raises(AuthenticationError, match="mutual"):
        with trio.fail_after(10):
            await Session.connect(Portal("127.0.0.1", target.port), target.target_name,
                                  initiator_name=INITIATOR, nursery=nursery, chap=creds,
                                  timeouts=FAST, recover=False)


async def test_algorithm_the_peer_lacks_is_refused(nursery):
    target = await _fake(nursery, ChapPeer(accept=(5,)))
    creds = ChapCredentials(USER, SECRET, algorithms=("SHA256",))
    with pytest.raises(AuthenticationError):
        with trio.fail_after(10):
            await Session.connect(Portal("127.0.0.1", target.port), target.target_name,
                                  initiator_name=INITIATOR, nursery=nursery, chap=creds,
                                  timeouts=FAST, recover=False)


@pytest.mark.parametrize("mutual", [False, True])
async def test_discovery_chap_with_scripted_peer(nursery, mutual):
    peer = ChapPeer(accept=(7,), target_user=TUSER, target_secret=TSECRET)
    target = await _fake(nursery, peer)
    creds = ChapCredentials(USER, SECRET, TUSER if mutual else None,
                            TSECRET if mutual else None, algorithms=("SHA256",))
    with trio.fail_after(10):
        targets = await discover(Portal("127.0.0.1", target.port), initiator_name=INITIATOR,
                                 chap=creds, timeouts=FAST)
    assert [t.name for t in targets] == ["iqn.2026-11.org.iscsifs.test:fake"]
    assert peer.verified == 1
    with pytest.raises(AuthenticationError):
        with trio.fail_after(10):
            await discover(Portal("127.0.0.1", target.port), initiator_name=INITIATOR,
                           chap=None, timeouts=FAST)
