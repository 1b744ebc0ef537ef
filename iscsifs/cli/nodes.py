"""``iscsifs node``, ``iscsifs discovery`` and ``iscsifs login``: iscsiadm's record operations.

Owns: the command-line shapes of ``iscsiadm -m node`` / ``-m discovery`` / ``-m node --login``
on our NodeDB (``<config dir>/nodes``, ``<config dir>/send_targets``), their output lines and
exit codes, and secret references in ``-v``:

    -v @/path/to/file    the value is the file's content (one trailing newline dropped)
    -v env:VARNAME       the value is the environment variable VARNAME

Both keep secrets out of the process list (``ps`` shows the command line); a literal secret
on the command line works, as with iscsiadm, but gets a warning. Secrets are never printed:
``-o show`` shows them as ``********``.

Must not know: PDUs, the login state machine (the net layer does logins), FUSE.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import trio

from iscsifs.cli.discover import add_source_address, discover, discover_isns
from iscsifs.config.conffile import render_record
from iscsifs.config.initiatorname import choose_initiator_name
from iscsifs.config.keys import is_secret_key, validate_iscsi_name, validate_key
from iscsifs.config.nodedb import NodeDB, NodeRecord, record_portal
from iscsifs.config.settings import NodeSettings, with_effective_authmethod
from iscsifs.core.names import Portal, host_port
from iscsifs.errors import EXIT_INVALID_ARGUMENT, EXIT_NO_OBJECTS, ConfigError, IscsiError, QuietError
from iscsifs.exits import portal_arg, quiet_error
from iscsifs.net.session import Session
from iscsifs.net.transport import tcp_connector
from iscsifs.net.util import unwrap_group
from iscsifs.nodeopts import login_params_from_settings, node_options_from_settings

__all__ = ["add_commands", "resolve_value"]

IFACE = "default"
MAX_SECRET_FILE = 4096      # a secret file larger than this is surely the wrong file


def _warn(message: str) -> None:
    print(f"iscsifs: warning: {message}", file=sys.stderr)


def _flush_warnings(db: NodeDB) -> None:
    seen = set()
    for message in db.warnings:
        if message not in seen:
            seen.add(message)
            _warn(message)
    db.warnings.clear()


# ---------------------------------------------------------------------- values and secrets
def resolve_value(key: str, value: str) -> str:
    """``-v`` as given: ``@FILE`` and ``env:VAR`` references are read; a literal secret is
    accepted with a warning that it shows in ``ps``. ConfigError (never naming the secret)."""
    if value.startswith("@") and len(value) > 1:
        path = Path(value[1:])
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the value of {key} from {path}: "
                              f"{exc.strerror or exc}") from None
        if len(data) > MAX_SECRET_FILE:
            raise ConfigError(f"{path}: longer than {MAX_SECRET_FILE} bytes; not a value "
                              f"for {key}")
        text = data.decode("utf-8", "surrogateescape")
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        return text
    if value.startswith("env:") and len(value) > 4:
        name = value[4:]
        if name not in os.environ:
            raise ConfigError(f"environment variable {name} (value of {key}) is not set")
        return os.environ[name]
    if is_secret_key(key) and value not in ("", "<empty>"):
        _warn(f"the value of {key} given on the command line is visible to other users "
              "(ps); use -v @FILE or -v env:VARNAME")
    return value


# ---------------------------------------------------------------------- selection
def _portal_filter(text: str | None) -> tuple[str, int, int | None] | None:
    """``-p`` as (host, port, tpgt or None); host normalised as records store it."""
    if text is None:
        return None
    portal = portal_arg(text)        # the host as records store it: core.names.check_host
    tpgt = portal.tpgt if "," in text else None
    return portal.host, portal.port, tpgt


def _matches(portal: Portal, wanted: tuple[str, int, int | None] | None) -> bool:
    if wanted is None:
        return True
    host, port, tpgt = wanted
    return portal.host == host and portal.port == port and (tpgt is None or portal.tpgt == tpgt)


def _check_target(target: str | None) -> None:
    if target is not None:
        try:
            validate_iscsi_name(target)
        except ConfigError as exc:
            raise QuietError(str(exc), EXIT_INVALID_ARGUMENT) from None


def _select(db: NodeDB, args: Any) -> list[NodeRecord]:
    """Records matching -T / -p (all without them); QuietError 21 when none match."""
    _check_target(args.target)
    wanted = _portal_filter(args.portal)
    records = [r for r in db.list_nodes(args.target, strict=False)
               if _matches(r.portal, wanted)]
    skipped = [w for w in db.warnings if w.startswith("record skipped: ")]
    if not records and skipped:
        # the only candidates are unreadable: say why (exit 7), not "no records" (21)
        db.warnings.clear()
        raise QuietError(skipped[0].removeprefix("record skipped: "), EXIT_INVALID_ARGUMENT)
    _flush_warnings(db)
    if not records:
        raise QuietError("no records found", EXIT_NO_OBJECTS)
    return records


def _who(record: NodeRecord) -> str:
    """iscsiadm's ``[iface: default, target: IQN, portal: 10.0.0.5,3260]``."""
    return (f"[iface: {IFACE}, target: {record.target}, "
            f"portal: {record.portal.host},{record.portal.port}]")


