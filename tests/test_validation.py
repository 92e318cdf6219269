"""The arrival check: an instance that gets success is one the pipeline can read.

Every file here is a real Part-10 file in tmp_path, laid out as pynetdicom
spools a received C-STORE (preamble, File Meta Information, the data set as
sent): valid instances in every accepted transfer syntax pass, and each kind
of corruption is refused with its status and the element named. Which
corruptions are refused follows what pydicom does with them under its
default settings (measured for pydicom 3.0.2): a value it cannot convert is
refused; a value it only warns about is accepted, as the pipeline accepts it.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    RLELossless,
)

from node.receive.dataset_check import BULK_BYTES, check_instance
from node.receive.scp import ACCEPTED_TRANSFER_SYNTAXES
from node.receive.validation import InvalidDataset, modality_label
from tests.conftest import REPO, SHARED_DATA
from tests.synthetic import write_ct_series, write_enhanced_ct

LIMIT = 1 << 30  # node.max_instance_bytes' default
SIEMENS = SHARED_DATA / "ct-abdomen-siemens" / "dicom"


def ct(folder: Path, transfer_syntax: str = ExplicitVRLittleEndian, **options) -> Path:
    return write_ct_series(folder, transfer_syntax, slices=1, rows=32, columns=32, **options)[0]


def jpeg_extended_ct(folder: Path) -> Path:
    """A slice in JPEG Extended (process 2 and 4, 12 bits), which tests/synthetic.py
    does not write: its native pixels encoded by libjpeg-turbo through imagecodecs."""
    import imagecodecs

    path = ct(folder)
    ds = pydicom.dcmread(path)
    frame = imagecodecs.jpeg8_encode(ds.pixel_array, level=90, bitspersample=12)
    ds.PixelData = encapsulate([bytes(frame)])
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.save_as(path, enforce_file_format=True)
    return path


def check(path: Path, limit: int = LIMIT):
    """Check `path` as a C-STORE on the presentation context its meta names."""
    meta = pydicom.filereader.read_file_meta_info(path)
    return check_instance(path, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, limit)


def refusal(path: Path, limit: int = LIMIT) -> InvalidDataset:
    with pytest.raises(InvalidDataset) as caught:
        check(path, limit)
    return caught.value


def rewrite(path: Path, *elements: tuple[int, str, bytes]) -> Path:
    """Put raw (tag, VR, value bytes) elements into the file, encoded as they are."""
    ds = pydicom.dcmread(path)
    for tag, vr, value in elements:
        ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    ds.save_as(path, enforce_file_format=True)
    return path


def explicit(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element, its length given or its value's."""
    length = len(value) if length is None else length
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length) + value


def item(content: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(content) if length is None else length) + content


def split(path: Path) -> tuple[bytes, bytes]:
    """The file's preamble and meta, and its data set."""
    data = path.read_bytes()
    with open(path, "rb") as handle:
        pydicom.filereader.read_preamble(handle, False)
        pydicom.filereader.read_dataset(handle, False, True, stop_when=lambda tag, vr, n: tag.group != 2)
        offset = handle.tell()
    return data[:offset], data[offset:]


def spooled_head(path: Path, transfer_syntax: str) -> bytes:
    """Preamble and File Meta Information as pynetdicom spools them, for a context of `transfer_syntax`."""
    meta = pydicom.filereader.read_file_meta_info(path)
    meta.TransferSyntaxUID = transfer_syntax
    head = io.BytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue()


def before_pixels(path: Path, raw: bytes) -> Path:
    """Insert raw element bytes just before Pixel Data (the last element)."""
    head, body = split(path)
    at = body.rindex(b"\xe0\x7f\x10\x00")
    path.write_bytes(head + body[:at] + raw + body[at:])
    return path


# ---------------------------------------------------------------------------
# Valid instances pass
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transfer_syntax", ACCEPTED_TRANSFER_SYNTAXES, ids=lambda ts: ts.keyword)
def test_valid_instance_passes_in_every_accepted_transfer_syntax(tmp_path, transfer_syntax):
    if transfer_syntax == JPEGExtended12Bit:
        path = jpeg_extended_ct(tmp_path)
    else:
        path = ct(tmp_path, transfer_syntax)
    identity = check(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (identity.sop_instance_uid, identity.series_instance_uid) == (
        ds.SOPInstanceUID,
        ds.SeriesInstanceUID,
    )
    assert identity.modality == "CT"


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, RLELossless], ids=lambda ts: ts.keyword)
def test_multi_frame_instance_with_functional_groups_passes(tmp_path, transfer_syntax):
    path = write_enhanced_ct(tmp_path, transfer_syntax, slices=4, rows=16, columns=16)
    assert check(path).sop_class_uid == pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID


@pytest.mark.skipif(not SIEMENS.is_dir(), reason=f"shared test data absent: {SIEMENS}")
def test_siemens_jpeg2000_slices_pass():
    paths = sorted(SIEMENS.iterdir())
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID.is_encapsulated
    for path in paths:
        assert check(path).modality == "CT"


@pytest.mark.parametrize(
    "name, element",
    [
        # pydicom keeps these as text or bytes and warns at most; the pipeline does not read them
        ("IS text in InstanceNumber", (0x00200013, "IS", b"x1")),
        ("DS text in SliceThickness", (0x00180050, "DS", b"n/a ")),
        ("invalid UI in FrameOfReferenceUID", (0x00200052, "UI", b"1.2.abc\x00")),
        ("invalid DA", (0x00080020, "DA", b"2024-1-1")),
        ("unknown Specific Character Set", (0x00080005, "CS", b"ISO_IR 999")),
        ("AT of 2 bytes", (0x00280009, "AT", b"\x00\x00")),
        ("odd length OB", (0x00091010, "OB", b"\x01\x02\x03")),
    ],
)
def test_values_pydicom_only_warns_about_are_accepted(tmp_path, name, element):
    assert check(rewrite(ct(tmp_path), element)).modality == "CT"


def test_undecodable_characters_are_accepted(tmp_path):
    path = rewrite(ct(tmp_path), (0x00080005, "CS", b"ISO_IR 192"), (0x00100010, "PN", b"Doe^J\xff\xfe"))
    assert check(path).modality == "CT"


def test_pixel_data_with_excess_bytes_is_accepted(tmp_path):
    """pydicom reads the bytes the image attributes call for and warns about the rest."""
    path = ct(tmp_path)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData + b"\x00" * 6
    ds.save_as(path, enforce_file_format=True)
    assert check(path).modality == "CT"


def test_bulk_values_are_checked_without_being_converted(tmp_path):
    """A private OB larger than BULK_BYTES passes; an FL that large must still hold whole floats.

    Implicit VR, because explicit VR FL has a 2-byte length (pydicom writes a longer one as UN).
    """
    path = rewrite(ct(tmp_path, ImplicitVRLittleEndian), (0x00091010, "OB", b"\x01" * (BULK_BYTES + 2)))
    assert check(path).modality == "CT"
    rewrite(path, (0x00189305, "FL", b"\x00" * (BULK_BYTES + 2)))
    refused = refusal(path)
    assert refused.status == 0xC000 and refused.reason == "cannot-decode"
    assert refused.detail.startswith("(0018,9305) RevolutionTime cannot be decoded: ")


# ---------------------------------------------------------------------------
# Values pydicom cannot decode are refused, naming the element
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "element, named",
    [
        ((0x00280010, "US", b"\x00\x02\x00"), "(0028,0010) Rows cannot be decoded"),
        ((0x00280106, "SS", b"\x00"), "(0028,0106) SmallestImagePixelValue cannot be decoded"),
        ((0x00189337, "UL", b"\x00\x00"), "(0018,9337) ContrastBolusAgentNumber cannot be decoded"),
        ((0x00189305, "FL", b"\x00\x00\x80"), "(0018,9305) RevolutionTime cannot be decoded"),
        ((0x00189306, "FD", b"\x00" * 5), "(0018,9306) SingleCollimationWidth cannot be decoded"),
        ((0x00280030, "DS", b"0,8\\0,8 "), "(0028,0030) PixelSpacing cannot be decoded"),
        ((0x00200032, "DS", b"abc\\1\\2 "), "(0020,0032) ImagePositionPatient cannot be decoded"),
        ((0x00281053, "DS", b"one "), "(0028,1053) RescaleSlope cannot be decoded"),
        ((0x00080070, "XY", b"ACME"), "(0008,0070) Manufacturer has an unknown VR 'XY'"),
    ],
)
def test_undecodable_value_is_refused_naming_the_element(tmp_path, element, named):
    refused = refusal(rewrite(ct(tmp_path), element))
    assert (refused.status, refused.reason) == (0xC000, "cannot-decode")
    assert refused.detail.startswith(named), refused.detail
    assert len(named) <= 64  # what the Error Comment (LO) keeps


