"""Quantification: what each segmented structure measures, on CT and PET.

CT values come from the label map on its own grid, inside the box around
the structures (about the body: most of the air and table around it are
passed over). One pass there (``scipy.ndimage.find_objects``) gives every
structure's bounding box, one more counts the HU values of every structure
at once into histograms (label x HU), from which voxel count, mean,
standard deviation, minimum, maximum and median follow exactly, and one
multi-label connected-component labelling (cc3d) counts the 26-connected
components of every structure. So the work grows with the volume, not with
the volume times the number of structures. Mass is volume times an assumed
density (:class:`DensityTable`), as in organ dosimetry, where CT numbers
are not converted to density.

PET values are measured on the PET grid, never on PET resampled to the CT:
interpolating activity would change the SUVmax and SUVpeak a reader checks
on the PET images. Each structure's CT mask is carried onto the part of the
PET grid around it as partial-volume fractions
(:func:`dicomio.resample.resample_label_fractions`; both series must share
the Frame of Reference). Partial voxels count as follows:

* SUVmean and SULmean weigh every PET voxel by the share of it the structure
  covers, so boundary voxels count by their overlap;
* SUVmax and the SUVpeak centres are PET voxels at least half inside the
  structure (fraction >= 0.5): a voxel mostly outside belongs to the
  neighbour more than to this structure;
* SUVpeak is PERCIST's: the highest mean of the SUV image over a 1 ml sphere
  (radius 6.2 mm), the sphere centred on a PET voxel centre as above; the
  sphere averages the image, inside and outside the structure. The means at
  every centre come from one correlation of the image around the structure
  with a spherical kernel whose weights are each voxel's share inside the
  sphere (sub-sampled), so a 1 ml sphere on 4 mm voxels is not a 16-voxel
  staircase; where the sphere leaves the image, the mean is over its part
  inside;
* a structure with no voxel at least half inside has no SUVmax or SUVpeak
  (None); one partly outside the PET field of view is measured on its part
  inside, and one wholly outside has no PET values at all.

Total uptake is SUVmean x the structure's CT volume (g).

Measured once each on 2 shared cores, 512x512x600 label map: 116 box-shaped
structures over 28 % of the map, 1.6 s and 0.8 GB peak (inputs included);
with one more structure over the remaining 72 % (a body outline), 8.4 s and
2.5 GB, 3.4 s of it in ``ndimage.label`` of that structure. With a
160x128x128 PET of 4 mm voxels: 4.3 s and 16 s, the big structure's
fractions taking most of it. Those figures are from before the HU
histograms and the one labelling of all components: on the 512x512x300
phantom CT (8 structures, bench/outputs.py) CT quantification went from
3.0 to 3.4 s to 2.0 to 2.2 s with the histograms (machine at load 3 to 4),
then from 1.34 to 0.56 s with the labelling and the box around the body
(medians of 5 in one run, load 1.8; in the pipeline 2.24 to 0.83 s, load
2 to 3): boxes 0.17 s, histograms 0.14 s, components 0.20 s.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final

import cc3d
import numpy as np
from scipy import ndimage

from dicomio.codes import STRUCTURE_CODES, UnknownStructureError
from dicomio.measurements import BoundingBox, StructureMeasurements
from dicomio.pet import SuvVolume
from dicomio.resample import resample_label_fractions
from dicomio.seg import Segment
from dicomio.volume import Volume
from inference.label_boxes import bounding_boxes
from inference.segmenter import Segmentation

#: PERCIST's SUVpeak sphere: 1 ml, radius (3 / (4 pi) ml)^(1/3) = 6.2 mm.
PEAK_SPHERE_RADIUS_MM: Final = (3 * 1000.0 / (4 * math.pi)) ** (1 / 3)
#: Share of a PET voxel inside a structure from which it counts for SUVmax
#: and as an SUVpeak centre.
INSIDE_FRACTION: Final = 0.5
#: Sub-samples per voxel and axis for the sphere kernel's weights: the
#: sampled sphere is then within 1.5 % of 1 ml for 1.5 to 5 mm voxels.
_KERNEL_SUBSAMPLES: Final = 10
#: Widest range of integer HU counted into histograms: that of any int16 CT.
_MAX_HISTOGRAM_WIDTH: Final = 1 << 16


class QuantificationError(ValueError):
    """Segments, label map and images that cannot be measured together."""

    def __init__(self, series_instance_uid: str, problem: str) -> None:
        super().__init__(f"quantification of series {series_instance_uid}: {problem}")
        self.series_instance_uid = series_instance_uid


@dataclass(frozen=True, eq=False)
class DensityTable:
    """Mass density per structure, for mass = volume x density.

    Attributes
    ----------
    default_g_ml : float
        Density of every structure not in `by_structure`.
    by_structure : Mapping of str to float
        Densities in g/ml by structure name (dicomio/codes.py names).
    """

    default_g_ml: float
    by_structure: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_density("default", self.default_g_ml)
        for name, density in self.by_structure.items():
            if name not in STRUCTURE_CODES:
                raise UnknownStructureError(name)
            _check_density(name, density)
        object.__setattr__(self, "by_structure", MappingProxyType(dict(self.by_structure)))

    def density_g_ml(self, name: str) -> float:
        """The density of structure `name`."""
        return self.by_structure.get(name, self.default_g_ml)

    def with_overrides(self, densities: Mapping[str, float]) -> DensityTable:
        """This table with `densities` replacing or adding structures' values."""
        return DensityTable(self.default_g_ml, {**self.by_structure, **densities})


