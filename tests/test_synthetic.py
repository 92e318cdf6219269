"""Self-checks of the synthetic DICOM fixtures in ``tests/synthetic.py``.

The receive tests trust these files to be what they claim (a real bitstream
in each transfer syntax, a consistent CT series), so the fixtures are tested
on their own: written, read back with pydicom, decoded where a decoder is
installed, compared with the phantom, and parsed by dcmtk's dcmdump.
"""

from __future__ import annotations

import socket
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from tests.conftest import dcmtk
from tests.synthetic import (
    DCMTK_CONFIG,
    EIGHT_BIT_TRANSFER_SYNTAXES,
    ENCAPSULATED_TRANSFER_SYNTAXES,
    LOSSY_TRANSFER_SYNTAXES,
    MAX_LOSSY_ERROR,
    STORESCP_FLAGS,
    STORESCU_FLAGS,
    TRANSFER_SYNTAXES,
    dataset_bytes,
    dcmtk_config_text,
    file_meta_length,
    phantom_hu,
    storescp_flags,
    write_ct_series,
)

DCMDUMP = Path("/usr/bin/dcmdump")
STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")


def _ids(uid: str) -> str:
    return UID(uid).keyword or uid


def _expected_stored(syntax: str, slices: int, rows: int, columns: int) -> np.ndarray:
    hu = phantom_hu(slices, rows, columns).astype(np.float64)
    if syntax in EIGHT_BIT_TRANSFER_SYNTAXES:
        return np.clip(np.rint((hu + 1024) / 8), 0, 255).astype(np.int64)
    return np.clip(hu + 1024, 0, 4095).astype(np.int64)


@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES, ids=_ids)
def test_series_reads_back_and_decodes(tmp_path: Path, syntax: str) -> None:
    slices, rows, columns = 5, 64, 48
    files = write_ct_series(tmp_path, syntax, slices=slices, rows=rows, columns=columns)
    assert [p.name for p in files] == [f"CT{i:04d}.dcm" for i in range(slices)]
    expected = _expected_stored(syntax, slices, rows, columns)
    decoder = get_decoder(syntax)
    sop_uids = set()
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.Modality == "CT" and ds.InstanceNumber == index + 1
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(index * float(ds.SliceThickness))
        assert (ds.Rows, ds.Columns) == (rows, columns)
        assert ("LossyImageCompression" in ds) == (syntax in LOSSY_TRANSFER_SYNTAXES)
        # Encapsulated pixel data really is a fragment sequence, not raw pixels.
        encapsulated = syntax in ENCAPSULATED_TRANSFER_SYNTAXES
        assert ds["PixelData"].is_undefined_length == encapsulated
        if not encapsulated:
            assert len(ds.PixelData) == rows * columns * ds.BitsAllocated // 8
        sop_uids.add(ds.SOPInstanceUID)
        if not decoder.is_available:
            continue  # written but not decodable here; nothing more to check
        error = np.abs(ds.pixel_array.astype(np.int64) - expected[index]).max()
        assert error <= MAX_LOSSY_ERROR.get(syntax, 0), f"slice {index}: max error {error}"
    assert len(sop_uids) == slices
    first, last = (pydicom.dcmread(p, stop_before_pixels=True) for p in (files[0], files[-1]))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert first[keyword].value == last[keyword].value


