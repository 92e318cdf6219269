"""The one table of coded concepts for every structure segnode segments.

DICOM-SEG and SR do not identify a structure by its name but by codes: a
Segmented Property Category from CID 7150, a Segmented Property Type from
CID 7151 (organs and bones are in its included CID 7192 "Anatomical
Structure Segmentation Property Type", via CID 4 and CID 7152-7155;
tissues in CID 7191), a laterality from CID 244 and, for findings such as a
cyst, the Anatomic Region (CID 4) it lies in. Receivers (PACS, viewers,
registries) match on these codes, so every writer takes them from here and
no code is spelled inline anywhere else.

Where the codes come from
-------------------------
* PS3.16 itself, as shipped in pydicom's concept dictionary: every code
  below that is in CID 7151 carries the code meaning it has there (e.g.
  "Bladder", "Thyroid", "Innominate artery"). Skeletal muscle, a tissue
  here, is PS3.16's SCT 127954009 (CID 7710), more specific than CID
  7166's "Muscle".
* TotalSegmentator's published mapping of its classes to SNOMED CT
  (``totalsegmentator_snomed_mapping.csv`` of the TotalSegmentator project)
  for the classes whose concepts PS3.16 does not list: the individual ribs,
  S1, the gluteal muscles, iliopsoas, the deep back muscles and the combined
  portal/splenic vein. These rows are marked ``# not in PS3.16``.
* Three deliberate departures from that mapping, each for a code that
  PS3.16 defines differently: the Anatomical Structure category is
  SCT 91723000 (CID 7150; the mapping's 123037004 is SNOMED's root "Body
  structure", in no DICOM context group); the subclavian arteries are
  SCT 36765005 "Subclavian artery" with laterality (the mapping's 29700009
  is "Right subclavian artery", which contradicts a Left modifier); the left
  atrial appendage is SCT 33626005 "Left auricular appendage" (CID 3010).
* The display colour of each of these codes is in dicomio/colours.py, the colour table (3D Slicer's).

Laterality is a modifier (CID 244 "Laterality": SCT 7771000 Left,
SCT 24028007 Right) rather than a pre-coordinated "left kidney" concept, as
in TotalSegmentator's mapping and 3D Slicer's terminologies. It modifies the
Segmented Property Type when the type is itself the anatomy (a left
kidney), and the Anatomic Region when the type is a finding located in that
region (a cyst of the left kidney); see :class:`StructureCode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from highdicom.sr import CodedConcept

from dicomio.measurements import FlagKind

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "ARTIFICIAL_INTELLIGENCE",
    "BUILTIN_STRUCTURES",
    "LEFT",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "RIGHT",
    "STRUCTURE_CODES",
    "TISSUE",
    "TOTALSEGMENTATOR_V2_CLASSES",
    "Concept",
    "StructureCode",
    "UnknownStructureError",
    "structure_code",
]

#: Longest Segment Label (0062,0005), VR LO (PS3.5 Table 6.2-1).
_MAX_LABEL_LENGTH: Final = 64


@dataclass(frozen=True)
class Concept:
    """One coded concept: the three attributes of the Code Sequence Macro.

    Kept as a frozen value rather than a highdicom ``CodedConcept`` (a
    mutable pydicom ``Dataset``) so that the table below cannot be changed
    by a caller that edits the object it was given.
    """

    scheme: str
    value: str
    meaning: str

    def coded(self) -> CodedConcept:
        """A new highdicom ``CodedConcept`` for this code (validated there)."""
        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


def _sct(value: str, meaning: str) -> Concept:
    return Concept("SCT", value, meaning)


# CID 7150 "Segmentation Property Categories".
ANATOMICAL_STRUCTURE: Final = _sct("91723000", "Anatomical Structure")
TISSUE: Final = _sct("85756007", "Tissue")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Final = _sct("49755003", "Morphologically Abnormal Structure")

# CID 244 "Laterality" (also in CID 2 "Anatomic Modifier").
LEFT: Final = _sct("7771000", "Left")
RIGHT: Final = _sct("24028007", "Right")

#: Algorithm Family Code Sequence value for a trained model (CID 7162
#: "Surface Processing Algorithm Families", DCM 123110).
ARTIFICIAL_INTELLIGENCE: Final = Concept("DCM", "123110", "Artificial Intelligence")
# For rule-based segmenters (thresholds, connected components, morphology).
MORPHOLOGICAL_OPERATIONS: Final = Concept("DCM", "123104", "Morphological Operations")


class UnknownStructureError(KeyError):
    """A structure name that the code table does not contain."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no codes for structure {self.name!r}: add it to dicomio/codes.py"


