"""A dosimetry course's organ doses as a DICOM TID 1500 Measurement Report.

A Comprehensive 3D SR (PS3.3 A.35.13) whose content tree is TID 1500
"Measurement Report", as dicomio/sr.py writes for one series, so the same
readers (highdicom, dcmqi, the Imaging Data Commons) find the numbers. The
course has no SEG to point at (each time point has its own CT masks), so the
groups are TID 1501 "Measurement and Qualitative Evaluation Group", which
needs no ROI reference, rather than TID 1411.

Layout, per organ, all groups of one organ sharing its TID 4108 tracking
identifier and UID (that is what tracking identifiers are for: the same
finding across time points):

* one group per time point, with a TID 1502 Time Point Context (the time
  point's order and "<h> h after administration"), the SPECT it was read
  from as the group's source image, and three measurements: the time after
  the start of injection (h), the organ's total activity (MBq) and its mean
  activity concentration (Bq/ml); the SPECT to CT registration around the
  organ is a qualitative evaluation (aligned or misaligned, why in a
  Comment);
* one summary group without a time point: volume (ml), mass (g, INFERRED
  FROM the assumed density), the sigma of the mask's Gaussian extension
  (mm), the time-integrated activity (MBq.h) and the mean absorbed dose
  (Gy). The fit model is the TIA's Measurement Method; the TIA is INFERRED
  FROM the fit parameters (each with its name and standard error) and R²;
  why the model was chosen is a Comment under it. Uncertainties are TID 310's
  upper and lower measurement uncertainty, both the one standard uncertainty
  (k = 1) of the fit.

The administration (radiopharmaceutical, radionuclide, activity, start) is
one container appended to the report's root, coded as TID 10022
"Radiopharmaceutical Administration Event" codes it: the observation context
(TID 1001) has no place for it, and the report states one course, so it is
said once for all groups rather than repeated in each.

Where the codes come from (PS3.16, as shipped in pydicom 3.0's concept
dictionary, with the context groups it lists):

* DCM 110821 "Nuclear Medicine Tomographic Activity" (CID 218, 7180, 7469),
  with Derivation SCT 255619001 "Total" (CID 7464) in MBq for the organ's
  activity and SCT 373098007 "Mean" in Bq/ml for its concentration.
* DCM 130194 "Time after the start of injection", in h.
* DCM 128513 "Absorbed Dose" (CID 218, 7180, 7469, 10070), in Gy.
* DCM 128453 "Curve Fit Parameter" (CID 10069).
* Volume SCT 118565006, Mass SCT 118538004, the assumed density, Comment
  DCM 121106: as dicomio/codes.py has them for the single-series report.
* Procedure Reported (CID 100): LN 49118-3 "NM unspecified body region" and
  LN 25045-6 "CT unspecified body region".
* DCM 113502 "Radiopharmaceutical Administration", DCM 123001
  "Radiopharmaceutical", SCT 89457008 "Radionuclide" (its value a CID 18
  code, ^177^Lutetium SCT 447553000), DCM 113507 "Administered activity",
  DCM 123003 "Radiopharmaceutical Start DateTime" (TID 10022).
* PS3.16 has no concept for the time-integrated (cumulated) activity, the
  name of a fit parameter, the coefficient of determination, the mask's
  extension, the fit models, the MIRD local-deposition dose method or the
  registration check: these are in segnode's private scheme
  (dicomio.codes.PRIVATE_SCHEME), declared in the Coding Scheme
  Identification Sequence.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Final

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomio.administration import radionuclide_name
from dicomio.codes import (
    COMMENT,
    CT_PROCEDURE,
    DENSITY,
    MASS,
    PRIVATE_SCHEME,
    VOLUME,
    Concept,
    StructureCode,
)
from dicomio.derived import date_object
from dicomio.dose_records import CourseDoses, OrganDose, TimePointActivity
from dicomio.seg import MANUFACTURER, MODEL_NAME

__all__ = [
    "ABSORBED_DOSE",
    "ACTIVITY",
    "ADMINISTERED_ACTIVITY",
    "ADMINISTRATION",
    "ALIGNED",
    "CONCENTRATION",
    "CURVE_FIT_PARAMETER",
    "FIT_MODELS",
    "MASK_EXTENSION",
    "MAX_NAME_LENGTH",
    "MAX_TEXT_LENGTH",
    "MIRD_LOCAL_DEPOSITION",
    "MISALIGNED",
    "NM_PROCEDURE",
    "PARAMETER_NAME",
    "RADIONUCLIDE",
    "RADIOPHARMACEUTICAL",
    "REGISTRATION",
    "R_SQUARED",
    "START_DATETIME",
    "TIME_AFTER_INJECTION",
    "TIME_INTEGRATED_ACTIVITY",
    "DoseReportError",
    "check_course_text",
    "write_dose_report",
]

#: Longest name (organ label, radiopharmaceutical, parameter name, unit): VR LO's 64 (PS3.5 Table 6.2-1).
MAX_NAME_LENGTH: Final = 64
#: Longest explanation (why a fit was chosen, why a time point is misaligned).
MAX_TEXT_LENGTH: Final = 1024


def _private(value: str, meaning: str) -> Concept:
    return Concept(PRIVATE_SCHEME, value, meaning)


def _ucum(value: str, meaning: str) -> Concept:
    return Concept("UCUM", value, meaning)


_NM_TOMOGRAPHIC_ACTIVITY = Concept("DCM", "110821", "Nuclear Medicine Tomographic Activity")
_TOTAL = Concept("SCT", "255619001", "Total")
_MEAN = Concept("SCT", "373098007", "Mean")
_MBQ = _ucum("MBq", "megabecquerel")

#: Concept, unit and derivation of the measurements.
ACTIVITY: Final = (_NM_TOMOGRAPHIC_ACTIVITY, _MBQ, _TOTAL)
CONCENTRATION: Final = (_NM_TOMOGRAPHIC_ACTIVITY, _ucum("Bq/ml", "becquerel per milliliter"), _MEAN)
TIME_AFTER_INJECTION: Final = (Concept("DCM", "130194", "Time after the start of injection"),
                               _ucum("h", "hour"), None)
TIME_INTEGRATED_ACTIVITY: Final = (_private("TIA", "Time-integrated activity"),
                                   _ucum("MBq.h", "megabecquerel hour"), None)
ABSORBED_DOSE: Final = (Concept("DCM", "128513", "Absorbed Dose"), _ucum("Gy", "gray"), None)
MASK_EXTENSION: Final = (_private("MASKSIGMA", "Sigma of the mask's Gaussian extension"),
                         _ucum("mm", "millimeter"), None)
CURVE_FIT_PARAMETER: Final = Concept("DCM", "128453", "Curve Fit Parameter")
PARAMETER_NAME: Final = _private("PARAMNAME", "Parameter name")
R_SQUARED: Final = (_private("RSQUARED", "Coefficient of determination"), _ucum("1", "no units"), None)

#: The TIA's Measurement Method for each model dicomio.dose_records names.
FIT_MODELS: Final[Mapping[str, Concept]] = MappingProxyType({
    "mono-exponential": _private("MONOEXP", "Mono-exponential fit, analytic integral"),
    "bi-exponential": _private("BIEXP", "Bi-exponential fit, analytic integral"),
    "trapezoid": _private("TRAPEZOID", "Trapezoid with a physical-decay tail"),
})
#: The dose's Measurement Method: MIRD self-dose, electron energy deposited locally.
MIRD_LOCAL_DEPOSITION: Final = _private("MIRDLOCAL", "MIRD self-dose, local energy deposition")
REGISTRATION: Final = _private("REGISTRATION", "SPECT to CT registration around the organ")
ALIGNED: Final = _private("ALIGNED", "Aligned")
MISALIGNED: Final = _private("MISALIGNED", "Misaligned")
#: The registration could not be judged at this time point (too little uptake, a hot neighbour).
NOT_ASSESSABLE: Final = _private("NOT-ASSESSABLE", "Not assessable")

NM_PROCEDURE: Final = Concept("LN", "49118-3", "NM unspecified body region")
_PROCEDURES: Final = {"NM": NM_PROCEDURE, "CT": CT_PROCEDURE}

ADMINISTRATION: Final = Concept("DCM", "113502", "Radiopharmaceutical Administration")
RADIOPHARMACEUTICAL: Final = Concept("DCM", "123001", "Radiopharmaceutical")
RADIONUCLIDE: Final = Concept("SCT", "89457008", "Radionuclide")
ADMINISTERED_ACTIVITY: Final = Concept("DCM", "113507", "Administered activity")
START_DATETIME: Final = Concept("DCM", "123003", "Radiopharmaceutical Start DateTime")

#: Radionuclide codes of CID 18 "Isotopes in Radiopharmaceuticals" by segnode's name ("Lu-177").
_NUCLIDE_CODES: Final = {
    radionuclide_name(code.meaning): code for code in codes.CID18.concepts.values()
}


class DoseReportError(ValueError):
    """A course that cannot be reported; says which patient and which field."""


def _check_text(course: CourseDoses, field: str, text: str, longest: int) -> None:
    problem = None
    if not text.strip():
        problem = "is empty"
    elif len(text) > longest:
        problem = f"has {len(text)} characters, at most {longest} are reported"
    elif any(unicodedata.category(c) == "Cc" for c in text):
        problem = "contains control characters"
    if problem is not None:
        raise DoseReportError(f"course of patient {course.patient_id[:64]!r}: {field} {problem}")


def check_course_text(course: CourseDoses) -> None:
    """Refuse text that no report should carry: empty, over-long, control characters.

    Names are at most 64 characters (a DICOM LO), explanations at most 1024;
    nothing is cut, as a cut name or reason would mislead without a sign.

    Raises
    ------
    DoseReportError
        Naming the field (``organ kidney_left fit_selection``...).
    """
    _check_text(course, "patient_id", course.patient_id, MAX_NAME_LENGTH)
    _check_text(course, "radiopharmaceutical", course.radiopharmaceutical, MAX_NAME_LENGTH)
    _check_text(course, "radionuclide", course.radionuclide, MAX_NAME_LENGTH)
    for organ in course.organs:
        where = f"organ {organ.structure.name[:64]!r}"
        _check_text(course, f"{where} name", organ.structure.name, MAX_NAME_LENGTH)
        _check_text(course, f"{where} label", organ.structure.label, MAX_NAME_LENGTH)
        _check_text(course, f"{where} fit_model", organ.fit_model, MAX_NAME_LENGTH)
        _check_text(course, f"{where} fit_selection", organ.fit_selection, MAX_TEXT_LENGTH)
        for parameter in organ.fit_parameters:
            _check_text(course, f"{where} fit parameter name", parameter.name, MAX_NAME_LENGTH)
            _check_text(course, f"{where} fit parameter {parameter.name!r} unit", parameter.unit,
                        MAX_NAME_LENGTH)
        for point in organ.time_points:
            for what, note in (("misalignment", point.misalignment),
                               ("alignment not assessable", point.alignment_not_assessable)):
                if note is not None:
                    _check_text(course, f"{where} {what} at {point.hours_after_administration} h", note,
                                MAX_TEXT_LENGTH)


def write_dose_report(
    course: CourseDoses,
    source_headers: Sequence[Dataset],
    *,
    device_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    created: datetime,
    series_description: str,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR of `course` (layout and codes: see the module docstring).

    Parameters
    ----------
    course : CourseDoses
        The organs' results over the course.
    source_headers : sequence of pydicom.dataset.Dataset
        The headers of every SPECT (NM) and CT instance of every time point
        (``stop_before_pixels`` is enough): the evidence, and the SR's
        patient and study, which are those of the SPECT of the latest time
        point (the one that completed the course); earlier studies are
        Pertinent Other Evidence, as PS3.3 C.17.2.3 wants.
    device_uid : str
        Device Observer UID (TID 1004), the same for every report of this node.
    series_instance_uid, sop_instance_uid, series_number, series_description
        Identity of the SR (UIDs derived by the caller, so that a retry rebuilds the same bytes).
    created : datetime
        The job's time: Content, Series and Instance Creation date and time.

    Raises
    ------
    DoseReportError
        If the course has no organ or an organ no time point, a value is not
        finite, times are not increasing, the fit model or radionuclide is
        unknown, text is refused (:func:`check_course_text`), a source header
        is of another patient or modality, or a time point's SPECT series is
        not among `source_headers`.
    """
    check_course_text(course)
    if not course.organs:
        raise DoseReportError(f"course of patient {course.patient_id!r} has no organ to report")
    _check_sources(course, source_headers)
    spect_by_series: dict[str, list[Dataset]] = {}
    for header in source_headers:
        if header.Modality == "NM":
            spect_by_series.setdefault(header.SeriesInstanceUID, []).append(header)
    groups = []
    for organ in course.organs:
        tracking = hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[course.patient_id, course.administration.isoformat(),
                                           organ.structure.name]),
            identifier=organ.structure.label,
        )
        groups.append(_summary_group(course, organ, tracking))
        _check_order(course, organ)
        for order, point in enumerate(organ.time_points, 1):
            groups.append(_time_point_group(course, organ, point, order, tracking, spect_by_series))
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
        ),
    )
    modalities = sorted({header.Modality for header in source_headers})
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=[_PROCEDURES[m].coded() for m in modalities],
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_administration(course))
    points = [p for o in course.organs for p in o.time_points]
    latest = max(points, key=lambda p: p.hours_after_administration)
    first = spect_by_series[latest.spect_series_instance_uid][0]
    evidence = [first, *(h for h in source_headers if h is not first)]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        series_description=series_description,
        # Complete, but neither verified nor final: no person has reviewed it.
        is_complete=True,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="segnode measurement concepts",
                responsible_organization=MANUFACTURER,
            )
        ],
    )
    date_object(sr, created)
    return sr


