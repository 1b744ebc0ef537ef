"""The one place where exceptions become errno values for FUSE.

Owns: the mapping exception -> errno (``errno_for``), ``fail`` (a handler's own refusal), and
the ``fuse_errors`` decorator every FUSE handler wears so that nothing but a
``pyfuse3.FUSEError`` ever leaves a handler (pyfuse3 treats any other exception as fatal).

Must not know: how the errors arise (sessions, PDUs, CDBs). It only reads the attributes the
contracts give the exception types (``ScsiError.sense.key/asc/ascq``, ``ScsiError.status``,
``LoginError.status_class/status_detail``, ``ConnectionLost.errno``).

"""

from __future__ import annotations

import errno
import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3
import trio

from iscsifs.errors import (AuthenticationError, CommandTimeout, ConfigError, ConnectionLost,
                            LoggedOut, LoginError, NoSpace, NoSuchDevice, NotSupported,
                            RemoteProtocolError, SessionFailed, causes, leaf_exceptions)
from iscsifs.scsi.sense import ScsiError, ScsiStatus, SenseKey

log = logging.getLogger(__name__)

# Socket errors that say "the portal cannot be reached": passed through as they are.
_NETWORK_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT,
    errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTDOWN, errno.ENETDOWN,
})


def _scsi_errno(exc: ScsiError) -> tuple[int, int]:
    """(errno, log level) for a ScsiError, by sense key and ASC/ASCQ."""
    if exc.status == ScsiStatus.RESERVATION_CONFLICT:
        # Linux's sd reports a reservation conflict as EBADE (BLK_STS_RESV_CONFLICT); another
        # initiator holds the LUN, which is how fencing works: not a warning
        return errno.EBADE, logging.INFO
    sense = exc.sense
    if sense is None:
        return errno.EIO, logging.WARNING
    if sense.key == SenseKey.DATA_PROTECT:
        return errno.EROFS, logging.INFO
    if sense.key == SenseKey.ILLEGAL_REQUEST:
        if sense.asc_ascq == (0x21, 0x00):       # LOGICAL BLOCK ADDRESS OUT OF RANGE
            return errno.ENOSPC, logging.INFO
        if sense.asc_ascq == (0x25, 0x00):       # LOGICAL UNIT NOT SUPPORTED (LUN went away)
            return errno.ENXIO, logging.WARNING
        return errno.EINVAL, logging.WARNING
    if sense.key == SenseKey.VOLUME_OVERFLOW:
        return errno.ENOSPC, logging.INFO
    # NOT READY, MEDIUM ERROR, HARDWARE ERROR, UNIT ATTENTION (the layer below already
    # retried), ABORTED COMMAND, MISCOMPARE, anything else: an I/O error, logged with the sense.
    return errno.EIO, logging.WARNING


def _network_errno(exc: BaseException) -> int | None:
    """The socket errno behind exc (itself, its group or its cause chain: ``errors.causes``),
    if it is a network one; ETIMEDOUT for a timeout."""
    for cur in causes(exc):
        if isinstance(cur, OSError) and cur.errno in _NETWORK_ERRNOS:
            return cur.errno
        if isinstance(cur, trio.TooSlowError):
            return errno.ETIMEDOUT
    return None


def _login_errno(exc: LoginError) -> int:
    if isinstance(exc, AuthenticationError):
        return errno.EACCES
    if exc.status_class == 2:
        if exc.status_detail in (0x01, 0x02):    # authentication / authorization failure
            return errno.EACCES
        if exc.status_detail in (0x03, 0x04):    # target not found / target removed
            return errno.ENOENT
        return errno.EIO
    if exc.status_class == 1:                    # a redirect we could not follow
        return errno.EHOSTUNREACH
    net = _network_errno(exc)
    return errno.EIO if net is None else net


def classify(exc: BaseException) -> tuple[int, int]:
    """(errno, log level) for any exception. Level ERROR means "log with traceback"."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno, logging.DEBUG
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(leaf_exceptions(exc))
        if len(leaves) == 1:
            return classify(leaves[0])
        # several failures at once: report the first that is not a plain EIO
        results = [classify(e) for e in leaves]
        for result in results:
            if result[0] != errno.EIO:
                return result
        return results[0] if results else (errno.EIO, logging.ERROR)
    if isinstance(exc, ScsiError):
        return _scsi_errno(exc)
    if isinstance(exc, NoSpace):
        return errno.ENOSPC, logging.INFO
    if isinstance(exc, NotSupported):
        return errno.EOPNOTSUPP, logging.INFO
    if isinstance(exc, NoSuchDevice):
        # the change was logged once, as a WARNING, when it was found
        return errno.ENXIO, logging.INFO
    if isinstance(exc, LoginError):          # includes AuthenticationError
        return _login_errno(exc), logging.WARNING
    if isinstance(exc, CommandTimeout):
        # a command that timed out (aborted, reset, or withdrawn from a window that never
        # opened) is an I/O error to the reader or writer, as Linux's SCSI layer fails it
        # (DID_TIME_OUT -> BLK_STS_IOERR); ETIMEDOUT is not an errno read(2) or write(2) has
        return errno.EIO, logging.WARNING
    if isinstance(exc, trio.TooSlowError):
        return errno.ETIMEDOUT, logging.WARNING
    if isinstance(exc, LoggedOut):           # a listing that raced rmdir or unmount
        return errno.ENOENT, logging.INFO
    if isinstance(exc, ConnectionLost) and exc.errno in _NETWORK_ERRNOS:
        return exc.errno, logging.WARNING     # could not connect: refused, unreachable, ...
    if isinstance(exc, (ConnectionLost, SessionFailed, RemoteProtocolError)):
        return errno.EIO, logging.WARNING
    if isinstance(exc, ConfigError):
        return errno.EINVAL, logging.WARNING
    if isinstance(exc, OSError):
        net = _network_errno(exc)
        if net is not None:
            return net, logging.WARNING
    return errno.EIO, logging.ERROR


def fail(code: int) -> pyfuse3.FUSEError:
    """The error a handler raises to answer ``code`` (an errno) itself: a request it refuses
    (EPERM, EINVAL, ENOENT, ...), as opposed to an exception from below (``errno_for``)."""
    return pyfuse3.FUSEError(code)


def errno_for(exc: BaseException, op: str = "operation") -> int:
    """Map exc to an errno and log it once, at a level that fits the cause."""
    code, level = classify(exc)
    if isinstance(exc, pyfuse3.FUSEError):
        return code
    name = errno.errorcode.get(code, str(code))
    if level >= logging.ERROR:
        log.error("%s: unexpected %s, returning %s", op, type(exc).__name__, name,
                  exc_info=exc)
        return code
    # str(ScsiError) names the sense: "NOT READY: Logical unit not ready, ... (04/02)"
    log.log(level, "%s: %s: %s -> %s", op, type(exc).__name__, exc, name)
    return code


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def fuse_errors(fn: F) -> F:
    """Decorator for async FUSE handlers: any Exception becomes ``pyfuse3.FUSEError``.

    BaseExceptions that are not Exceptions (trio.Cancelled, KeyboardInterrupt) pass through.
    """
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise pyfuse3.FUSEError(errno_for(exc, op)) from None

    return wrapper  # type: ignore[return-value]