@dataclass(frozen=True)
class StructureCode:
    """Everything a SEG segment or an SR finding needs to name a structure.

    Attributes
    ----------
    name : str
        segnode's key, e.g. ``"kidney_left"`` (TotalSegmentator class names
        are used unchanged).
    label : str
        Human-readable Segment Label (0062,0005), at most 64 characters.
    category : Concept
        Segmented Property Category, CID 7150.
    property_type : Concept
        Segmented Property Type, CID 7151.
    laterality : Concept or None
        Left or right (CID 244), for paired structures.
    anatomic_region : Concept or None
        Where a non-anatomical property type (a cyst, fat) lies, CID 4.
        ``None`` when the property type is the anatomy itself.
    """

    name: str
    label: str
    category: Concept
    property_type: Concept
    laterality: Concept | None = None
    anatomic_region: Concept | None = None

    def __post_init__(self) -> None:
        if not self.label or len(self.label) > _MAX_LABEL_LENGTH:
            raise ValueError(
                f"structure {self.name!r}: segment label {self.label!r} must have "
                f"1 to {_MAX_LABEL_LENGTH} characters"
            )
        if self.laterality not in (None, LEFT, RIGHT):
            raise ValueError(f"structure {self.name!r}: laterality {self.laterality} is not in CID 244")

    @property
    def segmented_property_category(self) -> CodedConcept:
        """Segmented Property Category Code Sequence item (CID 7150)."""
        return self.category.coded()

    @property
    def segmented_property_type(self) -> CodedConcept:
        """Segmented Property Type Code Sequence item (CID 7151)."""
        return self.property_type.coded()

    @property
    def segmented_property_type_modifier(self) -> CodedConcept | None:
        """Laterality of the property type itself (CID 244), if it is the anatomy."""
        if self.laterality is None or self.anatomic_region is not None:
            return None
        return self.laterality.coded()

    @property
    def anatomic_region_code(self) -> CodedConcept | None:
        """Anatomic Region Sequence item (CID 4), for findings located in an organ."""
        return None if self.anatomic_region is None else self.anatomic_region.coded()

    @property
    def anatomic_region_modifier(self) -> CodedConcept | None:
        """Laterality of the anatomic region (CID 2 / CID 244), if there is one."""
        if self.laterality is None or self.anatomic_region is None:
            return None
        return self.laterality.coded()


# ---------------------------------------------------------------------------
# Property types. Meanings are PS3.16's code meanings where the code is in a
# DICOM context group.
# ---------------------------------------------------------------------------

