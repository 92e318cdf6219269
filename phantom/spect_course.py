"""A synthetic 177Lu-DOTATOC dosimetry course with known truth: SPECT/CT time points as Part-10 files.

Organ dosimetry after radionuclide therapy reads several quantitative
SPECT/CT studies of one patient, one administration, days apart. To test it
against numbers known in advance, this module writes such a course for the
torso phantom of :mod:`phantom.anatomy` (it has left and right kidneys, a
liver and a spleen) and returns, with the paths, what a perfect analysis
would find: each organ's CT volume and mass, its activity at every time
point, its bi-exponential kinetics, the analytic time-integrated activity
and the mean absorbed dose by local deposition of 177Lu's electron energy.

Each time point is a study of its own (new Study Instance UID, its own Frame
of Reference shared by the CT and the SPECT, as a SPECT/CT scanner writes):

* a low-dose CT, 128x128 x 60 slices of 3 mm (3.9 mm pixels), one CT Image
  file per slice; its CT numbers are the anatomy's, an arterial-phase table,
  which no SPECT/CT protocol would give but which no dosimetry step reads;
* a quantitative SPECT, one multi-frame NM Image file (RECON TOMO), 128x128 x
  40 voxels of 4.8 mm, stored values times the Real World Value Mapping (and
  Rescale) slope in Bq/ml, Units BQML, with the Radiopharmaceutical
  Information Sequence of the administration;
* a physician's SEG on the CT (highdicom, BINARY, MANUAL) of the organs of
  the course, the true masks: the kidneys and the spleen, the organs at risk
  of PRRT, and the liver; the built-in segmenter has no kidneys.

How the SPECT is made: every organ holds its activity uniformly, nothing at
the administration, then taken up and washed out (:class:`BiExponential`);
the whole body holds all the administered activity at first and excretes it
(:class:`WholeBody`); the rest of the body (every other region of the
anatomy, the liver lesion included) holds what the organs do not, uniformly
over the whole 600 mm torso. The concentration is painted on a grid of 2.4 mm (each SPECT voxel
split in 2x2x2), reaching 4 sigma of the PSF beyond the SPECT's ends so that
activity outside its axial field of view blurs in as it would; it is blurred
by a Gaussian PSF (11 mm FWHM by default), averaged onto the SPECT voxels and
given Poisson noise (the values being the mean over the 20 min acquisition,
not decay corrected, as a scanner writes them): a voxel counts Poisson(c / q) quanta of q =
:data:`NOISE_BQ_PER_ML_PER_COUNT` (13-14 % standard deviation in a kidney at
72 h, 26 % in the background then, 8 % at 0.5 h). The blur and the 4.8 mm
voxels keep 83-86 % of a kidney's activity inside its own CT mask resampled
to the SPECT (88 % with a 7 mm PSF), the rest spilling out: what a recovery
method has to win back. A misregistered time point paints the whole
anatomy shifted in the SPECT only, its CT and SEG staying in place.

Truth counted on which grid: an organ's volume (hence mass and dose) is its
voxels on the CT grid, the volume a CT segmentation gives; its activity is
the kinetics exactly, the SPECT's concentration in it being that activity
over the organ's volume on the 2.4 mm grid.

Cost, measured on the 2-core build machine: 2.5 s and 15 MB for the four
default time points; a misregistered one adds a second (its own painting).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import UID, NuclearMedicineImageStorage, generate_uid
from scipy import constants, ndimage

from dicomio.codes import structure_code
from dicomio.volume import Volume
from inference.dosimetry.nuclides import Nuclide, decay_constant_per_hour, nuclide
from phantom.anatomy import PATIENT, STRUCTURE_REGIONS, AxialGrid, ct_phantom
from phantom.ct_files import CtTechnique, ds_text, save_part10, write_ct_slices
from phantom.study import WrittenSeries, da_text, dt_text, tm_text

__all__ = [
    "ADMINISTERED_ACTIVITY_MBQ",
    "INJECTION",
    "KINETICS",
    "LUTETIUM_177",
    "NOISE_BQ_PER_ML_PER_COUNT",
    "BiExponential",
    "CourseTruth",
    "OrganKinetics",
    "OrganTruth",
    "TimePoint",
    "WholeBody",
    "write_course",
]

LUTETIUM_177: Final[Nuclide] = nuclide("Lu-177")

#: One cycle of PRRT: 7.4 GBq (200 mCi) infused at 09:00.
ADMINISTERED_ACTIVITY_MBQ: Final = 7400.0
INJECTION: Final = datetime(2024, 5, 6, 9, 0, 0)

#: Poisson quantum of the SPECT noise, Bq/ml per count.
NOISE_BQ_PER_ML_PER_COUNT: Final = 1000.0
#: The SPECT acquisition: 60 views of 20 s per head (two heads, 360 degrees),
#: 20 minutes. Not decay corrected, its values are the mean activity over that
#: time: the activity at the start times this (physical decay; the organs'
#: clearance over 20 minutes is left out).
_VIEWS: Final = 60
_VIEW_S: Final = 20.0
_DECAYS_IN_ACQUISITION: Final = LUTETIUM_177.decay_constant_per_hour * _VIEWS * _VIEW_S / 3600.0
_ACQUISITION_DECAY: Final = -math.expm1(-_DECAYS_IN_ACQUISITION) / _DECAYS_IN_ACQUISITION
#: The resolution of a 177Lu SPECT reconstruction with resolution recovery.
_DEFAULT_PSF_FWHM_MM: Final = 11.0
_FWHM_PER_SIGMA: Final = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: The PSF's kernel reaches 4 sigma; the painting reaches as far beyond the SPECT's ends.
_TRUNCATE_SIGMAS: Final = 4.0


@dataclass(frozen=True)
class BiExponential:
    """An organ's activity, uptake then washout: A(t) = A0 (exp(-lambda_w t) - exp(-lambda_u t)),
    t in hours after the administration.

    Zero at the administration (the radiopharmaceutical reaches the organ through
    the blood), maximal some hours later, then washed out: the shape of the
    "bi" model of inference/dosimetry/time_activity.py, so that a fit can find
    the truth and the course tests the imaging chain, not the model's reach.

    Attributes
    ----------
    amplitude_mbq : float
        A0 (MBq).
    washout_half_life_h, uptake_half_life_h : float
        ln 2 / lambda_w and ln 2 / lambda_u, effective (physical decay
        included): at most the nuclide's half-life, the uptake the shorter.
    """

    amplitude_mbq: float
    washout_half_life_h: float
    uptake_half_life_h: float

    def __post_init__(self) -> None:
        if not 0.0 < self.uptake_half_life_h < self.washout_half_life_h:
            raise ValueError(
                f"uptake half-life {self.uptake_half_life_h} h must be positive and shorter than the "
                f"washout's {self.washout_half_life_h} h, or the activity would be negative"
            )

    @property
    def decay_constants_per_h(self) -> tuple[float, float]:
        """(lambda_w, lambda_u)."""
        return (
            decay_constant_per_hour(self.washout_half_life_h),
            decay_constant_per_hour(self.uptake_half_life_h),
        )

    def activity_mbq(self, hours: float) -> float:
        washout, uptake = self.decay_constants_per_h
        return self.amplitude_mbq * (math.exp(-washout * hours) - math.exp(-uptake * hours))

    @property
    def time_integrated_activity_mbq_h(self) -> float:
        """The integral from 0 to infinity: A0 (1 / lambda_w - 1 / lambda_u)."""
        washout, uptake = self.decay_constants_per_h
        return self.amplitude_mbq * (1.0 / washout - 1.0 / uptake)


@dataclass(frozen=True)
class WholeBody:
    """The activity in the whole body: all of it at the administration, then excreted in two
    phases, A(t) = sum_i a_i exp(-lambda_i t) with effective constants lambda_i.

    The organs hold part of it; the rest of the body holds what they do not
    (:meth:`CourseTruth.remainder_mbq`).
    """

    amplitudes_mbq: tuple[float, float]
    half_lives_h: tuple[float, float]

    def activity_mbq(self, hours: float) -> float:
        return sum(
            a * math.exp(-decay_constant_per_hour(half_life) * hours)
            for a, half_life in zip(self.amplitudes_mbq, self.half_lives_h, strict=True)
        )


@dataclass(frozen=True)
class OrganKinetics:
    """An organ's A0 as a fraction of the administered activity, its effective uptake and washout
    half-lives (:class:`BiExponential`), and the density that turns its CT volume into mass."""

    name: str
    fraction: float
    uptake_half_life_h: float
    washout_half_life_h: float
    density_g_per_ml: float


#: Kidneys: uptake with a 1 h half-time (the tubular reabsorption of the
#: filtered peptide; the activity peaks about 6 h after the administration),
#: washout with a 49 h effective half-life (the 40-60 h typical of
#: somatostatin analogues in the kidneys). The right kidney gets 0.39 Gy/GBq
#: (the left, which the spleen indents to 131 ml, 0.46 with the same
#: activity), close to the 0.37 Gy/GBq mean that Staanum et al. report for
#: [177Lu]Lu-DOTATOC ("Practical kidney dosimetry in peptide receptor
#: radionuclide therapy using [177Lu]Lu-DOTATOC and [177Lu]Lu-DOTATATE with
#: focus on uncertainty estimates", EJNMMI Physics 8:78, 2021, abstract).
#: That uptake-washout function is the one the EANM guidance lists for organs
#: fed from the blood (Sjogreen Gleisner et al., "EANM dosimetry committee
#: recommendations for dosimetry of 177Lu-labelled somatostatin-receptor- and
#: PSMA-targeting ligands", EJNMMI 49:1778, 2022). Liver and spleen take the
#: peptide up faster (receptors in contact with the blood; half-time 0.5 h)
#: and keep it longer (57 h); the liver (0.22 Gy/GBq) and the spleen (0.91
#: Gy/GBq) are set below what "Dosimetric analyses of kidneys, liver,
#: spleen, pituitary gland, and neuroendocrine tumors of patients treated
#: with 177Lu-DOTATATE" (Clinical Nuclear Medicine 38(3), 2013, abstract)
#: reports for DOTATATE (liver 0.27, spleen 1.17 mGy/MBq), as DOTATOC's are
#: lower. The half-lives are this phantom's choice within those ranges: a
#: plausible patient, not a cohort's mean. Density: 1.06 g/ml, the issue's
#: figure for kidneys, used for all three organs.
KINETICS: Final[tuple[OrganKinetics, ...]] = (
    OrganKinetics("kidney_left", 0.0108, 1.0, 49.0, 1.06),
    OrganKinetics("kidney_right", 0.0108, 1.0, 49.0, 1.06),
    OrganKinetics("liver", 0.0387, 0.5, 57.0, 1.06),
    OrganKinetics("spleen", 0.0229, 0.5, 57.0, 1.06),
)
#: The whole body: most of the administered activity excreted in the urine
#: within hours, a quarter retained for days (whole-body retention 19 % at
#: 24 h). Its slow phase clears no faster than any organ, and its amplitude
#: exceeds the organs' A0 together, so the rest of the body never holds less
#: than nothing.
_WHOLE_BODY_SLOW_FRACTION: Final = 0.25
_WHOLE_BODY_HALF_LIVES_H: Final = (1.5, 60.0)

# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------

#: The SPECT/CT is centred on the kidneys, liver and spleen (z = 150..330 mm).
_AXIAL_CENTRE_MM: Final = 240.0


@dataclass(frozen=True)
class _PlacedGrid(AxialGrid):
    """An :class:`AxialGrid` centred at ``centre_mm`` (x, y, z in LPS mm) instead
    of the phantom's middle: a scan of the upper abdomen, or (shifted) the
    anatomy as a misregistered SPECT sees it."""

    centre_mm: tuple[float, float, float] = (0.0, 0.0, _AXIAL_CENTRE_MM)

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, y, x = super().axes_mm()
        cx, cy, cz = self.centre_mm
        return z - z.mean() + cz, y + cy, x + cx


_CT_GRID: Final = _PlacedGrid((60, 128, 128), (3.0, 3.90625, 3.90625))
_SPECT_SHAPE: Final = (40, 128, 128)
_SPECT_VOXEL_MM: Final = 4.8
#: Each SPECT voxel is painted as 2x2x2 voxels before the blur.
_SUBDIVISION: Final = 2
#: A grid of the whole torso (4 mm) on which the remainder's volume is counted.
_TORSO_GRID: Final = AxialGrid((150, 128, 128), (4.0, 3.90625, 3.90625))


def _spect_grid() -> _PlacedGrid:
    return _PlacedGrid(_SPECT_SHAPE, (_SPECT_VOXEL_MM,) * 3)


def _emission_grid(pad: int, shift_mm: tuple[float, float, float]) -> _PlacedGrid:
    """The painting grid: the SPECT's voxels split in 2x2x2, `pad` fine slices beyond
    each end, sampling the anatomy moved by `shift_mm`."""
    slices, rows, columns = _SPECT_SHAPE
    cx, cy, cz = shift_mm
    return _PlacedGrid(
        (_SUBDIVISION * slices + 2 * pad, _SUBDIVISION * rows, _SUBDIVISION * columns),
        (_SPECT_VOXEL_MM / _SUBDIVISION,) * 3,
        centre_mm=(-cx, -cy, _AXIAL_CENTRE_MM - cz),
    )


# ---------------------------------------------------------------------------
# Truth
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OrganTruth:
    """What a perfect analysis of one organ finds.

    Attributes
    ----------
    name : str
        As in dicomio/codes.py.
    volume_ml : float
        Its voxels on the CT grid times the voxel volume.
    density_g_per_ml, mass_g : float
        mass = volume x density.
    kinetics : BiExponential
    activity_mbq : tuple of float
        The true activity at each time point (:attr:`CourseTruth.time_points` order).
    concentration_bq_per_ml : tuple of float
        The SPECT's concentration in it before blur and noise, at each time point
        (of a misregistered one within 1 %: its shifted organ covers other voxels).
    time_integrated_activity_mbq_h : float
        The kinetics' integral from 0 to infinity.
    absorbed_dose_gy : float
        Mean absorbed dose, all electron energy of every decay absorbed in the organ.
    ct_mask : numpy.ndarray
        Its bool mask on the CT grid ``[slice, row, column]``.
    """

    name: str
    volume_ml: float
    density_g_per_ml: float
    mass_g: float
    kinetics: BiExponential
    activity_mbq: tuple[float, ...]
    concentration_bq_per_ml: tuple[float, ...]
    time_integrated_activity_mbq_h: float
    absorbed_dose_gy: float
    ct_mask: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class TimePoint:
    """One SPECT/CT study of the course, as written.

    Attributes
    ----------
    index : int
        Its place in the course (0 first); seeds its noise.
    hours : float
        After the administration, when the SPECT starts (the time its Bq/ml refer to).
    later : bool
        One of ``extra_points``: written with the others, to be sent after them.
    acquisition : datetime
        The SPECT's Acquisition DateTime; the CT follows 20 minutes later.
    study_instance_uid, frame_of_reference_uid : str
    ct, spect : WrittenSeries
    seg : pathlib.Path
        The physician's SEG of the kidneys, spleen and liver, on the CT.
    misregistration_mm : tuple of float
        How far (x, y, z, LPS) the SPECT's anatomy lies from the CT's; zeros but for the misregistered point.
    spect_activity_mbq : float
        The activity painted inside the SPECT's field of view, before blur and noise, at
        the acquisition start (the image holds its mean over the acquisition, 0.07 % less).
    """

    index: int
    hours: float
    later: bool
    acquisition: datetime
    study_instance_uid: str
    frame_of_reference_uid: str
    ct: WrittenSeries
    spect: WrittenSeries
    seg: Path
    misregistration_mm: tuple[float, float, float]
    spect_activity_mbq: float


@dataclass(frozen=True, eq=False)
class CourseTruth:
    """A written course and its truth.

    Attributes
    ----------
    nuclide : Nuclide
    administered_activity_mbq : float
    injection : datetime
    psf_fwhm_mm : float
        The Gaussian PSF the SPECT was blurred with.
    organs : tuple of OrganTruth
        In :data:`KINETICS` order.
    whole_body : WholeBody
        The activity in the whole body; the rest of the body (whole torso) holds what the organs
        do not (:meth:`remainder_mbq`).
    time_points : tuple of TimePoint
        The course's time points, then the extra ones.
    ct_affine, spect_affine : numpy.ndarray
        ``[slice, row, column]`` to LPS mm, the same at every time point.
    """

    nuclide: Nuclide
    administered_activity_mbq: float
    injection: datetime
    psf_fwhm_mm: float
    organs: tuple[OrganTruth, ...]
    whole_body: WholeBody
    time_points: tuple[TimePoint, ...]
    ct_affine: np.ndarray = field(repr=False)
    spect_affine: np.ndarray = field(repr=False)

    def organ(self, name: str) -> OrganTruth:
        for organ in self.organs:
            if organ.name == name:
                return organ
        raise KeyError(f"the course has no organ {name!r}; it has {', '.join(o.name for o in self.organs)}")

    def remainder_mbq(self, hours: float) -> float:
        """The activity in the rest of the body: the whole body's less the organs'."""
        return self.whole_body.activity_mbq(hours) - sum(o.kinetics.activity_mbq(hours) for o in self.organs)


def _kinetics(organ: OrganKinetics) -> BiExponential:
    return BiExponential(
        amplitude_mbq=organ.fraction * ADMINISTERED_ACTIVITY_MBQ,
        washout_half_life_h=organ.washout_half_life_h,
        uptake_half_life_h=organ.uptake_half_life_h,
    )


def _whole_body() -> WholeBody:
    slow = _WHOLE_BODY_SLOW_FRACTION * ADMINISTERED_ACTIVITY_MBQ
    return WholeBody((ADMINISTERED_ACTIVITY_MBQ - slow, slow), _WHOLE_BODY_HALF_LIVES_H)


def _absorbed_dose_gy(time_integrated_mbq_h: float, mass_g: float) -> float:
    """MIRD self-dose with local deposition: decays x electron energy per decay / mass."""
    decays = time_integrated_mbq_h * 1e6 * 3600.0
    joules = decays * LUTETIUM_177.electron_energy_mev_per_decay * 1e6 * constants.electron_volt
    return joules / (mass_g / 1000.0)


# ---------------------------------------------------------------------------
# The SPECT's emission, one blurred image per compartment
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Emission:
    """Each compartment's indicator blurred by the PSF and averaged onto the SPECT grid,
    and what the unblurred indicator holds: the SPECT's expected Bq/ml is the sum of
    their products with the compartments' concentrations.

    ``compartments`` are the organs of :data:`KINETICS`, then the remainder.
    """

    blurred: tuple[np.ndarray, ...]
    volume_ml: tuple[float, ...]
    in_view_ml: tuple[float, ...]


@functools.lru_cache(maxsize=4)
def _emission(psf_fwhm_mm: float, shift_mm: tuple[float, float, float]) -> _Emission:
    """The emission of the anatomy shifted by `shift_mm`; kept for the next course in
    the process (a test or benchmark writes several), as it takes a second."""
    fine_mm = _SPECT_VOXEL_MM / _SUBDIVISION
    sigma_voxels = psf_fwhm_mm / _FWHM_PER_SIGMA / fine_mm
    pad = math.ceil(_TRUNCATE_SIGMAS * sigma_voxels)
    grid = _emission_grid(pad, shift_mm)
    regions = ct_phantom(grid).regions
    voxel_ml = grid.voxel_volume_ml
    indicators = [_region_mask(regions, organ.name) for organ in KINETICS]
    body = _region_mask(regions, "body")
    indicators.append(body & ~np.logical_or.reduce(indicators))
    blurred, volume, in_view = [], [], []
    for index, indicator in enumerate(indicators):
        view = indicator[pad:-pad]
        if index < len(KINETICS) and view.sum() != indicator.sum():
            raise ValueError(
                f"{KINETICS[index].name} shifted by {shift_mm} mm leaves the SPECT's axial field of view"
            )
        blurred.append(_block_mean(_blur(indicator, sigma_voxels)[pad:-pad]))
        volume.append(float(indicator.sum()) * voxel_ml)
        in_view.append(float(view.sum()) * voxel_ml)
    return _Emission(tuple(blurred), tuple(volume), tuple(in_view))


def _blur(indicator: np.ndarray, sigma_voxels: float) -> np.ndarray:
    """The Gaussian blur of `indicator` (zero outside the array), computed on its bounding box
    grown by the kernel's reach: exactly the whole array's, ten times faster for an organ."""
    reach = int(_TRUNCATE_SIGMAS * sigma_voxels + 0.5)
    (box,) = ndimage.find_objects(indicator.astype(np.uint8))
    grown = tuple(
        slice(max(part.start - reach, 0), min(part.stop + reach, size))
        for part, size in zip(box, indicator.shape, strict=True)
    )
    smooth = np.zeros(indicator.shape, dtype=np.float32)
    smooth[grown] = ndimage.gaussian_filter(
        indicator[grown].astype(np.float32), sigma_voxels, mode="constant", truncate=_TRUNCATE_SIGMAS
    )
    return smooth


def _region_mask(regions: np.ndarray, name: str) -> np.ndarray:
    return np.isin(regions, np.array(sorted(int(r) for r in STRUCTURE_REGIONS[name]), dtype=np.uint8))


def _block_mean(fine: np.ndarray) -> np.ndarray:
    """The mean of each 2x2x2 block: the fine grid's values on the SPECT's voxels."""
    n = _SUBDIVISION
    slices, rows, columns = (size // n for size in fine.shape)
    return fine.reshape(slices, n, rows, n, columns, n).mean(axis=(1, 3, 5), dtype=np.float64)


# ---------------------------------------------------------------------------
# The course
# ---------------------------------------------------------------------------


def write_course(
    out_dir: str | os.PathLike[str],
    *,
    time_points_hours: Sequence[float] = (0.5, 6.0, 24.0, 72.0),
    extra_points: Sequence[float] = (),
    seed: int = 0,
    misregister: tuple[int, tuple[float, float, float]] | None = None,
    psf_fwhm_mm: float = _DEFAULT_PSF_FWHM_MM,
) -> CourseTruth:
    """Write a SPECT/CT course of the phantom and return its truth.

    Each time point goes to ``out_dir/<index>_<hours>h/`` as ``ct/CT*.dcm``,
    ``spect/NM.dcm`` and ``seg/SEG.dcm``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Created if missing; must not hold a course already.
    time_points_hours : sequence of float
        Hours after the administration, strictly increasing.
    extra_points : sequence of float
        Later time points (after the last of `time_points_hours`), written alike
        and marked :attr:`TimePoint.later`: the scan that updates a course.
        A time point is the same whether or not extra points follow it.
    seed : int
        Seeds the noise and the UIDs; each time point draws from (seed, index).
    misregister : (int, (float, float, float)), optional
        Time point index and shift (x, y, z, LPS mm) of its SPECT relative to its CT.
    psf_fwhm_mm : float
        The SPECT's resolution.

    Raises
    ------
    ValueError
        Time points out of order or not after the administration, a misregistration
        of a time point the course lacks or moving an organ out of view.
    FileExistsError
        If a time point's folder already holds files.
    """
    hours = [float(h) for h in (*time_points_hours, *extra_points)]
    if not time_points_hours:
        raise ValueError("a course needs at least one time point")
    if hours[0] <= 0 or any(b <= a for a, b in zip(hours, hours[1:], strict=False)):
        raise ValueError(
            f"time points {tuple(time_points_hours)} h then extra points {tuple(extra_points)} h must be "
            "after the administration and strictly increasing"
        )
    if not psf_fwhm_mm > 0:
        raise ValueError(f"PSF FWHM must be positive, got {psf_fwhm_mm} mm")
    shifts = [(0.0, 0.0, 0.0)] * len(hours)
    if misregister is not None:
        index, shift = misregister
        if not 0 <= index < len(hours):
            raise ValueError(f"misregister names time point {index}; the course has 0..{len(hours) - 1}")
        shifts[index] = (float(shift[0]), float(shift[1]), float(shift[2]))
    out = Path(out_dir)
    folders = [out / f"{index:02d}_{h:g}h" for index, h in enumerate(hours)]
    for folder in folders:
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} already holds files: write the course to an empty folder")

    anatomy = ct_phantom(_CT_GRID)
    torso = ct_phantom(_TORSO_GRID).truth
    organ_kinetics = [_kinetics(organ) for organ in KINETICS]
    whole_body = _whole_body()
    remainder_ml = torso["body"].volume_ml - sum(torso[organ.name].volume_ml for organ in KINETICS)
    emissions = {(0.0, 0.0, 0.0): _emission(psf_fwhm_mm, (0.0, 0.0, 0.0))}
    for shift in shifts:
        if shift not in emissions:
            emissions[shift] = _emission(psf_fwhm_mm, shift)
    unshifted = emissions[(0.0, 0.0, 0.0)]
    contoured = np.zeros(_CT_GRID.shape, dtype=np.uint8)
    for number, name in _SEG_STRUCTURES:
        contoured[anatomy.mask(name)] = number

    def concentrations(t: float, emission: _Emission) -> list[float]:
        """Bq/ml of each compartment (organs, remainder) at `t` h."""
        organ_ml = emission.volume_ml[: len(KINETICS)]
        organs = [k.activity_mbq(t) * 1e6 / ml for k, ml in zip(organ_kinetics, organ_ml, strict=True)]
        remainder = whole_body.activity_mbq(t) - sum(k.activity_mbq(t) for k in organ_kinetics)
        return [*organs, remainder * 1e6 / remainder_ml]

    points = []
    for index, (t, folder, shift) in enumerate(zip(hours, folders, shifts, strict=True)):
        emission = emissions[shift]
        bq_ml = concentrations(t, emission)
        in_view_bq = sum(c * ml for c, ml in zip(bq_ml, emission.in_view_ml, strict=True))
        points.append(
            _write_point(
                folder,
                index=index,
                hours=t,
                later=index >= len(time_points_hours),
                seed=seed,
                shift=shift,
                contoured=contoured,
                expected=sum(c * image for c, image in zip(bq_ml, emission.blurred, strict=True)),
                spect_activity_mbq=in_view_bq / 1e6,
            )
        )
    organs = []
    for position, (organ, kinetics) in enumerate(zip(KINETICS, organ_kinetics, strict=True)):
        volume_ml = anatomy.truth[organ.name].volume_ml
        mass_g = volume_ml * organ.density_g_per_ml
        tia = kinetics.time_integrated_activity_mbq_h
        organs.append(
            OrganTruth(
                name=organ.name,
                volume_ml=volume_ml,
                density_g_per_ml=organ.density_g_per_ml,
                mass_g=mass_g,
                kinetics=kinetics,
                activity_mbq=tuple(kinetics.activity_mbq(t) for t in hours),
                concentration_bq_per_ml=tuple(concentrations(t, unshifted)[position] for t in hours),
                time_integrated_activity_mbq_h=tia,
                absorbed_dose_gy=_absorbed_dose_gy(tia, mass_g),
                ct_mask=anatomy.mask(organ.name),
            )
        )
    return CourseTruth(
        nuclide=LUTETIUM_177,
        administered_activity_mbq=ADMINISTERED_ACTIVITY_MBQ,
        injection=INJECTION,
        psf_fwhm_mm=float(psf_fwhm_mm),
        organs=tuple(organs),
        whole_body=whole_body,
        time_points=tuple(points),
        ct_affine=_CT_GRID.affine(),
        spect_affine=_spect_grid().affine(),
    )


def _uid(*parts: object) -> UID:
    """A UID derived from `parts`: the same course always has the same UIDs."""
    return generate_uid(entropy_srcs=["segnode SPECT/CT course", *(repr(part) for part in parts)])


def _write_point(
    folder: Path,
    *,
    index: int,
    hours: float,
    later: bool,
    seed: int,
    shift: tuple[float, float, float],
    contoured: np.ndarray,
    expected: np.ndarray,
    spect_activity_mbq: float,
) -> TimePoint:
    acquisition = INJECTION + timedelta(hours=hours)
    study = _uid("study", seed, index)
    frame_of_reference = _uid("frame of reference", study)
    # The CT's noise differs from one time point to the next, as its patient's does.
    ct_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    ct = ct_phantom(_CT_GRID, seed=ct_seed).volume
    context = _Context(index, hours, acquisition, study, frame_of_reference)
    ct_series = _uid("series", study, "CT")
    ct_datasets = _write_ct(folder / "ct", ct, context, ct_series)
    rng = np.random.default_rng([seed, index, 1])
    counts = rng.poisson(expected * _ACQUISITION_DECAY / NOISE_BQ_PER_ML_PER_COUNT)
    spect_series = _uid("series", study, "NM")
    spect_path = _write_spect(folder / "spect", counts, context, spect_series)
    seg_path = _write_seg(folder / "seg" / "SEG.dcm", ct_datasets, contoured, context)
    return TimePoint(
        index=index,
        hours=hours,
        later=later,
        acquisition=acquisition,
        study_instance_uid=study,
        frame_of_reference_uid=frame_of_reference,
        ct=WrittenSeries(ct_series, "CT", tuple(sorted(Path(ds.filename) for ds in ct_datasets))),
        spect=WrittenSeries(spect_series, "NM", (spect_path,)),
        seg=seg_path,
        misregistration_mm=shift,
        spect_activity_mbq=spect_activity_mbq,
    )


# ---------------------------------------------------------------------------
# DICOM files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    index: int
    hours: float
    acquisition: datetime
    study_instance_uid: str
    frame_of_reference_uid: str

    @property
    def ct_time(self) -> datetime:
        return self.acquisition + timedelta(minutes=20)


def _common(context: _Context, modality: str, series_time: datetime) -> Dataset:
    """Patient, study, series, frame of reference and equipment, shared by the CT, SPECT and SEG."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = da_text(context.acquisition)
    ds.StudyTime = tm_text(context.acquisition)
    ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = da_text(series_time)
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = tm_text(series_time)
    ds.AccessionNumber = f"LU177C1P{context.index + 1}"
    ds.Modality = modality
    ds.Manufacturer = "segnode"
    ds.ManufacturerModelName = "segnode SPECT/CT course phantom"
    ds.InstitutionName = "segnode"
    ds.StationName = "PHANTOM"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"SPECT/CT 177Lu-DOTATOC cycle 1, {context.hours:g} h p.i."
    ds.PatientName = PATIENT.name
    ds.PatientID = PATIENT.patient_id
    ds.PatientBirthDate = PATIENT.birth_date
    ds.PatientSex = PATIENT.sex
    ds.PatientAge = f"{context.acquisition.year - int(PATIENT.birth_date[:4]):03d}Y"
    ds.PatientSize = ds_text(PATIENT.height_m)
    ds.PatientWeight = ds_text(PATIENT.weight_kg)
    ds.BodyPartExamined = "ABDOMEN"
    ds.StudyInstanceUID = context.study_instance_uid
    ds.StudyID = str(context.index + 1)
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = context.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    return ds


