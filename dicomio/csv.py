"""The measurements of a segmentation as a CSV file, one row per structure.

The SR carries the same numbers for DICOM readers; the CSV is for people and
scripts (spreadsheets, pandas, research exports). Values are written with
Python's shortest round-trip float format, so reading a cell back with
``float()`` gives the measured value exactly. A value that was not measured
(None: no PET, no reference segmentation) is an empty cell, as are the flags
of a structure without any.

Another stage may pick the file up as soon as it appears, so it is written to
a temporary name in the same folder, fsync'ed and renamed over the target:
a reader sees the previous file or the complete new one, never a partial one.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from dicomio.files import write_atomically
from dicomio.measurements import StructureMeasurements

#: Header row, in column order. The bounding box is in voxel indices
#: (slice, row, column; both ends included) and in patient coordinates (LPS, mm).
COLUMNS: tuple[str, ...] = (
    "segment_number",
    "structure",
    "volume_ml",
    "voxel_count",
    "mass_g",
    "density_g_ml",
    "hu_mean",
    "hu_std",
    "hu_median",
    "hu_min",
    "hu_max",
    "component_count",
    "bbox_first_slice",
    "bbox_first_row",
    "bbox_first_column",
    "bbox_last_slice",
    "bbox_last_row",
    "bbox_last_column",
    "bbox_min_x_mm",
    "bbox_min_y_mm",
    "bbox_min_z_mm",
    "bbox_max_x_mm",
    "bbox_max_y_mm",
    "bbox_max_z_mm",
    "suv_mean",
    "suv_max",
    "suv_peak",
    "sul_mean",
    "sul_peak",
    "total_uptake",
    "reference_segment_number",
    "dice",
    "jaccard",
    "hausdorff95_mm",
    "mirror_dice",
    "flags",
)


def _row(m: StructureMeasurements) -> tuple[object, ...]:
    """Cells of one structure in :data:`COLUMNS` order (None becomes empty).

    Flags share one cell, one ``kind: detail`` line each (a detail is one line).
    """
    box = m.bounding_box
    box_cells = (None,) * 12
    if box is not None:
        box_cells = (*box.first_index, *box.last_index, *box.min_lps_mm, *box.max_lps_mm)
    return (
        m.segment_number,
        m.name,
        m.volume_ml,
        m.voxel_count,
        m.mass_g,
        m.density_g_ml,
        m.hu_mean,
        m.hu_std,
        m.hu_median,
        m.hu_min,
        m.hu_max,
        m.component_count,
        *box_cells,
        m.suv_mean,
        m.suv_max,
        m.suv_peak,
        m.sul_mean,
        m.sul_peak,
        m.total_uptake,
        m.reference_segment_number,
        m.dice,
        m.jaccard,
        m.hausdorff95_mm,
        m.mirror_dice,
        "\n".join(f"{flag.kind.value}: {flag.detail}" for flag in m.flags),
    )


def write_measurements_csv(
    measurements: Sequence[StructureMeasurements], path: str | os.PathLike[str]
) -> Path:
    """Write `measurements` to `path` atomically, one row per structure.

    Parameters
    ----------
    measurements : sequence of StructureMeasurements
        Rows in the order given (normally by segment number).
    path : str or os.PathLike
        Target file; its folder must exist. An existing file is replaced.

    Returns
    -------
    pathlib.Path
        `path`.

    Raises
    ------
    OSError
        If the folder is missing or not writable; no temporary file is left.
    """
    text = io.StringIO(newline="")
    # newline="" lets the csv module write its own \r\n line ends (RFC 4180).
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows(_row(m) for m in measurements)
    return write_atomically(path, text.getvalue().encode("utf-8"))
