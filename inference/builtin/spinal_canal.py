"""The spinal canal's centre in every slice.

The skeleton uses it to find the arteries that lie on the spine, body
composition to place the back muscles and keep the canal out of muscle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from inference.builtin.components import connected_in_slice
from inference.builtin.morphology import closed_in_slice, component_sizes
from inference.postprocess import HoleFilling, Spacing, fill_holes

#: The spinal canal: its cross-section once gaps in its bony ring up to
#: twice _CANAL_BRIDGE_MM are bridged (adults: 1.5 to 3 cm2 before), how
#: far its centre may lie from the body's midline, and its radius (the
#: thoracic canal is 15-17 mm across).
_CANAL_CM2: Final = (0.5, 5.0)
_CANAL_BRIDGE_MM: Final = 4.0
_CANAL_MIDLINE_MM: Final = 15.0
CANAL_RADIUS_MM: Final = 8.0


@dataclass(frozen=True, eq=False)
class SpinalCanal:
    """The spinal canal's centre in every slice: a row and a column (may be fractional)."""

    rows: np.ndarray
    columns: np.ndarray

    def region(
        self, shape: tuple[int, ...], spacing: Spacing, from_mm: float, to_mm: float, half_width_mm: float
    ) -> np.ndarray:
        """The voxels from `from_mm` to `to_mm` behind the centre (negative: in
        front of it) and at most `half_width_mm` to either side of it."""
        behind_mm = (np.arange(shape[1])[None, :] - self.rows[:, None]) * spacing[1]
        aside_mm = np.abs(np.arange(shape[2])[None, :] - self.columns[:, None]) * spacing[2]
        along = (behind_mm >= from_mm) & (behind_mm <= to_mm)
        return along[:, :, None] & (aside_mm <= half_width_mm)[:, None, :]


def spinal_canal(bone: np.ndarray, midline: np.ndarray, spacing: Spacing) -> SpinalCanal | None:
    """The spinal canal's centre, or None where no vertebra encloses it.

    In a slice, the canal is the most posterior region near the midline that
    the bone encloses once gaps of up to 2x _CANAL_BRIDGE_MM are bridged (a
    calcified aorta lies in front of the spine). Where the arch is open, at
    a disc or between the laminae, or thin cortex is lost to partial volume,
    the centre is interpolated from the slices that show it. Only columns
    within 2x _CANAL_MIDLINE_MM of the midline are searched: the bony ring
    around such a canal lies there.
    """
    reach = int(np.ceil(2 * _CANAL_MIDLINE_MM / spacing[2]))
    first = max(int(midline.min()) - reach, 0)
    band = bone[:, :, first : int(midline.max()) + reach + 1]
    bridged = closed_in_slice(band, spacing, _CANAL_BRIDGE_MM)
    holes, count = connected_in_slice(fill_holes(bridged, HoleFilling.SLICE) & ~bridged)
    if count == 0:
        return None
    z, rows, columns = np.array(ndi.center_of_mass(holes > 0, holes, np.arange(1, count + 1))).T
    columns += first
    area_cm2 = component_sizes(holes, count, holes > 0)[1:] * spacing[1] * spacing[2] / 100.0
    z = np.rint(z).astype(int)
    fits = (
        (area_cm2 >= _CANAL_CM2[0])
        & (area_cm2 <= _CANAL_CM2[1])
        & (np.abs(columns - midline[z]) * spacing[2] <= _CANAL_MIDLINE_MM)
    )
    found = np.unique(z[fits])
    if found.size == 0:
        return None
    chosen = []
    for k in found:
        in_slice = np.flatnonzero(fits & (z == k))
        chosen.append(in_slice[np.argmax(rows[in_slice])])
    slices = np.arange(bone.shape[0])
    return SpinalCanal(
        rows=np.interp(slices, found, rows[chosen]), columns=np.interp(slices, found, columns[chosen])
    )
