"""The SQLite index of stored instances and of the series they belong to.

WAL mode lets ``segnode status`` read while the node writes. Every row that
says an instance is stored is committed before its success status goes back.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from node.database import open_database, transaction
from node.receive.series_state import InvalidTransition, SeriesEvent, SeriesState, next_state
from node.receive.storage import StoredInstance

INDEX_FILENAME = "index.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    modality            TEXT NOT NULL,
    state               TEXT NOT NULL,
    first_received      REAL NOT NULL,
    last_received       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL REFERENCES series(series_instance_uid),
    sop_class_uid       TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    calling_ae          TEXT NOT NULL,
    received            REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_instance_uid);
CREATE INDEX IF NOT EXISTS series_by_state ON series(state, last_received);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_instance_uid);
"""


@dataclass(frozen=True)
class SeriesRecord:
    """One series as the index knows it."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    instances: int
    state: SeriesState
    first_received: float
    last_received: float


@dataclass(frozen=True)
class RecordedInstance:
    """What indexing an instance changed: the series' state before and after,
    and the path of an earlier copy that the new one made obsolete."""

    previous_state: SeriesState | None
    state: SeriesState
    replaced_path: Path | None


@dataclass(frozen=True)
class IndexedInstance:
    """Where a stored instance is and who sent it."""

    sop_instance_uid: str
    path: Path
    calling_ae: str


class IndexWriteError(Exception):
    """The index could not be written (disk full, corrupt database)."""


class InstanceIndex:
    """A single connection shared by the association threads, serialised by a lock."""

    def __init__(self, storage_dir: Path, *, read_only: bool = False):
        path = Path(storage_dir) / INDEX_FILENAME
        self._db = open_database(path, _SCHEMA, read_only=read_only)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record_instance(self, stored: StoredInstance) -> RecordedInstance:
        """Add or replace an instance and move its series by INSTANCE_RECEIVED."""
        ident = stored.identity
        with self._lock:
            try:
                with transaction(self._db):
                    row = self._db.execute(
                        "SELECT state FROM series WHERE series_instance_uid = ?",
                        (ident.series_instance_uid,),
                    ).fetchone()
                    previous = SeriesState(row[0]) if row else None
                    state = self._received_state(previous, stored)
                    if row is None:
                        self._db.execute(
                            "INSERT INTO series VALUES (?, ?, ?, ?, ?, ?)",
                            (
                                ident.series_instance_uid,
                                ident.study_instance_uid,
                                ident.modality,
                                state.value,
                                stored.received_at,
                                stored.received_at,
                            ),
                        )
                    else:
                        self._db.execute(
                            "UPDATE series SET state = ?, last_received = ? "
                            "WHERE series_instance_uid = ?",
                            (state.value, stored.received_at, ident.series_instance_uid),
                        )
                    old = self._db.execute(
                        "SELECT path FROM instances WHERE sop_instance_uid = ?",
                        (ident.sop_instance_uid,),
                    ).fetchone()
                    self._db.execute(
                        "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            ident.sop_instance_uid,
                            ident.series_instance_uid,
                            ident.sop_class_uid,
                            stored.transfer_syntax_uid,
                            str(stored.path),
                            stored.size,
                            stored.calling_ae,
                            stored.received_at,
                        ),
                    )
            except sqlite3.Error as exc:
                raise IndexWriteError(f"cannot index {ident.sop_instance_uid}: {exc}") from exc
        replaced = Path(old[0]) if old and old[0] != str(stored.path) else None
        return RecordedInstance(previous, state, replaced)

    @staticmethod
    def _received_state(previous: SeriesState | None, stored: StoredInstance) -> SeriesState:
        """The series' state once ``stored`` is in it; raises IndexWriteError,
        which the sender is told is transient, while retention removes the series.

        A removal deletes the files its index rows list, outside the index's
        lock (node/retention/removal.py). An instance sent again under the same SOP
        Instance UID while that happens may have been written over a file
        that was then deleted: it is refused rather than indexed without its file.
        """
        ident = stored.identity
        try:
            state = next_state(previous, SeriesEvent.INSTANCE_RECEIVED)
        except InvalidTransition:
            raise IndexWriteError(
                f"series {ident.series_instance_uid} is being removed by the retention policy; "
                f"{ident.sop_instance_uid} must be sent again"
            ) from None
        if previous == SeriesState.REMOVED and not stored.path.exists():
            raise IndexWriteError(
                f"{stored.path} was removed with series {ident.series_instance_uid} as it arrived"
            )
        return state

    def is_indexed(self, sop_instance_uid: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        return row is not None

    def complete_stable_series(self, received_before: float) -> list[SeriesRecord]:
        """Move every receiving series quiet since ``received_before`` to complete."""
        with self._lock:
            with transaction(self._db):
                rows = self._db.execute(
                    "SELECT series_instance_uid FROM series "
                    "WHERE state = ? AND last_received < ?",
                    (SeriesState.RECEIVING.value, received_before),
                ).fetchall()
                state = next_state(SeriesState.RECEIVING, SeriesEvent.STABLE_PERIOD_ELAPSED)
                for (uid,) in rows:
                    self._db.execute(
                        "UPDATE series SET state = ? WHERE series_instance_uid = ?",
                        (state.value, uid),
                    )
            return [self._series(uid) for (uid,) in rows]

    def _series(self, series_instance_uid: str) -> SeriesRecord:
        row = self._db.execute(
            "SELECT s.study_instance_uid, s.series_instance_uid, s.modality, "
            "(SELECT COUNT(*) FROM instances i WHERE i.series_instance_uid = s.series_instance_uid), "
            "s.state, s.first_received, s.last_received "
            "FROM series s WHERE s.series_instance_uid = ?",
            (series_instance_uid,),
        ).fetchone()
        return SeriesRecord(*row[:4], SeriesState(row[4]), row[5], row[6])

    def all_series(self) -> list[SeriesRecord]:
        with self._lock:
            uids = self._db.execute(
                "SELECT series_instance_uid FROM series ORDER BY first_received"
            ).fetchall()
            return [self._series(uid) for (uid,) in uids]

    def instances_of(self, series_instance_uid: str) -> list[IndexedInstance]:
        """The stored instances of a series, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid, path, calling_ae FROM instances WHERE series_instance_uid = ? "
                "ORDER BY received",
                (series_instance_uid,),
            ).fetchall()
        return [IndexedInstance(uid, Path(path), calling_ae) for uid, path, calling_ae in rows]

    def series_of_study(self, study_instance_uid: str) -> list[SeriesRecord]:
        with self._lock:
            uids = self._db.execute(
                "SELECT series_instance_uid FROM series WHERE study_instance_uid = ? ORDER BY first_received",
                (study_instance_uid,),
            ).fetchall()
            return [self._series(uid) for (uid,) in uids]

    def bytes_received_since(self, since: float) -> int:
        """Bytes of the instances received since ``since`` that are still stored."""
        with self._lock:
            (total,) = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM instances WHERE received >= ?", (since,)
            ).fetchone()
        return total

    def series_in_state(self, state: SeriesState) -> list[SeriesRecord]:
        with self._lock:
            uids = self._db.execute(
                "SELECT series_instance_uid FROM series WHERE state = ? ORDER BY last_received",
                (state.value,),
            ).fetchall()
            return [self._series(uid) for (uid,) in uids]