def _record_path(db: NodeDB, record: NodeRecord) -> str:
    return str(db.record_path(record.target, record.portal))


# ---------------------------------------------------------------------- node
def _node(args: Any) -> int:
    db = NodeDB(args.config_dir)
    _flush_warnings(db)
    op = args.op
    if op is None:
        op = "show" if (args.target or args.portal) else "list"
    if op in ("list",) and (args.name or args.value is not None):
        raise QuietError("-n/-v need -o update", EXIT_INVALID_ARGUMENT)
    if op == "list":
        for record in _select(db, args):
            print(str(record))
        return 0
    if op == "new":
        return _node_new(db, args)
    if op == "show":
        records = _select(db, args)
        for n, record in enumerate(records):
            if n:
                print()
            print(render_record(with_effective_authmethod(record.keys), hide_secrets=True,
                                version=None), end="")
        return 0
    if op == "delete":
        records = _select(db, args)
        for record in records:
            db.delete(record.target, record.portal)
        return 0
    if op == "update":
        return _node_update(db, args)
    raise QuietError(f"unknown operation {op!r}", EXIT_INVALID_ARGUMENT)  # argparse stops this


def _node_new(db: NodeDB, args: Any) -> int:
    if not args.target or not args.portal:
        raise QuietError("-o new needs -T TARGET and -p PORTAL", EXIT_INVALID_ARGUMENT)
    _check_target(args.target)
    host, port, tpgt = _portal_filter(args.portal)  # type: ignore[misc]
    key = record_portal((host, port, 1 if tpgt is None else tpgt))
    if db.exists(args.target, key):
        _warn(f"record for {args.target} at {key} already exists; left unchanged "
              "(use -o update to change it, -o delete to start over)")
        return 0
    record = db.add(args.target, key)
    _flush_warnings(db)
    print(f"New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if={IFACE}] "
          f"{record.portal.host},{record.portal.port},{record.portal.tpgt} "
          f"{record.target}] added")
    return 0


def _check_update(record: NodeRecord, key: str, value: str, where: str) -> None:
    """Refuse, before anything is written, a value that would make the record unusable for a
    login (e.g. FirstBurstLength above MaxBurstLength). Bad values themselves are left to
    NodeDB.update, which names them."""
    try:
        value = validate_key(key, value)
    except ValueError:
        return
    merged = dict(record.keys)
    merged[key] = value
    try:
        login_params_from_settings(NodeSettings.from_keys(merged, strict=False))
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}", where) from None


def _node_update(db: NodeDB, args: Any) -> int:
    if not args.name or args.value is None:
        raise QuietError("-o update needs -n KEY and -v VALUE", EXIT_INVALID_ARGUMENT)
    value = resolve_value(args.name, args.value)
    records = _select(db, args)
    for record in records:
        _check_update(record, args.name, value, _record_path(db, record))
    for record in records:
        updated = db.update(record.target, record.portal, args.name, value)
        for message in updated.settings.warnings:
            _warn(f"{updated.target} at {updated.portal}: {message}")
    _flush_warnings(db)
    return 0


# ---------------------------------------------------------------------- discovery
def _discovery_selected(db: NodeDB, args: Any) -> list[tuple[str, int]]:
    wanted = _portal_filter(args.portal)
    found = [(h, p) for h, p in db.list_discovery()
             if wanted is None or (h, p) == (wanted[0], wanted[1])]
    if not found:
        raise QuietError("no records found", EXIT_NO_OBJECTS)
    return found


