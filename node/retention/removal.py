"""Carrying out the retention policy's removals durably, and gathering the
facts it judges (node/retention/policy.py).

A removal is two transactions around the deletion of its files:

1. Under the index database's write lock (``BEGIN IMMEDIATE``, the lock that
   the node's thread and a manual ``segnode storage purge`` share), the study
   is judged again as it is now. If the removal is still allowed, a
   ``removals`` row is written without ``removed_at``: the intent. A series
   whose instances go moves to ``removing``, in which it refuses instances.
2. The files are deleted and their folders fsync'ed.
3. The series' instance rows leave the index, the series becomes
   ``removed`` and the row gets its ``removed_at``.

A kill between 1 and 3 leaves a row without ``removed_at``;
:meth:`RemovalStore.finish_interrupted` (at the node's start and before
each pass) deletes again, skipping what is gone, and records.

Emptied series and study folders are removed too; the instance store makes
one again if an instance of the series comes later (node/receive/storage.py).

An MPPS step (node/retention/steps.py) goes the way node/receive/step_files.py
replaces its versions: its rows and promises leave the index in one
transaction, judged again under the write lock, and then its file is
deleted. A kill in between leaves a file that no row names, an orphan that
the next pass deletes (:meth:`RemovalStore.remove_orphan_steps`); the index
never names a missing file. Steps are no ``removals`` rows: a step is a few
kB to a MB, not worth a ledger, and its removal is logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config.schema import RetentionSettings
from dicomio.files import fsync_folder
from node.database import open_database, transaction
from node.queue.jobs import Job, JobQueue
from node.receive.index import INDEX_FILENAME, InstanceIndex, SeriesRecord
from node.receive.mpps import StepStatus
from node.receive.series_state import SeriesEvent, SeriesState, next_state
from node.receive.step_files import StepFiles
from node.retention.policy import (
    JobActivity,
    Removal,
    RemovalKind,
    RemovalReason,
    ResultFiles,
    SeriesFiles,
    StudyActivity,
    still_allowed,
)
from node.retention.steps import StepActivity, step_due
from node.send.outbox import JobDeliveries, OutboxStore
from node.work.preparation import results_dir

LOG = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS removals (
    id                  INTEGER PRIMARY KEY,
    kind                TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    job_id              INTEGER,
    path                TEXT,
    reason              TEXT NOT NULL,
    files               INTEGER NOT NULL,
    bytes               INTEGER NOT NULL,
    decided_at          REAL NOT NULL,
    removed_at          REAL
);
CREATE INDEX IF NOT EXISTS removals_by_time ON removals(removed_at);
-- The check under the write lock looks up the jobs reading one study
-- (JobQueue.jobs_reading): 29 ms by a scan of 52,000 jobs, 1 ms by these.
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs(study_instance_uid);
CREATE INDEX IF NOT EXISTS jobs_by_subject ON jobs(subject);
-- A step's promises, looked up by the step at each pass.
CREATE INDEX IF NOT EXISTS promised_series_by_step ON promised_series(step_uid);
"""

_KEPT_STATES = (SeriesState.RECEIVING, SeriesState.COMPLETE, SeriesState.DISPATCHED, SeriesState.REMOVING)


@dataclass(frozen=True)
class RemovalRecord:
    """A removal as the index records it (``removed_at`` None: under way or interrupted)."""

    id: int
    kind: RemovalKind
    study_instance_uid: str
    series_instance_uid: str
    job_id: int | None
    path: Path | None
    reason: RemovalReason
    files: int
    bytes: int
    decided_at: float
    removed_at: float | None


@dataclass(frozen=True)
class StoredBytes:
    """What the store holds: received instances (by the index) and results (on disk)."""

    instances: int
    results: int


