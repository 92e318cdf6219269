"""Fit an organ's time-activity curve and integrate it analytically to infinity.

The absorbed dose needs the number of decays in the organ, the time-integrated
activity (TIA, MBq h): the integral of the organ's activity from the
administration to infinity. A few quantitative SPECT/CT time points sample
that curve; a model fitted to them carries it before the first and after the
last point, where most of the decays of a long-lived nuclide happen.

Models (t in hours after the administration, lambda_phys the nuclide's
physical decay constant):

* ``mono``: A(t) = A0 exp(-lambda_eff t), TIA = A0 / lambda_eff;
* ``bi``: uptake and washout, A(t) = A0 (exp(-lambda_washout t) -
  exp(-lambda_uptake t)), TIA = A0 (1/lambda_washout - 1/lambda_uptake), for
  organs that take the radiopharmaceutical up from the blood, as kidneys do
  (curve fitting for 177Lu: Sjogreen Gleisner et al., "EANM dosimetry
  committee recommendations for dosimetry of 177Lu-labelled
  somatostatin-receptor- and PSMA-targeting ligands", EJNMMI 49:1778, 2022);
  three parameters, so four time points fit it with one degree of freedom;
* ``trapezoid``: no model; straight lines between the points, from zero
  activity at the administration to the first point (the organ holds nothing
  at injection: the activity reaches it through the blood; taking the first
  value back to t=0 instead would add A1 t1 / 2, small when the first point is
  early), and after the last point physical decay alone, A_last / lambda_phys,
  which ignores biological clearance and so bounds the tail from above.

Every decay constant is bounded below by lambda_phys: an effective constant is
lambda_phys + lambda_bio, and biological clearance cannot put activity back
(lambda_bio >= 0). ``auto`` chooses among the fitted models by the corrected
Akaike information criterion, as Glatting et al. propose for biokinetic data
("Choosing the optimal fit function: comparison of the Akaike information
criterion and the F-test", Med Phys 34:4285, 2007): AICc = n ln(RSS/n) + 2K +
2K(K+1)/(n-K-1), with K the number of fitted parameters, as PMOD's kinetic
modelling tool counts them (PKIN manual, "Criteria for Comparing Models").
Glatting counts the residual variance as one more parameter; that needs one
more time point per model, and with the usual four or five points it would
leave no two models to compare. RSS is weighted by the
points' uncertainties where they are given. The TIA's uncertainty is the fit
covariance propagated through the closed-form integral (first order).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from .nuclides import Nuclide

Model = Literal["mono", "bi", "trapezoid", "auto"]

# Residuals below this fraction of the highest activity are below any measured activity's precision: where
# two models both fit that closely, AICc's parameter penalty decides instead of rounding noise.
_RESIDUAL_FLOOR = 1e-6


@dataclass(frozen=True)
class TimePoint:
    """Activity in an organ at one time after the administration.

    ``uncertainty_mbq`` is one standard deviation; where the points have
    them, the fit weighs each point by it and treats it as absolute.
    """

    hours_after_administration: float
    activity_mbq: float
    uncertainty_mbq: float | None = None


@dataclass(frozen=True)
class FitParameter:
    """A fitted parameter with its standard error, both in ``unit``."""

    name: str
    value: float
    standard_error: float
    unit: str


@dataclass(frozen=True)
class TimeActivityFit:
    """The chosen curve, how well it fits, and the time-integrated activity.

    ``residuals_mbq`` are measured minus model, point by point. ``r_squared``
    and ``aicc`` are None for the trapezoid (it passes through every point),
    and ``aicc`` also where the points are too few for it (n <= K + 1). The
    TIA's uncertainty is None for a trapezoid of points without uncertainties:
    nothing then says how far off the points are. ``selection`` says why this
    model was used.
    """

    model: Literal["mono", "bi", "trapezoid"]
    nuclide: Nuclide
    points: tuple[TimePoint, ...]
    parameters: tuple[FitParameter, ...]
    residuals_mbq: tuple[float, ...]
    r_squared: float | None
    aicc: float | None
    time_integrated_activity_mbq_h: float
    time_integrated_activity_uncertainty_mbq_h: float | None
    selection: str

    def parameter(self, name: str) -> FitParameter:
        """The parameter called ``name``; KeyError naming the ones there are."""
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        raise KeyError(f"{self.model} fit has no parameter {name!r}: {[p.name for p in self.parameters]}")

    def activity_mbq(self, hours: float) -> float:
        """The curve at ``hours`` after the administration, as integrated (for plots and checks)."""
        return float(activity_curve(self, np.array([hours], dtype=float))[0])


def activity_curve(fit: TimeActivityFit, hours: np.ndarray) -> np.ndarray:
    """The fitted curve (MBq) at ``hours`` after the administration, the curve whose integral is the TIA.

    The exponential models evaluate their function with the fitted
    parameters; the trapezoid runs in straight lines from zero at the
    administration through the points and decays physically after the last.
    Sampled densely, it is what a report plots beside the measured points.
    """
    times = np.asarray(hours, dtype=float)
    if fit.model == "trapezoid":
        return _trapezoid_curve(fit.points, fit.nuclide, times)
    return _MODELS[fit.model].function(times, *(parameter.value for parameter in fit.parameters))


class TimeActivityError(ValueError):
    """The time points cannot give a time-integrated activity; names the organ or series when known."""

    def __init__(self, message: str, *, label: str | None = None):
        super().__init__(f"{label}: {message}" if label else message)
        self.label = label


class InvalidTimePointError(TimeActivityError):
    """A time point is out of order or its values are impossible; names the point and attribute."""

    def __init__(self, message: str, *, index: int, attribute: str, label: str | None = None):
        super().__init__(f"time point {index + 1}: {attribute} {message}", label=label)
        self.index = index
        self.attribute = attribute


class TimeActivityFitError(TimeActivityError):
    """A model cannot be fitted: too few points, no convergence, or undetermined parameters."""

    def __init__(self, model: str, message: str, *, label: str | None = None):
        super().__init__(f"{model} fit: {message}", label=label)
        self.model = model


@dataclass(frozen=True)
class _Exponential:
    function: Callable[..., np.ndarray]
    names: tuple[str, ...]
    units: tuple[str, ...]
    tia: Callable[..., float]
    tia_gradient: Callable[..., np.ndarray]


def _mono(t: np.ndarray, a0: float, lam: float) -> np.ndarray:
    return a0 * np.exp(-lam * t)


def _bi(t: np.ndarray, a0: float, washout: float, uptake: float) -> np.ndarray:
    return a0 * (np.exp(-washout * t) - np.exp(-uptake * t))


_MODELS: dict[str, _Exponential] = {
    "mono": _Exponential(
        function=_mono,
        names=("A0", "lambda_eff"),
        units=("MBq", "1/h"),
        tia=lambda a0, lam: a0 / lam,
        tia_gradient=lambda a0, lam: np.array([1.0 / lam, -a0 / lam**2]),
    ),
    "bi": _Exponential(
        function=_bi,
        names=("A0", "lambda_washout", "lambda_uptake"),
        units=("MBq", "1/h", "1/h"),
        tia=lambda a0, w, u: a0 * (1.0 / w - 1.0 / u),
        tia_gradient=lambda a0, w, u: np.array([1.0 / w - 1.0 / u, -a0 / w**2, a0 / u**2]),
    ),
}


def fit_time_activity(
    points: Sequence[TimePoint], nuclide: Nuclide, model: Model = "auto", *, label: str | None = None
) -> TimeActivityFit:
    """Fit ``model`` to the points and integrate it from the administration to infinity.

    ``label`` (organ, series) prefixes every error. ``auto`` takes the fitted
    model with the lowest AICc among those the points allow; with too few
    points for AICc, the simplest fitted model (a fitted clearance is nearer
    the truth than the trapezoid's physical-decay tail); with no fit at all,
    the trapezoid. Where the activity rises after the first point (an organ
    still taking up, as kidneys do for hours), the mono-exponential, which
    only falls, is no candidate: ranked alone (four points leave the
    bi-exponential no AICc), it would win and miss the uptake, doubling a
    kidney's time-integrated activity on the course phantom.
    """
    checked = _checked(points, label)
    if model == "trapezoid":
        return _trapezoid(checked, nuclide, "configured")
    if model in _MODELS:
        return _fit(model, checked, nuclide, label, "configured")
    if model != "auto":
        raise TimeActivityError(f"unknown time-activity model {model!r}", label=label)
    fits, failures = [], []
    for name in _MODELS:
        try:
            fits.append(_fit(name, checked, nuclide, None, ""))
        except TimeActivityFitError as error:
            failures.append(str(error))
    peak = max(range(len(checked)), key=lambda k: checked[k].activity_mbq)
    if peak > 0:
        fits = [f for f in fits if f.model != "mono"]
        rises_to = checked[peak].hours_after_administration
        failures.append(f"mono: the activity rises to its peak at {rises_to:g} h")
    ranked = sorted((f for f in fits if f.aicc is not None), key=lambda f: (f.aicc, len(f.parameters)))
    left_out = [f"{f.model}: {len(checked)} points too few for AICc" for f in fits if f.aicc is None]
    notes = "".join(f"; {note}" for note in (*left_out, *failures))
    if ranked:
        compared = ", ".join(f"{f.model} {f.aicc:.2f}" for f in ranked)
        return _with_selection(ranked[0], f"lowest AICc ({compared}){notes}")
    if fits:
        return _with_selection(fits[0], f"simplest fitted model, no AICc comparison{notes}")
    return _trapezoid(checked, nuclide, f"no exponential fit{notes}")


def _with_selection(fit: TimeActivityFit, selection: str) -> TimeActivityFit:
    return dataclasses.replace(fit, selection=selection)


def _checked(points: Sequence[TimePoint], label: str | None) -> tuple[TimePoint, ...]:
    if not points:
        raise TimeActivityError("no time points", label=label)
    with_uncertainty = [p.uncertainty_mbq is not None for p in points]
    for index, point in enumerate(points):
        hours = point.hours_after_administration
        if not (math.isfinite(hours) and hours >= 0.0):
            raise InvalidTimePointError(
                f"is {hours} h: must be at or after the administration",
                index=index, attribute="hours_after_administration", label=label,
            )
        if index and hours <= points[index - 1].hours_after_administration:
            raise InvalidTimePointError(
                f"is {hours} h, not after the previous point's "
                f"{points[index - 1].hours_after_administration} h: time points must strictly increase",
                index=index, attribute="hours_after_administration", label=label,
            )
        if not (math.isfinite(point.activity_mbq) and point.activity_mbq >= 0.0):
            raise InvalidTimePointError(
                f"is {point.activity_mbq} MBq: must be finite and not negative",
                index=index, attribute="activity_mbq", label=label,
            )
        if with_uncertainty[index] != with_uncertainty[0]:
            raise InvalidTimePointError(
                "is given for some points only: give it for all points or none",
                index=index, attribute="uncertainty_mbq", label=label,
            )
        if point.uncertainty_mbq is not None and not (
            math.isfinite(point.uncertainty_mbq) and point.uncertainty_mbq > 0.0
        ):
            raise InvalidTimePointError(
                f"is {point.uncertainty_mbq} MBq: must be finite and positive",
                index=index, attribute="uncertainty_mbq", label=label,
            )
    return tuple(points)


def _arrays(points: tuple[TimePoint, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    hours = np.array([p.hours_after_administration for p in points], dtype=float)
    activity = np.array([p.activity_mbq for p in points], dtype=float)
    if points[0].uncertainty_mbq is None:
        return hours, activity, None
    return hours, activity, np.array([p.uncertainty_mbq for p in points], dtype=float)


def _starts(model: str, hours: np.ndarray, activity: np.ndarray, physical: float) -> list[tuple[float, ...]]:
    """Starting values from a log-linear fit of the clearance phase (after the peak)."""
    clearance = np.arange(len(hours)) >= int(np.argmax(activity))
    usable = clearance & (activity > 0.0)
    if np.count_nonzero(usable) < 2:
        usable = activity > 0.0
    if np.count_nonzero(usable) < 2:
        return []
    slope, intercept = np.polyfit(hours[usable], np.log(activity[usable]), 1)
    lam = max(-slope, physical * 1.01)
    a0 = math.exp(intercept)
    if model == "mono":
        return [(a0, lam)]
    return [(a0, lam, lam * factor) for factor in (2.0, 5.0, 20.0, 100.0, 1000.0)]


def _fit(
    model: str, points: tuple[TimePoint, ...], nuclide: Nuclide, label: str | None, selection: str
) -> TimeActivityFit:
    shape = _MODELS[model]
    hours, activity, sigma = _arrays(points)
    count = len(shape.names)
    needed = count if sigma is not None else count + 1
    if len(points) < needed:
        raise TimeActivityFitError(
            model,
            f"needs at least {needed} time points for {count} parameters"
            + ("" if sigma is not None else " and an estimate of their uncertainty")
            + f", got {len(points)}",
            label=label,
        )
    physical = nuclide.decay_constant_per_hour
    lower = [0.0] + [physical] * (count - 1)
    best, reasons = None, []
    for start in _starts(model, hours, activity, physical):
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            try:
                values, covariance = curve_fit(
                    shape.function, hours, activity, p0=start, sigma=sigma,
                    absolute_sigma=sigma is not None, bounds=(lower, np.inf),
                    x_scale="jac", max_nfev=2000,
                )
            except (RuntimeError, ValueError, OptimizeWarning) as error:
                reasons.append(str(error))
                continue
        if not np.all(np.isfinite(covariance)):
            reasons.append("parameters not determined by the points (covariance not finite)")
            continue
        cost = _chi_square(activity - shape.function(hours, *values), sigma)
        if best is None or cost < best[0]:
            best = (cost, values, covariance)
    if best is None:
        why = reasons[-1] if reasons else "fewer than two time points with activity above zero"
        raise TimeActivityFitError(model, f"did not converge: {why}", label=label)
    _, values, covariance = best
    errors = np.sqrt(np.diag(covariance))
    gradient = shape.tia_gradient(*values)
    residuals = activity - shape.function(hours, *values)
    return TimeActivityFit(
        model=model,
        nuclide=nuclide,
        points=points,
        parameters=tuple(
            FitParameter(name, float(v), float(e), unit)
            for name, v, e, unit in zip(shape.names, values, errors, shape.units, strict=True)
        ),
        residuals_mbq=tuple(float(r) for r in residuals),
        r_squared=_r_squared(activity, residuals),
        aicc=_aicc(residuals, sigma, float(activity.max()), count),
        time_integrated_activity_mbq_h=float(shape.tia(*values)),
        time_integrated_activity_uncertainty_mbq_h=float(math.sqrt(gradient @ covariance @ gradient)),
        selection=selection,
    )


def _chi_square(residuals: np.ndarray, sigma: np.ndarray | None) -> float:
    scaled = residuals if sigma is None else residuals / sigma
    return float(scaled @ scaled)


def _r_squared(activity: np.ndarray, residuals: np.ndarray) -> float | None:
    spread = float(((activity - activity.mean()) ** 2).sum())
    return None if spread == 0.0 else 1.0 - float(residuals @ residuals) / spread


def _aicc(residuals: np.ndarray, sigma: np.ndarray | None, peak: float, count: int) -> float | None:
    n = len(residuals)
    k = count
    if n - k - 1 <= 0:
        return None
    floor = _RESIDUAL_FLOOR * peak
    floored = np.maximum(np.abs(residuals), floor) if floor > 0.0 else residuals
    rss = _chi_square(floored, sigma)
    if rss == 0.0:
        return None
    return n * math.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def _trapezoid_weights(hours: np.ndarray, physical: float) -> np.ndarray:
    """TIA = weights @ activities: trapezoids from (0, 0) through the points, then A_last / lambda_phys."""
    edges = np.concatenate(([0.0], hours))
    widths = np.diff(edges)
    weights = widths / 2.0
    weights[:-1] += widths[1:] / 2.0
    weights[-1] += 1.0 / physical
    return weights


def _trapezoid(points: tuple[TimePoint, ...], nuclide: Nuclide, selection: str) -> TimeActivityFit:
    hours, activity, sigma = _arrays(points)
    weights = _trapezoid_weights(hours, nuclide.decay_constant_per_hour)
    return TimeActivityFit(
        model="trapezoid",
        nuclide=nuclide,
        points=points,
        parameters=(),
        residuals_mbq=tuple(0.0 for _ in points),
        r_squared=None,
        aicc=None,
        time_integrated_activity_mbq_h=float(weights @ activity),
        time_integrated_activity_uncertainty_mbq_h=(
            None if sigma is None else float(math.sqrt(((weights * sigma) ** 2).sum()))
        ),
        selection=selection,
    )


def _trapezoid_curve(points: tuple[TimePoint, ...], nuclide: Nuclide, hours: np.ndarray) -> np.ndarray:
    times, activity, _ = _arrays(points)
    lines = np.interp(hours, np.concatenate(([0.0], times)), np.concatenate(([0.0], activity)))
    tail = activity[-1] * np.exp(-nuclide.decay_constant_per_hour * np.maximum(hours - times[-1], 0.0))
    return np.where(hours >= times[-1], tail, lines)
