"""Physical data of the therapy nuclides: half-life and electron energy per decay.

Organ self-dose with local deposition (:mod:`.absorbed_dose`) needs two
numbers per nuclide: the physical half-life, which bounds every effective
clearance and gives the tail of a trapezoid integral, and the mean energy
emitted per decay as electrons (beta particles, internal-conversion and Auger
electrons), all of which stop within millimetres, inside an organ. Photons
are left out here on purpose: they mostly leave the organ.

One source for all values, so half-lives and energies are consistent: ICRP
Publication 107, "Nuclear Decay Data for Dosimetric Calculations" (Eckerman
and Endo, Ann. ICRP 38(3), 2008), its radionuclide file ICRP-07.RAD: the
half-life from the index, and the mean energies per nuclear transformation
summed over the lines of the radiation types B- (beta), IE (internal
conversion) and AE (Auger), rounded to five digits. For 177Lu these agree with
the NNDC/ENSDF half-life (6.647 d) and with Table 1 of Alcocer-Avila et al.,
"Radiation doses from 161Tb and 177Lu in single tumour cells and micrometastases",
EJNMMI Physics 7:33 (2020): beta 133.3 keV, conversion electrons 13.52 keV,
Auger 1.13 keV, total electron energy 147.9 keV per decay.

A DICOM Radionuclide Code Sequence (0054,0300) names the nuclide by a SNOMED CT
code of PS3.16 CID 18 "Radiopharmaceutical Isotope" (90Y is also in CID 4020
"PET Radionuclide", with the same code); the codes are taken from pydicom's copy
of PS3.16 rather than retyped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code


@dataclass(frozen=True)
class Nuclide:
    """A therapy nuclide's half-life, electron emissions and SNOMED code.

    The energies are means per decay (MeV per nuclear transformation), the
    yield-weighted sums ICRP 107 tabulates, not the energies of single lines.
    """

    name: str
    element: str
    mass_number: int
    half_life_hours: float
    beta_energy_mev_per_decay: float
    conversion_electron_energy_mev_per_decay: float
    auger_electron_energy_mev_per_decay: float
    code: Code

    @property
    def electron_energy_mev_per_decay(self) -> float:
        """Mean energy emitted as electrons of any origin per decay, the energy deposited locally."""
        return (
            self.beta_energy_mev_per_decay
            + self.conversion_electron_energy_mev_per_decay
            + self.auger_electron_energy_mev_per_decay
        )

    @property
    def decay_constant_per_hour(self) -> float:
        """Physical decay constant lambda = ln 2 / T1/2, in 1/h."""
        return decay_constant_per_hour(self.half_life_hours)

    def decay_factor(self, hours: float) -> float:
        """Fraction of the activity left after ``hours`` of physical decay alone."""
        return math.exp(-self.decay_constant_per_hour * hours)


def decay_constant_per_hour(half_life_hours: float) -> float:
    """Decay constant in 1/h of a process with the given half-life (physical, biological or effective)."""
    if not half_life_hours > 0.0:
        raise ValueError(f"half-life must be positive, got {half_life_hours} h")
    return math.log(2.0) / half_life_hours


def half_life_hours(decay_constant: float) -> float:
    """Half-life in h of a decay constant in 1/h, e.g. an effective half-life from a fit."""
    if not decay_constant > 0.0:
        raise ValueError(f"decay constant must be positive, got {decay_constant} 1/h")
    return math.log(2.0) / decay_constant


_HOURS_PER_DAY = 24.0

# ICRP Publication 107 (2008), ICRP-07.RAD: half-life; mean energy per decay of the
# B-, IE and AE lines in MeV (sum of yield x energy over each type's lines).
NUCLIDES: tuple[Nuclide, ...] = (
    Nuclide(
        name="Lu-177",
        element="Lutetium",
        mass_number=177,
        half_life_hours=6.647 * _HOURS_PER_DAY,
        beta_energy_mev_per_decay=0.13327,
        conversion_electron_energy_mev_per_decay=0.013522,
        auger_electron_energy_mev_per_decay=0.0011320,
        code=codes.SCT._177Lutetium,
    ),
    Nuclide(
        name="I-131",
        element="Iodine",
        mass_number=131,
        half_life_hours=8.0207 * _HOURS_PER_DAY,
        beta_energy_mev_per_decay=0.18187,
        conversion_electron_energy_mev_per_decay=0.0095670,
        auger_electron_energy_mev_per_decay=0.00041300,
        code=codes.SCT._131Iodine,
    ),
    Nuclide(
        name="Y-90",
        element="Yttrium",
        mass_number=90,
        half_life_hours=64.1,
        beta_energy_mev_per_decay=0.93291,
        conversion_electron_energy_mev_per_decay=0.00020100,
        auger_electron_energy_mev_per_decay=0.0000010,
        code=codes.SCT._90Yttrium,
    ),
)


class UnknownNuclideError(ValueError):
    """A name or code that none of the tabulated nuclides answers to."""

    def __init__(self, name: str):
        known = ", ".join(n.name for n in NUCLIDES)
        super().__init__(f"no physical data for radionuclide {name!r}; known: {known}")
        self.name = name


def _key(text: str) -> str:
    """Spelling-free form: '^177^Lutetium', 'Lu-177', '177 Lu' -> '177lutetium', 'lu177', '177lu'."""
    return re.sub(r"[\s\-_^]", "", text).lower()


def _aliases(entry: Nuclide) -> set[str]:
    symbol = entry.name.split("-")[0].lower()
    number = str(entry.mass_number)
    names = {symbol, entry.element.lower()}
    return {
        *(f"{name}{number}" for name in names),
        *(f"{number}{name}" for name in names),
        _key(entry.code.meaning),
        entry.code.value,
    }


_BY_KEY: dict[str, Nuclide] = {alias: entry for entry in NUCLIDES for alias in _aliases(entry)}


def nuclide(name: str) -> Nuclide:
    """The nuclide a name, symbol or SNOMED code names.

    Accepts what sites and DICOM write: 'Lu-177', '177Lu', 'Lutetium-177',
    the Code Meaning '^177^Lutetium' and the Code Value '447553000' of the
    Radionuclide Code Sequence.
    """
    found = _BY_KEY.get(_key(name))
    if found is None:
        raise UnknownNuclideError(name)
    return found
