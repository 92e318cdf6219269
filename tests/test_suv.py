"""SUV factors against values worked out by hand, and ``segnode pet-suv``.

Every expected value is written as arithmetic on the header's numbers, not
computed through dicomio.suv, so a wrong rule in the module cannot agree
with itself. Common numbers: 75 kg, 1.80 m, 370 MBq of F-18 (half-life
6586.2 s Siemens, 6588 s GE), injected 09:00, scan start 10:00 (3600 s).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomio.suv import (
    DecayCorrection,
    MissingSuvAttributeError,
    SuvNotDefinedError,
    earliest_acquisition,
    suv_factors,
)

REPO = Path(__file__).resolve().parent.parent
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"

# Hand arithmetic shared by several tests.
WEIGHT_G = 75 * 1000
BMI = 75 / 1.80**2  # 23.148
LBM_MALE_KG = 9270 * 75 / (6680 + 216 * BMI)  # 59.52
LBM_FEMALE_KG = 9270 * 75 / (8780 + 244 * BMI)  # 48.19
BSA_CM2 = 0.007184 * 75**0.425 * 180**0.725 * 1e4  # 1.943 m^2


def pet_dataset(
    *,
    radiopharmaceutical: dict | None = None,
    **attributes,
) -> Dataset:
    """A Siemens-style BQML, START, single-frame PET image header.

    Keyword arguments set or (with value None) delete top-level attributes;
    `radiopharmaceutical` does the same in the Radiopharmaceutical
    Information Sequence item.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = PET_IMAGE_STORAGE
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = PET_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1.2"
    ds.Modality = "PT"
    ds.Manufacturer = "SIEMENS"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    ds.SeriesDate = "20240305"
    ds.SeriesTime = "100000"
    ds.AcquisitionDate = "20240305"
    ds.AcquisitionTime = "100000"
    ds.ActualFrameDuration = 180000
    ds.PatientWeight = "75"
    ds.PatientSize = "1.80"
    ds.PatientSex = "M"
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    item = Dataset()
    item.RadiopharmaceuticalStartTime = "090000"
    item.RadionuclideTotalDose = "370000000"
    item.RadionuclideHalfLife = "6586.2"
    for keyword, value in (radiopharmaceutical or {}).items():
        if value is None:
            delattr(item, keyword)
        else:
            setattr(item, keyword, value)
    ds.RadiopharmaceuticalInformationSequence = [item]
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def only_frame(factors):
    assert len(factors.frames) == 1
    return factors.frames[0]


def test_siemens_bqml_start_every_bed_decays_to_series_start():
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2))  # 75000 / 253.3e6
    for acquisition in ("100000", "100300"):
        factors = suv_factors(pet_dataset(AcquisitionTime=acquisition))
        frame = only_frame(factors)
        assert factors.units == "BQML"
        assert factors.decay_correction is DecayCorrection.START
        assert frame.frame_number is None
        assert frame.suv_bw == pytest.approx(expected, rel=1e-9)
        assert frame.suv_bw == pytest.approx(2.9608e-4, rel=1e-4)
        assert frame.sul == pytest.approx(expected * LBM_MALE_KG * 1000 / WEIGHT_G, rel=1e-9)
        assert frame.suv_bsa == pytest.approx(expected * BSA_CM2 / WEIGHT_G, rel=1e-9)
        assert factors.warnings == ()


def test_rescale_is_not_part_of_the_factor():
    # GE varies Rescale Slope per slice: the factor multiplies rescaled values.
    one = only_frame(suv_factors(pet_dataset(RescaleSlope="1")))
    other = only_frame(suv_factors(pet_dataset(RescaleSlope="0.37")))
    assert one.suv_bw == other.suv_bw


def test_lean_body_mass_for_a_female_patient():
    frame = only_frame(suv_factors(pet_dataset(PatientSex="F")))
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2))
    assert frame.sul == pytest.approx(expected * LBM_FEMALE_KG * 1000 / WEIGHT_G, rel=1e-9)
    assert LBM_FEMALE_KG == pytest.approx(48.19, abs=0.01)


def add_private(ds: Dataset, group: int, block: int, creator: str, element: int, vr: str, value):
    """A private element in block `block` (not the usual 0x10) of `group`."""
    ds.add_new((group, block), "LO", creator)
    ds.add_new((group, (block << 8) | element), vr, value)


