"""SUV conversion factors for PET images, by QIBA's vendor-neutral rules.

A PET image's rescaled pixel values (stored value x Rescale Slope + Rescale
Intercept, PS3.3 C.11.1.1.2) are activity concentrations, counts or already
SUVs depending on Units (0054,1001). The factors here turn them into SUVbw,
SUL and SUVbsa. They multiply rescaled values, so a Rescale Slope that
varies per slice (GE) is applied by the reader, never folded in; they are
per instance because Acquisition Time varies per bed position, and per
frame where the frames of a multi-frame image were counted at different
times.

The decision tree is QIBA's "SUV vendor-neutral pseudo-code" (QIBA FDG-PET/CT
technical committee, written with the vendors): Units BQML, CNTS with the
Philips private factors, or GML; the scan start taken from Series Date and
Time unless post-processing moved it after the acquisition, then from GE's
private scan datetime or from the acquisition times; dose decayed from
administration to that start. QIBA covers Decay Correction START only; ADMIN
and NONE follow the definitions in PS3.3 C.8.9.1.1.5 (Decay Correction) and
C.8.9.4.1.5-6 (Frame Reference Time, Actual Frame Duration), as documented
on `suv_factors`.

SUL uses Janmahasatian's lean body mass (Clin Pharmacokinet 2005;44:1051),
preferred to James' formula, which turns implausible at high BMI (Tahari et
al., J Nucl Med 2014), and named by DICOM's SUV unit "{SUVlbm(Janma)}g/ml"
(PS3.16 CID 85). SUVbsa uses Du Bois' body surface area (Arch Intern Med
1916;17:863) in cm^2, giving DICOM's "{SUVbsa}cm2/ml" (Kim et al., J Nucl Med
1994;35:164).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import Enum
from pathlib import Path
from typing import ClassVar

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DA, DT, TM

PHILIPS_PET_CREATOR = "Philips PET Private Group"
GE_PET_CREATOR = "GEMS_PETD_01"


class DecayCorrection(str, Enum):
    """Decay Correction (0054,1102): the time the pixel values are decayed to."""

    START = "START"
    ADMIN = "ADMIN"
    NONE = "NONE"


class SuvError(Exception):
    """SUV factors cannot be computed for an instance; says which and why."""

    def __init__(self, message: str, *, sop_instance_uid: str):
        super().__init__(f"{message} (SOP Instance UID {sop_instance_uid})")
        self.sop_instance_uid = sop_instance_uid


class MissingSuvAttributeError(SuvError):
    """An attribute SUVbw needs is absent, empty, zero or unreadable.

    QIBA: "SUV cannot be calculated if any of the specified DICOM attributes
    are missing or empty or zero". A default (0, NaN, a guessed weight) would
    give a plausible-looking but wrong SUV, so the attribute is named instead.
    """

    def __init__(self, attribute: str, problem: str, *, sop_instance_uid: str):
        super().__init__(f"{attribute} is {problem}", sop_instance_uid=sop_instance_uid)
        self.attribute = attribute
        self.problem = problem


class SuvNotDefinedError(SuvError):
    """The image carries values no SUV can be derived from (units, corrections, times)."""


@dataclass(frozen=True)
class FrameSuvFactors:
    """Factors for one frame: SUV = rescaled pixel value x factor.

    Attributes
    ----------
    frame_number : int or None
        1-based frame of a multi-frame image; None for a single-frame image.
    suv_bw : float
        To body-weight SUV, g/ml.
    sul : float or None
        To lean-body-mass SUV (Janmahasatian), g/ml; None without Patient's
        Size or Sex.
    suv_bsa : float or None
        To body-surface-area SUV (Du Bois), cm^2/ml; None without Patient's Size.
    """

    frame_number: int | None
    suv_bw: float
    sul: float | None
    suv_bsa: float | None


@dataclass(frozen=True)
class SuvFactors:
    """SUV factors of one PET instance, and how they were reached.

    Attributes
    ----------
    sop_instance_uid : str
    units : str
        Units (0054,1001) of the rescaled pixel values: BQML, CNTS or GML.
    decay_correction : DecayCorrection
    frames : tuple of FrameSuvFactors
        One entry for a single-frame image, one per frame otherwise.
    warnings : tuple of str
        Every assumption made on the way (a date crossing midnight, a series
        time replaced, a factor left out), for the audit trail.
    """

    SUV_BW_UNITS: ClassVar[str] = "g/ml"
    SUL_UNITS: ClassVar[str] = "g/ml"
    SUV_BSA_UNITS: ClassVar[str] = "cm2/ml"

    sop_instance_uid: str
    units: str
    decay_correction: DecayCorrection
    frames: tuple[FrameSuvFactors, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Frame:
    """When one frame counted: start and duration, as the header says."""

    number: int | None
    acquisition: datetime | None
    duration_s: float | None
    # Frame Reference Time (0054,1300) in s from the series reference, single-frame only.
    reference_offset_s: float | None


@dataclass(frozen=True)
class _Body:
    weight_kg: float | None
    lean_body_mass_kg: float | None
    surface_area_m2: float | None


def tag_name(keyword: str) -> str:
    """``Keyword (gggg,eeee)``, how errors name an attribute."""
    tag = tag_for_keyword(keyword)
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


class _Header:
    """Reads one instance's attributes, raising errors that name them."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.uid = str(dataset.get("SOPInstanceUID", "(no SOP Instance UID)"))
        # Legacy Converted Enhanced PET keeps the classic PET Series attributes
        # in the Unassigned Shared Converted Attributes (PS3.3 C.7.6.16.2.25).
        self.scopes = [dataset]
        shared = dataset.get("SharedFunctionalGroupsSequence")
        if shared:
            unassigned = shared[0].get("UnassignedSharedConvertedAttributesSequence")
            if unassigned:
                self.scopes.append(unassigned[0])

    def raw(self, keyword: str, scope: Dataset | None = None):
        for candidate in [scope] if scope is not None else self.scopes:
            value = candidate.get(keyword)
            if value is not None and value != "":
                return value
        return None

    def missing(self, keyword: str, problem: str = "missing or empty") -> MissingSuvAttributeError:
        return MissingSuvAttributeError(tag_name(keyword), problem, sop_instance_uid=self.uid)

    def positive(self, keyword: str, scope: Dataset | None = None) -> float:
        value = self.optional_float(keyword, scope)
        if value is None:
            raise self.missing(keyword)
        if not value > 0:
            raise self.missing(keyword, f"{value:g}, not positive")
        return value

    def optional_float(self, keyword: str, scope: Dataset | None = None) -> float | None:
        value = self.raw(keyword, scope)
        if value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise self.missing(keyword, f"unreadable ({value!r})") from None

    def parsed(self, keyword: str, kind: type, scope: Dataset | None = None):
        """A DA, TM or DT value as date, time or datetime, or None if absent."""
        value = self.raw(keyword, scope)
        if value is None:
            return None
        text = str(value).strip()
        if kind is TM:
            # The retired ACR-NEMA form HH:MM:SS (PS3.5 Table 6.2-1, TM) is still
            # met in old files.
            text = text.replace(":", "")
        try:
            return naive(kind(text))
        except ValueError:
            raise self.missing(keyword, f"unreadable ({text!r})") from None

    def required_datetime(self, date_keyword: str, time_keyword: str) -> datetime:
        day = self.parsed(date_keyword, DA)
        clock = self.parsed(time_keyword, TM)
        if clock is None:
            raise self.missing(time_keyword)
        if day is None:
            raise self.missing(date_keyword)
        return datetime.combine(day, clock)


