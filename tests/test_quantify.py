"""inference/quantify.py and dicomio/pet.py on phantoms whose values are known.

CT phantoms are label maps drawn on grids with real DICOM geometry (an
axial grid whose slices run feet-ward, so index and patient order differ):
boxes of exact volume and HU, an ellipsoid of analytic volume, cubes that
touch only at a corner. PET phantoms put activity where the expected SUVs
follow by construction (uniform regions, one hot voxel, a hot sphere that a
1 ml sphere fits in), on a 4 mm grid offset from the CT grid. The PET
series of the last tests is written as DICOM files and read back through
dicomio/series.py and dicomio/suv.py, its SUV factor worked out by hand.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from dicomio.codes import UnknownStructureError, structure_code
from dicomio.pet import SuvVolume, load_suv_volume
from dicomio.resample import FrameOfReferenceMismatchError
from dicomio.seg import AlgorithmIdentity, LabelledStructure, Segment, plan_segments
from dicomio.series import SeriesError
from dicomio.suv import SuvNotDefinedError
from dicomio.volume import SourceFrame, Volume
from inference.quantify import (
    DEFAULT_DENSITIES,
    PEAK_SPHERE_RADIUS_MM,
    DensityTable,
    QuantificationError,
    quantify,
    sphere_kernel,
)
from inference.segmenter import Segmentation
from tests.synthetic import write_ct_series

FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.10.3.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ALGORITHM = AlgorithmIdentity(name="phantom", version="1")
#: Share of 1 ml that one 4 mm voxel is.
VOXEL_4MM_ML = 0.064


def axial(array: np.ndarray, spacing, origin, modality: str, frame_of_reference: str = FRAME_OF_REFERENCE):
    """An axial Volume: columns along +x, rows along +y, slices along -z (feet-ward)."""
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0] = spacing[2], spacing[1], -spacing[0]
    affine[:3, 3] = origin
    affine[3, 3] = 1.0
    sop_class = PET_STORAGE if modality == "PT" else CT_STORAGE
    return Volume(
        array=array,
        affine=affine,
        frame_of_reference_uid=frame_of_reference,
        study_instance_uid="1.2.826.0.1.3680043.10.3.2",
        series_instance_uid=f"1.2.826.0.1.3680043.10.3.3.{len(modality)}",
        modality=modality,
        sources=tuple(SourceFrame(sop_class, f"1.2.826.0.1.3680043.10.3.4.{i}") for i in range(len(array))),
    )


def centres(volume: Volume) -> np.ndarray:
    """LPS coordinates (mm) of every voxel centre, shape (slices, rows, columns, 3)."""
    index = np.indices(volume.array.shape).transpose(1, 2, 3, 0).astype(float)
    return index @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def segmented(volume: Volume, labels: np.ndarray, names: tuple[str, ...]) -> tuple[Segmentation, tuple]:
    """The Segmentation of `labels` (value i + 1 is names[i]) and its SEG segments."""
    structures = tuple(LabelledStructure(v, structure_code(n)) for v, n in enumerate(names, 1))
    segments = plan_segments(labels, structures, series_instance_uid=volume.series_instance_uid)
    return Segmentation(labels, volume, structures, ALGORITHM), segments


def ct_1mm(shape=(64, 64, 64)) -> Volume:
    """1 mm CT centred on the origin, HU 0."""
    origin = ((shape[2] - 1) / 2 * -1.0, (shape[1] - 1) / 2 * -1.0, (shape[0] - 1) / 2 * 1.0)
    return axial(np.zeros(shape, dtype=np.int16), (1.0, 1.0, 1.0), origin, "CT")


def pet_4mm(values: np.ndarray, frame_of_reference: str = FRAME_OF_REFERENCE) -> Volume:
    """4 mm PET whose voxels each hold exactly 4 x 4 x 4 voxels of ct_1mm((64,) * 3)."""
    # CT centres run -31.5 .. 31.5; PET centres -30 .. 30 in steps of 4 (voxel faces on CT faces).
    return axial(values.astype(np.float32), (4.0, 4.0, 4.0), (-30.0, -30.0, 30.0), "PT", frame_of_reference)


# --- CT --------------------------------------------------------------------


def test_box_volume_hu_mass_and_bounding_box_are_exact():
    # 0.8 mm pixels, 2.5 mm slices running feet-ward from z = 100.
    ct = axial(np.full((20, 40, 50), -100, dtype=np.int16), (2.5, 0.8, 0.8), (-20.0, -16.0, 100.0), "CT")
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    box = (slice(4, 12), slice(10, 30), slice(5, 20))  # 8 x 20 x 15 voxels
    labels[box] = 1
    ct.array[4:8, 10:30, 5:20] = 40  # first half of the slices
    ct.array[8:12, 10:30, 5:20] = 60
    segmentation, segments = segmented(ct, labels, ("kidney_left",))

    [m] = quantify(segmentation, segments)

    assert (m.segment_number, m.name, m.voxel_count) == (1, "kidney_left", 8 * 20 * 15)
    volume_ml = 8 * 2.5 * 20 * 0.8 * 15 * 0.8 / 1000  # 3.84 ml
    assert m.volume_ml == pytest.approx(volume_ml, rel=1e-12)
    assert (m.hu_mean, m.hu_std, m.hu_median, m.hu_min, m.hu_max) == (50.0, 10.0, 50.0, 40.0, 60.0)
    assert (m.density_g_ml, m.mass_g) == (1.06, pytest.approx(volume_ml * 1.06, rel=1e-12))
    assert m.component_count == 1
    bbox = m.bounding_box
    assert (bbox.first_index, bbox.last_index) == ((4, 10, 5), (11, 29, 19))
    # x = -20 + 0.8 column, y = -16 + 0.8 row, z = 100 - 2.5 slice.
    assert bbox.min_lps_mm == pytest.approx((-20 + 0.8 * 5, -16 + 0.8 * 10, 100 - 2.5 * 11))
    assert bbox.max_lps_mm == pytest.approx((-20 + 0.8 * 19, -16 + 0.8 * 29, 100 - 2.5 * 4))
    assert (m.suv_mean, m.sul_mean, m.total_uptake, m.dice, m.flags) == (None, None, None, None, ())


def test_ellipsoid_volume_is_the_analytic_one():
    ct = ct_1mm((80, 80, 80))
    x, y, z = np.moveaxis(centres(ct), -1, 0)
    labels = (((x - 3) / 30) ** 2 + (y / 20) ** 2 + ((z + 2) / 15) ** 2 <= 1).astype(np.uint8)
    segmentation, segments = segmented(ct, labels, ("liver",))

    [m] = quantify(segmentation, segments)

    assert m.volume_ml == pytest.approx(4 / 3 * math.pi * 30 * 20 * 15 / 1000, rel=0.01)
    assert m.mass_g == pytest.approx(m.volume_ml * 1.06)
    assert m.bounding_box.min_lps_mm == pytest.approx((3 - 30, -20, -2 - 15), abs=1.0)
    assert m.bounding_box.max_lps_mm == pytest.approx((3 + 30, 20, -2 + 15), abs=1.0)


def test_components_are_26_connected():
    ct = ct_1mm((32, 32, 32))
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    labels[6:10, 6:10, 6:10] = 1  # touches the first cube at one corner only
    labels[20:24, 20:24, 20:24] = 1  # apart
    labels[2:4, 20:30, 20:22] = 2  # a second structure, one piece
    segmentation, segments = segmented(ct, labels, ("spleen", "stomach"))

    spleen, stomach = quantify(segmentation, segments)

    assert (spleen.component_count, spleen.voxel_count) == (2, 3 * 64)
    assert (stomach.component_count, stomach.voxel_count) == (1, 40)
    # Stomach has no entry in the table: soft tissue (ICRU 46).
    assert stomach.density_g_ml == DEFAULT_DENSITIES.default_g_ml == 1.03


def test_components_are_counted_per_structure():
    # All components are labelled at once: pieces joined only through other
    # structures' voxels, measured or not, stay apart, and touching
    # structures do not merge.
    ct = ct_1mm((16, 16, 40))
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[4:8, 4:8, 2:6] = 1
    labels[4:8, 4:8, 8:12] = 1
    labels[4:8, 4:8, 6:8] = 2  # joins the two spleen cubes
    labels[4:8, 4:8, 14:18] = 1
    labels[4:8, 4:8, 20:24] = 1
    labels[4:8, 4:8, 18:20] = 3  # joins the two others, not measured
    labels[4:8, 4:8, 24:26] = 3
    segmentation, segments = segmented(ct, labels, ("spleen", "stomach", "liver"))

    spleen, stomach = quantify(segmentation, segments[:2])

    assert (spleen.component_count, spleen.voxel_count) == (4, 4 * 64)
    assert (stomach.component_count, stomach.voxel_count) == (1, 32)


@pytest.mark.parametrize(("hu_dtype", "far"), [(np.int16, 0), (np.float32, 0), (np.int32, 100_000)])
def test_statistics_of_many_structures_are_those_of_their_voxels(hu_dtype, far):
    # Noisy HU and overlapping random boxes; integer HU within an int16's
    # span are counted in one pass (histograms), others (floats, a voxel far
    # out) gathered per structure: both must give what numpy gives on each
    # structure's own voxels. Boxes and components, found for all structures
    # at once, must be those of each structure alone.
    rng = np.random.default_rng(3)
    hu = rng.integers(-1024, 1500, (24, 40, 36)).astype(hu_dtype)
    hu[-1, -1, -1] += far
    ct = axial(hu, (2.0, 0.7, 0.7), (0.0, 0.0, 0.0), "CT")
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    for value in range(1, 8):
        start = rng.integers(0, 16, 3)
        labels[tuple(slice(a, a + int(rng.integers(2, 12))) for a in start)] = value
    scattered = rng.random(labels.shape) < 0.03  # many components, some touching only at corners
    labels[scattered] = rng.integers(1, 8, int(scattered.sum()))
    labels[labels == 6] = 0  # a value left with no voxel: no segment
    labels[0, 0, :2] = 9  # a two-voxel structure, an even count: median of two
    segmentation, segments = segmented(ct, labels, ("spleen", "liver", "stomach", "pancreas", "heart",
                                                    "aorta", "brain", "skull", "sacrum"))

    measured = quantify(segmentation, segments)

    names = ["spleen", "liver", "stomach", "pancreas", "heart", "brain", "sacrum"]
    assert [m.name for m in measured] == names
    for segment, m in zip(segments, measured, strict=True):
        inside = ct.array[labels == segment.value].astype(np.float64)
        assert m.voxel_count == inside.size
        assert (m.hu_min, m.hu_max, m.hu_median) == (inside.min(), inside.max(), np.median(inside))
        assert m.hu_mean == pytest.approx(inside.mean(), rel=1e-12)
        assert m.hu_std == pytest.approx(inside.std(), rel=1e-12)
        where = np.nonzero(labels == segment.value)
        assert m.bounding_box.first_index == tuple(int(w.min()) for w in where)
        assert m.bounding_box.last_index == tuple(int(w.max()) for w in where)
        assert m.component_count == ndimage.label(labels == segment.value, structure=np.ones((3, 3, 3)))[1]


def test_measurements_follow_the_seg_segment_numbers():
    ct = ct_1mm((16, 16, 16))
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[5:9, 5:9, 5:9] = 3  # value 2 (gallbladder) is absent: no segment
    segmentation, segments = segmented(ct, labels, ("spleen", "gallbladder", "liver"))

    measured = quantify(segmentation, segments)

    numbered = [(m.segment_number, m.name, m.voxel_count) for m in measured]
    assert numbered == [(1, "spleen", 8), (2, "liver", 64)]


def test_density_override_changes_mass_and_bad_densities_are_refused():
    ct = ct_1mm((16, 16, 16))
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[2:12, 2:12, 2:12] = 1  # 1 ml
    segmentation, segments = segmented(ct, labels, ("liver",))

    [default] = quantify(segmentation, segments)
    [heavier] = quantify(segmentation, segments, densities=DEFAULT_DENSITIES.with_overrides({"liver": 2.5}))

    assert (default.density_g_ml, default.mass_g) == (1.06, pytest.approx(1.06))
    assert (heavier.density_g_ml, heavier.mass_g) == (2.5, pytest.approx(2.5))
    assert DEFAULT_DENSITIES.density_g_ml("liver") == 1.06  # the default table is unchanged
    with pytest.raises(ValueError, match="density of 'liver' must be a positive number"):
        DEFAULT_DENSITIES.with_overrides({"liver": -1.0})
    with pytest.raises(ValueError, match="density of 'default'"):
        DensityTable(default_g_ml=math.nan)
    with pytest.raises(UnknownStructureError, match="'livr'"):
        DEFAULT_DENSITIES.with_overrides({"livr": 1.0})
    with pytest.raises(TypeError):
        DEFAULT_DENSITIES.by_structure["liver"] = 3.0  # type: ignore[index]


def test_default_densities_are_the_published_ones():
    table = DEFAULT_DENSITIES
    # Dosimetry kidneys at 1.06 g/ml; ICRU 46 adipose, muscle, inflated lung, cortex-with-marrow bones.
    assert (table.density_g_ml("kidney_left"), table.density_g_ml("kidney_right")) == (1.06, 1.06)
    assert table.density_g_ml("subcutaneous_fat") == table.density_g_ml("visceral_fat") == 0.95
    assert table.density_g_ml("skeletal_muscle") == table.density_g_ml("iliopsoas_left") == 1.05
    assert table.density_g_ml("lung_left") == table.density_g_ml("lung_middle_lobe_right") == 0.26
    assert table.density_g_ml("vertebrae_L3") == 1.33 and table.density_g_ml("skull") == 1.61


def test_inconsistent_input_is_refused_with_context():
    ct = ct_1mm((8, 8, 8))
    labels = np.zeros(ct.array.shape, dtype=np.int16)
    labels[1:3, 1:3, 1:3] = 1
    segmentation, segments = segmented(ct, labels, ("liver",))
    absent = (Segment(2, 5, structure_code("spleen")),)

    with pytest.raises(QuantificationError, match=r"segment 2 \(spleen\) has no voxel with label 5"):
        quantify(segmentation, (*segments, *absent))
    with pytest.raises(QuantificationError, match="segment numbers must be distinct"):
        quantify(segmentation, (*segments, *segments))
    negative = labels.copy()
    negative[0, 0, 0] = -1
    with pytest.raises(QuantificationError, match="negative values"):
        quantify(replace(segmentation, labels=negative), segments)
    pet_as_ct = replace(ct, modality="PT")
    with pytest.raises(QuantificationError, match="need a CT, not PT"):
        quantify(Segmentation(labels, pet_as_ct, segmentation.structures, ALGORITHM), segments)


# --- PET on its own grid --------------------------------------------------


def sphere_phantom(radius_mm: float, centre=(0.0, 0.0, 0.0)) -> tuple[Segmentation, tuple]:
    ct = ct_1mm()
    labels = (np.linalg.norm(centres(ct) - np.array(centre), axis=-1) <= radius_mm).astype(np.uint8)
    return segmented(ct, labels, ("liver",))


def pet_values(volume_values: float = 1.0) -> np.ndarray:
    return np.full((16, 16, 16), volume_values, dtype=np.float32)


def suv(values: np.ndarray, sul_ratio: float | None = 0.8) -> SuvVolume:
    grid = pet_4mm(values)
    return SuvVolume(grid, None if sul_ratio is None else grid.array * sul_ratio, ())


def test_uniform_uptake_gives_that_suv_everywhere():
    segmentation, segments = sphere_phantom(18.0)
    values = pet_values(1.0)
    pet_centres = centres(pet_4mm(values))
    values[np.linalg.norm(pet_centres, axis=-1) <= 18.0 + 16.0] = 4.0  # well beyond the sphere's reach

    [m] = quantify(segmentation, segments, pet=suv(values))

    assert (m.suv_mean, m.suv_max, m.suv_peak) == pytest.approx((4.0, 4.0, 4.0), rel=1e-6)
    assert (m.sul_mean, m.sul_peak) == pytest.approx((3.2, 3.2), rel=1e-6)
    assert m.total_uptake == pytest.approx(4.0 * m.volume_ml, rel=1e-6)


def test_hot_sphere_that_holds_the_peak_sphere():
    # Liver of radius 30 mm at SUV 4 with a hot sphere of radius 16 mm at SUV 12 in it.
    segmentation, segments = sphere_phantom(30.0)
    values = pet_values(1.0)
    distance = np.linalg.norm(centres(pet_4mm(values)), axis=-1)
    values[distance <= 30.0 + 8.0] = 4.0
    values[distance <= 16.0] = 12.0

    [m] = quantify(segmentation, segments, pet=suv(values, sul_ratio=None))

    # A 1 ml sphere (r 6.2 mm) fits in the hot one from any voxel centre near its middle.
    assert (m.suv_max, m.suv_peak) == pytest.approx((12.0, 12.0), rel=1e-6)
    hot_ml, liver_ml = 4 / 3 * math.pi * 16**3 / 1000, 4 / 3 * math.pi * 30**3 / 1000
    assert m.suv_mean == pytest.approx(4.0 + 8.0 * hot_ml / liver_ml, rel=0.03)
    assert (m.sul_mean, m.sul_peak) == (None, None)


def test_peak_of_a_single_hot_voxel_is_its_share_of_one_ml():
    segmentation, segments = sphere_phantom(20.0)
    values = pet_values(1.0)
    values[8, 8, 8] = 100.0  # the PET voxel whose centre is (2, 2, -2) mm

    [m] = quantify(segmentation, segments, pet=suv(values))

    # The hot voxel lies wholly inside the 1 ml sphere centred on it: 0.064 ml of 1 ml at 100.
    assert m.suv_max == 100.0
    assert m.suv_peak == pytest.approx(1.0 + 99.0 * VOXEL_4MM_ML, rel=0.02)
    assert m.sul_peak == pytest.approx(0.8 * m.suv_peak, rel=1e-6)


def test_peak_centre_and_max_stay_inside_the_structure():
    # A hot voxel 16 mm from the centre of PET voxel (8, 8, 8): outside a sphere of radius 10 mm there,
    # inside one of radius 18 mm.
    values = pet_values(1.0)
    values[8, 8, 12] = 100.0
    centred_on_hot = 1.0 + 99.0 * VOXEL_4MM_ML

    [outside] = quantify(*sphere_phantom(10.0, centre=(2.0, 2.0, -2.0)), pet=suv(values))
    [inside] = quantify(*sphere_phantom(18.0, centre=(2.0, 2.0, -2.0)), pet=suv(values))

    assert (outside.suv_max, inside.suv_max) == (1.0, 100.0)
    assert outside.suv_peak < 1.0 + 99.0 * VOXEL_4MM_ML / 4
    assert inside.suv_peak == pytest.approx(centred_on_hot, rel=0.02)


def test_partial_voxels_count_by_their_share():
    ct = ct_1mm()
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    # 3 x 3 x 3 PET voxels (CT 16:28 on each axis) plus a quarter of the next PET layer of slices.
    labels[16:28, 16:28, 16:28] = 1
    labels[28:29, 16:28, 16:28] = 1
    segmentation, segments = segmented(ct, labels, ("liver",))
    values = pet_values(2.0)
    values[7, 4:7, 4:7] = 10.0  # the quarter-covered PET layer

    [m] = quantify(segmentation, segments, pet=suv(values))

    assert m.suv_mean == pytest.approx((27 * 2.0 + 9 * 0.25 * 10.0) / (27 + 9 * 0.25), rel=1e-6)
    assert m.suv_max == 2.0  # a quarter-covered voxel is not inside


def test_structure_outside_the_pet_field_of_view_has_no_pet_values():
    ct = ct_1mm((64, 64, 64))
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[10:20, 10:20, 10:20] = 1
    segmentation, segments = segmented(ct, labels, ("liver",))
    far = axial(pet_values(3.0), (4.0, 4.0, 4.0), (470.0, -30.0, 30.0), "PT")  # 500 mm to the left

    [m] = quantify(segmentation, segments, pet=SuvVolume(far, None, ()))

    assert (m.suv_mean, m.suv_max, m.suv_peak, m.total_uptake) == (None, None, None, None)
    assert m.volume_ml == pytest.approx(1.0)


def test_structure_partly_outside_the_pet_field_of_view_is_measured_on_its_part_inside():
    segmentation, segments = sphere_phantom(10.0)
    # The top 8 PET slices only, z from 32 mm down to 0: the sphere's upper half. SUV 3, and 6 in
    # the last slice (z 4 to 0).
    values = np.full((8, 16, 16), 3.0, dtype=np.float32)
    values[7] = 6.0
    upper = axial(values, (4.0, 4.0, 4.0), (-30.0, -30.0, 30.0), "PT")

    [m] = quantify(segmentation, segments, pet=SuvVolume(upper, None, ()))

    # Slabs of the sphere of radius 10: z 0..4 holds 1189.6 mm3, z 4..10 904.8 mm3.
    assert m.suv_mean == pytest.approx((1189.6 * 6 + 904.8 * 3) / (1189.6 + 904.8), rel=0.02)
    assert m.total_uptake == pytest.approx(m.suv_mean * m.volume_ml)
    assert m.volume_ml == pytest.approx(4 / 3 * math.pi, rel=0.02)  # the whole sphere, on the CT
    # The best 1 ml sphere sits on the last slice and averages its part inside the image: its
    # central slab (|dz| <= 2 mm, 466.8 mm3) at 6 and one side (2 to 6.2 mm, 266.6 mm3) at 3.
    assert m.suv_max == 6.0
    assert m.suv_peak == pytest.approx((466.8 * 6 + 266.6 * 3) / (466.8 + 266.6), rel=0.02)


def test_pet_in_another_frame_of_reference_is_refused():
    segmentation, segments = sphere_phantom(10.0)
    other = pet_4mm(pet_values(), frame_of_reference="1.2.826.0.1.3680043.10.3.9")
    with pytest.raises(FrameOfReferenceMismatchError, match="register them first"):
        quantify(segmentation, segments, pet=SuvVolume(other, None, ()))


@pytest.mark.parametrize("spacing", [(4.0, 4.0, 4.0), (2.0, 2.0, 2.0), (3.27, 4.07, 4.07)])
def test_peak_kernel_averages_over_one_ml(spacing):
    kernel = sphere_kernel(spacing, PEAK_SPHERE_RADIUS_MM)

    assert PEAK_SPHERE_RADIUS_MM == pytest.approx(6.2035, abs=1e-4)
    assert kernel.sum() == pytest.approx(1.0)
    # Symmetric, largest at the centre, and as wide as the sphere reaches.
    assert np.allclose(kernel, kernel[::-1, ::-1, ::-1])
    assert kernel.flat[kernel.size // 2] == kernel.max()
    assert kernel.shape == tuple(2 * (math.ceil(PEAK_SPHERE_RADIUS_MM / s + 0.5) - 1) + 1 for s in spacing)
    # The centre voxel lies wholly in the sphere: its weight is its share of 1 ml.
    centre_ml = math.prod(spacing) / 1000
    assert kernel.flat[kernel.size // 2] == pytest.approx(centre_ml, rel=0.015)


# --- a PET series from files --------------------------------------------------

# Hand arithmetic (as tests/test_suv.py): 75 kg, 1.80 m, male, 370 MBq of F-18
# (half-life 6586.2 s) injected at 09:00, series at 10:00.
SUV_BW_FACTOR = 75_000 / (370e6 * 2 ** (-3600 / 6586.2))
LEAN_BODY_MASS_KG = 9270 * 75 / (6680 + 216 * 75 / 1.80**2)
SUL_FACTOR = SUV_BW_FACTOR * LEAN_BODY_MASS_KG / 75


def write_pet_series(directory: Path, activity: np.ndarray, slopes: list[float], frame_of_reference: str):
    """Axial BQML PET files, 4 mm voxels as pet_4mm, one Rescale Slope per slice."""
    series_uid = generate_uid(entropy_srcs=["pet series", str(directory)])
    paths = []
    for index, (plane, slope) in enumerate(zip(activity, slopes, strict=True)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PET_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=[series_uid, str(index)]
        )
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.3.2"
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality = "PT"
        ds.Units, ds.DecayCorrection = "BQML", "START"
        ds.CorrectedImage = ["ATTN", "DECY"]
        ds.SeriesDate = ds.AcquisitionDate = "20240305"
        ds.SeriesTime = ds.AcquisitionTime = "100000"
        ds.ActualFrameDuration = 180000
        ds.PatientWeight, ds.PatientSize, ds.PatientSex = "75", "1.80", "M"
        drug = Dataset()
        drug.RadiopharmaceuticalStartTime = "090000"
        drug.RadionuclideTotalDose = "370000000"
        drug.RadionuclideHalfLife = "6586.2"
        ds.RadiopharmaceuticalInformationSequence = [drug]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        # Slices feet-ward from z = 30, as pet_4mm.
        ds.ImagePositionPatient = [-30.0, -30.0, 30.0 - 4.0 * index]
        ds.PixelSpacing = [4.0, 4.0]
        ds.SliceThickness = 4.0
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", "0"
        ds.PixelData = np.rint(plane / slope).astype(np.uint16).tobytes()
        path = directory / f"PT{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_pet_files_become_suv_and_sul_slice_by_slice(tmp_path):
    activity = np.full((16, 16, 16), 5000.0)
    activity[4:12, 4:12, 4:12] = 20000.0
    activity[0] = 8000.0  # the head-most slice, to see the order
    slopes = [(0.5, 1.0, 2.0)[i % 3] for i in range(16)]  # GE-style: a slope per slice
    paths = write_pet_series(tmp_path, activity, slopes, FRAME_OF_REFERENCE)

    pet = load_suv_volume(paths)

    assert pet.suv_bw.modality == "PT" and pet.suv_bw.frame_of_reference_uid == FRAME_OF_REFERENCE
    # The reader orders slices head-ward: the files' last slice (z = -30) comes first.
    assert pet.suv_bw.affine == pytest.approx(
        np.array([[0, 0, 4, -30], [0, 4, 0, -30], [4, 0, 0, -30], [0, 0, 0, 1]], dtype=float)
    )
    assert pet.suv_bw.array == pytest.approx(activity[::-1] * SUV_BW_FACTOR, rel=1e-6)
    assert pet.sul == pytest.approx(activity[::-1] * SUL_FACTOR, rel=1e-6)
    assert pet.warnings == ()

    # A liver wholly in the hot cube (PET voxels 4..11: x, y -14..14 mm, z 14..-14 mm).
    segmentation, segments = sphere_phantom(8.0)
    [m] = quantify(segmentation, segments, pet=pet)
    assert (m.suv_mean, m.suv_max, m.suv_peak) == pytest.approx((20000 * SUV_BW_FACTOR,) * 3, rel=1e-6)
    assert (m.sul_mean, m.sul_peak) == pytest.approx((20000 * SUL_FACTOR,) * 2, rel=1e-6)


def test_pet_without_height_has_no_sul(tmp_path):
    paths = write_pet_series(tmp_path, np.full((4, 8, 8), 1000.0), [1.0] * 4, FRAME_OF_REFERENCE)
    datasets = []
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.PatientSize
        datasets.append(ds)

    pet = load_suv_volume(datasets)

    assert pet.sul is None
    assert pet.suv_bw.array == pytest.approx(np.full((4, 8, 8), 1000.0 * SUV_BW_FACTOR), rel=1e-6)
    assert any("Patient's Size" in warning for warning in pet.warnings)


def test_a_ct_series_is_not_a_pet(tmp_path):
    paths = write_ct_series(tmp_path, slices=3, rows=8, columns=8)
    with pytest.raises(SuvNotDefinedError, match="is CT, not PT"):
        load_suv_volume(paths)


def test_an_unreadable_pet_file_is_named(tmp_path):
    paths = write_pet_series(tmp_path, np.full((3, 8, 8), 1000.0), [1.0] * 3, FRAME_OF_REFERENCE)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not DICOM")
    with pytest.raises(SeriesError, match="broken.dcm"):
        load_suv_volume([*paths, broken])
