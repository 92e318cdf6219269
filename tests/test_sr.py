"""dicomio/sr.py: TID 1500 Measurement Reports, read back with highdicom and
checked with dicom3tools' dciodvfy.

The SEG the reports refer to is the real thing: a synthetic CT series (files
written by tests/synthetic.py) loaded by dicomio/series.py and segmented into
structures of dicomio/codes.py by dicomio/seg.py, laterality modifiers
included. A second SEG of the same series stands for a reference
segmentation from someone else (the QA report), and one test runs the whole
chain: label map, inference/quantify.py, SEG, SR, dciodvfy, read back.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import PositronEmissionTomographyImageStorage, generate_uid

from dicomio import sr
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
    MASS,
    MIRROR_DICE,
    PET_PROCEDURE,
    PLAUSIBILITY,
    PRIVATE_SCHEME,
    QUALITATIVE_EVALUATIONS,
    SOURCE_OF_MEASUREMENT,
    SUL_MEAN,
    SUL_PEAK,
    SUV_MAX,
    SUV_MEAN,
    SUV_PEAK,
    TOTAL_UPTAKE,
    VOLUME,
    MeasurementConcept,
    structure_code,
)
from dicomio.measurements import BoundingBox, FlagKind, QualityFlag, StructureMeasurements
from dicomio.seg import AlgorithmIdentity, LabelledStructure, plan_segments, write_seg
from dicomio.series import load_series
from inference.quantify import quantify
from inference.segmenter import Segmentation
from tests.synthetic import write_ct_series

DCIODVFY = Path("/usr/bin/dciodvfy")
ALGORITHM = AlgorithmIdentity(name="segnode-organs", version="1.2.3")
DEVICE_UID = "1.2.826.0.1.3680043.8.498.1"

#: Segments 1..4: an organ, an organ with laterality, a finding located in a
#: lateral organ, a tissue located in a region.
STRUCTURES = tuple(
    LabelledStructure(value, structure_code(name))
    for value, name in enumerate(("liver", "kidney_left", "kidney_cyst_right", "subcutaneous_fat"), 1)
)

CT_ONLY = (
    StructureMeasurements(1, "liver", 1534.1234567890123, 2_400_123, 55.25, 12.125, -98.0, 210.0),
    StructureMeasurements(2, "kidney_left", 180.5, 282_031, 30.0, 9.75, -20.0, 130.0),
    StructureMeasurements(3, "kidney_cyst_right", 2.25, 3_516, 8.5, 4.0, -5.0, 20.0),
    StructureMeasurements(4, "subcutaneous_fat", 2200.0, 3_437_500, -95.5, 20.0, -190.0, -30.0),
)

WITH_PET = (
    dataclasses.replace(CT_ONLY[0], suv_mean=2.0625, suv_max=4.5, suv_peak=3.875),
    dataclasses.replace(CT_ONLY[1], suv_mean=1.75, suv_max=3.25, suv_peak=2.5),
    dataclasses.replace(CT_ONLY[2], suv_mean=0.25, suv_max=0.75, suv_peak=0.5),
    dataclasses.replace(CT_ONLY[3], suv_mean=0.5, suv_max=1.5, suv_peak=1.0),
)

#: Every value a structure can have, flags included.
EVERYTHING = (
    dataclasses.replace(
        WITH_PET[0],
        mass_g=1626.1708641963532,
        density_g_ml=1.06,
        hu_median=54.5,
        component_count=1,
        bounding_box=BoundingBox((1, 2, 2), (2, 7, 7), (-4.4, -4.4, 2.5), (0.4, 0.4, 5.0)),
        sul_mean=1.65,
        sul_peak=3.1,
        total_uptake=3164.2,
        mirror_dice=0.9875,
        flags=(
            QualityFlag(FlagKind.VOLUME_OUT_OF_RANGE, "volume 1534 ml outside the adult range 900-1500 ml"),
            QualityFlag(FlagKind.TRUNCATED, "touches the last slice"),
        ),
    ),
    dataclasses.replace(
        WITH_PET[1],
        mass_g=191.33,
        density_g_ml=1.06,
        hu_median=31.0,
        component_count=3,
        flags=(QualityFlag(FlagKind.UNEXPECTED_COMPONENTS, "3 components, 1 expected"),),
    ),
    WITH_PET[2],
    dataclasses.replace(WITH_PET[3], mirror_dice=0.5, flags=(QualityFlag(FlagKind.LATERALITY_RATIO, "n/a"),)),
)

#: A QA report: the first two structures compared with segments 2 and 1 of the reference SEG.
QA = (
    dataclasses.replace(
        CT_ONLY[0], dice=0.9512345678, jaccard=0.906, hausdorff95_mm=2.5, reference_segment_number=2
    ),
    dataclasses.replace(
        CT_ONLY[1], dice=0.875, jaccard=0.7778, hausdorff95_mm=4.0, reference_segment_number=1
    ),
    # No counterpart in the reference: no comparison for these.
    CT_ONLY[2],
    CT_ONLY[3],
)


def concepts_of(m: StructureMeasurements) -> list[tuple[MeasurementConcept, float]]:
    """The concepts the report must carry for `m`, in order, with their values."""
    box = m.bounding_box
    corners = []
    if box is not None:
        corners = [
            *zip(BOUNDING_BOX_MIN, box.min_lps_mm, strict=True),
            *zip(BOUNDING_BOX_MAX, box.max_lps_mm, strict=True),
        ]
    values = [
        (VOLUME, m.volume_ml),
        (MASS, m.mass_g),
        (HU_MEAN, m.hu_mean),
        (HU_STD, m.hu_std),
        (HU_MEDIAN, m.hu_median),
        (HU_MIN, m.hu_min),
        (HU_MAX, m.hu_max),
        (COMPONENT_COUNT, m.component_count),
        *corners,
        (SUV_MEAN, m.suv_mean),
        (SUV_MAX, m.suv_max),
        (SUV_PEAK, m.suv_peak),
        (SUL_MEAN, m.sul_mean),
        (SUL_PEAK, m.sul_peak),
        (TOTAL_UPTAKE, m.total_uptake),
        (DICE, m.dice),
        (JACCARD, m.jaccard),
        (HAUSDORFF_95, m.hausdorff95_mm),
        (MIRROR_DICE, m.mirror_dice),
    ]
    return [(concept, value) for concept, value in values if value is not None]


def dciodvfy(path: Path) -> list[str]:
    """Run dciodvfy on `path`; fail on any error, return the warnings."""
    if not DCIODVFY.exists():
        pytest.fail(f"dicom3tools' dciodvfy is not installed at {DCIODVFY}: run ./install.sh --test")
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy {path}:\n" + "\n".join(lines)
    return [line for line in lines if line.startswith("Warning")]


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("ct"), slices=4, rows=16, columns=16)


def seg_labels(shape: tuple[int, ...]) -> np.ndarray:
    """Segments 1..4 of STRUCTURES on the 4 x 16 x 16 CT."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:3, 2:8, 2:8] = 1
    labels[0:2, 10:14, 10:14] = 2
    labels[2:4, 10:12, 2:4] = 3
    labels[2:4, :, 0:2] = 4
    return labels


@pytest.fixture(scope="module")
def ct_volume(ct_files: list[Path]):
    return load_series(ct_files).volume


@pytest.fixture(scope="module")
def seg(ct_volume, ct_headers: list[Dataset]) -> hd.seg.Segmentation:
    return write_seg(
        ct_volume,
        seg_labels(ct_volume.array.shape),
        STRUCTURES,
        ALGORITHM,
        ct_headers,
        series_number=300,
        series_description="Organs",
        device_serial_number="1",
        series_instance_uid=generate_uid(entropy_srcs=["seg series"]),
        sop_instance_uid=generate_uid(entropy_srcs=["seg instance"]),
    )


@pytest.fixture(scope="module")
def reference_seg(ct_volume, ct_headers: list[Dataset]) -> hd.seg.Segmentation:
    """Someone else's SEG of the same CT: kidney_left is its segment 1, liver its segment 2."""
    labels = np.zeros(ct_volume.array.shape, dtype=np.uint8)
    labels[1:3, 2:7, 2:8] = 2
    labels[0:2, 10:13, 10:14] = 1
    structures = (STRUCTURES[1], STRUCTURES[0])
    return write_seg(
        ct_volume,
        labels,
        tuple(LabelledStructure(value, s.code) for value, s in enumerate(structures, 1)),
        AlgorithmIdentity(name="expert", version="2"),
        ct_headers,
        series_number=400,
        series_description="Reference",
        device_serial_number="2",
        series_instance_uid=generate_uid(entropy_srcs=["reference series"]),
        sop_instance_uid=generate_uid(entropy_srcs=["reference instance"]),
    )


@pytest.fixture(scope="module")
def ct_headers(ct_files: list[Path]) -> list[Dataset]:
    """The CT as a worker passes it: headers without pixel data."""
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in ct_files]


@pytest.fixture(scope="module")
def pet_headers(ct_headers: list[Dataset]) -> list[Dataset]:
    """Headers of a PET series in the CT's study, the source of the SUVs."""
    series_uid = generate_uid(entropy_srcs=["pet series"])
    headers = []
    for index in range(3):
        header = Dataset()
        header.SOPClassUID = PositronEmissionTomographyImageStorage
        header.SOPInstanceUID = generate_uid(entropy_srcs=["pet", str(index)])
        header.StudyInstanceUID = ct_headers[0].StudyInstanceUID
        header.SeriesInstanceUID = series_uid
        header.Modality = "PT"
        headers.append(header)
    return headers


def build(
    measurements, seg: Dataset, source_images: list[Dataset], reference: Dataset | None = None, **uids: str
) -> hd.sr.Comprehensive3DSR:
    return sr.write_measurement_report(
        measurements,
        seg,
        source_images,
        ALGORITHM,
        device_uid=DEVICE_UID,
        series_number=301,
        series_description="Organ measurements",
        reference_segmentation=reference,
        **uids,
    )


def save_and_read(report: hd.sr.Comprehensive3DSR, path: Path) -> hd.sr.Comprehensive3DSR:
    report.save_as(path, enforce_file_format=True)
    return hd.sr.srread(path)


def check_groups(
    report: hd.sr.Comprehensive3DSR, measurements, seg: Dataset, reference: Dataset | None = None
) -> None:
    """Every group against its StructureMeasurements and SEG segment."""
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(measurements)
    source_series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    for group, m, structure in zip(groups, measurements, STRUCTURES, strict=True):
        code = structure.code
        assert group.tracking_identifier == m.name == code.name

        segment_item, series_item = group.referenced_segment
        assert segment_item.referenced_sop_class_uid == seg.SOPClassUID
        assert segment_item.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment_item.referenced_segment_numbers == [m.segment_number]
        assert series_item.value == source_series

        assert group.finding_category == code.segmented_property_category
        assert group.finding_type == code.segmented_property_type
        [site] = group.finding_sites
        assert site.value == (code.anatomic_region or code.property_type).coded()
        assert site.laterality == (code.laterality.coded() if code.laterality else None)

        expected = concepts_of(m)
        found = group.get_measurements()
        assert len(found) == len(expected), [f.name.meaning for f in found]
        for measurement, (concept, value) in zip(found, expected, strict=True):
            assert measurement.name == concept.name.coded()
            assert measurement.unit == concept.unit.coded()
            assert measurement.derivation == (concept.derivation and concept.derivation.coded())
            assert measurement.value == value  # exact: FloatingPointValue travels along
            assert math.isclose(
                float(measurement[0].MeasuredValueSequence[0].NumericValue), value, rel_tol=1e-9
            )
            children = [item for item in measurement[0].ContentSequence if item.ValueType in ("TEXT", "CODE")]
            algorithm = {item.name.meaning: item.value for item in children}
            assert algorithm["Algorithm Name"] == ALGORITHM.name
            assert algorithm["Algorithm Version"] == ALGORITHM.version
            assert algorithm["Algorithm Family"] == ALGORITHM.family.coded()
            check_inferred_from(measurement, concept, m, reference)

        # Read from the content items: highdicom's QualitativeEvaluation drops what is under it.
        evaluations = [
            item
            for item in group[0].ContentSequence
            if item.ValueType == "CODE" and item.name == PLAUSIBILITY.coded()
        ]
        assert len(evaluations) == len(m.flags)
        for evaluation, flag in zip(evaluations, m.flags, strict=True):
            assert evaluation.RelationshipType == "CONTAINS"
            assert evaluation.value == FLAG_VALUES[flag.kind].coded()
            [comment] = evaluation.ContentSequence
            assert (comment.RelationshipType, comment.ValueType) == ("HAS PROPERTIES", "TEXT")
            assert (comment.name, comment.value) == (COMMENT.coded(), flag.detail)
    assert len({group.tracking_uid for group in groups}) == len(groups)


