"""Who is signed in to the console: a table of sessions kept in memory.

The browser holds only a random session id (in a cookie signed with the
node's key, Starlette's SessionMiddleware); what the id stands for lives
here, so that signing out, a user removed from the configuration or a
restart of the node ends a session at once, which a self-contained signed
cookie could not. The table is bounded: past its capacity the oldest
session ends first.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

#: Sessions kept at most; an administrators' console has a handful.
SESSION_CAPACITY = 256


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    #: The token every form of this session must carry back (node/console/csrf.py).
    csrf_token: str
    signed_in: float  # epoch seconds


class SessionTable:
    """Sessions by id; thread-safe, as Starlette runs plain endpoints on a thread pool."""

    def __init__(self, capacity: int = SESSION_CAPACITY):
        self._capacity = capacity
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, user: str, csrf_token: str, now: float) -> Session:
        """A new session of `user` under a fresh id (never one the browser offered)."""
        session = Session(secrets.token_urlsafe(32), user, csrf_token, now)
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self._capacity:
                self._sessions.popitem(last=False)
        return session

    def find(self, session_id: str, now: float, lifetime_seconds: float,
             users: Collection[str]) -> Session | None:
        """The session `session_id` if it is open, younger than `lifetime_seconds` and its
        user is still one of `users`; a session that is not is ended."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.signed_in >= lifetime_seconds or session.user not in users:
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
