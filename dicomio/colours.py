"""The display colour of every structure, from a published anatomical colour table.

A SEG carries each segment's Recommended Display CIELab Value (0062,000D),
and segnode's pictures (overlays, the PDF report) draw the same structure in
the same colour, so a reader sees one colour per structure in every viewer.
The colours are 3D Slicer's, as its TotalSegmentator extension shows
TotalSegmentator's output: a property type (with its laterality) coloured
in that extension's terminology takes that colour, any other the colour of
Slicer's DICOM terminology. Both are dcmqi segment-context files that give
``recommendedDisplayRGBValue`` per SNOMED CT type code and modifier:

* ``TotalSegmentator/Resources/SegmentationCategoryTypeModifier-TotalSegmentator.term.json``
  of lassoan/SlicerTotalSegmentator, commit 6a82370b44a864bc855fcde7abf683c5191df011;
* ``Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-DICOM-Master.json``
  of Slicer/Slicer, commit 583e9b37d50ead7daf7b783dce465ccaecec8809 (its
  colours equal those of SlicerGeneralAnatomy.json beside it, which goes
  back to the SPL anatomy atlas colours, wherever both list a code).

``structure_colours.json`` beside this module holds what segnode needs of
them. It was extracted once, by a script that flattened both files to
(type code, modifier code) -> RGB and looked up each property type of
dicomio/codes.py (and SCT 87784001 "Soft tissue") in them, first in the
TotalSegmentator file. It is keyed by the Segmented Property Type's code
value, then ``/`` and the laterality modifier's code value where the
laterality modifies the type (``64033007/7771000``, left kidney), or ``@``
and the Anatomic Region's code value where the type is a finding or tissue
located in a region (``55603005@71966008``, fat in subcutaneous tissue);
the region's laterality does not change the colour. Each entry keeps the
table's value (``table_rgb``); where the table has no entry for the code it
names the nearer concept whose colour it took (``table_code``, with
``nearest_because``), and where segnode's ``rgb`` departs from the table it
says why (``departure``).

Structures that touch must be told apart: tests/test_colours.py lists them
(anatomical neighbours by name, and the labels that touch in the real
TotalSegmentator label maps of ../shared/data) and requires a CIE76 Delta E
of at least 15 between their colours. The table colours many of them alike
(all thoracic vertebrae one colour, all ribs another, liver and stomach
3.7 apart), so the same one-off script moved the colours the least it
could: the smallest sum of squared moves in CIE L*a*b* (scipy's SLSQP, the
colours kept within sRGB) that puts every touching pair at least 16.5 apart
before rounding to integers, only colours in a too-close pair moving, a
left/right pair that the table colours alike moving as one. Each departure
names the neighbours it was too like and how far it moved.

Colours are looked up by code, not by segnode's structure name, so every
structure coded the same is drawn the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from dicomio.codes import StructureCode

__all__ = ["SOFT_TISSUE_WINDOW", "UnknownColourError", "colour_key", "structure_colour"]

#: (Window Center, Window Width) in HU of the CT under the structures in
#: every picture (the PDF's views, the overlay images): most structures
#: outlined are soft tissue and fat, and one window makes pictures of
#: different series comparable.
SOFT_TISSUE_WINDOW: Final = (40, 400)

_TABLE_FILE: Final = Path(__file__).with_name("structure_colours.json")

RGB = tuple[int, int, int]


class UnknownColourError(KeyError):
    """A structure whose codes the colour table does not contain."""

    def __init__(self, code: StructureCode, key: str) -> None:
        super().__init__(key)
        self.code = code
        self.key = key

    def __str__(self) -> str:
        return (
            f"no display colour for structure {self.code.name!r} "
            f"(Segmented Property Type {self.code.property_type.scheme} {self.code.property_type.value} "
            f"{self.code.property_type.meaning!r}, table key {self.key!r}): add it to {_TABLE_FILE}"
        )


def colour_key(code: StructureCode) -> str:
    """The key of `code` in the colour table: type code[/type modifier][@anatomic region]."""
    key = code.property_type.value
    modifier = code.segmented_property_type_modifier
    if modifier is not None:
        key += f"/{modifier.value}"
    if code.anatomic_region is not None:
        key += f"@{code.anatomic_region.value}"
    return key


def _load(path: Path) -> Mapping[str, RGB]:
    with path.open(encoding="utf-8") as handle:
        entries = json.load(handle)
    colours: dict[str, RGB] = {}
    for key, entry in entries.items():
        red, green, blue = (int(value) for value in entry["rgb"])
        if not all(0 <= value <= 255 for value in (red, green, blue)):
            raise ValueError(f"{path}: colour of {key!r} is not sRGB 0-255: {entry['rgb']}")
        colours[key] = (red, green, blue)
    return MappingProxyType(colours)


_COLOURS: Final = _load(_TABLE_FILE)


def structure_colour(code: StructureCode) -> RGB:
    """The sRGB colour (0-255 per channel) to draw `code`'s structure in.

    Raises
    ------
    UnknownColourError
        If the table has no colour for the structure's codes; there is no
        default, so that a new structure cannot silently share a colour.
    """
    key = colour_key(code)
    try:
        return _COLOURS[key]
    except KeyError:
        raise UnknownColourError(code, key) from None
