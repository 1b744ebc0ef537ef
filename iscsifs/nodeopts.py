"""Node records -> login settings: what a mount (or ``iscsifs login``) uses for one target.

Owns: the mapping of a node record's open-iscsi keys (:class:`iscsifs.config.settings.NodeSettings`)
to the facade's :class:`~iscsifs.initiator.NodeOptions` - CHAP credentials, the login
parameters we propose (:class:`~iscsifs.core.keys.LoginParams`), the session timeouts
(:class:`~iscsifs.net.session.Timeouts`) and the queue depth.

Must not know: sockets, trio, pyfuse3. Records are read again on every call, so an edit made
with ``iscsifs node -o update`` applies to the next login without a remount. A record whose
CHAP settings are incomplete raises ConfigError: a login must never silently fall back to no
authentication.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iscsifs.config.nodedb import NodeDB, NodeRecord, record_portal
from iscsifs.config.settings import NodeSettings
from iscsifs.core.names import valid_iscsi_name
from iscsifs.core.keys import LoginParams
from iscsifs.errors import ConfigError
from iscsifs.initiator import NodeOptions
from iscsifs.net.session import Timeouts

__all__ = ["find_record", "login_params_from_settings", "node_options_from_db",
           "node_options_from_settings", "timeouts_from_settings"]


def login_params_from_settings(settings: NodeSettings) -> LoginParams:
    """The operational keys we propose at login (ConfigError if they don't fit together)."""
    return LoginParams(
        header_digest=settings.header_digest,
        data_digest=settings.data_digest,
        max_recv_data_segment_length=settings.max_recv_data_segment_length,
        first_burst_length=settings.first_burst_length,
        max_burst_length=settings.max_burst_length,
        immediate_data=settings.immediate_data,
        initial_r2t=settings.initial_r2t,
    )


def timeouts_from_settings(settings: NodeSettings) -> Timeouts:
    """Session timeouts (seconds). open-iscsi's rules: noop_out_* 0 disables the keepalive;
    a negative replacement_timeout queues I/O until the session comes back; a login or
    logout timeout of 0 means the default (a zero timeout could never succeed)."""
    default = Timeouts()
    replacement: float = settings.replacement_timeout
    if replacement < 0:
        replacement = float("inf")
    return Timeouts(
        login=settings.login_timeout or default.login,
        logout=settings.logout_timeout or default.logout,
        noop_out_interval=settings.noop_out_interval,
        noop_out_timeout=settings.noop_out_timeout,
        replacement_timeout=replacement,
        abort=settings.abort_timeout,
        lu_reset=settings.lu_reset_timeout,
        tgt_reset=settings.tgt_reset_timeout,
        command=default.command,
    )


def node_options_from_settings(settings: NodeSettings, where: str | None = None) -> NodeOptions:
    """NodeOptions for one record's settings. ConfigError (naming ``where``) if the record
    can't be used to log in: incomplete CHAP credentials, burst lengths that don't fit."""
    try:
        settings.check()
        params = login_params_from_settings(settings)
    except ConfigError as exc:
        raise ConfigError(str(exc), where) from None
    return NodeOptions(chap=settings.auth, login_params=params,
                       timeouts=timeouts_from_settings(settings),
                       queue_depth=settings.queue_depth, cmds_max=settings.cmds_max,
                       source_address=settings.source_address or None)


def find_record(db: NodeDB, target: str, portal: Any) -> NodeRecord | None:
    """The record of ``target`` at ``portal``: the exact (host, port, tpgt) one, else the only
    one at that host and port whatever its tpgt (a portal typed by hand carries tpgt 1).
    None when there is none. ConfigError if the record is invalid."""
    if not valid_iscsi_name(target):
        return None
    try:
        key = record_portal(portal)
    except (ConfigError, AttributeError, TypeError):
        return None
    if db.exists(target, key):
        return db.get(target, key, strict=False)
    same = [r for r in db.list_nodes(target, strict=False)
            if r.portal.host == key.host and r.portal.port == key.port]
    if len(same) == 1:
        return same[0]
    return None


def node_options_from_db(db: NodeDB) -> Callable[[str, Any], NodeOptions | None]:
    """``options(target, portal) -> NodeOptions | None`` for ``Initiator(node_options=...)``.

    None when no record exists for (target, portal): the initiator's own defaults apply.
    A record that exists but is unusable raises ConfigError (with the record's path), so the
    login fails with a clear message instead of going ahead without the configured CHAP.
    """
    def options(target: str, portal: Any) -> NodeOptions | None:
        record = find_record(db, target, portal)
        if record is None:
            return None
        where = str(db.record_path(record.target, record.portal))
        return node_options_from_settings(record.settings, where)

    return options
