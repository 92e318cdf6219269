"""The SPECT/CT course's files as a node receives them (phantom/spect_course.py, phantom/ct_files.py).

Every file of a two-point course is validated by dicom3tools' dciodvfy and
one time point is sent whole with dcmtk's storescu, as the node tests send
it; its headers tie each time point's CT, SPECT and SEG into one study and
one frame of reference, and the time points into one patient and one
administration.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, NuclearMedicineImageStorage, SegmentationStorage

from phantom.anatomy import PATIENT
from phantom.spect_course import ADMINISTERED_ACTIVITY_MBQ, INJECTION, CourseTruth, TimePoint, write_course
from tests.conftest import StoreSCP, dcmtk, dcmtk_env
from tests.synthetic import STORESCU_FLAGS
from tests.test_seg import dciodvfy

#: What dciodvfy says of the NM file: attributes outside the NM IOD that vendors write.
NM_WARNINGS = {
    "Warning - Attribute is not present in standard DICOM IOD - (0x0028,0x1052) DS Rescale Intercept ",
    "Warning - Attribute is not present in standard DICOM IOD - (0x0028,0x1053) DS Rescale Slope ",
    "Warning - Attribute is not present in standard DICOM IOD - (0x0018,0x1075) DS Radionuclide Half Life ",
    "Warning - Attribute is not present in standard DICOM IOD - (0x0018,0x1078) DT Radiopharmaceutical "
    "Start DateTime ",
    "Warning - Attribute is not present in standard DICOM IOD - (0x0054,0x1001) CS Units ",
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard "
    "Extended SOP Class",
}


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> CourseTruth:
    """Two time points and a later third, as the node tests send them."""
    return write_course(
        tmp_path_factory.mktemp("course"), time_points_hours=(0.5, 24.0), extra_points=(72.0,), seed=5
    )


def files_of(point: TimePoint) -> list[Path]:
    return [*point.ct.files, *point.spect.files, point.seg]


def test_every_file_is_valid(course: CourseTruth) -> None:
    """No errors anywhere; no warnings but the NM's vendor attributes."""
    for point in course.time_points:
        with ThreadPoolExecutor(2) as pool:
            ct_warnings = list(pool.map(dciodvfy, point.ct.files))
        assert len(ct_warnings) == 60 and all(warnings == [] for warnings in ct_warnings)
        assert set(dciodvfy(point.spect.files[0])) == NM_WARNINGS
        assert dciodvfy(point.seg) == []


def test_each_time_point_is_one_study_in_one_frame_of_reference(course: CourseTruth) -> None:
    """A time point's CT slices, SPECT and SEG share patient, study and frame of reference; each time
    point is a study of its own, and no instance is written twice (a node would keep only one)."""
    instances: set[str] = set()
    for point in course.time_points:
        cts = [pydicom.dcmread(path, stop_before_pixels=True) for path in point.ct.files]
        nm = pydicom.dcmread(point.spect.files[0], stop_before_pixels=True)
        seg = pydicom.dcmread(point.seg, stop_before_pixels=True)
        assert nm.SOPClassUID == NuclearMedicineImageStorage and seg.SOPClassUID == SegmentationStorage
        assert {ds.SeriesInstanceUID for ds in cts} == {point.ct.series_instance_uid}
        assert nm.SeriesInstanceUID == point.spect.series_instance_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == point.ct.series_instance_uid
        for ds in (*cts, nm, seg):
            assert (ds.PatientID, ds.PatientName) == (PATIENT.patient_id, PATIENT.name)
            assert ds.StudyInstanceUID == point.study_instance_uid
            assert ds.FrameOfReferenceUID == point.frame_of_reference_uid
            # What storescu proposes and sends: the file meta says what the dataset is.
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.SOPInstanceUID not in instances
            instances.add(ds.SOPInstanceUID)
        assert len({point.ct.series_instance_uid, point.spect.series_instance_uid,
                    seg.SeriesInstanceUID}) == 3
    points = course.time_points
    assert len({p.study_instance_uid for p in points}) == len(points) == 3
    assert len({p.frame_of_reference_uid for p in points}) == 3
    series = {p.ct.series_instance_uid for p in points} | {p.spect.series_instance_uid for p in points}
    assert len(series) == 6
    assert [p.later for p in points] == [False, False, True]


def test_one_administration_across_the_course(course: CourseTruth) -> None:
    """Every SPECT carries the same Radiopharmaceutical Information Sequence: the one administration."""
    spects = [pydicom.dcmread(p.spect.files[0], stop_before_pixels=True) for p in course.time_points]
    first = spects[0].RadiopharmaceuticalInformationSequence
    assert len(first) == 1
    for ds in spects[1:]:
        assert ds.RadiopharmaceuticalInformationSequence == first
    drug = first[0]
    nuclide = drug.RadionuclideCodeSequence[0]
    assert (nuclide.CodeValue, nuclide.CodingSchemeDesignator) == ("447553000", "SCT")
    # NM's Radionuclide Total Dose is in MBq (PS3.3 C.8.4.10.1.7).
    assert float(drug.RadionuclideTotalDose) == ADMINISTERED_ACTIVITY_MBQ == 7400.0
    assert drug.RadiopharmaceuticalStartDateTime == "20240506090000" == INJECTION.strftime("%Y%m%d%H%M%S")
    for point, ds in zip(course.time_points, spects, strict=True):
        acquired = pydicom.valuerep.DT(ds.AcquisitionDateTime)
        assert (acquired.replace(tzinfo=None) - INJECTION).total_seconds() == point.hours * 3600


def test_storescu_sends_a_time_point_whole(course: CourseTruth, tmp_path: Path) -> None:
    """dcmtk's storescu, with the node tests' options, sends every file of a time point to dcmtk's
    storescp, which keeps each dataset as written."""
    point = course.time_points[1]
    scp = StoreSCP(tmp_path)
    try:
        subprocess.run(
            [dcmtk("storescu"), *STORESCU_FLAGS[ExplicitVRLittleEndian], "-aet", "STORESCU",
             "-aec", "STORESCP", "127.0.0.1", str(scp.port), *map(str, files_of(point))],
            check=True, env=dcmtk_env(), capture_output=True, timeout=60,
        )
        received = scp.received()
    finally:
        scp.stop()
    sent = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID: path for path in files_of(point)}
    assert set(received) == set(sent) and len(sent) == 62
    for path in (point.ct.files[0], point.spect.files[0], point.seg):
        written = pydicom.dcmread(path)
        arrived = pydicom.dcmread(received[written.SOPInstanceUID])
        assert arrived == written
