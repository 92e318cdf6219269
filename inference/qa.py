"""Quality checks of a segmentation: agreement with a reference, mirror
consistency and plausibility.

Agreement
    When someone else's SEG of the same series arrives (a radiologist's
    correction, a second tool; see ``dicomio.seg_reference``), each of its
    segments is matched to one of segnode's structures, by code, else by
    name, and the two masks are compared: Dice, Jaccard and the 95th
    percentile Hausdorff distance.
Mirror consistency
    Dice per structure between a prediction and the prediction of the
    mirrored image (mirrored back), which the predictor makes.
Plausibility
    Flags a radiologist should see beside the numbers: a volume outside the
    adult reference range, a structure cut by the scan, an unexpected number
    of pieces, a left/right ratio out of range.

Conventions, where the literature has several:

* Dice ``2|A∩B| / (|A|+|B|)`` and Jaccard ``|A∩B| / |A∪B|`` are 1 when
  both masks are empty (they agree that nothing is there) and 0 when only
  one is.
* HD95 is the larger of the two directed 95th percentiles of surface
  distances, as in MedPy's ``hd95`` and MONAI's Hausdorff distance with
  ``percentile=95``: the surface of a mask is its voxels with a face
  neighbour (6-connectivity) outside it, the image border counting as
  outside; each surface voxel of A has the Euclidean distance in mm (the
  grid's anisotropic spacing) to the nearest surface voxel centre of B, and
  vice versa; percentiles interpolate linearly (numpy's default). It is
  0 when both masks are empty and undefined (None: nothing to measure from)
  when only one is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
from pydicom.sr.coding import Code
from scipy import ndimage

from dicomio.codes import BUILTIN_STRUCTURES, TOTALSEGMENTATOR_V2_CLASSES, Concept, StructureCode
from dicomio.measurements import FlagKind, QualityFlag
from dicomio.seg import LabelledStructure
from dicomio.seg_reference import ReferenceSegment
from inference.label_boxes import bounding_boxes, labelled_box
from inference.segmenter import Segmentation

__all__ = [
    "ADULT_VOLUME_RANGES",
    "LATERALITY_PAIRS",
    "LateralityPair",
    "Overlap",
    "ReferenceMatchError",
    "StructureAgreement",
    "VolumeRange",
    "match_reference_segments",
    "mirror_dice",
    "overlap",
    "plausibility_flags",
    "reference_agreement",
]


# ---------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    """Agreement of two masks (see the module docstring for the definitions)."""

    dice: float
    jaccard: float
    hd95_mm: float | None


@dataclass(frozen=True)
class StructureAgreement:
    """Agreement of one of segnode's structures with its reference segment."""

    name: str
    label_value: int
    reference_segment_number: int
    dice: float
    jaccard: float
    hd95_mm: float | None


#: Two empty masks agree exactly.
_BOTH_EMPTY: Final = Overlap(dice=1.0, jaccard=1.0, hd95_mm=0.0)


class ReferenceMatchError(ValueError):
    """A structure that several reference segments claim equally."""

    def __init__(self, name: str, segment_numbers: Sequence[int], by: str) -> None:
        super().__init__(
            f"structure {name!r}: reference segments {list(segment_numbers)} all match by {by}; "
            "a reference must describe each structure once"
        )
        self.name = name
        self.segment_numbers = tuple(segment_numbers)


