"""The SQLite index of stored instances and of the series they belong to.

WAL mode lets ``segnode status`` read while the node writes. Every row that
says an instance is stored is committed before its success status goes back.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from node.database import open_database, transaction
from node.receive.mpps import PerformedSeries, Step, StepStatus
from node.receive.series_state import (
    CompletionSignal,
    InvalidTransition,
    SeriesEvent,
    SeriesState,
    next_state,
)
from node.receive.storage import StoredInstance

INDEX_FILENAME = "index.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    modality            TEXT NOT NULL,
    state               TEXT NOT NULL,
    first_received      REAL NOT NULL,
    last_received       REAL NOT NULL,
    complete_at         REAL,
    completed_by        TEXT,
    completion_note     TEXT
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
-- MPPS steps: the index row says which version of the step's file is current.
CREATE TABLE IF NOT EXISTS steps (
    sop_instance_uid    TEXT PRIMARY KEY,
    status              TEXT NOT NULL,
    version             INTEGER NOT NULL,
    path                TEXT NOT NULL,
    calling_ae          TEXT NOT NULL,
    updated             REAL NOT NULL
);
-- What an ended step listed, per series, until it completed the series once.
CREATE TABLE IF NOT EXISTS promised_series (
    series_instance_uid TEXT PRIMARY KEY,
    step_uid            TEXT NOT NULL,
    discontinued        INTEGER NOT NULL,
    ended               REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS promised_instances (
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,
    PRIMARY KEY (series_instance_uid, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_instance_uid);
CREATE INDEX IF NOT EXISTS series_by_state ON series(state, last_received);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_instance_uid);
-- The console's pages: series newest first, and each peer's latest instance.
CREATE INDEX IF NOT EXISTS series_by_last_received ON series(last_received);
CREATE INDEX IF NOT EXISTS instances_by_calling_ae ON instances(calling_ae, received);
"""

_SERIES_COLUMNS = (
    "s.study_instance_uid, s.series_instance_uid, s.modality, "
    "(SELECT COUNT(*) FROM instances i WHERE i.series_instance_uid = s.series_instance_uid), "
    "s.state, s.first_received, s.last_received, s.completed_by, s.completion_note"
)

# Newest first, through series_by_last_received or (filtered) series_by_state,
# whose entries end with the rowid that breaks ties. The calling AE is that of
# the series' earliest indexed instance still stored (one index probe).
_NEWEST_SERIES = (
    f"SELECT {_SERIES_COLUMNS}, "
    "(SELECT i.calling_ae FROM instances i WHERE i.series_instance_uid = s.series_instance_uid "
    " ORDER BY i.rowid LIMIT 1) "
    "FROM series s {where} ORDER BY s.last_received DESC, s.rowid DESC LIMIT ? OFFSET ?"
)
# Public so that the tests can EXPLAIN what the pages run.
NEWEST_SERIES_SQL = _NEWEST_SERIES.format(where="")
NEWEST_SERIES_IN_STATE_SQL = _NEWEST_SERIES.format(where="WHERE s.state = ?")
# Seeks in instances_by_calling_ae: from one calling AE to the next, its
# latest instance, and a count of those since a time. Grouping the whole
# table took 115 ms at a million instances; this reads only the recent ones.
PEER_ACTIVITY_SQL = (
    "WITH RECURSIVE peers(ae) AS (SELECT MIN(calling_ae) FROM instances UNION ALL "
    " SELECT (SELECT MIN(calling_ae) FROM instances WHERE calling_ae > peers.ae) FROM peers "
    " WHERE peers.ae IS NOT NULL) "
    "SELECT ae, (SELECT MAX(received) FROM instances WHERE calling_ae = ae), "
    "(SELECT COUNT(*) FROM instances WHERE calling_ae = ae AND received >= ?) "
    "FROM peers WHERE ae IS NOT NULL ORDER BY 2 DESC, ae"
)


