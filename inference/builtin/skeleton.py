"""All bone, marrow included: dense thick parts, then what their cortex encloses."""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy import ndimage as ndi

from inference.builtin.components import connected_components
from inference.builtin.constants import BONE_MIN_HALF_THICKNESS_MM, FAT_HU
from inference.builtin.morphology import (
    IN_SLICE,
    Coarse,
    SliceHoles,
    ball,
    body_midline,
    box_of,
    closed_in_slice,
    component_sizes,
    eroded_in_slice,
    fill_in_slice,
    opened_along_slices,
    opened_in_slice,
    regions_in_slice,
    stepped_in_slice,
)
from inference.builtin.spinal_canal import SpinalCanal, spinal_canal
from inference.builtin.vessel_walls import vessel_walls
from inference.postprocess import Spacing

#: Cortical bone reaches this even on 3 mm voxels; calcified cartilage and
#: plaques do too, but are thinner (see BONE_MIN_HALF_THICKNESS_MM).
#: Thin cortex reaches it only at its crest, not 2 mm deep.
_CORTICAL_HU: Final = 300
#: Contrast pools: solid, at least 12 mm across and 100 HU brighter than
#: around them. Excreted contrast denser than _POOL_MAX_HU (renal pelvis,
#: bladder in a late phase) is still taken for bone; petrous bone, the only
#: solid bone that thick, is denser.
_POOL_MAX_HU: Final = 1000
_POOL_MIN_RADIUS_MM: Final = 6.0
_POOL_RING_MM: Final = 4.0
_POOL_CONTRAST_HU: Final = 100
#: Share of dense voxels around a pool; around bone it was above 0.5.
_POOL_DENSE_AROUND: Final = 0.35
#: Bone interior (trabecular bone, red marrow) is denser than CSF, blood
#: and muscle.
_MARROW_HU: Final = 60
#: Gaps in the cortex that closing bridges before the inside is filled.
_BONE_CLOSING_MM: Final = 6.0
#: Height of a gap in the cortex (a vascular foramen) that the slices
#: above and below close.
_CORTEX_GAP_MM: Final = 2.0
#: Holes this small are marrow whatever their density (ribs, long bones).
_MARROW_SMALL_CM2: Final = 1.0
#: A vertebral body is at most about twice as wide as it is tall; an
#: intervertebral disc is 3 to 6 times (lumbar 45 x 10 mm, thoracic
#: 30 x 5 mm, cervical 18 x 5 mm).
_DISC_FLATNESS: Final = 3.0
#: Share of a slice that a vertebral endplate's cortex covers.
_ENDPLATE_COVER: Final = 0.5
#: Largest bone cross-section (vertebral body, femoral head); a larger
#: enclosed region is a cavity ringed by bones (pelvis, thorax).
_BONE_MAX_HOLE_CM2: Final = 30.0