def _discovery(args: Any) -> int:
    if args.type is not None:
        if not args.portal:
            raise QuietError(f"-t {args.type} needs -p PORTAL", EXIT_INVALID_ARGUMENT)
        if args.op is not None:
            raise QuietError("-t and -o can't be combined", EXIT_INVALID_ARGUMENT)
        return _run_discovery(args)
    db = NodeDB(args.config_dir)
    _flush_warnings(db)
    op = args.op
    if op is None:
        op = "show" if args.portal else "list"
    if op == "list":
        for host, port in _discovery_selected(db, args):
            print(f"{host_port(host, port)} via sendtargets")
        return 0
    if not args.portal:
        raise QuietError(f"-o {op} needs -p PORTAL", EXIT_INVALID_ARGUMENT)
    wanted = _portal_filter(args.portal)
    assert wanted is not None
    portal = (wanted[0], wanted[1])
    if op == "new":
        db.record_discovery(portal, [])
        print(f"New discovery record for [{wanted[0]},{wanted[1]}] added.")
        return 0
    if op == "update":
        if not args.name or args.value is None:
            raise QuietError("-o update needs -n KEY and -v VALUE", EXIT_INVALID_ARGUMENT)
        value = resolve_value(args.name, args.value)
        settings = db.update_discovery(portal, args.name, value)
        for message in settings.warnings:
            _warn(f"discovery at {host_port(*portal)}: {message}")
        _flush_warnings(db)
        return 0
    _discovery_selected(db, args)          # 21 when there is no such record
    if op == "show":
        keys = db.discovery_keys(*portal)
        _flush_warnings(db)
        print(render_record(with_effective_authmethod(keys), hide_secrets=True, version=None),
              end="")
        return 0
    if op == "delete":
        db.delete_discovery(portal)
        return 0
    raise QuietError(f"unknown operation {op!r}", EXIT_INVALID_ARGUMENT)


def _run_discovery(args: Any) -> int:
    """``iscsifs discovery -t st -p P`` = ``iscsifs discover P`` (iscsiadm's spelling);
    ``-t isns -p SERVER``: ask an iSNS server."""
    ns = argparse.Namespace(**vars(args))
    ns.no_record = False
    return trio.run(discover_isns if args.type == "isns" else discover, ns)


# ---------------------------------------------------------------------- login
def _login_failure(record: NodeRecord, exc: BaseException) -> QuietError:
    where = f"{record.target} at {host_port(record.portal.host, record.portal.port)}"
    return quiet_error(exc, doing=f"login to {where}", who=where)


async def _login_one(record: NodeRecord, options: Any, name: str) -> None:
    portal = record.portal
    timeouts = options.timeouts
    with trio.fail_after(timeouts.login + timeouts.logout + 5):
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                session = await Session.connect(
                    portal, record.target, initiator_name=name, nursery=nursery,
                    params=options.login_params, chap=options.chap, timeouts=timeouts,
                    queue_depth=options.queue_depth, recover=False,
                    connector=tcp_connector(options.source_address))
                await session.close()
                nursery.cancel_scope.cancel()


async def _login(args: Any) -> int:
    db = NodeDB(args.config_dir)
    _flush_warnings(db)
    records = _select(db, args)
    if args.startup not in (None, "all"):
        records = [r for r in records if r.settings.startup == args.startup]
        if not records:
            raise QuietError("no records found", EXIT_NO_OBJECTS)
    name, _note = choose_initiator_name(args.initiator_name, args.config_dir)
    first_error: QuietError | None = None
    for record in records:
        print(f"Logging in to {_who(record)}", flush=True)
        try:
            options = node_options_from_settings(record.settings, _record_path(db, record))
            for message in record.settings.warnings:
                _warn(f"{record.target} at {record.portal}: {message}")
            await _login_one(record, options, name)
        except (IscsiError, OSError, trio.TooSlowError) as exc:
            err = _login_failure(record, exc)
        else:
            print(f"Login to {_who(record)} successful.", flush=True)
            continue
        print(f"iscsifs: {err}", file=sys.stderr, flush=True)
        if first_error is None:
            first_error = err
    return 0 if first_error is None else first_error.exit_code


