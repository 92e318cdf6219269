"""Load the instances of one DICOM series into a ``Volume`` with exact geometry.

A segmentation is only as good as the grid it is computed on: a slice out
of order, a missing slice or a tilted stack moves every organ boundary that
segnode measures and sends back. So this module computes the grid from the
standard's geometry attributes alone and refuses what it cannot represent
exactly, instead of guessing.

Ordering
    Slices are ordered by the projection of ImagePositionPatient on the slice
    normal, the cross product of the row and column cosines of
    ImageOrientationPatient (PS3.3 C.7.6.2.1.1), ascending, so the slice
    axis of the affine points along the normal. InstanceNumber and file
    names are never used: scanners number and name slices in either
    direction, and PACS rename files.

Single-frame and multi-frame
    Enhanced CT and PET and Legacy Converted Enhanced images are read frame
    by frame from the Per-frame Functional Groups, falling back to the Shared
    Functional Groups (PlanePositionSequence, PlaneOrientationSequence,
    PixelMeasuresSequence, PixelValueTransformationSequence; PS3.3 C.7.6.16).
    Each slice keeps its own RescaleSlope and RescaleIntercept.

Values
    The array holds rescaled values (HU for CT). It is ``int16`` when every
    slope is 1, every intercept integral and every value fits, which is the
    case of nearly all CT series and halves the memory of ``float32``;
    otherwise it is ``float32``.

Dropped, with a ``SeriesWarning`` (the image is not part of the volume and
that is all it changes):

* images whose ImageType contains LOCALIZER (scout views sent with the
  series);
* a few images (at most ``MAX_STRAY_IMAGES``, and at most a quarter of the
  bulk) whose orientation differs from the rest: localizers that do not
  say so;
* an instance given twice (same SOP Instance UID: the same image).

Refused, with a ``SeriesError`` whose ``problem`` says why: instances of
several series or frames of reference; images that cannot be read or
decoded, or whose geometry attributes are missing or malformed; mixed
orientations (more than a few), matrix sizes or pixel spacings; two
different images at one position; missing slices or irregular spacing;
fewer than two slices; and gantry tilt.

Gantry tilt is refused, not resampled. A tilted stack is a sheared grid;
resampling it onto an orthogonal grid would interpolate the HU values
(so the volume would no longer hold what the scanner measured) and every
resampled slice would mix several source images, so ``Volume.sources`` and
the DICOM-SEG and SR written from it could no longer reference the images
a reader looks at. A tilted series has to be reconstructed without tilt at
the scanner (or resampled knowingly before it is sent).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomio.volume import SourceFrame, Volume

__all__ = [
    "MAX_STRAY_IMAGES",
    "SeriesProblem",
    "SeriesError",
    "DropReason",
    "SeriesWarning",
    "LoadedSeries",
    "load_series",
    "VolumeReadError",
    "read_volume",
    "series_files",
]

#: Most images whose orientation differs from the bulk that are dropped as
#: unmarked localizers (a scout protocol gives one to three); more than this
#: is a second stack and the series is refused.
MAX_STRAY_IMAGES: Final = 3

#: Largest difference between two direction cosines still taken as the same
#: orientation (about 0.006 degrees): scanners repeat the cosines of a stack
#: exactly, and DS rounding to 16 characters stays far below this.
_COSINE_TOLERANCE: Final = 1e-4

#: Largest deviation of one slice step from the median step, as a fraction
#: of the median, before slices count as missing or irregular. Positions
#: rounded to 0.01 mm move a 1 mm step by 1-2%; a missing slice moves it by
#: 100%.
_SPACING_TOLERANCE: Final = 0.05

#: Slices closer than this along the normal (mm) share one position.
_DUPLICATE_MM: Final = 0.01

#: Largest displacement of a slice across the slice direction, as a fraction
#: of the smaller pixel spacing, before the stack counts as tilted: below a
#: tenth of a pixel no voxel of the orthogonal grid moves visibly.
_TILT_TOLERANCE_PIXELS: Final = 0.1

#: Tolerance on unit length and orthogonality of the two cosine vectors.
_ORTHONORMAL_TOLERANCE: Final = 1e-3

_INT16: Final = np.iinfo(np.int16)

#: Float Pixel Data (7FE0,0008), the first of the pixel data elements, where
#: ``stop_before_pixels`` stops.
_FIRST_PIXEL_DATA_TAG: Final = 0x7FE00008


class SeriesProblem(Enum):
    """Why a series was refused (``SeriesError.problem``)."""

    NO_IMAGES = "no images"
    UNREADABLE = "unreadable instance"
    MISSING_ATTRIBUTE = "missing attribute"
    INVALID_ATTRIBUTE = "invalid attribute"
    UNDECODABLE = "undecodable pixel data"
    MIXED_SERIES = "instances of several series"
    MIXED_FRAME_OF_REFERENCE = "several frames of reference"
    INVALID_ORIENTATION = "invalid image orientation"
    MIXED_ORIENTATION = "mixed orientations"
    MIXED_MATRIX = "mixed matrix sizes"
    MIXED_PIXEL_SPACING = "mixed pixel spacings"
    TOO_FEW_SLICES = "too few slices"
    DUPLICATE_POSITION = "duplicated slice positions"
    MISSING_SLICES = "missing slices"
    IRREGULAR_SPACING = "irregular slice spacing"
    GANTRY_TILT = "gantry tilt"


class SeriesError(Exception):
    """A series that cannot be loaded into an exact ``Volume``.

    Parameters
    ----------
    series_instance_uid : str
        The series concerned; empty when not known yet (unreadable file).
    problem : SeriesProblem
        What kind of problem, for callers that react by kind.
    detail : str
        What exactly is wrong, naming instances, positions or values.
    """

    def __init__(self, series_instance_uid: str, problem: SeriesProblem, detail: str) -> None:
        super().__init__(f"series {series_instance_uid or '(unknown)'}: {problem.value}: {detail}")
        self.series_instance_uid = series_instance_uid
        self.problem = problem
        self.detail = detail


class DropReason(Enum):
    """Why images were left out of the volume (``SeriesWarning.reason``)."""

    LOCALIZER = "localizer image"
    STRAY_ORIENTATION = "orientation differs from the rest of the series"
    DUPLICATE_INSTANCE = "instance given more than once"


@dataclass(frozen=True)
class SeriesWarning:
    """Images left out of the volume, reported so that nothing is dropped silently."""

    reason: DropReason
    sources: tuple[SourceFrame, ...]
    detail: str


@dataclass(frozen=True)
class LoadedSeries:
    """The volume of a series, what was left out to build it, and the
    headers of the instances it was built from (no pixel data; none for an
    image file): what a SEG and SR derived from the volume reference, kept
    so that nobody reads the files again for them."""

    volume: Volume
    warnings: tuple[SeriesWarning, ...]
    headers: tuple[Dataset, ...] = ()


@dataclass(frozen=True, eq=False)
class _Frame:
    """One 2-D image: a single-frame instance or one frame of a multi-frame one."""

    dataset: Dataset
    source: SourceFrame
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    matrix: tuple[int, int]
    slope: float
    intercept: float


def load_series(instances: Iterable[str | os.PathLike[str] | Dataset]) -> LoadedSeries:
    """Read the instances of one series into a ``Volume``.

    Parameters
    ----------
    instances : iterable of path or pydicom.Dataset
        Every instance of the series, in any order. Datasets must include
        their pixel data.

    Returns
    -------
    LoadedSeries
        The volume (slices ascending along the normal, affine to LPS) and a
        warning for each group of images left out.

    Raises
    ------
    SeriesError
        When the series cannot be represented exactly (see the module
        docstring for every case).
    """
    datasets = [_read(item) for item in instances]
    if not datasets:
        raise SeriesError("", SeriesProblem.NO_IMAGES, "no instances were given")
    series_uid = _only_value(datasets, "SeriesInstanceUID", "", SeriesProblem.MIXED_SERIES)
    warnings: list[SeriesWarning] = []
    datasets = _drop_repeated_instances(datasets, series_uid, warnings)
    datasets = _drop_localizers(datasets, series_uid, warnings)
    if not datasets:
        raise SeriesError(series_uid, SeriesProblem.NO_IMAGES, "every image is a localizer")
    frame_of_reference = _only_value(
        datasets, "FrameOfReferenceUID", series_uid, SeriesProblem.MIXED_FRAME_OF_REFERENCE
    )
    frames = [frame for ds in datasets for frame in _frames(ds, series_uid)]
    frames = _drop_stray_orientations(frames, series_uid, warnings)
    _require_uniform(frames, series_uid, SeriesProblem.MIXED_MATRIX, _matrix_size)
    _require_uniform(frames, series_uid, SeriesProblem.MIXED_PIXEL_SPACING, _pixel_spacing)
    row, column = _cosines(frames[0].orientation, series_uid)
    normal = np.cross(row, column)
    frames, slice_spacing = _stack(frames, normal, series_uid)
    first = frames[0].dataset
    volume = Volume(
        array=_rescaled_pixels(frames, series_uid),
        affine=_affine(frames[0], row, column, normal * slice_spacing),
        frame_of_reference_uid=frame_of_reference,
        study_instance_uid=str(_attribute(first, "StudyInstanceUID", series_uid)),
        series_instance_uid=series_uid,
        modality=str(_attribute(first, "Modality", series_uid)),
        sources=tuple(frame.source for frame in frames),
    )
    used = {source.sop_instance_uid for source in volume.sources}
    headers = tuple(_header(ds) for ds in datasets if ds.SOPInstanceUID in used)
    return LoadedSeries(volume=volume, warnings=tuple(warnings), headers=headers)


class VolumeReadError(Exception):
    """A path that holds neither a DICOM series nor a 3-D scalar image; the message names it."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"cannot read {path}: {detail}")
        self.path = path
        self.detail = detail


