"""The demo phantom: a synthetic FDG PET/CT study of a torso whose truth is known.

``segnode demo`` and the end-to-end benchmark need a study that a scanner
could have sent and whose answers are known in advance: how big each
structure is, what HU it has, what SUV. Real data cannot give that, so the
anatomy here is geometry (ellipses, ellipsoids, periodic vertebrae and ribs)
described once in patient millimetres and sampled on any axial grid. The CT
and the PET of one study are two samplings of the same anatomy, in one frame
of reference, and every truth is counted on the grid that is written.

The anatomy is what the built-in segmenter looks for (body, lungs, trachea
and main bronchi, skeleton with marrow, subcutaneous and visceral fat,
muscle), lying on a foam mattress on a carbon-fibre table that a segmenter
must leave out, plus uniform solid organs (liver, spleen, kidneys), an aorta
full of contrast and a hot liver lesion for quantification and PET. The
torso is 600 mm long, in patient coordinates LPS (x to the patient's left,
y posterior, z to the head) with z = 0 at its lower end.

Each voxel is sampled at its centre, so it belongs to exactly one
:class:`Region` of uniform HU and SUV, and a structure (named as in
dicomio/codes.py) is a set of regions: its mask, volume, mean HU and mean
SUV are exact, with no partial-volume model to argue about. The price is
that structures thinner than a voxel alias (2 mm cortex on 4 mm voxels shows
as a dotted rim), so grids for segmentation should have pixels of 2 mm or
less. CT noise is white Gaussian, 15 HU; PET noise is multiplicative
Gaussian, 10 %, with no point-spread function, so a PET voxel's expected SUV
is its region's.

Cost, measured on the 2-core build machine: ``phantom.study.write_study`` of the default
512x512x300 CT and its 126x126x150 PET takes 3.6 s (2.0 s sampling the CT,
0.8 s writing it, 0.6 s for the PET) and peaks at 0.43 GB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from types import MappingProxyType
from typing import Final, Protocol

import numpy as np
from pydicom.uid import UID, CTImageStorage, PositronEmissionTomographyImageStorage
from pydicom.uid import generate_uid as _generate_uid

from dicomio.volume import SourceFrame, Volume

__all__ = [
    "CT_GRID",
    "CT_NOISE_HU",
    "CT_TIME",
    "FDG",
    "LESION",
    "PATIENT",
    "PET_NOISE_FRACTION",
    "PHANTOM_LENGTH_MM",
    "STRUCTURE_REGIONS",
    "TISSUES",
    "AxialGrid",
    "CtPhantom",
    "FdgAcquisition",
    "Lesion",
    "Patient",
    "PetPhantom",
    "Region",
    "StructureTruth",
    "Tissue",
    "ct_phantom",
    "pet_grid_for",
    "pet_phantom",
]

# ---------------------------------------------------------------------------
# Tissues
# ---------------------------------------------------------------------------


class Region(IntEnum):
    """The compartments of the phantom; each voxel is exactly one."""

    AIR = 0
    TABLE_SHELL = 1
    FOAM = 2
    SKIN = 3
    SUBCUTANEOUS_FAT = 4
    MUSCLE = 5
    SOFT_TISSUE = 6
    VISCERAL_FAT = 7
    BOWEL_GAS = 8
    LUNG_LEFT = 9
    LUNG_RIGHT = 10
    PULMONARY_VESSEL_LEFT = 11
    PULMONARY_VESSEL_RIGHT = 12
    AIRWAY = 13
    CORTICAL_BONE = 14
    TRABECULAR_BONE = 15
    FATTY_MARROW = 16
    DISC = 17
    CSF = 18
    AORTA = 19
    LIVER = 20
    SPLEEN = 21
    KIDNEY_LEFT = 22
    KIDNEY_RIGHT = 23
    LESION = 24


@dataclass(frozen=True)
class Tissue:
    """A region's CT number (before noise) and FDG uptake (SUVbw, g/ml)."""

    hu: int
    suv: float


