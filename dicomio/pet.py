"""A PET series as SUV images on its own grid, ready to be measured.

dicomio/series.py reads the rescaled pixel values (Bq/ml, counts or g/ml)
exactly, and dicomio/suv.py gives the factors that turn them into SUVbw and
SUL, per instance and per frame because each bed position was counted at its
own time. This module joins the two: every slice of the volume is multiplied
by the factor of the image (and frame) it came from, which
``Volume.sources`` names, so a per-slice Rescale Slope and a per-bed decay
are both honoured and no factor is guessed for a slice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicomio.series import load_series
from dicomio.suv import FrameSuvFactors, SuvNotDefinedError, earliest_acquisition, suv_factors
from dicomio.volume import SourceFrame, Volume


@dataclass(frozen=True, eq=False)
class SuvVolume:
    """A PET series in SUV on its own grid.

    Attributes
    ----------
    suv_bw : Volume
        The PET series' grid, identity and sources, with voxels in SUVbw
        (g/ml, float32).
    sul : numpy.ndarray or None
        SUL (lean body mass by Janmahasatian, g/ml, float32) on the same grid;
        None when the header lacks Patient's Size or Sex.
    warnings : tuple of str
        Every assumption behind the factors and every image left out of the
        volume, for the audit trail.
    """

    suv_bw: Volume
    sul: np.ndarray | None
    warnings: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.sul is not None and self.sul.shape != self.suv_bw.array.shape:
            raise ValueError(
                f"SUL of shape {self.sul.shape} for a PET grid of shape {self.suv_bw.array.shape}"
            )


def load_suv_volume(instances: Iterable[str | os.PathLike[str] | Dataset]) -> SuvVolume:
    """Read one PET series and convert it to SUVbw and SUL.

    Parameters
    ----------
    instances : iterable of path or pydicom.Dataset
        Every instance of the series; datasets must include pixel data.

    Raises
    ------
    dicomio.series.SeriesError
        The images do not make one exact volume.
    dicomio.suv.SuvError
        The series is not PET, or an image has no SUV factor (the error
        names the attribute and the instance).
    """
    items = list(instances)
    loaded = load_series(items)
    # Headers again for the factors; load_series has already refused unreadable files.
    datasets = [
        item if isinstance(item, Dataset) else pydicom.dcmread(item, stop_before_pixels=True)
        for item in items
    ]
    volume = loaded.volume
    if volume.modality != "PT":
        raise SuvNotDefinedError(
            f"series {volume.series_instance_uid} is {volume.modality}, not PT",
            sop_instance_uid=volume.sources[0].sop_instance_uid,
        )
    earliest = earliest_acquisition(datasets)
    # Only the images in the volume: one left out (a localizer) need not have a factor.
    used = {source.sop_instance_uid for source in volume.sources}
    by_instance = {
        ds.SOPInstanceUID: suv_factors(ds, series_earliest=earliest)
        for ds in datasets
        if ds.SOPInstanceUID in used
    }
    frames = [
        _frame_factors(by_instance[source.sop_instance_uid].frames, source) for source in volume.sources
    ]
    suv_bw = np.array([frame.suv_bw for frame in frames], dtype=np.float64)
    values = volume.array.astype(np.float32)
    sul = None
    if all(frame.sul is not None for frame in frames):
        sul_factors = np.array([frame.sul for frame in frames], dtype=np.float64)
        sul = (values * sul_factors[:, None, None]).astype(np.float32)
    warnings = [warning for factors in by_instance.values() for warning in factors.warnings]
    warnings += [f"{w.reason.value}: {w.detail}" for w in loaded.warnings]
    return SuvVolume(
        suv_bw=replace(volume, array=(values * suv_bw[:, None, None]).astype(np.float32)),
        sul=sul,
        warnings=tuple(dict.fromkeys(warnings)),
    )


def _frame_factors(frames: tuple[FrameSuvFactors, ...], source: SourceFrame) -> FrameSuvFactors:
    """The factors of the frame a slice came from (the only one of a single-frame image)."""
    if source.frame_number is None:
        return frames[0]
    return frames[source.frame_number - 1]
