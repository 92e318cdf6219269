"""dicomio.series: DICOM instances into a Volume with exact geometry.

Every check of geometry is made against the DICOM attributes themselves:
a voxel's expected position is ImagePositionPatient plus the row and
column offsets along the ImageOrientationPatient cosines, computed here
from the files and never from the Volume's affine. Voxel values are checked
against ``phantom_hu``, whose slice ``i`` is InstanceNumber ``i + 1`` (frame
``i + 1`` of a multi-frame image) in every synthetic series.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from dicomio.series import (
    MAX_STRAY_IMAGES,
    DropReason,
    LoadedSeries,
    SeriesError,
    SeriesProblem,
    load_series,
)
from dicomio.volume import Volume
from tests.conftest import SHARED_DATA
from tests.synthetic import (
    AXIAL,
    CORONAL,
    EIGHT_BIT_TRANSFER_SYNTAXES,
    LOSSY_TRANSFER_SYNTAXES,
    MAX_LOSSY_ERROR,
    SAGITTAL,
    TRANSFER_SYNTAXES,
    phantom_hu,
    write_ct_series,
    write_enhanced_ct,
)

# OpenJPEG needs at least 32 pixels a side for its default 6 resolution levels.
SLICES, ROWS, COLUMNS = 6, 40, 32


def _oblique(a_degrees: float, b_degrees: float) -> tuple[float, ...]:
    """Row and column cosines rotated about z by `a`, then the column tilted by `b`."""
    a, b = np.radians(a_degrees), np.radians(b_degrees)
    row = (np.cos(a), np.sin(a), 0.0)
    column = (-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), -np.sin(b))
    return (*row, *column)


OBLIQUE = _oblique(20.0, 30.0)
ORIENTATIONS = {"axial": AXIAL, "sagittal": SAGITTAL, "coronal": CORONAL, "oblique": OBLIQUE}


# ---------------------------------------------------------------------------
# Independent expectations
# ---------------------------------------------------------------------------


def _frame_attributes(ds: Dataset, frame_number: int | None) -> tuple[list, list, list, int]:
    """ImagePositionPatient, ImageOrientationPatient, PixelSpacing and the phantom slice index."""
    if frame_number is None:
        return ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing, ds.InstanceNumber - 1
    groups = [ds.PerFrameFunctionalGroupsSequence[frame_number - 1], ds.SharedFunctionalGroupsSequence[0]]

    def find(sequence: str, keyword: str) -> list:
        return next(g[sequence][0].get(keyword) for g in groups if sequence in g)

    return (
        find("PlanePositionSequence", "ImagePositionPatient"),
        find("PlaneOrientationSequence", "ImageOrientationPatient"),
        find("PixelMeasuresSequence", "PixelSpacing"),
        frame_number - 1,
    )


def _assert_matches_sources(volume: Volume, datasets: list[Dataset], expected_hu: np.ndarray) -> None:
    """Each slice holds its source's phantom slice, and each voxel lies where the source says."""
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    rows, columns = volume.array.shape[1:]
    for k, source in enumerate(volume.sources):
        ds = by_uid[source.sop_instance_uid]
        assert source.sop_class_uid == ds.SOPClassUID
        position, orientation, spacing, phantom_index = _frame_attributes(ds, source.frame_number)
        np.testing.assert_array_equal(volume.array[k], expected_hu[phantom_index])
        row_cosines = np.array(orientation[:3], dtype=float)
        column_cosines = np.array(orientation[3:], dtype=float)
        for r, c in ((0, 0), (rows - 1, 0), (0, columns - 1), (rows - 1, columns - 1), (5, 7)):
            expected = (
                np.array(position, dtype=float)
                + c * float(spacing[1]) * row_cosines
                + r * float(spacing[0]) * column_cosines
            )
            np.testing.assert_allclose(volume.affine @ [k, r, c, 1.0], [*expected, 1.0], atol=1e-6)


