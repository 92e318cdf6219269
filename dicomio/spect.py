"""A quantitative SPECT reconstruction as activity concentration (Bq/ml) at its acquisition.

Dosimetry reads each organ's activity off every SPECT/CT time point, so the
voxels must be Bq/ml at a known time and the grid must lie exactly on the
CT's. This module reads one reconstructed NM image (NM Image Storage
1.2.840.10008.5.1.4.1.1.20, Image Type Value 3 RECON TOMO or RECON GATED
TOMO with a single gate) into a ``Volume`` in Bq/ml (float32), with the
administration it follows and the hours in between.

Geometry (PS3.3 C.8.4.8 NM Multi-frame, C.8.4.11 NM Detector, C.8.4.15
NM Reconstruction)
    An NM image is one multi-frame instance without functional groups, so
    ``dicomio.series`` (which places frames by their Plane Position) does
    not apply. Frame Increment Pointer (0028,0009) is Slice Vector
    (0054,0080) for RECON TOMO, and R-R Interval Vector, Time Slot Vector,
    Slice Vector for RECON GATED TOMO (Table C.8-8); the Slice Vector gives
    each frame's slice number, and frames are placed by it, never by their
    order in the file. Image Position and Orientation (Patient) of the first
    slice are in the Detector Information Sequence (0054,0022) item (read at
    the top level where a writer put them there); slice k lies Spacing
    Between Slices (0018,0088) x (k - 1) along the normal, the cross product
    of the row and column cosines, the sign of the spacing giving the
    direction (C.8.4.15). As in ``dicomio.series``, the volume's slices
    ascend along the normal, so a negative spacing reverses the frames.

Values: the conventions recognised, in this order (``QuantitationConvention``)
    Which vendor writes which, with sources: docs/nm-quantitative-conventions.md.
    1. Real World Value Mapping Sequence (0040,9096) items whose Measurement
       Units Code Sequence (0040,08EA) is UCUM Bq/ml (or kBq/ml, MBq/ml): the
       mapping of stored values to real-world values of PS3.3 C.7.6.16.2.11,
       the NM Image IOD's own carrier. An item with the code value Bq/ml but
       no Coding Scheme Designator (as PyTheranostics' make_bqml_suv writes
       it) is read as UCUM and noted. Items in other units ({counts}, as
       Hermes writes them, UCL/STIR issue #1123) map to other quantities and
       are passed over: several mappings may coexist (C.7.6.16.2.11.1).
    2. Units (0054,1001) BQML (PS3.3 C.8.9.1.1.3, the PET Series
       attribute), values = stored x Rescale Slope + Rescale Intercept.
    3. The private "voxel data units" (0057,1003) BQML with the Rescale
       Slope, as read and written by calibspect (A. Dieudonné, 2025,
       github.com/adieudo/calibspect), the public tool that makes NM files
       of GE cameras PET-like quantitative.
    Of these only the Real World Value Mapping is part of the NM IOD;
    dicom3tools' dciodvfy (2022 snapshot) reports Units, Rescale Slope and
    Intercept and Decay Correction in an NM image as standard extensions,
    which is how vendors carry PET-style quantitation into NM files.
    Every carrier that says Bq/ml must say the same values (slopes within
    0.1 %, intercepts within one stored step): the first is used and the
    agreement noted; a disagreement, or Units and (0057,1003) naming
    different units for the same rescaled values, is refused naming both,
    since which one is right cannot be told. A slope that is not finite and
    positive, an intercept that is not finite, a Modality LUT Sequence or a
    mapping whose First/Last Value Mapped leave stored values out are
    refused naming the attribute. Counts (Units CNTS, a {counts} mapping,
    nothing at all) are refused as not quantitative, listing every carrier
    looked at: a calibration factor stated outside the file (a camera
    sensitivity, as for GE StarGuide counts images) or in Philips' PET
    private (7053,1009), documented for PET only, is not applied. No
    Enhanced NM Image SOP class exists (PS3.4 B.5); a Real World Value
    Mapping in functional groups of an NM image is listed, not read.

Decay Correction (0054,1102) and the time the values stand for
    Dosimetry needs the activity at the acquisition (its start is the time
    point), so: START, values already decayed to the acquisition start, are
    kept; ADMIN, values decayed back to the administration, are multiplied
    by 2^(-dt / T1/2) with the header's Radionuclide Half Life; NONE or no
    Decay Correction (usual in NM images) means the counts of the whole
    acquisition, which equal the activity at the average count time T_ave
    (PS3.3 C.8.9.4.1.5; ``dicomio.suv.average_count_time_s``) of the
    acquisition's duration (Actual Frame Duration x Number of Frames in
    Rotation, summed over the Rotation Information Sequence, C.8.4.12), so
    they are multiplied by 2^(T_ave / T1/2). For 177Lu (6.6 d) and a 30 min
    acquisition that is 0.1 %; without a half-life or duration it is left
    out and noted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any, Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

from dicomio.administration import Administration, AdministrationError, read_administration
from dicomio.suv import DecayCorrection, average_count_time_s, naive, tag_name
from dicomio.volume import SourceFrame, Volume

__all__ = [
    "NM_IMAGE_STORAGE",
    "QuantitationConvention",
    "QuantitativeSpect",
    "SpectError",
    "SpectAttributeError",
    "NotQuantitativeError",
    "AdministrationAfterAcquisitionError",
    "load_quantitative_spect",
]

NM_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.20"

#: Image Type Value 3 of a reconstructed volume (PS3.3 C.8.4.9.1.1).
_RECONSTRUCTED: Final = ("RECON TOMO", "RECON GATED TOMO")

_SLICE_VECTOR: Final = 0x00540080

#: UCUM activity concentrations (case as UCUM writes them, and "ml" as vendors
#: do) to their factor to Bq/ml.
_UCUM_BQ_PER_ML: Final = {
    "bq/ml": 1.0,
    "kbq/ml": 1e3,
    "mbq/ml": 1e6,
}

#: The private element calibspect reads as "voxel data units".
_PRIVATE_UNITS_TAG: Final = (0x0057, 0x1003)
_PRIVATE_UNITS_NAME: Final = "private (0057,1003)"
#: Philips' PET scale factor from CNTS to Bq/ml ("Philips PET Private Group"; QIBA vendor-neutral
#: SUV pseudo-code, 2012): documented for PET images only, so never applied to an NM image.
_PHILIPS_BQML_FACTOR_TAG: Final = (0x7053, 0x1009)

#: Relative agreement required of two carriers' slopes (their intercepts: one stored step).
_AGREEMENT: Final = 1e-3

#: The largest Rows or Columns of a SPECT reconstruction read (real ones have 64 to 256): a
#: hostile header must not size arrays.
_MAX_MATRIX: Final = 1024

#: The most slices a reconstructed SPECT may have: real ones have a few hundred; a hostile
#: header must not size arrays.
_MAX_FRAMES: Final = 4096

#: Bound on Actual Frame Duration (ms) and Number of Frames in Rotation: a day in ms, far above
#: any real view or view count.
_MAX_ROTATION_VALUE: Final = 86_400_000

#: Tolerance on unit length and orthogonality of the two cosine vectors.
_ORTHONORMAL_TOLERANCE: Final = 1e-3


class QuantitationConvention(str, Enum):
    """Which carrier said the voxels are Bq/ml (see the module docstring)."""

    REAL_WORLD_VALUE_MAPPING = "Real World Value Mapping (0040,9096) in UCUM Bq/ml"
    UNITS_BQML = "Units (0054,1001) BQML with Rescale Slope/Intercept"
    PRIVATE_VOXEL_UNITS = "private voxel data units (0057,1003) BQML with Rescale Slope"


class SpectError(Exception):
    """A SPECT image that cannot be read as activity concentration; says which and why."""

    def __init__(self, message: str, *, series_instance_uid: str):
        super().__init__(f"{message} (series {series_instance_uid})")
        self.series_instance_uid = series_instance_uid


class SpectAttributeError(SpectError):
    """An attribute is missing, unreadable or of a value this reader cannot represent."""

    def __init__(self, attribute: str, problem: str, *, series_instance_uid: str):
        super().__init__(f"{attribute} {problem}", series_instance_uid=series_instance_uid)
        self.attribute = attribute
        self.problem = problem


class NotQuantitativeError(SpectError):
    """No attribute says the voxels are Bq/ml: they are counts, which no dosimetry can use.

    Attributes
    ----------
    looked_at : tuple of str
        Each carrier examined, with what it held.
    """

    def __init__(self, looked_at: tuple[str, ...], *, series_instance_uid: str):
        super().__init__(
            "not a quantitative SPECT: no Bq/ml units in " + "; ".join(looked_at),
            series_instance_uid=series_instance_uid,
        )
        self.looked_at = looked_at


class AdministrationAfterAcquisitionError(SpectError):
    """The recorded administration starts after the acquisition: one of the two is wrong."""


@dataclass(frozen=True, eq=False)
class QuantitativeSpect:
    """One SPECT time point, ready for dosimetry.

    Attributes
    ----------
    volume : Volume
        Activity concentration in Bq/ml (float32) at `acquisition_start`,
        slices ascending along the normal.
    administration : Administration
    acquisition_start : datetime
        Acquisition DateTime (0008,002A), else Acquisition Date + Time.
    hours_after_administration : float
    convention : QuantitationConvention
    decay_correction : DecayCorrection or None
        Decay Correction (0054,1102) as written; None when absent.
    decay_factor : float
        What the header's values were multiplied by to be activity at
        `acquisition_start` (1.0 for START).
    notes : tuple of str
        Every assumption made, for the audit trail.
    """

    volume: Volume
    administration: Administration
    acquisition_start: datetime
    hours_after_administration: float
    convention: QuantitationConvention
    decay_correction: DecayCorrection | None
    decay_factor: float
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Mapping:
    """Bq/ml = stored x slope + intercept, for stored values in `stored_range` (None: all)."""

    convention: QuantitationConvention
    slope: float
    intercept: float
    source: str
    stored_range: tuple[float, float] | None = None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \x00")


class _Reader:
    """One NM instance's attributes, with errors naming them and the series."""

    def __init__(self, dataset: Dataset):
        self.ds = dataset
        self.series = str(dataset.get("SeriesInstanceUID", "(no Series Instance UID)"))

    def missing(self, keyword: str, problem: str = "missing or empty") -> SpectAttributeError:
        return SpectAttributeError(tag_name(keyword), problem, series_instance_uid=self.series)

    def required(self, keyword: str, scope: Dataset | None = None) -> Any:
        value = (self.ds if scope is None else scope).get(keyword)
        if value is None or value == "":
            raise self.missing(keyword)
        return value

    def number(self, keyword: str, default: float, scope: Dataset | None = None) -> float:
        """A numeric attribute, `default` when absent or empty."""
        item = (self.ds if scope is None else scope).get_item(keyword)
        try:
            # pydicom converts a raw element on access, and raises for an invalid DS or IS.
            value = (self.ds if scope is None else scope).get(keyword)
            if value is None or value == "":
                return default
            return float(value)
        except (TypeError, ValueError):
            raw = item.value if item is not None else None
            raise self.missing(keyword, f"unreadable ({raw!r})") from None

    def numbers(self, keyword: str, count: int, scope: Dataset | None = None) -> np.ndarray:
        try:
            values = np.array(self.required(keyword, scope), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise self.missing(keyword, "unreadable") from None
        if values.size != count:
            raise self.missing(keyword, f"has {values.size} values, not {count}")
        return values


def load_quantitative_spect(
    files: Iterable[str | os.PathLike[str] | Dataset], *, administration_date: date | None = None
) -> QuantitativeSpect:
    """Read one quantitative SPECT reconstruction in Bq/ml at its acquisition.

    Parameters
    ----------
    files : iterable of path or pydicom.Dataset
        The instances of one series; exactly one must be a reconstructed NM
        image (others, such as the projections, are left out and noted).
    administration_date : date, optional
        The day of the administration, for an NM header that has only
        Radiopharmaceutical Start Time (the standard NM IOD has no Start
        DateTime; see ``dicomio.administration``).

    Raises
    ------
    NotQuantitativeError
        No Bq/ml units in any carrier (counts).
    SpectAttributeError
        A geometry, time or radiopharmaceutical attribute is missing or
        unusable; the error names it.
    AdministrationAfterAcquisitionError
        Radiopharmaceutical Start DateTime is after the acquisition start.
    SpectError
        No reconstructed NM image, several, or several series.
    """
    datasets = [_read(item) for item in files]
    if not datasets:
        raise SpectError("no instances were given", series_instance_uid="")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise SpectError(
            f"instances of {len(series)} series given: {', '.join(sorted(series))}",
            series_instance_uid=sorted(series)[0],
        )
    notes: list[str] = []
    recon = [ds for ds in datasets if _is_reconstruction(ds)]
    left_out = len(datasets) - len(recon)
    if left_out:
        notes.append(f"{left_out} instance(s) that are no NM reconstruction left out")
    if len(recon) != 1:
        raise SpectError(
            f"{len(recon)} reconstructed NM images (NM Image Storage, Image Type Value 3 RECON TOMO "
            "or RECON GATED TOMO) among the instances; exactly one is needed",
            series_instance_uid=series.pop(),
        )
    reader = _Reader(recon[0])
    mapping = _mapping(reader, notes)
    try:
        administration = read_administration(reader.ds, administration_date=administration_date)
    except AdministrationError as exc:
        raise SpectAttributeError(exc.attribute, exc.problem, series_instance_uid=reader.series) from exc
    notes.extend(administration.notes)
    acquisition = _acquisition_start(reader)
    elapsed_s = (acquisition - administration.start).total_seconds()
    if elapsed_s < 0:
        raise AdministrationAfterAcquisitionError(
            f"the administration start {administration.start.isoformat()} "
            f"({tag_name('RadiopharmaceuticalStartDateTime')}) is after the acquisition start "
            f"{acquisition.isoformat()} ({tag_name('AcquisitionDateTime')} or Date + Time)",
            series_instance_uid=reader.series,
        )
    decay, factor = _decay_factor(reader, administration, elapsed_s, notes)
    stored, affine, sources = _grid(reader, notes)
    _check_stored_range(reader, mapping, stored)
    values = (stored.astype(np.float64) * mapping.slope + mapping.intercept) * factor
    volume = Volume(
        array=values.astype(np.float32),
        affine=affine,
        frame_of_reference_uid=str(reader.required("FrameOfReferenceUID")),
        study_instance_uid=str(reader.required("StudyInstanceUID")),
        series_instance_uid=reader.series,
        modality=str(reader.ds.get("Modality", "NM")),
        sources=sources,
    )
    return QuantitativeSpect(
        volume=volume,
        administration=administration,
        acquisition_start=acquisition,
        hours_after_administration=elapsed_s / 3600.0,
        convention=mapping.convention,
        decay_correction=decay,
        decay_factor=factor,
        notes=tuple(dict.fromkeys(notes)),
    )


def _read(item: str | os.PathLike[str] | Dataset) -> Dataset:
    if isinstance(item, Dataset):
        return item
    try:
        return pydicom.dcmread(item)
    except (InvalidDicomError, OSError) as exc:
        raise SpectError(
            f"{os.fspath(item)} is no readable DICOM file: {exc}", series_instance_uid=""
        ) from exc


def _image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType", [])
    return [value.upper()] if isinstance(value, str) else [str(v).strip().upper() for v in value]


def _is_reconstruction(ds: Dataset) -> bool:
    kind = _image_type(ds)
    return str(ds.get("SOPClassUID", "")) == NM_IMAGE_STORAGE and len(kind) > 2 and kind[2] in _RECONSTRUCTED


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


def _mapping(reader: _Reader, notes: list[str]) -> _Mapping:
    """The first Bq/ml carrier in the module docstring's order, checked against the others."""
    looked_at: list[str] = []
    found = _real_world_value_mappings(reader, looked_at, notes)
    found += _rescale_mappings(reader, looked_at)
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if any("RealWorldValueMappingSequence" in item for item in reader.ds.get(keyword) or []):
            looked_at.append(
                f"{tag_name(keyword)}: holds a Real World Value Mapping, not read (the NM Image IOD has "
                "no functional groups)"
            )
    if not found:
        raise NotQuantitativeError(tuple(looked_at), series_instance_uid=reader.series)
    chosen = found[0]
    for other in found[1:]:
        if not (
            math.isclose(other.slope, chosen.slope, rel_tol=_AGREEMENT)
            and math.isclose(other.intercept, chosen.intercept, rel_tol=_AGREEMENT, abs_tol=chosen.slope)
        ):
            raise SpectAttributeError(
                f"{chosen.source} and {other.source}",
                f"disagree: Bq/ml = stored x {chosen.slope:.6g} + {chosen.intercept:.6g} by the first, "
                f"x {other.slope:.6g} + {other.intercept:.6g} by the second; which is right cannot be told",
                series_instance_uid=reader.series,
            )
        notes.append(f"{other.source} agrees with {chosen.source}")
    notes.append(
        f"Bq/ml = stored x {chosen.slope:.6g} + {chosen.intercept:.6g} by {chosen.source} "
        f"({chosen.convention.name})"
    )
    return chosen


def _real_world_value_mappings(reader: _Reader, looked_at: list[str], notes: list[str]) -> list[_Mapping]:
    """Each Real World Value Mapping item in activity concentration, scaled to Bq/ml."""
    units_seen = []
    found = []
    for number, item in enumerate(reader.ds.get("RealWorldValueMappingSequence") or [], start=1):
        codes = item.get("MeasurementUnitsCodeSequence") or []
        unit = _text(codes[0].get("CodeValue", "")) if codes else ""
        scheme = _text(codes[0].get("CodingSchemeDesignator", "")) if codes else ""
        units_seen.append(f"{unit or '(no unit)'} ({scheme or 'no scheme'})")
        factor = _UCUM_BQ_PER_ML.get(unit.lower())
        if factor is None or scheme not in ("UCUM", ""):
            continue
        source = f"{tag_name('RealWorldValueMappingSequence')} item {number} in {unit}"
        if not scheme:
            notes.append(
                f"{source}: {tag_name('CodingSchemeDesignator')} missing, {unit} read as UCUM "
                "(PyTheranostics' make_bqml_suv writes it so)"
            )
        if item.get("RealWorldValueLUTData") is not None or item.get("RealWorldValueSlope") is None:
            raise reader.missing(
                "RealWorldValueSlope", f"missing in the {unit} mapping (a LUT mapping is not read)"
            )
        slope = reader.number("RealWorldValueSlope", 1.0, item)
        intercept = reader.number("RealWorldValueIntercept", 0.0, item)
        _check_linear(reader, "RealWorldValueSlope", slope, "RealWorldValueIntercept", intercept)
        first = reader.number("RealWorldValueFirstValueMapped", math.nan, item)
        last = reader.number("RealWorldValueLastValueMapped", math.nan, item)
        stored_range = (first, last) if math.isfinite(first) and math.isfinite(last) else None
        found.append(
            _Mapping(
                QuantitationConvention.REAL_WORLD_VALUE_MAPPING,
                slope * factor,
                intercept * factor,
                source,
                stored_range,
            )
        )
    looked_at.append(
        f"{tag_name('RealWorldValueMappingSequence')}: " + (", ".join(units_seen) if units_seen else "absent")
    )
    return found


def _rescale_mappings(reader: _Reader, looked_at: list[str]) -> list[_Mapping]:
    """Units BQML and the private (0057,1003) BQML, both of the Rescale Slope and Intercept's output."""
    ds = reader.ds
    units = _text(ds.get("Units", "")).upper()
    private = ds.get(_PRIVATE_UNITS_TAG)
    private_units = _text(private.value).upper() if private is not None else ""
    looked_at.append(f"{tag_name('Units')}: {units or 'absent'}")
    looked_at.append(f"{_PRIVATE_UNITS_NAME}: {private_units or 'absent'}")
    if ds.get(_PHILIPS_BQML_FACTOR_TAG) is not None:
        looked_at.append("Philips private (7053,1009): present, documented for PET only and not applied")
    claims = [
        (convention, name)
        for convention, name, value in (
            (QuantitationConvention.UNITS_BQML, tag_name("Units"), units),
            (QuantitationConvention.PRIVATE_VOXEL_UNITS, _PRIVATE_UNITS_NAME, private_units),
        )
        if value == "BQML"
    ]
    if not claims:
        return []
    if units and private_units and units != private_units:
        raise SpectAttributeError(
            f"{tag_name('Units')} and {_PRIVATE_UNITS_NAME}",
            f"disagree ({units} and {private_units}): both state the units of the rescaled values",
            series_instance_uid=reader.series,
        )
    if ds.get("ModalityLUTSequence") is not None:
        raise reader.missing("ModalityLUTSequence", "present: a LUT Modality transform is not read")
    # Absent rescale is the identity Modality LUT (PS3.3 C.11.1), as in dicomio.series.
    slope = reader.number("RescaleSlope", 1.0)
    intercept = reader.number("RescaleIntercept", 0.0)
    _check_linear(reader, "RescaleSlope", slope, "RescaleIntercept", intercept)
    return [
        _Mapping(convention, slope, intercept, f"{name} BQML with {tag_name('RescaleSlope')}")
        for convention, name in claims
    ]


def _check_linear(
    reader: _Reader, slope_keyword: str, slope: float, intercept_keyword: str, intercept: float
) -> None:
    """An activity concentration rises with the stored value: a finite positive slope, finite intercept."""
    if not (math.isfinite(slope) and slope > 0):
        raise reader.missing(slope_keyword, f"is {slope:g}: a mapping to Bq/ml needs a finite positive slope")
    if not math.isfinite(intercept):
        raise reader.missing(intercept_keyword, f"is {intercept:g}, not finite")


def _check_stored_range(reader: _Reader, mapping: _Mapping, stored: np.ndarray) -> None:
    """Every stored value must lie in the mapping's First..Last Value Mapped (PS3.3 C.7.6.16.2.11.1)."""
    if mapping.stored_range is None or stored.size == 0:
        return
    first, last = mapping.stored_range
    low, high = float(stored.min()), float(stored.max())
    if low < first or high > last:
        raise SpectAttributeError(
            f"{tag_name('RealWorldValueFirstValueMapped')} / {tag_name('RealWorldValueLastValueMapped')}",
            f"map stored values {first:g}..{last:g} in {mapping.source}, "
            f"but the pixels hold {low:g}..{high:g}",
            series_instance_uid=reader.series,
        )


def _acquisition_start(reader: _Reader) -> datetime:
    """Acquisition DateTime, else Acquisition Date + Time: the start of the acquisition.

    Series, Content and Instance Creation times are those of the
    reconstruction, often hours later, and are never used.
    """
    ds = reader.ds
    value = ds.get("AcquisitionDateTime")
    if value not in (None, ""):
        try:
            return naive(DT(str(value).strip()))
        except ValueError:
            raise reader.missing("AcquisitionDateTime", f"unreadable ({value!r})") from None
    day, clock = ds.get("AcquisitionDate"), ds.get("AcquisitionTime")
    if day in (None, "") or clock in (None, ""):
        raise SpectAttributeError(
            f"{tag_name('AcquisitionDateTime')}, or {tag_name('AcquisitionDate')} and "
            f"{tag_name('AcquisitionTime')}",
            "missing: the time point is unknown",
            series_instance_uid=reader.series,
        )
    try:
        parsed_day = DA(str(day).strip())
        # The retired ACR-NEMA form HH:MM:SS (PS3.5 Table 6.2-1, TM) is still met.
        parsed_clock = TM(str(clock).strip().replace(":", ""))
    except ValueError:
        raise SpectAttributeError(
            f"{tag_name('AcquisitionDate')} / {tag_name('AcquisitionTime')}",
            f"unreadable ({day!r}, {clock!r})",
            series_instance_uid=reader.series,
        ) from None
    return naive(datetime.combine(parsed_day, parsed_clock))


def _duration_s(reader: _Reader) -> float | None:
    """Acquisition duration: Actual Frame Duration (ms) x Number of Frames in Rotation, per rotation."""
    rotations = reader.ds.get("RotationInformationSequence") or []
    total = 0.0
    for item in rotations:
        duration_ms = reader.number("ActualFrameDuration", 0.0, item)
        frames = reader.number("NumberOfFramesInRotation", 0.0, item)
        for keyword, value in (("ActualFrameDuration", duration_ms), ("NumberOfFramesInRotation", frames)):
            if not (math.isfinite(value) and 0 <= value <= _MAX_ROTATION_VALUE):
                raise reader.missing(keyword, f"is {value:g} in {tag_name('RotationInformationSequence')}")
        total += duration_ms / 1000.0 * frames
    return total if total > 0 else None


def _decay_factor(
    reader: _Reader, administration: Administration, elapsed_s: float, notes: list[str]
) -> tuple[DecayCorrection | None, float]:
    """Decay Correction as written, and the factor to the activity at the acquisition start."""
    value = _text(reader.ds.get("DecayCorrection", "")).upper()
    decay = None
    if value:
        try:
            decay = DecayCorrection(value)
        except ValueError:
            raise reader.missing("DecayCorrection", f"is {value!r}, none of START, ADMIN, NONE") from None
    half_life = administration.half_life_s
    if decay is DecayCorrection.START:
        return decay, 1.0
    if decay is DecayCorrection.ADMIN:
        if half_life is None:
            raise reader.missing(
                "RadionuclideHalfLife", "missing, which Decay Correction ADMIN needs to undo the correction"
            )
        return decay, 2.0 ** (-elapsed_s / half_life)
    if decay is None:
        notes.append(f"{tag_name('DecayCorrection')} absent: values taken as not decay corrected (NONE)")
    duration = _duration_s(reader)
    if half_life is None or duration is None:
        notes.append(
            "values are the acquisition's average activity, not corrected to its start: "
            + ("Radionuclide Half Life" if half_life is None else "the acquisition duration")
            + " unknown"
        )
        return decay, 1.0
    return decay, 2.0 ** (average_count_time_s(duration, half_life) / half_life)


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def _frame_index(reader: _Reader, frames: int) -> np.ndarray:
    """For each slice number 1..N, the 0-based frame that holds it (Slice Vector)."""
    ds = reader.ds
    pointer = ds.get("FrameIncrementPointer")
    pointers = pointer if isinstance(pointer, MultiValue) else [] if pointer is None else [pointer]
    tags = [int(tag) for tag in pointers]
    if _SLICE_VECTOR not in tags:
        raise reader.missing("FrameIncrementPointer", f"does not point to {tag_name('SliceVector')}")
    for tag in tags:
        if tag == _SLICE_VECTOR:
            continue
        vector = ds.get(tag)
        if vector is not None and len(set(np.atleast_1d(vector.value).tolist())) > 1:
            raise SpectAttributeError(
                f"{vector.keyword or hex(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})",
                "has several values: a gated reconstruction is several volumes, not one time point",
                series_instance_uid=reader.series,
            )
    slices = np.atleast_1d(np.array(reader.required("SliceVector"), dtype=np.int64))
    if slices.size != frames:
        raise reader.missing("SliceVector", f"has {slices.size} values for {frames} frames")
    if sorted(slices.tolist()) != list(range(1, frames + 1)):
        raise reader.missing("SliceVector", "is not each slice number 1..N once")
    return np.argsort(slices, kind="stable")


def _grid(reader: _Reader, notes: list[str]) -> tuple[np.ndarray, np.ndarray, tuple[SourceFrame, ...]]:
    """Stored values [slice, row, column] ascending along the normal, the affine and sources."""
    ds = reader.ds
    counted = reader.number("NumberOfFrames", 1.0)
    if not (1 <= counted <= _MAX_FRAMES and counted == int(counted)):  # NaN fails the first
        raise reader.missing("NumberOfFrames", f"{counted:g}: not a whole number from 1 to {_MAX_FRAMES}")
    frames = int(counted)
    for keyword in ("Rows", "Columns"):
        size = reader.number(keyword, 0.0)
        if not 1 <= size <= _MAX_MATRIX:  # NaN fails too
            raise reader.missing(keyword, f"{size:g}: not from 1 to {_MAX_MATRIX}")
    order = _frame_index(reader, frames)
    detectors = ds.get("DetectorInformationSequence") or []
    plane = ds
    if detectors and "ImagePositionPatient" in detectors[0]:
        plane = detectors[0]
    else:
        notes.append(
            "Image Position/Orientation (Patient) read at the top level, not in the "
            "Detector Information Sequence"
        )
    position = reader.numbers("ImagePositionPatient", 3, plane)
    cosines = reader.numbers("ImageOrientationPatient", 6, plane)
    row, column = cosines[:3], cosines[3:]
    if (
        abs(np.linalg.norm(row) - 1) > _ORTHONORMAL_TOLERANCE
        or abs(np.linalg.norm(column) - 1) > _ORTHONORMAL_TOLERANCE
        or abs(float(row @ column)) > _ORTHONORMAL_TOLERANCE
    ):
        raise reader.missing("ImageOrientationPatient", f"{cosines.tolist()} is not two orthonormal cosines")
    pixel_spacing = reader.numbers("PixelSpacing", 2)
    spacing = float(reader.numbers("SpacingBetweenSlices", 1)[0])
    if spacing == 0:
        raise reader.missing("SpacingBetweenSlices", "is 0")
    normal = np.cross(row, column)
    try:
        pixels = ds.pixel_array
    except (AttributeError, NotImplementedError, RuntimeError, ValueError) as exc:
        raise SpectError(f"pixel data cannot be decoded: {exc}", series_instance_uid=reader.series) from exc
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns))
    if spacing < 0:
        # Slice k lies (k - 1) x spacing along the normal: the last is the lowest.
        position = position + (frames - 1) * spacing * normal
        order = order[::-1]
    affine = np.eye(4)
    affine[:3, 0] = normal * abs(spacing)
    affine[:3, 1] = column * pixel_spacing[0]
    affine[:3, 2] = row * pixel_spacing[1]
    affine[:3, 3] = position
    sop_class, sop_instance = str(ds.SOPClassUID), str(reader.required("SOPInstanceUID"))
    sources = tuple(SourceFrame(sop_class, sop_instance, int(index) + 1) for index in order)
    return pixels[order], affine, sources
