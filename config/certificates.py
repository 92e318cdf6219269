"""Checks of the certificate and key files that DICOM TLS names, and their expiry.

A node must learn that a file is missing, unreadable, expired or paired with
the wrong key when its configuration is read (``segnode check-config``, start,
reload), with the field that names it, rather than at the first handshake,
which fails for its peer with nothing in the node's log. Messages name the
file and, for certificates, their subject; never what a key file holds.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

if TYPE_CHECKING:
    from config.schema import SegnodeConfig

#: Fewer days left than this, and the node warns in its log every day.
EXPIRY_WARNING_DAYS: Final = 30

_DAY_SECONDS: Final = 86400.0


class CertificateError(ValueError):
    """A certificate or key file that DICOM TLS cannot use; the message starts with its path."""


@dataclass(frozen=True)
class FileChecks:
    """pydantic's validation context: whether certificate and key files are read.

    ``segnode status`` reads a configuration for its storage folder and may
    run as a user who cannot read the node's key; it reads shape only.
    """

    enabled: bool


def read_file(path: Path) -> bytes:
    """The bytes of a file the configuration names; the error says why not, never what it holds."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such file") from None
    except PermissionError:
        raise CertificateError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise CertificateError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read: {exc.strerror}") from None


def read_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    """The PEM certificates in `path`, in file order (a leaf comes first)."""
    data = read_file(path)
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise CertificateError(f"{path}: holds no PEM certificate") from None


def check_certificates(path: Path, now: datetime.datetime) -> tuple[x509.Certificate, ...]:
    """The certificates in `path`, each of them valid at `now`: an expired
    intermediate or CA breaks the chain as surely as an expired leaf."""
    certificates = read_certificates(path)
    for certificate in certificates:
        subject = certificate.subject.rfc4514_string()
        if certificate.not_valid_after_utc < now:
            raise CertificateError(f"{path}: the certificate {subject} expired on "
                                   f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        if certificate.not_valid_before_utc > now:
            raise CertificateError(f"{path}: the certificate {subject} is not valid before "
                                   f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return certificates


def refuse_readable_by_everyone(path: Path) -> None:
    """A secret (a private key, the research key) that every user may read is refused."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # read_file says why
    if mode & 0o004:
        raise CertificateError(f"{path}: readable by every user; chmod 600 or 640")


def check_private_key(path: Path) -> PrivateKeyTypes:
    """The unencrypted private key in `path`, refused if every user may read it."""
    refuse_readable_by_everyone(path)
    data = read_file(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # what cryptography raises for an encrypted key read without a password
        raise CertificateError(f"{path}: is encrypted; segnode needs it unencrypted, readable by the "
                               "service user only") from None
    except (ValueError, UnsupportedAlgorithm):
        # Not the library's message: it could quote what it failed to parse.
        raise CertificateError(f"{path}: holds no PEM private key segnode can read") from None


def key_matches(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    """Whether `key` is the private half of `certificate`'s public key."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*spki) == certificate.public_key().public_bytes(*spki)


@dataclass(frozen=True)
class CertificateExpiry:
    """When a configured certificate file stops being valid: its leaf's end
    for a certificate, the soonest end for a file of CAs. ``not_valid_after``
    is None, and ``problem`` says why, when the file cannot be read now."""

    field: str
    path: Path
    not_valid_after: datetime.datetime | None
    problem: str | None = None

    def days_left(self, now: datetime.datetime) -> float | None:
        if self.not_valid_after is None:
            return None
        return (self.not_valid_after - now).total_seconds() / _DAY_SECONDS


def _configured(config: SegnodeConfig) -> Iterator[tuple[str, Path | None, bool]]:
    """Each certificate field: its path, its file, whether it holds CAs."""
    tls = config.node.tls
    if tls is not None:
        yield "node.tls.certificate", tls.certificate, False
        yield "node.tls.client_ca", tls.client_ca, True
    for name, destination in config.destinations.items():
        if destination.tls is not None:
            yield f"destinations.{name}.tls.ca", destination.tls.ca, True
            yield f"destinations.{name}.tls.certificate", destination.tls.certificate, False


def certificate_expiries(config: SegnodeConfig) -> tuple[CertificateExpiry, ...]:
    """The expiry of every certificate file `config` names, read now."""
    expiries = []
    for field, path, authorities in _configured(config):
        if path is None:
            continue
        try:
            certificates = read_certificates(path)
        except CertificateError as exc:
            expiries.append(CertificateExpiry(field, path, None, str(exc)))
            continue
        ends = [certificate.not_valid_after_utc for certificate in certificates]
        expiries.append(CertificateExpiry(field, path, min(ends) if authorities else ends[0]))
    return tuple(expiries)
