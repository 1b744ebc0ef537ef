"""What every command needs: the config dir, the initiator name, logging, and the one map from
an error to a one-line message and an exit code.

Exit codes are iscsiadm's (open-iscsi's include/iscsi_err.h), so scripts written for iscsiadm
keep working:

    0   ok
    1   anything else (ISCSI_ERR)
    4   cannot connect: refused, unreachable, timed out, connection lost (ISCSI_ERR_TRANS)
    7   invalid argument, option, value or record; a source address that is not this
        host's (EADDRNOTAVAIL) (ISCSI_ERR_INVAL)
    13  permission denied: a read-only LUN or mount (ISCSI_ERR_ACCESS)
    19  the target refused the login, or broke the protocol (ISCSI_ERR_FATAL_LOGIN)
    21  no records found (ISCSI_ERR_NO_OBJS_FOUND)
    24  authentication failed (ISCSI_ERR_LOGIN_AUTH_FAILED)
    25  the iSNS server refused the query or broke the protocol (ISCSI_ERR_ISNS_QUERY)
    26  the iSNS server refused to register the initiator (ISCSI_ERR_ISNS_REG_FAILED)
    27  the LUN does not support the operation, e.g. discard (ISCSI_ERR_OP_NOT_SUPP)

Errors reach the user as one line (``iscsifs: ...``), never as a traceback, and never with a
secret in it.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import sys

import trio

from iscsifs.config.initiatorname import ensure_initiator_name
from iscsifs.config.locations import default_config_dir
from iscsifs.core.discovery import Portal, iscsi_name_problem, parse_portal, printable
from iscsifs.errors import (EXIT_ACCESS, EXIT_GENERIC, EXIT_INVALID_ARGUMENT, EXIT_LOGIN_FAILED,
                            EXIT_NOT_SUPPORTED, EXIT_TRANSPORT_FAILURE, AuthenticationError,
                            ConfigError, ConnectionLost, IscsiError, IsnsError, LoginError,
                            QuietError,
                            RemoteProtocolError, SourceAddressError, leaf_exceptions,
                            os_reason)

__all__ = ["config_dir", "exit_code", "file_error", "initiator_name", "iscsifs_mounts",
           "open_log_file", "portal_arg", "quiet_error", "quiet_error_in", "setup_logging"]


# ---------------------------------------------------------------------- config dir, names
def config_dir(given: str | None) -> str:
    """The config dir a command uses: the one given, else ``default_config_dir()``."""
    return given if given else default_config_dir()


def portal_arg(text: str, *, default_port: int | None = None) -> Portal:
    """A portal typed by the user (``host``, ``host:port``, ``[v6]:port``); exit 7 if bad.
    ``default_port``: when none is given (3260 unless said, 3205 for an iSNS server)."""
    try:
        if default_port is not None:
            return parse_portal(text, default_port=default_port)
        return parse_portal(text)
    except ValueError as exc:
        raise QuietError(f"bad portal {printable(text)}: {exc}", EXIT_INVALID_ARGUMENT) from None


def initiator_name(given: str | None, config_dir: str, *, option: str = "--initiator-name",
                   open_iscsi_dir: str | None = None) -> tuple[str, str | None]:
    """``(name, note)``: the name given (as ``option``), else CONFIG_DIR/initiatorname.iscsi,
    else open-iscsi's in ``open_iscsi_dir`` (when given), else a new name generated and saved
    in CONFIG_DIR (``note`` then says so). Exit 7 for a bad name or an unusable config dir."""
    if given is not None:
        problem = iscsi_name_problem(given)
        if problem:
            raise QuietError(f"bad {option} {printable(given)}: {problem}",
                             EXIT_INVALID_ARGUMENT)
        return given, None
    path = os.path.join(config_dir, "initiatorname.iscsi")
    existed = os.path.exists(path)
    try:
        name, _alias = ensure_initiator_name(config_dir, open_iscsi_dir=open_iscsi_dir)
    except ConfigError as exc:
        raise QuietError(str(exc), EXIT_INVALID_ARGUMENT) from None
    except OSError as exc:
        raise QuietError(f"{path}: cannot save a new initiator name: {exc.strerror or exc}",
                         EXIT_INVALID_ARGUMENT) from None
    note = None
    if not existed and os.path.exists(path):
        note = f"no initiator name configured: generated {name} and saved it in {path}"
    return name, note


# ---------------------------------------------------------------------- mounts
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


# ---------------------------------------------------------------------- logging
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


def open_log_file(path: str) -> None:
    """Create ``path`` (mode 0600) and its directory if needed (0700 in a user's state dir,
    0755 for /var/log/iscsifs): OSError if that is not possible."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
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


