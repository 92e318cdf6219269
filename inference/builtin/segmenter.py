"""The built-in segmenter: its parts composed into one exclusive label map.

See the package docstring (:mod:`inference.builtin`) for the rules.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from dicomio.codes import BUILTIN_STRUCTURES, MORPHOLOGICAL_OPERATIONS, structure_code
from dicomio.seg import AlgorithmIdentity, LabelledStructure
from dicomio.volume import AxisOrder, Volume
from inference.builtin.airway import airway_mask
from inference.builtin.body import body_mask, internal_air
from inference.builtin.composition import body_composition
from inference.builtin.lungs import lung_masks
from inference.builtin.morphology import Coarse, body_midline
from inference.builtin.skeleton import skeleton_mask
from inference.postprocess import Spacing
from inference.segmenter import Segmentation

__all__ = ["ALGORITHM", "BuiltinSegmenter", "segment_canonical"]

# CID 7162 "Surface Processing Algorithm Families": the rules below are
# thresholds, connected components and morphology (opening, closing, hole
# filling, erosion), i.e. DCM 123104 "Morphological Operations". Not 123109
# "Manual Processing" (no person draws), 123110 "Artificial Intelligence"
# (nothing is learned) or 123108, which is "Multispectral Processing", not an
# "automatic" family.
# 1.1: label 1 is the body's other soft tissue, the body the outline of every label (was label 1).
ALGORITHM: Final = AlgorithmIdentity(name="segnode-builtin", version="1.1", family=MORPHOLOGICAL_OPERATIONS)

#: Label value of each built-in structure: 1..8 in BUILTIN_STRUCTURES' order.
_VALUES: Final = {name: value for value, name in enumerate(BUILTIN_STRUCTURES, start=1)}

#: The canonical view the rules reason in: axis 0 to the head, axis 1 to the
#: back, axis 2 to the patient's left (a DICOM axial series as stored).
CANONICAL: Final = "SPL"


class BuiltinSegmenter:
    """The rule-based segmenter of the eight built-in structures."""

    @property
    def algorithm(self) -> AlgorithmIdentity:
        """Name, version and CID 7162 family written into the SEG and SR."""
        return ALGORITHM

    @property
    def structures(self) -> tuple[LabelledStructure, ...]:
        """The eight structures, label values 1..8."""
        return tuple(LabelledStructure(value, structure_code(name)) for name, value in _VALUES.items())

    def segment(self, volume: Volume) -> Segmentation:
        """Label `volume` (CT in HU) on its own grid.

        Raises
        ------
        ValueError
            If the volume is not CT.
        """
        if volume.modality != "CT":
            raise ValueError(
                f"series {volume.series_instance_uid}: the built-in segmenter needs CT, not {volume.modality}"
            )
        order = AxisOrder.towards(volume.affine, CANONICAL)
        hu = order.view(volume.array)
        labels = segment_canonical(hu, order.spacing(volume.spacing))
        return Segmentation(
            labels=np.ascontiguousarray(order.back(labels)),
            volume=volume,
            structures=self.structures,
            algorithm=ALGORITHM,
            outline=structure_code("body"),
        )

    def segment_mirrored(self, volume: Volume) -> None:
        """None: the rules name a lung's side by where it lies in patient
        space, so in a mirrored image left and right swap by design."""
        return None


def segment_canonical(hu: np.ndarray, spacing: Spacing) -> np.ndarray:
    """The label map of a CT array in canonical orientation.

    Parameters
    ----------
    hu : numpy.ndarray
        HU indexed [inferior->superior, anterior->posterior, right->left].
    spacing : tuple of float
        Voxel spacing in mm along those axes.

    Returns
    -------
    numpy.ndarray
        uint8 labels, values as in BUILTIN_STRUCTURES (1: the body's remainder).
    """
    labels = np.zeros(hu.shape, dtype=np.uint8)
    body = body_mask(hu, spacing, Coarse.of(hu.shape, spacing))
    if body is None:
        return labels
    # Everything else lies in the body's bounding box (on a typical 500 mm
    # field of view, half the voxels or less).
    labels[body.box] = _inside_body(np.ascontiguousarray(hu[body.box]), body.mask, spacing)
    return labels


def _inside_body(hu: np.ndarray, body: np.ndarray, spacing: Spacing) -> np.ndarray:
    """The labels of everything inside `body` (see :func:`segment_canonical`)."""
    coarse = Coarse.of(hu.shape, spacing)
    midline = body_midline(body)
    air = internal_air(hu, body)
    airway = airway_mask(hu, air.mask, body, spacing, midline)
    lung_left, lung_right = lung_masks(hu, air, airway, spacing, midline, coarse)
    skeleton = skeleton_mask(hu, body, spacing, coarse)
    lungs = lung_left | lung_right
    taken = lungs | airway.mask | skeleton
    subcutaneous, visceral, muscle = body_composition(hu, body, skeleton, taken, lungs, spacing, coarse)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[body] = _VALUES["other_soft_tissue"]
    # Later assignments win: fat and muscle never overlap (disjoint windows)
    # and never take lung, airway or bone voxels (excluded above).
    for name, mask in (
        ("subcutaneous_fat", subcutaneous),
        ("visceral_fat", visceral),
        ("skeletal_muscle", muscle),
        ("skeleton", skeleton),
        ("lung_left", lung_left),
        ("lung_right", lung_right),
        ("airway", airway.mask),
    ):
        labels[mask] = _VALUES[name]
    return labels
