"""The dosimetry course's PDF page, looked at as a person would.

The course is made by hand from real fits (inference.dosimetry) of known
curves: two kidneys (uptake and washout, one time point misaligned), a spleen
(mono-exponential) and a liver (trapezoid). Its text is read back with
poppler's ``pdftotext``, its page rendered with ``pdftoppm`` and its plot
taken out with ``pdfimages``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicomio.codes import structure_code
from dicomio.colours import structure_colour
from dicomio.dose_pdf import DOSE_REPORT_TITLE, ActivityCurve, dose_pdf
from dicomio.dose_records import CourseDoses, FitParameterValue, OrganDose, TimePointActivity
from dicomio.dose_report import DoseReportError
from inference.dosimetry.absorbed_dose import mass_g, self_dose_gy
from inference.dosimetry.nuclides import nuclide
from inference.dosimetry.time_activity import TimePoint, activity_curve, fit_time_activity

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")

LU = nuclide("Lu-177")
ADMINISTRATION = datetime(2026, 12, 1, 9, 30)
CREATED = datetime(2026, 12, 4, 16, 5, 12)
SCHEDULE = (0.5, 6.0, 24.0, 72.0, 168.0)
MISALIGNMENT = "SPECT shifted 9.0 mm from its CT around the organ (activity 35 % below the neighbours' trend)"
DISCLAIMER = "Research use only.\nDoses are estimates <not for treatment decisions> & need checking."
SAMPLED_HOURS = tuple(float(h) for h in np.linspace(0.0, 200.0, 201))
DPI = 100


def _kidney(hours: float) -> float:
    return 60.0 * (math.exp(-math.log(2.0) / 50.0 * hours) - math.exp(-1.5 * hours))


def _spleen(hours: float) -> float:
    return 25.0 * math.exp(-(LU.decay_constant_per_hour + math.log(2.0) / 80.0) * hours)


def _organ(
    name: str, truth, model: str, volume_ml: float, *, misaligned: int | None = None, scale: float = 1.0
) -> tuple[OrganDose, ActivityCurve]:
    """An organ with activities off the truth by a few per cent (seeded), fitted as the course fits."""
    rng = np.random.default_rng(len(name))
    activities = [scale * truth(t) * (1.0 + 0.03 * rng.standard_normal()) for t in SCHEDULE]
    fit = fit_time_activity([TimePoint(t, a) for t, a in zip(SCHEDULE, activities, strict=True)], LU, model)
    density = 1.06 if name.startswith("kidney") else 1.05
    mass = mass_g(volume_ml, density)
    dose = self_dose_gy(fit.time_integrated_activity_mbq_h, mass, LU)
    error = fit.time_integrated_activity_uncertainty_mbq_h
    code = structure_code(name)
    organ = OrganDose(
        structure=code,
        volume_ml=volume_ml,
        density_g_per_ml=density,
        mass_g=mass,
        mask_extension_sigma_mm=3.0,
        time_points=tuple(
            TimePointActivity(
                hours_after_administration=t,
                acquisition=ADMINISTRATION + timedelta(hours=t),
                spect_series_instance_uid=f"1.2.826.0.1.3680043.8.498.{index + 1}",
                activity_mbq=a,
                mean_concentration_bq_per_ml=a * 1e6 / volume_ml,
                misalignment=MISALIGNMENT if index == misaligned else None,
            )
            for index, (t, a) in enumerate(zip(SCHEDULE, activities, strict=True))
        ),
        fit_model={"mono": "mono-exponential", "bi": "bi-exponential", "trapezoid": "trapezoid"}[fit.model],
        fit_selection=fit.selection,
        fit_parameters=tuple(FitParameterValue(p.name, p.value, p.standard_error, p.unit)
                             for p in fit.parameters),
        r_squared=fit.r_squared,
        time_integrated_activity_mbq_h=fit.time_integrated_activity_mbq_h,
        time_integrated_activity_uncertainty_mbq_h=error,
        absorbed_dose_gy=dose,
        absorbed_dose_uncertainty_gy=(
            None if error is None else dose * error / fit.time_integrated_activity_mbq_h
        ),
    )
    sampled = activity_curve(fit, np.array(SAMPLED_HOURS))
    return organ, ActivityCurve(code, SAMPLED_HOURS, tuple(float(a) for a in sampled))


def _course() -> tuple[CourseDoses, tuple[ActivityCurve, ...]]:
    organs, curves = zip(
        _organ("kidney_left", _kidney, "bi", 155.0, misaligned=2),
        _organ("kidney_right", _kidney, "auto", 160.0, scale=0.8),
        _organ("spleen", _spleen, "mono", 190.0),
        _organ("liver", _spleen, "trapezoid", 1600.0, scale=3.0),
        strict=True,
    )
    course = CourseDoses(
        patient_id="DOSI-0001",
        radionuclide="Lu-177",
        radiopharmaceutical="Lu-177-DOTATOC",
        administration=ADMINISTRATION,
        administered_activity_mbq=7400.0,
        organs=tuple(organs),
    )
    return course, tuple(curves)


@pytest.fixture(scope="module")
def course() -> tuple[CourseDoses, tuple[ActivityCurve, ...]]:
    return _course()


@pytest.fixture(scope="module")
def pdf(course) -> bytes:
    doses, curves = course
    return dose_pdf(doses, curves, created=CREATED, disclaimer=DISCLAIMER)


def _pdftotext(pdf: bytes, tmp_path: Path) -> str:
    """The document's words in the order they are drawn (a table cell's lines together), whitespace runs
    (line breaks) as one space."""
    path = tmp_path / "course.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(["pdftotext", "-raw", "-enc", "UTF-8", str(path), "-"],
                          capture_output=True, check=True).stdout
    return " ".join(text.decode("utf-8").split())


def _pages(pdf: bytes, tmp_path: Path) -> int:
    path = tmp_path / "pages.pdf"
    path.write_bytes(pdf)
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, check=True, text=True).stdout
    assert re.search(r"Page size:\s+595\.\d* x 841\.\d* pts \(A4\)", info), info
    return int(re.search(r"Pages:\s+(\d+)", info).group(1))


def _expected(value: float, uncertainty: float | None) -> str:
    """As GUM 7.2.6 has it: the uncertainty to two significant digits, the value to the same decimal."""
    assert uncertainty is not None and uncertainty > 0
    decimals = max(0, 1 - math.floor(math.log10(uncertainty)))
    return f"{value:.{decimals}f} ± {uncertainty:.{decimals}f}"


def test_page_names_the_course_its_organs_doses_and_the_misalignment(pdf, course, tmp_path):
    doses, _ = course
    assert _pages(pdf, tmp_path) == 1
    text = _pdftotext(pdf, tmp_path)
    for expected in (DOSE_REPORT_TITLE, "Patient ID DOSI-0001", "Radiopharmaceutical Lu-177-DOTATOC",
                     "Radionuclide Lu-177", "Administered activity 7400 MBq",
                     "Administration 2026-12-01 09:30",
                     "TIA (MBq·h)", "Absorbed dose (Gy)", "Volume (ml)", "Mass (g)", "R²",
                     "Report made by segnode on 2026-12-04 16:05.", "by a Gaussian of sigma 3 mm",
                     "Research use only.", "<not for treatment decisions> & need checking."):
        assert expected in text, expected
    for organ in doses.organs:
        assert organ.structure.label in text
        assert organ.fit_model in text
        assert f"{organ.volume_ml:.1f}" in text
        assert f"{organ.mass_g:.1f} ({organ.density_g_per_ml:g} g/ml)" in text
        if organ.absorbed_dose_uncertainty_gy is not None:
            assert _expected(organ.absorbed_dose_gy, organ.absorbed_dose_uncertainty_gy) in text
            assert _expected(organ.time_integrated_activity_mbq_h,
                             organ.time_integrated_activity_uncertainty_mbq_h) in text
    kidney = doses.organs[0]
    assert kidney.fit_model == "bi-exponential" and kidney.r_squared is not None
    assert f"{kidney.r_squared:.4f}" in text
    a0 = kidney.fit_parameters[0]
    assert f"A0={float(f'{a0.value:.4g}')!r}±{float(f'{a0.standard_error:.2g}')!r} MBq" in text
    # The liver's trapezoid has no parameters, no R² and, without point uncertainties, no TIA uncertainty.
    liver = doses.organs[3]
    assert liver.fit_model == "trapezoid" and liver.absorbed_dose_uncertainty_gy is None
    assert f"{liver.absorbed_dose_gy:.{max(0, 2 - math.floor(math.log10(liver.absorbed_dose_gy)))}f}" in text
    assert f"1. Left kidney at 24 h (acquired 2026-12-02 09:30, SPECT series 1.2.826.0.1.3680043.8.498.3): " \
           f"{MISALIGNMENT}" in text


def test_plot_draws_every_organ_in_its_colour(pdf, course, tmp_path):
    doses, _ = course
    path = tmp_path / "course.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-png", "-r", str(DPI), "-f", "1", "-l", "1", str(path),
                    str(tmp_path / "page")], check=True)
    page = np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("RGB")).astype(int)
    assert page.shape[:2] == (math.ceil(297 / 25.4 * DPI), math.ceil(210 / 25.4 * DPI))
    # The plot: the upper part of the page below the identification table, many colours (lines, markers).
    plot = page[round(0.2 * page.shape[0]):round(0.55 * page.shape[0])]
    assert len(np.unique(plot.reshape(-1, 3), axis=0)) > 200
    for organ in doses.organs:
        near = np.all(np.abs(plot - np.array(structure_colour(organ.structure))) <= 10, axis=-1)
        # A curve across the plot is several hundred pixels; a legend entry is under a hundred.
        assert np.count_nonzero(near) > 300, organ.structure.name
    # The embedded plot itself.
    listing = subprocess.run(["pdfimages", "-list", str(path)],
                             capture_output=True, check=True, text=True).stdout
    kinds = [line.split()[2] for line in listing.splitlines()[2:]]
    assert kinds.count("image") == 1, listing  # and its alpha channel, an smask
    subprocess.run(["pdfimages", "-png", str(path), str(tmp_path / "image")], check=True)
    extracted = Image.open(tmp_path / f"image-{kinds.index('image'):03d}.png")
    picture = np.asarray(extracted.convert("RGB")).astype(int)
    assert picture.shape[1] > 1000  # 180 mm at 200 dpi
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 500


def _plot_picture(pdf: bytes, folder: Path) -> np.ndarray:
    folder.mkdir()
    path = folder / "course.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdfimages", "-png", "-f", "1", "-l", "1", str(path), str(folder / "image")], check=True)
    return np.asarray(Image.open(folder / "image-000.png").convert("RGB")).astype(int)


def test_a_misaligned_point_is_drawn_apart(pdf, course, tmp_path):
    doses, curves = course
    organs = tuple(
        dataclasses.replace(o, time_points=tuple(dataclasses.replace(p, misalignment=None)
                                                 for p in o.time_points))
        for o in doses.organs
    )
    aligned = dataclasses.replace(doses, organs=organs)
    plain = dose_pdf(aligned, curves, created=CREATED, disclaimer=DISCLAIMER)
    text = _pdftotext(plain, tmp_path)
    assert "No organ was found misaligned at any time point." in text
    assert "Misaligned" not in text
    flagged, unflagged = _plot_picture(pdf, tmp_path / "flagged"), _plot_picture(plain, tmp_path / "plain")
    assert flagged.shape == unflagged.shape
    changed = np.any(flagged != unflagged, axis=-1)
    # The hollow, numbered marker and the key's third entry: a few small spots, the curves unchanged.
    assert 100 < np.count_nonzero(changed) < 0.02 * changed.size


def test_the_same_course_gives_the_same_bytes(pdf, course):
    doses, curves = course
    again = _course()
    assert again[0] == doses
    assert dose_pdf(again[0], again[1], created=CREATED, disclaimer=DISCLAIMER) == pdf
    later = dose_pdf(doses, curves, created=CREATED + timedelta(seconds=1), disclaimer=DISCLAIMER)
    assert later != pdf


def test_hostile_and_foreign_text_prints_literally(course, tmp_path):
    doses, curves = course
    kidney = doses.organs[0]
    strange_label = "腎臓 <i>links</i> & Niere"
    organ = dataclasses.replace(
        kidney,
        structure=dataclasses.replace(kidney.structure, label=strange_label),
        fit_selection="configured <br/> &amp; <font size=40>",
        time_points=tuple(dataclasses.replace(p, misalignment="<script>alert(1)</script> & Ω > Ж")
                          if p.misalignment else p for p in kidney.time_points),
    )
    hostile = dataclasses.replace(
        doses, patient_id="<b>&amp;</b>", radiopharmaceutical="177Lu-<DOTATOC> & 山田",
        organs=(organ, *doses.organs[1:]),
    )
    curve = dataclasses.replace(curves[0], structure=organ.structure)
    pdf = dose_pdf(hostile, (curve, *curves[1:]), created=CREATED, disclaimer="Ελληνικά <u>&</u>")
    text = _pdftotext(pdf, tmp_path)
    for expected in ("Patient ID <b>&amp;</b>", "177Lu-<DOTATOC> & 山田", strange_label,
                     "configured <br/> &amp; <font size=40>", "<script>alert(1)</script> & Ω > Ж",
                     "Ελληνικά <u>&</u>"):
        assert expected in text, expected
    # Every page's footer names the patient as given.
    assert text.count("<b>&amp;</b> — Organ dosimetry report, page 1") == 1


def test_many_organs_take_a_second_page(tmp_path):
    names = ("kidney_left", "kidney_right", "spleen", "liver", "urinary_bladder", "adrenal_gland_left",
             "adrenal_gland_right", "pancreas", "stomach", "gallbladder", "lung_upper_lobe_left",
             "lung_upper_lobe_right", "heart", "duodenum", "esophagus")
    made = [_organ(name, _kidney, "bi", 150.0) for name in names]
    course = CourseDoses("DOSI-0002", "Lu-177", "Lu-177-PSMA-617", ADMINISTRATION, 7400.0,
                         tuple(organ for organ, _ in made))
    pdf = dose_pdf(course, [curve for _, curve in made], created=CREATED, disclaimer="")
    assert _pages(pdf, tmp_path) == 2
    text = _pdftotext(pdf, tmp_path)
    assert all(organ.structure.label in text for organ, _ in made)
    assert "page 2" in text


def test_curves_must_match_the_organs(course):
    doses, curves = course
    with pytest.raises(DoseReportError, match=r"'DOSI-0001'.*no activity curve of organ\(s\) liver"):
        dose_pdf(doses, curves[:3], created=CREATED, disclaimer="")
    with pytest.raises(DoseReportError, match="two activity curves of organ 'spleen'"):
        dose_pdf(doses, (*curves, curves[2]), created=CREATED, disclaimer="")
    stranger = dataclasses.replace(curves[0], structure=structure_code("pancreas"))
    with pytest.raises(DoseReportError, match="'pancreas', which is no organ of the course"):
        dose_pdf(doses, (*curves, stranger), created=CREATED, disclaimer="")
    with pytest.raises(ValueError, match="'spleen': 2 times and 1 activities"):
        ActivityCurve(structure_code("spleen"), (0.0, 1.0), (2.0,))
    with pytest.raises(ValueError, match="times must strictly increase"):
        ActivityCurve(structure_code("spleen"), (0.0, 2.0, 1.0), (0.0, 2.0, 1.0))
