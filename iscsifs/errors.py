"""The exception hierarchy of iscsifs, and the one walk over exception groups.

Owns: every error type the layers raise, iscsiadm's exit codes, and the walks inside what trio
nurseries raise: ``leaf_exceptions`` (exception groups), ``causes`` (groups and cause chains;
``os_errno`` / ``os_reason`` read a connect error through it).
Knows nothing of FUSE (``iscsifs.fs.errno_map`` turns errors into errno) or of the command line
(``iscsifs.exits`` turns them into a message and an exit code), and does no I/O. Messages
never contain secrets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

# iscsiadm exit codes that users script against (open-iscsi's include/iscsi_err.h)
EXIT_GENERIC = 1
EXIT_TRANSPORT_FAILURE = 4   # ISCSI_ERR_TRANS: cannot connect
EXIT_INVALID_ARGUMENT = 7    # ISCSI_ERR_INVAL
EXIT_ACCESS = 13             # ISCSI_ERR_ACCESS: permission denied (read-only LUN or mount)
EXIT_LOGIN_FAILED = 19       # ISCSI_ERR_FATAL_LOGIN
EXIT_NO_OBJECTS = 21         # ISCSI_ERR_NO_OBJS_FOUND
EXIT_AUTH_FAILED = 24        # ISCSI_ERR_LOGIN_AUTH_FAILED
EXIT_ISNS_QUERY = 25         # ISCSI_ERR_ISNS_QUERY: the iSNS server refused the query
EXIT_ISNS_REG_FAILED = 26    # ISCSI_ERR_ISNS_REG_FAILED: ... or the registration for it
EXIT_NOT_SUPPORTED = 27      # ISCSI_ERR_OP_NOT_SUPP: operation not supported


class IscsiError(Exception):
    """Base class of every error iscsifs raises on purpose.

    An error that ended a login is ``located`` by the layer that knows which login it was
    (``who``: ``iqn... at 10.0.0.5:3260``); its message is then composed once from ``who`` and
    ``detail`` (the words without the name), so no layer wraps the text of another and a
    caller that names the login itself takes ``detail``."""

    who: str | None = None
    _template = "login to {who} failed: {detail}"

    @property
    def detail(self) -> str:
        """What went wrong, without the name of the login."""
        return super().__str__()

    def located(self, who: str) -> IscsiError:
        """Name the login this error ended (replacing a vaguer name); returns self."""
        self.who = who
        return self

    def __str__(self) -> str:
        if self.who is None:
            return self.detail
        return self._template.format(who=self.who, detail=self.detail)


class LocalProtocolError(IscsiError):
    """We used the protocol machinery wrongly (a bug on our side, or a bad call)."""


class RemoteProtocolError(IscsiError):
    """The target sent something RFC 7143 does not allow."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LoginError(IscsiError):
    """The target refused the login (status class/detail from the Login Response)."""

    exit_code = EXIT_LOGIN_FAILED

    def __init__(self, message: str, status_class: int = 0, status_detail: int = 0,
                 target_address: str | None = None):
        super().__init__(message)
        self.status_class = status_class
        self.status_detail = status_detail
        self.target_address = target_address


class AuthenticationError(LoginError):
    """CHAP failed: the target rejected our credentials, or failed to prove its own."""

    exit_code = EXIT_AUTH_FAILED
    _template = "authentication failed for {who}: {detail}"


class ConfigError(IscsiError):
    """A configuration file, option or record is invalid."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class ConnectionLost(IscsiError):
    """The TCP connection to the target is gone (reset, closed, NOP timeout), or could not be
    made. ``errno`` is the socket's errno when one said why (ECONNREFUSED, EHOSTUNREACH,
    ETIMEDOUT, ...), else None."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class SourceAddressError(ConnectionLost):
    """A connection could not be bound to the configured source address (``source_address=``,
    ``iface.ipaddress``): not an address of this host (EADDRNOTAVAIL), or of another family
    than the portal's. A configuration error for the command line (exit 7, as iscsiadm), but
    a failed connection like any other for a session that logs in again."""


