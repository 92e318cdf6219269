"""MPPS steps leave with retention (node/retention/steps.py), on a real index
and step files written through the node's own classes, and through a real
SCP for what a scanner is answered afterwards."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from config import parse_config
from config.schema import RetentionSettings
from node.assemble.completion import Timing, completion
from node.disk_space import DiskSpace
from node.metrics import NodeMetrics
from node.receive.index import INDEX_FILENAME, InstanceIndex, StoredStep
from node.receive.mpps import Step, created, updated
from node.receive.scp import StorageSCP
from node.receive.series_state import CompletionSignal, SeriesState
from node.receive.step_files import ORPHAN_SECONDS, StepFiles, encoded
from node.receive.storage import InstanceStore, StoredInstance
from node.receive.validation import InstanceIdentity
from node.retention.keeper import StorageKeeper, remove_steps
from node.retention.removal import RemovalStore
from tests.conftest import free_port
from tests.test_jobs import complete_quiet
from tests.test_mpps_protocol import scanner_create, scanner_set

HOUR = 3600.0
RETENTION = RetentionSettings(instances_hours=1, results_hours=2, failed_hours=10)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "9.1"


class Steps:
    """A storage folder whose steps are kept as the SCP keeps them
    (node/receive/scp.py: the file, then the index, then the old version
    deleted), at the times a test gives."""

    def __init__(self, root: Path):
        self.root = root
        self.index = InstanceIndex(root)
        self.files = StepFiles(root)
        self.instances = InstanceStore(root)
        self.removals = RemovalStore(root)

    def close(self) -> None:
        self.removals.close()
        self.index.close()

    def begin(self, at: float) -> StoredStep:
        """A scanner's N-CREATE."""
        dataset, step = created(generate_uid(), scanner_create(STUDY))
        return self._keep(dataset, step, at, None)

    def end(self, current: StoredStep, series: dict[str, list[str]], at: float,
            status: str = "COMPLETED") -> StoredStep:
        """A scanner's final N-SET, listing `series`."""
        dataset, step = updated(StepFiles.read(current.path), scanner_set(series, status))
        return self._keep(dataset, step, at, current)

    def _keep(self, dataset: Dataset, step: Step, at: float, current: StoredStep | None) -> StoredStep:
        version = 1 if current is None else current.version + 1
        path = self.files.write(step.sop_instance_uid, version, encoded(dataset))
        stored = StoredStep(step.sop_instance_uid, step.status, version, path)
        self.index.record_step(step, stored, "SCANNER", at, current)
        if current is not None:
            self.files.remove(current.path)
        return stored

    def receive(self, series: str, sops: list[str], at: float) -> None:
        for sop in sops:
            identity = InstanceIdentity(CT_IMAGE_STORAGE, sop, STUDY, series, "CT")
            path = self.instances.path_for(identity)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 100)
            stored = StoredInstance(identity, "1.2.840.10008.1.2.1", path, 100, "SCANNER", at)
            self.index.record_instance(stored)

    def promises(self) -> dict[str, tuple[str, int]]:
        """Per promised series: the step holding it and how many instances it lists."""
        db = sqlite3.connect(self.root / INDEX_FILENAME)
        try:
            return {series: (step, listed) for series, step, listed in db.execute(
                "SELECT p.series_instance_uid, p.step_uid, (SELECT COUNT(*) FROM promised_instances i "
                "WHERE i.series_instance_uid = p.series_instance_uid) FROM promised_series p")}
        finally:
            db.close()

    def kept(self) -> set[str]:
        """The files in the steps' folder."""
        return {path.name for path in self.files.folder.iterdir()}


@pytest.fixture
def steps(tmp_path) -> Steps:
    steps = Steps(tmp_path / "store")
    yield steps
    steps.close()


# When the tests' steps begin (the passes are told the time): the test's
# start, as the step files are dated by the clock.
T0 = time.time()


@pytest.fixture(autouse=True)
def _begin_now() -> None:
    global T0
    T0 = time.time()