def _assert_ascending_along_normal(volume: Volume) -> None:
    row_cosines = volume.affine[:3, 2] / np.linalg.norm(volume.affine[:3, 2])
    column_cosines = volume.affine[:3, 1] / np.linalg.norm(volume.affine[:3, 1])
    normal = np.cross(row_cosines, column_cosines)
    np.testing.assert_allclose(volume.affine[:3, 0] / np.linalg.norm(volume.affine[:3, 0]), normal, atol=1e-9)


def _read(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def _copy(ds: Dataset, **changes: object) -> Dataset:
    """A different instance: a deep copy with a new SOP Instance UID and `changes`."""
    new = copy.deepcopy(ds)
    new.SOPInstanceUID = generate_uid()
    new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(new, keyword, value)
    return new


def _refusal(instances: list, problem: SeriesProblem) -> SeriesError:
    with pytest.raises(SeriesError) as caught:
        load_series(instances)
    assert caught.value.problem is problem, str(caught.value)
    return caught.value


@pytest.fixture(scope="module")
def axial_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("axial"), slices=SLICES, rows=ROWS, columns=COLUMNS)


@pytest.fixture
def axial(axial_files: list[Path]) -> list[Dataset]:
    """A fresh copy of the axial series for a test to alter."""
    return _read(axial_files)


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", ORIENTATIONS.values(), ids=ORIENTATIONS.keys())
@pytest.mark.parametrize("step", [2.5, -3.0], ids=["ascending", "reversed"])
def test_orientations_and_directions(tmp_path: Path, orientation: tuple[float, ...], step: float) -> None:
    files = write_ct_series(
        tmp_path, slices=SLICES, rows=ROWS, columns=COLUMNS, orientation=orientation, slice_step=step
    )
    loaded = load_series(files)
    volume = loaded.volume
    hu = phantom_hu(SLICES, ROWS, COLUMNS)
    assert loaded.warnings == ()
    assert volume.array.dtype == np.int16
    # Sorted by position: a reversed series comes out in reverse file order.
    np.testing.assert_array_equal(volume.array, hu if step > 0 else hu[::-1])
    _assert_matches_sources(volume, _read(files), hu)
    _assert_ascending_along_normal(volume)
    assert volume.spacing == pytest.approx((abs(step), 0.8, 0.8))
    first = pydicom.dcmread(files[0])
    assert volume.frame_of_reference_uid == first.FrameOfReferenceUID
    assert volume.series_instance_uid == first.SeriesInstanceUID
    assert volume.study_instance_uid == first.StudyInstanceUID
    assert volume.modality == "CT"


def test_order_ignores_instance_numbers_and_file_order(axial: list[Dataset]) -> None:
    numbers = list(range(1, SLICES + 1))
    random.Random(3).shuffle(numbers)
    expected = {ds.SOPInstanceUID: ds.InstanceNumber for ds in axial}
    for ds, number in zip(axial, numbers, strict=True):
        ds.InstanceNumber = number
    shuffled = axial[:]
    random.Random(4).shuffle(shuffled)
    volume = load_series(shuffled).volume
    assert [expected[s.sop_instance_uid] for s in volume.sources] == list(range(1, SLICES + 1))
    np.testing.assert_array_equal(volume.array, phantom_hu(SLICES, ROWS, COLUMNS))


def test_shuffled_file_paths(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path, slices=SLICES, rows=ROWS, columns=COLUMNS, slice_step=-2.0)
    random.Random(5).shuffle(files)
    volume = load_series(files).volume
    np.testing.assert_array_equal(volume.array, phantom_hu(SLICES, ROWS, COLUMNS)[::-1])


