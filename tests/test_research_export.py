"""The research export through the real node: dcmtk storescu -> segnode serve ->
two dcmtk storescps, the clinical destination and the research one.

A route with ``research`` sends the identified SEG and SR to its clinical
destination as before, and a de-identified copy of the CT series, the SEG and
the SR to the research destination, linked by their new UIDs; a series whose
header says BurnedInAnnotation YES is not exported, and the log says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.conftest import NodeProcess, StoreSCP
from tests.synthetic import write_ct_series
from tests.test_e2e import results, storescu, wait_for

# The node's end-to-end loops: the slow stage of .ci/run (README, Tests).
pytestmark = pytest.mark.slow

#: Printable, so that a test can look for it in what the node wrote.
SECRET = b"research-secret-0123456789-abcdefghijklmnop"
PATIENT_ID = "SEGNODE-RES-0001"
PATIENT_NAME = "Research^Subject"


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "research.key"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


@pytest.fixture
def clinical(tmp_path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path)
    yield scp
    scp.stop()


@pytest.fixture
def research(tmp_path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path)
    yield scp
    scp.stop()


def write_series(directory: Path, *, burned: bool = False) -> list[Path]:
    files = write_ct_series(directory, slices=8, rows=32, columns=32, pixel_spacing=(4.0, 4.0),
                            slice_thickness=4.0, patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    if burned:
        for path in files:
            dataset = pydicom.dcmread(path)
            dataset.BurnedInAnnotation = "YES"
            dataset.save_as(path)
    return files


def research_config(clinical_port: int, research_port: int, key_file: Path | None, **research) -> dict:
    config = {
        "destinations": {
            "RESULTS": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": clinical_port},
            "RESEARCH": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": research_port},
        },
        "pipelines": {"organs": {"model": "builtin"}},
        "routes": [{"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "send_to": ["RESULTS"],
                    "research": {"destination": "RESEARCH", **research}}],
        "jobs": {"max_attempts": 1},
        "sending": {"retry_base_seconds": 0.5, "retry_max_seconds": 2},
    }
    if key_file is not None:
        config["research"] = {"key_file": str(key_file)}
    return config


def started_node(node_factory, clinical: StoreSCP, research: StoreSCP, key_file: Path,
                 **options) -> NodeProcess:
    node = node_factory()
    node.config.update(research_config(clinical.port, research.port, key_file, **options))
    node.write_config()
    return node.start()


def uids(dataset: pydicom.Dataset) -> set[str]:
    return {str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.StudyInstanceUID)}


def test_a_route_with_research_sends_a_deidentified_linked_copy(node_factory, clinical, research, key_file,
                                                                tmp_path):
    ct_series = write_series(tmp_path / "ct")
    original = set().union(*(uids(pydicom.dcmread(f, stop_before_pixels=True)) for f in ct_series))
    node = started_node(node_factory, clinical, research, key_file, clean_descriptors=True)
    storescu(node, ct_series)
    # Both SEGs (the structures' and the body's), the SR and the series.
    found = wait_for(lambda: len((r := results(research)).get("SEG", ())) == 2 and r.get("SR")
                     and len(r.get("CT", ())) == len(ct_series) and r, 90, "the research copies")
    copies = [pydicom.dcmread(path) for paths in found.values() for path in paths]
    for copy in copies:
        assert str(copy.PatientID) != PATIENT_ID and str(copy.PatientName) != PATIENT_NAME
        assert not uids(copy) & original
    assert len({str(copy.PatientID) for copy in copies}) == 1  # one patient, one pseudonym
    received_ct = {str(pydicom.dcmread(path).SOPInstanceUID) for path in found["CT"]}
    for path in found["SEG"]:
        seg = pydicom.dcmread(path)
        referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence}
        assert referenced and referenced <= received_ct

    identified = wait_for(lambda: (r := results(clinical)).get("SEG") and r.get("SR") and r, 30,
                          "the clinical results")
    for modality in ("SEG", "SR"):
        dataset = pydicom.dcmread(identified[modality][0])
        assert (str(dataset.PatientID), str(dataset.PatientName)) == (PATIENT_ID, PATIENT_NAME)
    assert "CT" not in identified
    assert [j["state"] for j in node.status_jobs()] == ["done"]
    in_force = (node.storage_dir / "configuration-in-force.yaml").read_text()
    assert str(key_file) in in_force
    for written in (node.log(), in_force):
        assert SECRET.decode() not in written


def test_burned_in_annotation_exports_nothing_and_says_why(node_factory, clinical, research, key_file,
                                                           tmp_path):
    node = started_node(node_factory, clinical, research, key_file)
    storescu(node, write_series(tmp_path / "ct", burned=True))
    found = wait_for(lambda: len((r := results(clinical)).get("SEG", ())) == 2 and r.get("SR") and r, 90,
                     "the clinical results")
    assert (len(found["SEG"]), len(found["SR"])) == (2, 1)
    wait_for(lambda: [j["state"] for j in node.status_jobs()] == ["done"], 30, "the job to be done")
    assert "not exported for research" in node.log()
    time.sleep(2)  # what the outbox would have sent meanwhile
    assert not list(research.out.iterdir())


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "check-config", str(path)],
                          capture_output=True, text=True)


def refusal(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "segnode.yaml"
    path.write_text(yaml.safe_dump(config))
    result = check_config(path)
    assert result.returncode == 1, result.stdout
    return result.stderr


def test_check_config_accepts_a_usable_key(tmp_path, key_file):
    path = tmp_path / "segnode.yaml"
    path.write_text(yaml.safe_dump(research_config(104, 105, key_file, dates="modified")))
    result = check_config(path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("content", "mode", "problem"), [
    (None, 0o600, "no such file"),
    (b"too short", 0o600, "holds 9 bytes; the key must have at least 32"),
    (SECRET, 0o644, "readable by every user"),
])
def test_check_config_refuses_an_unusable_key_file(tmp_path, content, mode, problem):
    key = tmp_path / "research.key"
    if content is not None:
        key.write_bytes(content)
        key.chmod(mode)
    errors = refusal(tmp_path, research_config(104, 105, key))
    assert f"research.key_file: {key}: {problem}" in errors
    assert SECRET.decode() not in errors


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_check_config_refuses_an_unreadable_key_file(tmp_path, key_file):
    key_file.chmod(0o000)
    assert f"research.key_file: {key_file}: permission denied" in refusal(
        tmp_path, research_config(104, 105, key_file))


def test_check_config_refuses_an_unknown_research_destination_and_a_missing_key(tmp_path, key_file):
    config = research_config(104, 105, key_file)
    config["routes"][0]["research"]["destination"] = "NOPE"
    assert "routes[0].research.destination: unknown destination 'NOPE'" in refusal(tmp_path, config)
    errors = refusal(tmp_path, research_config(104, 105, None))
    assert "routes[0].research: needs research.key_file" in errors
    config = research_config(104, 105, key_file, dates="shifted")
    assert "routes[0].research.dates:" in refusal(tmp_path, config)
