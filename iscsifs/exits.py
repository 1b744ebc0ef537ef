"""How a failed command ends: one line (``iscsifs: ...`` / ``mount.iscsifs: ...``), never a
traceback and never a secret, and an exit code. The one map from an error to both.

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

Owns: ``quiet_error`` / ``exit_code`` (an error -> its line and code), ``file_error`` (an errno
from a file of the mount -> the same), and ``portal_arg`` (a portal typed by the user, or exit
7). Both entry points (``cli``, ``mount``) use it; they import nothing of each other.
"""

from __future__ import annotations

import errno
import os

import trio

from iscsifs.core.names import Portal, parse_portal, printable
from iscsifs.errors import (EXIT_ACCESS, EXIT_GENERIC, EXIT_INVALID_ARGUMENT, EXIT_LOGIN_FAILED,
                            EXIT_NOT_SUPPORTED, EXIT_TRANSPORT_FAILURE, AuthenticationError,
                            ConfigError, ConnectionLost, IscsiError, IsnsError, LoginError,
                            QuietError, RemoteProtocolError, SourceAddressError,
                            leaf_exceptions, os_reason)

__all__ = ["exit_code", "file_error", "portal_arg", "quiet_error", "quiet_error_in", "reason"]


def portal_arg(text: str, *, default_port: int | None = None) -> Portal:
    """A portal typed by the user (``host``, ``host:port``, ``[v6]:port``); exit 7 if bad.
    ``default_port``: when none is given (3260 unless said, 3205 for an iSNS server)."""
    try:
        if default_port is not None:
            return parse_portal(text, default_port=default_port)
        return parse_portal(text)
    except ValueError as exc:
        raise QuietError(f"bad portal {printable(text)}: {exc}", EXIT_INVALID_ARGUMENT) from None


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
    errno.EBADE: EXIT_ACCESS,                   # RESERVATION CONFLICT (another I_T nexus holds it)
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
