"""The synthetic SPECT/CT dosimetry course (phantom/spect_course.py): files and truth.

The course is written to tmp_path and read back with pydicom, dicomio's CT
loader and SEG reader; its files as a node receives them (validity, UIDs, the
administration, storescu) are test_spect_course_phantom.py's. The expected
figures (activities, integrals, doses) are computed here from the published
constants and numerical integration, not by the code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import integrate, ndimage

from dicomio.codes import structure_code
from dicomio.resample import resample_label_fractions
from dicomio.seg_reference import read_reference_seg
from dicomio.series import load_series
from dicomio.volume import SourceFrame, Volume
from phantom.spect_course import (
    ADMINISTERED_ACTIVITY_MBQ,
    KINETICS,
    BiExponential,
    CourseTruth,
    write_course,
)

SEED = 3
SHIFT_MM = (6.0, -4.0, 5.0)
#: 177Lu: half-life 6.647 d (NNDC) and 147.9 keV of electrons per decay (Alcocer-Avila et al.,
#: EJNMMI Physics 7:33, 2020, Table 1), the figures inference/dosimetry/nuclides.py cites.
LU177_HALF_LIFE_H = 6.647 * 24
LU177_ELECTRON_MEV = 0.1479
JOULES_PER_MEV = 1.602176634e-13
@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> CourseTruth:
    """Two time points and a later third; the second's SPECT misregistered."""
    return write_course(
        tmp_path_factory.mktemp("course"),
        time_points_hours=(0.5, 24.0),
        extra_points=(72.0,),
        seed=SEED,
        misregister=(1, SHIFT_MM),
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> CourseTruth:
    """The same course without the misregistration and the later point."""
    return write_course(tmp_path_factory.mktemp("plain"), time_points_hours=(0.5, 24.0), seed=SEED)


def spect(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """The NM file and its Bq/ml by the Real World Value Mapping."""
    ds = pydicom.dcmread(path)
    mapping = ds.RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "Bq/ml"
    values = ds.pixel_array * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
    np.testing.assert_allclose(values, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return ds, values


def spect_affine(ds: pydicom.Dataset) -> np.ndarray:
    """[frame, row, column] -> LPS mm from the NM Detector and Reconstruction modules."""
    detector = ds.DetectorInformationSequence[0]
    orientation = np.array([float(v) for v in detector.ImageOrientationPatient])
    row, column = orientation[:3], orientation[3:]
    dy, dx = (float(v) for v in ds.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = np.cross(row, column) * float(ds.SpacingBetweenSlices)
    affine[:3, 1] = column * dy
    affine[:3, 2] = row * dx
    affine[:3, 3] = [float(v) for v in detector.ImagePositionPatient]
    return affine


def centre_of_mass_mm(ds: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    """Centre of the hot organs (voxels above a third of the maximum), in patient mm."""
    hot = np.where(values > values.max() / 3, values, 0.0)
    index = np.array(ndimage.center_of_mass(hot))
    return (spect_affine(ds) @ np.append(index, 1.0))[:3]


def test_spect_holds_the_activity_of_the_truth(course: CourseTruth) -> None:
    """All activity in view, read back and corrected from the acquisition's mean to its
    start: within 1 % (measured 0.04 %; noise and the PSF's exchange across the axial
    ends of the field of view)."""
    for point in course.time_points:
        ds, values = spect(point.spect.files[0])
        np.testing.assert_allclose(spect_affine(ds), course.spect_affine)
        rotation = ds.RotationInformationSequence[0]
        hours = rotation.ActualFrameDuration / 3.6e6 * rotation.NumberOfFramesInRotation
        decays = math.log(2) / LU177_HALF_LIFE_H * hours
        in_acquisition = -math.expm1(-decays) / decays
        voxel_ml = abs(np.linalg.det(course.spect_affine[:3, :3])) / 1000
        total_mbq = values.sum() * voxel_ml / 1e6 / in_acquisition
        assert total_mbq == pytest.approx(point.spect_activity_mbq, rel=0.01)
    # At t = 0 the organs hold nothing and the rest of the body all the administered activity; later
    # the organs and the rest add up to the whole body's, the rest never below zero.
    assert all(organ.kinetics.activity_mbq(0.0) == 0.0 for organ in course.organs)
    assert course.remainder_mbq(0.0) == pytest.approx(ADMINISTERED_ACTIVITY_MBQ)
    for hours in np.geomspace(0.1, 2000.0, 60):
        organs = sum(organ.kinetics.activity_mbq(hours) for organ in course.organs)
        assert course.remainder_mbq(hours) > 0.0
        assert organs + course.remainder_mbq(hours) == pytest.approx(course.whole_body.activity_mbq(hours))


def test_spect_shows_each_organ_at_its_concentration(plain: CourseTruth) -> None:
    """Inside each organ, two SPECT voxels (about twice the PSF's sigma) from its edge, the
    SPECT reads the organ's concentration: within 3 % (measured 0.4 to 1.0 % low: blur, noise)."""
    ct = load_series(plain.time_points[1].ct.files).volume
    ds, values = spect(plain.time_points[1].spect.files[0])
    target = Volume(
        values, spect_affine(ds), ct.frame_of_reference_uid, ct.study_instance_uid, ds.SeriesInstanceUID,
        "NM", tuple(SourceFrame(ds.SOPClassUID, ds.SOPInstanceUID, k + 1) for k in range(values.shape[0])),
    )
    for organ in plain.organs:
        labels = Volume(organ.ct_mask.astype(np.uint8), ct.affine, ct.frame_of_reference_uid,
                        ct.study_instance_uid, ct.series_instance_uid, "CT", ct.sources)
        inside = resample_label_fractions(labels, target).fractions[0] == 1.0
        core = ndimage.binary_erosion(inside, iterations=2)
        assert core.sum() >= 8, organ.name
        assert values[core].mean() == pytest.approx(organ.concentration_bq_per_ml[1], rel=0.03), organ.name


def test_truth_is_the_analytic_course(course: CourseTruth) -> None:
    ct = load_series(course.time_points[0].ct.files).volume
    np.testing.assert_allclose(ct.affine, course.ct_affine)
    for organ, kinetics in zip(course.organs, KINETICS, strict=True):
        assert organ.volume_ml == pytest.approx(organ.ct_mask.sum() * ct.voxel_volume_ml)
        assert organ.mass_g == pytest.approx(organ.volume_ml * 1.06)

        # Uptake then washout, both effective (physical decay included), so neither slower than
        # 177Lu's decay.
        assert kinetics.uptake_half_life_h < kinetics.washout_half_life_h <= LU177_HALF_LIFE_H

        def activity(t: float, kinetics=kinetics) -> float:
            a0 = kinetics.fraction * ADMINISTERED_ACTIVITY_MBQ
            washout = math.log(2) / kinetics.washout_half_life_h
            uptake = math.log(2) / kinetics.uptake_half_life_h
            return a0 * (math.exp(-washout * t) - math.exp(-uptake * t))

        for hours, value in zip((0.5, 24.0, 72.0), organ.activity_mbq, strict=True):
            assert value == pytest.approx(activity(hours), rel=1e-9)
        tia, _ = integrate.quad(activity, 0, np.inf, limit=200)
        assert organ.time_integrated_activity_mbq_h == pytest.approx(tia, rel=1e-6)
        dose = tia * 3600e6 * LU177_ELECTRON_MEV * JOULES_PER_MEV / (organ.mass_g / 1000)
        assert organ.absorbed_dose_gy == pytest.approx(dose, rel=1e-3)
    kidney = course.organ("kidney_right")
    # Close to the 0.37 Gy/GBq mean of [177Lu]Lu-DOTATOC (Staanum et al., EJNMMI Physics 8:78, 2021).
    assert 0.3 < kidney.absorbed_dose_gy / (ADMINISTERED_ACTIVITY_MBQ / 1000) < 0.45


def test_physician_seg_reads_back_as_the_true_organs(course: CourseTruth) -> None:
    point = course.time_points[1]
    ct = load_series(point.ct.files).volume
    reference = read_reference_seg(point.seg, ct)
    assert reference.manufacturer == "Phantom Reading Room"
    names = ("kidney_left", "kidney_right", "spleen", "liver")
    for segment, name in zip(reference.segments, names, strict=True):
        code = structure_code(name)
        assert segment.property_type.value == code.segmented_property_type.value
        modifier = code.segmented_property_type_modifier
        assert (segment.property_type_modifier is None) == (modifier is None)
        if modifier is not None:
            assert segment.property_type_modifier.value == modifier.value
        mask = np.zeros(ct.array.shape, dtype=bool)
        mask[segment.box] = segment.mask
        np.testing.assert_array_equal(mask, course.organ(name).ct_mask)


def test_misregistered_spect_is_shifted(course: CourseTruth, plain: CourseTruth) -> None:
    """The same time point written with and without the shift: the SPECT's hot organs
    move by it (within 0.5 mm; measured 0.38 mm at most), the CT stays."""
    moved, still = course.time_points[1], plain.time_points[1]
    assert moved.misregistration_mm == SHIFT_MM and still.misregistration_mm == (0.0, 0.0, 0.0)
    shift = centre_of_mass_mm(*spect(moved.spect.files[0])) - centre_of_mass_mm(*spect(still.spect.files[0]))
    np.testing.assert_allclose(shift, SHIFT_MM, atol=0.5)
    ct_moved, ct_still = (load_series(point.ct.files).volume for point in (moved, still))
    np.testing.assert_array_equal(ct_moved.array, ct_still.array)


def test_same_seed_same_course_other_seed_other_noise(
    course: CourseTruth, plain: CourseTruth, tmp_path: Path
) -> None:
    """A time point does not depend on what follows it, only on the seed and its place."""
    first, again = course.time_points[0], plain.time_points[0]
    assert first.study_instance_uid == again.study_instance_uid
    _, values = spect(first.spect.files[0])
    np.testing.assert_array_equal(values, spect(again.spect.files[0])[1])
    other = write_course(tmp_path, time_points_hours=(0.5,), seed=SEED + 1).time_points[0]
    assert other.study_instance_uid != first.study_instance_uid
    _, noisy = spect(other.spect.files[0])
    assert not np.array_equal(noisy, values)
    assert noisy.sum() == pytest.approx(values.sum(), rel=0.01)


def test_an_uptake_slower_than_the_washout_is_refused() -> None:
    with pytest.raises(ValueError, match="uptake half-life 60.0 h must be positive and shorter than the"):
        BiExponential(80.0, washout_half_life_h=49.0, uptake_half_life_h=60.0)


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        write_course(tmp_path, time_points_hours=(6.0, 0.5))
    with pytest.raises(ValueError, match="strictly increasing"):
        write_course(tmp_path, time_points_hours=(0.5, 24.0), extra_points=(12.0,))
    with pytest.raises(ValueError, match="misregister names time point 2"):
        write_course(tmp_path, time_points_hours=(0.5, 24.0), misregister=(2, (5.0, 0.0, 0.0)))
    (tmp_path / "00_0.5h").mkdir()
    (tmp_path / "00_0.5h" / "stray.dcm").write_bytes(b"")
    with pytest.raises(FileExistsError, match="00_0.5h"):
        write_course(tmp_path, time_points_hours=(0.5,))
