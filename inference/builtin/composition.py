"""Body composition: subcutaneous fat, visceral fat and skeletal muscle by compartment."""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy import ndimage as ndi

from inference.builtin.components import connected_in_slice
from inference.builtin.constants import FAT_HU
from inference.builtin.morphology import (
    Coarse,
    body_midline,
    closed_in_slice,
    component_sizes,
    eroded_in_slice,
)
from inference.builtin.spinal_canal import CANAL_RADIUS_MM, SpinalCanal, spinal_canal
from inference.postprocess import Spacing

#: The body-composition window of muscle (Alberta protocol), beside FAT_HU.
_MUSCLE_HU: Final = (-29, 150)
#: Skin with its partial volume: at least two blocks of the coarse grid.
_SKIN_MM: Final = 5.0
#: Gaps in the muscle wall (linea alba, between muscles) up to twice this
#: are closed, so that subcutaneous fat does not leak into the abdomen.
_WALL_GAP_MM: Final = 6.0
#: Thickness of the muscle wall under the fascia. The rectus abdominis is
#: about 10 mm thick, the three flank muscles together 15-20 mm; the thin
#: end, because organs against the wall (liver, spleen, colon) are counted
#: as muscle within it, a larger error than a thick flank's deepest layer.
_WALL_DEPTH_MM: Final = 15.0
#: The back muscles (erector spinae, multifidus) lie behind the spinal
#: canal, out to the angles of the ribs, about this far from it.
_BACK_HALF_WIDTH_MM: Final = 70.0
#: The trunk's cross-section is at least this multiple of any other part's
#: in the slice; where it is not (thighs), there is no visceral space.
_TRUNK_DOMINANCE: Final = 2.0