#: The SPECT/CT's low-dose CT, for attenuation correction and localisation.
_CT_TECHNIQUE: Final = CtTechnique(tube_current_ma=30, kernel="B08s")


def _write_ct(folder: Path, volume: Volume, context: _Context, series: str) -> list[Dataset]:
    """One CT Image file per slice (:func:`phantom.ct_files.write_ct_slices`); returns the
    datasets in array order."""

    def header(index: int) -> Dataset:
        ds = _common(context, "CT", context.ct_time)
        ds.SOPClassUID = volume.sources[index].sop_class_uid
        ds.SOPInstanceUID = _uid("instance", series, index)
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 2
        ds.SeriesDescription = "CT low dose AC 3 mm"
        return ds

    return write_ct_slices(folder, volume, _CT_TECHNIQUE, header)


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _radiopharmaceutical() -> Dataset:
    """NM Isotope Module's Radiopharmaceutical Information Sequence item (PS3.3 C.8.4.10).

    The radionuclide is coded from PS3.16 CID 18 "Radiopharmaceutical Isotope"
    (SCT 447553000 ^177^Lutetium; CID 4020 is the PET radionuclides, without
    177Lu). CID 25 has no code for DOTATOC, so the radiopharmaceutical is
    named in text only. Radionuclide Total Dose is in MBq in an NM image
    (C.8.4.10.1.7), where PET's is in Bq.
    """
    item = Dataset()
    item.Radiopharmaceutical = "177Lu-DOTATOC"
    item.RadiopharmaceuticalRoute = "Intravenous route"
    item.RadiopharmaceuticalStartDateTime = dt_text(INJECTION)
    item.RadiopharmaceuticalStartTime = tm_text(INJECTION)
    item.RadionuclideTotalDose = ds_text(ADMINISTERED_ACTIVITY_MBQ)
    item.RadionuclideHalfLife = ds_text(LUTETIUM_177.half_life_hours * 3600.0)
    item.RadionuclideCodeSequence = [_code(LUTETIUM_177.code)]
    item.AdministrationRouteCodeSequence = [_code(codes.SCT.IntravenousRoute)]
    return item


