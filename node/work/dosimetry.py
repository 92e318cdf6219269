"""One SPECT time point of a dosimetry course: read it, and report the course once it has enough.

A dosimetry job is routed for each quantitative SPECT (NM) series of a route
whose pipeline does dosimetry (node/assemble/routing.py). Its CT is the
newest complete CT of the SPECT's study in the SPECT's Frame of Reference
(a SPECT/CT writes both in one); its organs come from a physician's SEG of
that CT where one was sent (it takes precedence: the issue's rule), else
from the pipeline's model, which never guesses an organ it lacks. The
point's reading (inference/dosimetry/course.py) is kept in its course
(node/queue/courses.py) with the headers of its instances, the evidence of
every later report; once the course has ``time_points`` points it is
evaluated from the readings alone and its SR, CSV and PDF are written.

A retry must not make new objects: the report's UIDs and dates follow from
the course's points (their SPECT series and when each reading last
changed) and what the evaluation found, so a job run again on unchanged
points writes the same bytes under the same UIDs, and a course with a
point more, or a point read again differently, gets new ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from config import Pipeline
from dicomio.administration import AdministrationError
from dicomio.derived import result_uid, write_dicom_atomically
from dicomio.dose_csv import write_dose_csv
from dicomio.dose_pdf import ActivityCurve, dose_pdf
from dicomio.dose_records import CourseDoses, PointReading
from dicomio.dose_report import DoseReportError, write_dose_report
from dicomio.encapsulated_pdf import encapsulate_pdf
from dicomio.files import write_atomically
from dicomio.seg import LabelledStructure
from dicomio.seg_reference import ReferenceSegError, read_reference_seg
from dicomio.series import load_series
from dicomio.spect import QuantitativeSpect, SpectError, load_quantitative_spect
from dicomio.volume import Volume
from inference.dosimetry.course import (
    CourseError,
    CoursePoint,
    DosimetrySettings,
    activity_curves,
    evaluate_readings,
    read_point,
    reference_labels,
)
from inference.dosimetry.organ_activity import OrganActivityError
from inference.dosimetry.time_activity import TimeActivityError
from inference.quantify import DEFAULT_DENSITIES
from inference.segmenter import Segmenter
from node.queue.courses import Course
from node.work.outputs import OutputObject
from node.work.pipeline import PipelineError

#: Series Numbers of the course's reports, after the segmentation's (node/work/writing.py).
DOSE_SR_SERIES_NUMBER: Final = 9010
DOSE_PDF_SERIES_NUMBER: Final = 9011
#: Where the fitted curves are drawn: from the administration to this many
#: times the last point's hours (most decays of a long-lived nuclide are after
#: it), densest early, where a kidney's uptake peaks within hours.
_CURVE_SPAN: Final = 1.5
_CURVE_SAMPLES: Final = 300


def dosimetry_settings(name: str, pipeline: Pipeline) -> DosimetrySettings:
    """What `pipeline` (named `name`) evaluates; a pipeline without dosimetry is the job's error."""
    settings = pipeline.dosimetry
    if settings is None:
        raise PipelineError(f"pipeline {name!r} does no dosimetry (pipelines.{name}.dosimetry is not set)")
    return DosimetrySettings(
        organs=tuple(settings.organs),
        neighbours=tuple(settings.neighbours),
        sigma_mm=settings.sigma_mm,
        densities=DEFAULT_DENSITIES.with_overrides(pipeline.densities),
        fit_models=settings.fit,
        spect_fwhm_mm=settings.spect_fwhm_mm,
    )


def load_spect(files: Sequence[Path]) -> QuantitativeSpect:
    """The SPECT of a time point in Bq/ml; one that is not quantitative, or
    lacks what dosimetry needs, fails the job naming the attribute."""
    try:
        return load_quantitative_spect(files)
    except (SpectError, AdministrationError) as exc:
        raise PipelineError(str(exc)) from None


@dataclass(frozen=True)
class TimePointSources:
    """The instances one time point is read from: its SPECT, its CT and, where
    a physician sent one, a SEG of that CT (None: the model segments it)."""

    spect: QuantitativeSpect
    spect_files: tuple[Path, ...]
    ct_files: tuple[Path, ...]
    seg_file: Path | None


