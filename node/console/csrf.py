"""Tokens that a form must carry back, so that another site cannot make a
signed-in browser post to the console (cross-site request forgery).

SameSite=Strict cookies already keep most such requests out; the token
also covers browsers and proxies that do not honour it.
"""

from __future__ import annotations

import secrets

#: The hidden field of every form (the ``csrf_field`` macro of base.html).
CSRF_FIELD = "csrf_token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_matches(expected: str, given: object) -> bool:
    """Whether the form's `given` value is `expected`, in constant time."""
    return isinstance(given, str) and secrets.compare_digest(expected.encode(), given.encode())