#: HU of an arterial-phase contrast CT and SUV one hour after FDG. HU:
#: fat -100, muscle 50, lung -850, cortical bone as thin cortex shows it
#: (800), cancellous bone 180, fatty (yellow) marrow of long bones -80, blood
#: with iodine 350; liver, spleen and renal cortex enhanced unevenly in that
#: phase, the lesion hypo-attenuating. SUV: a background of 1.0 (soft
#: tissue), liver 2.0, kidneys 3.0, the lesion 8.0; blood pool 1.6, red
#: marrow 1.5, muscle 0.7, fat 0.3, lung 0.4; nothing in air or the table.
TISSUES: Final[Mapping[Region, Tissue]] = MappingProxyType({
    Region.AIR: Tissue(-1000, 0.0),
    Region.TABLE_SHELL: Tissue(400, 0.0),
    Region.FOAM: Tissue(-900, 0.0),
    Region.SKIN: Tissue(30, 0.8),
    Region.SUBCUTANEOUS_FAT: Tissue(-100, 0.3),
    Region.MUSCLE: Tissue(50, 0.7),
    Region.SOFT_TISSUE: Tissue(40, 1.0),
    Region.VISCERAL_FAT: Tissue(-100, 0.3),
    Region.BOWEL_GAS: Tissue(-1000, 0.0),
    Region.LUNG_LEFT: Tissue(-850, 0.4),
    Region.LUNG_RIGHT: Tissue(-850, 0.4),
    Region.PULMONARY_VESSEL_LEFT: Tissue(40, 1.6),
    Region.PULMONARY_VESSEL_RIGHT: Tissue(40, 1.6),
    Region.AIRWAY: Tissue(-1000, 0.0),
    Region.CORTICAL_BONE: Tissue(800, 0.5),
    Region.TRABECULAR_BONE: Tissue(180, 1.5),
    Region.FATTY_MARROW: Tissue(-80, 0.4),
    Region.DISC: Tissue(90, 0.8),
    Region.CSF: Tissue(15, 0.6),
    Region.AORTA: Tissue(350, 1.6),
    Region.LIVER: Tissue(65, 2.0),
    Region.SPLEEN: Tissue(110, 1.8),
    Region.KIDNEY_LEFT: Tissue(160, 3.0),
    Region.KIDNEY_RIGHT: Tissue(160, 3.0),
    Region.LESION: Tissue(35, 8.0),
})

_OUTSIDE_BODY: Final = frozenset({Region.AIR, Region.TABLE_SHELL, Region.FOAM})

#: What the built-in segmenter labels besides its remainder.
_BUILTIN_REGIONS: Final[Mapping[str, frozenset[Region]]] = MappingProxyType({
    "lung_left": frozenset({Region.LUNG_LEFT, Region.PULMONARY_VESSEL_LEFT}),
    "lung_right": frozenset({Region.LUNG_RIGHT, Region.PULMONARY_VESSEL_RIGHT}),
    "airway": frozenset({Region.AIRWAY}),
    "skeleton": frozenset({Region.CORTICAL_BONE, Region.TRABECULAR_BONE, Region.FATTY_MARROW}),
    "subcutaneous_fat": frozenset({Region.SUBCUTANEOUS_FAT}),
    "visceral_fat": frozenset({Region.VISCERAL_FAT}),
    "skeletal_muscle": frozenset({Region.MUSCLE}),
})

#: The regions of each structure, by its name in dicomio/codes.py. The body
#: is everything but air and the table; its other soft tissue what the
#: built-in structures leave of it. The liver is its parenchyma: the lesion
#: is reported on its own (:data:`LESION`).
STRUCTURE_REGIONS: Final[Mapping[str, frozenset[Region]]] = MappingProxyType({
    "body": frozenset(Region) - _OUTSIDE_BODY,
    "other_soft_tissue": frozenset(Region) - _OUTSIDE_BODY - frozenset().union(*_BUILTIN_REGIONS.values()),
    **_BUILTIN_REGIONS,
    "liver": frozenset({Region.LIVER}),
    "spleen": frozenset({Region.SPLEEN}),
    "kidney_left": frozenset({Region.KIDNEY_LEFT}),
    "kidney_right": frozenset({Region.KIDNEY_RIGHT}),
    "aorta": frozenset({Region.AORTA}),
})

_HU_TABLE: Final = np.array([TISSUES[region].hu for region in Region], dtype=np.float32)
_SUV_TABLE: Final = np.array([TISSUES[region].suv for region in Region])

#: CT noise (standard deviation, HU) and the stored range of a 12-bit CT
#: with intercept -1024, where scanners clip.
CT_NOISE_HU: Final = 15.0
_CT_HU_RANGE: Final = (-1024, 3071)
#: PET noise: standard deviation as a share of the expected value.
PET_NOISE_FRACTION: Final = 0.10

# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------

#: The anatomy spans z = 0..600 mm; grids are centred on its middle.
PHANTOM_LENGTH_MM: Final = 600.0
#: Half the width and height of the field of view that holds the arms (x)
#: and the table (y), in mm.
_HALF_WIDTH_MM: Final = 243.0
_HALF_HEIGHT_MM: Final = 161.0


