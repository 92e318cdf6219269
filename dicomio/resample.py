"""Label maps moved between grids that share a frame of reference.

Organs are segmented on the CT and measured on the PET: the CT label map has
to be carried onto the PET grid, which is coarser, offset and possibly
oriented differently. Both grids are in patient coordinates of the same
Frame of Reference (PS3.3 C.7.4.1), so the move is a pure resampling, done
with SimpleITK through ``Volume.to_sitk`` and ``Volume.affine_from_sitk``.
Grids in different frames of reference need a registration first, which is
not this module's job, so they are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from dicomio.volume import Volume

# Sub-samples resampled per chunk: bounds the working memory to a few
# hundred MB (int64 indexes and counts per sub-sample) whatever the grid.
_CHUNK_SAMPLES = 1 << 22


class FrameOfReferenceMismatchError(ValueError):
    """The label map and the target grid are not in the same patient space."""

    def __init__(self, labels: Volume, target: Volume):
        super().__init__(
            f"label map of series {labels.series_instance_uid} is in frame of reference "
            f"{labels.frame_of_reference_uid}, target series {target.series_instance_uid} in "
            f"{target.frame_of_reference_uid}: register them first"
        )
        self.labels_frame_of_reference_uid = labels.frame_of_reference_uid
        self.target_frame_of_reference_uid = target.frame_of_reference_uid


@dataclass(frozen=True, eq=False)
class LabelFractions:
    """Per-label partial-volume fractions on a target grid.

    Attributes
    ----------
    labels : tuple of int
        The non-zero labels, in the order of the first axis of `fractions`.
    fractions : numpy.ndarray
        float32, ``[label, slice, row, column]``: the share of each target
        voxel's volume covered by the label, in [0, 1]; the shares of one
        voxel add up to at most 1 (the rest is background).
    grid : Volume
        The target the fractions lie on (its geometry and sources).
    """

    labels: tuple[int, ...]
    fractions: np.ndarray
    grid: Volume

    def volume_ml(self, label: int) -> float:
        """The label's volume on the target grid, fractions included, in ml."""
        index = self.labels.index(label)
        return float(self.fractions[index].sum(dtype=np.float64)) * self.grid.voxel_volume_ml


def _check_same_frame(labels: Volume, target: Volume) -> None:
    if labels.frame_of_reference_uid != target.frame_of_reference_uid:
        raise FrameOfReferenceMismatchError(labels, target)
    if not np.issubdtype(labels.array.dtype, np.integer):
        raise TypeError(f"a label map needs an integer array, got {labels.array.dtype}")


