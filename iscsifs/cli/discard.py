"""``iscsifs discard PATH [--offset N] [--length N]``: discard a range of a LUN through the
mount (``blkdiscard`` for a ``raw`` or ``by-id`` file).

pyfuse3 has no fallocate or ioctl handler, so the request goes in as an extended attribute:
``setxattr(PATH, "user.iscsi.discard", "OFFSET LENGTH")``. The mount's own session does the
work (UNMAP or WRITE SAME(16) with UNMAP for whole granules, zeros written over the unaligned
edges; ``device.Lun.discard``) under the same block range lock as its writes, so it is safe
while the mount is in use. The errno the mount answers comes back as one line and iscsiadm's
exit code (``exits.file_error``): 27 the LUN supports neither UNMAP nor WRITE SAME with
UNMAP, 7 a bad or too long range (or PATH is no raw file), 13 a read-only LUN or mount.

Must not know: SCSI, sessions, FUSE internals; it only uses the file's attributes.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

from iscsifs.errors import EXIT_INVALID_ARGUMENT, QuietError
from iscsifs.exits import file_error

DISCARD_XATTR = "user.iscsi.discard"
PROBE_XATTR = "user.iscsi.block_size"     # every raw and by-id file has it

_SIZE_RE = re.compile(r"(\d+)\s*(?:([KMGTPE])(iB|B)?)?", re.IGNORECASE)
_POWERS = "KMGTPE"

MEANING = {
    errno.EOPNOTSUPP: "the LUN supports neither UNMAP nor WRITE SAME with UNMAP "
                      "(no logical block provisioning)",
    errno.ENOSPC: "the range runs past the end of the LUN",
    errno.EINVAL: "bad range",
    errno.EROFS: "the LUN is write-protected or the mount is read-only",
    errno.EIO: "I/O error (the mount's log says why)",
}


def parse_size(text: str, what: str) -> int:
    """``4096``, ``1M`` / ``1MiB`` (2**20), ``1MB`` (10**6), like util-linux; exit 7 if bad."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise QuietError(f"bad {what} {text!r}: a number of bytes, optionally with a K, M, G, "
                         f"T, P or E suffix (KiB = 1024, KB = 1000)", EXIT_INVALID_ARGUMENT)
    number, unit, suffix = match.groups()
    if unit is None:
        return int(number)
    base = 1000 if (suffix or "").upper() == "B" else 1024
    return int(number) * base ** (_POWERS.index(unit.upper()) + 1)


def discard(args: Any) -> int:
    path = args.path
    try:
        size = os.stat(path).st_size
        os.getxattr(path, PROBE_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            raise QuietError(f"discard {path}: not a raw or by-id file of an iscsifs mount",
                             EXIT_INVALID_ARGUMENT) from None
        raise file_error(exc, path, doing="discard") from None
    offset = parse_size(args.offset, "offset") if args.offset is not None else 0
    if args.length is not None:
        length = parse_size(args.length, "length")
    elif offset > size:
        raise QuietError(f"discard {path}: offset {offset} is beyond the end of the LUN "
                         f"({size} bytes)", EXIT_INVALID_ARGUMENT)
    else:
        length = size - offset
    if offset + length > size:
        raise QuietError(f"discard {path}: offset {offset} + length {length} runs past the end "
                         f"of the LUN ({size} bytes)", EXIT_INVALID_ARGUMENT)
    try:
        os.setxattr(path, DISCARD_XATTR, f"{offset} {length}".encode())
    except OSError as exc:
        raise file_error(exc, path, doing="discard", meaning=MEANING) from None
    if args.report:
        print(f"{path}: Discarded {length} bytes from the offset {offset}")
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``discard`` to the ``iscsifs`` command line."""
    p = subparsers.add_parser(
        "discard", help="discard (unmap) a range of a LUN through the mount (blkdiscard)",
        description="Discard a byte range of a LUN's raw or by-id file in an iscsifs mount: "
        "whole granules are unmapped (UNMAP, or WRITE SAME(16) with UNMAP), the unaligned "
        "edges are written with zeros. Unmapped blocks read back as zeros when the LUN says "
        "so (info: 'Discarded blocks read as zeros').")
    p.add_argument("path", metavar="PATH", help="a raw or by-id file of an iscsifs mount")
    p.add_argument("-o", "--offset", help="where to start, in bytes (default 0; K/M/G... "
                   "suffixes as in blkdiscard)")
    p.add_argument("-l", "--length", help="how many bytes (default: to the end)")
    p.add_argument("-v", "--verbose", dest="report", action="store_true",
                   help="print what was discarded")
    p.set_defaults(run=discard, is_async=False)
