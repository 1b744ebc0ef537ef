"""Small helpers shared by the mount tests."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass (a bounded wait, not a
    sleep used as synchronisation); returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
