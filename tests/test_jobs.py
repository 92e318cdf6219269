"""The job queue on a real SQLite file: enqueueing a series, leases, retries, backoff."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import JobSettings
from node.queue.jobs import JobKind, JobQueue, JobState, LeaseLostError, NewJob, retry_delay
from node.receive.index import InstanceIndex
from node.receive.storage import StoredInstance
from node.receive.validation import InstanceIdentity

SETTINGS = JobSettings(max_attempts=3, retry_base_seconds=10, retry_max_seconds=25)


def receive(index: InstanceIndex, series: str, study: str, modality: str, at: float, n: int = 1) -> None:
    for k in range(n):
        identity = InstanceIdentity("1.2.840.10008.5.1.4.1.1.2", f"{series}.{k}", study, series, modality)
        index.record_instance(StoredInstance(identity, "1.2.840.10008.1.2.1", Path(f"/x/{series}.{k}"), 1,
                                             "SCANNER", at))


def segment_job(route: str = "organs") -> NewJob:
    return NewJob(JobKind.SEGMENT, route, "organs", ("PACS",), subject="")


@pytest.fixture
def queue(tmp_path):
    index = InstanceIndex(tmp_path)
    queue = JobQueue(tmp_path)
    receive(index, "1.1", "9.1", "CT", at=100.0, n=3)
    index.complete_stable_series(received_before=200.0)
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
    index.complete_stable_series(received_before=400.0)
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
        jobs.succeed(job_id, "w1", {"seg": "x"})
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
    jobs.succeed(job_id, "w", {"seg": "/r/seg.dcm"})
    job = jobs.get(job_id)
    assert (job.state, job.result) == (JobState.DONE, {"seg": "/r/seg.dcm"})
    assert [j.id for j in jobs.segmentations_of("1.1")] == [job_id]


def test_a_reopened_series_is_queued_afresh(queue):
    jobs, index = queue
    (job_id,) = jobs.enqueue_series("1.1", [segment_job()], now=300.0)
    jobs.claim("w", 60, now=300.0)
    jobs.succeed(job_id, "w", {})
    receive(index, "1.1", "9.1", "CT", at=400.0)  # a late slice reopens the series
    index.complete_stable_series(received_before=500.0)
    assert jobs.enqueue_series("1.1", [segment_job()], now=500.0) == [job_id]
    job = jobs.get(job_id)
    assert (job.state, job.attempts, job.queued_at, job.result) == (JobState.QUEUED, 0, 500.0, None)
