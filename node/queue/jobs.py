"""The durable job queue: what is to be done to which series, and how it went.

Jobs live in the index database beside the series they belong to, so that
routing a completed series and queueing its jobs is one transaction: a crash
leaves either a complete series that is routed again after the restart, or
its jobs, never a series that fell between the two.

A job is claimed by one worker under a lease that the worker renews while it
runs. A worker that dies (kill -9, out of memory) stops renewing; the lease
expires, or the node notices the exit first, and the job is queued again as
a failed attempt. Failed attempts wait ``retry_base_seconds`` doubled per
attempt (at most ``retry_max_seconds``); after ``max_attempts`` the job is
``failed`` with its reason until ``segnode jobs retry`` queues it again.

A job is only claimable while no series of its study is still arriving, so
that a CT job sees the PET series sent with it (PET/CT).

Every change of a job's state is one of node/queue/job_state.py's table; a
finished job's result is one of node/queue/results.py's types.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from config import JobSettings
from node.backoff import doubling_delay
from node.database import open_database, transaction
from node.queue.job_state import (
    TRANSITIONS,
    InvalidJobTransition,
    JobEvent,
    JobState,
    allowed_from,
    next_state,
)
from node.queue.results import ComparisonResult, DosimetryResult, JobResult, SegmentResult
from node.receive.index import INDEX_FILENAME
from node.receive.series_state import SeriesEvent, SeriesState
from node.receive.series_state import next_state as next_series_state

LOG = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id                  INTEGER PRIMARY KEY,
    kind                TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    route               TEXT NOT NULL,
    pipeline            TEXT NOT NULL,
    destinations        TEXT NOT NULL,
    subject             TEXT NOT NULL,
    state               TEXT NOT NULL,
    attempts            INTEGER NOT NULL,
    not_before          REAL NOT NULL,
    owner               TEXT,
    lease_until         REAL,
    queued_at           REAL NOT NULL,
    updated_at          REAL NOT NULL,
    error               TEXT,
    result              TEXT,
    UNIQUE (kind, series_instance_uid, route)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, not_before);
"""


class JobKind(StrEnum):
    SEGMENT = "segment"  # a CT series: segment, measure, send SEG + SR
    QA = "qa"  # someone else's SEG of a series we segmented: compare, send a QA SR
    DOSIMETRY = "dosimetry"  # a SPECT time point: read it into its course, evaluate, send the dose report


@dataclass(frozen=True)
class NewJob:
    """A job to queue for a routed series.

    ``subject`` is the series the job is about: the series itself for a
    segmentation, the segmented CT series for the QA of a reference SEG.
    """

    kind: JobKind
    route: str
    pipeline: str
    destinations: tuple[str, ...]
    subject: str


@dataclass(frozen=True)
class Job:
    """A job as the queue holds it.

    ``queued_at`` is when this version of the job was queued; the objects it
    produces are dated by it, so that a retry writes the same bytes.
    """

    id: int
    kind: JobKind
    series_instance_uid: str
    study_instance_uid: str
    route: str
    pipeline: str
    destinations: tuple[str, ...]
    subject: str
    state: JobState
    attempts: int
    not_before: float
    owner: str | None
    queued_at: float
    updated_at: float
    error: str | None
    result: JobResult | None


class JobNotFoundError(LookupError):
    pass


class LeaseLostError(RuntimeError):
    """The job was taken from this worker (its lease expired and it was
    queued again); its result must not be recorded."""


#: What a finished job of each kind recorded (its row's result).
_RESULT_TYPES: dict[JobKind, type[SegmentResult] | type[ComparisonResult] | type[DosimetryResult]] = {
    JobKind.SEGMENT: SegmentResult,
    JobKind.QA: ComparisonResult,
    JobKind.DOSIMETRY: DosimetryResult,
}

_COLUMNS = (
    "id, kind, series_instance_uid, study_instance_uid, route, pipeline, destinations, subject, "
    "state, attempts, not_before, owner, queued_at, updated_at, error, result"
)


def _job(row: tuple) -> Job:
    kind = JobKind(row[1])
    return Job(
        id=row[0], kind=kind, series_instance_uid=row[2], study_instance_uid=row[3],
        route=row[4], pipeline=row[5], destinations=tuple(json.loads(row[6])), subject=row[7],
        state=JobState(row[8]), attempts=row[9], not_before=row[10], owner=row[11], queued_at=row[12],
        updated_at=row[13], error=row[14],
        result=_result(row[0], kind, row[15]),
    )


