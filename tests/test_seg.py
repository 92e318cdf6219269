"""DICOM-SEG writing (dicomio/seg.py) and the structure code table (dicomio/codes.py).

Every SEG a test writes is saved as a file, checked by dicom3tools'
``dciodvfy`` and read back by two independent readers, highdicom and
dcmqi's ``segimage2itkimage`` (C++, DCMTK + ITK), whose volumes are
resampled into the source volume's grid by SimpleITK: the same labels must
come back at the same physical positions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import Collection
from pydicom.uid import generate_uid

from dicomio.codes import (
    BUILTIN_STRUCTURES,
    LEFT,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    RIGHT,
    STRUCTURE_CODES,
    TOTALSEGMENTATOR_V2_CLASSES,
    UnknownStructureError,
    structure_code,
)
from dicomio.colours import structure_colour
from dicomio.derived import write_dicom_atomically
from dicomio.seg import (
    AlgorithmIdentity,
    EmptySegmentationError,
    LabelledStructure,
    SegInputError,
    plan_segments,
    write_seg,
)
from dicomio.series import load_series
from dicomio.volume import SourceFrame, Volume
from tests.conftest import SHARED_DATA
from tests.synthetic import AXIAL, CORONAL, SAGITTAL, write_ct_series, write_enhanced_ct

DCIODVFY = Path("/usr/bin/dciodvfy")
ALGORITHM = AlgorithmIdentity(name="TotalSegmentator", version="2.4.0")

# ---------------------------------------------------------------------------
# Readers and validators
# ---------------------------------------------------------------------------


def dciodvfy(path: Path, expected_errors: Sequence[str] = ()) -> list[str]:
    """dciodvfy's warnings for `path`; fails the test on any error but `expected_errors`, all of them."""
    if not DCIODVFY.exists():
        pytest.fail(f"dicom3tools' dciodvfy is not installed at {DCIODVFY}: run ./install.sh --test")
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == list(expected_errors), "\n".join(lines)
    return [line for line in lines if line.startswith("Warning")]


#: What dicom3tools' dciodvfy (the installed snapshot of 2022-06-18) says of every LABELMAP SEG: it
#: predates Label Map Segmentation Storage (Supplement 243, final text 2024), so it knows no IOD for
#: it, and it holds Segment Number to "start at 1, increase by 1" as for the other SEGs, where highdicom
#: describes a LABELMAP's background as segment 0 (Sup 243 lifted that rule for LABELMAP).
DCIODVFY_LABELMAP_ERRORS = (
    "Error - SegmentNumber not monotonically increasing from one by one - have SegmentSequence item number"
    " 1 (from one) with SegmentNumber of 0",
    "Error - Information Object Not found",
)
#: The rules of the Segmentation IOD that Sup 243 conditioned on LABELMAP: the Segmentation Type
#: value, a segment 0, and no Segment Identification Sequence, a LABELMAP frame holding every
#: segment on its slice (dciodvfy misses it in the shared functional groups and in each frame's).
LABELMAP_RULES = (
    "Error - Unrecognized enumerated value <LABELMAP> for value 1 of attribute <Segmentation Type>",
    "Error - Value is zero for value 1 of attribute <Segment Number>",
    "Error - Missing attribute Type 1 Required Element=<SegmentIdentificationSequence>"
    " Module=<SegmentationMacro>",
)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"


def dciodvfy_labelmap(path: Path, frames: int) -> list[str]:
    """dciodvfy's check of a LABELMAP SEG, as far as the installed one knows the IOD.

    The file as it is gives only :data:`DCIODVFY_LABELMAP_ERRORS`. Sup 243
    kept one Segmentation IOD for both SOP classes, so a copy that calls
    itself Segmentation Storage has every module checked, and must break
    only :data:`LABELMAP_RULES`. Returns that check's warnings.
    """
    dciodvfy(path, DCIODVFY_LABELMAP_ERRORS)
    relabelled = pydicom.dcmread(path)
    assert relabelled.SOPClassUID == LABEL_MAP_SEGMENTATION_STORAGE
    relabelled.SOPClassUID = relabelled.file_meta.MediaStorageSOPClassUID = SEGMENTATION_STORAGE
    copy = path.with_name(f"{path.stem}-as-segmentation-storage.dcm")
    relabelled.save_as(copy)
    missing_identification = [LABELMAP_RULES[2]] * (1 + frames)
    return dciodvfy(copy, [DCIODVFY_LABELMAP_ERRORS[0], *LABELMAP_RULES[:2], *missing_identification])


