"""Reference SEGs from other tools onto the series' grid (dicomio/seg_reference.py).

Every SEG is a real file: written by segnode's own writer (with another
Manufacturer, as a second segnode-like tool would), or built directly with
highdicom in the forms other tools produce (FRACTIONAL, overlapping
segments, frames in shuffled order, only some slices, LABELMAP), and read
back onto the grid of the series loaded from disk. The masks must come
back voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomio.codes import LEFT, structure_code
from dicomio.seg import AlgorithmIdentity, LabelledStructure, write_seg
from dicomio.seg_reference import (
    ReferenceProblem,
    ReferenceSegError,
    ReferenceSegmentation,
    read_reference_seg,
    reference_subjects,
)
from dicomio.series import load_series
from dicomio.volume import Volume
from tests.synthetic import CORONAL, SAGITTAL, write_ct_series, write_enhanced_ct

ALGORITHM = AlgorithmIdentity(name="OtherTool", version="3")


def headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]


def on_grid(reference: ReferenceSegmentation, volume: Volume) -> dict[int, np.ndarray]:
    """Each segment's mask on the whole grid, by segment number."""
    masks = {}
    for segment in reference.segments:
        mask = np.zeros(volume.array.shape, dtype=bool)
        mask[segment.box] = segment.mask
        assert segment.voxel_count == np.count_nonzero(mask)
        masks[segment.segment_number] = mask
    return masks


def write_other(volume: Volume, labels: np.ndarray, names: Sequence[str], paths: Sequence[Path],
                path: Path, **options) -> Path:
    """A SEG written by segnode's writer under another manufacturer's name."""
    structures = [LabelledStructure(v, structure_code(n)) for v, n in enumerate(names, start=1)]
    seg = write_seg(volume, labels, structures, ALGORITHM, headers(paths), series_number=5,
                    series_description="Other tool", device_serial_number="X1", **options)
    seg.Manufacturer = "Other Vendor"
    seg.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("orientation", "step"),
    [(None, 2.5), (None, -2.5), (SAGITTAL, 1.5), (CORONAL, -2.0)],
    ids=["axial", "axial-descending", "sagittal", "coronal"],
)
def test_segnode_written_seg_reads_back_exactly(tmp_path: Path, orientation, step: float) -> None:
    layout = {} if orientation is None else {"orientation": orientation}
    paths = write_ct_series(tmp_path / "ct", slices=7, rows=20, columns=24, slice_step=step, **layout)
    volume = load_series(paths).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:4, 2:9, 3:10] = 1
    labels[5, 10:15, 1:4] = 2  # one slice only
    labels[2:6, 12:19, 15:23] = 3
    labels[0, 0, 0] = 1  # a corner voxel shows any flip
    names = ["liver", "kidney_left", "kidney_cyst_left"]
    path = write_other(volume, labels, names, paths, tmp_path / "seg.dcm")
    reference = read_reference_seg(path, volume)
    assert reference.manufacturer == "Other Vendor"
    masks = on_grid(reference, volume)
    for value in (1, 2, 3):
        np.testing.assert_array_equal(masks[value], labels == value)
    liver, kidney, cyst = reference.segments
    assert (liver.label, liver.property_type.value) == ("Liver", "10200004")
    assert liver.property_type_modifier is None and liver.anatomic_region is None
    assert (kidney.property_type.value, kidney.property_type_modifier.value) == ("64033007", LEFT.value)
    assert (cyst.property_type.value, cyst.anatomic_region.value, cyst.anatomic_region_modifier.value) == (
        "367643001", "64033007", LEFT.value
    )
    assert kidney.box == (slice(5, 6), slice(10, 15), slice(1, 4))


def test_multi_frame_source(tmp_path: Path) -> None:
    path = write_enhanced_ct(tmp_path / "ct", slices=6, rows=16, columns=18, slice_step=-2.0)
    volume = load_series([path]).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:5, 3:9, 2:7] = 1
    labels[4:6, 10:14, 9:16] = 2
    seg = write_other(volume, labels, ["spleen", "pancreas"], [path], tmp_path / "seg.dcm")
    masks = on_grid(read_reference_seg(seg, volume), volume)
    for value in (1, 2):
        np.testing.assert_array_equal(masks[value], labels == value)


