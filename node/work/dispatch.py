"""The node's dispatcher for ``jobs.backend: celery``: its jobs run on workers anywhere.

The SQLite job record stays the truth; Celery only carries the work. The
dispatcher claims a due job under the owner ``celery:<task id>``, prepares
it (node/work/preparation.py), publishes a task with that id, and polls the
task's state in the result backend: a success is recorded as the embedded
worker records it (node/work/recording.py), a failure is the job's failed
attempt, and while the task waits or runs the job's lease is renewed.

What may be lost is the broker's, never the node's:

* A broker that is down when a job is to go: the job is given back without
  counting the attempt and the dispatcher backs off; receiving goes on.
* A message the broker lost (a Redis restarted without persistence): its
  task stays PENDING although the queue holds fewer messages than the node
  has tasks waiting; after a grace period the job is given back and sent
  again under a new task id.
* The node itself (kill -9, a restart): the tasks it sent are in its record
  (their owners), so the next node polls them instead of sending them again.

A job taken back while its task waits or runs (its series reopened by a late
instance, or its message counted lost) has the task revoked: a worker drops
its message if it comes, and ends it if it runs (Celery's ``revoke`` with
``terminate``), rather than spend minutes on a result the node would drop.
Revokes live in the workers' memory: a worker that starts later does not
know of them, and the node drops that task's result as before.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from celery.result import AsyncResult
from prometheus_client import CollectorRegistry, Counter, Gauge

from config import SegnodeConfig
from config.schema import CelerySettings
from node.backoff import doubling_delay
from node.queue.broker import TASK_NAME, BrokerUnavailable, JobFailed, QueueDepth, redacted
from node.queue.courses import CourseStore
from node.queue.job_state import JobState
from node.queue.jobs import Job, JobQueue, LeaseLostError
from node.receive.index import InstanceIndex
from node.send.outbox import OutboxStore
from node.work.job_spec import outcome_from_json, spec_to_json
from node.work.pipeline import PipelineError
from node.work.preparation import prepare
from node.work.recording import record

LOG = logging.getLogger("segnode.dispatch")

#: The owner of a job sent as a Celery task is this prefix and the task's id.
OWNER_PREFIX = "celery:"
POLL_SECONDS = 1.0
#: A few polls long: the lease only has to outlive a stalled poll (a publish
#: that waits on a broker going down); a dead node's tasks are adopted by the
#: next one, whatever their lease says.
LEASE_SECONDS = 30.0
_RENEW_AFTER_SECONDS = 5.0
#: How long a waiting task may be missing from the queue before its message
#: counts as lost: a worker that just took the message has not yet marked it
#: STARTED (task_track_started), and must not have its job sent twice.
LOST_GRACE_SECONDS = 5.0
#: Jobs sent and not finished at most; the rest wait in the node's record,
#: where a broker restart cannot lose them.
MAX_IN_FLIGHT = 64
#: A revoke is a broadcast through the broker; one that does not answer is not waited for.
REVOKE_TIMEOUT_SECONDS = 2.0
_BACKOFF_BASE_SECONDS = 1.0
_BACKOFF_MAX_SECONDS = 60.0
# Celery's task states (celery.states), as the result backend reports them.
_WAITING = frozenset({"PENDING", "RECEIVED", "STARTED", "RETRY"})


def owner_of(task_id: str) -> str:
    return f"{OWNER_PREFIX}{task_id}"


def task_of(owner: str | None) -> str | None:
    """The task id of a job's owner, or None where the owner is not a Celery task."""
    if owner is None or not owner.startswith(OWNER_PREFIX):
        return None
    return owner[len(OWNER_PREFIX):]


@dataclass
class _InFlight:
    """A job sent as a task: mutable, the dispatcher thread's alone."""

    job: Job
    task_id: str
    sent_at: float  # time.monotonic()
    renewed_at: float
    missing_since: float | None = None

    @property
    def owner(self) -> str:
        return owner_of(self.task_id)


@dataclass(frozen=True)
class TaskFailure:
    """Why a task did not succeed, as the job's record keeps it."""

    job_id: int
    task_id: str
    reason: str

    def __str__(self) -> str:
        return f"task {self.task_id}: {self.reason}"


class _Outage:
    """One log line when something stops answering and one when it is back,
    not one per poll; the waits double while it stays down."""

    def __init__(self, what: str):
        self.what = what
        self.failures = 0
        self.retry_at = 0.0

    def down(self, exc: BaseException) -> bool:
        """Count a failure; True the first time of an outage."""
        self.failures += 1
        self.retry_at = time.monotonic() + doubling_delay(self.failures, _BACKOFF_BASE_SECONDS,
                                                           _BACKOFF_MAX_SECONDS)
        if self.failures == 1:
            LOG.error("%s does not answer (%s: %s); jobs wait in the node's record until it is back",
                      self.what, type(exc).__name__, exc)
            return True
        return False

    def up(self) -> bool:
        """True when this ends an outage."""
        if self.failures == 0:
            return False
        LOG.info("%s answers again after %d failed tries", self.what, self.failures)
        self.failures = 0
        self.retry_at = 0.0
        return True

    @property
    def waiting(self) -> bool:
        return self.failures > 0 and time.monotonic() < self.retry_at