def test_an_ended_step_goes_instances_hours_after_it_ended_with_its_promises(steps):
    # 1.2 came and was completed by the stable period with one of the two
    # instances the step lists: its promise waits for the other. 1.1 never came.
    steps.receive("1.2", ["1.2.1"], at=T0)
    complete_quiet(steps.index, math.inf)
    ended = steps.end(steps.begin(T0), {"1.1": ["1.1.1", "1.1.2"], "1.2": ["1.2.1", "1.2.2"]}, at=T0 + 60)
    later = steps.end(steps.begin(T0), {"1.3": ["1.3.1"]}, at=T0 + 2 * HOUR)
    assert steps.promises() == {"1.1": (ended.sop_instance_uid, 2), "1.2": (ended.sop_instance_uid, 2),
                                "1.3": (later.sop_instance_uid, 1)}

    assert remove_steps(steps.removals, RETENTION, T0 + 60 + HOUR - 1)[0] == 0
    assert steps.index.step(ended.sop_instance_uid) is not None and ended.path.exists()
    size = ended.path.stat().st_size
    assert remove_steps(steps.removals, RETENTION, T0 + 60 + HOUR) == (1, size)
    assert steps.index.step(ended.sop_instance_uid) is None and not ended.path.exists()
    assert steps.promises() == {"1.3": (later.sop_instance_uid, 1)}  # the later step's own stay
    assert steps.kept() == {later.path.name}
    assert steps.index.step(later.sop_instance_uid).version == 2
    assert remove_steps(steps.removals, RETENTION, T0 + 60 + HOUR)[0] == 0  # nothing twice


def test_the_node_s_retention_pass_counts_the_bytes_of_the_steps_it_removes(steps):
    ended = steps.end(steps.begin(T0 - 3 * HOUR), {"1.1": ["1.1.1"]}, at=T0 - 2 * HOUR)
    size = ended.path.stat().st_size
    registry = CollectorRegistry()
    settings = parse_config("storage: {retention: {instances_hours: 1, results_hours: 2, failed_hours: 10}}",
                            check_files=False).storage
    keeper = StorageKeeper(steps.removals, DiskSpace(steps.root, 1), NodeMetrics(registry), lambda: settings)
    keeper.start()
    try:
        deadline = time.monotonic() + 10
        while ended.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        keeper.stop()  # closes the store
        steps.removals = RemovalStore(steps.root)
    assert not ended.path.exists()
    assert registry.get_sample_value("segnode_storage_freed_bytes_total", {"kind": "mpps"}) == size


def test_a_step_never_ended_goes_failed_hours_after_its_last_update(steps):
    open_ = steps.begin(T0)
    discontinued = steps.end(steps.begin(T0), {"1.1": ["1.1.1"]}, at=T0, status="DISCONTINUED")
    assert remove_steps(steps.removals, RETENTION, T0 + HOUR)[0] == 1  # ended: instances_hours
    assert steps.index.step(discontinued.sop_instance_uid) is None and steps.promises() == {}
    assert remove_steps(steps.removals, RETENTION, T0 + 10 * HOUR - 1)[0] == 0
    assert steps.kept() == {open_.path.name}
    assert remove_steps(steps.removals, RETENTION, T0 + 10 * HOUR)[0] == 1
    assert steps.index.step(open_.sop_instance_uid) is None and steps.kept() == set()


def test_a_step_whose_promise_decides_a_receiving_series_is_kept_until_it_completes(steps):
    steps.receive("1.1", ["1.1.1", "1.1.2"], at=T0)
    step = steps.end(steps.begin(T0), {"1.1": ["1.1.1", "1.1.2", "1.1.3"]}, at=T0)
    much_later = T0 + 100 * HOUR
    assert remove_steps(steps.removals, RETENTION, much_later)[0] == 0
    (progress,) = steps.index.receiving()
    assert progress.promise is not None and progress.promise.step_uid == step.sop_instance_uid

    # The promise completes the series without its third instance, and is spent.
    decided = completion(progress, much_later, Timing(stable_seconds=60, mpps_wait_seconds=60), held=False)
    assert decided.signal == CompletionSignal.MPPS_INCOMPLETE
    assert steps.index.complete(progress, decided).state == SeriesState.COMPLETE
    assert remove_steps(steps.removals, RETENTION, much_later)[0] == 1
    assert steps.index.step(step.sop_instance_uid) is None and steps.kept() == set()