def dcmqi_tool(name: str) -> str:
    """Path of a dcmqi executable, shipped inside the ``dcmqi`` wheel."""
    try:
        files = distribution("dcmqi").files or []
    except PackageNotFoundError:
        pytest.fail("dcmqi (the second SEG reader) is not installed: run ./install.sh --test")
    for file in files:
        if file.name == name and file.parent.name == "bin":
            return str(file.locate())
    pytest.fail(f"the dcmqi wheel has no {name}")


def on_grid(array: np.ndarray, affine: np.ndarray, volume: Volume) -> np.ndarray:
    """`array` (placed by `affine`) resampled into `volume`'s grid, nearest neighbour.

    The two grids must be the same lattice (a whole-voxel shift, flip or
    axis permutation), so resampling only moves voxels and never blends.
    """
    mapping = np.linalg.inv(volume.affine) @ affine
    np.testing.assert_allclose(mapping, np.rint(mapping), atol=1e-3)
    moving = Volume(array, affine, "", "", "", "SEG", (SourceFrame("", ""),) * array.shape[0]).to_sitk()
    resampled = sitk.Resample(
        moving, volume.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID()
    )
    return sitk.GetArrayFromImage(resampled)


def by_label(structures: Sequence[LabelledStructure]) -> dict[str, int]:
    return {s.code.label: s.value for s in structures}


def read_with_highdicom(path: Path, volume: Volume, structures: Sequence[LabelledStructure]) -> np.ndarray:
    """The SEG as a label map of structure values on `volume`'s grid, by highdicom."""
    seg = hd.seg.segread(path)
    read = seg.get_volume(combine_segments=True)
    values = by_label(structures)
    lookup = np.zeros(max(seg.segment_numbers) + 1, dtype=np.uint16)
    for number in seg.segment_numbers:  # a LABELMAP's background, segment 0, is not among them
        lookup[number] = values[seg.get_segment_description(number).SegmentLabel]
    return on_grid(lookup[read.array], read.affine, volume)


def dcmqi_export(path: Path, tmp_path: Path, *, merge: bool) -> list[tuple[sitk.Image, list[dict]]]:
    """dcmqi's images of a SEG, each with the attributes of the segments in it."""
    out = tmp_path / f"dcmqi-{path.stem}"
    out.mkdir()
    subprocess.run(
        [dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(path), "--outputDirectory", str(out),
         "-t", "nrrd", *(["--mergeSegments"] if merge else [])],
        check=True, capture_output=True,
    )
    groups = json.loads((out / "meta.json").read_text())["segmentAttributes"]
    return [(sitk.ReadImage(str(out / f"{n}.nrrd")), group) for n, group in enumerate(groups, start=1)]


def read_with_dcmqi(
    path: Path, volume: Volume, structures: Sequence[LabelledStructure], tmp_path: Path
) -> np.ndarray:
    """The SEG as a label map of structure values on `volume`'s grid, by dcmqi."""
    values = by_label(structures)
    result = np.zeros(volume.array.shape, dtype=np.uint16)
    for image, group in dcmqi_export(path, tmp_path, merge=True):
        array = sitk.GetArrayFromImage(image)
        lookup = np.zeros(int(array.max()) + 1, dtype=np.uint16)
        for attributes in group:
            lookup[attributes["labelID"]] = values[attributes["SegmentLabel"]]
        placed = on_grid(lookup[array], Volume.affine_from_sitk(image), volume)
        assert not np.any((placed > 0) & (result > 0)), "dcmqi groups overlap"
        result += placed
    return result


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]


def blobs(shape: tuple[int, int, int], values: Sequence[int], seed: int = 0) -> np.ndarray:
    """A label map with one box of each value, boxes cut off by later ones."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    for value in values:
        start = [int(rng.integers(0, max(1, n - 3))) for n in shape]
        size = [int(rng.integers(2, max(3, n // 2))) for n in shape]
        labels[tuple(slice(a, a + b) for a, b in zip(start, size, strict=True))] = value
    # An asymmetric marker (one corner voxel) so that any flip shows.
    labels[0, 0, 0] = values[0]
    return labels


def totalseg(*values: int) -> list[LabelledStructure]:
    return [LabelledStructure(v, structure_code(TOTALSEGMENTATOR_V2_CLASSES[v - 1])) for v in values]


def write(volume: Volume, labels: np.ndarray, structures, sources, path: Path, **options):
    """Build a SEG and write it as the pipeline does."""
    seg = write_seg(
        volume, labels, structures, ALGORITHM, sources,
        series_number=300, series_description="Organs (TotalSegmentator)", device_serial_number="SEGNODE",
        **options,
    )
    write_dicom_atomically(seg, path)
    return seg


def assert_round_trip(
    volume, labels, structures, sources, tmp_path: Path, *, labelmap: bool = False
) -> hd.seg.Segmentation:
    path = tmp_path / "seg.dcm"
    seg = write(volume, labels, structures, sources, path, labelmap=labelmap)
    if labelmap:
        dciodvfy_labelmap(path, int(seg.NumberOfFrames))
    else:
        dciodvfy(path)
    np.testing.assert_array_equal(read_with_highdicom(path, volume, structures), labels)
    np.testing.assert_array_equal(read_with_dcmqi(path, volume, structures, tmp_path), labels)
    return seg


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------

#: (orientation, slice step): every way a scanner may lay out a series.
_OBLIQUE = (
    np.cos(0.3), np.sin(0.3) * np.cos(0.2), np.sin(0.3) * np.sin(0.2),
    -np.sin(0.3), np.cos(0.3) * np.cos(0.2), np.cos(0.3) * np.sin(0.2),
)
LAYOUTS = {
    "axial": (AXIAL, 2.5),
    "axial-descending": (AXIAL, -2.5),
    "sagittal": (SAGITTAL, 1.5),
    "coronal": (CORONAL, -2.0),
    "oblique": (_OBLIQUE, 3.0),
    "rows-flipped": ((1.0, 0.0, 0.0, 0.0, -1.0, 0.0), 2.5),
    "columns-flipped": ((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 2.5),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_round_trip_single_frame_series(layout: str, tmp_path: Path) -> None:
    orientation, step = LAYOUTS[layout]
    paths = write_ct_series(tmp_path / "ct", slices=7, rows=24, columns=20, orientation=orientation,
                            slice_step=step)
    volume = load_series(paths).volume
    structures = totalseg(3, 5, 23, 51, 117)
    labels = blobs(volume.array.shape, [3, 5, 23, 51, 117])
    assert_round_trip(volume, labels, structures, headers(paths), tmp_path)


def test_round_trip_multi_frame_enhanced_ct(tmp_path: Path) -> None:
    path = write_enhanced_ct(tmp_path / "ct", slices=6, rows=20, columns=24, orientation=_OBLIQUE,
                             slice_step=-2.0)
    volume = load_series([path]).volume
    assert {frame.frame_number for frame in volume.sources} == set(range(1, 7))
    structures = totalseg(1, 2, 10)
    labels = blobs(volume.array.shape, [1, 2, 10], seed=3)
    seg = assert_round_trip(volume, labels, structures, headers([path]), tmp_path)
    referenced = {
        (item.ReferencedSOPInstanceUID, int(item.ReferencedFrameNumber))
        for frame in seg.PerFrameFunctionalGroupsSequence
        for item in frame.DerivationImageSequence[0].SourceImageSequence
    }
    assert referenced <= {(s.sop_instance_uid, s.frame_number) for s in volume.sources}


def test_real_totalsegmentator_result(tmp_path: Path) -> None:
    """TotalSegmentator's own 117-class output for a real Siemens series (JPEG 2000)."""
    case = SHARED_DATA / "ct-abdomen-siemens"
    if not case.exists():
        pytest.skip(f"{case} (shared reference data) is absent")
    paths = sorted((case / "dicom").iterdir())
    volume = load_series(paths).volume
    # The NIfTI is RAS; SimpleITK reads it into LPS, so resampling onto the
    # series' grid (a row flip here) puts every label on its DICOM voxel.
    nifti = sitk.ReadImage(str(case / "reference_totalseg_v2.nii.gz"))
    labels = on_grid(sitk.GetArrayFromImage(nifti), Volume.affine_from_sitk(nifti), volume)
    structures = totalseg(*range(1, 118))
    seg = assert_round_trip(volume, labels, structures, headers(paths), tmp_path)
    assert len(seg.SegmentSequence) == len(np.unique(labels)) - 1