def check_inferred_from(measurement, concept: MeasurementConcept, m: StructureMeasurements, reference):
    """TID 300 INFERRED FROM children: the density of a mass, the reference segment of a comparison."""
    inferred = [item for item in measurement[0].ContentSequence if item.RelationshipType == "INFERRED FROM"]
    if concept == MASS:
        [density] = inferred
        assert (density.ValueType, density.name) == ("NUM", DENSITY.name.coded())
        assert density.value == m.density_g_ml and density.unit == DENSITY.unit.coded()
    elif concept in (DICE, JACCARD, HAUSDORFF_95):
        [source] = inferred
        assert (source.ValueType, source.name) == ("IMAGE", SOURCE_OF_MEASUREMENT.coded())
        [referenced] = source.ReferencedSOPSequence
        assert referenced.ReferencedSOPInstanceUID == reference.SOPInstanceUID
        assert referenced.ReferencedSOPClassUID == reference.SOPClassUID
        assert referenced.ReferencedSegmentNumber == m.reference_segment_number
    else:
        assert inferred == []


def check_document(report: hd.sr.Comprehensive3DSR, seg: Dataset, sources: list[Dataset]) -> None:
    """Header, observer, procedure and evidence of a report (`sources`: all evidence but the SEG)."""
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert report.Modality == "SR"
    assert report.SeriesNumber == 301
    assert report.SeriesDescription == "Organ measurements"
    assert report.StudyInstanceUID == seg.StudyInstanceUID
    assert report.PatientID == seg.PatientID
    assert (report.CompletionFlag, report.VerificationFlag) == ("COMPLETE", "UNVERIFIED")

    [device] = report.content.get_observer_contexts(observer_type=codes.cid270.Device)
    attributes = device.observer_identifying_attributes
    assert (attributes.uid, attributes.name, attributes.manufacturer_name) == (
        DEVICE_UID,
        "segnode",
        "segnode",
    )
    assert (report.Manufacturer, report.ManufacturerModelName) == ("segnode", "segnode")

    evidence = {(series, sop) for _study, series, sop, _cls in report.get_evidence()}
    expected = {(image.SeriesInstanceUID, image.SOPInstanceUID) for image in [*sources, seg]}
    assert evidence == expected


def procedures_of(report: hd.sr.Comprehensive3DSR) -> list[hd.sr.CodedConcept]:
    return [
        item.value for item in report.content[0].ContentSequence if item.name == codes.DCM.ProcedureReported
    ]


def test_ct_report_reads_back_with_every_value(seg, ct_headers, tmp_path):
    path = tmp_path / "sr.dcm"
    report = save_and_read(build(CT_ONLY, seg, ct_headers), path)

    check_document(report, seg, ct_headers)
    check_groups(report, CT_ONLY, seg)
    assert procedures_of(report) == [CT_PROCEDURE.coded()]
    # No private code in use, so no private scheme declared.
    assert "CodingSchemeIdentificationSequence" not in report
    assert dciodvfy(path) == []


def test_notes_on_the_input_are_comments_in_the_reports_qualitative_evaluations(seg, ct_headers, tmp_path):
    notes = ("MPPS step 1.2.3 listed 6 instances; 2 never arrived within 300 s",)
    path = tmp_path / "sr.dcm"
    report = save_and_read(build(CT_ONLY, seg, ct_headers, notes=notes), path)

    check_groups(report, CT_ONLY, seg)
    [container] = [item for item in report.ContentSequence
                   if item.ValueType == "CONTAINER"
                   and item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value]
    assert container.RelationshipType == "CONTAINS"
    assert [(item.ValueType, item.ConceptNameCodeSequence[0].CodeValue, item.TextValue)
            for item in container.ContentSequence] == [("TEXT", COMMENT.value, notes[0])]
    assert dciodvfy(path) == []
    without = build(CT_ONLY, seg, ct_headers)
    assert not any(item.ValueType == "CONTAINER"
                   and item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
                   for item in without.ContentSequence)


def private_scheme_warnings_only(path: Path) -> None:
    """dciodvfy knows no "99" designator; that warning is the only one expected."""
    warnings = dciodvfy(path)
    assert warnings
    for warning in warnings:
        assert f"Unrecognized defined term <{PRIVATE_SCHEME}>" in warning


def test_report_with_every_value_and_flag_reads_back(seg, ct_headers, pet_headers, tmp_path):
    path = tmp_path / "sr.dcm"
    sources = [*ct_headers, *pet_headers]
    report = save_and_read(build(EVERYTHING, seg, sources), path)

    check_document(report, seg, sources)
    check_groups(report, EVERYTHING, seg)
    assert procedures_of(report) == [CT_PROCEDURE.coded(), PET_PROCEDURE.coded()]
    [scheme] = report.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == PRIVATE_SCHEME == COMPONENT_COUNT.name.scheme
    private_scheme_warnings_only(path)