def naive(value: date | time | datetime) -> date | time | datetime:
    """The plain ``datetime`` type, without pydicom's subclass or a UTC offset.

    Series, acquisition and injection times are the scanner's local wall
    clock; a DT with a UTC offset is the same wall clock, so the offset is
    dropped to compare it with the TM values that carry none.
    """
    if isinstance(value, datetime):
        return datetime.combine(value.date(), value.time())
    if isinstance(value, time):
        return time(value.hour, value.minute, value.second, value.microsecond)
    return date(value.year, value.month, value.day)


def _private(header: _Header, group: int, creator: str, element: int) -> str | None:
    """A private element's value found through its creator, as text.

    The block (gggg,00xx) is wherever the writer reserved it, so it is looked
    up by creator string (PS3.5 7.8.1), not assumed at 0x10. The comparison
    ignores padding some writers leave in the LO value. With no private
    dictionary entry the value arrives as bytes (VR UN); it is decoded text.
    """
    dataset = header.dataset
    for block in range(0x10, 0x100):
        element_creator = dataset.get((group, block))
        if element_creator is None:
            continue
        value = element_creator.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if str(value).strip(" \x00") != creator:
            continue
        found = dataset.get((group, (block << 8) | element))
        if found is None or found.value in (None, "", b""):
            return None
        value = found.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return str(value).strip(" \x00")
    return None


