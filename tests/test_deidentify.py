"""dicomio/deidentify.py: research copies under PS3.15 Annex E.

A synthetic CT of 3 small slices carries PHI in every place a header can
(names, IDs, dates, institution, a private block, nested sequences, free-text
descriptors); a highdicom SEG references it and a TID 1500 SR references
both, as the node's results do. Each instance goes through a file round trip
first, as the node reads them. Every check runs against Table E.1-1 itself
(dicomio/confidentiality_profile.json), at every depth.
"""

from __future__ import annotations

import datetime
import io
import subprocess
import sys
from collections.abc import Iterator

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomio.deidentify import DeidentificationProfile, Deidentifier, NotExportable, _table

SECRET = b"0123456789abcdef0123456789abcdef"
PROFILES = [
    DeidentificationProfile(dates, clean)
    for dates in ("full", "modified", "removed")
    for clean in (False, True)
]
JANE = ("DOE^JANE", "MRN123", "19600203")
RICHARD = ("ROE^RICHARD", "MRN999", "19700101")
#: Words of the PHI the descriptors repeat; none may survive cleaning.
PHI_WORDS = ("jane", "doe", "mrn123", "house", "555", "1234")


def make_ct(patient, study_date: str, accession: str, *, burned: str = "NO") -> list[Dataset]:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices = []
    for index in range(3):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient
        ds.PatientSex, ds.PatientAge, ds.PatientWeight = "F", "064Y", "71"
        ds.OtherPatientIDs = "OLDMRN-999"
        other = Dataset()
        other.PatientID, other.TypeOfPatientID = "NHS-4444", "TEXT"
        ds.OtherPatientIDsSequence = Sequence([other])
        ds.IssuerOfPatientID = "GENERAL HOSP"
        ds.AccessionNumber = accession
        ds.InstitutionName, ds.InstitutionAddress = "General Hospital", "1 Main St, Springfield"
        ds.ReferringPhysicianName, ds.PerformingPhysicianName = "HOUSE^GREGORY", "WILSON^JAMES"
        ds.OperatorsName, ds.StationName, ds.DeviceSerialNumber = "TECH^TOM", "ROOM-3", "SN-998877"
        ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Scanner 9000"
        ds.StudyID = "S-42"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.StudyTime, ds.SeriesTime = "101500", "101600"
        ds.AcquisitionTime, ds.ContentTime = "101700", "101800"
        ds.AcquisitionDateTime = study_date + "101700.000000"
        ds.StudyDescription = "CT ABDOMEN for Jane Doe MRN123"
        ds.SeriesDescription = "Axial 1mm - Dr House"
        ds.ImageComments = "Patient DOE^JANE, call 555-1234"
        ds.ProtocolName = "ABD ROUTINE"
        ds.BurnedInAnnotation = burned
        request = Dataset()
        request.AccessionNumber, request.RequestedProcedureID = accession, "RP-77"
        request.StudyInstanceUID = study
        request.RequestedProcedureDescription = "CT abdo Jane Doe"
        ds.RequestAttributesSequence = Sequence([request])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 2, index + 1
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.full((8, 8), index, dtype=np.int16).tobytes()
        block = ds.private_block(0x0009, "ACME 1.0", create=True)
        block.add_new(0x01, "LO", "secret private DOE^JANE")
        block.add_new(0x02, "UI", generate_uid())
        slices.append(ds)
    return slices


def make_seg(ct: list[Dataset]) -> Dataset:
    mask = np.zeros((len(ct), 8, 8), dtype=bool)
    mask[:, 2:5, 2:5] = True
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Liver",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="segnode-test", version="1", family=codes.DCM.ArtificialIntelligence
        ),
    )
    return hd.seg.Segmentation(
        source_images=ct,
        pixel_array=mask,
        segmentation_type="BINARY",
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="segnode",
        manufacturer_model_name="segnode",
        software_versions="0.1",
        device_serial_number="NODE-1",
        series_description="Segmentation of Jane Doe",
        content_creator_name="SEGNODE^AI",
    )


