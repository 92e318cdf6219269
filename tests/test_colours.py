"""The colour table (dicomio/colours.py and its structure_colours.json).

Structures that touch must be told apart in a picture: their colours differ
by a CIE76 Delta E of at least MIN_DELTA_E. The touching pairs come from
anatomy (below, so that the rule is always checked) and from the real
TotalSegmentator label maps of ../shared/data (6-neighbourhood).
"""

from __future__ import annotations

import json
import math
from functools import cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from highdicom.color import CIELabColor

from dicomio.codes import (
    LEFT,
    STRUCTURE_CODES,
    TISSUE,
    Concept,
    StructureCode,
    structure_code,
)
from dicomio.colours import UnknownColourError, colour_key, structure_colour
from tests.conftest import SHARED_DATA

MIN_DELTA_E = 15.0
TABLE_FILE = Path(__file__).resolve().parent.parent / "dicomio" / "structure_colours.json"

_VERTEBRAE = ["vertebrae_S1"] + [f"vertebrae_L{n}" for n in range(5, 0, -1)] + [
    f"vertebrae_T{n}" for n in range(12, 0, -1)
] + [f"vertebrae_C{n}" for n in range(7, 0, -1)]


def _skeleton_pairs() -> list[tuple[str, str]]:
    """Consecutive vertebrae and ribs; each rib with the vertebrae it articulates with.

    Ribs 2-9 articulate with their own thoracic vertebra and the one above
    (costovertebral joints), ribs 1 and 10-12 with their own only.
    """
    pairs = list(pairwise(_VERTEBRAE))
    pairs += [("vertebrae_S1", "sacrum"), ("vertebrae_L5", "sacrum")]
    for side in ("left", "right"):
        ribs = [f"rib_{side}_{n}" for n in range(1, 13)]
        pairs += list(pairwise(ribs))
        for n, rib in enumerate(ribs, 1):
            pairs.append((rib, f"vertebrae_T{n}"))
            if 2 <= n <= 9:
                pairs.append((rib, f"vertebrae_T{n - 1}"))
        pairs += [
            (f"rib_{side}_1", "sternum"),
            (f"rib_{side}_1", f"clavicula_{side}"),
            (f"clavicula_{side}", "sternum"),
            (f"clavicula_{side}", f"scapula_{side}"),
            (f"scapula_{side}", f"humerus_{side}"),
            (f"hip_{side}", "sacrum"),
            (f"hip_{side}", f"femur_{side}"),
        ]
    return pairs


def _paired(stem_a: str, stem_b: str) -> list[tuple[str, str]]:
    return [(f"{stem_a}_{side}", f"{stem_b}_{side}") for side in ("left", "right")]


