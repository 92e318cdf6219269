"""Overlay images (dicomio/overlay.py): outlines exactly on the label map's boundary
voxels, the CT windowed under them, placed and referenced as their source slices,
valid for dciodvfy, the same bytes on a rerun."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import SecondaryCaptureImageStorage
from scipy import ndimage as ndi

from dicomio.codes import structure_code
from dicomio.colours import structure_colour
from dicomio.derived import write_dicom_atomically
from dicomio.overlay import OverlayInputError, overlay_images
from dicomio.seg import LabelledStructure
from dicomio.series import LoadedSeries, load_series
from tests.synthetic import write_ct_series, write_enhanced_ct
from tests.test_seg import dciodvfy

SLICES, ROWS, COLUMNS = 6, 128, 128
CREATED = datetime(2026, 12, 6, 21, 0, 0, 123456)
STRUCTURES = (
    LabelledStructure(1, structure_code("liver")),
    LabelledStructure(2, structure_code("spleen")),
    LabelledStructure(5, structure_code("aorta")),
)

#: What dciodvfy says of the Image Plane and Frame of Reference modules added
#: to the Secondary Capture IOD: warnings, the Standard Extended SOP Class.
EXTENDED_SOP_CLASS_WARNINGS = {
    *(
        f"Warning - Attribute is not present in standard DICOM IOD - {attribute}"
        for attribute in (
            "(0x0018,0x0050) DS Slice Thickness",
            "(0x0020,0x0032) DS Image Position (Patient)",
            "(0x0020,0x0037) DS Image Orientation (Patient)",
            "(0x0020,0x0052) UI Frame of Reference UID",
            "(0x0020,0x1040) LO Position Reference Indicator",
        )
    ),
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - "
    "this is a Standard Extended SOP Class",
}

#: What dciodvfy says of an empty Laterality (a source without Body Part Examined).
LATERALITY_UNKNOWN_WARNING = (
    "Warning - is only permitted to be empty when actually unknown; should be absent (not empty) "
    "if an unpaired body part, and have a value if a paired body part - attribute <Laterality>"
)


def label_map() -> np.ndarray:
    """A liver block with a spleen disc touching it, an aorta inside the liver
    (a hole in it, so the liver has an inner outline too), and a single-voxel
    aorta on the last slice."""
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    labels[1:5, 30:90, 20:70] = 1
    rows, columns = np.ogrid[:ROWS, :COLUMNS]
    labels[:5][:, (rows - 60) ** 2 + (columns - 85) ** 2 <= 15**2] = 2
    labels[2:4, 50:56, 35:41] = 5
    labels[5, 64, 64] = 5
    return labels


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> tuple[list[Path], LoadedSeries]:
    files = write_ct_series(tmp_path_factory.mktemp("ct"), slices=SLICES, rows=ROWS, columns=COLUMNS)
    return files, load_series(files)


def make(loaded: LoadedSeries, labels: np.ndarray, every: int = 1, structures=STRUCTURES):
    return list(overlay_images(
        loaded.volume, labels, structures, loaded.headers,
        every=every,
        series_instance_uid="2.25.1001",
        sop_instance_uid=lambda k: f"2.25.2000{k}",
        series_number=95,
        series_description="segnode overlay",
        created=CREATED,
        device_serial_number="2.25.3000",
    ))


def soft_tissue(hu: np.ndarray) -> np.ndarray:
    """W400/L40 to 0-255 by PS3.3 C.11.2.1.2.1 (linear), rounded."""
    center, width = 40 - 0.5, 400 - 1
    scaled = ((hu - center) / width + 0.5) * 255
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with an in-plane 4-neighbour outside it (the image edge is not)."""
    cross = ndi.generate_binary_structure(2, 1)
    return mask & ~ndi.binary_erosion(mask, structure=cross, border_value=1)


