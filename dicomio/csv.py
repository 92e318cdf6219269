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
from dicomio.measurements import BoundingBox, FlagKind, QualityFlag, StructureMeasurements

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


class MeasurementsCsvError(ValueError):
    """A file that is not a measurements CSV as :func:`write_measurements_csv` writes it."""


def _optional(cell: str, kind: type[int] | type[float]) -> int | float | None:
    return None if cell == "" else kind(cell)


def _structure(cells: dict[str, str]) -> StructureMeasurements:
    """One row back as what was written (the inverse of :func:`_row`)."""
    box = None
    if cells["bbox_first_slice"] != "":
        index = [int(cells[f"bbox_{end}_{axis}"]) for end in ("first", "last")
                 for axis in ("slice", "row", "column")]
        mm = [float(cells[f"bbox_{end}_{axis}_mm"]) for end in ("min", "max") for axis in "xyz"]
        box = BoundingBox((index[0], index[1], index[2]), (index[3], index[4], index[5]),
                          (mm[0], mm[1], mm[2]), (mm[3], mm[4], mm[5]))
    flags = tuple(QualityFlag(FlagKind(kind), detail)
                  for kind, detail in (line.split(": ", 1) for line in cells["flags"].splitlines()))
    optional_floats = {
        name: _optional(cells[name], float)
        for name in ("mass_g", "density_g_ml", "hu_median", "suv_mean", "suv_max", "suv_peak", "sul_mean",
                     "sul_peak", "total_uptake", "dice", "jaccard", "hausdorff95_mm", "mirror_dice")
    }
    return StructureMeasurements(
        segment_number=int(cells["segment_number"]),
        name=cells["structure"],
        volume_ml=float(cells["volume_ml"]),
        voxel_count=int(cells["voxel_count"]),
        hu_mean=float(cells["hu_mean"]),
        hu_std=float(cells["hu_std"]),
        hu_min=float(cells["hu_min"]),
        hu_max=float(cells["hu_max"]),
        component_count=_optional(cells["component_count"], int),
        reference_segment_number=_optional(cells["reference_segment_number"], int),
        bounding_box=box,
        flags=flags,
        **optional_floats,
    )


def read_measurements_csv(path: str | os.PathLike[str]) -> tuple[StructureMeasurements, ...]:
    """The measurements a file of :func:`write_measurements_csv` holds, exactly
    as they were written (the console shows a finished job's from it).

    Raises
    ------
    OSError
        If the file cannot be read.
    MeasurementsCsvError
        If its header is not :data:`COLUMNS` or a cell cannot be read back;
        the message names the file and the line.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise MeasurementsCsvError(f"{path}: not a measurements CSV (header {reader.fieldnames})")
        structures = []
        first_line = reader.line_num + 1  # a row's flags cell may span lines
        for cells in reader:
            try:
                structures.append(_structure(cells))
            except (ValueError, TypeError) as exc:
                raise MeasurementsCsvError(f"{path}, line {first_line}: {exc}") from None
            first_line = reader.line_num + 1
    return tuple(structures)
