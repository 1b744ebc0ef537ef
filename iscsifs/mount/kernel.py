"""The kernel's knobs of one FUSE mount, set the way a block driver sets its queue's.

Owns: the mount's backing device info (``/sys/class/bdi/MAJ:MIN/read_ahead_kb``): how far
the kernel reads ahead for buffered reads of ``raw`` files (``cache=auto`` and
``cache=page``). Linux sets a disk's read-ahead from its optimal I/O size (twice it); a FUSE
mount gets the kernel's 128 KiB, which makes a buffered sequential read send 128 KiB
requests, four times as many as the 512 KiB commands iscsifs would split them into.

Only root may write there; for anyone else the kernel's value stays (one DEBUG line). The
value must be written after the mount's FUSE_INIT exchange, whose answer can only lower it
(``mount/lifetime.py`` calls :func:`tune` once ``Operations.init`` has run).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

SYSFS_BDI = "/sys/class/bdi"


def mount_device(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """``MAJ:MIN`` of the newest mount at ``mountpoint`` (a real path: no symlinks), from
    mountinfo: never a stat of the mount point, which the daemon itself would answer."""
    found = None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and _unescape(fields[4]) == mountpoint:
                    found = fields[2]
    except OSError:
        return None
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def tune(mountpoint: str, read_ahead_kb: int) -> None:
    """Set the read-ahead (KiB; 0 leaves the kernel's) of the mount at ``mountpoint`` (a real
    path, resolved before mounting). Never raises: a knob the
    kernel does not offer or we may not write is logged and left alone."""
    if read_ahead_kb <= 0:
        return
    device = mount_device(mountpoint)
    if device is None:
        log.debug("read_ahead_kb not set: %s is not in mountinfo", mountpoint)
        return
    try:
        path = os.path.join(SYSFS_BDI, device, "read_ahead_kb")
        with open(path, "w") as f:
            f.write(f"{read_ahead_kb}\n")
    except OSError as exc:
        log.debug("read_ahead_kb=%d not set for %s: %s", read_ahead_kb, mountpoint, exc)
        return
    log.debug("read_ahead_kb of %s set to %d", mountpoint, read_ahead_kb)
