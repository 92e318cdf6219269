"""The PDF report: what the SEG and SR say, on paper, for a person to read.

It identifies patient, study and series, shows the structures over the CT
(a coronal and an axial view through the centre of the segmented voxels, in
the colours of :mod:`dicomio.colours`, so that they match every other
picture), lists the SR's measurements per structure, the QA (plausibility
flags, agreement with a reference or the mirrored prediction), the model,
what the input lacked, and the site's disclaimer.

matplotlib draws the views (its contours give outlines that follow the
voxels at any printed size); reportlab lays out the pages, because its
tables wrap and split across pages by themselves and it embeds TrueType
subsets with a ToUnicode map, so that every word can be searched and
extracted (pdftotext), where matplotlib's PDF text would need a table
layout by hand. Text is set in DejaVu Sans, which matplotlib ships (Latin,
Greek, Cyrillic); Chinese, Japanese and Korean characters, which it lacks,
are set in the standard CID fonts of PDF readers (not embedded: a reader
substitutes its own), so a name such as 山田^太郎 is printed and extractable.

A retried job writes the same bytes: the document is dated by
``ReportContent.created`` and reportlab's invariant mode derives the file
identifier from the content instead of the clock.

The dosimetry page (dicomio/dose_pdf.py) is made the same way: the public
helpers here (page set-up, styles, markup, tables, footer, disclaimer,
figures) serve both.
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from dicomio.codes import StructureCode
from dicomio.colours import SOFT_TISSUE_WINDOW, structure_colour
from dicomio.measurements import StructureMeasurements
from dicomio.seg import MANUFACTURER, AlgorithmIdentity, LabelledStructure
from dicomio.volume import Volume

__all__ = [
    "DATE_TIME_FORMAT",
    "REPORT_TITLE",
    "STYLES",
    "ReportContent",
    "a4_document",
    "disclaimer_block",
    "figure_png",
    "grid_table",
    "markup",
    "new_figure",
    "page_footer",
    "register_fonts",
    "render_report",
]

REPORT_TITLE: Final = "Segmentation report"
#: How every report prints a date and time.
DATE_TIME_FORMAT: Final = "%Y-%m-%d %H:%M"
#: Opacity of a structure's fill over the CT; its outline is opaque.
_FILL_ALPHA: Final = 0.4
#: Resolution of the views as printed.
_PICTURE_DPI: Final = 200
#: Largest printed size of one view (width, height); both views sit side by side.
_VIEW_BOX: Final = (86 * mm, 105 * mm)

_FONT: Final = "DejaVuSans"
_BOLD_FONT: Final = "DejaVuSans-Bold"
#: Adobe's standard CID fonts (PDF readers bring their own), for what DejaVu Sans lacks.
_JAPANESE_FONT: Final = "HeiseiKakuGo-W5"
_KOREAN_FONT: Final = "HYGothic-Medium"


@dataclass(frozen=True)
class ReportContent:
    """What a report shows.

    ``source`` is a header of the segmented CT series (patient, study and
    series identification); ``labels`` the label map on ``volume``'s grid,
    whose values ``structures`` name; ``measurements`` what the SR says,
    one per segment; ``notes`` what the SR says about incomplete input;
    ``disclaimer`` the site's text; ``created`` dates the document.
    ``outline`` is the structure all labelled voxels make together (the
    built-in segmenter's body): measured in the table, not drawn (its edge
    is the edge of the structures drawn).
    """

    source: Dataset
    volume: Volume
    labels: np.ndarray
    structures: tuple[LabelledStructure, ...]
    measurements: tuple[StructureMeasurements, ...]
    algorithm: AlgorithmIdentity
    notes: tuple[str, ...]
    disclaimer: str
    created: datetime
    outline: StructureCode | None = None

    def __post_init__(self) -> None:
        series = self.volume.series_instance_uid
        if self.labels.shape != self.volume.array.shape:
            raise ValueError(
                f"report for series {series}: label map of shape {self.labels.shape} "
                f"for a volume of shape {self.volume.array.shape}"
            )
        names = {code.name for code in self.codes}
        unknown = [m.name for m in self.measurements if m.name not in names]
        if unknown:
            raise ValueError(f"report for series {series}: measurements of unlisted structures {unknown}")

    @property
    def codes(self) -> tuple[StructureCode, ...]:
        """Every structure the report may name: the label map's, then the outline."""
        return tuple(s.code for s in self.structures) + (() if self.outline is None else (self.outline,))


