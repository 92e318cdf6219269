"""Dosimetry courses: the time points read so far of one patient's administration.

A course's time points arrive days apart, each a SPECT/CT study of its own
(../shared/seeds/002: 0.5, 6, 24 and 72 h after the administration). Each
is read once, by its own job (node/work/dosimetry.py), and what it says is
kept here, because by the time the last point arrives the retention policy
may have removed the first one's images. Recording a point and reading the
whole course back is one transaction, so of two points read at once the
second always sees the first.

A course is one route's (its pipeline says which organs and how), one
patient's (Patient ID), one radionuclide's, and one administration's: the
Radiopharmaceutical Start DateTime within a minute, as
dicomio.administration.same_administration has it. A point that differs in
anything else (the activity) joins the course and its evaluation says why
it does not belong (inference/dosimetry/course.py). A point read again (a
physician's SEG of its CT arrived, a retry) replaces its earlier reading.

The tables live in the index database beside the jobs that read the points.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dicomio.administration import Administration
from dicomio.codes import structure_code
from dicomio.dose_records import OrganReading, PointReading
from node.database import open_database, transaction
from node.receive.index import INDEX_FILENAME

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dosimetry_courses (
    id            INTEGER PRIMARY KEY,
    route         TEXT NOT NULL,
    patient_id    TEXT NOT NULL,
    radionuclide  TEXT NOT NULL,
    administered  TEXT NOT NULL,
    created       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dosimetry_courses_by_patient
    ON dosimetry_courses(route, patient_id, radionuclide);
CREATE TABLE IF NOT EXISTS dosimetry_points (
    spect_series_instance_uid TEXT NOT NULL,
    route                     TEXT NOT NULL,
    course                    INTEGER NOT NULL REFERENCES dosimetry_courses(id),
    ct_series_instance_uid    TEXT NOT NULL,
    job                       INTEGER NOT NULL,
    hours                     REAL NOT NULL,
    reading                   TEXT NOT NULL,
    sources                   TEXT NOT NULL,
    read_at                   REAL NOT NULL,
    PRIMARY KEY (spect_series_instance_uid, route)
);
CREATE INDEX IF NOT EXISTS dosimetry_points_by_course ON dosimetry_points(course, hours);
CREATE INDEX IF NOT EXISTS dosimetry_points_by_ct ON dosimetry_points(ct_series_instance_uid);
"""

#: Administrations this close are one (dicomio.administration.same_administration).
SAME_ADMINISTRATION_SECONDS = 60.0


@dataclass(frozen=True)
class CoursePointRecord:
    """A time point as kept: its reading, the job that read it, when the
    reading last changed, and the folder holding the headers of its SPECT and
    CT instances (the evidence of every later report of the course)."""

    reading: PointReading
    job_id: int
    read_at: float
    sources: Path


@dataclass(frozen=True)
class Course:
    """A course and its time points in order of acquisition."""

    id: int
    route: str
    points: tuple[CoursePointRecord, ...]


