"""A dosimetry course as one CSV file, one row per organ and time point.

The SR (dicomio/dose_report.py) carries the same numbers for DICOM readers;
this file is for spreadsheets and scripts. One file rather than two: each
row holds its organ's summary (mass, fit, time-integrated activity, dose)
beside the time point, so that a filter or a pandas ``groupby("organ")``
never needs a join, and the summary repeats only a handful of times.

Floats are written in Python's shortest round-trip form (``float(cell)``
gives the value back exactly); a value that is None is an empty cell. The
fit parameters, whose number depends on the model, share one cell, one line
per parameter: ``name=value±standard_error unit`` (``name=value unit``
without a standard error). Written atomically (dicomio.files), as the
measurements CSV is.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Final

from dicomio.dose_records import CourseDoses, FitParameterValue, OrganDose, TimePointActivity
from dicomio.dose_report import DoseReportError, check_course_text
from dicomio.files import write_atomically

__all__ = ["COLUMNS", "format_fit_parameter", "write_dose_csv"]

#: Header row, in column order.
COLUMNS: Final[tuple[str, ...]] = (
    "patient_id",
    "radiopharmaceutical",
    "radionuclide",
    "administration",
    "administered_activity_mbq",
    "organ",
    "organ_label",
    "volume_ml",
    "density_g_ml",
    "mass_g",
    "mask_extension_sigma_mm",
    "time_point",
    "hours_after_administration",
    "acquisition",
    "spect_series_instance_uid",
    "activity_mbq",
    "mean_concentration_bq_ml",
    "misalignment",
    "alignment_not_assessable",
    "fit_model",
    "fit_selection",
    "fit_parameters",
    "r_squared",
    "tia_mbq_h",
    "tia_uncertainty_mbq_h",
    "absorbed_dose_gy",
    "absorbed_dose_uncertainty_gy",
)


def format_fit_parameter(parameter: FitParameterValue) -> str:
    """One line of the ``fit_parameters`` cell: ``name=value±standard_error unit``."""
    error = "" if parameter.standard_error is None else f"±{parameter.standard_error!r}"
    return f"{parameter.name}={parameter.value!r}{error} {parameter.unit}"


def _row(course: CourseDoses, organ: OrganDose, order: int, point: TimePointActivity) -> tuple[object, ...]:
    return (
        course.patient_id,
        course.radiopharmaceutical,
        course.radionuclide,
        course.administration.isoformat(),
        course.administered_activity_mbq,
        organ.structure.name,
        organ.structure.label,
        organ.volume_ml,
        organ.density_g_per_ml,
        organ.mass_g,
        organ.mask_extension_sigma_mm,
        order,
        point.hours_after_administration,
        point.acquisition.isoformat(),
        point.spect_series_instance_uid,
        point.activity_mbq,
        point.mean_concentration_bq_per_ml,
        point.misalignment,
        point.alignment_not_assessable,
        organ.fit_model,
        organ.fit_selection,
        "\n".join(format_fit_parameter(p) for p in organ.fit_parameters),
        organ.r_squared,
        organ.time_integrated_activity_mbq_h,
        organ.time_integrated_activity_uncertainty_mbq_h,
        organ.absorbed_dose_gy,
        organ.absorbed_dose_uncertainty_gy,
    )


def write_dose_csv(course: CourseDoses, path: str | os.PathLike[str]) -> Path:
    """Write `course` to `path` atomically, organs in the course's order, time points in theirs.

    Raises
    ------
    DoseReportError
        If a parameter name holds ``=`` or a unit a space (the cell could
        not be read back), or text is refused as in the SR
        (:func:`dicomio.dose_report.check_course_text`).
    OSError
        If the folder is missing or not writable; no temporary file is left.
    """
    check_course_text(course)
    for organ in course.organs:
        for parameter in organ.fit_parameters:
            if "=" in parameter.name or " " in parameter.unit:
                raise DoseReportError(
                    f"course of patient {course.patient_id!r}: organ {organ.structure.name!r} fit "
                    f"parameter {parameter.name!r} ({parameter.unit!r}): a name without '=' and a unit "
                    "without spaces are needed in the fit_parameters cell"
                )
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows(
        _row(course, organ, order, point)
        for organ in course.organs
        for order, point in enumerate(organ.time_points, 1)
    )
    return write_atomically(path, text.getvalue().encode("utf-8"))
