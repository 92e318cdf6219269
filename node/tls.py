"""TLS contexts of DICOM TLS, and what a peer's certificate says.

The BCP 195 Secure Transport Connection Profile (PS3.15 annex B.9) asks for
TLS 1.2 or newer with the cipher suites BCP 195 (RFC 7525 section 4.2)
recommends: ephemeral (EC)DH key exchange and AES-GCM. TLS 1.3's suites are
all of that kind, so only TLS 1.2's are listed. Both sides verify the other:
the node requires a client certificate chaining to ``node.tls.client_ca``;
towards a destination it verifies the destination's certificate
(``destinations.*.tls``).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass

from cryptography import x509

from config import DestinationTls, NodeTls

#: RFC 7525 section 4.2's suites (and their ECDSA forms), as OpenSSL names them.
BCP195_TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
))


def _profile(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_TLS12_CIPHERS)
    # No renegotiation, no compression: both are attacks' openings (RFC 7525 section 3).
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return context


def server_context(tls: NodeTls) -> ssl.SSLContext:
    """The context of the node's TLS port: its certificate, and client
    certificates required and verified against ``client_ca``.

    Raises
    ------
    OSError, ssl.SSLError
        If a file cannot be read or does not hold what it should (the
        configuration's check has said so already, with the field's path).
    """
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(tls.certificate, tls.key)
    context.load_verify_locations(cafile=tls.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: DestinationTls) -> ssl.SSLContext:
    """The context for sending to a destination over TLS.

    The destination's certificate is verified against ``ca`` (else the
    system's CAs); its host name is checked unless ``verify_hostname`` is
    false. A pinned ``sha256`` is checked after the handshake
    (:func:`peer_certificate`), as Python offers no verify callback.
    """
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if tls.ca is not None:
        context.load_verify_locations(cafile=tls.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = tls.verify_hostname
    if tls.certificate is not None and tls.key is not None:
        context.load_cert_chain(tls.certificate, tls.key)
    return context


def tls_failure(exc: OSError, peer: str) -> str:
    """Why TLS failed, as OpenSSL says it: the verify message of a refused
    certificate ("certificate verify failed: certificate has expired"), the
    alert `peer` ("the client", "the destination") sent, or the error."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        reason = exc.reason.lower().replace("_", " ")
        return f"{peer} sent {reason}" if " alert " in reason else reason
    return exc.strerror or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class PeerCertificate:
    """The certificate a TLS peer presented: its subject (RFC 4514) and
    SHA-256 fingerprint (lowercase hex), as ``peers[].certificate`` names them."""

    subject: x509.Name
    sha256: str

    @classmethod
    def from_der(cls, der: bytes) -> PeerCertificate:
        return cls(x509.load_der_x509_certificate(der).subject, hashlib.sha256(der).hexdigest())

    def describe(self) -> str:
        return f"{self.subject.rfc4514_string()} (sha256 {self.sha256})"


def peer_certificate(sock: ssl.SSLSocket) -> PeerCertificate | None:
    """What the peer of a finished handshake presented; None if nothing."""
    der = sock.getpeercert(binary_form=True)
    return None if der is None else PeerCertificate.from_der(der)
