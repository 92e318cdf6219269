"""Identity, dating and writing of the objects derived from a series.

A retry must not make new objects: the UIDs of a SEG or SR are derived from
the source instances and the identity of what made it, and highdicom's
times and random UIDs are replaced by the job's, so a second run writes the
same bytes and a destination that already has them just gets them again.
"""

from __future__ import annotations

import multiprocessing
import signal
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicomio.files import atomic_file

#: Namespace of segnode's name-based UIDs.
_UID_NAMESPACE = uuid.UUID("5e9a0de1-7c3b-4a52-9a7e-3d1f0c6b2e41")

#: Attributes that highdicom fills with the time of writing; the job's time
#: replaces them so that a retry writes identical objects.
_DATED = (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
          ("InstanceCreationDate", "InstanceCreationTime"))


def result_uid(role: str, source_uids: Sequence[str], identity: Sequence[str]) -> str:
    """A UID for `role` (``"seg"``, ``"sr-series"``...) that depends only on
    the source instances and the pipeline's identity: the 2.25 form of a
    name-based UUID (PS3.5 B.2)."""
    name = "\n".join([role, *sorted(source_uids), *identity])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def source_headers(files: Sequence[Path], used: set[str]) -> list[Dataset]:
    """The headers of the instances a volume was built from (the SEG and
    SR reference exactly those)."""
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    return [h for h in headers if h.SOPInstanceUID in used]


def write_dicom_atomically(dataset: Dataset, path: Path) -> None:
    """Write `dataset` to `path` durably; a reader never sees a partial file.

    Written once, where it will lie: a SEG's Pixel Data (55 MB for a
    512x512x300 CT) is not copied into a buffer first.
    """
    with atomic_file(path) as handle:
        dataset.save_as(handle, enforce_file_format=True)


class BackgroundWriteError(OSError):
    """A file written in the background was not written; says which and why."""


#: Serialising a DICOM object is pure Python that holds the GIL (0.9 s for a
#: SEG of 1,676 frames): only another process overlaps it with other work,
#: and a forked one shares the object's pages instead of receiving a copy.
_FORK = multiprocessing.get_context("fork")


@contextmanager
def written_in_background(dataset: Dataset, path: Path) -> Iterator[None]:
    """Write `dataset` to `path` as :func:`write_dicom_atomically` does, in a
    forked process, while the block runs; leaving the block waits for it.

    Raises
    ------
    BackgroundWriteError
        When the block ended normally and the file was not written (the
        writer's error, or how it exited); an error of the block itself wins.
    """
    receiver, sender = _FORK.Pipe(duplex=False)
    writer = _FORK.Process(target=_write_for_parent, args=(dataset, path, sender), name=f"write {path.name}")
    writer.start()
    sender.close()
    try:
        yield
    finally:
        # Read before joining: a writer blocked on a full pipe would never exit.
        try:
            failure = receiver.recv()
        except EOFError:  # the writer closed its end without a word: it wrote the file or died
            failure = None
        receiver.close()
        writer.join()
    if writer.exitcode != 0:
        raise BackgroundWriteError(
            f"{path} was not written: {failure or f'the writer exited with status {writer.exitcode}'}"
        )


def _write_for_parent(dataset: Dataset, path: Path, report: Connection) -> None:
    """The forked writer: the parent's signal handlers (a worker giving its
    job back) are not its own, and its failure goes back through `report`."""
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    try:
        write_dicom_atomically(dataset, path)
    except Exception as error:
        report.send(f"{type(error).__name__}: {error}"[:2000])
        raise SystemExit(1) from None


#: Patient (PS3.3 C.7.1.1) and General Study (C.7.2.1) attributes of Type 2,
#: present in every derived object, empty where the source has none...
_PATIENT_AND_STUDY_TYPE_2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
#: ...and of Type 3 there and in Patient Study (C.7.2.2), copied where it has them.
_PATIENT_AND_STUDY_TYPE_3 = (
    "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientBirthTime", "StudyDescription",
    "PatientAge", "PatientSize", "PatientWeight",
)


def copy_patient_and_study(dataset: Dataset, source: Dataset) -> None:
    """Put a derived object in its source's patient and study, for the
    objects no library builds from a source (Encapsulated PDF, RTSTRUCT)."""
    for keyword in _PATIENT_AND_STUDY_TYPE_2:
        setattr(dataset, keyword, source.get(keyword, ""))
    for keyword in _PATIENT_AND_STUDY_TYPE_3:
        if keyword in source:
            setattr(dataset, keyword, source.data_element(keyword).value)
    dataset.StudyInstanceUID = source.StudyInstanceUID


def copy_series_context(dataset: Dataset, source: Dataset) -> None:
    """Give a derived series the source series' Body Part Examined (General
    Series, PS3.3 C.7.3.1, Type 3), by which a PACS files and sorts it beside
    its source; only IODs with the General Series module (SEG, Secondary
    Capture) have it. Laterality is not copied: it is Type 2C on a
    condition a derived object does not meet (dciodvfy says so)."""
    if "BodyPartExamined" in source:
        dataset.BodyPartExamined = source.BodyPartExamined


def date_object(dataset: Dataset, created: datetime) -> None:
    """Date what highdicom dated now with the job's time instead."""
    for date_keyword, time_keyword in _DATED:
        if date_keyword in dataset:
            setattr(dataset, date_keyword, created.strftime("%Y%m%d"))
            setattr(dataset, time_keyword, created.strftime("%H%M%S.%f"))
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S.%f")


def fix_dimension_organisation(seg: Dataset, uid: str) -> None:
    """highdicom gives each SEG a random Dimension Organization UID; it only
    links the SEG's own dimension index items, so a derived one serves."""
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid
