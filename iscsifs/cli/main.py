"""``iscsifs``: the iscsiadm-style operations that don't need a mount.

Owns: the parser (each command family adds its subcommands), running the chosen command, and
printing what went wrong as one line with iscsiadm's exit code (``iscsifs.exits``). A bad
command line is such an error too: ``iscsifs: <what is wrong> (see iscsifs ... --help)`` and
exit 7, as ``mount.iscsifs`` and the man page say, not argparse's usage and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import trio

from iscsifs import __version__
from iscsifs.cli import discard, discover, nodes, pr, session
from iscsifs.config.locations import default_config_dir
from iscsifs.errors import EXIT_INVALID_ARGUMENT, IscsiError, QuietError
from iscsifs.exits import quiet_error
from iscsifs.logs import setup_logging


class Parser(argparse.ArgumentParser):
    """argparse with one line for a bad command line: QuietError (exit 7) naming the help to
    read. Every subcommand's parser is one too (``add_subparsers`` takes the parent's class);
    ``--help`` and ``--version`` still print and exit 0."""

    def error(self, message: str) -> NoReturn:
        if message == "the following arguments are required: COMMAND":
            message = "no command given"
        elif message.startswith("argument COMMAND: invalid choice: "):
            message = "unknown command " + message.removeprefix(
                "argument COMMAND: invalid choice: ")
        raise QuietError(f"{message} (see {self.prog} --help)", EXIT_INVALID_ARGUMENT)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="iscsifs", description="Userspace iSCSI initiator: discovery, node records, "
        "initiator names, the sessions of the running mounts. Mount with mount.iscsifs.")
    parser.add_argument("--version", action="version", version=f"iscsifs {__version__}")
    parser.add_argument("-d", "--debug", action="store_true", help="debug log (one line per PDU)")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--config-dir", default=None,
                        help="state and config directory (default: $ISCSIFS_CONFIG_DIR, "
                             "/etc/iscsifs as root, ~/.config/iscsifs otherwise)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    discover.add_commands(sub)
    nodes.add_commands(sub)
    discard.add_commands(sub)
    pr.add_commands(sub)
    session.add_commands(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command: ``args.run``, in trio when ``args.is_async``."""
    if args.is_async:
        return trio.run(args.run, args)
    return args.run(args)


def config_dir(given: str | None) -> str:
    """The config dir a command uses (``--config-dir``, else the default); exit 7 when it
    names something that is not a directory. One that does not exist yet is fine: the
    commands that write records create it."""
    path = given or default_config_dir()
    if os.path.exists(path) and not os.path.isdir(path):
        raise QuietError(f"config dir {path} is not a directory", EXIT_INVALID_ARGUMENT)
    return path


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.config_dir = config_dir(args.config_dir)
    except QuietError as exc:
        print(f"iscsifs: {exc}", file=sys.stderr)
        return exc.exit_code
    setup_logging(debug=args.debug, verbose=args.verbose)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (IscsiError, trio.TooSlowError, OSError) as exc:
        err = quiet_error(exc)
        print(f"iscsifs: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
