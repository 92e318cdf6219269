"""The console's passwords: argon2id hashes (RFC 9106) in the configuration, never the passwords.

argon2-cffi's defaults are its maintainers' choice of RFC 9106's second
recommended parameters (64 MiB, 3 passes), which a sign-in a second pays
for once; a hash made with other parameters still verifies, as they are
written in it.
"""

from __future__ import annotations

from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

#: Longer passwords are refused: hashing what a form posts must stay cheap to refuse.
MAX_PASSWORD_CHARS: Final = 1024

_HASHER: Final = PasswordHasher()


def hash_password(password: str) -> str:
    """The argon2id PHC string (``$argon2id$v=19$m=...``) of `password`, with a fresh salt.

    Raises
    ------
    ValueError
        If `password` is empty or longer than :data:`MAX_PASSWORD_CHARS`.
    """
    if not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` is the one `password_hash` was made from.

    False, never an exception, for a wrong password and for a hash that is
    malformed or of a scheme argon2-cffi does not verify: a sign-in form
    answers "no" to all of them alike. Passwords too long to hash are False
    without hashing them.
    """
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, ValueError):  # ValueError: a malformed hash, text that is not ASCII
        return False
