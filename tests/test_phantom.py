"""The demo phantom (phantom/anatomy.py): files a scanner could have sent, and their truth.

The study is written to tmp_path as Part-10 files and read back through the
same readers the node uses (dicomio.series, dicomio.pet), validated by
dicom3tools' dciodvfy, and segmented by the built-in segmenter. Expected SUV
factors are computed here by hand from the injection's figures, not by the
code under test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dicomio.codes import BUILTIN_STRUCTURES, STRUCTURE_CODES
from dicomio.pet import load_suv_volume
from dicomio.series import load_series
from dicomio.suv import DecayCorrection, suv_factors
from inference.builtin import BuiltinSegmenter
from inference.qa import ADULT_VOLUME_RANGES, LATERALITY_PAIRS
from phantom.anatomy import (
    FDG,
    LESION,
    PATIENT,
    STRUCTURE_REGIONS,
    TISSUES,
    AxialGrid,
    CtPhantom,
    PetPhantom,
    Region,
    ct_phantom,
    pet_grid_for,
    pet_phantom,
)
from phantom.study import PhantomStudy, write_study
from tests.test_seg import dciodvfy

#: Small enough for seconds, fine enough (1.95 mm pixels) for the built-in
#: segmenter's rules: 500 mm field of view, 5 mm slices over the 600 mm torso.
GRID = AxialGrid((120, 256, 256), (5.0, 1.953125, 1.953125))
SEED = 7


@dataclass(frozen=True)
class Written:
    study: PhantomStudy
    ct: CtPhantom
    pet: PetPhantom


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    study = write_study(tmp_path_factory.mktemp("phantom"), GRID, seed=SEED)
    ct = ct_phantom(GRID, seed=SEED)
    return Written(study, ct, pet_phantom(ct, seed=SEED))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def test_ct_files_read_back_as_the_phantom(written: Written) -> None:
    study, ct = written.study, written.ct
    assert len(study.ct.files) == GRID.shape[0]
    assert all(path.parent.name == "ct" and path.is_file() for path in study.ct.files)
    loaded = load_series(study.ct.files)
    assert loaded.warnings == ()
    volume = loaded.volume
    assert volume.array.dtype == np.int16
    assert np.array_equal(volume.array, ct.volume.array)
    np.testing.assert_allclose(volume.affine, ct.volume.affine, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, GRID.spacing)
    assert volume.sources == ct.volume.sources
    assert volume.modality == "CT"
    assert volume.series_instance_uid == study.ct.series_instance_uid == ct.volume.series_instance_uid
    assert volume.study_instance_uid == study.study_instance_uid
    assert volume.frame_of_reference_uid == study.frame_of_reference_uid
    # Rows run to the back, columns to the patient's left, slices to the head.
    assert np.array_equal(np.sign(np.diag(volume.affine[:3, 2::-1])), [1, 1, 1])


def test_pet_files_read_back_in_the_same_study(written: Written) -> None:
    study, pet = written.study, written.pet
    assert study.pet is not None and len(study.pet.files) == pet.volume.array.shape[0]
    volume = load_series(study.pet.files).volume
    assert volume.modality == "PT"
    assert volume.array.dtype == np.float32
    assert np.array_equal(volume.array, pet.volume.array)
    np.testing.assert_allclose(volume.affine, pet.volume.affine, atol=1e-6)
    assert volume.sources == pet.volume.sources
    assert volume.study_instance_uid == study.study_instance_uid
    assert volume.frame_of_reference_uid == study.frame_of_reference_uid
    assert volume.series_instance_uid == study.pet.series_instance_uid != study.ct.series_instance_uid
    # 4 mm voxels over the CT's field of view and scan range.
    assert volume.spacing == pytest.approx((4.0, 4.0, 4.0))
    ct_first, ct_last = corners(written.ct.volume.affine, GRID.shape)
    pet_first, pet_last = corners(volume.affine, volume.array.shape)
    assert np.all(pet_first[:2] <= ct_first[:2]) and np.all(pet_last[:2] >= ct_last[:2])
    assert ct_first[2] <= pet_first[2] < pet_last[2] <= ct_last[2]


def corners(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates of the first and the last voxel centre."""
    return affine[:3, 3], (affine @ [*(n - 1 for n in shape), 1])[:3]