@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES, ids=_ids)
def test_dcmdump_parses_every_file(tmp_path: Path, syntax: str) -> None:
    dcmtk("dcmdump")
    files = write_ct_series(tmp_path, syntax, slices=2, rows=32, columns=32)
    result = subprocess.run(
        [str(DCMDUMP), *map(str, files)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # Every file is dumped through to the end, pixel data included.
    assert result.stdout.count("(0002,0010) UI") == len(files)
    assert result.stdout.count("(7fe0,0010)") == len(files)


def test_same_arguments_give_identical_files_and_syntaxes_do_not_share_uids(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path / "a", "1.2.840.10008.1.2.4.80", slices=3, rows=32, columns=32)
    b = write_ct_series(tmp_path / "b", "1.2.840.10008.1.2.4.80", slices=3, rows=32, columns=32)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    other = write_ct_series(tmp_path / "c", "1.2.840.10008.1.2.1", slices=3, rows=32, columns=32)
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in a + other}
    assert len(uids) == 6
    reseeded = write_ct_series(
        tmp_path / "d", "1.2.840.10008.1.2.4.80", slices=3, rows=32, columns=32, seed=1
    )
    assert pydicom.dcmread(reseeded[0]).StudyInstanceUID != pydicom.dcmread(a[0]).StudyInstanceUID


def test_small_series_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    for syntax in TRANSFER_SYNTAXES:
        write_ct_series(tmp_path / syntax, syntax)
    # ~0.3 s on a 2-core machine for all 15 syntaxes; generous bound.
    assert time.perf_counter() - start < 15


def test_dataset_bytes_starts_after_the_file_meta(tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path, "1.2.840.10008.1.2.1", slices=1, rows=16, columns=16)
    data = path.read_bytes()
    body = dataset_bytes(path)
    assert data.endswith(body) and body[:4] == b"\x08\x00\x05\x00"  # SpecificCharacterSet
    assert file_meta_length(data) == len(data) - len(body)
    meta = pydicom.dcmread(path).file_meta
    assert file_meta_length(data) == 132 + 12 + meta.FileMetaInformationGroupLength


def test_dataset_bytes_inflates_deflated_files(tmp_path: Path) -> None:
    [path] = write_ct_series(tmp_path, "1.2.840.10008.1.2.1.99", slices=1, rows=16, columns=16)
    raw = dataset_bytes(path, inflate=False)
    assert dataset_bytes(path) == zlib.decompress(raw, -zlib.MAX_WBITS)
    assert dataset_bytes(path)[:4] == b"\x08\x00\x05\x00"


def test_storescu_flags_cover_everything_but_htj2k() -> None:
    htj2k = {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
    assert set(STORESCU_FLAGS) == set(TRANSFER_SYNTAXES) - htj2k
    assert DCMTK_CONFIG.read_text(encoding="ascii") == dcmtk_config_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "storescp exited early"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"storescp did not listen on {port}")


@pytest.mark.parametrize("syntax", sorted(STORESCU_FLAGS), ids=_ids)
def test_storescu_flags_send_unchanged_into_storescp(tmp_path: Path, syntax: str) -> None:
    """Keeps the measured ``STORESCU_FLAGS`` honest against dcmtk itself."""
    dcmtk("storescu"), dcmtk("storescp")
    files = write_ct_series(tmp_path / "sent", syntax, slices=2, rows=32, columns=32)
    out = tmp_path / "received"
    out.mkdir()
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    scp_flags = STORESCP_FLAGS if syntax != "1.2.840.10008.1.2.4.57" else storescp_flags()
    port = _free_port()
    scp = subprocess.Popen(
        [str(STORESCP), *scp_flags, "-od", str(out), str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, scp)
        result = subprocess.run(
            [str(STORESCU), *STORESCU_FLAGS[syntax], "127.0.0.1", str(port), *map(str, files)],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    received = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}
    assert len(received) == len(files)
    for sent in files:
        got = received[pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID]
        assert pydicom.dcmread(got, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        assert dataset_bytes(got) == dataset_bytes(sent)


def test_storescp_plus_xa_refuses_jpeg_lossless_57(tmp_path: Path) -> None:
    """Documents why 4.57 needs the config profile on the receiving side too."""
    dcmtk("storescu"), dcmtk("storescp")
    [path] = write_ct_series(tmp_path / "sent", "1.2.840.10008.1.2.4.57", slices=1, rows=16, columns=16)
    out = tmp_path / "received"
    out.mkdir()
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    port = _free_port()
    scp = subprocess.Popen(
        [str(STORESCP), *STORESCP_FLAGS, "-od", str(out), str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, scp)
        result = subprocess.run(
            [str(STORESCU), *STORESCU_FLAGS["1.2.840.10008.1.2.4.57"], "127.0.0.1", str(port), str(path)],
            env=env, capture_output=True, text=True, timeout=60,
        )
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    assert result.returncode != 0
    assert list(out.iterdir()) == []
