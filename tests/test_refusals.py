"""Bad input is refused with a specific status, stored nowhere, and harms no one else."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import _config as pynetdicom_config

from tests.raw_peer import RawPeer
from tests.synthetic import file_meta_length, write_ct_series
from tests.test_receive import storescu

EXPLICIT_LE = "1.2.840.10008.1.2.1"

# These tests write invalid UIDs on purpose; pydicom warns when they are set.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length of 64"),
]


@pytest.fixture
def ct_files(tmp_path) -> list[Path]:
    return write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=3, rows=32, columns=32)


def _send(node, path: Path):
    """One C-STORE of a file, proposing its own SOP class and transfer syntax."""
    from pynetdicom import AE

    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "../../etc/passwd"),
        ("StudyInstanceUID", ".."),
        ("SeriesInstanceUID", "1.2.3/../../4"),
        ("SeriesInstanceUID", "1." + "2" * 70),
        ("StudyInstanceUID", "1.02.3"),
        ("SeriesInstanceUID", None),
    ],
)
def test_invalid_or_traversing_uids_are_refused_and_stored_nowhere(node, ct_files, keyword, value):
    dataset = pydicom.dcmread(ct_files[0])
    command_uid = dataset.SOPInstanceUID
    if value is None:
        del dataset[keyword]
    else:
        dataset[keyword].value = value
    # Send through the chunked path so pynetdicom transmits the bytes as
    # they are, with the request's Affected SOP Instance UID still valid.
    dataset.file_meta.MediaStorageSOPInstanceUID = command_uid
    path = ct_files[0].parent / "bad.dcm"
    dataset.save_as(path, enforce_file_format=True)
    status = _send_raw(node, path)
    assert status.Status == 0xA900
    assert keyword in status.ErrorComment
    assert node.stored_files() == []
    assert not any(node.storage_dir.parent.rglob("passwd*"))
    assert node.metrics()
    failures = {k: v for k, v in node.metrics().items() if k.startswith("segnode_store_failures_total")}
    assert sum(failures.values()) == 1
    assert "TESTSCU" in node.log() and keyword in node.log()


def _send_raw(node, path: Path):
    """Send a file's dataset bytes unparsed, as a misbehaving sender would."""
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return _send(node, path)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous


def test_undecodable_dataset_answers_cannot_understand(node, tmp_path):
    [sent] = write_ct_series(tmp_path / "ct", DeflatedExplicitVRLittleEndian, slices=1, rows=32, columns=32)
    data = sent.read_bytes()
    end = file_meta_length(data)
    # A deflated data set whose compressed stream is corrupt cannot be read at all.
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(data[:end] + bytes(b ^ 0x5A for b in data[end:]))
    status = _send_raw(node, corrupt)
    assert status.Status == 0xC000
    assert status.ErrorComment.startswith("deflated data set is corrupt")
    assert node.stored_files() == []
    assert node.metrics()['segnode_store_failures_total{reason="cannot-decode"}'] == 1


def test_an_element_the_pipeline_cannot_decode_is_refused_naming_it(node, ct_files, tmp_path):
    """Finding 6: such instances were acknowledged, and their series' job failed later."""
    dataset = pydicom.dcmread(ct_files[0])
    dataset.PixelSpacing = [0.5, 0.5]
    path = tmp_path / "bad-spacing.dcm"
    dataset.save_as(path, enforce_file_format=True)
    # A DS the pipeline's float() fails on; pydicom itself would not write it.
    path.write_bytes(path.read_bytes().replace(b"0.5\\0.5", b"0.5\\abc"))
    status = _send_raw(node, path)
    assert status.Status == 0xC000
    assert status.ErrorComment.startswith("(0028,0030) PixelSpacing")
    assert node.stored_files() == []
    # Pixel Data shorter than its rows and columns say.
    dataset = pydicom.dcmread(ct_files[1])
    dataset.PixelData = dataset.PixelData[:-100]
    path = tmp_path / "short-pixels.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert _send_raw(node, path).Status == 0xC000
    assert node.metrics()['segnode_store_failures_total{reason="invalid-pixel-data"}'] == 1
    # What does get success is readable as the pipeline reads it.
    status = _send(node, ct_files[2])
    assert status.Status == 0x0000
    [stored] = node.stored_files()
    assert pydicom.dcmread(stored).pixel_array.shape == (32, 32)


