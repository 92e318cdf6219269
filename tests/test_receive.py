"""Receiving with real peers: dcmtk echoscu/storescu against ``segnode serve``."""

from __future__ import annotations

import subprocess

import pydicom
import pytest
from pynetdicom import AE

from tests.conftest import SHARED_DATA, dcmtk, dcmtk_env
from tests.synthetic import STORESCU_FLAGS, TRANSFER_SYNTAXES, dataset_bytes, write_ct_series

SIEMENS_SERIES = SHARED_DATA / "ct-abdomen-siemens" / "dicom"


def storescu(node, files, *flags: str, calling_ae: str = "STORESCU") -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk("storescu"), *flags, "-aet", calling_ae, "-aec", "SEGNODE",
         "127.0.0.1", str(node.port), *map(str, files)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=120,
    )


def test_echoscu_verifies(node):
    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "SEGNODE", "127.0.0.1", str(node.port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert node.metrics()['segnode_associations_accepted_total{calling_ae="ECHOSCU"}'] == 1


@pytest.mark.skipif(not SIEMENS_SERIES.is_dir(), reason="../shared/data (real Siemens CT) is absent")
def test_real_siemens_jpeg2000_series_arrives_whole_and_completes(node):
    files = sorted(SIEMENS_SERIES.iterdir())
    result = storescu(node, files, "-xv")
    assert result.returncode == 0, result.stderr
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    series = node.wait_for_series(first.SeriesInstanceUID, "dispatched", len(files))
    assert series["study_instance_uid"] == first.StudyInstanceUID
    assert series["modality"] == "CT"
    assert series["first_received"] <= series["last_received"]
    stored = {p.stem: p for p in node.stored_files()}
    assert len(stored) == len(files)
    for sent in files:
        uid = pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID
        received = stored[uid]
        assert pydicom.dcmread(received).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        assert dataset_bytes(received) == dataset_bytes(sent)
    metrics = node.metrics()
    assert metrics['segnode_instances_received_total{modality="CT"}'] == len(files)
    assert metrics['segnode_series_completed_total{signal="stable"}'] == 1
    assert metrics["segnode_received_bytes_total"] == sum(p.stat().st_size for p in stored.values())


def _send_with_pynetdicom(node, files):
    """For syntaxes Debian's dcmtk 3.6.7 predates (HTJ2K)."""
    from pynetdicom.sop_class import CTImageStorage

    syntax = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    try:
        for path in files:
            assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()


@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES, ids=lambda uid: pydicom.uid.UID(uid).name)
def test_every_transfer_syntax_arrives_byte_identical(node, tmp_path, syntax):
    files = write_ct_series(tmp_path / "sent", syntax, slices=3, rows=64, columns=64)
    if syntax in STORESCU_FLAGS:
        result = storescu(node, files, *STORESCU_FLAGS[syntax])
        assert result.returncode == 0, result.stderr
    else:
        _send_with_pynetdicom(node, files)
    stored = {p.stem: p for p in node.stored_files()}
    assert len(stored) == len(files)
    for sent in files:
        uid = pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID
        received = stored[uid]
        assert pydicom.dcmread(received, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        assert dataset_bytes(received) == dataset_bytes(sent)


def test_resent_instance_replaces_the_stored_copy_and_is_counted_once(node, tmp_path):
    files = write_ct_series(tmp_path / "sent", "1.2.840.10008.1.2.1", slices=4, rows=32, columns=32)
    for _ in range(2):
        assert storescu(node, files).returncode == 0
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    node.wait_for_series(series_uid, "dispatched", len(files))
    assert len(node.stored_files()) == len(files)


STORAGE_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
    "SR": "1.2.840.10008.5.1.4.1.1.88.33",
    "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
}


def test_every_kind_of_storage_sop_class_is_accepted(node):
    """CT, PET, NM, MR, SEG, SR, RTSTRUCT, Enhanced CT and secondary capture."""
    sop_classes = {**STORAGE_SOP_CLASSES, "CT-enhanced": "1.2.840.10008.5.1.4.1.1.2.1"}
    ae = AE(ae_title="TESTSCU")
    for sop_class in sop_classes.values():
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1"])
    study = pydicom.uid.generate_uid()
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    for modality, sop_class in sop_classes.items():
        dataset = pydicom.Dataset()
        dataset.SOPClassUID = sop_class
        dataset.SOPInstanceUID = pydicom.uid.generate_uid()
        dataset.StudyInstanceUID = study
        dataset.SeriesInstanceUID = pydicom.uid.generate_uid()
        dataset.Modality = modality.split("-")[0]
        dataset.PatientID = "SOPCLASSES"
        dataset.file_meta = pydicom.dataset.FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        assert assoc.send_c_store(dataset).Status == 0x0000, modality
    assoc.release()
    modalities = sorted(s["modality"] for s in node.status())
    assert modalities == sorted(m.split("-")[0] for m in sop_classes)