def test_position_rounding_below_tolerance_is_accepted(axial: list[Dataset]) -> None:
    # Scanners write positions rounded to a few digits; that is not a gap or a tilt.
    for index, ds in enumerate(axial):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        jitter = 0.004 * (-1) ** index
        ds.ImagePositionPatient = [x + jitter, y - jitter, z + jitter]
    loaded = load_series(axial)
    assert loaded.warnings == ()
    assert loaded.volume.spacing[0] == pytest.approx(2.5, abs=0.01)


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_sitk_round_trip_is_lossless(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    rescale = [(0.5, -1024.0)] + [(1.0, -1024.0)] * (SLICES - 1)
    for name, options in {"int16": {}, "float32": {"rescale": rescale}}.items():
        files = write_ct_series(
            tmp_path / name, slices=SLICES, rows=ROWS, columns=COLUMNS, orientation=orientation, **options
        )
        volume = load_series(files).volume
        assert volume.array.dtype == np.dtype(name)
        image = volume.to_sitk()
        back = sitk.GetArrayFromImage(image)
        assert back.dtype == volume.array.dtype
        np.testing.assert_array_equal(back, volume.array)
        np.testing.assert_allclose(Volume.affine_from_sitk(image), volume.affine, atol=1e-12)
        for k, r, c in ((0, 0, 0), (SLICES - 1, ROWS - 1, COLUMNS - 1), (2, 3, 4)):
            point = image.TransformIndexToPhysicalPoint((c, r, k))
            np.testing.assert_allclose(point, (volume.affine @ [k, r, c, 1.0])[:3], atol=1e-9)


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_signed_and_unsigned(tmp_path: Path, signed: bool) -> None:
    files = write_ct_series(
        tmp_path, JPEGLSLossless, slices=SLICES, rows=ROWS, columns=COLUMNS, signed=signed
    )
    assert pydicom.dcmread(files[0]).PixelRepresentation == int(signed)
    volume = load_series(files).volume
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, phantom_hu(SLICES, ROWS, COLUMNS))


def test_per_slice_integral_intercepts_stay_int16(tmp_path: Path) -> None:
    rescale = [(1.0, -1024.0 - 7 * i) for i in range(SLICES)]
    files = write_ct_series(tmp_path, slices=SLICES, rows=ROWS, columns=COLUMNS, rescale=rescale)
    volume = load_series(files).volume
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, phantom_hu(SLICES, ROWS, COLUMNS))


def test_per_slice_slopes_give_exact_float32(tmp_path: Path) -> None:
    # Slope 0.5 with intercept -1010.5 stores 2 * (HU + 1010.5): exact again after rescale.
    rescale = [(0.5, -1010.5), (1.0, -1024.0), (0.5, -1024.0)] * (SLICES // 3)
    files = write_ct_series(tmp_path, slices=SLICES, rows=ROWS, columns=COLUMNS, rescale=rescale)
    volume = load_series(files).volume
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, phantom_hu(SLICES, ROWS, COLUMNS).astype(np.float32))


def test_values_beyond_int16_give_float32(axial: list[Dataset]) -> None:
    for ds in axial:
        ds.RescaleIntercept = 40000
    volume = load_series(axial).volume
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, phantom_hu(SLICES, ROWS, COLUMNS) + 1024.0 + 40000.0)


def _ids(uid: str) -> str:
    return UID(uid).keyword


@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES, ids=_ids)
def test_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    # MAX_LOSSY_ERROR was measured at this size (smaller lossy JPEG 2000 frames err more).
    rows, columns = 64, 48
    files = write_ct_series(tmp_path, syntax, slices=3, rows=rows, columns=columns)
    volume = load_series(files).volume
    hu = phantom_hu(3, rows, columns).astype(np.float64)
    if syntax in EIGHT_BIT_TRANSFER_SYNTAXES:
        # Stored as rint((HU + 1024) / 8) with slope 8: float32 by the dtype rule.
        assert volume.array.dtype == np.float32
        hu = np.rint((hu + 1024) / 8) * 8 - 1024
    else:
        assert volume.array.dtype == np.int16
    error = np.abs(volume.array - hu).max()
    if syntax in LOSSY_TRANSFER_SYNTAXES:
        slope = 8 if syntax in EIGHT_BIT_TRANSFER_SYNTAXES else 1
        assert error <= MAX_LOSSY_ERROR[syntax] * slope
    else:
        assert error == 0


