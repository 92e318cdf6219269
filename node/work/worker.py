"""A worker process: takes jobs from the queue and runs them.

Workers are processes of their own, not threads of the node, so that
whatever inference does to a process (a CUDA fault, running out of memory,
a hung native library) leaves the node receiving. Each keeps the models it
loaded warm for the next job. While it runs a job it renews the job's lease;
when its node goes away it stops too, and the node that starts next queues
the job again (node/work/worker_pool.py has the kernel kill it with its node).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pydicom

from config import (
    ConfigError,
    ResearchKeyError,
    file_signature,
    load_config,
    read_for_reload,
    read_research_key,
    reloaded,
)
from dicomio.deidentify import Deidentifier, NotExportable
from dicomio.seg_reference import reference_subjects
from inference.model_store import ModelStore
from inference.segmenter import Segmenter
from inference.segmenters import open_segmenter
from node.queue.courses import CourseStore
from node.queue.jobs import Job, JobKind, JobQueue, LeaseLostError
from node.queue.results import ComparisonResult, DosimetryResult, SegmentResult
from node.receive.index import InstanceIndex
from node.receive.series_state import SeriesState
from node.receive.storage import installation_uid
from node.send.outbox import OutboxStore
from node.work.comparison import compare_with_reference
from node.work.dosimetry import (
    TimePointSources,
    dosimetry_settings,
    load_spect,
    read_time_point,
    report_course,
)
from node.work.outputs import OutputObject, OutputPlan, SegFormat
from node.work.pipeline import PipelineError, PipelineInputs, run_pipeline
from node.work.research import export_for_research, research_profile
from node.work.stopwatch import Stopwatch

LOG = logging.getLogger("segnode.worker")

#: A job whose worker has not renewed its lease for this long is taken back.
LEASE_SECONDS = 60.0
_IDLE_POLL_SECONDS = 0.25


class _Stopping(Exception):
    """SIGTERM arrived: give the job back and exit."""


def results_dir(storage_dir: Path, job: Job) -> Path:
    """Where a job's outputs are kept (and sent from)."""
    return Path(storage_dir) / "results" / job.series_instance_uid / f"{job.kind.value}-{job.route}"


