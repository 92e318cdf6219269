"""The loop with a real PACS: Orthanc sends a CT series to segnode, segnode sends SEG and SR back.

Orthanc (Debian's ``orthanc``) runs as a subprocess on loopback with its own
configuration and storage in the test's folder. The CT series goes into it
over REST, Orthanc C-STOREs it to segnode (``/modalities/segnode/store``), and
the SEG and SR that segnode returns are checked through Orthanc's REST API:
in the CT's study, the SEG referencing the CT images and the SR the SEG.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from tests.conftest import NodeProcess, free_port
from tests.synthetic import write_ct_series

# A real Orthanc and node loop: the slow stage (.ci/run).
pytestmark = pytest.mark.slow

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_AE = "ORTHANC"


def orthanc() -> str:
    """Path of Orthanc; .ci/run installs it, so its absence is an error."""
    if not ORTHANC.exists():
        pytest.fail(f"Orthanc is not installed at {ORTHANC}: run ./install.sh --test")
    return str(ORTHANC)


class OrthancProcess:
    """Orthanc on free loopback ports, knowing one modality: the segnode under test.

    ``settings`` add to or replace options of its configuration (its DICOM
    TLS, say: tests/test_orthanc_tls.py).
    """

    def __init__(self, workdir: Path, node: NodeProcess, **settings):
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = workdir / "orthanc.log"
        config = {
            "Name": "segnode-test",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # the REST API answers loopback clients only
            "AuthenticationEnabled": False,
            "DicomAet": ORTHANC_AE,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            # Orthanc 1.10.1 listens for DICOM on every interface; only the
            # registered modality, calling from its own host, may store or echo.
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"segnode": [node.config["node"]["ae_title"], "127.0.0.1", node.port]},
            "SaveJobs": False,
            **settings,
        }
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [orthanc(), str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise

    def _wait_until_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc's REST API did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as exc:  # Orthanc describes its errors in the body
            detail = exc.read().decode(errors="replace")
            raise AssertionError(f"{method} {path}: HTTP {exc.code} {detail}") from exc

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def post(self, path: str, body: bytes, content_type: str = "application/json"):
        return json.loads(self.request("POST", path, body, content_type))

    def upload(self, path: Path) -> dict:
        return self.post("/instances", path.read_bytes(), "application/dicom")

    def dataset(self, instance_id: str) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(self.request("GET", f"/instances/{instance_id}/file")))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def serve_orthanc(node: NodeProcess, pacs: OrthancProcess, *, peer: dict | None = None,
                  destination: dict | None = None) -> None:
    """Start the node taking series from Orthanc and sending its results back
    there; ``peer`` and ``destination`` add to Orthanc's entries (their TLS, say)."""
    node.config["peers"].append({"ae_title": ORTHANC_AE, "host": "127.0.0.1", **(peer or {})})
    node.config.update(
        destinations={"PACS": {"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": pacs.dicom_port,
                               **(destination or {})}},
        pipelines={"organs": {"model": "builtin"}},
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "send_to": ["PACS"]}],
        sending={"retry_base_seconds": 0.5, "retry_max_seconds": 2},
    )
    node.write_config()
    node.start()


@pytest.fixture
def node_and_orthanc(node_factory, tmp_path) -> Iterator[tuple[NodeProcess, OrthancProcess]]:
    node = node_factory()
    pacs = OrthancProcess(tmp_path / "orthanc", node)
    try:
        serve_orthanc(node, pacs)
        yield node, pacs
    finally:
        pacs.stop()


