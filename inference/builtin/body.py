"""The body outline and the air inside it, the first step of the built-in segmenter."""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy import ndimage as ndi

from inference.builtin.morphology import FULL, IN_SLICE, Coarse, component_sizes, opened_in_slice
from inference.postprocess import HoleFilling, Spacing, fill_holes

#: Halfway between air (-1000) and fat (-100): the skin and lung boundaries.
_AIR_HU: Final = -400
#: Tissue threshold for the body outline; lower than _AIR_HU so that lung
#: parenchyma at the body's edge never cuts the outline.
_TISSUE_HU: Final = -500
#: A part of the body is at least half soft tissue (fat to muscle and
#: organs); table shells (carbon fibre, 200-500 HU) and foam are not.
_SOFT_TISSUE_HU: Final = (-250, 150)
#: Breaks table shells and cushions up to about 2x this thick from the body.
_BODY_OPENING_MM: Final = 4.0
#: Smallest separate body part kept (a forearm in a short scan is larger).
_BODY_PART_MIN_ML: Final = 20.0


def body_mask(hu: np.ndarray, spacing: Spacing, coarse: Coarse) -> np.ndarray:
    """The body outline: soft-tissue parts, without table or outside air.

    The opening (on the coarse grid) detaches thin objects touching the
    patient; a part is kept when it is large and mostly soft tissue (table
    shells are dense, cushions are foam); the boundary is then taken back
    at full resolution from the tissue threshold, and holes (lungs, bowel
    gas) are filled slice by slice.
    """
    tissue = hu > _TISSUE_HU
    coarse_spacing = coarse.spacing(spacing)
    coarse_tissue = coarse.mean(tissue)
    opened = opened_in_slice(coarse_tissue >= 0.5, coarse_spacing, _BODY_OPENING_MM)
    parts, count = ndi.label(opened, structure=FULL)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    blocks = component_sizes(parts, count, opened)
    coarse_hu = coarse.mean(hu)
    soft = (coarse_hu > _SOFT_TISSUE_HU[0]) & (coarse_hu < _SOFT_TISSUE_HU[1])
    volume_ml = blocks * float(np.prod(coarse_spacing)) / 1000.0
    keep = (volume_ml >= _BODY_PART_MIN_ML) & (component_sizes(parts, count, soft) * 2 >= blocks)
    keep[0] = False
    # Give back what the opening took, growing only through blocks with
    # tissue: an air gap (the table's pad) stops it, so no pocket of air
    # between skin and table is enclosed.
    steps = int(np.ceil(_BODY_OPENING_MM / min(coarse_spacing[1:]))) + 1
    regrown = ndi.binary_dilation(keep[parts], IN_SLICE, iterations=steps, mask=coarse_tissue > 0)
    return fill_holes(coarse.up(regrown) & tissue, HoleFilling.SLICE)


def internal_air(hu: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Air inside the body that does not reach its surface: lungs, airway, bowel gas.

    Air touching the surface is outside air caught in a fold, between the
    skin and a sheet or cushion, or at a body opening; lungs, trachea and
    bowel never touch the skin.
    """
    air = body & (hu < _AIR_HU)
    components, count = ndi.label(air)
    surface = body & ~ndi.binary_erosion(body, IN_SLICE)
    outside = np.zeros(count + 1, dtype=bool)
    outside[components[surface & air]] = True
    outside[0] = True
    return ~outside[components]
