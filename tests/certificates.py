"""Certificates for the TLS tests, made on the spot: a CA and what it signs.

Real peers (dcmtk, Orthanc) and the node read them as PEM files, as a
hospital's PKI would hand them out. RSA 2048 with SHA-256, which every
BCP 195 peer accepts.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def now() -> datetime.datetime:
    """Validity is counted from when a certificate is made, not from when the
    suite was collected: the expiry tests compare days left to 0.01 day."""
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Credential:
    """A certificate (PEM, the leaf then the issuing CA) and its key (PEM, 0600)."""

    certificate: Path
    key: Path
    subject: str
    sha256: str


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class Authority:
    """A certification authority whose certificate lies at ``certificate``."""

    def __init__(self, folder: Path, name: str = "Test Hospital CA"):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = _key()
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now() - _DAY).not_valid_after(now() + 365 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.certificate = folder / f"{name.replace(' ', '-').lower()}.pem"
        self.certificate.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
              valid_from: datetime.datetime | None = None,
              valid_until: datetime.datetime | None = None) -> Credential:
        """A certificate for a server and client named `common_name`, for `hosts`."""
        key = _key()
        names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h)
                 for h in hosts]
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Hospital"),
                             x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid_from or now() - _DAY).not_valid_after(valid_until or now() + 90 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        stem = self.folder / common_name.replace(" ", "-").lower()
        certificate = stem.with_suffix(".crt")
        certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                                + self._cert.public_bytes(serialization.Encoding.PEM))
        key_path = stem.with_suffix(".key")
        _write_key(key, key_path)
        return Credential(certificate, key_path, subject.rfc4514_string(),
                          cert.fingerprint(hashes.SHA256()).hex())

    def expired(self, common_name: str) -> Credential:
        """A certificate that expired yesterday."""
        return self.issue(common_name, valid_from=now() - 30 * _DAY, valid_until=now() - _DAY)