# ---------------------------------------------------------------------- errors
def exit_code(exc: BaseException) -> int:
    """iscsiadm's exit code for an error (the table in the module docstring)."""
    if isinstance(exc, QuietError):
        return exc.exit_code
    if isinstance(exc, (LoginError, IsnsError)):  # AuthenticationError: 24, else 19; 25/26
        return exc.exit_code
    if isinstance(exc, RemoteProtocolError):
        return EXIT_LOGIN_FAILED
    if isinstance(exc, (ConfigError, SourceAddressError)):
        return EXIT_INVALID_ARGUMENT
    if isinstance(exc, OSError) and exc.filename is not None:
        return EXIT_GENERIC                      # a local file, not the network
    if isinstance(exc, (ConnectionLost, OSError, trio.TooSlowError)):
        return EXIT_TRANSPORT_FAILURE
    return EXIT_GENERIC


def reason(exc: BaseException) -> str:
    """What went wrong, in a few words (no traceback, no secret)."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror or exc}"
        return os_reason(exc)
    if isinstance(exc, IscsiError):          # ours: the message says it; no class names
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def quiet_error(exc: BaseException, *, doing: str | None = None, who: str | None = None,
                detail: str | None = None) -> QuietError:
    """``exc`` as one line and its exit code. With ``doing`` ("login to iqn... at
    10.0.0.5:3260", "discovery on portal 10.0.0.5:3260") the line says what failed:
    "<doing> failed: ...", or "<doing> not attempted: ..." for a bad record or option; an
    authentication failure reads "authentication failed for <who>: ..." when ``who`` is given.
    ``detail`` replaces the words taken from ``exc``."""
    found = quiet_error_in(exc)
    if found is not None:
        return found
    leaves = list(leaf_exceptions(exc))
    if len(leaves) == 1:
        exc = leaves[0]
    if detail is not None:
        text = detail
    elif isinstance(exc, IscsiError) and exc.who is not None \
            and (doing is not None or who is not None):
        text = exc.detail        # without the login's name: the line below names it once
    else:
        text = reason(exc)
    if isinstance(exc, AuthenticationError) and who is not None:
        text = f"authentication failed for {who}: {text}"
    elif isinstance(exc, ConfigError) and doing is not None:
        text = f"{doing} not attempted: {text}"
    elif doing is not None:
        text = f"{doing} failed: {text}"
    return QuietError(text, exit_code(exc))


def quiet_error_in(exc: BaseException) -> QuietError | None:
    """The QuietError in ``exc`` or inside its exception groups (a nursery wraps what its
    body raises), or None."""
    for leaf in leaf_exceptions(exc):
        if isinstance(leaf, QuietError):
            return leaf
    return None


# What an errno from a file of the mount (a raw file's setxattr, say) means for the exit code.
# The mount's FUSE layer chose the errno (fs/errno_map.py); this turns it back into iscsiadm's
# codes.
_FILE_ERRNO_EXIT = {
    errno.EOPNOTSUPP: EXIT_NOT_SUPPORTED,
    errno.EINVAL: EXIT_INVALID_ARGUMENT,
    errno.ENOSPC: EXIT_INVALID_ARGUMENT,
    errno.ENOENT: EXIT_INVALID_ARGUMENT,
    errno.ENOTDIR: EXIT_INVALID_ARGUMENT,
    errno.EISDIR: EXIT_INVALID_ARGUMENT,
    errno.ENXIO: EXIT_INVALID_ARGUMENT,
    errno.EROFS: EXIT_ACCESS,
    errno.EACCES: EXIT_ACCESS,
    errno.EPERM: EXIT_ACCESS,
    errno.ETIMEDOUT: EXIT_TRANSPORT_FAILURE,
    errno.ENOTCONN: EXIT_TRANSPORT_FAILURE,      # the mount's daemon is gone
    errno.ECONNREFUSED: EXIT_TRANSPORT_FAILURE,
    errno.EHOSTUNREACH: EXIT_TRANSPORT_FAILURE,
}


def file_error(exc: OSError, path: str, *, doing: str,
               meaning: dict[int, str] | None = None) -> QuietError:
    """An error on a file of the mount as one line and an exit code: ``<doing> <path>:
    <meaning>``, where ``meaning`` says what an errno means for this operation (else the
    system's words for it)."""
    code = exc.errno or 0
    words = (meaning or {}).get(code) or (os.strerror(code) if code else str(exc))
    shown = path if path.isprintable() else printable(path)
    return QuietError(f"{doing} {shown}: {words}", _FILE_ERRNO_EXIT.get(code, EXIT_GENERIC))