class Worker:
    """One worker: a device, the models loaded on it, the job loop."""

    def __init__(self, config_path: Path, name: str, device: str):
        self.config_path = Path(config_path)
        self.owner = f"{name}:{os.getpid()}"
        self.device = device
        # The node's copy, checked by the node: a certificate that expired since
        # must not keep a restarted worker from its jobs.
        self.config = load_config(self.config_path, check_files=False)
        self._config_signature = file_signature(self.config_path)
        storage = self.config.node.storage_dir
        self.queue = JobQueue(storage)
        self.index = InstanceIndex(storage)
        self.outbox = OutboxStore(storage)
        self.courses = CourseStore(storage)
        self.device_uid = installation_uid(storage)
        self._segmenters: dict[tuple[str, str], Segmenter] = {}
        self._parent = os.getppid()
        self._running: Job | None = None
        self._stopping = False

    def run(self) -> None:
        threading.Thread(target=self._keep_lease, name="lease", daemon=True).start()
        LOG.info("%s ready on %s", self.owner, self.device)
        while not self._stopping:
            self._reload_if_changed()
            job = self.queue.claim(self.owner, LEASE_SECONDS)
            if job is None:
                time.sleep(_IDLE_POLL_SECONDS)
                continue
            self._run(job)

    def stop(self) -> None:
        """From the SIGTERM handler: leave the current job to another worker."""
        self._stopping = True
        if self._running is not None:
            raise _Stopping

    def _run(self, job: Job) -> None:
        LOG.info("job %d (%s of series %s, route %s): attempt %d", job.id, job.kind.value,
                 job.series_instance_uid, job.route, job.attempts)
        self._running = job
        start = time.monotonic()
        try:
            kinds = {JobKind.SEGMENT: self._segment, JobKind.QA: self._compare,
                     JobKind.DOSIMETRY: self._dosimetry}
            result = kinds[job.kind](job)
            self._running = None
            self.queue.succeed(job.id, self.owner, result)
            LOG.info("job %d done in %.1f s: %s", job.id, time.monotonic() - start, result.seconds)
        except _Stopping:
            self._running = None
            self.queue.release(job.id, self.owner)
            LOG.info("job %d given back: the worker is stopping", job.id)
        except LeaseLostError as exc:
            self._running = None
            LOG.warning("job %d: %s; its result is dropped", job.id, exc)
        except Exception as exc:  # any failure of a job is the job's, not the worker's
            self._running = None
            reason = f"{type(exc).__name__}: {exc}"
            LOG.log(logging.WARNING if isinstance(exc, PipelineError) else logging.ERROR,
                    "job %d failed: %s", job.id, reason, exc_info=not isinstance(exc, PipelineError))
            try:
                after = self.queue.fail(job.id, self.owner, reason, self.config.jobs)
                LOG.info("job %d is %s (attempt %d of %d)", job.id, after.state.value, after.attempts,
                         self.config.jobs.max_attempts)
            except LeaseLostError:
                LOG.warning("job %d was taken back meanwhile", job.id)

    def _segment(self, job: Job) -> SegmentResult:
        pipeline = self._pipeline(job)
        ct_files = self._stored_files(job.series_instance_uid)
        pet_files = self._pet_files(job, ct_files[0])
        segmenter = self._segmenter(pipeline.model, pipeline.device)
        out_dir = results_dir(self.config.node.storage_dir, job)
        series = self.index.series(job.series_instance_uid)
        notes = () if series is None or series.completion_note is None else (series.completion_note,)
        inputs = PipelineInputs(
            ct_files=ct_files, pet_files=pet_files, pipeline_name=job.pipeline, settings=pipeline,
            created=datetime.fromtimestamp(job.queued_at, timezone.utc), device_uid=self.device_uid,
            notes=notes, reports=self.config.reports,
        )
        destinations = [self.config.destinations[name] for name in job.destinations
                        if name in self.config.destinations]
        result = run_pipeline(inputs, segmenter, out_dir, OutputPlan.for_destinations(destinations))
        for warning in (*notes, *result.warnings):
            LOG.warning("job %d: %s", job.id, warning)
        self._send(job, result.objects)
        # The BINARY SEGs and their SR, as the research destination reads them with the series.
        records = tuple(o.path for o in result.objects
                        if o.kind in ("seg", "sr") and o.seg_format is SegFormat.BINARY)
        self._export_for_research(job, (*ct_files, *records), out_dir)
        return SegmentResult(
            seg=result.seg, sr=result.sr, csv=result.csv, labels=result.labels,
            model=f"{segmenter.algorithm.name} {segmenter.algorithm.version}",
            structures=len(result.measurements), pet=bool(pet_files), seconds=result.seconds,
            notes=notes, objects=tuple(item.path for item in result.objects), warnings=result.warnings,
        )

    def _compare(self, job: Job) -> ComparisonResult:
        pipeline = self._pipeline(job)
        reference = self._stored_files(job.series_instance_uid)[0]
        ours = [j for j in self.queue.segmentations_of(job.subject) if j.route == job.route]
        ct_files = tuple(i.path for i in self.index.instances_of(job.subject))
        out_dir = results_dir(self.config.node.storage_dir, job)
        report = compare_with_reference(reference, ours, ct_files, pipeline, self.device_uid,
                                        datetime.fromtimestamp(job.queued_at, timezone.utc), out_dir)
        self._send(job, (OutputObject("sr", report.result.sr, report.sr_uid),))
        return report.result

    def _dosimetry(self, job: Job) -> DosimetryResult:
        pipeline = self._pipeline(job)
        settings = dosimetry_settings(job.pipeline, pipeline)
        clock = Stopwatch()
        spect_files = self._stored_files(job.series_instance_uid)
        spect = clock.run("load", lambda: load_spect(spect_files))
        ct_files = self._ct_files(job, spect.volume.frame_of_reference_uid)
        sources = TimePointSources(spect, spect_files, ct_files, self._reference_seg(job, ct_files[0]))
        out_dir = results_dir(self.config.node.storage_dir, job)
        reading = clock.run("read", lambda: read_time_point(
            sources, settings, lambda: self._segmenter(pipeline.model, pipeline.device), out_dir / "headers"))
        course = self.courses.record(job.route, reading, job.id, out_dir / "headers")
        warnings = tuple(f"{organ.structure.name} at {reading.hours_after_administration:.1f} h: "
                         f"{organ.misalignment}" for organ in reading.organs if organ.misalignment)
        needed = pipeline.dosimetry.time_points
        if len(course.points) < needed:
            LOG.info("job %d: time point %d of course %d read (%s); it is evaluated at %d", job.id,
                     len(course.points), course.id, reading.segmentation, needed)
            return DosimetryResult(course.id, len(course.points), needed, clock.seconds, warnings=warnings)
        report = clock.run("report", lambda: report_course(
            course, settings, out_dir / "course", device_uid=self.device_uid,
            disclaimer=self.config.reports.disclaimer))
        self._send(job, report.objects)
        doses = {organ.structure.name: organ.absorbed_dose_gy for organ in report.doses.organs}
        LOG.info("job %d: course %d evaluated on %d time points: %s", job.id, course.id, len(course.points),
                 ", ".join(f"{name} {gy:.2f} Gy" for name, gy in doses.items()))
        return DosimetryResult(course.id, len(course.points), needed, clock.seconds,
                               objects=tuple(item.path for item in report.objects), csv=report.csv,
                               doses_gy=doses, warnings=warnings)

    def _ct_files(self, job: Job, frame_of_reference_uid: str) -> tuple[Path, ...]:
        """The newest complete CT of the job's study in the SPECT's Frame of Reference."""
        for files in self._complete_series(job.study_instance_uid, "CT"):
            if _frame_of_reference(files[0]) == frame_of_reference_uid:
                return files
        raise PipelineError(
            f"study {job.study_instance_uid} has no complete CT in the SPECT's Frame of Reference "
            f"{frame_of_reference_uid}: the time point is read when one arrives"
        )

    def _reference_seg(self, job: Job, ct_file: Path) -> Path | None:
        """The newest SEG of the time point's CT that someone else sent (a physician's)."""
        ct = pydicom.dcmread(ct_file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        for files in self._complete_series(job.study_instance_uid, "SEG"):
            if ct.SeriesInstanceUID in reference_subjects(pydicom.dcmread(files[0], stop_before_pixels=True)):
                return files[0]
        return None

    def _complete_series(self, study_instance_uid: str, modality: str) -> Iterator[tuple[Path, ...]]:
        """The stored files of each complete series of `modality` in the study, newest first."""
        for series in reversed(self.index.series_of_study(study_instance_uid)):
            complete = series.state in (SeriesState.COMPLETE, SeriesState.DISPATCHED)
            files = tuple(i.path for i in self.index.instances_of(series.series_instance_uid))
            if series.modality == modality and complete and files:  # not arriving, nor removed by retention
                yield files

    def _stored_files(self, series_instance_uid: str) -> tuple[Path, ...]:
        """A job's input series; a job retried after the retention policy removed
        it (node/retention/policy.py) finds none and fails saying so."""
        files = tuple(i.path for i in self.index.instances_of(series_instance_uid))
        if not files:
            raise PipelineError(f"series {series_instance_uid} has no stored instances (removed by the "
                                "retention policy?); it must be sent again")
        return files

    def _send(self, job: Job, objects: Sequence[OutputObject]) -> None:
        """Queue the objects written for the node's outbox to send, to each of
        the job's destinations that takes them, each under its SOP Instance
        UID: a rerun that wrote the same objects queues nothing new, one whose
        inputs changed (new UIDs) sends its objects again. A destination no
        longer configured gets everything queued, and the outbox says why it
        cannot be sent."""
        for name in job.destinations:
            destination = self.config.destinations.get(name)
            for item in objects:
                if destination is None or item.wanted_by(destination):
                    self.outbox.enqueue(f"{job.id}/{item.sop_instance_uid}", name, [item.path], time.time())

    def _export_for_research(self, job: Job, sources: tuple[Path, ...], out_dir: Path) -> None:
        """Queue a de-identified copy of `sources` for the route's research
        destination, if the route has one (node/work/research.py), under keys
        of their new UIDs, as :meth:`_send` does. A series that must not leave
        is logged and not exported; the job's clinical results stand."""
        route = next((r for r in self.config.routes if r.name == job.route), None)
        if route is None or route.research is None or self.config.research is None:
            return
        try:
            # Read at each export, so that a reload that names another file applies.
            secret = read_research_key(self.config.research.key_file)
        except ResearchKeyError as exc:
            raise PipelineError(f"research.key_file: {exc}") from None
        deidentifier = Deidentifier(secret, research_profile(route.research))
        try:
            exported = export_for_research(sources, deidentifier, out_dir)
        except NotExportable as exc:
            LOG.warning("job %d: not exported for research: %s", job.id, exc)  # names the series
            return
        for item in exported:
            self.outbox.enqueue(f"{job.id}/research/{item.sop_instance_uid}", route.research.destination,
                                [item.path], time.time())
        LOG.info("job %d: %d de-identified instance(s) queued for %s", job.id, len(exported),
                 route.research.destination)

    def _pipeline(self, job: Job):
        pipeline = self.config.pipelines.get(job.pipeline)
        if pipeline is None:
            raise PipelineError(f"pipeline {job.pipeline!r} is no longer configured")
        return pipeline

    def _pet_files(self, job: Job, ct_file: Path) -> tuple[Path, ...]:
        """The newest complete PET series of the job's study in the CT's frame of reference."""
        frame = _frame_of_reference(ct_file)
        return next((files for files in self._complete_series(job.study_instance_uid, "PT")
                     if _frame_of_reference(files[0]) == frame), ())

    def _segmenter(self, model: str, device: str) -> Segmenter:
        device = self.device if device == "auto" else device
        key = (model, device)
        if key not in self._segmenters:
            # models_dir is read at each load: a reload that changes it applies to
            # the models loaded after it, and those loaded already stay warm.
            store = ModelStore(self.config.node.models_dir)
            self._segmenters[key] = open_segmenter(model, store, device)
            LOG.info("%s: model %s loaded on %s", self.owner, model, device)
        return self._segmenters[key]

    def _reload_if_changed(self) -> None:
        """Apply an edited configuration as the node does (its store stays where it is),
        refusing what the node refuses: the same rule, config/reload_guard.py."""
        signature = file_signature(self.config_path)
        if signature is None or signature == self._config_signature:
            return
        self._config_signature = signature
        try:
            loaded = read_for_reload(self.config_path, self.config, check_files=False)
            self.config = reloaded(loaded.config, self.config)
        except ConfigError as exc:
            LOG.error("keeping the configuration in force: %s", exc)

    def _keep_lease(self) -> None:
        """Renew the running job's lease; end the process when the node is gone."""
        while True:
            time.sleep(LEASE_SECONDS / 6)
            if os.getppid() != self._parent:
                LOG.error("%s: the node is gone; stopping", self.owner)
                os._exit(1)
            job = self._running
            if job is not None:
                try:
                    self.queue.renew(job.id, self.owner, LEASE_SECONDS)
                except LeaseLostError as exc:
                    LOG.warning("%s", exc)


def _frame_of_reference(path: Path) -> str | None:
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
    return header.get("FrameOfReferenceUID")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segnode-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s {args.name} %(name)s: %(message)s"
    )
    for chatty in ("pynetdicom", "highdicom"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    worker = Worker(args.config, args.name, args.device)
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.stop())
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
