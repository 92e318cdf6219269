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

Both measures read the net activity signed, the background subtracted and
nothing clipped: clipping at zero turns the background's noise into a
positive floor (0.4 of its standard deviation) on every voxel of the
neighbourhood, which draws the centre to the neighbourhood's and lowers the
captured fraction, and makes a cold organ's "activity" pure noise.

When an organ cannot be judged
------------------------------
The check finds an organ's activity only where the organ stands out of what
surrounds it. Early after the administration it may not: on the synthetic
course of phantom/spect_course.py (177Lu-DOTATOC; 11 mm FWHM; time points
0.5, 6, 24, 72 h) at 0.5 h the kidneys hold 174 and 148 kBq/ml, the liver
120, the spleen 508, in a background of the blood and the rest of the body
at 158-159 kBq/ml. The 0.5 h point, registered, was flagged on every course,
and not mainly for noise: without noise (the expected counts) the left
kidney's centre was 18.2 mm off with 85 % captured, the spleen's spill-out
(348 kBq/ml over the background, the kidney 14) outweighing the kidney's own
uptake, and the right kidney and the liver, colder than the background, had
"no activity above the background". With the noise (background voxels'
standard deviation 13.4 kBq/ml, 8 %) clipped at zero, seeds 0-4 flagged the
left kidney (9.0-9.7 mm, 61-62 % captured), the right (20-21 mm, 26-29 %)
and the liver (8 % captured). An organ is therefore judged only if all of
the following hold, and is otherwise not assessable at that time point
(:attr:`OrganAlignment.not_assessable` says why; it is neither flagged nor
passed):

* its net uptake over the local background, summed over its CT mask, exceeds
  :data:`UPTAKE_SIGNIFICANCE` standard errors (the Rose criterion for an
  object told from noise). On the course this stops the right kidney at
  0.5 h (-8 to -10 kBq/ml, standard error 0.6) and the liver (-34, 0.23);
* the neighbours' activity alone would not put the organ's centre more than
  :data:`MAX_SPILL_OFFSET_MM` (half the limit) off its CT mask's were it
  registered. That centre is computed from a model of the registered SPECT:
  each organ's CT mask at its measured mean net concentration, blurred by
  :data:`SPECT_FWHM_MM`. The model reads the neighbours' concentrations low
  (their masks' partial volume) and so does not correct the offset, but it
  tells when a neighbour dominates: at 0.5 h it gives the left kidney
  11.3-11.9 mm (the spleen), at 6-72 h 1.4-1.6 mm, where the measured
  offset is 2.0-2.4 mm. Only organs in the weights are modelled: a hot
  neighbour left out of them is not, and its spill-out is read as this
  organ's misregistration (the kidneys alone on the course: the left one
  flagged at every time point, 19-39 mm off);
* the noise leaves the measures able to meet their limits: the offset's
  standard error (the root of its three axes' variances) at most
  :data:`MAX_OFFSET_MM` / :data:`UPTAKE_SIGNIFICANCE` (1 mm), the captured
  fraction's at most (1 - :data:`MIN_CAPTURED_FRACTION`) /
  :data:`UPTAKE_SIGNIFICANCE` (2 %). A significant uptake is not enough:
  both measures read the whole neighbourhood (several times the organ's
  volume) and subtract the background from all of it. The kidney of the
  tests at 5 Bq/ml over 100 with 10 Bq/ml of noise per voxel has a
  significant uptake, yet its centre's standard error is 4-10 mm and its
  offsets 3-10 mm over noise draws (tests/test_organ_activity.py).

The standard errors propagate, linearly, the background voxels' noise (from
their median absolute deviation) and the background median's own error
through each measure, the voxels' noise taken as independent and as large
as the background's. A reconstruction that correlates noise over its
resolution makes the errors larger, by at most the square root of the
voxels in a resolution volume (about 3 on 4.8 mm voxels at 10 mm FWHM), and
an organ hotter than the background is noisier; on the course at 6-72 h the
errors are so far below the gates (offset 0.014-0.065 mm, captured fraction
0.04-0.16 %, uptake 700-4000 standard errors) that neither changes a verdict.

