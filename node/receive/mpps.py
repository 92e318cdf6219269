"""What a Modality Performed Procedure Step N-CREATE or N-SET says, checked.

A scanner tells the node through MPPS (PS3.4 annex F.7) which instances a
step produced, so that a series can complete the moment the last of them is
stored instead of after a quiet period. This module is the protocol only:
datasets in, a :class:`Step` or a :class:`StepRefused` out; storing steps
and completing series is the SCP's and the index's.

The network is not trusted: every UID the node keeps is checked (they become
index keys), the lists are bounded, and a value pydicom cannot decode is
refused rather than raised. Attributes that PS3.4 table F.7.2-1 makes
Type 1 but the node never reads (Modality, Performed Station AE Title...)
are not enforced, so a scanner that leaves one out still gets its series
completed; those the node relies on are.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RE_VALID_UID

MPPS_SOP_CLASS: Final = "1.2.840.10008.3.1.2.3.3"

# Failure statuses of N-CREATE and N-SET (PS3.7 annex C).
STATUS_NO_SUCH_ATTRIBUTE: Final = 0x0105
STATUS_INVALID_ATTRIBUTE_VALUE: Final = 0x0106
STATUS_PROCESSING_FAILURE: Final = 0x0110
STATUS_INVALID_OBJECT_INSTANCE: Final = 0x0117
STATUS_MISSING_ATTRIBUTE: Final = 0x0120
STATUS_MISSING_ATTRIBUTE_VALUE: Final = 0x0121
STATUS_RESOURCE_LIMITATION: Final = 0x0213

#: Error ID (0000,0903) of an N-SET on a step no longer IN PROGRESS (PS3.4 table F.7.2-2).
ERROR_ID_NO_LONGER_UPDATABLE: Final = 0xA710

#: Bounds on what one step may list. segnode's modalities make steps of a
#: few series and at most a few thousand images (a whole-body CT at 0.5 mm,
#: a 20-phase perfusion CT of 320 slices: 6,400). Every listed instance is
#: decoded (about 5 kB of memory each) and becomes work for the index; a step
#: beyond these is refused (0x0213), and its series complete by the stable period.
MAX_SERIES: Final = 200
MAX_INSTANCES: Final = 10_000
#: A step fulfils one scheduled step, or a handful when the modality
#: groups requested procedures (PS3.17 "group case").
MAX_SCHEDULED_STEPS: Final = 100

# Attributes that PS3.4 table F.7.2-1 marks "Not allowed" in an N-SET, and
# the identity the node gave the step. Sending one again unchanged is let
# through: some scanners repeat what they sent at N-CREATE.
_NOT_SETTABLE: Final = (
    "SOPClassUID",
    "SOPInstanceUID",
    "ScheduledStepAttributesSequence",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferencedPatientSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedStationName",
    "PerformedLocation",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
    "StudyID",
)

# Where a step lists the instances of a performed series.
_REFERENCE_SEQUENCES: Final = (
    "ReferencedImageSequence",
    "ReferencedNonImageCompositeSOPInstanceSequence",
)

_UTF8: Final = "ISO_IR 192"


class StepStatus(StrEnum):
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


@dataclass(frozen=True)
class PerformedSeries:
    """One item of the Performed Series Sequence (0040,0340)."""

    series_instance_uid: str
    # Referenced Image Sequence (0008,1140) and Referenced Non-Image Composite
    # SOP Instance Sequence (0040,0220) together: the series' exact instance set.
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """What a stored step says."""

    sop_instance_uid: str
    status: StepStatus
    # From the Scheduled Step Attributes Sequence (0040,0270), in order, once each.
    study_instance_uids: tuple[str, ...]
    # One per series UID, items naming the same series merged.
    series: tuple[PerformedSeries, ...]


class StepRefused(Exception):
    """An N-CREATE or N-SET the node answers with a failure.

    ``status`` is the DIMSE status, ``comment`` the Error Comment (LO, at
    most 64 characters), ``error_id`` the Error ID (0000,0903) where PS3.4
    defines one; the message says which step.
    """

    def __init__(self, status: int, comment: str, step: str, error_id: int | None = None):
        super().__init__(f"MPPS step {step}: {comment} (status 0x{status:04X})")
        self.status = status
        self.comment = comment[:64]
        self.error_id = error_id


def created(sop_instance_uid: str | None, attributes: Dataset) -> tuple[Dataset, Step]:
    """Validate an N-CREATE (PS3.4 F.7.2.1): the step as it is to be stored
    (attributes + SOP Class/Instance UID) and what it says.

    The SCU must name the step (F.7.2.1.2), though PS3.7 would let the SCP
    assign a UID: the images of the step refer to it by the scanner's UID,
    so one the node made up would match nothing.
    """
    if not sop_instance_uid:
        # The MPPS SOP Instance UID is an attribute the SCU must supply.
        raise StepRefused(STATUS_MISSING_ATTRIBUTE, "Affected SOP Instance UID missing", "(none)")
    if not _is_uid(sop_instance_uid):
        # "The SOP Instance UID specified implied a violation of the UID construction rules."
        raise StepRefused(STATUS_INVALID_OBJECT_INSTANCE, "Affected SOP Instance UID is not a valid UID",
                          repr(sop_instance_uid)[:80])
    _check_groups(attributes, sop_instance_uid)
    step = _step(attributes, sop_instance_uid)
    if step.status is not StepStatus.IN_PROGRESS:
        # F.7.2.1.3: only IN PROGRESS may be created.
        raise StepRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                          f"N-CREATE status must be IN PROGRESS, not {step.status}", sop_instance_uid)
    stored = _holding_elements_of(attributes)
    stored.SOPClassUID = MPPS_SOP_CLASS
    stored.SOPInstanceUID = sop_instance_uid
    return stored, step


def updated(stored: Dataset, modification: Dataset) -> tuple[Dataset, Step]:
    """Validate an N-SET (PS3.4 F.7.2.2) against the stored step: the new
    stored dataset and what it says.

    Refused: a step no longer IN PROGRESS (F.7.2.2.3), a change to an
    attribute an N-SET may not change (table F.7.2-1), and a step set to
    COMPLETED or DISCONTINUED without what the final state requires (an end
    date and time, at least one performed series; table F.7.2-1 and its notes).
    """
    uid = str(stored.SOPInstanceUID)
    if _status(stored, uid) is not StepStatus.IN_PROGRESS:
        raise StepRefused(STATUS_PROCESSING_FAILURE,
                          "Performed Procedure Step Object may no longer be updated",
                          uid, ERROR_ID_NO_LONGER_UPDATABLE)
    _check_groups(modification, uid)
    for keyword in _NOT_SETTABLE:
        if keyword in modification and _value(modification, keyword, uid) != _value(stored, keyword, uid):
            raise StepRefused(STATUS_INVALID_ATTRIBUTE_VALUE, f"{keyword} may not be changed by N-SET", uid)
    merged = _merged(stored, modification)
    step = _step(merged, uid)
    if step.status is not StepStatus.IN_PROGRESS:
        _check_final_state(merged, uid)
    return merged, step


# Reading ---------------------------------------------------------------------


def _step(dataset: Dataset, uid: str) -> Step:
    return Step(uid, _status(dataset, uid), _study_uids(dataset, uid), _performed_series(dataset, uid))


def _status(dataset: Dataset, uid: str) -> StepStatus:
    value = _required_text(dataset, "PerformedProcedureStepStatus", uid)
    try:
        return StepStatus(value)
    except ValueError:
        raise StepRefused(STATUS_INVALID_ATTRIBUTE_VALUE,
                          "PerformedProcedureStepStatus is not an enumerated value", uid) from None


def _study_uids(dataset: Dataset, uid: str) -> tuple[str, ...]:
    """The studies of the step: Type 1 at N-CREATE, with one Study Instance UID per item."""
    items = _sequence(dataset, "ScheduledStepAttributesSequence", uid)
    if items is None:
        raise StepRefused(STATUS_MISSING_ATTRIBUTE, "ScheduledStepAttributesSequence missing", uid)
    if not items:
        raise StepRefused(STATUS_MISSING_ATTRIBUTE_VALUE, "ScheduledStepAttributesSequence is empty", uid)
    _bound(len(items), MAX_SCHEDULED_STEPS, "scheduled steps", uid)
    return tuple(dict.fromkeys(_required_uid(item, "StudyInstanceUID", uid) for item in items))


def _performed_series(dataset: Dataset, uid: str) -> tuple[PerformedSeries, ...]:
    items = _sequence(dataset, "PerformedSeriesSequence", uid) or ()
    _bound(len(items), MAX_SERIES, "performed series", uid)
    instances: dict[str, dict[str, None]] = {}
    listed = 0
    for item in items:
        series_uid = _required_uid(item, "SeriesInstanceUID", uid)
        seen = instances.setdefault(series_uid, {})
        for keyword in _REFERENCE_SEQUENCES:
            references = _sequence(item, keyword, uid) or ()
            listed += len(references)
            _bound(listed, MAX_INSTANCES, "referenced instances", uid)
            for reference in references:
                if "ReferencedSOPClassUID" in reference:
                    _required_uid(reference, "ReferencedSOPClassUID", uid)
                seen[_required_uid(reference, "ReferencedSOPInstanceUID", uid)] = None
    return tuple(PerformedSeries(series_uid, tuple(sops)) for series_uid, sops in instances.items())


def _check_final_state(dataset: Dataset, uid: str) -> None:
    for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"):
        _required_text(dataset, keyword, uid)
    # A step ends with at least one series, which may list no instances.
    series = _sequence(dataset, "PerformedSeriesSequence", uid)
    if series is None:
        raise StepRefused(STATUS_MISSING_ATTRIBUTE, "PerformedSeriesSequence missing", uid)
    if not series:
        raise StepRefused(STATUS_MISSING_ATTRIBUTE_VALUE, "PerformedSeriesSequence is empty", uid)


def _check_groups(dataset: Dataset, uid: str) -> None:
    """Groups 0000 (command), 0002 (file meta) and 0004 (directory) hold no
    attributes of a data set; one there would also break the step's file."""
    for tag in dataset.keys():
        if tag.group < 0x0008:
            raise StepRefused(STATUS_NO_SUCH_ATTRIBUTE, f"{tag} is not an attribute of a step", uid)