def _description(number: int, label: str, property_type) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


DESCRIPTIONS = [
    _description(1, "Liver", codes.SCT.Liver),
    _description(2, "Liver lesion region", codes.SCT.Liver),  # overlaps the first
]


def highdicom_seg(volume: Volume, paths: Sequence[Path], pixels: np.ndarray, slices: Sequence[int],
                  segmentation_type: str, path: Path) -> Path:
    """A SEG built by highdicom from the source images of volume slices `slices`,
    in that order, `pixels` holding one frame per listed slice
    ([slice, row, column] for a label map, [..., segment] otherwise)."""
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    sources = [pydicom.dcmread(by_uid[volume.sources[k].sop_instance_uid]) for k in slices]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=segmentation_type,
        segment_descriptions=DESCRIPTIONS,
        series_instance_uid=hd.UID(),
        series_number=9,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Reader Workstation",
        manufacturer_model_name="RW",
        software_versions="1",
        device_serial_number="7",
    )
    seg.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    "slices",
    [[6, 1, 4, 2, 5, 3, 0], [5, 1, 2, 6], [4, 0, 2], [3]],
    ids=["all-shuffled", "with-gaps", "every-other", "one-slice"],
)
def test_fractional_overlapping_shuffled_subset(tmp_path: Path, slices: list[int]) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=7, rows=16, columns=20, slice_step=-3.0)
    volume = load_series(paths).volume
    rng = np.random.default_rng(5)
    # Fractions away from the 0.5 threshold once stored in 8 bits.
    fractions = rng.choice([0.0, 0.2, 0.45, 0.55, 0.7, 1.0], size=volume.array.shape + (2,))
    fractions[..., 1] *= rng.random(volume.array.shape) < 0.5  # the second segment overlaps the first
    path = highdicom_seg(volume, paths, fractions[slices].astype(np.float32), slices, "FRACTIONAL",
                         tmp_path / "seg.dcm")
    masks = on_grid(read_reference_seg(path, volume), volume)
    expected = np.zeros(fractions.shape, dtype=bool)
    expected[slices] = fractions[slices] >= 0.5
    for number in (1, 2):
        np.testing.assert_array_equal(masks[number], expected[..., number - 1])
    assert (masks[1] & masks[2]).any()


def test_frames_on_another_plane_of_the_same_lattice(tmp_path: Path) -> None:
    """highdicom writes a Volume's planes as frames: here sagittal planes of an axial series."""
    paths = write_ct_series(tmp_path / "ct", slices=6, rows=10, columns=12, slice_step=-2.0)
    volume = load_series(paths).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:4, 2:7, 3:9] = 1
    labels[0, 0, 0] = 1
    planes = hd.Volume(labels, volume.affine, coordinate_system="PATIENT",
                       frame_of_reference_uid=volume.frame_of_reference_uid)
    planes = planes.permute_spatial_axes([2, 0, 1]).flip_spatial(1)
    path = highdicom_seg(volume, paths, planes, range(6), "BINARY", tmp_path / "seg.dcm")
    orientation = pydicom.dcmread(path).SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [abs(float(v)) for v in orientation.ImageOrientationPatient] == [0, 1, 0, 0, 0, 1]
    np.testing.assert_array_equal(on_grid(read_reference_seg(path, volume), volume)[1], labels == 1)


def test_labelmap_seg(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=5, rows=12, columns=14)
    volume = load_series(paths).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:4, 2:7, 3:9] = 1
    labels[3:5, 8:11, 1:5] = 2
    path = highdicom_seg(volume, paths, labels, range(5), "LABELMAP", tmp_path / "seg.dcm")
    masks = on_grid(read_reference_seg(path, volume), volume)
    np.testing.assert_array_equal(masks[1], labels == 1)
    np.testing.assert_array_equal(masks[2], labels == 2)


# ---------------------------------------------------------------------------
# Whose SEG, and refusals
# ---------------------------------------------------------------------------


@pytest.fixture
def series(tmp_path: Path) -> tuple[Volume, list[Path], np.ndarray]:
    paths = write_ct_series(tmp_path / "ct", slices=4, rows=10, columns=12)
    volume = load_series(paths).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:3, 2:6, 3:8] = 1
    return volume, paths, labels


