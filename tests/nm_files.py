"""Small NM Image (RECON TOMO) files in each vendor convention dicomio.spect reads.

The tests write the activity concentration they want to read back, so the
expected values are the ones given here, never what the reader computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"


class Carrier(Enum):
    """How the file says its voxels are Bq/ml (or does not)."""

    UNITS_BQML = "units"
    RWVM = "rwvm"
    PRIVATE = "private"
    COUNTS = "counts"


@dataclass(frozen=True)
class NmSpec:
    """What one synthetic SPECT holds. Defaults: 177Lu, 7.4 GBq at 08:00, acquired 24 h later."""

    carrier: Carrier = Carrier.UNITS_BQML
    spacing_mm: float = 4.8
    pixel_spacing_mm: tuple[float, float] = (4.8, 4.8)
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    position: tuple[float, float, float] = (-76.8, -76.8, -50.0)
    frame_order: Sequence[int] | None = None  # slice number (1-based) of each frame in the file
    acquisition: datetime = datetime(2026, 3, 3, 8, 0, 0)
    administration: datetime | None = datetime(2026, 3, 2, 8, 0, 0)
    # Radiopharmaceutical Start DateTime is not in the NM IOD: a standard NM file has only the time.
    start_datetime_attribute: bool = True
    dose: str | None = "7400000000"
    decay_correction: str | None = "START"
    half_life_s: str | None = "574300.8"
    nuclide_code: tuple[str, str, str] | None = ("447553000", "SCT", "^177^Lutetium")
    nuclide_text: str | None = None
    acquisition_datetime_attribute: bool = True
    rotations: tuple[tuple[float, int], ...] = ((20000.0, 60),)  # (ms per view, views)
    extra: dict = field(default_factory=dict)


def nm_dataset(values_bq_ml: np.ndarray, spec: NmSpec = NmSpec()) -> Dataset:
    """A RECON TOMO NM image whose voxels read back as `values_bq_ml` [slice, row, column] in Bq/ml."""
    slices, rows, columns = values_bq_ml.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = NM_IMAGE_STORAGE
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Spect^Test"
    ds.PatientID = "SPECT-1"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    day, clock = spec.acquisition.strftime("%Y%m%d"), spec.acquisition.strftime("%H%M%S")
    ds.StudyDate, ds.StudyTime = day, clock
    ds.SeriesDate, ds.SeriesTime = day, clock
    # The reconstruction is made later than the acquisition: the reader must not use it.
    ds.ContentDate, ds.ContentTime = day, "235900"
    ds.AcquisitionDate, ds.AcquisitionTime = day, clock
    if spec.acquisition_datetime_attribute:
        ds.AcquisitionDateTime = spec.acquisition.strftime("%Y%m%d%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = "NM"
    # Type 2C; dciodvfy cannot tell an unpaired body part, and warns (only) on an empty value.
    ds.Laterality = ""
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    ds.Manufacturer = "segnode tests"
    ds.PatientOrientation = ""
    ds.PatientOrientationCodeSequence = DicomSequence()
    ds.PatientGantryRelationshipCodeSequence = DicomSequence()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.CorrectedImage = ["ATTN", "SCAT", "DECY"] if spec.decay_correction else ["ATTN", "SCAT"]
    if spec.decay_correction is not None:
        ds.DecayCorrection = spec.decay_correction
    ds.CountsAccumulated = ""

    # Pixels: uint16 with one slope for the volume.
    peak = float(values_bq_ml.max())
    slope = peak / 60000.0 if peak > 0 else 1.0
    stored = np.rint(values_bq_ml / slope).astype(np.uint16)
    order = list(spec.frame_order) if spec.frame_order is not None else list(range(1, slices + 1))
    frames = np.stack([stored[number - 1] for number in order])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [f"{v:g}" for v in spec.pixel_spacing_mm]
    ds.NumberOfFrames = slices
    ds.FrameIncrementPointer = 0x00540080
    ds.SliceVector = order
    ds.NumberOfSlices = slices
    ds.NumberOfEnergyWindows = 1
    ds.NumberOfDetectors = 1
    ds.NumberOfRotations = len(spec.rotations)
    ds.PixelData = frames.tobytes()

    if spec.carrier is Carrier.RWVM:
        ds.RealWorldValueMappingSequence = [_mapping("Bq/ml", "Becquerels/milliliter", slope)]
    elif spec.carrier is Carrier.COUNTS:
        # Hermes' non-quantitative mapping (UCL/STIR issue #1123): {counts}, slope 1.
        ds.RealWorldValueMappingSequence = [_mapping("{counts}", "Counts", 1.0)]
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
    else:
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        if spec.carrier is Carrier.UNITS_BQML:
            ds.Units = "BQML"
        else:
            ds.add_new((0x0057, 0x0010), "LO", "segnode tests")
            ds.add_new((0x0057, 0x1003), "LO", "BQML")

    window = Dataset()
    window_range = Dataset()
    window_range.EnergyWindowLowerLimit, window_range.EnergyWindowUpperLimit = "187.2", "228.8"
    window.EnergyWindowRangeSequence = [window_range]
    window.EnergyWindowName = "Lu177 208 keV"
    ds.EnergyWindowInformationSequence = [window]

    drug = Dataset()
    if spec.nuclide_code is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = spec.nuclide_code
        drug.RadionuclideCodeSequence = [code]
    if spec.nuclide_text is not None:
        drug.Radionuclide = spec.nuclide_text
    drug.Radiopharmaceutical = "177Lu-DOTATOC"
    if spec.administration is not None:
        if spec.start_datetime_attribute:
            drug.RadiopharmaceuticalStartDateTime = spec.administration.strftime("%Y%m%d%H%M%S")
        drug.RadiopharmaceuticalStartTime = spec.administration.strftime("%H%M%S")
    if spec.dose is not None:
        drug.RadionuclideTotalDose = spec.dose
    if spec.half_life_s is not None:
        drug.RadionuclideHalfLife = spec.half_life_s
    ds.RadiopharmaceuticalInformationSequence = [drug]

    detector = Dataset()
    detector.CollimatorType = "PARA"
    detector.FocalDistance = "0"
    detector.ImagePositionPatient = [f"{v:g}" for v in spec.position]
    detector.ImageOrientationPatient = [f"{v:g}" for v in spec.orientation]
    ds.DetectorInformationSequence = [detector]

    rotations = []
    for duration_ms, views in spec.rotations:
        rotation = Dataset()
        rotation.StartAngle = "0"
        rotation.AngularStep = f"{360.0 / views / 2:g}"
        rotation.RotationDirection = "CW"
        rotation.ScanArc = "180"
        rotation.ActualFrameDuration = int(duration_ms)
        rotation.NumberOfFramesInRotation = views
        rotations.append(rotation)
    ds.RotationInformationSequence = rotations

    ds.SpacingBetweenSlices = f"{spec.spacing_mm:g}"
    ds.SliceThickness = f"{abs(spec.spacing_mm):g}"
    ds.ReconstructionDiameter = f"{spec.pixel_spacing_mm[1] * columns:g}"
    ds.ConvolutionKernel = "OSEM"
    for keyword, value in spec.extra.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _mapping(unit: str, meaning: str, slope: float) -> Dataset:
    """One Real World Value Mapping item in UCUM `unit` over the whole uint16 range."""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = unit, "UCUM", meaning
    mapping = Dataset()
    mapping.MeasurementUnitsCodeSequence = [code]
    mapping.LUTExplanation = meaning
    mapping.LUTLabel = unit
    mapping.RealWorldValueFirstValueMapped = 0
    mapping.RealWorldValueLastValueMapped = 65535
    mapping.RealWorldValueIntercept = 0.0
    mapping.RealWorldValueSlope = slope
    return mapping
