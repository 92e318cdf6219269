"""RT Structure Sets (PS3.3 A.19) from segnode's label maps, for radiotherapy planning systems.

A planning system imports structures as contours, not as a SEG: one ROI per
present structure, one closed polygon per piece of it on every source slice,
in patient coordinates (mm), each referencing the image it lies on. rt-utils
1.2.7 (the library TotalSegmentator writes its RTSTRUCTs with) traces the
polygons with OpenCV through the centres of the boundary voxels, so that a
reader filling them on the source grid gets the voxels back, and makes the
dataset, the referenced frame of reference and the Structure Set ROI and RT
ROI Observations items.

What segnode does around it, and why:

* rt-utils takes a mask indexed ``[row, column, slice]`` whose slices follow
  the list of images it is given, and places slice ``i`` at the first image's
  position plus ``i`` steps along the normal. It is given the source headers
  in the volume's own order (ascending along the normal, whatever order the
  files came in), so slice ``i`` of the label map is contoured on
  ``volume.sources[i]``, on any orientation.
* rt-utils 1.2.7 steps along columns by the row spacing (Pixel Spacing's first
  value) and reads only single-frame images, so series with non-square pixels
  or multi-frame images are refused (:class:`RTStructInputError`).
* Holes: the standard's keyhole (PS3.3 C.8.8.6.3) turns a structure with a hole
  into one contour, which every planning system reads; the newer XOR
  contours (CLOSEDPLANAR_XOR) are not known to older ones, and nested
  CLOSED_PLANAR contours have no defined meaning. rt-utils' own keyhole
  (``use_pin_hole``) tests the pixel above a hole with row and column swapped
  and leaves most holes uncut, so the channels are cut here: one voxel wide,
  from each hole's first voxel straight towards row 0, through the wall to
  the next background. The channel's voxels are all that is lost.
* Identity and dates come from the caller, replacing rt-utils' random UIDs
  and times (a rerun writes the same bytes); patient, study and frame of
  reference are copied from the source, and the Type 2 attributes rt-utils
  omits (Accession Number, Referring Physician's Name, Operators' Name,
  Position Reference Indicator) are written; rt-utils' Manufacturer,
  Institution and ROI Observation Description (Qurit's) are replaced or
  dropped.
* The ROI Contour items are made here from rt-utils' polygons
  (``image_helper.get_contours_coords``): rt-utils' own items took 12 s for
  60 slices of the built-in structures, in pydicom's checks of each value,
  and its float32 coordinates such as 29.20000195503235 exceed the 16
  characters of DS (dciodvfy errors). Points are rounded to 1 micrometre,
  far below any voxel, and written as encoded text.
* Every ROI is one ROI Contour item; ROI numbers are the SEG's segment
  numbers, and the outline (if any) comes last.

The file keeps rt-utils' Implicit VR Little Endian: its 4-byte value
lengths carry Contour Data of any size, where Explicit VR's 2-byte DS length
stops at 65,534 bytes (PS3.3 C.8.8.6, note on Contour Data).

RT ROI Interpreted Type: EXTERNAL for the body (Segmented Property Type
"Entire body", SCT 38266002; at most one in a structure set), ORGAN for every
other anatomical structure or tissue (fat and muscle compartments
included: ORGAN is the defined term for patient anatomy), and empty (Type 2,
unknown) for anything else, such as a lesion, whose role in a plan (GTV...)
is the clinician's to say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import numpy as np
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from rt_utils import ds_helper, image_helper
from rt_utils.utils import ROIData
from scipy import ndimage

from dicomio.codes import ANATOMICAL_STRUCTURE, TISSUE, StructureCode, structure_code
from dicomio.colours import structure_colour
from dicomio.derived import DerivedInputError, copy_patient_and_study, date_object
from dicomio.seg import MANUFACTURER, MODEL_NAME, LabelledStructure, Segment, plan_segments
from dicomio.volume import Volume

__all__ = ["RTStructInputError", "RTStructIdentity", "write_rtstruct"]

#: What rt-utils sets that is not segnode's to say: its makers' institution;
#: and its copies of patient and study attributes, empty where the source has
#: none (the source's own replace them).
_NOT_OURS: Final = ("InstitutionName", "PatientAge", "PatientSize", "PatientWeight", "StudyDescription")

#: Segmented Property Type of the body outline, the one EXTERNAL ROI.
_ENTIRE_BODY: Final = structure_code("body").property_type

#: Contour Image Sequence, Contour Geometric Type, Number of Contour Points and
#: Contour Data (PS3.3 C.8.8.6).
_CONTOUR_IMAGES: Final = Tag(0x3006, 0x0016)
_GEOMETRIC_TYPE: Final = Tag(0x3006, 0x0042)
_POINT_COUNT: Final = Tag(0x3006, 0x0046)
_CONTOUR_DATA: Final = Tag(0x3006, 0x0050)

#: Contour points are rounded to this many decimals of a millimetre.
_POINT_DECIMALS: Final = 3

#: In-slice 4-connectivity: what OpenCV, tracing 8-connected foreground,
#: sees as one background region (a hole) in a slice.
_IN_SLICE: Final = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = ndimage.generate_binary_structure(2, 1)


class RTStructInputError(DerivedInputError):
    """Labels, structures or source images that cannot make a valid RTSTRUCT."""

    made = "RTSTRUCT"


@dataclass(frozen=True)
class RTStructIdentity:
    """Who the new RTSTRUCT is: derived by the caller, so a retry makes the same object."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    series_description: str
    #: Structure Set Label (3006,0002), Type 1, at most 16 characters (SH).
    structure_set_label: str
    #: Series, Instance Creation and Structure Set date and time.
    created: datetime