def wait_for_results(pacs: OrthancProcess, node: NodeProcess, study_id: str, timeout: float) -> dict:
    """The study's series by modality, once the SEG series (the structures'
    SEG and the body's) and an SR are among them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study_series = pacs.get(f"/studies/{study_id}/series")
        found = {series["MainDicomTags"]["Modality"]: series for series in study_series}
        if "SEG" in found and len(found["SEG"]["Instances"]) == 2 and "SR" in found:
            return found
        time.sleep(0.3)
    raise AssertionError(
        f"no SEG and SR in Orthanc's study after {timeout:g}s: {sorted(found)}\n"
        f"segnode log:\n{node.log()}\nOrthanc log:\n{pacs.log()}"
    )


@dataclass(frozen=True)
class Upload:
    """A series put into Orthanc: its files and Orthanc's ids of the series and study."""

    files: list[Path]
    series_id: str
    study_id: str


def upload_series(pacs: OrthancProcess, files: list[Path]) -> Upload:
    uploaded = [pacs.upload(path) for path in files]
    assert {item["Status"] for item in uploaded} == {"Success"}
    (series_id,) = {item["ParentSeries"] for item in uploaded}
    (study_id,) = {item["ParentStudy"] for item in uploaded}
    return Upload(files, series_id, study_id)


def run_the_loop(node: NodeProcess, pacs: OrthancProcess, folder: Path) -> None:
    """Orthanc C-STOREs a CT series to the node; its SEG and SR come back
    into the CT's study, whole and referencing what they should."""
    ct = upload_series(pacs, write_ct_series(folder / "ct", slices=24, rows=96, columns=96,
                                             pixel_spacing=(4.0, 4.0), slice_thickness=4.0))

    sent = pacs.post("/modalities/segnode/store",
                     json.dumps({"Resources": [ct.series_id], "Synchronous": True}).encode())
    assert (sent["InstancesCount"], sent["FailedInstancesCount"]) == (len(ct.files), 0)

    found = wait_for_results(pacs, node, ct.study_id, timeout=60)
    assert set(found) == {"CT", "SEG", "SR"}
    ct_sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct.files}
    ct_series_uid = pydicom.dcmread(ct.files[0], stop_before_pixels=True).SeriesInstanceUID
    study_uid = pacs.get(f"/studies/{ct.study_id}")["MainDicomTags"]["StudyInstanceUID"]
    (received,) = node.status()  # segnode took the series from Orthanc's AE, whole
    assert (received["series_instance_uid"], received["instances"]) == (ct_series_uid, len(ct.files))

    results = {}
    for modality in ("SEG", "SR"):
        for instance_id in found[modality]["Instances"]:
            assert pacs.request("GET", f"/instances/{instance_id}/metadata/RemoteAET").decode() == "SEGNODE"
            dataset = pacs.dataset(instance_id)
            results[modality, int(dataset.InstanceNumber)] = dataset
    # One SEG series: the structures' SEG and the body's (every labelled voxel, overlapping them).
    assert sorted(results) == [("SEG", 1), ("SEG", 2), ("SR", 1)]
    seg, outline, sr = results["SEG", 1], results["SEG", 2], results["SR", 1]
    assert (seg.SOPClassUID, sr.SOPClassUID) == (SegmentationStorage, Comprehensive3DSRStorage)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid

    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == ct_series_uid
    referenced_images = referenced_series.ReferencedInstanceSequence
    assert {item.ReferencedSOPInstanceUID for item in referenced_images} == ct_sources

    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_volumetric_roi_measurement_groups()
    segment_numbers = {(instance.SOPInstanceUID, segment.SegmentNumber)
                       for instance in (seg, outline) for segment in instance.SegmentSequence}
    assert len(groups) == len(segment_numbers)
    referenced_numbers = set()
    for group in groups:
        segment_item, source_series = group.referenced_segment
        assert segment_item.referenced_sop_class_uid == SegmentationStorage
        assert source_series.value == ct_series_uid
        referenced_numbers.update((segment_item.referenced_sop_instance_uid, number)
                                  for number in segment_item.referenced_segment_numbers)
    assert referenced_numbers == segment_numbers


def test_orthanc_sends_a_ct_series_and_gets_seg_and_sr_back_in_the_same_study(node_and_orthanc, tmp_path):
    run_the_loop(*node_and_orthanc, tmp_path)