def test_a_deflated_data_set_inflating_past_the_limit_is_refused_in_bounded_memory(node_factory, tmp_path):
    """Finding 3: 0.27 MB inflating to 256 MiB cost +507 MB; now it is refused, costing almost nothing."""
    from tests.conftest import rss_bytes

    node = node_factory(max_instance_bytes=64 << 20).start()
    [sent] = write_ct_series(tmp_path / "ct", DeflatedExplicitVRLittleEndian, slices=1, rows=32, columns=32)
    dataset = pydicom.dcmread(sent)
    dataset.add_new(0x00091010, "OB", bytes(256 << 20))  # a private element of zeros: deflates to ~0.25 MB
    bomb = tmp_path / "bomb.dcm"
    dataset.save_as(bomb, enforce_file_format=True)
    assert bomb.stat().st_size < 1 << 20
    before = rss_bytes(node.proc.pid)
    status = _send_raw(node, bomb)
    assert status.Status == 0xA700
    assert "inflates beyond" in status.ErrorComment
    assert rss_bytes(node.proc.pid) - before < 32 << 20
    assert node.stored_files() == []


def test_a_modality_label_is_a_defined_term_or_other(node, ct_files, tmp_path):
    """Finding 5: a 60 kB Modality became a metric label as sent."""
    for index, modality in enumerate(["X" * 60000, "CT", "ZZ"]):
        dataset = pydicom.dcmread(ct_files[index])
        dataset.Modality = modality
        path = tmp_path / f"modality{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert _send_raw(node, path).Status == 0x0000
    received = {k: v for k, v in node.metrics().items() if k.startswith("segnode_instances_received_total")}
    assert received == {
        'segnode_instances_received_total{modality="other"}': 2.0,
        'segnode_instances_received_total{modality="CT"}': 1.0,
    }


def test_sop_class_that_does_not_match_the_context_is_refused(node, ct_files, tmp_path):
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage

    dataset = pydicom.dcmread(ct_files[0])
    dataset.SOPClassUID = MRImageStorage
    path = tmp_path / "mismatch.dcm"
    dataset.save_as(path, enforce_file_format=True)
    # The file meta decides the presentation context: make it CT while the
    # dataset says MR (the two UIDs have the same length).
    data = path.read_bytes()
    end = file_meta_length(data)
    path.write_bytes(data[:end].replace(MRImageStorage.encode(), CTImageStorage.encode()) + data[end:])
    status = _send_raw(node, path)
    assert status.Status == 0xA900
    assert status.ErrorComment.startswith("SOP Class differs from the presentation context")
    assert node.stored_files() == []


def test_bad_senders_do_not_disturb_a_concurrent_good_association(node, tmp_path):
    good = write_ct_series(tmp_path / "good", EXPLICIT_LE, slices=40, rows=128, columns=128)
    result: dict = {}
    sender = threading.Thread(target=lambda: result.setdefault("run", storescu(node, good)))
    sender.start()
    bad_template = pydicom.dcmread(good[0])
    for attempt in range(10):
        bad = bad_template.copy()
        bad.SOPInstanceUID = generate_uid()
        bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
        bad.StudyInstanceUID = "../../../tmp"
        path = tmp_path / f"bad{attempt}.dcm"
        bad.save_as(path, enforce_file_format=True)
        assert _send_raw(node, path).Status == 0xA900
    sender.join(120)
    assert result["run"].returncode == 0, result["run"].stderr
    node.wait_for_series(bad_template.SeriesInstanceUID, "dispatched", len(good))
    assert len(node.stored_files()) == len(good)


def test_a_rejected_peer_that_keeps_sending_gives_up_its_place_at_the_gate(node_factory):
    """A rejected peer is given a second to read its A-ASSOCIATE-RJ and close; one
    that keeps sending instead must not keep its place among the pending connections."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    node = node_factory(max_pending_per_address=1).start()
    with RawPeer(node.port) as unlisted:
        assert unlisted.associate(calling_ae="UNLISTED").reject == (1, 1, 3)
        deadline = time.monotonic() + 3
        try:
            while time.monotonic() < deadline:
                unlisted.send(b"x")
                time.sleep(0.1)
        except OSError:
            pass  # the node closed the connection
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
        assert assoc.is_established
        assoc.release()