_SPLEEN = _sct("78961009", "Spleen")
_KIDNEY = _sct("64033007", "Kidney")
_GALLBLADDER = _sct("28231008", "Gallbladder")
_LIVER = _sct("10200004", "Liver")
_STOMACH = _sct("69695003", "Stomach")
_PANCREAS = _sct("15776009", "Pancreas")
_ADRENAL_GLAND = _sct("23451007", "Adrenal gland")
_UPPER_LOBE_OF_LUNG = _sct("45653009", "Upper lobe of lung")
_LOWER_LOBE_OF_LUNG = _sct("90572001", "Lower lobe of lung")
_MIDDLE_LOBE_OF_RIGHT_LUNG = _sct("72481006", "Middle lobe of right lung")
_LUNG = _sct("39607008", "Lung")
_ESOPHAGUS = _sct("32849002", "Esophagus")
_TRACHEA = _sct("44567001", "Trachea")
_TRACHEA_AND_BRONCHUS = _sct("110726009", "Trachea and bronchus")
_THYROID = _sct("69748006", "Thyroid")
_SMALL_INTESTINE = _sct("30315005", "Small intestine")
_DUODENUM = _sct("38848004", "Duodenum")
_COLON = _sct("71854001", "Colon")
_BLADDER = _sct("89837001", "Bladder")
_PROSTATE = _sct("41216001", "Prostate")
_CYST = _sct("367643001", "Cyst")
_SACRUM = _sct("54735007", "Sacrum")
_HEART = _sct("80891009", "Heart")
_AORTA = _sct("15825003", "Aorta")
_PULMONARY_VEIN = _sct("122972007", "Pulmonary vein")
_BRACHIOCEPHALIC_TRUNK = _sct("12691009", "Innominate artery")
_SUBCLAVIAN_ARTERY = _sct("36765005", "Subclavian artery")
_COMMON_CAROTID_ARTERY = _sct("32062004", "Common carotid artery")
_BRACHIOCEPHALIC_VEIN = _sct("8887007", "Innominate vein")
_LEFT_AURICULAR_APPENDAGE = _sct("33626005", "Left auricular appendage")
_SUPERIOR_VENA_CAVA = _sct("48345005", "Superior vena cava")
_INFERIOR_VENA_CAVA = _sct("64131007", "Inferior vena cava")
_PORTAL_AND_SPLENIC_VEIN = _sct("110765007", "Portal vein and splenic vein")  # not in PS3.16
_COMMON_ILIAC_ARTERY = _sct("73634005", "Common iliac artery")
_COMMON_ILIAC_VEIN = _sct("46027005", "Common iliac vein")
_HUMERUS = _sct("85050009", "Humerus")
_SCAPULA = _sct("79601000", "Scapula")
_CLAVICLE = _sct("51299004", "Clavicle")
_FEMUR = _sct("71341001", "Femur")
# PS3.16 has no hip bone (os coxae) concept; "Hip" (CID 4031) is the region
# that contains it, as in TotalSegmentator's mapping.
_HIP = _sct("29836001", "Hip")
_SPINAL_CORD = _sct("2748008", "Spinal cord")
_GLUTEUS_MAXIMUS = _sct("181674001", "Gluteus maximus muscle")  # not in PS3.16
_GLUTEUS_MEDIUS = _sct("78333006", "Gluteus medius muscle")  # not in PS3.16
_GLUTEUS_MINIMUS = _sct("75297007", "Gluteus minimus muscle")  # not in PS3.16
_DEEP_MUSCLE_OF_BACK = _sct("244849004", "Deep muscle of back")  # not in PS3.16
_ILIOPSOAS = _sct("68455001", "Iliopsoas muscle")  # not in PS3.16
_BRAIN = _sct("12738006", "Brain")
_SKULL = _sct("89546000", "Skull")
_STERNUM = _sct("56873002", "Sternum")
_COSTAL_CARTILAGE = _sct("50016007", "Costal cartilage")
_ENTIRE_BODY = _sct("38266002", "Entire body")
_BONE = _sct("3138006", "Bone")  # the tissue (CID 7166), not a bone structure
_FAT = _sct("55603005", "Fat")  # the tissue (CID 7166)
_SKELETAL_MUSCLE = _sct("127954009", "Skeletal muscle")  # CID 7710, not CID 7151
_SOFT_TISSUE = _sct("87784001", "Soft tissue")  # CID 7191
_SUBCUTANEOUS_TISSUE = _sct("71966008", "Subcutaneous tissue")
_INTRA_ABDOMINOPELVIC = _sct("818987002", "Intra-abdominopelvic")  # its CID 4 meaning

