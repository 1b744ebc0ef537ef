"""``iscsifs``: the iscsiadm-style operations that don't need a mount.

Owns: the parser (each command family adds its subcommands), running the chosen command, and
printing what went wrong as one line with iscsiadm's exit code (``cli.common``).
"""

from __future__ import annotations

import argparse
import sys

import trio

from iscsifs import __version__
from iscsifs.cli import discard, discover, nodes, pr, session
from iscsifs.cli.common import config_dir, quiet_error, setup_logging
from iscsifs.errors import IscsiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config_dir = config_dir(args.config_dir)
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
