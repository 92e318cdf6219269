"""The PDF report and its DICOM Encapsulated PDF, looked at as a person would.

The report is made from the torso phantom (a small grid) as the pipeline
makes its SR values: the built-in segmenter, quantification with the PET,
plausibility flags. Its text is read back with poppler's ``pdftotext``, its
first page rendered with ``pdftoppm``, where the pictures are found on the
page and each structure's voxels in the shown planes must lie under pixels
of that structure's hue; the DICOM object is checked with ``dciodvfy``.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.colors import rgb_to_hsv
from PIL import Image
from scipy import ndimage

from dicomio.colours import structure_colour
from dicomio.derived import write_dicom_atomically
from dicomio.encapsulated_pdf import ENCAPSULATED_PDF_STORAGE, encapsulate_pdf
from dicomio.measurements import StructureMeasurements
from dicomio.pdf_report import ReportContent, render_report
from dicomio.pet import load_suv_volume
from dicomio.seg import plan_segments
from dicomio.series import LoadedSeries, load_series
from inference.builtin import BuiltinSegmenter
from inference.qa import plausibility_flags
from inference.quantify import quantify
from phantom.anatomy import AxialGrid
from phantom.study import write_study
from tests.test_seg import dciodvfy

#: The phantom on 4 mm pixels and 6 mm slices: the coronal view is 2.8 times wider than tall.
GRID = AxialGrid((30, 128, 128), (6.0, 4.0, 4.0))
CREATED = datetime(2026, 12, 6, 20, 15, 30)
DISCLAIMER = "Research use only <not for diagnosis> & checked by a radiologist."
NOTE = "the series completed after 30 s without new images; 2 slices may be missing"
DPI = 100


@dataclass(frozen=True)
class PhantomReport:
    loaded: LoadedSeries
    content: ReportContent
    pdf: bytes


def phantom_report(directory: Path, grid: AxialGrid = GRID) -> PhantomReport:
    """The phantom study's report, with PET values and plausibility flags,
    made as node/work/pipeline.py makes the SR's values."""
    study = write_study(directory, grid)
    loaded = load_series(study.ct.files)
    assert study.pet is not None
    pet = load_suv_volume(study.pet.files)
    segmentation = BuiltinSegmenter().segment(loaded.volume)
    segments = plan_segments(segmentation.labels, segmentation.structures,
                             series_instance_uid=loaded.volume.series_instance_uid)
    flags = plausibility_flags(segmentation)
    measurements = tuple(replace(m, flags=flags.get(m.name, ()))
                         for m in quantify(segmentation, segments, pet=pet))
    source = copy.deepcopy(loaded.headers[0])
    source.PatientName = "Müller^Jürgen"
    content = ReportContent(
        source=source, volume=loaded.volume, labels=segmentation.labels,
        structures=segmentation.structures, measurements=measurements, algorithm=segmentation.algorithm,
        notes=(NOTE,), disclaimer=DISCLAIMER, created=CREATED,
    )
    return PhantomReport(loaded, content, render_report(content))


def pdf_text(pdf: bytes, directory: Path) -> str:
    """What ``pdftotext -layout`` reads from the document."""
    path = directory / "text.pdf"
    path.write_bytes(pdf)
    return subprocess.run([_tool("pdftotext"), "-layout", str(path), "-"],
                          capture_output=True, text=True, check=True).stdout