#: Vertebrae from S1 up to C1, in TotalSegmentator's label order. All but S1
#: are in CID 7602 "Vertebrae".
_VERTEBRAE: Final = (
    ("S1", _sct("65985001", "S1 vertebra")),  # not in PS3.16
    ("L5", _sct("49668003", "L5 vertebra")),
    ("L4", _sct("11994002", "L4 vertebra")),
    ("L3", _sct("36470004", "L3 vertebra")),
    ("L2", _sct("14293000", "L2 vertebra")),
    ("L1", _sct("66794005", "L1 vertebra")),
    ("T12", _sct("23215003", "T12 vertebra")),
    ("T11", _sct("12989004", "T11 vertebra")),
    ("T10", _sct("7610001", "T10 vertebra")),
    ("T9", _sct("82687006", "T9 vertebra")),
    ("T8", _sct("11068009", "T8 vertebra")),
    ("T7", _sct("62487009", "T7 vertebra")),
    ("T6", _sct("45296009", "T6 vertebra")),
    ("T5", _sct("56401006", "T5 vertebra")),
    ("T4", _sct("73071006", "T4 vertebra")),
    ("T3", _sct("1626008", "T3 vertebra")),
    ("T2", _sct("53733008", "T2 vertebra")),
    ("T1", _sct("64864005", "T1 vertebra")),
    ("C7", _sct("87391001", "C7 vertebra")),
    ("C6", _sct("36054005", "C6 vertebra")),
    ("C5", _sct("36978003", "C5 vertebra")),
    ("C4", _sct("5329002", "C4 vertebra")),
    ("C3", _sct("113205007", "C3 vertebra")),
    ("C2", _sct("39976000", "C2 vertebra")),
    ("C1", _sct("14806007", "C1 vertebra")),
)

#: First to twelfth rib (PS3.16 has only "Rib", SCT 113197003).
_RIBS: Final = (  # not in PS3.16
    _sct("48535007", "First rib"),
    _sct("78247007", "Second rib"),
    _sct("25888004", "Third rib"),
    _sct("25523003", "Fourth rib"),
    _sct("15339008", "Fifth rib"),
    _sct("59558009", "Sixth rib"),
    _sct("24915002", "Seventh rib"),
    _sct("5953002", "Eighth rib"),
    _sct("22565002", "Ninth rib"),
    _sct("77644006", "Tenth rib"),
    _sct("58830002", "Eleventh rib"),
    _sct("43993008", "Twelfth rib"),
)


def _organ(name: str, label: str, property_type: Concept, laterality: Concept | None = None) -> StructureCode:
    return StructureCode(name, label, ANATOMICAL_STRUCTURE, property_type, laterality)


def _pair(stem: str, label: str, property_type: Concept) -> tuple[StructureCode, StructureCode]:
    """``<stem>_left`` and ``<stem>_right``, TotalSegmentator's naming of paired organs."""
    return (
        _organ(f"{stem}_left", f"Left {label}", property_type, LEFT),
        _organ(f"{stem}_right", f"Right {label}", property_type, RIGHT),
    )