def test_pet_report_without_private_concepts_declares_no_scheme(seg, ct_headers, pet_headers, tmp_path):
    path = tmp_path / "sr.dcm"
    report = save_and_read(build(WITH_PET, seg, [*ct_headers, *pet_headers]), path)

    check_groups(report, WITH_PET, seg)
    assert "CodingSchemeIdentificationSequence" not in report
    assert dciodvfy(path) == []


def test_qa_report_compares_with_the_reference_segments(seg, reference_seg, ct_headers, tmp_path):
    path = tmp_path / "qa.dcm"
    report = save_and_read(build(QA, seg, ct_headers, reference=reference_seg), path)

    check_document(report, seg, [*ct_headers, reference_seg])
    check_groups(report, QA, seg, reference_seg)
    assert DICE.name.scheme == JACCARD.name.scheme == HAUSDORFF_95.name.scheme == PRIVATE_SCHEME
    private_scheme_warnings_only(path)


def test_quantified_segmentation_reports_what_was_measured(ct_volume, seg, ct_headers, tmp_path):
    """The chain a worker runs: label map -> quantify -> SR, against the SEG of the same labels."""
    labels = seg_labels(ct_volume.array.shape)
    segments = plan_segments(labels, STRUCTURES, series_instance_uid=ct_volume.series_instance_uid)
    measured = quantify(Segmentation(labels, ct_volume, STRUCTURES, ALGORITHM), segments)
    path = tmp_path / "sr.dcm"

    report = save_and_read(build(measured, seg, ct_headers), path)

    check_groups(report, measured, seg)
    # The numbers are the CT's: liver voxels counted by hand, volume from the grid.
    liver = report.content.get_volumetric_roi_measurement_groups()[0]
    [volume] = liver.get_measurements(name=VOLUME.name.coded())
    assert measured[0].voxel_count == 2 * 6 * 6
    assert volume.value == pytest.approx(72 * ct_volume.voxel_volume_ml)
    private_scheme_warnings_only(path)


def test_given_uids_make_the_same_document(seg, ct_headers):
    uids = {
        "series_instance_uid": generate_uid(entropy_srcs=["sr series"]),
        "sop_instance_uid": generate_uid(entropy_srcs=["sr instance"]),
    }
    first, second = build(CT_ONLY, seg, ct_headers, **uids), build(CT_ONLY, seg, ct_headers, **uids)

    assert first.SeriesInstanceUID == second.SeriesInstanceUID == uids["series_instance_uid"]
    assert first.SOPInstanceUID == second.SOPInstanceUID == uids["sop_instance_uid"]
    # The content tree (tracking UIDs included) and the evidence are the same;
    # only the times of creation differ.
    assert first.ContentSequence == second.ContentSequence
    assert first.CurrentRequestedProcedureEvidenceSequence == second.CurrentRequestedProcedureEvidenceSequence


def test_optional_values_are_left_out_per_structure(seg, ct_headers, pet_headers):
    only_peak = (dataclasses.replace(CT_ONLY[0], suv_peak=3.0),)
    report = hd.sr.Comprehensive3DSR.from_dataset(build(only_peak, seg, [*ct_headers, *pet_headers]))

    [group] = report.content.get_volumetric_roi_measurement_groups()
    suv = group.get_measurements(name=SUV_PEAK.name.coded())
    assert [(m.derivation, m.value) for m in suv] == [(SUV_PEAK.derivation.coded(), 3.0)]
    assert group.get_measurements(name=DICE.name.coded()) == []
    assert group.get_measurements(name=MASS.name.coded()) == []
    assert group.get_qualitative_evaluations(name=PLAUSIBILITY.coded()) == []


