"""HU and geometry that several parts of the built-in segmenter share.

A value used by one part lives with that part; these are read by two or
more (airway and lungs; skeleton, vessel walls and body composition), and
each is written here once.
"""

from __future__ import annotations

from typing import Final

#: Lung parenchyma is -900..-700; a component with half its voxels above
#: this is not aerated lung.
LUNG_DENSITY_HU: Final = -600
#: Pure gas (bowel, stomach, outside air); healthy lung has almost none.
GAS_HU: Final = -950
#: Body-composition windows (Alberta protocol, as in most CT body
#: composition studies).
FAT_HU: Final = (-190, -30)
#: Bones (marrow filled) thinner than twice this nowhere are plaques or
#: calcified cartilage.
BONE_MIN_HALF_THICKNESS_MM: Final = 2.0