#: Structures that touch in the body, by name.
ANATOMICAL_NEIGHBOURS: list[tuple[str, str]] = [
    *_skeleton_pairs(),
    # Abdomen.
    ("liver", "stomach"), ("liver", "kidney_right"), ("liver", "gallbladder"), ("liver", "duodenum"),
    ("liver", "inferior_vena_cava"), ("liver", "portal_vein_and_splenic_vein"), ("liver", "colon"),
    ("liver", "adrenal_gland_right"), ("liver", "heart"), ("liver", "lung_lower_lobe_right"),
    ("spleen", "stomach"), ("spleen", "kidney_left"), ("spleen", "pancreas"), ("spleen", "colon"),
    ("stomach", "pancreas"), ("stomach", "duodenum"), ("stomach", "esophagus"), ("stomach", "colon"),
    ("pancreas", "duodenum"), ("pancreas", "portal_vein_and_splenic_vein"), ("pancreas", "small_bowel"),
    ("duodenum", "small_bowel"), ("duodenum", "colon"), ("duodenum", "kidney_right"),
    ("small_bowel", "colon"), ("small_bowel", "urinary_bladder"), ("colon", "urinary_bladder"),
    ("colon", "kidney_left"), ("colon", "kidney_right"), ("urinary_bladder", "prostate"),
    ("gallbladder", "duodenum"), ("gallbladder", "colon"),
    *_paired("kidney", "adrenal_gland"), *_paired("kidney", "iliopsoas"), ("kidney_left", "kidney_cyst_left"),
    ("kidney_right", "kidney_cyst_right"),
    # Chest and neck.
    ("lung_upper_lobe_left", "lung_lower_lobe_left"), ("lung_upper_lobe_right", "lung_lower_lobe_right"),
    ("lung_upper_lobe_right", "lung_middle_lobe_right"), ("lung_middle_lobe_right", "lung_lower_lobe_right"),
    ("heart", "lung_upper_lobe_left"), ("heart", "lung_lower_lobe_left"), ("heart", "lung_middle_lobe_right"),
    ("heart", "aorta"), ("heart", "pulmonary_vein"), ("heart", "atrial_appendage_left"),
    ("heart", "superior_vena_cava"), ("heart", "inferior_vena_cava"), ("heart", "esophagus"),
    ("aorta", "esophagus"), ("aorta", "brachiocephalic_trunk"), ("aorta", "subclavian_artery_left"),
    ("aorta", "common_carotid_artery_left"), ("aorta", "inferior_vena_cava"), ("aorta", "pulmonary_vein"),
    *_paired("iliac_artery", "iliac_vena"), ("aorta", "iliac_artery_left"), ("aorta", "iliac_artery_right"),
    ("inferior_vena_cava", "iliac_vena_left"), ("inferior_vena_cava", "iliac_vena_right"),
    *(("brachiocephalic_trunk", name) for name in (
        "subclavian_artery_right", "common_carotid_artery_right", "brachiocephalic_vein_left")),
    ("superior_vena_cava", "brachiocephalic_vein_left"), ("superior_vena_cava", "brachiocephalic_vein_right"),
    ("superior_vena_cava", "aorta"), ("pulmonary_vein", "atrial_appendage_left"),
    ("trachea", "esophagus"), ("trachea", "thyroid_gland"), ("esophagus", "thyroid_gland"),
    ("thyroid_gland", "common_carotid_artery_left"), ("thyroid_gland", "common_carotid_artery_right"),
    ("spinal_cord", "vertebrae_T12"), ("spinal_cord", "vertebrae_L1"), ("spinal_cord", "vertebrae_C2"),
    ("brain", "skull"), ("skull", "vertebrae_C1"),
    # Muscles and their bones.
    *_paired("gluteus_maximus", "gluteus_medius"), *_paired("gluteus_medius", "gluteus_minimus"),
    *_paired("gluteus_minimus", "hip"), *_paired("gluteus_medius", "hip"), *_paired("gluteus_maximus", "hip"),
    *_paired("iliopsoas", "hip"), *_paired("iliopsoas", "femur"), *_paired("gluteus_minimus", "iliopsoas"),
    *_paired("gluteus_maximus", "femur"), *_paired("gluteus_medius", "femur"),
    *_paired("autochthon", "gluteus_maximus"), *_paired("autochthon", "iliopsoas"),
    ("autochthon_left", "sacrum"), ("autochthon_right", "sacrum"), ("autochthon_left", "vertebrae_L3"),
    ("autochthon_left", "vertebrae_T8"), ("autochthon_left", "rib_left_8"),
    ("iliopsoas_left", "vertebrae_L3"),
    # segnode's built-in segmenter: its label map's neighbours.
    ("skeleton", "skeletal_muscle"), ("subcutaneous_fat", "skeletal_muscle"),
    ("visceral_fat", "skeletal_muscle"),
    ("subcutaneous_fat", "visceral_fat"), ("other_soft_tissue", "subcutaneous_fat"),
    ("other_soft_tissue", "visceral_fat"), ("other_soft_tissue", "skeletal_muscle"),
    ("other_soft_tissue", "skeleton"), ("other_soft_tissue", "lung_left"),
    ("other_soft_tissue", "lung_right"),
    ("other_soft_tissue", "airway"), ("airway", "lung_left"), ("airway", "lung_right"),
    ("skeleton", "lung_left"), ("skeleton", "lung_right"), ("skeleton", "subcutaneous_fat"),
    ("skeleton", "visceral_fat"),
]

