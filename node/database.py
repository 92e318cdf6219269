"""The node's SQLite files (index and jobs, outbox), opened one way.

Durable: WAL with synchronous=FULL, so a commit is on disk when it returns
(the index's commit is what allows a success status to go back). Shared:
threads of one process use one connection under the caller's lock; other
processes (workers, ``segnode status``) open their own, and a writer waits up
to :data:`BUSY_TIMEOUT_SECONDS` for another's transaction rather than fail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_SECONDS = 30.0


def open_database(path: Path, schema: str, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection to `path`, created with `schema` unless `read_only`.

    Transactions are explicit (``isolation_level=None``): every change is
    made in a ``BEGIN IMMEDIATE`` ... ``COMMIT`` of the caller's.
    """
    if read_only:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_SECONDS)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error (the caller holds its lock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