class PathFailed(ConnectionLost):
    """A fail-fast command's connection failed before it was answered (dm-multipath's
    REQ_FAILFAST_TRANSPORT): the session answers it at once instead of holding it for a
    relogin, and never sends it again. The multipath layer issues a new command on another
    path."""


class IdentityUnverified(ConnectionLost):
    """After a relogin, a LUN did not say which logical unit it is: its identity INQUIRY
    (standard, VPD 0x00, 0x80, 0x83) failed (a Reject, a timeout, an error status other than
    "no logical unit here"). That is no evidence either way, so nothing may go to it yet: the
    relogin fails (its connection is dropped) and the session logs in again, with back-off."""


class IsnsError(IscsiError):
    """An iSNS server refused a query or a registration (``status``: its RFC 4171 status
    code, None when it broke the protocol). Exit 25, or 26 for a registration."""

    def __init__(self, message: str, status: int | None = None, *,
                 registration: bool = False):
        super().__init__(message)
        self.status = status
        self.exit_code = EXIT_ISNS_REG_FAILED if registration else EXIT_ISNS_QUERY


class CommandTimeout(IscsiError):
    """A command did not complete in time (and could not be recovered)."""


class SessionFailed(IscsiError):
    """The session could not be re-established within the replacement timeout."""


class LoggedOut(SessionFailed):
    """The target was logged out (rmdir of its directory, unmount) while this waited for its
    session or its LUN list: what was asked for is not there any more."""


class NoSpace(IscsiError):
    """A write starts at or beyond the end of the LUN (or a discard runs past it)."""


class NotSupported(IscsiError):
    """The LUN cannot do what was asked (a discard on a LUN with neither UNMAP nor WRITE SAME
    with UNMAP)."""


class NoSuchDevice(IscsiError):
    """The logical unit an open file was bound to is gone: its LUN number left the target's
    list, or now names another logical unit (other VPD 0x83 / 0x80 identity)."""


class QuietError(IscsiError):
    """A user-facing error: printed as one line, no traceback, with an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_GENERIC):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------- exception groups
def leaf_exceptions(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` itself, or every exception inside it if it is an exception group (nested groups
    flattened, in order). A nursery wraps what its tasks raise in such groups."""
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from leaf_exceptions(sub)
    else:
        yield exc


def single_exception(exc: BaseException) -> BaseException | None:
    """The one exception inside ``exc`` (``exc`` itself if it is no group), or None when a
    group holds several."""
    leaves = list(leaf_exceptions(exc))
    return leaves[0] if len(leaves) == 1 else None


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it holds, depth first: the exceptions of a group (nested groups
    flattened) and the cause chain of each (``__cause__``, else ``__context__`` unless
    suppressed: what a traceback shows). Each exception once. The one walk along causes."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        held: list[BaseException] = []
        if isinstance(cur, BaseExceptionGroup):
            held.extend(cur.exceptions)
        chained = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
        if chained is not None:
            held.append(chained)
        stack.extend(reversed(held))


def _os_error(exc: BaseException) -> OSError | None:
    return next((e for e in causes(exc) if isinstance(e, OSError) and e.errno), None)


def os_errno(exc: BaseException) -> int | None:
    """The errno of a (possibly grouped or chained) connect error: that of the first OS error
    with an errno in ``causes(exc)``; else None. Negative for a name that did not resolve
    (getaddrinfo's EAI_* codes, ``socket.gaierror``)."""
    found = _os_error(exc)
    return found.errno if found is not None else None


def os_reason(exc: BaseException, host: str | None = None) -> str:
    """The most useful words of a (possibly grouped or chained) connect error, such as
    ``Connection refused``, or ``cannot resolve host name HOST (Name or service not known)``
    when ``host`` did not resolve (iscsiadm's words); else ``str(exc)``."""
    found = _os_error(exc)
    if found is None:
        return str(exc) or type(exc).__name__
    if found.errno < 0:        # getaddrinfo's EAI_* codes: the name, not the network
        words = found.strerror or "unknown name"
        return f"cannot resolve host name {host} ({words})" if host else \
            f"cannot resolve host name ({words})"
    return os.strerror(found.errno)