# ---------------------------------------------------------------------------
# Multi-frame
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.1", JPEG2000Lossless, RLELossless, HTJ2KLossless], ids=_ids
)
def test_legacy_converted_enhanced_ct(tmp_path: Path, syntax: str) -> None:
    rescale = [(1.0, -1024.0), (0.5, -1024.0), (1.0, -1010.0)] * (SLICES // 3)
    path = write_enhanced_ct(
        tmp_path, syntax, slices=SLICES, rows=ROWS, columns=COLUMNS,
        orientation=OBLIQUE, slice_step=-2.0, rescale=rescale,
    )
    ds = pydicom.dcmread(path)
    assert ds.NumberOfFrames == SLICES
    assert "PixelValueTransformationSequence" in ds.PerFrameFunctionalGroupsSequence[0]
    volume = load_series([path]).volume
    hu = phantom_hu(SLICES, ROWS, COLUMNS)
    assert volume.array.dtype == np.float32
    assert [s.frame_number for s in volume.sources] == list(range(SLICES, 0, -1))
    assert {s.sop_instance_uid for s in volume.sources} == {ds.SOPInstanceUID}
    assert volume.sources[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2.2"
    _assert_matches_sources(volume, [ds], hu.astype(np.float32))
    _assert_ascending_along_normal(volume)


def test_enhanced_frames_shared_rescale_and_sitk(tmp_path: Path) -> None:
    path = write_enhanced_ct(tmp_path, slices=SLICES, rows=ROWS, columns=COLUMNS, orientation=SAGITTAL)
    ds = pydicom.dcmread(path)
    assert "PixelValueTransformationSequence" in ds.SharedFunctionalGroupsSequence[0]
    volume = load_series([path]).volume
    assert volume.array.dtype == np.int16
    _assert_matches_sources(volume, [ds], phantom_hu(SLICES, ROWS, COLUMNS))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.to_sitk()), volume.array)


def test_enhanced_frame_without_position_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_enhanced_ct(tmp_path, slices=3, rows=ROWS, columns=COLUMNS))
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    error = _refusal([ds], SeriesProblem.MISSING_ATTRIBUTE)
    assert "PlanePositionSequence" in str(error) and "frame 2" in str(error)
    assert ds.SOPInstanceUID in str(error)


