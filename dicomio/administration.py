"""The administration of a radiopharmaceutical, as an NM or PET header records it.

Dosimetry integrates activity from the administration onwards, so the
start of the administration must be a date-time, not a time of day: the
SPECT/CT time points of one therapy lie days apart, and a Radiopharmaceutical
Start Time (0018,1072) without a date cannot say whether a 24 h image was
taken a day or an hour after the injection (the acquisition date, which the
PET SUV rules borrow, is the wrong day for every late time point).
Radiopharmaceutical Start DateTime (0018,1078) is read where present; the
NM IOD does not include it (PS3.3 C.8.4.10, NM Isotope Module: only Start
Time; dciodvfy lists it as a standard extension), so for a standard NM file
the caller passes the administration's date (from the course's records)
and the Start Time is set on it. With neither, the error names both.

The radionuclide is named in the form segnode's nuclide table uses
("Lu-177", "I-131", "Tc-99m"). The Radionuclide Code Sequence (0054,0300)
is read first: NM images take its codes from CID 18 "Isotopes in
Radiopharmaceuticals" (PS3.16), where ^177^Lutetium is SCT 447553000;
PET images from CID 4020 "PET Radionuclide", which lists 90Y but not 177Lu
or 131I. The code is looked up in pydicom's copy of CID 18 and CID 4020
and its meaning ("^177^Lutetium") gives mass number and element; a code
unknown there is read from its Code Meaning the same way, and without the
sequence the free-text Radionuclide (0018,0030) ("Lu-177", "LU177",
"177Lu") is parsed.

Radionuclide Total Dose (0018,1074): the NM Isotope Module's text (PS3.3
C.8.4.10.1.7) says MBq, the PET Isotope Module's says Bq, and writers of
NM files follow either (the innolitics DICOM browser issues #76 and #91
show real NM values in Bq; the calibspect tool for quantitative NM of A.
Dieudonné, 2025, writes MBq). No administered activity lies between
100 kBq and 1 MBq expressed in the other unit's range: a value of at least
1e6 is read as Bq, one of at most 1e5 as MBq (and noted), anything
between is refused as ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT, TM

from dicomio.suv import naive, tag_name

__all__ = [
    "Administration",
    "AdministrationError",
    "read_administration",
    "same_administration",
    "radionuclide_name",
]

#: Element names of the radionuclides in CID 18 and CID 4020, to their IUPAC symbols.
_SYMBOLS: Final = {
    "Arsenic": "As", "Barium": "Ba", "Bromine": "Br", "Carbon": "C", "Chromium": "Cr",
    "Cobalt": "Co", "Copper": "Cu", "Fluorine": "F", "Gadolinium": "Gd", "Gallium": "Ga",
    "Germanium": "Ge", "Gold": "Au", "Holmium": "Ho", "Indium": "In", "Iodine": "I",
    "Iridium": "Ir", "Iron": "Fe", "Krypton": "Kr", "Lead": "Pb", "Lutetium": "Lu",
    "Manganese": "Mn", "Niobium": "Nb", "Nitrogen": "N", "Oxygen": "O", "Phosphorus": "P",
    "Potassium": "K", "Radium": "Ra", "Rhenium": "Re", "Rubidium": "Rb", "Ruthenium": "Ru",
    "Samarium": "Sm", "Scandium": "Sc", "Selenium": "Se", "Sodium": "Na", "Strontium": "Sr",
    "Tantalum": "Ta", "Technetium": "Tc", "Terbium": "Tb", "Thallium": "Tl", "Titanium": "Ti",
    "Xenon": "Xe", "Ytterbium": "Yb", "Yttrium": "Y", "Zinc": "Zn", "Zirconium": "Zr",
}  # fmt: skip

#: CID 18 (Isotopes in Radiopharmaceuticals) and CID 4020 (PET Radionuclide), as pydicom has them.
_RADIONUCLIDE_CODES: Final = tuple(
    code for cid in (codes.CID18, codes.CID4020) for code in cid.concepts.values()
)

#: Largest value read as MBq and smallest read as Bq (see the module docstring).
_LARGEST_MBQ: Final = 1e5
_SMALLEST_BQ: Final = 1e6

#: same_administration's tolerances: start within a minute, activity within 1 %.
_SAME_START_S: Final = 60.0
_SAME_ACTIVITY: Final = 0.01


class AdministrationError(Exception):
    """The header does not say what was administered, when or how much; names the attribute."""

    def __init__(self, attribute: str, problem: str, *, sop_instance_uid: str):
        super().__init__(f"{attribute} {problem} (SOP Instance UID {sop_instance_uid})")
        self.attribute = attribute
        self.problem = problem
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True)
class Administration:
    """One administration of a radiopharmaceutical.

    Attributes
    ----------
    radionuclide : str
        "Lu-177" style: element symbol, hyphen, mass number, "m" for a
        metastable state.
    radiopharmaceutical : str or None
        Radiopharmaceutical (0018,0031), else the Code Meaning of the
        Radiopharmaceutical Code Sequence (0054,0304); None when neither is
        given (the activity and nuclide are what dosimetry needs).
    start : datetime
        Radiopharmaceutical Start DateTime (0018,1078), the scanner's wall
        clock (a UTC offset is dropped, as for every other time of the study).
    total_activity_bq : float
        Radionuclide Total Dose (0018,1074) in Bq, at `start`.
    half_life_s : float or None
        Radionuclide Half Life (0018,1075) as the header states it; None if absent.
    notes : tuple of str
        How a value was read where the header left room (a dose in MBq, a
        second radiopharmaceutical ignored).
    """

    radionuclide: str
    radiopharmaceutical: str | None
    start: datetime
    total_activity_bq: float
    half_life_s: float | None
    notes: tuple[str, ...] = ()


_NUCLIDE_TEXT: Final = re.compile(
    r"^\s*(?:\^?(?P<mass1>\d+)(?P<meta1>m?)\^?\s*-?\s*(?P<element1>[A-Za-z]+)"
    r"|(?P<element2>[A-Za-z]+)\s*-?\s*(?P<mass2>\d+)(?P<meta2>m?))\s*$"
)


def radionuclide_name(text: str) -> str | None:
    """ "Lu-177" from "^177^Lutetium", "Lutetium-177", "LU177", "177Lu" or "Tc-99m"; None if unknown."""
    match = _NUCLIDE_TEXT.match(text)
    if match is None:
        return None
    element = match["element1"] or match["element2"]
    mass = match["mass1"] or match["mass2"]
    metastable = match["meta1"] or match["meta2"] or ""
    by_name = _SYMBOLS.get(element.capitalize())
    by_symbol = next((s for s in _SYMBOLS.values() if s.lower() == element.lower()), None)
    symbol = by_name or by_symbol
    if symbol is None:
        return None
    return f"{symbol}-{int(mass)}{metastable.lower()}"


def _coded_meaning(scheme: str, value: str) -> str | None:
    """The meaning pydicom's CID 18 / CID 4020 gives a radionuclide code, or None."""
    wanted = (scheme, value)
    return next(
        (code.meaning for code in _RADIONUCLIDE_CODES if (code.scheme_designator, code.value) == wanted),
        None,
    )