def test_seg_identity_references_and_codes(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=5, rows=16, columns=16)
    sources = headers(paths)
    volume = load_series(paths).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:3, 2:6, 2:6] = 3  # kidney_left
    labels[2:4, 8:12, 8:12] = 23  # kidney_cyst_left
    series_uid, instance_uid = (generate_uid(entropy_srcs=["test_seg", part]) for part in ("series", "sop"))
    seg = write(volume, labels, totalseg(3, 23), sources, tmp_path / "seg.dcm",
                series_instance_uid=series_uid, sop_instance_uid=instance_uid)
    dciodvfy(tmp_path / "seg.dcm")
    read = pydicom.dcmread(tmp_path / "seg.dcm")
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert read.SegmentationType == "BINARY"
    assert (read.SeriesInstanceUID, read.SOPInstanceUID) == (series_uid, instance_uid)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "FrameOfReferenceUID"):
        assert read[keyword].value == sources[0][keyword].value, keyword
    assert read.SeriesDescription == "Organs (TotalSegmentator)"
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in read.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    # Each frame lies on the source image it says it was derived from.
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    for frame in read.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert source.SpatialLocationsPreserved == "YES"
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert position == by_uid[source.ReferencedSOPInstanceUID].ImagePositionPatient

    kidney, cyst = read.SegmentSequence
    assert kidney.SegmentLabel == "Left kidney"
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert modifier.CodeValue == LEFT.value
    assert "AnatomicRegionSequence" not in kidney
    assert cyst.SegmentedPropertyCategoryCodeSequence[0].CodeValue == MORPHOLOGICALLY_ABNORMAL_STRUCTURE.value
    assert cyst.AnatomicRegionSequence[0].CodeValue == "64033007"
    assert cyst.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == LEFT.value
    for item in (kidney, cyst):
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("TotalSegmentator", "2.4.0")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert seg.SegmentSequence[0].SegmentNumber == 1


def test_empty_segments_and_frames_are_left_out(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=6, rows=16, columns=16)
    volume = load_series(paths).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:3, 2:5, 2:5] = 5
    labels[4, 9:12, 9:12] = 51
    structures = totalseg(1, 5, 7, 51, 117)  # 1, 7 and 117 are absent
    planned = plan_segments(labels, structures, series_instance_uid=volume.series_instance_uid)
    assert [(s.segment_number, s.value) for s in planned] == [(1, 5), (2, 51)]
    seg = write(volume, labels, structures, headers(paths), tmp_path / "seg.dcm")
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Liver", "Heart"]
    assert seg.NumberOfFrames == 3  # liver on 2 slices, heart on 1
    dciodvfy(tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_with_highdicom(tmp_path / "seg.dcm", volume, structures), labels)


def test_written_atomically_with_the_segments_planned_beforehand(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=6, rows=16, columns=16)
    volume = load_series(paths).volume
    structures = totalseg(3, 5, 23)
    labels = blobs(volume.array.shape, [3, 5, 23])
    planned = plan_segments(labels, structures, series_instance_uid=volume.series_instance_uid)
    uids = {"series_instance_uid": "2.25.41", "sop_instance_uid": "2.25.42"}
    seg = write(volume, labels, structures, headers(paths), tmp_path / "plain.dcm", **uids)
    given = write(volume, labels, structures, headers(paths), tmp_path / "given.dcm",
                  segments=planned, **uids)
    write_dicom_atomically(given, tmp_path / "seg.dcm")

    assert (tmp_path / "seg.dcm").read_bytes() == (tmp_path / "given.dcm").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    # highdicom dates the objects and gives the dimensions a random UID; the rest is the same.
    for keyword in ("PixelData", "PerFrameFunctionalGroupsSequence", "SegmentSequence"):
        assert seg[keyword] == given[keyword], keyword
    dciodvfy(tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_with_highdicom(tmp_path / "seg.dcm", volume, structures), labels)


