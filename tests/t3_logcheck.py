"""The log check of tests/logcheck.py, run on a throwaway test file (pytester, in process)."""

from __future__ import annotations

CHILD = """
import logging
import pytest

log = logging.getLogger("iscsifs.example")

def test_info_is_fine():
    log.info("routine")

def test_undeclared_warning_fails():
    log.warning("a swallowed error")

@pytest.mark.expect_log("swallowed")
def test_declared_by_mark():
    log.warning("a swallowed error")

def test_declared_by_fixture(expect_log):
    expect_log("boom", logger="iscsifs")
    log.error("boom")

def test_other_logger_does_not_match(expect_log):
    expect_log("boom", logger="somewhere.else")
    log.error("boom")

@pytest.mark.expect_log("never logged")
def test_missing_expected_log_is_an_error():
    pass

@pytest.mark.expect_log("never logged", optional=True)
def test_optional_expectation():
    pass
"""


def test_log_check(pytester, expect_log):
    expect_log("", logger="iscsifs.example")    # the child runs in this process: same loggers
    pytester.makeconftest('pytest_plugins = ("logcheck",)\n')
    pytester.makepyfile(test_child=CHILD)
    result = pytester.runpytest_inprocess("-q")
    result.assert_outcomes(passed=5, failed=2, errors=1)
    result.stdout.fnmatch_lines_random([
        "log check: unexpected WARNING from iscsifs.example: a swallowed error",
        "log check: unexpected ERROR from iscsifs.example: boom",
        "log check (teardown): expected log 'never logged' never came",
        "FAILED test_child.py::test_undeclared_warning_fails*",
        "FAILED test_child.py::test_other_logger_does_not_match*",
        "ERROR test_child.py::test_missing_expected_log_is_an_error*",
    ])
