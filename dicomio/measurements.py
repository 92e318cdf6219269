"""Per-structure measurements, the input of the SR and CSV writers.

Quantification (inference/) fills these in; dicomio only encodes them.
Optional values are None when they were not measured (no PET, no reference
segmentation), and are then left out of the SR and empty in the CSV.
"""

from __future__ import annotations

from dataclasses import dataclass


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
