"""Left and right lung: large aerated components, split at the patient's midline."""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy import ndimage as ndi

from inference.builtin.airway import Airway
from inference.builtin.body import InternalAir
from inference.builtin.components import connected_components
from inference.builtin.constants import GAS_HU, LUNG_DENSITY_HU
from inference.builtin.morphology import Coarse, box_of, component_sizes, fill_in_slice
from inference.postprocess import Spacing

#: Healthy lung has almost no pure gas (below GAS_HU): at most this share.
_GAS_MAX_FRACTION: Final = 0.3
#: Smallest lung component: the lung bases in a scan's first slices; bowel
#: gas pockets of lung-like density are smaller.
_LUNG_MIN_ML: Final = 10.0
#: A lung component with at least this share on both sides of the midline
#: holds both lungs (joined at the anterior junction or the carina).
_BOTH_SIDES_FRACTION: Final = 0.1
#: How deep the erosion that separates joined lungs may go.
_LUNG_SPLIT_MAX_MM: Final = 20.0


def lung_masks(
    hu: np.ndarray,
    air: InternalAir,
    airway: Airway,
    spacing: Spacing,
    midline: np.ndarray,
    coarse: Coarse,
) -> tuple[np.ndarray, np.ndarray]:
    """Left and right lung, vessels inside them included.

    A 3-D air component (the airway taken out) is lung if it is large and
    has lung density: half its voxels at or below LUNG_DENSITY_HU but few
    of pure gas. Bowel and stomach gas is mostly pure gas; small pockets of
    partial volume are below the size limit. A large component that a main
    bronchus opens into is lung whatever its share of gas (emphysema).
    """
    components, count = _without_airway(air, airway)
    candidates = air.mask & ~airway.mask
    # Each component's voxels and those of lung density and of gas, from one gathering.
    labels, values = components[candidates], hu[candidates]
    voxels = np.bincount(labels, minlength=count + 1)
    dense = np.bincount(labels[values <= LUNG_DENSITY_HU], minlength=count + 1) / np.maximum(voxels, 1)
    gas = np.bincount(labels[values < GAS_HU], minlength=count + 1) / np.maximum(voxels, 1)
    volume_ml = voxels * float(np.prod(spacing)) / 1000.0
    ventilated = np.zeros(count + 1, dtype=bool)
    if airway.carina is not None:
        box = box_of(airway.bronchi, margin=1)
        ventilated[components[box][ndi.binary_dilation(airway.bronchi[box])]] = True
    lung = (volume_ml >= _LUNG_MIN_ML) & (dense >= 0.5) & ((gas <= _GAS_MAX_FRACTION) | ventilated)
    lung[0] = False
    left, right = _split_sides(components, np.flatnonzero(lung), midline, coarse, spacing)
    return fill_in_slice(left), fill_in_slice(right)


def _without_airway(air: InternalAir, airway: Airway) -> tuple[np.ndarray, int]:
    """The air's components with the airway taken out, and the highest label.

    Only the components that the airway runs through change: what is left
    of them is labelled anew, within their bounding box. The outside air's
    components keep their labels (off the internal air).
    """
    if airway.carina is None:
        return air.components, air.count
    crossed = np.zeros(air.count + 1, dtype=bool)
    crossed[air.components[airway.mask]] = True
    crossed[0] = False
    region = crossed[air.components]
    box = box_of(region, margin=0)
    pieces, count = connected_components(region[box] & ~airway.mask[box], 6)
    # Wide enough for the new labels above the air's (cc3d's may be 16-bit).
    components = air.components.astype(np.uint32)
    components[box][region[box]] = 0
    components[box][pieces > 0] = pieces[pieces > 0].astype(np.uint32) + air.count
    return components, air.count + count


def _split_sides(
    components: np.ndarray, lungs: np.ndarray, midline: np.ndarray, coarse: Coarse, spacing: Spacing
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each lung component (label values `lungs` of `components`) to
    the patient's left or right.

    A component almost entirely on one side of the midline goes to that
    side; one with a real share on both holds both lungs and is separated
    where it is thinnest (see :func:`_separate`).
    """
    left = np.zeros(components.shape, dtype=bool)
    right = np.zeros(components.shape, dtype=bool)
    for index in lungs:
        # A lung or two: one comparison each costs less than every label's box.
        whole = components == index
        box = box_of(whole, margin=0)
        mask = whole[box]
        on_left = _left_of_midline(mask, box, midline)
        share = np.count_nonzero(mask & on_left) / np.count_nonzero(mask)
        if share >= 1 - _BOTH_SIDES_FRACTION:
            left[box] |= mask
        elif share <= _BOTH_SIDES_FRACTION:
            right[box] |= mask
        else:
            mask_left = _separate(mask, on_left, coarse, spacing)
            left[box] |= mask_left
            right[box] |= mask & ~mask_left
    return left, right


def _left_of_midline(mask: np.ndarray, box: tuple[slice, ...], midline: np.ndarray) -> np.ndarray:
    """Voxels of a box on the patient's left (canonical columns grow to the left)."""
    columns = np.arange(box[2].start, box[2].stop)[None, None, :]
    return np.broadcast_to(columns > midline[box[0]][:, None, None], mask.shape)


def _separate(mask: np.ndarray, on_left: np.ndarray, coarse: Coarse, spacing: Spacing) -> np.ndarray:
    """The left part of a component that holds both lungs.

    On the coarse grid the component is eroded step by step until it falls
    apart into pieces on either side (the junction is its thinnest part);
    every voxel then goes to the side of the nearest piece. If it has not
    separated within _LUNG_SPLIT_MAX_MM, the midline decides.
    """
    grid = Coarse(coarse.factors, mask.shape)
    small = grid.mean(mask) >= 0.5
    small_left = grid.mean(on_left) >= 0.5
    step_mm = min(grid.spacing(spacing))
    seeds = small
    for _ in range(int(_LUNG_SPLIT_MAX_MM // step_mm)):
        seeds = ndi.binary_erosion(seeds)
        pieces, count = connected_components(seeds, 26)
        if count == 0:
            break
        sizes = component_sizes(pieces, count, seeds)
        is_left = component_sizes(pieces, count, seeds & small_left) * 2 > sizes
        left_share = sizes[is_left].sum() / sizes[1:].sum()
        if count >= 2 and _BOTH_SIDES_FRACTION <= left_share <= 1 - _BOTH_SIDES_FRACTION:
            nearest = ndi.distance_transform_edt(
                ~seeds, sampling=grid.spacing(spacing), return_distances=False, return_indices=True
            )
            side = is_left[pieces[tuple(nearest)]]
            return grid.up(side) & mask
    return mask & on_left
