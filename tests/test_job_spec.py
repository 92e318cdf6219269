"""A job's spec and outcome crossing to another host: paths inside the shared storage, nothing else."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from dicomio.administration import Administration
from dicomio.codes import structure_code
from dicomio.dose_records import OrganReading, PointReading
from node.queue.jobs import JobKind
from node.queue.results import Agreement, ComparisonResult, SegmentResult
from node.work.job_spec import (
    JobOutcome,
    JobSpec,
    OutsideStorageError,
    outcome_from_json,
    outcome_to_json,
    spec_from_json,
    spec_to_json,
)
from node.work.outputs import OutputObject, SegFormat
from node.work.research import ResearchObject


def segmentation(root: Path) -> SegmentResult:
    folder = root / "results" / "1.2.3" / "segment-ct"
    return SegmentResult(
        seg=folder / "seg.dcm", sr=folder / "sr.dcm", csv=folder / "measurements.csv",
        labels=folder / "labels.nii.gz", model="segnode-builtin 1.1", structures=12, pet=True,
        seconds={"load": 0.3, "segment": 1.2}, notes=("completed by its MPPS step",),
        objects=(folder / "seg.dcm", folder / "sr.dcm"), warnings=("2 image(s) left out",),
    )


def across(value: dict) -> dict:
    """What the broker carries: JSON text."""
    return json.loads(json.dumps(value))


def test_a_spec_reaches_another_host_at_its_own_mount(tmp_path: Path) -> None:
    node, worker = tmp_path / "node-store", tmp_path / "mnt" / "segnode"
    spec = JobSpec(
        job_id=7, kind=JobKind.QA, series_instance_uid="1.2.4", route="ct", pipeline="organs",
        destinations=("PACS", "VIEWER"), created=1765000000.25, results=node / "results" / "1.2.4" / "qa-ct",
        inputs=(node / "instances" / "a" / "1.dcm",), pet=(node / "instances" / "p" / "1.dcm",),
        ct=(node / "instances" / "b" / "1.dcm", node / "instances" / "b" / "2.dcm"),
        seg=node / "instances" / "s" / "1.dcm", ours=segmentation(node), notes=("note",),
    )
    there = spec_from_json(across(spec_to_json(spec, node)), worker)
    assert there.ct == (worker / "instances" / "b" / "1.dcm", worker / "instances" / "b" / "2.dcm")
    assert there.ours == segmentation(worker)
    assert there.results == worker / "results" / "1.2.4" / "qa-ct"
    assert spec_from_json(across(spec_to_json(spec, node)), node) == spec


def test_an_outcome_comes_back_whole(tmp_path: Path) -> None:
    node, worker = tmp_path / "node-store", tmp_path / "mnt"
    folder = worker / "results" / "1.2.3" / "segment-ct"
    outcome = JobOutcome(
        result=segmentation(worker),
        objects=(OutputObject("seg", folder / "seg.dcm", "2.25.1", SegFormat.BINARY),
                 OutputObject("pdf", folder / "report.dcm", "2.25.2")),
        research=(ResearchObject(folder / "research" / "2.25.9.dcm", "2.25.9"),),
        seconds={"segment": 1.5}, warnings=("a warning",),
    )
    back = outcome_from_json(across(outcome_to_json(outcome, worker)), node)
    assert back.result == segmentation(node)
    assert back.objects[0] == OutputObject("seg", node / "results/1.2.3/segment-ct/seg.dcm", "2.25.1",
                                           SegFormat.BINARY)
    assert back.research == (ResearchObject(node / "results/1.2.3/segment-ct/research/2.25.9.dcm", "2.25.9"),)
    assert (back.seconds, back.warnings) == ({"segment": 1.5}, ("a warning",))

    comparison = JobOutcome(result=ComparisonResult(folder / "qa-sr.dcm", {"liver": Agreement(0.9, 0.8, 2.5)},
                                                    {"compare": 0.4}))
    assert outcome_from_json(across(outcome_to_json(comparison, worker)), worker) == comparison
    reading = PointReading(
        "1.2.5", "1.2.6", "PAT", Administration("Lu-177", None, datetime(2024, 5, 6, 9), 7.4e9, None),
        datetime(2024, 5, 7, 9), 24.0, "a physician's SEG (1.2.7)",
        (OrganReading(structure_code("kidney_left"), 52.1, 3.2e5, 160.0, 3.0, None, None),),
    )
    point = JobOutcome(reading=reading, seconds={"read": 0.7})
    assert outcome_from_json(across(outcome_to_json(point, worker)), node) == point


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "/etc/passwd", "results/../../x"])
def test_a_path_leading_out_of_the_storage_is_refused(tmp_path: Path, hostile: str) -> None:
    spec = JobSpec(1, JobKind.SEGMENT, "1.2", "ct", "organs", ("PACS",), 0.0, tmp_path / "results",
                   (tmp_path / "a.dcm",))
    value = across(spec_to_json(spec, tmp_path))
    with pytest.raises(OutsideStorageError):
        spec_from_json({**value, "inputs": [hostile]}, tmp_path)
    with pytest.raises(OutsideStorageError):
        spec_to_json(JobSpec(1, JobKind.SEGMENT, "1.2", "ct", "organs", ("PACS",), 0.0, tmp_path / "results",
                             (Path("/etc/passwd"),)), tmp_path)