def test_fractional_round_trip(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=5, rows=16, columns=12, orientation=CORONAL)
    volume = load_series(paths).volume
    rng = np.random.default_rng(7)
    probabilities = np.zeros((4,) + volume.array.shape, dtype=np.float32)
    probabilities[1, 1:4, 2:9, 3:8] = rng.uniform(0.0, 1.0, (3, 7, 5))
    probabilities[3, 0:2, 10:14, 1:4] = rng.uniform(0.3, 1.0, (2, 4, 3))
    probabilities[2] = 0.001  # rounds to a stored 0: left out
    structures = totalseg(1, 2, 3)
    path = tmp_path / "seg.dcm"
    seg = write(volume, probabilities, structures, headers(paths), path, fractional=True)
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Spleen", "Left kidney"]
    dciodvfy(path)
    tolerance = 0.5 / 255 + 1e-6  # stored as 0..255
    read = hd.seg.segread(path).get_volume()  # [slice, row, column, segment], rescaled to 0..1
    for index, value in enumerate((1, 3)):
        placed = on_grid(read.array[..., index], read.affine, volume)
        np.testing.assert_allclose(placed, probabilities[value], atol=tolerance)
    exported = dcmqi_export(path, tmp_path, merge=False)
    assert [group[0]["SegmentLabel"] for _, group in exported] == ["Spleen", "Left kidney"]
    for (image, _), value in zip(exported, (1, 3), strict=True):
        stored = on_grid(sitk.GetArrayFromImage(image), Volume.affine_from_sitk(image), volume)
        np.testing.assert_allclose(stored / 255.0, probabilities[value], atol=tolerance)


# ---------------------------------------------------------------------------
# LABELMAP, colours and series context
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["axial-descending", "oblique"])
def test_labelmap_round_trip(layout: str, tmp_path: Path) -> None:
    orientation, step = LAYOUTS[layout]
    paths = write_ct_series(tmp_path / "ct", slices=7, rows=24, columns=20, orientation=orientation,
                            slice_step=step)
    volume = load_series(paths).volume
    values = [3, 5, 23, 51, 117]
    labels = blobs(volume.array.shape, values)
    seg = assert_round_trip(volume, labels, totalseg(*values), headers(paths), tmp_path, labelmap=True)
    assert seg.SOPClassUID == LABEL_MAP_SEGMENTATION_STORAGE
    assert (seg.SegmentationType, seg.BitsAllocated) == ("LABELMAP", 8)
    # One frame per slice that has a label, not one per segment and slice.
    assert seg.NumberOfFrames == np.count_nonzero(labels.any(axis=(1, 2)))


def test_labelmap_of_multi_frame_enhanced_ct(tmp_path: Path) -> None:
    path = write_enhanced_ct(tmp_path / "ct", slices=6, rows=20, columns=24, orientation=_OBLIQUE,
                             slice_step=-2.0)
    volume = load_series([path]).volume
    labels = blobs(volume.array.shape, [1, 2, 10], seed=3)
    assert_round_trip(volume, labels, totalseg(1, 2, 10), headers([path]), tmp_path, labelmap=True)


def test_labelmap_and_binary_describe_the_same_segments(tmp_path: Path) -> None:
    """One SR's segment numbers fit either format of the same labels."""
    paths = write_ct_series(tmp_path / "ct", slices=6, rows=16, columns=16)
    volume = load_series(paths).volume
    structures = totalseg(1, 5, 7, 51, 117)
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:3, 2:5, 2:5], labels[4, 9:12, 9:12], labels[0:6, 12:15, 1:4] = 5, 51, 117  # 1 and 7 absent
    uids = {"series_instance_uid": "2.25.51", "sop_instance_uid": "2.25.52"}
    binary = write(volume, labels, structures, headers(paths), tmp_path / "binary.dcm", **uids)
    labelmap = write(volume, labels, structures, headers(paths), tmp_path / "labelmap.dcm", labelmap=True,
                     **uids)
    background, *described = labelmap.SegmentSequence
    assert (background.SegmentNumber, background.SegmentLabel) == (0, "Background")
    assert described == list(binary.SegmentSequence)
    planned = plan_segments(labels, structures, series_instance_uid=volume.series_instance_uid)
    assert [item.SegmentNumber for item in described] == [segment.segment_number for segment in planned]
    assert [item.SegmentLabel for item in described] == ["Liver", "Heart", "Costal cartilages"]
    for name in ("binary", "labelmap"):
        read = read_with_highdicom(tmp_path / f"{name}.dcm", volume, structures)
        np.testing.assert_array_equal(read, labels)


