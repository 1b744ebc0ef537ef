"""The one place where exceptions become errno values for FUSE.

Owns: the mapping exception -> errno (``errno_for``), and the ``fuse_errors`` decorator /
``fuse_errors_context`` context manager every FUSE handler uses so that nothing but a
``pyfuse3.FUSEError`` ever leaves a handler (pyfuse3 treats any other exception as fatal).

Must not know: how the errors arise (sessions, PDUs, CDBs). It only reads the attributes the
contracts give the exception types (``ScsiError.sense.key/asc/ascq``, ``ScsiError.status``,
``LoginError.status_class/status_detail``).

The exception classes of other modules are looked up by class name along the MRO, so that this
module imports nothing from ``scsi/`` or ``net/`` and keeps working while they change.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import pyfuse3
import trio

log = logging.getLogger(__name__)

# SPC-4 sense keys (kept here as plain numbers: scsi.sense.SenseKey is an IntEnum with the same
# values, and ``int()`` of either works).
NO_SENSE = 0x0
RECOVERED_ERROR = 0x1
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
DATA_PROTECT = 0x7
BLANK_CHECK = 0x8
ABORTED_COMMAND = 0xB
VOLUME_OVERFLOW = 0xD
MISCOMPARE = 0xE

_SENSE_KEY_NAMES = {
    0x0: "NO SENSE", 0x1: "RECOVERED ERROR", 0x2: "NOT READY", 0x3: "MEDIUM ERROR",
    0x4: "HARDWARE ERROR", 0x5: "ILLEGAL REQUEST", 0x6: "UNIT ATTENTION", 0x7: "DATA PROTECT",
    0x8: "BLANK CHECK", 0x9: "VENDOR SPECIFIC", 0xA: "COPY ABORTED", 0xB: "ABORTED COMMAND",
    0xD: "VOLUME OVERFLOW", 0xE: "MISCOMPARE", 0xF: "COMPLETED",
}

# SAM-5 status codes that can reach us without sense data
STATUS_RESERVATION_CONFLICT = 0x18

# Socket errors that say "the portal cannot be reached": passed through as they are.
_NETWORK_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT,
    errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTDOWN, errno.ENETDOWN,
})


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def sense_text(sense: Any) -> str:
    """'NOT READY, ASC/ASCQ 04/02 (...)' for a Sense object (duck-typed)."""
    key = _int(getattr(sense, "key", None))
    asc = _int(getattr(sense, "asc", None))
    ascq = _int(getattr(sense, "ascq", None))
    text = _SENSE_KEY_NAMES.get(key, f"sense key {key:#x}") if key is not None else "no sense"
    if asc is not None and ascq is not None:
        text += f", ASC/ASCQ {asc:02x}/{ascq:02x}"
        name = _asc_name(asc, ascq)
        if name:
            text += f" ({name})"
    return text


def _asc_name(asc: int, ascq: int) -> str | None:
    try:
        from iscsifs.scsi.sense import asc_name  # written by the SCSI engineer
    except ImportError:
        return None
    try:
        return asc_name(asc, ascq)
    except Exception:  # a naming helper must never turn an I/O error into a crash
        return None


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _scsi_errno(exc: BaseException) -> tuple[int, int]:
    """(errno, log level) for a ScsiError."""
    sense = getattr(exc, "sense", None)
    status = _int(getattr(exc, "status", None))
    if sense is None:
        if status == STATUS_RESERVATION_CONFLICT:
            # Linux's sd reports a reservation conflict as EBADE (BLK_STS_RESV_CONFLICT)
            return errno.EBADE, logging.WARNING
        return errno.EIO, logging.WARNING
    key = _int(getattr(sense, "key", None))
    asc = _int(getattr(sense, "asc", None))
    ascq = _int(getattr(sense, "ascq", None))
    if key == DATA_PROTECT:
        return errno.EROFS, logging.INFO
    if key == ILLEGAL_REQUEST:
        if (asc, ascq) == (0x21, 0x00):          # LOGICAL BLOCK ADDRESS OUT OF RANGE
            return errno.ENOSPC, logging.INFO
        if (asc, ascq) == (0x25, 0x00):          # LOGICAL UNIT NOT SUPPORTED (LUN went away)
            return errno.ENXIO, logging.WARNING
        return errno.EINVAL, logging.WARNING
    if key == VOLUME_OVERFLOW:
        return errno.ENOSPC, logging.INFO
    # NOT READY, MEDIUM ERROR, HARDWARE ERROR, UNIT ATTENTION (the layer below already
    # retried), ABORTED COMMAND, MISCOMPARE, anything else: an I/O error, logged with the sense.
    return errno.EIO, logging.WARNING


def _network_errno(exc: BaseException) -> int | None:
    """The socket errno behind exc (itself or its cause/context chain), if it is a network one."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _NETWORK_ERRNOS:
            return cur.errno
        if isinstance(cur, trio.TooSlowError):
            return errno.ETIMEDOUT
        cur = cur.__cause__ or cur.__context__
    return None


def _login_errno(exc: BaseException, names: set[str]) -> int:
    if "AuthenticationError" in names:
        return errno.EACCES
    status_class = _int(getattr(exc, "status_class", None))
    detail = _int(getattr(exc, "status_detail", None))
    if status_class == 2:
        if detail in (0x01, 0x02):        # authentication / authorization failure
            return errno.EACCES
        if detail in (0x03, 0x04):        # target not found / target removed
            return errno.ENOENT
        return errno.EIO
    if status_class == 1:                 # a redirect we could not follow
        return errno.EHOSTUNREACH
    net = _network_errno(exc)
    if net is not None:
        return net
    return errno.EIO


def classify(exc: BaseException) -> tuple[int, int]:
    """(errno, log level) for any exception. Level ERROR means "log with traceback"."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno, logging.DEBUG
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        if len(leaves) == 1:
            return classify(leaves[0])
        # several failures at once: report the first that is not a plain EIO
        results = [classify(e) for e in leaves]
        for result in results:
            if result[0] != errno.EIO:
                return result
        return results[0] if results else (errno.EIO, logging.ERROR)
    names = _class_names(exc)
    if "ScsiError" in names:
        return _scsi_errno(exc)
    if "NoSpace" in names:
        return errno.ENOSPC, logging.INFO
    if "LoginError" in names:          # includes AuthenticationError
        return _login_errno(exc, names), logging.WARNING
    if "CommandTimeout" in names or isinstance(exc, trio.TooSlowError):
        return errno.ETIMEDOUT, logging.WARNING
    if "ConnectionLost" in names or "SessionFailed" in names:
        return errno.EIO, logging.WARNING
    if "RemoteProtocolError" in names:
        return errno.EIO, logging.WARNING
    if "ConfigError" in names:
        return errno.EINVAL, logging.WARNING
    if isinstance(exc, OSError):
        net = _network_errno(exc)
        if net is not None:
            return net, logging.WARNING
    return errno.EIO, logging.ERROR


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


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
    sense = getattr(exc, "sense", None)
    detail = str(exc)
    if sense is not None and not detail:
        detail = sense_text(sense)
    elif sense is not None and "ScsiError" not in _class_names(exc):
        detail = f"{detail} [{sense_text(sense)}]"
    log.log(level, "%s: %s: %s -> %s", op, type(exc).__name__, detail, name)
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


@contextlib.contextmanager
def fuse_errors_context(op: str) -> Iterator[None]:
    """``with fuse_errors_context("read"): ...`` — the same translation for a code block."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except Exception as exc:
        raise pyfuse3.FUSEError(errno_for(exc, op)) from None
