"""Identity, dating and writing of the objects derived from a series.

A retry must not make new objects: the UIDs of a SEG or SR are derived from
the source instances and the identity of what made it, and highdicom's
times and random UIDs are replaced by the job's, so a second run writes the
same bytes and a destination that already has them just gets them again.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import ClassVar, Final, NoReturn

import pydicom
from pydicom.dataset import Dataset

from dicomio.files import atomic_file

#: Namespace of segnode's name-based UIDs.
_UID_NAMESPACE = uuid.UUID("5e9a0de1-7c3b-4a52-9a7e-3d1f0c6b2e41")

#: Attributes that highdicom fills with the time of writing; the job's time
#: replaces them so that a retry writes identical objects.
_DATED = (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
          ("InstanceCreationDate", "InstanceCreationTime"))


#: Longest value of VR LO (Series Description, Content Description; PS3.5 table 6.2-1).
MAX_LO_LENGTH: Final = 64


class DerivedInputError(ValueError):
    """Labels, structures or source images that cannot make a derived object;
    says which object and which series, so a job's error names both."""

    #: The object's name in the message: "SEG", "RTSTRUCT", "overlay images".
    made: ClassVar[str]

    def __init__(self, series_instance_uid: str, problem: str) -> None:
        super().__init__(f"{self.made} for series {series_instance_uid}: {problem}")
        self.series_instance_uid = series_instance_uid


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


#: Building and serialising a SEG is pure Python that holds the GIL (1.0 s
#: and 0.9 s for 1,676 frames): only another process overlaps it with other
#: work, and a forked one shares the inputs' pages instead of receiving a copy.
_FORK = multiprocessing.get_context("fork")

#: What a header leaves out: the frames.
_FRAMES = frozenset({"PixelData", "PerFrameFunctionalGroupsSequence"})


class BackgroundBuild:
    """A DICOM object being built and written by a forked process.

    Its header is received on a thread as soon as it is sent: a header over
    the pipe's 64 KiB would otherwise hold the builder until it is asked for.
    """

    def __init__(self, receiver: Connection, builder: multiprocessing.process.BaseProcess, path: Path):
        self._receiver, self._builder, self._path = receiver, builder, path
        self._first: tuple[str, object] | None = None
        self._reader = threading.Thread(target=self._read_first, name=f"header of {path.name}", daemon=True)
        self._reader.start()

    def _read_first(self) -> None:
        try:
            self._first = self._receiver.recv()
        except EOFError:  # the builder died before it sent anything
            self._first = None

    def header(self) -> Dataset:
        """The object as it was built, without its frames: what an object
        that references it reads (its UIDs, segments, referenced series).
        Waits until it is built.

        Raises
        ------
        BackgroundWriteError
            If building it failed.
        """
        self._reader.join()
        if self._first is None:
            self._fail(None)
        kind, value = self._first
        if kind == "error":
            self._fail(str(value))
        return value

    def _finish(self) -> None:
        """Wait for the builder; raise if it did not write the file."""
        self.header()
        try:
            kind, value = self._receiver.recv()  # only an error follows the header
            self._fail(str(value))
        except EOFError:
            pass
        finally:
            self._receiver.close()
            self._builder.join()
        if self._builder.exitcode != 0:
            self._fail(None)

    def _abandon(self) -> None:
        """The block failed: let the builder end (what it writes is what a
        retry writes again), then stop listening."""
        self._builder.join()
        self._reader.join()
        self._receiver.close()

    def _fail(self, problem: str | None) -> NoReturn:
        if problem is None:
            self._builder.join()
            problem = f"the builder exited with status {self._builder.exitcode}"
        raise BackgroundWriteError(f"{self._path} was not written: {problem}")


@contextmanager
def built_in_background(make: Callable[[], Dataset], path: Path) -> Iterator[BackgroundBuild]:
    """Build a DICOM object with `make` and write it to `path` as
    :func:`write_dicom_atomically` does, in a forked process, while the
    block runs; leaving the block waits for it.

    Raises
    ------
    BackgroundWriteError
        When the block ended normally and the file was not written (the
        builder's error, or how it exited); an error of the block itself wins.
    """
    receiver, sender = _FORK.Pipe(duplex=False)
    builder = _FORK.Process(target=_build_for_parent, args=(make, path, sender), name=f"write {path.name}")
    builder.start()
    sender.close()
    build = BackgroundBuild(receiver, builder, path)
    try:
        yield build
    except BaseException:
        build._abandon()
        raise
    build._finish()


def _build_for_parent(make: Callable[[], Dataset], path: Path, report: Connection) -> None:
    """The forked builder: the parent's signal handlers (a worker giving its
    job back) are not its own; the header, or the failure, goes back through
    `report`."""
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    try:
        dataset = make()
        header = Dataset()
        for element in dataset:
            if element.keyword not in _FRAMES:
                header.add(element)
        report.send(("header", header))
        write_dicom_atomically(dataset, path)
    except Exception as error:
        report.send(("error", f"{type(error).__name__}: {error}"[:2000]))
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
