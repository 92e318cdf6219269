"""MPPS steps kept as DICOM files, one per version.

An N-SET writes the step's next version beside the current one, the index
then names it in the same transaction that records what the step promised,
and only then is the old version removed. A crash at any point leaves the
index naming a whole file: an N-SET that was not acknowledged and is sent
again applies to the version it was meant for.

A file the index does not name is garbage that a crash left: a version
written but never named, one replaced but not yet removed, or that of a
step whose rows the retention policy removed first (node/retention/removal.py).
The retention pass removes such orphans once older than :data:`ORPHAN_SECONDS`.
"""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomio.files import write_atomically
from node.receive.mpps import MPPS_SOP_CLASS

FOLDER = "mpps"
#: A version is written before the index names it, and naming it may wait
#: for the database's write lock (node/database.py, 30 s): a file younger
#: than this may be a version about to be named.
ORPHAN_SECONDS = 3600.0


def encoded(step: Dataset) -> bytes:
    """The step as a DICOM file. Raises what pydicom raises for a value it
    cannot encode: node/receive/mpps.py checks only the attributes the node
    reads, and a peer may send others that do not decode."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MPPS_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = step.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset(step)
    dataset.file_meta = meta
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


class StepFiles:
    def __init__(self, storage_dir: Path):
        self.folder = Path(storage_dir) / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, sop_instance_uid: str, version: int, data: bytes) -> Path:
        """Write a step's `version` durably; the UID was checked (node/receive/mpps.py)."""
        return write_atomically(self.folder / f"{sop_instance_uid}.{version}.dcm", data)

    @staticmethod
    def read(path: Path) -> Dataset:
        return pydicom.dcmread(path)

    @staticmethod
    def remove(path: Path) -> None:
        path.unlink(missing_ok=True)

    @staticmethod
    def size(path: Path) -> int:
        """Its bytes; 0 for a version gone meanwhile (an N-SET replaced it, a pass removed it)."""
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def orphans(self, named: set[str], now: float) -> list[Path]:
        """The files of the folder (temporary ones of a write cut short
        included) whose names are not in ``named``, older than :data:`ORPHAN_SECONDS`.
        ``named`` must be read before this is called: a version named since
        is then young, and spared."""
        found = []
        for entry in os.scandir(self.folder):
            try:
                old = entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < now - ORPHAN_SECONDS
            except FileNotFoundError:
                continue  # removed meanwhile (an N-SET replacing its version)
            if old and entry.name not in named:
                found.append(Path(entry.path))
        return found
