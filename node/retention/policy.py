"""The retention policy: which stored files may go, and from when.

Pure rules over what the index, the job queue and the outbox say about a
study (:class:`StudyActivity`); node/retention/removal.py gathers those facts and
carries out what is decided here.

Inputs are judged per study, because the jobs of a study read more than
their own series: a CT job reads the study's PET, a QA job reads the CT
series it is about. A study's series are kept while any series of it is
still arriving or waiting to be routed, while any job reading it is queued
or running, and while any result of those jobs waits in the outbox. Once
all is settled, the series go ``instances_hours`` after the last of those
events (the last instance when no route applied), or ``failed_hours``
after the failure when a job failed for good and was not retried.

A result file a destination refused for good ("given up" in the outbox)
counts as settled: sending it again needs the result, which is kept for
``results_hours``, not the inputs.

Below the low watermark, settled studies and results (not failed ones, which
wait for a retry) may go before their time, oldest settled first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from config.schema import RetentionSettings
from node.queue.job_state import JobState
from node.receive.series_state import SeriesState

_HOUR = 3600.0


class RemovalKind(StrEnum):
    INSTANCES = "instances"  # a series' received files
    RESULTS = "results"  # a job's output folder


class RemovalReason(StrEnum):
    DELIVERED = "delivered"  # every job finished and every result was delivered
    NO_ROUTE = "no-route"  # no job was made for the study
    FAILED = "failed"  # a job failed for good and was not retried
    LOW_SPACE = "low-space"  # settled, removed early below the low watermark


_EARLY = (RemovalReason.DELIVERED, RemovalReason.NO_ROUTE)


@dataclass(frozen=True)
class SeriesFiles:
    """A series that still has files, as the index holds it."""

    series_instance_uid: str
    state: SeriesState
    files: int
    bytes: int
    last_received: float


@dataclass(frozen=True)
class ResultFiles:
    """A job's output folder on disk."""

    path: Path
    files: int
    bytes: int


@dataclass(frozen=True)
class JobActivity:
    """A job that reads a study, and where its results stand in the outbox.

    ``finished_at`` is the job's last change (its end, for a finished job);
    ``last_delivery`` the latest delivery or giving-up of one of its files.
    """

    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    state: JobState
    finished_at: float
    pending_results: int
    last_delivery: float | None
    results: ResultFiles | None


@dataclass(frozen=True)
class StudyActivity:
    """Everything the policy needs about one study: its series not yet
    removed, and every job that reads one of them."""

    study_instance_uid: str
    series: tuple[SeriesFiles, ...]
    jobs: tuple[JobActivity, ...]


@dataclass(frozen=True)
class Removal:
    """Files the policy allows to remove: a series' instances or a job's results.

    ``settled_at`` is when nothing needed them any more, ``due_at`` when the
    retention period ends (earlier than now for a due removal).
    """

    kind: RemovalKind
    study_instance_uid: str
    series_instance_uid: str
    job_id: int | None
    path: Path | None
    files: int
    bytes: int
    reason: RemovalReason
    settled_at: float
    due_at: float

    def same_files(self, other: Removal) -> bool:
        return (self.kind, self.series_instance_uid, self.job_id) == (
            other.kind, other.series_instance_uid, other.job_id)


def _busy(job: JobActivity) -> bool:
    return job.state in (JobState.QUEUED, JobState.RUNNING) or job.pending_results > 0


def _study_removals(study: StudyActivity, settings: RetentionSettings) -> list[Removal]:
    """The study's dispatched series, if nothing keeps them."""
    if not study.series:
        return []  # all removed already; its results may remain
    if any(s.state != SeriesState.DISPATCHED for s in study.series):
        return []  # still arriving, waiting to be routed, or being removed
    if any(_busy(job) for job in study.jobs):
        return []
    failed = [job.finished_at for job in study.jobs if job.state == JobState.FAILED]
    if failed:
        reason, settled, hours = RemovalReason.FAILED, max(failed), settings.failed_hours
    else:
        events = [s.last_received for s in study.series]
        events += [job.finished_at for job in study.jobs]
        events += [job.last_delivery for job in study.jobs if job.last_delivery is not None]
        reason = RemovalReason.DELIVERED if study.jobs else RemovalReason.NO_ROUTE
        settled, hours = max(events), settings.instances_hours
    return [
        Removal(RemovalKind.INSTANCES, study.study_instance_uid, s.series_instance_uid, None, None,
                s.files, s.bytes, reason, settled, settled + hours * _HOUR)
        for s in study.series
    ]


def _results_removal(job: JobActivity, settings: RetentionSettings) -> Removal | None:
    if job.results is None or _busy(job):
        return None
    if job.state == JobState.FAILED:
        reason, settled, hours = RemovalReason.FAILED, job.finished_at, settings.failed_hours
    else:
        reason, hours = RemovalReason.DELIVERED, settings.results_hours
        settled = max(job.finished_at, job.last_delivery or job.finished_at)
    return Removal(RemovalKind.RESULTS, job.study_instance_uid, job.series_instance_uid, job.job_id,
                   job.results.path, job.results.files, job.results.bytes, reason, settled,
                   settled + hours * _HOUR)


def candidates(study: StudyActivity, settings: RetentionSettings) -> list[Removal]:
    """Every removal the rules allow in ``study``, due or not yet: its
    series, and the results of its own jobs (a QA job's results belong to the
    study of the SEG it checked)."""
    removals = _study_removals(study, settings)
    for job in study.jobs:
        if job.study_instance_uid == study.study_instance_uid:
            removal = _results_removal(job, settings)
            if removal is not None:
                removals.append(removal)
    return removals


def plan(
    studies: Sequence[StudyActivity], settings: RetentionSettings, now: float, shortfall_bytes: int = 0
) -> list[Removal]:
    """What to remove now: every due removal, oldest due first, then, while
    ``shortfall_bytes`` (what free space lacks to reach the low watermark)
    is not covered, settled files before their time, oldest settled first."""
    allowed = [removal for study in studies for removal in candidates(study, settings)]
    due = sorted((r for r in allowed if r.due_at <= now), key=lambda r: r.due_at)
    shortfall = shortfall_bytes - sum(r.bytes for r in due)
    early = []
    for removal in sorted((r for r in allowed if r.due_at > now and r.reason in _EARLY),
                          key=lambda r: r.settled_at):
        if shortfall <= 0:
            break
        early.append(replace(removal, reason=RemovalReason.LOW_SPACE))
        shortfall -= removal.bytes
    return due + early


def still_allowed(removal: Removal, study: StudyActivity, settings: RetentionSettings, now: float) -> bool:
    """Whether ``removal``, planned earlier, is allowed by the study as it is now."""
    for fresh in candidates(study, settings):
        if fresh.same_files(removal):
            if removal.reason == RemovalReason.LOW_SPACE:
                return fresh.reason in _EARLY
            return fresh.due_at <= now
    return False