def test_outlines_lie_exactly_on_each_structures_boundary_voxels_over_the_windowed_ct(ct):
    files, loaded = ct
    labels = label_map()
    colours = {item.value: np.array(structure_colour(item.code)) for item in STRUCTURES}
    # The checks below tell structures and CT apart by colour.
    assert len({tuple(c) for c in colours.values()}) == len(colours)
    assert all(len(set(c.tolist())) > 1 for c in colours.values())

    images = make(loaded, labels)
    assert len(images) == SLICES
    for k, (image, path) in enumerate(zip(images, files, strict=True)):
        pixels = image.pixel_array
        assert pixels.shape == (ROWS, COLUMNS, 3) and pixels.dtype == np.uint8
        outlines = np.zeros((ROWS, COLUMNS), dtype=bool)
        for value, colour in colours.items():
            boundary = inner_boundary(labels[k] == value)
            coloured = np.all(pixels == colour, axis=2)
            np.testing.assert_array_equal(coloured, boundary, err_msg=f"slice {k}, value {value}")
            outlines |= boundary
        assert outlines.any() or not labels[k].any()
        source = pydicom.dcmread(path)
        expected = soft_tissue(apply_modality_lut(source.pixel_array, source))
        grey = pixels[~outlines]
        assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
        np.testing.assert_array_equal(grey[:, 0], expected[~outlines])
    # Touching structures are outlined side by side; the aorta's hole gives the liver an inner outline.
    assert (images[2].pixel_array[50:56, 34] == colours[1]).all()
    assert (images[2].pixel_array[50:56, 35] == colours[5]).all()
    assert (images[5].pixel_array[64, 64] == colours[5]).all()


def test_each_image_lies_on_and_references_its_source_slice(ct):
    files, loaded = ct
    images = make(loaded, label_map(), every=2)
    sources = [pydicom.dcmread(files[k], stop_before_pixels=True) for k in (0, 2, 4)]
    assert len(images) == 3
    for number, (image, source) in enumerate(zip(images, sources, strict=True), start=1):
        assert image.SOPClassUID == SecondaryCaptureImageStorage
        assert image.SOPInstanceUID == f"2.25.2000{2 * (number - 1)}"
        assert image.InstanceNumber == number
        assert image.SeriesInstanceUID == "2.25.1001" and image.SeriesNumber == 95
        assert image.SeriesDescription == "segnode overlay"
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                        "FrameOfReferenceUID", "StudyInstanceUID", "PatientID", "PatientName",
                        "AccessionNumber", "BodyPartExamined"):
            assert image[keyword].value == source[keyword].value, keyword
        assert list(image.PatientOrientation) == ["L", "P"]
        (reference,) = image.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        assert "ReferencedFrameNumber" not in reference
        assert image.PhotometricInterpretation == "RGB" and image.SamplesPerPixel == 3
        assert image.BurnedInAnnotation == "NO"
        assert "Laterality" not in image  # CHEST is not paired
        assert image.ContentDate == image.DateOfSecondaryCapture == "20261206"
        assert image.ContentTime == image.TimeOfSecondaryCapture == "210000.123456"


def test_every_image_passes_dciodvfy_and_a_rerun_writes_the_same_bytes(ct, tmp_path):
    _, loaded = ct
    labels = label_map()
    first, second = make(loaded, labels), make(loaded, labels)
    for k, (image, again) in enumerate(zip(first, second, strict=True)):
        path = tmp_path / f"overlay-{k}.dcm"
        write_dicom_atomically(image, path)
        assert {line.strip() for line in dciodvfy(path)} <= EXTENDED_SOP_CLASS_WARNINGS
        rewritten = io.BytesIO()
        again.save_as(rewritten, enforce_file_format=True)
        assert path.read_bytes() == rewritten.getvalue()


def test_a_multi_frame_source_gives_each_frames_plane_and_number(tmp_path):
    path = write_enhanced_ct(tmp_path / "ct", slices=SLICES, rows=ROWS, columns=COLUMNS)
    loaded = load_series([path])
    images = make(loaded, label_map(), every=3)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    assert len(images) == 2
    for image, frame in zip(images, (loaded.volume.sources[0], loaded.volume.sources[3]), strict=True):
        groups = source.PerFrameFunctionalGroupsSequence[frame.frame_number - 1]
        assert image.ImagePositionPatient == groups.PlanePositionSequence[0].ImagePositionPatient
        assert image.Laterality == ""  # no Body Part Examined: whether it is paired is unknown
        (reference,) = image.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedFrameNumber == frame.frame_number
        write_dicom_atomically(image, tmp_path / "overlay.dcm")
        warnings = {line.strip() for line in dciodvfy(tmp_path / "overlay.dcm")}
        assert warnings <= EXTENDED_SOP_CLASS_WARNINGS | {LATERALITY_UNKNOWN_WARNING}


def test_labels_without_a_structure_or_slices_without_a_header_are_refused(ct):
    _, loaded = ct
    with pytest.raises(OverlayInputError, match="label values \\[5\\]"):
        make(loaded, label_map(), structures=STRUCTURES[:2])
    left_out = loaded.volume.sources[2].sop_instance_uid
    headers = tuple(header for header in loaded.headers if header.SOPInstanceUID != left_out)
    missing = LoadedSeries(volume=loaded.volume, warnings=(), headers=headers)
    with pytest.raises(OverlayInputError, match="slice 2's source image"):
        make(missing, label_map())