def skeleton_mask(hu: np.ndarray, body: np.ndarray, spacing: Spacing, coarse: Coarse) -> np.ndarray:
    """All bone, marrow included.

    Dense voxels form bone where their part is thick enough and holds
    cortical density (see :func:`_thick_parts`); then what the cortex
    encloses in each slice (gaps bridged) is added where it is bone-like
    (see :func:`_bone_interior`).
    Contrast in vessels, kidneys and bowel is not bone: a pool of it is
    brighter than its surroundings, while bone's cortex is at least as
    bright as its inside (see :func:`_contrast_pools`); a calcified vessel
    wall is too thin to pass the thickness test, and where it touches bone
    and passes with it, it lines a lumen (see :func:`vessel_walls`).
    Last, the outline loses what the filling added below the bone edge
    (see :func:`_outline`).
    """
    edge_hu = _bone_edge_hu(spacing)
    dense = body & (hu >= edge_hu)
    dense &= ~_contrast_pools(hu, dense, spacing, coarse)
    dense |= _small_holes(dense, spacing) & body
    core = _thick_parts(dense, hu, spacing)
    # A bone cut by the edge of the image encloses outside air with the edge.
    bone = core | (_bone_interior(core, hu, spacing, coarse) & body)
    # Marrow darker than _MARROW_HU (fat, noise) inside trabecular bone.
    bone |= _small_holes(bone, spacing) & body
    coarse_spacing = coarse.spacing(spacing)
    canal = spinal_canal(coarse.mean(bone) >= 0.5, body_midline(coarse.mean(body) >= 0.5), coarse_spacing)
    if canal is not None:  # no spine, no aorta on it
        bone &= ~vessel_walls(bone, hu, spacing, _canal_mm(canal, coarse, spacing))
    return bone & ~(_outline(bone) & (hu < edge_hu))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with a 4-neighbour outside it in their slice.

    Bone's outline is its cortex, so a voxel there below the bone edge was
    added by the filling of the inside where the cortex has a gap (a
    foramen, the spinal canal's side of a vertebral body): it lies outside
    the bone's surface.
    """
    return mask & ~stepped_in_slice(mask, square=False, erode=True, outside=True)


def _canal_mm(canal: SpinalCanal, coarse: Coarse, spacing: Spacing) -> np.ndarray:
    """The spinal canal's centre in each slice of the full grid: (row, column) in mm."""
    index = np.minimum(np.arange(coarse.shape[0]) // coarse.factors[0], canal.rows.size - 1)
    return np.column_stack(
        [
            ((centre[index] + 0.5) * factor - 0.5) * step
            for centre, factor, step in zip(
                (canal.rows, canal.columns), coarse.factors[1:], spacing[1:], strict=True
            )
        ]
    )


def _bone_edge_hu(spacing: Spacing) -> float:
    """HU of the bone boundary for this voxel size.

    Partial volume lowers the apparent density of thin cortex (ribs, vertebral
    shell) on larger voxels, so the edge is lower there: 200 HU at 1 mm,
    130 HU at 3 mm in-plane, linear between, the values that best matched
    TotalSegmentator's bones on the two reference series (0.98 mm, 3 mm).
    """
    pixel_mm = float(np.sqrt(spacing[1] * spacing[2]))
    return float(np.interp(pixel_mm, (1.0, 3.0), (200.0, 130.0)))


def _contrast_pools(hu: np.ndarray, dense: np.ndarray, spacing: Spacing, coarse: Coarse) -> np.ndarray:
    """Dense voxels that belong to a pool of contrast medium (vessel, urinary tract, bowel).

    A pool is a solid dense region at least 2x _POOL_MIN_RADIUS_MM across,
    within its slice and along the slice axis (openings on the coarse grid:
    a bone plate seen face on, an endplate or the skull's vertex, is as
    wide but thinner), whose 3-D surroundings are on
    average _POOL_CONTRAST_HU darker than it and mostly not dense: a lumen
    is the brightest thing around, in soft tissue, whereas trabecular bone
    of the same density is enclosed by cortex and joins other bone (on
    3 mm voxels a femoral neck is darker around than inside, but half its
    surroundings are still bone). Solid cortical bone is never that thick
    below _POOL_MAX_HU.
    """
    coarse_spacing = coarse.spacing(spacing)
    solid = coarse.mean(dense & (hu < _POOL_MAX_HU)) >= 0.5
    cores = opened_in_slice(solid, coarse_spacing, _POOL_MIN_RADIUS_MM)
    cores &= opened_along_slices(solid, coarse_spacing, _POOL_MIN_RADIUS_MM)
    if not cores.any():
        return np.zeros(hu.shape, dtype=bool)
    ring = ball(coarse_spacing, _POOL_RING_MM)
    box = box_of(cores, margin=max(ring.shape) // 2 + 1)
    pools, count = connected_components(cores[box], 6)
    index = np.arange(1, count + 1)
    coarse_hu = coarse.mean_within(hu, box)
    surroundings = ndi.grey_dilation(pools, footprint=ring) * ~cores[box]
    inside_hu = ndi.mean(coarse_hu, pools, index)
    around_hu = ndi.mean(coarse_hu, surroundings, index)
    around_dense = ndi.mean(coarse.mean_within(dense, box), surroundings, index)
    darker = np.zeros(count + 1, dtype=bool)
    darker[1:] = (around_hu < inside_hu - _POOL_CONTRAST_HU) & (around_dense < _POOL_DENSE_AROUND)
    if not darker.any():
        return np.zeros(hu.shape, dtype=bool)
    # One block more takes the pool's partial-volume rim.
    pool = np.zeros(cores.shape, dtype=bool)
    pool[box] = ndi.binary_dilation(darker[pools], IN_SLICE)
    return coarse.up(pool) & dense


def _small_holes(mask: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Holes of `mask` smaller than _MARROW_SMALL_CM2 in their slice."""
    return SliceHoles.of(mask).smaller_than(_MARROW_SMALL_CM2 * 100.0 / (spacing[1] * spacing[2]))


def _thick_parts(dense: np.ndarray, hu: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Connected parts of `dense` at least 2x BONE_MIN_HALF_THICKNESS_MM thick
    somewhere and holding voxels of cortical density.

    `dense` has its small holes filled, so a rib is as thick as its whole
    section even where its cortex is 1-2 mm thin around the marrow; the
    thick place and the cortical voxels need not coincide, since such a
    cortex reaches _CORTICAL_HU only at its crest (whole ribs were lost when
    the cortex had to be that dense 2 mm deep).
    """
    out = np.zeros(dense.shape, dtype=bool)
    if not dense.any():
        return out
    # In the bones' box (the erosion treats its border as the array's: no dense voxel lies beyond).
    box = box_of(dense, margin=0)
    dense, hu = dense[box], hu[box]
    parts, count = connected_components(dense, 26)
    thick = eroded_in_slice(dense, spacing, BONE_MIN_HALF_THICKNESS_MM)
    keep = np.zeros(count + 1, dtype=bool)
    keep[parts[thick]] = True
    cortical = np.zeros(count + 1, dtype=bool)
    cortical[parts[dense & (hu >= _CORTICAL_HU)]] = True
    keep &= cortical
    keep[0] = False
    out[box] = keep[parts]
    return out


def _bone_interior(core: np.ndarray, hu: np.ndarray, spacing: Spacing, coarse: Coarse) -> np.ndarray:
    """What the bone cortex encloses and is bone: marrow and trabecular bone.

    Gaps of up to 2x _BONE_CLOSING_MM in the cortex are bridged (closing on
    the coarse grid), then each enclosed region of a slice that fits in a
    bone (<= _BONE_MAX_HOLE_CM2; the pelvic and thoracic cavities are
    larger) is taken whole if it is small (rib marrow) or fat on average
    (yellow marrow of long bones), otherwise only its voxels denser than
    _MARROW_HU (trabecular bone): the spinal canal (CSF, cord) and vessel
    lumens ringed by plaques have the density of water or blood and stay
    out. Trabecular parts that are intervertebral discs are left out too
    (see :func:`_disc_layers`).
    """
    coarse_core = coarse.mean(core) > 0
    bridges = closed_in_slice(coarse_core, coarse.spacing(spacing), _BONE_CLOSING_MM) & ~coarse_core
    bridged = core | coarse.up(bridges)
    box, regions, count = regions_in_slice(fill_in_slice(bridged) & ~core)
    if count == 0:
        return np.zeros(core.shape, dtype=bool)
    enclosed = regions > 0
    voxels = component_sizes(regions, count, enclosed)
    area_cm2 = voxels * spacing[1] * spacing[2] / 100.0
    hu_sum = np.bincount(regions[enclosed], weights=hu[box][enclosed], minlength=count + 1)
    mean_hu = hu_sum / np.maximum(voxels, 1)
    whole = (area_cm2 < _MARROW_SMALL_CM2) | (mean_hu < FAT_HU[1])
    fits = area_cm2 <= _BONE_MAX_HOLE_CM2
    whole[0] = fits[0] = False
    inside, marrow = fits[regions], (fits & whole)[regions]
    denser = hu[box] > _MARROW_HU
    trabecular = inside & ~marrow & denser
    discs = np.zeros(trabecular.shape, dtype=bool)
    if trabecular.any():
        # In the trabecular bone's own box (half the regions' on the torso phantom).
        own = box_of(trabecular, margin=0)
        first, stop = box[0].start + own[0].start, box[0].start + own[0].stop
        scan_ends = (first == 0, stop == core.shape[0])
        discs[own] = _disc_layers(trabecular[own], core[box][own], spacing, scan_ends)
    # Where a slice's cortex has a gap too wide to bridge (a vascular
    # foramen, thin cortex lost to partial volume), the slices above and
    # below still enclose its inside.
    inside &= ~discs
    below, above = np.zeros_like(inside), np.zeros_like(inside)
    for step in range(1, max(1, round(_CORTEX_GAP_MM / spacing[0])) + 1):
        below[step:] |= inside[:-step]
        above[:-step] |= inside[step:]
    inside |= below & above & ~core[box]
    out = np.zeros(core.shape, dtype=bool)
    out[box] = (inside & ~marrow & ~discs & denser) | marrow
    return out


def _disc_layers(
    trabecular: np.ndarray, core: np.ndarray, spacing: Spacing, scan_ends: tuple[bool, bool]
) -> np.ndarray:
    """The parts of `trabecular` that are intervertebral discs.

    Where a degenerate disc is ringed by osteophytes and the rims of the
    endplates, its slices look like the inside of a vertebral body, and
    fibrocartilage (70-120 HU) is as dense as osteoporotic trabecular bone.
    In 3-D, though, a disc is a layer at least _DISC_FLATNESS times wider
    than tall, and the inside of a vertebral body is not. On thick slices
    partial volume can join a disc to the vertebral body through its
    endplate, so each connected part is cut at its endplates (see
    :func:`_between_endplates`) and every layer is judged on its own. A
    layer cut by the scan's first or last slice is kept: its height is
    unknown (`scan_ends`: whether the arrays' first and last slices are
    the scan's).
    """
    parts, _ = connected_components(trabecular, 6)
    discs = np.zeros(trabecular.shape, dtype=bool)
    for index, box in enumerate(ndi.find_objects(parts), start=1):
        part = parts[box] == index
        for first, stop in _between_endplates(part, core[box]):
            first_cut = scan_ends[0] and box[0].start + first == 0
            if first_cut or (scan_ends[1] and box[0].start + stop == trabecular.shape[0]):
                continue
            layer = part[first:stop]
            height_mm = (stop - first) * spacing[0]
            _, rows, columns = ndi.find_objects(layer.astype(np.uint8))[0]
            narrowest_mm = min(
                (rows.stop - rows.start) * spacing[1], (columns.stop - columns.start) * spacing[2]
            )
            if narrowest_mm < _DISC_FLATNESS * height_mm:
                continue  # cannot be that flat: skip the costlier measure
            # In the layer's own rows and columns: the background beyond them is no nearer.
            if _widest_disk_mm(layer[:, rows, columns], spacing) >= _DISC_FLATNESS * height_mm:
                discs[box][first:stop] |= layer
    return discs


def _between_endplates(part: np.ndarray, core: np.ndarray) -> list[tuple[int, int]]:
    """Runs of slices of `part` (first, stop) between its endplates.

    An endplate is a slice inside the part where cortical bone (`core`)
    covers more than _ENDPLATE_COVER of the part's sections in the slices
    on either side: the part passes there only through the plate's
    partial-volume gaps. The endplate slices belong to no run.
    """
    beside = np.zeros(part.shape, dtype=bool)
    beside[1:-1] = part[:-2] | part[2:]
    covered = (core & beside).sum(axis=(1, 2)) > _ENDPLATE_COVER * beside.sum(axis=(1, 2))
    covered[[0, -1]] = False
    runs, first = [], 0
    for k in np.flatnonzero(covered):
        if k > first:
            runs.append((first, int(k)))
        first = int(k) + 1
    if first < part.shape[0]:
        runs.append((first, part.shape[0]))
    return runs


def _widest_disk_mm(part: np.ndarray, spacing: Spacing) -> float:
    """Diameter of the largest disk that fits in a slice of `part`, holes filled."""
    filled = fill_in_slice(np.pad(part, ((0, 0), (1, 1), (1, 1))))
    # One transform for all slices, set farther apart than any two voxels
    # of a slice, so that each voxel's nearest background lies in its own.
    apart = float(np.hypot(*(n * s for n, s in zip(filled.shape[1:], spacing[1:], strict=True)))) + 1.0
    return 2.0 * float(ndi.distance_transform_edt(filled, sampling=(apart, *spacing[1:])).max())
