"""What the config dir gives one mount: the initiator name, the defaults of iscsid.conf, the
node records (per-target login settings), and the discovery records.

Precedence for one login: mount options > the target's node record > iscsid.conf > built-in
defaults. ``config_dir=`` (default ``config.locations.default_config_dir()``: our own state,
never open-iscsi's /etc/iscsi) holds initiatorname.iscsi (generated and saved on the first
mount), iscsid.conf and the records; ``open_iscsi`` also reads /etc/iscsi/iscsid.conf and
/etc/iscsi/initiatorname.iscsi under ours.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from iscsifs.config import locations
from iscsifs.config.initiatorname import choose_initiator_name
from iscsifs.config.nodedb import NodeDB
from iscsifs.config.settings import NodeSettings
from iscsifs.core.chap import ChapCredentials
from iscsifs.core.names import Portal
from iscsifs.errors import EXIT_INVALID_ARGUMENT, ConfigError, QuietError
from iscsifs.fs.records import NodeRecords
from iscsifs.initiator import NodeOptions
from iscsifs.mount.options import MountOptions
from iscsifs.nodeopts import node_options_from_db, node_options_from_settings

log = logging.getLogger(__name__)


def resolve_initiator_name(opts: MountOptions) -> str:
    """initiator_name= > CONFIG_DIR/initiatorname.iscsi > (open_iscsi) /etc/iscsi's > a new
    name, generated and saved in CONFIG_DIR/initiatorname.iscsi (reused by later mounts; a
    warning in ``opts.warnings`` says so)."""
    if opts.initiator_name is None and opts.config_dir_given \
            and not os.path.isdir(opts.config_dir):
        raise QuietError(f"config_dir {opts.config_dir} is not a directory",
                         EXIT_INVALID_ARGUMENT)
    name, note = choose_initiator_name(
        opts.initiator_name, opts.config_dir, option="initiator_name",
        open_iscsi_dir=locations.OPEN_ISCSI_DIR if opts.open_iscsi else None)
    if note is not None:
        opts.warnings.append(note)
    return name


@dataclass
class MountConfig:
    """What the config dir gives one mount (see ``load_config``)."""

    db: NodeDB
    records: NodeRecords
    default_options: NodeOptions          # iscsid.conf, with the mount's options on top
    node_options: Callable[[str, Portal], NodeOptions | None]
    discovery_chap_for: Callable[[Portal], ChapCredentials | None]


def _override(options: NodeOptions, opts: MountOptions) -> NodeOptions:
    """NodeOptions with the mount's explicit options applied on top."""
    timeouts, params = options.timeouts, options.login_params
    if opts.timeouts and timeouts is not None:
        timeouts = dataclasses.replace(timeouts, **opts.timeouts)
    digests = {k: v for k, v in (("header_digest", opts.header_digest),
                                 ("data_digest", opts.data_digest)) if v is not None}
    if digests and params is not None:
        params = dataclasses.replace(params, **digests)
    source = opts.source_address or options.source_address
    return dataclasses.replace(options, timeouts=timeouts, login_params=params,
                               source_address=source)


def load_config(opts: MountOptions) -> MountConfig:
    """Read CONFIG_DIR (and /etc/iscsi with open_iscsi). QuietError (exit 7) if it's bad.
    Warnings (unknown keys, weak secrets: never the secret itself) are logged."""
    try:
        db = NodeDB(opts.config_dir, use_open_iscsi=opts.open_iscsi,
                    open_iscsi_dir=locations.OPEN_ISCSI_DIR)
        where = " + ".join(str(s) for s in db.sources) or None
        settings = NodeSettings.from_keys(db.defaults, strict=False)
        warnings = list(db.warnings) + settings.warnings
        db.warnings.clear()
        default_options = _override(node_options_from_settings(settings, where), opts)
        for portal in opts.portals:      # fail now, not at the first listing
            dsettings = db.discovery_settings(portal, strict=False)
            warnings += [w for w in dsettings.warnings if w not in warnings]
            dsettings.check()
    except ConfigError as exc:
        raise QuietError(str(exc), EXIT_INVALID_ARGUMENT) from None
    except OSError as exc:
        raise QuietError(f"{opts.config_dir}: {exc.strerror or exc}",
                         EXIT_INVALID_ARGUMENT) from None
    for warning in warnings:
        log.warning("%s", warning)
    from_db = node_options_from_db(db)

    def node_options(target: str, portal: Portal) -> NodeOptions | None:
        found = from_db(target, portal)
        return None if found is None else _override(found, opts)

    return MountConfig(db=db, records=NodeRecords(db, nodiscovery=opts.nodiscovery),
                       default_options=default_options, node_options=node_options,
                       discovery_chap_for=db.discovery_chap)