def _philips_factor(header: _Header, element: int, name: str) -> float | None:
    text = _private(header, 0x7053, PHILIPS_PET_CREATOR, element)
    if text is None:
        return None
    attribute = f"{name} (7053,{0x1000 | element:04X}) of {PHILIPS_PET_CREATOR!r}"
    try:
        value = float(text)
    except ValueError:
        raise MissingSuvAttributeError(
            attribute, f"unreadable ({text!r})", sop_instance_uid=header.uid
        ) from None
    if not value > 0:
        raise MissingSuvAttributeError(attribute, f"{value:g}", sop_instance_uid=header.uid)
    return value


def _frames(header: _Header) -> list[_Frame]:
    """Acquisition start and duration of each frame (PS3.3 C.8.9.4.1.4-6)."""
    per_frame = header.dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        frames = []
        for number, item in enumerate(per_frame, start=1):
            content = item.get("FrameContentSequence")
            scope = content[0] if content else Dataset()
            duration_ms = header.optional_float("FrameAcquisitionDuration", scope)
            frames.append(
                _Frame(
                    number=number,
                    acquisition=header.parsed("FrameAcquisitionDateTime", DT, scope),
                    duration_s=None if duration_ms is None else duration_ms / 1000.0,
                    reference_offset_s=None,
                )
            )
        return frames
    clock = header.parsed("AcquisitionTime", TM)
    if clock is not None:
        day = header.parsed("AcquisitionDate", DA) or header.parsed("SeriesDate", DA)
        acquisition = None if day is None else datetime.combine(day, clock)
    else:
        acquisition = header.parsed("AcquisitionDateTime", DT)
    duration_ms = header.optional_float("ActualFrameDuration")
    reference_ms = header.optional_float("FrameReferenceTime")
    return [
        _Frame(
            number=None,
            acquisition=acquisition,
            duration_s=None if duration_ms is None else duration_ms / 1000.0,
            reference_offset_s=None if reference_ms is None else reference_ms / 1000.0,
        )
    ]


def _acquisition_keyword(header: _Header) -> str:
    if header.dataset.get("PerFrameFunctionalGroupsSequence"):
        return "FrameAcquisitionDateTime"
    return "AcquisitionTime"


def earliest_acquisition(datasets: Iterable[Dataset]) -> datetime | None:
    """The earliest frame acquisition start among instances of one series.

    QIBA's fallback scan start when post-processing moved Series Time after
    the acquisition and nothing better is known. Instances whose acquisition
    time is absent or unreadable are passed over; None if none has one.
    """
    starts = []
    for dataset in datasets:
        try:
            frames = _frames(_Header(dataset))
        except MissingSuvAttributeError:
            continue
        starts.extend(frame.acquisition for frame in frames if frame.acquisition is not None)
    return min(starts, default=None)