@dataclass(frozen=True)
class AxialGrid:
    """An axial stack of voxels centred on the phantom.

    Attributes
    ----------
    shape : tuple of int
        (slices, rows, columns).
    spacing : tuple of float
        (slice step, row spacing, column spacing) in mm. Rows run to the
        patient's back, columns to the patient's left, slices to the head,
        as in an axial DICOM series of a supine patient.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or len(self.spacing) != 3:
            raise ValueError(f"a grid needs 3 sizes and 3 spacings, got {self.shape} and {self.spacing}")
        if any(int(n) != n for n in self.shape):
            raise ValueError(f"grid shape {self.shape}: sizes must be whole numbers")
        # One grid, one text: UIDs are derived from it.
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(d) for d in self.spacing))
        if self.shape[0] < 2 or min(self.shape[1:]) < 1:
            raise ValueError(f"grid shape {self.shape}: at least 2 slices and 1 row and column")
        if not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"grid spacing {self.spacing}: every spacing must be positive")
        length = (self.shape[0] - 1) * self.spacing[0]
        if length > PHANTOM_LENGTH_MM:
            raise ValueError(
                f"grid of {self.shape[0]} slices every {self.spacing[0]:g} mm spans {length:g} mm, "
                f"longer than the {PHANTOM_LENGTH_MM:g} mm phantom"
            )
        half_width = (self.shape[2] - 1) * self.spacing[2] / 2
        half_height = (self.shape[1] - 1) * self.spacing[1] / 2
        if half_width < _HALF_WIDTH_MM or half_height < _HALF_HEIGHT_MM:
            raise ValueError(
                f"field of view {2 * half_width:g} x {2 * half_height:g} mm (columns x rows) cuts the "
                f"phantom: it needs {2 * _HALF_WIDTH_MM:g} x {2 * _HALF_HEIGHT_MM:g} mm"
            )

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel centres in mm along z (slices), y (rows) and x (columns)."""
        (nz, ny, nx), (dz, dy, dx) = self.shape, self.spacing
        z = PHANTOM_LENGTH_MM / 2 + (np.arange(nz) - (nz - 1) / 2) * dz
        y = (np.arange(ny) - (ny - 1) / 2) * dy
        x = (np.arange(nx) - (nx - 1) / 2) * dx
        return z, y, x

    def affine(self) -> np.ndarray:
        """The ``[slice, row, column]`` to LPS affine (see dicomio.volume)."""
        z, y, x = self.axes_mm()
        dz, dy, dx = self.spacing
        return np.array([[0, 0, dx, x[0]], [0, dy, 0, y[0]], [dz, 0, 0, z[0]], [0, 0, 0, 1]], dtype=float)

    @property
    def voxel_volume_ml(self) -> float:
        return self.spacing[0] * self.spacing[1] * self.spacing[2] / 1000.0


#: A clinical torso CT: 512x512 at 0.98 mm (a 500 mm field of view), 300
#: slices every 2 mm covering the whole phantom.
CT_GRID: Final = AxialGrid((300, 512, 512), (2.0, 0.9765625, 0.9765625))

#: PET voxels: 4 mm, the size of a typical whole-body reconstruction.
_PET_VOXEL_MM: Final = 4.0


def pet_grid_for(ct: AxialGrid) -> AxialGrid:
    """The PET grid of a study: 4 mm voxels covering the CT's field of view
    and scan range (128x128 for a 500 mm CT)."""
    extent = [(n - 1) * d for n, d in zip(ct.shape, ct.spacing, strict=True)]
    slices = 1 + math.floor(extent[0] / _PET_VOXEL_MM)
    rows, columns = (1 + math.ceil(e / _PET_VOXEL_MM) for e in extent[1:])
    return AxialGrid((slices, rows, columns), (_PET_VOXEL_MM,) * 3)


# ---------------------------------------------------------------------------
# Geometry: cross-sections and solids sampled slice by slice
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plane:
    """The x and y (mm) of every voxel centre of an axial slice."""

    x: np.ndarray
    y: np.ndarray


class _Section(Protocol):
    def inside(self, plane: _Plane) -> np.ndarray: ...


class _Solid(Protocol):
    def sampler(self, plane: _Plane) -> Callable[[float], np.ndarray | None]:
        """A function from z (mm) to the solid's cross-section there (None if empty)."""
        ...


@dataclass(frozen=True)
class _Ellipse:
    cx: float
    cy: float
    ax: float
    ay: float

    def distance2(self, plane: _Plane) -> np.ndarray:
        """Squared normalised distance from the centre: 1 on the outline."""
        return ((plane.x - self.cx) / self.ax) ** 2 + ((plane.y - self.cy) / self.ay) ** 2

    def inside(self, plane: _Plane) -> np.ndarray:
        return self.distance2(plane) <= 1.0


def _disk(cx: float, cy: float, r: float) -> _Ellipse:
    return _Ellipse(cx, cy, r, r)


@dataclass(frozen=True)
class _Box:
    x: tuple[float, float]
    y: tuple[float, float]

    def inside(self, plane: _Plane) -> np.ndarray:
        across = (self.x[0] <= plane.x) & (plane.x <= self.x[1])
        return across & (self.y[0] <= plane.y) & (plane.y <= self.y[1])


def _intersection(plane: _Plane, sections: Sequence[_Section]) -> np.ndarray:
    inside = np.ones(plane.x.shape, dtype=bool)
    for section in sections:
        inside &= section.inside(plane)
    return inside


