"""A dosimetry course on paper: each organ's time-activity curve, its fit and its absorbed dose.

The SR (dicomio/dose_report.py) and the CSV (dicomio/dose_csv.py) carry the
numbers for programs; this page is for the physicist and physician who check
them: the measured activities beside the fitted curves show at a glance a
fit that misses a point or a point that is off, and a time point whose SPECT
and CT do not line up around an organ is drawn apart and explained.

It is made as the segmentation report is, with that module's helpers
(dicomio/pdf_report.py): matplotlib draws the curves onto an Agg canvas,
reportlab lays out the page, in DejaVu Sans with CID fonts for Chinese,
Japanese and Korean; in invariant mode, the same course dated the same
``created`` gives the same bytes, so a retried job writes the same file.
Each organ is drawn in its colour of dicomio.colours, as in every other
picture; organs that share a colour (a left and a right kidney) differ in
line style and marker. The figure holds no text from the course: organs are
named in a legend set by reportlab (so that every name, in any script, is
printed and can be searched), and misaligned points are numbered in the
figure and explained in a list under it.

An uncertain value is rounded to the decimal of its uncertainty's second
significant digit ("it usually suffices to quote u_c(y) [...] to at most two
significant digits", JCGM 100:2008, Evaluation of measurement data - Guide to
the expression of uncertainty in measurement, 7.2.6); a value without one to
three significant digits.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from matplotlib.lines import Line2D
from reportlab.graphics.shapes import Circle, Drawing, Line, Polygon, Rect
from reportlab.lib import colors
from reportlab.lib.units import mm
from reportlab.platypus import Flowable, Image, Paragraph, Table, TableStyle

from dicomio.codes import StructureCode
from dicomio.colours import structure_colour
from dicomio.dose_csv import format_fit_parameter
from dicomio.dose_records import CourseDoses, FitParameterValue, OrganDose, TimePointActivity
from dicomio.dose_report import DoseReportError, check_course_text
from dicomio.pdf_report import (
    DATE_TIME_FORMAT,
    STYLES,
    a4_document,
    disclaimer_block,
    figure_png,
    grid_table,
    markup,
    new_figure,
    page_footer,
    register_fonts,
)
from dicomio.seg import MANUFACTURER

__all__ = ["DOSE_REPORT_TITLE", "ActivityCurve", "dose_pdf"]

DOSE_REPORT_TITLE: Final = "Organ dosimetry report"
#: Printed size of the time-activity plot (width, height).
_PLOT_SIZE: Final = (180 * mm, 78 * mm)
_LINE_WIDTH: Final = 1.2
#: How organs of one colour differ, in the course's order: dashes (on, off, in line widths) and marker.
_VARIANTS: Final = (((), "o"), ((4.0, 2.0), "s"), ((1.0, 1.5), "^"), ((6.0, 2.0, 1.0, 2.0), "D"))
_MARKER_SIZE: Final = 4.5
_MISALIGNED_SIZE: Final = 8.0


@dataclass(frozen=True)
class ActivityCurve:
    """One organ's fitted time-activity curve, sampled for drawing (hours after the administration, MBq)."""

    structure: StructureCode
    hours: tuple[float, ...]
    activity_mbq: tuple[float, ...]

    def __post_init__(self) -> None:
        where = f"activity curve of {self.structure.name!r}"
        if len(self.hours) != len(self.activity_mbq) or len(self.hours) < 2:
            raise ValueError(f"{where}: {len(self.hours)} times and {len(self.activity_mbq)} activities; "
                             "the same number, at least two, are needed")
        if not all(math.isfinite(value) for value in (*self.hours, *self.activity_mbq)):
            raise ValueError(f"{where}: times and activities must be finite")
        if any(later <= earlier for earlier, later in zip(self.hours, self.hours[1:], strict=False)):
            raise ValueError(f"{where}: times must strictly increase")