def _result(job_id: int, kind: JobKind, stored: str | None) -> JobResult | None:
    """A job's stored result; one that cannot be read is logged and left out,
    so that one bad row cannot stop retention, metrics and listings."""
    if not stored:
        return None
    try:
        return _RESULT_TYPES[kind].from_json(json.loads(stored))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        LOG.error("job %d: its stored result cannot be read (%s: %s)", job_id, type(exc).__name__, exc)
        return None


def _state_in(event: JobEvent) -> tuple[str, tuple[str, ...]]:
    """The WHERE condition that a job's stored state allows `event`, and its values."""
    states = allowed_from(event)
    return f"state IN ({','.join('?' * len(states))})", tuple(state.value for state in states)


def retry_delay(attempts: int, settings: JobSettings) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1, 2, ...)."""
    return doubling_delay(attempts, settings.retry_base_seconds, settings.retry_max_seconds)


def _failure(job: Job, settings: JobSettings) -> JobEvent:
    """What a failed (or lost) attempt of a running job is: another try after
    the backoff, or the last one."""
    if job.attempts >= settings.max_attempts:
        return JobEvent.ATTEMPTS_EXHAUSTED
    return JobEvent.ATTEMPT_FAILED


def _lease_lost(
    job_id: int, owner: str, state: JobState, runner: str | None, event: JobEvent | None
) -> LeaseLostError:
    """Why `owner` may not change the job: another worker runs it now, or it
    is in a state that `event` is not allowed in (None: it is not running)."""
    allowed = allowed_from(event) if event is not None else (JobState.RUNNING,)
    if state in allowed:
        return LeaseLostError(f"job {job_id} is no longer run by {owner} but by {runner}")
    if event is None:
        return LeaseLostError(f"job {job_id} is no longer run by {owner}: it is {state}")
    return LeaseLostError(f"{InvalidJobTransition(job_id, state, event)}: {owner} no longer runs it")


class JobQueue:
    """One connection to the index database's jobs; safe across threads and
    processes (SQLite WAL, every change in an immediate transaction)."""

    def __init__(self, storage_dir: Path, *, read_only: bool = False):
        # Read-only for those that only look (the console's pages, segnode status):
        # they can never take the write lock that every C-STORE's indexing needs.
        self._db = open_database(Path(storage_dir) / INDEX_FILENAME, _SCHEMA, read_only=read_only)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write_if_found(self, probe: str, parameters: tuple, sql_steps) -> object | None:
        """``_write(sql_steps)`` only if `probe` finds a row, else None.

        Workers poll for jobs and the pool for lost leases several times a
        second; a poll that finds nothing reads without the write lock, which
        every C-STORE's indexing needs. `sql_steps` must look again.
        """
        with self._lock:
            if self._db.execute(probe, parameters).fetchone() is None:
                return None
        return self._write(sql_steps)

    def _write(self, sql_steps) -> object:
        """Run ``sql_steps(db)`` in one immediate transaction."""
        with self._lock, transaction(self._db):
            return sql_steps(self._db)

    def enqueue_series(
        self, series_instance_uid: str, jobs: list[NewJob], now: float | None = None
    ) -> list[int]:
        """Queue `jobs` for a complete series and mark it dispatched, together.

        A job already known for the same series and route (the series was
        reopened by a late instance, or sent again) is queued afresh with
        its attempts reset. Returns the job ids.
        """
        now = time.time() if now is None else now
        queued = TRANSITIONS[JobEvent.ENQUEUED].leads_to
        requeue, requeue_states = _state_in(JobEvent.ENQUEUED)

        def steps(db: sqlite3.Connection) -> list[int]:
            row = db.execute(
                "SELECT state, study_instance_uid FROM series WHERE series_instance_uid = ?",
                (series_instance_uid,),
            ).fetchone()
            if row is None:
                raise JobNotFoundError(f"series {series_instance_uid} is not in the index")
            state = next_series_state(SeriesState(row[0]), SeriesEvent.ROUTED)
            ids = []
            for job in jobs:
                changed = db.execute(
                    "INSERT INTO jobs (kind, series_instance_uid, study_instance_uid, route, pipeline, "
                    "destinations, subject, state, attempts, not_before, queued_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) "
                    "ON CONFLICT (kind, series_instance_uid, route) DO UPDATE SET "
                    "pipeline = excluded.pipeline, destinations = excluded.destinations, "
                    "subject = excluded.subject, state = excluded.state, attempts = 0, "
                    "not_before = excluded.not_before, owner = NULL, lease_until = NULL, "
                    "queued_at = excluded.queued_at, updated_at = excluded.updated_at, "
                    f"error = NULL, result = NULL WHERE {requeue}",
                    (job.kind.value, series_instance_uid, row[1], job.route, job.pipeline,
                     json.dumps(list(job.destinations)), job.subject, queued.value, now, now, now,
                     *requeue_states),
                ).rowcount
                job_id, job_state = db.execute(
                    "SELECT id, state FROM jobs WHERE kind = ? AND series_instance_uid = ? AND route = ?",
                    (job.kind.value, series_instance_uid, job.route),
                ).fetchone()
                if changed != 1:  # known, in a state it may not be queued afresh from
                    raise InvalidJobTransition(job_id, JobState(job_state), JobEvent.ENQUEUED)
                ids.append(job_id)
            db.execute("UPDATE series SET state = ? WHERE series_instance_uid = ?",
                       (state.value, series_instance_uid))
            return ids

        return self._write(steps)

    def claim(self, owner: str, lease_seconds: float, now: float | None = None) -> Job | None:
        """Take the oldest due job whose study has stopped arriving, or None."""
        now = time.time() if now is None else now

        claimable, claimable_states = _state_in(JobEvent.CLAIMED)
        oldest_due = (
            f"SELECT id, state FROM jobs j WHERE {claimable} AND not_before <= ? AND NOT EXISTS ("
            "SELECT 1 FROM series s WHERE s.study_instance_uid = j.study_instance_uid AND s.state = ?) "
            "ORDER BY not_before, id LIMIT 1"
        )
        parameters = (*claimable_states, now, SeriesState.RECEIVING.value)

        def steps(db: sqlite3.Connection) -> Job | None:
            row = db.execute(oldest_due, parameters).fetchone()
            if row is None:  # another worker took it meanwhile
                return None
            job_id, state = row
            db.execute(
                "UPDATE jobs SET state = ?, owner = ?, lease_until = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE id = ?",
                (next_state(job_id, JobState(state), JobEvent.CLAIMED).value, owner, now + lease_seconds,
                 now, job_id),
            )
            return self._get(db, job_id)

        return self._write_if_found(oldest_due, parameters, steps)

    def renew(self, job_id: int, owner: str, lease_seconds: float, now: float | None = None) -> None:
        """Extend a running job's lease; raises LeaseLostError if it is no longer ours."""
        now = time.time() if now is None else now
        self._owned_update(job_id, owner, None, "lease_until = ?", (now + lease_seconds,))

    def succeed(self, job_id: int, owner: str, result: JobResult) -> None:
        self._owned_update(
            job_id, owner, JobEvent.SUCCEEDED,
            "owner = NULL, lease_until = NULL, result = ?, error = NULL, updated_at = ?",
            (json.dumps(result.to_json()), time.time()),
        )

    def fail(
        self, job_id: int, owner: str, error: str, settings: JobSettings, now: float | None = None
    ) -> Job:
        """Record a failed attempt: queued again after the backoff, or failed
        for good after the last attempt."""
        now = time.time() if now is None else now

        def steps(db: sqlite3.Connection) -> Job:
            job = self._get(db, job_id)
            event = _failure(job, settings)
            if job.owner != owner or job.state not in allowed_from(event):
                raise _lease_lost(job_id, owner, job.state, job.owner, event)
            self._record_failure(db, job, event, error, settings, now)
            return self._get(db, job_id)

        return self._write(steps)

    def release(self, job_id: int, owner: str) -> None:
        """Give a running job back without counting the attempt (the worker
        is stopping, not failing)."""
        self._owned_update(job_id, owner, JobEvent.RELEASED, "owner = NULL, lease_until = NULL, "
                           "attempts = attempts - 1, updated_at = ?", (time.time(),))

    def recover(
        self, settings: JobSettings, dead_owners: tuple[str, ...] = (), now: float | None = None
    ) -> list[Job]:
        """Queue again (as failed attempts) the running jobs whose worker is
        known dead or whose lease expired; returns them as they now are."""
        now = time.time() if now is None else now

        marks = ",".join("?" * len(dead_owners))
        lost = f"SELECT id FROM jobs WHERE state = ? AND (lease_until < ? OR owner IN ({marks}))"
        parameters = (JobState.RUNNING.value, now, *dead_owners)

        def steps(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(lost, parameters).fetchall()
            recovered = []
            for (job_id,) in rows:
                job = self._get(db, job_id)
                error = f"worker {job.owner} stopped during the job"
                self._record_failure(db, job, _failure(job, settings), error, settings, now)
                recovered.append(self._get(db, job_id))
            return recovered

        return self._write_if_found(lost, parameters, steps) or []

    def retry(self, job_id: int, now: float | None = None) -> Job:
        """Queue a failed (or finished) job again, with its attempts reset."""
        now = time.time() if now is None else now

        def steps(db: sqlite3.Connection) -> Job:
            job = self._get(db, job_id)
            state = next_state(job_id, job.state, JobEvent.RETRIED)
            # In the same transaction as retention's (node/retention/removal.py): a job
            # whose inputs are being or were removed could only fail.
            for uid in {job.series_instance_uid, job.subject}:
                row = db.execute("SELECT state FROM series WHERE series_instance_uid = ?", (uid,)).fetchone()
                if row is not None and row[0] in (SeriesState.REMOVING.value, SeriesState.REMOVED.value):
                    raise ValueError(f"job {job_id}: series {uid} was removed by the retention policy; "
                                     "send it again")
            db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, not_before = ?, error = NULL, updated_at = ? "
                "WHERE id = ?",
                (state.value, now, now, job_id),
            )
            return self._get(db, job_id)

        return self._write(steps)

    def get(self, job_id: int) -> Job:
        with self._lock:
            return self._get(self._db, job_id)

    def jobs(self, state: JobState | None = None) -> list[Job]:
        with self._lock:
            if state is None:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY id").fetchall()
            else:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = ? ORDER BY id",
                                        (state.value,)).fetchall()
        return [_job(row) for row in rows]

    def counts(self) -> dict[tuple[JobKind, JobState], int]:
        """Jobs by kind and state, every pair present."""
        with self._lock:
            rows = self._db.execute("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state").fetchall()
        counts = {(kind, state): 0 for kind in JobKind for state in JobState}
        counts.update({(JobKind(kind), JobState(state)): count for kind, state, count in rows})
        return counts

    def segmentations_of(self, series_instance_uid: str) -> list[Job]:
        """The segmentation jobs of a series, whatever their state: a reference
        SEG may arrive before ours is done, and its QA job waits by retrying."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE kind = ? AND series_instance_uid = ? ORDER BY id",
                (JobKind.SEGMENT.value, series_instance_uid),
            ).fetchall()
        return [_job(row) for row in rows]

    def jobs_in_study(self, study_instance_uid: str, kind: JobKind) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE kind = ? AND study_instance_uid = ? ORDER BY id",
                (kind.value, study_instance_uid),
            ).fetchall()
        return [_job(row) for row in rows]

    def jobs_reading(self, study_instance_uids: list[str]) -> list[Job]:
        """The jobs that read a series of these studies: the studies' own jobs,
        and QA jobs whose subject is one of their series (retention, node/retention/policy.py)."""
        studies = json.dumps(study_instance_uids)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE study_instance_uid IN (SELECT value FROM json_each(?)) "
                f"UNION SELECT {_COLUMNS} FROM jobs WHERE subject IN (SELECT series_instance_uid FROM series "
                "WHERE study_instance_uid IN (SELECT value FROM json_each(?))) ORDER BY id",
                (studies, studies),
            ).fetchall()
        return [_job(row) for row in rows]

    @staticmethod
    def _get(db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id}")
        return _job(row)

    @staticmethod
    def _record_failure(
        db: sqlite3.Connection, job: Job, event: JobEvent, error: str, settings: JobSettings, now: float
    ) -> None:
        state = next_state(job.id, job.state, event)
        if event == JobEvent.ATTEMPTS_EXHAUSTED:
            not_before = job.not_before
        else:
            not_before = now + retry_delay(job.attempts, settings)
        db.execute(
            "UPDATE jobs SET state = ?, owner = NULL, lease_until = NULL, not_before = ?, error = ?, "
            "updated_at = ? WHERE id = ?",
            (state.value, not_before, error, now, job.id),
        )

    def _owned_update(
        self, job_id: int, owner: str, event: JobEvent | None, assignments: str, values: tuple
    ) -> None:
        """Change a job that `owner` runs, with the state change of `event`
        (None: it stays running), or raise LeaseLostError."""
        if event is None:
            where, states = "state = ?", (JobState.RUNNING.value,)
        else:
            where, states = _state_in(event)
            assignments = f"state = ?, {assignments}"
            values = (TRANSITIONS[event].leads_to.value, *values)

        def steps(db: sqlite3.Connection) -> None:
            changed = db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND owner = ? AND {where}",
                (*values, job_id, owner, *states),
            ).rowcount
            if changed != 1:
                row = db.execute("SELECT state, owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise LeaseLostError(f"job {job_id} is no longer run by {owner}: there is no such job")
                raise _lease_lost(job_id, owner, JobState(row[0]), row[1], event)

        self._write(steps)