@dataclass(frozen=True)
class _Prism:
    """The intersection of `sections`, the same in every slice from z_low to z_high."""

    sections: tuple[_Section, ...]
    z_low: float = 0.0
    z_high: float = PHANTOM_LENGTH_MM

    def sampler(self, plane: _Plane) -> Callable[[float], np.ndarray | None]:
        inside = _intersection(plane, self.sections)
        return lambda z: inside if self.z_low <= z < self.z_high else None


@dataclass(frozen=True)
class _Periodic:
    """A prism present where (z - z_low) modulo `period` lies in `on`: vertebrae, discs."""

    section: _Section
    z_low: float
    period: float
    on: tuple[float, float]

    def sampler(self, plane: _Plane) -> Callable[[float], np.ndarray | None]:
        inside = self.section.inside(plane)

        def sample(z: float) -> np.ndarray | None:
            phase = (z - self.z_low) % self.period
            return inside if z >= self.z_low and self.on[0] <= phase < self.on[1] else None

        return sample


@dataclass(frozen=True)
class _Ellipsoid:
    """An ellipsoid with axes along x, y, z, cut to the prism of `clip`."""

    outline: _Ellipse
    cz: float
    az: float
    clip: tuple[_Section, ...] = ()

    def sampler(self, plane: _Plane) -> Callable[[float], np.ndarray | None]:
        distance2 = self.outline.distance2(plane)
        if self.clip:
            distance2[~_intersection(plane, self.clip)] = np.inf

        def sample(z: float) -> np.ndarray | None:
            left = 1.0 - ((z - self.cz) / self.az) ** 2
            return distance2 <= left if left >= 0 else None

        return sample


@dataclass(frozen=True)
class _Within:
    """The part of `solid` inside `container` (vessels inside a lung)."""

    solid: _Solid
    container: _Solid

    def sampler(self, plane: _Plane) -> Callable[[float], np.ndarray | None]:
        own, outer = self.solid.sampler(plane), self.container.sampler(plane)

        def sample(z: float) -> np.ndarray | None:
            mask = own(z)
            if mask is None:
                return None
            limit = outer(z)
            return None if limit is None else mask & limit

        return sample


#: No rib this close to the midline: the spine behind, the sternum in front.
_RIB_MIN_ABS_X_MM: Final = 40.0


@dataclass(frozen=True)
class _Ribs:
    """Ribs as bands in the chest wall that descend from back to front.

    Rib i runs at height ``z_top - i * pitch - drop * a`` where a goes from
    0 at the back to 1 at the front, so an axial slice cuts each rib
    obliquely, as in a CT; `height` is the rib's craniocaudal size. With
    `inner` and `outer` the marrow inside the cortex: the band between them,
    `cortex` mm short of the rib's top and bottom.
    """

    inner: _Ellipse
    outer: _Ellipse
    z_top: float
    count: int
    pitch: float
    drop: float
    height: float
    cortex: float = 0.0

    def sampler(self, plane: _Plane) -> Callable[[float], np.ndarray | None]:
        band = self.outer.inside(plane) & ~self.inner.inside(plane) & (np.abs(plane.x) >= _RIB_MIN_ABS_X_MM)
        where = np.flatnonzero(band)
        radius = np.hypot(plane.x.ravel()[where], plane.y.ravel()[where])
        frontness = (1.0 - plane.y.ravel()[where] / radius) / 2.0
        highest = self.z_top - self.drop * frontness
        half = self.height / 2 - self.cortex
        lowest = self.z_top - (self.count - 1) * self.pitch - self.drop - half

        def sample(z: float) -> np.ndarray | None:
            if not lowest <= z <= self.z_top + half:
                return None
            index = np.clip(np.rint((highest - z) / self.pitch), 0, self.count - 1)
            hit = np.abs(highest - index * self.pitch - z) <= half
            mask = np.zeros(plane.x.shape, dtype=bool)
            mask.ravel()[where[hit]] = True
            return mask

        return sample


@dataclass(frozen=True)
class _Bronchi:
    """The two main bronchi: tubes of `radius` leaving the carina 45 degrees
    sideways and downwards for `length` mm, cut by axial planes as ellipses
    sqrt(2) times longer across."""

    cy: float
    z_carina: float
    radius: float
    length: float

    def sampler(self, plane: _Plane) -> Callable[[float], np.ndarray | None]:
        def sample(z: float) -> np.ndarray | None:
            drop = self.z_carina - z
            if not 0 < drop <= self.length:
                return None
            across = self.radius * math.sqrt(2)
            left = _Ellipse(drop, self.cy, across, self.radius).inside(plane)
            return left | _Ellipse(-drop, self.cy, across, self.radius).inside(plane)

        return sample


# ---------------------------------------------------------------------------
# Anatomy
# ---------------------------------------------------------------------------