def _radionuclide(item: Dataset, uid: str) -> str:
    sequence = item.get("RadionuclideCodeSequence")
    if sequence:
        code = sequence[0]
        scheme = str(code.get("CodingSchemeDesignator", "")).strip()
        value = str(code.get("CodeValue", "")).strip()
        meaning = _coded_meaning(scheme, value) or str(code.get("CodeMeaning", ""))
        name = radionuclide_name(meaning)
        if name is None:
            raise AdministrationError(
                tag_name("RadionuclideCodeSequence"),
                f"holds ({value}, {scheme}, {code.get('CodeMeaning', '')!r}), no radionuclide known "
                "from CID 18 or CID 4020",
                sop_instance_uid=uid,
            )
        return name
    text = str(item.get("Radionuclide", "") or "").strip()
    if not text:
        raise AdministrationError(
            f"{tag_name('RadionuclideCodeSequence')} and {tag_name('Radionuclide')}",
            "missing: the radionuclide is unknown",
            sop_instance_uid=uid,
        )
    name = radionuclide_name(text)
    if name is None:
        raise AdministrationError(
            tag_name("Radionuclide"), f"{text!r} names no radionuclide", sop_instance_uid=uid
        )
    return name


def _radiopharmaceutical(item: Dataset) -> str | None:
    text = str(item.get("Radiopharmaceutical", "") or "").strip()
    if text:
        return text
    sequence = item.get("RadiopharmaceuticalCodeSequence")
    if sequence and str(sequence[0].get("CodeMeaning", "")).strip():
        return str(sequence[0].CodeMeaning).strip()
    return None


def _start(item: Dataset, uid: str, administration_date: date | None) -> datetime:
    value = item.get("RadiopharmaceuticalStartDateTime")
    if value in (None, ""):
        return _start_on(item, uid, administration_date)
    try:
        parsed = DT(str(value).strip())
    except ValueError:
        raise AdministrationError(
            tag_name("RadiopharmaceuticalStartDateTime"), f"unreadable ({value!r})", sop_instance_uid=uid
        ) from None
    text = str(value).strip()
    if len(text) < 12:
        # DT may stop after the day or hour (PS3.5 6.2); an administration
        # known to the day only is no start for hours-scale kinetics.
        raise AdministrationError(
            tag_name("RadiopharmaceuticalStartDateTime"),
            f"{text!r} gives no minute of the administration",
            sop_instance_uid=uid,
        )
    start = naive(parsed)
    if administration_date is not None and start.date() != administration_date:
        raise AdministrationError(
            tag_name("RadiopharmaceuticalStartDateTime"),
            f"{start.isoformat()} is not on the administration date given, {administration_date.isoformat()}",
            sop_instance_uid=uid,
        )
    return start