def resample_labels(labels: Volume, target: Volume) -> Volume:
    """The label map on `target`'s grid, by nearest neighbour.

    Nearest neighbour is the only interpolation that keeps every voxel a
    valid label: linear interpolation of label values would invent labels
    between neighbouring organs (3 and 5 averaging to 4). Target voxels
    outside the label map's extent are background (0).

    Returns
    -------
    Volume
        Geometry, identity and sources of `target` (the grid the labels now
        lie on), the labels' dtype as voxels.

    Raises
    ------
    FrameOfReferenceMismatchError
        The two are in different frames of reference.
    """
    _check_same_frame(labels, target)
    resampled = sitk.Resample(
        labels.to_sitk(), target.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    array = sitk.GetArrayFromImage(resampled).astype(labels.array.dtype, copy=False)
    return replace(target, array=array)


def _subdivisions(labels: Volume, target: Volume) -> tuple[int, int, int]:
    """Sub-samples per target voxel along (slice, row, column).

    Enough that sub-samples are no further apart than the finest spacing of
    the label map, so every label voxel a target voxel overlaps is sampled
    (to within the label map's own resolution); more would only cost time.
    """
    finest = min(labels.spacing)
    return tuple(max(1, math.ceil(step / finest - 1e-6)) for step in target.spacing)


def resample_label_fractions(labels: Volume, target: Volume) -> LabelFractions:
    """Partial-volume fractions of each label on `target`'s grid.

    Each target voxel is divided into sub-voxels about as fine as the label
    map, each sub-voxel centre takes its label by nearest neighbour, and the
    fraction of a label is the share of sub-voxels that carry it: a box
    integral of the label indicator over the target voxel. Resampling each
    label's binary mask with linear interpolation instead would sample the
    mask at the target voxel centre only: when the target is coarser (4 mm
    PET from 1 mm CT), a voxel half covered by an organ would get 0 or 1
    depending on where its centre falls, not 0.5, so fractions and volumes
    would be noisy. The area-weighted sums stay within the label map's own
    sampling error of the source volumes.

    Raises
    ------
    FrameOfReferenceMismatchError
        The two are in different frames of reference.
    """
    _check_same_frame(labels, target)
    label_values = tuple(int(v) for v in np.unique(labels.array) if v != 0)
    if not label_values:
        return LabelFractions((), np.zeros((0, *target.array.shape), dtype=np.float32), target)
    if label_values[0] < 0 or label_values[-1] > 0xFFFF:
        # Labels become DICOM Segment Numbers (0062,0004), VR US.
        raise ValueError(f"labels must be 1 to 65535, got {label_values[0]} to {label_values[-1]}")
    # Label value -> 1..n, everything else (background) -> 0.
    lookup = np.zeros(label_values[-1] + 1, dtype=np.int64)
    lookup[list(label_values)] = np.arange(1, len(label_values) + 1)
    subdivisions = _subdivisions(labels, target)
    n_slices, n_rows, n_columns = target.array.shape
    per_slice = n_rows * n_columns * math.prod(subdivisions)
    chunk = max(1, _CHUNK_SAMPLES // per_slice)

    source, grid = labels.to_sitk(), target.to_sitk()
    sub_per_voxel = math.prod(subdivisions)
    fractions = np.zeros((len(label_values), n_slices, n_rows, n_columns), dtype=np.float32)
    for first in range(0, n_slices, chunk):
        count = min(chunk, n_slices - first)
        samples = _sub_samples(source, grid, first, count, subdivisions)
        # One row of sub-samples per target voxel: (slice, row, column, sub-samples).
        s, r, c = subdivisions
        per_voxel = (
            samples.reshape(count, s, n_rows, r, n_columns, c)
            .transpose(0, 2, 4, 1, 3, 5)
            .reshape(-1, sub_per_voxel)
        )
        # One bincount over (voxel, label index) costs the same for 2 labels
        # or 120 organs, where a comparison per label would not.
        width = len(label_values) + 1
        keys = np.arange(len(per_voxel))[:, None] * width + lookup[per_voxel]
        counts = np.bincount(keys.ravel(), minlength=len(per_voxel) * width)
        shares = counts.reshape(len(per_voxel), width)[:, 1:].T / sub_per_voxel
        fractions[:, first : first + count] = shares.reshape(-1, count, n_rows, n_columns)
    return LabelFractions(labels=label_values, fractions=fractions, grid=target)


def _sub_samples(
    source: sitk.Image,
    grid: sitk.Image,
    first_slice: int,
    n_slices: int,
    subdivisions: tuple[int, int, int],
) -> np.ndarray:
    """Labels at the sub-voxel centres of target slices [first, first + n).

    `grid` is the target as SimpleITK sees it, indexed (column, row, slice):
    its own index-to-patient mapping places the sub-grid, so the geometry is
    not re-derived here.
    """
    per_axis = np.array(subdivisions[::-1], dtype=float)
    # A voxel spans +-half a step around its centre; the first sub-voxel
    # centre is half a sub-step inside that.
    first_centre = -0.5 + 0.5 / per_axis + np.array([0.0, 0.0, first_slice])
    columns, rows, _ = grid.GetSize()
    resampler = sitk.ResampleImageFilter()
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(0)
    resampler.SetOutputDirection(grid.GetDirection())
    resampler.SetOutputSpacing(tuple(float(v) for v in np.array(grid.GetSpacing()) / per_axis))
    resampler.SetOutputOrigin(
        grid.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in first_centre))
    )
    resampler.SetSize(
        [columns * subdivisions[2], rows * subdivisions[1], n_slices * subdivisions[0]]
    )
    return sitk.GetArrayFromImage(resampler.Execute(source))
