"""What one job works on, and what running it made.

A job crosses three steps. The node's side reads its inputs from the
index and the queue (:mod:`node.work.preparation`); a worker runs it on
files alone, segmenters kept warm (:mod:`node.work.execution`); the node's
side records what it made: the outbox, a dosimetry course, the job's result
(:mod:`node.work.recording`). Only the middle step needs a GPU, and it
touches no database, so it can run in a process of the node's or on
another host that reaches the same storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from dicomio.dose_records import PointReading
from node.queue.courses import reading_from_json, reading_to_json
from node.queue.jobs import JobKind
from node.queue.results import ComparisonResult, SegmentResult
from node.work.outputs import OutputObject, SegFormat
from node.work.research import ResearchObject


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job.

    ``inputs`` is the job's own series: the CT to segment, the reference SEG
    to compare with, the SPECT of a dosimetry time point. ``pet`` is the PET
    of the CT's study and Frame of Reference; ``ct`` the segmented CT of a
    QA job or a time point's CT; ``seg`` a physician's SEG of that CT;
    ``ours`` the finished segmentation a QA job compares; ``notes`` what the
    report must say about the input (how the series completed). ``created``
    (the time the job was queued) dates every object it makes.
    """

    job_id: int
    kind: JobKind
    series_instance_uid: str
    route: str
    pipeline: str
    destinations: tuple[str, ...]
    created: float
    results: Path
    inputs: tuple[Path, ...]
    pet: tuple[Path, ...] = ()
    ct: tuple[Path, ...] = ()
    seg: Path | None = None
    ours: SegmentResult | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobOutcome:
    """What running a job made.

    ``objects`` go to the job's destinations (each takes what it asked
    for), ``research`` to its route's research destination. A segmentation
    or QA job has its ``result``; a dosimetry time point has its
    ``reading`` instead, its course being the node's to evaluate.
    """

    result: SegmentResult | ComparisonResult | None = None
    reading: PointReading | None = None
    objects: tuple[OutputObject, ...] = ()
    research: tuple[ResearchObject, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


# Crossing hosts ---------------------------------------------------------------
#
# A worker on another host reaches the node's storage where its own
# configuration says (node.storage_dir, e.g. an NFS mount): every path crosses
# as a path inside the storage and is placed under the receiving side's.


class OutsideStorageError(ValueError):
    """A path that is not inside the shared storage, which no other host can reach."""


def spec_to_json(spec: JobSpec, storage_dir: Path) -> dict[str, object]:
    inside = _Storage(storage_dir)
    return {
        "job_id": spec.job_id, "kind": spec.kind.value, "series_instance_uid": spec.series_instance_uid,
        "route": spec.route, "pipeline": spec.pipeline, "destinations": list(spec.destinations),
        "created": spec.created, "results": inside.relative(spec.results),
        "inputs": inside.all_relative(spec.inputs), "pet": inside.all_relative(spec.pet),
        "ct": inside.all_relative(spec.ct), "seg": None if spec.seg is None else inside.relative(spec.seg),
        "ours": None if spec.ours is None else _segment_result(spec.ours, inside.relative),
        "notes": list(spec.notes),
    }


def spec_from_json(value: Mapping, storage_dir: Path) -> JobSpec:
    inside = _Storage(storage_dir)
    return JobSpec(
        job_id=int(value["job_id"]), kind=JobKind(value["kind"]),
        series_instance_uid=str(value["series_instance_uid"]), route=str(value["route"]),
        pipeline=str(value["pipeline"]), destinations=tuple(map(str, value["destinations"])),
        created=float(value["created"]), results=inside.absolute(value["results"]),
        inputs=inside.all_absolute(value["inputs"]), pet=inside.all_absolute(value["pet"]),
        ct=inside.all_absolute(value["ct"]),
        seg=None if value["seg"] is None else inside.absolute(value["seg"]),
        ours=None if value["ours"] is None else _segment_result_from(value["ours"], inside.absolute),
        notes=tuple(map(str, value["notes"])),
    )


def outcome_to_json(outcome: JobOutcome, storage_dir: Path) -> dict[str, object]:
    inside = _Storage(storage_dir)
    result = outcome.result
    return {
        "segment": _segment_result(result, inside.relative) if isinstance(result, SegmentResult) else None,
        "comparison": (replace(result, sr=inside.relative(result.sr)).to_json()
                       if isinstance(result, ComparisonResult) else None),
        "reading": None if outcome.reading is None else reading_to_json(outcome.reading),
        "objects": [{"kind": o.kind, "path": inside.relative(o.path), "sop_instance_uid": o.sop_instance_uid,
                     "seg_format": None if o.seg_format is None else o.seg_format.value}
                    for o in outcome.objects],
        "research": [{"path": inside.relative(o.path), "sop_instance_uid": o.sop_instance_uid}
                     for o in outcome.research],
        "seconds": dict(outcome.seconds),
        "warnings": list(outcome.warnings),
    }


def outcome_from_json(value: Mapping, storage_dir: Path) -> JobOutcome:
    inside = _Storage(storage_dir)
    result: SegmentResult | ComparisonResult | None = None
    if value["segment"] is not None:
        result = _segment_result_from(value["segment"], inside.absolute)
    elif value["comparison"] is not None:
        comparison = ComparisonResult.from_json(value["comparison"])
        result = replace(comparison, sr=inside.absolute(str(comparison.sr)))
    return JobOutcome(
        result=result,
        reading=None if value["reading"] is None else reading_from_json(value["reading"]),
        objects=tuple(
            OutputObject(str(o["kind"]), inside.absolute(o["path"]), str(o["sop_instance_uid"]),
                         None if o["seg_format"] is None else SegFormat(o["seg_format"]))
            for o in value["objects"]
        ),
        research=tuple(ResearchObject(inside.absolute(o["path"]), str(o["sop_instance_uid"]))
                       for o in value["research"]),
        seconds={str(k): float(v) for k, v in value["seconds"].items()},
        warnings=tuple(map(str, value["warnings"])),
    )


def _segment_result(result: SegmentResult, place) -> dict[str, object]:
    moved = replace(result, seg=place(result.seg), sr=place(result.sr), csv=place(result.csv),
                    labels=place(result.labels), objects=tuple(place(p) for p in result.objects))
    return moved.to_json()


def _segment_result_from(value: Mapping, place) -> SegmentResult:
    result = SegmentResult.from_json(value)
    return replace(result, seg=place(str(result.seg)), sr=place(str(result.sr)), csv=place(str(result.csv)),
                   labels=place(str(result.labels)), objects=tuple(place(str(p)) for p in result.objects))


class _Storage:
    """Paths inside one host's view of the shared storage."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def relative(self, path: Path) -> str:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root):
            raise OutsideStorageError(f"{path} is not inside the storage {self.root}")
        return str(resolved.relative_to(self.root))

    def absolute(self, relative: str | Path) -> Path:
        path = (self.root / relative).resolve()
        if Path(relative).is_absolute() or not path.is_relative_to(self.root):
            raise OutsideStorageError(f"{relative!r} leads outside the storage {self.root}")
        return path

    def all_relative(self, paths: tuple[Path, ...]) -> list[str]:
        return [self.relative(p) for p in paths]

    def all_absolute(self, values) -> tuple[Path, ...]:
        return tuple(self.absolute(v) for v in values)
