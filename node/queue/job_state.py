"""The states of a job and the one table of allowed transitions.

Every state change of a job (node/queue/jobs.py) goes through this table:
either :func:`next_state` on a state the queue has just read, or the
allowed states of :func:`allowed_from` in the WHERE clause of the UPDATE,
so the life of a job can be read here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobEvent(StrEnum):
    ENQUEUED = "enqueued"
    CLAIMED = "claimed"
    SUCCEEDED = "succeeded"
    ATTEMPT_FAILED = "attempt-failed"
    ATTEMPTS_EXHAUSTED = "attempts-exhausted"
    RELEASED = "released"
    RETRIED = "retried"


@dataclass(frozen=True)
class Transition:
    """The states an event is allowed in (None: a job not queued before), and where it leads."""

    allowed_in: frozenset[JobState | None]
    leads_to: JobState


TRANSITIONS: dict[JobEvent, Transition] = {
    # Routed. A job already known for the series and route (the series was
    # reopened by a late instance, or sent again) is queued afresh whatever its
    # state; a worker still running it loses its lease.
    JobEvent.ENQUEUED: Transition(frozenset({None, *JobState}), JobState.QUEUED),
    JobEvent.CLAIMED: Transition(frozenset({JobState.QUEUED}), JobState.RUNNING),
    JobEvent.SUCCEEDED: Transition(frozenset({JobState.RUNNING}), JobState.DONE),
    # A failed attempt, or one whose worker died or lost its lease: queued
    # again after the backoff...
    JobEvent.ATTEMPT_FAILED: Transition(frozenset({JobState.RUNNING}), JobState.QUEUED),
    # ...or, after the last attempt, failed until it is retried.
    JobEvent.ATTEMPTS_EXHAUSTED: Transition(frozenset({JobState.RUNNING}), JobState.FAILED),
    # The worker is stopping: the job is given back without counting the attempt.
    JobEvent.RELEASED: Transition(frozenset({JobState.RUNNING}), JobState.QUEUED),
    # ``segnode jobs retry``, or a late PET series to measure a finished CT job
    # again with; never a running job, whose worker would still record its result.
    JobEvent.RETRIED: Transition(
        frozenset({JobState.QUEUED, JobState.DONE, JobState.FAILED}), JobState.QUEUED
    ),
}


class InvalidJobTransition(ValueError):
    """An event that the job's current state does not allow."""

    def __init__(self, job_id: int, current: JobState | None, event: JobEvent):
        super().__init__(f"job {job_id}: {current or 'new'} to {TRANSITIONS[event].leads_to} ({event}) "
                         "is not allowed")


def next_state(job_id: int, current: JobState | None, event: JobEvent) -> JobState:
    """Return the state that ``event`` leads job `job_id` to from ``current``."""
    transition = TRANSITIONS[event]
    if current not in transition.allowed_in:
        raise InvalidJobTransition(job_id, current, event)
    return transition.leads_to


def allowed_from(event: JobEvent) -> tuple[JobState, ...]:
    """The stored states ``event`` is allowed in, for an UPDATE's WHERE clause."""
    return tuple(sorted(state for state in TRANSITIONS[event].allowed_in if state is not None))