def _check_sources(course: CourseDoses, headers: Sequence[Dataset]) -> None:
    who = f"course of patient {course.patient_id!r}"
    if not headers:
        raise DoseReportError(f"{who}: no source headers")
    for header in headers:
        if str(header.get("PatientID", "")) != course.patient_id:
            raise DoseReportError(
                f"{who}: source instance {header.SOPInstanceUID} has PatientID (0010,0020) "
                f"{header.get('PatientID')!r}"
            )
        if header.get("Modality") not in _PROCEDURES:
            raise DoseReportError(
                f"{who}: source instance {header.SOPInstanceUID} has Modality (0008,0060) "
                f"{header.get('Modality')!r}, expected NM or CT"
            )
    spect_series = {h.SeriesInstanceUID for h in headers if h.Modality == "NM"}
    for organ in course.organs:
        for point in organ.time_points:
            if point.spect_series_instance_uid not in spect_series:
                raise DoseReportError(
                    f"{who}: SPECT series {point.spect_series_instance_uid} of organ "
                    f"{organ.structure.name!r} at {point.hours_after_administration} h is not among "
                    "the source headers"
                )


def _check_order(course: CourseDoses, organ: OrganDose) -> None:
    hours = [p.hours_after_administration for p in organ.time_points]
    if not hours or any(b <= a for a, b in zip(hours, hours[1:], strict=False)):
        raise DoseReportError(
            f"course of patient {course.patient_id!r}: organ {organ.structure.name!r} has time points "
            f"{hours} h; at least one, in increasing order"
        )