_ROWS: Final[tuple[StructureCode, ...]] = (
    _organ("spleen", "Spleen", _SPLEEN),
    *_pair("kidney", "kidney", _KIDNEY),
    _organ("gallbladder", "Gallbladder", _GALLBLADDER),
    _organ("liver", "Liver", _LIVER),
    _organ("stomach", "Stomach", _STOMACH),
    _organ("pancreas", "Pancreas", _PANCREAS),
    *_pair("adrenal_gland", "adrenal gland", _ADRENAL_GLAND),
    *_pair("lung_upper_lobe", "upper lobe of lung", _UPPER_LOBE_OF_LUNG),
    *_pair("lung_lower_lobe", "lower lobe of lung", _LOWER_LOBE_OF_LUNG),
    _organ("lung_middle_lobe_right", "Middle lobe of right lung", _MIDDLE_LOBE_OF_RIGHT_LUNG),
    _organ("esophagus", "Esophagus", _ESOPHAGUS),
    _organ("trachea", "Trachea", _TRACHEA),
    _organ("thyroid_gland", "Thyroid gland", _THYROID),
    _organ("small_bowel", "Small bowel", _SMALL_INTESTINE),
    _organ("duodenum", "Duodenum", _DUODENUM),
    _organ("colon", "Colon", _COLON),
    _organ("urinary_bladder", "Urinary bladder", _BLADDER),
    _organ("prostate", "Prostate", _PROSTATE),
    StructureCode("kidney_cyst_left", "Left kidney cyst", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, _CYST,
                  LEFT, _KIDNEY),
    StructureCode("kidney_cyst_right", "Right kidney cyst", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, _CYST,
                  RIGHT, _KIDNEY),
    _organ("sacrum", "Sacrum", _SACRUM),
    *(_organ(f"vertebrae_{level}", f"Vertebra {level}", code) for level, code in _VERTEBRAE),
    _organ("heart", "Heart", _HEART),
    _organ("aorta", "Aorta", _AORTA),
    _organ("pulmonary_vein", "Pulmonary vein", _PULMONARY_VEIN),
    _organ("brachiocephalic_trunk", "Brachiocephalic trunk", _BRACHIOCEPHALIC_TRUNK),
    *_pair("subclavian_artery", "subclavian artery", _SUBCLAVIAN_ARTERY),
    *_pair("common_carotid_artery", "common carotid artery", _COMMON_CAROTID_ARTERY),
    *_pair("brachiocephalic_vein", "brachiocephalic vein", _BRACHIOCEPHALIC_VEIN),
    _organ("atrial_appendage_left", "Left atrial appendage", _LEFT_AURICULAR_APPENDAGE),
    _organ("superior_vena_cava", "Superior vena cava", _SUPERIOR_VENA_CAVA),
    _organ("inferior_vena_cava", "Inferior vena cava", _INFERIOR_VENA_CAVA),
    _organ("portal_vein_and_splenic_vein", "Portal and splenic vein", _PORTAL_AND_SPLENIC_VEIN),
    *_pair("iliac_artery", "common iliac artery", _COMMON_ILIAC_ARTERY),
    *_pair("iliac_vena", "common iliac vein", _COMMON_ILIAC_VEIN),
    *_pair("humerus", "humerus", _HUMERUS),
    *_pair("scapula", "scapula", _SCAPULA),
    *_pair("clavicula", "clavicle", _CLAVICLE),
    *_pair("femur", "femur", _FEMUR),
    *_pair("hip", "hip bone", _HIP),
    _organ("spinal_cord", "Spinal cord", _SPINAL_CORD),
    *_pair("gluteus_maximus", "gluteus maximus", _GLUTEUS_MAXIMUS),
    *_pair("gluteus_medius", "gluteus medius", _GLUTEUS_MEDIUS),
    *_pair("gluteus_minimus", "gluteus minimus", _GLUTEUS_MINIMUS),
    *_pair("autochthon", "autochthonous back muscles", _DEEP_MUSCLE_OF_BACK),
    *_pair("iliopsoas", "iliopsoas", _ILIOPSOAS),
    _organ("brain", "Brain", _BRAIN),
    _organ("skull", "Skull", _SKULL),
    *(_organ(f"rib_left_{n}", f"Left rib {n}", code, LEFT) for n, code in enumerate(_RIBS, 1)),
    *(_organ(f"rib_right_{n}", f"Right rib {n}", code, RIGHT) for n, code in enumerate(_RIBS, 1)),
    _organ("sternum", "Sternum", _STERNUM),
    _organ("costal_cartilages", "Costal cartilages", _COSTAL_CARTILAGE),
    # segnode's built-in segmenter. "body" is its outline, every labelled
    # voxel (a segment of its own where segments may overlap); its label map
    # holds the rest as "other_soft_tissue", not coded as the entire body.
    _organ("body", "Body", _ENTIRE_BODY),
    StructureCode("other_soft_tissue", "Other soft tissue", TISSUE, _SOFT_TISSUE),
    *_pair("lung", "lung", _LUNG),
    _organ("airway", "Airway (trachea and main bronchi)", _TRACHEA_AND_BRONCHUS),
    StructureCode("skeleton", "Skeleton", TISSUE, _BONE),
    StructureCode("subcutaneous_fat", "Subcutaneous fat", TISSUE, _FAT, anatomic_region=_SUBCUTANEOUS_TISSUE),
    StructureCode("visceral_fat", "Visceral fat", TISSUE, _FAT, anatomic_region=_INTRA_ABDOMINOPELVIC),
    StructureCode("skeletal_muscle", "Skeletal muscle", TISSUE, _SKELETAL_MUSCLE),
)

