"""Small trio helpers shared by the net layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import single_exception


@contextlib.contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise a lone exception out of a trio ExceptionGroup as itself.

    A nursery whose body raises wraps the error in an ExceptionGroup (strict groups); callers
    of the net layer want the LoginError or ConnectionLost, not a group of one.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        single = single_exception(group)
        if single is None:
            raise
        raise single from None