def _check_density(name: str, density: float) -> None:
    if not (isinstance(density, numbers.Real) and math.isfinite(density) and density > 0):
        raise ValueError(f"density of {name!r} must be a positive number of g/ml, got {density!r}")


# Adult tissue densities of ICRU Report 46 (1992), the data ICRP Publication
# 89 (2002) and 110 (2009) take their organ masses and phantoms from, in
# g/cm3 = g/ml. Whole bones are the whole-specimen values (cortex with
# marrow) ICRU 46 takes from Woodard and White (Br J Radiol 1986;59:1209).
_SOFT_TISSUE = 1.03  # average adult soft tissue
_ADIPOSE = 0.95
_SKELETAL_MUSCLE = 1.05
_BLOOD = 1.06  # the heart and great vessels, filled with it
_BRAIN = 1.04
_LIVER = 1.06
_SPLEEN = 1.06
# Inflated lung. CT lung density varies with inspiration; ICRP 89's lung
# mass with blood in ICRP 110's lung volume is nearer 0.38.
_LUNG = 0.26
_CARTILAGE = 1.10
_CERVICAL_VERTEBRA = 1.42  # C4 with discs
_VERTEBRA = 1.33  # D6 and L3 with discs
_SACRUM = 1.29
_RIB = 1.41  # 2nd and 6th ribs (10th: 1.52)
_HUMERUS = 1.46
_FEMUR = 1.33
_CRANIUM = 1.61
# Bones ICRU 46 gives no whole-bone value for (scapula, clavicle, hip bone,
# sternum, a whole skeleton): the lumbar spine's and the femur's.
_OTHER_BONE = 1.33
# The dosimetry work segnode follows (CT kidney masks for 177Lu SPECT
# dosimetry) takes kidney mass at 1.06 g/ml; ICRU 46 gives 1.05.
_KIDNEY = 1.06


def _both(stem: str, density: float) -> dict[str, float]:
    return {f"{stem}_left": density, f"{stem}_right": density}