def read_time_point(
    sources: TimePointSources,
    settings: DosimetrySettings,
    segmenter: Callable[[], Segmenter],
    headers_dir: Path,
) -> PointReading:
    """Read the time point's organs, and keep the headers of its SPECT and
    CT instances in `headers_dir` (the course's reports list them as their
    evidence, after the images themselves may be gone)."""
    loaded = load_series(sources.ct_files)
    ct = loaded.volume
    names = (*settings.organs, *settings.neighbours)
    if sources.seg_file is not None:
        try:
            reference = read_reference_seg(sources.seg_file, ct)
        except ReferenceSegError as exc:
            raise PipelineError(f"the SEG of CT series {ct.series_instance_uid}: {exc}") from None
        labels, structures = reference_labels(reference, ct, names)
        origin = f"a physician's SEG ({reference.series_instance_uid})"
    else:
        model = segmenter()
        segmentation = model.segment(ct)
        labels = Volume(segmentation.labels, ct.affine, ct.frame_of_reference_uid, ct.study_instance_uid,
                        ct.series_instance_uid, "SEG", ct.sources)
        structures = tuple(segmentation.structures)
        origin = f"model {model.algorithm.name} {model.algorithm.version}"
    point = CoursePoint(
        spect=sources.spect, labels=labels, structures=_present(labels, structures),
        ct_series_instance_uid=ct.series_instance_uid, patient_id=str(loaded.headers[0].get("PatientID", "")),
        segmentation=origin,
    )
    try:
        reading = read_point(point, settings)
    except (CourseError, OrganActivityError) as exc:
        raise PipelineError(str(exc)) from None
    _keep_headers((*sources.spect_files, *sources.ct_files), headers_dir)
    return reading


def _present(labels: Volume, structures: Sequence[LabelledStructure]) -> tuple[LabelledStructure, ...]:
    """The structures the label map holds: a model lists every structure it
    can label, and one it found nothing of on this CT is not there to read."""
    values = set(np.unique(labels.array).tolist())
    return tuple(s for s in structures if s.value in values)


def _keep_headers(files: Sequence[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        write_dicom_atomically(header, folder / f"{header.SOPInstanceUID}.dcm")


@dataclass(frozen=True)
class CourseReport:
    """A course evaluated: its doses and the files written (``objects`` to send, ``csv`` kept)."""

    doses: CourseDoses
    objects: tuple[OutputObject, ...]
    csv: Path


def report_course(
    course: Course, settings: DosimetrySettings, out_dir: Path, *, device_uid: str, disclaimer: str
) -> CourseReport:
    """Evaluate `course` from its points' readings and write its SR, CSV and PDF into `out_dir`."""
    readings = [point.reading for point in course.points]
    try:
        doses = evaluate_readings(readings, settings)
    except (CourseError, TimeActivityError) as exc:
        raise PipelineError(f"course {course.id}: {exc}") from None
    created = datetime.fromtimestamp(max(point.read_at for point in course.points), timezone.utc)
    spect_series = [reading.spect_series_instance_uid for reading in readings]
    identity = (course.route, created.isoformat(), hashlib.sha256(repr(doses).encode()).hexdigest())

    def uid(role: str) -> str:
        return result_uid(f"dosimetry-{role}", spect_series, identity)

    headers = _headers([point.sources for point in course.points])
    out_dir.mkdir(parents=True, exist_ok=True)
    points = len(readings)
    try:
        sr = write_dose_report(
            doses, headers, device_uid=device_uid, series_instance_uid=uid("sr-series"),
            sop_instance_uid=uid("sr"), series_number=DOSE_SR_SERIES_NUMBER, created=created,
            series_description=f"Organ dosimetry, {points} time points",
        )
    except DoseReportError as exc:
        raise PipelineError(f"course {course.id}: {exc}") from None
    sr_path = out_dir / "dose-sr.dcm"
    write_dicom_atomically(sr, sr_path)
    csv = write_dose_csv(doses, out_dir / "dose.csv")
    pdf = dose_pdf(doses, _curves(readings, settings), created=created, disclaimer=disclaimer)
    write_atomically(out_dir / "dose-report.pdf", pdf)
    latest = [h for h in headers if h.SeriesInstanceUID == spect_series[-1]]
    document = encapsulate_pdf(
        pdf, latest, series_instance_uid=uid("pdf-series"), sop_instance_uid=uid("pdf"),
        series_number=DOSE_PDF_SERIES_NUMBER,
        series_description=f"Organ dosimetry report, {points} time points",
        document_title="Organ dosimetry report", created=created, device_serial_number=device_uid,
    )
    pdf_path = out_dir / "dose-report.dcm"
    write_dicom_atomically(document, pdf_path)
    return CourseReport(
        doses, (OutputObject("sr", sr_path, uid("sr")), OutputObject("pdf", pdf_path, uid("pdf"))), csv
    )


def _headers(folders: Sequence[Path]) -> list[Dataset]:
    """The kept headers of every point, in the points' order."""
    headers = []
    for folder in folders:
        files = sorted(folder.glob("*.dcm"))
        if not files:
            raise PipelineError(f"{folder} holds no headers of its time point (removed by the retention "
                                "policy?): the time point must be sent again")
        headers += [pydicom.dcmread(path) for path in files]
    return headers


def _curves(readings: Sequence[PointReading], settings: DosimetrySettings) -> tuple[ActivityCurve, ...]:
    last = readings[-1].hours_after_administration
    hours = _CURVE_SPAN * last * np.linspace(0.0, 1.0, _CURVE_SAMPLES) ** 2
    return activity_curves(readings, settings, hours)