@pytest.mark.parametrize(
    ("measurements", "sources", "message"),
    [
        ((), "ct", "no measurements"),
        ((CT_ONLY[0], CT_ONLY[0]), "ct", "more than once"),
        ((dataclasses.replace(CT_ONLY[1], segment_number=9),), "ct", "segment 9, which SEG"),
        ((dataclasses.replace(CT_ONLY[1], hu_std=float("nan")),), "ct", "Deviation) of 'kidney_left'"),
        ((dataclasses.replace(CT_ONLY[1], suv_max=math.inf),), "ct+pet", "(Maximum) of 'kidney_left'"),
        ((dataclasses.replace(CT_ONLY[1], mass_g=1.0, density_g_ml=math.nan),), "ct", "Assumed mass density"),
        ((dataclasses.replace(CT_ONLY[1], mass_g=10.0),), "ct", "has a mass without its density"),
        ((WITH_PET[0],), "ct", "no PET image"),
        ((dataclasses.replace(CT_ONLY[0], sul_peak=1.0),), "ct", "no PET image"),
        (CT_ONLY, "pet", "not among the source images"),
        ((QA[0],), "ct", "but no reference SEG was given"),
    ],
    ids=[
        "empty", "duplicate", "unknown-segment", "nan", "inf", "nan-density", "mass-without-density",
        "suv-without-pet", "sul-without-pet", "wrong-series", "dice-without-reference",
    ],
)
def test_inconsistent_input_is_refused_with_context(
    seg, ct_headers, pet_headers, measurements, sources, message
):
    images = {"ct": ct_headers, "pet": pet_headers, "ct+pet": [*ct_headers, *pet_headers]}[sources]
    with pytest.raises(sr.MeasurementReportError, match=re.escape(message)):
        build(measurements, seg, images)


def test_reference_that_does_not_fit_is_refused(seg, reference_seg, ct_headers, tmp_path):
    other_series = copy.deepcopy(reference_seg)
    other_series.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid(entropy_srcs=["other"])
    missing_segment = (dataclasses.replace(QA[0], reference_segment_number=7),)

    with pytest.raises(sr.MeasurementReportError, match="no structure of SEG .* is compared with it"):
        build(CT_ONLY, seg, ct_headers, reference=reference_seg)
    with pytest.raises(sr.MeasurementReportError, match="segments series .*, SEG .* series"):
        build(QA, seg, ct_headers, reference=other_series)
    with pytest.raises(sr.MeasurementReportError, match=r"segment 7 of reference SEG .* which has \[1, 2\]"):
        build(missing_segment, seg, ct_headers, reference=reference_seg)


def test_every_flag_kind_has_a_code():
    assert set(FLAG_VALUES) == set(FlagKind)
    assert len({concept.value for concept in FLAG_VALUES.values()}) == len(FlagKind)


def test_flag_detail_must_be_one_line():
    with pytest.raises(ValueError, match="one non-empty line"):
        QualityFlag(FlagKind.TRUNCATED, "first line\nsecond line")
    with pytest.raises(ValueError, match="one non-empty line"):
        QualityFlag(FlagKind.TRUNCATED, "  ")
    with pytest.raises(TypeError, match="FlagKind"):
        QualityFlag("truncated", "cut")  # type: ignore[arg-type]


def test_source_modality_without_procedure_code_is_refused(seg, ct_headers):
    mr = Dataset()
    mr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    mr.SOPInstanceUID = generate_uid(entropy_srcs=["mr"])
    mr.StudyInstanceUID = ct_headers[0].StudyInstanceUID
    mr.SeriesInstanceUID = generate_uid(entropy_srcs=["mr series"])
    mr.Modality = "MR"
    with pytest.raises(sr.MeasurementReportError, match=r"modality \['MR'\]"):
        build(CT_ONLY, seg, [*ct_headers, mr])


def test_modifier_other_than_laterality_is_refused(seg, ct_headers):
    anterior = copy.deepcopy(seg)
    liver_type = anterior.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    liver_type.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(codes.cid2.Anterior)]

    with pytest.raises(
        sr.MeasurementReportError, match=r"modifiers \['Anterior'\]; a Finding Site takes one"
    ):
        build(CT_ONLY, anterior, ct_headers)


def test_tracking_uid_of_the_segment_is_reused(seg, ct_headers):
    tracked = copy.deepcopy(seg)
    tracked.SegmentSequence[1].TrackingID = "kidney_left"
    tracked.SegmentSequence[1].TrackingUID = generate_uid(entropy_srcs=["tracked kidney"])

    report = hd.sr.Comprehensive3DSR.from_dataset(build(CT_ONLY, tracked, ct_headers))

    groups = report.content.get_volumetric_roi_measurement_groups()
    assert groups[1].tracking_uid == tracked.SegmentSequence[1].TrackingUID
    # The others keep the UID derived from the SEG instance and segment number.
    untracked = hd.sr.Comprehensive3DSR.from_dataset(build(CT_ONLY, seg, ct_headers))
    derived = untracked.content.get_volumetric_roi_measurement_groups()[0].tracking_uid
    assert groups[0].tracking_uid == derived