def ge_dataset(**attributes) -> Dataset:
    ds = pet_dataset(
        Manufacturer="GE MEDICAL SYSTEMS",
        CorrectedImage=["DECY", "ATTN", "SCAT", "DTIM", "RAN", "DCAL", "SL", "NORM"],
        radiopharmaceutical={"RadionuclideHalfLife": "6588"},
        **attributes,
    )
    # Another creator holds block 0x10, so GEMS_PETD_01 lands in 0x12.
    ds.add_new((0x0009, 0x0010), "LO", "GEMS_IDEN_01")
    return ds


def test_ge_post_processed_series_uses_private_scan_datetime():
    # Series re-dated at 11:30 by post-processing, after the 10:05 acquisition.
    ds = ge_dataset(SeriesTime="113000", AcquisitionTime="100500")
    add_private(ds, 0x0009, 0x12, "GEMS_PETD_01", 0x0D, "DT", "20240305100000.00")
    factors = suv_factors(ds)
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6588))  # scan start 10:00, 3600 s
    assert only_frame(factors).suv_bw == pytest.approx(expected, rel=1e-9)
    assert any("(0009,100D)" in warning for warning in factors.warnings)


def test_ge_private_scan_datetime_read_when_its_vr_is_unknown():
    # After a PACS has stripped the private dictionary the value is bytes (UN).
    ds = ge_dataset(SeriesTime="113000", AcquisitionTime="100500")
    add_private(ds, 0x0009, 0x12, "GEMS_PETD_01", 0x0D, "UN", b"20240305100000.00 ")
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6588))
    assert only_frame(suv_factors(ds)).suv_bw == pytest.approx(expected, rel=1e-9)


def test_ge_private_scan_datetime_ignored_when_series_time_is_unchanged():
    # QIBA uses (0009,100D) only when Series Time is after the acquisition.
    ds = ge_dataset()
    add_private(ds, 0x0009, 0x12, "GEMS_PETD_01", 0x0D, "DT", "20240305093000")
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6588))  # 10:00 series time
    assert only_frame(suv_factors(ds)).suv_bw == pytest.approx(expected, rel=1e-9)


def test_ge_private_scan_datetime_after_acquisition_is_not_trusted():
    ds = ge_dataset(SeriesTime="113000", AcquisitionTime="100000")
    add_private(ds, 0x0009, 0x12, "GEMS_PETD_01", 0x0D, "DT", "20240305110000")
    factors = suv_factors(ds)
    # Falls through to the earliest acquisition, 10:00: 3600 s.
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6588))
    assert only_frame(factors).suv_bw == pytest.approx(expected, rel=1e-9)
    assert any("unusable" in warning for warning in factors.warnings)


def philips_dataset(**attributes) -> Dataset:
    return pet_dataset(
        Manufacturer="Philips Medical Systems",
        Units="CNTS",
        CorrectedImage=["DECY", "ATTN", "SCAT", "RAN", "DTIM", "NORM"],
        **attributes,
    )


def test_philips_cnts_uses_the_suv_scale_factor():
    ds = philips_dataset()
    add_private(ds, 0x7053, 0x11, "Philips PET Private Group", 0x00, "DS", "0.000283")
    add_private(ds, 0x7053, 0x11, "Philips PET Private Group", 0x09, "DS", "2.5")
    frame = only_frame(suv_factors(ds))
    assert frame.suv_bw == pytest.approx(0.000283, rel=1e-12)
    assert frame.sul == pytest.approx(0.000283 * LBM_MALE_KG * 1000 / WEIGHT_G, rel=1e-9)
    assert frame.suv_bsa == pytest.approx(0.000283 * BSA_CM2 / WEIGHT_G, rel=1e-9)


def test_philips_cnts_with_only_the_activity_concentration_factor():
    ds = philips_dataset()
    ds.add_new((0x7053, 0x0010), "LO", "Philips Imaging DD 001")
    add_private(ds, 0x7053, 0x12, "Philips PET Private Group", 0x09, "DS", "2.5")
    # 2.5 Bq/ml per rescaled count, then BQML: 75000 / decayed 370 MBq.
    expected = 2.5 * WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2))
    assert only_frame(suv_factors(ds)).suv_bw == pytest.approx(expected, rel=1e-9)


def test_philips_cnts_without_private_factors_names_them():
    with pytest.raises(MissingSuvAttributeError, match=r"\(7053,1000\).*\(7053,1009\)") as caught:
        suv_factors(philips_dataset())
    assert "Philips PET Private Group" in caught.value.attribute


def test_gml_is_already_suvbw():
    factors = suv_factors(pet_dataset(Units="GML"))
    frame = only_frame(factors)
    assert frame.suv_bw == 1.0
    assert frame.sul == pytest.approx(LBM_MALE_KG * 1000 / WEIGHT_G, rel=1e-9)  # 0.7936
    assert frame.suv_bsa == pytest.approx(BSA_CM2 / WEIGHT_G, rel=1e-9)


