"""ALUA for real: a mount of one logical unit behind two target ports in two target port
groups, ``fio --verify=crc32c`` on its ``by-id`` file while the active/optimized group goes
into a transition and comes out standby as the other group becomes active/optimized (a
controller failover).

tgt has no ALUA, so the target is the scripted one: ``fake_target.AluaUnit`` (one in-memory
LU; each port a ``FakeTarget`` that answers what SPC-4 lets a port in its group's state answer,
NOT READY 04/0B, 04/0C or 04/0A to the rest, READ CAPACITY included, and UNIT ATTENTION 2A/06
to each connection after a state change), served on real sockets at 127.0.0.1 and 127.0.0.2
and on the real clock from a thread of this process (``fake_target.TargetThread``), with real
data transfers (unsolicited Data-Out, R2T, Data-In split at the initiator's
MaxRecvDataSegmentLength). The mount is ``mount.iscsifs`` in its own process, as users run it.

fio must finish with 0 errors; I/O must move to the other port; the old port must take no READ
or WRITE after the switch; the mount's status file and log must say what happened; and the LU
must hold what the ``by-id`` file reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import trio

from fake_target import AO, STANDBY, TRANSITIONING, AluaUnit, TargetThread
from helpers import wait_for
from mounting import run_helper, unmount

pytestmark = pytest.mark.integration

IQN = "iqn.2026-11.org.iscsifs.test:alua"
INITIATOR = "iqn.2026-11.org.iscsifs.test:alua-initiator"
NAME = "wwn-0x60000000000000000e00000000010001"
MiB = 1 << 20
SIZE = 16 * MiB
TRANSITION = 3.0        # how long group 1 stays in transition: the target's own timing


def status(mp) -> dict:
    """The by-id file's multipath snapshot (``iscsifs.multipath/1``), paths by portal."""
    facts = json.loads((mp / "by-id" / ".multipath" / f"{NAME}.json").read_text())
    return {p["portal"]["address"]: p for p in facts["paths"]} | {"": facts}


def xattr(path, name: str) -> str:
    return os.getxattr(path, f"user.iscsi.{name}").decode()


def path_view(mp, portal: str) -> tuple:
    """(ALUA state, priority, in the active group, checker state) of one path."""
    p = status(mp)[portal]
    return (p["alua_state"], p["priority"], p["group_active"], p["checker_state"])


def test_fio_verify_across_an_alua_transition_and_a_group_switch(fuse_available, tmp_path):
    if shutil.which("fio") is None:
        pytest.fail("fio is not installed (scripts/setup installs it)")
    unit = AluaUnit(blocks=SIZE // AluaUnit.BS, groups={1: AO, 2: STANDBY})
    ta = unit.target("a", 1, iqn=IQN, transfers=True, tpgt=1)
    tb = unit.target("b", 2, iqn=IQN, transfers=True, tpgt=2)
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    switch: dict = {}

    async def failover():
        """The controller of group 1 hands the LU over to the other one."""
        unit.set_state(1, TRANSITIONING)
        await trio.sleep(TRANSITION)
        unit.set_state(1, STANDBY)
        unit.set_state(2, AO)
        switch["served"] = dict(unit.served)

    fio = None
    with TargetThread() as thread:
        a = f"127.0.0.1:{thread.serve(ta, '127.0.0.1')}"
        b = f"127.0.0.2:{thread.serve(tb, '127.0.0.2')}"
        for target, portal, tpgt in ((ta, a, 1), (tb, b, 2)):
            target.sendtargets = [("TargetName", IQN), ("TargetAddress", f"{portal},{tpgt}")]
        opts = (f"initiator_name={INITIATOR},logfile={log},noop_out_interval=1,"
                "noop_out_timeout=2,login_timeout=5,replacement_timeout=30,"
                "alua_transition_timeout=30")
        r = run_helper(f"{a},{b}", mp, "-v", "-o", opts)
        assert r.returncode == 0, r.stderr
        try:
            assert sorted(os.listdir(mp / "by-id")) == [".multipath", NAME]
            dev = mp / "by-id" / NAME
            assert dev.stat().st_size == SIZE
            # both ports are paths; the standby one (its READ CAPACITY refused) a ghost
            assert path_view(mp, a) == ("active/optimized", 50, True, "ready")
            assert path_view(mp, b) == ("standby", 1, False, "ghost")
            assert status(mp)[""]["hwhandler"] == "'1 alua'"

            # write 12 MiB at 2 MiB/s, in blocks of 4-64 KiB, 8 at a time; then read it back
            fio_name = str(dev).replace(":", "\\:")
            fio = subprocess.Popen(
                ["fio", "--name=alua", f"--filename={fio_name}", "--rw=randwrite",
                 "--bsrange=4k-64k", "--ioengine=libaio", "--iodepth=8", "--direct=1",
                 "--size=12M", "--rate=16m,2m", "--verify=crc32c", "--do_verify=1",
                 "--verify_fatal=1", "--verify_state_save=0", "--randrepeat=1",
                 "--allow_file_create=0", "--output-format=json"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert wait_for(lambda: unit.served.get("a", 0) > 20, timeout=20)
            thread.start_soon(failover)

            # the transition: every command on a answered 04/0A and retried there, no path
            # usable but a, so the writes wait for it
            assert wait_for(lambda: path_view(mp, a)[0] == "transitioning", timeout=10)
            assert fio.poll() is None
            # then b active/optimized (UNIT ATTENTION 2A/06 re-read the groups) takes the I/O
            assert wait_for(lambda: path_view(mp, b) == ("active/optimized", 50, True, "ready")
                            and path_view(mp, a) == ("standby", 1, False, "ghost"),
                            timeout=TRANSITION + 10)
            assert fio.poll() is None, "fio ended before the switch: pace it slower"
            assert xattr(dev, "portal") == b
            assert wait_for(lambda: unit.served.get("b", 0) > 20, timeout=15)

            out, _ = fio.communicate(timeout=120)
            assert fio.returncode == 0, out[-3000:]
            [job] = json.loads(out[out.index("{"):])["jobs"]
            assert job["error"] == 0                # verify_fatal: a mismatch is an error
            assert job["write"]["io_bytes"] == job["read"]["io_bytes"] == 12 * MiB
            # the writes waited for the transition (no other port was usable), not longer
            # than it lasted plus a retry or two
            waited = job["write"]["clat_ns"]["max"] / 1e9
            assert TRANSITION - 0.5 <= waited <= TRANSITION + 5, waited
            assert unit.not_ready.get(("a", TRANSITIONING), 0) >= 2    # retried there

            # no READ or WRITE went to a standby port: b before the switch (its one refusal
            # is the READ CAPACITY of the mount's probe), a after it (the mount counted none
            # either)
            served, not_ready = thread.call(lambda: (dict(unit.served), dict(unit.not_ready)))
            assert switch["served"].get("b", 0) == 0
            assert not_ready[("b", STANDBY)] == 1
            assert set(not_ready) == {("b", STANDBY), ("a", TRANSITIONING)}
            assert served["a"] == switch["served"]["a"] > 20
            assert served["b"] > 100
            facts = status(mp)
            assert facts[a]["errors"] == facts[a]["failures"] == facts[b]["errors"] == 0
            assert facts[""]["active_path_switches"] == 1
            # the whole LU reads back, through b, as the target holds it
            ios_a = facts[a]["ios"]
            with open(dev, "rb") as f:
                assert f.read() == thread.call(bytes, unit.data)
            assert status(mp)[a]["ios"] == ios_a
            assert thread.call(lambda: unit.served["a"]) == switch["served"]["a"]
            assert status(mp)[b]["ios"] > facts[b]["ios"]
            assert xattr(dev, "portal") == b
            daemon = log.read_text()
            for line in (f"path {a} {IQN} lun 1 is in an ALUA transition",
                         f"path {a} {IQN} lun 1 is standby (target port group 1)",
                         f"path {b} {IQN} lun 1 is active/optimized (target port group 2)",
                         f"active path switched from {a} {IQN} lun 1 to {b} {IQN} lun 1"):
                assert line in daemon, daemon[-3000:]
            assert " WARNING" not in daemon, daemon[-3000:]
        finally:
            if fio is not None and fio.poll() is None:
                fio.kill()
                fio.wait(30)
            unmount(mp, timeout=30)
        # unmounting logged out of both ports
        assert wait_for(lambda: not ta.live and not tb.live, timeout=10)
