"""The operational parameters that change the write path, negotiated for real with tgt and
driven by ``fio --verify`` on a mounted ``raw`` file.

Each row sets the keys on both sides: on the target with ``tgtadm --op update --mode target
--name KEY --value V``, on the initiator through the mount's config dir (``iscsid.conf``: the
node keys ``node.session.iscsi.*``, ``node.conn[0].iscsi.MaxRecvDataSegmentLength``) and the
``header_digest=`` / ``data_digest=`` mount options. The session file must then show what
RFC 7143 §13 makes of them (InitialR2T: OR, ImmediateData: AND, burst lengths: min,
MaxRecvDataSegmentLength: declared per direction), and fio's verify pass must find every
block it wrote, with ``cmp`` against the backing file last.

The axes - InitialR2T Yes/No, ImmediateData Yes/No, MaxRecvDataSegmentLength 512/262144,
bursts (MaxBurstLength 4096 with FirstBurstLength 512) or the defaults, CRC32C header and data
digests or none - are combined pairwise: six rows cover every pair of values of every two
axes, instead of the 32 of the full product. With 512-byte data segments and 4 KiB bursts a
64 KiB write is 16 R2T sequences of 8 Data-Out PDUs each.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mounting import run_helper, unmount

from iscsifs_testbed.tgtd import MiB

pytestmark = pytest.mark.integration

INI = "iqn.2026-11.org.iscsifs.test:matrix"

#        InitialR2T ImmediateData MRDSL  small bursts  digests
ROWS = [("Yes",     "Yes",        512,    True,        True),
        ("Yes",     "No",         262144, False,       True),
        ("No",      "Yes",        262144, True,        False),
        ("No",      "No",         512,    False,       False),
        ("Yes",     "Yes",        262144, False,       False),
        ("No",      "No",         512,    True,        True)]


def row_id(row) -> str:
    r2t, imm, mrdsl, small, digests = row
    return (f"r2t{r2t}-imm{imm}-mrdsl{mrdsl}-{'burst4k' if small else 'burstdef'}-"
            f"{'crc' if digests else 'nodigest'}")


def test_rows_cover_every_pair_of_values():
    values = [sorted({row[i] for row in ROWS}, key=str) for i in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            seen = {(row[i], row[j]) for row in ROWS}
            assert seen == {(a, b) for a in values[i] for b in values[j]}, (i, j)


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_fio_verify_with_negotiated_parameters(row, fresh_target, fuse_available, tmp_path):
    if shutil.which("fio") is None:
        pytest.fail("fio is not installed (scripts/setup installs it)")
    r2t, imm, mrdsl, small, digests = row
    params = {"InitialR2T": r2t, "ImmediateData": imm, "MaxRecvDataSegmentLength": mrdsl}
    keys = {"node.session.iscsi.InitialR2T": r2t, "node.session.iscsi.ImmediateData": imm,
            "node.conn[0].iscsi.MaxRecvDataSegmentLength": mrdsl}
    if small:
        params.update(MaxBurstLength=4096, FirstBurstLength=512)
        keys.update({"node.session.iscsi.MaxBurstLength": 4096,
                     "node.session.iscsi.FirstBurstLength": 512})
    if digests:
        params.update(HeaderDigest="CRC32C", DataDigest="CRC32C")
    info = fresh_target([(4 * MiB, 512)], params=params)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "iscsid.conf").write_text("".join(f"{k} = {v}\n" for k, v in keys.items()))
    mp = tmp_path / "mnt"
    mp.mkdir()
    options = [f"initiator_name={INI}", f"config_dir={cfg}", f"logfile={tmp_path / 'log'}"]
    if digests:
        options += ["header_digest=crc32c", "data_digest=crc32c"]
    r = run_helper(info.portal, mp, "-o", ",".join(options))
    assert r.returncode == 0, r.stderr
    try:
        tdir = mp / "portals" / info.portal / "targets" / info.iqn
        raw = tdir / "luns" / "1" / "raw"
        fio_name = str(raw).replace(":", "\\:")
        out = subprocess.run(
            ["fio", "--name=matrix", f"--filename={fio_name}", "--rw=randwrite",
             "--bsrange=512-64k", "--ioengine=libaio", "--iodepth=8", "--direct=1",
             "--size=3M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
             "--verify_state_save=0", "--randrepeat=1", "--allow_file_create=0"],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert "err= 0" in out.stdout
        text = (tdir / "session").read_text()
        want = {
            "InitialR2T": r2t, "ImmediateData": imm,       # both sides agree by design
            "MaxRecvDataSegmentLength": mrdsl, "MaxXmitDataSegmentLength": mrdsl,
            "MaxBurstLength": 4096 if small else 262144,
            "FirstBurstLength": 512 if small else 65536,
            "HeaderDigest": "CRC32C" if digests else "None",
            "DataDigest": "CRC32C" if digests else "None",
        }
        for key, value in want.items():
            assert f"\t\t{key}: {value}\n" in text, (key, value, text)
        assert "digest_err: 0" in text
        counters = dict(line.strip().split(": ", 1) for line in text.splitlines()
                        if line.strip().startswith(("r2t_pdus", "dataout_pdus")))
        # fio writes at most 64 KiB: more than a 512-byte first burst, less than 64 KiB
        if small or (r2t == "Yes" and imm == "No"):
            assert int(counters["r2t_pdus"]) > 0      # writes waited for R2Ts
        else:                                         # all of it went unsolicited
            assert int(counters["r2t_pdus"]) == 0
        if not (r2t == "Yes" and imm == "Yes" and not small):
            assert int(counters["dataout_pdus"]) > 0  # not all of it immediate data
        subprocess.run(["cmp", str(raw), str(info.luns[1].path)], check=True, timeout=60)
    finally:
        unmount(mp)
