"""The measurements of a segmentation as a DICOM TID 1500 Measurement Report.

A Comprehensive 3D SR document (PS3.3 A.35.13) whose content tree is TID 1500
"Measurement Report" (PS3.16): one TID 1411 "Volumetric ROI Measurements and
Qualitative Evaluations" group per structure, each pointing at its segment of
the DICOM-SEG that segnode sends with it. This is how dcmqi (3D Slicer),
highdicom and the Imaging Data Commons exchange measurements of segmented
regions, so their readers understand it without segnode-specific code.

Each value of a ``StructureMeasurements`` is a TID 300 measurement of the
group; the few that need more say it the TID 300 way: the mass is INFERRED
FROM the assumed density (a NUM under it), and a comparison with a reference
segmentation (Dice, Jaccard, HD95) is INFERRED FROM the reference segment (an
IMAGE "Source of Measurement" naming the reference SEG and segment, TID 320).
Quality flags are the group's qualitative evaluations, each with its detail
as a "Comment" under it. The same writer makes the QA report, sent when a
reference SEG arrives: the caller passes that SEG as `reference_segmentation`.

This module only assembles highdicom templates (``highdicom.sr``), which
check each template's constraints as they are built, and adds the TID 300
children highdicom has no argument for. The coded concepts of the
measurements, and why they are those, are in dicomio/codes.py
(:class:`~dicomio.codes.MeasurementConcept`); the structure's own codes are
read from the SEG it references.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomio.codes import (
    BOUNDING_BOX_MAX,
    BOUNDING_BOX_MIN,
    COMMENT,
    COMPONENT_COUNT,
    CT_PROCEDURE,
    DENSITY,
    DICE,
    FLAG_VALUES,
    HAUSDORFF_95,
    HU_MAX,
    HU_MEAN,
    HU_MEDIAN,
    HU_MIN,
    HU_STD,
    JACCARD,
    LEFT,
    MASS,
    MIRROR_DICE,
    PET_PROCEDURE,
    PLAUSIBILITY,
    PRIVATE_SCHEME,
    QUALITATIVE_EVALUATIONS,
    RIGHT,
    SOURCE_OF_MEASUREMENT,
    SUL_MEAN,
    SUL_PEAK,
    SUV_MAX,
    SUV_MEAN,
    SUV_PEAK,
    TOTAL_UPTAKE,
    VOLUME,
    Concept,
    MeasurementConcept,
)
from dicomio.measurements import QualityFlag, StructureMeasurements
from dicomio.seg import MANUFACTURER, MODEL_NAME, AlgorithmIdentity

#: TID 1500 Procedure Reported (CID 100) for each modality of the source images.
_PROCEDURES: dict[str, Concept] = {"CT": CT_PROCEDURE, "PT": PET_PROCEDURE}

#: The modifiers dicomio/codes.py gives a SEG segment; as lateralities (CID
#: 244) they are what a Finding Site can carry.
_LATERALITIES = (LEFT.coded(), RIGHT.coded())


class MeasurementReportError(ValueError):
    """The measurements, segmentation and source images do not fit together."""


def write_measurement_report(
    measurements: Sequence[StructureMeasurements],
    segmentation: Dataset,
    source_images: Sequence[Dataset],
    algorithm: AlgorithmIdentity,
    *,
    device_uid: str,
    series_number: int,
    series_description: str,
    reference_segmentation: Dataset | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    notes: Sequence[str] = (),
    further: Sequence[tuple[Dataset, Sequence[StructureMeasurements]]] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the SR document reporting `measurements` of `segmentation`.

    Each structure becomes one TID 1411 measurement group that references its
    segment (SEG SOP Instance UID and Segment Number) and the series the SEG
    was derived from. What the structure is comes from the SEG itself (whose
    codes dicomio/codes.py gave), so the SR cannot disagree with it: the
    segment's Segmented Property Category and Type become the group's Finding
    Category and Finding, and its Anatomic Region (when the SEG gives one) or
    else its Segmented Property Type (an organ is its own location), with its
    laterality, becomes the Finding Site.

    Parameters
    ----------
    measurements : sequence of StructureMeasurements
        One entry per structure, each naming a segment of `segmentation`.
        Optional values that are None are left out of the report.
    segmentation : pydicom.dataset.Dataset
        The DICOM-SEG instance the measurements were computed on.
    source_images : sequence of pydicom.dataset.Dataset
        Every image the measurements come from: the segmented series, plus
        the PET series when SUVs are given. Headers are enough (read with
        ``stop_before_pixels``). They are listed as evidence (Current
        Requested Procedure Evidence Sequence) and give the patient and study.
    algorithm : dicomio.seg.AlgorithmIdentity
        The model, as in the SEG; written on each measurement (TID 4019
        Algorithm Identification) so that results of different model versions
        can be told apart.
    device_uid : str
        Device Observer UID (TID 1004): identifies this segnode installation
        as the observer (as the SEG's Device Serial Number does), so it should
        stay the same across reports.
    series_number : int
        Series Number of the SR.
    series_description : str
        Series Description of the SR.
    reference_segmentation : pydicom.dataset.Dataset, optional
        The SEG of the same images that Dice, Jaccard and HD95 compare with
        (each structure's ``reference_segment_number`` is its segment there).
        Required exactly when one of those is given; it joins the evidence.
    notes : sequence of str, optional
        What a reader must know about the input (a series completed without
        instances that its MPPS step listed): each a Comment in the report's
        Qualitative Evaluations, so that no gap in the input is silent.
    further : sequence of (pydicom.dataset.Dataset, sequence of StructureMeasurements)
        Other SEGs of the same images with the measurements of their
        segments: structures that overlap those of `segmentation` (the
        body, every labelled voxel) are a SEG of their own, because highdicom
        builds a SEG of overlapping segments from a 4-D stack of masks, six
        times slower for a 300-slice CT. Each group references its own SEG.
    series_instance_uid, sop_instance_uid : str, optional
        UIDs of the SR; new ones by default. Give them to rebuild an
        identical document.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The SR instance (a pydicom Dataset), ready to save or send.

    Raises
    ------
    MeasurementReportError
        If there are no measurements, two measure the same segment, a
        segment is not in the SEG or has a modifier other than one
        laterality, a value is not finite, a mass comes without its density
        (or the reverse), the SEG does not reference exactly one series
        among `source_images`, PET values are given without PET images, a
        source image has a modality without a procedure code, or the
        reference comparisons and `reference_segmentation` do not match
        (one without the other, a reference of other images, a reference
        segment it does not have).
    """
    seg_uid = segmentation.SOPInstanceUID
    if not measurements:
        raise MeasurementReportError(f"no measurements to report for SEG {seg_uid}")
    source_series = _source_series(segmentation, source_images)
    _check_reference(measurements, segmentation, reference_segmentation, source_series)
    further_measurements = [m for _, measured in further for m in measured]
    procedures = _procedures(source_images, [*measurements, *further_measurements], seg_uid)
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, family=algorithm.family.coded()
    )

    groups = []
    for seg, measured in ((segmentation, measurements), *further):
        if seg is not segmentation and _source_series(seg, source_images) != source_series:
            raise MeasurementReportError(f"SEG {seg.SOPInstanceUID} is not of the series SEG {seg_uid} is of")
        numbers = [m.segment_number for m in measured]
        if len(set(numbers)) != len(numbers):
            raise MeasurementReportError(
                f"segment numbers measured more than once for SEG {seg.SOPInstanceUID}: {numbers}"
            )
        segments = {item.SegmentNumber: item for item in seg.get("SegmentSequence", [])}
        for structure in measured:
            segment = segments.get(structure.segment_number)
            if segment is None:
                raise MeasurementReportError(
                    f"{structure.name!r} refers to segment {structure.segment_number}, which SEG "
                    f"{seg.SOPInstanceUID} does not have (it has {sorted(segments)})"
                )
            reference = reference_segmentation if seg is segmentation else None
            groups.append(_measurement_group(structure, seg, segment, source_series, algorithm_id, reference))

    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedures,
        imaging_measurements=groups,
    )
    if notes:
        report[0].ContentSequence.append(_notes(notes))
    evidence = [*source_images, segmentation, *(seg for seg, _ in further)]
    if reference_segmentation is not None:
        evidence.append(reference_segmentation)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        series_description=series_description,
        # Complete (every structure is in it) but neither verified nor final:
        # no person has reviewed the automatic result (SR Document General
        # Module, PS3.3 C.17.2).
        is_complete=True,
        coding_schemes=_private_schemes([*measurements, *further_measurements]),
    )