def average_count_time_s(duration_s: float, half_life_s: float) -> float:
    """Seconds from a frame's start to the time of its average activity.

    PS3.3 C.8.9.4.1.5, example 2: T_ave = ln(lambda T / (1 - exp(-lambda T))) / lambda
    with lambda = ln 2 / half-life and T the frame duration. The counts of a
    frame that is not decay corrected equal the activity at T_ave held for T,
    which is a little before the frame's midpoint.
    """
    decay_constant = math.log(2) / half_life_s
    decay_in_frame = decay_constant * duration_s
    return math.log(decay_in_frame / -math.expm1(-decay_in_frame)) / decay_constant


def _scan_start(
    header: _Header,
    frames: list[_Frame],
    half_life_s: float,
    series_earliest: datetime | None,
    warnings: list[str],
) -> datetime:
    """The time a Decay Correction START image is decayed to, per QIBA.

    Series Date and Time, unless they are after the acquisition start (a
    post-processed series re-dated at its creation): then GE's private scan
    datetime (0009,100D) in "GEMS_PETD_01" if present and not after the
    acquisition; else, as QIBA notes is "reliable in all cases", the
    acquisition start less Frame Reference Time (the offset of the average
    count time from the original series start) plus the average count time
    within the frame; else the earliest acquisition in the series (which
    QIBA notes is wrong for Siemens PETsyngo 3.x multi-injection series).
    """
    series = header.required_datetime("SeriesDate", "SeriesTime")
    acquisitions = [frame.acquisition for frame in frames]
    if None in acquisitions:
        raise header.missing(_acquisition_keyword(header))
    acquisition = min(acquisitions)
    if series <= acquisition:
        return series
    moved = f"Series Date/Time {series.isoformat()} is after acquisition {acquisition.isoformat()}"

    ge_text = _private(header, 0x0009, GE_PET_CREATOR, 0x0D)
    if ge_text is not None:
        try:
            ge_start = naive(DT(ge_text))
        except ValueError:
            ge_start = None
        if ge_start is not None and ge_start <= acquisition:
            warnings.append(
                f"{moved}: scan start from GE private (0009,100D) {ge_start.isoformat()}"
            )
            return ge_start
        warnings.append(f"GE private scan datetime (0009,100D) {ge_text!r} is unusable: ignored")

    frame = frames[0]
    reference_s, duration_s = frame.reference_offset_s or 0.0, frame.duration_s or 0.0
    if len(frames) == 1 and reference_s > 0 and duration_s > 0:
        start = (
            acquisition
            - timedelta(seconds=reference_s)
            + timedelta(seconds=average_count_time_s(duration_s, half_life_s))
        )
        # A start after the frame began means Frame Reference Time counts
        # from something else; the earliest acquisition is safer then.
        if start <= acquisition:
            warnings.append(
                f"{moved}: scan start {start.isoformat()} back-computed from Frame Reference Time"
            )
            return start
        warnings.append(f"Frame Reference Time {reference_s:g} s is shorter than T_ave: ignored")

    start = min(acquisition, series_earliest) if series_earliest is not None else acquisition
    warnings.append(f"{moved}: scan start is the earliest acquisition {start.isoformat()}")
    return start


def _injection(
    header: _Header, item: Dataset, anchor: datetime, warnings: list[str]
) -> datetime:
    """Start of administration, dated.

    Radiopharmaceutical Start DateTime (0018,1078) when present. Otherwise
    Radiopharmaceutical Start Time (0018,1072) carries no date; QIBA assumes
    the series date "but consider spanning midnight": the injection is taken
    as the last time of day at or before `anchor` (the time the dose is
    decayed to, normally Series Date/Time), so 23:50 before a 00:20 scan is
    the evening before.
    """
    explicit = header.parsed("RadiopharmaceuticalStartDateTime", DT, item)
    if explicit is not None:
        return explicit
    clock = header.parsed("RadiopharmaceuticalStartTime", TM, item)
    if clock is None:
        raise header.missing("RadiopharmaceuticalStartTime")
    injection = datetime.combine(anchor.date(), clock)
    if injection > anchor:
        injection -= timedelta(days=1)
        warnings.append(
            f"Radiopharmaceutical Start Time {clock.isoformat()} is after scan time "
            f"{anchor.time().isoformat()}: injection taken to be on {injection.date().isoformat()}"
        )
    return injection


