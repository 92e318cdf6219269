"""The retention policy and its removals, on a real index, job queue and outbox
built through their own classes, with real files in tmp_path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from config import ConfigError, JobSettings, parse_config
from config.schema import RetentionSettings
from node.disk_space import DiskSpace, SpaceSample, seconds_to_full
from node.queue.jobs import JobKind, JobQueue, NewJob
from node.queue.results import SegmentResult
from node.receive.index import IndexWriteError, InstanceIndex
from node.receive.series_state import SeriesState
from node.receive.storage import InstanceStore, StoredInstance
from node.receive.validation import InstanceIdentity
from node.retention.keeper import purge
from node.retention.policy import RemovalKind, RemovalReason, plan
from node.retention.removal import RemovalStore
from node.send.outbox import OutboxStore, RetryPolicy
from node.send.sender import Outcome, SendResult
from node.work.preparation import results_dir
from tests.test_jobs import complete_quiet

HOUR = 3600.0
RETENTION = RetentionSettings(instances_hours=1, results_hours=2, failed_hours=10)
NO_SPACE_NEEDED = 0
# When the studies arrive: the test's start, as JobQueue.succeed dates a job by the clock.
T0 = time.time()


@pytest.fixture(autouse=True)
def _arrival_now() -> None:
    global T0
    T0 = time.time()

SEGMENT_JOB = [NewJob(JobKind.SEGMENT, "ct", "organs", ("PACS",), "")]


class Storage:
    """A storage folder written through the node's own classes."""

    def __init__(self, root: Path):
        self.root = root
        self.store = InstanceStore(root)
        self.index = InstanceIndex(root)
        self.queue = JobQueue(root)
        self.outbox = OutboxStore(root)
        self.removals = RemovalStore(root)

    def close(self) -> None:
        for part in (self.removals, self.outbox, self.queue, self.index):
            part.close()

    def receive(self, study: str, series: str, modality: str, n: int, at: float | None = None) -> list[Path]:
        at = T0 if at is None else at
        paths = []
        for k in range(n):
            identity = InstanceIdentity("1.2.840.10008.5.1.4.1.1.2", f"{series}.{k}", study, series, modality)
            path = self.store.path_for(identity)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 1000)
            stored = StoredInstance(identity, "1.2.840.10008.1.2.1", path, 1000, "SCANNER", at)
            self.index.record_instance(stored)
            paths.append(path)
        return paths

    def complete(self) -> None:
        complete_quiet(self.index, math.inf)

    def run_segmentation(self, series: str, at: float) -> tuple[int, Path]:
        """Hand a CT series over as a segment job, run it (results on disk, queued to PACS)."""
        (job_id,) = self.queue.enqueue_series(series, SEGMENT_JOB, at)
        job = self.queue.claim("w", 60, now=at)
        folder = results_dir(self.root, job)
        folder.mkdir(parents=True)
        (folder / "seg.dcm").write_bytes(b"s" * 300)
        (folder / "sr.dcm").write_bytes(b"r" * 200)
        self.outbox.enqueue(f"{job_id}/2.25.1", "PACS", [folder / "seg.dcm"], at)
        self.outbox.enqueue(f"{job_id}/2.25.2", "PACS", [folder / "sr.dcm"], at)
        self.queue.succeed(job_id, "w", segment_result(folder))
        return job_id, folder

    def deliver(self, outcome: Outcome, at: float) -> None:
        items = self.outbox.due("PACS", math.inf, 100)
        status = 0xC000 if outcome is Outcome.REFUSED else 0
        results = [SendResult(item.path, outcome, status) for item in items]
        self.outbox.record(items, results, at, RetryPolicy(max_refusals=1))

    def plan(self, now: float, shortfall: int = NO_SPACE_NEEDED):
        return plan(self.removals.activity(), RETENTION, now, shortfall)


def segment_result(folder: Path) -> SegmentResult:
    """What a segmentation job records of its outputs in `folder`."""
    return SegmentResult(folder / "seg.dcm", folder / "sr.dcm", folder / "measurements.csv",
                         folder / "labels.nii.gz", "builtin 1", 1, False, {})


@pytest.fixture
def storage(tmp_path) -> Storage:
    storage = Storage(tmp_path / "store")
    yield storage
    storage.close()