def _start_on(item: Dataset, uid: str, administration_date: date | None) -> datetime:
    """Radiopharmaceutical Start Time on the date the caller knows."""
    value = item.get("RadiopharmaceuticalStartTime")
    if value in (None, "") or administration_date is None:
        raise AdministrationError(
            tag_name("RadiopharmaceuticalStartDateTime"),
            "missing"
            + (
                f", and {tag_name('RadiopharmaceuticalStartTime')} is missing too"
                if value in (None, "")
                else f"; {tag_name('RadiopharmaceuticalStartTime')} alone has no date (days pass between "
                "a therapy and its images): the administration date must be given"
            ),
            sop_instance_uid=uid,
        )
    try:
        # The retired ACR-NEMA form HH:MM:SS (PS3.5 Table 6.2-1, TM) is still met.
        clock = TM(str(value).strip().replace(":", ""))
    except ValueError:
        raise AdministrationError(
            tag_name("RadiopharmaceuticalStartTime"), f"unreadable ({value!r})", sop_instance_uid=uid
        ) from None
    return naive(datetime.combine(administration_date, clock))


def _activity_bq(item: Dataset, uid: str, notes: list[str]) -> float:
    keyword = "RadionuclideTotalDose"
    value = item.get(keyword)
    if value in (None, ""):
        raise AdministrationError(tag_name(keyword), "missing", sop_instance_uid=uid)
    try:
        number = float(value)
    except (TypeError, ValueError):
        problem = f"unreadable ({value!r})"
        raise AdministrationError(tag_name(keyword), problem, sop_instance_uid=uid) from None
    if not number > 0:
        raise AdministrationError(tag_name(keyword), f"{number:g}, not positive", sop_instance_uid=uid)
    if number >= _SMALLEST_BQ:
        return number
    if number <= _LARGEST_MBQ:
        notes.append(f"{tag_name(keyword)} {number:g} read as MBq (PS3.3 C.8.4.10.1.7)")
        return number * 1e6
    raise AdministrationError(
        tag_name(keyword), f"{number:g} is neither plausibly Bq nor MBq", sop_instance_uid=uid
    )


def _half_life_s(item: Dataset, uid: str) -> float | None:
    value = item.get("RadionuclideHalfLife")
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AdministrationError(
            tag_name("RadionuclideHalfLife"), f"unreadable ({value!r})", sop_instance_uid=uid
        ) from None
    if not number > 0:
        raise AdministrationError(
            tag_name("RadionuclideHalfLife"), f"{number:g}, not positive", sop_instance_uid=uid
        )
    return number


def read_administration(dataset: Dataset, *, administration_date: date | None = None) -> Administration:
    """The administration an NM or PET image records.

    `administration_date` dates a Radiopharmaceutical Start Time where the
    header has no Start DateTime (see the module docstring); where it has
    one, the two must agree.

    Raises
    ------
    AdministrationError
        Radiopharmaceutical Information Sequence, radionuclide, start
        date-time or total dose missing or unreadable (the error names the
        attribute).
    """
    uid = str(dataset.get("SOPInstanceUID", "(no SOP Instance UID)"))
    sequence = dataset.get("RadiopharmaceuticalInformationSequence")
    if not sequence:
        raise AdministrationError(
            tag_name("RadiopharmaceuticalInformationSequence"), "missing or empty", sop_instance_uid=uid
        )
    notes: list[str] = []
    if len(sequence) > 1:
        notes.append(f"{len(sequence)} radiopharmaceuticals recorded: the first one is used")
    item = sequence[0]
    return Administration(
        radionuclide=_radionuclide(item, uid),
        radiopharmaceutical=_radiopharmaceutical(item),
        start=_start(item, uid, administration_date),
        total_activity_bq=_activity_bq(item, uid, notes),
        half_life_s=_half_life_s(item, uid),
        notes=tuple(notes),
    )


def same_administration(a: Administration, b: Administration) -> bool:
    """Whether two time points record the same administration: same radionuclide,
    starts within a minute and activities within 1 % of the larger.

    The tolerances absorb what re-entry at each imaging session changes (a
    start rounded to the minute, an activity retyped in MBq with fewer
    digits) and stay far below what separates two therapy cycles (weeks, and
    a fresh calibration of the activity).
    """
    if a.radionuclide != b.radionuclide:
        return False
    if abs((a.start - b.start).total_seconds()) > _SAME_START_S:
        return False
    larger = max(a.total_activity_bq, b.total_activity_bq)
    return abs(a.total_activity_bq - b.total_activity_bq) <= _SAME_ACTIVITY * larger
