"""The job queue on a real SQLite file: enqueueing a series, leases, retries, backoff."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from pathlib import Path

import pytest

from config import JobSettings
from node.assemble.completion import Timing, completion
from node.queue.job_state import JobState
from node.queue.jobs import JobKind, JobQueue, LeaseLostError, NewJob, retry_delay
from node.queue.results import Agreement, ComparisonResult, SegmentResult
from node.receive.index import INDEX_FILENAME, InstanceIndex
from node.receive.storage import StoredInstance
from node.receive.validation import InstanceIdentity

SETTINGS = JobSettings(max_attempts=3, retry_base_seconds=10, retry_max_seconds=25)
RESULT = SegmentResult(Path("/r/seg.dcm"), Path("/r/sr.dcm"), Path("/r/measurements.csv"),
                       Path("/r/labels.nii.gz"), "builtin 1", 4, False, {"load": 0.5, "segment": 2.0})


def receive(index: InstanceIndex, series: str, study: str, modality: str, at: float, n: int = 1) -> None:
    for k in range(n):
        identity = InstanceIdentity("1.2.840.10008.5.1.4.1.1.2", f"{series}.{k}", study, series, modality)
        index.record_instance(StoredInstance(identity, "1.2.840.10008.1.2.1", Path(f"/x/{series}.{k}"), 1,
                                             "SCANNER", at))


def complete_quiet(index: InstanceIndex, before: float) -> None:
    """Complete, as the stable period would at `before`, every series quiet since then."""
    for progress in index.receiving():
        timing = Timing(stable_seconds=0, mpps_wait_seconds=math.inf)
        decided = completion(progress, before, timing, held=False)
        if decided is not None:
            index.complete(progress, decided)


def segment_job(route: str = "organs") -> NewJob:
    return NewJob(JobKind.SEGMENT, route, "organs", ("PACS",), subject="")


@pytest.fixture
def queue(tmp_path):
    index = InstanceIndex(tmp_path)
    queue = JobQueue(tmp_path)
    receive(index, "1.1", "9.1", "CT", at=100.0, n=3)
    complete_quiet(index, 200.0)
    yield queue, index
    queue.close()
    index.close()


def test_enqueue_series_queues_jobs_and_marks_the_series_in_one_step(queue):
    jobs, index = queue
    (job_id,) = jobs.enqueue_series("1.1", [segment_job()], now=300.0)
    assert [s.state for s in index.all_series()] == ["dispatched"]
    job = jobs.get(job_id)
    assert (job.state, job.attempts, job.study_instance_uid, job.destinations) == (
        JobState.QUEUED, 0, "9.1", ("PACS",))
    with pytest.raises(Exception, match="not allowed"):
        jobs.enqueue_series("1.1", [segment_job()], now=301.0)  # already dispatched
    assert len(jobs.jobs()) == 1


def test_a_job_waits_while_its_study_is_still_arriving(queue):
    jobs, index = queue
    jobs.enqueue_series("1.1", [segment_job()], now=300.0)
    receive(index, "1.2", "9.1", "PT", at=310.0)  # the PET of the same study is arriving
    assert jobs.claim("w1", 60, now=320.0) is None
    complete_quiet(index, 400.0)
    job = jobs.claim("w1", 60, now=420.0)
    assert job is not None and (job.state, job.owner, job.attempts) == (JobState.RUNNING, "w1", 1)
    assert jobs.claim("w2", 60, now=421.0) is None  # taken


def test_failures_back_off_then_fail_for_good_and_retry_requeues(queue):
    jobs, _ = queue
    (job_id,) = jobs.enqueue_series("1.1", [segment_job()], now=0.0)
    assert [retry_delay(n, SETTINGS) for n in (1, 2, 3)] == [10, 20, 25]
    now = 0.0
    for attempt in (1, 2):
        job = jobs.claim("w", 60, now=now)
        assert job.attempts == attempt
        job = jobs.fail(job_id, "w", "boom", SETTINGS, now=now)
        assert job.state == JobState.QUEUED and job.not_before == now + retry_delay(attempt, SETTINGS)
        assert jobs.claim("w", 60, now=job.not_before - 0.1) is None
        now = job.not_before
    jobs.claim("w", 60, now=now)
    job = jobs.fail(job_id, "w", "still broken", SETTINGS, now=now)
    assert (job.state, job.error, job.attempts) == (JobState.FAILED, "still broken", 3)
    assert jobs.claim("w", 60, now=now + 10_000) is None
    assert jobs.counts()[(JobKind.SEGMENT, JobState.FAILED)] == 1
    job = jobs.retry(job_id, now=now)
    assert (job.state, job.attempts, job.error) == (JobState.QUEUED, 0, None)
    assert jobs.claim("w", 60, now=now).id == job_id


def test_a_dead_workers_job_is_recovered_and_its_late_result_refused(queue):
    jobs, _ = queue
    (job_id,) = jobs.enqueue_series("1.1", [segment_job()], now=0.0)
    jobs.claim("w1", 60, now=0.0)
    jobs.renew(job_id, "w1", 60, now=50.0)
    assert jobs.recover(SETTINGS, now=100.0) == []  # lease renewed until 110
    (recovered,) = jobs.recover(SETTINGS, now=111.0)
    assert recovered.state == JobState.QUEUED and "w1 stopped" in recovered.error
    with pytest.raises(LeaseLostError):
        jobs.succeed(job_id, "w1", RESULT)
    jobs.claim("w2", 60, now=recovered.not_before)
    (recovered,) = jobs.recover(SETTINGS, dead_owners=("w2",), now=recovered.not_before + 1)
    assert recovered.attempts == 2 and recovered.state == JobState.QUEUED


def test_release_does_not_count_an_attempt_and_success_keeps_the_result(queue):
    jobs, _ = queue
    (job_id,) = jobs.enqueue_series("1.1", [segment_job()], now=0.0)
    jobs.claim("w", 60, now=0.0)
    jobs.release(job_id, "w")
    job = jobs.claim("w", 60, now=1.0)
    assert job.attempts == 1
    jobs.succeed(job_id, "w", RESULT)
    job = jobs.get(job_id)
    assert (job.state, job.result) == (JobState.DONE, RESULT)
    assert [j.id for j in jobs.segmentations_of("1.1")] == [job_id]


def test_a_reopened_series_is_queued_afresh(queue):
    jobs, index = queue
    (job_id,) = jobs.enqueue_series("1.1", [segment_job()], now=300.0)
    jobs.claim("w", 60, now=300.0)
    jobs.succeed(job_id, "w", RESULT)
    receive(index, "1.1", "9.1", "CT", at=400.0)  # a late slice reopens the series
    complete_quiet(index, 500.0)
    assert jobs.enqueue_series("1.1", [segment_job()], now=500.0) == [job_id]
    job = jobs.get(job_id)
    assert (job.state, job.attempts, job.queued_at, job.result) == (JobState.QUEUED, 0, 500.0, None)


def test_results_written_by_the_previous_version_decode_and_print_as_they_were(queue, tmp_path):
    """Rows hold a result as the JSON object the dict-returning worker wrote;
    they decode by job kind, and encode (for ``segnode jobs --json``) to the same object."""
    jobs, index = queue
    receive(index, "1.3", "9.2", "SEG", at=100.0)
    complete_quiet(index, 200.0)
    (segment_id,) = jobs.enqueue_series("1.1", [segment_job()], now=300.0)
    qa_job = NewJob(JobKind.QA, "organs", "organs", ("PACS",), subject="1.1")
    (qa_id,) = jobs.enqueue_series("1.3", [qa_job], now=300.0)
    segment = {"seg": "/r/seg.dcm", "sr": "/r/sr.dcm", "csv": "/r/measurements.csv",
               "labels": "/r/labels.nii.gz", "model": "builtin 1", "structures": 4, "pet": False,
               "seconds": {"load": 0.5, "segment": 2.0}}
    qa = {"sr": "/r/qa-sr.dcm",
          "agreement": {"liver": {"dice": 0.9, "jaccard": 0.82, "hd95_mm": 3.0},
                        "spleen": {"dice": 0.0, "jaccard": 0.0, "hd95_mm": None}},
          "seconds": {"compare": 1.5}}
    with sqlite3.connect(tmp_path / INDEX_FILENAME) as db:
        for job_id, result in ((segment_id, segment), (qa_id, qa)):
            db.execute("UPDATE jobs SET result = ? WHERE id = ?", (json.dumps(result), job_id))
    db.close()
    assert jobs.get(segment_id).result == RESULT
    assert jobs.get(qa_id).result == ComparisonResult(
        Path("/r/qa-sr.dcm"), {"liver": Agreement(0.9, 0.82, 3.0), "spleen": Agreement(0.0, 0.0, None)},
        {"compare": 1.5})
    assert [json.dumps(jobs.get(i).result.to_json()) for i in (segment_id, qa_id)] == [
        json.dumps(segment), json.dumps(qa)]


def test_a_qa_result_from_before_jaccard_and_hd95_keeps_its_dice_and_a_broken_one_is_left_out(
        queue, tmp_path, caplog):
    jobs, index = queue
    receive(index, "1.3", "9.2", "SEG", at=100.0)
    receive(index, "1.4", "9.2", "SEG", at=100.0)
    complete_quiet(index, 200.0)
    qa_job = NewJob(JobKind.QA, "organs", "organs", ("PACS",), subject="1.1")
    (old_id,) = jobs.enqueue_series("1.3", [qa_job], now=300.0)
    (broken_id,) = jobs.enqueue_series("1.4", [qa_job], now=300.0)
    with sqlite3.connect(tmp_path / INDEX_FILENAME) as db:
        db.execute("UPDATE jobs SET result = ? WHERE id = ?",
                   (json.dumps({"sr": "/r/qa-sr.dcm", "dice": {"liver": 0.9}, "seconds": {}}), old_id))
        db.execute("UPDATE jobs SET result = ? WHERE id = ?", ('{"sr": 3', broken_id))
    db.close()
    assert jobs.get(old_id).result == ComparisonResult(
        Path("/r/qa-sr.dcm"), {"liver": Agreement(0.9, None, None)}, {})
    with caplog.at_level(logging.ERROR, logger="node.queue.jobs"):
        assert [job.id for job in jobs.jobs()] == [old_id, broken_id]
    assert jobs.get(broken_id).result is None
    assert f"job {broken_id}: its stored result cannot be read" in caplog.text


def test_a_read_only_queue_reads_and_never_writes(queue, tmp_path):
    """What the console's pages and segnode status open: the jobs, and no write lock ever."""
    jobs, _ = queue
    (job_id,) = jobs.enqueue_series("1.1", [segment_job()], now=300.0)
    looking = JobQueue(tmp_path, read_only=True)
    try:
        assert [job.id for job in looking.jobs()] == [job_id]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            looking.claim("w", 60, now=400.0)
    finally:
        looking.close()
    assert jobs.get(job_id).state == JobState.QUEUED
