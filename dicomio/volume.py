"""The ``Volume``: voxels on a grid placed exactly in DICOM patient space.

Everything segnode measures and sends back is computed on this grid, so it
carries its geometry as an affine rather than as separate spacing and
direction fields that can disagree. The convention follows highdicom's
``Volume``: the array is indexed ``[slice, row, column]`` and the affine maps
``(slice, row, column, 1)`` to patient coordinates ``(x, y, z, 1)`` in mm, in
the DICOM patient coordinate system (LPS: +x to the patient's left, +y to
the posterior, +z to the head).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class SourceFrame:
    """The image (and, for multi-frame images, the frame) a slice came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image with its geometry and the instances it was read from.

    Attributes
    ----------
    array : numpy.ndarray
        Voxel values indexed ``[slice, row, column]``: Hounsfield units for
        CT, rescaled values (e.g. Bq/ml) for PET.
    affine : numpy.ndarray
        4x4 matrix from ``(slice, row, column, 1)`` to LPS patient
        coordinates in mm.
    frame_of_reference_uid : str
        The FrameOfReferenceUID shared by all source images.
    study_instance_uid, series_instance_uid, modality : str
        Identity of the source series.
    sources : tuple of SourceFrame
        One entry per slice, in array order.
    """

    array: np.ndarray
    affine: np.ndarray
    frame_of_reference_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    sources: tuple[SourceFrame, ...]

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3-D array, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"a Volume needs a 4x4 affine, got shape {self.affine.shape}")
        if len(self.sources) != self.array.shape[0]:
            raise ValueError(
                f"{len(self.sources)} source frames for {self.array.shape[0]} slices"
            )

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Distance in mm between neighbouring (slices, rows, columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in ml (the absolute determinant, mm^3 / 1000)."""
        return abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def to_sitk(self) -> sitk.Image:
        """The same voxels and geometry as a SimpleITK image.

        SimpleITK indexes ``(x=column, y=row, z=slice)`` and its physical
        space is LPS too, so only the axis order changes.
        """
        image = sitk.GetImageFromArray(self.array)
        spacing = self.spacing
        directions = self.affine[:3, :3] / np.array(spacing)
        # Columns of the affine in SimpleITK's (column, row, slice) order.
        direction = directions[:, [2, 1, 0]]
        image.SetOrigin(tuple(float(v) for v in self.affine[:3, 3]))
        image.SetSpacing((spacing[2], spacing[1], spacing[0]))
        image.SetDirection(tuple(float(v) for v in direction.flatten()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, modality: str = "CT") -> Volume:
        """A 3-D scalar SimpleITK image (a NIfTI file, say) as a Volume.

        Such a file carries no DICOM identity: the UIDs and source frames
        are empty, so the volume can be segmented and measured but not
        referenced by a SEG.
        """
        array = sitk.GetArrayFromImage(image)
        return cls(
            array=array,
            affine=cls.affine_from_sitk(image),
            frame_of_reference_uid="",
            study_instance_uid="",
            series_instance_uid="",
            modality=modality,
            sources=tuple(SourceFrame("", "") for _ in range(array.shape[0])),
        )

    @staticmethod
    def affine_from_sitk(image: sitk.Image) -> np.ndarray:
        """The ``[slice, row, column]`` affine of a SimpleITK image's grid."""
        direction = np.array(image.GetDirection()).reshape(3, 3)
        spacing = np.array(image.GetSpacing())
        affine = np.eye(4)
        affine[:3, :3] = (direction * spacing)[:, [2, 1, 0]]
        affine[:3, 3] = image.GetOrigin()
        return affine


#: Patient direction letter -> (LPS axis, sign): L is +x, P is +y, S is +z.
_DIRECTIONS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


@dataclass(frozen=True)
class AxisOrder:
    """A view of a volume's array whose axes run along given patient directions.

    Algorithms trained or written for one orientation (TotalSegmentator's
    networks see RAS-canonical images, the built-in segmenter reasons in
    "superior, posterior, left") get that view whatever order the scanner
    stored; only axes are permuted and reversed, so no voxel is interpolated.
    An oblique acquisition is treated as the nearest axial, coronal or
    sagittal one.

    Attributes
    ----------
    axes : tuple of int
        The array axis that becomes each view axis.
    flips : tuple of bool
        Whether that axis is reversed.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def towards(cls, affine: np.ndarray, directions: str) -> AxisOrder:
        """The view of an array with `affine` whose axes point towards
        `directions`, three patient direction letters (``"SAR"``: axis 0
        towards the head, axis 1 anterior, axis 2 to the patient's right)."""
        targets = [_DIRECTIONS[letter] for letter in directions.upper()]
        if len(targets) != 3 or len({axis for axis, _ in targets}) != 3:
            raise ValueError(f"{directions!r} does not name three orthogonal directions")
        unit = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)

        def alignment(axes: tuple[int, ...]) -> float:
            return sum(abs(unit[lps, axis]) for (lps, _), axis in zip(targets, axes, strict=True))

        axes = max(itertools.permutations(range(3)), key=alignment)
        flips = tuple(
            bool(unit[lps, axis] * sign < 0) for (lps, sign), axis in zip(targets, axes, strict=True)
        )
        return cls(axes=axes, flips=flips)  # type: ignore[arg-type]

    def _flip(self, array: np.ndarray) -> np.ndarray:
        return array[tuple(slice(None, None, -1) if flip else slice(None) for flip in self.flips)]

    def view(self, array: np.ndarray) -> np.ndarray:
        """`array` (volume order) seen in this order; a view, not a copy."""
        return self._flip(array.transpose(self.axes))

    def back(self, array: np.ndarray) -> np.ndarray:
        """An array in this order seen in the volume's order; a view."""
        return self._flip(array).transpose(np.argsort(self.axes))

    def spacing(self, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """`spacing` (volume order) in this order."""
        return (spacing[self.axes[0]], spacing[self.axes[1]], spacing[self.axes[2]])


def frame_plane(header: Dataset, frame_number: int | None) -> Dataset:
    """The Image Plane attributes of the slice a volume takes from `header`:
    the header itself for a single-frame image; for frame `frame_number` of
    a multi-frame one, its Plane Position, Plane Orientation and Pixel
    Measures items (per-frame, else shared functional groups, PS3.3
    C.7.6.16) joined in one dataset.

    Raises
    ------
    AttributeError, IndexError, StopIteration
        If the header has no such frame or a group is missing; callers say
        which series and image.
    """
    if frame_number is None:
        return header
    groups = (
        header.PerFrameFunctionalGroupsSequence[frame_number - 1],
        header.SharedFunctionalGroupsSequence[0],
    )
    plane = Dataset()
    for keyword in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"):
        plane.update(next(group for group in groups if keyword in group)[keyword][0])
    return plane