#: Published colours, read by hand at the line given of the source files at the commits that
#: dicomio/colours.py names: "DICOM-Master" is Slicer's SegmentationCategoryTypeModifier-DICOM-Master.json,
#: "TotalSegmentator" SlicerTotalSegmentator's SegmentationCategoryTypeModifier-TotalSegmentator.term.json.
PUBLISHED = {
    "10200004": ("DICOM-Master", [221, 130, 101]),  # Liver, line 9170
    "64033007/24028007": ("DICOM-Master", [185, 102, 83]),  # Kidney, modifier Right, line 9276
    "23215003": ("TotalSegmentator", [226, 202, 134]),  # T12 vertebra, line 1365
    "69748006": ("TotalSegmentator", [220, 160, 30]),  # Thyroid, line 2092
    "64131007": ("TotalSegmentator", [0, 151, 206]),  # Inferior vena cava, line 390
}


def _table() -> dict[str, dict]:
    return json.loads(TABLE_FILE.read_text(encoding="utf-8"))


def delta_e(first: tuple[int, int, int] | list[int], second: tuple[int, int, int] | list[int]) -> float:
    """CIE76 colour difference: the Euclidean distance in CIE L*a*b*."""
    a, b = CIELabColor.from_rgb(*first), CIELabColor.from_rgb(*second)
    return math.dist((a.l_star, a.a_star, a.b_star), (b.l_star, b.a_star, b.b_star))


def _too_alike(pairs: list[tuple[str, str]]) -> list[str]:
    found = []
    for a, b in pairs:
        difference = delta_e(structure_colour(structure_code(a)), structure_colour(structure_code(b)))
        if difference < MIN_DELTA_E:
            found.append(f"{a} / {b}: Delta E {difference:.1f}")
    return found


def test_every_structure_has_a_colour() -> None:
    for code in STRUCTURE_CODES.values():
        colour = structure_colour(code)
        assert len(colour) == 3, code.name
        assert all(isinstance(value, int) and 0 <= value <= 255 for value in colour), code.name


def test_unknown_code_raises_naming_it() -> None:
    appendix = StructureCode("appendix", "Appendix", TISSUE, Concept("SCT", "66754008", "Appendix"))
    with pytest.raises(UnknownColourError, match="66754008") as raised:
        structure_colour(appendix)
    assert "appendix" in str(raised.value)
    # A known type with a laterality the table lacks for it is unknown too, not the type's colour.
    left_liver = StructureCode("liver_left", "Left liver", TISSUE, Concept("SCT", "10200004", "Liver"), LEFT)
    with pytest.raises(UnknownColourError, match="10200004/7771000"):
        structure_colour(left_liver)


def test_colour_follows_the_code_not_the_name() -> None:
    kidney = structure_code("kidney_left")
    renamed = StructureCode("renal", "Renal", kidney.category, kidney.property_type, kidney.laterality)
    assert structure_colour(renamed) == structure_colour(kidney)
    # Fat is coloured by where it lies: the two compartments touch and differ.
    assert colour_key(structure_code("subcutaneous_fat")) == "55603005@71966008"
    subcutaneous, visceral = structure_code("subcutaneous_fat"), structure_code("visceral_fat")
    assert structure_colour(subcutaneous) != structure_colour(visceral)


def test_left_and_right_share_a_colour_where_the_table_does() -> None:
    table = _table()
    shared = different = 0
    for name, code in STRUCTURE_CODES.items():
        if not name.endswith("_left") or name.replace("_left", "_right") not in STRUCTURE_CODES:
            continue
        right = STRUCTURE_CODES[name.replace("_left", "_right")]
        published = (table[colour_key(code)]["table_rgb"], table[colour_key(right)]["table_rgb"])
        if published[0] == published[1]:
            assert structure_colour(code) == structure_colour(right), name
            shared += 1
        else:
            assert structure_colour(code) != structure_colour(right), name
            different += 1
    assert shared > 10 and different >= 2  # e.g. the common carotid arteries differ


