"""Small trio helpers shared by the net layer."""

from __future__ import annotations

import contextlib
import os


def _single(group: BaseExceptionGroup) -> BaseException | None:
    """The one real exception inside nested groups, or None if there are several."""
    leaves = []

    def walk(exc):
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


@contextlib.contextmanager
def unwrap_group():
    """Re-raise a lone exception out of a trio ExceptionGroup as itself.

    A nursery whose body raises wraps the error in an ExceptionGroup (strict groups); callers
    of the net layer want the LoginError or ConnectionLost, not a group of one.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is None:
            raise
        raise single from None


def os_reason(exc: BaseException) -> str:
    """The most useful words of a (possibly chained) connect error: 'Connection refused'."""
    seen, visited = exc, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, BaseExceptionGroup):
            seen = _single(seen) or seen.exceptions[0]
            continue
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return str(exc)