@dataclass(frozen=True)
class SeriesRecord:
    """One series as the index knows it; once complete, what completed it
    and any warning that goes with it (both cleared when it reopens)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    instances: int
    state: SeriesState
    first_received: float
    last_received: float
    completed_by: CompletionSignal | None = None
    completion_note: str | None = None


@dataclass(frozen=True)
class Promise:
    """What an ended MPPS step said about a series."""

    step_uid: str
    discontinued: bool
    promised: int
    # How many of the promised instances are stored.
    arrived: int
    ended: float


@dataclass(frozen=True)
class SeriesProgress:
    """A receiving series as the index knows it."""

    series_instance_uid: str
    instances: int
    last_received: float
    # When its association's grace period ends (None: no association ended it).
    complete_at: float | None
    promise: Promise | None


@dataclass(frozen=True)
class Completion:
    signal: CompletionSignal
    # A warning that goes with the series into its status and its report.
    note: str | None = None


@dataclass(frozen=True)
class RecordedInstance:
    """What indexing an instance changed: the series' state before and after,
    and the path of an earlier copy that the new one made obsolete."""

    previous_state: SeriesState | None
    state: SeriesState
    replaced_path: Path | None
    # An ended MPPS step lists the series: this instance may complete it.
    promised: bool = False


@dataclass(frozen=True)
class ListedSeries:
    """A series in a listing, with the AE title of the peer that sent it
    (None once its instances are removed)."""

    series: SeriesRecord
    calling_ae: str | None


@dataclass(frozen=True)
class InstanceRecord:
    """What the index holds about one stored instance, for people to read."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    calling_ae: str
    received: float