def test_undecodable_value_in_a_nested_item_names_element_and_path(tmp_path):
    bad_rows = explicit(0x00280010, "US", b"\x01")
    series = explicit(0x00081115, "SQ", item(b"") + item(bad_rows))
    refused = refusal(before_pixels(ct(tmp_path), explicit(0x00081110, "SQ", item(series))))
    assert refused.detail.startswith("(0028,0010) Rows cannot be decoded: "), refused.detail
    assert refused.detail.endswith(
        "(in (0008,1110) ReferencedStudySequence item 1 > (0008,1115) ReferencedSeriesSequence item 2)"
    )


# ---------------------------------------------------------------------------
# Broken structure: pydicom would read something else than was sent
# ---------------------------------------------------------------------------


def test_sequence_whose_content_is_not_items_is_refused(tmp_path):
    code = explicit(0x00080100, "SH", b"123456")
    refused = refusal(before_pixels(ct(tmp_path), explicit(0x00081140, "SQ", code)))
    assert refused.reason == "cannot-decode"
    assert refused.detail.startswith("(0008,1140) ReferencedImageSequence item 1 starts with (0008,0100)")


def test_item_shorter_than_its_content_is_refused(tmp_path):
    code = explicit(0x00080100, "SH", b"123456")
    refused = refusal(before_pixels(ct(tmp_path), explicit(0x00081140, "SQ", item(code, length=10))))
    assert refused.detail.startswith("(0008,0100) CodeValue value of 6 bytes runs past the end of its item")
    assert refused.detail.endswith("(in (0008,1140) ReferencedImageSequence item 1)")


def test_undefined_length_item_without_delimiters_is_refused(tmp_path):
    path = ct(tmp_path)
    sequence = explicit(0xFFFAFFFA, "SQ", item(explicit(0x00080100, "SH", b"123456"), 0xFFFFFFFF), 0xFFFFFFFF)
    path.write_bytes(path.read_bytes() + sequence)
    refused = refusal(path)
    assert refused.detail.startswith("(FFFA,FFFA) DigitalSignaturesSequence item 1: item ends without")


def test_stray_delimiter_at_the_top_level_is_refused(tmp_path):
    """pydicom stops reading there and silently drops the rest of the data set."""
    path = before_pixels(ct(tmp_path), struct.pack("<HHI", 0xFFFE, 0xE00D, 0))
    assert refusal(path).detail.startswith("unexpected (FFFE,E00D)")


def test_image_without_pixel_data_is_refused(tmp_path):
    """A data set cut just before Pixel Data still reads; the Image Pixel module needs it (PS3.3 C.7.6.3)."""
    path = ct(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"\xe0\x7f\x10\x00")])
    refused = refusal(path)
    assert refused.reason == "invalid-pixel-data"
    assert refused.detail == "(7FE0,0010) PixelData is missing; Rows is not"


def test_fewer_trailing_bytes_than_an_element_header_are_ignored_as_pydicom_does(tmp_path):
    path = ct(tmp_path)
    path.write_bytes(path.read_bytes() + b"\x00" * 7)
    assert pydicom.dcmread(path).pixel_array.shape == (32, 32)
    assert check(path).modality == "CT"


@pytest.mark.parametrize("cut", [100, 2000])
def test_truncated_file_is_refused(tmp_path, cut):
    path = ct(tmp_path)
    path.write_bytes(path.read_bytes()[:-cut])
    refused = refusal(path)
    assert refused.status == 0xC000
    assert refused.detail.startswith("(7FE0,0010) PixelData value of 2048 bytes runs past the end")


def test_deeply_nested_sequences_are_refused(tmp_path):
    nested = b""
    for _ in range(70):
        nested = explicit(0x00081140, "SQ", item(nested))
    refused = refusal(before_pixels(ct(tmp_path), nested))
    assert "nests sequences deeper than 64" in refused.detail


# ---------------------------------------------------------------------------
# Pixel Data, checked by its structure
# ---------------------------------------------------------------------------


def test_native_pixel_data_shorter_than_the_image_is_refused(tmp_path):
    path = ct(tmp_path)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:-32]
    ds.save_as(path, enforce_file_format=True)
    refused = refusal(path)
    assert (refused.status, refused.reason) == (0xC000, "invalid-pixel-data")
    assert refused.detail == "(7FE0,0010) PixelData holds 2016 bytes; the image attributes need 2048"


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"Rows": None}, "is present but Rows is missing"),
        ({"Columns": 0}, "is present but Columns is 0"),
        ({"BitsAllocated": 12}, "is present but BitsAllocated is 12"),
        ({"SamplesPerPixel": 2}, "is present but SamplesPerPixel is 2"),
        ({"BitsStored": 17}, "is present but BitsStored is 17"),
        ({"PixelRepresentation": 2}, "is present but PixelRepresentation is 2"),
        ({"PhotometricInterpretation": None}, "is present but PhotometricInterpretation is missing"),
        ({"PhotometricInterpretation": "GREY"}, "is present but PhotometricInterpretation is 'GREY'"),
        (
            {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"},
            "is present but PlanarConfiguration is missing",
        ),
    ],
)
def test_pixel_data_without_sane_image_attributes_is_refused(tmp_path, change, problem):
    path = ct(tmp_path)
    ds = pydicom.dcmread(path)
    for keyword, value in change.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    refused = refusal(path)
    assert refused.reason == "invalid-pixel-data"
    assert refused.detail == f"(7FE0,0010) PixelData {problem}"


