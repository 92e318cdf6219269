"""The built-in segmenter's fast morphology, voxel for voxel against plain ndimage and numpy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from inference.builtin.composition import _spanned
from inference.builtin.morphology import (
    IN_SLICE,
    Coarse,
    SliceHoles,
    box_of,
    dilated_in_slice,
    eroded_in_slice,
    fill_in_slice,
    opened_along_slices,
    stepped_in_slice,
)
from inference.postprocess import HoleFilling, fill_holes

SQUARE = np.zeros((3, 3, 3), dtype=bool)
SQUARE[1] = True


@pytest.fixture
def masks() -> list[np.ndarray]:
    """Random blobs of several densities, touching the array's border."""
    rng = np.random.default_rng(13)
    return [ndi.uniform_filter(rng.random((5, 40, 37)), 3) > level for level in (0.3, 0.5, 0.6)]


@pytest.mark.parametrize("square", [False, True])
@pytest.mark.parametrize("outside", [False, True])
def test_erosion_step_is_ndimage(masks: list[np.ndarray], square: bool, outside: bool) -> None:
    structure = SQUARE if square else IN_SLICE
    for mask in masks:
        expected = ndi.binary_erosion(mask, structure, border_value=int(outside))
        assert np.array_equal(stepped_in_slice(mask, square=square, erode=True, outside=outside), expected)


@pytest.mark.parametrize("square", [False, True])
def test_dilation_step_is_ndimage(masks: list[np.ndarray], square: bool) -> None:
    structure = SQUARE if square else IN_SLICE
    for mask in masks:
        assert np.array_equal(
            stepped_in_slice(mask, square=square, erode=False), ndi.binary_dilation(mask, structure)
        )


def test_octagon_is_alternating_steps(masks: list[np.ndarray]) -> None:
    """A 3 mm octagon on 1 mm pixels: two cross steps and one square one, as ndimage iterates them."""
    spacing = (1.0, 1.0, 1.0)
    eroded = [ndi.binary_erosion(ndi.binary_erosion(m, IN_SLICE, iterations=2), SQUARE) for m in masks]
    dilated = [ndi.binary_dilation(ndi.binary_dilation(m, IN_SLICE, iterations=2), SQUARE) for m in masks]
    assert any(e.any() for e in eroded)
    assert all(
        np.array_equal(eroded_in_slice(m, spacing, 3.0), e) for m, e in zip(masks, eroded, strict=True)
    )
    assert all(
        np.array_equal(dilated_in_slice(m, spacing, 3.0), d) for m, d in zip(masks, dilated, strict=True)
    )


def test_fill_in_slice_is_postprocess_fill_holes(masks: list[np.ndarray]) -> None:
    """The same holes as the pipeline's slice-wise filling, empty masks included."""
    rings = np.zeros((3, 30, 30), dtype=bool)
    rings[1, 5:15, 5:15] = True
    rings[1, 7:13, 7:13] = False  # a hole
    rings[2, 0:10, 0:10] = True
    rings[2, 2:8, 0:8] = False  # open to the array's border: no hole
    for mask in [*masks, rings, np.zeros((2, 5, 5), dtype=bool)]:
        expected = fill_holes(mask, HoleFilling.SLICE)
        assert np.array_equal(fill_in_slice(mask.copy()), expected)
    assert fill_in_slice(rings.copy())[1, 10, 10] and not fill_in_slice(rings.copy())[2, 5, 5]


def test_small_holes_are_holes_below_the_size(masks: list[np.ndarray]) -> None:
    for mask in masks:
        holes = fill_holes(mask, HoleFilling.SLICE) & ~mask
        regions, count = ndi.label(holes, structure=IN_SLICE)
        sizes = np.bincount(regions.ravel(), minlength=count + 1)
        for voxels in (2, 5, 40):
            expected = holes & (sizes < voxels)[regions]
            assert np.array_equal(SliceHoles.of(mask).smaller_than(voxels), expected)
    assert any(SliceHoles.of(m).smaller_than(5).any() for m in masks)


@pytest.mark.parametrize("spacing", [(1.0, 0.98, 0.98), (3.0, 0.7, 0.7), (0.5, 1.0, 3.0)])
def test_coarse_mean_is_the_share_of_each_block(masks: list[np.ndarray], spacing: tuple[float, ...]) -> None:
    """Whole and partial blocks (at the far edges), and a box of them, against a plain loop."""
    for mask in masks:
        coarse = Coarse.of(mask.shape, spacing)
        mean = coarse.mean(mask)
        for index in np.ndindex(*coarse.coarse_shape):
            block = tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, coarse.factors, strict=True))
            assert mean[index] == pytest.approx(mask[block].mean())
        blocks = (slice(1, 3), slice(2, 5), slice(0, 3))
        assert np.array_equal(coarse.mean_within(mask, blocks), mean[blocks])


def test_box_of_is_the_bounding_box(masks: list[np.ndarray]) -> None:
    for mask in masks:
        expected = ndi.find_objects(mask.astype(np.uint8))[0]
        assert box_of(mask, margin=0) == expected
        grown = box_of(mask, margin=2)
        assert all(g.start == max(e.start - 2, 0) for g, e in zip(grown, expected, strict=True))
        assert all(g.stop == min(e.stop + 2, n) for g, e, n in zip(grown, expected, mask.shape, strict=True))


@pytest.mark.parametrize("slice_mm", [1.0, 2.0, 2.5, 7.0])
def test_opening_along_slices_is_ndimage(masks: list[np.ndarray], slice_mm: float) -> None:
    """Iterated erosion (the scan going on beyond its ends) and dilation by a segment along the slices."""
    along = np.zeros((3, 3, 3), dtype=bool)
    along[:, 1, 1] = True
    steps = int(6.0 // slice_mm)
    tall = [np.repeat(m, 4, axis=0) for m in masks]
    for mask in tall:
        eroded = ndi.binary_erosion(mask, along, iterations=steps, border_value=1) if steps else mask
        expected = ndi.binary_dilation(eroded, along, iterations=steps) if steps else mask
        assert np.array_equal(opened_along_slices(mask, (slice_mm, 1.0, 1.0), 6.0), expected)
    assert any((opened_along_slices(m, (1.0, 1.0, 1.0), 6.0) != m).any() for m in tall)


def test_spanned_is_between_cumulative_maxima(masks: list[np.ndarray]) -> None:
    """Set from each line's first to its last mask voxel, lines without any included."""
    sparse = [m & (np.random.default_rng(5).random(m.shape) < 0.02) for m in masks]
    for mask in [*masks, *sparse, np.zeros((2, 3, 4), dtype=bool)]:
        for axis in range(3):
            before = np.maximum.accumulate(mask, axis=axis)
            after = np.flip(np.maximum.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis)
            assert np.array_equal(_spanned(mask, axis), before & after)
