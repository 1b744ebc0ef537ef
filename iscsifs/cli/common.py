"""What every command needs: the config dir, the initiator name, logging, and the one map from
an error to a one-line message and an exit code.

Exit codes are iscsiadm's (open-iscsi's include/iscsi_err.h), so scripts written for iscsiadm
keep working:

    0   ok
    1   anything else (ISCSI_ERR)
    4   cannot connect: refused, unreachable, timed out, connection lost (ISCSI_ERR_TRANS)
    7   invalid argument, option, value or record (ISCSI_ERR_INVAL)
    19  the target refused the login, or broke the protocol (ISCSI_ERR_FATAL_LOGIN)
    21  no records found (ISCSI_ERR_NO_OBJS_FOUND)
    24  authentication failed (ISCSI_ERR_LOGIN_AUTH_FAILED)

Errors reach the user as one line (``iscsifs: ...``), never as a traceback, and never with a
secret in it.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

import trio

from iscsifs.config.initiatorname import ensure_initiator_name
from iscsifs.config.locations import default_config_dir
from iscsifs.core.discovery import Portal, iscsi_name_problem, parse_portal, printable
from iscsifs.errors import (EXIT_GENERIC, EXIT_INVALID_ARGUMENT, EXIT_LOGIN_FAILED,
                            EXIT_TRANSPORT_FAILURE, AuthenticationError, ConfigError,
                            ConnectionLost, IscsiError, LoginError, QuietError, RemoteProtocolError,
                            leaf_exceptions, os_reason)

__all__ = ["config_dir", "exit_code", "initiator_name", "portal_arg", "quiet_error",
           "quiet_error_in", "setup_logging"]


# ---------------------------------------------------------------------- config dir, names
def config_dir(given: str | None) -> str:
    """The config dir a command uses: the one given, else ``default_config_dir()``."""
    return given if given else default_config_dir()


def portal_arg(text: str) -> Portal:
    """A portal typed by the user (``host``, ``host:port``, ``[v6]:port``); exit 7 if bad."""
    try:
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


# ---------------------------------------------------------------------- logging
_OURS = "_iscsifs_handler"     # marks the handler setup_logging installed


def setup_logging(*, debug: bool = False, verbose: bool = False, logfile: str | None = None,
                  syslog: bool = False, detailed: bool = False) -> None:
    """Send log records to stderr (default), a file, or syslog (``/dev/log``; dropped when
    it does not exist). Level: DEBUG with ``debug`` (one line per PDU), INFO with ``verbose``,
    WARNING otherwise. ``detailed`` (or ``debug``) puts time, logger and level on each line;
    otherwise a line is ``iscsifs: message``. Calling it again replaces what it set up."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    detailed = detailed or debug
    fmt = "%(asctime)s.%(msecs)03d %(name)s %(levelname)s: %(message)s"
    handler: logging.Handler
    if logfile:
        handler = logging.FileHandler(logfile)
        handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    elif syslog:
        if os.path.exists("/dev/log"):
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter(f"iscsifs[{os.getpid()}]: %(name)s "
                                                   "%(levelname)s: %(message)s"))
        else:
            handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S") if detailed
                             else logging.Formatter("iscsifs: %(message)s"))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pyfuse3 logs every request at DEBUG; keep it to INFO unless asked very loudly
    logging.getLogger("pyfuse3").setLevel(max(level, logging.INFO))


# ---------------------------------------------------------------------- errors
def exit_code(exc: BaseException) -> int:
    """iscsiadm's exit code for an error (the table in the module docstring)."""
    if isinstance(exc, QuietError):
        return exc.exit_code
    if isinstance(exc, LoginError):              # AuthenticationError: 24, else 19
        return exc.exit_code
    if isinstance(exc, RemoteProtocolError):
        return EXIT_LOGIN_FAILED
    if isinstance(exc, ConfigError):
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
