"""Association control: who may open an association with this node.

pynetdicom's own ``require_calling_aet`` knows AE titles only; a peer here
may also be bound to a host, and the table must change on a configuration
reload without touching associations already running. So the decision is
made by :meth:`PeerTable.rejection` when an association is requested.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

from config import SegnodeConfig

LOG = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 section 9.3.4.
REJECT_CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
REJECT_CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)

#: The A-ASSOCIATE-RJ parameters of a refused request and the reason to log.
Rejection = tuple[tuple[int, int, int], str]


def normalise_address(address: str) -> str:
    """``::ffff:10.0.0.1`` and ``10.0.0.1`` are the same peer."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def _resolve(host: str) -> frozenset[str]:
    """All addresses of ``host``; an unresolvable name matches nothing."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        LOG.warning("peer host %r cannot be resolved (%s); it will match no connection", host, exc)
        return frozenset()
    return frozenset(normalise_address(str(info[4][0])) for info in infos)


@dataclass(frozen=True)
class PeerTable:
    """The called AE title and the allowed calling AE titles with their addresses.

    ``peers`` maps an AE title to the set of addresses it may connect from,
    or to ``None`` when any address is allowed.
    """

    called_ae_title: str
    peers: dict[str, frozenset[str] | None]

    @classmethod
    def from_config(cls, config: SegnodeConfig) -> PeerTable:
        peers: dict[str, frozenset[str] | None] = {}
        for peer in config.peers:
            peers[peer.ae_title] = None if peer.host is None else _resolve(peer.host)
        return cls(config.node.ae_title, peers)

    def rejection(self, calling_ae: str, called_ae: str, address: str) -> Rejection | None:
        """Return the A-ASSOCIATE-RJ parameters and a log reason, or None to accept."""
        calling = calling_ae.strip()
        if called_ae.strip() != self.called_ae_title:
            return REJECT_CALLED_AE_NOT_RECOGNIZED, (
                f"called AE {called_ae.strip()!r} is not this node's {self.called_ae_title!r}"
            )
        if calling not in self.peers:
            return REJECT_CALLING_AE_NOT_RECOGNIZED, f"calling AE {calling!r} is not a configured peer"
        allowed = self.peers[calling]
        if allowed is not None and normalise_address(address) not in allowed:
            return REJECT_CALLING_AE_NOT_RECOGNIZED, (
                f"calling AE {calling!r} is not allowed from {address}"
            )
        return None
