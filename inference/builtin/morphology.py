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

from inference.builtin.components import connected_in_slice, enclosed_in_slice
from inference.postprocess import Spacing

#: Voxel size of the grid for large morphology.
_COARSE_MM: Final = 2.0

FULL: Final = np.ones((3, 3, 3), dtype=bool)
IN_SLICE: Final = np.zeros((3, 3, 3), dtype=bool)
IN_SLICE[1] = ndi.generate_binary_structure(2, 1)


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
        if values.dtype == bool:
            total = self._count(values)
        else:
            total = np.zeros(self.coarse_shape, dtype=np.float32)
            for view in self._offsets():
                part = values[view]
                total[: part.shape[0], : part.shape[1], : part.shape[2]] += part
        counts = [
            np.minimum(f, n - np.arange(c) * f).astype(np.float32)
            for n, f, c in zip(self.shape, self.factors, self.coarse_shape, strict=True)
        ]
        return total / (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :])

    def _count(self, mask: np.ndarray) -> np.ndarray:
        """Set voxels of each block.

        One axis at a time, each pass adding the strided views along it
        into an array that much smaller, in the narrowest integers that
        hold a block's count: twice as fast as adding every voxel's view
        into a coarse array of wider integers.
        """
        dtype = np.uint8 if np.prod(self.factors) <= np.iinfo(np.uint8).max else np.uint16
        total = mask.view(np.uint8)
        for axis, factor in enumerate(self.factors):
            if factor == 1:
                continue
            summed = _along(total, axis, slice(0, None, factor)).astype(dtype)
            for offset in range(1, factor):
                part = _along(total, axis, slice(offset, None, factor))
                _along(summed, axis, slice(0, part.shape[axis]))[...] += part
            total = summed
        return total

    def mean_within(self, values: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
        """:meth:`mean` of the blocks in `box` (a box of the coarse grid) only."""
        blocks = zip(box, self.factors, self.shape, strict=True)
        part = values[tuple(slice(b.start * f, min(b.stop * f, n)) for b, f, n in blocks)]
        return Coarse(self.factors, part.shape).mean(part)

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


def _octagon(spacing: Spacing, radius_mm: float) -> tuple[tuple[bool, int], ...]:
    """In-slice steps whose succession is an octagon of about `radius_mm`:
    (whether the step is the 3x3 square rather than the 4-neighbour cross,
    how many of it).

    Alternating 4- and 8-neighbour steps approximate a disk; a few passes
    with 3x3 elements cost much less than one with a large disk (or a
    distance transform, 3 times slower here).
    """
    steps = int(radius_mm // min(spacing[1:]))
    return ((False, (steps + 1) // 2), (True, steps // 2))


def eroded_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """`mask` eroded within each slice by about `radius_mm` (outside the array is background)."""
    for square, count in _octagon(spacing, radius_mm):
        for _ in range(count):
            mask = stepped_in_slice(mask, square=square, erode=True)
    return mask


def dilated_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """`mask` dilated within each slice by about `radius_mm`."""
    for square, count in _octagon(spacing, radius_mm):
        for _ in range(count):
            mask = stepped_in_slice(mask, square=square, erode=False)
    return mask


def stepped_in_slice(mask: np.ndarray, *, square: bool, erode: bool, outside: bool = False) -> np.ndarray:
    """`mask` eroded or dilated by one in-slice step: the 4-neighbour cross,
    or the 3x3 square; beyond the array's rows and columns lies `outside`.

    The same as ndimage's binary erosion and dilation with these elements,
    but the neighbours are combined as shifted views of the whole array,
    about 10 times faster; the square is a step along rows, then one along
    columns.
    """
    combine = np.logical_and if erode else np.logical_or
    out = mask.copy()
    for axis in (1, 2):
        # The square's second step combines the first's result.
        source = out.copy() if square and axis == 2 else mask
        for ahead, behind in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            target = _along(out, axis, ahead)
            combine(target, _along(source, axis, behind), out=target)
        if erode and not outside:
            _along(out, axis, 0)[...] = False
            _along(out, axis, -1)[...] = False
    return out


def _along(array: np.ndarray, axis: int, index: slice | int) -> np.ndarray:
    """A view of `array` indexed along one axis."""
    return array[(slice(None),) * axis + (index,)]


def opened_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """Opening: what remains of `mask` where a disk of about `radius_mm` fits."""
    return dilated_in_slice(eroded_in_slice(mask, spacing, radius_mm), spacing, radius_mm)


def opened_along_slices(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """Opening along the slice axis: what remains of `mask` where it runs 2x `radius_mm` across slices.

    Beyond the first and last slices `mask` is taken to go on, so that a
    vessel is not cut short where the scan ends. The same as ndimage's
    erosion and dilation iterated with a 3-voxel segment along the slices,
    but from the slices shifted by each step: 10 times faster.
    """
    steps = int(radius_mm // spacing[0])
    if not steps:
        return mask
    eroded = mask.copy()
    for step in range(1, steps + 1):
        eroded[step:] &= mask[:-step]
        eroded[:-step] &= mask[step:]
    opened = eroded.copy()
    for step in range(1, steps + 1):
        opened[step:] |= eroded[:-step]
        opened[:-step] |= eroded[step:]
    return opened


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
    regions, count = connected_in_slice(mask[box])
    return box, regions, count


@dataclass(frozen=True, eq=False)
class SliceHoles:
    """The holes of a mask in each slice: the connected regions of its
    background that reach no border of their slice, labelled.

    One labelling serves both the filling and the holes' sizes (filling,
    then labelling the holes, was two). It covers the mask's bounding box,
    whose border the background outside the mask reaches in every slice.

    Attributes
    ----------
    shape : tuple of int
        Shape of the mask.
    box : tuple of slice
        Where `holes` and `regions` lie in the mask.
    holes : numpy.ndarray
        The holes in the box.
    regions : numpy.ndarray
        A label for each hole in the box (other voxels' labels are of no use).
    """

    shape: tuple[int, ...]
    box: tuple[slice, ...]
    holes: np.ndarray
    regions: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> SliceHoles:
        if not mask.any():
            nowhere = tuple(slice(0, 0) for _ in mask.shape)
            empty = np.zeros((0,) * mask.ndim, dtype=bool)
            return cls(mask.shape, nowhere, empty, empty.astype(np.uint16))
        box = box_of(mask, margin=0)
        holes, regions = enclosed_in_slice(~mask[box])
        return cls(shape=mask.shape, box=box, holes=holes, regions=regions)

    def smaller_than(self, voxels: float) -> np.ndarray:
        """The holes of fewer than `voxels` voxels.

        Counted among the gathered hole voxels: counting every label, the
        outside one in most voxels, took 3 times longer.
        """
        which = self.regions[self.holes]
        small = np.bincount(which) < voxels
        out = np.zeros(self.shape, dtype=bool)
        out[self.box][self.holes] = small[which]
        return out


def fill_in_slice(mask: np.ndarray) -> np.ndarray:
    """Add to `mask`, in place, the background that it encloses in each slice; return it.

    In place because every caller fills a mask it has just made: a copy of
    a whole CT's mask cost as much as finding its holes.
    """
    holes = SliceHoles.of(mask)
    mask[holes.box] |= holes.holes
    return mask


def box_of(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask, grown by `margin` voxels.

    From the mask's projections: two reductions, where ndimage's
    find_objects took 10 times longer.
    """
    plane = mask.any(axis=0)
    present = (mask.any(axis=(1, 2)), plane.any(axis=1), plane.any(axis=0))
    box = []
    for along, n in zip(present, mask.shape, strict=True):
        where = np.flatnonzero(along)
        box.append(slice(max(int(where[0]) - margin, 0), min(int(where[-1]) + 1 + margin, n)))
    return tuple(box)


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