def _bound(count: int, limit: int, what: str, uid: str) -> None:
    if count > limit:
        raise StepRefused(STATUS_RESOURCE_LIMITATION, f"more than {limit} {what}", uid)


def _value(dataset: Dataset, keyword: str, uid: str) -> object:
    """An attribute's value, or None; one pydicom cannot decode is refused."""
    try:
        element = dataset[keyword] if keyword in dataset else None
    except Exception:  # whatever pydicom raises on a malformed value
        raise StepRefused(STATUS_INVALID_ATTRIBUTE_VALUE, f"{keyword} cannot be decoded", uid) from None
    return None if element is None else element.value


def _sequence(dataset: Dataset, keyword: str, uid: str) -> Sequence | None:
    value = _value(dataset, keyword, uid)
    if value is not None and not isinstance(value, Sequence):
        raise StepRefused(STATUS_INVALID_ATTRIBUTE_VALUE, f"{keyword} is not a sequence", uid)
    return value


def _required_text(dataset: Dataset, keyword: str, uid: str) -> str:
    """A Type 1 single text value: absent is 0x0120, empty 0x0121 (PS3.7 annex C)."""
    if keyword not in dataset:
        raise StepRefused(STATUS_MISSING_ATTRIBUTE, f"{keyword} missing", uid)
    value = _value(dataset, keyword, uid)
    if value is None or value == "":
        raise StepRefused(STATUS_MISSING_ATTRIBUTE_VALUE, f"{keyword} is empty", uid)
    if not isinstance(value, str):
        raise StepRefused(STATUS_INVALID_ATTRIBUTE_VALUE, f"{keyword} is not a single value", uid)
    return value