#: Every structure by name.
STRUCTURE_CODES: Final[Mapping[str, StructureCode]] = MappingProxyType({row.name: row for row in _ROWS})

#: The 117 classes of TotalSegmentator v2's "total" task; the class with
#: label value ``v`` in its output is ``TOTALSEGMENTATOR_V2_CLASSES[v - 1]``.
TOTALSEGMENTATOR_V2_CLASSES: Final[tuple[str, ...]] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
    "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
    "kidney_cyst_right", "sacrum",
    *(f"vertebrae_{level}" for level, _ in _VERTEBRAE),
    "heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
    "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
    "iliac_vena_left", "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left", "scapula_right",
    "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
    "iliopsoas_right", "brain", "skull",
    *(f"rib_left_{n}" for n in range(1, 13)),
    *(f"rib_right_{n}" for n in range(1, 13)),
    "sternum", "costal_cartilages",
)

#: Structures of segnode's built-in segmenter. "airway" is the trachea with
#: the main bronchi, so it cannot share TotalSegmentator's "trachea" code.
BUILTIN_STRUCTURES: Final[tuple[str, ...]] = (
    "other_soft_tissue", "lung_left", "lung_right", "airway", "skeleton", "subcutaneous_fat", "visceral_fat",
    "skeletal_muscle",
)


def structure_code(name: str) -> StructureCode:
    """The codes of structure `name`.

    Raises
    ------
    UnknownStructureError
        If the table has no such structure.
    """
    try:
        return STRUCTURE_CODES[name]
    except KeyError:
        raise UnknownStructureError(name) from None


# ===========================================================================
# Measurement concepts of the SR (dicomio/sr.py); nothing above depends on them.
#
# Each value of a StructureMeasurements is a TID 300 Measurement: a quantity
# (the NUM content item's concept name), a UCUM unit and, for a statistic over
# the ROI, a Derivation (DCM 121401) from CID 7464 "General Region of Interest
# Measurement Modifiers". Where the codes come from:
#
# * Volume, SCT 118565006 (CID 7469 "Generic Intensity and Size
#   Measurements"), in UCUM "ml" (= cm3; organ volumes are read in ml).
# * HU statistics: DCM 112031 "Attenuation Coefficient" (CID 7469) in
#   "[hnsf'U]" (CID 7181) with the derivations Mean, Standard Deviation,
#   Minimum and Maximum, as in dcmqi's TID 1500 CT liver example
#   (doc/examples/sr-tid1500-ct-liver-example.json, which still writes the
#   retired SRT aliases of these SCT codes).
# * SUV: DCM 126401 "SUVbw" (CID 7180, 7469) in "g/ml{SUVbw}" as CID 85
#   "SUV Units" lists it today (older examples write "{SUVbw}g/ml", which
#   strict UCUM parsers reject), with Mean, Maximum and DCM 126031 "Peak
#   Value Within ROI" (CID 7464).
# * Dice: neither DCM nor SCT has a concept for the Dice similarity
#   coefficient, so it is coded in segnode's private scheme PRIVATE_SCHEME
#   (PS3.3 8.2: private designators start with "99"), which the SR declares
#   in its Coding Scheme Identification Sequence (0008,0110), in "1" ("no
#   units", CID 7181). The same holds, and the same scheme is used, for the
#   Jaccard index, the 95th-percentile Hausdorff distance (mm), the Dice
#   with the mirrored prediction, the number of connected components, the
#   bounding box corners (PS3.16 has planes through a region's extents, CID
#   1010, but no coordinate of them), and the assumed mass density: DCM
#   130082 "Relative Mass Density" is relative to water, DCM 112118
#   "Density" a mammographic finding.
# * Mass: SCT 118538004 "Mass" (the quantity) in "g"; the density it was
#   computed with is INFERRED FROM it (TID 300).
# * HU median: the Median derivation, SCT 373099004 (CID 7464).
# * SUL: DCM 126405 "SUVlbm(Janma)" (CID 7180, 7469), in its CID 85 unit
#   "g/ml{SUVlbm(Janma)}": dicomio/suv.py computes lean body mass by
#   Janmahasatian.
# * Total uptake: IBSI 99N0 "Integrated Intensity" (CID 7477), the mean
#   intensity of the ROI times its volume; DCM 126033/126034 (Total Lesion)
#   Glycolysis name the same product for FDG only, and segnode measures any
#   tracer. The unit is SUVbw's times ml, "g/ml{SUVbw}.ml" (a gram).
# * Quality flags: a TID 1411 qualitative evaluation, CODE name "Segmentation
#   plausibility" with one value per FlagKind, all private (PS3.16 codes
#   no segmentation QA findings); the detail text is DCM 121106 "Comment"
#   under it (HAS PROPERTIES).
# * Procedure Reported of TID 1500: CID 100 "Quantitative Diagnostic Imaging
#   Procedures", LOINC codes for CT and PET of an unspecified body region.
# ===========================================================================