def read_volume(path: Path) -> LoadedSeries:
    """The CT volume in a DICOM series folder or an image file SimpleITK reads (NIfTI).

    An image file carries no DICOM identity (``Volume.from_sitk``) and
    leaves no image out, so its ``warnings`` are empty.

    Raises
    ------
    VolumeReadError
        Nothing at `path`, a folder that is no exact series (the
        ``SeriesError``'s message), a file SimpleITK cannot read, or an image
        that is not 3-D scalar.
    """
    if path.is_dir():
        try:
            return load_series(series_files(path))
        except (SeriesError, ValueError) as exc:
            raise VolumeReadError(path, str(exc)) from exc
    if not path.is_file():
        raise VolumeReadError(path, "no such file or folder")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeReadError(path, f"not a DICOM folder nor an image SimpleITK reads ({exc})") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(
            path,
            f"a {image.GetDimension()}-D image with {image.GetNumberOfComponentsPerPixel()} "
            "component(s) per voxel; a 3-D scalar CT volume is needed",
        )
    try:
        return LoadedSeries(volume=Volume.from_sitk(image), warnings=())
    except ValueError as exc:
        raise VolumeReadError(path, str(exc)) from exc


def series_files(folder: Path) -> list[Path]:
    """The files of a series folder at any depth, sorted (DICOMDIR indexes media; it is no image)."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"
    )


# ---------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------


def _read(item: str | os.PathLike[str] | Dataset) -> Dataset:
    """The dataset itself, or the file read with its pixel data."""
    if isinstance(item, Dataset):
        return item
    try:
        return pydicom.dcmread(item)
    except (InvalidDicomError, OSError) as exc:
        raise SeriesError("", SeriesProblem.UNREADABLE, f"{os.fspath(item)}: {exc}") from exc


def _header(ds: Dataset) -> Dataset:
    """`ds` without its pixel data, as ``dcmread(stop_before_pixels=True)``
    reads it; the elements are shared, the decoded pixels are not kept."""
    header = Dataset({tag: ds.get_item(tag) for tag in ds.keys() if tag < _FIRST_PIXEL_DATA_TAG})
    header.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header


def _attribute(
    item: Dataset, keyword: str, series_uid: str, *, of: Dataset | None = None, where: str = ""
) -> Any:
    """A required attribute's value from `item`, or a ``SeriesError``.

    `of` is the instance `item` belongs to (a functional group item has no
    SOP Instance UID to name) and `where` names the frame, if any.
    """
    value = item.get(keyword)
    if value is None or value == "":
        raise _missing(item if of is None else of, keyword, series_uid, where)
    return value


def _missing(ds: Dataset, keyword: str, series_uid: str, where: str = "") -> SeriesError:
    instance = ds.get("SOPInstanceUID") or "(no SOP Instance UID)"
    return SeriesError(
        series_uid, SeriesProblem.MISSING_ATTRIBUTE, f"{keyword} missing{where} in instance {instance}"
    )


def _only_value(
    datasets: Sequence[Dataset], keyword: str, series_uid: str, problem: SeriesProblem
) -> str:
    """The one value of a UID attribute that every instance must share."""
    values = Counter(str(_attribute(ds, keyword, series_uid)) for ds in datasets)
    if len(values) > 1:
        raise SeriesError(series_uid, problem, f"{keyword} differs: {_count_list(values)}")
    return next(iter(values))


def _source(ds: Dataset, frame_number: int | None, series_uid: str) -> SourceFrame:
    return SourceFrame(
        str(_attribute(ds, "SOPClassUID", series_uid)),
        str(_attribute(ds, "SOPInstanceUID", series_uid)),
        frame_number,
    )


def _drop_repeated_instances(
    datasets: list[Dataset], series_uid: str, warnings: list[SeriesWarning]
) -> list[Dataset]:
    """Keep the first of instances sharing a SOP Instance UID (one image, given twice)."""
    kept: dict[str, Dataset] = {}
    repeated: list[SourceFrame] = []
    for ds in datasets:
        source = _source(ds, None, series_uid)
        if source.sop_instance_uid in kept:
            repeated.append(source)
        else:
            kept[source.sop_instance_uid] = ds
    if repeated:
        warnings.append(
            SeriesWarning(
                DropReason.DUPLICATE_INSTANCE,
                tuple(repeated),
                f"{len(repeated)} instance(s) given more than once; each was read once",
            )
        )
    return list(kept.values())


def _drop_localizers(
    datasets: list[Dataset], series_uid: str, warnings: list[SeriesWarning]
) -> list[Dataset]:
    """Leave out instances whose ImageType says LOCALIZER (PS3.3 C.8.2.1.1.1)."""
    localizers = [ds for ds in datasets if "LOCALIZER" in _image_type(ds)]
    if localizers:
        warnings.append(
            SeriesWarning(
                DropReason.LOCALIZER,
                tuple(_source(ds, None, series_uid) for ds in localizers),
                f"{len(localizers)} localizer image(s) left out",
            )
        )
    return [ds for ds in datasets if "LOCALIZER" not in _image_type(ds)]


def _image_type(ds: Dataset) -> list[str]:
    # pydicom gives a str for a single value and a MultiValue otherwise.
    value = ds.get("ImageType", [])
    return [value.upper()] if isinstance(value, str) else [str(v).upper() for v in value]


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


def _frames(ds: Dataset, series_uid: str) -> list[_Frame]:
    """The 2-D frames of an instance with their own geometry and rescale."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        items = len(ds.PerFrameFunctionalGroupsSequence)
        if items != _frame_count(ds):
            raise SeriesError(
                series_uid,
                SeriesProblem.INVALID_ATTRIBUTE,
                f"PerFrameFunctionalGroupsSequence of instance {ds.SOPInstanceUID} has {items} items "
                f"for {_frame_count(ds)} frames",
            )
        return [_functional_group_frame(ds, index, series_uid) for index in range(items)]
    if _frame_count(ds) > 1:
        raise SeriesError(
            series_uid,
            SeriesProblem.MISSING_ATTRIBUTE,
            f"PerFrameFunctionalGroupsSequence missing in multi-frame instance {ds.SOPInstanceUID}: "
            "its frames cannot be placed",
        )
    return [_frame(ds, None, ds, ds, ds, ds, series_uid)]


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def _functional_group_frame(ds: Dataset, index: int, series_uid: str) -> _Frame:
    """Frame `index` of a multi-frame image, placed by its functional groups."""
    where = f" for frame {index + 1}"
    groups = [ds.PerFrameFunctionalGroupsSequence[index]]
    groups += ds.get("SharedFunctionalGroupsSequence") or []

    def item(sequence: str) -> Dataset | None:
        # A per-frame item overrides the shared one (PS3.3 C.7.6.16).
        return next((group[sequence][0] for group in groups if group.get(sequence)), None)

    def required(sequence: str) -> Dataset:
        found = item(sequence)
        if found is None:
            raise _missing(ds, sequence, series_uid, where)
        return found

    transformation = item("PixelValueTransformationSequence")
    return _frame(
        ds,
        index + 1,
        required("PlanePositionSequence"),
        required("PlaneOrientationSequence"),
        required("PixelMeasuresSequence"),
        ds if transformation is None else transformation,
        series_uid,
    )


