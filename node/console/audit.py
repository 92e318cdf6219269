"""The console's audit log: who changed what, when, and from where.

An SQLite file of its own under ``storage_dir/console``, durable on return
(node/database.py), so that a change is never made without its entry
surviving a crash; read newest first, a page at a time. Each entry also
goes to the node's log, where a syslog collector keeps a copy out of the
node's reach.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from node.database import open_database, transaction

LOG = logging.getLogger(__name__)

AUDIT_FILENAME = "audit.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    at_utc  TEXT NOT NULL,
    user    TEXT NOT NULL,
    client  TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float  # epoch seconds
    at_utc: str  # ISO 8601, as written
    user: str
    client: str  # the client's address
    action: str
    detail: str


@dataclass(frozen=True)
class AuditPage:
    entries: tuple[AuditEntry, ...]  # newest first
    page: int  # 1-based
    pages: int
    total: int


def audit_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / "console" / AUDIT_FILENAME


class AuditLog:
    def __init__(self, storage_dir: Path):
        self._db = open_database(audit_path(storage_dir), _SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, user: str, client: str, action: str, detail: str, now: float) -> AuditEntry:
        at_utc = datetime.fromtimestamp(now, timezone.utc).isoformat()
        with self._lock, transaction(self._db):
            cursor = self._db.execute(
                "INSERT INTO audit (at, at_utc, user, client, action, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (now, at_utc, user, client, action, detail),
            )
        LOG.info("console audit: %s from %s: %s: %s", user, client, action, detail)
        return AuditEntry(cursor.lastrowid, now, at_utc, user, client, action, detail)

    def page(self, page: int, per_page: int = 50) -> AuditPage:
        """Page `page` (1-based; one past the end gives the last) of the entries, newest first."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
            pages = max(1, math.ceil(total / per_page))
            page = min(max(1, page), pages)
            rows = self._db.execute(
                "SELECT id, at, at_utc, user, client, action, detail FROM audit ORDER BY id DESC "
                "LIMIT ? OFFSET ?",
                (per_page, (page - 1) * per_page),
            ).fetchall()
        return AuditPage(tuple(AuditEntry(*row) for row in rows), page, pages, total)