def test_which_datasets_are_references(series, tmp_path: Path) -> None:
    volume, paths, labels = series
    path = write_other(volume, labels, ["liver"], paths, tmp_path / "seg.dcm")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert reference_subjects(header) == {volume.series_instance_uid}
    header.Manufacturer = "segnode"  # our own result
    assert reference_subjects(header) == set()
    assert reference_subjects(pydicom.dcmread(paths[0])) == set()  # a CT image


def test_seg_of_another_series_is_refused(series, tmp_path: Path) -> None:
    volume, paths, labels = series
    other_paths = write_ct_series(tmp_path / "other", slices=4, rows=10, columns=12, seed=3)
    other = load_series(other_paths).volume
    path = write_other(other, labels, ["liver"], other_paths, tmp_path / "seg.dcm")
    with pytest.raises(ReferenceSegError, match=f"does not reference the series: it references series "
                                                f".*{other.series_instance_uid}") as caught:
        read_reference_seg(path, volume)
    assert caught.value.problem is ReferenceProblem.OTHER_SERIES
    assert caught.value.series_instance_uid == volume.series_instance_uid


def test_seg_in_another_frame_of_reference_is_refused(series, tmp_path: Path) -> None:
    volume, paths, labels = series
    path = write_other(volume, labels, ["liver"], paths, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(path)
    seg.FrameOfReferenceUID = "1.2.3.999"
    seg.save_as(path)
    expected = "another frame of reference: the SEG is in 1.2.3.999"
    with pytest.raises(ReferenceSegError, match=expected) as caught:
        read_reference_seg(path, volume)
    assert caught.value.problem is ReferenceProblem.OTHER_FRAME_OF_REFERENCE


def test_seg_off_the_grid_is_refused(series, tmp_path: Path) -> None:
    volume, paths, labels = series
    path = write_other(volume, labels, ["liver"], paths, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(path)
    for frame in seg.PerFrameFunctionalGroupsSequence:  # half a pixel (0.4 mm) along the rows
        position = frame.PlanePositionSequence[0]
        position.ImagePositionPatient = [float(position.ImagePositionPatient[0]) + 0.4,
                                         *position.ImagePositionPatient[1:]]
    seg.save_as(tmp_path / "shifted.dcm")
    expected = r"segment 1: its voxel centres lie up to 0\.50 voxels off"
    with pytest.raises(ReferenceSegError, match=expected) as caught:
        read_reference_seg(tmp_path / "shifted.dcm", volume)
    assert caught.value.problem is ReferenceProblem.GEOMETRY

    # The same series UID and frame of reference, another pixel spacing.
    finer_paths = write_ct_series(tmp_path / "finer", slices=4, rows=16, columns=20, pixel_spacing=(0.5, 0.5),
                                  series_instance_uid=volume.series_instance_uid,
                                  study_instance_uid=volume.study_instance_uid)
    finer = load_series(finer_paths).volume
    assert finer.frame_of_reference_uid == volume.frame_of_reference_uid
    with pytest.raises(ReferenceSegError, match="geometry does not fit the series: segment 1: one step"):
        read_reference_seg(path, finer)


def test_seg_beyond_the_series_is_refused(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=6, rows=10, columns=12)
    volume = load_series(paths).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[2:6, 2:6, 3:8] = 1
    path = write_other(volume, labels, ["liver"], paths, tmp_path / "seg.dcm")
    first_four = Volume(volume.array[:4], volume.affine, volume.frame_of_reference_uid,
                        volume.study_instance_uid, volume.series_instance_uid, "CT", volume.sources[:4])
    expected = r"reach indices \[2, 2, 3\] to \[5, 5, 7\], beyond the series' shape \[4, 10, 12\]"
    with pytest.raises(ReferenceSegError, match=expected):
        read_reference_seg(path, first_four)


def test_unreadable_reference_is_refused(series, tmp_path: Path) -> None:
    volume, paths, _ = series
    with pytest.raises(ReferenceSegError, match="not a readable segmentation") as caught:
        read_reference_seg(paths[0], volume)  # a CT image
    assert caught.value.source == str(paths[0])
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(ReferenceSegError, match="not a readable segmentation"):
        read_reference_seg(tmp_path / "junk.dcm", volume)
