"""What a finished job recorded, one type per job kind.

The queue stores a result as a JSON object in the job's row. Its keys are
those earlier versions wrote, so that rows already in a database decode
(a QA result from before Jaccard and HD95 has its Dice alone);
``segnode jobs --json`` prints the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SegmentResult:
    """A segmentation's outputs (kept, and sent from, the job's results folder;
    ``objects`` every DICOM object written to send), the model that made it,
    how many structures it found, whether PET was measured, seconds by
    stage, what its report says about its input, and what the run warned of
    (images left out, an output the series cannot have)."""

    seg: Path
    sr: Path
    csv: Path
    labels: Path
    model: str
    structures: int
    pet: bool
    seconds: Mapping[str, float]
    notes: tuple[str, ...] = ()
    objects: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "seg": str(self.seg), "sr": str(self.sr), "csv": str(self.csv), "labels": str(self.labels),
            "model": self.model, "structures": self.structures, "pet": self.pet,
            "seconds": dict(self.seconds),
            # Only where there are any: results without print as they always did.
            **({"notes": list(self.notes)} if self.notes else {}),
            **({"objects": [str(path) for path in self.objects]} if self.objects else {}),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }

    @classmethod
    def from_json(cls, value: Mapping) -> SegmentResult:
        return cls(
            seg=Path(value["seg"]), sr=Path(value["sr"]), csv=Path(value["csv"]),
            labels=Path(value["labels"]), model=value["model"], structures=value["structures"],
            pet=value["pet"], seconds=dict(value["seconds"]),
            # Rows written before the completion signals have no notes, before issue 14 no objects.
            notes=tuple(value.get("notes", ())),
            objects=tuple(Path(path) for path in value.get("objects", ())),
            warnings=tuple(value.get("warnings", ())),
        )


@dataclass(frozen=True)
class Agreement:
    """One of our structures against the reference SEG's: HD95 in mm is None
    when one side is empty."""

    dice: float | None
    jaccard: float | None
    hd95_mm: float | None


@dataclass(frozen=True)
class ComparisonResult:
    """A QA report, the agreement by structure name, and seconds by stage."""

    sr: Path
    agreement: Mapping[str, Agreement]
    seconds: Mapping[str, float]

    def to_json(self) -> dict[str, object]:
        return {
            "sr": str(self.sr),
            "agreement": {name: {"dice": a.dice, "jaccard": a.jaccard, "hd95_mm": a.hd95_mm}
                          for name, a in self.agreement.items()},
            "seconds": dict(self.seconds),
        }

    @classmethod
    def from_json(cls, value: Mapping) -> ComparisonResult:
        if "agreement" in value:
            agreement = {name: Agreement(a["dice"], a["jaccard"], a["hd95_mm"])
                         for name, a in value["agreement"].items()}
        else:  # written before Jaccard and HD95 (3869c66): Dice by structure
            agreement = {name: Agreement(dice, None, None) for name, dice in value["dice"].items()}
        return cls(sr=Path(value["sr"]), agreement=agreement, seconds=dict(value["seconds"]))


@dataclass(frozen=True)
class DosimetryResult:
    """A time point read into its course (node/queue/courses.py): the course,
    how many points it has now and how many its evaluation waits for; once
    evaluated, the report objects written (``objects``: the SR and the
    Encapsulated PDF, sent; ``csv``, kept) and each organ's absorbed dose in
    Gy by structure name. Seconds by stage; warnings (a misaligned point)."""

    course: int
    points: int
    needed: int
    seconds: Mapping[str, float]
    objects: tuple[Path, ...] = ()
    csv: Path | None = None
    doses_gy: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "course": self.course, "points": self.points, "needed": self.needed,
            "seconds": dict(self.seconds), "objects": [str(path) for path in self.objects],
            "csv": None if self.csv is None else str(self.csv), "doses_gy": dict(self.doses_gy),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, value: Mapping) -> DosimetryResult:
        return cls(
            course=value["course"], points=value["points"], needed=value["needed"],
            seconds=dict(value["seconds"]), objects=tuple(Path(path) for path in value["objects"]),
            csv=None if value["csv"] is None else Path(value["csv"]), doses_gy=dict(value["doses_gy"]),
            warnings=tuple(value["warnings"]),
        )


JobResult = SegmentResult | ComparisonResult | DosimetryResult
