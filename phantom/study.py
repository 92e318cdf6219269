"""The phantom study as a scanner would send it: Part-10 CT and PET files.

One file per slice, Explicit VR Little Endian, with the headers a real
PET/CT carries (patient, radiopharmaceutical, decay correction), so that
the node, the SUV code and the viewers read it as they would a scanner's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomio.suv import average_count_time_s
from dicomio.volume import Volume
from phantom.anatomy import (
    CT_GRID,
    CT_TIME,
    FDG,
    LESION,
    PATIENT,
    AxialGrid,
    CtPhantom,
    Lesion,
    PetPhantom,
    StructureTruth,
    ct_phantom,
    pet_phantom,
)
from phantom.ct_files import CtTechnique, ds_text, save_part10, slice_plane, write_ct_slices

# ---------------------------------------------------------------------------
# DICOM files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenSeries:
    """One series as written: its UID, modality and files (by InstanceNumber)."""

    series_instance_uid: str
    modality: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class PhantomStudy:
    """A phantom study on disk and its truth.

    Attributes
    ----------
    study_instance_uid, frame_of_reference_uid : str
    ct : WrittenSeries
    pet : WrittenSeries or None
        None for a CT-only study.
    truth : Mapping
        Structure name to :class:`StructureTruth` (see :class:`CtPhantom`).
    lesion : Lesion
        The hot lesion (SUV :attr:`Lesion.suv`, volume :attr:`Lesion.volume_ml`).
    """

    study_instance_uid: str
    frame_of_reference_uid: str
    ct: WrittenSeries
    pet: WrittenSeries | None
    truth: Mapping[str, StructureTruth]
    lesion: Lesion


def write_study(
    directory: str | os.PathLike[str],
    ct_grid: AxialGrid = CT_GRID,
    *,
    seed: int = 0,
    with_pet: bool = True,
) -> PhantomStudy:
    """Write the phantom's CT (and PET) as Part-10 files, one per slice.

    CT Image Storage into ``directory/ct``, PET Image Storage into
    ``directory/pet``, Explicit VR Little Endian, file names by
    InstanceNumber (1 at the head, as scanners number a craniocaudal scan).

    Parameters
    ----------
    directory : str or os.PathLike
        Created if missing.
    ct_grid : AxialGrid
        The CT grid; the PET's is :func:`pet_grid_for` it.
    seed : int
        Seeds the noise and the UIDs.
    with_pet : bool
        False for a CT-only study (the CT benchmark).

    Raises
    ------
    FileExistsError
        If ``ct`` or ``pet`` in `directory` already holds files: another
        study's images would be mixed into this one's.
    """
    out = Path(directory)
    for folder in (out / "ct", out / "pet"):
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} already holds files: write the phantom study to an empty folder")
    ct = ct_phantom(ct_grid, seed=seed)
    ct_files = _write_ct(out / "ct", ct)
    pet_series = None
    if with_pet:
        pet = pet_phantom(ct, seed=seed)
        pet_series = WrittenSeries(pet.volume.series_instance_uid, "PT", _write_pet(out / "pet", pet))
    return PhantomStudy(
        study_instance_uid=ct.volume.study_instance_uid,
        frame_of_reference_uid=ct.volume.frame_of_reference_uid,
        ct=WrittenSeries(ct.volume.series_instance_uid, "CT", ct_files),
        pet=pet_series,
        truth=ct.truth,
        lesion=LESION,
    )


def da_text(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def tm_text(moment: datetime) -> str:
    return moment.strftime("%H%M%S")


def dt_text(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def _common(volume: Volume, index: int, series_time: datetime, acquisition: datetime) -> Dataset:
    """Patient, study, series, frame of reference and equipment attributes
    shared by the CT and PET images of slice `index`."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = volume.sources[index].sop_class_uid
    ds.SOPInstanceUID = volume.sources[index].sop_instance_uid
    ds.StudyDate = da_text(CT_TIME)
    ds.StudyTime = tm_text(CT_TIME)
    ds.SeriesDate = ds.ContentDate = da_text(series_time)
    ds.SeriesTime = ds.ContentTime = tm_text(series_time)
    ds.AcquisitionDate = da_text(acquisition)
    ds.AcquisitionTime = tm_text(acquisition)
    ds.AccessionNumber = "PHANTOM1"
    ds.Modality = volume.modality
    ds.Manufacturer = "segnode"
    ds.ManufacturerModelName = "segnode torso phantom"
    ds.InstitutionName = "segnode"
    ds.StationName = "PHANTOM"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PET/CT torso phantom"
    ds.PatientName = PATIENT.name
    ds.PatientID = PATIENT.patient_id
    ds.PatientBirthDate = PATIENT.birth_date
    ds.PatientSex = PATIENT.sex
    ds.PatientAge = f"{CT_TIME.year - int(PATIENT.birth_date[:4]):03d}Y"
    ds.PatientSize = ds_text(PATIENT.height_m)
    ds.PatientWeight = ds_text(PATIENT.weight_kg)
    ds.BodyPartExamined = "CHESTABDOMEN"
    ds.StudyInstanceUID = volume.study_instance_uid
    ds.SeriesInstanceUID = volume.series_instance_uid
    ds.StudyID = "1"
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = volume.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    return ds


