"""Label maps as NIfTI files with a JSON legend, the research format.

``segnode segment`` writes them, and every job keeps one beside its SEG, so
that a later comparison (a reference SEG arriving, a rerun) reads what was
sent without segmenting again. The legend maps label values to dicomio/codes.py
structure names, from which the SEG's codes follow.

The two files are one record, but no rename replaces two files at once. So
the label map carries the SHA-256 of its legend in its NIfTI description,
the writer makes the label map durable under its name first and the legend
last, and the reader refuses a pair whose legend is not the one its label
map names: a reader sees a whole pair, or an error naming the file (a
rewrite in progress, or one a crash stopped between the two renames). Label
maps from before this rule name no legend and are read as they were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicomio.codes import structure_code
from dicomio.files import move_durably, write_atomically
from dicomio.seg import LabelledStructure
from dicomio.volume import Volume

SUFFIXES = (".nii.gz", ".nii")

#: ITK writes the NIfTI description (``descrip``, 79 characters at most)
#: from one metadata key and reads it back under another.
_DESCRIPTION_WRITTEN = "ITK_FileNotes"
_DESCRIPTION_READ = "descrip"


class LabelMapError(ValueError):
    """A label map file that does not fit its legend or its volume."""


def nifti_suffix(path: Path) -> str | None:
    """``.nii.gz`` or ``.nii``, whichever `path` ends in; None for another name."""
    for suffix in SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return suffix
    return None


def legend_path(path: Path) -> Path:
    """Where the legend of label map `path` is: the same name, ``.json``."""
    suffix = nifti_suffix(path)
    if suffix is None:
        raise LabelMapError(f"{path}: a label map's name must end in .nii.gz or .nii")
    return path.with_name(path.name[: -len(suffix)] + ".json")


def write_label_map(
    labels: np.ndarray, volume: Volume, structures: tuple[LabelledStructure, ...], path: Path
) -> Path:
    """Write the label map on `volume`'s grid and its legend, each durably
    through a temporary name, the legend last; returns the legend's path."""
    suffix = nifti_suffix(path)
    legend = legend_path(path)
    largest = max((s.value for s in structures), default=0)
    stored = labels.astype(np.uint8 if largest <= np.iinfo(np.uint8).max else np.uint16)
    # The label map on the volume's grid is a Volume of labels: to_sitk()
    # then gives it exactly the input's origin, spacing and direction.
    image = dataclasses.replace(volume, array=stored).to_sitk()
    mapping = {str(s.value): s.code.name for s in sorted(structures, key=lambda s: s.value)}
    legend_bytes = (json.dumps(mapping, indent=2) + "\n").encode()
    image.SetMetaData(_DESCRIPTION_WRITTEN, _legend_description(legend_bytes))
    # The temporary name keeps the suffix: SimpleITK picks writer and compression by it.
    partial = path.with_name(f".{path.name[: -len(suffix)]}.{os.getpid()}.partial{suffix}")
    try:
        sitk.WriteImage(image, str(partial), useCompression=suffix == ".nii.gz")
        move_durably(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return write_atomically(legend, legend_bytes)


def _legend_description(legend_bytes: bytes) -> str:
    """What a label map's NIfTI description says of its legend."""
    return f"legend sha256:{hashlib.sha256(legend_bytes).hexdigest()}"


def read_label_map(path: Path, volume: Volume) -> tuple[np.ndarray, tuple[LabelledStructure, ...]]:
    """The labels of `path` on `volume`'s grid and the structures of its legend.

    Raises
    ------
    LabelMapError
        If the legend is not the one the file was written with, the file's
        grid is not the volume's or a value is not in the legend.
    dicomio.codes.UnknownStructureError
        If the legend names a structure segnode does not know.
    """
    legend = legend_path(path)
    legend_bytes = legend.read_bytes()
    image = sitk.ReadImage(str(path))
    written = image.GetMetaData(_DESCRIPTION_READ) if image.HasMetaDataKey(_DESCRIPTION_READ) else ""
    # A label map that names no legend was written before they were named
    # (segnode 0.1) and is read as it always was; the legend read again after
    # it shows a rewrite that replaced both files meanwhile.
    if (written.strip() and written != _legend_description(legend_bytes)) or (
        legend.read_bytes() != legend_bytes
    ):
        raise LabelMapError(
            f"{path}: {legend} is not the legend it was written with "
            "(a rewrite in progress or interrupted)"
        )
    labels = sitk.GetArrayFromImage(image)
    if labels.shape != volume.array.shape or not np.allclose(
        Volume.affine_from_sitk(image), volume.affine, atol=1e-3
    ):
        raise LabelMapError(f"{path}: its grid is not that of series {volume.series_instance_uid}")
    mapping = json.loads(legend_bytes)
    structures = tuple(LabelledStructure(int(value), structure_code(name)) for value, name in mapping.items())
    unknown = set(np.unique(labels).tolist()) - {0} - {s.value for s in structures}
    if unknown:
        raise LabelMapError(f"{path}: label values {sorted(unknown)} are not in its legend")
    return labels, structures
