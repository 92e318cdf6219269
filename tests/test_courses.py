"""Dosimetry courses as the node keeps them: which points make one course, and what a re-read changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from dicomio.administration import Administration
from dicomio.codes import structure_code
from dicomio.dose_records import OrganReading, PointReading
from node.queue.courses import CourseStore

START = datetime(2024, 5, 6, 9, 0)
ADMINISTRATION = Administration("Lu-177", "DOTATOC", START, 7.4e9, 574300.0, ("dose in MBq",))


def reading(hours: float, *, patient: str = "PAT1", administration: Administration = ADMINISTRATION,
            activity: float = 50.0, misalignment: str | None = None) -> PointReading:
    return PointReading(
        spect_series_instance_uid=f"1.2.826.0.1.{int(hours * 10)}.1",
        ct_series_instance_uid=f"1.2.826.0.1.{int(hours * 10)}.2",
        patient_id=patient,
        administration=administration,
        acquisition=START + timedelta(hours=hours),
        hours_after_administration=hours,
        segmentation="a physician's SEG (1.2.3)",
        organs=(
            OrganReading(structure_code("kidney_left"), activity, 312.5, 160.0, 3.0, misalignment, None),
            OrganReading(structure_code("kidney_right"), activity * 1.1, 330.0, 166.6, 3.0, None,
                         "too little uptake over the background at this time point"),
        ),
    )


@pytest.fixture
def store(tmp_path: Path):
    courses = CourseStore(tmp_path)
    yield courses
    courses.close()


def test_points_of_one_administration_make_one_course_in_order_of_acquisition(store, tmp_path):
    for job, hours in enumerate((24.0, 0.5, 6.0), 1):
        course = store.record("therapy", reading(hours), job, tmp_path / f"h{hours}", now=1000.0 + job)
    assert [p.reading.hours_after_administration for p in course.points] == [0.5, 6.0, 24.0]
    assert [p.job_id for p in course.points] == [2, 3, 1]
    # What was stored reads back whole: every field, misalignments and notes included.
    flagged = reading(72.0, misalignment="centre of activity 7.1 mm from the mask's")
    course = store.record("therapy", flagged, 4, tmp_path / "h72", now=2000.0)
    assert course.points[-1].reading == flagged
    assert course.points[-1].sources == tmp_path / "h72"
    # A start written a few seconds apart at another time point is the same administration.
    nearby = replace(ADMINISTRATION, start=START + timedelta(seconds=40))
    assert store.record("therapy", reading(96.0, administration=nearby), 5, tmp_path, now=0).id == course.id


def test_another_patient_cycle_route_or_nuclide_is_another_course(store, tmp_path):
    first = store.record("therapy", reading(0.5), 1, tmp_path).id
    next_cycle = replace(ADMINISTRATION, start=START + timedelta(weeks=8))
    iodine = replace(ADMINISTRATION, radionuclide="I-131")
    others = [
        store.record("therapy", reading(0.5, patient="PAT2"), 2, tmp_path).id,
        store.record("therapy", reading(0.5, administration=next_cycle), 3, tmp_path).id,
        store.record("therapy", reading(0.5, administration=iodine), 4, tmp_path).id,
        store.record("research", reading(0.5), 5, tmp_path).id,
    ]
    assert len({first, *others}) == 5
    # The same SPECT on the same route is one point, whichever job read it last.
    again = store.record("therapy", reading(0.5), 6, tmp_path)
    assert again.id == first and [p.job_id for p in again.points] == [6]


def test_reading_a_point_again_keeps_its_time_unless_the_reading_changed(store, tmp_path):
    store.record("therapy", reading(6.0), 1, tmp_path, now=100.0)
    same = store.record("therapy", reading(6.0), 1, tmp_path, now=200.0)
    assert same.points[0].read_at == 100.0  # its reports keep their UIDs
    changed = store.record("therapy", reading(6.0, activity=51.0), 1, tmp_path, now=300.0)
    assert changed.points[0].read_at == 300.0
    assert changed.points[0].reading.organs[0].activity_mbq == 51.0


def test_the_jobs_that_read_a_ct_are_found_and_the_courses_survive_a_reopen(tmp_path):
    store = CourseStore(tmp_path)
    store.record("therapy", reading(0.5), 7, tmp_path)
    store.record("research", reading(0.5), 8, tmp_path)
    store.record("therapy", reading(6.0), 9, tmp_path)
    store.close()
    reopened = CourseStore(tmp_path)
    try:
        assert reopened.jobs_reading_ct(reading(0.5).ct_series_instance_uid) == [7, 8]
        assert reopened.jobs_reading_ct("1.2.3.4") == []
        assert len(reopened.record("therapy", reading(24.0), 10, tmp_path).points) == 3
    finally:
        reopened.close()
