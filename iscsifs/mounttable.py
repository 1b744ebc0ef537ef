"""The iscsifs mounts of this machine, from the kernel's table (``/proc/self/mountinfo``, fstype
``fuse.iscsifs``): ``iscsifs session`` lists them, ``mount.iscsifs`` refuses to mount twice on
one. Reads only the table, never the mounts themselves.
"""

from __future__ import annotations

MOUNTINFO = "/proc/self/mountinfo"
FSTYPE = "fuse.iscsifs"


def _unescape_mountinfo(path: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 4 <= len(path) and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def iscsifs_mounts(mountinfo: str = MOUNTINFO) -> list[str]:
    """The mount points of every iscsifs mount (fstype ``fuse.iscsifs``), in mount order.
    Reads only the kernel's table: never the mounts themselves."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        fstype = right.split()[0] if right.split() else ""
        if fstype == FSTYPE:
            found.append(_unescape_mountinfo(fields[4]))
    return found
