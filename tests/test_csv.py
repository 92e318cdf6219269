"""dicomio/csv.py: the measurements CSV, read back with the stdlib csv module."""

from __future__ import annotations

import csv
import dataclasses
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomio import csv as measurements_csv
from dicomio.measurements import BoundingBox, FlagKind, QualityFlag, StructureMeasurements

MEASUREMENTS = (
    StructureMeasurements(
        segment_number=1,
        name="liver",
        volume_ml=1534.1234567890123,
        voxel_count=2_400_123,
        hu_mean=55.25,
        hu_std=12.125,
        hu_min=-98.0,
        hu_max=210.0,
        suv_mean=2.0625,
        suv_max=4.5,
        suv_peak=3.875,
        dice=0.9512345678901234,
        mass_g=1626.1708641963532,
        density_g_ml=1.06,
        hu_median=54.5,
        component_count=2,
        bounding_box=BoundingBox(
            (3, 40, 41), (250, 300, 301), (-120.5, -80.25, -612.5), (60.0, 95.125, -302.5)
        ),
        sul_mean=1.65,
        sul_peak=3.1,
        total_uptake=3164.2,
        reference_segment_number=7,
        jaccard=0.9069,
        hausdorff95_mm=2.75,
        mirror_dice=0.987654321,
        flags=(
            QualityFlag(FlagKind.VOLUME_OUT_OF_RANGE, "volume 1534 ml outside 900-1500 ml; check, please"),
            QualityFlag(FlagKind.UNEXPECTED_COMPONENTS, '2 components, "1" expected'),
        ),
    ),
    # Every optional value None; quotes, commas and non-ASCII in the name.
    StructureMeasurements(
        segment_number=2,
        name='kidney, left "upper pole" é',
        volume_ml=0.1 + 0.2,
        voxel_count=1,
        hu_mean=-1e-12,
        hu_std=0.0,
        hu_min=-1024.0,
        hu_max=3071.0,
    ),
)

OPTIONAL = (
    "mass_g",
    "density_g_ml",
    "hu_median",
    "suv_mean",
    "suv_max",
    "suv_peak",
    "sul_mean",
    "sul_peak",
    "total_uptake",
    "dice",
    "jaccard",
    "hausdorff95_mm",
    "mirror_dice",
)
OPTIONAL_COUNTS = ("component_count", "reference_segment_number")
BOX_INDICES = tuple(f"bbox_{end}_{axis}" for end in ("first", "last") for axis in ("slice", "row", "column"))
BOX_MM = tuple(f"bbox_{end}_{axis}_mm" for end in ("min", "max") for axis in "xyz")


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_round_trip_is_exact_and_none_is_empty(tmp_path):
    path = measurements_csv.write_measurements_csv(MEASUREMENTS, tmp_path / "measurements.csv")

    header, rows = read_rows(path)
    assert (
        header
        == list(measurements_csv.COLUMNS)
        == [
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
            *BOX_INDICES,
            *BOX_MM,
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
        ]
    )
    assert len(rows) == len(MEASUREMENTS)
    for row, m in zip(rows, MEASUREMENTS, strict=True):
        assert int(row["segment_number"]) == m.segment_number
        assert row["structure"] == m.name
        assert int(row["voxel_count"]) == m.voxel_count
        for field in ("volume_ml", "hu_mean", "hu_std", "hu_min", "hu_max"):
            assert float(row[field]) == getattr(m, field), field
        for field in OPTIONAL:
            value = getattr(m, field)
            if value is None:
                assert row[field] == "", field
            else:
                assert float(row[field]) == value, field
        for field in OPTIONAL_COUNTS:
            value = getattr(m, field)
            assert row[field] == ("" if value is None else str(value)), field
        box = m.bounding_box
        if box is None:
            assert [row[field] for field in (*BOX_INDICES, *BOX_MM)] == [""] * 12
        else:
            assert tuple(int(row[field]) for field in BOX_INDICES) == (*box.first_index, *box.last_index)
            assert tuple(float(row[field]) for field in BOX_MM) == (*box.min_lps_mm, *box.max_lps_mm)
        flags = [line.split(": ", 1) for line in row["flags"].splitlines()]
        assert [(FlagKind(kind), detail) for kind, detail in flags] == [(f.kind, f.detail) for f in m.flags]


def test_existing_file_is_replaced_whole_and_nothing_else_is_left(tmp_path):
    path = tmp_path / "measurements.csv"
    path.write_text("an older export\n")

    measurements_csv.write_measurements_csv(MEASUREMENTS[1:], path)

    _header, rows = read_rows(path)
    assert [row["structure"] for row in rows] == [MEASUREMENTS[1].name]
    assert [p.name for p in tmp_path.iterdir()] == ["measurements.csv"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_failure_while_writing_keeps_the_previous_file(tmp_path):
    path = measurements_csv.write_measurements_csv(MEASUREMENTS, tmp_path / "measurements.csv")
    before = path.read_bytes()

    def failing() -> Iterator[StructureMeasurements]:
        yield dataclasses.replace(MEASUREMENTS[0], name="half written")
        raise RuntimeError("quantification failed mid-way")

    with pytest.raises(RuntimeError, match="mid-way"):
        measurements_csv.write_measurements_csv(failing(), path)  # type: ignore[arg-type]

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["measurements.csv"]


def test_missing_folder_is_an_os_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        measurements_csv.write_measurements_csv(MEASUREMENTS, tmp_path / "missing" / "m.csv")
