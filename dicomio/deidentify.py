"""De-identified copies of DICOM data sets for research (PS3.15 Annex E).

The Basic Application Level Confidentiality Profile, optionally with the
Retain Longitudinal Temporal Information option (full dates, 113106, or dates
shifted per patient, 113107) and the Clean Descriptors option (113105).
Content trees (SR Content Sequence, Acquisition Context) are kept under the
Clean Structured Content option (113104): the node's own reports are useless
without them, their UIDs are mapped and their names, dates and free text are
treated like any other attribute.

Everything is keyed by a secret that never leaves the node: UIDs become
``2.25.`` + HMAC-SHA256(secret, uid) (a UUID-derived root, PS3.5 B.2), so
every instance of a study maps the same way in every process and a
de-identified SEG still references the de-identified CT; the pseudonym and the
date shift are HMACs of the original Patient ID, so two studies of one
patient share them and intervals between studies are kept.

dicognito 0.19 does the generic walk (every UI, PN, ID and date at any
depth), seeded with a key derived from the secret, never the secret itself
(it hashes with MD5). A pass driven by PS3.15 Table E.1-1 then applies the
profile's action to every listed attribute at every depth and removes
private elements. ``confidentiality_profile.json`` is that table: innolitics/
dicom-standard's ``standard/confidentiality_profile_attributes.json`` (621
rows, generated from the standard's DocBook), reduced to the fields used here
(``tag``, ``basicProfile``, ``rtnLongFullDatesOpt``, ``rtnLongModifDatesOpt``,
``cleanDescOpt``, ``cleanStructContOpt``) and sorted by tag.

Descriptors are cleaned by removing every word that is one of the data set's
own identifying values (names, IDs, institution, ...) and every run of three
or more digits (phone numbers, record numbers, dates); what cannot be
recognised this way is the option's residual risk, which is why it is off
unless a route asks for it. Pixel data is not cleaned: a series marked
BurnedInAnnotation YES is refused.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final, Literal

import dicognito
from dicognito.anonymizer import Anonymizer
from dicognito.datetimeanonymizer import DateTimeAnonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from dicognito.uianonymizer import UIAnonymizer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

__all__ = ["DeidentificationProfile", "Deidentifier", "NotExportable"]

_TABLE_FILE: Final = Path(__file__).with_name("confidentiality_profile.json")

_TEMPORAL_VRS: Final = frozenset({"DA", "DT", "TM"})
_TEXT_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: D (replace with a dummy value) for the VRs a dummy is defined for; others become empty.
_DUMMIES: Final = {"PN": "ANONYMIZED", "DA": "19000101", "TM": "000000", "DT": "19000101000000"}
_PATIENT_ID: Final = 0x00100020
_PATIENT_NAME: Final = 0x00100010
_CONTENT_SEQUENCE: Final = 0x0040A730
_TEXT_VALUE: Final = 0x0040A160
#: Days subtracted from every date of a patient under the Modified Dates option.
_SHIFT_DAYS: Final = (62, 730)
#: HMAC-SHA256 keys shorter than its output weaken it (RFC 2104).
_MIN_SECRET_BYTES: Final = 32
_PSEUDONYM_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PSEUDONYM_LENGTH: Final = 12
_DIGIT_RUN: Final = re.compile(r"\d{3,}")
_WORD: Final = re.compile(r"[^\W_]+")
_TAG: Final = re.compile(r"\(([0-9A-FX]{4}),([0-9A-FX]{4})\)")


@dataclass(frozen=True)
class DeidentificationProfile:
    """What a route's research copy keeps beyond the Basic Profile.

    ``dates``: "full" keeps dates (113106), "modified" shifts them per patient
    (113107), "removed" applies the Basic Profile alone. ``clean_descriptors``:
    the Clean Descriptors option (113105).
    """

    dates: Literal["full", "modified", "removed"]
    clean_descriptors: bool

    def __post_init__(self) -> None:
        if self.dates not in ("full", "modified", "removed"):
            raise ValueError(f"dates must be full, modified or removed, not {self.dates!r}")


class NotExportable(ValueError):
    """A data set that must not leave de-identified (BurnedInAnnotation YES).

    The message says why and names its series.
    """


@dataclass(frozen=True)
class _Rule:
    """One row of Table E.1-1: the Basic Profile's action and each option's."""

    basic: str
    full_dates: str | None
    modified_dates: str | None
    clean_descriptors: str | None
    clean_structured_content: str | None

    def action(self, profile: DeidentificationProfile) -> str:
        """The action under `profile`; Clean Structured Content always applies."""
        options = (
            (profile.dates == "full", self.full_dates),
            (profile.dates == "modified", self.modified_dates),
            (profile.clean_descriptors, self.clean_descriptors),
            (True, self.clean_structured_content),
        )
        return next((action for chosen, action in options if chosen and action), self.basic)


@dataclass(frozen=True)
class _Table:
    """Table E.1-1: exact tags, and the repeating groups (50xx,xxxx), (60xx,3000), (60xx,4000) as masks."""

    exact: dict[int, _Rule]
    masked: tuple[tuple[int, int, _Rule], ...]

    def rule(self, tag: int) -> _Rule | None:
        found = self.exact.get(tag)
        if found is not None:
            return found
        return next((rule for mask, value, rule in self.masked if tag & mask == value), None)


@cache
def _table() -> _Table:
    exact: dict[int, _Rule] = {}
    masked: list[tuple[int, int, _Rule]] = []
    for row in json.loads(_TABLE_FILE.read_text(encoding="utf-8")):
        rule = _Rule(
            basic=row["basicProfile"],
            full_dates=row.get("rtnLongFullDatesOpt"),
            modified_dates=row.get("rtnLongModifDatesOpt"),
            clean_descriptors=row.get("cleanDescOpt"),
            clean_structured_content=row.get("cleanStructContOpt"),
        )
        tag = _TAG.fullmatch(row["tag"].upper())
        if tag is None:
            continue  # "(gggg,eeee) where gggg is odd": every private element is removed
        digits = tag[1] + tag[2]
        if "X" in digits:
            mask = int("".join("0" if d == "X" else "F" for d in digits), 16)
            masked.append((mask, int(digits.replace("X", "0"), 16), rule))
        else:
            exact[int(digits, 16)] = rule
    return _Table(exact, tuple(masked))


class _Keys:
    """The keyed mappings; only HMAC outputs leave, never the secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """A UUID version 8 (RFC 9562) of the HMAC as ``2.25.<integer>``, at most 44 characters."""
        raw = bytearray(self.digest("uid", uid)[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80
        raw[8] = (raw[8] & 0x3F) | 0x80
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def pseudonym(self, patient_id: str) -> str:
        number = int.from_bytes(self.digest("patient", patient_id), "big")
        letters = []
        for _ in range(_PSEUDONYM_LENGTH):
            number, index = divmod(number, len(_PSEUDONYM_ALPHABET))
            letters.append(_PSEUDONYM_ALPHABET[index])
        return "".join(letters)

    def shift_days(self, patient_id: str) -> int:
        low, high = _SHIFT_DAYS
        return -(low + int.from_bytes(self.digest("date", patient_id), "big") % (high - low))


class _KeyedUID(UIAnonymizer):
    """dicognito's choice of UIs (all but class and transfer syntax UIDs, at any depth), mapped by the key."""

    def __init__(self, keys: _Keys) -> None:
        super().__init__(None)
        self._keys = keys

    def _new_ui(self, ui: str) -> str:
        return self._keys.uid(ui)


class _KeepTemporal(ElementAnonymizer):
    """Full Dates: claims every date and time so that dicognito's date shift never sees them."""

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        return data_element.VR in _TEMPORAL_VRS

    def describe_actions(self) -> Iterator[str]:
        yield "Keep DA, DT and TM elements"


class Deidentifier:
    """De-identifies data sets under one secret and one profile."""

    def __init__(self, secret: bytes, profile: DeidentificationProfile) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"the de-identification secret must be at least {_MIN_SECRET_BYTES} bytes")
        self._keys = _Keys(secret)
        self._profile = profile
        # dicognito hashes its seed with MD5: give it a derived value, not the secret.
        self._seed = self._keys.digest("dicognito-seed", "").hex()

    def deidentify(self, dataset: Dataset) -> Dataset:
        """A de-identified copy (the input untouched); the same secret maps the same way in every process.

        Raises NotExportable.
        """
        if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
            raise NotExportable(
                f"series {dataset.get('SeriesInstanceUID', '<no Series Instance UID>')} is not exported: "
                "BurnedInAnnotation is YES and burned-in text cannot be removed from its pixels"
            )
        out = copy.deepcopy(dataset)
        if not hasattr(out, "file_meta"):
            out.file_meta = FileMetaDataset()
        patient_id = str(dataset.get("PatientID", ""))
        identifiers = _identifying_words(dataset)
        _temporal_as_text(out)
        self._anonymizer(patient_id).anonymize(out)
        pseudonym = self._keys.pseudonym(patient_id)
        _apply_table(out, self._profile, identifiers)
        # Keyed on the original Patient ID alone: dicognito's own would split a patient whose name differs.
        out.PatientID = pseudonym
        out.PatientName = f"ANON^{pseudonym}"
        self._mark(out)
        if "SOPInstanceUID" in out:
            out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        return out

    def _anonymizer(self, patient_id: str) -> Anonymizer:
        anonymizer = Anonymizer(seed=self._seed)
        if self._profile.dates == "full":
            anonymizer.add_element_handler(_KeepTemporal())
        else:
            # dicognito's own shift is one per seed; intervals are kept per patient, so the shift is too.
            anonymizer.add_element_handler(DateTimeAnonymizer(self._keys.shift_days(patient_id) * 24))
        anonymizer.add_element_handler(_KeyedUID(self._keys))
        return anonymizer

    def _mark(self, ds: Dataset) -> None:
        """The attributes of PS3.15 E.1.1 and PS3.3 C.7.1.1 that say what was done."""
        codes = [("113100", "Basic Application Confidentiality Profile")]
        if self._profile.dates == "full":
            codes.append(("113106", "Retain Longitudinal Temporal Information Full Dates Option"))
        elif self._profile.dates == "modified":
            codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
        if self._profile.clean_descriptors:
            codes.append(("113105", "Clean Descriptors Option"))
        if _CONTENT_SEQUENCE in ds:
            codes.append(("113104", "Clean Structured Content Option"))
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"segnode PS3.15 Annex E (dicognito {dicognito.__version__})"
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = {"full": "UNMODIFIED", "modified": "MODIFIED"}.get(
            self._profile.dates, "REMOVED"
        )


def _apply_table(ds: Dataset, profile: DeidentificationProfile, identifiers: frozenset[str]) -> None:
    """Table E.1-1's action for every listed attribute of `ds` and its items; private elements removed."""
    table = _table()
    for element in list(ds):
        tag = int(element.tag)
        if element.tag.is_private:
            del ds[tag]
            continue
        rule = table.rule(tag)
        action = rule.action(profile) if rule is not None else None
        if tag in (_PATIENT_ID, _PATIENT_NAME):
            continue  # replaced by the keyed pseudonym
        if action == "X" or (action == "C" and not _clean(element, profile, identifiers)):
            del ds[tag]
            continue
        if action in ("Z", "X/Z", "Z/D", "X/Z/D", "D", "X/D"):
            _replace(element, dummy="D" in action)
        elif action is None and tag == _TEXT_VALUE and not _clean(element, profile, identifiers):
            # A TEXT content item needs its value (Type 1C): nothing left to keep is a dummy.
            element.value = "ANONYMIZED"
        if element.VR == "SQ":
            for item in element.value:
                _apply_table(item, profile, identifiers)


def _replace(element: DataElement, *, dummy: bool) -> None:
    """Z (empty) or D (a dummy value where one fits the VR); a sequence keeps no items."""
    if element.VR == "SQ":
        element.value = Sequence()
    elif dummy and element.VR in _DUMMIES:
        element.value = _DUMMIES[element.VR]
    elif dummy and element.VR in _TEXT_VRS:
        element.value = "ANONYMIZED"
    else:
        element.value = None


def _clean(element: DataElement, profile: DeidentificationProfile, identifiers: frozenset[str]) -> bool:
    """C: clean `element` in place; False when nothing is left to keep.

    Dates under Modified Dates were already shifted; sequences are kept and
    their items processed; text loses the words that identify.
    """
    if element.VR == "SQ" or (element.VR in _TEMPORAL_VRS and profile.dates == "modified"):
        return True
    if element.VR not in _TEXT_VRS or element.value in (None, ""):
        return False
    values = element.value if element.VM > 1 else [element.value]
    cleaned = [_scrub(str(value), identifiers) for value in values]
    if not any(cleaned):
        return False
    element.value = cleaned if element.VM > 1 else cleaned[0]
    return True


def _scrub(text: str, identifiers: frozenset[str]) -> str:
    kept = _WORD.sub(lambda word: "" if word.group().casefold() in identifiers else word.group(), text)
    return " ".join(token for token in _DIGIT_RUN.sub("", kept).split() if _WORD.search(token))


def _identifying_words(ds: Dataset) -> frozenset[str]:
    """The words of every private value, and of every listed one the Basic Profile removes or replaces
    other than descriptors, at any depth: what a descriptor must not repeat. One-letter words (a sex,
    an initial) would strip ordinary text and are left out."""
    table = _table()
    words: set[str] = set()
    for element in ds.iterall():
        if element.VR not in _TEXT_VRS or element.value in (None, ""):
            continue
        if not element.tag.is_private:
            rule = table.rule(int(element.tag))
            if rule is None or rule.basic in ("K", "U") or rule.clean_descriptors:
                continue
        values = element.value if element.VM > 1 else [element.value]
        words.update(
            word.casefold() for value in values for word in _WORD.findall(str(value)) if len(word) > 1
        )
    return frozenset(words)


def _temporal_as_text(ds: Dataset) -> None:
    """dicognito parses DA, DT and TM values as text; highdicom builds them as pydicom.valuerep.DA/DT/TM."""
    for element in ds.iterall():
        if element.VR in _TEMPORAL_VRS and element.value is not None and not isinstance(element.value, str):
            values = element.value if element.VM > 1 else [element.value]
            text = [str(value) for value in values]
            element.value = text if element.VM > 1 else text[0]
