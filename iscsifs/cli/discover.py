"""``iscsifs discover`` (``iscsiadm -m discovery -t st -p PORTAL``) and ``iscsifs iname``
(``iscsi-iname``).

Discovery runs one discovery session, prints ``host:port,tpgt target`` lines and records what
it found as node records (unless ``--no-record``), like iscsiadm. Every wait is bounded by the
login timeout.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

import trio

from iscsifs.config.initiatorname import DEFAULT_INAME_PREFIX, choose_initiator_name, iname
from iscsifs.config.nodedb import NodeDB
from iscsifs.core.isns import ISNS_PORT
from iscsifs.errors import EXIT_NO_OBJECTS, IscsiError, QuietError
from iscsifs.exits import portal_arg, quiet_error
from iscsifs.net.discovery import discover as sendtargets
from iscsifs.net.isns import isns_discover
from iscsifs.net.session import Timeouts
from iscsifs.net.transport import tcp_connector


async def discover(args: Any) -> int:
    portal = portal_arg(args.portal)
    name, _note = choose_initiator_name(args.initiator_name, args.config_dir)
    chap = None
    db = None
    if not args.no_record:
        db = NodeDB(args.config_dir)
        chap = db.discovery_chap(portal)
    timeouts = Timeouts(login=args.timeout)
    try:
        with trio.fail_after(args.timeout * 2 + 1):
            targets = await sendtargets(portal, initiator_name=name, chap=chap,
                                        timeouts=timeouts,
                                        connector=tcp_connector(args.source_address))
    except (IscsiError, OSError, trio.TooSlowError) as exc:
        raise quiet_error(exc, doing=f"discovery on portal {portal.address}") from None
    if db is not None:
        db.record_discovery(portal, [(t.name, list(t.portals)) for t in targets])
    if not targets:
        raise QuietError(f"no targets found at {portal.address}", EXIT_NO_OBJECTS)
    for target in targets:
        for p in target.portals:
            print(f"{p} {target.name}")
    return 0


async def discover_isns(args: Any) -> int:
    """``iscsifs discovery -t isns -p SERVER``: the targets and portals an iSNS server knows,
    printed and recorded as node records (``node.discovery_type = isns``) like iscsiadm."""
    server = portal_arg(args.portal, default_port=ISNS_PORT)
    name, _note = choose_initiator_name(args.initiator_name, args.config_dir)
    try:
        with trio.fail_after(args.timeout * 4 + 1):
            targets = await isns_discover(server, initiator_name=name, timeout=args.timeout,
                                          connector=tcp_connector(args.source_address))
    except (IscsiError, OSError, trio.TooSlowError) as exc:
        raise quiet_error(exc, doing=f"iSNS discovery at {server.address}") from None
    if not getattr(args, "no_record", False):
        NodeDB(args.config_dir).record_isns(server, [(t.name, list(t.portals))
                                                     for t in targets])
    if not targets:
        raise QuietError(f"no targets found at iSNS server {server.address}", EXIT_NO_OBJECTS)
    for target in targets:
        for p in target.portals:
            print(f"{p} {target.name}")
    return 0


def print_iname(args: Any) -> int:
    print(iname(args.prefix))
    return 0


def source_address(text: str) -> str:
    """``--source-address``: an IP address (argparse type; exit 2 with a message if not)."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def add_source_address(p: Any) -> None:
    p.add_argument("--source-address", metavar="ADDR", type=source_address, default=None,
                   help="bind the connection to this local IP address (iface.ipaddress)")


def add_commands(subparsers: Any) -> None:
    """Add ``discover`` and ``iname`` to the ``iscsifs`` command line."""
    p = subparsers.add_parser("discover",
                              help="SendTargets discovery (iscsiadm -m discovery -t st)")
    p.add_argument("portal", help="host, host:port or [v6]:port")
    p.add_argument("--initiator-name", help="initiator IQN (default: from initiatorname.iscsi)")
    p.add_argument("--timeout", type=float, default=15, help="login timeout in seconds")
    p.add_argument("--no-record", action="store_true", help="don't save node records")
    add_source_address(p)
    p.set_defaults(run=discover, is_async=True)

    p = subparsers.add_parser("iname", help="print a new initiator name (iscsi-iname)")
    p.add_argument("-p", "--prefix", default=DEFAULT_INAME_PREFIX)
    p.set_defaults(run=print_iname, is_async=False)