def test_encapsulated_pixel_data_needs_a_fragment_per_frame(tmp_path):
    path = ct(tmp_path, JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.save_as(path, enforce_file_format=True)
    assert refusal(path).detail == "(7FE0,0010) PixelData has 1 fragments for 2 frames"


def test_encapsulated_pixel_data_without_sequence_delimiter_is_refused(tmp_path):
    path = ct(tmp_path, JPEG2000Lossless)
    data = path.read_bytes()
    assert data.endswith(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    path.write_bytes(data[:-8])
    refused = refusal(path)
    assert (refused.reason, refused.detail) == (
        "invalid-pixel-data",
        "(7FE0,0010) PixelData ends without a Sequence Delimitation Item",
    )


def replace_pixels(path: Path, element: bytes) -> Path:
    """Put raw element bytes in place of Pixel Data (the last element)."""
    head, body = split(path)
    path.write_bytes(head + body[: body.rindex(b"\xe0\x7f\x10\x00")] + element)
    return path


def test_encapsulated_pixel_data_in_a_native_transfer_syntax_is_refused(tmp_path):
    path = ct(tmp_path)
    pixels = pydicom.dcmread(path).PixelData
    delimiter = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    replace_pixels(path, explicit(0x7FE00010, "OB", encapsulate([pixels]) + delimiter, 0xFFFFFFFF))
    refused = refusal(path)
    assert refused.detail.startswith("(7FE0,0010) PixelData is encapsulated in the native transfer syntax")


def test_native_pixel_data_in_an_encapsulated_transfer_syntax_is_refused(tmp_path):
    path = ct(tmp_path, RLELossless)
    replace_pixels(path, explicit(0x7FE00010, "OW", bytes(32 * 32 * 2)))
    assert refusal(path).detail.startswith("(7FE0,0010) PixelData is not encapsulated")


# ---------------------------------------------------------------------------
# Size and deflate
# ---------------------------------------------------------------------------


def test_file_over_the_limit_is_refused_as_out_of_resources(tmp_path):
    path = write_ct_series(tmp_path, slices=1, rows=1024, columns=1024)[0]
    refused = refusal(path, limit=1 << 20)
    assert (refused.status, refused.reason) == (0xA700, "too-large")
    assert refused.detail.endswith("exceeds 1048576 bytes (node.max_instance_bytes)")


def deflate_bomb(folder: Path, inflated: int) -> Path:
    """A valid deflated CT slice carrying `inflated` bytes of zeros in a private OB."""
    path = ct(folder)
    body = split(path)[1]
    zeros = b"\x00" * (1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate, PS3.5 A.5
    at = body.index(b"\x10\x00\x10\x00")  # the data set before Patient's Name, then the bulk
    parts = [packer.compress(body[:at] + explicit(0x00091010, "OB", b"", length=inflated))]
    parts += [packer.compress(zeros) for _ in range(inflated >> 20)]
    parts += [packer.compress(body[at:]), packer.flush()]
    path.write_bytes(spooled_head(path, DeflatedExplicitVRLittleEndian) + b"".join(parts))
    return path


def test_deflated_instance_is_decoded_as_a_stream(tmp_path):
    path = deflate_bomb(tmp_path, 2 << 20)
    assert pydicom.dcmread(path).PatientName == "Synthetic^Phantom"
    assert check(path).modality == "CT"


def test_deflated_instance_that_inflates_past_the_limit_is_refused(tmp_path):
    refused = refusal(deflate_bomb(tmp_path, 8 << 20), limit=4 << 20)
    assert (refused.status, refused.reason) == (0xA700, "too-large")
    assert refused.detail == "data set inflates beyond 4194304 bytes (node.max_instance_bytes)"


def test_corrupt_deflate_stream_is_refused(tmp_path):
    path = deflate_bomb(tmp_path, 1 << 20)
    head, body = split(path)
    path.write_bytes(head + body[:40] + b"\xff" * 16 + body[56:])
    refused = refusal(path)
    assert (refused.status, refused.reason) == (0xC000, "cannot-decode")
    assert refused.detail.startswith("deflated data set is corrupt: ")


def test_truncated_deflate_stream_is_refused(tmp_path):
    path = deflate_bomb(tmp_path, 1 << 20)
    path.write_bytes(path.read_bytes()[:-20])
    assert refusal(path).status == 0xC000


_PEAK = """
import resource, sys
sys.path.insert(0, {repo!r})
from pydicom.filereader import read_file_meta_info
from node.receive.dataset_check import check_instance
from node.receive.validation import InvalidDataset
meta = read_file_meta_info({path!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    check_instance({path!r}, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, {limit})
    outcome = "accepted"
except InvalidDataset as exc:
    outcome = f"{{exc.status:#06x}} {{exc.reason}}"
print(outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""

#: Peak memory the check may add, in KiB (ru_maxrss): buffers of 64 KiB and
#: the converted header, whatever the instance's size.
PEAK_KIB = 16 << 10


@pytest.fixture(scope="module")
def bomb_256_mib(tmp_path_factory) -> Path:
    return deflate_bomb(tmp_path_factory.mktemp("bomb"), 256 << 20)


@pytest.mark.parametrize(
    "limit, outcome", [(LIMIT, "accepted"), (128 << 20, "0xa700 too-large")], ids=["1GiB", "128MiB"]
)
def test_256_mib_deflate_bomb_costs_little_memory(bomb_256_mib, limit, outcome):
    """0.26 MB that inflates to 256 MiB: accepted under 1 GiB, refused under 128 MiB, in bounded memory.

    Measured against the subprocess's peak after its imports; pydicom.dcmread of the
    same file, even with defer_size, adds about 480 MiB.
    """
    path = bomb_256_mib
    assert path.stat().st_size < 300_000
    script = _PEAK.format(repo=str(REPO), path=str(path), limit=limit)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    found, peak_kib = result.stdout.rsplit(maxsplit=1)
    assert found == outcome
    assert int(peak_kib) < PEAK_KIB, f"peak memory grew by {int(peak_kib) >> 10} MiB"


def test_instances_in_other_byte_orders_and_vr_encodings_are_walked(tmp_path):
    """Implicit VR and big endian data sets carry the same refusals as explicit little endian."""
    for transfer_syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian):
        path = ct(tmp_path / transfer_syntax.keyword, transfer_syntax)
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[:-2]
        ds.save_as(path, enforce_file_format=True)
        assert refusal(path).reason == "invalid-pixel-data"


def test_explicit_vr_data_set_on_an_implicit_vr_context_is_read_as_pydicom_reads_it(tmp_path):
    """Explicit VR sent on an implicit VR context: pydicom reads it (warning), so the pipeline does."""
    path = ct(tmp_path)
    path.write_bytes(spooled_head(path, ImplicitVRLittleEndian) + split(path)[1])
    with pytest.warns(UserWarning, match="Expected implicit VR, but found explicit VR"):
        assert pydicom.dcmread(path).pixel_array.shape == (32, 32)
    assert check(path).modality == "CT"


# ---------------------------------------------------------------------------
# Identity (node.receive.validation.identify) still applies
# ---------------------------------------------------------------------------


def test_identity_is_checked_after_decoding(tmp_path):
    path = ct(tmp_path)
    meta = pydicom.filereader.read_file_meta_info(path)
    with pytest.raises(InvalidDataset) as caught:
        check_instance(path, meta.MediaStorageSOPClassUID, "1.2.3.4", LIMIT)
    assert (caught.value.status, caught.value.reason) == (0xA900, "sop-instance-mismatch")


# ---------------------------------------------------------------------------
# Modality as a metric label
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, label",
    [
        ("CT", "CT"),
        ("PT ", "PT"),
        ("SEG", "SEG"),
        ("RTSTRUCT", "RTSTRUCT"),
        ("", "unknown"),
        ("  ", "unknown"),
        ("ct", "other"),
        ("X" * 60_000, "other"),
        ('CT"} 1\n', "other"),
    ],
)
def test_modality_label_is_a_defined_term_other_or_unknown(value, label):
    assert modality_label(value) == label


def test_modality_labels_are_a_small_set_of_short_codes():
    from node.receive.validation import MODALITIES

    assert all(code.isalnum() and code.isupper() and len(code) <= 16 for code in MODALITIES)
    assert len(MODALITIES) < 128