def overlap(mask: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> Overlap:
    """Dice, Jaccard and HD95 of two boolean masks on one grid.

    Everything is computed on the bounding box of the two masks together
    (voxels outside it are background in both), so a small organ in a
    512x512x600 grid costs what its box costs.

    Parameters
    ----------
    mask, reference : numpy.ndarray
        Masks of the same shape (non-zero is inside).
    spacing : sequence of float
        Voxel spacing in mm along each axis, e.g. ``Volume.spacing``.
    """
    mask, reference = np.asarray(mask, dtype=bool), np.asarray(reference, dtype=bool)
    if mask.shape != reference.shape or len(spacing) != mask.ndim:
        raise ValueError(
            f"masks of shapes {mask.shape} and {reference.shape} with spacing {tuple(spacing)} do not match"
        )
    found = ndimage.find_objects((mask | reference).astype(np.uint8))
    if not found:
        return _BOTH_EMPTY
    (box,) = found
    mask, reference = mask[box], reference[box]
    both = int(np.count_nonzero(mask & reference))
    size, reference_size = int(np.count_nonzero(mask)), int(np.count_nonzero(reference))
    hd95 = _hd95(mask, reference, spacing) if size and reference_size else None
    return Overlap(
        dice=_dice(both, size, reference_size),
        jaccard=both / (size + reference_size - both),
        hd95_mm=hd95,
    )


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with a face neighbour outside it (the border is outside)."""
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                   border_value=0)
    return mask & ~inner


def _hd95(mask: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    surface, reference_surface = _surface(mask), _surface(reference)
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing)[surface]
    to_mask = ndimage.distance_transform_edt(~surface, sampling=spacing)[reference_surface]
    return float(max(np.percentile(to_reference, 95), np.percentile(to_mask, 95)))


def reference_agreement(
    segmentation: Segmentation, reference: Sequence[ReferenceSegment]
) -> tuple[StructureAgreement, ...]:
    """Agreement of each of segnode's structures that a reference segment describes.

    A structure matches the reference segment with the same codes: category,
    property type, anatomic region and laterality (wherever each side puts
    it), SRT and SCT codes being the same concept. A structure no segment
    matches by code matches the segment whose label is its name or label,
    ignoring case, underscores, hyphens and spaces. A segment is used once.
    Structures the model can produce but did not find are compared too (a
    Dice of 0 when the reference has the structure).

    Returns
    -------
    tuple of StructureAgreement
        One per matched structure, in the order of ``segmentation.structures``.

    Raises
    ------
    ReferenceMatchError
        If several segments match one structure equally.
    """
    boxes = ndimage.find_objects(segmentation.labels)
    spacing = segmentation.volume.spacing
    results = []
    for structure, segment in match_reference_segments(segmentation.structures, reference):
        value = structure.value
        ours = boxes[value - 1] if value <= len(boxes) else None
        region = _union_box(ours, segment.box if segment.voxel_count else None)
        if region is None:
            found = _BOTH_EMPTY
        else:
            theirs = np.zeros([s.stop - s.start for s in region], dtype=bool)
            if segment.voxel_count:
                theirs[tuple(slice(s.start - r.start, s.stop - r.start)
                             for s, r in zip(segment.box, region, strict=True))] = segment.mask
            found = overlap(segmentation.labels[region] == value, theirs, spacing)
        results.append(
            StructureAgreement(structure.code.name, value, segment.segment_number, found.dice, found.jaccard,
                               found.hd95_mm)
        )
    return tuple(results)


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a or b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def match_reference_segments(
    structures: Sequence[LabelledStructure], segments: Sequence[ReferenceSegment]
) -> list[tuple[LabelledStructure, ReferenceSegment]]:
    """Pairs of structure and reference segment: by code first, then by name.

    Shared by the agreement check and by dosimetry reading a physician's SEG, so that
    both pair a structure with the same segment. Structures without a segment are left out.

    Raises
    ------
    ReferenceMatchError
        If several segments match one structure equally.
    """
    by_code = {}
    for structure in structures:
        found = [segment for segment in segments if _same_codes(structure.code, segment)]
        if len(found) > 1:
            raise ReferenceMatchError(structure.code.name, [s.segment_number for s in found], "code")
        if found:
            by_code[structure.code.name] = found[0]
    used = {segment.segment_number for segment in by_code.values()}
    pairs = []
    for structure in structures:
        segment = by_code.get(structure.code.name)
        if segment is None:
            names = {_normalised(structure.code.name), _normalised(structure.code.label)}
            found = [s for s in segments if s.segment_number not in used and _normalised(s.label) in names]
            if len(found) > 1:
                raise ReferenceMatchError(structure.code.name, [s.segment_number for s in found], "name")
            segment = found[0] if found else None
        if segment is not None:
            used.add(segment.segment_number)
            pairs.append((structure, segment))
    return pairs


def _same_codes(code: StructureCode, segment: ReferenceSegment) -> bool:
    """Whether a reference segment carries a structure's codes.

    Laterality modifies the property type when the type is the anatomy, the
    anatomic region when the type is a finding in it (see
    ``dicomio.codes.StructureCode``); the segment must put it in the same place.
    """
    type_laterality = code.laterality if code.anatomic_region is None else None
    region_laterality = code.laterality if code.anatomic_region is not None else None
    return (
        _same(code.category, segment.category)
        and _same(code.property_type, segment.property_type)
        and _same(type_laterality, segment.property_type_modifier)
        and _same(code.anatomic_region, segment.anatomic_region)
        and _same(region_laterality, segment.anatomic_region_modifier)
    )


def _same(ours: Concept | None, theirs: Concept | None) -> bool:
    """Same concept, whatever the meaning's wording; pydicom's ``Code``
    equality maps retired SRT codes to their SCT equivalents."""
    if ours is None or theirs is None:
        return ours is theirs
    return Code(ours.value, ours.scheme, "") == Code(theirs.value, theirs.scheme, "")


def _normalised(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


# ---------------------------------------------------------------------------
# Mirror consistency
# ---------------------------------------------------------------------------


def mirror_dice(
    labels: np.ndarray, mirrored_labels: np.ndarray, values: Sequence[int]
) -> dict[int, float]:
    """Dice per label value between a prediction and its mirrored prediction.

    Parameters
    ----------
    labels, mirrored_labels : numpy.ndarray
        Integer label maps on the same grid (the mirrored one already
        mirrored back).
    values : sequence of int
        The label values to compare (1 when both are absent).
    """
    if labels.shape != mirrored_labels.shape:
        raise ValueError(f"label maps of shapes {labels.shape} and {mirrored_labels.shape}")
    size = max([*values, _largest_label(labels), _largest_label(mirrored_labels)]) + 1
    counts, mirrored_counts = _label_counts(labels, size), _label_counts(mirrored_labels, size)
    both = np.zeros(size, dtype=np.int64)
    for plane, mirrored_plane in zip(labels, mirrored_labels, strict=True):
        both += np.bincount(plane[plane == mirrored_plane], minlength=size)
    return {v: _dice(int(both[v]), int(counts[v]), int(mirrored_counts[v])) for v in values}


def _dice(both: int, size: int, other_size: int) -> float:
    return 1.0 if size + other_size == 0 else 2.0 * both / (size + other_size)


def _largest_label(labels: np.ndarray) -> int:
    if labels.dtype.kind not in "ui":
        raise ValueError(f"a label map needs integer voxels, not {labels.dtype}")
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"label values from {int(labels.min())}: negative values are not labels")
    return int(labels.max(initial=0))


def _label_counts(labels: np.ndarray, size: int) -> np.ndarray:
    """Voxels of each value below `size`, counted slice by slice.

    bincount casts to int64: slice by slice that is 2 MB, for a whole
    512x512x600 volume 1.2 GB.
    """
    counts = np.zeros(size, dtype=np.int64)
    for plane in labels:
        counts += np.bincount(plane.ravel(), minlength=size)
    return counts


# ---------------------------------------------------------------------------
# Plausibility
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeRange:
    """The adult reference range of a structure's volume, in ml."""

    low_ml: float
    high_ml: float


#: Adult reference ranges of organ volumes. Each bound is an outlier fence
#: of the healthy adults of a published series: mean ± 2.7 SD where the
#: source gives mean and SD (where Tukey's fences fall for a normal
#: distribution), Tukey's fences (lower quartile - 1.5 IQR, upper quartile +
#: 1.5 IQR) where it gives quartiles, the observed range where it gives only
#: that; rounded outward to 5 ml. Structures without an entry get no volume
#: check: the lungs' volume follows the breath hold (from functional residual
#: capacity to total lung capacity, a factor of 2 to 3), the stomach's,
#: bladder's and gallbladder's their filling; only their left/right ratio or
#: nothing is checked.
ADULT_VOLUME_RANGES: Final[Mapping[str, VolumeRange]] = MappingProxyType({
    # Linguraru et al., "Assessing hepatomegaly: automated volumetric analysis
    # of the liver", Acad Radiol 2012;19(5): 1.51 ± 0.25 l in 77 normal livers
    # (contrast-enhanced CT).
    "liver": VolumeRange(835.0, 2185.0),
    # Prassopoulos et al., "Determination of normal splenic volume on computed
    # tomography in relation to age, gender and body habitus", Eur Radiol
    # 1997;7(2):246-248: 107.2 to 314.5 cm3 in 140 adults.
    "spleen": VolumeRange(105.0, 315.0),
    # "Normal pancreatic volume in adults is influenced by visceral fat,
    # vertebral body width and age", Abdom Radiol 2019;44(3):958-966: 18.8 to
    # 139.8 cm3 in 204 adults (CT).
    "pancreas": VolumeRange(15.0, 140.0),
    # Dabers et al., "Age- and sex-specific reference values for renal volume",
    # J Clin Med 2024;13(3):769 (SHIP-TREND, MRI, 1815 adults without kidney
    # disease): quartiles of one kidney from 111-143 ml (right, women 60-81
    # years) to 162-206 ml (right, men 40-59), fences 63 and 272 ml.
    "kidney_left": VolumeRange(60.0, 275.0),
    "kidney_right": VolumeRange(60.0, 275.0),
})


@dataclass(frozen=True)
class LateralityPair:
    """Paired structures whose right/left volume ratio has a reference range.

    A side may be several structures (the lobes of a lung), summed.
    """

    organ: str
    right: tuple[str, ...]
    left: tuple[str, ...]
    low: float
    high: float


# Lungs: Yamada et al., Respiration 2020 (PMC7490509), table 3: in supine
# inspiratory CT of 32 volunteers the right lung held 53.6 ± 1.5% of both;
# mean ± 2.7 SD is 49.6 to 57.7%, a right/left ratio of 0.98 to 1.36.
_LUNG_RATIO: Final = (0.98, 1.36)

#: Right/left ratios checked. Kidneys: each should hold 40 to 60% of the
#: pair, the split beyond which living-donor work-ups call the asymmetry of
#: split renal function significant (the larger one is usually the left, by
#: a few percent).
LATERALITY_PAIRS: Final[tuple[LateralityPair, ...]] = (
    LateralityPair("lung", ("lung_right",), ("lung_left",), *_LUNG_RATIO),
    LateralityPair(
        "lung",
        ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
        ("lung_upper_lobe_left", "lung_lower_lobe_left"),
        *_LUNG_RATIO,
    ),
    LateralityPair("kidney", ("kidney_right",), ("kidney_left",), 2 / 3, 3 / 2),
)

#: Structures that may be several pieces: tissues spread over the body (the
#: arms apart from the trunk), bowel a segmentation interrupts where it is
#: collapsed, sets of vessels, cartilages or cysts, the thyroid's lobes
#: (joined by a thin isthmus), the skull with the mandible.
_SEVERAL_PIECES: Final = frozenset({
    "body", "other_soft_tissue", "skeleton", "subcutaneous_fat", "visceral_fat", "skeletal_muscle",
    "small_bowel", "colon",
    "duodenum", "pulmonary_vein", "costal_cartilages", "kidney_cyst_left", "kidney_cyst_right",
    "thyroid_gland", "skull",
})

#: Structures expected in one piece: every other structure of the built-in
#: segmenter and of TotalSegmentator (an unknown model's structures are not
#: checked).
_ONE_PIECE: Final = frozenset(TOTALSEGMENTATOR_V2_CLASSES + BUILTIN_STRUCTURES) - _SEVERAL_PIECES

#: Structures that a normal scan range cuts (they extend from the neck or
#: chest to the pelvis or the limbs), so reaching an end of the scan range
#: is not worth a flag; reaching the edge of the image still is (the arms or
#: flanks outside the field of view change body composition measures).
_BEYOND_SCAN_RANGE: Final = frozenset({
    "body", "other_soft_tissue", "skeleton", "subcutaneous_fat", "visceral_fat", "skeletal_muscle",
    "aorta", "esophagus",
    "trachea", "airway", "spinal_cord", "inferior_vena_cava", "common_carotid_artery_left",
    "common_carotid_artery_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
    "iliopsoas_right", "femur_left", "femur_right", "humerus_left", "humerus_right",
})

#: A piece counts as a component when it holds at least 1 ml, or 10% of the
#: structure if that is less: islands of a few voxels (one voxel of a 3 mm
#: model grid is 0.027 ml) change nothing and would flag nearly every
#: structure, while a second piece of a small structure (an adrenal gland
#: of 5 ml) matters below 1 ml.
_MIN_COMPONENT_ML: Final = 1.0
_MIN_COMPONENT_FRACTION: Final = 0.1

#: Values below this are not tissue or air (air is -1000 HU) but the padding
#: scanners write outside the reconstructed field of view (-2048, -3024...).
_OUTSIDE_FIELD_OF_VIEW_HU: Final = -1500


def plausibility_flags(segmentation: Segmentation) -> dict[str, tuple[QualityFlag, ...]]:
    """Plausibility flags of every structure present in a CT segmentation.

    * Truncated: the structure reaches an end of the scan range (except the
      structures of ``_BEYOND_SCAN_RANGE``), the edge of the image, or the
      padding outside the reconstructed field of view.
    * Volume out of range: outside :data:`ADULT_VOLUME_RANGES`.
    * Unexpected components: a structure expected in one piece (see
      ``_ONE_PIECE``) has none or several components of the minimum size,
      counted with 26-connectivity.
    * Laterality ratio: the right/left volume ratio of a pair in
      :data:`LATERALITY_PAIRS` is out of range; both sides are flagged.

    A truncated structure's volume, pieces and ratio are not checked: the
    cut explains them. Each flag's detail carries the figures.

    Returns
    -------
    dict
        Structure name to its flags (an empty tuple when plausible), for
        every structure with a voxel.
    """
    labels, volume = segmentation.labels, segmentation.volume
    names = {s.value: s.code.name for s in segmentation.structures}
    size = max([*names, _largest_label(labels)]) + 1
    # Outside the box of all labelled voxels there is only 0.
    outer = labelled_box(labels)
    counts = np.zeros(size, dtype=np.int64) if outer is None else _label_counts(labels[outer], size)
    present = {value: name for value, name in names.items() if counts[value]}
    volumes = {name: float(counts[value]) * volume.voxel_volume_ml for value, name in present.items()}
    boxes = bounding_boxes(labels, size - 1)
    bordering = _bordering_padding(labels, volume.array, size)
    flags: dict[str, list[QualityFlag]] = {name: [] for name in present.values()}
    for value, name in present.items():
        cut = _cut(name, boxes[value - 1], labels.shape, volume.affine, int(bordering[value]))
        if cut:
            flags[name].append(QualityFlag(FlagKind.TRUNCATED, cut))
            continue
        expected = ADULT_VOLUME_RANGES.get(name)
        if expected and not expected.low_ml <= volumes[name] <= expected.high_ml:
            flags[name].append(QualityFlag(
                FlagKind.VOLUME_OUT_OF_RANGE,
                f"volume {volumes[name]:.0f} ml outside the adult reference range "
                f"{expected.low_ml:.0f}-{expected.high_ml:.0f} ml",
            ))
        if name in _ONE_PIECE:
            pieces = _pieces_ml(labels[boxes[value - 1]] == value, volume.voxel_volume_ml)
            minimum = min(_MIN_COMPONENT_ML, _MIN_COMPONENT_FRACTION * volumes[name])
            counted = [ml for ml in pieces if ml >= minimum]
            if len(counted) != 1:
                listed = ", ".join(f"{ml:.1f}" for ml in counted[:5]) + (", ..." if len(counted) > 5 else "")
                flags[name].append(QualityFlag(
                    FlagKind.UNEXPECTED_COMPONENTS,
                    f"{len(counted)} components of at least {minimum:.2g} ml"
                    f"{f' ({listed} ml)' if counted else ''}, expected 1",
                ))
    truncated = {name for name, found in flags.items() if any(f.kind is FlagKind.TRUNCATED for f in found)}
    for pair in LATERALITY_PAIRS:
        right = [name for name in pair.right if name in volumes]
        left = [name for name in pair.left if name in volumes]
        if not right or not left or truncated.intersection(right + left):
            continue
        right_ml, left_ml = sum(volumes[n] for n in right), sum(volumes[n] for n in left)
        ratio = right_ml / left_ml
        if not pair.low <= ratio <= pair.high:
            flag = QualityFlag(
                FlagKind.LATERALITY_RATIO,
                f"right/left {pair.organ} volume ratio {ratio:.2f} outside {pair.low:.2f}-{pair.high:.2f} "
                f"(right {right_ml:.0f} ml, left {left_ml:.0f} ml)",
            )
            for name in right + left:
                flags[name].append(flag)
    return {name: tuple(found) for name, found in flags.items()}


def _bordering_padding(labels: np.ndarray, hu: np.ndarray, size: int) -> np.ndarray:
    """For each label value, on how many slices it borders the padding outside
    the reconstructed field of view (a face neighbour within the slice)."""
    slices = np.zeros(size, dtype=np.int64)
    for plane, values in zip(labels, hu, strict=True):
        outside = values < _OUTSIDE_FIELD_OF_VIEW_HU
        if not outside.any():
            continue
        near = np.zeros_like(outside)
        near[1:] |= outside[:-1]
        near[:-1] |= outside[1:]
        near[:, 1:] |= outside[:, :-1]
        near[:, :-1] |= outside[:, 1:]
        slices[np.unique(plane[near & ~outside])] += 1
    return slices


def _cut(
    name: str, box: tuple[slice, ...], shape: tuple[int, ...], affine: np.ndarray, padding_slices: int
) -> str:
    """Why a structure is cut by the imaged volume, or "" if it is not.

    The scan range runs along the grid axis closest to the patient's
    head-foot axis; the other two span the image.
    """
    head_foot = affine[2, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    scan_axis = int(np.argmax(np.abs(head_foot)))
    reasons = []
    if name not in _BEYOND_SCAN_RANGE:
        # LPS: +z is the head, so index 0 is the caudal end when the axis rises.
        ends = ("caudal", "cranial") if head_foot[scan_axis] > 0 else ("cranial", "caudal")
        if box[scan_axis].start == 0:
            reasons.append(f"reaches the {ends[0]} end of the scan range")
        if box[scan_axis].stop == shape[scan_axis]:
            reasons.append(f"reaches the {ends[1]} end of the scan range")
    if any(box[a].start == 0 or box[a].stop == shape[a] for a in range(3) if a != scan_axis):
        reasons.append("reaches the edge of the image")
    if padding_slices:
        reasons.append(f"borders the area outside the reconstructed field of view on {padding_slices} slices")
    return "cut by the imaged volume: " + "; ".join(reasons) if reasons else ""


def _pieces_ml(mask: np.ndarray, voxel_ml: float) -> list[float]:
    """Volumes of the 26-connected components of `mask`, largest first."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    return sorted((float(n) * voxel_ml for n in sizes), reverse=True)
