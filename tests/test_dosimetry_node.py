"""Organ dosimetry through a running node: SPECT/CT time points in by C-STORE, the dose report out.

The synthetic 177Lu course of phantom/spect_course.py (known kidney doses)
is sent as a SPECT/CT would send it, one study per time point: the CT, the
NM reconstruction and a physician's SEG of the CT (kidneys, spleen and
liver; the built-in model has no kidneys). The node reads each point as it
completes, evaluates the course at its fourth point and sends the SR and
the PDF to dcmtk's storescp; a fifth point days later updates the course
with new objects.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from dicomio.dose_report import ABSORBED_DOSE, TIME_AFTER_INJECTION
from phantom.spect_course import CourseTruth, TimePoint, write_course
from tests.conftest import NodeProcess, StoreSCP, dcmtk, dcmtk_env
from tests.synthetic import STORESCU_FLAGS
from tests.test_e2e import wait_for
from tests.test_seg import dciodvfy

pytestmark = pytest.mark.slow

KIDNEYS = ("kidney_left", "kidney_right")


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> CourseTruth:
    """Four time points, and a fifth at 168 h to send later."""
    return write_course(tmp_path_factory.mktemp("course"), extra_points=(168.0,))


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path)
    yield scp
    scp.stop()


def dosimetry_node(node_factory, destination: StoreSCP, course: CourseTruth, **dosimetry) -> NodeProcess:
    node = node_factory()
    node.config.update(
        destinations={"RESULTS": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": destination.port,
                                  "outputs": ["sr", "pdf"]}},
        pipelines={"lu177": {"model": "builtin", "dosimetry": {
            "organs": list(KIDNEYS), "neighbours": ["spleen", "liver"],
            "spect_fwhm_mm": course.psf_fwhm_mm, **dosimetry}}},
        routes=[{"name": "dosimetry", "match": {"modality": "NM"}, "pipeline": "lu177",
                 "send_to": ["RESULTS"]}],
        jobs={"max_attempts": 2, "retry_base_seconds": 1, "retry_max_seconds": 2},
        sending={"retry_base_seconds": 0.5, "retry_max_seconds": 2},
    )
    node.write_config()
    return node.start()


def send(node: NodeProcess, files: list[Path]) -> None:
    subprocess.run(
        [dcmtk("storescu"), *STORESCU_FLAGS[ExplicitVRLittleEndian], "-aet", "STORESCU", "-aec", "SEGNODE",
         "127.0.0.1", str(node.port), *map(str, files)],
        check=True, env=dcmtk_env(), capture_output=True,
    )


def send_point(node: NodeProcess, point: TimePoint) -> None:
    """A SPECT/CT's study: the CT, the reconstruction, then the physician's SEG."""
    send(node, [*point.ct.files, *point.spect.files, point.seg])


def dosimetry_jobs(node: NodeProcess) -> list[dict]:
    return [job for job in node.status_jobs() if job["kind"] == "dosimetry"]


def jobs_done(node: NodeProcess, count: int) -> list[dict] | None:
    jobs = dosimetry_jobs(node)
    failed = [job for job in jobs if job["state"] == "failed"]
    assert not failed, f"dosimetry jobs failed: {failed}\n{node.log()[-3000:]}"
    done = [job for job in jobs if job["state"] == "done"]
    return done if len(done) == count else None


def received(destination: StoreSCP, modality: str) -> list[Path]:
    found = []
    for path in destination.out.iterdir():
        try:
            if pydicom.dcmread(path, stop_before_pixels=True).Modality == modality:
                found.append(path)
        except (InvalidDicomError, EOFError, OSError, AttributeError):
            continue  # storescp is still writing it
    return found


def doses_and_points(path: Path) -> tuple[dict[str, float], int]:
    """Each organ's absorbed dose (Gy) in a dose SR, and its number of time points."""
    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    name, unit, _ = ABSORBED_DOSE
    doses = {}
    points = set()
    for group in groups:
        timed = group.get_measurements(name=TIME_AFTER_INJECTION[0].coded())
        if timed:
            points.add(timed[0].value)
            continue
        (dose,) = group.get_measurements(name=name.coded())
        assert dose.unit == unit.coded()
        doses[group.tracking_identifier] = dose.value
    return doses, len(points)


