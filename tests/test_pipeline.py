"""The pipeline offline (``segnode run-series``): outputs, validity, determinism."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from config import Pipeline, ReportSettings
from inference.builtin import BuiltinSegmenter
from node.work.outputs import EVERYTHING, OutputPlan, SegFormat
from node.work.pipeline import PipelineInputs, run_pipeline
from tests.synthetic import write_ct_series
from tests.test_seg import dciodvfy


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ct")
    return write_ct_series(folder, slices=30, rows=128, columns=128, pixel_spacing=(3.0, 3.0),
                           slice_thickness=3.0)


def inputs(files, created=datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)) -> PipelineInputs:
    return PipelineInputs(tuple(files), (), "organs", Pipeline(), created, "2.25.1234")


def test_outputs_are_valid_and_reference_every_source(ct_series, tmp_path):
    result = run_pipeline(inputs(ct_series), BuiltinSegmenter(), tmp_path)
    for path in (result.seg, result.sr):
        dciodvfy(path)
    seg, sr = pydicom.dcmread(result.seg), pydicom.dcmread(result.sr)
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct_series}
    referenced = {item.ReferencedSOPInstanceUID
                  for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
    assert referenced == sources
    assert seg.ContentDate == sr.ContentDate == "20260304"
    assert seg.DeviceSerialNumber == "2.25.1234"
    with result.csv.open() as table:
        rows = list(csv.DictReader(table))
    assert [r["structure"] for r in rows] == [m.name for m in result.measurements]
    assert "body" in [m.name for m in result.measurements]
    assert result.labels.exists() and result.labels.with_name("labels.json").exists()


def test_a_rerun_writes_the_same_bytes_and_a_changed_series_new_uids(ct_series, tmp_path):
    first = run_pipeline(inputs(ct_series), BuiltinSegmenter(), tmp_path / "a")
    again = run_pipeline(inputs(ct_series), BuiltinSegmenter(), tmp_path / "b")
    assert first.seg.read_bytes() == again.seg.read_bytes()
    assert first.sr.read_bytes() == again.sr.read_bytes()
    fewer = run_pipeline(inputs(ct_series[:-1]), BuiltinSegmenter(), tmp_path / "c")
    uids = lambda r: {pydicom.dcmread(p).SOPInstanceUID for p in (r.seg, r.sr)}  # noqa: E731
    assert not uids(first) & uids(fewer)


def test_run_series_prints_the_table_and_refuses_a_missing_folder(ct_series, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "node.cli", "run-series", str(ct_series[0].parent),
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "body" in done.stdout and "volume ml" in done.stdout
    assert {p.name for p in out.iterdir()} >= {"seg.dcm", "sr.dcm", "measurements.csv", "labels.nii.gz"}
    done = subprocess.run([sys.executable, "-m", "node.cli", "run-series", str(tmp_path / "absent"),
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 1 and "not a folder" in done.stderr


def test_a_model_that_labels_differently_under_the_same_version_makes_new_objects(ct_series, tmp_path):
    class Eroded(BuiltinSegmenter):
        """The built-in with one voxel less: another result, the same identity."""

        def segment(self, volume):
            result = super().segment(volume)
            labels = result.labels.copy()
            labels[tuple(np.argwhere(labels > 0)[0])] = 0
            return replace(result, labels=labels)

    first = run_pipeline(inputs(ct_series), BuiltinSegmenter(), tmp_path / "a")
    other = run_pipeline(inputs(ct_series), Eroded(), tmp_path / "b")
    uids = lambda r: {pydicom.dcmread(p).SOPInstanceUID for p in (r.seg, r.sr)}  # noqa: E731
    assert not uids(first) & uids(other)


def test_every_output_is_valid_reruns_byte_for_byte_and_the_body_is_the_whole_body(ct_series, tmp_path):
    first = run_pipeline(inputs(ct_series), BuiltinSegmenter(), tmp_path / "a", EVERYTHING)
    again = run_pipeline(inputs(ct_series), BuiltinSegmenter(), tmp_path / "b", EVERYTHING)
    kinds = Counter((o.kind, o.seg_format) for o in first.objects)
    assert kinds == Counter({("seg", SegFormat.BINARY): 2, ("sr", SegFormat.BINARY): 1,
                             ("seg", SegFormat.LABELMAP): 1, ("sr", SegFormat.LABELMAP): 1,
                             ("pdf", None): 1, ("rtstruct", None): 1, ("overlay", None): len(ct_series)})
    for ours, theirs in zip(first.objects, again.objects, strict=True):
        assert ours.path.read_bytes() == theirs.path.read_bytes(), ours.path.name
        assert pydicom.dcmread(ours.path, stop_before_pixels=True).SOPInstanceUID == ours.sop_instance_uid
        if ours.seg_format is SegFormat.LABELMAP:
            continue  # the installed dciodvfy predates Label Map Segmentation: tests/test_seg.py
        warnings = dciodvfy(ours.path)
        if ours.kind == "overlay":  # its plane (a PACS links it to the CT): Standard Extended
            assert all("not present in standard DICOM IOD" in w for w in warnings), warnings
    assert (tmp_path / "a" / "report.pdf").read_bytes()[:5] == b"%PDF-"

    # The body is every labelled voxel: a BINARY SEG of its own, the second of the SEG series,
    # referenced by the SR; the label map's remainder is soft tissue, named so everywhere else.
    volumes = {m.name: m.volume_ml for m in first.measurements}
    assert volumes["body"] == pytest.approx(sum(v for name, v in volumes.items() if name != "body"))
    labels = {int(v): name for v, name in json.loads((tmp_path / "a" / "labels.json").read_text()).items()}
    assert labels[1] == "other_soft_tissue" and "body" not in labels.values()
    segs = {o.path.name: pydicom.dcmread(o.path) for o in first.objects if o.kind == "seg"}
    by_label = {name: {s.SegmentLabel: s for s in seg.SegmentSequence} for name, seg in segs.items()}
    assert list(by_label["outline-seg.dcm"]) == ["Body"]
    assert by_label["outline-seg.dcm"]["Body"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "38266002"
    assert "Body" not in by_label["seg.dcm"] and "Other soft tissue" in by_label["seg.dcm"]
    assert "Body" not in by_label["labelmap-seg.dcm"]
    outline, seg = segs["outline-seg.dcm"], segs["seg.dcm"]
    assert (outline.SeriesInstanceUID, outline.InstanceNumber) == (seg.SeriesInstanceUID, 2)
    body = hd.seg.Segmentation.from_dataset(outline).get_volume(combine_segments=True)
    counts = {m.name: m.voxel_count for m in first.measurements}
    assert np.count_nonzero(body.array) == counts["body"] == sum(counts.values()) - counts["body"]
    groups = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(first.sr)).content
    referenced = {group.referenced_segment[0].referenced_sop_instance_uid: group.tracking_identifier
                  for group in groups.get_volumetric_roi_measurement_groups()}
    assert referenced[outline.SOPInstanceUID] == "body" and seg.SOPInstanceUID in referenced


def test_an_output_the_series_cannot_have_is_a_warning_and_the_rest_goes_out(tmp_path):
    # rt-utils places columns by the row spacing: non-square pixels get no RTSTRUCT.
    files = write_ct_series(tmp_path / "ct", slices=30, rows=128, columns=128, pixel_spacing=(3.0, 2.5),
                            slice_thickness=3.0)
    result = run_pipeline(inputs(files), BuiltinSegmenter(), tmp_path / "out", EVERYTHING)
    assert {o.kind for o in result.objects} == {"seg", "sr", "pdf", "overlay"}
    [warning] = result.warnings
    assert warning.startswith("no RTSTRUCT: RTStructInputError:") and "pixel" in warning, warning
    assert not (tmp_path / "out" / "rtstruct.dcm").exists()


def test_a_changed_disclaimer_or_overlay_step_makes_new_objects_not_new_bytes(ct_series, tmp_path):
    plan = OutputPlan(pdf=True, overlay=True)
    first = run_pipeline(inputs(ct_series), BuiltinSegmenter(), tmp_path / "a", plan)
    settings = ReportSettings(disclaimer="Research use only.", overlay_every=2)
    changed = replace(inputs(ct_series), reports=settings)
    second = run_pipeline(changed, BuiltinSegmenter(), tmp_path / "b", plan)
    uids = lambda result, kind: {o.sop_instance_uid for o in result.objects if o.kind == kind}  # noqa: E731
    assert not uids(first, "pdf") & uids(second, "pdf")
    assert not uids(first, "overlay") & uids(second, "overlay")
    assert len(uids(second, "overlay")) == (len(ct_series) + 1) // 2
    assert uids(first, "seg") == uids(second, "seg")  # what the settings do not touch keeps its UID