# Trunk cross-section (semi-axes, mm): skin 2 mm, subcutaneous fat 20 mm,
# muscle wall 12 mm, then the cavity.
_TRUNK: Final = _Ellipse(0, 0, 160, 115)
_UNDER_SKIN: Final = _Ellipse(0, 0, 158, 113)
_FASCIA: Final = _Ellipse(0, 0, 138, 93)
_CAVITY: Final = _Ellipse(0, 0, 126, 81)
#: The diaphragm's domes: organs stay this far below the lungs.
_DIAPHRAGM_MM: Final = 6.0
#: Levels (z, mm): the trachea divides at the carina; arms hang beside the
#: trunk above the hips; the aorta arches above its top.
_Z_CARINA: Final = 480.0
_Z_ARMS: Final = 120.0
_Z_AORTA_TOP: Final = 500.0
#: The abdomen's fat and bowel: mesentery in front, bowel loops in it.
_Z_MESENTERY: Final = (40.0, 280.0)

_RIGHT_LUNG: Final = _Ellipsoid(_Ellipse(-78, 2, 50, 82), 430, 132, clip=(_CAVITY,))
_LEFT_LUNG: Final = _Ellipsoid(_Ellipse(80, 2, 46, 80), 428, 136, clip=(_CAVITY,))


@dataclass(frozen=True)
class Lesion:
    """The hot liver lesion: a sphere (mm, patient coordinates)."""

    centre_mm: tuple[float, float, float]
    radius_mm: float

    @property
    def volume_ml(self) -> float:
        """The sphere's volume (the lesion region counts about the same on a grid)."""
        return 4 / 3 * math.pi * self.radius_mm**3 / 1000.0

    @property
    def suv(self) -> float:
        return TISSUES[Region.LESION].suv


LESION: Final = Lesion((-80.0, -15.0, 240.0), 15.0)


def _grown(ellipsoid: _Ellipsoid, mm: float) -> _Ellipsoid:
    outline = ellipsoid.outline
    grown = _Ellipse(outline.cx, outline.cy, outline.ax + mm, outline.ay + mm)
    return _Ellipsoid(grown, ellipsoid.cz, ellipsoid.az + mm, ellipsoid.clip)