def test_headers_of_the_instances_used_without_pixel_data(tmp_path: Path) -> None:
    """A SEG and SR reference the headers load_series keeps: those of the
    images in the volume, as reading without pixel data gives them."""
    files = write_ct_series(tmp_path / "ct", slices=SLICES, rows=ROWS, columns=COLUMNS)
    scout = _copy(pydicom.dcmread(files[0]), ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    scout.save_as(tmp_path / "scout.dcm", enforce_file_format=True)
    loaded = load_series([tmp_path / "scout.dcm", *files, files[1]])  # a scout and a repeated instance
    expected = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    assert loaded.headers == tuple(expected)
    for header, read in zip(loaded.headers, expected, strict=True):
        assert "PixelData" not in header
        assert header.file_meta == read.file_meta
        assert header.original_encoding == read.original_encoding
    multi_frame = load_series([write_enhanced_ct(tmp_path / "enhanced", slices=SLICES)])
    [header] = multi_frame.headers
    assert "PixelData" not in header and len(header.PerFrameFunctionalGroupsSequence) == SLICES


# ---------------------------------------------------------------------------
# Dropped with a warning
# ---------------------------------------------------------------------------


def _assert_bulk_unchanged(loaded: LoadedSeries) -> None:
    np.testing.assert_array_equal(loaded.volume.array, phantom_hu(SLICES, ROWS, COLUMNS))


def test_localizer_by_image_type_is_dropped(axial: list[Dataset]) -> None:
    scout = _copy(axial[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], Rows=ROWS)
    scout.ImageOrientationPatient = list(CORONAL)
    loaded = load_series([*axial, scout])
    _assert_bulk_unchanged(loaded)
    [warning] = loaded.warnings
    assert warning.reason is DropReason.LOCALIZER
    assert [s.sop_instance_uid for s in warning.sources] == [scout.SOPInstanceUID]


def test_unmarked_localizers_are_dropped_by_orientation(axial: list[Dataset]) -> None:
    scout = _copy(axial[0], ImageOrientationPatient=list(SAGITTAL))
    loaded = load_series([scout, *axial])
    _assert_bulk_unchanged(loaded)
    [warning] = loaded.warnings
    assert warning.reason is DropReason.STRAY_ORIENTATION
    assert [s.sop_instance_uid for s in warning.sources] == [scout.SOPInstanceUID]
    assert "[0, 1, 0, 0, 0, -1]" in warning.detail


def test_repeated_instance_is_read_once(axial: list[Dataset]) -> None:
    loaded = load_series([*axial, copy.deepcopy(axial[2])])
    _assert_bulk_unchanged(loaded)
    [warning] = loaded.warnings
    assert warning.reason is DropReason.DUPLICATE_INSTANCE
    assert [s.sop_instance_uid for s in warning.sources] == [axial[2].SOPInstanceUID]


# ---------------------------------------------------------------------------
# Refused
# ---------------------------------------------------------------------------


def test_missing_slice(axial: list[Dataset]) -> None:
    error = _refusal(axial[:2] + axial[3:], SeriesProblem.MISSING_SLICES)
    assert axial[0].SeriesInstanceUID in str(error)
    assert "about 1 slice(s) missing" in str(error) and "2.500 and 7.500" in str(error)


def test_irregular_spacing(axial: list[Dataset]) -> None:
    x, y, z = axial[3].ImagePositionPatient
    axial[3].ImagePositionPatient = [x, y, float(z) + 0.5]
    error = _refusal(axial, SeriesProblem.IRREGULAR_SPACING)
    assert axial[0].SeriesInstanceUID in str(error)


def test_duplicated_position(axial: list[Dataset]) -> None:
    twin = _copy(axial[2])
    error = _refusal([*axial, twin], SeriesProblem.DUPLICATE_POSITION)
    assert twin.SOPInstanceUID in str(error) and axial[2].SOPInstanceUID in str(error)


def test_mixed_orientations(axial: list[Dataset]) -> None:
    reformat = [_copy(ds, ImageOrientationPatient=list(CORONAL)) for ds in axial[: MAX_STRAY_IMAGES + 1]]
    error = _refusal([*axial, *reformat], SeriesProblem.MIXED_ORIENTATION)
    assert "[1, 0, 0, 0, 1, 0] (6 images)" in str(error)
    assert "[1, 0, 0, 0, 0, -1] (4 images)" in str(error)


def test_mixed_matrix_sizes(tmp_path: Path, axial: list[Dataset]) -> None:
    [other] = _read(write_ct_series(tmp_path, slices=1, rows=16, columns=16))
    odd = _copy(
        other,
        SeriesInstanceUID=axial[0].SeriesInstanceUID,
        FrameOfReferenceUID=axial[0].FrameOfReferenceUID,
    )
    error = _refusal([*axial, odd], SeriesProblem.MIXED_MATRIX)
    assert f"{ROWS}x{COLUMNS} (rows x columns) (6 images)" in str(error)
    assert "16x16 (rows x columns) (1 images)" in str(error)


def test_mixed_pixel_spacing(axial: list[Dataset]) -> None:
    axial[1].PixelSpacing = [0.7, 0.8]
    error = _refusal(axial, SeriesProblem.MIXED_PIXEL_SPACING)
    assert "0.7\\0.8" in str(error)


def test_gantry_tilt_is_refused(axial: list[Dataset]) -> None:
    # A 15-degree tilt: each slice moves along y by step * tan(15 degrees).
    for ds in axial:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + z * np.tan(np.radians(15.0)), z]
    error = _refusal(axial, SeriesProblem.GANTRY_TILT)
    assert "15.00 degrees" in str(error)


def test_mixed_series(tmp_path: Path, axial: list[Dataset]) -> None:
    other = _read(write_ct_series(tmp_path, slices=2, rows=ROWS, columns=COLUMNS, seed=9))
    error = _refusal([*axial, *other], SeriesProblem.MIXED_SERIES)
    assert axial[0].SeriesInstanceUID in str(error) and other[0].SeriesInstanceUID in str(error)


