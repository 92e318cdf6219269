"""The phantoms' CT series as Part-10 files, one CT Image file per slice.

The PET/CT study (phantom/study.py) and every time point of the SPECT/CT
course (phantom/spect_course.py) write their CT alike: the anatomy's CT
numbers stored as 12 bits of HU + 1024, axial slices numbered from the head,
Explicit VR Little Endian. They differ in their headers (patient, study,
series: each module's own) and in the technique (:class:`CtTechnique`). One
writer keeps the two CTs the same where the node and the viewers read them;
the PET's slices take their plane from it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from dicomio.volume import Volume

__all__ = ["CtTechnique", "ds_text", "save_part10", "slice_plane", "write_ct_slices"]


@dataclass(frozen=True)
class CtTechnique:
    """What a phantom's CT says of its acquisition and reconstruction, where the two phantoms differ.

    Attributes
    ----------
    tube_current_ma : int
        X-Ray Tube Current: a diagnostic CT's, or a SPECT/CT's low dose.
    kernel : str
        Convolution Kernel.
    contrast_agent : str or None
        Contrast/Bolus Agent, given intravenously; None for a CT without contrast.
    """

    tube_current_ma: int
    kernel: str
    contrast_agent: str | None = None


def ds_text(value: float) -> str:
    """A Decimal String value (VR DS, at most 16 characters) of `value`; every phantom's."""
    return format_number_as_ds(float(value))


def slice_plane(volume: Volume, index: int) -> Dataset:
    """Instance Number, Image Plane and Image Pixel geometry of axial slice `index` of `volume`.

    InstanceNumber 1 is the top slice, as scanners number a craniocaudal scan.
    """
    ds = Dataset()
    slices, rows, columns = volume.array.shape
    ds.InstanceNumber = slices - index
    position = volume.affine @ np.array([index, 0, 0, 1.0])
    ds.ImagePositionPatient = [ds_text(v) for v in position[:3]]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = ds_text(position[2])
    spacing = volume.spacing
    ds.PixelSpacing = [ds_text(spacing[1]), ds_text(spacing[2])]
    ds.SliceThickness = ds_text(spacing[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    return ds


def _ct_image(volume: Volume, index: int, technique: CtTechnique) -> Dataset:
    """The CT Image module and the pixels of slice `index`: 12 bits stored, HU + 1024 (the common
    CT encoding)."""
    ds = slice_plane(volume, index)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    # PET and NM say the same with codes (NM/PET Patient Orientation), where
    # Patient Position must then be absent.
    ds.PatientPosition = "HFS"
    ds.KVP = "120"
    ds.XRayTubeCurrent = technique.tube_current_ma
    ds.ConvolutionKernel = technique.kernel
    ds.ReconstructionDiameter = ds_text(volume.array.shape[2] * volume.spacing[2])
    if technique.contrast_agent is not None:
        ds.ContrastBolusAgent = technique.contrast_agent
        ds.ContrastBolusRoute = "IV"
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelData = (volume.array[index].astype(np.int32) + 1024).astype(np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_ct_slices(
    folder: Path, volume: Volume, technique: CtTechnique, header: Callable[[int], Dataset]
) -> list[Dataset]:
    """Write every slice of `volume` as ``folder/CT<InstanceNumber>.dcm``.

    ``header(index)`` gives slice `index`'s SOP, patient, study, series and
    frame of reference attributes: what each phantom says of itself.
    Returns the datasets in array order, each with its ``filename``, as
    highdicom takes a SEG's source images.
    """
    datasets = []
    for index in range(volume.array.shape[0]):
        ds = header(index)
        ds.update(_ct_image(volume, index, technique))
        save_part10(ds, folder / f"CT{ds.InstanceNumber:04d}.dcm")
        datasets.append(ds)
    return datasets


def save_part10(ds: Dataset, path: Path) -> Path:
    """Write `ds` to `path` (its folder created) as a Part-10 file in Explicit VR Little Endian,
    and set its ``filename`` to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    ds.filename = str(path)
    return path