def assert_within_two_percent(doses: dict[str, float], course: CourseTruth, points: int) -> None:
    for organ in KIDNEYS:
        truth = course.organ(organ)
        label = next(label for label in doses if organ.split("_")[1] in label.lower())
        assert doses[label] == pytest.approx(truth.absorbed_dose_gy, rel=0.02), (organ, points)


def test_the_fourth_time_point_reports_the_course_and_a_fifth_updates_it(
    node_factory, destination: StoreSCP, course: CourseTruth
) -> None:
    node = dosimetry_node(node_factory, destination, course)
    first_four, fifth = course.time_points[:4], course.time_points[4]
    for count, point in enumerate(first_four, 1):
        send_point(node, point)
        wait_for(lambda count=count: jobs_done(node, count), 120, f"time point {count} read")
        if count < 4:
            assert not received(destination, "SR"), "a report before the course had its four points"
    (sr,) = wait_for(lambda: received(destination, "SR"), 60, "the course's SR")
    doses, points = doses_and_points(sr)
    assert points == 4
    assert_within_two_percent(doses, course, 4)
    (document,) = wait_for(lambda: received(destination, "DOC"), 30, "the course's PDF")
    # Both as the destination stored them, valid to the letter of their IODs.
    dciodvfy(sr)
    dciodvfy(document)

    send_point(node, fifth)
    wait_for(lambda: jobs_done(node, 5), 120, "the fifth time point read")
    both = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(received(destination, "SR")),
                    60, "the updated SR")
    (updated,) = [path for path in both if path != sr]
    doses, points = doses_and_points(updated)
    assert points == 5
    assert_within_two_percent(doses, course, 5)
    result = next(job for job in dosimetry_jobs(node) if job["result"]["points"] == 5)["result"]
    assert set(result["doses_gy"]) == set(KIDNEYS)
    assert Path(result["csv"]).is_file()


def job_of(node: NodeProcess, spect_series: str) -> dict | None:
    return next((job for job in dosimetry_jobs(node) if job["series_instance_uid"] == spect_series), None)


def settled(node: NodeProcess, spect_series: str, state: str, since: str | None = None) -> dict | None:
    """The time point's job once it is in `state`, updated since `since` (an earlier updated_at)."""
    job = job_of(node, spect_series)
    return job if job is not None and job["state"] == state and job["updated_at"] != since else None


def counts_only(point: TimePoint, folder: Path) -> Path:
    """The point's SPECT as a camera without quantitation writes it: counts, a new series."""
    ds = pydicom.dcmread(point.spect.files[0])
    del ds.RealWorldValueMappingSequence
    ds.Units = "CNTS"
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    path = folder / "counts.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_point_waits_for_its_ct_and_organs_and_a_spect_in_counts_is_refused_naming_why(
    node_factory, destination: StoreSCP, course: CourseTruth, tmp_path: Path
) -> None:
    node = dosimetry_node(node_factory, destination, course)
    point = course.time_points[0]
    spect_series = point.spect.series_instance_uid
    # The SPECT alone: there is no CT to take the organs from.
    send(node, list(point.spect.files))
    failed = wait_for(lambda: settled(node, spect_series, "failed"), 60, "the point without its CT failed")
    assert "no complete CT in the SPECT's Frame of Reference" in failed["error"]
    # Its CT arrives: read again, and refused, the built-in model having no kidneys (never guessed).
    send(node, list(point.ct.files))
    failed = wait_for(lambda: settled(node, spect_series, "failed", failed["updated_at"]), 60,
                      "the point read again with its CT")
    assert "(model segnode-builtin" in failed["error"] and "kidney_left, kidney_right" in failed["error"]
    assert "the model or SEG lacks the organ" in failed["error"]
    # The physician's SEG arrives: read again, from it.
    send(node, [point.seg])
    done = wait_for(lambda: settled(node, spect_series, "done"), 60, "the point read from the SEG")
    assert (done["result"]["points"], done["result"]["needed"]) == (1, 4)
    assert not received(destination, "SR")

    counts = counts_only(course.time_points[1], tmp_path)
    send(node, [*course.time_points[1].ct.files, counts, course.time_points[1].seg])
    refused = wait_for(lambda: settled(node, pydicom.dcmread(counts).SeriesInstanceUID, "failed"), 60,
                       "the SPECT in counts refused")
    assert "not a quantitative SPECT: no Bq/ml units in" in refused["error"]
    assert "CNTS" in refused["error"]
