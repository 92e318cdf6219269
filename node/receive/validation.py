"""Checks an incoming dataset must pass before anything is written.

The UIDs checked here become directory and file names in storage, so a value
that is not a syntactically valid UID (PS3.5 section 9.1: at most 64
characters, digits and dots, no empty components, no leading zeros) must never
get further than this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

# C-STORE failure statuses (PS3.4 table B.2-1).
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


class InvalidDataset(Exception):
    """A dataset refused on arrival; carries the DIMSE status and a short reason.

    `reason` is a metric label, one of a fixed set: "cannot-decode",
    "too-large", "invalid-pixel-data", "missing-uid", "invalid-uid",
    "sop-class-mismatch", "sop-instance-mismatch".
    """

    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class InstanceIdentity:
    """The identifying attributes of a received instance, all validated."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str


_REQUIRED_UIDS = (
    ("SOPClassUID", "sop_class_uid"),
    ("SOPInstanceUID", "sop_instance_uid"),
    ("StudyInstanceUID", "study_instance_uid"),
    ("SeriesInstanceUID", "series_instance_uid"),
)


def _valid_uid(value: object) -> bool:
    return isinstance(value, str) and UID(value).is_valid


def identify(dataset: Dataset, context_sop_class: str, command_sop_instance: str) -> InstanceIdentity:
    """Return the validated identity of ``dataset`` or raise :class:`InvalidDataset`.

    Parameters
    ----------
    dataset : pydicom.dataset.Dataset
        The decoded C-STORE dataset.
    context_sop_class : str
        The abstract syntax of the presentation context it arrived on; the
        dataset's SOP Class UID must equal it (PS3.4 B.2.3).
    command_sop_instance : str
        The Affected SOP Instance UID of the C-STORE request, which must equal
        the dataset's SOP Instance UID.
    """
    values: dict[str, str] = {}
    for keyword, field in _REQUIRED_UIDS:
        try:
            raw = dataset.get(keyword)
        except Exception as exc:  # a value pydicom cannot decode
            raise InvalidDataset(
                STATUS_CANNOT_UNDERSTAND, "cannot-decode", f"{keyword} cannot be decoded: {exc}"
            ) from exc
        if raw is None or raw == "":
            raise InvalidDataset(
                STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, "missing-uid", f"{keyword} is missing"
            )
        if not _valid_uid(raw):
            raise InvalidDataset(
                STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "invalid-uid",
                f"{keyword} is not a valid UID: {str(raw)[:80]!r}",
            )
        values[field] = str(raw)
    if values["sop_class_uid"] != context_sop_class:
        raise InvalidDataset(
            STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "sop-class-mismatch",
            f"SOP Class differs from the presentation context's: "
            f"{values['sop_class_uid']} is not {context_sop_class}",
        )
    if values["sop_instance_uid"] != command_sop_instance:
        raise InvalidDataset(
            STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "sop-instance-mismatch",
            f"SOP Instance differs from the request's Affected SOP Instance: "
            f"{values['sop_instance_uid']} is not {command_sop_instance}",
        )
    try:
        modality = str(dataset.get("Modality", "") or "")
    except Exception as exc:
        raise InvalidDataset(
            STATUS_CANNOT_UNDERSTAND, "cannot-decode", f"Modality cannot be decoded: {exc}"
        ) from exc
    return InstanceIdentity(modality=modality.strip(), **values)


#: Defined Terms of Modality (0008,0060), PS3.3 C.7.3.1.1.1 (2024 editions),
#: followed by its Retired Defined Terms, which older modalities still send.
MODALITIES = frozenset(
    {
        "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DG",
        "DMS", "DOC", "DX", "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO",
        "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS", "M3D", "MG", "MR", "NM", "OAM", "OCT",
        "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PA", "PLAN", "POS", "PR", "PT",
        "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD",
        "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN",
        "TEXTUREMAP", "TG", "US", "VA", "XA", "XAPROTOCOL", "XC",
        # Retired
        "AS", "CD", "CF", "CP", "CS", "DD", "DF", "DM", "DS", "EC", "FA", "FS", "LP", "MA", "MS",
        "OPR", "ST", "VF",
    }
)  # fmt: skip


def modality_label(value: str) -> str:
    """The Modality as a metric label: a Defined Term, "other", or "unknown" when empty.

    The value comes from the sender, so it never becomes a label as sent: a
    few instances with a 60 kB Modality once made ``/metrics`` 5 MB.
    """
    code = value.strip()
    if not code:
        return "unknown"
    return code if code in MODALITIES else "other"
