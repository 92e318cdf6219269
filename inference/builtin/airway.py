"""Trachea and main bronchi, tracked down from the neck to the carina and beyond."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from inference.builtin.components import connected_components
from inference.builtin.constants import GAS_HU, LUNG_DENSITY_HU
from inference.builtin.morphology import component_sizes, disk
from inference.postprocess import Spacing

#: Trachea cross-section (adult lumen 12-25 mm) and position.
_TRACHEA_AREA_MM2: Final = (50.0, 800.0)
_TRACHEA_MIDLINE_MM: Final = 30.0
#: The trachea lies at least this deep under the skin (neck and chest).
_TRACHEA_DEPTH_MM: Final = 10.0
#: Adult trachea length: the airway is cut this far above the carina, so
#: that larynx and pharynx, in a scan that reaches them, are left out.
_TRACHEA_MAX_MM: Final = 130.0
#: Shortest trachea seen above the carina: a chest scan starts at the apex,
#: 5 cm or more above it.
_TRACHEA_MIN_MM: Final = 30.0
#: Lung parenchyma on each side of the carina, in its slice.
_CARINA_LUNG_CM2: Final = 10.0
#: Candidate tops tried; bounds the search in scans without a trachea,
#: where bowel gas near the midline offers many short tubes.
_TRACHEA_ATTEMPTS: Final = 20
#: The longer (left) main bronchus is about 5 cm.
_MAIN_BRONCHUS_MAX_MM: Final = 50.0
#: A branch whose cross-section grows past this factor has entered the lung.
_AIRWAY_LEAK_FACTOR: Final = 2.5
#: A daughter branch has at least this share of its parent's cross-section.
_BRANCH_MIN_SHARE: Final = 0.15


@dataclass(frozen=True)
class _Branch:
    """One airway branch as it is tracked down: its section in the last slice."""

    section: np.ndarray
    generation: int
    length_mm: float
    reference_area: int


@dataclass(frozen=True, eq=False)
class Airway:
    """Trachea and main bronchi.

    Attributes
    ----------
    mask : numpy.ndarray
        The airway's voxels (canonical orientation).
    carina : int or None
        Slice where the trachea divides; None when the scan shows no airway.
    """

    mask: np.ndarray
    carina: int | None

    @property
    def bronchi(self) -> np.ndarray:
        """The main bronchi: the airway at and below the carina."""
        bronchi = self.mask.copy()
        if self.carina is not None:
            bronchi[self.carina + 1 :] = False
        return bronchi


def airway_mask(
    hu: np.ndarray, air: np.ndarray, body: np.ndarray, spacing: Spacing, midline: np.ndarray
) -> Airway:
    """Trachea and main bronchi, or nothing when no carina is in the scan.

    Candidate tops are round air sections near the midline, deep in the
    body, from the top of the scan down; each is tracked until one proves
    to be the trachea: it runs at least _TRACHEA_MIN_MM and divides into a
    left and a right branch with lung on both sides (the esophagus, sinuses
    and bowel do not).
    """
    tried = np.zeros(air.shape, dtype=bool)
    tops = _trachea_tops(air, body, spacing, midline, tried)
    for z, section in itertools.islice(tops, _TRACHEA_ATTEMPTS):
        sections, carina = _track_airway(air, spacing, z, section)
        for zz, mask in sections.items():
            tried[zz] |= mask
        if (
            carina is not None
            and (z - carina) * spacing[0] >= _TRACHEA_MIN_MM
            and _lung_beside(hu[carina], air[carina], sections[carina], spacing)
        ):
            airway = np.zeros(air.shape, dtype=bool)
            highest = carina + int(_TRACHEA_MAX_MM // spacing[0])
            for zz, mask in sections.items():
                if zz <= highest:
                    airway[zz] = mask
            return Airway(airway, carina)
    return Airway(np.zeros(air.shape, dtype=bool), None)


def _lung_beside(hu: np.ndarray, air: np.ndarray, carina: np.ndarray, spacing: Spacing) -> bool:
    """Whether a slice has lung parenchyma on both sides of the carina's sections."""
    parenchyma = air & (hu > GAS_HU) & (hu <= LUNG_DENSITY_HU)
    columns = np.nonzero(carina)[1]
    minimum = _CARINA_LUNG_CM2 * 100.0 / (spacing[1] * spacing[2])
    return (
        np.count_nonzero(parenchyma[:, : columns.min()]) >= minimum
        and np.count_nonzero(parenchyma[:, columns.max() + 1 :]) >= minimum
    )


