"""The node and discovery record database, in open-iscsi's layout::

    <config_dir>/iscsid.conf                                  (optional global defaults)
    <config_dir>/nodes/<target>/<addr>,<port>,<tpgt>/default
    <config_dir>/send_targets/<addr>,<port>/st_config

Owns: ``NodeDB`` (records created, read, updated and deleted, SendTargets answers recorded),
``NodeRecord``, and where a record lives (``record_portal``: the ``core.names.Portal`` it is
kept under; ``record_path``). Names and addresses that came from a target are untrusted: they
are validated before being used as path components. Files holding secrets are written
atomically with mode 0600.

Must not know: sockets, trio, pyfuse3, logins.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iscsifs.config.conffile import atomic_write, read_conf, render_record
from iscsifs.config.keys import KNOWN_KEYS, is_secret_key, validate_host, validate_iscsi_name, validate_key
from iscsifs.config.locations import OPEN_ISCSI_DIR
from iscsifs.config.settings import DiscoverySettings, NodeSettings
from iscsifs.core.chap import ChapCredentials
from iscsifs.core.names import (DEFAULT_PORT, DEFAULT_TPGT, Portal, host_port,
                                iscsi_name_problem, printable, valid_iscsi_name)
from iscsifs.errors import ConfigError


def _validate_port(port: object) -> int:
    try:
        number = int(port)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"invalid port {printable(port)}") from None
    if not 0 < number < 65536 or isinstance(port, bool):
        raise ConfigError(f"invalid port {printable(port)}")
    return number


def _validate_tpgt(tpgt: object) -> int:
    try:
        number = int(tpgt)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"invalid target portal group tag {printable(tpgt)}") from None
    if not 0 <= number < 65536:
        raise ConfigError(f"invalid target portal group tag {printable(tpgt)}")
    return number


def record_portal(portal: Any) -> Portal:
    """The ``Portal`` a record is kept under: ``portal`` itself, any object with .host/.port/
    .tpgt, or a ``(host, port[, tpgt])`` tuple (a record directory's name, split). ConfigError
    naming what is wrong (the host passes ``core.names.check_host``, the one host rule)."""
    if isinstance(portal, Portal):
        return portal
    if isinstance(portal, tuple) and not hasattr(portal, "host"):
        host = portal[0] if portal else None
        port = portal[1] if len(portal) > 1 else DEFAULT_PORT
        tpgt = portal[2] if len(portal) > 2 else DEFAULT_TPGT
    else:
        host = portal.host
        port = getattr(portal, "port", DEFAULT_PORT)
        tpgt = getattr(portal, "tpgt", DEFAULT_TPGT)
    return Portal(validate_host(host), _validate_port(port), _validate_tpgt(tpgt))


def record_dirname(portal: Portal) -> str:
    """open-iscsi's directory name of a record's portal: ``10.0.0.5,3260,1`` /
    ``fe80::1,3260,1``."""
    return f"{portal.host},{portal.port},{portal.tpgt}"


def _discovery_portal(portal: Any) -> tuple[str, int]:
    if isinstance(portal, tuple) and not hasattr(portal, "host"):
        host, port = portal[0], (portal[1] if len(portal) > 1 else DEFAULT_PORT)
    else:
        host, port = portal.host, getattr(portal, "port", DEFAULT_PORT)
    return validate_host(host), _validate_port(port)

_IDENTITY_KEYS = ("node.name", "node.tpgt", "node.conn[0].address", "node.conn[0].port")
_DISCOVERY_IDENTITY_KEYS = ("discovery.sendtargets.address", "discovery.sendtargets.port",
                            "discovery.type")


@dataclass(frozen=True)
class NodeRecord:
    """One node record: a target reachable at one portal, and its settings."""

    target: str
    portal: Portal
    settings: NodeSettings
    discovery_address: str | None = None
    discovery_port: int | None = None
    discovery_type: str = "static"
    keys: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __str__(self) -> str:          # iscsiadm -m node output line
        return f"{self.portal} {self.target}"


@dataclass
class DiscoveryUpdate:
    """What record_discovery did: records now on disk for the reported targets, the ones it
    created, and messages about names/addresses it refused (never used as paths)."""

    records: list[NodeRecord] = field(default_factory=list)
    added: list[NodeRecord] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _targets_of(targets: Iterable[Any]) -> list[tuple[object, list[Any]]]:
    out = []
    for item in targets:
        if hasattr(item, "name") and hasattr(item, "portals"):
            out.append((item.name, list(item.portals)))
        else:
            name, portals = item
            out.append((name, list(portals)))
    return out


class NodeDB:
    """Node and discovery records under ``config_dir`` in open-iscsi's layout.

    Defaults for new records: built-in open-iscsi defaults, overridden by
    ``<open_iscsi_dir>/iscsid.conf`` when ``use_open_iscsi`` (and readable), overridden by
    ``<config_dir>/iscsid.conf``. ``warnings`` collects messages for the caller to log
    (unknown keys, weak secrets, unreadable records skipped by list_nodes).
    """

    def __init__(self, config_dir: str | os.PathLike[str], *, use_open_iscsi: bool = False,
                 open_iscsi_dir: str | os.PathLike[str] = OPEN_ISCSI_DIR):
        self.config_dir = Path(config_dir)
        self.nodes_dir = self.config_dir / "nodes"
        self.send_targets_dir = self.config_dir / "send_targets"
        self.warnings: list[str] = []
        self.defaults: dict[str, str] = {}
        self.defaults.update(NodeSettings().to_keys())
        self.defaults.update(DiscoverySettings().to_keys())
        candidates = []
        if use_open_iscsi:
            candidates.append(Path(open_iscsi_dir) / "iscsid.conf")
        candidates.append(self.config_dir / "iscsid.conf")
        self.sources: list[Path] = []
        for source in candidates:
            if source.is_file() and os.access(source, os.R_OK):
                conf = read_conf(source)
                self.warnings.extend(conf.warnings)
                self.defaults.update(conf)
                self.sources.append(source)
        # Fail early (naming the files) if the defaults make no sense together.
        for cls in (NodeSettings, DiscoverySettings):
            try:
                cls.from_keys(self.defaults)
            except ConfigError as exc:
                where = " + ".join(str(s) for s in self.sources) or None
                raise ConfigError(f"defaults: {exc}", where) from None

    # -- paths -------------------------------------------------------------------------------
    def _node_dir(self, target: str) -> Path:
        return self.nodes_dir / validate_iscsi_name(target)

    def record_path(self, target: str, portal: Portal) -> Path:
        """Where the record of ``target`` at ``portal`` (a ``record_portal``) is kept."""
        return self._node_dir(target) / record_dirname(portal) / "default"

    def _st_path(self, host: str, port: int) -> Path:
        return self.send_targets_dir / f"{host},{port}" / "st_config"

    # -- reading -----------------------------------------------------------------------------
    def _load(self, target: str, portal: Portal, strict: bool = True) -> NodeRecord:
        path = self.record_path(target, portal)
        conf = read_conf(path)
        self.warnings.extend(conf.warnings)
        keys = dict(self.defaults)
        keys.update(conf)
        # The path is the identity (as for open-iscsi); keep the keys consistent with it.
        keys.update({"node.name": target, "node.tpgt": str(portal.tpgt),
                     "node.conn[0].address": portal.host, "node.conn[0].port": str(portal.port)})
        try:
            settings = NodeSettings.from_keys(keys, strict=strict)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(path)) from None
        d_addr = keys.get("node.discovery_address") or None
        d_port = keys.get("node.discovery_port")
        return NodeRecord(target, portal, settings,
                          discovery_address=d_addr,
                          discovery_port=int(d_port) if d_addr and d_port else None,
                          discovery_type=keys.get("node.discovery_type") or "static",
                          keys={k: v for k, v in keys.items() if not k.startswith("discovery.")})

    def get(self, target: str, portal: Any, *, strict: bool = True) -> NodeRecord:
        """The record for (target, portal); ConfigError if there is none or it is invalid.
        ``strict=False`` returns a record with incomplete CHAP settings too (``auth`` None,
        ``settings.auth_error`` set): for showing and editing, never for logging in."""
        key = record_portal(portal)
        path = self.record_path(target, key)
        if not path.is_file():
            raise ConfigError(f"no record for {target} at {key}")
        return self._load(target, key, strict)

    def exists(self, target: str, portal: Any) -> bool:
        return self.record_path(target, record_portal(portal)).is_file()

    def _scan(self) -> list[tuple[str, Portal]]:
        found = []
        if not self.nodes_dir.is_dir():
            return found
        for tdir in sorted(self.nodes_dir.iterdir()):
            if not valid_iscsi_name(tdir.name) or not tdir.is_dir():
                self.warnings.append(f"{tdir}: not a node record directory, skipped")
                continue
            for pdir in sorted(tdir.iterdir()):
                try:
                    host, port, tpgt = pdir.name.rsplit(",", 2)
                    portal = record_portal((host, port, tpgt))
                except (ValueError, ConfigError):
                    self.warnings.append(f"{pdir}: not a portal directory, skipped")
                    continue
                if (pdir / "default").is_file():
                    found.append((tdir.name, portal))
        return found

    def list_nodes(self, target: str | None = None, *, strict: bool = True) -> list[NodeRecord]:
        """All valid records (optionally of one target); invalid ones are skipped with a
        warning in ``self.warnings``. ``strict`` as for get()."""
        records = []
        for name, portal in self._scan():
            if target is not None and name != target:
                continue
            try:
                records.append(self._load(name, portal, strict))
            except ConfigError as exc:
                self.warnings.append(f"record skipped: {exc}")
        return records

    # -- writing -----------------------------------------------------------------------------
    def _write(self, path: Path, keys: Mapping[str, str]) -> None:
        atomic_write(path, render_record(keys, hide_secrets=False), 0o600)

    def _node_keys(self, target: str, portal: Portal, settings: NodeSettings | None,
                   discovered_from: tuple[str, int] | None,
                   discovery_type: str = "send_targets") -> dict[str, str]:
        keys = {k: v for k, v in self.defaults.items() if k.startswith(("node.", "iface."))}
        if settings is not None:
            keys.update(settings.to_keys())
        keys.update({"node.name": target, "node.tpgt": str(portal.tpgt),
                     "node.conn[0].address": portal.host,
                     "node.conn[0].port": str(portal.port)})
        if discovered_from is None:
            keys.update({"node.discovery_address": "", "node.discovery_port": "0",
                         "node.discovery_type": "static"})
        else:
            keys.update({"node.discovery_address": discovered_from[0],
                         "node.discovery_port": str(discovered_from[1]),
                         "node.discovery_type": discovery_type})
        return keys

    def add(self, target: str, portal: Any, settings: NodeSettings | None = None,
            discovered_from: Any = None, *, overwrite: bool = False,
            discovery_type: str = "send_targets") -> NodeRecord:
        """Create a record (``iscsiadm -m node -o new``). An existing record is returned
        unchanged unless ``overwrite``. ``discovered_from`` is the SendTargets portal (or
        the iSNS server, with ``discovery_type="isns"``) that reported it."""
        validate_iscsi_name(target)
        key = record_portal(portal)
        path = self.record_path(target, key)
        if path.is_file() and not overwrite:
            return self._load(target, key)
        source = None if discovered_from is None else _discovery_portal(discovered_from)
        keys = self._node_keys(target, key, settings, source, discovery_type)
        try:
            NodeSettings.from_keys(keys)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(path)) from None
        self._write(path, keys)
        return self._load(target, key)

    def update(self, target: str, portal: Any, key: str, value: str) -> NodeRecord:
        """Set one key of a record (``iscsiadm -m node -o update -n KEY -v VALUE``).

        The value is validated; equal CHAP secrets are refused. CHAP credentials may be left
        incomplete between updates (username now, password next): the returned record then
        has ``settings.auth_error`` set and the record can't be used to log in until fixed."""
        record = self.get(target, portal, strict=False)
        path = self.record_path(target, record.portal)
        value = _checked_update(key, value, "node", _IDENTITY_KEYS, path)
        on_disk = dict(read_conf(path))
        on_disk[key] = value
        merged = dict(record.keys)
        merged[key] = value
        try:
            NodeSettings.from_keys(merged, strict=False)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(path)) from None
        self._write(path, on_disk)
        return self._load(target, record.portal, strict=False)

    def delete(self, target: str, portal: Any = None) -> int:
        """Delete the record of (target, portal), or all of target's records. Returns how many
        were deleted (0: none found)."""
        tdir = self._node_dir(target)
        if portal is None:
            portals = [p for name, p in self._scan() if name == target]
        else:
            portals = [record_portal(portal)]
        count = 0
        for key in portals:
            pdir = tdir / record_dirname(key)
            if (pdir / "default").is_file():
                shutil.rmtree(pdir)
                count += 1
        _rmdir_if_empty(tdir)
        return count

    # -- discovery ---------------------------------------------------------------------------
    def list_discovery(self) -> list[tuple[str, int]]:
        """(host, port) of every SendTargets discovery record."""
        found = []
        if not self.send_targets_dir.is_dir():
            return found
        for d in sorted(self.send_targets_dir.iterdir()):
            try:
                host, port = d.name.rsplit(",", 1)
                found.append(_discovery_portal((host, port)))
            except (ValueError, ConfigError):
                continue
            if not (d / "st_config").is_file():
                found.pop()
        return found

    def discovery_keys(self, host: str, port: int) -> dict[str, str]:
        """The keys of the discovery record of ``host``/``port``: its st_config over the
        defaults (secrets included: for writing, or for render_record(hide_secrets=True))."""
        keys = {k: v for k, v in self.defaults.items() if k.startswith("discovery.")}
        path = self._st_path(host, port)
        if path.is_file():
            conf = read_conf(path)
            self.warnings.extend(conf.warnings)
            keys.update(conf)
        keys.update({"discovery.type": "sendtargets", "discovery.sendtargets.address": host,
                     "discovery.sendtargets.port": str(port)})
        return keys

    def discovery_settings(self, portal: Any, *, strict: bool = True) -> DiscoverySettings:
        """Settings for discovery at ``portal`` (its st_config, else the defaults)."""
        host, port = _discovery_portal(portal)
        try:
            return DiscoverySettings.from_keys(self.discovery_keys(host, port), strict=strict)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(self._st_path(host, port))) from None

    def discovery_chap(self, portal: Any) -> ChapCredentials | None:
        """CHAP credentials for a discovery session at ``portal`` (None: no authentication).
        ConfigError if they are configured but incomplete or invalid."""
        return self.discovery_settings(portal).auth

    def update_discovery(self, portal: Any, key: str, value: str) -> DiscoverySettings:
        """Set one key of a discovery record (created with the defaults if missing)."""
        host, port = _discovery_portal(portal)
        path = self._st_path(host, port)
        value = _checked_update(key, value, "discovery", _DISCOVERY_IDENTITY_KEYS, path)
        keys = self.discovery_keys(host, port)
        keys[key] = value
        try:
            settings = DiscoverySettings.from_keys(keys, strict=False)
        except ConfigError as exc:
            raise ConfigError(str(exc), str(path)) from None
        self._write(path, keys)
        return settings

    def record_discovery(self, portal: Any, targets: Iterable[Any]) -> DiscoveryUpdate:
        """Store a SendTargets answer from ``portal``: writes its st_config if missing and adds
        a record for every (target, portal) not yet known. Existing records - and so per-node
        settings - are never touched. Invalid names or addresses are refused (``rejected``)."""
        host, port = _discovery_portal(portal)
        st = self._st_path(host, port)
        if not st.is_file():
            self._write(st, self.discovery_keys(host, port))
        return self._record_targets((host, port), targets, "send_targets")

    def record_isns(self, server: Any, targets: Iterable[Any]) -> DiscoveryUpdate:
        """Store an iSNS answer from ``server`` (``iscsiadm -m discovery -t isns``): a record
        (``node.discovery_type = isns``) for every (target, portal) not yet known, as
        ``record_discovery`` does; no discovery record is kept for the server."""
        return self._record_targets(_discovery_portal(server), targets, "isns")

    def _record_targets(self, source: tuple[str, int], targets: Iterable[Any],
                        discovery_type: str) -> DiscoveryUpdate:
        host, port = source
        result = DiscoveryUpdate()
        for name, portals in _targets_of(targets):
            if not valid_iscsi_name(name):
                result.rejected.append(
                    f"target name {printable(name)} from {host_port(host, port)} refused: "
                    f"{iscsi_name_problem(name)}")
                continue
            assert isinstance(name, str)
            for p in portals:
                try:
                    key = record_portal(p)
                except (ConfigError, AttributeError, TypeError) as exc:
                    result.rejected.append(f"portal of {name} refused: {exc}")
                    continue
                existed = self.record_path(name, key).is_file()
                try:
                    record = self.add(name, key, discovered_from=(host, port),
                                      discovery_type=discovery_type)
                except ConfigError as exc:
                    result.rejected.append(f"record for {name} at {key} unusable: {exc}")
                    continue
                result.records.append(record)
                if not existed:
                    result.added.append(record)
        return result

    def _discovered_from(self, host: str, port: int) -> list[NodeRecord]:
        return [r for r in self.list_nodes(strict=False)
                if r.discovery_type == "send_targets" and r.discovery_address == host
                and r.discovery_port == port]

    def delete_discovery(self, portal: Any) -> int:
        """``iscsiadm -m discovery -p P -o delete``: drop P's st_config and the node records
        discovered from it. Returns the number of node records deleted."""
        host, port = _discovery_portal(portal)
        count = 0
        for record in self._discovered_from(host, port):
            count += self.delete(record.target, record.portal)
        st_dir = self._st_path(host, port).parent
        if st_dir.is_dir():
            shutil.rmtree(st_dir)
        return count


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _checked_update(key: str, value: str, kind: str, identity_keys, path) -> str:
    """The validated value of an update of ``key`` in a ``kind`` (node / discovery) record;
    ConfigError for a key that names the record, an unknown key or a bad value (a secret's
    value is never shown)."""
    if key in identity_keys:
        raise ConfigError(f"{key} cannot be changed (it names the record)", str(path))
    prefixes = (kind + ".", "iface.") if kind == "node" else (kind + ".",)
    if not key.startswith(prefixes) or key not in KNOWN_KEYS:
        raise ConfigError(f"unknown {kind} key {printable(key)}", str(path))
    try:
        return validate_key(key, value)
    except ValueError as exc:
        shown = "" if is_secret_key(key) else f" {printable(value)}"
        raise ConfigError(f"bad value{shown} for {key}: {exc}", str(path)) from None
