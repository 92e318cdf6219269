"""Overlay images: the CT with every structure's outline in its colour, as Secondary Capture.

Many PACS show images and nothing else: no SEG, no SR. For them segnode
sends one RGB picture per source slice (or every Nth), the slice in a fixed
soft-tissue window with each structure's outline drawn over it in the colour
the SEG recommends for it (:mod:`dicomio.colours`), so the same structure has
the same colour wherever it is shown.

Outlines only, never a fill, so the CT under them stays readable. A
structure's outline is the set of its own voxels that have an in-plane
4-neighbour of another value (scikit-image's ``find_boundaries``, mode
``inner``): every coloured pixel lies on a voxel of that structure in the
label map, hence of its segment in the SEG. A label map gives every voxel one
value, so two structures' outlines never share a pixel and no drawing order
is needed; where two structures touch, both outlines run side by side.

The window is W400/L40 (soft tissue) for every series rather than the
source's first Window Center/Width: the outlined structures are mostly soft
tissue and fat, a source's first preset is often a lung or bone window for
such reconstructions, and a fixed window makes the pictures of two series
comparable and the same however the scanner was set up.

Each picture is a Secondary Capture Image (PS3.3 A.8.1) with the source
slice's Image Plane module (C.7.6.2: position, orientation, spacing, slice
thickness) and Frame of Reference module (C.7.4.1) added, a Standard Extended
SOP Class (PS3.4 B.1.3), so that a PACS links it to the CT slice it shows;
dciodvfy reports no error, only that those attributes are not in the standard
IOD. The Source Image Sequence names the slice's instance (and frame).

Images are uncompressed (Explicit VR Little Endian, the syntax every PACS
takes): 768 KiB for 512x512, so ``every`` keeps a 300-slice series' overlays
from weighing 230 MB (RLE Lossless only halved a noisy synthetic CT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Final

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing
from pydicom.uid import ExplicitVRLittleEndian
from skimage.segmentation import find_boundaries

from dicomio.colours import SOFT_TISSUE_WINDOW, structure_colour
from dicomio.derived import MAX_LO_LENGTH, DerivedInputError, copy_series_context, date_object
from dicomio.seg import MANUFACTURER, MODEL_NAME, LabelledStructure
from dicomio.volume import SourceFrame, Volume, frame_plane

__all__ = ["OverlayInputError", "overlay_images"]


#: Purpose of Reference of each Source Image Sequence item: DCM 121322
#: "Source image for image processing operation" (PS3.16 CID 7202).
_PURPOSE = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")


def _window_dataset() -> Dataset:
    """What pydicom's windowing reads: the window, and 8-bit unsigned output."""
    dataset = Dataset()
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsStored = 8
    dataset.PixelRepresentation = 0
    dataset.WindowCenter, dataset.WindowWidth = SOFT_TISSUE_WINDOW
    return dataset


_WINDOW: Final = _window_dataset()


class OverlayInputError(DerivedInputError):
    """Labels, structures or source images that cannot make overlay images."""

    made = "overlay images"


def overlay_images(
    volume: Volume,
    labels: np.ndarray,
    structures: Sequence[LabelledStructure],
    headers: Sequence[Dataset],
    *,
    every: int,
    series_instance_uid: str,
    sop_instance_uid: Callable[[int], str],
    series_number: int,
    series_description: str,
    created: datetime,
    device_serial_number: str,
) -> Iterator[hd.sc.SCImage]:
    """One overlay image for each `every`-th slice of `volume` (0, every, 2*every...),
    made as they are taken: a 300-slice series' images are 236 MB together.

    Parameters
    ----------
    volume : Volume
        The CT that was segmented.
    labels : numpy.ndarray
        Integer label map of ``volume.array.shape`` (0 is background).
    structures : sequence of LabelledStructure
        What each value means; every value drawn must be listed.
    headers : sequence of pydicom.dataset.Dataset
        Headers of the volume's source instances (no Pixel Data needed):
        patient, study, plane and frame of reference are copied from them.
    every : int
        Draw every `every`-th slice; 1 draws them all.
    series_instance_uid : str
        The overlay series.
    sop_instance_uid : callable
        The SOP Instance UID of the image of slice ``k``; derived, so that a
        retry writes the same objects.
    series_number, series_description : int, str
        Of the overlay series (the description at most 64 characters).
    created : datetime
        The job's time: every date and time of the images.
    device_serial_number : str
        Which segnode installation made them.

    Yields
    ------
    highdicom.sc.SCImage
        The images, Instance Number 1, 2... in slice order, not yet written.

    Raises
    ------
    OverlayInputError
        If labels do not fit the volume, a drawn value is not among
        `structures`, a source header is missing, or an argument is out of
        range; the arguments are checked before the first image.
    """
    series_uid = volume.series_instance_uid
    if labels.shape != volume.array.shape:
        raise OverlayInputError(
            series_uid, f"labels of shape {labels.shape} do not fit the volume's {volume.array.shape}"
        )
    if labels.dtype.kind not in "ui":
        raise OverlayInputError(series_uid, f"a label map needs integer voxels, not {labels.dtype}")
    if every < 1:
        raise OverlayInputError(series_uid, f"every={every}: must be 1 or more")
    if not series_description or len(series_description) > MAX_LO_LENGTH:
        raise OverlayInputError(
            series_uid,
            f"series description {series_description!r} must have 1 to {MAX_LO_LENGTH} characters"
        )
    colours = {item.value: structure_colour(item.code) for item in structures}
    by_uid = {header.SOPInstanceUID: header for header in headers}
    series_uid = volume.series_instance_uid

    def images() -> Iterator[hd.sc.SCImage]:
        for number, k in enumerate(range(0, volume.array.shape[0], every), start=1):
            source = volume.sources[k]
            header = by_uid.get(source.sop_instance_uid)
            if header is None:
                raise OverlayInputError(
                    series_uid, f"slice {k}'s source image {source.sop_instance_uid} not given"
                )
            try:
                plane = frame_plane(header, source.frame_number)
            except (AttributeError, IndexError, StopIteration) as error:
                raise OverlayInputError(
                    series_uid,
                    f"slice {k}'s source image {source.sop_instance_uid}: no image plane ({error!r})",
                ) from None
            pixels = _picture(volume.array[k], labels[k], colours, series_uid, k)
            yield _image(
                plane,
                pixels, header, source,
                series_instance_uid=series_instance_uid, sop_instance_uid=sop_instance_uid(k),
                instance_number=number, series_number=series_number,
                series_description=series_description, created=created,
                device_serial_number=device_serial_number,
            )

    return images()


