"""A dosimetry course's results per organ, the input of its SR and CSV.

inference/dosimetry evaluates a course (time points of quantitative SPECT
with their CT masks, the fit of each organ's time-activity curve, the
absorbed dose); dicomio only encodes what it found, as with
:mod:`dicomio.measurements` for a single series.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dicomio.administration import Administration
from dicomio.codes import StructureCode


@dataclass(frozen=True)
class TimePointActivity:
    """One organ at one time point: what the SPECT held inside its extended mask."""

    hours_after_administration: float
    acquisition: datetime
    spect_series_instance_uid: str
    activity_mbq: float
    mean_concentration_bq_per_ml: float
    #: None when the SPECT and its CT line up around the organ; else why not, with the figures.
    misalignment: str | None
    #: None when the registration could be judged; else why not (too little uptake over the
    #: background at this time point, a hot neighbour's spill-out), and then `misalignment` is None.
    alignment_not_assessable: str | None = None


@dataclass(frozen=True)
class FitParameterValue:
    """A fitted parameter of the time-activity curve, in UCUM units (``MBq``, ``/h``)."""

    name: str
    value: float
    standard_error: float | None
    unit: str


@dataclass(frozen=True)
class OrganDose:
    """One organ over the course: mass, activities, the fit, its integral and the dose."""

    structure: StructureCode
    volume_ml: float
    density_g_per_ml: float
    mass_g: float
    #: Sigma of the Gaussian that extended the CT mask on the SPECT grid (0: not extended).
    mask_extension_sigma_mm: float
    time_points: tuple[TimePointActivity, ...]
    #: "mono-exponential", "bi-exponential" or "trapezoid", and why it was chosen.
    fit_model: str
    fit_selection: str
    fit_parameters: tuple[FitParameterValue, ...]
    r_squared: float | None
    time_integrated_activity_mbq_h: float
    time_integrated_activity_uncertainty_mbq_h: float | None
    absorbed_dose_gy: float
    absorbed_dose_uncertainty_gy: float | None


@dataclass(frozen=True)
class CourseDoses:
    """A course: one administration to one patient, and its organs' doses."""

    patient_id: str
    radionuclide: str  # as the nuclide table names it, e.g. "Lu-177"
    radiopharmaceutical: str
    administration: datetime
    administered_activity_mbq: float
    organs: tuple[OrganDose, ...]


@dataclass(frozen=True)
class OrganReading:
    """One organ as one time point's SPECT and CT show it."""

    structure: StructureCode
    activity_mbq: float
    mean_concentration_bq_per_ml: float
    #: The organ's volume on the CT: its mass follows from it.
    ct_volume_ml: float
    mask_extension_sigma_mm: float
    #: None when the SPECT and its CT line up around the organ; else why not, with the figures.
    misalignment: str | None
    #: None when the registration could be judged; else why not.
    alignment_not_assessable: str | None


@dataclass(frozen=True)
class PointReading:
    """What one SPECT/CT time point says of the course's organs.

    A course is evaluated again when a later time point arrives, days after
    the first, when the retention policy may have removed the first one's
    images: each time point is read once and this is what is kept of it.
    ``segmentation`` says where the organs' masks came from (a physician's
    SEG or the pipeline's model), for the report.
    """

    spect_series_instance_uid: str
    ct_series_instance_uid: str
    patient_id: str
    administration: Administration
    acquisition: datetime
    hours_after_administration: float
    segmentation: str
    organs: tuple[OrganReading, ...]