def _finite(course: CourseDoses, what: str, value: float) -> float:
    if not math.isfinite(value):
        raise DoseReportError(f"course of patient {course.patient_id!r}: {what} is {value}; must be finite")
    return float(value)


def _measurement(
    course: CourseDoses,
    organ: OrganDose,
    concept: tuple[Concept, Concept, Concept | None],
    value: float,
    *,
    uncertainty: float | None = None,
    method: Concept | None = None,
) -> hd.sr.Measurement:
    name, unit, derivation = concept
    what = f"{name.meaning} of organ {organ.structure.name!r}"
    properties = None
    if uncertainty is not None:
        u = _finite(course, f"uncertainty of {what}", uncertainty)
        properties = hd.sr.MeasurementProperties(upper_measurement_uncertainty=u,
                                                 lower_measurement_uncertainty=u)
    return hd.sr.Measurement(
        name=name.coded(),
        value=_finite(course, what, value),
        unit=unit.coded(),
        derivation=None if derivation is None else derivation.coded(),
        method=None if method is None else method.coded(),
        properties=properties,
    )


def _child(measurement: hd.sr.Measurement, item: Dataset) -> None:
    """Append a TID 300 child that highdicom's Measurement takes no argument for."""
    if "ContentSequence" not in measurement[0]:
        measurement[0].ContentSequence = hd.sr.ContentSequence([])
    measurement[0].ContentSequence.append(item)