def _radiopharmaceutical(header: _Header, warnings: list[str]) -> Dataset:
    sequence = header.raw("RadiopharmaceuticalInformationSequence")
    if not sequence:
        raise header.missing("RadiopharmaceuticalInformationSequence")
    if len(sequence) > 1:
        warnings.append(
            f"{len(sequence)} radiopharmaceuticals: the first one's dose and times are used"
        )
    return sequence[0]


def _activity_factors(
    header: _Header,
    decay: DecayCorrection,
    frames: list[_Frame],
    series_earliest: datetime | None,
    warnings: list[str],
) -> list[float]:
    """Per frame, weight (g) / dose decayed to the time the pixels stand for (Bq).

    The time is the scan start for START (QIBA), the administration for
    ADMIN (no decay), and for NONE the frame's own average count time,
    acquisition start + T_ave (PS3.3 C.8.9.4.1.5-6). Frame Reference Time
    would give the same time, but it counts from Series Time, which
    post-processing may have moved, while Acquisition Time stays put.
    """
    weight_g = header.positive("PatientWeight") * 1000.0
    item = _radiopharmaceutical(header, warnings)
    dose_bq = header.positive("RadionuclideTotalDose", item)
    if decay is DecayCorrection.ADMIN:
        return [weight_g / dose_bq] * len(frames)
    half_life_s = header.positive("RadionuclideHalfLife", item)
    if decay is DecayCorrection.START:
        start = _scan_start(header, frames, half_life_s, series_earliest, warnings)
        references = [start] * len(frames)
    else:
        references = []
        for frame in frames:
            if frame.acquisition is None:
                raise header.missing(_acquisition_keyword(header))
            if frame.duration_s is None or not frame.duration_s > 0:
                raise header.missing(
                    "FrameAcquisitionDuration" if frame.number else "ActualFrameDuration"
                )
            average = average_count_time_s(frame.duration_s, half_life_s)
            references.append(frame.acquisition + timedelta(seconds=average))
    # Dated once, against the earliest time, so that NONE frames after
    # midnight share the date the first frame implies.
    injection = _injection(header, item, min(references), warnings)
    factors = []
    for reference in references:
        decay_s = (reference - injection).total_seconds()
        if decay_s < 0:
            raise SuvNotDefinedError(
                f"injection {injection.isoformat()} is after the scan time {reference.isoformat()}",
                sop_instance_uid=header.uid,
            )
        factors.append(weight_g / (dose_bq * 2.0 ** (-decay_s / half_life_s)))
    return factors


def _body(header: _Header, warnings: list[str]) -> _Body:
    """Weight, Janmahasatian lean body mass and Du Bois surface area.

    LBM (kg) = 9270 W / (6680 + 216 BMI) for males, 9270 W / (8780 + 244 BMI)
    for females, BMI = W / H^2 (W kg, H m); BSA (m^2) = 0.007184 W^0.425
    H_cm^0.725. Patient's Size is in metres (PS3.3 C.7.2.2); a value above
    3 is almost surely centimetres, and guessing the unit would silently
    change SUL, so it is refused with a warning.
    """
    weight = header.optional_float("PatientWeight")
    if weight is None or not weight > 0:
        warnings.append("Patient's Weight (0010,1030) missing: no SUL or SUVbsa")
        return _Body(None, None, None)
    height = header.optional_float("PatientSize")
    if height is None or not 0 < height <= 3:
        shown = "missing" if height is None else f"{height:g} m, implausible"
        warnings.append(f"Patient's Size (0010,1020) {shown}: no SUL or SUVbsa")
        return _Body(weight, None, None)
    surface = 0.007184 * weight**0.425 * (height * 100.0) ** 0.725
    bmi = weight / height**2
    sex = str(header.raw("PatientSex") or "").strip().upper()
    if sex == "M":
        lean = 9270.0 * weight / (6680.0 + 216.0 * bmi)
    elif sex == "F":
        lean = 9270.0 * weight / (8780.0 + 244.0 * bmi)
    else:
        warnings.append(f"Patient's Sex (0010,0040) is {sex or 'missing'}, not M or F: no SUL")
        lean = None
    return _Body(weight, lean, surface)


