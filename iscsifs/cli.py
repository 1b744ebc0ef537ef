"""``iscsifs`` command line: the iscsiadm-style operations that don't need a mount.

Owns: argument parsing, output formats (iscsiadm's), and turning errors into one line on stderr
with iscsiadm's exit codes. Every network wait is bounded by the login timeout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from . import __version__
from .core.discovery import parse_portal
from .errors import (EXIT_INVALID_ARGUMENT, EXIT_NO_OBJECTS, EXIT_TRANSPORT_FAILURE,
                     ConfigError, ConnectionLost, IscsiError, LoginError, QuietError)

log = logging.getLogger("iscsifs")


def default_config_dir() -> str:
    """Where our own state lives: $ISCSIFS_CONFIG_DIR, /etc/iscsifs for root, else ~/.config."""
    env = os.environ.get("ISCSIFS_CONFIG_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/etc/iscsifs"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "iscsifs")


def setup_logging(debug: bool, verbose: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s"
                        if debug else "%(prog)s: %(message)s".replace("%(prog)s", "iscsifs"))


def portal_arg(text: str):
    try:
        return parse_portal(text)
    except ValueError as exc:
        raise QuietError(f"bad portal {text!r}: {exc}", EXIT_INVALID_ARGUMENT) from None


def initiator_name_for(args) -> str:
    """--initiator-name, else the config dir's initiatorname.iscsi (created on first use)."""
    if getattr(args, "initiator_name", None):
        from .core.discovery import valid_iscsi_name
        if not valid_iscsi_name(args.initiator_name):
            raise QuietError(f"invalid initiator name {args.initiator_name!r} "
                             "(want iqn.YYYY-MM.reversed.domain[:id], eui. or naa.)",
                             EXIT_INVALID_ARGUMENT)
        return args.initiator_name
    from .config import ensure_initiator_name
    name, _alias = ensure_initiator_name(args.config_dir)
    return name


def map_error(exc: BaseException) -> QuietError:
    """The CLI's one mapping from errors to a one-line message and iscsiadm's exit code."""
    if isinstance(exc, QuietError):
        return exc
    if isinstance(exc, LoginError):
        return QuietError(str(exc), exc.exit_code)
    if isinstance(exc, ConnectionLost):
        return QuietError(str(exc), EXIT_TRANSPORT_FAILURE)
    if isinstance(exc, ConfigError):
        return QuietError(str(exc), EXIT_INVALID_ARGUMENT)
    if isinstance(exc, trio.TooSlowError):
        return QuietError("timed out", EXIT_TRANSPORT_FAILURE)
    return QuietError(f"{type(exc).__name__}: {exc}", 1)


# ---------------------------------------------------------------------- commands
async def _discover(args) -> int:
    from .net.discovery import discover
    from .net.session import Timeouts
    portal = portal_arg(args.portal)
    name = initiator_name_for(args)
    chap = None
    db = None
    if not args.no_record:
        from .config import NodeDB
        db = NodeDB(args.config_dir)
        chap = db.discovery_chap(portal)
    timeouts = Timeouts(login=args.timeout)
    with trio.fail_after(args.timeout * 2 + 1):
        targets = await discover(portal, initiator_name=name, chap=chap, timeouts=timeouts)
    if db is not None:
        db.record_discovery(portal, [(t.name, list(t.portals)) for t in targets])
    if not targets:
        raise QuietError(f"no targets found at {portal.host}:{portal.port}", EXIT_NO_OBJECTS)
    for target in targets:
        for p in target.portals:
            print(f"{p} {target.name}")
    return 0


def _iname(args) -> int:
    from .config import iname
    print(iname(args.prefix))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iscsifs", description="Userspace iSCSI initiator: discovery, node records, "
        "initiator names. Mount with mount.iscsifs.")
    parser.add_argument("--version", action="version", version=f"iscsifs {__version__}")
    parser.add_argument("-d", "--debug", action="store_true", help="debug log (one line per PDU)")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--config-dir", default=None,
                        help="state and config directory (default: $ISCSIFS_CONFIG_DIR, "
                             "/etc/iscsifs as root, ~/.config/iscsifs otherwise)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("discover", help="SendTargets discovery (iscsiadm -m discovery -t st)")
    p.add_argument("portal", help="host, host:port or [v6]:port")
    p.add_argument("--initiator-name", help="initiator IQN (default: from initiatorname.iscsi)")
    p.add_argument("--timeout", type=float, default=15, help="login timeout in seconds")
    p.add_argument("--no-record", action="store_true", help="don't save node records")
    p.set_defaults(run=_discover, is_async=True)

    p = sub.add_parser("iname", help="print a new initiator name (iscsi-iname)")
    p.add_argument("-p", "--prefix", default="iqn.2016-04.com.open-iscsi")
    p.set_defaults(run=_iname, is_async=False)

    try:
        from .nodecli import add_node_commands
    except ImportError:  # pragma: no cover - during bring-up
        pass
    else:
        add_node_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config_dir is None:
        args.config_dir = default_config_dir()
    setup_logging(args.debug, args.verbose)
    try:
        if args.is_async:
            return trio.run(args.run, args)
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (IscsiError, trio.TooSlowError, OSError) as exc:
        err = map_error(exc)
        print(f"iscsifs: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