def _summary_group(
    course: CourseDoses, organ: OrganDose, tracking: hd.sr.TrackingIdentifier
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    rel = hd.sr.RelationshipTypeValues
    mass = hd.sr.Measurement(
        name=MASS.name.coded(),
        value=_finite(course, f"mass of organ {organ.structure.name!r}", organ.mass_g),
        unit=MASS.unit.coded(),
    )
    _child(mass, hd.sr.NumContentItem(
        name=DENSITY.name.coded(),
        value=_finite(course, f"density of organ {organ.structure.name!r}", organ.density_g_per_ml),
        unit=DENSITY.unit.coded(), relationship_type=rel.INFERRED_FROM,
    ))
    model = FIT_MODELS.get(organ.fit_model)
    if model is None:
        raise DoseReportError(
            f"course of patient {course.patient_id!r}: organ {organ.structure.name!r} has fit model "
            f"{organ.fit_model!r}, expected one of {sorted(FIT_MODELS)}"
        )
    tia = _measurement(course, organ, TIME_INTEGRATED_ACTIVITY, organ.time_integrated_activity_mbq_h,
                       uncertainty=organ.time_integrated_activity_uncertainty_mbq_h, method=model)
    for parameter in organ.fit_parameters:
        what = f"fit parameter {parameter.name!r} of organ {organ.structure.name!r}"
        item = hd.sr.NumContentItem(
            name=CURVE_FIT_PARAMETER.coded(), value=_finite(course, what, parameter.value),
            unit=hd.sr.CodedConcept(parameter.unit, "UCUM", parameter.unit),
            relationship_type=rel.INFERRED_FROM,
        )
        children = [hd.sr.TextContentItem(name=PARAMETER_NAME.coded(), value=parameter.name,
                                          relationship_type=rel.HAS_CONCEPT_MOD)]
        if parameter.standard_error is not None:
            se = _finite(course, f"standard error of {what}", parameter.standard_error)
            children.extend(
                hd.sr.NumContentItem(name=bound, value=se,
                                     unit=hd.sr.CodedConcept(parameter.unit, "UCUM", parameter.unit),
                                     relationship_type=rel.HAS_PROPERTIES)
                for bound in (codes.SCT.RangeOfUpperMeasurementUncertainty,
                              codes.SCT.RangeOfLowerMeasurementUncertainty)
            )
        item.ContentSequence = hd.sr.ContentSequence(children)
        _child(tia, item)
    if organ.r_squared is not None:
        name, unit, _ = R_SQUARED
        _child(tia, hd.sr.NumContentItem(
            name=name.coded(), value=_finite(course, "R²", organ.r_squared), unit=unit.coded(),
            relationship_type=rel.INFERRED_FROM,
        ))
    _child(tia, hd.sr.TextContentItem(name=COMMENT.coded(), value=organ.fit_selection,
                                      relationship_type=rel.HAS_PROPERTIES))
    measurements = [
        _measurement(course, organ, (VOLUME.name, VOLUME.unit, None), organ.volume_ml),
        mass,
        _measurement(course, organ, MASK_EXTENSION, organ.mask_extension_sigma_mm),
        tia,
        _measurement(course, organ, ABSORBED_DOSE, organ.absorbed_dose_gy,
                     uncertainty=organ.absorbed_dose_uncertainty_gy, method=MIRD_LOCAL_DEPOSITION),
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_category=organ.structure.category.coded(),
        finding_type=organ.structure.property_type.coded(),
        finding_sites=[_finding_site(organ.structure)],
        measurements=measurements,
    )


def _time_point_group(
    course: CourseDoses,
    organ: OrganDose,
    point: TimePointActivity,
    order: int,
    tracking: hd.sr.TrackingIdentifier,
    spect_by_series: dict[str, list[Dataset]],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    hours = point.hours_after_administration
    if point.misalignment is not None:
        judged, why = MISALIGNED, point.misalignment
    elif point.alignment_not_assessable is not None:
        judged, why = NOT_ASSESSABLE, point.alignment_not_assessable
    else:
        judged, why = ALIGNED, None
    registration = hd.sr.QualitativeEvaluation(name=REGISTRATION.coded(), value=judged.coded())
    if why is not None:
        registration[0].ContentSequence = hd.sr.ContentSequence([
            hd.sr.TextContentItem(name=COMMENT.coded(), value=why,
                                  relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)
        ])
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        time_point_context=hd.sr.TimePointContext(
            time_point=f"{hours:g} h after administration", time_point_order=order
        ),
        finding_category=organ.structure.category.coded(),
        finding_type=organ.structure.property_type.coded(),
        finding_sites=[_finding_site(organ.structure)],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(header)
            for header in spect_by_series[point.spect_series_instance_uid]
        ],
        measurements=[
            _measurement(course, organ, TIME_AFTER_INJECTION, hours),
            _measurement(course, organ, ACTIVITY, point.activity_mbq),
            _measurement(course, organ, CONCENTRATION, point.mean_concentration_bq_per_ml),
        ],
        qualitative_evaluations=[registration],
    )