def render_report(content: ReportContent) -> bytes:
    """The report as a PDF document (A4)."""
    register_fonts()
    labels = {code.name: code.label for code in content.codes}
    buffer = io.BytesIO()
    document = a4_document(buffer, title=REPORT_TITLE,
                           subject=f"{content.algorithm.name} {content.algorithm.version}")
    story: list[Flowable] = [
        Paragraph(REPORT_TITLE, STYLES["title"]),
        _identification(content.source),
        Spacer(0, 4 * mm),
        *_overview(content),
        Spacer(0, 4 * mm),
        Paragraph("Measurements", STYLES["heading"]),
        *_measurements(content.measurements, labels),
        Paragraph("Quality assurance", STYLES["heading"]),
        *_quality(content.measurements, labels),
    ]
    if content.notes:
        story += [Paragraph("Input", STYLES["heading"]),
                  *(Paragraph(markup(note), STYLES["body"]) for note in content.notes)]
    story += [
        Paragraph("Method", STYLES["heading"]),
        Paragraph(
            f"Segmented by {markup(content.algorithm.name)} version {markup(content.algorithm.version)}"
            f" ({markup(content.algorithm.family.meaning)}); report made by {MANUFACTURER} on "
            f"{content.created:{DATE_TIME_FORMAT}}.", STYLES["body"],
        ),
        *disclaimer_block(content.disclaimer),
    ]
    patient = _joined(_person_name(content.source.get("PatientName")), _text(content.source, "PatientID"))
    footer = page_footer(patient, REPORT_TITLE, content.created)
    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def a4_document(buffer: io.BytesIO, *, title: str, subject: str) -> SimpleDocTemplate:
    """An A4 document in invariant mode (its identifier from the content, not the clock), with the
    report's margins, and this node as author and creator."""
    return SimpleDocTemplate(
        buffer, pagesize=A4, invariant=True,
        leftMargin=15 * mm, rightMargin=15 * mm, topMargin=15 * mm, bottomMargin=18 * mm,
        title=title, author=MANUFACTURER, creator=MANUFACTURER, subject=subject,
    )


def disclaimer_block(disclaimer: str) -> list[Flowable]:
    """The site's text under a heading, one paragraph per line, kept together; nothing when it is blank."""
    lines = [Paragraph(markup(line), STYLES["body"]) for line in disclaimer.splitlines() if line.strip()]
    if not lines:
        return []
    return [Spacer(0, 3 * mm), KeepTogether([Paragraph("Disclaimer", STYLES["heading"]), *lines])]


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------


def register_fonts() -> None:
    """Register the fonts once per process (reportlab's registry is global)."""
    if _FONT in pdfmetrics.getRegisteredFontNames():
        return
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdfmetrics.registerFont(TTFont(_FONT, str(folder / "DejaVuSans.ttf")))
    pdfmetrics.registerFont(TTFont(_BOLD_FONT, str(folder / "DejaVuSans-Bold.ttf")))
    pdfmetrics.registerFontFamily(_FONT, normal=_FONT, bold=_BOLD_FONT)
    pdfmetrics.registerFont(UnicodeCIDFont(_JAPANESE_FONT))
    pdfmetrics.registerFont(UnicodeCIDFont(_KOREAN_FONT))


