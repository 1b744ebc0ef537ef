"""Small helpers shared by the tests: bounded polling, and the ``iscsifs`` command run in this
process (fast, and the log check sees what it logs)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass (a bounded wait, not a
    sleep used as synchronisation); returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def run_iscsifs(config_dir: Path, *args: str,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """``iscsifs --config-dir CONFIG_DIR ARGS...`` run in this process through the console
    script's ``main``: its exit code, stdout and stderr. ``env`` is set while it runs. The
    logging it configures is undone afterwards."""
    from iscsifs.cli.main import main
    argv = ["--config-dir", str(config_dir), *args]
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:          # argparse: --help, usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        root.handlers[:] = handlers
        root.setLevel(level)
    return subprocess.CompletedProcess(["iscsifs", *argv], code, out.getvalue(), err.getvalue())


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def one_error_line(r: subprocess.CompletedProcess, code: int) -> str:
    """The one ``iscsifs: ...`` line a failed command prints, after checking its exit code."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("iscsifs: ")
    assert "Traceback" not in r.stderr
    return lines[0]


def show_node(config_dir: Path, target: str, portal: str = "127.0.0.1") -> dict[str, str]:
    """``iscsifs node -T TARGET -p PORTAL -o show`` as a dict of keys."""
    r = ok(run_iscsifs(config_dir, "node", "-T", target, "-p", portal, "-o", "show"))
    return dict(line.split(" = ", 1) for line in r.stdout.splitlines())


# Warnings the session (and its error handler) log on purpose, for the log check
# (``@CONN_FAILED`` on a test that drops a connection, ...).
def _session_log(pattern: str):
    return pytest.mark.expect_log(pattern, logger="iscsifs.net")


CONN_FAILED = _session_log('connection to .* failed: ')
REPLACEMENT_EXPIRED = _session_log('replacement timeout .* expired')
READ_TIMED_OUT = _session_log('command 0x28 to LUN 1 timed out after .*; aborting it')
TMF_UNANSWERED = _session_log(
    '(ABORT TASK|LOGICAL UNIT RESET|TARGET WARM RESET) for command .* got no answer')
RECOVERY_FAILED = _session_log('error recovery for command .* failed; dropping the connection')
NO_CMDSN = _session_log('got no CmdSN within .* command window closed')
ABORT_REFUSED = _session_log('ABORT TASK for command .* failed \\(response')
ENDED_BY_LU_RESET = _session_log('ended by LOGICAL UNIT RESET')
