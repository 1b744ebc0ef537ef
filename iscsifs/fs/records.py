"""Node records as the filesystem sees them: which targets a portal directory lists besides the
SendTargets answer, and what mkdir / rmdir do to the records.

Owns: the glue between the filesystem and ``iscsifs.config.nodedb.NodeDB`` (open-iscsi's layout under
the mount's config dir). Synchronous and small: each call reads or writes a few small files.

Must not know: pyfuse3, trio, sessions.

Semantics (documented in docs/tree.md):
- a ``targets/`` listing is the SendTargets answer plus the *static* records at that portal
  (hand-added: ``mkdir`` or ``iscsifs node -o new``); with the ``nodiscovery`` mount option it
  is every record at that portal and SendTargets is never sent;
- records discovered earlier whose target the portal no longer reports are not listed (they
  stay on disk with their settings, like open-iscsi's, until deleted);
- every SendTargets answer is recorded (``NodeDB.record_discovery``): new records get the
  defaults of iscsid.conf, existing records - and their per-node settings - are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from iscsifs.config.nodedb import NodeDB, NodeRecord
from iscsifs.core.discovery import DiscoveredTarget
from iscsifs.core.names import Portal, valid_iscsi_name

log = logging.getLogger(__name__)


class NodeRecords:
    def __init__(self, db: NodeDB, *, nodiscovery: bool = False):
        self.db = db
        self.nodiscovery = nodiscovery
        # (host, port) -> targets removed with rmdir: not listed and not recorded again by
        # discovery until an explicit rediscovery (portals/<p>/rescan) or the next mount
        self._hidden: dict[tuple[str, int], set[str]] = {}

    def hidden(self, portal: Portal) -> set[str]:
        return self._hidden.setdefault((portal.host, portal.port), set())

    def unhide_all(self, portal: Portal) -> None:
        self._hidden.pop((portal.host, portal.port), None)

    def flush_warnings(self) -> None:
        """Log (once) what the NodeDB collected: unknown keys, skipped records. Never secrets."""
        for message in self.db.warnings:
            log.warning("%s", message)
        self.db.warnings.clear()

    def _at(self, portal: Portal) -> list[NodeRecord]:
        records = [r for r in self.db.list_nodes(strict=False)
                   if r.portal.host == portal.host and r.portal.port == portal.port]
        self.flush_warnings()
        return records

    def targets_at(self, portal: Portal, *, static_only: bool) -> list[str]:
        """Target names with a record at portal's host and port (hand-added ones only, or all)."""
        names: list[str] = []
        for record in self._at(portal):
            if static_only and record.discovery_type != "static":
                continue
            if record.target not in names:
                names.append(record.target)
        return names

    def automatic_at(self, portal: Portal) -> list[str]:
        """Targets with a record at portal's host and port whose ``node.startup`` is
        ``automatic``: open-iscsi logs them in at boot, the mount (``login=automatic``) when
        it starts."""
        names: list[str] = []
        for record in self._at(portal):
            if record.settings.startup == "automatic" and record.target not in names:
                names.append(record.target)
        return names

    def has_record(self, target: str, portal: Portal) -> bool:
        return any(r.target == target for r in self._at(portal))

    def add_static(self, target: str, portal: Portal) -> None:
        """``iscsiadm -m node -T target -p portal -o new`` (ConfigError for a bad name)."""
        if self.has_record(target, portal):
            return
        record = self.db.add(target, portal)
        log.info("node record added: %s", record)

    def delete(self, target: str, portal: Portal) -> int:
        """Delete target's records at portal's host and port (any TPGT)."""
        count = 0
        for record in self._at(portal):
            if record.target == target:
                count += self.db.delete(record.target, record.portal)
        if count:
            log.info("node record(s) deleted: %s at %s:%d", target, portal.host, portal.port)
        return count

    def delete_discovery(self, portal: Portal) -> int:
        """``iscsiadm -m discovery -p portal -o delete``: st_config + discovered records."""
        count = self.db.delete_discovery((portal.host, portal.port))
        log.info("discovery records of %s:%d deleted (%d node record(s))", portal.host,
                 portal.port, count)
        return count

    def record_discovery(self, portal: Portal, targets: Iterable[DiscoveredTarget]) -> None:
        hidden = self.hidden(portal)
        update = self.db.record_discovery((portal.host, portal.port),
                                          [(t.name, list(t.portals)) for t in targets
                                           if valid_iscsi_name(t.name) and t.name not in hidden])
        for message in update.rejected:
            log.warning("%s", message)
        for record in update.added:
            log.info("node record added by discovery: %s", record)
        self.flush_warnings()
