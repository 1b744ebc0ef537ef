"""Logging for both commands: stderr for ``iscsifs`` and a foreground mount, and a mount
daemon's own log file (``MountLogHandler``: mode 0600, bounded, reopened after logrotate) with
warnings also sent to syslog.

Owns: ``setup_logging`` (the one place that installs handlers), ``MountLogHandler``,
``open_log_file``. Must not know: what is logged, or by whom; the entry points (``cli``,
``mount``) call it and import nothing of each other.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import sys

__all__ = ["LOG_FORMAT", "LOG_MAX_BYTES", "SYSLOG", "MountLogHandler", "open_log_file",
           "setup_logging"]

_OURS = "_iscsifs_handler"     # marks the handlers setup_logging installed
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(name)s %(levelname)s: %(message)s"
LOG_MAX_BYTES = 10 << 20       # a mount's log file is renamed to FILE.1 past this size
SYSLOG = "syslog"              # logfile=syslog: log to /dev/log instead of a file


class MountLogHandler(logging.handlers.WatchedFileHandler):
    """Appends to one mount's log file, created with mode 0600.

    Reopens the file when it was moved or deleted (logrotate without ``copytruncate``), and
    when it reaches ``max_bytes`` renames it to ``FILE.1`` (replacing an older one) and starts
    a new file, so an unattended mount never fills the disk."""

    def __init__(self, filename: str, max_bytes: int = LOG_MAX_BYTES):
        self.max_bytes = max_bytes
        super().__init__(filename, encoding="utf-8")

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        stream = self.stream
        if self.max_bytes and stream is not None:
            try:
                if os.fstat(stream.fileno()).st_size >= self.max_bytes:
                    stream.close()
                    self.stream = None   # type: ignore[assignment]
                    os.replace(self.baseFilename, self.baseFilename + ".1")
            except OSError:
                pass                     # reopenIfNeeded() below sorts it out
        super().emit(record)


def open_log_file(path: str, *, make_dir: bool = True) -> None:
    """Create ``path`` (mode 0600), and with ``make_dir`` its directory if needed (0700 in a
    user's state dir, 0755 for /var/log/iscsifs): OSError if that is not possible. Without
    ``make_dir`` (a file the user named) a missing directory is FileNotFoundError naming it
    (NotADirectoryError when it is a file), and nothing is created."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        if not make_dir:
            if os.path.exists(directory):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory)
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), directory)
        os.makedirs(directory, mode=0o755 if os.geteuid() == 0 else 0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _syslog_handler() -> logging.Handler | None:
    if not os.path.exists("/dev/log"):
        return None
    try:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter(f"iscsifs[{os.getpid()}]: %(name)s "
                                           "%(levelname)s: %(message)s"))
    return handler


def setup_logging(*, debug: bool = False, verbose: bool = False, logfile: str | None = None,
                  syslog: bool = False, detailed: bool = False) -> None:
    """Send log records to stderr (default), a file, or syslog.

    - ``logfile=PATH`` (a mount daemon's log): the file, at INFO (DEBUG with ``debug``), so
      logins, logouts, relogins and path changes are one line each; warnings and errors also
      go to syslog when ``syslog`` and ``/dev/log`` exist. ``logfile="syslog"``: syslog only.
    - otherwise stderr: DEBUG with ``debug`` (one line per PDU), INFO with ``verbose``,
      WARNING without. ``detailed`` (or ``debug``) puts time, logger and level on each line;
      otherwise a line is ``iscsifs: message``.
    Calling it again replaces what it set up."""
    detailed = detailed or debug
    handlers: list[logging.Handler] = []
    if logfile == SYSLOG:
        level = logging.DEBUG if debug else logging.INFO
        handler = _syslog_handler()
        handlers.append(handler if handler is not None else logging.NullHandler())
    elif logfile:
        level = logging.DEBUG if debug else logging.INFO
        file_handler = MountLogHandler(logfile)
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
        handlers.append(file_handler)
        handler = _syslog_handler() if syslog else None
        if handler is not None:
            handler.setLevel(logging.WARNING)
            handlers.append(handler)
    else:
        level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S") if detailed
                            else logging.Formatter("iscsifs: %(message)s"))
        handlers.append(stream)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(level)
    # pyfuse3 logs every request at DEBUG; keep it to INFO unless asked very loudly
    logging.getLogger("pyfuse3").setLevel(max(level, logging.INFO))