def dose_pdf(
    course: CourseDoses, curves: Sequence[ActivityCurve], *, created: datetime, disclaimer: str
) -> bytes:
    """The course as a PDF document (A4; a second page where many organs need it).

    ``curves`` holds one fitted curve per organ of the course, in any order;
    ``created`` dates the document.

    Raises
    ------
    DoseReportError
        If an organ has no curve or two, or a curve names no organ of the
        course; or the course's text is refused as in the SR
        (:func:`dicomio.dose_report.check_course_text`).
    """
    check_course_text(course)
    fitted = _curves_by_organ(course, curves)
    register_fonts()
    buffer = io.BytesIO()
    document = a4_document(buffer, title=DOSE_REPORT_TITLE,
                           subject=f"{course.radiopharmaceutical} ({course.radionuclide})")
    styles = _organ_styles(course.organs)
    misaligned = [(organ, point) for organ in course.organs for point in organ.time_points
                  if point.misalignment is not None]
    story: list[Flowable] = [
        Paragraph(DOSE_REPORT_TITLE, STYLES["title"]),
        _identification(course),
        Paragraph("Time-activity curves", STYLES["heading"]),
        Image(io.BytesIO(_plot(course, fitted, styles, misaligned)),
              width=_PLOT_SIZE[0], height=_PLOT_SIZE[1]),
        _legend(course.organs, styles),
        *_misalignments(misaligned),
        *_not_assessable(course.organs),
        Paragraph("Organs", STYLES["heading"]),
        _organ_table(course.organs),
        Paragraph(
            "Mass: CT volume times the density in brackets. Model: the curve fitted to the organ's "
            "activities and why it was used; parameters with their standard errors. TIA: time-integrated "
            "activity, the fitted curve's integral from the administration to infinity. Absorbed dose: "
            "MIRD self-dose, the mean energy per decay of the nuclide's electrons deposited in the organ. "
            "Uncertainties are one standard uncertainty of the fit; a dash: none.", STYLES["small"],
        ),
        Paragraph(f"{_extension_note(course.organs)} Report made by {MANUFACTURER} on "
                  f"{created:{DATE_TIME_FORMAT}}.", STYLES["body"]),
        *disclaimer_block(disclaimer),
    ]
    footer = page_footer(course.patient_id, DOSE_REPORT_TITLE, created)
    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def _curves_by_organ(course: CourseDoses, curves: Sequence[ActivityCurve]) -> dict[str, ActivityCurve]:
    where = f"dose report of patient {course.patient_id!r}"
    organs = {organ.structure.name for organ in course.organs}
    fitted: dict[str, ActivityCurve] = {}
    for curve in curves:
        name = curve.structure.name
        if name not in organs:
            raise DoseReportError(f"{where}: activity curve of {name!r}, which is no organ of the course "
                                  f"({', '.join(sorted(organs))})")
        if name in fitted:
            raise DoseReportError(f"{where}: two activity curves of organ {name!r}")
        fitted[name] = curve
    missing = sorted(organs - set(fitted))
    if missing:
        raise DoseReportError(f"{where}: no activity curve of organ(s) {', '.join(missing)}")
    return fitted


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------


def _decimals(reference: float, digits: int) -> int:
    """Decimals that show `digits` significant digits of `reference` (none for whole numbers that long)."""
    if reference == 0.0 or not math.isfinite(reference):
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(reference))))


def _number(value: float, digits: int = 3) -> str:
    return f"{value:.{_decimals(value, digits)}f}"


def _measured(value: float, uncertainty: float | None) -> str:
    """``value ± uncertainty``, both to the uncertainty's second significant digit; three significant
    digits and no ``±`` without a (positive, finite) uncertainty."""
    if uncertainty is None or not (math.isfinite(uncertainty) and uncertainty > 0.0):
        return _number(value)
    decimals = _decimals(uncertainty, 2)
    return f"{value:.{decimals}f} ± {uncertainty:.{decimals}f}"


def _rounded(parameter: FitParameterValue) -> FitParameterValue:
    """The parameter to four significant digits, its standard error to two, so that
    :func:`dicomio.dose_csv.format_fit_parameter` prints them short."""
    error = parameter.standard_error
    return dataclasses.replace(parameter, value=float(f"{parameter.value:.4g}"),
                               standard_error=None if error is None else float(f"{error:.2g}"))


# ---------------------------------------------------------------------------
# Text and tables
# ---------------------------------------------------------------------------


def _identification(course: CourseDoses) -> Table:
    rows = [
        ("Patient ID", course.patient_id),
        ("Radiopharmaceutical", course.radiopharmaceutical),
        ("Radionuclide", course.radionuclide),
        ("Administered activity", f"{_number(course.administered_activity_mbq)} MBq"),
        ("Administration", f"{course.administration:{DATE_TIME_FORMAT}}"),
    ]
    return grid_table([[Paragraph(key, STYLES["cell_bold"]), Paragraph(markup(value), STYLES["cell"])]
                       for key, value in rows], (38 * mm, 142 * mm), header=False)


