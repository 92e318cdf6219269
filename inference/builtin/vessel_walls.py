"""Calcified artery walls that touch bone and would otherwise pass as bone.

A plaque in the aorta's wall that touches a vertebra joins it and is as
thick as bone; its lumen, a round tube of blood beside the spine, is what
gives it away.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from inference.builtin.components import connected_components, connected_in_slice
from inference.builtin.constants import BONE_MIN_HALF_THICKNESS_MM, FAT_HU
from inference.builtin.morphology import opened_in_slice
from inference.builtin.spinal_canal import CANAL_RADIUS_MM
from inference.postprocess import Spacing

#: Lumen radius of the arteries whose calcified walls can lie against bone:
#: from the external iliac artery (8 mm across) to an ectatic thoracic
#: aorta (40 mm). Smaller arteries beside bone (vertebral, internal
#: carotid) run in bony canals, whose walls are the bone's.
_LUMEN_RADIUS_MM: Final = (4.0, 20.0)
#: The arterial wall inside the adventitia, intima and media, is 1.5 to
#: 2.5 mm thick in the aorta: no bone lies this close to a lumen. Thin
#: calcified shells count as wall out to _VESSEL_WALL_MM, a plaque's
#: thickness more.
_INTIMA_MEDIA_MM: Final = 2.0
_VESSEL_WALL_MM: Final = 4.0
#: A lumen is round: its edge (bone, or the fat around the vessel) lies
#: within this of a circle on at least _LUMEN_SEEN of its circumference;
#: elsewhere it touches tissue as dense as blood (the diaphragm's crus, a
#: vein, bowel).
_LUMEN_ROUND_MM: Final = 3.0
_LUMEN_SEEN: Final = 0.5
#: A calcified artery is found where a thin dense shell (thinner than
#: 2x BONE_MIN_HALF_THICKNESS_MM: no marrow inside) lines this share of
#: its lumen's circumference; bone thick enough to hold marrow may line
#: less than _LUMEN_SEEN of it (a vessel lies beside bones, while the
#: spinal canal and the foramina are ringed by them).
_LUMEN_CALCIFIED: Final = 0.25
#: Directions in which a lumen's edge is looked for.
_LUMEN_RAYS: Final = 64
#: The arteries that lie on bones run along the spine: the aorta in front
#: of the vertebral bodies (up to 45 mm deep, canal included) with its
#: radius, the common iliac arteries in front of L5 and the sacrum. Their
#: lumens' centres lie within this of the spinal canal's (the costal
#: cartilages, rounded and ringed by calcification too, lie far beyond).
_VESSEL_SPINE_MM: Final = 80.0
#: Directions of the rays cast from a lumen's centre.
_RAY_ANGLES: Final = np.linspace(0.0, 2.0 * np.pi, _LUMEN_RAYS, endpoint=False)


@dataclass(frozen=True)
class _Lumen:
    """A vessel's lumen in one slice: a circle, in mm from the slice's first voxel."""

    slice: int
    row_mm: float
    column_mm: float
    radius_mm: float


def vessel_walls(bone: np.ndarray, hu: np.ndarray, spacing: Spacing, canal_mm: np.ndarray) -> np.ndarray:
    """The voxels of `bone` that are calcified walls of arteries lying against it.

    A plaque in the wall of the aorta that touches a vertebra joins it and
    passes the thickness test with it. What tells it apart is its lumen: a
    round region of blood, thrombus or contrast (neither bone nor fat)
    that a thin dense shell lines from outside, and a tube at least as long
    as it is wide, whereas bone's cortex encloses marrow and an
    intervertebral disc is a flat layer. Lumens are sought where thin
    shells curve in the slices of :func:`_lumen_seeds`, near the spinal
    canal (`canal_mm`: its centre in each slice, in mm), and tracked up and
    down slice by slice (see :func:`_lumen_at`); the wall is found around
    each (see :func:`_wall_at`).
    """
    walls = np.zeros(bone.shape, dtype=bool)
    found: dict[int, list[_Lumen]] = {}
    for seed in _lumen_seeds(bone, hu, spacing, canal_mm):
        if any(_inside(seed, lumen) for lumen in found.get(seed.slice, ())):
            continue
        tube = _track(bone, hu, spacing, canal_mm, seed)
        for lumen in tube:
            found.setdefault(lumen.slice, []).append(lumen)
        length_mm = (tube[-1].slice - tube[0].slice + 1) * spacing[0]
        if length_mm < 2.0 * float(np.median([lumen.radius_mm for lumen in tube])):
            continue
        for lumen in tube:
            box, wall = _wall_at(bone[lumen.slice], hu[lumen.slice], spacing, lumen)
            walls[lumen.slice][box] |= wall
    return walls


def _lumen_seeds(
    bone: np.ndarray, hu: np.ndarray, spacing: Spacing, canal_mm: np.ndarray
) -> Iterator[_Lumen]:
    """Lumens lined by a calcified wall, in slices _LUMEN_RADIUS_MM[0] apart.

    A tube that counts is at least two radii long, so it crosses two of
    these slices or more; calcification is patchy, so each is a chance to
    find it (the opening costs 4 ms a slice on 1 mm pixels). In each,
    the thin shells are what an opening by BONE_MIN_HALF_THICKNESS_MM
    removes from the bone; a shell curving around a lumen has its centre
    of curvature inside it, where the search for the lumen starts. A shell
    lining a quarter of the smallest lumen is longer than that lumen's
    radius; one flatter than the largest lumen lines none.
    """
    step = max(1, int(_LUMEN_RADIUS_MM[0] // spacing[0]))
    sections = np.ascontiguousarray(bone[::step])
    thick = opened_in_slice(sections, spacing, BONE_MIN_HALF_THICKNESS_MM)
    shells, _ = connected_in_slice(sections & ~thick)
    for label, box in enumerate(ndi.find_objects(shells), start=1):
        extent_mm = max((b.stop - b.start) * s for b, s in zip(box[1:], spacing[1:], strict=True))
        if extent_mm < _LUMEN_RADIUS_MM[0]:
            continue
        shell_rows, shell_columns = np.nonzero(shells[box][0] == label)
        row_mm, column_mm, radius_mm = _circle(
            (shell_rows + box[1].start) * spacing[1], (shell_columns + box[2].start) * spacing[2]
        )
        if radius_mm > _LUMEN_RADIUS_MM[1]:
            continue
        k = box[0].start
        index = k * step
        lumen = _lumen_at(sections[k], hu[index], spacing, index, canal_mm[index], (row_mm, column_mm), None)
        if lumen is None:
            continue
        _, calcified, rows, columns = _edge_rays(sections[k], hu[index], spacing, lumen)
        thick_lined = calcified & thick[k][rows, columns]
        if np.mean(calcified & ~thick_lined) >= _LUMEN_CALCIFIED and np.mean(thick_lined) < _LUMEN_SEEN:
            yield lumen


def _lumen_at(
    section: np.ndarray,
    hu: np.ndarray,
    spacing: Spacing,
    index: int,
    canal_mm: np.ndarray,
    centre_mm: tuple[float, float],
    radius_mm: float | None,
) -> _Lumen | None:
    """The lumen around a point (row, column in mm) of slice `index`, or None where there is none.

    Its edge is where rays from the centre first meet bone or fat; a circle
    is fitted to the edge points within _LUMEN_ROUND_MM of the radius (at
    first `radius_mm`, that of the lumen in the slice before, or the median
    distance), three times from the new centre. It is a lumen if the
    circle holds _LUMEN_SEEN of the edge points, its radius is that of an
    artery, its centre is neither bone nor fat, and it lies within
    _VESSEL_SPINE_MM of the spinal canal's centre (`canal_mm`) but outside
    the canal.
    """
    row_mm, column_mm = centre_mm
    edge = section | (hu < FAT_HU[1])
    for _ in range(3):
        if _is_edge(edge, spacing, row_mm, column_mm):
            return None
        distances, _, _ = _rays(edge, spacing, row_mm, column_mm)
        if radius_mm is None:
            if np.isnan(distances).all():
                return None
            radius_mm = float(np.nanmedian(distances))
        on = np.abs(distances - radius_mm) <= _LUMEN_ROUND_MM
        if np.mean(on) < _LUMEN_SEEN:
            return None
        row_mm, column_mm, radius_mm = _circle(
            row_mm + np.sin(_RAY_ANGLES[on]) * distances[on],
            column_mm + np.cos(_RAY_ANGLES[on]) * distances[on],
        )
    if not _LUMEN_RADIUS_MM[0] <= radius_mm <= _LUMEN_RADIUS_MM[1]:
        return None
    if _is_edge(edge, spacing, row_mm, column_mm):
        return None
    if not CANAL_RADIUS_MM < np.hypot(row_mm - canal_mm[0], column_mm - canal_mm[1]) <= _VESSEL_SPINE_MM:
        return None
    distances, _, _ = _rays(edge, spacing, row_mm, column_mm)
    if np.mean(np.abs(distances - radius_mm) <= _LUMEN_ROUND_MM) < _LUMEN_SEEN:
        return None
    return _Lumen(index, row_mm, column_mm, radius_mm)


def _track(
    bone: np.ndarray, hu: np.ndarray, spacing: Spacing, canal_mm: np.ndarray, seed: _Lumen
) -> list[_Lumen]:
    """The lumen of `seed` in each slice above and below until it ends, bottom first.

    Each slice's lumen is sought from the one before it; a centre that
    moves more than half the radius has jumped to another structure (the
    lumens of adjacent slices overlap by most of their area).
    """
    tube = [seed]
    for direction in (-1, 1):
        last = seed
        index = seed.slice + direction
        while 0 <= index < bone.shape[0]:
            lumen = _lumen_at(
                bone[index],
                hu[index],
                spacing,
                index,
                canal_mm[index],
                (last.row_mm, last.column_mm),
                last.radius_mm,
            )
            if lumen is None:
                break
            if np.hypot(lumen.row_mm - last.row_mm, lumen.column_mm - last.column_mm) > last.radius_mm / 2:
                break
            tube.append(lumen)
            last = lumen
            index += direction
    return sorted(tube, key=lambda lumen: lumen.slice)


def _wall_at(
    section: np.ndarray, hu: np.ndarray, spacing: Spacing, lumen: _Lumen
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The calcified wall around `lumen` in its slice: a window of the slice and the wall in it.

    The wall is the thin shell within _VESSEL_WALL_MM of the lumen's
    circle; where the lumen is calcified (as in :func:`_lumen_seeds`), all
    bone within _INTIMA_MEDIA_MM of the lumen (what its centre reaches
    without crossing bone or fat) too, however thick the bone it joins; and
    any piece of bone that their removal leaves lying wholly within the
    reach of the thin shell (a plaque thick enough to survive the
    opening). Bone thick enough to hold marrow that reaches beyond (a
    vertebral body) stays. None where such bone lines half the lumen: the
    tube has entered a bony canal.
    """
    reach_mm = lumen.radius_mm + _VESSEL_WALL_MM
    # The opening needs its own diameter around the reach to see thick bone as thick.
    half_mm = reach_mm + 2 * BONE_MIN_HALF_THICKNESS_MM + max(spacing[1:])
    box = tuple(
        slice(max(int((centre - half_mm) // step), 0), int((centre + half_mm) // step) + 1)
        for centre, step in ((lumen.row_mm, spacing[1]), (lumen.column_mm, spacing[2]))
    )
    local = section[box]
    thick = opened_in_slice(local[None], spacing, BONE_MIN_HALF_THICKNESS_MM)[0]
    row_mm, column_mm = lumen.row_mm - box[0].start * spacing[1], lumen.column_mm - box[1].start * spacing[2]
    shifted = _Lumen(lumen.slice, row_mm, column_mm, lumen.radius_mm)
    _, calcified, rows, columns = _edge_rays(local, hu[box], spacing, shifted)
    thick_lined = calcified & thick[rows, columns]
    if np.mean(thick_lined) >= _LUMEN_SEEN:
        return box, np.zeros(local.shape, dtype=bool)
    down = np.arange(local.shape[0])[:, None] * spacing[1] - row_mm
    across = np.arange(local.shape[1])[None, :] * spacing[2] - column_mm
    radial = np.hypot(down, across)
    near = radial <= reach_mm
    wall = local & ~thick & near
    if np.mean(calcified & ~thick_lined) >= _LUMEN_CALCIFIED:
        # The lumen itself: what the centre reaches without crossing bone or fat.
        lumen_like = ~local & (hu[box] >= FAT_HU[1])
        regions, _ = connected_components(lumen_like & (radial <= lumen.radius_mm + _LUMEN_ROUND_MM), 4)
        # Never 0: _lumen_at found the centre's voxel neither bone nor fat.
        centre = regions[
            round(lumen.row_mm / spacing[1]) - box[0].start,
            round(lumen.column_mm / spacing[2]) - box[1].start,
        ]
        # The CT's blur spreads a calcification about a pixel into the lumen.
        depth_mm = ndi.distance_transform_edt(regions != centre, sampling=spacing[1:])
        wall |= local & (depth_mm <= _INTIMA_MEDIA_MM + max(spacing[1:]))
    pieces, count = connected_components(local & ~wall, 4)
    beyond = np.zeros(count + 1, dtype=bool)
    beyond[pieces[local & ~near]] = True
    return box, wall | ((pieces > 0) & ~beyond[pieces])


def _edge_rays(
    section: np.ndarray, hu: np.ndarray, spacing: Spacing, lumen: _Lumen
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Along each ray from the lumen's centre: the distance to its edge (bone or fat), whether
    that edge is bone on the lumen's circle (a calcified wall), and its row and column."""
    distances, rows, columns = _rays(section | (hu < FAT_HU[1]), spacing, lumen.row_mm, lumen.column_mm)
    calcified = (np.abs(distances - lumen.radius_mm) <= _LUMEN_ROUND_MM) & section[rows, columns]
    return distances, calcified, rows, columns


def _rays(edge: np.ndarray, spacing: Spacing, row_mm: float, column_mm: float) -> tuple[np.ndarray, ...]:
    """Along _LUMEN_RAYS rays from a point of a slice, out to the largest lumen's wall:
    the distance (mm) to the first `edge` voxel (NaN where there is none) and its row and column."""
    step_mm = min(spacing[1:]) / 2
    reach = np.arange(step_mm, _LUMEN_RADIUS_MM[1] + _VESSEL_WALL_MM, step_mm)
    rows = np.rint((row_mm + np.sin(_RAY_ANGLES)[:, None] * reach) / spacing[1]).astype(int)
    columns = np.rint((column_mm + np.cos(_RAY_ANGLES)[:, None] * reach) / spacing[2]).astype(int)
    inside = (rows >= 0) & (rows < edge.shape[0]) & (columns >= 0) & (columns < edge.shape[1])
    hit = np.zeros(rows.shape, dtype=bool)
    hit[inside] = edge[rows[inside], columns[inside]]
    first = hit.argmax(axis=1)
    ray = np.arange(_LUMEN_RAYS)
    distances = np.where(hit[ray, first], reach[first], np.nan)
    rows = rows[ray, first].clip(0, edge.shape[0] - 1)
    return distances, rows, columns[ray, first].clip(0, edge.shape[1] - 1)


def _is_edge(edge: np.ndarray, spacing: Spacing, row_mm: float, column_mm: float) -> bool:
    """Whether a point lies on an `edge` voxel or outside the slice."""
    row, column = round(row_mm / spacing[1]), round(column_mm / spacing[2])
    return not (0 <= row < edge.shape[0] and 0 <= column < edge.shape[1]) or bool(edge[row, column])


def _inside(seed: _Lumen, lumen: _Lumen) -> bool:
    """Whether the centre of `seed` lies in `lumen` (same slice)."""
    return bool(np.hypot(seed.row_mm - lumen.row_mm, seed.column_mm - lumen.column_mm) <= lumen.radius_mm)


def _circle(rows_mm: np.ndarray, columns_mm: np.ndarray) -> tuple[float, float, float]:
    """Centre (row, column) and radius of the circle through points, by algebraic least squares.

    x^2 + y^2 = 2ax + 2by + c is linear in a, b and c; the radius is
    sqrt(c + a^2 + b^2).
    """
    design = np.column_stack([2 * rows_mm, 2 * columns_mm, np.ones_like(rows_mm)])
    (a, b, c), *_ = np.linalg.lstsq(design, rows_mm**2 + columns_mm**2, rcond=None)
    return float(a), float(b), float(np.sqrt(max(c + a * a + b * b, 0.0)))
