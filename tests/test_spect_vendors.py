"""Quantitative SPECT written as each documented writer writes it, read to the right Bq/ml.

Each file starts from tests/nm_files.py's RECON TOMO image (32x32x24 voxels
of 4.8 mm, 177Lu given 24 h before the acquisition) and is changed the way
the writer named in its test changes or writes one; the sources are in
docs/nm-quantitative-conventions.md. Expected values are worked out here
from what was written, never taken from the reader. Conflicting carriers and
hostile values must be refused naming the attributes.
"""

from __future__ import annotations

import copy
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomio.spect import (
    NotQuantitativeError,
    QuantitationConvention,
    SpectAttributeError,
    load_quantitative_spect,
)
from tests.nm_files import Carrier, NmSpec, nm_dataset
from tests.test_seg import DCIODVFY, dciodvfy
from tests.test_spect import HALF_LIFE_S, HOT, STEP, concentration

#: 60 views of 20 s, nm_files' default rotation.
VIEWS, VIEW_S = 60, 20.0
VOXEL_MM3 = 4.8**3


def average_count_factor() -> float:
    """2^(T_ave / T1/2) for the 20 min acquisition (PS3.3 C.8.9.4.1.5), computed from its definition."""
    lam, duration = math.log(2) / HALF_LIFE_S, VIEWS * VIEW_S
    t_ave = math.log(lam * duration / (1 - math.exp(-lam * duration))) / lam
    return 2.0 ** (t_ave / HALF_LIFE_S)