def write_rtstruct(
    volume: Volume,
    labels: np.ndarray,
    structures: Sequence[LabelledStructure],
    source_images: Sequence[Dataset],
    identity: RTStructIdentity,
    *,
    outline: StructureCode | None = None,
    segments: Sequence[Segment] | None = None,
) -> Dataset:
    """An RT Structure Set of `volume` with one ROI per present structure.

    Parameters
    ----------
    volume : Volume
        The image that was segmented; `labels` lie on its grid.
    labels : numpy.ndarray
        Integer label map of ``volume.array.shape``; 0 is background.
    structures : sequence of LabelledStructure
        What each value means; their order sets the ROI numbers (the SEG's
        segment numbers, :func:`dicomio.seg.plan_segments`).
    source_images : sequence of pydicom.dataset.Dataset
        Headers of the single-frame images `volume` was read from (no Pixel
        Data needed), in any order: every one is referenced, and patient,
        study and frame of reference are copied from them.
    identity : RTStructIdentity
        UIDs, number, description, label and dates of the new object.
    outline : StructureCode, optional
        What all labelled voxels together are (the segmentation's outline,
        the body for the built-in segmenter): written as one more ROI, last.
    segments : sequence of Segment, optional
        What :func:`dicomio.seg.plan_segments` gave for these labels, for a
        caller that has it already (it is a pass over the whole label map).

    Returns
    -------
    pydicom.dataset.Dataset
        The RTSTRUCT, ready to save (Implicit VR Little Endian).

    Raises
    ------
    RTStructInputError
        No structure present, labels not on the volume's grid, or a series
        rt-utils cannot contour exactly (multi-frame, non-square pixels).
    dicomio.seg.SegInputError
        Labels and structures that disagree (as for a SEG).
    dicomio.colours.UnknownColourError
        A structure without a display colour.
    """
    series_uid = volume.series_instance_uid
    if labels.shape != volume.array.shape:
        raise RTStructInputError(
            series_uid, f"labels of shape {labels.shape} for a volume of shape {volume.array.shape}"
        )
    present = segments if segments is not None else plan_segments(
        labels, structures, series_instance_uid=series_uid
    )
    if not present:
        raise RTStructInputError(series_uid, "no structure is present; a structure set needs one ROI")
    images = _images_in_volume_order(volume, source_images)
    rois = [(item.code, item.value) for item in present]
    if outline is not None:
        rois.append((outline, None))

    dataset = ds_helper.generate_base_dataset()
    ds_helper.add_refd_frame_of_ref_sequence(dataset, images)
    frame_of_reference_uid = dataset.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    for number, (code, value) in enumerate(rois, start=1):
        # One mask at a time: 117 of a 512x512x600 CT would take 18 GB.
        mask = labels > 0 if value is None else labels == value
        roi = ROIData(
            # rt-utils indexes masks [row, column, slice].
            mask=np.moveaxis(_keyholed(mask), 0, -1),
            color=list(structure_colour(code)),
            number=number,
            name=code.label,
            frame_of_reference_uid=frame_of_reference_uid,
            roi_generation_algorithm="AUTOMATIC",
        )
        dataset.StructureSetROISequence.append(ds_helper.create_structure_set_roi(roi))
        dataset.ROIContourSequence.append(_roi_contour(roi, images))
        dataset.RTROIObservationsSequence.append(_observation(roi, code))
    _describe(dataset, images[0], identity)
    return dataset