@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_segments_carry_the_structure_colours(labelmap: bool, tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=4, rows=16, columns=16)
    volume = load_series(paths).volume
    structures = totalseg(2, 3, 5, 51)
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[0, 1:4, 1:4], labels[1, 5:8, 5:8], labels[2, 9:12, 9:12], labels[3, 12:15, 1:4] = 2, 3, 5, 51
    path = tmp_path / "seg.dcm"
    seg = write(volume, labels, structures, headers(paths), path, labelmap=labelmap)
    codes = {s.code.label: s.code for s in structures}
    described = seg.SegmentSequence[1:] if labelmap else seg.SegmentSequence
    assert [item.SegmentLabel for item in described] == list(codes)
    for item in described:
        expected = hd.color.CIELabColor.from_rgb(*structure_colour(codes[item.SegmentLabel]))
        assert list(item.RecommendedDisplayCIELabValue) == list(expected.value), item.SegmentLabel
    # dcmqi turns the stored CIELab back into RGB by itself: the table's colours come back.
    ((_, attributes),) = dcmqi_export(path, tmp_path, merge=True)
    assert [item["SegmentLabel"] for item in attributes] == list(codes)
    for item in attributes:
        rgb = structure_colour(codes[item["SegmentLabel"]])
        assert np.abs(np.subtract(item["recommendedDisplayRGBValue"], rgb)).max() <= 1, item["SegmentLabel"]


@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_series_context_is_copied(labelmap: bool, tmp_path: Path) -> None:
    """A PACS files the SEG beside its source by Body Part Examined; the
    source's Laterality is not copied (Type 2C on a condition a SEG does not
    meet: dciodvfy calls it "present when condition unsatisfied")."""
    paths = write_ct_series(tmp_path / "ct", slices=3, rows=8, columns=8)
    sources = headers(paths)
    volume = load_series(paths).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1, 2:5, 2:5] = 3
    for source in sources:
        source.BodyPartExamined, source.Laterality = "KIDNEY", "L"
    seg = write(volume, labels, totalseg(3), sources, tmp_path / "paired.dcm", labelmap=labelmap)
    paired = pydicom.dcmread(tmp_path / "paired.dcm", stop_before_pixels=True)
    assert paired.BodyPartExamined == "KIDNEY" and "Laterality" not in paired
    if labelmap:
        dciodvfy_labelmap(tmp_path / "paired.dcm", int(seg.NumberOfFrames))
    else:
        dciodvfy(tmp_path / "paired.dcm")


# ---------------------------------------------------------------------------
# dcmjs (the DICOM library of OHIF and other web viewers)
# ---------------------------------------------------------------------------

DCMJS_VERSION = "0.52.2"
#: npm packages live outside the repository, installed once per machine.
NPM_PREFIX = Path.home() / ".cache" / "segnode-npm"
DCMJS_SCRIPT = Path(__file__).with_name("dcmjs_seg.js")


@pytest.fixture(scope="session")
def dcmjs_modules() -> Path:
    """The node_modules folder that holds dcmjs DCMJS_VERSION (npm installs it there if need be)."""
    modules = NPM_PREFIX / "node_modules"
    package = modules / "dcmjs" / "package.json"
    if package.exists() and json.loads(package.read_text())["version"] == DCMJS_VERSION:
        return modules
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed to check a SEG with dcmjs, and are not installed")
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["npm", "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund", f"dcmjs@{DCMJS_VERSION}"],
        capture_output=True, text=True, check=False, timeout=600,
    )
    if result.returncode != 0:
        pytest.skip(f"npm could not install dcmjs {DCMJS_VERSION} into {NPM_PREFIX}: {result.stderr[-800:]}")
    return modules


def read_with_dcmjs(path: Path, volume: Volume, sources: Sequence[pydicom.Dataset], modules: Path) -> dict:
    """What dcmjs' Cornerstone adapter makes of a SEG over `volume`'s slices (tests/dcmjs_seg.js)."""
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    images = [by_uid[frame.sop_instance_uid] for frame in volume.sources]
    listing = [
        {
            "sopInstanceUid": image.SOPInstanceUID,
            "seriesInstanceUid": volume.series_instance_uid,
            "rows": int(image.Rows),
            "columns": int(image.Columns),
            "imageOrientationPatient": [float(v) for v in image.ImageOrientationPatient],
        }
        for image in images
    ]
    listing_path = path.with_suffix(".sources.json")
    listing_path.write_text(json.dumps(listing))
    result = subprocess.run(
        ["node", str(DCMJS_SCRIPT), str(path), str(listing_path)],
        capture_output=True, text=True, check=True, env={**os.environ, "NODE_PATH": str(modules)},
    )
    return json.loads(result.stdout)