def _picture(
    hu: np.ndarray, labels: np.ndarray, colours: dict[int, tuple[int, int, int]], series_uid: str, k: int
) -> np.ndarray:
    """The RGB picture of one slice: windowed grey, outlines in their colours."""
    grey = np.rint(apply_windowing(hu, _WINDOW)).astype(np.uint8)
    picture = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    values = np.unique(labels)
    unknown = sorted(set(values[values != 0].tolist()) - colours.keys())
    if unknown:
        raise OverlayInputError(series_uid, f"slice {k}: label values {unknown} are not among the structures")
    outline = find_boundaries(labels, connectivity=1, mode="inner", background=0)
    table = np.zeros((int(values.max()) + 1, 3), dtype=np.uint8)
    for value in values[values != 0]:
        table[value] = colours[int(value)]
    picture[outline] = table[labels[outline]]
    return picture


def _image(
    plane: Dataset,
    pixels: np.ndarray,
    header: Dataset,
    source: SourceFrame,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int,
    series_description: str,
    created: datetime,
    device_serial_number: str,
) -> hd.sc.SCImage:
    """The Secondary Capture image of one slice, placed where its source slice lies."""
    row, column = np.array(plane.ImageOrientationPatient[:3]), np.array(plane.ImageOrientationPatient[3:])
    # Array axes (slice, row, column) point along the normal, the column and the row cosines.
    _, down, across = hd.spatial.get_closest_patient_orientation(
        np.column_stack([np.cross(row, column), column, row])
    )
    image = hd.sc.SCImage.from_ref_dataset(
        header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        device_serial_number=device_serial_number,
        series_description=series_description,
        patient_orientation=(across, down),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    # Image Plane and Frame of Reference modules, as the source has them.
    image.ImagePositionPatient = plane.ImagePositionPatient
    image.ImageOrientationPatient = plane.ImageOrientationPatient
    image.PixelSpacing = plane.PixelSpacing
    image.SliceThickness = plane.get("SliceThickness")
    image.FrameOfReferenceUID = header.FrameOfReferenceUID
    image.PositionReferenceIndicator = header.get("PositionReferenceIndicator")
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.SOPClassUID
    reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if source.frame_number is not None:
        reference.ReferencedFrameNumber = source.frame_number
    reference.PurposeOfReferenceCodeSequence = [_PURPOSE]
    image.SourceImageSequence = [reference]
    image.DerivationDescription = (
        f"CT in window W{SOFT_TISSUE_WINDOW[1]}/L{SOFT_TISSUE_WINDOW[0]} with segmented structures' outlines"
    )
    # Made by software from the CT's pixels: Workstation (PS3.3 C.8.6.1), not Digital Interface.
    image.ConversionType = "WSD"
    image.BurnedInAnnotation = "NO"
    copy_series_context(image, header)
    if "BodyPartExamined" not in image:
        # Laterality is Type 2C, required for a paired body part (PS3.3 C.7.3.1):
        # not knowing the part, it is present and empty, "unknown".
        image.Laterality = ""
    date_object(image, created)
    image.DateOfSecondaryCapture = created.strftime("%Y%m%d")
    image.TimeOfSecondaryCapture = created.strftime("%H%M%S.%f")
    return image