def _style(
    name: str, size: float, *, bold: bool = False, heading: bool = False, alignment: int = TA_LEFT
) -> ParagraphStyle:
    return ParagraphStyle(
        name, fontName=_BOLD_FONT if bold or heading else _FONT, fontSize=size, leading=size * 1.25,
        spaceBefore=size * 0.6 if heading else 0, spaceAfter=size * 0.3, alignment=alignment,
        keepWithNext=heading,
    )


STYLES: Final = {
    "title": _style("title", 16, heading=True),
    "heading": _style("heading", 11, heading=True),
    "body": _style("body", 9),
    "cell": _style("cell", 7.5),
    "cell_bold": _style("cell_bold", 7.5, bold=True),
    "number": _style("number", 7.5, alignment=TA_RIGHT),
    "small": _style("small", 7),
}


def _fallback_font(character: str) -> str | None:
    """The CID font for a character DejaVu Sans lacks, where one has it."""
    name = unicodedata.name(character, "")
    if name.startswith("HANGUL"):
        return _KOREAN_FONT
    if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "FULLWIDTH", "HALFWIDTH", "IDEOGRAPHIC")):
        return _JAPANESE_FONT
    return None


def markup(text: str) -> str:
    """`text` as reportlab paragraph markup: XML special characters escaped,
    and runs of characters that DejaVu Sans lacks set in a CID font."""
    glyphs = pdfmetrics.getFont(_FONT).face.charToGlyph
    runs: list[tuple[str | None, str]] = []
    for character in text:
        font = None if ord(character) in glyphs else _fallback_font(character)
        if runs and runs[-1][0] == font:
            runs[-1] = (font, runs[-1][1] + character)
        else:
            runs.append((font, character))
    return "".join(escape(run) if font is None else f'<font name="{font}">{escape(run)}</font>'
                   for font, run in runs)


def _person_name(value: object) -> str:
    """A DICOM Person Name as people write it: ``Müller, Jürgen`` for
    ``Müller^Jürgen``; alphabetic, ideographic and phonetic forms joined by
    ``=``, several names (a multi-valued element) by ``;``."""
    names = []
    for name in value if isinstance(value, MultiValue) else [value]:
        groups = []
        for group in str(PersonName(name) if name else "").split("="):
            family, *rest = group.split("^")
            given = " ".join(part for part in rest if part)
            groups.append(", ".join(part for part in (family, given) if part))
        names.append(" = ".join(group for group in groups if group))
    return _shown("; ".join(name for name in names if name))


