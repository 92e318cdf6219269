"""The node's side after a job ran: what it made, queued to send and recorded.

Each object is queued for each of the job's destinations that takes it,
under the job and its SOP Instance UID: a rerun that made the same objects
queues nothing new, one whose inputs changed (new UIDs) sends its objects
again. A destination no longer configured gets everything queued, and the
outbox says why it cannot be sent. A dosimetry time point's reading joins
its course (node/queue/courses.py), which is evaluated here once it has its
points: the course is the node's, whoever read the point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from config import SegnodeConfig
from node.queue.courses import CourseStore
from node.queue.jobs import Job, JobKind
from node.queue.results import DosimetryResult, JobResult
from node.send.outbox import OutboxStore
from node.work.dosimetry import dosimetry_settings, report_course
from node.work.execution import HEADERS_FOLDER
from node.work.job_spec import JobOutcome
from node.work.outputs import OutputObject
from node.work.pipeline import PipelineError
from node.work.preparation import results_dir

LOG = logging.getLogger("segnode.worker")

#: The folder of a time point's results that holds its course's reports.
COURSE_FOLDER = "course"


def record(job: Job, outcome: JobOutcome, config: SegnodeConfig, outbox: OutboxStore,
           courses: CourseStore, device_uid: str) -> JobResult:
    """Queue what `job` made for its destinations and return its result."""
    for warning in outcome.warnings:
        LOG.warning("job %d: %s", job.id, warning)
    if job.kind == JobKind.DOSIMETRY:
        return _record_time_point(job, outcome, config, outbox, courses, device_uid)
    assert outcome.result is not None, f"job {job.id}: a {job.kind.value} job has a result"
    _send(job, outcome.objects, config, outbox)
    _send_research(job, outcome, config, outbox)
    return outcome.result


def _send(job: Job, objects: Sequence[OutputObject], config: SegnodeConfig, outbox: OutboxStore) -> None:
    for name in job.destinations:
        destination = config.destinations.get(name)
        for item in objects:
            if destination is None or item.wanted_by(destination):
                outbox.enqueue(f"{job.id}/{item.sop_instance_uid}", name, [item.path], time.time())


def _send_research(job: Job, outcome: JobOutcome, config: SegnodeConfig, outbox: OutboxStore) -> None:
    route = next((r for r in config.routes if r.name == job.route), None)
    if not outcome.research or route is None or route.research is None:
        return
    for item in outcome.research:
        outbox.enqueue(f"{job.id}/research/{item.sop_instance_uid}", route.research.destination,
                       [item.path], time.time())
    LOG.info("job %d: %d de-identified instance(s) queued for %s", job.id, len(outcome.research),
             route.research.destination)


def _record_time_point(job: Job, outcome: JobOutcome, config: SegnodeConfig, outbox: OutboxStore,
                       courses: CourseStore, device_uid: str) -> DosimetryResult:
    reading = outcome.reading
    assert reading is not None, f"job {job.id}: a time point has its reading"
    pipeline = config.pipelines.get(job.pipeline)
    if pipeline is None or pipeline.dosimetry is None:
        raise PipelineError(f"pipeline {job.pipeline!r} no longer does dosimetry")
    settings = dosimetry_settings(job.pipeline, pipeline)
    out_dir = results_dir(config.node.storage_dir, job)
    course = courses.record(job.route, reading, job.id, out_dir / HEADERS_FOLDER)
    needed = pipeline.dosimetry.time_points
    seconds = dict(outcome.seconds)
    if len(course.points) < needed:
        LOG.info("job %d: time point %d of course %d read (%s); it is evaluated at %d", job.id,
                 len(course.points), course.id, reading.segmentation, needed)
        return DosimetryResult(course.id, len(course.points), needed, seconds, warnings=outcome.warnings)
    started = time.perf_counter()
    report = report_course(course, settings, out_dir / COURSE_FOLDER, device_uid=device_uid,
                           disclaimer=config.reports.disclaimer)
    seconds["report"] = round(time.perf_counter() - started, 3)
    _send(job, report.objects, config, outbox)
    doses = {organ.structure.name: organ.absorbed_dose_gy for organ in report.doses.organs}
    LOG.info("job %d: course %d evaluated on %d time points: %s", job.id, course.id, len(course.points),
             ", ".join(f"{name} {gy:.2f} Gy" for name, gy in doses.items()))
    return DosimetryResult(course.id, len(course.points), needed, seconds,
                           objects=tuple(item.path for item in report.objects), csv=report.csv,
                           doses_gy=doses, warnings=outcome.warnings)
