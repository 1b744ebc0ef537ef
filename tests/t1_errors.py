"""The one walk along what an error holds (``errors.causes``: exception groups and cause
chains) and the connect-error words read through it (``os_errno``, ``os_reason``)."""

from __future__ import annotations

import errno
import socket

from iscsifs.errors import ConnectionLost, causes, leaf_exceptions, os_errno, os_reason


def _chained(outer: BaseException, inner: BaseException, *, cause: bool) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            if cause:
                raise outer from exc
            raise outer
    except BaseException as caught:
        return caught


def test_causes_walks_groups_and_chains_depth_first_each_once():
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    lost = _chained(ConnectionLost("lost"), refused, cause=True)
    timeout = TimeoutError(errno.ETIMEDOUT, "timed out")
    group = ExceptionGroup("nursery", [ExceptionGroup("inner", [lost]), timeout])
    assert list(causes(group)) == [group, group.exceptions[0], lost, refused, timeout]
    assert list(leaf_exceptions(group)) == [lost, timeout]
    assert os_errno(group) == errno.ECONNREFUSED
    # implicit context counts; a suppressed one ("raise ... from None") does not
    assert list(causes(_chained(KeyError("k"), refused, cause=False)))[1] is refused
    hidden = _chained(KeyError("k"), refused, cause=False)
    hidden.__suppress_context__ = True
    assert list(causes(hidden)) == [hidden] and os_errno(hidden) is None
    # a cycle ends
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert list(causes(a)) == [a, b]


def test_os_reason_names_a_host_that_does_not_resolve_as_iscsiadm_does():
    unresolved = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert os_errno(unresolved) == socket.EAI_NONAME < 0
    assert os_reason(unresolved, "san.invalid") == \
        "cannot resolve host name san.invalid (Name or service not known)"
    assert os_reason(ExceptionGroup("g", [unresolved])) == \
        "cannot resolve host name (Name or service not known)"
    assert os_reason(ConnectionRefusedError(errno.ECONNREFUSED, "x"), "h") == "Connection refused"
    assert os_reason(ValueError("plain words")) == "plain words"
