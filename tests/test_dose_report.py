"""dicomio/dose_report.py and dicomio/dose_csv.py: a dosimetry course's SR and CSV.

The course is built by hand (known numbers, two organs, four time points of
177Lu SPECT/CT); the source headers are real files' headers: an NM image per
time point (tests/nm_files.py) and a CT series in its study
(tests/synthetic.py). The SR is checked with dciodvfy and read back with
highdicom; the CSV with the csv module.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomio.codes import COMMENT, DENSITY, MASS, VOLUME, structure_code
from dicomio.dose_csv import COLUMNS, format_fit_parameter, write_dose_csv
from dicomio.dose_records import CourseDoses, FitParameterValue, OrganDose, TimePointActivity
from dicomio.dose_report import (
    ABSORBED_DOSE,
    ACTIVITY,
    ADMINISTERED_ACTIVITY,
    ADMINISTRATION,
    ALIGNED,
    CONCENTRATION,
    CURVE_FIT_PARAMETER,
    FIT_MODELS,
    MASK_EXTENSION,
    MIRD_LOCAL_DEPOSITION,
    MISALIGNED,
    NOT_ASSESSABLE,
    PARAMETER_NAME,
    R_SQUARED,
    RADIONUCLIDE,
    RADIOPHARMACEUTICAL,
    REGISTRATION,
    START_DATETIME,
    TIME_AFTER_INJECTION,
    TIME_INTEGRATED_ACTIVITY,
    DoseReportError,
    write_dose_report,
)
from tests.nm_files import NmSpec, nm_dataset
from tests.synthetic import write_ct_series

DCIODVFY = Path("/usr/bin/dciodvfy")
PATIENT = "SPECT-1"
ADMINISTRATION_TIME = datetime(2026, 3, 2, 8, 0, 0)
HOURS = (0.5, 6.0, 24.0, 72.0)
CREATED = datetime(2026, 3, 5, 9, 30, 0)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[float, tuple[Dataset, list[Dataset]]]:
    """Per time point: the SPECT header and its CT headers, each time point its own study."""
    result = {}
    for n, hours in enumerate(HOURS):
        acquisition = ADMINISTRATION_TIME + timedelta(hours=hours)
        spect = nm_dataset(np.full((2, 4, 4), 1000.0), NmSpec(acquisition=acquisition))
        files = write_ct_series(tmp_path_factory.mktemp(f"ct{n}"), slices=2, rows=8, columns=8,
                                patient_id=PATIENT, patient_name="Spect^Test",
                                study_instance_uid=spect.StudyInstanceUID)
        result[hours] = (spect, [pydicom.dcmread(f, stop_before_pixels=True) for f in files])
    return result


def headers_of(sources: dict[float, tuple[Dataset, list[Dataset]]]) -> list[Dataset]:
    return [h for spect, cts in sources.values() for h in (spect, *cts)]


def organ(name: str, sources, scale: float, misaligned_at: float | None = None) -> OrganDose:
    points = tuple(
        TimePointActivity(
            hours_after_administration=hours,
            acquisition=ADMINISTRATION_TIME + timedelta(hours=hours),
            spect_series_instance_uid=sources[hours][0].SeriesInstanceUID,
            activity_mbq=scale * 100.0 * 2 ** (-hours / 50.0) + 0.123456789,
            mean_concentration_bq_per_ml=scale * 6.25e5 * 2 ** (-hours / 50.0),
            misalignment=(f"CT kidney shifted 14.2 mm from the SPECT's uptake at {hours} h"
                          if hours == misaligned_at else None),
            alignment_not_assessable=("too little uptake over the background at this time point"
                                      if hours == HOURS[0] and hours != misaligned_at else None),
        )
        for hours in HOURS
    )
    return OrganDose(
        structure=structure_code(name),
        volume_ml=160.125 * scale,
        density_g_per_ml=1.06,
        mass_g=160.125 * scale * 1.06,
        mask_extension_sigma_mm=3.0,
        time_points=points,
        fit_model="mono-exponential",
        fit_selection="mono-exponential: AICc 12.5 below bi-exponential's",
        fit_parameters=(
            FitParameterValue("A", 100.1234 * scale, 1.75, "MBq"),
            FitParameterValue("lambda", 0.013862943611198906, 0.00041, "/h"),
        ),
        r_squared=0.99731,
        time_integrated_activity_mbq_h=7222.123456789 * scale,
        time_integrated_activity_uncertainty_mbq_h=212.5,
        absorbed_dose_gy=3.9876543210123 * scale,
        absorbed_dose_uncertainty_gy=0.1175,
    )


@pytest.fixture(scope="module")
def course(sources) -> CourseDoses:
    return CourseDoses(
        patient_id=PATIENT,
        radionuclide="Lu-177",
        radiopharmaceutical="177Lu-DOTATOC",
        administration=ADMINISTRATION_TIME,
        administered_activity_mbq=7400.0,
        organs=(
            organ("kidney_left", sources, 1.0, misaligned_at=24.0),
            organ("kidney_right", sources, 1.1),
            # A finding located in an organ: its site is the organ, with laterality.
            dataclasses.replace(organ("kidney_cyst_right", sources, 0.01), fit_model="trapezoid",
                                fit_parameters=(), r_squared=None,
                                time_integrated_activity_uncertainty_mbq_h=None,
                                absorbed_dose_uncertainty_gy=None),
        ),
    )


def report(course: CourseDoses, sources, headers: list[Dataset] | None = None) -> Dataset:
    return write_dose_report(
        course, headers_of(sources) if headers is None else headers,
        device_uid="1.2.826.0.1.3680043.8.498.1",
        series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.3",
        series_number=901,
        series_description="Organ dosimetry",
        created=CREATED,
    )


def dciodvfy(path: Path) -> list[str]:
    if not DCIODVFY.exists():
        pytest.fail(f"dicom3tools' dciodvfy is not installed at {DCIODVFY}: run ./install.sh --test")
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy {path}:\n" + "\n".join(lines)
    return [line for line in lines if line.startswith("Warning")]


@pytest.fixture(scope="module")
def written(course, sources, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sr") / "dose.dcm"
    report(course, sources).save_as(path, enforce_file_format=True)
    return path


def test_the_sr_is_a_valid_comprehensive_3d_sr(written: Path) -> None:
    dciodvfy(written)


def test_a_retry_writes_the_same_bytes(written: Path, course, sources, tmp_path: Path) -> None:
    again = tmp_path / "again.dcm"
    report(course, sources).save_as(again, enforce_file_format=True)
    assert again.read_bytes() == written.read_bytes()


def test_the_sr_is_of_the_latest_time_points_study_and_lists_every_source(written: Path, sources) -> None:
    sr = pydicom.dcmread(written)
    latest_spect = sources[HOURS[-1]][0]
    assert sr.StudyInstanceUID == latest_spect.StudyInstanceUID
    assert sr.PatientID == PATIENT
    assert sr.ContentDate == "20260305" and sr.ContentTime.startswith("093000")
    listed = {
        item.ReferencedSOPInstanceUID
        for sequence in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
        for study in sr.get(sequence, [])
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert listed == {h.SOPInstanceUID for h in headers_of(sources)}
    current = sr.CurrentRequestedProcedureEvidenceSequence
    assert [s.StudyInstanceUID for s in current] == [latest_spect.StudyInstanceUID]


def one(items: list, what: str):
    assert len(items) == 1, f"{len(items)} {what}"
    return items[0]


def measured(group, concept) -> hd.sr.Measurement:
    name, unit, derivation = concept
    candidates = [m for m in group.get_measurements(name=name.coded())
                  if (m.derivation is None if derivation is None else m.derivation == derivation.coded())]
    found = one(candidates, f"{name.meaning} measurements")
    assert found.unit == unit.coded()
    return found


def item_of(node) -> Dataset:
    """The content item of a highdicom template (a one-item sequence) or the item itself."""
    return node[0] if isinstance(node, Sequence) else node


def children(node, concept) -> list[Dataset]:
    return [item for item in item_of(node).get("ContentSequence", [])
            if item.ConceptNameCodeSequence[0].CodeValue == concept.value
            and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == concept.scheme]


def number(item: Dataset) -> float:
    """A NUM item's value: its Floating Point Value, exact, where DS's 16 characters are not."""
    value = item.MeasuredValueSequence[0]
    return float(value.FloatingPointValue if "FloatingPointValue" in value else value.NumericValue)


def uncertainty(node) -> tuple[float, float] | None:
    """Upper and lower measurement uncertainty (TID 310) of a measurement."""
    bounds = [number(item)
              for code in ("371886008", "371885007")
              for item in item_of(node).get("ContentSequence", [])
              if item.ConceptNameCodeSequence[0].CodeValue == code]
    return None if not bounds else tuple(bounds)


def test_the_sr_reads_back_to_the_course(written: Path, course: CourseDoses, sources) -> None:
    sr = hd.sr.srread(written)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == sum(1 + len(o.time_points) for o in course.organs)
    for organ_dose in course.organs:
        structure = organ_dose.structure
        mine = [g for g in groups if g.tracking_identifier == structure.label]
        assert len({g.tracking_uid for g in mine}) == 1
        for group in mine:
            site = one(group.finding_sites, "finding sites")
            assert site.value == (structure.anatomic_region or structure.property_type).coded()
            assert site.laterality == structure.laterality.coded()
            assert group.finding_type == structure.property_type.coded()
        summary = one([g for g in mine if not g.get_measurements(name=TIME_AFTER_INJECTION[0].coded())],
                      "summary groups")
        assert measured(summary, (VOLUME.name, VOLUME.unit, None)).value == organ_dose.volume_ml
        mass = measured(summary, (MASS.name, MASS.unit, None))
        assert mass.value == organ_dose.mass_g
        density = one(children(mass, DENSITY.name), "densities")
        assert number(density) == organ_dose.density_g_per_ml
        assert measured(summary, MASK_EXTENSION).value == organ_dose.mask_extension_sigma_mm
        tia = measured(summary, TIME_INTEGRATED_ACTIVITY)
        assert tia.value == organ_dose.time_integrated_activity_mbq_h
        assert tia.method == FIT_MODELS[organ_dose.fit_model].coded()
        u = organ_dose.time_integrated_activity_uncertainty_mbq_h
        assert uncertainty(tia) == (None if u is None else (u, u))
        assert one(children(tia, COMMENT), "comments").TextValue == organ_dose.fit_selection
        read = []
        for item in children(tia, CURVE_FIT_PARAMETER):
            name = one(children(item, PARAMETER_NAME), "parameter names").TextValue
            unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
            se = uncertainty(item)
            read.append(FitParameterValue(name, number(item),
                                          se[0] if se else None, unit))
        assert tuple(read) == organ_dose.fit_parameters
        r2 = children(tia, R_SQUARED[0])
        assert [number(i) for i in r2] == (
            [] if organ_dose.r_squared is None else [organ_dose.r_squared])
        dose = measured(summary, ABSORBED_DOSE)
        assert dose.value == organ_dose.absorbed_dose_gy
        assert dose.method == MIRD_LOCAL_DEPOSITION.coded()
        u = organ_dose.absorbed_dose_uncertainty_gy
        assert uncertainty(dose) == (None if u is None else (u, u))

        timed = [g for g in mine if g is not summary]
        assert len(timed) == len(organ_dose.time_points)
        for order, (group, point) in enumerate(zip(timed, organ_dose.time_points, strict=True), 1):
            assert measured(group, TIME_AFTER_INJECTION).value == point.hours_after_administration
            assert measured(group, ACTIVITY).value == point.activity_mbq
            assert measured(group, CONCENTRATION).value == point.mean_concentration_bq_per_ml
            context = {i.ConceptNameCodeSequence[0].CodeValue: i for i in item_of(group).ContentSequence}
            assert int(number(context["126073"])) == order  # Time Point Order
            hours = point.hours_after_administration
            assert context["C2348792"].TextValue == f"{hours:g} h after administration"  # Time Point
            # The SPECT the activity was read from.
            spect = sources[point.hours_after_administration][0]
            assert [i.referenced_sop_instance_uid for i in group.source_images] == [spect.SOPInstanceUID]
            evaluation = one(group.get_qualitative_evaluations(name=REGISTRATION.coded()), "registrations")
            written_evaluation = one(children(group, REGISTRATION), "registrations")
            comments = [item.TextValue for item in children(written_evaluation, COMMENT)]
            # highdicom reads evaluations without their children: the comment is in the item.
            if point.misalignment is not None:
                assert evaluation.value == MISALIGNED.coded() and comments == [point.misalignment]
            elif point.alignment_not_assessable is not None:
                assert evaluation.value == NOT_ASSESSABLE.coded()
                assert comments == [point.alignment_not_assessable]
            else:
                assert evaluation.value == ALIGNED.coded() and comments == []


def test_the_administration_is_reported_once(written: Path, course: CourseDoses) -> None:
    root = pydicom.dcmread(written)
    container = one(children(root, ADMINISTRATION), "administrations")
    assert one(children(container, RADIOPHARMACEUTICAL), "").TextValue == course.radiopharmaceutical
    nuclide = one(children(container, RADIONUCLIDE), "").ConceptCodeSequence[0]
    assert (nuclide.CodingSchemeDesignator, nuclide.CodeValue) == ("SCT", "447553000")
    activity = one(children(container, ADMINISTERED_ACTIVITY), "")
    assert number(activity) == course.administered_activity_mbq
    assert activity.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "MBq"
    assert one(children(container, START_DATETIME), "").DateTime.startswith("20260302080000")


def test_the_csv_reads_back_to_the_course(course: CourseDoses, tmp_path: Path) -> None:
    path = write_dose_csv(course, tmp_path / "dose.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    expected = [(o, n, p) for o in course.organs for n, p in enumerate(o.time_points, 1)]
    assert len(rows) == len(expected)
    optional = lambda cell: None if cell == "" else float(cell)  # noqa: E731
    for row, (organ_dose, order, point) in zip(rows, expected, strict=True):
        assert row["patient_id"] == PATIENT and row["radionuclide"] == "Lu-177"
        assert row["radiopharmaceutical"] == course.radiopharmaceutical
        assert datetime.fromisoformat(row["administration"]) == course.administration
        assert float(row["administered_activity_mbq"]) == course.administered_activity_mbq
        assert row["organ"] == organ_dose.structure.name and row["organ_label"] == organ_dose.structure.label
        assert float(row["volume_ml"]) == organ_dose.volume_ml
        assert float(row["mass_g"]) == organ_dose.mass_g
        assert float(row["density_g_ml"]) == organ_dose.density_g_per_ml
        assert float(row["mask_extension_sigma_mm"]) == organ_dose.mask_extension_sigma_mm
        assert int(row["time_point"]) == order
        assert float(row["hours_after_administration"]) == point.hours_after_administration
        assert datetime.fromisoformat(row["acquisition"]) == point.acquisition
        assert row["spect_series_instance_uid"] == point.spect_series_instance_uid
        assert float(row["activity_mbq"]) == point.activity_mbq
        assert float(row["mean_concentration_bq_ml"]) == point.mean_concentration_bq_per_ml
        assert (row["misalignment"] or None) == point.misalignment
        assert (row["alignment_not_assessable"] or None) == point.alignment_not_assessable
        assert row["fit_model"] == organ_dose.fit_model and row["fit_selection"] == organ_dose.fit_selection
        lines = row["fit_parameters"].splitlines()
        assert lines == [format_fit_parameter(p) for p in organ_dose.fit_parameters]
        for line, parameter in zip(lines, organ_dose.fit_parameters, strict=True):
            name, rest = line.split("=", 1)
            numbers, unit = rest.rsplit(" ", 1)
            value, se = numbers.split("±")
            assert FitParameterValue(name, float(value), float(se), unit) == parameter
        assert optional(row["r_squared"]) == organ_dose.r_squared
        assert float(row["tia_mbq_h"]) == organ_dose.time_integrated_activity_mbq_h
        assert optional(row["tia_uncertainty_mbq_h"]) == organ_dose.time_integrated_activity_uncertainty_mbq_h
        assert float(row["absorbed_dose_gy"]) == organ_dose.absorbed_dose_gy
        assert optional(row["absorbed_dose_uncertainty_gy"]) == organ_dose.absorbed_dose_uncertainty_gy


HOSTILE = [
    ("radiopharmaceutical", lambda c: dataclasses.replace(c, radiopharmaceutical="x" * 10_000),
     "radiopharmaceutical has 10000 characters"),
    ("radiopharmaceutical", lambda c: dataclasses.replace(c, radiopharmaceutical="Lu\x00DOTATOC"),
     "radiopharmaceutical contains control characters"),
    ("organ label", lambda c: dataclasses.replace(c, organs=(dataclasses.replace(
        c.organs[0], structure=dataclasses.replace(c.organs[0].structure, label="Left\x1bkidney")),)),
     "organ 'kidney_left' label contains control characters"),
    ("organ name", lambda c: dataclasses.replace(c, organs=(dataclasses.replace(
        c.organs[0], structure=dataclasses.replace(c.organs[0].structure, name="k" * 10_000)),)),
     "name has 10000 characters"),
    ("fit selection", lambda c: dataclasses.replace(c, organs=(dataclasses.replace(
        c.organs[0], fit_selection="why " * 2_500),)),
     "organ 'kidney_left' fit_selection has 10000 characters"),
    ("misalignment", lambda c: dataclasses.replace(c, organs=(dataclasses.replace(
        c.organs[0], time_points=(dataclasses.replace(c.organs[0].time_points[0], misalignment="\r\n"),
                                  *c.organs[0].time_points[1:])),)),
     "organ 'kidney_left' misalignment at 0.5 h is empty"),
]


@pytest.mark.parametrize(("field", "change", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_text_is_refused_naming_the_field(course, sources, tmp_path, field, change, message) -> None:
    hostile = change(course)
    with pytest.raises(DoseReportError, match=message):
        report(hostile, sources)
    with pytest.raises(DoseReportError, match=message):
        write_dose_csv(hostile, tmp_path / "dose.csv")
    assert not (tmp_path / "dose.csv").exists()


def test_a_course_that_does_not_fit_its_sources_is_refused(course, sources) -> None:
    headers = headers_of(sources)
    missing = [h for h in headers if h.SOPInstanceUID != sources[24.0][0].SOPInstanceUID]
    with pytest.raises(DoseReportError, match=f"SPECT series {sources[24.0][0].SeriesInstanceUID}"):
        report(course, sources, headers=missing)
    stranger = copy.deepcopy(headers[1])
    stranger.PatientID = "SOMEONE-ELSE"
    with pytest.raises(DoseReportError, match=r"PatientID \(0010,0020\) 'SOMEONE-ELSE'"):
        report(course, sources, headers=[*headers, stranger])
    backwards = dataclasses.replace(course, organs=(dataclasses.replace(
        course.organs[0], time_points=course.organs[0].time_points[::-1]),))
    with pytest.raises(DoseReportError, match="in increasing order"):
        report(backwards, sources)
    unknown = dataclasses.replace(course, organs=(dataclasses.replace(course.organs[0], fit_model="spline"),))
    with pytest.raises(DoseReportError, match="fit model 'spline'"):
        report(unknown, sources)
    with pytest.raises(DoseReportError, match="radionuclide 'Xx-999'"):
        report(dataclasses.replace(course, radionuclide="Xx-999"), sources)
    infinite = dataclasses.replace(course, organs=(dataclasses.replace(
        course.organs[0], absorbed_dose_gy=float("nan")),))
    with pytest.raises(DoseReportError, match="Absorbed Dose of organ 'kidney_left' is nan"):
        report(infinite, sources)
