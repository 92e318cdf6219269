"""The built-in segmenter's cc3d labelling, label for label against ndimage's.

The rules read the numbering (which part comes first, label arrays as
indices), so the labels themselves must match, not only the partition.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from inference.builtin.components import connected_components, connected_in_slice, enclosed_in_slice
from inference.builtin.morphology import FULL, IN_SLICE


@pytest.fixture
def masks() -> list[np.ndarray]:
    """Noise (hundreds of small components) and blobs, touching the array's border,
    whole and as strided views as the segmenter passes boxes of its masks."""
    rng = np.random.default_rng(13)
    noise = [rng.random((6, 41, 37)) < density for density in (0.2, 0.45, 0.7)]
    blobs = [ndi.uniform_filter(rng.random((5, 40, 37)), 3) > level for level in (0.3, 0.5, 0.6)]
    return [*noise, *blobs, noise[1][1:, 3:-2, 5:], noise[2][:, ::2]]


@pytest.mark.parametrize(("connectivity", "structure"), [(6, None), (26, FULL)])
def test_3d_labels_are_ndimage_labels(masks: list[np.ndarray], connectivity: int, structure) -> None:
    for mask in masks:
        expected, count = ndi.label(mask, structure)
        labels, found = connected_components(mask, connectivity)
        assert found == count
        assert np.array_equal(labels, expected)
    assert max(ndi.label(m)[1] for m in masks) > 100


def test_2d_labels_are_ndimage_labels(masks: list[np.ndarray]) -> None:
    for mask in masks:
        for section in mask:
            expected, count = ndi.label(section)
            labels, found = connected_components(section, 4)
            assert found == count
            assert np.array_equal(labels, expected)


def test_in_slice_labels_are_ndimage_labels(masks: list[np.ndarray]) -> None:
    for mask in masks:
        expected, count = ndi.label(mask, IN_SLICE)
        labels, found = connected_in_slice(mask)
        assert found == count
        assert np.array_equal(labels, expected)


def test_enclosed_are_the_components_off_the_border(masks: list[np.ndarray]) -> None:
    """Enclosed: no voxel on the slice's first or last row or column; each
    enclosed component one label of its own."""
    for mask in masks:
        regions, count = ndi.label(mask, IN_SLICE)
        on_border = np.zeros(count + 1, dtype=bool)
        for edge in (regions[:, [0, -1]], regions[:, :, [0, -1]]):
            on_border[edge] = True
        expected = mask & ~on_border[regions]
        enclosed, labels = enclosed_in_slice(mask)
        assert np.array_equal(enclosed, expected)
        pairs = np.unique(np.stack([regions[enclosed], labels[enclosed]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert sum(enclosed_in_slice(m)[0].any() for m in masks) >= 4


def test_empty_masks_label_nothing() -> None:
    for shape in ((0, 0, 0), (3, 0, 4)):
        labels, count = connected_components(np.zeros(shape, dtype=bool), 6)
        assert count == 0 and labels.shape == shape and labels.dtype.kind == "u"
        labels, count = connected_in_slice(np.zeros(shape, dtype=bool))
        assert count == 0 and labels.shape == shape
    enclosed, _ = enclosed_in_slice(np.zeros((2, 4, 4), dtype=bool))
    assert not enclosed.any() and enclosed.shape == (2, 4, 4)
