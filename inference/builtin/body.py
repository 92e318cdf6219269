"""The body outline and the air inside it, the first step of the built-in segmenter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from inference.builtin.components import connected_components
from inference.builtin.morphology import (
    Coarse,
    box_of,
    component_sizes,
    fill_in_slice,
    opened_in_slice,
    stepped_in_slice,
)
from inference.postprocess import Spacing

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


@dataclass(frozen=True, eq=False)
class Body:
    """The body outline within its bounding box.

    Attributes
    ----------
    box : tuple of slice
        The body's bounding box, grown by a voxel (within the CT).
    mask : numpy.ndarray
        The body's voxels in the box.
    """

    box: tuple[slice, ...]
    mask: np.ndarray


def body_mask(hu: np.ndarray, spacing: Spacing, coarse: Coarse) -> Body | None:
    """The body outline: soft-tissue parts, without table or outside air; None if there is none.

    The opening (on the coarse grid) detaches thin objects touching the
    patient; a part is kept when it is large and mostly soft tissue (table
    shells are dense, cushions are foam); the boundary is then taken back
    at full resolution from the tissue threshold, and holes (lungs, bowel
    gas) are filled slice by slice, in the box of the kept parts only.
    """
    tissue = hu > _TISSUE_HU
    coarse_spacing = coarse.spacing(spacing)
    coarse_tissue = coarse.mean(tissue)
    opened = opened_in_slice(coarse_tissue >= 0.5, coarse_spacing, _BODY_OPENING_MM)
    parts, count = connected_components(opened, 26)
    if count == 0:
        return None
    blocks = component_sizes(parts, count, opened)
    # Only the parts' blocks are weighed: outside them the mean is not needed.
    within = box_of(opened, margin=0)
    coarse_hu = coarse.mean_within(hu, within)
    soft = np.zeros(opened.shape, dtype=bool)
    soft[within] = (coarse_hu > _SOFT_TISSUE_HU[0]) & (coarse_hu < _SOFT_TISSUE_HU[1])
    volume_ml = blocks * float(np.prod(coarse_spacing)) / 1000.0
    keep = (volume_ml >= _BODY_PART_MIN_ML) & (component_sizes(parts, count, soft) * 2 >= blocks)
    keep[0] = False
    # Give back what the opening took, growing only through blocks with
    # tissue: an air gap (the table's pad) stops it, so no pocket of air
    # between skin and table is enclosed.
    steps = int(np.ceil(_BODY_OPENING_MM / min(coarse_spacing[1:]))) + 1
    regrown, allowed = keep[parts], coarse_tissue > 0
    for _ in range(steps):
        regrown |= stepped_in_slice(regrown, square=False, erode=False) & allowed
    if not regrown.any():
        return None
    # A block more on each side keeps the outside air around the body.
    around = box_of(regrown, margin=1)
    near = tuple(
        slice(b.start * f, min(b.stop * f, n))
        for b, f, n in zip(around, coarse.factors, hu.shape, strict=True)
    )
    outline = Coarse(coarse.factors, tissue[near].shape).up(regrown[around]) & tissue[near]
    if not outline.any():
        return None
    body = fill_in_slice(outline)
    box = box_of(body, margin=1)
    return Body(
        box=tuple(slice(n.start + b.start, n.start + b.stop) for n, b in zip(near, box, strict=True)),
        mask=body[box],
    )


@dataclass(frozen=True, eq=False)
class InternalAir:
    """Air inside the body, with the 3-D connected components it was found in.

    The lungs are among these components, so they are labelled once.

    Attributes
    ----------
    mask : numpy.ndarray
        The internal air.
    components : numpy.ndarray
        Label of each air voxel's component (6-neighbour), 0 elsewhere;
        the outside air's components keep theirs (off the mask).
    count : int
        Highest label.
    """

    mask: np.ndarray
    components: np.ndarray
    count: int


def internal_air(hu: np.ndarray, body: np.ndarray) -> InternalAir:
    """Air inside the body that does not reach its surface: lungs, airway, bowel gas.

    Air touching the surface is outside air caught in a fold, between the
    skin and a sheet or cushion, or at a body opening; lungs, trachea and
    bowel never touch the skin.
    """
    air = body & (hu < _AIR_HU)
    components, count = connected_components(air, 6)
    surface = body & ~stepped_in_slice(body, square=False, erode=True)
    inside = np.ones(count + 1, dtype=bool)
    inside[components[surface & air]] = False
    inside[0] = False
    return InternalAir(inside[components], components, count)
