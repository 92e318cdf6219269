"""Nuclide data, time-activity fits, time-integrated activity and MIRD self-dose against analytic truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.dosimetry.absorbed_dose import mass_g, self_dose_gy
from inference.dosimetry.nuclides import (
    UnknownNuclideError,
    decay_constant_per_hour,
    half_life_hours,
    nuclide,
)
from inference.dosimetry.time_activity import (
    InvalidTimePointError,
    TimeActivityError,
    TimeActivityFitError,
    TimePoint,
    activity_curve,
    fit_time_activity,
)

LU = nuclide("Lu-177")
LAMBDA_PHYS = LU.decay_constant_per_hour
SCHEDULE = (0.5, 6.0, 24.0, 72.0)

# A kidney after 7.5 GBq 177Lu-DOTATOC: uptake within about an hour, effective half-life 50 h.
A0 = 120.0
WASHOUT = math.log(2.0) / 50.0
UPTAKE = 2.0
BI_TIA = A0 * (1.0 / WASHOUT - 1.0 / UPTAKE)


def bi_activity(hours):
    return A0 * (np.exp(-WASHOUT * np.asarray(hours)) - np.exp(-UPTAKE * np.asarray(hours)))


def mono_activity(hours):
    return 80.0 * np.exp(-(LAMBDA_PHYS + math.log(2.0) / 60.0) * np.asarray(hours))


def noisy_points(curve, schedule, relative_sd, rng):
    truth = curve(np.array(schedule))
    measured = truth * (1.0 + relative_sd * rng.standard_normal(len(schedule)))
    return [
        TimePoint(t, float(a), float(relative_sd * s))
        for t, a, s in zip(schedule, measured, truth, strict=True)
    ]


@pytest.mark.parametrize(
    "name", ["Lu-177", "177Lu", "lu177", "Lutetium-177", "^177^Lutetium", "447553000", " LU-177 "]
)
def test_nuclide_answers_to_names_and_snomed_code(name):
    # 447553000 = SCT "^177^Lutetium", PS3.16 CID 18 "Radiopharmaceutical Isotope".
    assert nuclide(name) is LU


def test_nuclide_data_match_published_values():
    # NNDC/ENSDF 6.647 d; total electron energy 147.9 keV per decay (Alcocer-Avila et al. 2020, Table 1).
    assert LU.half_life_hours == pytest.approx(6.647 * 24.0)
    assert LU.electron_energy_mev_per_decay == pytest.approx(0.1479, abs=5e-5)
    assert LU.decay_factor(LU.half_life_hours) == pytest.approx(0.5)
    assert nuclide("1368003").name == "I-131"
    assert nuclide("^90^Yttrium").name == "Y-90"
    assert nuclide("Y-90").electron_energy_mev_per_decay == pytest.approx(0.933, abs=1e-3)
    assert half_life_hours(decay_constant_per_hour(50.0)) == pytest.approx(50.0)


def test_unknown_nuclide_is_named():
    with pytest.raises(UnknownNuclideError, match="'Ra-223'.*Lu-177"):
        nuclide("Ra-223")


@pytest.mark.parametrize("schedule", [SCHEDULE, SCHEDULE + (168.0,)])
def test_bi_exponential_fits_back_noise_free(schedule):
    points = [TimePoint(t, float(a)) for t, a in zip(schedule, bi_activity(schedule), strict=True)]
    fit = fit_time_activity(points, LU, "bi", label="left kidney")
    assert fit.model == "bi"
    assert fit.parameter("A0").value == pytest.approx(A0, rel=0.01)
    assert fit.parameter("lambda_washout").value == pytest.approx(WASHOUT, rel=0.01)
    assert fit.parameter("lambda_uptake").value == pytest.approx(UPTAKE, rel=0.01)
    assert fit.parameter("lambda_uptake").unit == "1/h"
    tia = fit.parameter("A0").value * (
        1.0 / fit.parameter("lambda_washout").value - 1.0 / fit.parameter("lambda_uptake").value
    )
    assert fit.time_integrated_activity_mbq_h == pytest.approx(tia, rel=1e-12)
    assert fit.time_integrated_activity_mbq_h == pytest.approx(BI_TIA, rel=1e-4)
    assert fit.r_squared == pytest.approx(1.0, abs=1e-9)
    assert max(abs(r) for r in fit.residuals_mbq) < 1e-4
    assert fit.activity_mbq(48.0) == pytest.approx(float(bi_activity(48.0)), rel=1e-4)


def test_noisy_fit_uncertainty_covers_the_truth():
    """Over many seeded courses, |TIA - truth| <= 1 standard uncertainty about 68 % of the time."""
    rng = np.random.default_rng(16)
    schedule = SCHEDULE + (168.0,)
    within, scores = 0, []
    for _ in range(100):
        fit = fit_time_activity(noisy_points(bi_activity, schedule, 0.05, rng), LU, "bi")
        sd = fit.time_integrated_activity_uncertainty_mbq_h
        assert 0.0 < sd < 0.2 * BI_TIA
        scores.append((fit.time_integrated_activity_mbq_h - BI_TIA) / sd)
        within += abs(scores[-1]) <= 1.0
    assert 55 <= within <= 82
    assert max(abs(s) for s in scores) < 4.0


def test_auto_picks_mono_for_mono_exponential_data():
    rng = np.random.default_rng(7)
    schedule = (1.0, 6.0, 24.0, 72.0, 168.0)
    for _ in range(5):
        fit = fit_time_activity(noisy_points(mono_activity, schedule, 0.03, rng), LU, "auto")
        assert fit.model == "mono", fit.selection
        assert "lowest AICc" in fit.selection and "bi" in fit.selection
        lam = fit.parameter("lambda_eff").value
        assert fit.time_integrated_activity_mbq_h == pytest.approx(fit.parameter("A0").value / lam)
    exact = [TimePoint(t, float(a)) for t, a in zip(schedule, mono_activity(schedule), strict=True)]
    assert fit_time_activity(exact, LU, "auto").model == "mono"


def test_auto_picks_bi_for_uptake_and_washout():
    schedule = SCHEDULE + (168.0,)
    points = noisy_points(bi_activity, schedule, 0.02, np.random.default_rng(3))
    fit = fit_time_activity(points, LU, "auto")
    assert fit.model == "bi", fit.selection
    assert fit.aicc is not None


def test_auto_with_four_points_says_bi_was_not_compared():
    points = [TimePoint(t, float(a)) for t, a in zip(SCHEDULE, mono_activity(SCHEDULE), strict=True)]
    fit = fit_time_activity(points, LU, "auto")
    assert fit.model == "mono"
    assert "bi: 4 points too few for AICc" in fit.selection


def test_auto_with_four_points_of_an_uptake_never_takes_the_mono_exponential():
    """Four points leave bi no AICc; mono, ranked alone, would miss the uptake."""
    points = [TimePoint(t, float(a)) for t, a in zip(SCHEDULE, bi_activity(np.array(SCHEDULE)), strict=True)]
    fit = fit_time_activity(points, LU, "auto")
    assert fit.model == "bi", fit.selection
    assert "mono: the activity rises to its peak at 6 h" in fit.selection
    assert fit.time_integrated_activity_mbq_h == pytest.approx(BI_TIA, rel=1e-3)
    mono = fit_time_activity(points, LU, "mono")
    # What auto used to return: 26 % off here.
    assert abs(mono.time_integrated_activity_mbq_h / BI_TIA - 1) > 0.1


def test_auto_falls_back_to_trapezoid_without_activity():
    points = [TimePoint(t, 0.0) for t in SCHEDULE]
    fit = fit_time_activity(points, LU, "auto")
    assert fit.model == "trapezoid"
    assert fit.time_integrated_activity_mbq_h == 0.0
    assert "no exponential fit" in fit.selection and "above zero" in fit.selection


def test_trapezoid_against_hand_computation():
    points = [TimePoint(1.0, 10.0, 1.0), TimePoint(4.0, 20.0, 1.0), TimePoint(24.0, 8.0, 1.0)]
    fit = fit_time_activity(points, LU, "trapezoid")
    # 0-1 h from zero: 1 x 10 / 2 = 5; 1-4 h: 3 x 30 / 2 = 45; 4-24 h: 20 x 28 / 2 = 280;
    # tail: 8 MBq x 159.528 h / ln 2 = 1841.2020 MBq h.
    assert fit.time_integrated_activity_mbq_h == pytest.approx(2171.2020, rel=1e-7)
    # Weights of the points: 1/2 + 3/2 = 2; 3/2 + 20/2 = 11.5; 20/2 + 230.1503 = 240.1503.
    assert fit.time_integrated_activity_uncertainty_mbq_h == pytest.approx(
        math.sqrt(2.0**2 + 11.5**2 + 240.1503**2), rel=1e-6
    )
    assert fit.activity_mbq(0.5) == pytest.approx(5.0)
    assert fit.activity_mbq(24.0 + LU.half_life_hours) == pytest.approx(4.0)
    assert fit.r_squared is None and fit.parameters == ()
    no_sd = [TimePoint(p.hours_after_administration, p.activity_mbq) for p in points]
    assert fit_time_activity(no_sd, LU, "trapezoid").time_integrated_activity_uncertainty_mbq_h is None


def test_effective_decay_is_never_slower_than_physical_decay():
    rising = [TimePoint(1.0, 10.0), TimePoint(24.0, 20.0), TimePoint(72.0, 30.0)]
    fit = fit_time_activity(rising, LU, "mono")
    assert fit.parameter("lambda_eff").value == pytest.approx(LAMBDA_PHYS, rel=1e-6)


@pytest.mark.parametrize(
    ("points", "pattern"),
    [
        ([TimePoint(1.0, 5.0), TimePoint(24.0, 4.0), TimePoint(24.0, 3.0)],
         "time point 3: hours_after_administration is 24.0 h, not after"),
        ([TimePoint(6.0, 5.0), TimePoint(1.0, 4.0)], "time point 2: hours_after_administration"),
        ([TimePoint(-1.0, 5.0)], "time point 1: hours_after_administration is -1.0 h"),
        ([TimePoint(1.0, 5.0), TimePoint(2.0, -0.1)], "time point 2: activity_mbq is -0.1 MBq"),
        ([TimePoint(1.0, float("nan"))], "time point 1: activity_mbq"),
        ([TimePoint(1.0, 5.0, 0.5), TimePoint(2.0, 4.0)],
         "time point 2: uncertainty_mbq .* all points or none"),
        ([TimePoint(1.0, 5.0, 0.0)], "time point 1: uncertainty_mbq is 0.0"),
    ],
)
def test_bad_points_are_named(points, pattern):
    with pytest.raises(InvalidTimePointError, match=f"^right kidney, series 1.2.3: {pattern}"):
        fit_time_activity(points, LU, "trapezoid", label="right kidney, series 1.2.3")


def test_too_few_points_for_the_model():
    points = [TimePoint(t, float(a)) for t, a in zip(SCHEDULE[:3], bi_activity(SCHEDULE[:3]), strict=True)]
    with pytest.raises(TimeActivityFitError, match="^spleen: bi fit: needs at least 4 time points .* got 3"):
        fit_time_activity(points, LU, "bi", label="spleen")
    zeros = [TimePoint(t, 0.0) for t in SCHEDULE]
    with pytest.raises(TimeActivityFitError, match="^liver: mono fit: did not converge: .* above zero"):
        fit_time_activity(zeros, LU, "mono", label="liver")
    with pytest.raises(TimeActivityError, match="no time points"):
        fit_time_activity([], LU, "mono")
    with pytest.raises(TimeActivityError, match="unknown time-activity model 'tri'"):
        fit_time_activity(points, LU, "tri")  # type: ignore[arg-type]


def test_self_dose_of_a_kidney_by_hand():
    # One kidney of ICRP Publication 89's reference adult male (kidneys 310 g). By hand:
    # 7900 MBq h x 3.6e9 decays/(MBq h) = 2.844e13 decays; x 0.147924 MeV = 4.2069586e12 MeV;
    # x 1.602176634e-13 J/MeV = 0.6740291 J; / 0.155 kg = 4.348575 Gy.
    assert self_dose_gy(7900.0, 155.0, LU) == pytest.approx(4.348575, rel=1e-6)
    assert mass_g(146.0, 1.06) == pytest.approx(154.76)
    assert self_dose_gy(0.0, 155.0, LU) == 0.0


def test_fitted_course_gives_the_analytic_dose():
    points = [TimePoint(t, float(a)) for t, a in zip(SCHEDULE, bi_activity(SCHEDULE), strict=True)]
    fit = fit_time_activity(points, LU, "bi")
    kidney_g = mass_g(150.0, 1.06)
    analytic = BI_TIA * 3.6e9 * LU.electron_energy_mev_per_decay * 1.602176634e-13 / (kidney_g / 1000.0)
    assert self_dose_gy(fit.time_integrated_activity_mbq_h, kidney_g, LU) == pytest.approx(analytic, rel=1e-4)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: self_dose_gy(-1.0, 150.0, LU), "time-integrated activity .* -1.0 MBq h"),
        (lambda: self_dose_gy(100.0, 0.0, LU), "organ mass must be positive, got 0.0 g"),
        (lambda: mass_g(0.0, 1.06), "organ volume must be positive"),
        (lambda: mass_g(150.0, float("nan")), "organ density must be positive"),
    ],
)
def test_dose_inputs_are_checked(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_activity_curve_of_the_exponentials_is_their_closed_form():
    hours = np.linspace(0.0, 400.0, 81)
    schedule = SCHEDULE + (168.0,)
    mono = fit_time_activity(
        [TimePoint(t, float(a)) for t, a in zip(schedule, mono_activity(schedule), strict=True)], LU, "mono"
    )
    a0, lam = (mono.parameter(name).value for name in ("A0", "lambda_eff"))
    np.testing.assert_allclose(activity_curve(mono, hours), a0 * np.exp(-lam * hours), rtol=1e-12)
    np.testing.assert_allclose(activity_curve(mono, hours), mono_activity(hours), rtol=1e-5)
    bi = fit_time_activity(
        [TimePoint(t, float(a)) for t, a in zip(schedule, bi_activity(schedule), strict=True)], LU, "bi"
    )
    a0, washout, uptake = (bi.parameter(n).value for n in ("A0", "lambda_washout", "lambda_uptake"))
    closed = a0 * (np.exp(-washout * hours) - np.exp(-uptake * hours))
    np.testing.assert_allclose(activity_curve(bi, hours), closed, rtol=1e-12)
    np.testing.assert_allclose(activity_curve(bi, hours), bi_activity(hours), rtol=1e-3, atol=1e-6)
    assert bi.activity_mbq(45.0) == pytest.approx(float(closed[9]), rel=1e-12)
    # Integrated numerically to 60 physical half-lives, the curve gives the closed-form TIA.
    long = np.linspace(0.0, 60.0 * LU.half_life_hours, 400_001)
    for fit in (mono, bi):
        integral = np.trapezoid(activity_curve(fit, long), long)
        assert integral == pytest.approx(fit.time_integrated_activity_mbq_h, rel=1e-3)


def test_activity_curve_of_the_trapezoid_joins_the_points_then_decays_physically():
    points = [TimePoint(1.0, 10.0), TimePoint(4.0, 20.0), TimePoint(24.0, 8.0)]
    fit = fit_time_activity(points, LU, "trapezoid")
    half = LU.half_life_hours
    at = np.array([0.0, 0.5, 1.0, 2.5, 4.0, 14.0, 24.0, 24.0 + half, 24.0 + 3.0 * half])
    np.testing.assert_allclose(activity_curve(fit, at), [0.0, 5.0, 10.0, 15.0, 20.0, 14.0, 8.0, 4.0, 1.0],
                               rtol=1e-12)
    # From the administration to 60 physical half-lives after the last point (the tail left out is
    # 8 MBq x 2^-60 / lambda_phys), the numerical integral is the TIA's closed form.
    long = np.unique(np.concatenate([np.linspace(0.0, 24.0 + 60.0 * half, 400_001), [1.0, 4.0, 24.0]]))
    integral = np.trapezoid(activity_curve(fit, long), long)
    assert integral == pytest.approx(fit.time_integrated_activity_mbq_h, rel=1e-3)
    assert fit.activity_mbq(14.0) == pytest.approx(14.0)