def test_mixed_frames_of_reference(axial: list[Dataset]) -> None:
    axial[4].FrameOfReferenceUID = generate_uid()
    error = _refusal(axial, SeriesProblem.MIXED_FRAME_OF_REFERENCE)
    assert axial[4].FrameOfReferenceUID in str(error)


def test_missing_position(axial: list[Dataset]) -> None:
    del axial[2].ImagePositionPatient
    error = _refusal(axial, SeriesProblem.MISSING_ATTRIBUTE)
    assert "ImagePositionPatient" in str(error) and axial[2].SOPInstanceUID in str(error)


def test_malformed_position(axial: list[Dataset]) -> None:
    axial[3].ImagePositionPatient = [0.0, 1.0]
    error = _refusal(axial, SeriesProblem.INVALID_ATTRIBUTE)
    assert "ImagePositionPatient" in str(error) and "2 values, not 3" in str(error)


def test_all_localizers(axial: list[Dataset]) -> None:
    for ds in axial:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    _refusal(axial, SeriesProblem.NO_IMAGES)


def test_invalid_orientation(axial: list[Dataset]) -> None:
    for ds in axial:
        ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.5, 0]
    _refusal(axial, SeriesProblem.INVALID_ORIENTATION)


def test_single_slice(axial: list[Dataset]) -> None:
    _refusal(axial[:1], SeriesProblem.TOO_FEW_SLICES)


def test_nothing_given() -> None:
    _refusal([], SeriesProblem.NO_IMAGES)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not DICOM")
    error = _refusal([path], SeriesProblem.UNREADABLE)
    assert str(path) in str(error)


def test_truncated_pixel_data(axial: list[Dataset]) -> None:
    axial[1].PixelData = axial[1].PixelData[:100]
    error = _refusal(axial, SeriesProblem.UNDECODABLE)
    assert axial[1].SOPInstanceUID in str(error)


# ---------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------

REAL_SERIES = SHARED_DATA / "ct-abdomen-siemens"
LIVER, SPLEEN = 5, 1  # TotalSegmentator v2 labels (shared/data/totalseg_v2_labels.json)


@pytest.mark.skipif(not REAL_SERIES.is_dir(), reason=f"shared test data absent: {REAL_SERIES}")
def test_real_siemens_series_on_the_reference_grid() -> None:
    files = sorted((REAL_SERIES / "dicom").iterdir())
    loaded = load_series(files)
    volume = loaded.volume
    assert loaded.warnings == ()
    assert volume.array.shape == (20, 512, 512) and volume.array.dtype == np.int16
    image = volume.to_sitk()
    labels = sitk.ReadImage(str(REAL_SERIES / "reference_totalseg_v2.nii.gz"))
    assert labels.GetSize() == image.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), image.GetSpacing(), atol=1e-6)
    # The label map's rows run the other way (its y axis points anterior):
    # same voxel centres, y index flipped. Its last row is our first.
    flip = np.diag([1.0, -1.0, 1.0])
    label_direction = np.array(labels.GetDirection()).reshape(3, 3)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(label_direction @ flip, direction, atol=1e-9)
    np.testing.assert_allclose(
        labels.TransformIndexToPhysicalPoint((0, 511, 0)), image.GetOrigin(), atol=1e-4
    )
    # Voxel for voxel: resampling onto our grid moves no label.
    on_our_grid = sitk.GetArrayFromImage(
        sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    )
    np.testing.assert_array_equal(on_our_grid, sitk.GetArrayFromImage(labels)[:, ::-1, :])
    # And the labels land on the right tissue (contrast-enhanced liver and spleen).
    for label in (LIVER, SPLEEN):
        hu = volume.array[on_our_grid == label]
        assert hu.size > 10_000
        assert 50 < np.median(hu) < 150 and np.percentile(hu, 5) > 0
    assert np.median(volume.array[on_our_grid == 0]) < -900  # mostly air outside the body
    # Sorted by position, not by InstanceNumber or file name.
    by_uid = {ds.SOPInstanceUID: ds for ds in _read(files)}
    z = [float(by_uid[s.sop_instance_uid].ImagePositionPatient[2]) for s in volume.sources]
    assert z == sorted(z)