class DispatchMetrics:
    """What the dispatcher does, beside the queue's own job metrics (node/queue/job_metrics.py)."""

    def __init__(self, registry: CollectorRegistry):
        self.sent = Counter("segnode_celery_tasks_sent_total", "Jobs published as Celery tasks.",
                            registry=registry)
        self.lost = Counter("segnode_celery_tasks_lost_total",
                            "Tasks whose message the broker lost; their jobs were sent again.",
                            registry=registry)
        self.revoked = Counter("segnode_celery_tasks_revoked_total",
                               "Tasks revoked because their job was taken back.", registry=registry)
        self.finished = Counter("segnode_celery_tasks_finished_total", "Tasks finished, by outcome.",
                                ["outcome"], registry=registry)
        self.outages = Counter("segnode_celery_broker_outages_total",
                               "Times the broker or result backend stopped answering.", registry=registry)
        self.broker_up = Gauge("segnode_celery_broker_up",
                               "1 while the broker answered the last time it was asked.", registry=registry)
        self.in_flight = Gauge("segnode_celery_tasks_in_flight", "Jobs sent and not yet finished.",
                               registry=registry)


class CeleryDispatcher:
    """A thread that sends the node's due jobs to Celery workers and records what they made.

    ``config`` is read at each step (a reload changes destinations and
    retries); the Celery settings are the ones `app` was made from, and a
    change of them waits for a restart (config/reload_guard.py).
    """

    def __init__(self, config: Callable[[], SegnodeConfig], queue: JobQueue, index: InstanceIndex,
                 outbox: OutboxStore, courses: CourseStore, device_uid: str, app: Celery,
                 settings: CelerySettings, registry: CollectorRegistry):
        self._config = config
        self._queue = queue
        self._index = index
        self._outbox = outbox
        self._courses = courses
        self._device_uid = device_uid
        self._app = app
        self._settings = settings
        self._broker = redacted(settings.broker_url)
        self._queue_depth = QueueDepth(app, settings.queue)
        self.metrics = DispatchMetrics(registry)
        self._in_flight: dict[int, _InFlight] = {}
        self._broker_outage = _Outage(f"the Celery broker {self._broker}")
        self._backend_outage = _Outage(f"the Celery result backend of {self._broker}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-dispatch", daemon=True)

    def start(self) -> None:
        """Adopt the tasks an earlier node sent, queue again the jobs of its
        embedded workers, and start dispatching."""
        now = time.monotonic()
        others = []
        for job in self._queue.jobs(JobState.RUNNING):
            task_id = task_of(job.owner)
            if task_id is None:
                if job.owner:
                    others.append(job.owner)
                continue
            try:  # before recover(), which would take back a lease that ran out while no node ran
                self._queue.renew(job.id, job.owner, LEASE_SECONDS)
            except LeaseLostError as exc:
                LOG.warning("%s", exc)
                continue
            self._in_flight[job.id] = _InFlight(job, task_id, sent_at=now, renewed_at=now)
            LOG.info("job %d: waiting for task %s, sent before this node started", job.id, task_id)
        for job in self._queue.recover(self._config().jobs, dead_owners=tuple(others)):
            LOG.warning("job %d was running on a worker of this node when segnode stopped: %s again",
                        job.id, job.state.value)
        self.metrics.in_flight.set(len(self._in_flight))
        LOG.info("sending jobs to Celery: broker %s, queue %s", self._broker, self._settings.queue)
        self._thread.start()

    def stop(self) -> None:
        """Stop sending and polling. Tasks sent go on: the next node polls them."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._queue_depth.close()
        self._app.close()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            for step in (self._poll, self._renew, self._recover, self._dispatch):
                if self._stop.is_set():
                    return
                try:
                    step()
                except Exception:
                    LOG.exception("dispatching jobs to Celery: %s failed; trying again",
                                  step.__name__.strip("_"))
            self.metrics.in_flight.set(len(self._in_flight))

    # Sending -----------------------------------------------------------------

    def _dispatch(self) -> None:
        """Send due jobs while the broker answers."""
        if self._broker_outage.waiting or len(self._in_flight) >= MAX_IN_FLIGHT:
            return
        asked = False
        while len(self._in_flight) < MAX_IN_FLIGHT and not self._stop.is_set():
            task_id = str(uuid.uuid4())
            job = self._queue.claim(owner_of(task_id), LEASE_SECONDS)
            if job is None:
                return
            if not asked:  # once a job is due: an idle node does not connect every poll
                asked = True
                if not self._broker_answers():
                    self._queue.release(job.id, owner_of(task_id))
                    return
            if not self._send(job, task_id):
                return

    def _broker_answers(self) -> bool:
        """Asked before publishing: Celery's send_task to a Redis that is down
        waits about 20 s on its result backend (``ResultConsumer.reconnect_on_error``
        retries, celery/backends/redis.py) before it fails; a passive declare
        (node/queue/broker.py) fails at once."""
        try:
            self._queue_depth()
        except BrokerUnavailable as exc:
            self._broker_down(exc)
            return False
        self._broker_up()
        return True

    def _send(self, job: Job, task_id: str) -> bool:
        """Prepare and publish a claimed job; False when the broker stopped answering."""
        owner = owner_of(task_id)
        config = self._config()
        try:
            spec = spec_to_json(prepare(job, config, self._index, self._queue), config.node.storage_dir)
        except Exception as exc:  # an input missing or unreadable: the job's failure, as a worker's
            self._fail(job, owner, f"{type(exc).__name__}: {exc}", expected=isinstance(exc, PipelineError))
            return True
        try:
            self._app.send_task(TASK_NAME, args=[spec], task_id=task_id, queue=self._settings.queue)
        except Exception as exc:  # whatever publishing raises, the job is not the cause
            self._queue.release(job.id, owner)
            self._broker_down(exc)
            return False
        now = time.monotonic()
        self._in_flight[job.id] = _InFlight(job, task_id, sent_at=now, renewed_at=now)
        self.metrics.sent.inc()
        LOG.info("job %d (%s of series %s, route %s): attempt %d sent as task %s to queue %s", job.id,
                 job.kind.value, job.series_instance_uid, job.route, job.attempts, task_id,
                 self._settings.queue)
        return True

    def _broker_down(self, exc: BaseException) -> None:
        if self._broker_outage.down(exc):
            self.metrics.outages.inc()
        self.metrics.broker_up.set(0)

    def _broker_up(self) -> None:
        self._broker_outage.up()
        self.metrics.broker_up.set(1)

    # Polling -----------------------------------------------------------------

    def _poll(self) -> None:
        """Record the tasks that finished; send again the jobs whose message was lost."""
        if not self._in_flight or self._backend_outage.waiting:
            return
        waiting: list[_InFlight] = []
        for flight in list(self._in_flight.values()):
            result = AsyncResult(flight.task_id, app=self._app)
            try:
                state = result.state
                outcome = result.result if state not in _WAITING else None
            except Exception as exc:  # the result backend is down (a Redis broker's, usually)
                if self._backend_outage.down(exc):
                    self.metrics.outages.inc()
                return
            self._backend_outage.up()
            if state == "SUCCESS":
                self._succeeded(flight, outcome)
            elif state in _WAITING:
                if state == "PENDING":
                    waiting.append(flight)
                else:
                    flight.missing_since = None
                continue
            else:  # FAILURE, REVOKED
                self._failed(flight, state, outcome)
            self._in_flight.pop(flight.job.id, None)
            result.forget()
        if waiting:
            self._find_lost(waiting)

    def _succeeded(self, flight: _InFlight, value: object) -> None:
        job, owner = flight.job, flight.owner
        config = self._config()
        try:  # not recorded for a job taken back meanwhile (queued afresh, retried)
            self._queue.renew(job.id, owner, LEASE_SECONDS)
        except LeaseLostError as exc:
            LOG.warning("job %d: %s; the result of task %s is dropped", job.id, exc, flight.task_id)
            return
        try:
            if not isinstance(value, dict):
                raise TypeError(f"the task returned a {type(value).__name__}, not an outcome")
            outcome = outcome_from_json(value, config.node.storage_dir)
            result = record(job, outcome, config, self._outbox, self._courses, self._device_uid)
        except Exception as exc:
            reason = str(TaskFailure(job.id, flight.task_id, f"{type(exc).__name__}: {exc}"))
            self._fail(job, owner, reason, expected=isinstance(exc, PipelineError))
            self.metrics.finished.labels("failure").inc()
            return
        try:
            self._queue.succeed(job.id, owner, result)
        except LeaseLostError as exc:
            LOG.warning("job %d: %s; the result of task %s is dropped", job.id, exc, flight.task_id)
            return
        self.metrics.finished.labels("success").inc()
        LOG.info("job %d done by task %s in %.1f s: %s", job.id, flight.task_id,
                 time.monotonic() - flight.sent_at, result.seconds)

    def _failed(self, flight: _InFlight, state: str, value: object) -> None:
        if isinstance(value, JobFailed):  # the worker's reason, already "<type>: <message>"
            reason = str(value)
        elif isinstance(value, BaseException):
            reason = f"{type(value).__name__}: {value}"
        else:
            reason = f"the task ended {state}" + ("" if value is None else f": {value}")
        failure = TaskFailure(flight.job.id, flight.task_id, reason)
        self.metrics.finished.labels("failure").inc()
        self._fail(flight.job, flight.owner, str(failure), expected=True)

    def _fail(self, job: Job, owner: str, reason: str, *, expected: bool) -> None:
        LOG.log(logging.WARNING if expected else logging.ERROR, "job %d failed: %s", job.id, reason)
        try:
            after = self._queue.fail(job.id, owner, reason, self._config().jobs)
        except LeaseLostError:
            LOG.warning("job %d was taken back meanwhile", job.id)
            return
        LOG.info("job %d is %s (attempt %d of %d)", job.id, after.state.value, after.attempts,
                 self._config().jobs.max_attempts)

    def _find_lost(self, waiting: list[_InFlight]) -> None:
        """Give back the jobs of tasks whose message is no longer in the queue.

        The queue is a count, not a list of ids: when it holds fewer messages
        than there are tasks waiting, the oldest waiting tasks are the ones
        missing (a broker that restarted lost what came before, and holds
        what was sent since). Only a shortfall that lasts the grace period
        counts, for a worker may have just taken a message.
        """
        try:
            depth = self._queue_depth()
        except BrokerUnavailable as exc:
            self._broker_down(exc)
            return
        self._broker_up()
        waiting.sort(key=lambda flight: flight.sent_at)
        missing = max(0, len(waiting) - depth)
        now = time.monotonic()
        for position, flight in enumerate(waiting):
            if position >= missing:
                flight.missing_since = None
                continue
            if flight.missing_since is None:
                flight.missing_since = now
            if now - flight.missing_since < LOST_GRACE_SECONDS:
                continue
            self._in_flight.pop(flight.job.id, None)
            AsyncResult(flight.task_id, app=self._app).forget()
            self._revoke(flight)  # should the message turn up after all
            try:
                self._queue.release(flight.job.id, flight.owner)
            except LeaseLostError as exc:
                LOG.warning("job %d: %s", flight.job.id, exc)
                continue
            self.metrics.lost.inc()
            LOG.warning("job %d: the message of task %s is not in queue %s of %s (%d there, %d tasks "
                        "waiting); sending the job again", flight.job.id, flight.task_id,
                        self._settings.queue, self._broker, depth, len(waiting))

    def _revoke(self, flight: _InFlight) -> None:
        """Have the workers drop or end `flight`'s task. A broker that does not
        answer is logged: the task then runs on, and its result is dropped."""
        try:
            with self._app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2,
                                             interval_max=0.2, timeout=REVOKE_TIMEOUT_SECONDS)
                self._app.control.revoke(flight.task_id, terminate=True, connection=connection)
        except Exception as exc:  # kombu's OperationalError, the transport's connection errors
            LOG.warning("job %d: could not revoke task %s at %s (%s: %s); it runs on and its result "
                        "will be dropped", flight.job.id, flight.task_id, self._broker, type(exc).__name__,
                        exc)
            return
        self.metrics.revoked.inc()
        LOG.info("job %d: task %s revoked", flight.job.id, flight.task_id)

    # Leases ------------------------------------------------------------------

    def _renew(self) -> None:
        """Renew the leases of the jobs sent, and revoke the tasks of jobs taken back
        meanwhile (queued afresh: what the task makes would not be recorded). Owners are
        read at every poll, a write only every few seconds, so that the task of a
        reopened series ends within a poll or two."""
        if not self._in_flight:
            return
        owners = {job.id: job.owner for job in self._queue.jobs(JobState.RUNNING)}
        now = time.monotonic()
        for flight in list(self._in_flight.values()):
            if owners.get(flight.job.id) != flight.owner:
                reason = f"job {flight.job.id} was taken back from {flight.owner}"
            elif now - flight.renewed_at < _RENEW_AFTER_SECONDS:
                continue
            else:
                try:
                    self._queue.renew(flight.job.id, flight.owner, LEASE_SECONDS)
                    flight.renewed_at = now
                    continue
                except LeaseLostError as exc:
                    reason = str(exc)
            LOG.warning("%s; its task %s is revoked", reason, flight.task_id)
            self._in_flight.pop(flight.job.id, None)
            self._revoke(flight)

    def _recover(self) -> None:
        """Take back running jobs whose lease ran out (none of ours, which are renewed first)."""
        for job in self._queue.recover(self._config().jobs):
            LOG.warning("job %d: its lease ran out; %s again", job.id, job.state.value)
