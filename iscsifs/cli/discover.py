"""``iscsifs discover`` (``iscsiadm -m discovery -t st -p PORTAL``) and ``iscsifs iname``
(``iscsi-iname``).

Discovery runs one discovery session, prints ``host:port,tpgt target`` lines and records what
it found as node records (unless ``--no-record``), like iscsiadm. Every wait is bounded by the
login timeout.
"""

from __future__ import annotations

from typing import Any

import trio

from iscsifs.config.initiatorname import choose_initiator_name
from iscsifs.config.initiatorname import DEFAULT_INAME_PREFIX, iname
from iscsifs.config.nodedb import NodeDB
from iscsifs.errors import EXIT_NO_OBJECTS, IscsiError, QuietError
from iscsifs.exits import portal_arg, quiet_error
from iscsifs.net.discovery import discover as sendtargets
from iscsifs.net.session import Timeouts


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
                                        timeouts=timeouts)
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


def print_iname(args: Any) -> int:
    print(iname(args.prefix))
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``discover`` and ``iname`` to the ``iscsifs`` command line."""
    p = subparsers.add_parser("discover",
                              help="SendTargets discovery (iscsiadm -m discovery -t st)")
    p.add_argument("portal", help="host, host:port or [v6]:port")
    p.add_argument("--initiator-name", help="initiator IQN (default: from initiatorname.iscsi)")
    p.add_argument("--timeout", type=float, default=15, help="login timeout in seconds")
    p.add_argument("--no-record", action="store_true", help="don't save node records")
    p.set_defaults(run=discover, is_async=True)

    p = subparsers.add_parser("iname", help="print a new initiator name (iscsi-iname)")
    p.add_argument("-p", "--prefix", default=DEFAULT_INAME_PREFIX)
    p.set_defaults(run=print_iname, is_async=False)
