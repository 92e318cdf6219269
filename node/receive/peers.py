"""Association control: who may open an association with this node.

pynetdicom's own ``require_calling_aet`` knows AE titles only; a peer here
may also be bound to a host, to DICOM TLS and to a client certificate (so
that an AE title alone, which anyone can send, no longer gets in), and the
table must change on a configuration reload without touching associations
already running. So the decision is made by :meth:`PeerTable.rejection`
when an association is requested.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

from cryptography import x509

from config import CertificateBinding, Peer, SegnodeConfig
from node.tls import PeerCertificate

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
class PeerRule:
    """Where one calling AE may connect from (None: anywhere), whether only
    over TLS, and the client certificate it must present (subject or
    fingerprint), if bound to one."""

    addresses: frozenset[str] | None
    requires_tls: bool
    subject: x509.Name | None
    sha256: str | None

    @classmethod
    def from_peer(cls, peer: Peer) -> PeerRule:
        binding: CertificateBinding | None = peer.certificate
        subject = None if binding is None or binding.subject is None else binding.subject
        return cls(
            None if peer.host is None else _resolve(peer.host),
            peer.requires_tls,
            None if subject is None else x509.Name.from_rfc4514_string(subject),
            None if binding is None else binding.sha256,
        )

    def refuses(self, certificate: PeerCertificate | None) -> str | None:
        """Why a connection with `certificate` (None: plain TCP) is refused, or None."""
        if certificate is None:
            return "must use DICOM TLS" if self.requires_tls else None
        if self.sha256 is not None and certificate.sha256 != self.sha256:
            return f"presented certificate {certificate.describe()}, not the one bound to it (sha256)"
        if self.subject is not None and certificate.subject != self.subject:
            return (f"presented certificate {certificate.describe()}, not the one bound to it "
                    f"({self.subject.rfc4514_string()})")
        return None


@dataclass(frozen=True)
class PeerTable:
    """The called AE title and the allowed calling AE titles with their rules."""

    called_ae_title: str
    peers: dict[str, PeerRule]

    @classmethod
    def from_config(cls, config: SegnodeConfig) -> PeerTable:
        return cls(config.node.ae_title, {peer.ae_title: PeerRule.from_peer(peer) for peer in config.peers})

    def rejection(self, calling_ae: str, called_ae: str, address: str,
                  certificate: PeerCertificate | None) -> Rejection | None:
        """Return the A-ASSOCIATE-RJ parameters and a log reason, or None to
        accept. `certificate` is the client's on a TLS connection, else None."""
        calling = calling_ae.strip()
        if called_ae.strip() != self.called_ae_title:
            return REJECT_CALLED_AE_NOT_RECOGNIZED, (
                f"called AE {called_ae.strip()!r} is not this node's {self.called_ae_title!r}"
            )
        rule = self.peers.get(calling)
        if rule is None:
            return REJECT_CALLING_AE_NOT_RECOGNIZED, f"calling AE {calling!r} is not a configured peer"
        if rule.addresses is not None and normalise_address(address) not in rule.addresses:
            return REJECT_CALLING_AE_NOT_RECOGNIZED, (
                f"calling AE {calling!r} is not allowed from {address}"
            )
        refusal = rule.refuses(certificate)
        if refusal is not None:
            return REJECT_CALLING_AE_NOT_RECOGNIZED, f"calling AE {calling!r} {refusal}"
        return None
