"""``mount.iscsifs``: parse the command line, check the mount point, then run the mount in
the foreground (``-f``, ``-d``) or as a daemon.

The daemon reports through a pipe: the parent waits until the child says ``OK`` (mounted) or
``ERR <code> <message>``, prints that one line and exits with that code, so ``mount`` and
fstab's ``nofail`` see the real outcome; a ``WARN <message>`` before it (a portal whose
discovery failed) is printed as ``mount.iscsifs: warning: ...``. The daemon logs to
``logfile=``, by default to ``config.locations.default_log_file(MOUNTPOINT)``
(/var/log/iscsifs/<mnt-escaped>.log as root): one INFO line per login, logout, relogin and
path change, warnings and errors (also to syslog when /dev/log exists). In the foreground it
logs to stderr unless ``logfile=`` is given.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys

import trio

from iscsifs.config.locations import default_log_file
from iscsifs.errors import (EXIT_GENERIC, EXIT_INVALID_ARGUMENT, IscsiError, QuietError,
                            single_exception)
from iscsifs.exits import quiet_error, quiet_error_in
from iscsifs.logs import SYSLOG, open_log_file, setup_logging
from iscsifs.mount.lifetime import run_mount
from iscsifs.mount.malloc import keep_buffers
from iscsifs.mount.options import PROG, MountOptions, check_mountpoint, parse_args

log = logging.getLogger(__name__)


class Reporter:
    """The daemon's side of the startup pipe: ``WARN <message>`` lines for the user, then
    ``OK`` or ``ERR <code> <message>``, then closed."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def _send(self, text: str, *, last: bool = True) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass
        if not last:
            return
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def warning(self, message: str) -> None:
        self._send(f"WARN {' '.join(message.split())}\n", last=False)

    def ready(self) -> None:
        self._send("OK\n")

    def error(self, code: int, message: str) -> None:
        self._send(f"ERR {code} {' '.join(message.split())}\n")


def _print_error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _expected(exc: BaseException) -> bool:
    """A failure with a line of its own (not a bug): a QuietError, an iscsifs error, a network
    error or a timeout, alone or as the one exception in a group."""
    leaf = single_exception(exc)
    return quiet_error_in(exc) is not None or isinstance(
        leaf, (IscsiError, OSError, trio.TooSlowError))


def _failure(exc: BaseException) -> QuietError:
    """What a mount that raised tells the user: its QuietError, or an internal error (logged
    with its traceback)."""
    quiet = quiet_error_in(exc)
    if quiet is not None:
        return quiet
    if _expected(exc):
        return quiet_error(exc)             # one of ours, or the network's: its line and code
    log.error("internal error", exc_info=exc)
    return QuietError(f"internal error: {type(exc).__name__}: {exc}", EXIT_GENERIC)


def resolve_logfile(opts: MountOptions) -> None:
    """Settle ``opts.logfile`` before anything starts: the file given or the default one,
    created now (mode 0600) so a problem is reported on the terminal. A default file that
    can't be created falls back to syslog with a warning; a given one is an error (exit 7),
    and so is a given one whose directory does not exist (nothing is created then).
    In the foreground without ``logfile=`` it stays None: stderr."""
    if opts.logfile == SYSLOG or (opts.foreground and opts.logfile is None):
        return
    path = opts.logfile or default_log_file(opts.mountpoint)
    try:
        # the default directory is ours to make; a file the user names must be where they say
        open_log_file(path, make_dir=opts.logfile is None)
    except OSError as exc:
        if opts.logfile is not None:
            why = exc.strerror or str(exc)
            if exc.filename not in (None, path):          # its directory
                why = f"{exc.filename} " + ("is not a directory"
                                            if isinstance(exc, NotADirectoryError)
                                            else "does not exist")
            raise QuietError(f"cannot open log file {path}: {why}",
                             EXIT_INVALID_ARGUMENT) from None
        _print_error(f"warning: cannot log to {path} ({exc.strerror or exc}); "
                     f"logging to syslog")
        path = SYSLOG
    opts.logfile = path


def run_foreground(opts: MountOptions) -> int:
    setup_logging(debug=opts.debug, verbose=opts.verbose, logfile=opts.logfile, detailed=True)
    keep_buffers()
    try:
        trio.run(run_mount, opts, lambda: None)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:   # noqa: BLE001 - the last resort: one line + log
        err = _failure(exc)
        _print_error(str(err))
        return err.exit_code
    return 0


def daemonize(opts: MountOptions) -> int:
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:                                               # parent: wait for "mounted"
        os.close(write_fd)
        chunks = []
        while True:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_fd)
        lines = b"".join(chunks).decode("utf-8", "replace").strip().splitlines()
        while lines and lines[0].startswith("WARN "):
            _print_error("warning: " + lines.pop(0)[5:])
        text = lines[0] if lines else ""
        if text == "OK":
            return 0
        if text.startswith("ERR "):
            _, code, message = (text.split(" ", 2) + [""])[:3]
            _print_error(message)
            return int(code) if code.isdigit() else EXIT_GENERIC
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        _print_error("the mount daemon exited before the file system was ready")
        return EXIT_GENERIC

    # child: the daemon
    code = 0
    try:
        os.close(read_fd)
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        out = devnull
        if opts.logfile and opts.logfile != SYSLOG:
            with contextlib.suppress(OSError):
                out = os.open(opts.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)          # libfuse writes its own messages to fd 2
        setup_logging(debug=opts.debug, verbose=opts.verbose, logfile=opts.logfile,
                      syslog=True, detailed=True)
        reporter = Reporter(write_fd)
        keep_buffers()
        try:
            trio.run(functools.partial(run_mount, warn=reporter.warning), opts,
                     reporter.ready)
        except BaseException as exc:  # noqa: BLE001
            err = _failure(exc)
            if _expected(exc):               # an internal error was logged with its traceback
                log.error("%s", err)
            reporter.error(err.exit_code, str(err))
            code = err.exit_code
        else:
            reporter.error(EXIT_GENERIC, "the file system ended before it was ready")
        logging.shutdown()
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = parse_args(args)
        check_mountpoint(opts.mountpoint)
        resolve_logfile(opts)
    except QuietError as exc:
        if exc.exit_code == 0:
            print(str(exc))
        else:
            _print_error(str(exc))
        return exc.exit_code
    if not (opts.foreground and opts.logfile is None):
        # what the command line itself warns about (-s: an unknown option) goes to the
        # terminal now; the log gets it too, but a daemon's log is not the terminal
        for warning in opts.warnings:
            _print_error(f"warning: {warning}")
    if opts.foreground:
        return run_foreground(opts)
    return daemonize(opts)


if __name__ == "__main__":
    sys.exit(main())