#: The 208 keV photopeak of 177Lu, a 20 % window.
_PHOTOPEAK_KEV: Final = (187.2, 228.8)
#: Largest stored value: unsigned 16-bit.
_STORED_MAX: Final = 65535


def _write_spect(folder: Path, counts: np.ndarray, context: _Context, series: str) -> Path:
    """The SPECT as one NM Image (RECON TOMO) file, frames from the feet up.

    `counts` are each voxel's noise quanta. Frame k lies at the Detector
    Information item's Image Position plus k Spacing Between Slices along the
    normal of its Image Orientation (+z). dciodvfy warns of five attributes
    outside the NM IOD that vendors add and readers look for: Units,
    Rescale Slope and Intercept, and the Radiopharmaceutical Start DateTime
    and Radionuclide Half Life of PET's sequence (the NM one has a start
    time without a date).
    """
    bq_ml = counts * NOISE_BQ_PER_ML_PER_COUNT
    slices, rows, columns = counts.shape
    ds = _common(context, "NM", context.acquisition)
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.SOPInstanceUID = _uid("instance", series, 0)
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 3
    ds.SeriesDescription = "SPECT 177Lu quantitative OSEM AC SC RR"
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = dt_text(context.acquisition)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.update(_patient_orientation())
    ds.AcquisitionContextSequence = []
    # Image Pixel and NM Image Pixel: unsigned 16 bits, all of them stored.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [ds_text(_SPECT_VOXEL_MM), ds_text(_SPECT_VOXEL_MM)]
    # Multi-frame and NM Multi-frame: one frame per slice.
    ds.NumberOfFrames = slices
    ds.FrameIncrementPointer = [Tag("SliceVector")]
    ds.SliceVector = list(range(1, slices + 1))
    ds.NumberOfSlices = slices
    ds.NumberOfEnergyWindows = 1
    ds.NumberOfDetectors = 2
    ds.NumberOfRotations = 1
    # NM Image.
    ds.CountsAccumulated = int(counts.sum())
    ds.CorrectedImage = ["ATTN", "SCAT"]
    # NM Isotope.
    window = Dataset()
    limits = Dataset()
    limits.EnergyWindowLowerLimit = ds_text(_PHOTOPEAK_KEV[0])
    limits.EnergyWindowUpperLimit = ds_text(_PHOTOPEAK_KEV[1])
    window.EnergyWindowRangeSequence = [limits]
    window.EnergyWindowName = "Lu177 208 keV"
    ds.EnergyWindowInformationSequence = [window]
    ds.RadiopharmaceuticalInformationSequence = [_radiopharmaceutical()]
    # NM Detector: two heads; the reconstruction's geometry.
    affine = _spect_grid().affine()
    first = affine @ np.array([0, 0, 0, 1.0])
    detectors = []
    for _ in range(2):
        detector = Dataset()
        detector.CollimatorGridName = "MEGP"
        detector.CollimatorType = "PARA"
        detector.ImagePositionPatient = [ds_text(v) for v in first[:3]]
        detector.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        detectors.append(detector)
    ds.DetectorInformationSequence = detectors
    # NM TOMO Acquisition: 2 x 60 views of 20 s over 360 degrees.
    rotation = Dataset()
    rotation.StartAngle = "0"
    rotation.AngularStep = "6"
    rotation.RotationDirection = "CW"
    rotation.ScanArc = "360"
    rotation.ActualFrameDuration = int(_VIEW_S * 1000)
    rotation.NumberOfFramesInRotation = _VIEWS
    ds.RotationInformationSequence = [rotation]
    ds.TypeOfDetectorMotion = "STEP AND SHOOT"
    # NM Reconstruction.
    ds.SpacingBetweenSlices = ds_text(_SPECT_VOXEL_MM)
    ds.SliceThickness = ds_text(_SPECT_VOXEL_MM)
    ds.ReconstructionDiameter = ds_text(columns * _SPECT_VOXEL_MM)
    ds.ConvolutionKernel = "OSEM 6i10s"
    # Quantitation: Bq/ml = stored x slope, said three ways (Units as PET
    # writes it, Rescale and the Real World Value Mapping with UCUM units).
    peak = float(bq_ml.max())
    slope = float(f"{peak / _STORED_MAX * 1.001:.6g}") if peak > 0 else 1.0
    ds.Units = "BQML"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = ds_text(slope)
    mapping = Dataset()
    mapping.RealWorldValueFirstValueMapped = 0
    mapping.RealWorldValueLastValueMapped = _STORED_MAX
    mapping.RealWorldValueIntercept = 0.0
    mapping.RealWorldValueSlope = slope
    mapping.LUTExplanation = "Activity concentration"
    mapping.LUTLabel = "BQML"
    mapping.MeasurementUnitsCodeSequence = [_code(Code("Bq/ml", "UCUM", "Becquerels/milliliter"))]
    ds.RealWorldValueMappingSequence = [mapping]
    ds.PixelData = np.rint(bq_ml / slope).astype(np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    return save_part10(ds, folder / "NM.dcm")


def _patient_orientation() -> Dataset:
    """NM/PET Patient Orientation: recumbent, supine, head first."""
    ds = Dataset()
    orientation = _code(codes.SCT.Recumbent)
    orientation.PatientOrientationModifierCodeSequence = [_code(codes.SCT.Supine)]
    ds.PatientOrientationCodeSequence = [orientation]
    ds.PatientGantryRelationshipCodeSequence = [_code(codes.SCT.Headfirst)]
    return ds


#: The physician's segments: segment number, structure. Kidneys and spleen are
#: PRRT's organs at risk; liver and spleen, the kidneys' hot neighbours, are
#: what a recovery correction must model (inference/dosimetry/course.py).
_SEG_STRUCTURES: Final = ((1, "kidney_left"), (2, "kidney_right"), (3, "spleen"), (4, "liver"))


def _write_seg(path: Path, ct: list[Dataset], labels: np.ndarray, context: _Context) -> Path:
    """The physician's SEG, drawn by hand on the CT: `labels` holds the true
    masks as :data:`_SEG_STRUCTURES`' segment numbers, `ct` the slices' datasets in array order."""
    descriptions = []
    for number, name in _SEG_STRUCTURES:
        code = structure_code(name)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=code.label,
            segmented_property_category=code.segmented_property_category,
            segmented_property_type=code.segmented_property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        if code.segmented_property_type_modifier is not None:
            # Laterality modifies the property type (see dicomio.seg, which nests it alike).
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                code.segmented_property_type_modifier
            ]
        descriptions.append(description)
    series = _uid("series", context.study_instance_uid, "SEG")
    seg = hd.seg.Segmentation(
        source_images=ct,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series,
        series_number=90,
        sop_instance_uid=_uid("instance", series, 0),
        instance_number=1,
        manufacturer="Phantom Reading Room",
        manufacturer_model_name="Manual contouring",
        software_versions="1",
        device_serial_number="1",
        series_description="Organs for dosimetry (physician)",
        content_creator_name="Phantom^Physician",
        content_label="ORGANS",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path, enforce_file_format=True)
    return path