def make_sr(ct: list[Dataset], seg: Dataset) -> Dataset:
    algorithm = hd.sr.AlgorithmIdentification(name="segnode-test", version="1")
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Liver"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_images=[hd.sr.SourceImageForSegmentation(c.SOPClassUID, c.SOPInstanceUID) for c in ct],
        ),
        finding_type=codes.SCT.Liver,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.Volume, value=27.0, unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm
            )
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="segnode"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *ct],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="segnode",
        is_complete=True,
        series_description="Measurements for Jane Doe",
    )


def reread(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def make_study(patient, study_date: str, accession: str) -> list[Dataset]:
    """[ct, ct, ct, seg, sr], read back from bytes."""
    ct = make_ct(patient, study_date, accession)
    seg = make_seg(ct)
    return [reread(ds) for ds in (*ct, seg, make_sr(ct, seg))]


def as_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def studies() -> dict[str, list[Dataset]]:
    return {
        "A": make_study(JANE, "20240115", "ACC0001"),
        "B": make_study(JANE, "20250310", "ACC0002"),
        "C": make_study(RICHARD, "20240220", "ACC0003"),
    }


def walk(ds: Dataset, path: tuple = ()) -> Iterator[tuple[tuple, pydicom.DataElement]]:
    for element in ds:
        here = (*path, int(element.tag))
        yield here, element
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from walk(item, (*here, index))


def deidentify_all(study: list[Dataset], profile: DeidentificationProfile) -> list[Dataset]:
    deidentifier = Deidentifier(SECRET, profile)
    return [deidentifier.deidentify(ds) for ds in study]


@pytest.mark.parametrize("profile", PROFILES, ids=str)
def test_nothing_to_remove_or_replace_survives(studies, profile: DeidentificationProfile) -> None:
    """Every attribute whose action is X, Z or D under the profile is gone or changed, at every depth;
    C descriptors keep none of the PHI words; no private element is left."""
    table = _table()
    for before, after in zip(studies["A"], deidentify_all(studies["A"], profile), strict=True):
        after_elements = dict(walk(after))
        for path, element in walk(before):
            rule = table.rule(path[-1])
            kept = after_elements.get(path)
            if element.tag.is_private:
                assert kept is None, f"private {element.tag} at {path}"
            if rule is None or kept is None or element.VR == "SQ" or element.value in (None, ""):
                continue
            action = rule.action(profile)
            if action == "C" and element.VR not in ("DA", "DT", "TM"):
                text = str(kept.value).casefold()
                assert not [w for w in PHI_WORDS if w in text], f"{element.keyword} cleaned to {text!r}"
            elif action not in ("K", "U", "C", "X/Z/U*"):
                assert kept.value != element.value, f"{element.keyword} ({action}) kept {element.value!r}"
        assert not [e for e in after.iterall() if e.tag.is_private]


def test_references_resolve_to_the_deidentified_series(studies) -> None:
    *ct, seg, sr = deidentify_all(studies["A"], DeidentificationProfile("removed", False))
    ct_sops = {ds.SOPInstanceUID for ds in ct}
    (series,) = {ds.SeriesInstanceUID for ds in ct}
    assert not ct_sops & {ds.SOPInstanceUID for ds in studies["A"]}
    assert len({ds.StudyInstanceUID for ds in (*ct, seg, sr)}) == 1
    assert {ds.FrameOfReferenceUID for ds in (*ct, seg)} == {ct[0].FrameOfReferenceUID}
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == ct_sops
    per_frame = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    assert per_frame == ct_sops
    sr_references = {e.value for _, e in walk(sr) if e.keyword == "ReferencedSOPInstanceUID"}
    assert seg.SOPInstanceUID in sr_references
    assert sr_references <= ct_sops | {seg.SOPInstanceUID}
    evidence = {
        series.SeriesInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
    }
    assert evidence == {ct[0].SeriesInstanceUID, seg.SeriesInstanceUID}
    assert seg.file_meta.MediaStorageSOPInstanceUID == seg.SOPInstanceUID


def test_one_pseudonym_per_patient(studies) -> None:
    profile = DeidentificationProfile("removed", False)
    a, b, c = (deidentify_all(studies[k], profile) for k in "ABC")
    assert {(ds.PatientID, str(ds.PatientName)) for ds in a + b} == {(a[0].PatientID, str(a[0].PatientName))}
    assert c[0].PatientID != a[0].PatientID
    assert a[0].StudyInstanceUID != b[0].StudyInstanceUID
    assert "MRN" not in a[0].PatientID and "JANE" not in str(a[0].PatientName)


def test_same_secret_same_bytes_in_another_process(studies, tmp_path) -> None:
    source = tmp_path / "seg.dcm"
    studies["A"][3].save_as(source, enforce_file_format=True)
    script = (
        "import sys, pydicom\n"
        "from dicomio.deidentify import DeidentificationProfile, Deidentifier\n"
        "out = Deidentifier(sys.argv[1].encode(), DeidentificationProfile('modified', True))"
        ".deidentify(pydicom.dcmread(sys.argv[2]))\n"
        "out.save_as(sys.argv[3], enforce_file_format=True)\n"
    )
    for secret, name in ((SECRET, "same.dcm"), (b"another secret of at least 32 bytes!", "other.dcm")):
        subprocess.run(
            [sys.executable, "-c", script, secret.decode(), str(source), str(tmp_path / name)],
            check=True,
            timeout=120,
        )
    here = Deidentifier(SECRET, DeidentificationProfile("modified", True)).deidentify(pydicom.dcmread(source))
    assert (tmp_path / "same.dcm").read_bytes() == as_bytes(here)
    other = pydicom.dcmread(tmp_path / "other.dcm")
    assert other.SOPInstanceUID != here.SOPInstanceUID
    assert other.SeriesInstanceUID != here.SeriesInstanceUID


def day(value: str) -> datetime.date:
    return datetime.datetime.strptime(value[:8], "%Y%m%d").date()


def test_dates_per_option(studies) -> None:
    full = deidentify_all(studies["A"][:1], DeidentificationProfile("full", False))[0]
    assert (full.StudyDate, full.AcquisitionDateTime) == ("20240115", "20240115101700.000000")
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    modified = DeidentificationProfile("modified", False)
    a, b, c = (deidentify_all(studies[k][:1], modified)[0] for k in "ABC")
    assert a.StudyDate != "20240115" and a.StudyTime == "101500"
    assert day(b.StudyDate) - day(a.StudyDate) == datetime.timedelta(days=420)
    assert day(a.AcquisitionDateTime) == day(a.StudyDate)
    assert day(c.StudyDate) - day("20240220") != day(a.StudyDate) - day("20240115")
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"
    removed = deidentify_all(studies["A"][:1], DeidentificationProfile("removed", False))[0]
    table = _table()
    for keyword in (
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "AcquisitionDateTime",
        "StudyTime",
        "PatientBirthDate",
    ):
        value = removed[keyword] if keyword in removed else None
        basic = table.rule(pydicom.datadict.tag_for_keyword(keyword)).basic
        assert value is None or value.value in ("", None, "19000101", "000000", "19000101000000"), keyword
        assert value is not None or "X" in basic, keyword
    assert removed.LongitudinalTemporalInformationModified == "REMOVED"


def test_descriptors_per_option(studies) -> None:
    plain = deidentify_all(studies["A"], DeidentificationProfile("removed", False))
    for ds in plain:
        assert "StudyDescription" not in ds and "SeriesDescription" not in ds
    assert "ImageComments" not in plain[0]
    assert plain[0].ProtocolName == "ANONYMIZED"  # X/D: the dummy
    clean = deidentify_all(studies["A"], DeidentificationProfile("removed", True))
    assert clean[0].ProtocolName == "ABD ROUTINE"
    assert clean[0].SeriesDescription == "Axial 1mm Dr"
    assert clean[0].StudyDescription.endswith("ABDOMEN for")
    assert clean[3].SeriesDescription == "Segmentation of"
    assert clean[0].ImageComments == "Patient call"


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (DeidentificationProfile("removed", False), ["113100"]),
        (DeidentificationProfile("full", True), ["113100", "113106", "113105"]),
        (DeidentificationProfile("modified", False), ["113100", "113107"]),
    ],
    ids=str,
)
def test_marks_say_what_was_done(studies, profile, expected) -> None:
    ct, sr = (Deidentifier(SECRET, profile).deidentify(studies["A"][i]) for i in (0, 4))
    for ds, codes_expected in ((ct, expected), (sr, [*expected, "113104"])):
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == codes_expected
        assert {c.CodingSchemeDesignator for c in ds.DeidentificationMethodCodeSequence} == {"DCM"}
        assert "LongitudinalTemporalInformationModified" in ds


