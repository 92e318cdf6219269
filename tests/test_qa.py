"""QA (inference/qa.py): agreement with a reference, mirror Dice, plausibility flags.

Masks are boxes on anisotropic grids, so every expected value is known in
closed form: overlaps are products of interval lengths, and the distance
from a voxel to the surface of a box (its boundary layer of voxels) is the
distance to the nearest face plane from inside and to the box from outside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from dicomio.codes import LEFT, RIGHT, Concept, structure_code
from dicomio.measurements import FlagKind
from dicomio.seg import AlgorithmIdentity, LabelledStructure
from dicomio.seg_reference import ReferenceSegment
from dicomio.volume import SourceFrame, Volume
from inference.qa import (
    ADULT_VOLUME_RANGES,
    ReferenceMatchError,
    mirror_dice,
    overlap,
    plausibility_flags,
    reference_agreement,
)
from inference.segmenter import Segmentation

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # inclusive (low, high) per axis


def box_mask(shape: tuple[int, int, int], box: Box) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(low, high + 1) for low, high in box)] = True
    return mask


def surface_voxels(box: Box) -> np.ndarray:
    """Indices of the boundary layer of a box, shape (n, 3)."""
    grid = np.stack(np.meshgrid(*[np.arange(lo, hi + 1) for lo, hi in box], indexing="ij"), -1).reshape(-1, 3)
    low, high = np.array([b[0] for b in box]), np.array([b[1] for b in box])
    return grid[np.any((grid == low) | (grid == high), axis=1)]


def distance_to_box_surface(points: np.ndarray, box: Box, spacing: Sequence[float]) -> np.ndarray:
    low, high, step = np.array([b[0] for b in box]), np.array([b[1] for b in box]), np.array(spacing)
    inside = np.all((points >= low) & (points <= high), axis=1)
    to_face = np.minimum(points - low, high - points) * step
    outside_by = np.maximum(np.maximum(low - points, points - high), 0) * step
    return np.where(inside, to_face.min(axis=1), np.linalg.norm(outside_by, axis=1))


def expected_hd95(a: Box, b: Box, spacing: Sequence[float]) -> float:
    """The symmetric HD95 of two boxes, from closed-form surface distances."""
    a_to_b = distance_to_box_surface(surface_voxels(a), b, spacing)
    b_to_a = distance_to_box_surface(surface_voxels(b), a, spacing)
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


def box_volume(box: Box) -> int:
    return int(np.prod([high - low + 1 for low, high in box]))


def intersection(a: Box, b: Box) -> int:
    return int(np.prod([max(0, min(x[1], y[1]) - max(x[0], y[0]) + 1) for x, y in zip(a, b, strict=True)]))


SPACING = (2.5, 0.7, 1.1)
SHAPE = (30, 60, 50)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (((4, 15), (10, 40), (5, 30)), ((6, 17), (13, 43), (4, 29))),  # offset along every axis
        (((5, 20), (10, 50), (10, 40)), ((4, 21), (7, 53), (8, 42))),  # concentric, margins of 2-3 mm
        (((0, 9), (0, 20), (0, 15)), ((3, 12), (0, 20), (2, 17))),  # at the grid's corner
    ],
)
def test_offset_boxes_on_an_anisotropic_grid(a: Box, b: Box) -> None:
    found = overlap(box_mask(SHAPE, a), box_mask(SHAPE, b), SPACING)
    both, sizes = intersection(a, b), box_volume(a) + box_volume(b)
    assert found.dice == pytest.approx(2 * both / sizes, abs=1e-12)
    assert found.jaccard == pytest.approx(both / (sizes - both), abs=1e-12)
    assert found.hd95_mm == pytest.approx(expected_hd95(a, b, SPACING), abs=1e-9)
    assert found == overlap(box_mask(SHAPE, b), box_mask(SHAPE, a), SPACING)  # symmetric


def test_hd95_is_the_95th_percentile_not_the_maximum() -> None:
    a = ((2, 21), (5, 44), (5, 44))
    mask = box_mask(SHAPE, a)
    reference = mask.copy()
    reference[28, 58, 48] = True  # one stray voxel far away
    found = overlap(mask, reference, SPACING)
    assert found.hd95_mm == 0.0
    assert found.dice == pytest.approx(2 * box_volume(a) / (2 * box_volume(a) + 1))


def test_parallel_plates_are_their_distance_apart() -> None:
    plate = box_mask(SHAPE, ((3, 3), (10, 30), (10, 30)))
    found = overlap(plate, np.roll(plate, 4, axis=0), SPACING)
    assert (found.dice, found.jaccard, found.hd95_mm) == (0.0, 0.0, pytest.approx(4 * 2.5))


def test_empty_masks() -> None:
    empty, some = np.zeros(SHAPE, dtype=bool), box_mask(SHAPE, ((1, 3), (1, 3), (1, 3)))
    assert overlap(empty, empty, SPACING) == overlap(some, some, SPACING)
    assert (overlap(some, some, SPACING).dice, overlap(some, some, SPACING).hd95_mm) == (1.0, 0.0)
    for a, b in ((empty, some), (some, empty)):
        found = overlap(a, b, SPACING)
        assert (found.dice, found.jaccard, found.hd95_mm) == (0.0, 0.0, None)


def test_overlap_refuses_masks_that_do_not_match() -> None:
    with pytest.raises(ValueError, match="do not match"):
        overlap(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), SPACING)
    with pytest.raises(ValueError, match="do not match"):
        overlap(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), (1.0, 1.0))


# ---------------------------------------------------------------------------
# Agreement with reference segments
# ---------------------------------------------------------------------------


def ct_volume(hu: np.ndarray, spacing: Sequence[float]) -> Volume:
    """An axial CT grid: slices rise to the head (+z), rows to +y, columns to +x."""
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = spacing[0], spacing[1], spacing[2], 1.0
    sources = tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{k}") for k in range(hu.shape[0]))
    return Volume(hu, affine, "1.2.3.4", "1.2.3.5", "1.2.3.6", "CT", sources)


def segmentation(labels: np.ndarray, names: Sequence[str], spacing=SPACING, hu=None) -> Segmentation:
    volume = ct_volume(np.full(labels.shape, 40, dtype=np.int16) if hu is None else hu, spacing)
    structures = tuple(LabelledStructure(v, structure_code(n)) for v, n in enumerate(names, start=1))
    return Segmentation(labels, volume, structures, AlgorithmIdentity("test", "1"))


ANATOMICAL_STRUCTURE = Concept("SCT", "91723000", "Anatomical Structure")


def segment(number: int, label: str, property_type: Concept, mask: np.ndarray, *,
            category: Concept = ANATOMICAL_STRUCTURE, modifier: Concept | None = None) -> ReferenceSegment:
    """A reference segment as dicomio.seg_reference returns it (mask cropped to its box)."""
    found = np.argwhere(mask)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(found.min(0), found.max(0), strict=True))
    return ReferenceSegment(number, label, category, property_type, modifier, None, None, box, mask[box])


LIVER_SRT = Concept("SRT", "T-62000", "Liver")
KIDNEY = Concept("SCT", "64033007", "Kidney")
SPLEEN = Concept("SCT", "78961009", "Spleen")


def test_reference_agreement_matches_by_code_then_by_name() -> None:
    liver, theirs_liver = ((2, 20), (5, 40), (5, 30)), ((3, 21), (6, 42), (5, 31))
    kidney_r, kidney_l = ((5, 12), (45, 55), (5, 12)), ((5, 12), (45, 55), (35, 45))
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[box_mask(SHAPE, liver)] = 1
    labels[box_mask(SHAPE, kidney_r)] = 2
    labels[box_mask(SHAPE, kidney_l)] = 3
    # spleen (4) is absent from our labels; lung_left (5) only by the reference's name.
    ours = segmentation(labels, ["liver", "kidney_right", "kidney_left", "spleen", "lung_left"])
    shifted_left = np.roll(box_mask(SHAPE, kidney_l), 2, axis=2)
    reference = [
        # A retired SRT code with its old meaning is still the liver.
        segment(7, "Leber", LIVER_SRT, box_mask(SHAPE, theirs_liver),
                category=Concept("SRT", "T-D0005", "Anatomical structure")),
        segment(3, "kidney L", KIDNEY, shifted_left, modifier=LEFT),
        segment(2, "kidney R", KIDNEY, box_mask(SHAPE, kidney_r), modifier=RIGHT),
        segment(4, "Spleen", SPLEEN, box_mask(SHAPE, ((20, 25), (5, 9), (5, 9)))),
        segment(5, "LUNG-LEFT", Concept("99X", "1", "?"), box_mask(SHAPE, ((22, 28), (20, 30), (35, 40)))),
        segment(6, "Kidney", KIDNEY, box_mask(SHAPE, kidney_r)),  # no laterality: matches neither kidney
    ]
    found = {a.name: a for a in reference_agreement(ours, reference)}
    assert list(found) == ["liver", "kidney_right", "kidney_left", "spleen", "lung_left"]
    assert [found[n].reference_segment_number for n in found] == [7, 2, 3, 4, 5]
    both = intersection(liver, theirs_liver)
    sizes = box_volume(liver) + box_volume(theirs_liver)
    assert found["liver"].dice == pytest.approx(2 * both / sizes)
    assert found["liver"].jaccard == pytest.approx(both / (sizes - both))
    assert found["liver"].hd95_mm == pytest.approx(expected_hd95(liver, theirs_liver, SPACING))
    assert (found["kidney_right"].dice, found["kidney_right"].hd95_mm) == (1.0, 0.0)
    shifted_box = (kidney_l[0], kidney_l[1], (kidney_l[2][0] + 2, kidney_l[2][1] + 2))
    assert found["kidney_left"].hd95_mm == pytest.approx(expected_hd95(kidney_l, shifted_box, SPACING))
    assert found["kidney_left"].label_value == 3
    for name in ("spleen", "lung_left"):  # the reference has them, we do not
        assert (found[name].dice, found[name].jaccard, found[name].hd95_mm) == (0.0, 0.0, None)


def test_two_segments_claiming_one_structure_are_refused() -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    ours = segmentation(labels, ["liver"])
    mask = labels == 1
    with pytest.raises(ReferenceMatchError, match=r"'liver'.*\[1, 2\].*code"):
        reference_agreement(ours, [segment(1, "a", LIVER_SRT, mask), segment(2, "b", LIVER_SRT, mask)])
    other = Concept("SCT", "1", "other")
    with pytest.raises(ReferenceMatchError, match=r"\[3, 4\].*name"):
        reference_agreement(ours, [segment(3, "Liver", other, mask), segment(4, "liver", other, mask)])


# ---------------------------------------------------------------------------
# Mirror consistency
# ---------------------------------------------------------------------------


def test_mirror_dice_per_structure() -> None:
    a, b = ((2, 9), (3, 20), (4, 15)), ((3, 10), (3, 20), (6, 17))
    labels, mirrored = np.zeros(SHAPE, dtype=np.uint16), np.zeros(SHAPE, dtype=np.uint16)
    labels[box_mask(SHAPE, a)] = 1
    mirrored[box_mask(SHAPE, b)] = 1
    for grid in (labels, mirrored):
        grid[20:25, 30:40, 30:40] = 2
    labels[26:28, 50:55, 40:45] = 4  # only in one of them
    found = mirror_dice(labels, mirrored, [1, 2, 3, 4])
    assert found == {
        1: pytest.approx(2 * intersection(a, b) / (box_volume(a) + box_volume(b))),
        2: 1.0,
        3: 1.0,  # absent from both
        4: 0.0,
    }


def test_mirror_dice_refuses_what_is_not_a_label_map() -> None:
    with pytest.raises(ValueError, match="shapes"):
        mirror_dice(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8), [1])
    with pytest.raises(ValueError, match="integer"):
        mirror_dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), [1])
    with pytest.raises(ValueError, match="negative"):
        mirror_dice(np.full((2, 2, 2), -1, np.int16), np.zeros((2, 2, 2), np.int16), [1])


# ---------------------------------------------------------------------------
# Plausibility
# ---------------------------------------------------------------------------

#: 5 mm slices of 2 x 2 mm pixels: one voxel is 0.02 ml.
PHANTOM_SPACING = (5.0, 2.0, 2.0)
PHANTOM_SHAPE = (40, 140, 160)
VOXEL_ML = 0.02


def kinds(flags) -> list[FlagKind]:
    return [flag.kind for flag in flags]


def test_a_plausible_phantom_has_no_flags() -> None:
    labels = np.zeros(PHANTOM_SHAPE, dtype=np.uint8)
    labels[10:30, 20:70, 20:90] = 1  # liver: 70,000 voxels, 1400 ml
    labels[12:20, 80:105, 20:40] = 2  # right kidney: 4000 voxels, 80 ml
    labels[12:20, 80:105, 100:122] = 3  # left kidney: 88 ml
    labels[15, 60, 120:122] = 4  # spleen: two voxels, a single component
    labels[0:40, 5:135, 5:155][labels[0:40, 5:135, 5:155] == 0] = 5  # body, over the whole scan range
    labels[20, 60, 100] = 4  # a stray spleen voxel is noise, not a component
    labels[10:25, 60:80, 125:145] = 4  # 6000 voxels: 120 ml
    names = ["liver", "kidney_right", "kidney_left", "spleen", "body"]
    found = plausibility_flags(segmentation(labels, names, PHANTOM_SPACING))
    assert found == {"liver": (), "kidney_right": (), "kidney_left": (), "spleen": (), "body": ()}


def test_oversized_liver() -> None:
    labels = np.zeros(PHANTOM_SHAPE, dtype=np.uint8)
    labels[5:35, 10:110, 10:70] = 1  # 180,000 voxels: 3600 ml
    labels[5:35, 10:110, 80:150] = 2  # stomach has no reference range: no flag however big
    found = plausibility_flags(segmentation(labels, ["liver", "stomach"], PHANTOM_SPACING))
    assert found["stomach"] == ()
    (flag,) = found["liver"]
    assert flag.kind is FlagKind.VOLUME_OUT_OF_RANGE
    assert flag.detail == "volume 3600 ml outside the adult reference range 835-2185 ml"
    assert "stomach" not in ADULT_VOLUME_RANGES


def test_truncated_organs() -> None:
    hu = np.full(PHANTOM_SHAPE, 40, dtype=np.int16)
    hu[:, :, 150:] = -3024  # padding outside the reconstructed field of view
    labels = np.zeros(PHANTOM_SHAPE, dtype=np.uint8)
    labels[0:15, 20:70, 20:90] = 1  # liver from the first (lowest) slice: 1050 ml but cut
    labels[30:40, 60:80, 130:150] = 2  # spleen up to the last slice and the padding
    labels[10:20, 0:30, 60:80] = 3  # pancreas at the image's top row; 120 ml
    labels[0:40, 100:110, 60:70] = 4  # aorta over the whole scan range: expected
    labels[0:40, 120:140, 10:20] = 5  # body at the image's bottom edge
    found = plausibility_flags(
        segmentation(labels, ["liver", "spleen", "pancreas", "aorta", "body"], PHANTOM_SPACING, hu)
    )
    assert found["aorta"] == ()
    cut = "cut by the imaged volume: "
    assert [f.detail for f in found["liver"]] == [cut + "reaches the caudal end of the scan range"]
    assert [f.detail for f in found["spleen"]] == [
        cut + "reaches the cranial end of the scan range; "
        "borders the area outside the reconstructed field of view on 10 slices"
    ]
    assert [f.detail for f in found["pancreas"]] == [cut + "reaches the edge of the image"]
    assert [f.detail for f in found["body"]] == [cut + "reaches the edge of the image"]


def test_two_components() -> None:
    labels = np.zeros(PHANTOM_SHAPE, dtype=np.uint8)
    labels[10:20, 20:50, 20:50] = 1  # spleen, 9000 voxels: 180 ml
    labels[10:14, 60:70, 20:30] = 1  # a second piece of 8 ml
    labels[25:35, 80:100, 20:40] = 2  # adrenal gland of 80 ml...
    labels[25, 110, 20:23] = 2  # ...with 0.06 ml apart: below 1 ml, not a component
    labels[5:15, 80:90, 100:110] = 3  # visceral fat may be in pieces
    labels[20:30, 80:90, 100:110] = 3
    found = plausibility_flags(
        segmentation(labels, ["spleen", "adrenal_gland_left", "visceral_fat"], PHANTOM_SPACING)
    )
    (flag,) = found["spleen"]
    assert (flag.kind, flag.detail) == (
        FlagKind.UNEXPECTED_COMPONENTS, "2 components of at least 1 ml (180.0, 8.0 ml), expected 1"
    )
    assert found["adrenal_gland_left"] == () and found["visceral_fat"] == ()


def test_lopsided_kidneys_and_lungs() -> None:
    labels = np.zeros(PHANTOM_SHAPE, dtype=np.uint8)
    labels[10:20, 40:70, 20:45] = 1  # right kidney 7500 voxels: 150 ml
    labels[10:16, 40:60, 100:126] = 2  # left kidney 3120 voxels: 62.4 ml
    labels[5:35, 10:40, 10:60] = 3  # right lung 45,000 voxels
    labels[5:35, 10:40, 90:130] = 4  # left lung 36,000 voxels: ratio 1.25, plausible
    found = plausibility_flags(
        segmentation(labels, ["kidney_right", "kidney_left", "lung_right", "lung_left"], PHANTOM_SPACING)
    )
    expected = "right/left kidney volume ratio 2.40 outside 0.67-1.50 (right 150 ml, left 62 ml)"
    assert [f.detail for f in found["kidney_right"]] == [expected]
    assert [f.detail for f in found["kidney_left"]] == [expected]
    assert found["lung_right"] == () and found["lung_left"] == ()
    labels[labels == 4] = 0
    labels[5:35, 10:40, 90:110] = 4  # left lung 18,000 voxels: ratio 2.5
    found = plausibility_flags(
        segmentation(labels, ["kidney_right", "kidney_left", "lung_right", "lung_left"], PHANTOM_SPACING)
    )
    assert kinds(found["lung_left"]) == [FlagKind.LATERALITY_RATIO]
    assert "ratio 2.50 outside 0.98-1.36" in found["lung_left"][0].detail


def test_scan_range_of_a_coronal_series() -> None:
    """The scan range runs along the grid axis closest to head-foot, whatever the layout."""
    # Slices step posterior (+y), rows go to the feet (-z), columns to the left (+x).
    affine = np.array([[0.0, 0.0, 2.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0], [0, 0, 0, 1]])
    shape = (40, 140, 160)
    sources = tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{k}") for k in range(shape[0]))
    volume = Volume(np.zeros(shape, dtype=np.int16), affine, "1.2.3.4", "1.2.3.5", "1.2.3.6", "CT", sources)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[10:20, 0:40, 20:60] = 1  # from the top row: the cranial end
    labels[0:10, 60:80, 20:60] = 2  # from the first (most anterior) slice: the edge of the image
    labels[10:20, 100:140, 80:100] = 3  # aorta down to the bottom row: expected
    names = ["liver", "spleen", "aorta"]
    structures = tuple(LabelledStructure(v, structure_code(n)) for v, n in enumerate(names, start=1))
    found = plausibility_flags(Segmentation(labels, volume, structures, AlgorithmIdentity("test", "1")))
    cut = "cut by the imaged volume: "
    assert [f.detail for f in found["liver"]] == [cut + "reaches the cranial end of the scan range"]
    assert [f.detail for f in found["spleen"]] == [cut + "reaches the edge of the image"]
    assert found["aorta"] == ()
