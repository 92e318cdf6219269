"""Every job state change through the table of node/queue/job_state.py, on
a real JobQueue and SQLite file: each allowed transition does what the table
says, each other one is refused naming the job and both states."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from config import JobSettings
from node.queue.job_state import TRANSITIONS, JobEvent, JobState
from node.queue.jobs import JobQueue, LeaseLostError
from node.receive.index import InstanceIndex
from tests.test_jobs import RESULT, complete_quiet, receive, segment_job

SETTINGS = JobSettings(max_attempts=3, retry_base_seconds=10, retry_max_seconds=25)
LAST_ATTEMPT = JobSettings(max_attempts=1, retry_base_seconds=10, retry_max_seconds=25)


class Jobs:
    """One CT series' segmentation job, brought into any state by the queue's own calls."""

    def __init__(self, root):
        self.index = InstanceIndex(root)
        self.queue = JobQueue(root)
        self.now = 100.0
        self.job_id: int | None = None

    def close(self) -> None:
        self.queue.close()
        self.index.close()

    def enqueue(self) -> None:
        """Complete series 1.1 (again: a late instance reopens it) and route it."""
        self.now += 10
        receive(self.index, "1.1", "9.1", "CT", at=self.now)
        complete_quiet(self.index, math.inf)
        (self.job_id,) = self.queue.enqueue_series("1.1", [segment_job()], now=self.now)

    def claim(self) -> None:
        job = self.queue.claim("w", 60, now=math.inf)
        assert job is not None and job.id == self.job_id

    def in_state(self, state: JobState | None) -> None:
        if state is None:
            return
        self.enqueue()
        if state == JobState.QUEUED:
            return
        self.claim()
        if state == JobState.DONE:
            self.queue.succeed(self.job_id, "w", RESULT)
        elif state == JobState.FAILED:
            self.queue.fail(self.job_id, "w", "boom", LAST_ATTEMPT)

    @property
    def state(self) -> JobState:
        return self.queue.get(self.job_id).state


@pytest.fixture
def jobs(tmp_path):
    jobs = Jobs(tmp_path)
    yield jobs
    jobs.close()


#: The queue's calls that make each event happen; failures both as reported
#: by the worker and as recovered from a worker that died.
ACTIONS: dict[JobEvent, dict[str, Callable[[Jobs], object]]] = {
    JobEvent.ENQUEUED: {"enqueue_series": Jobs.enqueue},
    JobEvent.CLAIMED: {"claim": Jobs.claim},
    JobEvent.SUCCEEDED: {"succeed": lambda j: j.queue.succeed(j.job_id, "w", RESULT)},
    JobEvent.ATTEMPT_FAILED: {
        "fail": lambda j: j.queue.fail(j.job_id, "w", "boom", SETTINGS),
        "recover": lambda j: j.queue.recover(SETTINGS, dead_owners=("w",)),
    },
    JobEvent.ATTEMPTS_EXHAUSTED: {
        "fail": lambda j: j.queue.fail(j.job_id, "w", "boom", LAST_ATTEMPT),
        "recover": lambda j: j.queue.recover(LAST_ATTEMPT, dead_owners=("w",)),
    },
    JobEvent.RELEASED: {"release": lambda j: j.queue.release(j.job_id, "w")},
    JobEvent.RETRIED: {"retry": lambda j: j.queue.retry(j.job_id)},
}

ALLOWED = [
    pytest.param(event, state, action, id=f"{state or 'new'}-{event}-by-{name}")
    for event, transition in TRANSITIONS.items()
    for state in sorted(transition.allowed_in, key=str)
    for name, action in ACTIONS[event].items()
]


def test_every_event_has_a_call_of_the_queue():
    assert set(ACTIONS) == set(JobEvent) == set(TRANSITIONS)


@pytest.mark.parametrize(("event", "state", "action"), ALLOWED)
def test_an_allowed_transition_leads_where_the_table_says(jobs, event, state, action):
    jobs.in_state(state)
    action(jobs)
    assert jobs.state == TRANSITIONS[event].leads_to


# A worker's calls on a job it no longer runs raise LeaseLostError, as they
# always did (the worker drops its result); a retry raises a ValueError, which
# ``segnode jobs retry`` and the late-PET requeue report. (A failure with
# attempts left stands for fail's refusals; recover takes only running jobs.)
REFUSED = [
    pytest.param(event, state, ACTIONS[event][name],
                 ValueError if event == JobEvent.RETRIED else LeaseLostError, id=f"{state}-{event}-by-{name}")
    for event, name in ((JobEvent.SUCCEEDED, "succeed"), (JobEvent.ATTEMPT_FAILED, "fail"),
                        (JobEvent.RELEASED, "release"), (JobEvent.RETRIED, "retry"))
    for state in JobState if state not in TRANSITIONS[event].allowed_in
]


@pytest.mark.parametrize(("event", "state", "action", "error"), REFUSED)
def test_an_impossible_transition_is_refused_naming_the_job_and_both_states(
    jobs, event, state, action, error
):
    jobs.in_state(state)
    before = jobs.queue.get(jobs.job_id)
    target = TRANSITIONS[event].leads_to
    with pytest.raises(error, match=rf"^job {jobs.job_id}: {state} to {target} \({event}\) is not allowed"):
        action(jobs)
    assert jobs.queue.get(jobs.job_id) == before


def test_a_job_run_by_another_worker_is_not_this_ones_to_change(jobs):
    jobs.in_state(JobState.RUNNING)
    jobs.queue.recover(SETTINGS, dead_owners=("w",))
    assert jobs.queue.claim("w2", 60, now=math.inf).id == jobs.job_id
    for call in (lambda: jobs.queue.succeed(jobs.job_id, "w", RESULT),
                 lambda: jobs.queue.fail(jobs.job_id, "w", "boom", SETTINGS),
                 lambda: jobs.queue.release(jobs.job_id, "w"),
                 lambda: jobs.queue.renew(jobs.job_id, "w", 60)):
        with pytest.raises(LeaseLostError, match=f"job {jobs.job_id} is no longer run by w but by w2"):
            call()
    assert (jobs.state, jobs.queue.get(jobs.job_id).owner) == (JobState.RUNNING, "w2")


def test_a_lease_is_renewed_only_while_the_job_runs(jobs):
    jobs.in_state(JobState.DONE)
    with pytest.raises(LeaseLostError, match=f"job {jobs.job_id} is no longer run by w: it is done"):
        jobs.queue.renew(jobs.job_id, "w", 60)