def test_published_colours_are_the_tables() -> None:
    table = _table()
    for key, (source, rgb) in PUBLISHED.items():
        assert (table[key]["table"], table[key]["table_rgb"]) == (source, rgb), key


def test_every_departure_from_the_table_is_recorded_and_needed() -> None:
    """An entry whose colour is not the table's says why, and its table colour broke the neighbour rule."""
    table = _table()
    keys = {colour_key(code) for code in STRUCTURE_CODES.values()}
    assert set(table) == keys, "entries without a structure, or structures without an entry"
    by_key: dict[str, list[str]] = {}
    for name, code in STRUCTURE_CODES.items():
        by_key.setdefault(colour_key(code), []).append(name)
    for key, entry in table.items():
        assert ("table_code" in entry) == ("nearest_because" in entry), key
        if entry["rgb"] == entry["table_rgb"]:
            assert "departure" not in entry, key
            continue
        assert entry.get("departure"), f"{key}: colour departs from the table without a reason"
        # A left/right pair the table colours alike moves together, for either side's neighbours.
        names = {swapped for name in by_key[key] for swapped in (name, _other_side(name))}
        needed = [
            (a, b) for a, b in [*ANATOMICAL_NEIGHBOURS, *_shared_pairs()]
            if (a in names or b in names)
            and delta_e(*(table[colour_key(structure_code(n))]["table_rgb"] for n in (a, b))) < MIN_DELTA_E
        ]
        assert needed, f"{key}: departs from the table, but its table colour had no too-similar neighbour"


def test_anatomical_neighbours_are_distinguishable() -> None:
    assert not _too_alike(ANATOMICAL_NEIGHBOURS)


def _other_side(name: str) -> str:
    if name.endswith("_left") or "_left_" in name:
        return name.replace("_left", "_right")
    return name.replace("_right", "_left")


def _label_map_pairs(labels: np.ndarray, names: dict[int, str]) -> set[tuple[str, str]]:
    """Pairs of labels with 6-connected neighbouring voxels."""
    pairs: set[tuple[str, str]] = set()
    for axis in range(3):
        moved = np.moveaxis(labels, axis, 0)
        first, second = moved[:-1].ravel(), moved[1:].ravel()
        touching = (first != second) & (first > 0) & (second > 0)
        for a, b in set(zip(first[touching].tolist(), second[touching].tolist(), strict=True)):
            pairs.add(tuple(sorted((names[a], names[b]))))
    return pairs


@cache
def _shared_pairs() -> list[tuple[str, str]]:
    """Touching pairs of ../shared/data's reference label maps; none where the data is absent."""
    names_file = SHARED_DATA / "totalseg_v2_labels.json"
    if not names_file.exists():
        return []
    names = {int(value): name for value, name in json.loads(names_file.read_text(encoding="utf-8")).items()}
    pairs: set[tuple[str, str]] = set()
    for path in (
        SHARED_DATA / "ct-abdomen-siemens" / "reference_totalseg_v2.nii.gz",
        SHARED_DATA / "ct-torso-3mm" / "reference_totalseg_v2_30slices.nii.gz",
    ):
        pairs |= _label_map_pairs(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), names)
    return sorted(pairs)


@pytest.mark.skipif(
    not (SHARED_DATA / "totalseg_v2_labels.json").exists(),
    reason=f"reference label maps not found at {SHARED_DATA}",
)
def test_structures_touching_in_real_label_maps_are_distinguishable() -> None:
    pairs = _shared_pairs()
    assert len(pairs) > 50  # both maps read: liver, stomach, ribs, vertebrae, lobes...
    assert ("liver", "stomach") in pairs and ("vertebrae_T11", "vertebrae_T12") in pairs
    assert not _too_alike(pairs)
