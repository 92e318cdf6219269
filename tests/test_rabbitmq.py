"""Jobs through Celery with RabbitMQ as the broker: only the broker URL differs from Redis.

The node (``segnode serve``), a RabbitMQ node of its own (Debian's
rabbitmq-server, tests/rabbitmq_server.py), the result backend (a Redis:
the configuration requires one beside an AMQP broker) and a worker host
(``segnode worker``) are separate processes; the loop and its helpers are
tests/test_dispatch.py's. What RabbitMQ changes: a queue that does not exist
yet is a channel error to a passive declare, and Celery's queue is durable
and its messages persistent, so a broker killed and started again still
holds a job's message once it was written (a fraction of a second after it
was sent; one lost before is the node's to send again, as with Redis).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import NodeProcess, free_port
from tests.rabbitmq_server import RabbitMQServer, rabbitmq_server  # noqa: F401
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.synthetic import write_ct_series
from tests.test_dispatch import (  # noqa: F401
    celery_node,
    celery_status,
    ct_series,
    delivered_once,
    destination,
    job_is,
    status,
    workers,
)
from tests.test_e2e import running_job, storescu, wait_for


def rabbitmq_node(node_factory, rabbitmq: RabbitMQServer, redis: RedisServer,
                  destination_port: int) -> NodeProcess:
    """test_dispatch's node (not started), its broker RabbitMQ and its results in Redis."""
    node = celery_node(node_factory, rabbitmq.url, destination_port)
    node.config["jobs"]["celery"]["result_backend"] = redis.url
    node.write_config()
    return node


def redacted_url(rabbitmq: RabbitMQServer) -> str:
    return f"amqp://guest:***@127.0.0.1:{rabbitmq.port}//"


def test_status_names_the_amqp_broker_without_its_password_and_whether_it_answers(
    node_factory, rabbitmq_server, redis_server  # noqa: F811
):
    node = rabbitmq_node(node_factory, rabbitmq_server, redis_server, free_port()).start()
    # Nothing sent yet: the queue does not exist, which a passive declare on AMQP answers with 404.
    seen = celery_status(node)
    assert seen == {"broker": redacted_url(rabbitmq_server), "queue": "segnode", "answers": True,
                    "queue_depth": 0, "workers": [], "error": None}
    text = status(node).stdout
    assert f"broker {redacted_url(rabbitmq_server)} answers; queue segnode: 0 message(s)" in text
    assert "guest:guest" not in text
    rabbitmq_server.stop()
    seen = celery_status(node)
    assert not seen["answers"] and seen["queue_depth"] is None
    assert redacted_url(rabbitmq_server) in seen["error"] and "guest:guest" not in seen["error"]


@pytest.mark.slow
def test_a_ct_waits_in_rabbitmq_for_a_worker_and_comes_back_once_as_seg_and_sr(
    node_factory, rabbitmq_server, redis_server, destination, workers, ct_series  # noqa: F811
):
    node = rabbitmq_node(node_factory, rabbitmq_server, redis_server, destination.port).start()
    storescu(node, ct_series)
    wait_for(lambda: running_job(node), 60, "the job to be sent")
    waiting = wait_for(lambda: (seen := celery_status(node))["queue_depth"] == 1 and seen, 30,
                       "its message in RabbitMQ")
    assert waiting["broker"] == redacted_url(rabbitmq_server) and waiting["workers"] == []
    worker = workers(node)
    uids = delivered_once(destination)
    assert (len(uids["SEG"]), len(uids["SR"])) == (2, 1)
    assert all(count == 1 for count in destination.received_counts().values())
    job = wait_for(lambda: job_is(node, "done"), 30, "the job to be done")
    assert job["attempts"] == 1
    seen = celery_status(node)
    assert seen["answers"] and seen["queue_depth"] == 0
    assert [(w["device"], w["active"]) for w in seen["workers"]] == [("cpu", 0)], worker.log()
    assert node.log().count("sent as task") == 1 and "segnode worker ready" in worker.log()


@pytest.mark.slow
def test_a_rabbitmq_killed_and_started_again_loses_neither_the_waiting_message_nor_the_next(
    node_factory, rabbitmq_server, redis_server, destination, workers, ct_series, tmp_path  # noqa: F811
):
    """The job waiting when RabbitMQ is killed is still in its durable queue when it is back, and
    the next job, published after the restart, gets there too: neither is taken for lost and
    sent again, and each runs once."""
    node = rabbitmq_node(node_factory, rabbitmq_server, redis_server, destination.port).start()
    storescu(node, ct_series)  # no worker yet: the job's message waits in RabbitMQ
    wait_for(lambda: running_job(node), 60, "the job to be sent")
    wait_for(lambda: celery_status(node)["queue_depth"] == 1, 30, "its message in RabbitMQ")
    rabbitmq_server.restart()  # kill -9, then the same port and data folder
    assert celery_status(node)["queue_depth"] == 1  # a persistent message in a durable queue
    storescu(node, write_ct_series(tmp_path / "next", slices=24, rows=96, columns=96, seed=1,
                                   pixel_spacing=(4.0, 4.0), slice_thickness=4.0))
    wait_for(lambda: celery_status(node)["queue_depth"] == 2, 30, "the next job's message in RabbitMQ")
    worker = workers(node)
    wait_for(lambda: [job["state"] for job in node.status_jobs()] == ["done", "done"], 120, "both jobs done")
    assert [job["attempts"] for job in node.status_jobs()] == [1, 1]
    wait_for(lambda: len(destination.received_counts()) == 6, 30, "two SEGs and an SR of each series")
    time.sleep(3)  # for anything sent twice to arrive too
    assert sorted(destination.received_counts().values()) == [1] * 6
    log = node.log()
    assert "does not answer" in log and "answers again" in log  # the node saw the broker go and come back
    assert log.count("sent as task") == 2 and "is not in queue" not in log  # nothing sent again
    assert worker.log().count("] received") == 2