def _folder_files(folder: Path) -> Iterator[os.DirEntry]:
    """The files under ``folder``; nothing when it is gone (a job may be writing it)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _folder_files(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield entry
        except FileNotFoundError:
            continue


def _result_files(folder: Path) -> ResultFiles | None:
    files = sizes = 0
    for entry in _folder_files(folder):
        try:
            sizes += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        files += 1
    return ResultFiles(folder, files, sizes) if folder.is_dir() else None


class RemovalStore:
    """Facts for the policy and durable removals, on connections of its own
    (so that holding the database's write lock never waits on a lock of
    the node's index, queue or outbox objects)."""

    def __init__(self, storage_dir: Path):
        self.storage_dir = Path(storage_dir)
        self.results_root = self.storage_dir / "results"
        self._index = InstanceIndex(self.storage_dir)
        self._queue = JobQueue(self.storage_dir)  # before _SCHEMA, which indexes its table
        self._outbox = OutboxStore(self.storage_dir)
        self._steps = StepFiles(self.storage_dir)
        self._db = open_database(self.storage_dir / INDEX_FILENAME, _SCHEMA)
        # Re-entrant: a removal reads the study's activity inside its transaction.
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._outbox.close()
        self._queue.close()
        self._index.close()

    # Facts --------------------------------------------------------------------

    def activity(self, study_instance_uid: str | None = None) -> list[StudyActivity]:
        """One study's activity, or that of every study that still has files."""
        if study_instance_uid is not None:
            studies = [study_instance_uid]
        else:
            kept = {r.study_instance_uid
                    for state in _KEPT_STATES for r in self._index.series_in_state(state)}
            studies = sorted(kept | self._studies_with_results())
        series = {study: self._index.series_of_study(study) for study in studies}
        jobs = self._queue.jobs_reading(studies)
        deliveries = {d.job_id: d for d in self._outbox.deliveries([job.id for job in jobs])}
        activities = []
        for study in studies:
            uids = {s.series_instance_uid for s in series[study]}
            reading = [job for job in jobs if job.study_instance_uid == study or job.subject in uids]
            activities.append(StudyActivity(
                study,
                tuple(self._series_files(s) for s in series[study] if s.state != SeriesState.REMOVED),
                tuple(self._job_activity(job, deliveries.get(job.id)) for job in reading),
            ))
        return activities

    def _series_files(self, record: SeriesRecord) -> SeriesFiles:
        with self._lock:
            files, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances WHERE series_instance_uid = ?",
                (record.series_instance_uid,),
            ).fetchone()
        return SeriesFiles(record.series_instance_uid, record.state, files, size, record.last_received)

    def _job_activity(self, job: Job, deliveries: JobDeliveries | None) -> JobActivity:
        return JobActivity(
            job.id, job.study_instance_uid, job.series_instance_uid, job.state, job.updated_at,
            deliveries.pending if deliveries else 0, deliveries.last_settled if deliveries else None,
            _result_files(results_dir(self.storage_dir, job)),
        )

    def _studies_with_results(self) -> set[str]:
        """Studies whose series are all removed may still have results on disk."""
        try:
            folders = [entry.name for entry in os.scandir(self.results_root) if entry.is_dir()]
        except FileNotFoundError:
            return set()
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT study_instance_uid FROM series WHERE series_instance_uid IN "
                "(SELECT value FROM json_each(?))",
                (json.dumps(folders),),
            ).fetchall()
        return {study for (study,) in rows}

    def stored_bytes(self) -> StoredBytes:
        with self._lock:
            (instances,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM instances").fetchone()
        results = 0
        for entry in _folder_files(self.results_root):
            try:
                results += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
        return StoredBytes(instances, results)

    def removals(self, limit: int = 100) -> list[RemovalRecord]:
        """The latest removals, newest first (interrupted ones among them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, study_instance_uid, series_instance_uid, job_id, path, reason, files, "
                "bytes, decided_at, removed_at FROM removals ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            RemovalRecord(row[0], RemovalKind(row[1]), row[2], row[3], row[4],
                          Path(row[5]) if row[5] else None, RemovalReason(row[6]), *row[7:])
            for row in rows
        ]

    # Removals -------------------------------------------------------------------

    def remove(self, removal: Removal, settings: RetentionSettings, now: float) -> bool:
        """Carry out ``removal`` if the policy, judging the study again under
        the write lock, still allows it; False when it no longer applies
        (removed by someone else first, a job retried, an instance arrived)."""
        with self._lock, transaction(self._db):
            (study,) = self.activity(removal.study_instance_uid)
            if not still_allowed(removal, study, settings, now):
                return False
            if removal.kind == RemovalKind.INSTANCES:
                series = next(s for s in study.series if s.series_instance_uid == removal.series_instance_uid)
                state = next_state(series.state, SeriesEvent.RETENTION_DUE)
                self._db.execute("UPDATE series SET state = ? WHERE series_instance_uid = ?",
                                 (state.value, series.series_instance_uid))
                files, size, path = series.files, series.bytes, None
            else:
                job = next(j for j in study.jobs if j.job_id == removal.job_id)
                assert job.results is not None  # still_allowed found a results removal
                files, size, path = job.results.files, job.results.bytes, str(job.results.path)
            removal_id = self._db.execute(
                "INSERT INTO removals (kind, study_instance_uid, series_instance_uid, job_id, path, reason, "
                "files, bytes, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (removal.kind.value, removal.study_instance_uid, removal.series_instance_uid, removal.job_id,
                 path, removal.reason.value, files, size, time.time()),
            ).lastrowid
        return self._finish(removal_id)

    def finish_interrupted(self) -> int:
        """Complete the removals a kill left between intent and record; returns how many."""
        with self._lock:
            ids = [row[0] for row in self._db.execute(
                "SELECT id FROM removals WHERE removed_at IS NULL ORDER BY id").fetchall()]
        finished = 0
        for removal_id in ids:
            try:
                done = self._finish(removal_id)
            except OSError as exc:  # one stuck removal must not keep the node from starting
                LOG.error("removal %d cannot be finished: %s", removal_id, exc)
                continue
            if done:
                LOG.info("finished removal %d, interrupted earlier", removal_id)
                finished += 1
        return finished

    def _finish(self, removal_id: int) -> bool:
        """Delete a recorded removal's files, then record it done; False when
        another process finished it first."""
        with self._lock:
            row = self._db.execute(
                "SELECT kind, series_instance_uid, path FROM removals WHERE id = ? AND removed_at IS NULL",
                (removal_id,),
            ).fetchone()
        if row is None:
            return False
        kind, series_uid, path = RemovalKind(row[0]), row[1], row[2]
        if kind == RemovalKind.INSTANCES:
            folders = set()
            for instance in self._index.instances_of(series_uid):
                instance.path.unlink(missing_ok=True)
                folders.add(instance.path.parent)
            for folder in folders:
                fsync_folder(folder, missing_ok=True)
                # The series' folder, and its study's once empty: a store that
                # runs for months would otherwise keep a folder per series.
                # InstanceStore.keep makes a folder again if an instance comes.
                for emptied in (folder, folder.parent):
                    try:
                        emptied.rmdir()
                    except OSError:
                        break  # not empty: a new instance, or the study's other series
                    fsync_folder(emptied.parent, missing_ok=True)
        else:
            folder = Path(path)
            shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.parent.rmdir()  # the series' results folder, once its last job's is gone
            except OSError:
                pass
            fsync_folder(folder.parent, missing_ok=True)
            fsync_folder(self.results_root, missing_ok=True)
        with self._lock, transaction(self._db):
            if kind == RemovalKind.INSTANCES:
                (state,) = self._db.execute("SELECT state FROM series WHERE series_instance_uid = ?",
                                            (series_uid,)).fetchone()
                if state == SeriesState.REMOVING.value:
                    self._db.execute("DELETE FROM instances WHERE series_instance_uid = ?", (series_uid,))
                    self._db.execute(
                        "UPDATE series SET state = ? WHERE series_instance_uid = ?",
                        (next_state(SeriesState.REMOVING, SeriesEvent.FILES_REMOVED).value, series_uid))
            return self._db.execute(
                "UPDATE removals SET removed_at = ? WHERE id = ? AND removed_at IS NULL",
                (time.time(), removal_id),
            ).rowcount == 1

    # MPPS steps -----------------------------------------------------------------

    def steps(self, sop_instance_uid: str | None = None) -> list[StepActivity]:
        """Every stored step, or the one named."""
        where, parameters = ("", ()) if sop_instance_uid is None else (
            "WHERE st.sop_instance_uid = ?", (sop_instance_uid,))
        with self._lock:
            rows = self._db.execute(
                "SELECT st.sop_instance_uid, st.status, st.path, st.updated, EXISTS (SELECT 1 "
                " FROM promised_series p JOIN series s ON s.series_instance_uid = p.series_instance_uid"
                " WHERE p.step_uid = st.sop_instance_uid AND s.state = ?) "
                f"FROM steps st {where}",
                (SeriesState.RECEIVING.value, *parameters),
            ).fetchall()
        return [StepActivity(uid, StepStatus(status), Path(path), updated, bool(awaited))
                for uid, status, path, updated, awaited in rows]

    def remove_step(self, step: StepActivity, settings: RetentionSettings, now: float) -> int | None:
        """Remove ``step`` if the rule, judging it again under the write lock,
        still allows it; the bytes freed, or None when it no longer applies
        (an N-SET, a series it promised reopened, another process first)."""
        path = self._forget_step(step.sop_instance_uid, settings, now)
        if path is None:
            return None
        size = StepFiles.size(path)
        self._steps.remove(path)
        return size

    def _forget_step(self, sop_instance_uid: str, settings: RetentionSettings, now: float) -> Path | None:
        """The first half of :meth:`remove_step`: the step's rows and promises
        (those it still holds: a later step may have taken a series over);
        the file to delete then."""
        with self._lock, transaction(self._db):
            fresh = self.steps(sop_instance_uid)
            if not fresh or not step_due(fresh[0], settings, now):
                return None
            self._db.execute(
                "DELETE FROM promised_instances WHERE series_instance_uid IN "
                "(SELECT series_instance_uid FROM promised_series WHERE step_uid = ?)",
                (sop_instance_uid,),
            )
            self._db.execute("DELETE FROM promised_series WHERE step_uid = ?", (sop_instance_uid,))
            self._db.execute("DELETE FROM steps WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return fresh[0].path

    def remove_orphan_steps(self, now: float) -> int:
        """Delete the step files that no step row names (node/receive/step_files.py); how many."""
        with self._lock:
            named = {Path(path).name for (path,) in self._db.execute("SELECT path FROM steps").fetchall()}
        orphans = self._steps.orphans(named, now)
        for path in orphans:
            self._steps.remove(path)
        return len(orphans)