Measured with :func:`alignment_check` on that course, seeds 0-4, all four
organs in the weights (tests/test_dosimetry_alignment.py): registered, no
organ is flagged at any time point; at 0.5 h the kidneys and the liver are
not assessable (the left kidney for its neighbour, and for its noise too:
standard errors 1.2-1.4 mm, 2.0-2.5 %) and the spleen passes (1.1-1.2 mm,
0.95; standard error 0.09 mm); at 6-72 h every organ is judged, offsets
0.4-2.4 mm (the left kidney's 2.0-2.4, the spleen's share), captured
0.93-0.98. A time point misregistered by 10 mm (head-wards, or to the
patient's left) is flagged at 6, 24 or 72 h for every organ: offsets
6.8-11.4 mm (the right kidney's the smallest, 6.8-7.3 mm). At 0.5 h the same
shift leaves the kidneys and the liver not assessable and flags the spleen
alone (9.9-10.4 mm, 83-86 % captured): the early point's registration is
judged by the one organ that stands out at it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage

from dicomio.codes import StructureCode
from dicomio.volume import Volume
from inference.dosimetry.organ_activity import OrganWeights

__all__ = [
    "MAX_OFFSET_MM",
    "MAX_SPILL_OFFSET_MM",
    "MIN_CAPTURED_FRACTION",
    "NEIGHBOURHOOD_MM",
    "SPECT_FWHM_MM",
    "UPTAKE_SIGNIFICANCE",
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
#: Uptake over the local background, in standard errors of that uptake, below which an organ is not
#: judged: the Rose criterion's k = 5 for an object told from noise (A. Rose, "The sensitivity
#: performance of the human eye on an absolute scale", J Opt Soc Am 38:196, 1948).
UPTAKE_SIGNIFICANCE: Final = 5.0
#: Largest centre-of-mass offset the neighbours' spill-out may give a registered organ for it to be judged.
MAX_SPILL_OFFSET_MM: Final = 0.5 * MAX_OFFSET_MM

_FWHM_PER_SIGMA: Final = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Normal-consistency factors: the standard deviation over the median absolute deviation, and the
#: median's standard error over sd / sqrt(n), sqrt(pi / 2).
_SD_PER_MAD: Final = 1.4826
_MEDIAN_ERROR_PER_MEAN_ERROR: Final = math.sqrt(math.pi / 2.0)
_NOT_ASSESSABLE: Final = "not assessable at this time point: "
#: Largest standard errors of the offset and the captured fraction at which an organ is judged: the
#: limit's room (the offset's, the captured fraction's below 1) over UPTAKE_SIGNIFICANCE.
_MAX_OFFSET_ERROR_MM: Final = MAX_OFFSET_MM / UPTAKE_SIGNIFICANCE
_MAX_CAPTURED_ERROR: Final = (1.0 - MIN_CAPTURED_FRACTION) / UPTAKE_SIGNIFICANCE


@dataclass(frozen=True)
class OrganAlignment:
    """One organ's registration with one SPECT.

    An organ is flagged (:attr:`reason`), passed, or not assessable
    (:attr:`not_assessable`): then this SPECT cannot say whether the organ is
    registered, and neither verdict is given.

    Attributes
    ----------
    code : StructureCode
        The organ.
    captured_fraction : float
        Share of the background-subtracted activity of the neighbourhood
        taken in by the extended mask (0 when there is none).
    captured_fraction_error : float or None
        Its standard error from the SPECT's noise; None when there is no activity.
    offset_mm : tuple of float or None
        LPS vector (mm) from the mask's centre to the activity's; None when
        there is no activity above the background around the organ.
    offset_error_mm : float or None
        Its standard error from the SPECT's noise, the root of the three axes'
        variances; None with the offset.
    background_bq_ml : float
        The local background subtracted (0 when the shell is all organs).
    reason : str
        Why the organ is flagged; empty when it is not, and always when it is not assessable.
    not_assessable : str
        Why this time point cannot judge the organ (too little uptake over the
        background, its neighbours' spill-out or the noise outweighing it); empty when it can.
    """

    code: StructureCode
    captured_fraction: float
    captured_fraction_error: float | None
    offset_mm: tuple[float, float, float] | None
    offset_error_mm: float | None
    background_bq_ml: float
    reason: str
    not_assessable: str

    @property
    def misaligned(self) -> bool:
        """Whether the organ is flagged."""
        return bool(self.reason)

    @property
    def assessable(self) -> bool:
        """Whether the SPECT could judge the organ's registration."""
        return not self.not_assessable

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

    @property
    def not_assessable(self) -> tuple[OrganAlignment, ...]:
        """The organs this time point cannot judge."""
        return tuple(organ for organ in self.organs if not organ.assessable)


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
    taken = weights.weights.sum(axis=0, dtype=np.float64)
    organs = tuple(_organ_alignment(index, weights, spect, taken) for index in range(len(weights.structures)))
    return AlignmentCheck(spect.series_instance_uid, organs)


@dataclass(frozen=True)
class _Noise:
    """The SPECT's noise around one organ: its voxels' standard deviation and the background's error."""

    voxel: float
    background: float

    def sum_error(self, weight: np.ndarray) -> float:
        """Standard error of sum(weight x (image - background)), the voxels' noise taken as independent."""
        independent = self.voxel * math.sqrt(float((weight**2).sum()))
        return math.hypot(independent, self.background * float(weight.sum()))


def _organ_alignment(index: int, weights: OrganWeights, spect: Volume, taken: np.ndarray) -> OrganAlignment:
    code = weights.structures[index].code
    spacing = np.array(spect.spacing)
    reach = np.ceil((NEIGHBOURHOOD_MM + SPECT_FWHM_MM) / spacing).astype(int)
    # The box around the organ and its background shell: everything this
    # organ's measures read.
    box = tuple(
        slice(max(0, int(where.min()) - r), int(where.max()) + r + 1)
        for where, r in zip(np.nonzero(weights.fractions[index]), reach, strict=True)
    )
    mask = weights.fractions[index][box].astype(np.float64)
    own = weights.weights[index][box].astype(np.float64)
    others = np.clip(taken[box] - own, 0.0, 1.0)
    distance = ndimage.distance_transform_edt(mask == 0, sampling=spacing)
    shell = (distance > NEIGHBOURHOOD_MM) & (distance <= NEIGHBOURHOOD_MM + SPECT_FWHM_MM)
    shell &= taken[box] == 0
    image = spect.array[box].astype(np.float64)
    background, noise = _background(image[shell])
    # Signed: clipping at the background would turn its noise into a positive floor (module docstring).
    net = image - background
    near = (distance <= NEIGHBOURHOOD_MM) * (1.0 - others)
    position = _positions(box, mask.shape, spect.affine)
    mask_centre = _centre(mask, position)

    total = float((near * net).sum())
    captured, captured_error, offset, offset_error = 0.0, None, None, None
    if total > 0:
        captured = float((own * net).sum()) / total
        captured_error = noise.sum_error(own - captured * near) / total
        centre = _centre(near * net, position)
        offset = tuple(float(v) for v in centre - mask_centre)
        offset_error = math.hypot(*(noise.sum_error(near * (axis - c)) / total for axis, c in zip(
            position, centre, strict=True)))

    def judged(reason: str, not_assessable: str = "") -> OrganAlignment:
        return OrganAlignment(
            code, captured, captured_error, offset, offset_error, background, reason, not_assessable
        )

    uptake, uptake_error, volume = float((mask * net).sum()), noise.sum_error(mask), float(mask.sum())
    if not uptake > UPTAKE_SIGNIFICANCE * uptake_error:
        return judged("", (
            f"{_NOT_ASSESSABLE}too little uptake over the background: {_figure(uptake / volume)} Bq/ml in "
            f"its CT mask over the {_figure(background)} Bq/ml around it, standard error "
            f"{_figure(uptake_error / volume)} Bq/ml ({UPTAKE_SIGNIFICANCE:g} times that needed)"
        ))
    registered = near * _registered_activity(weights, box, net, spacing)
    if not registered.sum() > 0:
        return judged("", f"{_NOT_ASSESSABLE}its neighbours, colder than the background, outweigh its uptake")
    spill = float(np.linalg.norm(_centre(registered, position) - mask_centre))
    if spill > MAX_SPILL_OFFSET_MM:
        return judged("", (
            f"{_NOT_ASSESSABLE}its neighbours' activity would put the centre of the activity around it "
            f"{spill:.1f} mm off the CT mask's even if registered (limit {MAX_SPILL_OFFSET_MM:g} mm): "
            "a misregistration cannot be told from it"
        ))
    if offset is None or captured_error is None or offset_error is None:
        return judged("no activity above the background around it")
    if offset_error > _MAX_OFFSET_ERROR_MM or captured_error > _MAX_CAPTURED_ERROR:
        return judged("", (
            f"{_NOT_ASSESSABLE}the noise outweighs its uptake: standard errors {offset_error:.1f} mm of the "
            f"activity's centre and {captured_error:.1%} of the captured fraction (at most "
            f"{_MAX_OFFSET_ERROR_MM:g} mm and {_MAX_CAPTURED_ERROR:.0%} needed)"
        ))
    return judged(_reason(captured, float(np.linalg.norm(offset))))


def _background(shell: np.ndarray) -> tuple[float, _Noise]:
    """The shell's median (the background) and the noise: its voxels' standard deviation, robustly
    from the median absolute deviation, and the median's standard error; zeros for an empty shell."""
    if shell.size == 0:
        return 0.0, _Noise(0.0, 0.0)
    median = float(np.median(shell))
    voxel = _SD_PER_MAD * float(np.median(np.abs(shell - median)))
    return median, _Noise(voxel, _MEDIAN_ERROR_PER_MEAN_ERROR * voxel / math.sqrt(shell.size))


def _registered_activity(
    weights: OrganWeights, box: tuple[slice, ...], net: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """The net activity in `box` if every organ were registered: each organ's CT mask at its
    mean net concentration over that mask, blurred by the SPECT's resolution."""
    sigma = SPECT_FWHM_MM / _FWHM_PER_SIGMA / spacing
    model = np.zeros(net.shape)
    for fractions in weights.fractions:
        part = fractions[box].astype(np.float64)
        volume = float(part.sum())
        if volume > 0:
            model += float((part * net).sum()) / volume * ndimage.gaussian_filter(part, sigma, mode="nearest")
    return model


def _positions(box: tuple[slice, ...], shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Patient coordinates (mm, LPS) of the voxels of `box`: ``[axis, slice, row, column]``."""
    index = np.indices(shape, dtype=np.float64) + np.array([s.start for s in box])[:, None, None, None]
    return np.tensordot(affine[:3, :3], index, axes=1) + affine[:3, 3][:, None, None, None]


def _centre(mass: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Centre of `mass` in patient mm."""
    return np.tensordot(position, mass, axes=3) / float(mass.sum())


def _figure(value: float) -> str:
    """`value` to three significant figures, without an exponent."""
    return np.format_float_positional(value, precision=3, fractional=False, trim="-")


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
