"""The segmenter interface: everything downstream depends on this alone.

A segmenter takes a CT ``Volume`` (HU, exact geometry) and returns a
``Segmentation``: a label map on the same grid, the structures it can contain
(label value and the codes the SEG needs) and the identity of the algorithm.
The SEG writer, the SR and quantification use only this, so the built-in
segmenter and nnU-Net models are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dicomio.codes import StructureCode
from dicomio.seg import AlgorithmIdentity, LabelledStructure
from dicomio.volume import Volume


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A label map on its volume's grid.

    Attributes
    ----------
    labels : numpy.ndarray
        Integer label values indexed ``[slice, row, column]``, the shape of
        ``volume.array``; 0 is background.
    volume : Volume
        The image that was segmented (its grid, geometry and sources).
    structures : tuple of LabelledStructure
        Every structure the algorithm can produce, present or not.
    algorithm : AlgorithmIdentity
        Name and version written into the SEG and SR.
    outline : StructureCode or None
        What all labelled voxels together are, where that is a structure of
        its own: the built-in segmenter labels everything inside the body,
        so together they are the body. Formats whose segments may overlap
        (BINARY SEG, RTSTRUCT) and the measurements carry it beside the
        others; an exclusive label map cannot.
    """

    labels: np.ndarray
    volume: Volume
    structures: tuple[LabelledStructure, ...]
    algorithm: AlgorithmIdentity
    outline: StructureCode | None = None

    def __post_init__(self) -> None:
        if self.labels.shape != self.volume.array.shape:
            raise ValueError(
                f"label map of shape {self.labels.shape} for a volume of shape "
                f"{self.volume.array.shape}"
            )
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(f"label map must be integer, not {self.labels.dtype}")

    def outlined(self) -> Segmentation | None:
        """The outline as a segmentation of its own (value 1 on every
        labelled voxel), for what measures and writes it as any structure;
        None without an outline."""
        if self.outline is None:
            return None
        return Segmentation(
            labels=(self.labels > 0).view(np.uint8), volume=self.volume,
            structures=(LabelledStructure(1, self.outline),), algorithm=self.algorithm,
        )


class Segmenter(Protocol):
    """What a model offers to the rest of segnode."""

    @property
    def algorithm(self) -> AlgorithmIdentity: ...

    @property
    def structures(self) -> tuple[LabelledStructure, ...]: ...

    def segment(self, volume: Volume) -> Segmentation: ...

    def segment_mirrored(self, volume: Volume) -> Segmentation | None:
        """The segmentation of the mirrored volume, mirrored back (a
        self-consistency check), or None where mirroring is meaningless."""
        ...
