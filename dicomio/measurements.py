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
    (``detail``, e.g. ``"volume 4210 ml outside the adult range 900-2500 ml"``).

    ``detail`` is one non-empty line: the CSV writes one flag per line of a
    cell, and the SR shows it as the evaluation's comment.
    """

    kind: FlagKind
    detail: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FlagKind):
            raise TypeError(f"flag kind must be a FlagKind, not {self.kind!r}")
        if not self.detail.strip() or "\n" in self.detail or "\r" in self.detail:
            raise ValueError(
                f"flag {self.kind.value}: detail must be one non-empty line, got {self.detail!r}"
            )


@dataclass(frozen=True)
class BoundingBox:
    """The smallest box holding every voxel of a structure.

    Attributes
    ----------
    first_index, last_index : tuple of int
        ``(slice, row, column)`` of the first and last voxel, both included,
        on the grid of the segmented volume.
    min_lps_mm, max_lps_mm : tuple of float
        The same box in patient coordinates (LPS, mm): per axis, the least
        and greatest coordinate of the centres of its corner voxels. On an
        oblique grid this is the axis-aligned box around the voxel box.
    """

    first_index: tuple[int, int, int]
    last_index: tuple[int, int, int]
    min_lps_mm: tuple[float, float, float]
    max_lps_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        if any(first > last for first, last in zip(self.first_index, self.last_index, strict=True)):
            raise ValueError(f"bounding box first index {self.first_index} is after {self.last_index}")
        if any(low > high for low, high in zip(self.min_lps_mm, self.max_lps_mm, strict=True)):
            raise ValueError(f"bounding box minimum {self.min_lps_mm} is above {self.max_lps_mm}")


@dataclass(frozen=True)
class StructureMeasurements:
    """What was measured for one segmented structure.

    ``segment_number`` is the structure's segment in the DICOM-SEG the
    measurements refer to.

    CT values are over the structure's voxels: volume, count, HU statistics
    (standard deviation of the voxels themselves, not of a sample), 26-connected
    components, bounding box, and mass as volume x ``density_g_ml``, an
    assumed density rather than one measured from HU. PET values (SUVbw and
    SUL in g/ml) are on the PET grid as inference/quantify.py describes;
    ``total_uptake`` is SUVmean x volume (SUVbw g/ml x ml).

    QA values compare the segment with another segmentation: ``dice``,
    ``jaccard`` and ``hausdorff95_mm`` with segment
    ``reference_segment_number`` of a reference SEG of the same images
    (someone else's); ``mirror_dice`` with the model's own prediction on the
    mirrored image (self-consistency). ``flags`` are plausibility findings.
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
    mass_g: float | None = None
    density_g_ml: float | None = None
    hu_median: float | None = None
    component_count: int | None = None
    bounding_box: BoundingBox | None = None
    sul_mean: float | None = None
    sul_peak: float | None = None
    total_uptake: float | None = None
    reference_segment_number: int | None = None
    jaccard: float | None = None
    hausdorff95_mm: float | None = None
    mirror_dice: float | None = None
    flags: tuple[QualityFlag, ...] = ()
