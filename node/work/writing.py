"""Encoding and writing what one run makes: SEGs, SRs, the PDF report,
overlay images, RTSTRUCT, the CSV and the label map.

Every object's UIDs are derived from the source instances and the run's
identity, and every object is dated by the time the job was queued, so a
retry writes the same bytes (see node/work/pipeline.py).

The BINARY SEG is by far the largest object (1,676 frames of the 300-slice
phantom) and highdicom and pydicom build and serialise it holding the GIL,
so a forked process builds and writes it, from the moment the label map
exists, while this one measures and builds and writes everything else;
SimpleITK compresses the label map meanwhile on a thread of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from pydicom.dataset import Dataset

from config import ReportSettings
from dicomio.csv import write_measurements_csv
from dicomio.derived import (
    BackgroundBuild,
    built_in_background,
    date_object,
    fix_dimension_organisation,
    result_uid,
    write_dicom_atomically,
)
from dicomio.encapsulated_pdf import encapsulate_pdf
from dicomio.files import write_atomically
from dicomio.label_map import write_label_map
from dicomio.measurements import StructureMeasurements
from dicomio.overlay import overlay_images
from dicomio.pdf_report import ReportContent, render_report
from dicomio.rtstruct import RTStructIdentity, write_rtstruct
from dicomio.seg import Segment, write_seg
from dicomio.sr import write_measurement_report
from inference.segmenter import Segmentation
from node.work.outputs import OutputObject, OutputPlan, SegFormat

#: Stopwatch.run: runs a step, counting its seconds to a stage.
Timed = Callable[[str, Callable[[], Any]], Any]

#: The PDF report kept beside the results, for the console's series page.
REPORT_PDF: Final = "report.pdf"

#: Series Numbers of what segnode writes, high so that viewers list them
#: after the scanner's series (9003 is the QA report's, node/work/comparison.py).
SERIES_NUMBERS: Final = {
    "seg": 9001, "sr": 9002, "pdf": 9004, "overlay": 9005, "rtstruct": 9006,
    "labelmap-seg": 9007, "labelmap-sr": 9008,
}


@dataclass(frozen=True)
class RunOutputs:
    """What the output stage writes from: the segmentation and its segments
    (``outline`` the segment of the segmentation's outline, in a BINARY SEG
    of its own), the measurements (the outline's among them), the source
    headers, and the run's identity (UIDs are derived from ``sources`` and
    ``identity``)."""

    segmentation: Segmentation
    segments: tuple[Segment, ...]
    outline: Segment | None
    measurements: tuple[StructureMeasurements, ...]
    headers: tuple[Dataset, ...]
    pet_headers: tuple[Dataset, ...]
    sources: tuple[str, ...]
    identity: tuple[str, ...]
    created: datetime
    device_uid: str
    notes: tuple[str, ...]
    reports: ReportSettings


@dataclass(frozen=True)
class WrittenOutputs:
    """The files written: the BINARY SEG and its SR (the job's record), the
    CSV, the label map, every DICOM object to send, and why an output that
    was asked for is not among them."""

    seg: Path
    sr: Path
    csv: Path
    labels: Path
    objects: tuple[OutputObject, ...]
    warnings: tuple[str, ...] = ()


@contextmanager
def binary_seg_in_background(run: RunOutputs, out_dir: Path) -> Iterator[BackgroundBuild]:
    """The BINARY SEG of `run`'s label map, built and written to
    ``out_dir/seg.dcm`` by a forked process from the moment the label map
    exists: it needs no measurement, and building and writing it is the
    output stage's longest part (1.9 s for the 300-slice phantom), pure
    Python that holds the GIL. Leaving the block waits for it."""
    name = run.segmentation.algorithm.name
    out_dir.mkdir(parents=True, exist_ok=True)
    with built_in_background(lambda: _seg(run, SegFormat.BINARY, f"{name} segmentation"),
                             out_dir / "seg.dcm") as build:
        yield build


def write_outputs(
    run: RunOutputs, plan: OutputPlan, out_dir: Path, seg: BackgroundBuild, timed: Timed
) -> WrittenOutputs:
    """Build and write everything `plan` asks for into `out_dir`, beside
    the BINARY SEG that `seg` is building (:func:`binary_seg_in_background`).

    `timed(stage, step)` counts the seconds of ``encode`` (building the
    other SEGs and the SRs), ``pdf``, ``overlay`` and ``rtstruct``
    (building and writing those).
    """
    name = run.segmentation.algorithm.name
    seg_path, sr_path = out_dir / "seg.dcm", out_dir / "sr.dcm"
    csv_path, labels_path = out_dir / "measurements.csv", out_dir / "labels.nii.gz"
    objects: list[OutputObject] = []
    warnings: list[str] = []
    # SimpleITK compresses the label map without holding the GIL.
    with ThreadPoolExecutor(max_workers=1) as pool:
        label_map = pool.submit(write_label_map, run.segmentation.labels, run.segmentation.volume,
                                run.segmentation.structures, labels_path)
        further = []
        if run.outline is not None:
            outline_path = out_dir / "outline-seg.dcm"
            outline_seg = timed("encode", lambda: _outline_seg(run, f"{name} segmentation"))
            write_dicom_atomically(outline_seg, outline_path)
            objects.append(_object("seg", outline_path, outline_seg, SegFormat.BINARY))
            further = [(outline_seg, _measured(run, outline=True))]
        header = seg.header()
        sr = timed("encode", lambda: _sr(run, header, SegFormat.BINARY, _measured(run), further))
        write_dicom_atomically(sr, sr_path)
        write_measurements_csv(run.measurements, csv_path)
        objects += [_object("seg", seg_path, header, SegFormat.BINARY),
                    _object("sr", sr_path, sr, SegFormat.BINARY)]
        optional = (
            (plan.labelmap, "LABELMAP SEG", "encode", lambda: _labelmap_outputs(run, out_dir, timed)),
            (plan.pdf, "PDF report", "pdf", lambda: [_pdf(run, out_dir)]),
            (plan.overlay, "overlay images", "overlay", lambda: _overlay(run, out_dir)),
            (plan.rtstruct, "RTSTRUCT", "rtstruct", lambda: [_rtstruct(run, out_dir)]),
        )
        for wanted, what, stage, make in optional:
            if wanted:
                made, warning = _optional(what, stage, make, timed)
                objects += made
                warnings += [warning] if warning else []
        label_map.result()
    return WrittenOutputs(seg_path, sr_path, csv_path, labels_path, tuple(objects), tuple(warnings))


def _optional(
    what: str, stage: str, make: Callable[[], list[OutputObject]], timed: Timed
) -> tuple[list[OutputObject], str | None]:
    """Make an output that not every viewer needs; one this series cannot
    have (an RTSTRUCT of non-square pixels, say) is a warning, and the SEG,
    the SR and the other outputs still go out. A failure of the machine
    (disk, memory) fails the job, which is retried."""
    try:
        return timed(stage, make), None
    except (OSError, MemoryError):
        raise
    except Exception as exc:
        return [], f"no {what}: {type(exc).__name__}: {exc}"


def _labelmap_outputs(run: RunOutputs, out_dir: Path, timed: Timed) -> list[OutputObject]:
    """The LABELMAP SEG and an SR of it: the measurements of its segments
    (the outline is not among them: a label map cannot overlap)."""
    name = run.segmentation.algorithm.name
    seg = timed("encode", lambda: _seg(run, SegFormat.LABELMAP, f"{name} label map"))
    sr = timed("encode", lambda: _sr(run, seg, SegFormat.LABELMAP, _measured(run)))
    seg_path, sr_path = out_dir / "labelmap-seg.dcm", out_dir / "labelmap-sr.dcm"
    write_dicom_atomically(seg, seg_path)
    write_dicom_atomically(sr, sr_path)
    return [_object("seg", seg_path, seg, SegFormat.LABELMAP), _object("sr", sr_path, sr, SegFormat.LABELMAP)]


def _role(format_: SegFormat, role: str) -> str:
    """The UID role of an object of `format_`: BINARY keeps the roles of
    earlier versions, so their objects keep their UIDs."""
    return role if format_ is SegFormat.BINARY else f"labelmap-{role}"


def _uid(run: RunOutputs, role: str, *settings: str) -> str:
    """The UID of `role`; `settings` are what else the object's content
    depends on (the disclaimer, the overlay step), so that a retry after the
    configuration changed makes a new object rather than new bytes under an
    old UID."""
    return result_uid(role, run.sources, (*run.identity, *settings))


def _seg(run: RunOutputs, format_: SegFormat, description: str) -> Dataset:
    labelmap = format_ is SegFormat.LABELMAP
    segmentation = run.segmentation
    seg = write_seg(
        segmentation.volume, segmentation.labels, segmentation.structures, segmentation.algorithm,
        run.headers,
        series_number=SERIES_NUMBERS[_role(format_, "seg")],
        series_description=description[:64],
        device_serial_number=run.device_uid,
        series_instance_uid=_uid(run, _role(format_, "seg-series")),
        sop_instance_uid=_uid(run, _role(format_, "seg")),
        segments=run.segments,
        labelmap=labelmap,
    )
    date_object(seg, run.created)
    fix_dimension_organisation(seg, _uid(run, _role(format_, "seg-dimensions")))
    return seg


def _measured(run: RunOutputs, *, outline: bool = False) -> tuple[StructureMeasurements, ...]:
    """The measurements of the label map's segments, or of the outline's."""
    name = None if run.outline is None else run.outline.code.name
    return tuple(m for m in run.measurements if (m.name == name) == outline)


def _outline_seg(run: RunOutputs, description: str) -> Dataset:
    """The outline as a BINARY SEG of its own, the second of the SEG series:
    it overlaps every other segment, and highdicom builds overlapping
    segments from a 4-D stack of masks, 6.4 s against 1.1 s for the 300-slice
    phantom (its overlap check sums the stack); alone it is a label map."""
    outlined = run.segmentation.outlined()
    assert outlined is not None and run.outline is not None
    seg = write_seg(
        outlined.volume, outlined.labels, outlined.structures, outlined.algorithm, run.headers,
        series_number=SERIES_NUMBERS["seg"],
        series_description=description[:64],
        device_serial_number=run.device_uid,
        series_instance_uid=_uid(run, "seg-series"),
        sop_instance_uid=_uid(run, "outline-seg"),
        segments=(run.outline,),
        instance_number=2,
    )
    date_object(seg, run.created)
    fix_dimension_organisation(seg, _uid(run, "outline-seg-dimensions"))
    return seg


def _sr(
    run: RunOutputs,
    seg: Dataset,
    format_: SegFormat,
    measurements: Sequence[StructureMeasurements],
    further: Sequence[tuple[Dataset, Sequence[StructureMeasurements]]] = (),
) -> Dataset:
    name = run.segmentation.algorithm.name
    sr = write_measurement_report(
        measurements, seg, run.headers + run.pet_headers, run.segmentation.algorithm,
        device_uid=run.device_uid,
        series_number=SERIES_NUMBERS[_role(format_, "sr")],
        series_description=f"{name} measurements"[:64],
        series_instance_uid=_uid(run, _role(format_, "sr-series")),
        sop_instance_uid=_uid(run, _role(format_, "sr")),
        notes=run.notes,
        further=further,
    )
    date_object(sr, run.created)
    return sr


def _pdf(run: RunOutputs, out_dir: Path) -> OutputObject:
    """The report as a PDF beside the results (what a person opens from the
    folder) and as DICOM Encapsulated PDF (what a PACS shows)."""
    segmentation = run.segmentation
    pdf = render_report(ReportContent(
        source=run.headers[0], volume=segmentation.volume, labels=segmentation.labels,
        structures=segmentation.structures, measurements=run.measurements,
        algorithm=segmentation.algorithm, notes=run.notes, disclaimer=run.reports.disclaimer,
        created=run.created, outline=None if run.outline is None else run.outline.code,
    ))
    write_atomically(out_dir / REPORT_PDF, pdf)
    document = encapsulate_pdf(
        pdf, run.headers,
        series_instance_uid=_uid(run, "pdf-series"),
        sop_instance_uid=_uid(run, "pdf", run.reports.disclaimer),
        series_number=SERIES_NUMBERS["pdf"],
        series_description=f"{segmentation.algorithm.name} report"[:64],
        document_title="Organ segmentation report", created=run.created, device_serial_number=run.device_uid,
    )
    path = out_dir / "report.dcm"
    write_dicom_atomically(document, path)
    return _object("pdf", path, document)


def _overlay(run: RunOutputs, out_dir: Path) -> list[OutputObject]:
    segmentation = run.segmentation
    images = overlay_images(
        segmentation.volume, segmentation.labels, segmentation.structures, run.headers,
        every=run.reports.overlay_every,
        series_instance_uid=_uid(run, "overlay-series", str(run.reports.overlay_every)),
        sop_instance_uid=lambda k: _uid(run, f"overlay-{k}", str(run.reports.overlay_every)),
        series_number=SERIES_NUMBERS["overlay"],
        series_description=f"{segmentation.algorithm.name} outlines"[:64],
        created=run.created, device_serial_number=run.device_uid,
    )
    folder = out_dir / "overlay"
    folder.mkdir(exist_ok=True)
    objects = []
    for number, image in enumerate(images, start=1):
        path = folder / f"{number:05d}.dcm"
        write_dicom_atomically(image, path)
        objects.append(_object("overlay", path, image))
    return objects


def _rtstruct(run: RunOutputs, out_dir: Path) -> OutputObject:
    segmentation = run.segmentation
    identity = RTStructIdentity(
        series_instance_uid=_uid(run, "rtstruct-series"), sop_instance_uid=_uid(run, "rtstruct"),
        series_number=SERIES_NUMBERS["rtstruct"],
        series_description=f"{segmentation.algorithm.name} contours"[:64],
        structure_set_label="segnode", created=run.created,
    )
    structure_set = write_rtstruct(
        segmentation.volume, segmentation.labels, segmentation.structures, run.headers, identity,
        outline=None if run.outline is None else run.outline.code, segments=run.segments,
    )
    path = out_dir / "rtstruct.dcm"
    write_dicom_atomically(structure_set, path)
    return _object("rtstruct", path, structure_set)


def _object(kind: str, path: Path, dataset: Dataset, seg_format: SegFormat | None = None) -> OutputObject:
    return OutputObject(kind, path, str(dataset.SOPInstanceUID), seg_format)
