"""Mean absorbed dose to an organ from its own activity, by the MIRD schema.

MIRD Pamphlet No. 21 (Bolch et al., J Nucl Med 50:477, 2009) writes the mean
absorbed dose to a target from a source as D = A~ x S, with S = sum over the
emissions of E_i Y_i phi_i / m: the energy emitted per decay times the fraction
absorbed in the target, over the target's mass. For the self-dose of an organ
treated with a beta emitter this becomes local deposition: every electron (beta
particle, conversion or Auger electron) stops within the organ (phi = 1, ranges
of a millimetre or less for 177Lu against organs of centimetres), and photons
are neglected (phi = 0): most of their energy leaves an organ the size of a
kidney. For 177Lu the photons carry about 35 keV per decay against 148 keV in
electrons (ICRP Publication 107). Local energy deposition is one of the
absorbed-dose methods described in the EANM dosimetry committee's
recommendations for 177Lu (Sjogreen Gleisner et al., EJNMMI 49:1778, 2022).
The dose from neighbouring organs (cross-dose) is left out for the same
reason as the photons: it comes from photons.
"""

from __future__ import annotations

import math

from scipy.constants import electron_volt, kilo, mega

from .nuclides import Nuclide

_SECONDS_PER_HOUR = 3600.0


def mass_g(volume_ml: float, density_g_per_ml: float) -> float:
    """Organ mass from its CT volume and an assumed density (e.g. 1.06 g/ml for kidney).

    The density is assumed, not measured, because CT numbers of soft tissue
    are not converted to density in organ dosimetry.
    """
    if not (math.isfinite(volume_ml) and volume_ml > 0.0):
        raise ValueError(f"organ volume must be positive, got {volume_ml} ml")
    if not (math.isfinite(density_g_per_ml) and density_g_per_ml > 0.0):
        raise ValueError(f"organ density must be positive, got {density_g_per_ml} g/ml")
    return volume_ml * density_g_per_ml


def self_dose_gy(time_integrated_activity_mbq_h: float, mass_g: float, nuclide: Nuclide) -> float:
    """Mean absorbed dose (Gy) to an organ of ``mass_g`` from its own time-integrated activity.

    decays = TIA [MBq h] x 1e6 [Bq/MBq] x 3600 [s/h]; energy [J] = decays x
    electron energy per decay [MeV] x 1e6 [eV/MeV] x 1.602176634e-19 [J/eV];
    dose [Gy = J/kg] = energy / (mass [g] / 1000 [g/kg]).
    """
    tia = time_integrated_activity_mbq_h
    if not (math.isfinite(tia) and tia >= 0.0):
        raise ValueError(f"time-integrated activity must be finite and not negative, got {tia} MBq h")
    if not (math.isfinite(mass_g) and mass_g > 0.0):
        raise ValueError(f"organ mass must be positive, got {mass_g} g")
    decays = tia * mega * _SECONDS_PER_HOUR
    energy_j = decays * nuclide.electron_energy_mev_per_decay * mega * electron_volt
    return energy_j / (mass_g / kilo)