def _required_uid(dataset: Dataset, keyword: str, uid: str) -> str:
    value = _required_text(dataset, keyword, uid)
    if not _is_uid(value):
        raise StepRefused(STATUS_INVALID_ATTRIBUTE_VALUE, f"{keyword} is not a valid UID", uid)
    return value


def _is_uid(value: str) -> bool:
    """PS3.5 section 9.1: at most 64 characters, digits and dots, no leading zeros."""
    return len(value) <= 64 and re.match(RE_VALID_UID, value) is not None


# Writing ---------------------------------------------------------------------


def _merged(stored: Dataset, modification: Dataset) -> Dataset:
    """The stored step with the N-SET's attributes in place of its own.

    A sequence is replaced whole: the SCU sends all its items (F.7.2.2.2).
    The N-SET's Specific Character Set covers only its own values
    (F.7.2.2.3); where it differs from the stored one, both are decoded and
    the step is kept in Unicode, which holds either.
    """
    changes = modification
    charset = changes.get("SpecificCharacterSet")
    if charset is not None and charset != stored.get("SpecificCharacterSet"):
        # Decoding changes elements in place: these copies, not the caller's.
        merged, changes = copy.deepcopy(stored), copy.deepcopy(modification)
        merged.decode()
        changes.decode()
        merged.SpecificCharacterSet = _UTF8
    else:
        merged = _holding_elements_of(stored)
    for element in changes:
        if element.keyword != "SpecificCharacterSet":
            merged[element.tag] = element
    return merged


def _holding_elements_of(dataset: Dataset) -> Dataset:
    """A new dataset holding `dataset`'s elements, so that adding or replacing
    one leaves `dataset` as it was. The elements themselves are shared, never
    changed: a deep copy took a second per 10,000 listed instances, under
    the SCP's one-step-at-a-time lock."""
    held = Dataset()
    held.update(dataset)
    return held
