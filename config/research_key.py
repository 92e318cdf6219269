"""The research export's secret: the key of every pseudonym, UID and date shift.

Whoever holds it can tell which de-identified patient is which, so it never
leaves the node: it is read from its file when a configuration is checked
(to refuse a file that is missing, short or readable by every user, with the
field that names it) and by a worker when it exports, and never logged, put
in a message or copied into the configuration in force (which keeps the path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from config.certificates import CertificateError, read_file, refuse_readable_by_everyone

#: 256 bits: the size of HMAC-SHA256's output, below which the key is the weak part.
MIN_KEY_BYTES: Final = 32


class ResearchKeyError(ValueError):
    """A key file that the research export cannot use; the message starts with its
    path and never quotes what the file holds."""


def read_research_key(path: Path) -> bytes:
    """The secret in `path`: at least MIN_KEY_BYTES, refused if every user may read it."""
    try:
        refuse_readable_by_everyone(path)
        secret = read_file(path)
    except CertificateError as exc:
        raise ResearchKeyError(str(exc)) from None
    if len(secret) < MIN_KEY_BYTES:
        raise ResearchKeyError(f"{path}: holds {len(secret)} bytes; the key must have at least "
                               f"{MIN_KEY_BYTES} (e.g. head -c 32 /dev/urandom > {path.name})")
    return secret