def test_admin_is_not_decayed():
    factors = suv_factors(pet_dataset(DecayCorrection="ADMIN"))
    assert factors.decay_correction is DecayCorrection.ADMIN
    assert only_frame(factors).suv_bw == pytest.approx(75000 / 370e6, rel=1e-12)


def test_none_decays_to_the_frame_average_count_time():
    factors = suv_factors(pet_dataset(DecayCorrection="NONE", CorrectedImage=["ATTN", "SCAT"]))
    # PS3.3 C.8.9.4.1.5: T_ave = ln(lambda T / (1 - exp(-lambda T))) / lambda, T = 180 s.
    decay_constant = math.log(2) / 6586.2
    t_ave = math.log(decay_constant * 180 / (1 - math.exp(-decay_constant * 180))) / decay_constant
    assert t_ave == pytest.approx(89.86, abs=0.01)  # a little before the 90 s midpoint
    expected = WEIGHT_G / (370e6 * 2 ** (-(3600 + t_ave) / 6586.2))
    assert only_frame(factors).suv_bw == pytest.approx(expected, rel=1e-9)


def add_frames(ds: Dataset, starts: tuple[str, ...], duration_ms: float) -> None:
    """Per-frame Frame Content (PS3.3 C.7.6.16.2.2): acquisition start and duration."""
    groups = []
    for start in starts:
        content = Dataset()
        content.FrameAcquisitionDateTime = start
        content.FrameAcquisitionDuration = duration_ms
        group = Dataset()
        group.FrameContentSequence = [content]
        groups.append(group)
    ds.NumberOfFrames = len(starts)
    ds.PerFrameFunctionalGroupsSequence = groups


def test_none_multi_frame_has_one_factor_per_frame():
    ds = pet_dataset(
        DecayCorrection="NONE",
        CorrectedImage=["ATTN"],
        AcquisitionTime=None,
        AcquisitionDate=None,
        ActualFrameDuration=None,
    )
    add_frames(ds, ("20240305100000", "20240305100500"), duration_ms=300000.0)
    factors = suv_factors(ds)
    decay_constant = math.log(2) / 6586.2
    t_ave = math.log(decay_constant * 300 / (1 - math.exp(-decay_constant * 300))) / decay_constant
    assert [frame.frame_number for frame in factors.frames] == [1, 2]
    for frame, after_injection in zip(factors.frames, (3600, 3900), strict=True):
        expected = WEIGHT_G / (370e6 * 2 ** (-(after_injection + t_ave) / 6586.2))
        assert frame.suv_bw == pytest.approx(expected, rel=1e-9)


def test_start_datetime_wins_over_start_time():
    ds = pet_dataset(
        radiopharmaceutical={
            "RadiopharmaceuticalStartDateTime": "20240305083000",
            "RadiopharmaceuticalStartTime": "090000",
        }
    )
    expected = WEIGHT_G / (370e6 * 2 ** (-5400 / 6586.2))  # 08:30 to 10:00
    assert only_frame(suv_factors(ds)).suv_bw == pytest.approx(expected, rel=1e-9)


def test_start_datetime_the_day_before():
    ds = pet_dataset(
        SeriesTime="003000",
        AcquisitionTime="003000",
        radiopharmaceutical={"RadiopharmaceuticalStartDateTime": "20240304233000+0100"},
    )
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2))  # 23:30 to 00:30 next day
    factors = suv_factors(ds)
    assert only_frame(factors).suv_bw == pytest.approx(expected, rel=1e-9)
    assert factors.warnings == ()


def test_start_time_before_midnight_scan_after():
    ds = pet_dataset(
        SeriesTime="003000",
        AcquisitionTime="003000",
        radiopharmaceutical={"RadiopharmaceuticalStartTime": "233000"},
    )
    factors = suv_factors(ds)
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2))  # not -23 hours
    assert only_frame(factors).suv_bw == pytest.approx(expected, rel=1e-9)
    assert any("2024-03-04" in warning for warning in factors.warnings)


