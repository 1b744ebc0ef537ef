"""The log check (after s3ql's ``pytest_checklogs``): a test fails when something logs a
WARNING or worse that the test did not declare, so a swallowed error can't hide behind a green
run.

Declare what a test expects, by a pattern searched in the message (and optionally a logger
name, which also covers its children):

    def test_x(expect_log):
        expect_log("discovery at .* failed")                 # must be logged at least once
        expect_log("unknown key", logger="iscsifs.config", optional=True)   # may be logged

    @pytest.mark.expect_log("dropping", logger="iscsifs.core.discovery")
    def test_y(): ...

Records are collected from the setup, call and teardown of each test (a handler on the root
logger). Only this process is watched: what a mount daemon or a CLI subprocess logs is not.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pytest


@dataclass
class Expected:
    pattern: re.Pattern[str]
    logger: str | None = None
    optional: bool = False
    seen: int = 0

    def matches(self, record: logging.LogRecord) -> bool:
        if self.logger is not None and record.name != self.logger \
                and not record.name.startswith(self.logger + "."):
            return False
        return self.pattern.search(record.getMessage()) is not None

    def __str__(self) -> str:
        where = f" from {self.logger}" if self.logger else ""
        return f"{self.pattern.pattern!r}{where}"


class LogCheck(logging.Handler):
    """Collects every WARNING or worse that no expectation matches."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.expected: list[Expected] = []
        self.unexpected: list[logging.LogRecord] = []
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        for exp in self.expected:
            if exp.matches(record):
                exp.seen += 1
                return
        self.unexpected.append(record)

    def expect(self, pattern: str, *, logger: str | None = None,
               optional: bool = False) -> None:
        self.expected.append(Expected(re.compile(pattern), logger, optional))

    def problems(self, *, final: bool) -> list[str]:
        """Unexpected records so far (each reported once); with ``final`` also the
        expectations that never matched."""
        found = [f"unexpected {r.levelname} from {r.name}: {r.getMessage()}"
                 for r in self.unexpected]
        self.unexpected.clear()
        if final:
            found += [f"expected log {e} never came" for e in self.expected
                      if not e.optional and not e.seen]
        return found


KEY = pytest.StashKey[LogCheck]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "expect_log(pattern, logger=None, optional=False): a WARNING or worse "
        "this test is allowed (and, unless optional, required) to log")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    check = LogCheck()
    for mark in item.iter_markers("expect_log"):
        check.expect(*mark.args, **mark.kwargs)
    item.stash[KEY] = check
    logging.getLogger().addHandler(check)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    check = item.stash[KEY]
    try:
        result = yield
    except BaseException:
        check.failed = True                 # a test that failed already says why
        raise
    problems = check.problems(final=False)
    if problems:
        check.failed = True
        pytest.fail("log check: " + "; ".join(problems), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    check = item.stash.get(KEY, None)
    if check is not None:
        logging.getLogger().removeHandler(check)
        if check.failed:
            return result
        problems = check.problems(final=True)
        if problems:
            pytest.fail("log check (teardown): " + "; ".join(problems), pytrace=False)
    return result


@pytest.fixture
def expect_log(request):
    """``expect_log(pattern, logger=None, optional=False)``: declare a WARNING or worse this
    test logs on purpose (see tests/logcheck.py)."""
    return request.node.stash[KEY].expect