def pet_ct_study(storage: Storage) -> tuple[list[Path], list[Path]]:
    """Study 9.1: CT 1.1 (3 files) and PET 1.2 (2 files), complete."""
    ct = storage.receive("9.1", "1.1", "CT", 3)
    pet = storage.receive("9.1", "1.2", "PT", 2)
    storage.complete()
    return ct, pet


def test_nothing_is_removed_while_a_job_is_pending_or_a_result_undelivered(storage):
    ct, pet = pet_ct_study(storage)
    storage.queue.enqueue_series("1.2", [], T0)  # the PET has no job of its own: the CT's job reads it
    (job_id,) = storage.queue.enqueue_series("1.1", SEGMENT_JOB, T0)
    forever = T0 + 1000 * HOUR
    assert storage.plan(forever) == []  # queued
    storage.queue.claim("w", 60, now=T0)
    assert storage.plan(forever, shortfall=10**12) == []  # running, even when space runs out
    folder = results_dir(storage.root, storage.queue.get(job_id))
    folder.mkdir(parents=True)
    (folder / "seg.dcm").write_bytes(b"s" * 300)
    storage.outbox.enqueue(f"{job_id}/2.25.1", "PACS", [folder / "seg.dcm"], T0)
    storage.queue.succeed(job_id, "w", segment_result(folder))
    assert storage.plan(forever, shortfall=10**12) == []  # its SEG waits in the outbox
    assert purge(storage.removals, DiskSpace(storage.root, 1), RETENTION).removals == []
    assert all(path.exists() for path in ct + pet)

    storage.deliver(Outcome.SUCCESS, at=T0 + 10)
    due = storage.plan(forever)
    assert {(r.kind, r.series_instance_uid, r.reason) for r in due} == {
        (RemovalKind.INSTANCES, "1.1", RemovalReason.DELIVERED),
        (RemovalKind.INSTANCES, "1.2", RemovalReason.DELIVERED),
        (RemovalKind.RESULTS, "1.1", RemovalReason.DELIVERED),
    }


def test_periods_run_from_the_last_delivery(storage):
    pet_ct_study(storage)
    storage.queue.enqueue_series("1.2", [], T0)
    storage.run_segmentation("1.1", at=T0 + 5)
    storage.deliver(Outcome.SUCCESS, at=T0 + 100)
    assert storage.plan(T0 + 100 + HOUR - 1) == []
    assert {r.kind for r in storage.plan(T0 + 100 + HOUR)} == {RemovalKind.INSTANCES}
    due = storage.plan(T0 + 100 + 2 * HOUR)
    assert [r.kind for r in due].count(RemovalKind.RESULTS) == 1
    # A series of the study still arriving keeps the whole study.
    storage.receive("9.1", "1.3", "CT", 1, at=T0 + 200)
    assert {r.kind for r in storage.plan(T0 + 1000 * HOUR)} == {RemovalKind.RESULTS}


def test_a_removal_deletes_the_files_and_the_index_records_it(storage):
    ct, pet = pet_ct_study(storage)
    storage.queue.enqueue_series("1.2", [], T0)
    job_id, folder = storage.run_segmentation("1.1", at=T0)
    storage.deliver(Outcome.SUCCESS, at=T0)
    ledger = RetentionSettings(instances_hours=0, results_hours=0, failed_hours=0)
    removed = purge(storage.removals, DiskSpace(storage.root, 1), ledger).removals
    assert sorted((r.kind.value, r.series_instance_uid, r.bytes) for r in removed) == [
        ("instances", "1.1", 3000), ("instances", "1.2", 2000), ("results", "1.1", 500)]
    assert not any(path.exists() for path in ct + pet) and not folder.exists()
    # No empty folder is left per series or study.
    assert not any(path.parent.exists() or path.parent.parent.exists() for path in ct + pet)
    assert {s.series_instance_uid: (s.state, s.instances) for s in storage.index.all_series()} == {
        "1.1": (SeriesState.REMOVED, 0), "1.2": (SeriesState.REMOVED, 0)}
    records = storage.removals.removals()
    assert sorted((r.kind.value, r.series_instance_uid, r.job_id, r.files, r.bytes, r.reason.value)
                  for r in records) == [
        ("instances", "1.1", None, 3, 3000, "delivered"), ("instances", "1.2", None, 2, 2000, "delivered"),
        ("results", "1.1", job_id, 2, 500, "delivered")]
    assert all(r.removed_at is not None and r.removed_at >= r.decided_at for r in records)
    assert purge(storage.removals, DiskSpace(storage.root, 1), ledger).removals == []  # nothing twice
    assert storage.removals.stored_bytes().instances == 0

    # A job whose inputs are gone is not queued again to fail.
    with pytest.raises(ValueError, match="removed by the retention policy"):
        storage.queue.retry(job_id)

    # Sent again: the series starts a new life with what arrives.
    storage.receive("9.1", "1.1", "CT", 1, at=T0 + 50)
    assert storage.index.all_series()[0].state == SeriesState.RECEIVING