def _trachea_tops(
    air: np.ndarray, body: np.ndarray, spacing: Spacing, midline: np.ndarray, tried: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """Round air sections near the midline, deep in the body and not yet part of a
    tracked tube, top slice first."""
    area_mm2 = spacing[1] * spacing[2]
    depth = disk(spacing, _TRACHEA_DEPTH_MM)[0]
    for z in range(air.shape[0] - 1, -1, -1):
        sections, count = connected_components(air[z], 4)
        if count == 0:
            continue
        areas = component_sizes(sections, count, sections > 0) * area_mm2
        for index, box in enumerate(ndi.find_objects(sections), start=1):
            if not _TRACHEA_AREA_MM2[0] <= areas[index] <= _TRACHEA_AREA_MM2[1]:
                continue
            section = sections == index
            if (tried[z] & section).any():
                continue
            if _is_trachea_like(section, box, areas[index], spacing, midline[z]) and not (
                ndi.binary_dilation(section, depth) & ~body[z]
            ).any():
                yield z, section


def _is_trachea_like(
    section: np.ndarray, box: tuple[slice, ...], area_mm2: float, spacing: Spacing, midline: float
) -> bool:
    """Round (fills half its box, not elongated) and within _TRACHEA_MIDLINE_MM of the midline."""
    depth_mm = (box[0].stop - box[0].start) * spacing[1]
    width_mm = (box[1].stop - box[1].start) * spacing[2]
    round_enough = area_mm2 >= 0.5 * depth_mm * width_mm and max(depth_mm, width_mm) <= 2.5 * min(
        depth_mm, width_mm
    )
    off_midline_mm = abs(np.nonzero(section)[1].mean() - midline) * spacing[2]
    return round_enough and off_midline_mm <= _TRACHEA_MIDLINE_MM


def _track_airway(
    air: np.ndarray, spacing: Spacing, z0: int, top: np.ndarray
) -> tuple[dict[int, np.ndarray], int | None]:
    """Follow an air tube down from `top`: its sections by slice, and the carina's slice."""
    sections = {z0: top}
    branches = [_Branch(top, 0, 0.0, int(top.sum()))]
    carina = None
    for z in range(z0 - 1, -1, -1):
        parts, count = connected_components(air[z], 4)
        areas = component_sizes(parts, count, parts > 0)
        claimed: set[int] = set()
        followed: list[_Branch] = []
        for branch in branches:
            daughters = _daughters(branch, parts, areas, claimed)
            step = _next_sections(branch, daughters, parts, spacing)
            if step is None:
                continue
            if branch.generation == 0 and step[0].generation == 1:
                carina = z
            claimed.update(daughters[: len(step)])
            followed.extend(step)
        if any(b.generation == 0 and b.length_mm > 2 * _TRACHEA_MAX_MM for b in followed):
            return sections, None  # a tube this long that never divides is not the trachea
        if not followed:
            break
        branches = followed
        sections[z] = np.logical_or.reduce([b.section for b in followed])
    return sections, carina


def _daughters(branch: _Branch, parts: np.ndarray, areas: np.ndarray, claimed: set[int]) -> list[int]:
    """Sections of the next slice that continue `branch`, largest first.

    A section continues the branch if it touches it, is not a speck of
    noise, has not taken in the lung (a jump in area) and no other branch
    took it.
    """
    touching = np.unique(parts[ndi.binary_dilation(branch.section) & (parts > 0)])
    minimum = _BRANCH_MIN_SHARE * np.count_nonzero(branch.section)
    daughters = [
        int(i)
        for i in touching
        if i not in claimed and minimum <= areas[i] <= _AIRWAY_LEAK_FACTOR * branch.reference_area
    ]
    return sorted(daughters, key=lambda i: -areas[i])


def _next_sections(
    branch: _Branch, daughters: list[int], parts: np.ndarray, spacing: Spacing
) -> list[_Branch] | None:
    """The branches that continue `branch` into the next slice, or None where it ends.

    The trachea divides once into a left and a right main bronchus; a main
    bronchus ends where it divides again (lobar bronchi), leaks into the
    lung, or has run _MAIN_BRONCHUS_MAX_MM.
    """
    if not daughters:
        return None
    length = branch.length_mm + spacing[0]
    if len(daughters) == 1:
        if branch.generation == 1 and length > _MAIN_BRONCHUS_MAX_MM:
            return None
        return [_Branch(parts == daughters[0], branch.generation, length, branch.reference_area)]
    if branch.generation == 1:
        return None
    first, second = parts == daughters[0], parts == daughters[1]
    if not _opposite_sides(first, second, branch.section):
        return [_Branch(first, 0, length, branch.reference_area)]
    return [_Branch(first, 1, 0.0, int(first.sum())), _Branch(second, 1, 0.0, int(second.sum()))]


def _opposite_sides(a: np.ndarray, b: np.ndarray, parent: np.ndarray) -> bool:
    """Whether two sections lie on either side of their parent's centre (left-right)."""
    centre = np.nonzero(parent)[1].mean()
    return (np.nonzero(a)[1].mean() - centre) * (np.nonzero(b)[1].mean() - centre) < 0
