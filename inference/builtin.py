"""The built-in segmenter: eight structures from HU and anatomy, no weights.

It needs no model files and no GPU, runs in seconds on a CPU, and gives every
segnode installation a working pipeline (SEG, SR, body composition) before a
network is configured. Every rule is anatomy measured in mm (taken from the
volume's affine), so the same code serves 0.8 mm and 3 mm CT:

* **body**: the soft-tissue parts of the scan (trunk, arms), found after
  an opening that breaks the thin shells of the table and cushions, each
  part being mostly soft tissue; holes filled slice by slice.
* **lungs**: air inside the body (< -400 HU) in large 3-D components of
  lung density (the median below -600 HU, few voxels of pure gas; bowel
  gas is pure gas), or connected to the airway; split into left and right
  by the patient's midline, eroding a component that spans both sides
  until it separates.
* **airway**: an air tube in the midline tracked down slice by slice from
  its top until it divides into two (the carina), then each main bronchus
  until it divides again, leaks into the lung or passes 50 mm; accepted only
  when the carina is seen, and cut 130 mm above it (below the larynx).
* **skeleton**: voxels above a bone edge (200 HU on 1 mm voxels, 130 HU
  on 3 mm ones, where partial volume dims thin cortex), less pools of
  contrast medium (solid, at least 12 mm across, brighter than their
  surroundings, which are not bone), in parts that hold cortical density
  and are at least 4 mm thick once their marrow is filled (a rib with a
  thin cortex is; plaques and calcified cartilage plates are not); then the
  inside of each bone, enclosed in its slice once gaps of up to 12 mm in
  the cortex are bridged: whole where small or fatty (marrow), elsewhere
  its voxels denser than 60 HU (trabecular bone), so that the spinal canal
  and vessel lumens (water, blood) stay out; such voxels that form a layer
  at least 3 times wider than tall between endplates are an intervertebral
  disc ringed by osteophytes and stay out too; a slice whose cortex has a
  gap too wide to bridge takes its inside from the slices 2 mm above and
  below; then holes under 1 cm2 left in a bone are marrow. A calcified
  artery wall that touches bone and passed with it is taken out: it lines
  a lumen, a round region of blood or contrast 8 to 40 mm across within
  80 mm of the spinal canal (aorta, iliac arteries), tracked slice by
  slice as a tube at least as long as it is wide; what lies in the wall
  (thin shells, and bone within the 2 mm of intima and media) goes, the
  vertebra's thick bone beyond stays.
  Last, filled voxels below the bone edge on the outline go: the cortex
  is the bone's surface.
* **subcutaneous fat, visceral fat, skeletal muscle**: the body-composition
  HU windows (fat -190 to -30, muscle -29 to 150) split by compartment:
  subcutaneous fat is the fat reached from the skin without crossing the
  muscle wall (its gaps closed). Under it, the trunk's visceral space is
  what lies deeper than the wall (15 mm: abdominal muscles, ribs) and
  outside the back muscles (behind the spinal canal, within 70 mm of it):
  organs, bowel, vessels, mediastinum. Skeletal muscle is the lean tissue
  under the subcutaneous fat outside that space (the wall, the back, the
  limbs), the spinal canal excepted; visceral fat is the fat inside it,
  below the top of the lungs and outside the space between them.

The label map is exclusive, so the body outline is the union of all labels;
label 1 ("body") holds the body voxels that no other structure claims.

Orientation: the array is viewed (no copy) in a canonical order, axis 0 to
the head, axis 1 to the back, axis 2 to the patient's left, so "slice"
always means axial, "top" means cranial and "left" means the patient's
left, whatever the acquisition's orientation; the labels go back to the
volume's own order at the end.

Cost: after the body, everything runs inside the body's bounding box, and
morphology with large structuring elements (the body's opening, closing
the muscle wall and the bone cortex, the wall's depth) on a grid of about
2 mm, where it costs an eighth of the full-resolution work; thresholds,
hole filling and boundaries stay at full resolution. Measured with
bench/builtin_dice.py: 13 s for a 512x512x600 CT (one core; the
machine has two).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage as ndi

from dicomio.codes import BUILTIN_STRUCTURES, MORPHOLOGICAL_OPERATIONS, structure_code
from dicomio.seg import AlgorithmIdentity, LabelledStructure
from dicomio.volume import AxisOrder, Volume
from inference.postprocess import HoleFilling, Spacing, fill_holes
from inference.segmenter import Segmentation

__all__ = ["ALGORITHM", "BuiltinSegmenter", "segment_canonical"]

# CID 7162 "Surface Processing Algorithm Families": the rules below are
# thresholds, connected components and morphology (opening, closing, hole
# filling, erosion), i.e. DCM 123104 "Morphological Operations". Not 123109
# "Manual Processing" (no person draws), 123110 "Artificial Intelligence"
# (nothing is learned) or 123108, which is "Multispectral Processing", not an
# "automatic" family.
ALGORITHM: Final = AlgorithmIdentity(name="segnode-builtin", version="1.0", family=MORPHOLOGICAL_OPERATIONS)

#: Label value of each built-in structure: 1..8 in BUILTIN_STRUCTURES' order.
_VALUES: Final = {name: value for value, name in enumerate(BUILTIN_STRUCTURES, start=1)}

# --- HU -------------------------------------------------------------------
#: Halfway between air (-1000) and fat (-100): the skin and lung boundaries.
_AIR_HU: Final = -400
#: Tissue threshold for the body outline; lower than _AIR_HU so that lung
#: parenchyma at the body's edge never cuts the outline.
_TISSUE_HU: Final = -500
#: Lung parenchyma is -900..-700; a component with half its voxels above
#: this is not aerated lung.
_LUNG_DENSITY_HU: Final = -600
#: Pure gas (bowel, stomach, outside air); healthy lung has almost none.
_GAS_HU: Final = -950
_GAS_MAX_FRACTION: Final = 0.3
#: Body-composition windows (Alberta protocol, as in most CT body
#: composition studies).
_FAT_HU: Final = (-190, -30)
_MUSCLE_HU: Final = (-29, 150)
#: A part of the body is at least half soft tissue (fat to muscle and
#: organs); table shells (carbon fibre, 200-500 HU) and foam are not.
_SOFT_TISSUE_HU: Final = (-250, 150)
#: Cortical bone reaches this even on 3 mm voxels; calcified cartilage and
#: plaques do too, but are thinner (see _BONE_MIN_HALF_THICKNESS_MM).
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

# --- geometry (mm, ml, cm2) ------------------------------------------------
#: Voxel size of the grid for large morphology.
_COARSE_MM: Final = 2.0
#: Breaks table shells and cushions up to about 2x this thick from the body.
_BODY_OPENING_MM: Final = 4.0
#: Smallest separate body part kept (a forearm in a short scan is larger).
_BODY_PART_MIN_ML: Final = 20.0
#: Smallest lung component: the lung bases in a scan's first slices; bowel
#: gas pockets of lung-like density are smaller.
_LUNG_MIN_ML: Final = 10.0
#: A lung component with at least this share on both sides of the midline
#: holds both lungs (joined at the anterior junction or the carina).
_BOTH_SIDES_FRACTION: Final = 0.1
#: How deep the erosion that separates joined lungs may go.
_LUNG_SPLIT_MAX_MM: Final = 20.0
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
#: Bones (marrow filled) thinner than twice this nowhere are plaques or
#: calcified cartilage.
_BONE_MIN_HALF_THICKNESS_MM: Final = 2.0
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
#: 2x _BONE_MIN_HALF_THICKNESS_MM: no marrow inside) lines this share of
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
#: Skin with its partial volume: at least two blocks of the coarse grid.
_SKIN_MM: Final = 5.0
#: Gaps in the muscle wall (linea alba, between muscles) up to twice this
#: are closed, so that subcutaneous fat does not leak into the abdomen.
_WALL_GAP_MM: Final = 6.0
#: Thickness of the muscle wall under the fascia. The rectus abdominis is
#: about 10 mm thick, the three flank muscles together 15-20 mm; the thin
#: end, because organs against the wall (liver, spleen, colon) are counted
#: as muscle within it, a larger error than a thick flank's deepest layer.
_WALL_DEPTH_MM: Final = 15.0
#: The back muscles (erector spinae, multifidus) lie behind the spinal
#: canal, out to the angles of the ribs, about this far from it.
_BACK_HALF_WIDTH_MM: Final = 70.0
#: The spinal canal: its cross-section once gaps in its bony ring up to
#: twice _CANAL_BRIDGE_MM are bridged (adults: 1.5 to 3 cm2 before), how
#: far its centre may lie from the body's midline, and its radius (the
#: thoracic canal is 15-17 mm across).
_CANAL_CM2: Final = (0.5, 5.0)
_CANAL_BRIDGE_MM: Final = 4.0
_CANAL_MIDLINE_MM: Final = 15.0
_CANAL_RADIUS_MM: Final = 8.0
#: The trunk's cross-section is at least this multiple of any other part's
#: in the slice; where it is not (thighs), there is no visceral space.
_TRUNK_DOMINANCE: Final = 2.0

_FULL: Final = np.ones((3, 3, 3), dtype=bool)
_IN_SLICE: Final = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = ndi.generate_binary_structure(2, 1)
_ALONG_SLICES: Final = np.zeros((3, 3, 3), dtype=bool)
_ALONG_SLICES[:, 1, 1] = True
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
        uint8 labels, values as in BUILTIN_STRUCTURES (1 = body remainder).
    """
    labels = np.zeros(hu.shape, dtype=np.uint8)
    body = body_mask(hu, spacing, _Coarse.of(hu.shape, spacing))
    if not body.any():
        return labels
    # Everything else lies in the body's bounding box (on a typical 500 mm
    # field of view, half the voxels or less).
    box = _box_of(body, margin=1)
    labels[box] = _inside_body(np.ascontiguousarray(hu[box]), body[box], spacing)
    return labels


