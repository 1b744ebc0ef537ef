"""Session IDs that are unique across every iscsifs mount of the machine, as iscsiadm's are
(the kernel numbers its sessions globally; ``iscsiadm -m session -r SID`` relies on it).

Owns: one counter file, ``RUN_DIR/sid`` (``config.locations.default_run_dir()``: /run/iscsifs
as root, so it starts again at 1 after a reboot, like the kernel's). Each new session of any
mount takes the next number under ``flock``. When the file can't be used (read-only /run, no
permission), numbers come from a per-process counter offset by the PID, so they stay apart
from other mounts' in practice; that is logged once at DEBUG.

Must not know: sessions, trio. ``Initiator(sid_source=...)`` calls ``SidCounter.next``.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os

from iscsifs.config.locations import default_run_dir

log = logging.getLogger(__name__)

SID_FILE = "sid"
MAX_SID = 2**31 - 1


class SidCounter:
    def __init__(self, run_dir: str | None = None):
        self.path = os.path.join(run_dir or default_run_dir(), SID_FILE)
        self._fallback: itertools.count[int] | None = None

    def next(self) -> int:
        """The next free session ID (>= 1)."""
        if self._fallback is None:
            try:
                return self._take()
            except OSError as exc:
                log.debug("session IDs: %s unusable (%s); numbering per process", self.path,
                          exc.strerror or exc)
                self._fallback = itertools.count(1 + (os.getpid() % 20000) * 100000)
        return next(self._fallback)

    def _take(self) -> int:
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            last = int(text) if text.isdigit() else 0
            sid = last + 1 if 0 <= last < MAX_SID else 1
            data = f"{sid}\n".encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            return sid
        finally:
            os.close(fd)          # releases the lock