#: The table quantification uses unless the caller overrides it.
DEFAULT_DENSITIES: Final = DensityTable(
    default_g_ml=_SOFT_TISSUE,
    by_structure={
        **_both("kidney", _KIDNEY),
        "liver": _LIVER,
        "spleen": _SPLEEN,
        "subcutaneous_fat": _ADIPOSE,
        "visceral_fat": _ADIPOSE,
        "skeletal_muscle": _SKELETAL_MUSCLE,
        **{
            f"{stem}_{side}": _SKELETAL_MUSCLE
            for stem in ("gluteus_maximus", "gluteus_medius", "gluteus_minimus", "autochthon", "iliopsoas")
            for side in ("left", "right")
        },
        **_both("lung", _LUNG),
        **_both("lung_upper_lobe", _LUNG),
        **_both("lung_lower_lobe", _LUNG),
        "lung_middle_lobe_right": _LUNG,
        "brain": _BRAIN,
        "heart": _BLOOD,
        "aorta": _BLOOD,
        "superior_vena_cava": _BLOOD,
        "inferior_vena_cava": _BLOOD,
        **{f"vertebrae_C{level}": _CERVICAL_VERTEBRA for level in range(1, 8)},
        **{f"vertebrae_T{level}": _VERTEBRA for level in range(1, 13)},
        **{f"vertebrae_L{level}": _VERTEBRA for level in range(1, 6)},
        "vertebrae_S1": _VERTEBRA,
        "sacrum": _SACRUM,
        **{f"rib_{side}_{n}": _RIB for side in ("left", "right") for n in range(1, 13)},
        **_both("humerus", _HUMERUS),
        **_both("femur", _FEMUR),
        "skull": _CRANIUM,
        **_both("scapula", _OTHER_BONE),
        **_both("clavicula", _OTHER_BONE),
        **_both("hip", _OTHER_BONE),
        "sternum": _OTHER_BONE,
        "skeleton": _OTHER_BONE,
        "costal_cartilages": _CARTILAGE,
    },
)


def quantify(
    segmentation: Segmentation,
    segments: Sequence[Segment],
    *,
    densities: DensityTable = DEFAULT_DENSITIES,
    pet: SuvVolume | None = None,
) -> tuple[StructureMeasurements, ...]:
    """Measure every segment of `segmentation`, on its CT and optionally on PET.

    Parameters
    ----------
    segmentation : Segmentation
        The CT label map and the CT volume (HU) it lies on.
    segments : sequence of Segment
        The structures to measure with the segment numbers of the SEG that
        the measurements will refer to: :func:`dicomio.seg.plan_segments` of
        the label map written there. Each must have voxels.
    densities : DensityTable
        Densities for the masses; :data:`DEFAULT_DENSITIES` by default.
    pet : SuvVolume, optional
        The PET series in SUV, in the CT's Frame of Reference.

    Returns
    -------
    tuple of StructureMeasurements
        One per segment, in the order of `segments`; QA values and flags
        are left for inference/qa.py.

    Raises
    ------
    QuantificationError
        The volume is not CT, segments repeat a number or a label value, a
        label value is negative, or a segment has no voxel.
    dicomio.resample.FrameOfReferenceMismatchError
        The PET is in another Frame of Reference.
    """
    volume, labels = segmentation.volume, segmentation.labels
    series = volume.series_instance_uid
    if volume.modality != "CT":
        raise QuantificationError(series, f"HU statistics need a CT, not {volume.modality}")
    _check_segments(segments, series)
    if labels.size and labels.min() < 0:
        raise QuantificationError(series, f"label map has negative values (down to {labels.min()})")
    boxes = bounding_boxes(labels, max(s.value for s in segments))
    for segment in segments:
        if boxes[segment.value - 1] is None:
            raise QuantificationError(
                series, f"segment {segment.segment_number} ({segment.code.name}) has no voxel "
                f"with label {segment.value}"
            )
    own = [boxes[s.value - 1] for s in segments]
    # The box around all the segments, without most of the air around the body.
    region = tuple(slice(min(b[axis].start for b in own), max(b[axis].stop for b in own))
                   for axis in range(labels.ndim))
    statistics = _hu_statistics(volume.array, labels, segments, own, region)
    components = _component_counts(labels[region], segments)
    label_volume = replace(volume, array=labels)
    pet_grid = None if pet is None else _PetGrid(pet)
    results = []
    for segment, box, hu, count in zip(segments, own, statistics, components, strict=True):
        measured = _ct_measurements(volume, segment, box, hu, count, densities)
        if pet_grid is not None:
            pet_values = pet_grid.measure(label_volume, segment.value, box, measured.volume_ml)
            measured = replace(measured, **pet_values)
        results.append(measured)
    return tuple(results)


