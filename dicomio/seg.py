"""DICOM Segmentation objects (PS3.3 A.51) from segnode's label maps.

One segment per structure that is present, numbered alike in the two forms
a destination may ask for, so that one SR's segment numbers fit either:

* BINARY (Segmentation Storage, 1.2.840.10008.5.1.4.1.1.66.4), each frame
  one segment on one slice: the form every viewer and PACS opens;
* LABELMAP (Label Map Segmentation Storage, 1.2.840.10008.5.1.4.1.1.66.7,
  Supplement 243 of 2024), one frame of segment numbers per slice that has
  any, the background described as segment 0 (highdicom's reading of the
  supplement, which no longer requires numbers to start at 1). Six to nine
  times faster to write, half the size and six times faster to read back,
  but not everyone has caught up: highdicom and dcmqi 1.5.7 read it; dcmjs
  0.52.2 (OHIF's) refuses it; Orthanc 1.10.1 stores it through its REST API
  but refuses it over C-STORE unless ``UnknownSopClassAccepted``; the
  installed dciodvfy (dicom3tools of 2022) knows no IOD for it
  (tests/test_seg.py checks it as a Segmentation Storage instance instead).

Every segment carries its structure's Recommended Display CIELab Value
(:mod:`dicomio.colours`), the colour segnode's pictures draw it in, and the
SEG series the source series' Body Part Examined.

highdicom builds the object from a label map (117 stacked masks of a
512x512x600 CT would take 18 GB) whose slices are handed over in the order
of their source images, so that highdicom copies each frame's position and
orientation from its source image and references it: the frames lie exactly
on the images a viewer shows them on, however the series is oriented or
ordered, and even where its positions jitter within what the series loader
accepts (a ``highdicom.Volume`` input would place frames by the affine and
reference sources only if every plane matched within 1 micrometre).

Measured with bench/seg_io.py (117 segments, 512x512x600, 2 busy cores),
after the segments are planned (0.5 s): BINARY, 9,271 frames, 8.5 s to
build and 5 to 7 s to save, peak 1.36 GB (1 GB above the inputs, mostly the
packed frames, held twice while highdicom joins them into Pixel Data);
LABELMAP, 593 frames, 1.3 s to build and 0.5 s to save, peak 0.84 GB.
Profiled, a BINARY build spends about a third in highdicom's mask loop
(every segment against every slice that has a label: 69,381 comparisons of
a whole slice), a third in the per-frame functional groups, an eighth in
the lookup tables highdicom builds for reading at the end of construction;
saving is pydicom's element-by-element writer, a fifth of it re-running its
ambiguous-VR correction at every level of nesting. None of that can be cut
from here short of rewriting highdicom or pydicom. ``workers`` only helps
encapsulated transfer syntaxes, and JPEG 2000 Lossless (allowed for
BINARY) took twice as long to write, with 2 workers, for a 45 times smaller
file; no dimension organization type applies (3D needs a single segment,
TILED_FULL a tiled slide image; highdicom refuses both here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Final

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomio.codes import ARTIFICIAL_INTELLIGENCE, Concept, StructureCode
from dicomio.colours import structure_colour
from dicomio.derived import MAX_LO_LENGTH, DerivedInputError, copy_series_context
from dicomio.volume import Volume, frame_plane

__all__ = [
    "AlgorithmIdentity",
    "EmptySegmentationError",
    "LabelledStructure",
    "Segment",
    "SegInputError",
    "plan_segments",
    "write_seg",
]

MANUFACTURER: Final = "segnode"
MODEL_NAME: Final = "segnode"

#: Probabilities are stored as 0..255 (BitsAllocated 8, the only depth a
#: FRACTIONAL SEG allows); a value below half a step is stored as 0.
_MAX_FRACTIONAL_VALUE: Final = 255
#: Largest Segment Number (0062,0004), VR US.
_MAX_SEGMENT_NUMBER: Final = 65535


class SegInputError(DerivedInputError):
    """Labels, structures or source images that cannot make a valid SEG."""

    made = "SEG"


class EmptySegmentationError(SegInputError):
    """No structure is present, and a SEG needs at least one segment (Type 1)."""


@dataclass(frozen=True)
class AlgorithmIdentity:
    """The model that produced the labels: the Segmentation Algorithm
    Identification Sequence (0062,0007) of every segment.

    ``family`` comes from CID 7162; a trained network is "Artificial
    Intelligence" (DCM 123110).
    """

    name: str
    version: str
    family: Concept = ARTIFICIAL_INTELLIGENCE


@dataclass(frozen=True)
class LabelledStructure:
    """A structure and its value in the label map (or probability channel)."""

    value: int
    code: StructureCode


@dataclass(frozen=True)
class Segment:
    """A structure as it is written: its Segment Number (0062,0004) in the SEG."""

    segment_number: int
    value: int
    code: StructureCode


def plan_segments(
    labels: np.ndarray,
    structures: Sequence[LabelledStructure],
    *,
    series_instance_uid: str,
    fractional: bool = False,
) -> tuple[Segment, ...]:
    """The segments :func:`write_seg` writes for these labels, and their numbers.

    Segments are numbered 1, 2, ... in the order of `structures`, skipping
    structures with no voxel (a segment without frames says nothing and
    viewers list it as if it had been found). Quantification and the SR use
    this to refer to segments by the numbers the SEG will have.

    Parameters
    ----------
    labels : numpy.ndarray
        See :func:`write_seg`.
    structures : sequence of LabelledStructure
        See :func:`write_seg`.
    series_instance_uid : str
        Source series, for error messages.
    fractional : bool
        Whether `labels` are probability maps.

    Returns
    -------
    tuple of Segment
        The present structures, in order, with their segment numbers.

    Raises
    ------
    SegInputError
        If labels or structures are inconsistent (see :func:`write_seg`).
    """
    _check_structures(structures, series_instance_uid)
    if fractional:
        present = _present_in_probabilities(labels, structures, series_instance_uid)
    else:
        present = _present_in_label_map(labels, structures, series_instance_uid)
    segments = tuple(
        Segment(number, item.value, item.code)
        for number, item in enumerate((s for s in structures if s.value in present), start=1)
    )
    if len(segments) > _MAX_SEGMENT_NUMBER:
        raise SegInputError(series_instance_uid, f"{len(segments)} segments, at most 65535 fit")
    return segments


def write_seg(
    volume: Volume,
    labels: np.ndarray,
    structures: Sequence[LabelledStructure],
    algorithm: AlgorithmIdentity,
    source_images: Sequence[Dataset],
    *,
    series_number: int,
    series_description: str,
    device_serial_number: str,
    fractional: bool = False,
    labelmap: bool = False,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    segments: Sequence[Segment] | None = None,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """A DICOM Segmentation of `volume` with one segment per present structure.

    Parameters
    ----------
    volume : Volume
        The image that was segmented; `labels` lie on its grid.
    labels : numpy.ndarray
        Without `fractional`: an integer label map of ``volume.array.shape``
        whose voxels hold structure values (0 is background). With
        `fractional`: probabilities in [0, 1] of shape ``(C,) +
        volume.array.shape``, ``labels[v]`` being the map of the structure
        with value ``v``, as a softmax over label values gives them (channel 0,
        the background, is not written).
    structures : sequence of LabelledStructure
        What each value means. Every non-zero value of a label map must be
        listed; the order sets the segment numbers (:func:`plan_segments`).
    algorithm : AlgorithmIdentity
        The model, recorded in every segment.
    source_images : sequence of pydicom.dataset.Dataset
        The source series' instances (headers suffice, no Pixel Data): every
        instance is referenced, and patient, study and frame of reference are
        copied from them. One dataset for a multi-frame image.
    series_number : int
        Series Number of the new series.
    series_description : str
        Series Description, at most 64 characters.
    device_serial_number : str
        Device Serial Number (Type 1 in the Enhanced General Equipment
        module): which segnode installation wrote the object.
    fractional : bool
        Write a FRACTIONAL (PROBABILITY) instead of a BINARY segmentation.
    labelmap : bool
        Write a LABELMAP segmentation (Label Map Segmentation Storage, one
        frame of segment numbers per slice with a label) instead of a BINARY one; the
        segments and their numbers are the same. Not with `fractional`.
    series_instance_uid, sop_instance_uid : str, optional
        UIDs of the new object; new random UIDs by default. Pass UIDs derived
        from the source series and the model so that a retry produces the same
        instance rather than a second one.
    segments : sequence of Segment, optional
        What :func:`plan_segments` gave for these `labels` and `structures`,
        for a caller that has it already: finding the present structures
        again is a pass over the whole label map (0.3 s for 512x512x300).
    instance_number : int
        Instance Number of the SEG in its series (a second SEG of the same
        series, the built-in segmenter's body outline, is 2).

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG instance (a pydicom ``Dataset``), not yet written anywhere.

    Raises
    ------
    EmptySegmentationError
        If no listed structure has a voxel.
    SegInputError
        If the labels do not match the volume or the structures, or the
        source images are not the volume's series or not where its slices are.
    """
    series_uid = volume.series_instance_uid
    if fractional and labelmap:
        raise SegInputError(series_uid, "a LABELMAP holds segment numbers, not probabilities")
    _check_text(series_description, "series description", series_uid)
    images, further, frame_index = _arrange_sources(volume, source_images)
    _check_geometry(volume, images, frame_index)
    expected_shape = (labels.shape[:1] if fractional else ()) + volume.array.shape
    if labels.shape != expected_shape:
        raise SegInputError(
            series_uid, f"labels of shape {labels.shape} do not fit the volume's {volume.array.shape}"
        )
    if segments is None:
        segments = plan_segments(labels, structures, fractional=fractional, series_instance_uid=series_uid)
    if not segments:
        raise EmptySegmentationError(series_uid, "no structure has a voxel")

    if fractional:
        pixels = _stacked_probabilities(labels, segments)
    else:
        pixels = _segment_number_map(labels, segments)
    pixels = _in_frame_order(pixels, frame_index, int(images[0].get("NumberOfFrames", 1)))
    descriptions = [_describe(segment, algorithm) for segment in segments]
    seg = hd.seg.Segmentation(
        source_images=images,
        further_source_images=further or None,
        pixel_array=pixels,
        segmentation_type=_segmentation_type(fractional=fractional, labelmap=labelmap),
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=_segnode_version(),
        device_serial_number=device_serial_number,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=_MAX_FRACTIONAL_VALUE,
        content_description=f"{algorithm.name} {algorithm.version}"[:MAX_LO_LENGTH],
        omit_empty_frames=True,
    )
    seg.SeriesDescription = series_description
    copy_series_context(seg, source_images[0])
    # Content Creator's Name is Type 2 in the Content Identification Macro
    # of the Segmentation Image Module: present, empty for an automatic
    # segmentation. highdicom omits it, and DCMTK-based readers (dcmqi) warn.
    seg.ContentCreatorName = ""
    return seg


def _segmentation_type(*, fractional: bool, labelmap: bool) -> hd.seg.SegmentationTypeValues:
    if fractional:
        return hd.seg.SegmentationTypeValues.FRACTIONAL
    return hd.seg.SegmentationTypeValues.LABELMAP if labelmap else hd.seg.SegmentationTypeValues.BINARY


def _segnode_version() -> str:
    try:
        return version("segnode")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _check_text(text: str, what: str, series_uid: str) -> None:
    if not text or len(text) > MAX_LO_LENGTH:
        raise SegInputError(series_uid, f"{what} {text!r} must have 1 to {MAX_LO_LENGTH} characters")


def _check_structures(structures: Sequence[LabelledStructure], series_uid: str) -> None:
    values = [s.value for s in structures]
    names = [s.code.name for s in structures]
    if len(set(values)) != len(values) or len(set(names)) != len(names):
        raise SegInputError(series_uid, f"structure values {values} or names {names} repeat")
    if values and min(values) < 1:
        raise SegInputError(series_uid, f"structure value {min(values)}: 0 is the background")


def _present_in_label_map(
    labels: np.ndarray, structures: Sequence[LabelledStructure], series_uid: str
) -> set[int]:
    if labels.dtype.kind not in "ui":
        raise SegInputError(series_uid, f"a label map needs integer voxels, not {labels.dtype}")
    low, high = int(labels.min(initial=0)), int(labels.max(initial=0))
    if low < 0 or high > _MAX_SEGMENT_NUMBER:
        raise SegInputError(series_uid, f"label values from {low} to {high}, expected 0 to 65535")
    counts = np.zeros(high + 1, dtype=np.int64)
    for plane in labels:
        # bincount casts to int64: slice by slice that is 2 MB, for the
        # whole 512x512x600 volume 1.2 GB and 15 times slower.
        counts += np.bincount(plane.ravel(), minlength=high + 1)
    found = {int(v) for v in np.flatnonzero(counts[1:]) + 1}
    unknown = found - {s.value for s in structures}
    if unknown:
        raise SegInputError(series_uid, f"label values {sorted(unknown)} are not among the structures")
    return found


def _present_in_probabilities(
    labels: np.ndarray, structures: Sequence[LabelledStructure], series_uid: str
) -> set[int]:
    if labels.dtype.kind != "f":
        raise SegInputError(series_uid, f"probability maps need floating point voxels, not {labels.dtype}")
    beyond = [s.value for s in structures if s.value >= labels.shape[0]]
    if beyond:
        raise SegInputError(series_uid, f"values {beyond} have no channel among {labels.shape[0]}")
    present = set()
    for item in structures:
        channel = labels[item.value]
        low, high = float(channel.min()), float(channel.max())
        if low < 0.0 or high > 1.0:
            raise SegInputError(
                series_uid, f"{item.code.name}: probabilities from {low} to {high}, expected 0 to 1"
            )
        # A map that rounds to a stored 0 everywhere would have no frame.
        if round(high * _MAX_FRACTIONAL_VALUE) > 0:
            present.add(item.value)
    return present


def _arrange_sources(
    volume: Volume, source_images: Sequence[Dataset]
) -> tuple[list[Dataset], list[Dataset], list[int] | None]:
    """Source images in the volume's slice order, the rest, and the frame of each slice.

    Returns the images highdicom places the frames by (one per slice, or the
    one multi-frame image), the other instances given (referenced only, e.g.
    a localizer the series loader left out) and, for a multi-frame image,
    the 0-based frame index of each slice.
    """
    series_uid = volume.series_instance_uid
    if not source_images:
        raise SegInputError(series_uid, "no source images")
    for image in source_images:
        uid = image.get("SOPInstanceUID")
        if image.get("SeriesInstanceUID") != series_uid:
            raise SegInputError(
                series_uid, f"source image {uid} is from series {image.get('SeriesInstanceUID')}"
            )
        if image.get("FrameOfReferenceUID") != volume.frame_of_reference_uid:
            raise SegInputError(
                series_uid, f"source image {uid} has frame of reference {image.get('FrameOfReferenceUID')}, "
                f"the volume {volume.frame_of_reference_uid}"
            )
    by_uid = {image.SOPInstanceUID: image for image in source_images}
    used = list(dict.fromkeys(frame.sop_instance_uid for frame in volume.sources))
    missing = [uid for uid in used if uid not in by_uid]
    if missing:
        raise SegInputError(series_uid, f"{len(missing)} slices' source images not given, e.g. {missing[0]}")
    used_set = set(used)
    further = [image for uid, image in by_uid.items() if uid not in used_set]
    if volume.sources[0].frame_number is None:
        return [by_uid[uid] for uid in used], further, None
    if len(used) != 1:
        raise SegInputError(
            series_uid, f"slices come from {len(used)} multi-frame images, highdicom takes one"
        )
    return [by_uid[used[0]]], further, [frame.frame_number - 1 for frame in volume.sources]


def _check_geometry(volume: Volume, images: Sequence[Dataset], frame_index: Sequence[int] | None) -> None:
    """Each slice must lie on its source image: the SEG's frames are placed there.

    highdicom copies every frame's position and orientation from the source
    image of its slice, so the frames coincide exactly with the images a
    viewer shows them on, even where a series' positions jitter within what
    the series loader accepts. This check refuses a volume whose grid is not
    that of its sources (another orientation, flipped or shifted), which
    would otherwise be written misplaced. A source's first pixel must round
    to its slice's first voxel, and the directions must agree.
    """
    to_index = np.linalg.inv(volume.affine)
    row = volume.affine[:3, 2] / np.linalg.norm(volume.affine[:3, 2])
    column = volume.affine[:3, 1] / np.linalg.norm(volume.affine[:3, 1])
    cosines = np.concatenate([row, column])
    for k, source in enumerate(volume.sources):
        image = images[0] if frame_index is not None else images[k]
        position, orientation = _plane(image, source.frame_number, volume.series_instance_uid)
        offset = (to_index @ np.append(position, 1.0))[:3] - (k, 0, 0)
        if np.any(np.abs(offset) >= 0.5) or not np.allclose(orientation, cosines, atol=1e-3):
            raise SegInputError(
                volume.series_instance_uid,
                f"slice {k} is not on its source image {source.sop_instance_uid}"
                f"{'' if source.frame_number is None else f' frame {source.frame_number}'}: first pixel "
                f"{offset.round(2).tolist()} voxels off, orientation {orientation.round(4).tolist()}",
            )


def _plane(image: Dataset, frame_number: int | None, series_uid: str) -> tuple[np.ndarray, np.ndarray]:
    """ImagePositionPatient and ImageOrientationPatient of an image or one of its frames."""
    try:
        plane = frame_plane(image, frame_number)
        position, orientation = plane.ImagePositionPatient, plane.ImageOrientationPatient
    except (AttributeError, IndexError, StopIteration) as error:
        raise SegInputError(
            series_uid, f"source image {image.get('SOPInstanceUID')} frame {frame_number}: no plane ({error})"
        ) from None
    return np.array(position, dtype=np.float64), np.array(orientation, dtype=np.float64)


def _in_frame_order(array: np.ndarray, frame_index: Sequence[int] | None, frame_count: int) -> np.ndarray:
    """`array` (slices first) rearranged into the multi-frame source's frames."""
    if frame_index is None:
        return array
    framed = np.zeros((frame_count,) + array.shape[1:], dtype=array.dtype)
    framed[list(frame_index)] = array
    return framed


def _segment_number_map(labels: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """The label map with each value replaced by its segment number (0 elsewhere)."""
    dtype = np.uint8 if len(segments) <= np.iinfo(np.uint8).max else np.uint16
    lookup = np.zeros(int(labels.max()) + 1, dtype=dtype)
    for segment in segments:
        lookup[segment.value] = segment.segment_number
    if labels.dtype == dtype and np.array_equal(lookup, np.arange(lookup.size)):
        return labels  # already numbered 1..N: no 150 MB copy
    return lookup[labels]


def _stacked_probabilities(labels: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """The present structures' maps as float32 [slice, row, column, segment].

    highdicom takes float32 or float64; float32 halves the copy, and a
    probability stored in 8 bits needs no more.
    """
    chosen = labels[[segment.value for segment in segments]].astype(np.float32, copy=False)
    return np.moveaxis(chosen, 0, -1)


def _describe(segment: Segment, algorithm: AlgorithmIdentity) -> hd.seg.SegmentDescription:
    """The segment's item of the Segment Sequence, in the colour every segnode picture gives it."""
    code = segment.code
    region = code.anatomic_region_code
    description = hd.seg.SegmentDescription(
        segment_number=segment.segment_number,
        segment_label=code.label,
        segmented_property_category=code.segmented_property_category,
        segmented_property_type=code.segmented_property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=algorithm.family.coded(), version=algorithm.version
        ),
        anatomic_regions=None if region is None else [region],
        display_color=hd.color.CIELabColor.from_rgb(*structure_colour(code)),
    )
    # highdicom has no arguments for the modifiers; both are nested in the
    # item they modify (Segment Description Macro and General Anatomy
    # Optional Macro of PS3.3), where dcmqi and 3D Slicer read them.
    type_modifier = code.segmented_property_type_modifier
    if type_modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            type_modifier
        ]
    region_modifier = code.anatomic_region_modifier
    if region_modifier is not None:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [region_modifier]
    return description