def first_page(pdf: bytes, directory: Path, dpi: int = DPI) -> Path:
    """Page 1 rendered by ``pdftoppm`` as a PNG."""
    path = directory / "page.pdf"
    path.write_bytes(pdf)
    subprocess.run([_tool("pdftoppm"), "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile",
                    str(path), str(directory / "page")], check=True)
    return directory / "page.png"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"poppler's {name} is not installed (apt-get install poppler-utils)")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> PhantomReport:
    return phantom_report(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def text(report: PhantomReport, tmp_path_factory: pytest.TempPathFactory) -> str:
    return pdf_text(report.pdf, tmp_path_factory.mktemp("text"))


def _row(text: str, label: str) -> list[str]:
    """The words after `label` on its line of the measurement table."""
    table = text[text.index("Measurements\n"):]
    lines = [line.strip() for line in table.splitlines() if line.strip().startswith(label + "  ")]
    assert lines, f"no table row for {label!r} in:\n{text}"
    return lines[0][len(label):].split()


def _label(report: PhantomReport, m: StructureMeasurements) -> str:
    return next(s.code.label for s in report.content.structures if s.code.name == m.name)


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------


def test_text_identifies_patient_study_and_series(report: PhantomReport, text: str) -> None:
    source = report.content.source
    for expected in ("Müller, Jürgen", source.PatientID, source.StudyInstanceUID, source.SeriesInstanceUID,
                     source.StudyDescription, source.SeriesDescription, source.AccessionNumber):
        assert expected in text


def test_text_has_every_structure_with_its_measurements(report: PhantomReport, text: str) -> None:
    assert len(report.content.measurements) >= 5
    for m in report.content.measurements:
        row = _row(text, _label(report, m))
        assert row[:3] == [f"{m.volume_ml:.1f}", f"{m.mass_g:.1f}", f"{m.hu_mean:.1f}"], row
        assert row[-3:] == [f"{m.suv_mean:.2f}", f"{m.suv_max:.2f}", f"{m.suv_peak:.2f}"], row


def test_text_has_qa_flags_model_notes_and_disclaimer(report: PhantomReport, text: str) -> None:
    flagged = [(m, flag) for m in report.content.measurements for flag in m.flags]
    assert flagged, "the phantom's short scan cuts the lungs: a truncation flag is expected"
    flat = " ".join(text.split())
    for _, flag in flagged:
        assert flag.kind.value.replace("_", " ") in flat and flag.detail in flat
    algorithm = report.content.algorithm
    assert f"{algorithm.name} version {algorithm.version}" in flat
    assert NOTE in flat
    assert DISCLAIMER in flat  # markup characters printed as they are
    assert "No reference segmentation" in flat


def test_values_not_measured_are_left_out_or_dashed(report: PhantomReport, tmp_path: Path) -> None:
    """Without PET the SUV columns are left out; a structure without a
    mass, among others with one, shows a dash."""
    no_pet = tuple(replace(m, suv_mean=None, suv_max=None, suv_peak=None, total_uptake=None)
                   for m in report.content.measurements)
    first, *rest = no_pet
    content = replace(report.content, measurements=(replace(first, mass_g=None), *rest))
    text = pdf_text(render_report(content), tmp_path)
    assert "SUV" not in text
    assert _row(text, _label(report, first))[:2] == [f"{first.volume_ml:.1f}", "-"]
    assert _row(text, _label(report, rest[0]))[1] == f"{rest[0].mass_g:.1f}"


@pytest.mark.parametrize("name, shown", [
    ("山田^太郎=やまだ^たろう", "山田, 太郎"),
    ("홍^길동", "홍, 길동"),
    ("Παπαδόπουλος^Γιώργος", "Παπαδόπουλος, Γιώργος"),
])
def test_names_in_any_script_are_printed(
    report: PhantomReport, tmp_path: Path, name: str, shown: str
) -> None:
    source = copy.deepcopy(report.content.source)
    source.PatientName = name
    text = pdf_text(render_report(replace(report.content, source=source)), tmp_path)
    assert shown in text


def test_hostile_header_values_are_shown_cut_not_fatal(report: PhantomReport, tmp_path: Path) -> None:
    """A sender's multi-valued name and a description that would outgrow a page."""
    source = copy.deepcopy(report.content.source)
    source.PatientName = ["Doe^John", "Roe^Richard"]
    source.StudyDescription = "x" * 20_000
    source.PatientID = "<b>&amp;</b> " + "y" * 5_000
    text = pdf_text(render_report(replace(report.content, source=source)), tmp_path)
    assert "Doe, John; Roe, Richard" in text
    # Cut to 199 characters and an ellipsis, however the table wraps them.
    assert max(map(len, re.findall("x+", re.sub(r"\s+", "", text)))) == 199
    assert "<b>&amp;</b>" in text


def test_same_content_same_bytes(report: PhantomReport) -> None:
    """A retried job must write the same document."""
    assert render_report(report.content) == report.pdf
    assert b"/CreationDate (D:20261206201530)" in report.pdf


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------


def _pictures(page: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the pictures on a page, left to right:
    solid non-white blocks (the CT's air is black), unlike text and rules."""
    components, _ = ndimage.label((page < 245).any(axis=2))
    boxes = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        filled = np.count_nonzero(components[box] == index) / (height * width)
        if height * width > 5000 and filled > 0.95:
            boxes.append((box[0].start, box[0].stop, box[1].start, box[1].stop))
    return sorted(boxes, key=lambda b: b[2])


def _hue(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_hsv(np.asarray(rgb, dtype=float).reshape(-1, 3) / 255)[:, 0]


def _check_plane(page: np.ndarray, box: tuple[int, int, int, int], plane: np.ndarray,
                 report: PhantomReport) -> int:
    """For each structure with voxels well inside it in `plane` (as shown:
    first row at the top, first column at the left), the pixels over those
    voxels have the structure's hue. Returns how many structures were checked."""
    top, bottom, left, right = box
    rows, columns = plane.shape
    checked = 0
    for structure in report.content.structures:
        inside = ndimage.binary_erosion(plane == structure.value, iterations=2)
        if np.count_nonzero(inside) < 10:
            continue
        r, c = np.nonzero(inside)
        y = (top + (r + 0.5) * (bottom - top) / rows).astype(int)
        x = (left + (c + 0.5) * (right - left) / columns).astype(int)
        difference = np.abs(_hue(page[y, x]) - _hue(structure_colour(structure.code))[0])
        difference = np.minimum(difference, 1 - difference)
        assert np.median(difference) < 0.025, f"{structure.code.name}: hue off by {np.median(difference):.3f}"
        checked += 1
    return checked


def test_first_page_shows_structures_in_their_colours(report: PhantomReport, tmp_path: Path) -> None:
    """The coronal view (head up, true aspect ratio) and the axial view
    (patient's right on the left, front up) through the centre of the
    segmented voxels show each structure there in its colour."""
    volume, labels = report.content.volume, report.content.labels
    # The phantom's grid: slices to the head, rows to the back, columns to the patient's left.
    direction = volume.affine[:3, :3]
    assert direction[2, 0] > 0 and direction[1, 1] > 0 and direction[0, 2] > 0
    assert np.count_nonzero(direction) == 3
    page = _read_png(first_page(report.pdf, tmp_path))
    pictures = _pictures(page)
    assert len(pictures) == 2, pictures
    coronal, axial = pictures
    slices, rows, columns = labels.shape
    dz, dy, dx = volume.spacing
    for (top, bottom, left, right), extent in ((coronal, (slices * dz, columns * dx)),
                                               (axial, (rows * dy, columns * dx))):
        assert (bottom - top) / (right - left) == pytest.approx(extent[0] / extent[1], rel=0.02)

    segmented = labels != 0
    z, y = (int(round(np.average(np.arange(n), weights=segmented.sum(axis=other))))
            for n, other in ((slices, (1, 2)), (rows, (0, 2))))
    assert _check_plane(page, coronal, labels[::-1, y, :], report) >= 4
    assert _check_plane(page, axial, labels[z], report) >= 4


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------
# DICOM Encapsulated PDF
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("odd", [False, True])
def test_encapsulated_pdf_is_valid_and_holds_the_document(
    report: PhantomReport, tmp_path: Path, odd: bool
) -> None:
    # A PDF may end in a newline or not: both lengths must come back exactly.
    pdf = report.pdf + b"\n" * ((len(report.pdf) % 2 == 0) == odd)
    headers = [report.content.source, *report.loaded.headers[1:]]  # the first with a Unicode name
    dataset = encapsulate_pdf(
        pdf, headers, series_instance_uid="2.25.101", sop_instance_uid="2.25.102", series_number=9003,
        series_description="segnode report", document_title="Segmentation report", created=CREATED,
        device_serial_number="2.25.103",
    )
    path = tmp_path / "report.dcm"
    write_dicom_atomically(dataset, path)
    dciodvfy(path)

    read = pydicom.dcmread(path)
    assert read.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert read.SOPClassUID == ENCAPSULATED_PDF_STORAGE and read.Modality == "DOC"
    assert read.PatientName == "Müller^Jürgen" and read.StudyInstanceUID == headers[0].StudyInstanceUID
    assert read.BurnedInAnnotation == "YES" and read.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert [item.ReferencedSOPInstanceUID for item in read.SourceInstanceSequence] == [
        h.SOPInstanceUID for h in headers]
    stored = bytes(read.EncapsulatedDocument)
    assert len(stored) % 2 == 0 and len(stored) == len(pdf) + (len(pdf) % 2)
    assert stored[: read.EncapsulatedDocumentLength] == pdf
    assert stored[len(pdf):] == b"\x00" * (len(pdf) % 2)