def _frame(
    ds: Dataset,
    frame_number: int | None,
    position: Dataset,
    orientation: Dataset,
    measures: Dataset,
    transformation: Dataset,
    series_uid: str,
) -> _Frame:
    """A frame from the datasets that carry each of its attributes.

    For a single-frame image all of them are the instance itself; for a
    multi-frame image they are functional group items. A missing rescale
    means the identity Modality LUT (PS3.3 C.11.1), as for MR: not a guess.
    """
    where = "" if frame_number is None else f" for frame {frame_number}"

    def required(item: Dataset, keyword: str) -> Any:
        return _attribute(item, keyword, series_uid, of=ds, where=where)

    def numbers(item: Dataset, keyword: str, count: int) -> np.ndarray:
        values = np.array(required(item, keyword), dtype=np.float64).reshape(-1)
        if values.size != count:
            raise SeriesError(
                series_uid,
                SeriesProblem.INVALID_ATTRIBUTE,
                f"{keyword}{where} in instance {ds.SOPInstanceUID} has {values.size} values, not {count}",
            )
        return values

    spacing = numbers(measures, "PixelSpacing", 2)
    return _Frame(
        dataset=ds,
        source=_source(ds, frame_number, series_uid),
        position=numbers(position, "ImagePositionPatient", 3),
        orientation=numbers(orientation, "ImageOrientationPatient", 6),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        matrix=(int(required(ds, "Rows")), int(required(ds, "Columns"))),
        slope=float(transformation.get("RescaleSlope", 1.0)),
        intercept=float(transformation.get("RescaleIntercept", 0.0)),
    )