def _decay_correction(header: _Header) -> DecayCorrection:
    value = header.raw("DecayCorrection")
    if value is None:
        if header.dataset.get("DecayCorrected") is not None:
            raise SuvNotDefinedError(
                "Enhanced PET images (Decay Corrected, Real World Value Mapping units) "
                "are not supported",
                sop_instance_uid=header.uid,
            )
        raise header.missing("DecayCorrection")
    try:
        return DecayCorrection(str(value).strip().upper())
    except ValueError:
        raise SuvNotDefinedError(
            f"Decay Correction {value!r} is none of START, ADMIN, NONE", sop_instance_uid=header.uid
        ) from None


def _check_corrections(header: _Header, decay: DecayCorrection, warnings: list[str]) -> None:
    """QIBA computes SUV only when Corrected Image has ATTN (and DECY when decayed).

    Without attenuation correction the values are not concentrations; a
    Decay Correction other than NONE without DECY contradicts itself.
    """
    value = header.raw("CorrectedImage")
    values = [value] if isinstance(value, str) else list(value or [])
    corrections = {str(v).strip().upper() for v in values}
    if not corrections:
        warnings.append("Corrected Image (0028,0051) empty: ATTN and DECY not confirmed")
        return
    if "ATTN" not in corrections:
        raise SuvNotDefinedError(
            "Corrected Image has no ATTN: not attenuation corrected", sop_instance_uid=header.uid
        )
    if decay is not DecayCorrection.NONE and "DECY" not in corrections:
        raise SuvNotDefinedError(
            f"Decay Correction is {decay.value} but Corrected Image has no DECY",
            sop_instance_uid=header.uid,
        )