# ---------------------------------------------------------------------- parser
_NODE_EPILOG = """\
examples (iscsiadm -m node equivalents):
  iscsifs node                                       list records
  iscsifs node -T IQN -p 10.0.0.5 -o new             add a target by hand
  iscsifs node -T IQN -p 10.0.0.5                    show a record (secrets hidden)
  iscsifs node -T IQN -o update -n node.session.auth.password -v @/root/chap.secret
  iscsifs node -T IQN -o update -n node.session.auth.password -v env:CHAP_SECRET
  iscsifs node -T IQN -p 10.0.0.5 -o delete          delete a record (all: no -T/-p)

-v @FILE and -v env:VAR keep secrets out of the process list (ps); a literal secret works
but is visible to other users while the command runs.
exit codes: 0 ok, 7 invalid argument or value, 21 no records found.
"""

_DISCOVERY_EPILOG = """\
examples (iscsiadm -m discovery equivalents):
  iscsifs discovery                                  list discovery records
  iscsifs discovery -t st -p 10.0.0.5                discover (same as iscsifs discover)
  iscsifs discovery -t isns -p 10.0.0.1              ask an iSNS server (port 3205)
  iscsifs discovery -p 10.0.0.5 -o update -n discovery.sendtargets.auth.username -v me
  iscsifs discovery -p 10.0.0.5 -o update \\
          -n discovery.sendtargets.auth.password -v @/root/discovery.secret
  iscsifs discovery -p 10.0.0.5 -o delete            drop the record and its nodes
"""

_LOGIN_EPILOG = """\
Without -T/-p every record is tried (as iscsiadm -m node --login does).
Logs in with the node record's settings (CHAP, digests, timeouts) and logs out again: a test
that the record works. Mount with mount.iscsifs to use the storage.
exit codes: 0 ok, 24 authentication failed, 19 login refused, 4 target unreachable,
7 invalid record, 21 no records found.
"""


def _common(p: argparse.ArgumentParser, ops: list[str], *, target: bool = True) -> None:
    if target:
        p.add_argument("-T", "--targetname", dest="target", metavar="IQN",
                       help="target name")
    p.add_argument("-p", "--portal", metavar="PORTAL",
                   help="host, host:port, [v6]:port, optionally ,tpgt")
    p.add_argument("-o", "--op", choices=ops, help="operation")
    p.add_argument("-n", "--name", metavar="KEY", help="record key for -o update")
    p.add_argument("-v", "--value", metavar="VALUE",
                   help="value for -o update; @FILE or env:VAR to read it (keeps secrets "
                        "out of ps)")


def add_commands(subparsers: Any) -> None:
    """Add ``node``, ``discovery`` and ``login`` to the ``iscsifs`` command line."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("node", help="node records (iscsiadm -m node)",
                              epilog=_NODE_EPILOG, formatter_class=fmt)
    _common(p, ["new", "delete", "show", "update"])
    p.set_defaults(run=_node, is_async=False)

    p = subparsers.add_parser("discovery", help="discovery records (iscsiadm -m discovery)",
                              epilog=_DISCOVERY_EPILOG, formatter_class=fmt)
    _common(p, ["new", "delete", "show", "update"], target=False)
    p.add_argument("-t", "--type", choices=["sendtargets", "st", "isns"],
                   help="run discovery now (needs -p: the portal, or the iSNS server, port "
                        "3205 by default)")
    p.add_argument("--initiator-name", help="initiator IQN (default: initiatorname.iscsi)")
    p.add_argument("--timeout", type=float, default=15, help="login timeout in seconds")
    add_source_address(p)
    p.set_defaults(run=_discovery, is_async=False, target=None)

    p = subparsers.add_parser("login", help="test login to node records "
                              "(iscsiadm -m node --login)", epilog=_LOGIN_EPILOG,
                              formatter_class=fmt)
    p.add_argument("-T", "--targetname", dest="target", metavar="IQN")
    p.add_argument("-p", "--portal", metavar="PORTAL")
    p.add_argument("-L", "--loginall", dest="startup",
                   choices=["all", "manual", "automatic", "onboot"],
                   help="records with this node.startup (all: every record)")
    p.add_argument("--all", dest="startup", action="store_const", const="all",
                   help="every node record (the default without -T/-p)")
    p.add_argument("--initiator-name", help="initiator IQN (default: initiatorname.iscsi)")
    p.set_defaults(run=_login, is_async=True)