# ---------------------------------------------------------------------------
# Consistency
# ---------------------------------------------------------------------------


def _drop_stray_orientations(
    frames: list[_Frame], series_uid: str, warnings: list[SeriesWarning]
) -> list[_Frame]:
    """Keep the frames of the bulk orientation, dropping a few unmarked localizers.

    A handful of images in another orientation are scouts that do not say
    so in ImageType; more than that is a second stack (a reformat sent in
    the same series), which no single grid can hold.
    """
    groups: list[list[_Frame]] = []
    for frame in frames:
        group = next((g for g in groups if _same_orientation(g[0], frame)), None)
        if group is None:
            groups.append([frame])
        else:
            group.append(frame)
    groups.sort(key=len, reverse=True)
    bulk, strays = groups[0], [frame for group in groups[1:] for frame in group]
    if not strays:
        return bulk
    described = ", ".join(f"{_orientation_text(g[0])} ({len(g)} images)" for g in groups)
    if len(strays) > min(MAX_STRAY_IMAGES, len(bulk) // 4):
        raise SeriesError(
            series_uid, SeriesProblem.MIXED_ORIENTATION, f"ImageOrientationPatient differs: {described}"
        )
    warnings.append(
        SeriesWarning(
            DropReason.STRAY_ORIENTATION,
            tuple(frame.source for frame in strays),
            f"{len(strays)} image(s) left out as localizers, by orientation: {described}",
        )
    )
    return bulk


def _same_orientation(a: _Frame, b: _Frame) -> bool:
    return bool(np.max(np.abs(a.orientation - b.orientation)) <= _COSINE_TOLERANCE)


def _orientation_text(frame: _Frame) -> str:
    return "[" + ", ".join(f"{v:g}" for v in frame.orientation) + "]"


def _matrix_size(frame: _Frame) -> Hashable:
    return f"{frame.matrix[0]}x{frame.matrix[1]} (rows x columns)"


def _pixel_spacing(frame: _Frame) -> Hashable:
    return f"PixelSpacing {frame.pixel_spacing[0]:g}\\{frame.pixel_spacing[1]:g} mm"


def _require_uniform(
    frames: list[_Frame], series_uid: str, problem: SeriesProblem, key: Callable[[_Frame], Hashable]
) -> None:
    """Refuse a series whose frames differ in `key`, naming each value."""
    values = Counter(key(frame) for frame in frames)
    if len(values) > 1:
        raise SeriesError(series_uid, problem, _count_list(values))


def _count_list(values: Counter[Hashable]) -> str:
    return ", ".join(f"{value} ({count} images)" for value, count in values.most_common())


def _cosines(orientation: np.ndarray, series_uid: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit row and column cosines, refusing vectors that are not orthonormal.

    The cosines are normalised because writers round them to a few digits;
    beyond that tolerance the grid would not be orthogonal.
    """
    row, column = orientation[:3], orientation[3:]
    lengths = np.array([np.linalg.norm(row), np.linalg.norm(column)])
    if np.any(np.abs(lengths - 1.0) > _ORTHONORMAL_TOLERANCE) or abs(row @ column) > _ORTHONORMAL_TOLERANCE:
        raise SeriesError(
            series_uid,
            SeriesProblem.INVALID_ORIENTATION,
            f"ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors",
        )
    return row / lengths[0], column / lengths[1]


# ---------------------------------------------------------------------------
# Stack geometry
# ---------------------------------------------------------------------------


def _stack(frames: list[_Frame], normal: np.ndarray, series_uid: str) -> tuple[list[_Frame], float]:
    """Frames ascending along the normal, and their one slice spacing in mm."""
    if len(frames) < 2:
        raise SeriesError(
            series_uid, SeriesProblem.TOO_FEW_SLICES, f"{len(frames)} image(s): a volume needs at least 2"
        )
    along = np.array([frame.position @ normal for frame in frames])
    order = np.argsort(along, kind="stable")
    frames, along = [frames[i] for i in order], along[order]
    _check_duplicates(frames, along, series_uid)
    _check_tilt(frames, along, normal, series_uid)
    _check_steps(along, series_uid)
    return frames, float(along[-1] - along[0]) / (len(frames) - 1)


def _check_duplicates(frames: list[_Frame], along: np.ndarray, series_uid: str) -> None:
    """Refuse two different images at one position (two reconstructions in one series)."""
    same = np.flatnonzero(np.diff(along) < _DUPLICATE_MM)
    if same.size:
        pairs = "; ".join(
            f"{_source_text(frames[i].source)} and {_source_text(frames[i + 1].source)} "
            f"at {along[i]:.3f} mm"
            for i in same[:3]
        )
        raise SeriesError(
            series_uid,
            SeriesProblem.DUPLICATE_POSITION,
            f"{same.size} pair(s) of images share a position along the normal: {pairs}",
        )


def _check_tilt(frames: list[_Frame], along: np.ndarray, normal: np.ndarray, series_uid: str) -> None:
    """Refuse a stack that is not perpendicular to its slices (gantry tilt).

    Each slice's displacement from the first, less its part along the
    normal, is how far it lies off the orthogonal grid.
    """
    offsets = np.array([frame.position for frame in frames]) - frames[0].position
    across = offsets - np.outer(along - along[0], normal)
    distances = np.linalg.norm(across, axis=1)
    limit = _TILT_TOLERANCE_PIXELS * min(frames[0].pixel_spacing)
    if distances.max() > limit:
        angle = np.degrees(np.arctan2(distances[-1], along[-1] - along[0]))
        raise SeriesError(
            series_uid,
            SeriesProblem.GANTRY_TILT,
            f"slices are displaced up to {distances.max():.3f} mm across the slice direction "
            f"(stack tilted about {angle:.2f} degrees from the slice normal); resampling is not done "
            "because it would interpolate the values: reconstruct the series without tilt",
        )


def _check_steps(along: np.ndarray, series_uid: str) -> None:
    """Refuse missing slices (a step much larger than the median) and irregular steps."""
    steps = np.diff(along)
    median = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - median) > _SPACING_TOLERANCE * median)
    if not bad.size:
        return
    first = bad[0]
    where = (
        f"step of {steps[first]:.3f} mm between slices at {along[first]:.3f} and {along[first + 1]:.3f} mm "
        f"along the normal, median step {median:.3f} mm ({bad.size} such step(s))"
    )
    if np.all(steps[bad] > median):
        missing = int(sum(round(steps[i] / median) - 1 for i in bad))
        raise SeriesError(
            series_uid, SeriesProblem.MISSING_SLICES, f"about {missing} slice(s) missing: {where}"
        )
    raise SeriesError(series_uid, SeriesProblem.IRREGULAR_SPACING, where)


def _source_text(source: SourceFrame) -> str:
    frame = "" if source.frame_number is None else f" frame {source.frame_number}"
    return f"instance {source.sop_instance_uid}{frame}"


def _affine(first: _Frame, row: np.ndarray, column: np.ndarray, slice_step: np.ndarray) -> np.ndarray:
    """``(slice, row, column, 1)`` to LPS mm.

    Moving down one row moves along the column cosines by PixelSpacing[0]
    (the row spacing); moving right one column moves along the row cosines
    by PixelSpacing[1] (PS3.3 C.7.6.2.1.1).
    """
    affine = np.eye(4)
    affine[:3, 0] = slice_step
    affine[:3, 1] = column * first.pixel_spacing[0]
    affine[:3, 2] = row * first.pixel_spacing[1]
    affine[:3, 3] = first.position
    return affine


# ---------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------


def _rescaled_pixels(frames: list[_Frame], series_uid: str) -> np.ndarray:
    """Decoded frames through their own rescale: int16 where exact, else float32."""
    stored = [_stored_pixels(frame, series_uid) for frame in frames]
    pairs = list(zip(stored, frames, strict=True))
    if _fits_int16(pairs):
        array = np.empty((len(frames), *frames[0].matrix), dtype=np.int16)
        for index, (pixels, frame) in enumerate(pairs):
            array[index] = pixels.astype(np.int32) + int(frame.intercept)
        return array
    array = np.empty((len(frames), *frames[0].matrix), dtype=np.float32)
    for index, (pixels, frame) in enumerate(pairs):
        array[index] = pixels.astype(np.float64) * frame.slope + frame.intercept
    return array


def _fits_int16(pairs: list[tuple[np.ndarray, _Frame]]) -> bool:
    """Whether every rescaled value is an integer within int16."""
    if not all(frame.slope == 1.0 and frame.intercept.is_integer() for _, frame in pairs):
        return False
    low = min(int(pixels.min()) + int(frame.intercept) for pixels, frame in pairs)
    high = max(int(pixels.max()) + int(frame.intercept) for pixels, frame in pairs)
    return bool(_INT16.min <= low and high <= _INT16.max)


def _stored_pixels(frame: _Frame, series_uid: str) -> np.ndarray:
    """The frame's stored values, decoded by whichever plugin pydicom finds.

    pydicom keeps the decoded array of a dataset, so the frames of one
    multi-frame image are decoded once.
    """
    ds = frame.dataset
    try:
        pixels = ds.pixel_array
    except (AttributeError, NotImplementedError, RuntimeError, ValueError) as exc:
        syntax = (getattr(ds, "file_meta", None) or {}).get("TransferSyntaxUID", "unknown")
        raise SeriesError(
            series_uid,
            SeriesProblem.UNDECODABLE,
            f"instance {ds.SOPInstanceUID} (transfer syntax {syntax}): {exc}",
        ) from exc
    if frame.source.frame_number is not None and pixels.ndim == 3:
        pixels = pixels[frame.source.frame_number - 1]
    if pixels.shape != frame.matrix:
        raise SeriesError(
            series_uid,
            SeriesProblem.UNDECODABLE,
            f"{_source_text(frame.source)} decodes to shape {pixels.shape}, not one "
            f"{frame.matrix[0]}x{frame.matrix[1]} grey-scale frame",
        )
    return pixels
