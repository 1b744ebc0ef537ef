"""SendTargets discovery, the text part (RFC 7143 §13.3 and Appendix C).

Owns: the SendTargets request keys, and parsing of the answer (`TargetName=` lines each
followed by their `TargetAddress=host:port,tpgt` lines) into `DiscoveredTarget` values. Names
and addresses are checked by the rules of `iscsifs.core.names`.

Knows nothing of sessions, PDUs or I/O: `iscsifs.net.discovery` runs the discovery session and
hands the decoded pairs here. Names from a target are untrusted (they end up as file names
and node-record paths): invalid ones are dropped with a warning, never passed on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from iscsifs.core.names import (MAX_ADDRESS_LENGTH, Portal, parse_portal, printable,
                                valid_iscsi_name)
from iscsifs.errors import RemoteProtocolError

log = logging.getLogger(__name__)

# What a discovery session offers as MaxRecvDataSegmentLength (open-iscsi's default for
# discovery.sendtargets.iscsi.MaxRecvDataSegmentLength)
DISCOVERY_MAX_RECV = 32768


@dataclass(frozen=True)
class DiscoveredTarget:
    """One target from a SendTargets answer. An empty ``portals`` tuple means the target
    gave no TargetAddress: it is reachable through the portal discovery ran on (Appendix C)."""

    name: str
    portals: tuple[Portal, ...]


def sendtargets_request(target: str = "All") -> list[tuple[str, str]]:
    """The Text Request keys asking for targets (RFC 7143 §13.3): ``SendTargets=All`` on a
    discovery session, or a target name / empty value on a normal session."""
    return [("SendTargets", target)]


def split_sendtargets(pairs: Iterable[tuple[str, str]]
                      ) -> tuple[list[DiscoveredTarget], list[str]]:
    """Parse a SendTargets answer; return (targets, rejected), where ``rejected`` describes
    every entry dropped because its name or address was invalid (for the log; printable).

    RemoteProtocolError only for a broken structure: a TargetAddress before any TargetName.
    """
    order: list[str] = []
    portals: dict[str, list[Portal]] = {}
    rejected: list[str] = []
    current: str | None = None      # None before the first TargetName
    current_valid = False
    for key, value in pairs:
        if key == "TargetName":
            current = value
            current_valid = valid_iscsi_name(value)
            if not current_valid:
                rejected.append(f"invalid target name {printable(value)}")
                continue
            if value not in portals:
                order.append(value)
                portals[value] = []
        elif key == "TargetAddress":
            if current is None:
                raise RemoteProtocolError("SendTargets answer has a TargetAddress before "
                                          "any TargetName")
            if not current_valid:
                continue
            try:
                if len(value.encode("utf-8", "surrogatepass")) > MAX_ADDRESS_LENGTH:
                    raise ValueError("address too long")
                portal = parse_portal(value)
            except ValueError:
                rejected.append(f"invalid address {printable(value)} for {current}")
                continue
            if portal not in portals[current]:
                portals[current].append(portal)
        else:
            log.debug("ignoring %s in SendTargets answer", key)
    targets = [DiscoveredTarget(name, tuple(portals[name])) for name in order]
    return targets, rejected


def parse_sendtargets(pairs: Iterable[tuple[str, str]]) -> list[DiscoveredTarget]:
    """Parse a SendTargets answer; invalid names and addresses are logged and dropped."""
    targets, rejected = split_sendtargets(pairs)
    for what in rejected:
        log.warning("discovery: dropping %s", what)
    return targets
