"""The node's side before a job runs: its inputs, read from the index and the queue.

What a job reads is decided here, when it starts, from what is stored then:
the newest complete series of each kind it needs (a PET of the CT's study
and Frame of Reference, the CT of a SPECT time point, a physician's SEG of
that CT). A series still arriving, or removed by the retention policy, is
not an input; a job without the inputs it must have fails saying which, and
is read again when they arrive (node/assemble/handover.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pydicom

from config import SegnodeConfig
from dicomio.seg_reference import reference_subjects
from node.queue.job_state import JobState
from node.queue.jobs import Job, JobKind, JobQueue
from node.queue.results import SegmentResult
from node.receive.index import InstanceIndex
from node.receive.series_state import SeriesState
from node.work.job_spec import JobSpec
from node.work.pipeline import PipelineError


def results_dir(storage_dir: Path, job: Job) -> Path:
    """Where a job's outputs are kept (and sent from)."""
    return Path(storage_dir) / "results" / job.series_instance_uid / f"{job.kind.value}-{job.route}"


def prepare(job: Job, config: SegnodeConfig, index: InstanceIndex, queue: JobQueue) -> JobSpec:
    """The inputs of `job` as they are stored now.

    Raises
    ------
    PipelineError
        An input the job must have is missing: its own series (removed by
        retention), a QA job's finished segmentation, a time point's CT.
    """
    inputs = _stored_files(index, job.series_instance_uid)
    spec = JobSpec(
        job_id=job.id, kind=job.kind, series_instance_uid=job.series_instance_uid, route=job.route,
        pipeline=job.pipeline, destinations=job.destinations, created=job.queued_at,
        results=results_dir(config.node.storage_dir, job), inputs=inputs,
    )
    if job.kind == JobKind.SEGMENT:
        series = index.series(job.series_instance_uid)
        notes = () if series is None or series.completion_note is None else (series.completion_note,)
        frame = _frame_of_reference(inputs[0])
        pet = next((files for files in _complete_series(index, job.study_instance_uid, "PT")
                    if _frame_of_reference(files[0]) == frame), ())
        return replace(spec, pet=pet, notes=notes)
    if job.kind == JobKind.QA:
        return replace(spec, ct=tuple(i.path for i in index.instances_of(job.subject)),
                     ours=_our_segmentation(queue, job))
    frame = _frame_of_reference(inputs[0])
    ct = next((files for files in _complete_series(index, job.study_instance_uid, "CT")
               if _frame_of_reference(files[0]) == frame), None)
    if ct is None:
        raise PipelineError(
            f"study {job.study_instance_uid} has no complete CT in the SPECT's Frame of Reference "
            f"{frame}: the time point is read when one arrives"
        )
    return replace(spec, ct=ct, seg=_reference_seg(index, job.study_instance_uid, ct[0]))


def _stored_files(index: InstanceIndex, series_instance_uid: str) -> tuple[Path, ...]:
    """A job's input series; a job retried after the retention policy removed
    it (node/retention/policy.py) finds none and fails saying so."""
    files = tuple(i.path for i in index.instances_of(series_instance_uid))
    if not files:
        raise PipelineError(f"series {series_instance_uid} has no stored instances (removed by the "
                            "retention policy?); it must be sent again")
    return files


def _our_segmentation(queue: JobQueue, job: Job) -> SegmentResult:
    """The latest finished segmentation of the QA job's subject on its route;
    none finished yet fails the attempt, and the job waits for it by retrying."""
    ours = [j for j in queue.segmentations_of(job.subject) if j.route == job.route]
    done = [j.result for j in ours if j.state == JobState.DONE and isinstance(j.result, SegmentResult)]
    if not done:
        states = ", ".join(j.state.value for j in ours) or "none"
        raise PipelineError(f"our segmentation of the series is not finished (jobs: {states})")
    return done[-1]


def _reference_seg(index: InstanceIndex, study_instance_uid: str, ct_file: Path) -> Path | None:
    """The newest SEG of the time point's CT that someone else sent (a physician's)."""
    ct = pydicom.dcmread(ct_file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    for files in _complete_series(index, study_instance_uid, "SEG"):
        if ct.SeriesInstanceUID in reference_subjects(pydicom.dcmread(files[0], stop_before_pixels=True)):
            return files[0]
    return None


def _complete_series(index: InstanceIndex, study_instance_uid: str,
                     modality: str) -> Iterator[tuple[Path, ...]]:
    """The stored files of each complete series of `modality` in the study, newest first."""
    for series in reversed(index.series_of_study(study_instance_uid)):
        complete = series.state in (SeriesState.COMPLETE, SeriesState.DISPATCHED)
        files = tuple(i.path for i in index.instances_of(series.series_instance_uid))
        if series.modality == modality and complete and files:  # not arriving, nor removed by retention
            yield files


def _frame_of_reference(path: Path) -> str | None:
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
    return header.get("FrameOfReferenceUID")