class CourseStore:
    """The courses and their points, in the index database (WAL, one
    connection per process under a lock, as node/queue/jobs.py)."""

    def __init__(self, storage_dir: Path, *, read_only: bool = False):
        self._db = open_database(Path(storage_dir) / INDEX_FILENAME, _SCHEMA, read_only=read_only)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, route: str, reading: PointReading, job_id: int, sources: Path,
               now: float | None = None) -> Course:
        """Keep `reading` as a point of its course (made if it is the first),
        replacing an earlier reading of the same SPECT on `route`, and return
        the course as it now is."""
        now = time.time() if now is None else now
        administration = reading.administration
        with self._lock, transaction(self._db):
            course = self._course_of(route, reading.patient_id, administration)
            if course is None:
                course = self._db.execute(
                    "INSERT INTO dosimetry_courses (route, patient_id, radionuclide, administered, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (route, reading.patient_id, administration.radionuclide,
                     administration.start.isoformat(), now),
                ).lastrowid
            stored = json.dumps(reading_to_json(reading))
            # Read again with the same outcome (a retry): the point is as it was,
            # and the course's reports keep their UIDs (node/work/dosimetry.py).
            kept = self._db.execute(
                "SELECT read_at FROM dosimetry_points WHERE spect_series_instance_uid = ? AND route = ? "
                "AND course = ? AND reading = ?",
                (reading.spect_series_instance_uid, route, course, stored),
            ).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO dosimetry_points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (reading.spect_series_instance_uid, route, course, reading.ct_series_instance_uid, job_id,
                 reading.hours_after_administration, stored, str(sources), now if kept is None else kept[0]),
            )
            return self._course(course, route)

    def jobs_reading_ct(self, ct_series_instance_uid: str) -> list[int]:
        """The jobs whose time point took its organs from this CT: to read
        again when a physician's SEG of it arrives."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job FROM dosimetry_points WHERE ct_series_instance_uid = ? ORDER BY job",
                (ct_series_instance_uid,),
            ).fetchall()
        return [row[0] for row in rows]

    def _course_of(self, route: str, patient_id: str, administration: Administration) -> int | None:
        rows = self._db.execute(
            "SELECT id, administered FROM dosimetry_courses WHERE route = ? AND patient_id = ? "
            "AND radionuclide = ? ORDER BY id",
            (route, patient_id, administration.radionuclide),
        ).fetchall()
        for course, administered in rows:
            apart = abs((datetime.fromisoformat(administered) - administration.start).total_seconds())
            if apart <= SAME_ADMINISTRATION_SECONDS:
                return course
        return None

    def _course(self, course: int, route: str) -> Course:
        rows = self._db.execute(
            "SELECT reading, job, read_at, sources FROM dosimetry_points WHERE course = ? "
            "ORDER BY hours, spect_series_instance_uid",
            (course,),
        ).fetchall()
        return Course(course, route, tuple(
            CoursePointRecord(reading_from_json(json.loads(reading)), job, read_at, Path(sources))
            for reading, job, read_at, sources in rows
        ))


def reading_to_json(reading: PointReading) -> dict[str, object]:
    """`reading` as JSON: how a course keeps it, and how a worker on another host returns it."""
    administration = reading.administration
    return {
        "spect": reading.spect_series_instance_uid,
        "ct": reading.ct_series_instance_uid,
        "patient_id": reading.patient_id,
        "administration": {
            "radionuclide": administration.radionuclide,
            "radiopharmaceutical": administration.radiopharmaceutical,
            "start": administration.start.isoformat(),
            "total_activity_bq": administration.total_activity_bq,
            "half_life_s": administration.half_life_s,
            "notes": list(administration.notes),
        },
        "acquisition": reading.acquisition.isoformat(),
        "hours": reading.hours_after_administration,
        "segmentation": reading.segmentation,
        "organs": [
            {"structure": organ.structure.name, "activity_mbq": organ.activity_mbq,
             "mean_concentration_bq_per_ml": organ.mean_concentration_bq_per_ml,
             "ct_volume_ml": organ.ct_volume_ml, "sigma_mm": organ.mask_extension_sigma_mm,
             "misalignment": organ.misalignment, "not_assessable": organ.alignment_not_assessable}
            for organ in reading.organs
        ],
    }


def reading_from_json(value: dict) -> PointReading:
    administration = value["administration"]
    return PointReading(
        spect_series_instance_uid=value["spect"],
        ct_series_instance_uid=value["ct"],
        patient_id=value["patient_id"],
        administration=Administration(
            radionuclide=administration["radionuclide"],
            radiopharmaceutical=administration["radiopharmaceutical"],
            start=datetime.fromisoformat(administration["start"]),
            total_activity_bq=administration["total_activity_bq"],
            half_life_s=administration["half_life_s"],
            notes=tuple(administration["notes"]),
        ),
        acquisition=datetime.fromisoformat(value["acquisition"]),
        hours_after_administration=value["hours"],
        segmentation=value["segmentation"],
        organs=tuple(
            OrganReading(
                structure=structure_code(organ["structure"]),
                activity_mbq=organ["activity_mbq"],
                mean_concentration_bq_per_ml=organ["mean_concentration_bq_per_ml"],
                ct_volume_ml=organ["ct_volume_ml"],
                mask_extension_sigma_mm=organ["sigma_mm"],
                misalignment=organ["misalignment"],
                alignment_not_assessable=organ["not_assessable"],
            )
            for organ in value["organs"]
        ),
    )
