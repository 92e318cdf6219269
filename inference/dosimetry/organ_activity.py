"""Organ activities read from a quantitative SPECT through CT organ masks.

Organs are delineated on the CT of a SPECT/CT, where their borders are
sharp, and their activity is read on the SPECT, whose resolution (about
10 mm FWHM for 177Lu) spreads each organ's counts a centimetre past its CT
border: summing the SPECT over the CT mask alone misses that spill-out
(about 13 % of a 138 ml kidney-shaped ellipsoid with a 3 mm Gaussian PSF,
18 % with 4.25 mm; "The magnitude of the partial volume effect in SPECT
imaging of the kidneys: a phantom study", EJNMMI Physics 2022,
doi:10.1186/s40658-022-00446-2, found recovery coefficients of about 76 %
for 3D-printed whole kidneys at 10:1). The dosimetry work segnode follows
("Automated and robust organ segmentation for 3D-based internal dose
calculation", ../shared/seeds/002, its kidney dosimetry procedure)
therefore convolves the binary CT kidney mask with a Gaussian point spread
function of sigma 3 mm for border extension, and retrieves the activity
from the SPECT with the mask so expanded by 3 mm.

What "extended" means here, precisely
-------------------------------------
1. The CT label map is carried onto the SPECT grid as partial-volume
   fractions ``f`` (:func:`dicomio.resample.resample_label_fractions`; both
   series must share the Frame of Reference).
2. ``t = f * G_sigma``: the fractions convolved with an isotropic Gaussian
   of `sigma` mm, applied per array axis with sigma / spacing voxels, so
   anisotropic voxels (4.8 mm in plane, 2.4 mm slices) blur equally in mm.
   ``t`` is the organ as a SPECT with that PSF would see it, in [0, 1].
3. ``w = min(1, t / Phi(-1))``, Phi the standard normal distribution
   function. Across a flat border ``t`` at distance d outside is
   Phi(-d / sigma), so ``w`` is 1 inside the organ and out to one sigma
   beyond its border (the paper's mask expanded by 3 mm), then falls off as
   the PSF's own tail, taking a decreasing share of the farther spill-out.

``t`` itself is not used as the weight: its integral equals the organ's
volume, but weighting the blurred image by it gives less than the bare mask
(82 % against 87 % on the ellipsoid above), since it down-weights the
organ's own edge as much as it credits the spill-out. A hard 3 mm dilation
is not used either: on a 4.8 mm SPECT grid it is under one voxel wide, and it
recovers 96.6 % where ``w`` recovers 98.4 % (same ellipsoid, 3 mm PSF). The
figures are from sums on a 1 mm grid; on a 4.8 mm SPECT grid the tests find
98.2 % with the extension, 84.9 % without (95.5 and 80.4 % for a 4.25 mm PSF).
With sigma 0 the weights are the fractions themselves: no extension.

Where extended organs overlap (adjacent organs), a voxel's counts are shared:
the share of them taken by organs together is ``min(1, sum of w)``, divided
among the organs in proportion to their ``t``, each organ's expected share of
the counts if all had the same concentration. So a voxel's weights add up to
at most 1, no count is taken twice, and an organ alone keeps ``w``. Organs of
different concentrations exchange counts across their contact: two halves of
the tests' ellipsoid at 2.5:1 read 95 % and 106 % of their activities (their
sum 98.2 %, as one organ's).

Limits: the extension also takes in a warm background's own counts (+4 % for
the tests' kidney at 10:1), and a PSF wider than sigma leaves some spill-out
out (95.5 % read with a 4.25 mm PSF); :func:`organ_activities` corrects
neither, :func:`recovered_activities` both.

Recovery correction: a geometric transfer matrix
------------------------------------------------
:func:`recovered_activities` models the SPECT around the organs as each
organ's uniform concentration c_j blurred by the SPECT's own PSF plus a
uniform local background c_b, the geometric transfer matrix method of
Rousset et al. ("Correction for partial volume effects in PET: principle
and validation", J Nucl Med 39:904, 1998), read through the extended
weights instead of Rousset's bare regions: each organ's reading is
S_i = sum_j T_ij c_j + B_i c_b, with T_ij = sum(w_i x (f_j * G_psf)) v (the
share of organ j's counts organ i's weights read, v the voxel volume) and
B_i = sum(w_i x (1 - sum_j f_j * G_psf)) v (the background's). c_b is the
organ's local background, measured beyond its spill-out
(:func:`inference.dosimetry.alignment.alignment_check`); solving T c =
S - B c_b gives the concentrations, and c_j x the organ's volume on the
SPECT grid its activity. The PSF is the SPECT's resolution, a property of
the camera, collimator and reconstruction that a site measures (a line or
sphere phantom), not something the image says. Organs not among those
modelled keep their spill-in: a hot neighbour (the spleen at the left
kidney, the liver at the right) belongs in the matrix. On the synthetic
course of phantom/spect_course.py (11 mm FWHM, four time points), with the
kidneys alone in the matrix the right one reads 1.8-2.9 % high and the
left, which touches the spleen, 16-18 %; with the spleen and liver in it
every time point's kidney activity is within 1.5 %
(tests/test_dosimetry_course.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage, special

from dicomio.codes import STRUCTURE_CODES, StructureCode, UnknownStructureError
from dicomio.resample import resample_label_fractions
from dicomio.seg import LabelledStructure
from dicomio.volume import Volume

__all__ = [
    "DEFAULT_SIGMA_MM",
    "OrganActivity",
    "OrganActivityError",
    "OrganWeights",
    "organ_activities",
    "recovered_activities",
    "spect_weights",
]

#: The PSF sigma of the dosimetry work segnode follows (3 mm, kidneys).
DEFAULT_SIGMA_MM = 3.0
#: t at one sigma outside a flat border, Phi(-1) = 0.1587: the level from which
#: the extended weight is 1.
_ONE_SIGMA_LEVEL = float(special.ndtr(-1.0))
#: FWHM of a Gaussian over its sigma, 2 sqrt(2 ln 2).
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Condition number of the transfer matrix beyond which organs' activities cannot be told apart.
_MAX_CONDITION = 1e3
#: Patient-space tolerance (mm) within which two grids are the same grid.
_GRID_TOLERANCE_MM = 1e-3


class OrganActivityError(ValueError):
    """Organs, label map and SPECT that cannot be measured together."""

    def __init__(self, series_instance_uid: str, problem: str) -> None:
        super().__init__(f"organ activity on SPECT series {series_instance_uid}: {problem}")
        self.series_instance_uid = series_instance_uid


@dataclass(frozen=True, eq=False)
class OrganWeights:
    """Each organ's CT mask on one SPECT grid, as is and extended.

    Attributes
    ----------
    structures : tuple of LabelledStructure
        The organs, in the order of the first axis of the arrays.
    fractions : numpy.ndarray
        float32 ``[organ, slice, row, column]``: the share of each SPECT
        voxel the CT mask covers.
    weights : numpy.ndarray
        float32, same shape: the extended weights in [0, 1], shared where
        organs overlap (module docstring); a voxel's weights add up to <= 1.
    sigma_mm : tuple of float
        The PSF sigma each organ was extended with (0: not extended).
    ct_volume_ml : tuple of float
        Each organ's volume on its own CT grid (voxels x voxel volume).
    grid : Volume
        The SPECT whose grid the arrays lie on.
    """

    structures: tuple[LabelledStructure, ...]
    fractions: np.ndarray
    weights: np.ndarray
    sigma_mm: tuple[float, ...]
    ct_volume_ml: tuple[float, ...]
    grid: Volume

    def check_grid(self, spect: Volume) -> None:
        """Refuse a SPECT that is not on the grid these weights lie on.

        Raises
        ------
        OrganActivityError
            Another Frame of Reference, shape or voxel placement.
        """
        same = (
            spect.frame_of_reference_uid == self.grid.frame_of_reference_uid
            and spect.array.shape == self.grid.array.shape
            and np.allclose(spect.affine, self.grid.affine, rtol=0.0, atol=_GRID_TOLERANCE_MM)
        )
        if not same:
            raise OrganActivityError(
                spect.series_instance_uid,
                f"the organ weights lie on the grid of series {self.grid.series_instance_uid}, "
                f"shape {self.grid.array.shape}; this one has shape {spect.array.shape} and "
                "another frame of reference or placement",
            )


@dataclass(frozen=True)
class OrganActivity:
    """What one organ holds at one SPECT time point.

    Attributes
    ----------
    code : StructureCode
        The organ.
    spect_series_instance_uid : str
        The SPECT it was read on.
    activity_mbq : float
        Sum over the SPECT of weight x concentration x voxel volume; from
        :func:`recovered_activities`, the transfer matrix's concentration x
        the organ's volume on the SPECT grid.
    mean_concentration_bq_ml : float
        That activity over the CT volume: the organ's mean concentration,
        spill-out included; from :func:`recovered_activities`, the transfer
        matrix's concentration.
    ct_volume_ml : float
        The organ's volume on the CT (its mass follows from it).
    weighted_volume_ml : float
        Sum of the weights x voxel volume: the volume the activity was read
        from, larger than the CT volume by the extension.
    """

    code: StructureCode
    spect_series_instance_uid: str
    activity_mbq: float
    mean_concentration_bq_ml: float
    ct_volume_ml: float
    weighted_volume_ml: float


def spect_weights(
    labels: Volume,
    structures: Sequence[LabelledStructure],
    spect: Volume,
    sigma_mm: Mapping[str, float] | float = DEFAULT_SIGMA_MM,
) -> OrganWeights:
    """Each organ's CT mask on `spect`'s grid, extended by a Gaussian PSF.

    Parameters
    ----------
    labels : Volume
        The CT label map (integer array) in the SPECT's Frame of Reference.
    structures : sequence of LabelledStructure
        The organs to weigh and their label values.
    spect : Volume
        The SPECT whose grid the weights are for.
    sigma_mm : float or Mapping of str to float
        The PSF sigma in mm for every organ, or per organ name (organs not
        named get :data:`DEFAULT_SIGMA_MM`); 0 leaves an organ unextended.

    Raises
    ------
    OrganActivityError
        No organs, repeated organs or label values, an organ without voxels,
        an organ not wholly inside the SPECT's field of view, a negative or
        non-finite sigma, or a SPECT grid whose axes are not orthogonal.
    UnknownStructureError
        `sigma_mm` names a structure segnode does not know.
    dicomio.resample.FrameOfReferenceMismatchError
        The label map and SPECT are in different frames of reference.
    """
    series = spect.series_instance_uid
    _check_structures(structures, series)
    sigmas = _sigmas(structures, sigma_mm, series)
    _check_orthogonal(spect)
    values = [s.value for s in structures]
    # Only the requested organs are resampled: a 117-class map would otherwise
    # cost 117 fraction arrays.
    wanted = np.where(np.isin(labels.array, values), labels.array, 0)
    counts = [int(np.count_nonzero(wanted == value)) for value in values]
    for structure, count in zip(structures, counts, strict=True):
        if count == 0:
            raise OrganActivityError(
                series, f"{structure.code.name} has no voxel with label {structure.value} in label "
                f"map of series {labels.series_instance_uid}",
            )
    resampled = resample_label_fractions(replace(labels, array=wanted), spect)
    fractions = np.stack([resampled.fractions[resampled.labels.index(v)] for v in values])
    for structure, organ in zip(structures, fractions, strict=True):
        _check_inside(structure, organ, series)

    blurred = np.stack([_blur(f, sigma, spect.spacing) for f, sigma in zip(fractions, sigmas, strict=True)])
    extended = np.stack([
        np.minimum(1.0, t / _ONE_SIGMA_LEVEL) if sigma > 0 else t
        for t, sigma in zip(blurred, sigmas, strict=True)
    ])
    together = np.minimum(1.0, extended.sum(axis=0))
    total = blurred.sum(axis=0)
    shares = np.divide(blurred, total, out=np.zeros_like(blurred), where=total > 0)
    weights = (shares * together).astype(np.float32)
    return OrganWeights(
        structures=tuple(structures),
        fractions=fractions,
        weights=weights,
        sigma_mm=sigmas,
        ct_volume_ml=tuple(count * labels.voxel_volume_ml for count in counts),
        grid=spect,
    )


def organ_activities(weights: OrganWeights, spect_bq_per_ml: Volume) -> tuple[OrganActivity, ...]:
    """Each organ's activity on a quantitative SPECT, in the order of the weights.

    Parameters
    ----------
    weights : OrganWeights
        From :func:`spect_weights` for this SPECT's grid.
    spect_bq_per_ml : Volume
        The SPECT's activity concentrations in Bq/ml.

    Raises
    ------
    OrganActivityError
        The SPECT is not on the weights' grid.
    """
    weights.check_grid(spect_bq_per_ml)
    voxel_ml = spect_bq_per_ml.voxel_volume_ml
    n_organs = len(weights.structures)
    flat = weights.weights.reshape(n_organs, -1).astype(np.float64)
    activity_bq = flat @ spect_bq_per_ml.array.reshape(-1).astype(np.float64) * voxel_ml
    weighted_ml = flat.sum(axis=1) * voxel_ml
    return tuple(
        OrganActivity(
            code=structure.code,
            spect_series_instance_uid=spect_bq_per_ml.series_instance_uid,
            activity_mbq=float(bq) / 1e6,
            mean_concentration_bq_ml=float(bq) / ct_ml,
            ct_volume_ml=ct_ml,
            weighted_volume_ml=float(volume),
        )
        for structure, bq, ct_ml, volume in zip(
            weights.structures, activity_bq, weights.ct_volume_ml, weighted_ml, strict=True
        )
    )


def recovered_activities(
    weights: OrganWeights,
    spect_bq_per_ml: Volume,
    *,
    psf_fwhm_mm: float,
    background_bq_ml: Sequence[float],
) -> tuple[OrganActivity, ...]:
    """Each organ's activity corrected for spill-out, spill-in between the organs and
    the local background's spill-in, by a geometric transfer matrix (module docstring).

    Parameters
    ----------
    weights : OrganWeights
        From :func:`spect_weights` for this SPECT's grid: every organ whose
        counts reach another belongs in it.
    spect_bq_per_ml : Volume
        The SPECT's activity concentrations in Bq/ml.
    psf_fwhm_mm : float
        The SPECT's resolution (FWHM of an isotropic Gaussian PSF), measured
        for the camera and reconstruction.
    background_bq_ml : sequence of float
        Each organ's local background concentration, in the order of the weights.

    Raises
    ------
    OrganActivityError
        The SPECT is not on the weights' grid, a non-positive PSF, backgrounds
        not one per organ, or organs the matrix cannot tell apart.
    """
    series = spect_bq_per_ml.series_instance_uid
    measured = organ_activities(weights, spect_bq_per_ml)
    if not (math.isfinite(psf_fwhm_mm) and psf_fwhm_mm > 0):
        raise OrganActivityError(series, f"the SPECT's PSF FWHM must be > 0 mm, got {psf_fwhm_mm!r}")
    if len(background_bq_ml) != len(measured):
        raise OrganActivityError(
            series, f"{len(background_bq_ml)} background concentrations for {len(measured)} organs"
        )
    sigma = psf_fwhm_mm / _FWHM_PER_SIGMA
    n_organs = len(weights.structures)
    spacing = spect_bq_per_ml.spacing
    imaged = np.stack([_blur(f.astype(np.float64), sigma, spacing) for f in weights.fractions])
    flat = weights.weights.reshape(n_organs, -1).astype(np.float64)
    voxel_ml = spect_bq_per_ml.voxel_volume_ml
    transfer = flat @ imaged.reshape(n_organs, -1).T * voxel_ml
    background_share = flat @ (1.0 - imaged.sum(axis=0)).reshape(-1) * voxel_ml
    readings = np.array([a.activity_mbq * 1e6 for a in measured])
    corrected = readings - background_share * np.asarray(background_bq_ml, dtype=np.float64)
    if np.linalg.cond(transfer) > _MAX_CONDITION:
        raise OrganActivityError(
            series, f"the organs {[s.code.name for s in weights.structures]} overlap too much at "
            f"{psf_fwhm_mm:g} mm FWHM for their activities to be told apart",
        )
    concentrations = np.linalg.solve(transfer, corrected)
    volumes_ml = weights.fractions.reshape(n_organs, -1).sum(axis=1, dtype=np.float64) * voxel_ml
    return tuple(
        replace(
            activity,
            activity_mbq=float(c * volume) / 1e6,
            mean_concentration_bq_ml=float(c),
        )
        for activity, c, volume in zip(measured, concentrations, volumes_ml, strict=True)
    )


def _check_structures(structures: Sequence[LabelledStructure], series: str) -> None:
    if not structures:
        raise OrganActivityError(series, "no organs to measure")
    names = [s.code.name for s in structures]
    values = [s.value for s in structures]
    if len(set(names)) != len(names) or len(set(values)) != len(values) or min(values) < 1:
        raise OrganActivityError(
            series, f"organs {names} and label values {values} must be distinct and positive"
        )


def _sigmas(
    structures: Sequence[LabelledStructure], sigma_mm: Mapping[str, float] | float, series: str
) -> tuple[float, ...]:
    if isinstance(sigma_mm, Mapping):
        for name in sigma_mm:
            if name not in STRUCTURE_CODES:
                raise UnknownStructureError(name)
        sigmas = tuple(float(sigma_mm.get(s.code.name, DEFAULT_SIGMA_MM)) for s in structures)
    else:
        sigmas = (float(sigma_mm),) * len(structures)
    for structure, sigma in zip(structures, sigmas, strict=True):
        if not (math.isfinite(sigma) and sigma >= 0):
            raise OrganActivityError(
                series, f"PSF sigma of {structure.code.name} must be >= 0 mm, got {sigma!r}"
            )
    return sigmas


def _check_orthogonal(spect: Volume) -> None:
    """A Gaussian applied per array axis is isotropic only on an orthogonal grid."""
    axes = spect.affine[:3, :3] / np.array(spect.spacing)
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-4):
        raise OrganActivityError(
            spect.series_instance_uid, "its voxel axes are not orthogonal (a sheared grid)"
        )


def _check_inside(structure: LabelledStructure, fractions: np.ndarray, series: str) -> None:
    """Refuse an organ the SPECT does not image whole: its spill-out, and
    part of the organ, would be outside the image, so any activity read
    would be too low, with nothing to show it."""
    if not fractions.any():
        raise OrganActivityError(series, f"{structure.code.name} is outside the field of view")
    border = [fractions.take(i, axis=a) for a in range(3) for i in (0, -1)]
    if any(face.any() for face in border):
        raise OrganActivityError(
            series, f"{structure.code.name} reaches the edge of the field of view: part of it "
            "and its spill-out are not imaged",
        )


def _blur(fractions: np.ndarray, sigma_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """`fractions` convolved with an isotropic Gaussian of `sigma_mm`.

    Outside the grid the organ is absent (mode "constant"), as it is: organs
    reaching the edge were refused.
    """
    if sigma_mm == 0:
        return fractions
    return ndimage.gaussian_filter(
        fractions, sigma=[sigma_mm / step for step in spacing], mode="constant", cval=0.0
    )