def raw(ds: Dataset, tag: int, vr: str, text: str) -> None:
    """Put `text` into `ds` undecoded, as a file would hold it, however invalid."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(text), text.encode(), 0, False, True)


def dciodvfy_errors(path: Path) -> set[str]:
    """The distinct errors dciodvfy finds in a file that is knowingly not conformant."""
    if not DCIODVFY.exists():  # installed by ./install.sh --test: never a reason to skip
        pytest.fail(f"dicom3tools' dciodvfy is not installed at {DCIODVFY}: run ./install.sh --test")
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, check=False)
    return {line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


def save(tmp_path: Path, ds: Dataset) -> Path:
    path = tmp_path / "nm.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------
# Each documented writer
# ---------------------------------------------------------------------------


def calibspect_file() -> tuple[Dataset, np.ndarray, float]:
    """A GE NM reconstruction in counts after calibspect: Rescale Slope from the sensitivity,
    (0057,1003) BQML, the administered activity in MBq, no Decay Correction."""
    counts = np.ones((24, 32, 32), dtype=np.uint16)
    counts[HOT] = 50
    ds = nm_dataset(concentration(), NmSpec(carrier=Carrier.PRIVATE, decay_correction=None, dose="7400"))
    ds.PixelData = counts.tobytes()
    # calibspect: slope = 1e9 / (S x N x frame duration (s) x frames in rotation x voxel volume (mm3)),
    # with S in counts/s/MBq per head and N heads.
    sensitivity, heads = 9.5, 2
    slope = 1e9 / (sensitivity * heads * VIEW_S * VIEWS * VOXEL_MM3)
    ds.RescaleSlope = f"{slope:.12g}"
    return ds, counts, float(f"{slope:.12g}")


def test_calibspect_private_units_read_counts_times_slope_at_the_acquisition_start(tmp_path):
    ds, counts, slope = calibspect_file()
    path = save(tmp_path, ds)
    dciodvfy(path)
    spect = load_quantitative_spect([path])
    assert spect.convention is QuantitationConvention.PRIVATE_VOXEL_UNITS
    assert spect.decay_correction is None
    expected = counts.astype(np.float64) * slope * average_count_factor()  # ~19820 Bq/ml hot
    np.testing.assert_allclose(spect.volume.array, expected, rtol=1e-6)
    assert spect.administration.total_activity_bq == pytest.approx(7.4e9)
    assert any(
        note.startswith("Bq/ml = stored x 396.59 + 0 by private (0057,1003)")
        and "PRIVATE_VOXEL_UNITS" in note
        for note in spect.notes
    )


def pytheranostics_file() -> Dataset:
    """PyTheranostics' make_bqml_suv: signed int16 pixels scaled to 32767, two identical Real World
    Value Mapping items whose units code is only the code value Bq/ml, the same Rescale Slope,
    Decay Correction START, DECY first in Corrected Image."""
    values = concentration()
    slope = float(np.float32(values.max() / 32767))
    stored = (values / slope).astype(np.int16)
    ds = nm_dataset(values, NmSpec(carrier=Carrier.UNITS_BQML))
    del ds.Units
    ds.PixelRepresentation = 1
    ds.PixelData = stored.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = str(slope), "0"
    ds.SmallestImagePixelValue, ds.LargestImagePixelValue = int(stored.min()), int(stored.max())
    items = []
    for _ in range(2):
        code = Dataset()
        code.CodeValue = "Bq/ml"
        item = Dataset()
        item.RealWorldValueIntercept, item.RealWorldValueSlope = 0.0, slope
        item.RealWorldValueLastValueMapped = int(stored.max())
        item.RealWorldValueFirstValueMapped = int(stored.min())
        item.LUTLabel = "BQML"
        item.MeasurementUnitsCodeSequence = [code]
        items.append(item)
    ds.RealWorldValueMappingSequence = items
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT"]
    return ds


def test_pytheranostics_mapping_without_coding_scheme_is_read_and_noted(tmp_path):
    path = save(tmp_path, pytheranostics_file())
    # Where it departs from the standard: str(float) slopes longer than DS allows, and mappings
    # without an explanation and units codes without scheme and meaning.
    assert dciodvfy_errors(path) == {
        "Error - Value invalid for this VR - (0x0028,0x1053) DS Rescale Slope  DS [1] = "
        "<0.15259255468845367> - Length invalid for this VR = 19, expected <= 16",
        "Error - Dicom dataset contains invalid data values for Value Representations",
        "Error - Missing attribute Type 1 Required Element=<LUTExplanation> "
        "Module=<RealWorldValueMappingItemMacro>",
        "Error - Missing attribute Type 1C Conditional Element=<CodingSchemeDesignator> "
        "Module=<BasicCodeSequenceMacro>",
        "Error - Missing attribute Type 1 Required Element=<CodeMeaning> Module=<BasicCodeSequenceMacro>",
    }
    spect = load_quantitative_spect([path])
    assert spect.convention is QuantitationConvention.REAL_WORLD_VALUE_MAPPING
    # int16 truncation loses up to one step of 5000 / 32767 Bq/ml.
    assert spect.volume.array[HOT] == pytest.approx(5000.0, abs=5000.0 / 32767)
    assert float(np.median(spect.volume.array)) == pytest.approx(10.0, abs=5000.0 / 32767)
    notes = " ".join(spect.notes)
    assert "item 1 in Bq/ml: CodingSchemeDesignator (0008,0102) missing, Bq/ml read as UCUM" in notes
    assert "item 2 in Bq/ml agrees with RealWorldValueMappingSequence (0040,9096) item 1" in notes


def test_hermes_counts_mapping_beside_units_bqml_is_another_quantity():
    # Hermes' {counts} mapping (UCL/STIR #1123) with PET-style Units BQML: two quantities, no conflict.
    ds = nm_dataset(concentration(), NmSpec(carrier=Carrier.COUNTS))
    ds.Units = "BQML"
    spect = load_quantitative_spect([ds])
    assert spect.convention is QuantitationConvention.UNITS_BQML
    assert spect.volume.array[HOT] == pytest.approx(5000.0, abs=STEP)


def test_rwvm_in_kbq_per_ml_agrees_with_units_bqml_in_bq_per_ml():
    ds = nm_dataset(concentration(), NmSpec(carrier=Carrier.RWVM))
    mapping = ds.RealWorldValueMappingSequence[0]
    ds.Units, ds.RescaleSlope, ds.RescaleIntercept = "BQML", f"{mapping.RealWorldValueSlope:.10g}", "0"
    mapping.MeasurementUnitsCodeSequence[0].CodeValue = "kBq/ml"
    mapping.RealWorldValueSlope = mapping.RealWorldValueSlope / 1000.0
    spect = load_quantitative_spect([ds])
    assert spect.volume.array[HOT] == pytest.approx(5000.0, abs=STEP)
    assert any(
        "agrees with RealWorldValueMappingSequence (0040,9096) item 1 in kBq/ml" in n for n in spect.notes
    )


def test_ge_starguide_counts_are_refused_listing_every_carrier():
    # StarGuide writes counts; the acquisition time is in Image Comments and the sensitivity nowhere.
    ds = nm_dataset(concentration())
    del ds.Units
    ds.ImageComments = "$ImagingDuration$239615$"
    with pytest.raises(NotQuantitativeError) as raised:
        load_quantitative_spect([ds])
    assert raised.value.looked_at == (
        "RealWorldValueMappingSequence (0040,9096): absent",
        "Units (0054,1001): absent",
        "private (0057,1003): absent",
    )


def test_counts_with_philips_pet_factor_are_refused_saying_it_is_not_applied():
    ds = nm_dataset(concentration())
    ds.Units = "CNTS"
    ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
    ds.add_new((0x7053, 0x1009), "DS", "1.234")
    with pytest.raises(NotQuantitativeError) as raised:
        load_quantitative_spect([ds])
    assert "Units (0054,1001): CNTS" in raised.value.looked_at
    assert (
        "Philips private (7053,1009): present, documented for PET only and not applied"
        in raised.value.looked_at
    )


def test_a_mapping_in_functional_groups_is_listed_and_not_read():
    ds = nm_dataset(concentration(), NmSpec(carrier=Carrier.RWVM))
    group = Dataset()
    group.RealWorldValueMappingSequence = ds.RealWorldValueMappingSequence
    ds.SharedFunctionalGroupsSequence = [group]
    del ds.RealWorldValueMappingSequence
    with pytest.raises(NotQuantitativeError) as raised:
        load_quantitative_spect([ds])
    assert (
        "SharedFunctionalGroupsSequence (5200,9229): holds a Real World Value Mapping, not read "
        "(the NM Image IOD has no functional groups)"
    ) in raised.value.looked_at


# ---------------------------------------------------------------------------
# Conflicting carriers: refused naming both
# ---------------------------------------------------------------------------


def test_rwvm_and_units_with_different_values_are_refused_naming_both():
    ds = nm_dataset(concentration(), NmSpec(carrier=Carrier.RWVM))
    ds.Units, ds.RescaleSlope = "BQML", f"{ds.RealWorldValueMappingSequence[0].RealWorldValueSlope * 2:.10g}"
    with pytest.raises(SpectAttributeError) as raised:
        load_quantitative_spect([ds])
    assert raised.value.attribute == (
        "RealWorldValueMappingSequence (0040,9096) item 1 in Bq/ml and "
        "Units (0054,1001) BQML with RescaleSlope (0028,1053)"
    )
    assert "x 0.0833333 + 0 by the first, x 0.166667 + 0 by the second" in raised.value.problem


def test_two_activity_mappings_that_disagree_are_refused():
    ds = nm_dataset(concentration(), NmSpec(carrier=Carrier.RWVM))
    second = copy.deepcopy(ds.RealWorldValueMappingSequence[0])
    second.RealWorldValueIntercept = 100.0  # 1200 stored steps off
    ds.RealWorldValueMappingSequence.append(second)
    with pytest.raises(SpectAttributeError, match=r"item 1 in Bq/ml and .* item 2 in Bq/ml disagree"):
        load_quantitative_spect([ds])


def test_units_and_private_units_naming_different_units_are_refused():
    ds = nm_dataset(concentration(), NmSpec(carrier=Carrier.PRIVATE))
    ds.Units = "CNTS"
    with pytest.raises(SpectAttributeError) as raised:
        load_quantitative_spect([ds])
    assert raised.value.attribute == "Units (0054,1001) and private (0057,1003)"
    assert raised.value.problem.startswith("disagree (CNTS and BQML)")


# ---------------------------------------------------------------------------
# Hostile values: refused naming the attribute
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "vr", "text", "attribute"),
    [
        (0x00281053, "DS", "NaN", r"RescaleSlope \(0028,1053\) is nan"),
        (0x00281053, "DS", "0", r"RescaleSlope \(0028,1053\) is 0"),
        (0x00281053, "DS", "-0.08", r"RescaleSlope \(0028,1053\) is -0.08"),
        (0x00281053, "DS", "1e999", r"RescaleSlope \(0028,1053\) is inf"),
        (0x00281052, "DS", "NaN", r"RescaleIntercept \(0028,1052\) is nan"),
    ],
)
def test_hostile_rescale_is_refused_naming_it(tag, vr, text, attribute):
    ds = nm_dataset(concentration())
    raw(ds, tag, vr, text)
    with pytest.raises(SpectAttributeError, match=attribute):
        load_quantitative_spect([ds])


@pytest.mark.parametrize(
    ("keyword", "value", "attribute"),
    [
        ("RealWorldValueSlope", math.nan, r"RealWorldValueSlope \(0040,9225\) is nan"),
        ("RealWorldValueSlope", 0.0, r"RealWorldValueSlope \(0040,9225\) is 0"),
        ("RealWorldValueSlope", -1.0, r"RealWorldValueSlope \(0040,9225\) is -1"),
        ("RealWorldValueSlope", math.inf, r"RealWorldValueSlope \(0040,9225\) is inf"),
        ("RealWorldValueIntercept", math.nan, r"RealWorldValueIntercept \(0040,9224\) is nan"),
        ("RealWorldValueLastValueMapped", 100, r"RealWorldValueLastValueMapped \(0040,9211\)"),
    ],
)
def test_hostile_mapping_is_refused_naming_it(keyword, value, attribute):
    ds = nm_dataset(concentration(), NmSpec(carrier=Carrier.RWVM))
    setattr(ds.RealWorldValueMappingSequence[0], keyword, value)
    with pytest.raises(SpectAttributeError, match=attribute):
        load_quantitative_spect([ds])


def test_a_modality_lut_is_refused_naming_it():
    ds = nm_dataset(concentration())
    lut = Dataset()
    lut.LUTDescriptor, lut.ModalityLUTType, lut.LUTData = [2, 0, 16], "US", [0, 1]
    ds.ModalityLUTSequence = [lut]
    with pytest.raises(SpectAttributeError, match=r"ModalityLUTSequence \(0028,3000\) present"):
        load_quantitative_spect([ds])


@pytest.mark.parametrize(("keyword", "value"), [("Rows", 65535), ("Columns", 0)])
def test_a_hostile_matrix_is_refused_before_decoding(keyword, value):
    ds = nm_dataset(concentration())
    setattr(ds, keyword, value)
    with pytest.raises(SpectAttributeError, match=rf"{keyword} \(0028,001[01]\) {value}: not from 1 to 1024"):
        load_quantitative_spect([ds])


@pytest.mark.parametrize(
    ("keyword", "text", "shown"),
    [("ActualFrameDuration", "-20000", "-20000"), ("NumberOfFramesInRotation", "2147483647", "2.14748e+09")],
)
def test_a_hostile_rotation_is_refused_naming_it(keyword, text, shown):
    ds = nm_dataset(concentration(), NmSpec(decay_correction="NONE"))
    rotation = ds.RotationInformationSequence[0]
    tag = {"ActualFrameDuration": 0x00181242, "NumberOfFramesInRotation": 0x00540053}[keyword]
    raw(rotation, tag, "IS", text)
    with pytest.raises(SpectAttributeError) as raised:
        load_quantitative_spect([ds])
    assert raised.value.attribute.startswith(keyword)
    assert raised.value.problem == f"is {shown} in RotationInformationSequence (0054,0052)"
