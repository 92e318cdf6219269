"""MPPS steps kept as DICOM files, one per version.

An N-SET writes the step's next version beside the current one, the index
then names it in the same transaction that records what the step promised,
and only then is the old version removed. A crash at any point leaves the
index naming a whole file: an N-SET that was not acknowledged and is sent
again applies to the version it was meant for.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomio.files import write_atomically
from node.receive.mpps import MPPS_SOP_CLASS

FOLDER = "mpps"


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