#: Coding scheme designator of segnode's own concepts.
PRIVATE_SCHEME: Final = "99SEGNODE"


@dataclass(frozen=True)
class MeasurementConcept:
    """How one kind of measurement is coded in a TID 300 Measurement.

    Attributes
    ----------
    name : Concept
        Concept name of the NUM content item (the quantity).
    unit : Concept
        UCUM unit of the value.
    derivation : Concept or None
        Which statistic over the ROI the value is (CID 7464); None for a
        quantity of the ROI itself (volume, Dice).
    """

    name: Concept
    unit: Concept
    derivation: Concept | None = None

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``Attenuation Coefficient (Mean)``."""
        if self.derivation is None:
            return self.name.meaning
        return f"{self.name.meaning} ({self.derivation.meaning})"


def _ucum(value: str, meaning: str) -> Concept:
    return Concept("UCUM", value, meaning)


_ATTENUATION_COEFFICIENT = Concept("DCM", "112031", "Attenuation Coefficient")
_SUV_BW = Concept("DCM", "126401", "SUVbw")
_HOUNSFIELD_UNIT = _ucum("[hnsf'U]", "Hounsfield unit")
_SUV_BW_UNIT = _ucum("g/ml{SUVbw}", "Standardized Uptake Value body weight")
_MEAN = _sct("373098007", "Mean")
_STANDARD_DEVIATION = _sct("386136009", "Standard Deviation")
_MINIMUM = _sct("255605001", "Minimum")
_MAXIMUM = _sct("56851009", "Maximum")
_PEAK_VALUE_WITHIN_ROI = Concept("DCM", "126031", "Peak Value Within ROI")

VOLUME: Final = MeasurementConcept(_sct("118565006", "Volume"), _ucum("ml", "milliliter"))
HU_MEAN: Final = MeasurementConcept(_ATTENUATION_COEFFICIENT, _HOUNSFIELD_UNIT, _MEAN)
HU_STD: Final = MeasurementConcept(_ATTENUATION_COEFFICIENT, _HOUNSFIELD_UNIT, _STANDARD_DEVIATION)
HU_MIN: Final = MeasurementConcept(_ATTENUATION_COEFFICIENT, _HOUNSFIELD_UNIT, _MINIMUM)
HU_MAX: Final = MeasurementConcept(_ATTENUATION_COEFFICIENT, _HOUNSFIELD_UNIT, _MAXIMUM)
SUV_MEAN: Final = MeasurementConcept(_SUV_BW, _SUV_BW_UNIT, _MEAN)
SUV_MAX: Final = MeasurementConcept(_SUV_BW, _SUV_BW_UNIT, _MAXIMUM)
SUV_PEAK: Final = MeasurementConcept(_SUV_BW, _SUV_BW_UNIT, _PEAK_VALUE_WITHIN_ROI)
_NO_UNITS = _ucum("1", "no units")
_MILLIMETER = _ucum("mm", "millimeter")
_SUL = Concept("DCM", "126405", "SUVlbm(Janma)")
_SUL_UNIT = _ucum("g/ml{SUVlbm(Janma)}", "Standardized Uptake Value lean body mass (Janma)")
_MEDIAN = _sct("373099004", "Median")


def _private(value: str, meaning: str) -> Concept:
    return Concept(PRIVATE_SCHEME, value, meaning)


DICE: Final = MeasurementConcept(_private("DSC", "Dice similarity coefficient"), _NO_UNITS)
MASS: Final = MeasurementConcept(_sct("118538004", "Mass"), _ucum("g", "gram"))
DENSITY: Final = MeasurementConcept(
    _private("DENSITY", "Assumed mass density"), _ucum("g/ml", "gram per milliliter")
)
HU_MEDIAN: Final = MeasurementConcept(_ATTENUATION_COEFFICIENT, _HOUNSFIELD_UNIT, _MEDIAN)
COMPONENT_COUNT: Final = MeasurementConcept(
    _private("NCOMP", "Number of connected components"), _NO_UNITS
)
#: Corners of the bounding box: least, then greatest x, y, z (LPS).
BOUNDING_BOX_MIN: Final = tuple(
    MeasurementConcept(_private(f"BBOXMIN{axis}", f"Bounding box minimum {axis} (LPS)"), _MILLIMETER)
    for axis in "XYZ"
)
BOUNDING_BOX_MAX: Final = tuple(
    MeasurementConcept(_private(f"BBOXMAX{axis}", f"Bounding box maximum {axis} (LPS)"), _MILLIMETER)
    for axis in "XYZ"
)
SUL_MEAN: Final = MeasurementConcept(_SUL, _SUL_UNIT, _MEAN)
SUL_PEAK: Final = MeasurementConcept(_SUL, _SUL_UNIT, _PEAK_VALUE_WITHIN_ROI)
TOTAL_UPTAKE: Final = MeasurementConcept(
    Concept("IBSI", "99N0", "Integrated Intensity"),
    _ucum("g/ml{SUVbw}.ml", "Standardized Uptake Value body weight times milliliter"),
)
JACCARD: Final = MeasurementConcept(_private("JACCARD", "Jaccard index"), _NO_UNITS)
HAUSDORFF_95: Final = MeasurementConcept(
    _private("HD95", "95th percentile Hausdorff distance"), _MILLIMETER
)
MIRROR_DICE: Final = MeasurementConcept(
    _private("MIRRORDSC", "Dice similarity coefficient with the mirrored prediction"), _NO_UNITS
)

#: Where a comparison with a reference segmentation came from (TID 320).
SOURCE_OF_MEASUREMENT: Final = Concept("DCM", "121112", "Source of Measurement")

#: Concept name of a quality flag's qualitative evaluation, and its value per kind.
PLAUSIBILITY: Final = _private("PLAUSIBILITY", "Segmentation plausibility")
FLAG_VALUES: Final[Mapping[FlagKind, Concept]] = MappingProxyType(
    {
        FlagKind.VOLUME_OUT_OF_RANGE: _private("VOLRANGE", "Volume outside the expected range"),
        FlagKind.TRUNCATED: _private("TRUNCATED", "Cut off at the edge of the image"),
        FlagKind.UNEXPECTED_COMPONENTS: _private("COMPONENTS", "Unexpected number of connected components"),
        FlagKind.LATERALITY_RATIO: _private("LATRATIO", "Implausible left to right ratio"),
    }
)
#: The detail text of a flag, and each of the report's notes on its input.
COMMENT: Final = Concept("DCM", "121106", "Comment")
#: TID 1500's container of evaluations of the whole report (PS3.16 TID 1500),
#: where the notes on its input go (e.g. instances an MPPS step listed that never came).
QUALITATIVE_EVALUATIONS: Final = Concept("UMLS", "C0034375", "Qualitative Evaluations")

#: TID 1500 Procedure Reported (CID 100) for each modality the SR reports on.
CT_PROCEDURE: Final = Concept("LN", "25045-6", "CT unspecified body region")
PET_PROCEDURE: Final = Concept("LN", "44136-0", "PET unspecified body region")