def body_composition(
    hu: np.ndarray,
    body: np.ndarray,
    skeleton: np.ndarray,
    taken: np.ndarray,
    lungs: np.ndarray,
    spacing: Spacing,
    coarse: Coarse,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subcutaneous fat, visceral fat and skeletal muscle.

    The compartments are drawn on the coarse grid: the subcutaneous one is
    reached from the skin without crossing the muscle wall (non-fat tissue
    other than skin, its gaps closed); under it, the trunk's visceral space
    (see :func:`_visceral_space`) holds the organs, bowel, vessels and the
    mediastinum, and the rest is the muscle compartment: the wall, the back
    muscles, the limbs. Visceral fat is the fat of the visceral space below
    the lungs' top and outside the space between them (see :func:`_cavity`).
    The HU windows then apply at full resolution. Fat in the muscle
    compartment (intermuscular) is neither subcutaneous nor visceral; the
    spinal canal is in neither.

    Returns
    -------
    tuple of numpy.ndarray
        Subcutaneous fat, visceral fat, skeletal muscle; none overlaps `taken`.
    """
    coarse_spacing = coarse.spacing(spacing)
    coarse_body = coarse.mean(body) >= 0.5
    skin = coarse_body & ~eroded_in_slice(coarse_body, coarse_spacing, _SKIN_MM)
    firm = (coarse.mean(body & (hu > FAT_HU[1])) >= 0.5) & ~skin
    barrier = closed_in_slice(firm, coarse_spacing, _WALL_GAP_MM)
    subcutaneous = _reached_from(skin & ~barrier, coarse_body & ~barrier)
    inside = coarse_body & ~subcutaneous
    canal = spinal_canal(coarse.mean(skeleton) >= 0.5, body_midline(coarse_body), coarse_spacing)
    visceral = _visceral_space(inside & _trunk(coarse_body), canal, coarse_spacing)
    cavity = visceral & _cavity(coarse.mean(lungs) > 0)
    muscle_space = inside & ~visceral
    if canal is not None:
        radius = CANAL_RADIUS_MM
        muscle_space &= ~canal.region(inside.shape, coarse_spacing, -radius, radius, radius)
    # The three compartments are disjoint: one coarse map of them goes to full resolution.
    compartments = np.zeros(inside.shape, dtype=np.uint8)
    for value, space in enumerate((subcutaneous, cavity, muscle_space), start=1):
        compartments[space] = value
    compartment = coarse.up(compartments)
    free = body & ~taken
    fat = free & (hu >= FAT_HU[0]) & (hu <= FAT_HU[1])
    lean = free & (hu >= _MUSCLE_HU[0]) & (hu <= _MUSCLE_HU[1])
    return fat & (compartment == 1), fat & (compartment == 2), lean & (compartment == 3)


def _reached_from(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The regions of `allowed` (connected within a slice) that contain a seed."""
    regions, count = connected_in_slice(allowed)
    reached = np.zeros(count + 1, dtype=bool)
    reached[regions[seeds & allowed]] = True
    reached[0] = False
    return reached[regions]


def _visceral_space(trunk: np.ndarray, canal: SpinalCanal | None, spacing: Spacing) -> np.ndarray:
    """The trunk's visceral space: deeper than the muscle wall, outside the back muscles.

    `trunk` is the trunk under its subcutaneous fat. The wall (abdominal
    muscles; the chest wall with the ribs) is the _WALL_DEPTH_MM under it;
    the back muscles fill the space behind the spinal canal's centre,
    within _BACK_HALF_WIDTH_MM of it, however deep they reach. What
    remains, thoracic, abdominal and pelvic viscera, mediastinum and
    retroperitoneum, holds no skeletal muscle but the psoas and the
    diaphragm's crura.
    """
    deep = eroded_in_slice(trunk, spacing, _WALL_DEPTH_MM)
    if canal is None:
        return deep
    return deep & ~canal.region(trunk.shape, spacing, 0.0, np.inf, _BACK_HALF_WIDTH_MM)


def _cavity(lungs: np.ndarray) -> np.ndarray:
    """Where the visceral space is abdominopelvic: below the lungs' top, not between the lungs.

    The thoracic cavity is approximated by the rows and columns spanned by
    lung, which covers the mediastinum.
    """
    allowed = np.ones(lungs.shape, dtype=bool)
    lung_slices = np.flatnonzero(lungs.any(axis=(1, 2)))
    if lung_slices.size:
        allowed[lung_slices.max() + 1 :] = False
        allowed &= ~(_spanned(lungs, axis=1) | _spanned(lungs, axis=2))
    return allowed


def _trunk(body: np.ndarray) -> np.ndarray:
    """In each slice, the body part that dominates all others (none where two are alike)."""
    parts, count = connected_in_slice(body)
    sizes = component_sizes(parts, count, body)
    by_slice: dict[int, list[int]] = {}
    for index, box in enumerate(ndi.find_objects(parts), start=1):
        by_slice.setdefault(box[0].start, []).append(index)
    trunk = np.zeros(count + 1, dtype=bool)
    for indices in by_slice.values():
        indices.sort(key=lambda i: -sizes[i])
        if len(indices) == 1 or sizes[indices[0]] >= _TRUNK_DOMINANCE * sizes[indices[1]]:
            trunk[indices[0]] = True
    return trunk[parts]


def _spanned(mask: np.ndarray, axis: int) -> np.ndarray:
    """Voxels with `mask` somewhere on both sides of them along `axis` (or in them).

    Those from the first to the last `mask` voxel of their line, compared
    in the narrowest integers that hold a position: 3 times faster than
    cumulative maxima.
    """
    length = mask.shape[axis]
    dtype = np.min_scalar_type(length)
    first = np.where(mask.any(axis=axis), np.argmax(mask, axis=axis), length).astype(dtype)
    last = (length - 1 - np.argmax(np.flip(mask, axis=axis), axis=axis)).astype(dtype)
    position = np.arange(length, dtype=dtype).reshape([-1 if a == axis else 1 for a in range(mask.ndim)])
    spanned = position >= np.expand_dims(first, axis)
    spanned &= position <= np.expand_dims(last, axis)
    return spanned