def _misalignments(misaligned: Sequence[tuple[OrganDose, TimePointActivity]]) -> list[Flowable]:
    """The numbered list of the points drawn as misaligned, with why; or that there are none."""
    if not misaligned:
        return [Paragraph("No organ was found misaligned at any time point.",
                          STYLES["body"])]
    heading = Paragraph("Misaligned time points: the SPECT and its CT do not line up around the organ",
                        STYLES["cell_bold"])
    return [heading, *(
        Paragraph(
            f"{number}. {markup(organ.structure.label)} at {point.hours_after_administration:g} h "
            f"(acquired {point.acquisition:{DATE_TIME_FORMAT}}, SPECT series "
            f"{markup(point.spect_series_instance_uid)}): {markup(point.misalignment or '')}",
            STYLES["body"],
        )
        for number, (organ, point) in enumerate(misaligned, 1)
    )]


def _not_assessable(organs: Sequence[OrganDose]) -> list[Flowable]:
    """The points whose registration could not be judged, with why (drawn as the others)."""
    unjudged = [(organ, point) for organ in organs for point in organ.time_points
                if point.alignment_not_assessable is not None]
    if not unjudged:
        return []
    return [Paragraph("Registration not assessable", STYLES["cell_bold"]), *(
        Paragraph(f"{markup(organ.structure.label)} at {point.hours_after_administration:g} h: "
                  f"{markup(point.alignment_not_assessable or '')}", STYLES["body"])
        for organ, point in unjudged
    )]


def _organ_table(organs: Sequence[OrganDose]) -> Table:
    titles = ("Organ", "Volume (ml)", "Mass (g)", "Model", "Fit parameters", "R²", "TIA (MBq·h)",
              "Absorbed dose (Gy)")
    header = [Paragraph(title, STYLES["cell_bold"]) for title in titles]
    rows = []
    for organ in organs:
        parameters = "<br/>".join(markup(format_fit_parameter(_rounded(p))) for p in organ.fit_parameters)
        rows.append([
            Paragraph(markup(organ.structure.label), STYLES["cell"]),
            Paragraph(f"{organ.volume_ml:.1f}", STYLES["number"]),
            Paragraph(f"{organ.mass_g:.1f} ({organ.density_g_per_ml:g} g/ml)", STYLES["number"]),
            [Paragraph(markup(organ.fit_model), STYLES["cell"]),
             Paragraph(markup(organ.fit_selection), STYLES["small"])],
            Paragraph(parameters or "-", STYLES["small"]),
            Paragraph("-" if organ.r_squared is None else f"{organ.r_squared:.4f}", STYLES["number"]),
            Paragraph(_measured(organ.time_integrated_activity_mbq_h,
                                organ.time_integrated_activity_uncertainty_mbq_h), STYLES["number"]),
            Paragraph(_measured(organ.absorbed_dose_gy, organ.absorbed_dose_uncertainty_gy),
                      STYLES["number"]),
        ])
    widths = (20 * mm, 13 * mm, 19 * mm, 28 * mm, 50 * mm, 12 * mm, 19 * mm, 19 * mm)
    table = grid_table([header, *rows], widths)
    table.setStyle(TableStyle([("LEFTPADDING", (0, 0), (-1, -1), 2.5),
                               ("RIGHTPADDING", (0, 0), (-1, -1), 2.5)]))
    return table


def _extension_note(organs: Sequence[OrganDose]) -> str:
    """How each organ's CT mask was extended on the SPECT grid for the SPECT's resolution."""
    sigmas = sorted({organ.mask_extension_sigma_mm for organ in organs})
    if sigmas == [0.0]:
        return "Activities were read within the CT masks, not extended."
    if len(sigmas) == 1:
        return (f"Activities were read within the CT masks extended by a Gaussian of sigma {sigmas[0]:g} mm "
                "for the SPECT's resolution.")
    each = ", ".join(f"{markup(o.structure.label)} sigma {o.mask_extension_sigma_mm:g} mm" for o in organs)
    return ("Activities were read within the CT masks extended for the SPECT's resolution by a Gaussian: "
            f"{each}.")


# ---------------------------------------------------------------------------
# The plot and its legend
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _OrganStyle:
    """How an organ is drawn: its colour (0-1 sRGB), line dashes (in line widths, () solid) and marker."""

    colour: tuple[float, float, float]
    dashes: tuple[float, ...]
    marker: str


def _organ_styles(organs: Sequence[OrganDose]) -> dict[str, _OrganStyle]:
    """Each organ's colour, and a line style and marker of its own among the organs of its colour."""
    styles: dict[str, _OrganStyle] = {}
    for organ in organs:
        rgb = structure_colour(organ.structure)
        colour = (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)
        before = sum(style.colour == colour for style in styles.values())
        dashes, marker = _VARIANTS[before % len(_VARIANTS)]
        styles[organ.structure.name] = _OrganStyle(colour, dashes, marker)
    return styles