def _notes(notes: Sequence[str]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS.coded(), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = [
        hd.sr.TextContentItem(name=COMMENT.coded(), value=note,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for note in notes
    ]
    return container


def _reported_values(structure: StructureMeasurements) -> list[tuple[MeasurementConcept, float]]:
    """The TID 300 measurements of a structure's group, in report order.

    Values that are None are left out; the density is not among them, as it
    is reported under the mass it was used for.
    """
    box = structure.bounding_box
    corners = []
    if box is not None:
        corners = [
            *zip(BOUNDING_BOX_MIN, box.min_lps_mm, strict=True),
            *zip(BOUNDING_BOX_MAX, box.max_lps_mm, strict=True),
        ]
    values = [
        (VOLUME, structure.volume_ml),
        (MASS, structure.mass_g),
        (HU_MEAN, structure.hu_mean),
        (HU_STD, structure.hu_std),
        (HU_MEDIAN, structure.hu_median),
        (HU_MIN, structure.hu_min),
        (HU_MAX, structure.hu_max),
        (COMPONENT_COUNT, structure.component_count),
        *corners,
        (SUV_MEAN, structure.suv_mean),
        (SUV_MAX, structure.suv_max),
        (SUV_PEAK, structure.suv_peak),
        (SUL_MEAN, structure.sul_mean),
        (SUL_PEAK, structure.sul_peak),
        (TOTAL_UPTAKE, structure.total_uptake),
        (DICE, structure.dice),
        (JACCARD, structure.jaccard),
        (HAUSDORFF_95, structure.hausdorff95_mm),
        (MIRROR_DICE, structure.mirror_dice),
    ]
    return [(concept, value) for concept, value in values if value is not None]


#: Values that compare the segment with the reference SEG's segment.
_REFERENCE_COMPARISONS = (DICE, JACCARD, HAUSDORFF_95)
#: Values measured on PET images.
_PET_VALUES = (SUV_MEAN, SUV_MAX, SUV_PEAK, SUL_MEAN, SUL_PEAK, TOTAL_UPTAKE)


def _measurement_group(
    structure: StructureMeasurements,
    segmentation: Dataset,
    segment: Dataset,
    source_series: str,
    algorithm_id: hd.sr.AlgorithmIdentification,
    reference_segmentation: Dataset | None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 group for one structure, referencing its segment."""
    number = structure.segment_number
    # A segment's Tracking UID (0062,0021) identifies it across instances, as
    # the group's TID 4108 Tracking Unique Identifier does: reuse it. Without
    # one, derive it from the segment so that a rebuilt report keeps it.
    tracking_uid = segment.get("TrackingUID") or generate_uid(
        entropy_srcs=[segmentation.SOPInstanceUID, str(number)]
    )
    if (structure.mass_g is None) != (structure.density_g_ml is None):
        raise MeasurementReportError(
            f"{structure.name!r} (segment {number}) has a mass without its density or the reverse; "
            "the report gives the density the mass was computed with"
        )
    numeric = []
    for concept, value in _reported_values(structure):
        measurement = hd.sr.Measurement(
            name=concept.name.coded(),
            value=_finite(concept, value, structure),
            unit=concept.unit.coded(),
            derivation=None if concept.derivation is None else concept.derivation.coded(),
            algorithm_id=algorithm_id,
        )
        if concept is MASS:
            _add_inferred_from(
                measurement,
                hd.sr.NumContentItem(
                    name=DENSITY.name.coded(),
                    value=_finite(DENSITY, structure.density_g_ml, structure),
                    unit=DENSITY.unit.coded(),
                    relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
                ),
            )
        elif concept in _REFERENCE_COMPARISONS:
            _add_inferred_from(
                measurement,
                hd.sr.ImageContentItem(
                    name=SOURCE_OF_MEASUREMENT.coded(),
                    referenced_sop_class_uid=reference_segmentation.SOPClassUID,
                    referenced_sop_instance_uid=reference_segmentation.SOPInstanceUID,
                    referenced_segment_numbers=structure.reference_segment_number,
                    relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
                ),
            )
        numeric.append(measurement)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=structure.name),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=number,
            # One series reference instead of every source image in every
            # group: a CT series has hundreds of slices (TID 1411 allows either).
            source_series=hd.sr.SourceSeriesForSegmentation(source_series),
        ),
        finding_category=_code(segment.SegmentedPropertyCategoryCodeSequence[0]),
        finding_type=_code(segment.SegmentedPropertyTypeCodeSequence[0]),
        finding_sites=[_finding_site(segment, segmentation.SOPInstanceUID)],
        measurements=numeric,
        qualitative_evaluations=[_flag_evaluation(flag) for flag in structure.flags],
    )


def _finite(concept: MeasurementConcept, value: float, structure: StructureMeasurements) -> float:
    if not math.isfinite(value):
        raise MeasurementReportError(
            f"{concept.label} of {structure.name!r} (segment {structure.segment_number}) is {value}; "
            "SR numeric values must be finite"
        )
    return float(value)


def _add_inferred_from(measurement: hd.sr.Measurement, item: Dataset) -> None:
    """Append a TID 300 INFERRED FROM child, which highdicom's Measurement takes no argument for."""
    measurement[0].ContentSequence.append(item)


def _flag_evaluation(flag: QualityFlag) -> hd.sr.QualitativeEvaluation:
    """A quality flag as a coded evaluation with its detail as a comment under it."""
    evaluation = hd.sr.QualitativeEvaluation(name=PLAUSIBILITY.coded(), value=FLAG_VALUES[flag.kind].coded())
    evaluation[0].ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=COMMENT.coded(),
                value=flag.detail,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        ]
    )
    return evaluation


def _check_reference(
    measurements: Sequence[StructureMeasurements],
    segmentation: Dataset,
    reference: Dataset | None,
    source_series: str,
) -> None:
    """Reference comparisons come with the reference SEG, which segments the same images."""
    seg_uid = segmentation.SOPInstanceUID
    compared = [m for m in measurements if any(c in _REFERENCE_COMPARISONS for c, _ in _reported_values(m))]
    if reference is None:
        if compared:
            raise MeasurementReportError(
                f"{compared[0].name!r} (segment {compared[0].segment_number}) of SEG {seg_uid} is "
                "compared with a reference segmentation, but no reference SEG was given"
            )
        return
    reference_uid = reference.SOPInstanceUID
    if not compared:
        raise MeasurementReportError(
            f"reference SEG {reference_uid} was given, but no structure of SEG {seg_uid} is compared with it"
        )
    referenced = [item.SeriesInstanceUID for item in reference.get("ReferencedSeriesSequence", [])]
    if referenced != [source_series]:
        raise MeasurementReportError(
            f"reference SEG {reference_uid} segments series {referenced}, "
            f"SEG {seg_uid} series {source_series}"
        )
    reference_segments = {item.SegmentNumber for item in reference.get("SegmentSequence", [])}
    for m in compared:
        if m.reference_segment_number not in reference_segments:
            raise MeasurementReportError(
                f"{m.name!r} (segment {m.segment_number}) is compared with segment "
                f"{m.reference_segment_number} of reference SEG {reference_uid}, which has "
                f"{sorted(reference_segments)}"
            )


def _finding_site(segment: Dataset, seg_uid: str) -> hd.sr.FindingSite:
    """Where the segment lies, with its laterality, as the SEG codes it.

    A segment whose property type is a finding (a cyst, fat) names its
    location in the Anatomic Region Sequence; one whose property type is the
    anatomy itself (a kidney) is its own location. Either way laterality is a
    modifier nested in that item (PS3.3 Segment Description Macro), which
    becomes the Finding Site's Laterality (CID 244).
    """
    if "AnatomicRegionSequence" in segment:
        location = segment.AnatomicRegionSequence[0]
        modifiers = location.get("AnatomicRegionModifierSequence", [])
    else:
        location = segment.SegmentedPropertyTypeCodeSequence[0]
        modifiers = location.get("SegmentedPropertyTypeModifierCodeSequence", [])
    coded = [_code(m) for m in modifiers]
    if len(coded) > 1 or any(m not in _LATERALITIES for m in coded):
        raise MeasurementReportError(
            f"segment {segment.SegmentNumber} of SEG {seg_uid} has the modifiers "
            f"{[m.meaning for m in coded]}; a Finding Site takes one laterality, Left or Right"
        )
    return hd.sr.FindingSite(
        anatomic_location=_code(location),
        laterality=coded[0] if coded else None,
    )


def _source_series(segmentation: Dataset, source_images: Sequence[Dataset]) -> str:
    """The one series the SEG was derived from, which must be in the evidence."""
    referenced = [item.SeriesInstanceUID for item in segmentation.get("ReferencedSeriesSequence", [])]
    if len(referenced) != 1:
        raise MeasurementReportError(
            f"SEG {segmentation.SOPInstanceUID} references {len(referenced)} source series, "
            "expected exactly one"
        )
    if referenced[0] not in {image.SeriesInstanceUID for image in source_images}:
        raise MeasurementReportError(
            f"SEG {segmentation.SOPInstanceUID} was derived from series {referenced[0]}, "
            "which is not among the source images"
        )
    return referenced[0]


def _procedures(
    source_images: Sequence[Dataset], measurements: Sequence[StructureMeasurements], seg_uid: str
) -> list[hd.sr.CodedConcept]:
    """Procedure Reported codes for the modalities of the source images."""
    modalities = sorted({image.Modality for image in source_images})
    unknown = [m for m in modalities if m not in _PROCEDURES]
    if unknown:
        raise MeasurementReportError(
            f"source images of SEG {seg_uid} have modality {unknown}, which has no "
            f"procedure code (known: {sorted(_PROCEDURES)})"
        )
    has_pet = any(concept in _PET_VALUES for m in measurements for concept, _ in _reported_values(m))
    if has_pet and "PT" not in modalities:
        raise MeasurementReportError(
            f"PET values are reported for SEG {seg_uid} but no PET image is among the source images"
        )
    return [_PROCEDURES[m].coded() for m in modalities]


def _private_schemes(
    measurements: Sequence[StructureMeasurements],
) -> list[CodingSchemeIdentificationItem] | None:
    """Declare ``PRIVATE_SCHEME`` when the report uses it.

    The Coding Scheme Identification Sequence (PS3.3 C.12.1) is where a
    private scheme is identified; declaring it in reports that do not use it
    only earns a validator warning (dciodvfy does not know "99" designators).
    """
    # Flags and the density are private concepts too.
    private = any(
        m.flags
        or m.density_g_ml is not None
        or any(concept.name.scheme == PRIVATE_SCHEME for concept, _ in _reported_values(m))
        for m in measurements
    )
    if not private:
        return None
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="segnode measurement concepts",
            responsible_organization=MANUFACTURER,
        )
    ]


def _code(item: Dataset) -> hd.sr.CodedConcept:
    """The code of a SEG code item, without the modifiers nested in it.

    A SEG nests laterality inside its property type and anatomic region items;
    copied along into an SR content item, those would be attributes the SR
    IOD does not have.
    """
    code = hd.sr.CodedConcept.from_dataset(item)
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning, code.scheme_version)
