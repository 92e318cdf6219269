"""MPPS steps kept as DICOM files, one per version.

An N-SET writes the step's next version beside the current one, the index
then names it in the same transaction that records what the step promised,
and only then is the old version removed. A crash at any point leaves the
index naming a whole file: an N-SET that was not acknowledged and is sent
again applies to the version it was meant for.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomio.derived import write_dicom_atomically
from node.receive.mpps import MPPS_SOP_CLASS

FOLDER = "mpps"


class StepFiles:
    def __init__(self, storage_dir: Path):
        self.folder = Path(storage_dir) / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, step: Dataset, version: int) -> Path:
        """Write `step` durably as its `version`; the UID was checked (node/receive/mpps.py)."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MPPS_SOP_CLASS
        meta.MediaStorageSOPInstanceUID = step.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = Dataset(step)
        dataset.file_meta = meta
        path = self.folder / f"{step.SOPInstanceUID}.{version}.dcm"
        write_dicom_atomically(dataset, path)
        return path

    @staticmethod
    def read(path: Path) -> Dataset:
        return pydicom.dcmread(path)

    @staticmethod
    def remove(path: Path) -> None:
        path.unlink(missing_ok=True)
