"""dicomio/sr.py: TID 1500 Measurement Reports, read back with highdicom and
checked with dicom3tools' dciodvfy.

The SEG the reports refer to is the real thing: a synthetic CT series (files
written by tests/synthetic.py) loaded by dicomio/series.py and segmented into
structures of dicomio/codes.py by dicomio/seg.py, laterality modifiers
included.
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
    CT_PROCEDURE,
    DICE,
    HU_MAX,
    HU_MEAN,
    HU_MIN,
    HU_STD,
    PET_PROCEDURE,
    PRIVATE_SCHEME,
    SUV_MAX,
    SUV_MEAN,
    SUV_PEAK,
    VOLUME,
    MeasurementConcept,
    structure_code,
)
from dicomio.measurements import StructureMeasurements
from dicomio.seg import AlgorithmIdentity, LabelledStructure, write_seg
from dicomio.series import load_series
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

WITH_PET_AND_DICE = (
    dataclasses.replace(CT_ONLY[0], suv_mean=2.0625, suv_max=4.5, suv_peak=3.875, dice=0.9512345678),
    dataclasses.replace(CT_ONLY[1], suv_mean=1.75, suv_max=3.25, suv_peak=2.5, dice=0.875),
    # Structures without a reference segmentation: no Dice for them.
    dataclasses.replace(CT_ONLY[2], suv_mean=0.25, suv_max=0.75, suv_peak=0.5),
    dataclasses.replace(CT_ONLY[3], suv_mean=0.5, suv_max=1.5, suv_peak=1.0),
)


def concepts_of(m: StructureMeasurements) -> list[tuple[MeasurementConcept, float]]:
    """The concepts the report must carry for `m`, in order, with their values."""
    values = [
        (VOLUME, m.volume_ml),
        (HU_MEAN, m.hu_mean),
        (HU_STD, m.hu_std),
        (HU_MIN, m.hu_min),
        (HU_MAX, m.hu_max),
        (SUV_MEAN, m.suv_mean),
        (SUV_MAX, m.suv_max),
        (SUV_PEAK, m.suv_peak),
        (DICE, m.dice),
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


@pytest.fixture(scope="module")
def seg(ct_files: list[Path], ct_headers: list[Dataset]) -> hd.seg.Segmentation:
    volume = load_series(ct_files).volume
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[1:3, 2:8, 2:8] = 1
    labels[0:2, 10:14, 10:14] = 2
    labels[2:4, 10:12, 2:4] = 3
    labels[2:4, :, 0:2] = 4
    return write_seg(
        volume,
        labels,
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


def build(measurements, seg: Dataset, source_images: list[Dataset], **uids: str) -> hd.sr.Comprehensive3DSR:
    return sr.write_measurement_report(
        measurements,
        seg,
        source_images,
        ALGORITHM,
        device_uid=DEVICE_UID,
        series_number=301,
        series_description="Organ measurements",
        **uids,
    )


def save_and_read(report: hd.sr.Comprehensive3DSR, path: Path) -> hd.sr.Comprehensive3DSR:
    report.save_as(path, enforce_file_format=True)
    return hd.sr.srread(path)


def check_groups(report: hd.sr.Comprehensive3DSR, measurements, seg: Dataset) -> None:
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
            algorithm = {item.name.meaning: item.value for item in measurement[0].ContentSequence}
            assert algorithm["Algorithm Name"] == ALGORITHM.name
            assert algorithm["Algorithm Version"] == ALGORITHM.version
            assert algorithm["Algorithm Family"] == ALGORITHM.family.coded()
    assert len({group.tracking_uid for group in groups}) == len(groups)


def check_document(report: hd.sr.Comprehensive3DSR, seg: Dataset, sources: list[Dataset]) -> None:
    """Header, observer, procedure and evidence of a report."""
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


def test_pet_and_dice_report_reads_back_with_every_value(seg, ct_headers, pet_headers, tmp_path):
    path = tmp_path / "sr.dcm"
    sources = [*ct_headers, *pet_headers]
    report = save_and_read(build(WITH_PET_AND_DICE, seg, sources), path)

    check_document(report, seg, sources)
    check_groups(report, WITH_PET_AND_DICE, seg)
    assert procedures_of(report) == [CT_PROCEDURE.coded(), PET_PROCEDURE.coded()]
    [scheme] = report.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == PRIVATE_SCHEME == DICE.name.scheme
    # dciodvfy knows no "99" designator; that warning is the only one expected.
    warnings = dciodvfy(path)
    assert warnings
    for warning in warnings:
        assert f"Unrecognized defined term <{PRIVATE_SCHEME}>" in warning


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


@pytest.mark.parametrize(
    ("measurements", "sources", "message"),
    [
        ((), "ct", "no measurements"),
        ((CT_ONLY[0], CT_ONLY[0]), "ct", "more than once"),
        ((dataclasses.replace(CT_ONLY[1], segment_number=9),), "ct", "segment 9, which SEG"),
        ((dataclasses.replace(CT_ONLY[1], hu_std=float("nan")),), "ct", "Deviation) of 'kidney_left'"),
        ((dataclasses.replace(CT_ONLY[1], suv_max=math.inf),), "ct+pet", "(Maximum) of 'kidney_left'"),
        ((WITH_PET_AND_DICE[0],), "ct", "no PET image"),
        (CT_ONLY, "pet", "not among the source images"),
    ],
    ids=["empty", "duplicate", "unknown-segment", "nan", "inf", "suv-without-pet", "wrong-series"],
)
def test_inconsistent_input_is_refused_with_context(
    seg, ct_headers, pet_headers, measurements, sources, message
):
    images = {"ct": ct_headers, "pet": pet_headers, "ct+pet": [*ct_headers, *pet_headers]}[sources]
    with pytest.raises(sr.MeasurementReportError, match=re.escape(message)):
        build(measurements, seg, images)


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