def test_dcmjs_puts_binary_frames_on_their_slices(dcmjs_modules: Path, tmp_path: Path) -> None:
    """dcmjs 0.52.2 reads BINARY SEGs only: its Cornerstone adapter takes any other SEG for a
    FRACTIONAL one (``unpackPixelData``), and each frame's segment from the Segment Identification
    Sequence that a LABELMAP frame has not; it refuses the LABELMAP with that message."""
    orientation, step = LAYOUTS["axial-descending"]
    paths = write_ct_series(tmp_path / "ct", slices=6, rows=16, columns=12, orientation=orientation,
                            slice_step=step)
    sources = headers(paths)
    volume = load_series(paths).volume
    values = [3, 5, 51]
    labels = blobs(volume.array.shape, values, seed=2)
    structures = totalseg(*values)
    numbers = np.zeros(max(values) + 1, dtype=np.uint16)
    for segment in plan_segments(labels, structures, series_instance_uid=volume.series_instance_uid):
        numbers[segment.value] = segment.segment_number
    write(volume, labels, structures, sources, tmp_path / "binary.dcm")
    read = read_with_dcmjs(tmp_path / "binary.dcm", volume, sources, dcmjs_modules)
    np.testing.assert_array_equal(np.reshape(read["labelmap"], labels.shape), numbers[labels])
    write(volume, labels, structures, sources, tmp_path / "labelmap.dcm", labelmap=True)
    refused = read_with_dcmjs(tmp_path / "labelmap.dcm", volume, sources, dcmjs_modules)
    assert refused == {"error": "Fractional segmentations are not yet supported"}


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> tuple[Volume, list[pydicom.Dataset]]:
    paths = write_ct_series(tmp_path / "ct", slices=3, rows=8, columns=8)
    return load_series(paths).volume, headers(paths)


def test_refuses_labels_it_cannot_name(small) -> None:
    volume, sources = small
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[0, 0, 0], labels[1, 1, 1] = 5, 9
    with pytest.raises(SegInputError, match=r"label values \[9\]"):
        write_seg(volume, labels, totalseg(5), ALGORITHM, sources, series_number=1,
                  series_description="x", device_serial_number="S")


def test_refuses_a_fractional_labelmap(small) -> None:
    volume, sources = small
    with pytest.raises(SegInputError, match="a LABELMAP holds segment numbers"):
        write_seg(volume, np.ones((2,) + volume.array.shape), totalseg(1), ALGORITHM, sources,
                  series_number=1, series_description="x", device_serial_number="S", fractional=True,
                  labelmap=True)


def test_refuses_an_empty_segmentation(small) -> None:
    volume, sources = small
    with pytest.raises(EmptySegmentationError, match=volume.series_instance_uid):
        write_seg(volume, np.zeros(volume.array.shape, np.uint8), totalseg(5), ALGORITHM, sources,
                  series_number=1, series_description="x", device_serial_number="S")


def test_refuses_labels_off_the_grid_and_foreign_sources(small, tmp_path: Path) -> None:
    volume, sources = small
    labels = np.ones(volume.array.shape, dtype=np.uint8)
    options = dict(series_number=1, series_description="x", device_serial_number="S")
    with pytest.raises(SegInputError, match="do not fit"):
        write_seg(volume, labels[:, :-1], totalseg(1), ALGORITHM, sources, **options)
    other = headers(write_ct_series(tmp_path / "other", slices=3, rows=8, columns=8, seed=9))
    with pytest.raises(SegInputError, match="is from series"):
        write_seg(volume, labels, totalseg(1), ALGORITHM, other, **options)
    with pytest.raises(SegInputError, match="source images not given"):
        write_seg(volume, labels, totalseg(1), ALGORITHM, sources[:2], **options)
    for wrong in (np.diag([1.0, -1.0, 1.0, 1.0]), np.eye(4) + np.eye(4, k=3)):  # rows flipped; a slice off
        elsewhere = Volume(volume.array, volume.affine @ wrong, volume.frame_of_reference_uid,
                           volume.study_instance_uid, volume.series_instance_uid, "CT", volume.sources)
        with pytest.raises(SegInputError, match="is not on its source image"):
            write_seg(elsewhere, labels, totalseg(1), ALGORITHM, sources, **options)
    with pytest.raises(SegInputError, match="probabilities from"):
        write_seg(volume, np.full((2,) + volume.array.shape, 1.5), totalseg(1), ALGORITHM, sources,
                  fractional=True, **options)


# ---------------------------------------------------------------------------
# The code table
# ---------------------------------------------------------------------------


