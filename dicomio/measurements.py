"""Per-structure measurements, the input of the SR and CSV writers.

Quantification and QA (inference/) fill these in; dicomio only encodes them.
Optional values are None when they were not measured (no PET, no reference
segmentation, no mirrored prediction), and are then left out of the SR and
empty in the CSV.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FlagKind(str, Enum):
    """Why a structure's result is implausible; each becomes a qualitative
    evaluation in the SR so that a radiologist sees it beside the numbers."""

    VOLUME_OUT_OF_RANGE = "volume_out_of_range"
    TRUNCATED = "truncated"
    UNEXPECTED_COMPONENTS = "unexpected_components"
    LATERALITY_RATIO = "laterality_ratio"


@dataclass(frozen=True)
class QualityFlag:
    """One plausibility finding about a structure, with the figures behind it
    (``detail``, e.g. ``"volume 4210 ml outside the adult range 900-2500 ml"``)."""

    kind: FlagKind
    detail: str


@dataclass(frozen=True)
class StructureMeasurements:
    """What was measured for one segmented structure.

    ``segment_number`` is the structure's segment in the DICOM-SEG the
    measurements refer to.
    """

    segment_number: int
    name: str
    volume_ml: float
    voxel_count: int
    hu_mean: float
    hu_std: float
    hu_min: float
    hu_max: float
    suv_mean: float | None = None
    suv_max: float | None = None
    suv_peak: float | None = None
    dice: float | None = None
    flags: tuple[QualityFlag, ...] = ()