def _inside_body(hu: np.ndarray, body: np.ndarray, spacing: Spacing) -> np.ndarray:
    """The labels of everything inside `body` (see :func:`segment_canonical`)."""
    coarse = _Coarse.of(hu.shape, spacing)
    midline = _midline(body)
    air = internal_air(hu, body)
    airway = airway_mask(hu, air, body, spacing, midline)
    lung_left, lung_right = lung_masks(hu, air, airway, spacing, midline, coarse)
    skeleton = skeleton_mask(hu, body, spacing, coarse)
    lungs = lung_left | lung_right
    taken = lungs | airway.mask | skeleton
    subcutaneous, visceral, muscle = body_composition(hu, body, skeleton, taken, lungs, spacing, coarse)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[body] = _VALUES["body"]
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


# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Coarse:
    """A grid of whole blocks of voxels, about _COARSE_MM on a side."""

    factors: tuple[int, int, int]
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, shape: tuple[int, ...], spacing: Spacing) -> _Coarse:
        factors = tuple(max(1, int(round(_COARSE_MM / s))) for s in spacing)
        return cls(factors=factors, shape=tuple(shape))  # type: ignore[arg-type]

    def spacing(self, spacing: Spacing) -> Spacing:
        """Voxel spacing of the coarse grid."""
        return (spacing[0] * self.factors[0], spacing[1] * self.factors[1], spacing[2] * self.factors[2])

    @property
    def coarse_shape(self) -> tuple[int, int, int]:
        """Shape of the coarse grid (a partial block at each far edge)."""
        return tuple(-(-n // f) for n, f in zip(self.shape, self.factors, strict=True))  # type: ignore[return-value]

    def _offsets(self) -> Iterator[tuple[slice, ...]]:
        """The strided views that hold one voxel of every block each."""
        for offsets in itertools.product(*(range(f) for f in self.factors)):
            yield tuple(slice(o, None, f) for o, f in zip(offsets, self.factors, strict=True))

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of each block (for a mask, the share of its voxels that are set).

        Summing the few strided views is one pass over the data; a reshape
        and a reduction over the short block axes was 5 times slower.
        """
        is_mask = values.dtype == bool
        # Masks are counted in integers, cheaper than adding floats.
        total = np.zeros(self.coarse_shape, dtype=np.uint16 if is_mask else np.float32)
        for view in self._offsets():
            part = values.view(np.uint8)[view] if is_mask else values[view]
            total[: part.shape[0], : part.shape[1], : part.shape[2]] += part
        counts = [
            np.minimum(f, n - np.arange(c) * f).astype(np.float32)
            for n, f, c in zip(self.shape, self.factors, self.coarse_shape, strict=True)
        ]
        return total / (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :])

    def up(self, coarse: np.ndarray) -> np.ndarray:
        """A coarse array on the full grid, each block's value repeated."""
        out = np.empty(self.shape, dtype=coarse.dtype)
        for view in self._offsets():
            part = out[view]
            part[...] = coarse[: part.shape[0], : part.shape[1], : part.shape[2]]
        return out


def _disk(spacing: Spacing, radius_mm: float) -> np.ndarray:
    """An in-slice disk of `radius_mm`, as a (1, rows, columns) structure."""
    ry = int(radius_mm // spacing[1])
    rx = int(radius_mm // spacing[2])
    y, x = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    inside = (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2 <= radius_mm**2
    return inside[None]


def _octagon(spacing: Spacing, radius_mm: float) -> tuple[tuple[np.ndarray, int], ...]:
    """In-slice steps whose succession is an octagon of about `radius_mm`.

    Alternating 4- and 8-neighbour steps approximate a disk; a few passes
    with 3x3 elements cost much less than one with a large disk (or a
    distance transform, 3 times slower here).
    """
    steps = int(radius_mm // min(spacing[1:]))
    square = np.zeros((3, 3, 3), dtype=bool)
    square[1] = True
    return ((_IN_SLICE, (steps + 1) // 2), (square, steps // 2))


def _eroded_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """`mask` eroded within each slice by about `radius_mm` (outside the array is background)."""
    for structure, count in _octagon(spacing, radius_mm):
        if count:
            mask = ndi.binary_erosion(mask, structure, iterations=count)
    return mask


def _dilated_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """`mask` dilated within each slice by about `radius_mm`."""
    for structure, count in _octagon(spacing, radius_mm):
        if count:
            mask = ndi.binary_dilation(mask, structure, iterations=count)
    return mask


def _opened_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """Opening: what remains of `mask` where a disk of about `radius_mm` fits."""
    return _dilated_in_slice(_eroded_in_slice(mask, spacing, radius_mm), spacing, radius_mm)


def _opened_along_slices(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """Opening along the slice axis: what remains of `mask` where it runs 2x `radius_mm` across slices.

    Beyond the first and last slices `mask` is taken to go on, so that a
    vessel is not cut short where the scan ends.
    """
    steps = int(radius_mm // spacing[0])
    if not steps:
        return mask
    eroded = ndi.binary_erosion(mask, _ALONG_SLICES, iterations=steps, border_value=1)
    return ndi.binary_dilation(eroded, _ALONG_SLICES, iterations=steps)


def _closed_in_slice(mask: np.ndarray, spacing: Spacing, radius_mm: float) -> np.ndarray:
    """Closing, with padding so that nothing is lost at the array's border."""
    pad = int(radius_mm // min(spacing[1:])) + 1
    padded = np.pad(mask, ((0, 0), (pad, pad), (pad, pad)))
    closed = _eroded_in_slice(_dilated_in_slice(padded, spacing, radius_mm), spacing, radius_mm)
    return closed[:, pad:-pad, pad:-pad] | mask


def _component_sizes(labels: np.ndarray, count: int, where: np.ndarray) -> np.ndarray:
    """Voxels of each label (index = label) among those in `where`.

    Counting only the gathered foreground is several times faster than
    counting the whole label array, most of which is background.
    """
    return np.bincount(labels[where], minlength=count + 1)


def _regions_in_slice(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, int]:
    """The in-slice connected regions of `mask`, labelled within its bounding box."""
    box = _box_of(mask, margin=0) if mask.any() else tuple(slice(0, 0) for _ in mask.shape)
    regions, count = ndi.label(mask[box], structure=_IN_SLICE)
    return box, regions, count


def _midline(body: np.ndarray) -> np.ndarray:
    """Column of the body's centre in each slice (the patient's midline).

    Slices without body take the nearest slice's value, so every slice has
    a midline.
    """
    per_column = body.sum(axis=1, dtype=np.int64)
    weight = per_column.sum(axis=1)
    centre = (per_column * np.arange(body.shape[2])).sum(axis=1) / np.maximum(weight, 1)
    present = np.flatnonzero(weight)
    if present.size == 0:
        return np.full(body.shape[0], body.shape[2] / 2)
    return np.interp(np.arange(body.shape[0]), present, centre[present])


# ---------------------------------------------------------------------------
# Body
# ---------------------------------------------------------------------------


def body_mask(hu: np.ndarray, spacing: Spacing, coarse: _Coarse) -> np.ndarray:
    """The body outline: soft-tissue parts, without table or outside air.

    The opening (on the coarse grid) detaches thin objects touching the
    patient; a part is kept when it is large and mostly soft tissue (table
    shells are dense, cushions are foam); the boundary is then taken back
    at full resolution from the tissue threshold, and holes (lungs, bowel
    gas) are filled slice by slice.
    """
    tissue = hu > _TISSUE_HU
    coarse_spacing = coarse.spacing(spacing)
    coarse_tissue = coarse.mean(tissue)
    opened = _opened_in_slice(coarse_tissue >= 0.5, coarse_spacing, _BODY_OPENING_MM)
    parts, count = ndi.label(opened, structure=_FULL)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    blocks = _component_sizes(parts, count, opened)
    coarse_hu = coarse.mean(hu)
    soft = (coarse_hu > _SOFT_TISSUE_HU[0]) & (coarse_hu < _SOFT_TISSUE_HU[1])
    volume_ml = blocks * float(np.prod(coarse_spacing)) / 1000.0
    keep = (volume_ml >= _BODY_PART_MIN_ML) & (_component_sizes(parts, count, soft) * 2 >= blocks)
    keep[0] = False
    # Give back what the opening took, growing only through blocks with
    # tissue: an air gap (the table's pad) stops it, so no pocket of air
    # between skin and table is enclosed.
    steps = int(np.ceil(_BODY_OPENING_MM / min(coarse_spacing[1:]))) + 1
    regrown = ndi.binary_dilation(keep[parts], _IN_SLICE, iterations=steps, mask=coarse_tissue > 0)
    return fill_holes(coarse.up(regrown) & tissue, HoleFilling.SLICE)


def internal_air(hu: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Air inside the body that does not reach its surface: lungs, airway, bowel gas.

    Air touching the surface is outside air caught in a fold, between the
    skin and a sheet or cushion, or at a body opening; lungs, trachea and
    bowel never touch the skin.
    """
    air = body & (hu < _AIR_HU)
    components, count = ndi.label(air)
    surface = body & ~ndi.binary_erosion(body, _IN_SLICE)
    outside = np.zeros(count + 1, dtype=bool)
    outside[components[surface & air]] = True
    outside[0] = True
    return ~outside[components]


# ---------------------------------------------------------------------------
# Airway
# ---------------------------------------------------------------------------


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
    parenchyma = air & (hu > _GAS_HU) & (hu <= _LUNG_DENSITY_HU)
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
    depth = _disk(spacing, _TRACHEA_DEPTH_MM)[0]
    for z in range(air.shape[0] - 1, -1, -1):
        sections, count = ndi.label(air[z])
        if count == 0:
            continue
        areas = _component_sizes(sections, count, sections > 0) * area_mm2
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
        parts, count = ndi.label(air[z])
        areas = _component_sizes(parts, count, parts > 0)
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


# ---------------------------------------------------------------------------
# Lungs
# ---------------------------------------------------------------------------


def lung_masks(
    hu: np.ndarray,
    air: np.ndarray,
    airway: Airway,
    spacing: Spacing,
    midline: np.ndarray,
    coarse: _Coarse,
) -> tuple[np.ndarray, np.ndarray]:
    """Left and right lung, vessels inside them included.

    A 3-D air component (the airway taken out) is lung if it is large and
    has lung density: half its voxels at or below _LUNG_DENSITY_HU but few
    of pure gas. Bowel and stomach gas is mostly pure gas; small pockets of
    partial volume are below the size limit. A large component that a main
    bronchus opens into is lung whatever its share of gas (emphysema).
    """
    candidates = air & ~airway.mask
    components, count = ndi.label(candidates)
    if count == 0:
        empty = np.zeros(hu.shape, dtype=bool)
        return empty, empty.copy()
    voxels = _component_sizes(components, count, candidates)
    dense = _component_sizes(components, count, candidates & (hu <= _LUNG_DENSITY_HU)) / np.maximum(voxels, 1)
    gas = _component_sizes(components, count, candidates & (hu < _GAS_HU)) / np.maximum(voxels, 1)
    volume_ml = voxels * float(np.prod(spacing)) / 1000.0
    ventilated = np.zeros(count + 1, dtype=bool)
    if airway.carina is not None:
        box = _box_of(airway.bronchi, margin=1)
        ventilated[components[box][ndi.binary_dilation(airway.bronchi[box])]] = True
    lung = (volume_ml >= _LUNG_MIN_ML) & (dense >= 0.5) & ((gas <= _GAS_MAX_FRACTION) | ventilated)
    lung[0] = False
    left, right = _split_sides(components, np.flatnonzero(lung), midline, coarse, spacing)
    return fill_holes(left, HoleFilling.SLICE), fill_holes(right, HoleFilling.SLICE)


def _box_of(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask, grown by `margin` voxels."""
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    return tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, mask.shape, strict=True)
    )


def _split_sides(
    components: np.ndarray, lungs: np.ndarray, midline: np.ndarray, coarse: _Coarse, spacing: Spacing
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each lung component (label values `lungs` of `components`) to
    the patient's left or right.

    A component almost entirely on one side of the midline goes to that
    side; one with a real share on both holds both lungs and is separated
    where it is thinnest (see :func:`_separate`).
    """
    left = np.zeros(components.shape, dtype=bool)
    right = np.zeros(components.shape, dtype=bool)
    boxes = ndi.find_objects(components)
    for index in lungs:
        box = boxes[index - 1]
        mask = components[box] == index
        on_left = _left_of_midline(mask, box, midline)
        share = np.count_nonzero(mask & on_left) / np.count_nonzero(mask)
        if share >= 1 - _BOTH_SIDES_FRACTION:
            left[box] |= mask
        elif share <= _BOTH_SIDES_FRACTION:
            right[box] |= mask
        else:
            mask_left = _separate(mask, on_left, coarse, spacing)
            left[box] |= mask_left
            right[box] |= mask & ~mask_left
    return left, right


def _left_of_midline(mask: np.ndarray, box: tuple[slice, ...], midline: np.ndarray) -> np.ndarray:
    """Voxels of a box on the patient's left (canonical columns grow to the left)."""
    columns = np.arange(box[2].start, box[2].stop)[None, None, :]
    return np.broadcast_to(columns > midline[box[0]][:, None, None], mask.shape)


def _separate(mask: np.ndarray, on_left: np.ndarray, coarse: _Coarse, spacing: Spacing) -> np.ndarray:
    """The left part of a component that holds both lungs.

    On the coarse grid the component is eroded step by step until it falls
    apart into pieces on either side (the junction is its thinnest part);
    every voxel then goes to the side of the nearest piece. If it has not
    separated within _LUNG_SPLIT_MAX_MM, the midline decides.
    """
    grid = _Coarse(coarse.factors, mask.shape)
    small = grid.mean(mask) >= 0.5
    small_left = grid.mean(on_left) >= 0.5
    step_mm = min(grid.spacing(spacing))
    seeds = small
    for _ in range(int(_LUNG_SPLIT_MAX_MM // step_mm)):
        seeds = ndi.binary_erosion(seeds)
        pieces, count = ndi.label(seeds, structure=_FULL)
        if count == 0:
            break
        sizes = _component_sizes(pieces, count, seeds)
        is_left = _component_sizes(pieces, count, seeds & small_left) * 2 > sizes
        left_share = sizes[is_left].sum() / sizes[1:].sum()
        if count >= 2 and _BOTH_SIDES_FRACTION <= left_share <= 1 - _BOTH_SIDES_FRACTION:
            nearest = ndi.distance_transform_edt(
                ~seeds, sampling=grid.spacing(spacing), return_distances=False, return_indices=True
            )
            side = is_left[pieces[tuple(nearest)]]
            return grid.up(side) & mask
    return mask & on_left


# ---------------------------------------------------------------------------
# Skeleton
# ---------------------------------------------------------------------------


def skeleton_mask(hu: np.ndarray, body: np.ndarray, spacing: Spacing, coarse: _Coarse) -> np.ndarray:
    """All bone, marrow included.

    Dense voxels form bone where their part is thick enough and holds
    cortical density (see :func:`_thick_parts`); then what the cortex
    encloses in each slice (gaps bridged) is added where it is bone-like
    (see :func:`_bone_interior`).
    Contrast in vessels, kidneys and bowel is not bone: a pool of it is
    brighter than its surroundings, while bone's cortex is at least as
    bright as its inside (see :func:`_contrast_pools`); a calcified vessel
    wall is too thin to pass the thickness test, and where it touches bone
    and passes with it, it lines a lumen (see :func:`_vessel_walls`).
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
    canal = _spinal_canal(coarse.mean(bone) >= 0.5, _midline(coarse.mean(body) >= 0.5), coarse_spacing)
    if canal is not None:  # no spine, no aorta on it
        bone &= ~_vessel_walls(bone, hu, spacing, _canal_mm(canal, coarse, spacing))
    return bone & ~(_outline(bone) & (hu < edge_hu))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with a 4-neighbour outside it in their slice.

    Bone's outline is its cortex, so a voxel there below the bone edge was
    added by the filling of the inside where the cortex has a gap (a
    foramen, the spinal canal's side of a vertebral body): it lies outside
    the bone's surface.
    """
    return mask & ~ndi.binary_erosion(mask, _IN_SLICE, border_value=1)


def _canal_mm(canal: _Canal, coarse: _Coarse, spacing: Spacing) -> np.ndarray:
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


def _contrast_pools(hu: np.ndarray, dense: np.ndarray, spacing: Spacing, coarse: _Coarse) -> np.ndarray:
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
    cores = _opened_in_slice(solid, coarse_spacing, _POOL_MIN_RADIUS_MM)
    cores &= _opened_along_slices(solid, coarse_spacing, _POOL_MIN_RADIUS_MM)
    if not cores.any():
        return np.zeros(hu.shape, dtype=bool)
    ring = _ball(coarse_spacing, _POOL_RING_MM)
    box = _box_of(cores, margin=max(ring.shape) // 2 + 1)
    pools, count = ndi.label(cores[box])
    index = np.arange(1, count + 1)
    coarse_hu = coarse.mean(hu)[box]
    surroundings = ndi.grey_dilation(pools, footprint=ring) * ~cores[box]
    inside_hu = ndi.mean(coarse_hu, pools, index)
    around_hu = ndi.mean(coarse_hu, surroundings, index)
    around_dense = ndi.mean(coarse.mean(dense)[box], surroundings, index)
    darker = np.zeros(count + 1, dtype=bool)
    darker[1:] = (around_hu < inside_hu - _POOL_CONTRAST_HU) & (around_dense < _POOL_DENSE_AROUND)
    # One block more takes the pool's partial-volume rim.
    pool = np.zeros(cores.shape, dtype=bool)
    pool[box] = ndi.binary_dilation(darker[pools], _IN_SLICE)
    return coarse.up(pool) & dense


def _ball(spacing: Spacing, radius_mm: float) -> np.ndarray:
    """A 3-D ball of `radius_mm` (an ellipsoid of voxels on an anisotropic grid)."""
    radii = [int(radius_mm // s) for s in spacing]
    z, y, x = np.mgrid[tuple(slice(-r, r + 1) for r in radii)]
    return (z * spacing[0]) ** 2 + (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2 <= radius_mm**2


def _small_holes(mask: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Holes of `mask` smaller than _MARROW_SMALL_CM2 in their slice."""
    box, regions, count = _regions_in_slice(fill_holes(mask, HoleFilling.SLICE) & ~mask)
    area_cm2 = _component_sizes(regions, count, regions > 0) * spacing[1] * spacing[2] / 100.0
    small = area_cm2 < _MARROW_SMALL_CM2
    small[0] = False
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = small[regions]
    return out


def _thick_parts(dense: np.ndarray, hu: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Connected parts of `dense` at least 2x _BONE_MIN_HALF_THICKNESS_MM thick
    somewhere and holding voxels of cortical density.

    `dense` has its small holes filled, so a rib is as thick as its whole
    section even where its cortex is 1-2 mm thin around the marrow; the
    thick place and the cortical voxels need not coincide, since such a
    cortex reaches _CORTICAL_HU only at its crest (whole ribs were lost when
    the cortex had to be that dense 2 mm deep).
    """
    parts, count = ndi.label(dense, structure=_FULL)
    thick = _eroded_in_slice(dense, spacing, _BONE_MIN_HALF_THICKNESS_MM)
    keep = np.zeros(count + 1, dtype=bool)
    keep[parts[thick]] = True
    cortical = np.zeros(count + 1, dtype=bool)
    cortical[parts[dense & (hu >= _CORTICAL_HU)]] = True
    keep &= cortical
    keep[0] = False
    return keep[parts]


def _bone_interior(core: np.ndarray, hu: np.ndarray, spacing: Spacing, coarse: _Coarse) -> np.ndarray:
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
    bridges = _closed_in_slice(coarse_core, coarse.spacing(spacing), _BONE_CLOSING_MM) & ~coarse_core
    bridged = core | coarse.up(bridges)
    box, regions, count = _regions_in_slice(fill_holes(bridged, HoleFilling.SLICE) & ~core)
    if count == 0:
        return np.zeros(core.shape, dtype=bool)
    enclosed = regions > 0
    voxels = _component_sizes(regions, count, enclosed)
    area_cm2 = voxels * spacing[1] * spacing[2] / 100.0
    hu_sum = np.bincount(regions[enclosed], weights=hu[box][enclosed], minlength=count + 1)
    mean_hu = hu_sum / np.maximum(voxels, 1)
    whole = (area_cm2 < _MARROW_SMALL_CM2) | (mean_hu < _FAT_HU[1])
    fits = area_cm2 <= _BONE_MAX_HOLE_CM2
    whole[0] = fits[0] = False
    inside, marrow = fits[regions], (fits & whole)[regions]
    denser = hu[box] > _MARROW_HU
    scan_ends = (box[0].start == 0, box[0].stop == core.shape[0])
    discs = _disc_layers(inside & ~marrow & denser, core[box], spacing, scan_ends)
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
    parts, _ = ndi.label(trabecular)
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
            narrowest_mm = min((rows.stop - rows.start) * spacing[1], (columns.stop - columns.start) * spacing[2])
            if narrowest_mm < _DISC_FLATNESS * height_mm:
                continue  # cannot be that flat: skip the costlier measure
            if _widest_disk_mm(layer, spacing) >= _DISC_FLATNESS * height_mm:
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
    widest = 0.0
    for section in part:
        filled = np.pad(ndi.binary_fill_holes(section), 1)
        widest = max(widest, float(ndi.distance_transform_edt(filled, sampling=spacing[1:]).max()))
    return 2.0 * widest


# ---------------------------------------------------------------------------
# Calcified vessel walls
# ---------------------------------------------------------------------------

#: Directions of the rays cast from a lumen's centre.
_RAY_ANGLES: Final = np.linspace(0.0, 2.0 * np.pi, _LUMEN_RAYS, endpoint=False)


@dataclass(frozen=True)
class _Lumen:
    """A vessel's lumen in one slice: a circle, in mm from the slice's first voxel."""

    slice: int
    row_mm: float
    column_mm: float
    radius_mm: float


def _vessel_walls(bone: np.ndarray, hu: np.ndarray, spacing: Spacing, canal_mm: np.ndarray) -> np.ndarray:
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
    the thin shells are what an opening by _BONE_MIN_HALF_THICKNESS_MM
    removes from the bone; a shell curving around a lumen has its centre
    of curvature inside it, where the search for the lumen starts. A shell
    lining a quarter of the smallest lumen is longer than that lumen's
    radius; one flatter than the largest lumen lines none.
    """
    step = max(1, int(_LUMEN_RADIUS_MM[0] // spacing[0]))
    sections = np.ascontiguousarray(bone[::step])
    thick = _opened_in_slice(sections, spacing, _BONE_MIN_HALF_THICKNESS_MM)
    shells, _ = ndi.label(sections & ~thick, structure=_IN_SLICE)
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
    edge = section | (hu < _FAT_HU[1])
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
    if not _CANAL_RADIUS_MM < np.hypot(row_mm - canal_mm[0], column_mm - canal_mm[1]) <= _VESSEL_SPINE_MM:
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
    half_mm = reach_mm + 2 * _BONE_MIN_HALF_THICKNESS_MM + max(spacing[1:])
    box = tuple(
        slice(max(int((centre - half_mm) // step), 0), int((centre + half_mm) // step) + 1)
        for centre, step in ((lumen.row_mm, spacing[1]), (lumen.column_mm, spacing[2]))
    )
    local = section[box]
    thick = _opened_in_slice(local[None], spacing, _BONE_MIN_HALF_THICKNESS_MM)[0]
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
        lumen_like = ~local & (hu[box] >= _FAT_HU[1])
        regions, _ = ndi.label(lumen_like & (radial <= lumen.radius_mm + _LUMEN_ROUND_MM))
        # Never 0: _lumen_at found the centre's voxel neither bone nor fat.
        centre = regions[
            round(lumen.row_mm / spacing[1]) - box[0].start,
            round(lumen.column_mm / spacing[2]) - box[1].start,
        ]
        # The CT's blur spreads a calcification about a pixel into the lumen.
        depth_mm = ndi.distance_transform_edt(regions != centre, sampling=spacing[1:])
        wall |= local & (depth_mm <= _INTIMA_MEDIA_MM + max(spacing[1:]))
    pieces, count = ndi.label(local & ~wall)
    beyond = np.zeros(count + 1, dtype=bool)
    beyond[pieces[local & ~near]] = True
    return box, wall | ((pieces > 0) & ~beyond[pieces])


def _edge_rays(
    section: np.ndarray, hu: np.ndarray, spacing: Spacing, lumen: _Lumen
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Along each ray from the lumen's centre: the distance to its edge (bone or fat), whether
    that edge is bone on the lumen's circle (a calcified wall), and its row and column."""
    distances, rows, columns = _rays(section | (hu < _FAT_HU[1]), spacing, lumen.row_mm, lumen.column_mm)
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


# ---------------------------------------------------------------------------
# Body composition
# ---------------------------------------------------------------------------


def body_composition(
    hu: np.ndarray,
    body: np.ndarray,
    skeleton: np.ndarray,
    taken: np.ndarray,
    lungs: np.ndarray,
    spacing: Spacing,
    coarse: _Coarse,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subcutaneous fat, visceral fat and skeletal muscle.

    The compartments are drawn on the coarse grid: the subcutaneous one is
    reached from the skin without crossing the muscle wall (non-fat tissue
    other than skin, its gaps closed); under it, the trunk's visceral space
    (see :func:`_visceral_space`) holds the organs, bowel, vessels and the
    mediastinum, and the rest is the muscle compartment: the wall, the back
    muscles, the limbs. Visceral fat is the fat of the visceral space below
    the lungs' top and outside the space between them (see :func:`_cavity`).
    The HU windows then apply at full resolution. Fat in the muscle
    compartment (intermuscular) is neither subcutaneous nor visceral; the
    spinal canal is in neither.

    Returns
    -------
    tuple of numpy.ndarray
        Subcutaneous fat, visceral fat, skeletal muscle; none overlaps `taken`.
    """
    coarse_spacing = coarse.spacing(spacing)
    coarse_body = coarse.mean(body) >= 0.5
    skin = coarse_body & ~_eroded_in_slice(coarse_body, coarse_spacing, _SKIN_MM)
    firm = (coarse.mean(body & (hu > _FAT_HU[1])) >= 0.5) & ~skin
    barrier = _closed_in_slice(firm, coarse_spacing, _WALL_GAP_MM)
    subcutaneous = _reached_from(skin & ~barrier, coarse_body & ~barrier)
    inside = coarse_body & ~subcutaneous
    canal = _spinal_canal(coarse.mean(skeleton) >= 0.5, _midline(coarse_body), coarse_spacing)
    visceral = _visceral_space(inside & _trunk(coarse_body), canal, coarse_spacing)
    cavity = visceral & _cavity(coarse.mean(lungs) > 0)
    muscle_space = inside & ~visceral
    if canal is not None:
        radius = _CANAL_RADIUS_MM
        muscle_space &= ~canal.region(inside.shape, coarse_spacing, -radius, radius, radius)
    free = body & ~taken
    fat = free & (hu >= _FAT_HU[0]) & (hu <= _FAT_HU[1])
    lean = free & (hu >= _MUSCLE_HU[0]) & (hu <= _MUSCLE_HU[1])
    return fat & coarse.up(subcutaneous), fat & coarse.up(cavity), lean & coarse.up(muscle_space)


def _reached_from(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The regions of `allowed` (connected within a slice) that contain a seed."""
    regions, count = ndi.label(allowed, structure=_IN_SLICE)
    reached = np.zeros(count + 1, dtype=bool)
    reached[regions[seeds & allowed]] = True
    reached[0] = False
    return reached[regions]


def _visceral_space(trunk: np.ndarray, canal: _Canal | None, spacing: Spacing) -> np.ndarray:
    """The trunk's visceral space: deeper than the muscle wall, outside the back muscles.

    `trunk` is the trunk under its subcutaneous fat. The wall (abdominal
    muscles; the chest wall with the ribs) is the _WALL_DEPTH_MM under it;
    the back muscles fill the space behind the spinal canal's centre,
    within _BACK_HALF_WIDTH_MM of it, however deep they reach. What
    remains, thoracic, abdominal and pelvic viscera, mediastinum and
    retroperitoneum, holds no skeletal muscle but the psoas and the
    diaphragm's crura.
    """
    deep = _eroded_in_slice(trunk, spacing, _WALL_DEPTH_MM)
    if canal is None:
        return deep
    return deep & ~canal.region(trunk.shape, spacing, 0.0, np.inf, _BACK_HALF_WIDTH_MM)


@dataclass(frozen=True, eq=False)
class _Canal:
    """The spinal canal's centre in every slice: a row and a column (may be fractional)."""

    rows: np.ndarray
    columns: np.ndarray

    def region(
        self, shape: tuple[int, ...], spacing: Spacing, from_mm: float, to_mm: float, half_width_mm: float
    ) -> np.ndarray:
        """The voxels from `from_mm` to `to_mm` behind the centre (negative: in
        front of it) and at most `half_width_mm` to either side of it."""
        behind_mm = (np.arange(shape[1])[None, :] - self.rows[:, None]) * spacing[1]
        aside_mm = np.abs(np.arange(shape[2])[None, :] - self.columns[:, None]) * spacing[2]
        along = (behind_mm >= from_mm) & (behind_mm <= to_mm)
        return along[:, :, None] & (aside_mm <= half_width_mm)[:, None, :]


def _spinal_canal(bone: np.ndarray, midline: np.ndarray, spacing: Spacing) -> _Canal | None:
    """The spinal canal's centre, or None where no vertebra encloses it.

    In a slice, the canal is the most posterior region near the midline that
    the bone encloses once gaps of up to 2x _CANAL_BRIDGE_MM are bridged (a
    calcified aorta lies in front of the spine). Where the arch is open, at
    a disc or between the laminae, or thin cortex is lost to partial volume,
    the centre is interpolated from the slices that show it. Only columns
    within 2x _CANAL_MIDLINE_MM of the midline are searched: the bony ring
    around such a canal lies there.
    """
    reach = int(np.ceil(2 * _CANAL_MIDLINE_MM / spacing[2]))
    first = max(int(midline.min()) - reach, 0)
    band = bone[:, :, first : int(midline.max()) + reach + 1]
    bridged = _closed_in_slice(band, spacing, _CANAL_BRIDGE_MM)
    holes, count = ndi.label(fill_holes(bridged, HoleFilling.SLICE) & ~bridged, structure=_IN_SLICE)
    if count == 0:
        return None
    z, rows, columns = np.array(ndi.center_of_mass(holes > 0, holes, np.arange(1, count + 1))).T
    columns += first
    area_cm2 = _component_sizes(holes, count, holes > 0)[1:] * spacing[1] * spacing[2] / 100.0
    z = np.rint(z).astype(int)
    fits = (
        (area_cm2 >= _CANAL_CM2[0])
        & (area_cm2 <= _CANAL_CM2[1])
        & (np.abs(columns - midline[z]) * spacing[2] <= _CANAL_MIDLINE_MM)
    )
    found = np.unique(z[fits])
    if found.size == 0:
        return None
    chosen = []
    for k in found:
        in_slice = np.flatnonzero(fits & (z == k))
        chosen.append(in_slice[np.argmax(rows[in_slice])])
    slices = np.arange(bone.shape[0])
    return _Canal(
        rows=np.interp(slices, found, rows[chosen]), columns=np.interp(slices, found, columns[chosen])
    )


def _cavity(lungs: np.ndarray) -> np.ndarray:
    """Where the visceral space is abdominopelvic: below the lungs' top, not between the lungs.

    The thoracic cavity is approximated by the rows and columns spanned by
    lung, which covers the mediastinum.
    """
    allowed = np.ones(lungs.shape, dtype=bool)
    lung_slices = np.flatnonzero(lungs.any(axis=(1, 2)))
    if lung_slices.size:
        allowed[lung_slices.max() + 1 :] = False
        allowed &= ~(_spanned(lungs, axis=1) | _spanned(lungs, axis=2))
    return allowed


def _trunk(body: np.ndarray) -> np.ndarray:
    """In each slice, the body part that dominates all others (none where two are alike)."""
    parts, count = ndi.label(body, structure=_IN_SLICE)
    sizes = _component_sizes(parts, count, body)
    by_slice: dict[int, list[int]] = {}
    for index, box in enumerate(ndi.find_objects(parts), start=1):
        by_slice.setdefault(box[0].start, []).append(index)
    trunk = np.zeros(count + 1, dtype=bool)
    for indices in by_slice.values():
        indices.sort(key=lambda i: -sizes[i])
        if len(indices) == 1 or sizes[indices[0]] >= _TRUNK_DOMINANCE * sizes[indices[1]]:
            trunk[indices[0]] = True
    return trunk[parts]


def _spanned(mask: np.ndarray, axis: int) -> np.ndarray:
    """Voxels with `mask` somewhere on both sides of them along `axis` (or in them)."""
    before = np.maximum.accumulate(mask, axis=axis)
    after = np.flip(np.maximum.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis)
    return before & after
