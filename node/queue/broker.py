"""The Celery app shared by the node (which sends jobs) and ``segnode worker`` hosts (which run them).

Both sides build the same app from ``jobs.celery`` so that they agree on the
queue, the serializer and acknowledgement. A job's message is acknowledged
only once its task has finished (late acknowledgement), and a pool child
that dies puts it back (``task_reject_on_worker_lost``): the node's SQLite
record stays the truth, and a message run twice writes the same files
(derived UIDs). This module must not import ``node.work``: the node imports
it without the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from config.schema import CelerySettings

#: The one task: ``args=[spec_json]`` (node/work/job_spec.py), result the outcome's JSON.
TASK_NAME = "segnode.run_job"

#: Worker names are ``segnode-<device>@<host>``, the device written ``cpu``, ``cuda0``...
WORKER_PREFIX = "segnode-"

#: Results are read by the node within seconds of a task ending; a node that was
#: down for a long weekend still finds them.
RESULT_EXPIRES_SECONDS = 3 * 24 * 3600

#: Publishing to a broker that is down: a few quick tries, then the node hears
#: of it (it releases the job and backs off) instead of hanging in the send.
_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 1.0}
_CONNECT_TIMEOUT_SECONDS = 5.0


class BrokerUnavailable(Exception):
    """The broker did not answer; the message names it without its password."""

    def __init__(self, url: str, reason: object):
        self.url = redacted(url)
        super().__init__(f"broker {self.url} unavailable: {reason}")


class JobFailed(Exception):
    """Raised by the task when its job failed: its message is the node's failure reason
    (``<exception type>: <message>``, as the embedded workers record it). Defined here so
    that the node, reading the result, gets this class back rather than a stand-in."""


@dataclass(frozen=True)
class WorkerSeen:
    """A ``segnode worker`` process that answered: its Celery name, its host, its
    device (``cpu``, ``cuda:0``...) and how many tasks it runs now."""

    name: str
    host: str
    device: str
    active: int


def celery_app(settings: CelerySettings) -> Celery:
    """The app with segnode's configuration; it registers no task (the worker does)."""
    app = Celery("segnode", set_as_current=False)
    transport = {"visibility_timeout": settings.visibility_timeout_seconds}
    broker_transport = dict(transport)
    if settings.broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
        # Publisher confirms: a task counts as sent once RabbitMQ has written it, so
        # that one killed a moment after is not lost (the node would send it again,
        # after the lost-message grace period).
        broker_transport["confirm_publish"] = True
    backend = settings.result_backend or settings.broker_url
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=backend,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        result_expires=RESULT_EXPIRES_SECONDS,
        # The worker name (result.worker) and the task's name stay with its result.
        result_extended=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=_CONNECT_TIMEOUT_SECONDS,
        redis_socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
        task_publish_retry_policy=_PUBLISH_RETRY_POLICY,
        # Redis redelivers an unacknowledged message after this long; it must
        # exceed the longest job ("Visibility Timeout", docs.celeryq.dev
        # getting-started/backends-and-brokers/redis.html). The Redis result
        # backend takes the same transport options, per the same page's caveats.
        broker_transport_options=broker_transport,
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
    )
    if backend.startswith(("redis://", "rediss://")):
        app.conf.result_backend_transport_options = dict(transport)
    return app


class QueueDepth:
    """Asks how many messages wait in a queue (not those a worker holds
    unacknowledged), on one connection kept open between asks.

    The dispatcher asks at every poll while tasks wait: a connection an ask
    would be a handshake a second, each one logged by RabbitMQ. A kept
    connection that fails is dropped and a new one tried at once, so that a
    broker restarted meanwhile is not taken for one that is down.

    A passive queue declare answers the count on Redis (kombu's virtual
    transport sums the priority lists) and on RabbitMQ alike. A queue that
    does not exist holds nothing: Redis deletes an empty list, RabbitMQ has
    not declared it yet, and the declare fails with a channel error.
    """

    def __init__(self, app: Celery, queue: str):
        self._app = app
        self._queue = queue
        self._connection = None
        self._channel = None  # on Redis, a channel is a client of its own: kept too

    def __call__(self) -> int:
        if self._channel is not None:
            try:
                return self._count()
            except Exception:  # the kept connection broke: a new one says whether the broker is down
                self.close()
        try:
            self._connection = self._app.connection_for_read()
            self._connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2,
                                               interval_max=0.2, timeout=_CONNECT_TIMEOUT_SECONDS)
            self._channel = self._connection.channel()
            return self._count()
        except Exception as exc:  # kombu's OperationalError, the transport's connection errors
            self.close()
            raise BrokerUnavailable(self._app.conf.broker_url, exc) from exc

    def close(self) -> None:
        for closable in (self._channel, self._connection):
            if closable is not None:
                _close_quietly(closable)
        self._channel = self._connection = None

    def _count(self) -> int:
        try:
            _name, count, _consumers = self._channel.queue_declare(queue=self._queue, passive=True)
            return int(count)
        except self._connection.channel_errors:
            # RabbitMQ closes a channel on the error: another for the next ask.
            _close_quietly(self._channel)
            self._channel = self._connection.channel()
            return 0


def queue_depth(app: Celery, queue: str) -> int:
    """One ask of :class:`QueueDepth` (``segnode status``)."""
    depth = QueueDepth(app, queue)
    try:
        return depth()
    finally:
        depth.close()


def workers_seen(app: Celery, timeout: float = 1.0) -> tuple[WorkerSeen, ...]:
    """The segnode workers that answer within `timeout` seconds, by name.

    One broadcast of ``inspect().active()``: a worker that answers it is up
    (as ``ping`` would tell) and says how many tasks it runs. Workers of
    other applications on the same broker are left out.
    """
    try:
        replies = app.control.inspect(timeout=timeout).active() or {}
    except Exception as exc:
        raise BrokerUnavailable(app.conf.broker_url, exc) from exc
    seen = []
    for name, active in sorted(replies.items()):
        if not name.startswith(WORKER_PREFIX):
            continue
        tag, _, host = name.partition("@")
        seen.append(WorkerSeen(name=name, host=host, device=device_of(tag[len(WORKER_PREFIX):]),
                               active=len(active or ())))
    return tuple(seen)


def worker_tag(device: str) -> str:
    """``cuda:0`` -> ``cuda0``: a device as it appears in a worker's name."""
    return device.replace(":", "")


def device_of(tag: str) -> str:
    """``cuda0`` -> ``cuda:0``, the inverse of :func:`worker_tag`."""
    if tag.startswith("cuda") and tag[4:].isdigit():
        return f"cuda:{tag[4:]}"
    return tag


def redacted(url: str) -> str:
    """`url` without its password (``redis://:***@host:6379/0``), for logs and ``segnode status``.
    Each URL of a failover list (``;``-separated) is redacted."""
    return ";".join(_redact_one(part) for part in str(url).split(";"))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url  # no password (a lone user name stays)
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hostport}{slash}{path}"


def _close_quietly(closable) -> None:
    """A channel or connection closed for good; what it says while closing is of no use."""
    try:
        closable.close()
    except Exception:
        pass
