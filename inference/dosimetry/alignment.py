"""Whether a SPECT's activity sits where the CT says the organ is.

CT organ masks read the SPECT correctly only if the two are registered: the
patient breathes and moves between the CT and the SPECT acquisition of a
SPECT/CT, and in the dosimetry work segnode follows (../shared/seeds/002)
misregistration was the main reason the automated kidney doses needed an
expert's correction. Each organ at each time point gets two measures, read
from the SPECT around the organ after subtracting the local background:

* the captured fraction: the share of the activity in the organ's
  neighbourhood that its extended mask takes in. The neighbourhood is every
  voxel within :data:`NEIGHBOURHOOD_MM` of the organ's mask, less the share
  other organs' extended masks take, so a neighbouring organ's uptake does not
  count against this one;
* the centre-of-mass offset: from the mask's centre (its fractions) to the
  centre of the activity in the neighbourhood, in patient mm (LPS). A
  Gaussian PSF moves no centre of mass, so for a registered organ of uniform
  uptake the two coincide.

The local background is the median concentration in a shell
:data:`NEIGHBOURHOOD_MM` to :data:`NEIGHBOURHOOD_MM` + :data:`SPECT_FWHM_MM`
from the organ, outside every organ's extended mask: sampling the background
beyond the spill-out region, as in total-activity VOI methods for
quantitative SPECT (the phantom validation of such a method, sphere VOIs
expanded by a spill-out region with the background sampled outside it:
PubMed Central PMC9859999). Without it a warm background pulls
the activity's centre towards the neighbourhood's and hides the offset.

The thresholds follow from the SPECT's resolution, about
:data:`SPECT_FWHM_MM` FWHM for 177Lu (sigma 4.25 mm; the figure issue 16
works with). Figures below are for the tests' 138 ml kidney-shaped
ellipsoid (semi-axes 55, 30, 20 mm) on 4.8 mm voxels with the 3 mm
extension, for a 3 mm / 4.25 mm Gaussian PSF:

* neighbourhood 2 FWHM = 20 mm: a Gaussian of that FWHM puts under 0.1 % of
  a point's counts beyond 4.7 sigma, so the whole spill-out of a registered
  organ is in it, and that of one shifted by a FWHM mostly is;
* offset above half the FWHM, 5 mm (about one SPECT voxel): the 3 mm
  extension absorbs misregistration up to about its own width (3 mm along
  the long axis: activity read 97.9 / 95.2 % against 98.2 / 95.5 %
  registered), while 5 mm across the thin axis reads 94.1 / 91.3 %;
* captured fraction below :data:`MIN_CAPTURED_FRACTION`: the activity read
  is then more than 10 % low, whatever the cause (misregistration, a PSF
  wider than the extension allows for, uptake outside the CT organ). The
  captured fraction mostly reflects resolution (registered 0.98 / 0.955,
  shifted 10 mm along the long axis 0.94 / 0.92), so the offset is the
  measure that finds misregistration; this one bounds the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage

from dicomio.codes import StructureCode
from dicomio.volume import Volume
from inference.dosimetry.organ_activity import OrganWeights

__all__ = [
    "MAX_OFFSET_MM",
    "MIN_CAPTURED_FRACTION",
    "NEIGHBOURHOOD_MM",
    "SPECT_FWHM_MM",
    "AlignmentCheck",
    "OrganAlignment",
    "alignment_check",
]

#: Resolution of a clinical 177Lu SPECT (medium-energy collimator), FWHM.
SPECT_FWHM_MM: Final = 10.0
#: How far around an organ its spill-out and a misregistered organ are sought.
NEIGHBOURHOOD_MM: Final = 2 * SPECT_FWHM_MM
#: Largest centre-of-mass offset taken as registered.
MAX_OFFSET_MM: Final = 0.5 * SPECT_FWHM_MM
#: Smallest share of the neighbourhood's activity the extended mask must take.
MIN_CAPTURED_FRACTION: Final = 0.9


@dataclass(frozen=True)
class OrganAlignment:
    """One organ's registration with one SPECT.

    Attributes
    ----------
    code : StructureCode
        The organ.
    captured_fraction : float
        Share of the background-subtracted activity of the neighbourhood
        taken in by the extended mask (0 when there is none).
    offset_mm : tuple of float or None
        LPS vector (mm) from the mask's centre to the activity's; None when
        there is no activity above the background around the organ.
    background_bq_ml : float
        The local background subtracted (0 when the shell is all organs).
    reason : str
        Why the organ is flagged; empty when it is not.
    """

    code: StructureCode
    captured_fraction: float
    offset_mm: tuple[float, float, float] | None
    background_bq_ml: float
    reason: str

    @property
    def misaligned(self) -> bool:
        """Whether the organ is flagged."""
        return bool(self.reason)

    @property
    def offset_distance_mm(self) -> float | None:
        """Length of :attr:`offset_mm`."""
        return None if self.offset_mm is None else float(np.linalg.norm(self.offset_mm))


@dataclass(frozen=True)
class AlignmentCheck:
    """The registration of every organ with one SPECT time point."""

    spect_series_instance_uid: str
    organs: tuple[OrganAlignment, ...]

    @property
    def misaligned(self) -> tuple[OrganAlignment, ...]:
        """The flagged organs."""
        return tuple(organ for organ in self.organs if organ.misaligned)


def alignment_check(weights: OrganWeights, spect: Volume) -> AlignmentCheck:
    """Check each organ of `weights` against the activity of `spect`.

    Parameters
    ----------
    weights : OrganWeights
        The organs on this SPECT's grid.
    spect : Volume
        The SPECT on that grid, in Bq/ml (any scale proportional to activity
        gives the same answer).

    Raises
    ------
    inference.dosimetry.organ_activity.OrganActivityError
        The SPECT is not on the weights' grid.
    """
    weights.check_grid(spect)
    spacing = np.array(spect.spacing)
    reach = np.ceil((NEIGHBOURHOOD_MM + SPECT_FWHM_MM) / spacing).astype(int)
    taken = weights.weights.sum(axis=0, dtype=np.float64)
    organs = []
    for index, structure in enumerate(weights.structures):
        fractions = weights.fractions[index]
        # The box around the organ and its background shell: everything this
        # organ's measures read.
        box = tuple(
            slice(max(0, int(where.min()) - r), int(where.max()) + r + 1)
            for where, r in zip(np.nonzero(fractions), reach, strict=True)
        )
        own = weights.weights[index][box].astype(np.float64)
        others = np.clip(taken[box] - own, 0.0, 1.0)
        distance = ndimage.distance_transform_edt(fractions[box] == 0, sampling=spacing)
        shell = (distance > NEIGHBOURHOOD_MM) & (distance <= NEIGHBOURHOOD_MM + SPECT_FWHM_MM)
        shell &= taken[box] == 0
        image = spect.array[box].astype(np.float64)
        background = float(np.median(image[shell])) if shell.any() else 0.0
        activity = np.maximum(image - background, 0.0)
        near = (distance <= NEIGHBOURHOOD_MM) * (1.0 - others) * activity
        total = float(near.sum())
        if total <= 0:
            organs.append(OrganAlignment(
                structure.code, 0.0, None, background, "no activity above the background around it"
            ))
            continue
        captured = float((own * activity).sum()) / total
        offset = _centre(near, box, spect.affine) - _centre(fractions[box], box, spect.affine)
        organs.append(OrganAlignment(
            code=structure.code,
            captured_fraction=captured,
            offset_mm=tuple(float(v) for v in offset),
            background_bq_ml=background,
            reason=_reason(captured, float(np.linalg.norm(offset))),
        ))
    return AlignmentCheck(spect.series_instance_uid, tuple(organs))


def _centre(mass: np.ndarray, box: tuple[slice, ...], affine: np.ndarray) -> np.ndarray:
    """Centre of `mass` (lying in `box` of the grid) in patient mm."""
    index = np.array(ndimage.center_of_mass(mass)) + [s.start for s in box]
    return affine[:3, :3] @ index + affine[:3, 3]


def _reason(captured: float, offset_mm: float) -> str:
    problems = []
    if offset_mm > MAX_OFFSET_MM:
        problems.append(
            f"the activity's centre is {offset_mm:.1f} mm from the CT mask's (limit {MAX_OFFSET_MM:g} mm)"
        )
    if captured < MIN_CAPTURED_FRACTION:
        problems.append(
            f"the extended mask takes in {captured:.1%} of the activity around it "
            f"(limit {MIN_CAPTURED_FRACTION:.0%})"
        )
    return "; ".join(problems)