def _text(source: Dataset, keyword: str) -> str:
    """An attribute of `source` as text, values joined by a backslash as
    DICOM writes them; empty when absent or empty."""
    value = source.get(keyword)
    if value is None:
        return ""
    return _shown("\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value))


#: The most characters of a header value the report shows: every sorting
#: attribute's VR holds at most 64 per value (LO, PN component groups), and a
#: longer value from a hostile sender must not outgrow a page.
_MAX_SHOWN: Final = 200


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _date(value: str) -> str:
    """A DICOM DA (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def _joined(*parts: str, separator: str = ", ") -> str:
    return separator.join(part for part in parts if part)


def _identification(source: Dataset) -> Table:
    rows = [
        ("Patient", _person_name(source.get("PatientName"))),
        ("Patient ID", _text(source, "PatientID")),
        ("Birth date, sex", _joined(_date(_text(source, "PatientBirthDate")), _text(source, "PatientSex"))),
        ("Study", _joined(_date(_text(source, "StudyDate")), _text(source, "StudyDescription"))),
        ("Accession number", _text(source, "AccessionNumber")),
        ("Study Instance UID", _text(source, "StudyInstanceUID")),
        ("Series", _joined(_text(source, "SeriesNumber"), _text(source, "SeriesDescription"), separator=" ")),
        ("Series Instance UID", _text(source, "SeriesInstanceUID")),
    ]
    return grid_table([[Paragraph(key, STYLES["cell_bold"]), Paragraph(markup(value), STYLES["cell"])]
                       for key, value in rows], (38 * mm, 142 * mm), header=False)


def page_footer(patient: str, title: str, created: datetime) -> Callable[[Canvas, SimpleDocTemplate], None]:
    """Every page names the patient (plain text), the report and the page; the PDF is dated `created`."""
    pdf_date = f"D:{created:%Y%m%d%H%M%S}"

    def draw(canvas: Canvas, document: SimpleDocTemplate) -> None:
        canvas.setDateFormatter(lambda *_: pdf_date)
        line = Paragraph(f"{markup(patient)} \N{EM DASH} {markup(title)}, page {document.page}",
                         STYLES["small"])
        line.wrapOn(canvas, document.width, 10 * mm)
        line.drawOn(canvas, document.leftMargin, 10 * mm)

    return draw


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def grid_table(rows: Sequence[Sequence[object]], widths: Sequence[float], *, header: bool = True) -> Table:
    table = Table(rows, colWidths=list(widths), repeatRows=1 if header else 0, hAlign="LEFT")
    style = [
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
    ]
    if header:
        style.append(("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.9, 0.9, 0.9)))
    table.setStyle(TableStyle(style))
    return table


@dataclass(frozen=True)
class _Column:
    """A column of a measurement table: shown when any structure has a value."""

    title: str
    value: Callable[[StructureMeasurements], str | None]


def _number(digits: int) -> Callable[[float | None], str | None]:
    return lambda value: None if value is None else f"{value:.{digits}f}"


_ONE, _TWO, _THREE = _number(1), _number(2), _number(3)

_MEASUREMENT_COLUMNS: Final = (
    _Column("Volume (ml)", lambda m: _ONE(m.volume_ml)),
    _Column("Mass (g)", lambda m: _ONE(m.mass_g)),
    _Column("HU mean", lambda m: _ONE(m.hu_mean)),
    _Column("HU SD", lambda m: _ONE(m.hu_std)),
    _Column("HU median", lambda m: _ONE(m.hu_median)),
    _Column("HU min", lambda m: f"{m.hu_min:.0f}"),
    _Column("HU max", lambda m: f"{m.hu_max:.0f}"),
    _Column("SUV mean", lambda m: _TWO(m.suv_mean)),
    _Column("SUV max", lambda m: _TWO(m.suv_max)),
    _Column("SUV peak", lambda m: _TWO(m.suv_peak)),
)

_AGREEMENT_COLUMNS: Final = (
    _Column("Dice (reference)", lambda m: _THREE(m.dice)),
    _Column("Jaccard (reference)", lambda m: _THREE(m.jaccard)),
    _Column("HD95 (mm, reference)", lambda m: _ONE(m.hausdorff95_mm)),
    _Column("Dice (mirrored image)", lambda m: _THREE(m.mirror_dice)),
)


def _column_table(
    measurements: Sequence[StructureMeasurements], labels: dict[str, str], columns: Sequence[_Column]
) -> Table | None:
    """One row per structure, the columns that have a value for any; a
    missing value in a shown column is a dash. None when no column has one."""
    shown = [c for c in columns if any(c.value(m) is not None for m in measurements)]
    if not shown:
        return None
    header = [Paragraph("Structure", STYLES["cell_bold"]),
              *(Paragraph(c.title, STYLES["cell_bold"]) for c in shown)]
    rows = [[Paragraph(markup(labels[m.name]), STYLES["cell"]),
             *(Paragraph(c.value(m) or "-", STYLES["number"]) for c in shown)] for m in measurements]
    first = 40 * mm
    table = grid_table([header, *rows], [first] + [(180 * mm - first) / len(shown)] * len(shown))
    table.setStyle(TableStyle([("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3)]))
    return table


def _measurements(measurements: Sequence[StructureMeasurements], labels: dict[str, str]) -> list[Flowable]:
    """The measurement table and what its columns mean."""
    table = _column_table(measurements, labels, _MEASUREMENT_COLUMNS)
    if table is None:
        return [Paragraph("No structure was measured.", STYLES["body"])]
    legend = "Mass is volume times an assumed density."
    if any(m.suv_mean is not None for m in measurements):
        legend += " SUV: body-weight SUV (g/ml), measured on the PET images."
    return [table, Paragraph(f"{legend} A dash: not measured.", STYLES["small"])]


def _quality(measurements: Sequence[StructureMeasurements], labels: dict[str, str]) -> list[Flowable]:
    flags = [(m, flag) for m in measurements for flag in m.flags]
    parts: list[Flowable] = []
    if flags:
        rows = [[Paragraph(markup(labels[m.name]), STYLES["cell"]),
                 Paragraph(flag.kind.value.replace("_", " "), STYLES["cell"]),
                 Paragraph(markup(flag.detail), STYLES["cell"])] for m, flag in flags]
        titles = ("Structure", "Plausibility flag", "Why")
        header = [Paragraph(title, STYLES["cell_bold"]) for title in titles]
        parts.append(grid_table([header, *rows], (46 * mm, 34 * mm, 100 * mm)))
    else:
        parts.append(Paragraph("No plausibility flag was raised.", STYLES["body"]))
    agreement = _column_table(measurements, labels, _AGREEMENT_COLUMNS)
    parts.append(Spacer(0, 2 * mm))
    parts.append(agreement if agreement is not None else Paragraph(
        "No reference segmentation or mirrored prediction was compared.", STYLES["body"]))
    return parts


# ---------------------------------------------------------------------------
# Overview pictures
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """A plane of the CT and its labels as displayed, with its size in mm."""

    title: str
    ct: np.ndarray
    labels: np.ndarray
    width_mm: float
    height_mm: float


def _displayed(volume: Volume, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """CT and labels reordered to [head to feet, front to back, patient's
    right to left] (how radiologists look at them), with those spacings.

    Each array axis goes to the patient axis its direction is nearest to.
    """
    directions = volume.affine[:3, :3]
    patient_axis = np.argmax(np.abs(directions), axis=0)  # x, y or z of each array axis
    if sorted(patient_axis) != [0, 1, 2]:
        raise ValueError(
            f"series {volume.series_instance_uid}: grid too oblique to show in planes, affine {directions}"
        )
    order = [int(np.flatnonzero(patient_axis == axis)[0]) for axis in (2, 1, 0)]
    ct = np.transpose(volume.array, order)
    shown = np.transpose(labels, order)
    # LPS: z grows to the head (shown first), y to the back and x to the left (shown last).
    for displayed_axis, (array_axis, head_first) in enumerate(zip(order, (True, False, False), strict=True)):
        if (directions[2 - displayed_axis, array_axis] > 0) == head_first:
            ct = np.flip(ct, displayed_axis)
            shown = np.flip(shown, displayed_axis)
    spacing = tuple(float(np.linalg.norm(directions[:, axis])) for axis in order)
    return ct, shown, spacing


def _views(volume: Volume, labels: np.ndarray) -> tuple[_View, _View]:
    """The coronal and axial planes through the centre of the segmented voxels."""
    ct, shown, (dz, dy, dx) = _displayed(volume, labels)
    segmented = shown != 0
    centre = []
    for axis in (0, 1):  # head to feet, front to back
        profile = segmented.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
        total = profile.sum()
        mean = (profile * np.arange(profile.size)).sum() / total if total else (profile.size - 1) / 2
        centre.append(int(round(mean)))
    z, y = centre
    slices, rows, columns = ct.shape
    return (
        _View("Coronal", ct[:, y, :], shown[:, y, :], columns * dx, slices * dz),
        _View("Axial", ct[z], shown[z], columns * dx, rows * dy),
    )


def _picture(view: _View, colours: dict[int, tuple[int, int, int]], size: tuple[float, float]) -> bytes:
    """The view as a PNG of `size` (points): the CT in the soft-tissue
    window, each structure filled in its colour and outlined."""
    figure = new_figure(size)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    extent = (0.0, view.width_mm, view.height_mm, 0.0)
    centre, window = SOFT_TISSUE_WINDOW
    axes.imshow(view.ct, cmap="gray", vmin=centre - window / 2, vmax=centre + window / 2,
                extent=extent, aspect="auto", interpolation="bilinear")
    lookup = np.zeros((int(max(colours, default=0)) + 1, 4))
    for value, rgb in colours.items():
        lookup[value] = (*(c / 255 for c in rgb), _FILL_ALPHA)
    present = [int(v) for v in np.unique(view.labels) if v in colours]
    known = np.where(np.isin(view.labels, present), view.labels, 0)
    axes.imshow(lookup[known], extent=extent, aspect="auto", interpolation="nearest")
    for value in present:
        axes.contour(view.labels == value, levels=[0.5], colors=[lookup[value, :3]], linewidths=0.6,
                     extent=extent, origin="upper")
    axes.set_xlim(0, view.width_mm)
    axes.set_ylim(view.height_mm, 0)
    return figure_png(figure)


def new_figure(size: tuple[float, float]) -> Figure:
    """A matplotlib figure of `size` (points: width, height) on an Agg canvas, at the printed resolution."""
    width, height = size
    figure = Figure(figsize=(width / 72, height / 72), dpi=_PICTURE_DPI)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """The figure as a PNG without the matplotlib version in its metadata: the same figure, the same bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_PICTURE_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _printed_size(view: _View) -> tuple[float, float]:
    """The largest size in `_VIEW_BOX` with the view's true aspect ratio."""
    scale = min(_VIEW_BOX[0] / view.width_mm, _VIEW_BOX[1] / view.height_mm)
    return view.width_mm * scale, view.height_mm * scale


def _overview(content: ReportContent) -> list[Flowable]:
    """Coronal and axial views side by side, and a legend of the measured structures."""
    colours = {s.value: structure_colour(s.code) for s in content.structures}
    views = _views(content.volume, content.labels)
    pictures = []
    for view in views:
        size = _printed_size(view)
        pictures.append(Image(io.BytesIO(_picture(view, colours, size)), width=size[0], height=size[1]))
    titles = [Paragraph(f"{view.title} view", STYLES["cell_bold"]) for view in views]
    row = Table([titles, pictures], colWidths=[_VIEW_BOX[0] + 4 * mm] * 2, hAlign="LEFT")
    row.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    # The legend may run over pages (a hundred structures); the views stay whole, on page 1.
    return [KeepTogether([row]), Spacer(0, 2 * mm), _legend(content)]


def _legend(content: ReportContent) -> Table:
    """A colour swatch and the label of each measured structure drawn, four to a row."""
    codes = {s.code.name: s.code for s in content.structures}
    entries = [codes[m.name] for m in content.measurements if m.name in codes]
    per_row = 4
    cells: list[list[object]] = []
    style = [("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LEFTPADDING", (0, 0), (-1, -1), 1.5)]
    for index, code in enumerate(entries):
        row, column = divmod(index, per_row)
        if column == 0:
            cells.append([""] * (2 * per_row))
        cells[row][2 * column + 1] = Paragraph(markup(code.label), STYLES["cell"])
        swatch = colors.Color(*(channel / 255 for channel in structure_colour(code)))
        style.append(("BACKGROUND", (2 * column, row), (2 * column, row), swatch))
    if not cells:
        cells = [[""] * (2 * per_row)]
    table = Table(cells, colWidths=[4 * mm, 41 * mm] * per_row, hAlign="LEFT")
    table.setStyle(TableStyle(style))
    return table