def _finding_site(structure: StructureCode) -> hd.sr.FindingSite:
    """The organ itself, or the region a finding lies in, with its laterality."""
    location = structure.anatomic_region or structure.property_type
    return hd.sr.FindingSite(
        anatomic_location=location.coded(),
        laterality=None if structure.laterality is None else structure.laterality.coded(),
    )


def _administration(course: CourseDoses) -> hd.sr.ContainerContentItem:
    """The TID 10022-coded administration, a container under the report's root."""
    rel = hd.sr.RelationshipTypeValues
    nuclide = _NUCLIDE_CODES.get(course.radionuclide)
    if nuclide is None:
        raise DoseReportError(
            f"course of patient {course.patient_id!r}: radionuclide {course.radionuclide!r} is not in "
            "CID 18 (expected the form 'Lu-177')"
        )
    container = hd.sr.ContainerContentItem(name=ADMINISTRATION.coded(), relationship_type=rel.CONTAINS)
    container.ContentSequence = [
        hd.sr.TextContentItem(name=RADIOPHARMACEUTICAL.coded(), value=course.radiopharmaceutical,
                              relationship_type=rel.CONTAINS),
        hd.sr.CodeContentItem(name=RADIONUCLIDE.coded(), value=nuclide, relationship_type=rel.CONTAINS),
        hd.sr.NumContentItem(
            name=ADMINISTERED_ACTIVITY.coded(),
            value=_finite(course, "administered activity", course.administered_activity_mbq),
            unit=_MBQ.coded(), relationship_type=rel.CONTAINS,
        ),
        hd.sr.DateTimeContentItem(name=START_DATETIME.coded(), value=course.administration,
                                  relationship_type=rel.CONTAINS),
    ]
    return container