def test_burned_in_annotation_is_not_exported() -> None:
    burned = make_ct(JANE, "20240116", "ACC0004", burned="YES")[0]
    with pytest.raises(NotExportable, match=burned.SeriesInstanceUID) as raised:
        Deidentifier(SECRET, DeidentificationProfile("removed", False)).deidentify(burned)
    assert "BurnedInAnnotation" in str(raised.value)
    assert SECRET.decode() not in str(raised.value)


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes") as raised:
        Deidentifier(b"short", DeidentificationProfile("removed", False))
    assert "short" not in str(raised.value)


def test_input_untouched(studies) -> None:
    for ds in studies["C"]:
        before = as_bytes(ds)
        Deidentifier(SECRET, DeidentificationProfile("modified", True)).deidentify(ds)
        assert as_bytes(ds) == before


def test_highdicom_objects_in_memory() -> None:
    """A SEG straight from highdicom (DA and TM values as objects, not text) de-identifies too."""
    ct = make_ct(JANE, "20240115", "ACC0001")
    out = Deidentifier(SECRET, DeidentificationProfile("modified", False)).deidentify(make_seg(ct))
    assert out.StudyDate != "20240115" and out.PatientID != "MRN123"


@pytest.mark.parametrize("profile", [PROFILES[0], PROFILES[-1]], ids=str)
def test_segnode_s_own_seg_and_sr_stay_valid_and_line_up_on_the_deidentified_ct(profile, tmp_path) -> None:
    """The interoperability checks of tests/test_seg.py on de-identified copies:
    dciodvfy finds no error in the SEG and SR, and dcmqi (an independent
    reader) places the SEG's segments on the de-identified CT exactly where
    the original SEG's lie on the original CT."""
    from config import Pipeline
    from dicomio.label_map import read_label_map
    from dicomio.series import load_series
    from inference.builtin import BuiltinSegmenter
    from node.work.pipeline import PipelineInputs, run_pipeline
    from tests.synthetic import write_ct_series
    from tests.test_seg import dciodvfy, read_with_dcmqi

    ct_files = write_ct_series(tmp_path / "ct", slices=20, rows=96, columns=96, pixel_spacing=(4.0, 4.0),
                               slice_thickness=4.0)
    created = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    result = run_pipeline(PipelineInputs(tuple(ct_files), (), "organs", Pipeline(), created, "2.25.1234"),
                          BuiltinSegmenter(), tmp_path / "results")
    labels, structures = read_label_map(result.labels, load_series(ct_files).volume)

    deidentifier = Deidentifier(SECRET, profile)
    out = tmp_path / "deidentified"
    out.mkdir()
    copies = []
    for source in (*ct_files, result.seg, result.sr):
        copy = deidentifier.deidentify(pydicom.dcmread(source))
        path = out / f"{copy.SOPInstanceUID}.dcm"
        copy.save_as(path, enforce_file_format=True)
        copies.append(path)
    *ct_copies, seg_copy, sr_copy = copies
    for path in (seg_copy, sr_copy):
        dciodvfy(path)
    volume = load_series(ct_copies).volume
    assert np.array_equal(read_with_dcmqi(seg_copy, volume, structures, tmp_path), labels)
