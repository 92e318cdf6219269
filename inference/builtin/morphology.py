"""Grids and morphology the built-in segmenter measures in mm.

Every structuring element is sized in mm from the voxel spacing, so one
rule serves 0.8 mm and 3 mm CT; large elements run on the coarse grid of
:class:`Coarse`, about 2 mm, where they cost an eighth of the full
resolution's work.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from inference.postprocess import Spacing

#: Voxel size of the grid for large morphology.
_COARSE_MM: Final = 2.0

FULL: Final = np.ones((3, 3, 3), dtype=bool)
IN_SLICE: Final = np.zeros((3, 3, 3), dtype=bool)
IN_SLICE[1] = ndi.generate_binary_structure(2, 1)
_ALONG_SLICES: Final = np.zeros((3, 3, 3), dtype=bool)
_ALONG_SLICES[:, 1, 1] = True


@dataclass(frozen=True)
class Coarse:
    """A grid of whole blocks of voxels, about _COARSE_MM on a side."""

    factors: tuple[int, int, int]
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, shape: tuple[int, ...], spacing: Spacing) -> Coarse:
        factors = tuple(max(1, int(round(_COARSE_MM / s))) for s in spacing)
        return cls(factors=factors, shape=tuple(shape))  # type: ignore[arg-type]

    def spacing(self, spacing: Spacing) -> Spacing:
        """Voxel spacing of the coarse grid."""
        return (spacing[0] * self.factors[0], spacing[1] * self.factors[1], spacing[2] * self.factors[2])

    @property
    def coarse_shape(self) -> tuple[int, int, int]:
        """Shape of the coarse grid (a partial block at each far edge)."""
        return tuple(-(-n // f) for n, f in zip(self.shape, self.factors, strict=True))  # type: ignore[return-value]

    def _offsets(self) -> Iterator[tuple[slice, ...]]:
        """The strided views that hold one voxel of every block each."""
        for offsets in itertools.product(*(range(f) for f in self.factors)):
            yield tuple(slice(o, None, f) for o, f in zip(offsets, self.factors, strict=True))

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of each block (for a mask, the share of its voxels that are set).

        Summing the few strided views is one pass over the data; a reshape
        and a reduction over the short block axes was 5 times slower.
        """
        is_mask = values.dtype == bool
        # Masks are counted in integers, cheaper than adding floats.
        total = np.zeros(self.coarse_shape, dtype=np.uint16 if is_mask else np.float32)
        for view in self._offsets():
            part = values.view(np.uint8)[view] if is_mask else values[view]
            total[: part.shape[0], : part.shape[1], : part.shape[2]] += part
        counts = [
            np.minimum(f, n - np.arange(c) * f).astype(np.float32)
            for n, f, c in zip(self.shape, self.factors, self.coarse_shape, strict=True)
        ]
        return total / (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :])

    def up(self, coarse: np.ndarray) -> np.ndarray:
        """A coarse array on the full grid, each block's value repeated."""
        out = np.empty(self.shape, dtype=coarse.dtype)
        for view in self._offsets():
            part = out[view]
            part[...] = coarse[: part.shape[0], : part.shape[1], : part.shape[2]]
        return out


def disk(spacing: Spacing, radius_mm: float) -> np.ndarray:
    """An in-slice disk of `radius_mm`, as a (1, rows, columns) structure."""
    ry = int(radius_mm // spacing[1])
    rx = int(radius_mm // spacing[2])
    y, x = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    inside = (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2 <= radius_mm**2
    return inside[None]


def ball(spacing: Spacing, radius_mm: float) -> np.ndarray:
    """A 3-D ball of `radius_mm` (an ellipsoid of voxels on an anisotropic grid)."""
    radii = [int(radius_mm // s) for s in spacing]
    z, y, x = np.mgrid[tuple(slice(-r, r + 1) for r in radii)]
    return (z * spacing[0]) ** 2 + (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2 <= radius_mm**2


def _octagon(spacing: Spacing, radius_mm: float) -> tuple[tuple[np.ndarray, int], ...]:
    """In-slice steps whose succession is an octagon of about `radius_mm`.

    Alternating 4- and 8-neighbour steps approximate a disk; a few passes
    with 3x3 elements cost much less than one with a large disk (or a
    distance transform, 3 times slower here).
    """
    steps = int(radius_mm // min(spacing[1:]))
    square = np.zeros((3, 3, 3), dtype=bool)
    square[1] = True
    return ((IN_SLICE, (steps + 1) // 2), (square, steps // 2))


def eroded_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """`mask` eroded within each slice by about `radius_mm` (outside the array is background)."""
    for structure, count in _octagon(spacing, radius_mm):
        if count:
            mask = ndi.binary_erosion(mask, structure, iterations=count)
    return mask


def dilated_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """`mask` dilated within each slice by about `radius_mm`."""
    for structure, count in _octagon(spacing, radius_mm):
        if count:
            mask = ndi.binary_dilation(mask, structure, iterations=count)
    return mask


def opened_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """Opening: what remains of `mask` where a disk of about `radius_mm` fits."""
    return dilated_in_slice(eroded_in_slice(mask, spacing, radius_mm), spacing, radius_mm)


def opened_along_slices(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """Opening along the slice axis: what remains of `mask` where it runs 2x `radius_mm` across slices.

    Beyond the first and last slices `mask` is taken to go on, so that a
    vessel is not cut short where the scan ends.
    """
    steps = int(radius_mm // spacing[0])
    if not steps:
        return mask
    eroded = ndi.binary_erosion(mask, _ALONG_SLICES, iterations=steps, border_value=1)
    return ndi.binary_dilation(eroded, _ALONG_SLICES, iterations=steps)


def closed_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """Closing, with padding so that nothing is lost at the array's border."""
    pad = int(radius_mm // min(spacing[1:])) + 1
    padded = np.pad(mask, ((0, 0), (pad, pad), (pad, pad)))
    closed = eroded_in_slice(dilated_in_slice(padded, spacing, radius_mm), spacing, radius_mm)
    return closed[:, pad:-pad, pad:-pad] | mask


def component_sizes(labels: np.ndarray, count: int, where: np.ndarray) -> np.ndarray:
    """Voxels of each label (index = label) among those in `where`.

    Counting only the gathered foreground is several times faster than
    counting the whole label array, most of which is background.
    """
    return np.bincount(labels[where], minlength=count + 1)


def regions_in_slice(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, int]:
    """The in-slice connected regions of `mask`, labelled within its bounding box."""
    box = box_of(mask, margin=0) if mask.any() else tuple(slice(0, 0) for _ in mask.shape)
    regions, count = ndi.label(mask[box], structure=IN_SLICE)
    return box, regions, count


def box_of(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask, grown by `margin` voxels."""
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    return tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, mask.shape, strict=True)
    )


def body_midline(body: np.ndarray) -> np.ndarray:
    """Column of the body's centre in each slice (the patient's midline).

    Slices without body take the nearest slice's value, so every slice has
    a midline.
    """
    per_column = body.sum(axis=1, dtype=np.int64)
    weight = per_column.sum(axis=1)
    centre = (per_column * np.arange(body.shape[2])).sum(axis=1) / np.maximum(weight, 1)
    present = np.flatnonzero(weight)
    if present.size == 0:
        return np.full(body.shape[0], body.shape[2] / 2)
    return np.interp(np.arange(body.shape[0]), present, centre[present])