def test_a_removal_cut_short_leaves_an_orphan_that_the_next_pass_deletes(steps):
    step = steps.end(steps.begin(T0), {"1.1": ["1.1.1"]}, at=T0)
    open_ = steps.begin(T0)
    # Killed after its rows went, before its file did: the first half alone.
    due = T0 + HOUR
    assert steps.removals._forget_step(step.sop_instance_uid, RETENTION, due) == step.path
    assert steps.index.step(step.sop_instance_uid) is None and steps.promises() == {}
    assert step.path.exists()
    # And a version written but never named: an N-SET killed before the index.
    unnamed = steps.files.write(open_.sop_instance_uid, 2, open_.path.read_bytes())

    # Files written in the last hour may be versions about to be named: spared.
    written = time.time()
    assert remove_steps(steps.removals, RETENTION, written)[0] == 0
    assert steps.kept() == {step.path.name, open_.path.name, unnamed.name}
    assert remove_steps(steps.removals, RETENTION, written + ORPHAN_SECONDS + 1)[0] == 0
    assert steps.kept() == {open_.path.name}  # the step in progress is not due
    assert steps.index.step(open_.sop_instance_uid).path == open_.path


# What a scanner is answered, through a real SCP ------------------------------------------------


@pytest.fixture
def scp(tmp_path, monkeypatch):
    """A StorageSCP listening in this process; the process-wide settings its
    start changes are put back after it (as in tests/test_console_snapshot.py)."""
    monkeypatch.setattr(pynetdicom_config, "STORE_RECV_CHUNKED_DATASET",
                        pynetdicom_config.STORE_RECV_CHUNKED_DATASET)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    storage = tmp_path / "store"
    port = free_port()
    config = parse_config(
        f"node: {{ae_title: SEGNODE, host: 127.0.0.1, port: {port}, storage_dir: {storage}}}\n"
        "storage: {low_watermark_bytes: 1048576}\npeers: [{ae_title: SCANNER}]\n",
        check_files=False,
    )
    index = InstanceIndex(storage)
    server = StorageSCP(config, InstanceStore(storage), index, NodeMetrics(CollectorRegistry()),
                        DiskSpace(storage, config.storage.low_watermark_bytes), lambda at: None)
    server.start()
    yield storage, port
    server.shutdown()
    index.close()


def request(port: int, send) -> Dataset:
    """One MPPS request on an association of its own, as scanners send them; the response's status."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ModalityPerformedProcedureStep, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE")
    assert assoc.is_established
    try:
        status, _ = send(assoc)
    finally:
        assoc.release()
    return status


def n_create(port: int, uid: str) -> int:
    return request(port, lambda assoc: assoc.send_n_create(
        scanner_create(STUDY), ModalityPerformedProcedureStep, uid)).Status


def n_set(port: int, uid: str, series: dict[str, list[str]]) -> tuple[int, str]:
    status = request(port, lambda assoc: assoc.send_n_set(
        scanner_set(series), ModalityPerformedProcedureStep, uid))
    return status.Status, status.get("ErrorComment")


def test_an_n_set_for_a_removed_step_is_answered_as_for_an_unknown_one(scp):
    storage, port = scp
    ended, open_ = generate_uid(), generate_uid()
    assert n_create(port, ended) == n_create(port, open_) == 0x0000
    assert n_set(port, ended, {"1.1": ["1.1.1"]}) == (0x0000, None)
    assert len(list((storage / "mpps").iterdir())) == 2

    config = storage.parent / "purge.yaml"
    config.write_text(f"node: {{storage_dir: {storage}}}\n"
                      "storage: {retention: {instances_hours: 0, results_hours: 0, failed_hours: 0}}\n")

    def segnode_storage(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "node.cli", "storage", *args, "--json", "--config",
                               str(config)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    files = sum(path.stat().st_size for path in (storage / "mpps").iterdir())
    assert segnode_storage("purge")["mpps_steps_due"] == {"steps": 2, "bytes": files}  # a dry run
    assert len(list((storage / "mpps").iterdir())) == 2
    assert segnode_storage("purge", "--yes")["mpps_steps_removed"] == {"steps": 2, "bytes": files}
    assert list((storage / "mpps").iterdir()) == []

    unknown = n_set(port, generate_uid(), {"1.1": ["1.1.1"]})
    assert unknown == (0x0112, "no such MPPS step")
    assert n_set(port, ended, {"1.1": ["1.1.1"]}) == unknown
    assert n_set(port, open_, {"1.1": ["1.1.1"]}) == unknown
    # The SCP goes on: a new step is kept as before.
    assert n_create(port, generate_uid()) == 0x0000