def _plot(
    course: CourseDoses,
    curves: dict[str, ActivityCurve],
    styles: dict[str, _OrganStyle],
    misaligned: Sequence[tuple[OrganDose, TimePointActivity]],
) -> bytes:
    """The fitted curves as lines, the measured activities as filled markers, misaligned ones hollow and
    numbered as in the list under the plot."""
    figure = new_figure(_PLOT_SIZE)
    axes = figure.add_subplot()
    for organ in course.organs:
        style = styles[organ.structure.name]
        curve = curves[organ.structure.name]
        axes.plot(curve.hours, curve.activity_mbq, color=style.colour, linewidth=_LINE_WIDTH,
                  linestyle=(0, style.dashes) if style.dashes else "solid")
        aligned = [p for p in organ.time_points if p.misalignment is None]
        axes.plot([p.hours_after_administration for p in aligned], [p.activity_mbq for p in aligned],
                  linestyle="none", marker=style.marker, markersize=_MARKER_SIZE, color=style.colour,
                  markeredgecolor="black", markeredgewidth=0.4)
    for number, (organ, point) in enumerate(misaligned, 1):
        style = styles[organ.structure.name]
        x, y = point.hours_after_administration, point.activity_mbq
        axes.plot([x], [y], linestyle="none", marker=style.marker, markersize=_MISALIGNED_SIZE,
                  markerfacecolor="white", markeredgecolor=style.colour, markeredgewidth=1.8)
        axes.annotate(str(number), (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8,
                      fontweight="bold")
    axes.set_xlabel("Hours after administration", fontsize=8)
    axes.set_ylabel("Activity (MBq)", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.set_xlim(left=0.0)
    axes.set_ylim(bottom=0.0)
    axes.grid(True, linewidth=0.3, color="0.85")
    grey = "0.35"
    key = [
        Line2D([], [], color=grey, linewidth=_LINE_WIDTH, label="fitted curve"),
        Line2D([], [], linestyle="none", marker="o", markersize=_MARKER_SIZE, color=grey,
               markeredgecolor="black", markeredgewidth=0.4, label="measured activity"),
    ]
    if misaligned:
        key.append(Line2D([], [], linestyle="none", marker="o", markersize=_MISALIGNED_SIZE,
                          markerfacecolor="white", markeredgecolor=grey, markeredgewidth=1.8,
                          label="misaligned time point (numbered below)"))
    axes.legend(handles=key, fontsize=7, loc="upper right", frameon=True)
    figure.tight_layout(pad=0.4)
    return figure_png(figure)


def _legend(organs: Sequence[OrganDose], styles: dict[str, _OrganStyle]) -> Table:
    """Each organ's line and marker beside its label, four to a row."""
    per_row = 4
    cells: list[list[object]] = []
    for index, organ in enumerate(organs):
        row, column = divmod(index, per_row)
        if column == 0:
            cells.append([""] * (2 * per_row))
        cells[row][2 * column] = _key_drawing(styles[organ.structure.name])
        cells[row][2 * column + 1] = Paragraph(markup(organ.structure.label), STYLES["cell"])
    table = Table(cells, colWidths=[14 * mm, 31 * mm] * per_row, hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                               ("LEFTPADDING", (0, 0), (-1, -1), 1.5)]))
    return table


def _key_drawing(style: _OrganStyle) -> Drawing:
    """A short piece of the organ's line with its marker in the middle, as the plot draws them."""
    width, height = 12 * mm, 4 * mm
    colour = colors.Color(*style.colour)
    drawing = Drawing(width, height)
    drawing.add(Line(0, height / 2, width, height / 2, strokeColor=colour, strokeWidth=_LINE_WIDTH,
                     strokeDashArray=[d * _LINE_WIDTH for d in style.dashes] or None))
    drawing.add(_marker_shape(style.marker, width / 2, height / 2, _MARKER_SIZE / 2, colour))
    return drawing


def _marker_shape(
    marker: str, x: float, y: float, radius: float, colour: colors.Color
) -> Circle | Rect | Polygon:
    """matplotlib's marker `marker` (o, s, ^, D) of `radius` points around (x, y), filled, edged in black."""
    edge = {"strokeColor": colors.black, "strokeWidth": 0.4, "fillColor": colour}
    if marker == "o":
        return Circle(x, y, radius, **edge)
    if marker == "s":
        return Rect(x - radius, y - radius, 2 * radius, 2 * radius, **edge)
    if marker == "^":
        return Polygon([x - radius, y - radius, x + radius, y - radius, x, y + radius], **edge)
    return Polygon([x, y - radius, x + radius, y, x, y + radius, x - radius, y], **edge)