def _images_in_volume_order(volume: Volume, source_images: Sequence[Dataset]) -> list[Dataset]:
    """The source headers in slice order, or why rt-utils cannot contour on them."""
    series_uid = volume.series_instance_uid
    if any(source.frame_number is not None for source in volume.sources):
        raise RTStructInputError(series_uid, "rt-utils contours single-frame images, this one is multi-frame")
    by_uid = {str(image.SOPInstanceUID): image for image in source_images}
    missing = [s.sop_instance_uid for s in volume.sources if s.sop_instance_uid not in by_uid]
    if missing:
        raise RTStructInputError(series_uid, f"no header given for images {missing}")
    images = [by_uid[source.sop_instance_uid] for source in volume.sources]
    row_spacing, column_spacing = (float(v) for v in images[0].PixelSpacing)
    if not np.isclose(row_spacing, column_spacing, rtol=1e-6):
        raise RTStructInputError(
            series_uid,
            f"pixel spacing {row_spacing} x {column_spacing} mm is not square; rt-utils 1.2.7 "
            "would place the contours' columns by the row spacing",
        )
    return images


def _keyholed(mask: np.ndarray) -> np.ndarray:
    """`mask` with each in-slice hole joined to the background beyond its wall
    by a one-voxel channel from the hole's first voxel towards row 0.

    Holes are the in-slice background regions that do not reach the edge of
    the mask's bounding box (anything on that edge touches the background
    outside it): one labelling, where filling holes by dilation took 0.8 s
    per structure on 60 slices of 512x512.
    """
    box = _bounding_box(mask)
    inside = mask[box]
    regions, count = ndimage.label(~inside, structure=_IN_SLICE)
    edges = (regions[:, 0, :], regions[:, -1, :], regions[:, :, 0], regions[:, :, -1])
    outside = np.unique(np.concatenate([edge.ravel() for edge in edges]))
    holes = np.setdiff1d(np.arange(1, count + 1), outside, assume_unique=True)
    if holes.size == 0:
        return mask
    cut = mask.copy()
    cut_inside = cut[box]
    extents = ndimage.find_objects(regions)
    for number in holes:
        planes, rows, columns = extents[number - 1]
        plane, top = planes.start, rows.start
        column = columns.start + int(np.argmax(regions[plane, top, columns] == number))
        # The wall upwards ends at background, or at the box's edge (beyond it).
        thickness = int(np.argmin(np.append(inside[plane, top - 1 :: -1, column], False)))
        cut_inside[plane, top - thickness : top, column] = False
    return cut


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest box holding every voxel of a non-empty `mask` (3 ms for
    60 slices of 512x512, where ``ndimage.find_objects`` took 57 ms)."""
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return box[0], box[1], box[2]


def _describe(dataset: Dataset, source: Dataset, identity: RTStructIdentity) -> None:
    """Identity, dates, equipment, patient, study and frame of reference."""
    for keyword in _NOT_OURS:
        if keyword in dataset:
            del dataset[keyword]
    if "SpecificCharacterSet" in source:
        dataset.SpecificCharacterSet = source.SpecificCharacterSet
    else:
        del dataset.SpecificCharacterSet
    copy_patient_and_study(dataset, source)
    dataset.FrameOfReferenceUID = source.FrameOfReferenceUID
    dataset.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")  # Type 2
    dataset.SeriesInstanceUID = identity.series_instance_uid
    dataset.SOPInstanceUID = identity.sop_instance_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = identity.sop_instance_uid
    dataset.SeriesNumber = identity.series_number
    dataset.SeriesDescription = identity.series_description
    dataset.InstanceNumber = 1
    dataset.OperatorsName = ""
    dataset.StructureSetLabel = identity.structure_set_label
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = MODEL_NAME
    dataset.SeriesDate = dataset.SeriesTime = ""
    date_object(dataset, identity.created)
    dataset.StructureSetDate = dataset.InstanceCreationDate
    dataset.StructureSetTime = dataset.InstanceCreationTime


def _observation(roi: ROIData, code: StructureCode) -> Dataset:
    """rt-utils' RT ROI Observations item with segnode's RT ROI Interpreted Type
    (see the module docstring), without its observation description."""
    observation = ds_helper.create_rtroi_observation(roi)
    del observation.ROIObservationDescription
    if code.property_type == _ENTIRE_BODY:
        observation.RTROIInterpretedType = "EXTERNAL"
    elif code.category in (ANATOMICAL_STRUCTURE, TISSUE):
        observation.RTROIInterpretedType = "ORGAN"
    return observation


def _roi_contour(roi: ROIData, images: Sequence[Dataset]) -> Dataset:
    """The ROI Contour item of `roi`: rt-utils' polygons on each image, each
    referencing its image.

    The contour items (tens of thousands for a CT's fragmented structures)
    are made of encoded elements, which pydicom writes as they are where
    the item says it is encoded as the file will be (Implicit VR Little
    Endian, the character set a new item has); setting them as attributes,
    pydicom checks and converts every value (5 to 10 microseconds each: 30 s
    for the 2 million coordinates of the built-in structures on 60 slices).
    """
    contours = []
    for image, polygons in zip(images, image_helper.get_contours_coords(roi, images), strict=True):
        if not polygons:
            continue
        # One item for all contours on the image: it is only ever written.
        reference = Dataset()
        reference.ReferencedSOPClassUID = image.SOPClassUID
        reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
        for points in polygons:
            contour = Dataset({
                _CONTOUR_IMAGES: DataElement(_CONTOUR_IMAGES, "SQ", [reference]),
                _GEOMETRIC_TYPE: _encoded(_GEOMETRIC_TYPE, "CS", "CLOSED_PLANAR"),
                _POINT_COUNT: _encoded(_POINT_COUNT, "IS", str(len(points) // 3)),
                _CONTOUR_DATA: _encoded(_CONTOUR_DATA, "DS", _decimal_strings(points)),
            })
            contour.set_original_encoding(True, True, default_encoding)
            contours.append(contour)
    item = Dataset()
    item.ROIDisplayColor = roi.color
    item.ContourSequence = contours
    item.ReferencedROINumber = roi.number
    return item


def _encoded(tag: BaseTag, vr: str, text: str) -> RawDataElement:
    """An element of ASCII text as Implicit VR Little Endian encodes it (padded to even length)."""
    value = text.encode("ascii")
    if len(value) % 2:
        value += b" "
    return RawDataElement(tag, vr, len(value), value, 0, True, True)


def _decimal_strings(points: Sequence[float]) -> str:
    """Contour Data as DS text, points rounded to 1 micrometre.

    rt-utils' float32 arithmetic leaves values such as 29.20000195503235,
    longer than the 16 characters of DS; the shortest text of each rounded
    value fits for any coordinate below 10^9 mm. Adding 0.0 turns -0.0 into 0.0.
    """
    rounded = np.round(np.asarray(points, dtype=np.float64), _POINT_DECIMALS) + 0.0
    return "\\".join(map(repr, rounded.tolist()))