def test_dciodvfy_finds_no_errors(written: Written) -> None:
    """dciodvfy reports no errors, and no warnings either, for the first,
    a middle and the last image of each series."""
    assert written.study.pet is not None
    for files in (written.study.ct.files, written.study.pet.files):
        for path in (files[0], files[len(files) // 2], files[-1]):
            assert dciodvfy(path) == []


def test_written_as_a_scanner_would(written: Written) -> None:
    assert written.study.pet is not None
    ct = pydicom.dcmread(written.study.ct.files[0])
    pet = pydicom.dcmread(written.study.pet.files[0])
    for ds, sop_class in ((ct, "1.2.840.10008.5.1.4.1.1.2"), (pet, "1.2.840.10008.5.1.4.1.1.128")):
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == sop_class
        assert ds.InstanceNumber == 1
        assert ds.PatientID == "SEGNODE-PHANTOM"
        assert (float(ds.PatientWeight), float(ds.PatientSize)) == (75.0, 1.75)
    # InstanceNumber 1 is the head end, as in a craniocaudal scan.
    assert float(ct.ImagePositionPatient[2]) == pytest.approx(written.ct.volume.affine[2, 3] + 119 * 5.0)
    assert (ct.BitsStored, ct.PixelRepresentation, float(ct.RescaleIntercept)) == (12, 0, -1024.0)
    assert (pet.Units, pet.DecayCorrection, pet.PixelRepresentation) == ("BQML", "START", 1)
    drug = pet.RadiopharmaceuticalInformationSequence[0]
    assert drug.RadiopharmaceuticalCodeSequence[0].CodeValue == "35321007"  # FDG
    assert drug.RadionuclideCodeSequence[0].CodeValue == "77004003"  # F-18
    # Rescale slopes differ from slice to slice, as scanners write them.
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in written.study.pet.files]
    slopes = {str(ds.RescaleSlope) for ds in headers}
    assert len(slopes) > 10


def test_the_same_seed_writes_the_same_files(tmp_path: Path, written: Written) -> None:
    first = write_study(tmp_path / "a", GRID, seed=SEED, with_pet=False)
    assert first.pet is None
    assert first.ct.series_instance_uid == written.study.ct.series_instance_uid
    assert [path.read_bytes() for path in first.ct.files[:3]] == [
        path.read_bytes() for path in written.study.ct.files[:3]
    ]
    other = write_study(tmp_path / "b", GRID, seed=SEED + 1, with_pet=False)
    assert other.study_instance_uid != first.study_instance_uid
    assert pydicom.dcmread(other.ct.files[60]).PixelData != pydicom.dcmread(first.ct.files[60]).PixelData


# ---------------------------------------------------------------------------
# PET truth
# ---------------------------------------------------------------------------


def test_suv_factor_from_the_headers_is_the_injections(written: Written) -> None:
    """SUVbw per Bq/ml: 75 kg over 300 MBq decayed for the hour from 08:00
    to the 09:00 scan start, with F-18's 6586.2 s half-life."""
    by_hand = 75_000.0 / (300e6 * 2.0 ** (-3600.0 / 6586.2))
    assert written.pet.suv_factor == pytest.approx(by_hand, rel=1e-12)
    assert written.study.pet is not None
    for path in written.study.pet.files[:: len(written.study.pet.files) - 1]:
        factors = suv_factors(pydicom.dcmread(path, stop_before_pixels=True))
        assert factors.units == "BQML" and factors.decay_correction is DecayCorrection.START
        assert factors.warnings == ()
        assert factors.frames[0].suv_bw == pytest.approx(by_hand, rel=1e-9)


def test_suv_volume_gives_the_intended_uptake(written: Written) -> None:
    assert written.study.pet is not None
    suv = load_suv_volume(written.study.pet.files)
    assert suv.warnings == () and suv.sul is not None
    image, pet = suv.suv_bw.array, written.pet
    assert np.all(image[pet.expected_suv == 0] == 0)
    for region in (Region.LIVER, Region.SPLEEN, Region.KIDNEY_LEFT, Region.KIDNEY_RIGHT, Region.LESION,
                   Region.SOFT_TISSUE, Region.LUNG_LEFT, Region.MUSCLE):
        voxels = image[pet.regions == region]
        intended = TISSUES[region].suv
        # Noise of 10 % per voxel: the mean is within 5 standard errors.
        assert voxels.mean() == pytest.approx(intended, abs=5 * 0.1 * intended / math.sqrt(voxels.size))
    assert TISSUES[Region.LIVER].suv == 2.0 and TISSUES[Region.KIDNEY_LEFT].suv == 3.0
    assert LESION.suv == 8.0 and TISSUES[Region.SOFT_TISSUE].suv == 1.0
    liver = pet.regions == Region.LIVER
    assert np.std(image[liver] / 2.0) == pytest.approx(0.10, abs=0.005)


def test_hot_lesion_is_a_sphere_of_known_volume(written: Written) -> None:
    """The lesion counted on the 4 mm PET grid and the 5 mm CT grid is the
    analytic sphere's 14.1 ml within sampling error, and sits in the liver."""
    assert LESION.volume_ml == pytest.approx(4 / 3 * math.pi * 15.0**3 / 1000)
    pet_ml = np.count_nonzero(written.pet.regions == Region.LESION) * 0.064
    ct_ml = np.count_nonzero(written.ct.regions == Region.LESION) * GRID.voxel_volume_ml
    assert pet_ml == pytest.approx(LESION.volume_ml, rel=0.06)
    assert ct_ml == pytest.approx(LESION.volume_ml, rel=0.06)
    lesion = written.ct.regions == Region.LESION
    around = ndimage.binary_dilation(lesion, iterations=2) & ~lesion
    assert np.all(written.ct.regions[around] == Region.LIVER)


# ---------------------------------------------------------------------------
# CT truth
# ---------------------------------------------------------------------------


def test_truth_is_counted_on_the_grid(written: Written) -> None:
    ct = written.ct
    assert set(written.study.truth) == set(STRUCTURE_REGIONS) <= set(STRUCTURE_CODES)
    assert set(BUILTIN_STRUCTURES) <= set(ct.truth)
    for name, truth in ct.truth.items():
        mask = ct.mask(name)
        assert truth.volume_ml == pytest.approx(np.count_nonzero(mask) * GRID.voxel_volume_ml)
        # The image's mean over the true mask: the design value within noise
        # (15 HU) and, for air, the clipping at -1024 HU (+0.3 HU).
        assert ct.volume.array[mask].mean() == pytest.approx(truth.mean_hu, abs=1.0), name
    # Uniform organs: their tissue's HU and SUV exactly.
    uniform = (("liver", Region.LIVER), ("kidney_left", Region.KIDNEY_LEFT), ("aorta", Region.AORTA))
    for name, region in uniform:
        assert (ct.truth[name].mean_hu, ct.truth[name].suv_mean) == (TISSUES[region].hu, TISSUES[region].suv)
    # Every structure is inside the body; the table is not.
    body = ct.mask("body")
    assert all(np.all(body[ct.mask(name)]) for name in STRUCTURE_REGIONS)
    assert not body[ct.region_mask(Region.TABLE_SHELL, Region.FOAM)].any()
    # The trunk, an elliptic cylinder 320 x 230 mm and 600 mm long, and two
    # arms 76 mm across hanging 480 mm: 39.0 l.
    analytic_ml = (math.pi * 160 * 115 * 600 + 2 * math.pi * 38**2 * 480) / 1000
    assert ct.truth["body"].volume_ml == pytest.approx(analytic_ml, rel=0.005)


def test_organs_are_adult_sized_and_on_their_sides(written: Written) -> None:
    """What the QA checks on a perfect segmentation: volumes in the adult
    reference ranges, right/left ratios in range; and left is +x."""
    truth = written.ct.truth
    for name, limits in ADULT_VOLUME_RANGES.items():
        if name in truth:
            assert limits.low_ml <= truth[name].volume_ml <= limits.high_ml, name
    for pair in LATERALITY_PAIRS:
        if pair.right[0] in truth:
            ratio = truth[pair.right[0]].volume_ml / truth[pair.left[0]].volume_ml
            assert pair.low <= ratio <= pair.high, pair
    x = written.ct.volume.affine[0, 3] + written.ct.volume.affine[0, 2] * np.arange(GRID.shape[2])
    sides = (("liver", -1), ("kidney_right", -1), ("lung_right", -1), ("spleen", 1), ("lung_left", 1))
    for name, side in sides:
        columns = np.nonzero(written.ct.mask(name))[2]
        assert np.sign(x[columns].mean()) == side, name


def test_joined_lungs_are_one_component() -> None:
    grid = AxialGrid((60, 128, 128), (10.0, 3.90625, 3.90625))
    apart, joined = ct_phantom(grid), ct_phantom(grid, joined_lungs=True)
    for phantom, components in ((apart, 2), (joined, 1)):
        lungs = phantom.mask("lung_left") | phantom.mask("lung_right")
        assert ndimage.label(lungs, structure=np.ones((3, 3, 3)))[1] == components
    assert joined.volume.study_instance_uid != apart.volume.study_instance_uid


def test_builtin_segmenter_finds_the_anatomy(written: Written) -> None:
    """The phantom is realistic enough for the built-in rules: the body
    without the table, both lungs, the airway and the skeleton."""
    ct = written.ct
    labels = BuiltinSegmenter().segment(ct.volume).labels
    value = {name: number for number, name in enumerate(BUILTIN_STRUCTURES, start=1)}
    body = labels > 0
    assert dice(body, ct.mask("body")) >= 0.98
    assert not body[ct.region_mask(Region.TABLE_SHELL, Region.FOAM)].any()
    assert dice(labels == value["lung_left"], ct.mask("lung_left")) >= 0.95
    assert dice(labels == value["lung_right"], ct.mask("lung_right")) >= 0.95
    assert dice(labels == value["airway"], ct.mask("airway")) >= 0.85
    assert dice(labels == value["skeleton"], ct.mask("skeleton")) >= 0.9


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "spacing", "message"),
    [
        ((300, 512, 512), (3.0, 1.0, 1.0), "spans 897 mm, longer than the 600 mm phantom"),
        ((100, 256, 256), (2.0, 1.8, 1.8), r"field of view 459 x 459 mm .* cuts the phantom"),
        ((100, 256, 256), (2.0, 0.0, 2.0), "every spacing must be positive"),
        ((1, 256, 256), (2.0, 2.0, 2.0), "at least 2 slices"),
        ((10, 256.5, 256), (2.0, 2.0, 2.0), "whole numbers"),
        ((10, 256), (2.0, 2.0, 2.0), "3 sizes and 3 spacings"),
    ],
)
def test_bad_grids_are_refused(shape, spacing, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AxialGrid(shape, spacing)


def test_refuses_to_mix_studies(tmp_path: Path) -> None:
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "CT0001.dcm").write_bytes(b"another study")
    with pytest.raises(FileExistsError, match="already holds files"):
        write_study(tmp_path, GRID)


def test_unknown_structure_is_named() -> None:
    phantom = ct_phantom(AxialGrid((2, 128, 128), (5.0, 3.90625, 3.90625)))
    with pytest.raises(KeyError, match="no structure 'heart'.*liver"):
        phantom.mask("heart")


def test_pet_grid_covers_the_ct() -> None:
    assert pet_grid_for(GRID) == AxialGrid((149, 126, 126), (4.0, 4.0, 4.0))
    assert FDG.suv_factor(PATIENT) == pytest.approx(75_000.0 / (300e6 * 0.5 ** (3600 / 6586.2)))