def _anatomy(joined_lungs: bool) -> tuple[tuple[Region, _Solid], ...]:
    """What is painted, in order: a later solid replaces what it covers."""
    r = Region
    trunk = [
        # A foam mattress under the back, on a carbon-fibre table (two 2 mm
        # shells around a foam core).
        (r.FOAM, _Prism((_Box((-200, 200), (95, 160)),))),
        (r.TABLE_SHELL, _Prism((_Box((-200, 200), (123, 125)),))),
        (r.TABLE_SHELL, _Prism((_Box((-200, 200), (158, 160)),))),
        (r.SKIN, _Prism((_TRUNK,))),
        (r.SUBCUTANEOUS_FAT, _Prism((_UNDER_SKIN,))),
        (r.MUSCLE, _Prism((_FASCIA,))),
        (r.SOFT_TISSUE, _Prism((_CAVITY,))),
    ]
    arms = []
    for side in (-1, 1):
        cx = side * 204
        arms += [
            (r.SKIN, _Prism((_disk(cx, 0, 38),), _Z_ARMS)),
            (r.SUBCUTANEOUS_FAT, _Prism((_disk(cx, 0, 36),), _Z_ARMS)),
            (r.MUSCLE, _Prism((_disk(cx, 0, 30),), _Z_ARMS)),
            (r.CORTICAL_BONE, _Prism((_disk(cx, 0, 12),), _Z_ARMS)),
            (r.FATTY_MARROW, _Prism((_disk(cx, 0, 5.5),), _Z_ARMS)),
        ]
    low, high = _Z_MESENTERY
    # The right kidney sits lower, under the liver.
    kidneys = {side: _Ellipsoid(_Ellipse(side * 65, 44, 28, 24), 222 + 8 * side, 55) for side in (-1, 1)}
    abdomen = [
        (r.VISCERAL_FAT, _Prism((_Ellipse(0, -25, 95, 35),), low, high)),
        (r.SOFT_TISSUE, _Prism((_disk(-40, -30, 14),), low, high)),
        (r.SOFT_TISSUE, _Prism((_disk(10, -40, 12),), low, high)),
        (r.SOFT_TISSUE, _Prism((_disk(50, -22, 15),), low, high)),
        (r.BOWEL_GAS, _Ellipsoid(_disk(-40, -30, 10), 150, 25)),
        (r.LIVER, _Ellipsoid(_Ellipse(-62, -5, 68, 72), 250, 72, clip=(_CAVITY,))),
        (r.LESION, _Ellipsoid(_disk(LESION.centre_mm[0], LESION.centre_mm[1], LESION.radius_mm),
                              LESION.centre_mm[2], LESION.radius_mm)),
        *((r.VISCERAL_FAT, _grown(kidney, 7)) for kidney in kidneys.values()),
        (r.KIDNEY_RIGHT, kidneys[-1]),
        (r.KIDNEY_LEFT, kidneys[1]),
        (r.SPLEEN, _Ellipsoid(_Ellipse(84, 18, 26, 44), 272, 40, clip=(_CAVITY,))),
    ]
    lungs: list[tuple[Region, _Solid]] = [
        # The diaphragm: tissue between the lungs' bases and the organs.
        (r.SOFT_TISSUE, _grown(_RIGHT_LUNG, _DIAPHRAGM_MM)),
        (r.SOFT_TISSUE, _grown(_LEFT_LUNG, _DIAPHRAGM_MM)),
        (r.LUNG_RIGHT, _RIGHT_LUNG),
        (r.LUNG_LEFT, _LEFT_LUNG),
    ]
    if joined_lungs:
        # The anterior junction, wide enough to make the lungs one component.
        for side, region in ((-1, r.LUNG_RIGHT), (1, r.LUNG_LEFT)):
            half = _Box((0, 200) if side > 0 else (-200, 0), (-200, 200))
            lungs.append((region, _Prism((_Ellipse(0, -45, 60, 8), half), 400, 460)))
    for lung, region in ((_RIGHT_LUNG, r.PULMONARY_VESSEL_RIGHT), (_LEFT_LUNG, r.PULMONARY_VESSEL_LEFT)):
        side = 1 if lung is _LEFT_LUNG else -1
        for cx, cy in ((side * 70, -10), (side * 90, 20)):
            lungs.append((region, _Within(_Prism((_disk(cx, cy, 3),)), lung)))
    spine = [
        (r.MUSCLE, _Prism((_Ellipse(-30, 88, 22, 18),))),
        (r.MUSCLE, _Prism((_Ellipse(30, 88, 22, 18),))),
        # Vertebral bodies 24 mm high in a 3 mm shell, discs 8 mm.
        (r.CORTICAL_BONE, _Periodic(_disk(0, 50, 17), 0.0, 32.0, (0.0, 24.0))),
        (r.TRABECULAR_BONE, _Periodic(_disk(0, 50, 14), 0.0, 32.0, (3.0, 21.0))),
        (r.DISC, _Periodic(_disk(0, 50, 17), 0.0, 32.0, (24.0, 32.0))),
        # Pedicles joining each body to the neural arch around the canal, and
        # the spinous process.
        (r.CORTICAL_BONE, _Periodic(_Box((-12, 12), (62, 72)), 0.0, 32.0, (4.0, 20.0))),
        (r.CORTICAL_BONE, _Prism((_disk(0, 80, 13),))),
        (r.CORTICAL_BONE, _Prism((_Box((-3, 3), (80, 106)),))),
        (r.CSF, _Prism((_disk(0, 80, 8),))),
    ]
    rib_band = {"inner": _Ellipse(0, 0, 128, 83), "outer": _Ellipse(0, 0, 136, 91)}
    rib_marrow = {"inner": _Ellipse(0, 0, 130, 85), "outer": _Ellipse(0, 0, 134, 89)}
    rib_levels = {"z_top": 560.0, "count": 10, "pitch": 24.0, "drop": 50.0, "height": 12.0}
    ribs = [
        (r.CORTICAL_BONE, _Ribs(**rib_band, **rib_levels)),
        (r.TRABECULAR_BONE, _Ribs(**rib_marrow, **rib_levels, cortex=2.0)),
    ]
    vessels_and_airway = [
        (r.AORTA, _Prism((_disk(22, 18, 11),), 0.0, _Z_AORTA_TOP)),
        (r.AIRWAY, _Prism((_disk(0, -20, 9),), _Z_CARINA)),
        (r.AIRWAY, _Bronchi(cy=-20, z_carina=_Z_CARINA, radius=6, length=45)),
    ]
    return (*trunk, *arms, *abdomen, *lungs, *spine, *ribs, *vessels_and_airway)


class _Painter:
    """Region maps of the phantom's axial slices on one grid, painted in
    anatomical order and sampled at the voxel centres."""

    def __init__(self, grid: AxialGrid, joined_lungs: bool) -> None:
        self.z, y, x = grid.axes_mm()
        yy, xx = np.meshgrid(y.astype(np.float32), x.astype(np.float32), indexing="ij")
        plane = _Plane(x=xx, y=yy)
        self.samplers = [(region, solid.sampler(plane)) for region, solid in _anatomy(joined_lungs)]
        self.shape = grid.shape[1:]

    def slice(self, index: int) -> np.ndarray:
        regions = np.zeros(self.shape, dtype=np.uint8)
        z = float(self.z[index])
        for region, sample in self.samplers:
            mask = sample(z)
            if mask is not None:
                regions[mask] = region
        return regions