def _check_segments(segments: Sequence[Segment], series: str) -> None:
    if not segments:
        raise QuantificationError(series, "no segments to measure")
    numbers = [s.segment_number for s in segments]
    values = [s.value for s in segments]
    if len(set(numbers)) != len(numbers) or min(numbers) < 1:
        raise QuantificationError(series, f"segment numbers must be distinct and positive, got {numbers}")
    if len(set(values)) != len(values) or min(values) < 1:
        raise QuantificationError(series, f"label values must be distinct and positive, got {values}")


@dataclass(frozen=True)
class _HuStatistics:
    """The HU values of one structure, summarised."""

    count: int
    mean: float
    std: float
    minimum: float
    maximum: float
    median: float

    @classmethod
    def of_values(cls, hu: np.ndarray) -> _HuStatistics:
        return cls(int(hu.size), float(hu.mean(dtype=np.float64)), float(hu.std(dtype=np.float64)),
                   float(hu.min()), float(hu.max()), float(np.median(hu)))

    @classmethod
    def of_histogram(cls, values: np.ndarray, counts: np.ndarray) -> _HuStatistics:
        """From the distinct HU `values` (ascending) and how often each occurs."""
        count = int(counts.sum())
        mean = float((values * counts).sum()) / count
        variance = float((counts * (values - mean) ** 2).sum()) / count
        # The middle value, or the mean of the two middle values, as np.median.
        below = np.cumsum(counts)
        middle = values[np.searchsorted(below, [(count - 1) // 2, count // 2], side="right")]
        return cls(count, mean, math.sqrt(variance), float(values[0]), float(values[-1]),
                   float(middle.mean(dtype=np.float64)))


def _hu_statistics(
    hu: np.ndarray,
    labels: np.ndarray,
    segments: Sequence[Segment],
    boxes: Sequence[tuple[slice, ...]],
    region: tuple[slice, ...],
) -> list[_HuStatistics]:
    """Each segment's HU statistics, in the order of `segments` and their `boxes`.

    Integer HU (the series loader's int16, nearly every CT) are counted into
    one histogram per segment in a single pass over `region` (which holds
    every segment), from which every statistic follows exactly; other HU
    (floating point, or integers spanning more than an int16) are gathered
    per structure inside its bounding box.
    """
    counted = hu[region]
    low, high = (int(counted.min()), int(counted.max())) if hu.dtype.kind in "iu" else (0.0, math.inf)
    if high - low >= _MAX_HISTOGRAM_WIDTH:
        return [_HuStatistics.of_values(hu[box][labels[box] == s.value])
                for s, box in zip(segments, boxes, strict=True)]
    hu, labels = counted, labels[region]
    width = high - low + 1
    bins = (len(segments) + 1) * width
    # Start of each label value's row in the histogram table, less the lowest
    # HU, so that start + HU is a voxel's bin; row 0 collects the other values.
    fits_int32 = bins + abs(low) <= np.iinfo(np.int32).max
    start = np.full(int(labels.max()) + 1, -low, dtype=np.int32 if fits_int32 else np.int64)
    for index, segment in enumerate(segments, start=1):
        start[segment.value] += index * width
    table = np.zeros(bins, dtype=np.int64)
    # Enough slices at once that adding up the table costs less than counting.
    step = max(1, bins // max(1, labels[0].size))
    for first in range(0, labels.shape[0], step):
        key = np.take(start, labels[first:first + step])  # twice as fast as start[...]
        key += hu[first:first + step]
        table += np.bincount(key.ravel(), minlength=bins)
    table = table.reshape(len(segments) + 1, width)
    levels = np.arange(low, high + 1, dtype=np.int64)
    statistics = []
    for index in range(1, len(segments) + 1):
        present = np.flatnonzero(table[index])
        statistics.append(_HuStatistics.of_histogram(levels[present], table[index, present]))
    return statistics


def _component_counts(labels: np.ndarray, segments: Sequence[Segment]) -> list[int]:
    """Each segment's number of 26-connected components (faces, edges and corners).

    One multi-label labelling (cc3d) finds the components of every label
    value at once, each component being of one value; the value of each
    follows from writing every voxel's value to its component. On the
    phantom CT's 8 structures this took 0.19 s where cc3d's binary
    labelling of each structure in its box took 0.31 s and SimpleITK's
    filter 0.72 s (medians of 5 in one run, load 4.6 on 2 cores);
    ``ndimage.label`` is about twice as slow as SimpleITK.
    """
    components, count = cc3d.connected_components(labels, connectivity=26, return_N=True)
    value_of = np.zeros(count + 1, dtype=np.intp)  # what np.bincount takes
    value_of[components] = labels
    per_value = np.bincount(value_of[1:], minlength=max(s.value for s in segments) + 1)
    return [int(per_value[s.value]) for s in segments]


def _ct_measurements(
    volume: Volume,
    segment: Segment,
    box: tuple[slice, ...],
    hu: _HuStatistics,
    component_count: int,
    densities: DensityTable,
) -> StructureMeasurements:
    """Everything measured on the CT grid, from the HU statistics, the components and the bounding box."""
    volume_ml = hu.count * volume.voxel_volume_ml
    density = densities.density_g_ml(segment.code.name)
    return StructureMeasurements(
        segment_number=segment.segment_number,
        name=segment.code.name,
        volume_ml=volume_ml,
        voxel_count=hu.count,
        hu_mean=hu.mean,
        hu_std=hu.std,
        hu_min=hu.minimum,
        hu_max=hu.maximum,
        hu_median=hu.median,
        mass_g=volume_ml * density,
        density_g_ml=density,
        component_count=component_count,
        bounding_box=_bounding_box(volume.affine, box),
    )


def _bounding_box(affine: np.ndarray, box: tuple[slice, ...]) -> BoundingBox:
    first = tuple(int(s.start) for s in box)
    last = tuple(int(s.stop) - 1 for s in box)
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*zip(first, last, strict=True))])
    points = (corners @ affine.T)[:, :3]
    return BoundingBox(
        first_index=first,
        last_index=last,
        min_lps_mm=tuple(float(v) for v in points.min(axis=0)),
        max_lps_mm=tuple(float(v) for v in points.max(axis=0)),
    )


class _PetGrid:
    """The PET images of one quantification and their SUVpeak kernel."""

    def __init__(self, pet: SuvVolume) -> None:
        self.grid = pet.suv_bw
        self.sul = pet.sul
        self.kernel = sphere_kernel(self.grid.spacing, PEAK_SPHERE_RADIUS_MM)

    def measure(
        self, labels: Volume, value: int, box: tuple[slice, ...], volume_ml: float
    ) -> dict[str, float | None]:
        """The PET fields of StructureMeasurements for the structure with label `value`."""
        found = self._fractions(labels, value, box)
        if found is None:
            return {}
        pet_box, fractions = found
        inside = fractions >= INSIDE_FRACTION
        suv_mean, suv_max, suv_peak = self._statistics(self.grid.array, pet_box, fractions, inside)
        values = {
            "suv_mean": suv_mean,
            "suv_max": suv_max,
            "suv_peak": suv_peak,
            "total_uptake": suv_mean * volume_ml,
        }
        if self.sul is not None:
            sul_mean, _, sul_peak = self._statistics(self.sul, pet_box, fractions, inside)
            values.update(sul_mean=sul_mean, sul_peak=sul_peak)
        return values

    def _fractions(
        self, labels: Volume, value: int, box: tuple[slice, ...]
    ) -> tuple[tuple[slice, ...], np.ndarray] | None:
        """The structure's fractions on the PET voxels around its CT box, or
        None if it lies outside the PET field of view."""
        mask = _crop(labels, box, (labels.array[box] == value).astype(np.uint8))
        # The CT box's outer faces in PET index coordinates, and one voxel more.
        ranges = ((s.start - 0.5, s.stop - 0.5) for s in box)
        faces = np.array([[*corner, 1.0] for corner in itertools.product(*ranges)])
        pet_index = (faces @ labels.affine.T @ np.linalg.inv(self.grid.affine).T)[:, :3]
        low = np.maximum(np.floor(pet_index.min(axis=0)).astype(int) - 1, 0)
        high = np.minimum(np.ceil(pet_index.max(axis=0)).astype(int) + 2, self.grid.array.shape)
        if np.any(high <= low):
            return None
        pet_box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
        target = _crop(self.grid, pet_box, self.grid.array[pet_box])
        fractions = resample_label_fractions(mask, target).fractions[0]
        if not fractions.any():
            return None
        return pet_box, fractions

    def _statistics(
        self, image: np.ndarray, pet_box: tuple[slice, ...], fractions: np.ndarray, inside: np.ndarray
    ) -> tuple[float, float | None, float | None]:
        """Fraction-weighted mean, and max and peak over the voxels inside."""
        values = image[pet_box]
        mean = float((values * fractions).sum(dtype=np.float64) / fractions.sum(dtype=np.float64))
        if not inside.any():
            return mean, None, None
        peak = sphere_means(image, pet_box, self.kernel)[inside].max()
        return mean, float(values[inside].max()), float(peak)


def _crop(volume: Volume, box: tuple[slice, ...], array: np.ndarray) -> Volume:
    """`array` as the part `box` of `volume`'s grid (its affine moved to the box's first voxel)."""
    affine = volume.affine.copy()
    affine[:3, 3] = (volume.affine @ np.array([*(s.start for s in box), 1.0]))[:3]
    return replace(volume, array=array, affine=affine, sources=volume.sources[box[0]])


def sphere_kernel(spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Weights that average an image over a sphere centred on a voxel centre.

    Each weight is the share of that voxel's volume inside the sphere
    (:data:`_KERNEL_SUBSAMPLES` sub-samples per axis), normalised to sum to
    1, so correlating an image with the kernel gives the mean of the
    piecewise-constant image over the sphere. `spacing` is (slice, row,
    column) in mm, so anisotropic voxels are handled; the axes are taken to be
    orthogonal, as dicomio/series.py makes every grid (it refuses tilt).
    """
    n = _KERNEL_SUBSAMPLES
    offsets = (np.arange(n) + 0.5) / n - 0.5
    axes = []
    for step in spacing:
        # Voxel k spans (k -+ 0.5) * step; it can reach the sphere while (|k| - 0.5) * step < r.
        half = math.ceil(radius_mm / step + 0.5) - 1
        axes.append(((np.arange(-half, half + 1)[:, None] + offsets[None, :]) * step).ravel())
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    inside = (z**2 + y**2 + x**2) <= radius_mm**2
    shape = [len(a) // n for a in axes]
    weights = inside.reshape(shape[0], n, shape[1], n, shape[2], n).mean(axis=(1, 3, 5))
    return weights / weights.sum()


def sphere_means(image: np.ndarray, box: tuple[slice, ...], kernel: np.ndarray) -> np.ndarray:
    """Mean of `image` over the kernel's sphere centred on each voxel of `box`.

    Only `box` and the kernel's reach around it are correlated. Outside the
    image the sphere has nothing to average: the kernel's weights there are
    left out and the rest renormalised.
    """
    half = [k // 2 for k in kernel.shape]
    outer = tuple(
        slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(box, half, image.shape, strict=True)
    )
    region = image[outer].astype(np.float64)
    sums = ndimage.correlate(region, kernel, mode="constant", cval=0.0)
    covered = ndimage.correlate(np.ones_like(region), kernel, mode="constant", cval=0.0)
    inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer, strict=True))
    return sums[inner] / covered[inner]
