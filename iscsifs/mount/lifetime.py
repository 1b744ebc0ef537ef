"""The lifetime of one mount, in the shape of s3ql's: one ``AsyncExitStack`` and one nursery.

    check that every portal answers a TCP connect
    open the nursery; create the Initiator in it
    discover each portal (a portal whose discovery fails lists its node records instead,
        with a warning the user sees; without records the mount fails)
    log in as login= says (automatic: node.startup = automatic records; all; lazy: none),
        concurrently, and list those targets' LUNs, so by-path/ is complete at once
    pyfuse3.init -> pyfuse3.main -> FUSE_INIT answered: read-ahead set, ready, until
        unmounted or SIGTERM/SIGINT
    log out every session -> pyfuse3.close(unmount=True)

Cleanups are registered as things are created and run in reverse. User errors are raised as
QuietError (one line, an exit code), so nothing is left mounted or logged in.

Must not know: PDUs, SCSI, sessions - it talks to ``iscsifs.initiator.Initiator`` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from iscsifs import __version__
from iscsifs.core.discovery import DiscoveredTarget
from iscsifs.core.names import Portal
from iscsifs.errors import (EXIT_GENERIC, EXIT_INVALID_ARGUMENT, EXIT_NO_OBJECTS,
                            EXIT_TRANSPORT_FAILURE, ConnectionLost, IscsiError, QuietError,
                            SourceAddressError)
from iscsifs.exits import quiet_error
from iscsifs.fs.namespace import Namespace
from iscsifs.fs.ops import Operations
from iscsifs.fs.records import NodeRecords
from iscsifs.fs.tree import Node, Tree
from iscsifs.initiator import Initiator
from iscsifs.mount import kernel
from iscsifs.mount.config import MountConfig, load_config, resolve_initiator_name
from iscsifs.mount.options import MountOptions
from iscsifs.mount.sids import SidCounter
from iscsifs.net.isns import isns_discover
from iscsifs.net.transport import tcp_connector

log = logging.getLogger(__name__)

FUSE_IDLE_WORKERS = 32        # idle pyfuse3 worker tasks kept waiting for requests
FUSE_MAX_WORKERS = 256        # requests handled at once (the session queues beyond its window)


def fuse_options(opts: MountOptions) -> set[str]:
    options = {"fsname=iscsifs", "subtype=iscsifs", "default_permissions"}
    if opts.allow_other:
        options.add("allow_other")
    options.add("ro" if opts.read_only else "rw")
    options.update(opts.fuse_options)
    return options


async def check_portal_tcp(portal: Portal, timeout: float,
                           source_address: str | None = None) -> None:
    """The portal answers a TCP connect (from ``source_address`` when given) within
    timeout, or QuietError: exit 7 when the source address cannot be used here, else exit 4
    in the words every command uses for it (``net.transport``'s connectors)."""
    try:
        with trio.fail_after(timeout):
            sock = await tcp_connector(source_address)(portal)
    except trio.TooSlowError:
        raise QuietError(f"cannot connect to {portal.address}: no answer in {timeout:g} s",
                         EXIT_TRANSPORT_FAILURE) from None
    except SourceAddressError as exc:
        raise QuietError(f"portal {portal.address}: {exc}", EXIT_INVALID_ARGUMENT) from None
    except ConnectionLost as exc:
        raise QuietError(str(exc), EXIT_TRANSPORT_FAILURE) from None
    sock.close()


async def login_at_mount(namespace: Namespace, records: NodeRecords, mode: str,
                         portals: list[Portal], timeout: float,
                         warn: Callable[[str], None] | None = None) -> None:
    """``login=automatic|all``: log in to the chosen targets of every portal of the mount and
    list their LUNs, concurrently, each target bounded by ``timeout``. A target that fails is
    one warning line, never a failed mount (open-iscsi's boot-time logins go on likewise);
    its first use tries again. ``warn`` also tells the user (on the terminal)."""
    if mode == "lazy":
        return
    chosen: list[tuple[Portal, Node]] = []
    for portal in portals:
        tdir = namespace.tree.targets_dir(portal)
        try:
            with trio.fail_after(timeout):
                await namespace.populate(tdir)
        except Exception as exc:     # the startup discovery already said why
            log.debug("login=%s: cannot list the targets of %s: %s", mode, portal.address, exc)
            continue
        listed = {n.target: n for n in namespace.tree.children(tdir) if n.target is not None}
        wanted = list(listed) if mode == "all" else records.automatic_at(portal)
        for target in wanted:
            if target in listed:
                chosen.append((portal, listed[target]))
            else:
                message = (f"login=automatic: {target} at {portal.address} is not listed by "
                           f"that portal; not logged in")
                log.warning("%s", message)
                if warn is not None:
                    warn(message)
    done: list[str] = []

    async def one(portal: Portal, tnode: Node) -> None:
        luns = namespace.tree.child(tnode, "luns")
        assert luns is not None and tnode.target is not None
        try:
            with trio.fail_after(timeout):
                await namespace.populate(luns)
        except Exception as exc:
            where = f"{tnode.target} at {portal.address}"
            error = str(quiet_error(exc, detail="timed out"
                                    if isinstance(exc, trio.TooSlowError) else None))
            # the session's errors already say which target ("login to IQN failed: ...")
            for prefix in (f"login to {tnode.target} failed: ", f"login to {where} failed: ",
                           f"authentication failed for {where}: "):
                error = error.removeprefix(prefix)
            message = (f"login={mode}: login to {where} failed: {error}; it is tried again "
                       f"on first use")
            log.warning("%s", message)
            if warn is not None:
                warn(message)
        else:
            done.append(tnode.target)

    async with trio.open_nursery() as nursery:
        for portal, tnode in chosen:
            nursery.start_soon(one, portal, tnode)
    if chosen:
        log.info("login=%s: %d of %d target(s) logged in", mode, len(done), len(chosen))


async def isns_portals(opts: MountOptions, initiator_name: str, config: MountConfig,
                       timeout: float) -> list[DiscoveredTarget]:
    """``isns=``: ask the iSNS server for the targets; the portals it reports become the
    mount's (before those given on the command line), and its answer is recorded as node
    records (``node.discovery_type = isns``). QuietError if it fails or reports nothing."""
    assert opts.isns is not None
    server = opts.isns
    try:
        with trio.fail_after(timeout * 4 + 5):
            targets = await isns_discover(
                server, initiator_name=initiator_name, timeout=timeout,
                connector=tcp_connector(config.default_options.source_address))
    except (IscsiError, OSError, trio.TooSlowError) as exc:
        raise quiet_error(exc, doing=f"iSNS discovery at {server.address}") from None
    if not targets:
        raise QuietError(f"no targets found at iSNS server {server.address}", EXIT_NO_OBJECTS)
    found: list[Portal] = []
    for target in targets:
        for portal in target.portals:
            plain = Portal(portal.host, portal.port)
            if all(p.address != plain.address for p in found):
                found.append(plain)
    opts.portals = found + [p for p in opts.portals
                            if all(p.address != q.address for q in found)]
    try:
        config.records.db.record_isns(server, [(t.name, list(t.portals)) for t in targets])
    except (IscsiError, OSError) as exc:
        log.warning("recording the iSNS answer from %s failed: %s", server.address, exc)
    log.info("iSNS server %s reports %d target(s) at %d portal(s)", server.address,
             len(targets), len(found))
    return targets


def make_initiator(opts: MountOptions, initiator_name: str, nursery: trio.Nursery,
                   config: MountConfig,
                   isns_answer: list[DiscoveredTarget] | None = None) -> Initiator:
    defaults = config.default_options
    return Initiator(initiator_name=initiator_name, portals=list(opts.portals),
                     nursery=nursery, timeouts=defaults.timeouts,
                     login_params=defaults.login_params, chap=defaults.chap,
                     queue_depth=defaults.queue_depth or 32,
                     max_command_bytes=opts.max_sectors_kb * 1024,
                     node_options=config.node_options,
                     discovery_chap_for=config.discovery_chap_for,
                     on_discovered=config.records.record_discovery,
                     multipath_policy=opts.multipath,
                     sid_source=SidCounter().next,
                     reservation_key=opts.reservation_key,
                     reservation_aptpl=opts.reservation_aptpl,
                     alua_transition_timeout=opts.alua_transition_timeout,
                     source_address=defaults.source_address,
                     isns_server=opts.isns, isns_answer=isns_answer)


async def run_mount(opts: MountOptions, ready: Callable[[], None],
                    backend: Callable[..., Any] | None = None, *,
                    warn: Callable[[str], None] | None = None) -> None:
    """Check portals, mount, call ``ready()``, serve until unmounted or signalled, log out,
    unmount. ``backend(opts, initiator_name, nursery)`` replaces the Initiator (tests).
    ``warn(message)`` tells the user (not only the log) what mounted but not as asked: the
    daemon's parent prints it on stderr; in the foreground the log is stderr already."""
    initiator_name = resolve_initiator_name(opts)
    for warning in opts.warnings:
        log.warning("%s", warning)
    config = load_config(opts)
    login_timeout = float(config.default_options.timeouts.login) or 15.0
    logout_timeout = float(config.default_options.timeouts.logout) or 15.0
    isns_answer = None
    if opts.isns is not None:
        isns_answer = await isns_portals(opts, initiator_name, config, login_timeout)
    reported = {(p.host, p.port) for t in isns_answer or () for p in t.portals}
    unreachable: list[QuietError] = []
    for portal in opts.portals:
        try:
            await check_portal_tcp(portal, login_timeout,
                                   config.default_options.source_address)
        except QuietError as exc:
            if (portal.host, portal.port) not in reported:
                raise
            unreachable.append(exc)      # iSNS may list portals that are gone: a warning
    if unreachable and len(unreachable) == len(opts.portals):
        raise unreachable[0]
    for exc in unreachable:
        message = f"{exc}; its directory lists what iSNS reports, and logins are tried on use"
        log.warning("%s", message)
        if warn is not None:
            warn(message)

    fuse_mounted = False
    terminated = False

    def close_fuse() -> None:
        if fuse_mounted:
            log.debug("unmounting %s", opts.mountpoint)
            pyfuse3.close(unmount=True)

    async def logout_all(initiator: Any) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(logout_timeout + 5) as scope:
                try:
                    await initiator.aclose()
                except Exception:
                    log.exception("logging out failed")
            if scope.cancelled_caught:
                log.warning("logging out took longer than %g s; giving up", logout_timeout)

    async def watch_signals(nursery: trio.Nursery,
                            task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal terminated
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log.info("%s received: unmounting", signal.Signals(signum).name)
                terminated = True
                if fuse_mounted:
                    pyfuse3.terminate()      # pyfuse3.main() returns; cleanup follows
                else:
                    nursery.cancel_scope.cancel()   # stop discovery; nothing is mounted
                return

    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        stack.callback(close_fuse)                       # runs after logout_all
        await nursery.start(watch_signals, nursery)
        if backend is None:
            initiator = make_initiator(opts, initiator_name, nursery, config, isns_answer)
        else:
            initiator = backend(opts, initiator_name, nursery)
        stack.push_async_callback(logout_all, initiator)
        tree = Tree(opts.portals)
        ops = Operations(initiator, tree, initiator_name=initiator_name,
                         read_only=opts.read_only, cache=opts.cache,
                         records=config.records, kernel_notify=True)
        for portal in opts.portals if not opts.nodiscovery else ():
            try:
                with trio.fail_after(login_timeout + 5):
                    await initiator.discover(portal)
            except Exception as exc:
                log.debug("discovery on %s failed", portal, exc_info=True)
                error = quiet_error(exc, doing=f"discovery on portal {portal.address}")
                records = config.records.targets_at(portal, static_only=False)
                if not records:
                    raise error from None
                # as open-iscsi logs in to node records whatever discovery says: the portal
                # lists its node records, and the user hears why, once
                message = (f"{error}; mounted with its {len(records)} node record(s) "
                           f"instead")
                log.warning("%s", message)
                if warn is not None:
                    warn(message)
                # said: the listings that follow (login= below, the first ls) fall back the
                # same way and must not say it again, once per listing
                ops.namespace.discovery_failed(portal, exc)
        # login + LUN scan of one target, each bounded by login_timeout
        await login_at_mount(ops.namespace, config.records, opts.login, opts.portals,
                             2 * login_timeout, warn)
        if terminated:
            return
        real_mountpoint = os.path.realpath(opts.mountpoint)     # before it is ours to answer
        try:
            pyfuse3.init(ops, opts.mountpoint, fuse_options(opts))
        except Exception as exc:
            raise QuietError(f"cannot mount on {opts.mountpoint}: {exc}", EXIT_GENERIC) from None
        fuse_mounted = True

        async def initialized() -> None:
            # after FUSE_INIT's answer (which can only lower the read-ahead), before the mount
            # is reported ready: every open then reads ahead as far as it should
            kernel.tune(real_mountpoint, opts.read_ahead_kb)
            log.info("mounted %s on %s (iscsifs %s, initiator %s, login=%s)", opts.spec,
                     opts.mountpoint, __version__, initiator_name, opts.login)
            ready()

        # pyfuse3 calls Operations.init while it answers FUSE_INIT: the task runs after that
        ops.on_init = lambda: nursery.start_soon(initialized)
        # Keep idle FUSE workers around: with pyfuse3's default (1), every burst of parallel
        # requests spawns tasks that exit again at once (measured: 1 spawn per 3 requests).
        await pyfuse3.main(min_tasks=FUSE_IDLE_WORKERS, max_tasks=FUSE_MAX_WORKERS)
        log.info("file system loop ended; logging out")