def test_a_failed_job_keeps_its_inputs_for_the_failed_period_unless_retried(storage):
    storage.receive("9.1", "1.1", "CT", 2)
    storage.complete()
    (job_id,) = storage.queue.enqueue_series("1.1", SEGMENT_JOB, T0)
    storage.queue.claim("w", 60, now=T0)
    storage.queue.fail(job_id, "w", "boom", JobSettings(max_attempts=1), now=T0)
    assert storage.plan(T0 + 9 * HOUR, shortfall=10**12) == []  # not even early: it waits for a retry
    due = storage.plan(T0 + 10 * HOUR)
    assert [(r.kind, r.reason) for r in due] == [(RemovalKind.INSTANCES, RemovalReason.FAILED)]
    storage.queue.retry(job_id, now=T0 + 9 * HOUR)
    assert storage.plan(T0 + 100 * HOUR) == []


def test_a_result_given_up_on_counts_as_settled(storage):
    storage.receive("9.1", "1.1", "CT", 2)
    storage.complete()
    storage.run_segmentation("1.1", at=T0)
    storage.deliver(Outcome.REFUSED, at=T0 + 10)  # refused for good (max_refusals 1)
    assert {r.kind for r in storage.plan(T0 + 10 + 2 * HOUR)} == {RemovalKind.INSTANCES, RemovalKind.RESULTS}


def test_below_the_watermark_settled_studies_go_early_oldest_first(storage):
    for k, study in enumerate(("9.1", "9.2", "9.3")):
        storage.receive(study, f"{study}.1", "CT", 2, at=T0 + k)
    storage.complete()
    for k, study in enumerate(("9.1", "9.2")):
        storage.queue.enqueue_series(f"{study}.1", [], T0 + k)  # no route
    (failed,) = storage.queue.enqueue_series("9.3.1", [NewJob(JobKind.SEGMENT, "ct", "o", ("PACS",), "")], T0)
    storage.queue.claim("w", 60, now=T0)
    storage.queue.fail(failed, "w", "boom", JobSettings(max_attempts=1), now=T0)
    assert storage.plan(T0 + 60) == []
    (early,) = storage.plan(T0 + 60, shortfall=1500)
    assert (early.series_instance_uid, early.reason) == ("9.1.1", RemovalReason.LOW_SPACE)
    everything = storage.plan(T0 + 60, shortfall=10**12)
    assert [r.series_instance_uid for r in everything] == ["9.1.1", "9.2.1"]  # never the failed study


def test_a_removal_cut_short_is_finished_later_and_refuses_instances_meanwhile(storage):
    paths = storage.receive("9.1", "1.1", "CT", 2)
    storage.complete()
    storage.queue.enqueue_series("1.1", [], T0)
    # A folder where a file should be cannot be unlinked: the removal stops
    # after its intent was recorded, as if the process had been killed.
    paths[1].unlink()
    paths[1].mkdir()
    (paths[1] / "blocker").write_text("")
    ledger = RetentionSettings(instances_hours=0, results_hours=0, failed_hours=0)
    with pytest.raises(OSError):
        purge(storage.removals, DiskSpace(storage.root, 1), ledger)
    assert storage.index.all_series()[0].state == SeriesState.REMOVING
    (record,) = storage.removals.removals()
    assert record.removed_at is None
    with pytest.raises(IndexWriteError, match="being removed"):
        storage.receive("9.1", "1.1", "CT", 1, at=T0 + 5)

    (paths[1] / "blocker").unlink()
    paths[1].rmdir()
    assert storage.removals.finish_interrupted() == 1
    assert storage.index.all_series()[0].state == SeriesState.REMOVED
    (record,) = storage.removals.removals()
    assert record.removed_at is not None and not paths[0].exists()