def _verhoeff_valid(number: str) -> bool:
    """SNOMED CT identifiers end in a Verhoeff check digit."""
    d = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
         [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
         [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
         [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
    p = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
         [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
         [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]
    check = 0
    for position, digit in enumerate(reversed(number)):
        check = d[check][p[position % 8][int(digit)]]
    return check == 0


def _context_group(*cids: int) -> dict[tuple[str, str], set[str]]:
    """(scheme, value) -> code meanings in PS3.16 context groups (pydicom's copy).

    A code may have a different meaning in different groups (818987002 is
    "Abdominopelvic cavity" in CID 7154 and "Intra-abdominopelvic" in CID 4).
    """
    meanings: dict[tuple[str, str], set[str]] = {}
    for cid in cids:
        for code in Collection(f"CID{cid}").concepts.values():
            meanings.setdefault((code.scheme_designator, code.value), set()).add(code.meaning.lower())
    return meanings


#: Property types outside CID 7151 "Segmentation Property Types": the
#: TotalSegmentator-mapping codes dicomio/codes.py marks "not in PS3.16",
#: and Skeletal muscle (CID 7710). A new one must be added here knowingly.
OUTSIDE_CID_7151 = {
    "48535007", "78247007", "25888004", "25523003", "15339008", "59558009",  # ribs 1-6
    "24915002", "5953002", "22565002", "77644006", "58830002", "43993008",  # ribs 7-12
    "65985001", "181674001", "78333006", "75297007", "244849004", "68455001", "110765007",
    "127954009",
}


def test_every_totalsegmentator_class_and_builtin_structure_has_codes() -> None:
    assert len(TOTALSEGMENTATOR_V2_CLASSES) == 117
    for name in (*TOTALSEGMENTATOR_V2_CLASSES, *BUILTIN_STRUCTURES):
        assert structure_code(name).name == name
    labels = [code.label for code in STRUCTURE_CODES.values()]
    assert len(set(labels)) == len(labels)
    with pytest.raises(UnknownStructureError, match="'liverr'"):
        structure_code("liverr")


def test_class_list_matches_the_published_label_file() -> None:
    labels_file = SHARED_DATA / "totalseg_v2_labels.json"
    if not labels_file.exists():
        pytest.skip(f"{labels_file} (shared reference data) is absent")
    published = json.loads(labels_file.read_text())
    assert {int(k): v for k, v in published.items()} == dict(enumerate(TOTALSEGMENTATOR_V2_CLASSES, start=1))


@pytest.mark.parametrize("name", sorted(STRUCTURE_CODES))
def test_codes_are_real_and_valid(name: str) -> None:
    code = STRUCTURE_CODES[name]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=code.label,
        segmented_property_category=code.segmented_property_category,
        segmented_property_type=code.segmented_property_type,
        algorithm_type="AUTOMATIC",
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            ALGORITHM.name, ALGORITHM.family.coded(), ALGORITHM.version
        ),
        anatomic_regions=None if code.anatomic_region is None else [code.anatomic_region_code],
    )
    assert description.SegmentLabel == code.label
    assert code.category.meaning.lower() in _context_group(7150)[("SCT", code.category.value)]
    if code.laterality is not None:
        assert code.laterality.meaning.lower() in _context_group(244)[("SCT", code.laterality.value)]
    if code.anatomic_region is not None:
        region = code.anatomic_region
        assert region.meaning.lower() in _context_group(4, 7151)[(region.scheme, region.value)]
    property_type = code.property_type
    meanings = _context_group(7151).get((property_type.scheme, property_type.value))
    assert (meanings is None) == (property_type.value in OUTSIDE_CID_7151), property_type
    assert meanings is None or property_type.meaning.lower() in meanings
    for concept in filter(None, (property_type, code.anatomic_region, code.laterality)):
        # A SNOMED CT concept id: partition 00 and a valid check digit.
        assert concept.scheme == "SCT"
        assert re.fullmatch(r"[1-9][0-9]{5,17}", concept.value) and concept.value[-3:-1] == "00"
        assert _verhoeff_valid(concept.value), concept


def test_laterality_goes_where_the_anatomy_is() -> None:
    kidney = structure_code("kidney_right")
    assert kidney.segmented_property_type_modifier.value == RIGHT.value
    assert kidney.anatomic_region_code is None
    cyst = structure_code("kidney_cyst_right")
    assert cyst.segmented_property_type_modifier is None
    assert (cyst.anatomic_region_code.value, cyst.anatomic_region_modifier.value) == ("64033007", RIGHT.value)
