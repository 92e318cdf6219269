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

from dataclasses import dataclass, field
from pathlib import Path

from dicomio.dose_records import PointReading
from node.queue.jobs import JobKind
from node.queue.results import ComparisonResult, SegmentResult
from node.work.outputs import OutputObject
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