def test_acquisition_before_series_time_uses_the_earliest_acquisition():
    # Series re-dated at 12:00; beds started 10:00 and 10:03; no Frame Reference Time.
    beds = [pet_dataset(SeriesTime="120000", AcquisitionTime=time) for time in ("100000", "100300")]
    earliest = earliest_acquisition(beds)
    assert earliest.isoformat() == "2024-03-05T10:00:00"
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2))
    for bed in beds:
        factors = suv_factors(bed, series_earliest=earliest)
        assert only_frame(factors).suv_bw == pytest.approx(expected, rel=1e-9)
        assert any("earliest acquisition" in warning for warning in factors.warnings)
    # Alone, the second bed knows only its own start: 10:03, 3780 s.
    alone = only_frame(suv_factors(beds[1]))
    assert alone.suv_bw == pytest.approx(WEIGHT_G / (370e6 * 2 ** (-3780 / 6586.2)), rel=1e-9)


def test_acquisition_before_series_time_back_computed_from_frame_reference_time():
    ds = pet_dataset(SeriesTime="120000", AcquisitionTime="100300", FrameReferenceTime="269858")
    factors = suv_factors(ds)
    decay_constant = math.log(2) / 6586.2
    t_ave = math.log(decay_constant * 180 / (1 - math.exp(-decay_constant * 180))) / decay_constant
    # QIBA: start = 10:03:00 - 269.858 s + T_ave, i.e. 3780 - 269.858 + T_ave after injection.
    decay_s = 3780 - 269.858 + t_ave
    assert decay_s == pytest.approx(3600, abs=0.01)
    expected = WEIGHT_G / (370e6 * 2 ** (-decay_s / 6586.2))
    assert only_frame(factors).suv_bw == pytest.approx(expected, rel=1e-9)
    assert any("Frame Reference Time" in warning for warning in factors.warnings)


def test_frame_reference_time_shorter_than_average_count_time_is_ignored():
    ds = pet_dataset(SeriesTime="120000", AcquisitionTime="100300", FrameReferenceTime="1000")
    factors = suv_factors(ds)
    # 10:03 - 1 s + 89.86 s would be after the frame began: the acquisition, 3780 s, is used.
    expected = WEIGHT_G / (370e6 * 2 ** (-3780 / 6586.2))
    assert only_frame(factors).suv_bw == pytest.approx(expected, rel=1e-9)


def test_legacy_converted_multi_frame_start_shares_one_factor():
    ds = pet_dataset(
        AcquisitionTime=None, AcquisitionDate=None, Units=None, DecayCorrection=None, CorrectedImage=None
    )
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.128.1"
    unassigned = Dataset()
    unassigned.Units = "BQML"
    unassigned.DecayCorrection = "START"
    unassigned.CorrectedImage = ["ATTN", "DECY"]
    shared = Dataset()
    shared.UnassignedSharedConvertedAttributesSequence = [unassigned]
    ds.SharedFunctionalGroupsSequence = [shared]
    add_frames(ds, ("20240305100000", "20240305100300"), duration_ms=180000.0)
    factors = suv_factors(ds)
    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2))  # series start 10:00 for both
    assert [frame.suv_bw for frame in factors.frames] == [pytest.approx(expected, rel=1e-9)] * 2


@pytest.mark.parametrize(
    ("top_level", "radiopharmaceutical", "named"),
    [
        ({"PatientWeight": None}, {}, "PatientWeight (0010,1030)"),
        ({"PatientWeight": "0"}, {}, "PatientWeight (0010,1030)"),
        ({}, {"RadionuclideTotalDose": None}, "RadionuclideTotalDose (0018,1074)"),
        ({}, {"RadionuclideHalfLife": None}, "RadionuclideHalfLife (0018,1075)"),
        ({}, {"RadiopharmaceuticalStartTime": None}, "RadiopharmaceuticalStartTime (0018,1072)"),
        ({"SeriesTime": None}, {}, "SeriesTime (0008,0031)"),
        ({"SeriesDate": None}, {}, "SeriesDate (0008,0021)"),
        ({"AcquisitionTime": None}, {}, "AcquisitionTime (0008,0032)"),
        pytest.param(
            {"SeriesTime": "10h"},
            {},
            "SeriesTime (0008,0031)",
            marks=pytest.mark.filterwarnings("ignore:Invalid value for VR TM"),
        ),
        ({"DecayCorrection": None}, {}, "DecayCorrection (0054,1102)"),
        ({"Units": None}, {}, "Units (0054,1001)"),
        ({"RadiopharmaceuticalInformationSequence": None}, {}, "(0054,0016)"),
    ],
)
def test_missing_attribute_is_named(top_level, radiopharmaceutical, named):
    ds = pet_dataset(radiopharmaceutical=radiopharmaceutical, **top_level)
    with pytest.raises(MissingSuvAttributeError) as caught:
        suv_factors(ds)
    assert named in caught.value.attribute
    assert named in str(caught.value)
    assert ds.SOPInstanceUID in str(caught.value)


