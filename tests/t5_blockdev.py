"""``raw`` as good as a block device, on real mounts against the private tgtd with the default
options: fallocate (punch hole, zero range), discard through loop devices (blkdiscard, mkfs,
fstrim), writes from many threads in parallel, shared mmap coherent with other fds, reads
with small buffers that read ahead, and what two mounts of one LUN see.

Parallelism and read-ahead are asserted by what the daemon did (commands in flight at once,
SCSI commands sent), never by timing."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from t5_mount import Mount, do_mount
from t5_mount_io import fresh_mount  # noqa: F401  (fixture)
from iscsifs_testbed.tgtd import MiB

pytestmark = pytest.mark.integration

THIN = "thin_provisioning=1"


def patched_pyfuse3() -> None:
    """fallocate and parallel direct writes need the patched pyfuse3 (scripts/setup builds it;
    patches/pyfuse3/README.md): without it they are off, and these tests say why."""
    import pyfuse3
    if not (hasattr(pyfuse3.Operations, "fallocate")
            and getattr(pyfuse3, "HAVE_PARALLEL_DIRECT_WRITES", False)):
        pytest.fail("pyfuse3 is not the patched build (run scripts/setup; "
                    "ISCSIFS_PYFUSE3_PATCH=0 turns fallocate and parallel writes off)")


def tool(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            pytest.fail(f"{name} is not installed (scripts/setup installs it)")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=check)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def scsi_commands(m, iqn: str) -> int:
    text = (m.target(iqn) / "session").read_text()
    return int(re.search(r"\tscsicmd_pdus: (\d+)\n", text)[1])


def in_flight(m, iqn: str, lun: int) -> dict:
    return json.loads((m.target(iqn) / "luns" / str(lun) / "info.json").read_text())["in_flight"]


def fill(fd: int, offset: int, data: bytes) -> None:
    assert os.pwrite(fd, data, offset) == len(data)
    os.fsync(fd)


@contextmanager
def loop_device(path: Path, *options: str):
    dev = run("losetup", "--find", "--show", *options, str(path)).stdout.strip()
    try:
        yield dev
    finally:
        run("losetup", "--detach", dev, check=False)


def test_fallocate_punches_holes_and_zeroes_ranges(fresh_mount):
    tool("fallocate")
    patched_pyfuse3()
    m, info = fresh_mount([(16 * MiB, 512, THIN), (8 * MiB, 4096)])
    raw, backing = m.raw(info.iqn, 1), info.luns[1].path
    pattern = os.urandom(6 * MiB)
    start, length = 2 * MiB + 1000, 3 * MiB + 333            # unaligned at both ends
    fd = os.open(raw, os.O_RDWR)                              # buffered: the page cache
    try:
        fill(fd, MiB, pattern)
        assert os.pread(fd, 6 * MiB, MiB) == pattern          # now cached
        before = allocated(backing)
        run("fallocate", "--punch-hole", "--offset", str(start), "--length", str(length),
            str(raw))
        data = os.pread(fd, 6 * MiB, MiB)                     # through the same cache
    finally:
        os.close(fd)
    lo, hi = start - MiB, start - MiB + length
    assert data[lo:hi] == bytes(length) and data[:lo] == pattern[:lo] and \
        data[hi:] == pattern[hi:]
    with open(backing, "rb") as f:                            # and so says the target
        f.seek(MiB)
        assert f.read(6 * MiB) == data
    assert before - allocated(backing) >= length - 64 * 1024   # tgt punched the hole
    # ZERO_RANGE (unmapped too: tgt's thin LUNs read zeros after UNMAP)
    run("fallocate", "--zero-range", "--offset", "0", "--length", str(MiB + 512), str(raw))
    assert backing.read_bytes()[:MiB + 512] == bytes(MiB + 512)

    # the by-id file of the same LU takes it too
    wwn = json.loads((m.target(info.iqn) / "luns" / "1" / "info.json").read_text())["wwn"]
    by_id = m.path / "by-id" / f"wwn-0x{wwn.removeprefix('naa.')}"
    with open(by_id, "r+b") as f:
        f.seek(8 * MiB)
        f.write(os.urandom(4 * MiB))
        f.flush()
        os.fsync(f.fileno())
    before = allocated(backing)
    run("fallocate", "--punch-hole", "--offset", str(8 * MiB), "--length", str(4 * MiB),
        str(by_id))
    assert before - allocated(backing) >= 4 * MiB - 64 * 1024
    assert backing.read_bytes()[8 * MiB:12 * MiB] == bytes(4 * MiB)

    # a LUN without thin provisioning: ZERO_RANGE is WRITE SAME of zeros, PUNCH_HOLE refused
    raw2, backing2 = m.raw(info.iqn, 2), info.luns[2].path
    run("fallocate", "--zero-range", "--offset", "4000", "--length", str(MiB), str(raw2))
    before2 = backing2.read_bytes()
    assert before2[4000:4000 + MiB] == bytes(MiB) and before2[:4000] != bytes(4000)
    r = run("fallocate", "--punch-hole", "--offset", "0", "--length", str(MiB), str(raw2),
            check=False)
    assert r.returncode != 0 and "unsupported" in r.stderr      # util-linux's EOPNOTSUPP
    r = run("fallocate", "--length", str(MiB), str(raw2), check=False)   # allocation
    assert r.returncode != 0 and "Operation not supported" in r.stderr
    assert backing2.read_bytes() == before2


def test_loop_device_discard_reaches_the_target(fresh_mount, tmp_path):
    tool("losetup", "blkdiscard", "mkfs.ext4", "fstrim")
    patched_pyfuse3()
    m, info = fresh_mount([(96 * MiB, 512, THIN)])
    raw, backing = m.raw(info.iqn, 1), info.luns[1].path
    with loop_device(raw) as dev:
        queue = Path("/sys/block") / Path(dev).name / "queue"
        assert int((queue / "discard_max_bytes").read_text()) > 0, "the loop device lost discard"
        run("dd", "if=/dev/urandom", f"of={dev}", "bs=1M", "count=8", "seek=40",
            "oflag=direct", "status=none")
        full = allocated(backing)
        run("blkdiscard", "--offset", str(40 * MiB), "--length", str(8 * MiB), dev)
        assert full - allocated(backing) >= 8 * MiB - 64 * 1024
        with open(dev, "rb") as f:
            f.seek(40 * MiB)
            assert f.read(8 * MiB) == bytes(8 * MiB)
        run("dd", "if=/dev/urandom", f"of={dev}", "bs=1M", "count=32", "oflag=direct",
            "status=none")
        assert allocated(backing) >= 32 * MiB
        run("mkfs.ext4", "-q", "-F", dev)                     # discards the whole device first
        after_mkfs = allocated(backing)
        assert after_mkfs < 16 * MiB, after_mkfs
        fs = tmp_path / "ext4"
        fs.mkdir()
        run("mount", dev, str(fs))
        try:
            (fs / "data").write_bytes(os.urandom(24 * MiB))
            run("sync")
            grown = allocated(backing)
            assert grown >= after_mkfs + 24 * MiB - MiB
            (fs / "data").unlink()
            run("sync")
            assert "trimmed" in run("fstrim", "-v", str(fs)).stdout
            assert grown - allocated(backing) >= 24 * MiB - MiB
        finally:
            run("umount", str(fs), check=False)
    # and with the loop driver's direct I/O (what losetup --direct-io=on sets)
    run("dd", "if=/dev/urandom", f"of={raw}", "bs=1M", "count=4", "seek=80", "oflag=direct",
        "status=none")
    with loop_device(raw, "--direct-io=on") as dev:
        before = allocated(backing)
        run("blkdiscard", "--offset", str(80 * MiB), "--length", str(4 * MiB), dev)
        assert before - allocated(backing) >= 4 * MiB - 64 * 1024


@pytest.mark.parametrize("cache, parallel", [("auto", True), ("page", False)])
def test_writes_from_many_threads_run_in_parallel(fresh_mount, cache, parallel):
    """16 threads writing 4 KiB O_DIRECT (what qemu's thread pool and databases do): with the
    default cache mode the LUN sees many WRITEs at once; with cache=page the kernel holds the
    file's lock across each write, and it sees one at a time."""
    tool("fio")
    patched_pyfuse3()
    m, info = fresh_mount([(64 * MiB, 512)], options=(f"cache={cache}",))
    raw = m.raw(info.iqn, 1)
    r = run("fio", "--name=threads", f"--filename={str(raw).replace(':', chr(92) + ':')}",
            "--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=psync", "--numjobs=16",
            "--size=64M", "--number_ios=100", "--allow_file_create=0", "--group_reporting")
    assert "err= 0" in r.stdout
    most = in_flight(m, info.iqn, 1)
    assert most["writes"] == 0 and most["max_reads"] == 0
    if parallel:
        assert most["max_writes"] >= 4, most
    else:
        assert most["max_writes"] == 1, most


def test_shared_mmap_is_coherent_with_other_fds(fresh_mount):
    patched_pyfuse3()                            # for the hole punched through a third fd
    m, info = fresh_mount([(8 * MiB, 512, THIN)])
    raw, backing = m.raw(info.iqn, 1), info.luns[1].path
    page = mmap.PAGESIZE
    buffered = os.open(raw, os.O_RDWR)
    direct = os.open(raw, os.O_RDWR | os.O_DIRECT)
    block = mmap.mmap(-1, page)                  # an aligned buffer for O_DIRECT
    try:
        with mmap.mmap(buffered, 2 * MiB, mmap.MAP_SHARED) as mem:
            mem[0:5] = b"mmap!"                  # a store through the mapping
            mem.flush()
            assert os.preadv(direct, [block], 0) == page and block[:5] == b"mmap!"
            assert backing.read_bytes()[:5] == b"mmap!"
            block[:] = b"D" * page               # an O_DIRECT write shows in the mapping
            assert os.pwritev(direct, [block], page) == page
            assert mem[page:2 * page] == b"D" * page
            assert os.pwrite(buffered, b"buffered", 3 * page) == 8     # so does a write()
            assert mem[3 * page:3 * page + 8] == b"buffered"
            run("fallocate", "--punch-hole", "--offset", str(page), "--length", str(page),
                str(raw))                        # and a hole punched through a third fd
            assert mem[page:2 * page] == bytes(page)
            mem[MiB:MiB + 4] = b"late"           # not flushed: an O_DIRECT read flushes it
            assert os.preadv(direct, [block], MiB) == page and block[:4] == b"late"
    finally:
        os.close(direct)
        os.close(buffered)
        block.close()


def test_small_buffer_reads_read_ahead(fresh_mount):
    m, info = fresh_mount([(32 * MiB, 512)])
    raw, backing = m.raw(info.iqn, 1), info.luns[1].path
    with open(raw, "rb") as f:
        f.read(512)                              # logs in
    dev = os.stat(raw).st_dev
    bdi = Path("/sys/class/bdi") / f"{os.major(dev)}:{os.minor(dev)}"
    assert (bdi / "read_ahead_kb").read_text().strip() == "1024"
    before = scsi_commands(m, info.iqn)
    r = subprocess.run(["dd", f"if={raw}", "bs=512", "skip=1", "count=32767", "status=none"],
                       capture_output=True, timeout=120, check=True)
    sent = scsi_commands(m, info.iqn) - before
    assert r.stdout == backing.read_bytes()[512:16 * MiB]
    # 32767 reads of 512 bytes: a handful of large READs, not one per read() (128 KiB each
    # would be 128; 1 MiB read-ahead split into 512 KiB commands, about 32)
    assert sent <= 64, sent
    before = scsi_commands(m, info.iqn)
    head = subprocess.run(f"head -c {8 * MiB} '{raw}' | md5sum", shell=True,
                          capture_output=True, text=True, timeout=120, check=True)
    assert scsi_commands(m, info.iqn) - before <= 32          # already read ahead, mostly
    assert head.stdout.split()[0] == hashlib.md5(backing.read_bytes()[:8 * MiB]).hexdigest()


def test_two_mounts_of_one_lun(fresh_mount, tmp_path):
    """Like two hosts with one LUN: O_DIRECT always sees the other mount's writes, and so does
    a buffered open of a LUN that was closed meanwhile (a first open drops the page cache)."""
    m, info = fresh_mount([(8 * MiB, 512)])
    mp2 = do_mount(tmp_path, info.portal, "iqn.2026-11.org.iscsifs.test:io2", name="mnt2")
    m2 = Mount(mp2, info.portal, m.tgtd, [])     # the first mount's session stays
    try:
        a, b = m.raw(info.iqn, 1), m2.raw(info.iqn, 1)
        block = mmap.mmap(-1, 4096)
        with open(b, "rb") as f:
            f.read(4096)                         # b's page cache holds the first page
        fa = os.open(a, os.O_RDWR | os.O_DIRECT)
        try:
            block[:] = b"A" * 4096
            os.pwritev(fa, [block], 0)
        finally:
            os.close(fa)
        with open(b, "rb") as f:                 # a first open: the cache is dropped
            assert f.read(4096) == b"A" * 4096
            fb = os.open(b, os.O_RDONLY | os.O_DIRECT)
            try:
                fa = os.open(a, os.O_RDWR)
                os.pwrite(fa, b"B" * 4096, 0)
                os.close(fa)
                assert os.preadv(fb, [block], 0) == 4096 and block[:] == b"B" * 4096
            finally:
                os.close(fb)
        with open(b, "rb") as f:
            assert f.read(4096) == b"B" * 4096
        block.close()
    finally:
        m2.unmount()