def suv_factors(dataset: Dataset, *, series_earliest: datetime | None = None) -> SuvFactors:
    """SUVbw, SUL and SUVbsa factors of one PET instance.

    Units (QIBA): BQML gives weight / decayed dose; CNTS takes the Philips
    SUV Scale Factor (7053,1000), or without it the Activity Concentration
    Scale Factor (7053,1009), which scales the rescaled values to Bq/ml,
    then as BQML; GML is already SUVbw ("assumes that GML indicates SUVbw
    instead of SUVlbm"). SUL and SUVbsa are SUVbw x LBM / W and SUVbw x BSA
    (cm^2) / W (g), so they follow SUVbw whichever route it came by.

    Decay Correction: START decays the dose to the scan start (QIBA, see
    `_scan_start`); ADMIN images are corrected to the administration
    (PS3.3 C.8.9.1.1.5), so the dose is not decayed; NONE images are not
    corrected, so the dose is decayed to each frame's average count time.

    Parameters
    ----------
    dataset : pydicom.dataset.Dataset
        A PET image (pixel data not needed).
    series_earliest : datetime, optional
        `earliest_acquisition` of the instance's whole series, for QIBA's
        last fallback when Series Time was moved; without it the instance's
        own acquisition start is used.

    Raises
    ------
    MissingSuvAttributeError
        An attribute SUVbw needs is missing, empty, zero or unreadable.
    SuvNotDefinedError
        Not PT, unsupported Units or Decay Correction, no attenuation
        correction, or an injection after the scan.
    """
    header = _Header(dataset)
    warnings: list[str] = []
    modality = str(dataset.get("Modality", "")).strip()
    if modality != "PT":
        raise SuvNotDefinedError(
            f"Modality is {modality or 'missing'}, not PT", sop_instance_uid=header.uid
        )
    decay = _decay_correction(header)
    units_value = header.raw("Units")
    if units_value is None:
        raise header.missing("Units")
    units = str(units_value).strip().upper()
    _check_corrections(header, decay, warnings)
    frames = _frames(header)

    if units == "BQML":
        suv_bw = _activity_factors(header, decay, frames, series_earliest, warnings)
    elif units == "CNTS":
        suv_scale = _philips_factor(header, 0x00, "SUV Scale Factor")
        if suv_scale is not None:
            suv_bw = [suv_scale] * len(frames)
        else:
            concentration = _philips_factor(header, 0x09, "Activity Concentration Scale Factor")
            if concentration is None:
                raise MissingSuvAttributeError(
                    f"SUV Scale Factor (7053,1000) or Activity Concentration Scale Factor "
                    f"(7053,1009) of {PHILIPS_PET_CREATOR!r}",
                    "missing, which Units CNTS needs",
                    sop_instance_uid=header.uid,
                )
            suv_bw = [
                concentration * factor
                for factor in _activity_factors(header, decay, frames, series_earliest, warnings)
            ]
    elif units == "GML":
        warnings.append("Units GML taken to be SUVbw already (QIBA)")
        suv_bw = [1.0] * len(frames)
    else:
        raise SuvNotDefinedError(
            f"Units {units} cannot be turned into SUV", sop_instance_uid=header.uid
        )

    body = _body(header, warnings)
    per_gram = None if body.weight_kg is None else 1.0 / (body.weight_kg * 1000.0)
    lean, surface = body.lean_body_mass_kg, body.surface_area_m2
    sul_ratio = None if lean is None else lean * 1000.0 * per_gram
    bsa_ratio = None if surface is None else surface * 1e4 * per_gram
    return SuvFactors(
        sop_instance_uid=header.uid,
        units=units,
        decay_correction=decay,
        frames=tuple(
            FrameSuvFactors(
                frame_number=frame.number,
                suv_bw=factor,
                sul=None if sul_ratio is None else factor * sul_ratio,
                suv_bsa=None if bsa_ratio is None else factor * bsa_ratio,
            )
            for frame, factor in zip(frames, suv_bw, strict=True)
        ),
        warnings=tuple(dict.fromkeys(warnings)),
    )


@dataclass(frozen=True)
class FileSuvFactors:
    """The SUV factors of one file, or why it has none.

    Attributes
    ----------
    path : Path
    factors : SuvFactors or None
        None exactly when `error` is set.
    error : str or None
        Why there are no factors: the file is not DICOM, or a `SuvError`'s
        message (naming the attribute and the instance).
    """

    path: Path
    factors: SuvFactors | None
    error: str | None


def read_suv_factors(paths: Sequence[Path]) -> list[FileSuvFactors]:
    """The SUV factors of each PET file, in the order given; one bad file spoils no other.

    QIBA's last fallback for a moved Series Time is the earliest acquisition
    of the whole series, so the files are grouped by series for
    `earliest_acquisition` before any factor is computed.
    """
    read: list[Dataset | FileSuvFactors] = []
    for path in paths:
        try:
            read.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            read.append(FileSuvFactors(path, None, f"cannot read DICOM: {exc}"))
    series: dict[str, list[Dataset]] = {}
    for item in read:
        if isinstance(item, Dataset):
            series.setdefault(_series_uid(item), []).append(item)
    earliest = {uid: earliest_acquisition(members) for uid, members in series.items()}
    return [
        _file_factors(path, item, earliest[_series_uid(item)]) if isinstance(item, Dataset) else item
        for path, item in zip(paths, read, strict=True)
    ]


def _series_uid(dataset: Dataset) -> str:
    return str(dataset.get("SeriesInstanceUID", ""))


def _file_factors(path: Path, dataset: Dataset, series_earliest: datetime | None) -> FileSuvFactors:
    try:
        return FileSuvFactors(path, suv_factors(dataset, series_earliest=series_earliest), None)
    except SuvError as exc:
        return FileSuvFactors(path, None, str(exc))