def test_none_without_frame_duration_is_named():
    ds = pet_dataset(DecayCorrection="NONE", CorrectedImage=["ATTN"], ActualFrameDuration=None)
    with pytest.raises(MissingSuvAttributeError, match=r"ActualFrameDuration \(0018,1242\)"):
        suv_factors(ds)


def test_admin_needs_no_times():
    ds = pet_dataset(
        DecayCorrection="ADMIN", SeriesTime=None, radiopharmaceutical={"RadionuclideHalfLife": None}
    )
    assert only_frame(suv_factors(ds)).suv_bw == pytest.approx(75000 / 370e6, rel=1e-12)


def test_without_height_or_sex_only_suvbw():
    no_height = suv_factors(pet_dataset(PatientSize=None))
    assert only_frame(no_height).sul is None and only_frame(no_height).suv_bsa is None
    assert any("Patient's Size" in warning for warning in no_height.warnings)

    other_sex = suv_factors(pet_dataset(PatientSex="O"))
    assert only_frame(other_sex).sul is None
    assert only_frame(other_sex).suv_bsa is not None
    assert any("Patient's Sex" in warning for warning in other_sex.warnings)

    centimetres = suv_factors(pet_dataset(PatientSize="180"))
    assert only_frame(centimetres).sul is None
    assert any("implausible" in warning for warning in centimetres.warnings)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"Modality": "CT"}, "not PT"),
        ({"Units": "PROPCNTS"}, "PROPCNTS"),
        ({"CorrectedImage": ["DECY", "SCAT"]}, "ATTN"),
        ({"CorrectedImage": ["ATTN"]}, "DECY"),
        ({"DecayCorrection": "SOMETIMES"}, "SOMETIMES"),
        ({"DecayCorrection": None, "DecayCorrected": "YES"}, "Enhanced PET"),
    ],
)
def test_images_without_an_suv_are_refused(attributes, message):
    with pytest.raises(SuvNotDefinedError, match=message):
        suv_factors(pet_dataset(**attributes))


def test_injection_after_scan_is_refused():
    ds = pet_dataset(radiopharmaceutical={"RadiopharmaceuticalStartDateTime": "20240305103000"})
    with pytest.raises(SuvNotDefinedError, match="after the scan"):
        suv_factors(ds)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "pet-suv", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_cli_reports_each_file_and_fails_for_the_bad_one(tmp_path):
    good = pet_dataset()
    midnight = pet_dataset(
        SeriesTime="003000",
        AcquisitionTime="003000",
        PatientSize=None,
        radiopharmaceutical={"RadiopharmaceuticalStartTime": "233000"},
    )
    no_weight = pet_dataset(PatientWeight=None)
    paths = [tmp_path / name for name in ("good.dcm", "no_weight.dcm", "text.dcm", "midnight.dcm")]
    good.save_as(paths[0], enforce_file_format=True)
    no_weight.save_as(paths[1], enforce_file_format=True)
    paths[2].write_text("not DICOM")
    midnight.save_as(paths[3], enforce_file_format=True)

    result = run_cli(*map(str, paths), "--json")
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(path) for path in paths]

    expected = WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2))
    first = lines[0]
    assert first["sop_instance_uid"] == good.SOPInstanceUID
    assert first["units"] == "BQML" and first["decay_correction"] == "START"
    assert first["suv_bw_factor"] == pytest.approx(expected, rel=1e-9)
    assert first["sul_factor"] == pytest.approx(expected * LBM_MALE_KG * 1000 / WEIGHT_G, rel=1e-9)
    assert first["suv_bsa_factor"] == pytest.approx(expected * BSA_CM2 / WEIGHT_G, rel=1e-9)
    assert first["warnings"] == []

    assert set(lines[1]) == {"file", "error"}
    assert "PatientWeight (0010,1030)" in lines[1]["error"]
    assert set(lines[2]) == {"file", "error"}

    last = lines[3]
    assert last["suv_bw_factor"] == pytest.approx(expected, rel=1e-9)
    assert last["sul_factor"] is None and last["suv_bsa_factor"] is None
    assert len(last["warnings"]) == 2


def test_cli_table(tmp_path):
    path = tmp_path / "pet.dcm"
    pet_dataset().save_as(path, enforce_file_format=True)
    result = run_cli(str(path))
    assert result.returncode == 0, result.stderr
    assert "BQML  START" in result.stdout
    assert f"{WEIGHT_G / (370e6 * 2 ** (-3600 / 6586.2)):.6g}" in result.stdout
