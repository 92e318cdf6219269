"""Handover: every complete series is routed into its jobs, exactly once.

It runs after each round of series assembly and takes every series in the
complete state, so a series completed just before a crash is dispatched
after the restart. Routing and queueing happen in one transaction with the
series' move to dispatched (node/queue/jobs.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from config import SegnodeConfig
from node.assemble.routing import SEGMENTED_MODALITY, jobs_for, series_facts
from node.queue.courses import CourseStore
from node.queue.job_state import JobState
from node.queue.jobs import Job, JobKind, JobQueue
from node.queue.results import SegmentResult
from node.receive.index import InstanceIndex
from node.receive.series_state import InvalidTransition, SeriesState

LOG = logging.getLogger(__name__)

PET_MODALITY = "PT"


class Handover:
    """Hands complete series to the queue as their jobs, after each round of assembly."""

    def __init__(self, index: InstanceIndex, queue: JobQueue, courses: CourseStore,
                 config: Callable[[], SegnodeConfig]):
        self._index = index
        self._queue = queue
        self._courses = courses
        self._config = config

    def hand_over_complete(self) -> int:
        """Route and queue every complete series; returns the jobs queued."""
        queued = 0
        config = self._config()
        for record in self._index.series_in_state(SeriesState.COMPLETE):
            uid = record.series_instance_uid
            facts = None
            try:
                facts = series_facts(record, self._index, config.node.ae_title)
                jobs = jobs_for(record, facts, config, self._queue)
            except (OSError, ValueError) as exc:
                LOG.error("series %s cannot be routed (%s): no job", uid, exc)
                jobs = []
            try:
                ids = self._queue.enqueue_series(uid, jobs)
            except InvalidTransition:
                continue  # a late instance reopened it meanwhile; it completes again
            for job, job_id in zip(jobs, ids, strict=True):
                LOG.info("series %s: job %d (%s) on route %s for %s", uid, job_id, job.kind.value,
                         job.route, ", ".join(job.destinations))
            if not jobs:
                LOG.info("series %s (%s): no route applies", uid, record.modality or "no modality")
            if record.modality == PET_MODALITY:
                self._measure_again_with_pet(record.study_instance_uid, uid)
            if record.modality == SEGMENTED_MODALITY or (facts is not None and facts.reference_subjects):
                self._read_time_points_again(record.study_instance_uid, uid,
                                             () if facts is None else facts.reference_subjects)
            queued += len(jobs)
        return queued

    def _read_time_points_again(self, study_instance_uid: str, series: str,
                                segmented: tuple[str, ...]) -> None:
        """A CT, or someone's SEG of CT series `segmented`, completed: the
        dosimetry time points of the study that failed for want of it (no
        CT yet, a model without the organ) are read again, and so are those
        whose organs came from a CT that a physician has now segmented (the
        SEG takes precedence over the model)."""
        failed = [job for job in self._queue.jobs_in_study(study_instance_uid, JobKind.DOSIMETRY)
                  if job.state == JobState.FAILED]
        superseded = [self._queue.get(job_id)
                      for ct in segmented for job_id in self._courses.jobs_reading_ct(ct)]
        for job in {job.id: job for job in (*failed, *superseded)}.values():
            self._retry(job, f"series {series} arrived after job {job.id} read its time point")

    def _retry(self, job: Job, why: str) -> None:
        try:
            self._queue.retry(job.id)
        except ValueError as exc:  # running (it reads the new series anyway), or its SPECT removed meanwhile
            LOG.info("%s; not queued again: %s", why, exc)
            return
        LOG.info("%s: queued again", why)

    def _measure_again_with_pet(self, study_instance_uid: str, pet_series: str) -> None:
        """A PET series that completes after its study's CT was measured
        without it: queue the CT's finished jobs again, now with PET (the
        objects get new UIDs, their inputs having changed)."""
        for job in self._queue.jobs_in_study(study_instance_uid, JobKind.SEGMENT):
            if job.state == JobState.DONE and isinstance(job.result, SegmentResult) and not job.result.pet:
                try:
                    self._queue.retry(job.id)
                except ValueError as exc:  # its CT was removed by retention meanwhile
                    LOG.warning("PET series %s arrived after job %d, which is not measured again: %s",
                                pet_series, job.id, exc)
                    continue
                LOG.info("PET series %s arrived after job %d: queued again to add PET measurements",
                         pet_series, job.id)
