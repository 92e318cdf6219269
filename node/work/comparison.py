"""QA against a reference: someone else's SEG of a series we segmented.

A radiologist's corrected segmentation, or a second tool's, arrives as a
DICOM-SEG of the same series. Each of our structures that it describes (by
code, else by name) gets Dice, Jaccard and the 95th-percentile Hausdorff
distance, and a QA report goes back: the measurement report of our SEG with
those comparisons added, each pointing at the reference segment it used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom

from config import Pipeline
from dicomio.codes import Concept
from dicomio.derived import date_object, result_uid, source_headers, write_dicom_atomically
from dicomio.label_map import read_label_map
from dicomio.seg import AlgorithmIdentity, plan_segments
from dicomio.seg_reference import read_reference_seg
from dicomio.series import load_series
from dicomio.sr import write_measurement_report
from inference.qa import reference_agreement
from inference.quantify import DEFAULT_DENSITIES, quantify
from inference.segmenter import Segmentation
from node.queue.results import Agreement, ComparisonResult, SegmentResult
from node.work.pipeline import PipelineError, Stopwatch

#: Series Number of QA reports (after the SEG's 9001 and the SR's 9002).
QA_SR_SERIES_NUMBER = 9003


@dataclass(frozen=True)
class QaReport:
    """What the QA job records, and the SOP Instance UID of the report it
    wrote (what it is sent under)."""

    result: ComparisonResult
    sr_uid: str


def _algorithm(seg: pydicom.Dataset) -> AlgorithmIdentity:
    """Our model's identity as our SEG records it."""
    item = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    family = item.AlgorithmFamilyCodeSequence[0]
    return AlgorithmIdentity(
        str(item.AlgorithmName), str(item.AlgorithmVersion),
        Concept(family.CodingSchemeDesignator, family.CodeValue, family.CodeMeaning),
    )


def compare_with_reference(
    reference_path: Path,
    result: SegmentResult,
    ct_files: Sequence[Path],
    pipeline: Pipeline,
    device_uid: str,
    created: datetime,
    out_dir: Path,
) -> QaReport:
    """Compare our finished segmentation of a series (`result`) with a
    reference SEG of it and write the QA report to ``out_dir/qa-sr.dcm``."""
    clock = Stopwatch()
    volume = clock.run("load", lambda: load_series(ct_files).volume)
    reference = clock.run("read_reference", lambda: read_reference_seg(reference_path, volume))
    labels, structures = read_label_map(result.labels, volume)
    our_seg = pydicom.dcmread(result.seg)
    segmentation = Segmentation(labels, volume, structures, _algorithm(our_seg))
    agreements = clock.run("compare", lambda: reference_agreement(segmentation, reference.segments))
    segments = plan_segments(labels, structures, series_instance_uid=volume.series_instance_uid)
    densities = DEFAULT_DENSITIES.with_overrides(pipeline.densities)
    measured = quantify(segmentation, segments, densities=densities)
    by_name = {a.name: a for a in agreements}
    measurements = [
        dataclasses.replace(m, reference_segment_number=a.reference_segment_number, dice=a.dice,
                            jaccard=a.jaccard, hausdorff95_mm=a.hd95_mm)
        for m in measured
        if (a := by_name.get(m.name)) is not None
    ]
    if not measurements:
        raise PipelineError(
            f"reference SEG {reference.sop_instance_uid} describes none of the structures we found"
        )
    reference_dataset = pydicom.dcmread(reference_path, stop_before_pixels=True)
    used = {s.sop_instance_uid for s in volume.sources}
    uid_parts = (our_seg.SOPInstanceUID, reference.sop_instance_uid)
    sr = write_measurement_report(
        measurements, our_seg, source_headers(ct_files, used), segmentation.algorithm,
        device_uid=device_uid,
        series_number=QA_SR_SERIES_NUMBER,
        series_description=f"QA against {reference.manufacturer or 'reference'} SEG"[:64],
        reference_segmentation=reference_dataset,
        series_instance_uid=result_uid("qa-sr-series", uid_parts, ()),
        sop_instance_uid=result_uid("qa-sr", uid_parts, ()),
    )
    date_object(sr, created)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "qa-sr.dcm"
    write_dicom_atomically(sr, path)
    agreement = {m.name: Agreement(m.dice, m.jaccard, m.hausdorff95_mm) for m in measurements}
    return QaReport(ComparisonResult(path, agreement, clock.seconds), str(sr.SOPInstanceUID))
