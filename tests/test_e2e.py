"""The whole loop through real processes: dcmtk storescu -> segnode serve -> dcmtk storescp.

A synthetic CT series is sent as a scanner sends it; the node stores it,
completes it, routes it to a job, a worker process segments it, and the SEG
and SR go back by C-STORE to a storescp destination, where they are checked.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from config import Destination
from dicomio.seg import AlgorithmIdentity, write_seg
from dicomio.seg_reference import read_reference_seg
from dicomio.series import load_series
from inference.builtin import BuiltinSegmenter
from inference.qa import overlap
from node.receive.index import INDEX_FILENAME
from node.send.sender import send_files
from phantom.demo import DEMO_GRID
from phantom.study import write_study
from tests.conftest import NodeProcess, StoreSCP, dcmtk, dcmtk_env, free_port
from tests.synthetic import STORESCU_FLAGS, write_ct_series
from tests.test_seg import dciodvfy

# The node's end-to-end loops: the slow stage of .ci/run (README, Tests).
pytestmark = pytest.mark.slow


def configure(node: NodeProcess, destination_port: int, **pipeline) -> None:
    node.config.update(
        destinations={"RESULTS": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": destination_port}},
        pipelines={"organs": {"model": "builtin", **pipeline}},
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "send_to": ["RESULTS"]}],
        jobs={"max_attempts": 3, "retry_base_seconds": 1, "retry_max_seconds": 2},
        sending={"retry_base_seconds": 0.5, "retry_max_seconds": 2},
    )
    node.write_config()


@pytest.fixture
def destination(tmp_path) -> Iterator[StoreSCP]:
    """dcmtk's storescp as the route's destination, stopped after the test."""
    scp = StoreSCP(tmp_path)
    yield scp
    scp.stop()


def started_node(node_factory, destination: StoreSCP) -> NodeProcess:
    """A node serving, that routes CT to `destination` through the built-in pipeline."""
    node = node_factory()
    configure(node, destination.port)
    node.start()
    return node


def storescu(node: NodeProcess, files: list[Path]) -> None:
    subprocess.run(
        [dcmtk("storescu"), *STORESCU_FLAGS[ExplicitVRLittleEndian], "-aet", "STORESCU", "-aec", "SEGNODE",
         "127.0.0.1", str(node.port), *map(str, files)],
        check=True, env=dcmtk_env(), capture_output=True,
    )


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def results(destination: StoreSCP) -> dict[str, list[Path]]:
    """Files storescp received, by modality."""
    found: dict[str, list[Path]] = {}
    for path in destination.out.iterdir():
        try:
            modality = str(pydicom.dcmread(path, stop_before_pixels=True).Modality)
        except (InvalidDicomError, EOFError, OSError):
            continue  # storescp is still writing it
        found.setdefault(modality, []).append(path)
    return found


def every_result(destination: StoreSCP) -> dict[str, list[Path]] | None:
    """What arrived, once it is both SEGs (the structures' and the body's) and the SR."""
    found = results(destination)
    return found if len(found.get("SEG", [])) == 2 and found.get("SR") else None


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("ct"), slices=24, rows=96, columns=96,
                           pixel_spacing=(4.0, 4.0), slice_thickness=4.0)


def test_seg_and_sr_come_back_valid_and_on_the_source_grid(node_factory, destination, ct_series):
    node = started_node(node_factory, destination)
    storescu(node, ct_series)
    found = wait_for(lambda: every_result(destination), 90,
                     "the SEGs and SR at the destination")
    # The structures' SEG and the body's (every labelled voxel), instances 1 and 2 of one series.
    by_number = {int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber): p for p in found["SEG"]}
    seg_path, outline_path, sr_path = by_number[1], by_number[2], found["SR"][0]
    for path in (seg_path, outline_path, sr_path):
        dciodvfy(path)
    seg = hd.seg.segread(seg_path)
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct_series}
    referenced = {item.ReferencedSOPInstanceUID
                  for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
    assert referenced == sources
    volume = load_series(ct_series).volume
    ours = BuiltinSegmenter().segment(volume)
    values = {s.code.label: s.value for s in ours.structures}
    segments = read_reference_seg(seg_path, volume).segments
    assert segments
    for segment in segments:  # each segment lies exactly where the built-in put its structure
        expected = ours.labels[segment.box] == values[segment.label]
        np.testing.assert_array_equal(segment.mask, expected)
        assert segment.voxel_count == np.count_nonzero(ours.labels == values[segment.label])
    (body,) = read_reference_seg(outline_path, volume).segments
    assert body.label == "Body" and body.voxel_count == np.count_nonzero(ours.labels)
    jobs = node.status_jobs()
    assert [(j["kind"], j["state"]) for j in jobs] == [("segment", "done")]
    assert node.metrics()['segnode_jobs{kind="segment",state="done"}'] == 1


def test_a_destination_that_is_down_gets_the_results_when_it_is_back(node_factory, tmp_path, ct_series):
    node = node_factory()
    port = free_port()  # nobody listens there yet
    configure(node, port)
    node.start()
    storescu(node, ct_series)
    wait_for(lambda: any(j["state"] == "done" for j in node.status_jobs()), 90, "the job to finish")
    time.sleep(2)  # a delivery attempt or two fail meanwhile
    status = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path)],
                            capture_output=True, text=True, check=True).stdout
    assert "outbox RESULTS: 3 pending, 0 given up" in status and "last error" in status
    destination = StoreSCP(tmp_path, port=port)
    try:
        found = wait_for(lambda: every_result(destination), 60,
                         "delivery after the destination came back")
    finally:
        destination.stop()
    assert (len(found["SEG"]), len(found["SR"])) == (2, 1)


@pytest.fixture(scope="module")
def slow_series(tmp_path_factory) -> list[Path]:
    """A series whose job lasts seconds, long enough to be killed in."""
    return write_ct_series(tmp_path_factory.mktemp("slow"), slices=60, rows=256, columns=256,
                           pixel_spacing=(1.6, 1.6), slice_thickness=2.0)


def running_job(node: NodeProcess) -> dict | None:
    """The running job, read straight from the queue (a status call is too slow to catch it)."""
    db = sqlite3.connect(f"file:{node.storage_dir / INDEX_FILENAME}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT id, owner FROM jobs WHERE state = 'running'").fetchone()
    except sqlite3.OperationalError:  # no jobs table yet
        row = None
    finally:
        db.close()
    return None if row is None else {"id": row[0], "owner": row[1]}


def delivered_once(destination: StoreSCP) -> dict[str, set[str]]:
    found = wait_for(lambda: every_result(destination), 120,
                     "the SEGs and SR at the destination")
    time.sleep(2)  # anything sent twice would have arrived by now
    found = results(destination)
    return {modality: {pydicom.dcmread(p).SOPInstanceUID for p in paths} for modality, paths in found.items()}


def test_kill_9_of_the_node_during_a_job_then_restart_delivers_one_seg_and_one_sr(
    node_factory, destination, slow_series
):
    node = started_node(node_factory, destination)
    storescu(node, slow_series)
    wait_for(lambda: running_job(node), 60, "the job to start")
    workers = _children(node.proc.pid)
    node.kill()
    for pid in workers:  # the workers die with their node
        wait_for(lambda pid=pid: not _alive(pid), 10, f"worker {pid} to exit")
    node.start()
    uids = delivered_once(destination)
    assert len(uids["SEG"]) == 2 and len(uids["SR"]) == 1  # the structures' SEG and the body's
    (job,) = node.status_jobs()
    assert job["state"] == "done" and job["attempts"] == 2


def test_a_worker_killed_during_a_job_is_replaced_and_the_job_retried(node_factory, destination, slow_series):
    node = started_node(node_factory, destination)
    storescu(node, slow_series)
    job = wait_for(lambda: running_job(node), 60, "the job to start")
    os.kill(int(job["owner"].rsplit(":", 1)[1]), signal.SIGKILL)
    uids = delivered_once(destination)
    assert len(uids["SEG"]) == 2 and len(uids["SR"]) == 1  # the structures' SEG and the body's
    (job,) = node.status_jobs()
    assert job["state"] == "done" and job["attempts"] == 2
    assert "exited with status -9" in node.log()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waits for its parent, it runs no more
        return stat.read().split()[2] != "Z"


def test_a_reference_seg_from_someone_else_gets_a_qa_report(node_factory, destination, tmp_path, ct_series):
    """A radiologist's correction arrives as a SEG of the same series: the
    node compares it with its own and sends a QA report with the Dice."""
    node = started_node(node_factory, destination)
    storescu(node, ct_series)
    wait_for(lambda: results(destination).get("SR"), 90, "our SR")
    volume = load_series(ct_series).volume
    ours = BuiltinSegmenter().segment(volume)
    body = next(s for s in ours.structures if s.code.name == "other_soft_tissue")
    corrected = np.where(ours.labels == body.value, 0, ours.labels)
    corrected[:, 30:60, 30:60] = np.where(ours.labels[:, 30:60, 30:60] == body.value, body.value, 0)
    reference = write_seg(volume, corrected, ours.structures, AlgorithmIdentity("Radiologist", "1"),
                          [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_series],
                          series_number=77, series_description="corrected", device_serial_number="RAD1")
    reference.Manufacturer = "Reading Room"
    path = tmp_path / "reference-seg.dcm"
    reference.save_as(path, enforce_file_format=True)
    results_ = send_files(Destination(ae_title="SEGNODE", host="127.0.0.1", port=node.port), [path],
                          calling_ae="TESTSCU", timeout=10)
    assert results_[0].delivered, results_
    reports = wait_for(lambda: len((r := results(destination)).get("SR", [])) == 2 and r, 90,
                       "the QA report")
    qa = next(p for p in reports["SR"] if "QA" in str(pydicom.dcmread(p).SeriesDescription))
    dciodvfy(qa)
    expected = overlap(ours.labels == body.value, corrected == body.value, volume.spacing).dice
    assert 0 < expected < 1
    report = hd.sr.srread(qa)
    dice = [item for item in report.ContentSequence[-1].ContentSequence[0].ContentSequence
            if item.ValueType == "NUM" and "Dice" in item.ConceptNameCodeSequence[0].CodeMeaning]
    assert float(dice[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(expected, abs=1e-4)
    kinds = sorted((j["kind"], j["state"]) for j in node.status_jobs())
    assert kinds == [("qa", "done"), ("segment", "done")]
    metrics = node.metrics()
    structure = 'route="ct",structure="other_soft_tissue"'
    assert metrics[f"segnode_qa_dice{{{structure}}}"] == pytest.approx(expected, abs=1e-4)
    assert 0 < metrics[f"segnode_qa_jaccard{{{structure}}}"] < expected
    assert metrics[f"segnode_qa_hd95_mm{{{structure}}}"] > 0


def test_a_job_that_keeps_failing_is_failed_visibly_and_can_be_retried(
    node_factory, destination, ct_series, tmp_path
):
    models = tmp_path / "models"  # the worker looks the model up in node.models_dir
    node = node_factory(models_dir=str(models))
    configure(node, destination.port, model="no-such-model")
    node.config["jobs"] = {"max_attempts": 2, "retry_base_seconds": 0.5, "retry_max_seconds": 1}
    node.write_config()
    node.start()
    storescu(node, ct_series)
    (job,) = wait_for(lambda: [j for j in node.status_jobs() if j["state"] == "failed"], 60,
                      "the job to fail")
    assert job["attempts"] == 2 and f"no model named 'no-such-model' in {models}" in job["error"]
    cli = [sys.executable, "-m", "node.cli"]
    status = subprocess.run([*cli, "status", "--config", str(node.config_path)], capture_output=True,
                            text=True, check=True).stdout
    assert f"job {job['id']} failed after 2 attempts" in status
    assert node.metrics()['segnode_jobs{kind="segment",state="failed"}'] == 1
    node.config["pipelines"]["organs"]["model"] = "builtin"  # the administrator fixes the pipeline
    node.write_config()
    time.sleep(1.5)  # the worker rereads its configuration between jobs
    retried = subprocess.run([*cli, "jobs", "retry", str(job["id"]), "--config", str(node.config_path)],
                             capture_output=True, text=True)
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: (r := results(destination)).get("SEG") and r.get("SR"), 60, "the results")
    assert [j["state"] for j in node.status_jobs()] == ["done"]
    missing = subprocess.run([*cli, "jobs", "retry", "999", "--config", str(node.config_path)],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no job 999" in missing.stderr


def test_a_pet_series_arriving_after_its_ct_was_measured_adds_pet_measurements(
    node_factory, destination, tmp_path
):
    study = write_study(tmp_path / "study", DEMO_GRID)
    node = started_node(node_factory, destination)
    to_node = Destination(ae_title="SEGNODE", host="127.0.0.1", port=node.port)
    send = lambda files: send_files(to_node, files, calling_ae="TESTSCU", timeout=10)  # noqa: E731
    assert all(r.delivered for r in send(study.ct.files))
    wait_for(lambda: results(destination).get("SR"), 90, "the CT-only results")
    assert node.status_jobs()[0]["result"]["pet"] is False
    assert all(r.delivered for r in send(study.pet.files))
    found = wait_for(lambda: len((r := results(destination)).get("SR", [])) == 2 and r, 90,
                     "the results with PET")
    (job,) = node.status_jobs()
    assert job["state"] == "done" and job["result"]["pet"] is True
    with open(job["result"]["csv"], newline="") as table:
        lungs = {r["structure"]: r for r in csv.DictReader(table) if r["structure"].startswith("lung")}
    for name, row in lungs.items():
        assert float(row["suv_mean"]) == pytest.approx(study.truth[name].suv_mean, abs=0.05)
    seg_uids = {pydicom.dcmread(p).SOPInstanceUID for p in found["SEG"]}
    assert len(seg_uids) == 4  # the inputs changed, so the objects (two SEGs each time) are new ones


def test_a_pet_ct_study_ended_by_its_associations_is_measured_once_with_pet(
    node_factory, destination, tmp_path
):
    """Both series complete when their associations end, with no stable
    period; the CT's job, held while the PET of its study arrives in the next
    association, runs once, with PET."""
    study = write_study(tmp_path / "study", DEMO_GRID)
    node = node_factory(series_stable_seconds=60, association_grace_seconds=2)
    configure(node, destination.port)
    node.config["peers"] = [{"ae_title": "STORESCU", "completion": "association"}]
    node.write_config()
    node.start()
    storescu(node, study.ct.files)
    storescu(node, study.pet.files)
    wait_for(lambda: results(destination).get("SR"), 180, "the results")
    (job,) = node.status_jobs()
    assert job["state"] == "done" and job["result"]["pet"] is True
    signals = {series["modality"]: series["completed_by"] for series in node.status()}
    assert signals == {"CT": "association", "PT": "association"}
    time.sleep(2)
    assert len(results(destination)["SR"]) == 1


def test_workers_never_outlive_their_node_even_while_starting(node_factory, tmp_path):
    node = node_factory()
    configure(node, free_port())
    node.start()  # ready as soon as the workers are spawned: they are still importing
    workers = _children(node.proc.pid)
    assert workers
    node.kill()
    for pid in workers:
        wait_for(lambda pid=pid: not _alive(pid), 10, f"worker {pid} to die with its node")