def test_time_to_full_is_the_net_rate_of_the_last_hour():
    assert seconds_to_full([SpaceSample(0, 1000)]) == math.inf
    assert seconds_to_full([SpaceSample(0, 1000), SpaceSample(30, 900)]) == math.inf  # under a minute
    assert seconds_to_full([SpaceSample(0, 1000), SpaceSample(100, 1100)]) == math.inf  # freeing
    assert seconds_to_full([SpaceSample(0, 1000), SpaceSample(50, 990), SpaceSample(100, 800)]) == 400


def test_free_space_is_what_statvfs_says_and_the_watermark_compares_with_it(tmp_path):
    info = os.statvfs(tmp_path)
    disk = DiskSpace(tmp_path, 1)
    assert abs(disk.free_bytes() - info.f_bavail * info.f_frsize) < 1 << 30
    assert not disk.is_low() and disk.shortfall_bytes() == 0
    disk.set_low_watermark(1 << 62)
    assert disk.is_low() and disk.became_low.is_set() and disk.shortfall_bytes() > 0


def test_the_retention_settings_are_checked_with_their_names():
    with pytest.raises(ConfigError) as error:
        parse_config("storage: {retention: {instances_hours: 48, failed_hours: 24}, low_watermark_bytes: -1}")
    assert error.value.errors == [
        "storage.retention: failed_hours (24.0) must be at least instances_hours (48.0): a failed job "
        "keeps its inputs longer than a finished one",
        "storage.low_watermark_bytes: Input should be greater than 0",
    ]


def test_segnode_storage_shows_usage_and_purges_only_when_told(storage, tmp_path):
    ct, pet = pet_ct_study(storage)
    storage.queue.enqueue_series("1.2", [], T0)
    storage.run_segmentation("1.1", at=T0)
    storage.deliver(Outcome.SUCCESS, at=T0)
    config = tmp_path / "segnode.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"storage_dir": str(storage.root)},
        "storage": {"retention": {"instances_hours": 0, "results_hours": 0, "failed_hours": 0}},
    }))

    def segnode(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "node.cli", "storage", *args, "--config", str(config)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = segnode()
    assert "instances 4.9 KiB, results 500 B" in shown and "low watermark 10.0 GiB" in shown
    assert "would remove: 5.4 KiB in 3 item(s)" in shown
    assert "instances of series 1.1 (study 9.1): 3 files, 2.9 KiB, delivered" in shown
    dry = segnode("purge")
    assert "dry run: nothing was removed" in dry and all(path.exists() for path in ct + pet)
    report = json.loads(segnode("purge", "--yes", "--json"))
    assert len(report["removed"]) == 3 and report["usage"]["instances_bytes"] == 5000
    assert not any(path.exists() for path in ct + pet)
    after = json.loads(segnode("--json"))
    assert after["usage"]["instances_bytes"] == 0 and after["would_remove"] == []
    assert {r["series_instance_uid"] for r in after["recent_removals"]} == {"1.1", "1.2"}


def test_a_removal_planned_by_two_processes_happens_once(storage):
    """The node's thread and ``segnode storage purge`` plan alike; the check
    under the write lock lets only the first carry a removal out."""
    storage.receive("9.1", "1.1", "CT", 2)
    storage.complete()
    storage.queue.enqueue_series("1.1", [], T0)
    ledger = RetentionSettings(instances_hours=0, results_hours=0, failed_hours=0)
    other = RemovalStore(storage.root)
    try:
        now = time.time()
        (mine,) = plan(storage.removals.activity(), ledger, now)
        (theirs,) = plan(other.activity(), ledger, now)
        assert other.remove(theirs, ledger, now)
        assert not storage.removals.remove(mine, ledger, now)
    finally:
        other.close()
    assert len(storage.removals.removals()) == 1