@dataclass(frozen=True)
class PeerInstances:
    """When the latest instance still stored from a calling AE came, and how
    many of them came since a time."""

    calling_ae: str
    last_received: float
    instances_since: int


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
        if not read_only:
            _add_missing_columns(self._db)
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
                            "INSERT INTO series VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
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
                        # Whatever signal there was came before this instance.
                        self._db.execute(
                            "UPDATE series SET state = ?, last_received = ?, complete_at = NULL, "
                            "completed_by = NULL, completion_note = NULL WHERE series_instance_uid = ?",
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
                    promised = self._db.execute(
                        "SELECT 1 FROM promised_series WHERE series_instance_uid = ?",
                        (ident.series_instance_uid,),
                    ).fetchone()
            except sqlite3.Error as exc:
                raise IndexWriteError(f"cannot index {ident.sop_instance_uid}: {exc}") from exc
        replaced = Path(old[0]) if old and old[0] != str(stored.path) else None
        return RecordedInstance(previous, state, replaced, promised is not None)

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

    def end_association(self, series_instance_uids: Iterable[str], released: float,
                        complete_at: float) -> None:
        """An association that brought these series was released at `released`:
        each completes at `complete_at` unless an instance arrives meanwhile."""
        with self._lock, transaction(self._db):
            self._db.executemany(
                "UPDATE series SET complete_at = ? "
                "WHERE series_instance_uid = ? AND state = ? AND last_received <= ?",
                [(complete_at, uid, SeriesState.RECEIVING.value, released) for uid in series_instance_uids],
            )

    def receiving(self) -> list[SeriesProgress]:
        """Every receiving series with what the completion signals need."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.series_instance_uid, "
                "(SELECT COUNT(*) FROM instances i WHERE i.series_instance_uid = s.series_instance_uid), "
                "s.last_received, s.complete_at, p.step_uid, p.discontinued, p.ended, "
                "(SELECT COUNT(*) FROM promised_instances pi "
                " WHERE pi.series_instance_uid = s.series_instance_uid), "
                "(SELECT COUNT(*) FROM promised_instances pi JOIN instances i "
                " ON i.sop_instance_uid = pi.sop_instance_uid "
                " AND i.series_instance_uid = pi.series_instance_uid "
                " WHERE pi.series_instance_uid = s.series_instance_uid) "
                "FROM series s LEFT JOIN promised_series p ON p.series_instance_uid = s.series_instance_uid "
                "WHERE s.state = ?",
                (SeriesState.RECEIVING.value,),
            ).fetchall()
        return [
            SeriesProgress(
                uid, instances, last, complete_at,
                None if step is None else Promise(step, bool(discontinued), promised, arrived, ended),
            )
            for uid, instances, last, complete_at, step, discontinued, ended, promised, arrived in rows
        ]

    def complete(self, progress: SeriesProgress, completion: Completion) -> SeriesRecord | None:
        """Move a series to complete by `completion`, unless an instance came
        after `progress` was read (then it waits for the next decision).
        An MPPS step's promise is spent once it has completed the series."""
        state = next_state(SeriesState.RECEIVING, SeriesEvent.COMPLETED)
        uid = progress.series_instance_uid
        with self._lock:
            with transaction(self._db):
                changed = self._db.execute(
                    "UPDATE series SET state = ?, complete_at = NULL, completed_by = ?, completion_note = ? "
                    "WHERE series_instance_uid = ? AND state = ? AND last_received = ?",
                    (state.value, completion.signal.value, completion.note, uid,
                     SeriesState.RECEIVING.value, progress.last_received),
                ).rowcount
                if changed and progress.promise is not None:
                    self._forget_promise(uid)
            return self._series(uid) if changed else None

    def _forget_promise(self, series_instance_uid: str) -> None:
        for table in ("promised_series", "promised_instances"):
            self._db.execute(f"DELETE FROM {table} WHERE series_instance_uid = ?", (series_instance_uid,))

    def _series(self, series_instance_uid: str) -> SeriesRecord:
        row = self._db.execute(
            f"SELECT {_SERIES_COLUMNS} FROM series s WHERE s.series_instance_uid = ?",
            (series_instance_uid,),
        ).fetchone()
        return _series_record(row)

    def series(self, series_instance_uid: str) -> SeriesRecord | None:
        with self._lock:
            known = self._db.execute(
                "SELECT 1 FROM series WHERE series_instance_uid = ?", (series_instance_uid,)
            ).fetchone()
            return None if known is None else self._series(series_instance_uid)

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

    # The console's pages (node/console/snapshot.py) --------------------------

    def series_counts(self) -> dict[SeriesState, int]:
        """Series by state, every state present (a scan of series_by_state)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall()
        counts = dict.fromkeys(SeriesState, 0)
        counts.update({SeriesState(state): count for state, count in rows})
        return counts

    def newest_series(self, limit: int, offset: int, state: SeriesState | None = None) -> list[ListedSeries]:
        """One page of the series (those in `state`, if given), the latest received first."""
        if state is None:
            sql, parameters = NEWEST_SERIES_SQL, (limit, offset)
        else:
            sql, parameters = NEWEST_SERIES_IN_STATE_SQL, (state.value, limit, offset)
        with self._lock:
            rows = self._db.execute(sql, parameters).fetchall()
        return [ListedSeries(_series_record(row[:9]), row[9]) for row in rows]

    def instance_records(self, series_instance_uid: str) -> list[InstanceRecord]:
        """The stored instances of a series, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid, sop_class_uid, transfer_syntax_uid, size, calling_ae, received "
                "FROM instances WHERE series_instance_uid = ? ORDER BY received, sop_instance_uid",
                (series_instance_uid,),
            ).fetchall()
        return [InstanceRecord(*row) for row in rows]

    def peer_activity(self, since: float) -> list[PeerInstances]:
        """Per calling AE with instances stored, the latest one's time and how
        many were received from `since` on; the most recently heard first."""
        with self._lock:
            rows = self._db.execute(PEER_ACTIVITY_SQL, (since,)).fetchall()
        return [PeerInstances(*row) for row in rows]

    # MPPS steps ----------------------------------------------------------

    def step(self, sop_instance_uid: str) -> StoredStep | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status, version, path FROM steps WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        return None if row is None else StoredStep(sop_instance_uid, StepStatus(row[0]), row[1], Path(row[2]))

    def record_step(self, step: Step, stored: StoredStep, calling_ae: str, at: float,
                    replaces: StoredStep | None) -> list[str]:
        """Record `step` as held in `stored`, in place of `replaces` (None: a
        new step). Returns the series whose completion it now decides.

        An ended step promises, for each series it lists, exactly the
        instances it names. A series that is already complete and has all
        of them needs nothing more; one that misses some keeps the promise
        for when they arrive and reopen it.
        """
        try:
            with self._lock, transaction(self._db):
                if replaces is None:
                    self._db.execute("INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?)",
                                     (step.sop_instance_uid, step.status.value, stored.version,
                                      str(stored.path), calling_ae, at))
                elif not self._db.execute(
                    "UPDATE steps SET status = ?, version = ?, path = ?, updated = ? "
                    "WHERE sop_instance_uid = ? AND version = ?",
                    (step.status.value, stored.version, str(stored.path), at,
                     step.sop_instance_uid, replaces.version),
                ).rowcount:
                    raise StepConflict(f"MPPS step {step.sop_instance_uid} was changed meanwhile")
                if step.status == StepStatus.IN_PROGRESS:
                    return []
                decided = [self._promise(series, step, at) for series in step.series]
                return [uid for uid in decided if uid is not None]
        except sqlite3.IntegrityError:
            raise StepConflict(f"MPPS step {step.sop_instance_uid} exists already") from None
        except sqlite3.Error as exc:
            raise IndexWriteError(f"cannot record MPPS step {step.sop_instance_uid}: {exc}") from exc

    def _promise(self, series: PerformedSeries, step: Step, at: float) -> str | None:
        uid = series.series_instance_uid
        self._db.execute("INSERT OR REPLACE INTO promised_series VALUES (?, ?, ?, ?)",
                         (uid, step.sop_instance_uid, int(step.status == StepStatus.DISCONTINUED), at))
        self._db.executemany("INSERT OR IGNORE INTO promised_instances VALUES (?, ?)",
                             [(uid, sop) for sop in series.sop_instance_uids])
        row = self._db.execute("SELECT state FROM series WHERE series_instance_uid = ?", (uid,)).fetchone()
        if row is None or row[0] == SeriesState.RECEIVING.value:
            return uid
        (missing,) = self._db.execute(
            "SELECT COUNT(*) FROM promised_instances pi WHERE pi.series_instance_uid = ? AND NOT EXISTS "
            "(SELECT 1 FROM instances i WHERE i.sop_instance_uid = pi.sop_instance_uid "
            " AND i.series_instance_uid = pi.series_instance_uid)",
            (uid,),
        ).fetchone()
        if not missing:
            self._forget_promise(uid)
            return None
        return uid


@dataclass(frozen=True)
class StoredStep:
    """Where the current version of an MPPS step is kept."""

    sop_instance_uid: str
    status: StepStatus
    version: int
    path: Path


class StepConflict(Exception):
    """An N-CREATE of a step that exists, or an N-SET that lost a race with another."""


def _series_record(row: tuple) -> SeriesRecord:
    """A row of :data:`_SERIES_COLUMNS` as a record."""
    return SeriesRecord(*row[:4], SeriesState(row[4]), row[5], row[6],
                        None if row[7] is None else CompletionSignal(row[7]), row[8])


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Stores made before the completion signals lack their columns."""
    have = {row[1] for row in db.execute("PRAGMA table_info(series)")}
    for column in ("complete_at REAL", "completed_by TEXT", "completion_note TEXT"):
        if column.split()[0] not in have:
            db.execute(f"ALTER TABLE series ADD COLUMN {column}")