# ---------------------------------------------------------------------------
# Patient, radiopharmaceutical, identity
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    """Who the phantom is: the attributes SUV needs, and an identity."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    weight_kg: float
    height_m: float


PATIENT: Final = Patient("Phantom^Torso", "SEGNODE-PHANTOM", "19790315", "M", 75.0, 1.75)


@dataclass(frozen=True)
class FdgAcquisition:
    """The FDG injection and the PET scan, beds acquired from the feet up.

    The PET is decay corrected to the scan start (Decay Correction START),
    so one factor turns every slice's Bq/ml into SUVbw.
    """

    injected_dose_bq: float
    injection: datetime
    scan_start: datetime
    #: F-18: 109.77 min.
    half_life_s: float
    bed_length_mm: float
    bed_duration_s: float

    def suv_factor(self, patient: Patient) -> float:
        """SUVbw per Bq/ml: body weight (g) over the dose decayed to the scan start (Bq)."""
        uptake_s = (self.scan_start - self.injection).total_seconds()
        decayed = self.injected_dose_bq * 2.0 ** (-uptake_s / self.half_life_s)
        return patient.weight_kg * 1000.0 / decayed


#: 4 MBq/kg, one hour of uptake, two minutes per 16 cm bed.
FDG: Final = FdgAcquisition(
    injected_dose_bq=300e6,
    injection=datetime(2024, 3, 15, 8, 0, 0),
    scan_start=datetime(2024, 3, 15, 9, 0, 0),
    half_life_s=6586.2,
    bed_length_mm=160.0,
    bed_duration_s=120.0,
)
#: The CT is acquired just before the PET, as in a PET/CT.
CT_TIME: Final = datetime(2024, 3, 15, 8, 57, 0)


def _uid(*parts: object) -> UID:
    """A UID derived from `parts`: the same phantom always has the same UIDs."""
    return _generate_uid(entropy_srcs=["segnode phantom", *(repr(part) for part in parts)])


# ---------------------------------------------------------------------------
# Phantoms in memory
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StructureTruth:
    """What a perfect segmentation of a structure measures.

    Attributes
    ----------
    name : str
        The structure's name in dicomio/codes.py.
    volume_ml : float
        Its voxels on the CT grid times the voxel volume.
    mean_hu : float
        Mean CT number before noise, over those voxels.
    suv_mean : float
        Mean expected SUVbw over those voxels (exact for a uniform organ; a
        structure of several regions averages them by volume).
    """

    name: str
    volume_ml: float
    mean_hu: float
    suv_mean: float


@dataclass(frozen=True, eq=False)
class CtPhantom:
    """The phantom's CT and the region of every voxel.

    Attributes
    ----------
    volume : Volume
        HU (int16) with noise, exactly what the written series reads back as
        (same grid, UIDs and sources).
    regions : numpy.ndarray
        uint8 :class:`Region` values on the same grid.
    truth : Mapping
        Structure name to :class:`StructureTruth`, for structures the grid holds.
    grid : AxialGrid
    joined_lungs : bool
        Whether the lungs meet in front (see :func:`ct_phantom`).
    """

    volume: Volume
    regions: np.ndarray
    truth: Mapping[str, StructureTruth]
    grid: AxialGrid
    joined_lungs: bool

    def mask(self, name: str) -> np.ndarray:
        """The true mask of structure `name` (a key of :data:`STRUCTURE_REGIONS`)."""
        try:
            regions = STRUCTURE_REGIONS[name]
        except KeyError:
            known = ", ".join(sorted(STRUCTURE_REGIONS))
            raise KeyError(f"the phantom has no structure {name!r}; it has {known}") from None
        return self.region_mask(*regions)

    def region_mask(self, *regions: Region) -> np.ndarray:
        """Voxels of any of `regions` (the table, the marrow, the canal...)."""
        return np.isin(self.regions, np.array([int(region) for region in regions], dtype=np.uint8))


@dataclass(frozen=True, eq=False)
class PetPhantom:
    """The phantom's FDG PET on its own grid.

    Attributes
    ----------
    volume : Volume
        Bq/ml (float32) decay corrected to the scan start, with noise and
        the quantisation of the stored values: what the written series reads
        back as.
    regions : numpy.ndarray
        uint8 :class:`Region` values on the PET grid.
    expected_suv : numpy.ndarray
        SUVbw without noise (float32), each voxel its region's.
    suv_factor : float
        SUVbw per Bq/ml (g/ml per Bq/ml).
    rescale_slopes : tuple of float
        Each slice's Rescale Slope: scanners scale every slice to the stored
        range, so the slope varies from slice to slice.
    """

    volume: Volume
    regions: np.ndarray
    expected_suv: np.ndarray
    suv_factor: float
    rescale_slopes: tuple[float, ...]


def ct_phantom(grid: AxialGrid = CT_GRID, *, seed: int = 0, joined_lungs: bool = False) -> CtPhantom:
    """The phantom's CT on `grid`.

    Parameters
    ----------
    grid : AxialGrid
        Where to sample; :data:`CT_GRID` is a clinical 512x512x300.
    seed : int
        Seeds the noise and, with the grid, the UIDs.
    joined_lungs : bool
        Join the lungs in front of the mediastinum (an anterior junction line
        wide enough to make them one component), an anatomy that a
        segmenter has to split.
    """
    painter = _Painter(grid, joined_lungs)
    study = _uid("study", seed, grid, joined_lungs)
    series = _uid("series", study, "CT")
    rng = np.random.default_rng([seed, 0])
    hu = np.empty(grid.shape, dtype=np.int16)
    regions = np.empty(grid.shape, dtype=np.uint8)
    counts = np.zeros(len(Region), dtype=np.int64)
    for k in range(grid.shape[0]):
        regions[k] = painter.slice(k)
        counts += np.bincount(regions[k].ravel(), minlength=len(Region))
        noisy = _HU_TABLE[regions[k]] + rng.standard_normal(grid.shape[1:], dtype=np.float32) * CT_NOISE_HU
        hu[k] = np.clip(np.rint(noisy), *_CT_HU_RANGE)
    volume = Volume(
        array=hu,
        affine=grid.affine(),
        frame_of_reference_uid=_uid("frame of reference", study),
        study_instance_uid=study,
        series_instance_uid=series,
        modality="CT",
        sources=tuple(SourceFrame(CTImageStorage, _uid("instance", series, k)) for k in range(grid.shape[0])),
    )
    return CtPhantom(
        volume=volume,
        regions=regions,
        truth=_truth(counts, grid.voxel_volume_ml),
        grid=grid,
        joined_lungs=joined_lungs,
    )


def _truth(counts: np.ndarray, voxel_ml: float) -> Mapping[str, StructureTruth]:
    truth = {}
    for name, regions in STRUCTURE_REGIONS.items():
        index = np.array(sorted(int(region) for region in regions))
        voxels = counts[index]
        total = int(voxels.sum())
        if total:
            truth[name] = StructureTruth(
                name=name,
                volume_ml=total * voxel_ml,
                mean_hu=float(voxels @ _HU_TABLE[index].astype(np.float64)) / total,
                suv_mean=float(voxels @ _SUV_TABLE[index]) / total,
            )
    return MappingProxyType(truth)


def pet_phantom(ct: CtPhantom, grid: AxialGrid | None = None, *, seed: int = 0) -> PetPhantom:
    """The FDG PET of the study of `ct` (its study and frame of reference).

    Parameters
    ----------
    ct : CtPhantom
        The CT of the same study.
    grid : AxialGrid, optional
        The PET grid; :func:`pet_grid_for` the CT's by default.
    seed : int
        Seeds the noise.
    """
    grid = grid or pet_grid_for(ct.grid)
    painter = _Painter(grid, ct.joined_lungs)
    factor = FDG.suv_factor(PATIENT)
    series = _uid("series", ct.volume.study_instance_uid, "PT", grid)
    rng = np.random.default_rng([seed, 1])
    regions = np.empty(grid.shape, dtype=np.uint8)
    expected = np.empty(grid.shape, dtype=np.float32)
    activity = np.empty(grid.shape, dtype=np.float32)
    slopes = []
    for k in range(grid.shape[0]):
        regions[k] = painter.slice(k)
        expected[k] = _SUV_TABLE[regions[k]]
        noise = 1.0 + PET_NOISE_FRACTION * rng.standard_normal(grid.shape[1:], dtype=np.float32)
        bq_ml = np.maximum(expected[k] * noise, 0.0) / factor
        stored, slope = _pet_stored(bq_ml)
        slopes.append(slope)
        # As dicomio.series computes rescaled values: float64, then float32.
        activity[k] = stored.astype(np.float64) * slope
    volume = Volume(
        array=activity,
        affine=grid.affine(),
        frame_of_reference_uid=ct.volume.frame_of_reference_uid,
        study_instance_uid=ct.volume.study_instance_uid,
        series_instance_uid=series,
        modality="PT",
        sources=tuple(
            SourceFrame(PositronEmissionTomographyImageStorage, _uid("instance", series, k))
            for k in range(grid.shape[0])
        ),
    )
    return PetPhantom(
        volume=volume, regions=regions, expected_suv=expected, suv_factor=factor, rescale_slopes=tuple(slopes)
    )


#: Largest stored PET value: signed 16-bit, as most PET scanners write.
_PET_STORED_MAX: Final = 32767


def _pet_stored(bq_ml: np.ndarray) -> tuple[np.ndarray, float]:
    """Stored values and Rescale Slope of one PET slice.

    Scanners scale each slice to the stored range, so the slope varies from
    slice to slice. The slope is what its DS text says (4 significant digits,
    rounded up so that the maximum fits), so that reading the file gives
    back exactly the values of :class:`PetPhantom`.
    """
    peak = float(bq_ml.max())
    slope = float(f"{peak / _PET_STORED_MAX * 1.001:.4g}") if peak > 0 else 1.0
    return np.rint(bq_ml / slope).astype(np.int16), slope
