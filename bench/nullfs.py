#!/usr/bin/env python3
"""The ceiling: a pyfuse3 file system that does no I/O at all.

``nullfs.py MOUNTPOINT SIZE_BYTES`` mounts a directory holding one file, ``lun``, of SIZE_BYTES.
``read`` returns a slice of a constant buffer and ``write`` returns ``len(buf)``; the file is
opened with ``direct_io`` and the loop runs with ``pyfuse3.main(min_tasks=32)``, like iscsifs.
Whatever iscsifs does on top of this (iSCSI, SCSI, its own Python work) is what separates the
two; no single-process pyfuse3 design can go faster than this one on the same machine.

Runs in the foreground; SIGTERM or SIGINT unmounts and exits (so does ``umount MOUNTPOINT``).
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import time

import pyfuse3
import trio

FILE_INODE = pyfuse3.ROOT_INODE + 1
NAME = b"lun"
BUF = os.urandom(4 << 20)          # larger than any single FUSE request (1 MiB here)
BLKSIZE = 1 << 20                  # st_blksize, as iscsifs reports for raw


class NullFS(pyfuse3.Operations):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.stamp = time.time_ns()

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o755, 2, 0
        elif inode == FILE_INODE:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o600, 1, self.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_blksize = BLKSIZE
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.stamp
        a.attr_timeout = a.entry_timeout = 1.0      # as iscsifs
        return a

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode == pyfuse3.ROOT_INODE and name == NAME:
            return self._attr(FILE_INODE)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode, ctx):
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attr(FILE_INODE), 1)

    async def releasedir(self, fh):
        pass

    async def open(self, inode, flags, ctx):
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

    async def read(self, fh, off, size):
        n = max(0, min(size, self.size - off))
        return BUF[:n] if n <= len(BUF) else bytes(n)

    async def write(self, fh, off, buf):
        return len(buf)

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        pass

    async def release(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 512
        s.f_blocks = self.size // 512
        s.f_namemax = 255
        return s


async def serve() -> None:
    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        await pyfuse3.main(min_tasks=32)
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: nullfs.py MOUNTPOINT SIZE_BYTES", file=sys.stderr)
        return 2
    mountpoint, size = argv[0], int(argv[1])
    options = set(pyfuse3.default_options) | {"fsname=iscsifs-bench-null", "subtype=benchnull"}
    pyfuse3.init(NullFS(size), mountpoint, options)
    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
