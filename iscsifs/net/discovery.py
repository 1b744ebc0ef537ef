"""SendTargets discovery over a short-lived discovery session (RFC 7143 §4.3, Appendix C)."""

from __future__ import annotations

import logging

import trio

from ..core.chap import ChapCredentials
from ..core.discovery import (DISCOVERY_MAX_RECV, DiscoveredTarget, parse_sendtargets,
                              sendtargets_request)
from ..core.names import Portal
from ..core.keys import LoginParams
from .session import Session, Timeouts
from .transport import Connector, open_tcp
from .util import unwrap_group

log = logging.getLogger(__name__)


async def discover(portal: Portal, *, initiator_name: str, chap: ChapCredentials | None = None,
                   timeouts: Timeouts | None = None, params: LoginParams | None = None,
                   initiator_alias: str | None = None,
                   connector: Connector = open_tcp) -> list[DiscoveredTarget]:
    """Log in to ``portal`` as a discovery session, ask ``SendTargets=All``, log out.
    ``connector`` makes the TCP connection (``transport.tcp_connector``: a source address)."""
    timeouts = timeouts or Timeouts()
    if params is None:
        params = LoginParams(max_recv_data_segment_length=DISCOVERY_MAX_RECV)
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            session = await Session.connect(portal, None, initiator_name=initiator_name,
                                            nursery=nursery, params=params, chap=chap,
                                            timeouts=timeouts, recover=False,
                                            initiator_alias=initiator_alias,
                                            connector=connector)
            try:
                pairs = await session.text(sendtargets_request())
            finally:
                await session.close()
    # a target listed without TargetAddress is reached through the portal we asked (§C)
    targets = [t if t.portals else DiscoveredTarget(t.name, (portal,))
               for t in parse_sendtargets(pairs)]
    log.info("discovery at %s:%d found %d target(s)", portal.host, portal.port, len(targets))
    return targets