#: A diagnostic CT in the arterial phase.
_CT_TECHNIQUE = CtTechnique(
    tube_current_ma=150, kernel="STANDARD", contrast_agent="Iodinated contrast, arterial phase"
)


def _write_ct(folder: Path, ct: CtPhantom) -> tuple[Path, ...]:
    volume = ct.volume

    def header(index: int) -> Dataset:
        ds = _common(volume, index, CT_TIME, CT_TIME + timedelta(seconds=5))
        ds.SeriesNumber = 2
        ds.SeriesDescription = f"CT torso {volume.spacing[0]:g} mm"
        return ds

    datasets = write_ct_slices(folder, volume, _CT_TECHNIQUE, header)
    return tuple(sorted(Path(ds.filename) for ds in datasets))


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _radiopharmaceutical() -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    item.RadiopharmaceuticalRoute = "Intravenous route"
    item.RadiopharmaceuticalStartTime = tm_text(FDG.injection)
    item.RadiopharmaceuticalStartDateTime = FDG.injection.strftime("%Y%m%d%H%M%S")
    item.RadionuclideTotalDose = ds_text(FDG.injected_dose_bq)
    item.RadionuclideHalfLife = ds_text(FDG.half_life_s)
    item.RadionuclidePositronFraction = "0.9673"
    item.RadionuclideCodeSequence = [_code(codes.SCT._18Fluorine)]
    item.RadiopharmaceuticalCodeSequence = [_code(codes.SCT.FluorodeoxyglucoseF18)]
    item.AdministrationRouteCodeSequence = [_code(codes.SCT.IntravenousRoute)]
    return item


def _patient_orientation() -> Dataset:
    """NM/PET Patient Orientation: recumbent, supine, head first."""
    ds = Dataset()
    orientation = _code(codes.SCT.Recumbent)
    orientation.PatientOrientationModifierCodeSequence = [_code(codes.SCT.Supine)]
    ds.PatientOrientationCodeSequence = [orientation]
    ds.PatientGantryRelationshipCodeSequence = [_code(codes.SCT.Headfirst)]
    return ds


def _write_pet(folder: Path, pet: PetPhantom) -> tuple[Path, ...]:
    volume = pet.volume
    slices = volume.array.shape[0]
    z = volume.affine[2, 3] + volume.affine[2, 0] * np.arange(slices)
    beds = np.floor((z - z[0]) / FDG.bed_length_mm).astype(int)
    decay_constant = math.log(2) / FDG.half_life_s
    in_frame = decay_constant * FDG.bed_duration_s
    orientation = _patient_orientation()
    files = []
    for index in range(slices):
        bed_offset_s = float(beds[index]) * FDG.bed_duration_s
        acquisition = FDG.scan_start + timedelta(seconds=bed_offset_s)
        ds = _common(volume, index, FDG.scan_start, acquisition)
        ds.update(slice_plane(volume, index))
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SeriesNumber = 3
        ds.SeriesDescription = "PET FDG torso AC"
        ds.update(orientation)
        # PET Series.
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
        ds.DecayCorrection = "START"
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "CT-based"
        ds.ReconstructionMethod = "OSEM"
        ds.CollimatorType = "NONE"
        ds.NumberOfSlices = slices
        # PET Isotope.
        ds.RadiopharmaceuticalInformationSequence = [_radiopharmaceutical()]
        # PET Image: the bed's frame, decay corrected to the scan start.
        ds.FrameReferenceTime = ds_text(
            1000.0 * (bed_offset_s + average_count_time_s(FDG.bed_duration_s, FDG.half_life_s))
        )
        ds.ActualFrameDuration = int(FDG.bed_duration_s * 1000)
        ds.DecayFactor = ds_text(math.exp(decay_constant * bed_offset_s) * in_frame / -math.expm1(-in_frame))
        ds.ImageIndex = ds.InstanceNumber
        slope = pet.rescale_slopes[index]
        stored = np.rint(volume.array[index] / slope).astype(np.int16)
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = ds_text(slope)
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        files.append(save_part10(ds, folder / f"PT{ds.InstanceNumber:04d}.dcm"))
    return tuple(sorted(files))
