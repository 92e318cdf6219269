"""The broker as the node asks it (node/queue/broker.py), against a real Redis.

The dispatcher asks the queue depth at every poll while tasks wait: on one
connection kept open, which a broker restart must not turn into a false
outage, and which a broker that is down turns into BrokerUnavailable naming
it without its password.
"""

from __future__ import annotations

import pytest
import redis

from config.schema import CelerySettings
from node.queue.broker import BrokerUnavailable, QueueDepth, celery_app
from tests.redis_server import RedisServer, redis_server  # noqa: F401


def connections_received(client: redis.Redis) -> int:
    """Connections Redis accepted so far (this client's one included, once)."""
    return int(client.info("stats")["total_connections_received"])


def test_the_queue_depth_is_asked_on_one_connection_that_outlives_a_restart(redis_server):  # noqa: F811
    app = celery_app(CelerySettings(broker_url=redis_server.url, queue="depth"))
    depth = QueueDepth(app, "depth")
    client = redis.Redis(port=redis_server.port)
    try:
        assert depth() == 0  # no such queue yet
        for number in range(3):
            app.send_task("segnode.run_job", args=[{"job_id": number}], queue="depth")
        before = connections_received(client)
        assert [depth() for _ in range(20)] == [3] * 20
        assert connections_received(client) - before <= 1  # at most the kept channel's, opened lazily
        redis_server.restart()  # without persistence: the messages are gone, the connection broken
        assert depth() == 0  # a new connection at once, no outage
        redis_server.stop()
        with pytest.raises(BrokerUnavailable) as refused:
            depth()
        assert f"127.0.0.1:{redis_server.port}" in str(refused.value)
    finally:
        client.close()
        depth.close()
        app.close()


def test_a_broker_that_is_down_is_named_without_its_password(tmp_path):
    server = RedisServer(tmp_path)  # a free port, never started
    app = celery_app(CelerySettings(broker_url=f"redis://:s3cret@127.0.0.1:{server.port}/0"))
    depth = QueueDepth(app, "segnode")
    try:
        with pytest.raises(BrokerUnavailable) as refused:
            depth()
        assert "s3cret" not in str(refused.value) and ":***@" in str(refused.value)
    finally:
        depth.close()
        app.close()
