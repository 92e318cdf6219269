"""Jobs through Celery (``jobs.backend: celery``): the node's dispatcher, real Redis, real workers.

The node (``segnode serve``), its broker (Debian's redis-server, without
persistence) and a worker host (``segnode worker``) are separate processes,
as on separate machines sharing the storage; the loop is the one of
tests/test_e2e.py: storescu in, SEG and SR out at a storescp destination.
What is checked is what the node's record adds to Celery: a broker that is
down or restarted, or a node killed mid-job, loses no job and sends none twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from config import SegnodeConfig
from config.reload_guard import reload_refusals
from tests.conftest import NodeProcess, StoreSCP, free_port
from tests.redis_server import redis_server  # noqa: F401
from tests.synthetic import write_ct_series
from tests.test_e2e import every_result, results, running_job, storescu, wait_for


class WorkerProcess:
    """``segnode worker --config FILE``: a worker host's Celery workers, one per device."""

    def __init__(self, node: NodeProcess, config_path: Path | None = None, host: str | None = None):
        self.log_path = node.workdir / f"worker-{time.monotonic_ns()}.log"
        named = () if host is None else ("--host", host)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "worker", "--config", str(config_path or node.config_path),
                 *named],
                stdout=log, stderr=subprocess.STDOUT, cwd=node.workdir, start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def workers(node_factory) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(node: NodeProcess, config_path: Path | None = None, host: str | None = None) -> WorkerProcess:
        started.append(WorkerProcess(node, config_path, host))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def destination(tmp_path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path)
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("ct"), slices=24, rows=96, columns=96,
                           pixel_spacing=(4.0, 4.0), slice_thickness=4.0)


@pytest.fixture(scope="module")
def slow_series(tmp_path_factory) -> list[Path]:
    """A series whose job lasts seconds, long enough to kill the node in."""
    return write_ct_series(tmp_path_factory.mktemp("slow"), slices=60, rows=256, columns=256,
                           pixel_spacing=(1.6, 1.6), slice_thickness=2.0)


def celery_node(node_factory, broker_url: str, destination_port: int) -> NodeProcess:
    """A node (not started) that routes CT to a storescp through Celery workers on the CPU."""
    node = node_factory()
    node.config.update(
        destinations={"RESULTS": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": destination_port}},
        pipelines={"organs": {"model": "builtin"}},
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "send_to": ["RESULTS"]}],
        jobs={"max_attempts": 3, "retry_base_seconds": 1, "retry_max_seconds": 2, "backend": "celery",
              "celery": {"broker_url": broker_url, "visibility_timeout_seconds": 30}},
        worker={"devices": ["cpu"], "metrics_port": free_port()},
        sending={"retry_base_seconds": 0.5, "retry_max_seconds": 2},
    )
    node.write_config()
    return node


def status(node: NodeProcess, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path), *extra],
        capture_output=True, text=True, check=True, cwd=node.workdir,
    )


def celery_status(node: NodeProcess) -> dict:
    return json.loads(status(node, "--json").stdout)["celery"]


def delivered_once(destination: StoreSCP) -> dict[str, list[str]]:
    """SOP Instance UIDs by modality once both SEGs and the SR arrived, and a
    while after, for anything sent twice to arrive too (storescp keeps every copy)."""
    wait_for(lambda: every_result(destination), 120, "the SEGs and SR at the destination")
    time.sleep(3)
    found = results(destination)
    return {modality: sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths)
            for modality, paths in found.items()}


def job_is(node: NodeProcess, state: str) -> dict | None:
    jobs = node.status_jobs()
    return jobs[0] if len(jobs) == 1 and jobs[0]["state"] == state else None


def test_a_reload_that_changes_how_jobs_run_is_refused():
    running = SegnodeConfig(jobs={"backend": "celery"})
    switched = SegnodeConfig(jobs={"backend": "embedded"})
    moved = SegnodeConfig(jobs={"backend": "celery", "celery": {"broker_url": "redis://:secret@other:6379/1",
                                                                "queue": "elsewhere"}})
    (reason,) = reload_refusals(switched, running)
    assert reason.startswith("jobs.backend: celery in force, embedded in the file")
    (reason,) = reload_refusals(moved, running)
    assert "jobs.celery.broker_url, jobs.celery.queue" in reason and "secret" not in reason
    retries = SegnodeConfig(jobs={"backend": "celery", "max_attempts": 5})
    assert reload_refusals(retries, running) == ()


def test_status_names_the_broker_its_queue_and_whether_it_answers(node_factory, redis_server):  # noqa: F811
    node = celery_node(node_factory, redis_server.url, free_port()).start()
    seen = celery_status(node)
    assert seen == {"broker": redis_server.url, "queue": "segnode", "answers": True, "queue_depth": 0,
                    "workers": [], "error": None}
    assert f"jobs through Celery: broker {redis_server.url} answers; queue segnode: 0 message(s)" in \
        status(node).stdout
    redis_server.stop()
    seen = celery_status(node)
    assert not seen["answers"] and seen["queue_depth"] is None and redis_server.url in seen["error"]
    assert "does NOT answer" in status(node).stdout


@pytest.mark.slow
def test_a_ct_comes_back_as_seg_and_sr_from_a_celery_worker(
    node_factory, redis_server, destination, workers, ct_series  # noqa: F811
):
    node = celery_node(node_factory, redis_server.url, destination.port).start()
    worker = workers(node)
    storescu(node, ct_series)
    uids = delivered_once(destination)
    assert (len(uids["SEG"]), len(uids["SR"])) == (2, 1)  # the structures' SEG and the body's, one SR
    job = wait_for(lambda: job_is(node, "done"), 30, "the job to be done")
    assert job["attempts"] == 1
    seen = celery_status(node)
    assert seen["answers"] and seen["queue_depth"] == 0
    assert [(w["device"], w["active"]) for w in seen["workers"]] == [("cpu", 0)], worker.log()
    metrics = node.metrics()
    assert metrics["segnode_celery_tasks_sent_total"] == 1 and metrics["segnode_celery_broker_up"] == 1
    assert metrics['segnode_celery_tasks_finished_total{outcome="success"}'] == 1
    assert "sent as task" in node.log() and "segnode worker ready" in worker.log()


@pytest.mark.slow
def test_a_broker_that_is_down_stops_no_reception_and_the_job_runs_when_it_is_back(
    node_factory, redis_server, destination, workers, ct_series  # noqa: F811
):
    node = celery_node(node_factory, redis_server.url, destination.port).start()
    workers(node)
    redis_server.stop()
    storescu(node, ct_series)  # check=True: every C-STORE answered success
    uid = str(pydicom.dcmread(ct_series[0], stop_before_pixels=True).SeriesInstanceUID)
    node.wait_for_series(uid, "dispatched", len(ct_series))
    time.sleep(4)  # the dispatcher tries and backs off meanwhile, claiming and giving back the job
    waiting = wait_for(lambda: job_is(node, "queued"), 10, "the job to wait in the queue")
    assert waiting["attempts"] == 0  # given back, not failed
    assert node.log().count("does not answer") == 1
    redis_server.start()
    uids = delivered_once(destination)
    assert (len(uids["SEG"]), len(uids["SR"])) == (2, 1)
    job = wait_for(lambda: job_is(node, "done"), 30, "the job to be done")
    assert job["attempts"] == 1  # waiting for the broker is no failed attempt
    assert "answers again" in node.log()


@pytest.mark.slow
def test_a_message_lost_by_a_broker_restart_is_sent_again_and_delivered_once(
    node_factory, redis_server, destination, workers, ct_series  # noqa: F811
):
    node = celery_node(node_factory, redis_server.url, destination.port).start()
    storescu(node, ct_series)  # no worker yet: the job's message waits in the broker
    first = wait_for(lambda: running_job(node), 60, "the job to be claimed")
    wait_for(lambda: celery_status(node)["queue_depth"] == 1, 30, "its message in the broker")
    redis_server.restart()  # without persistence: the message is gone
    workers(node)
    uids = delivered_once(destination)
    assert (len(uids["SEG"]), len(uids["SR"])) == (2, 1)
    assert all(count == 1 for count in destination.received_counts().values())
    job = wait_for(lambda: job_is(node, "done"), 30, "the job to be done")
    assert job["attempts"] == 1
    assert f"the message of task {first['owner'].removeprefix('celery:')} is not in queue" in node.log()
    assert node.log().count("sent as task") == 2


@pytest.mark.slow
def test_a_node_killed_during_a_job_polls_its_task_after_the_restart_and_runs_it_once(
    node_factory, redis_server, destination, workers, slow_series  # noqa: F811
):
    node = celery_node(node_factory, redis_server.url, destination.port).start()
    worker = workers(node)
    storescu(node, slow_series)
    job = wait_for(lambda: running_job(node), 60, "the job to be sent")
    task_id = job["owner"].removeprefix("celery:")
    wait_for(lambda: task_id in worker.log(), 60, "the worker to take the task")
    node.kill()
    node.start()
    uids = delivered_once(destination)
    assert (len(uids["SEG"]), len(uids["SR"])) == (2, 1)
    assert all(count == 1 for count in destination.received_counts().values())
    done = wait_for(lambda: job_is(node, "done"), 30, "the job to be done")
    assert done["attempts"] == 1
    assert f"waiting for task {task_id}, sent before this node started" in node.log()
    assert node.log().count("sent as task") == 1
    assert worker.log().count("] received") == 1  # Celery's "Task segnode.run_job[<id>] received"


def another_host(node: NodeProcess, tmp_path: Path) -> Path:
    """The configuration of a second worker host: the node's storage at another
    mount point (a symbolic link stands in for the NFS mount), its own metrics port."""
    mount = tmp_path / "host-b" / "mnt" / "segnode"
    mount.parent.mkdir(parents=True)
    mount.symlink_to(node.storage_dir, target_is_directory=True)
    config = json.loads(json.dumps(node.config))
    config["node"]["storage_dir"] = str(mount)
    config["worker"] = {"devices": ["cpu"], "metrics_port": free_port()}
    path = tmp_path / "host-b" / "segnode.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.mark.slow
def test_a_worker_host_killed_during_a_job_leaves_it_to_another_and_it_is_delivered_once(
    node_factory, redis_server, destination, workers, slow_series, tmp_path  # noqa: F811
):
    """kill -9 of a whole worker host: its message, unacknowledged, comes back after the
    visibility timeout (30 s here) to the host left, which reads the storage at its own mount."""
    node = celery_node(node_factory, redis_server.url, destination.port).start()
    first = workers(node, host="host-a")
    storescu(node, slow_series)
    job = wait_for(lambda: running_job(node), 60, "the job to be sent")
    task_id = job["owner"].removeprefix("celery:")
    wait_for(lambda: f"{task_id}] received" in first.log(), 60, "host A to take the task")
    workers(node, another_host(node, tmp_path), host="host-b")
    os.killpg(first.proc.pid, signal.SIGKILL)  # the supervisor, its Celery worker and the pool child
    first.proc.wait(10)
    uids = delivered_once(destination)
    assert (len(uids["SEG"]), len(uids["SR"])) == (2, 1)
    assert all(count == 1 for count in destination.received_counts().values())
    done = wait_for(lambda: job_is(node, "done"), 60, "the job to be done")
    assert done["attempts"] == 1  # the broker redelivered it; the node's record saw one attempt
    assert node.log().count("sent as task") == 1


@pytest.fixture(scope="module")
def long_series(tmp_path_factory) -> list[Path]:
    """A series whose job lasts several seconds on the CPU: time to reopen it meanwhile."""
    return write_ct_series(tmp_path_factory.mktemp("long"), slices=120, rows=512, columns=512,
                           pixel_spacing=(0.8, 0.8), slice_thickness=2.0)


@pytest.mark.slow
def test_a_job_taken_back_while_its_task_runs_has_the_task_revoked_and_ended(
    node_factory, redis_server, destination, workers, long_series  # noqa: F811
):
    """The series is sent again while its job runs on a worker: the job is queued
    afresh, the running task is ended (not left to spend minutes on a result the node
    would drop), and the job's new task delivers the results, once."""
    node = celery_node(node_factory, redis_server.url, destination.port).start()
    worker = workers(node)
    storescu(node, long_series)
    job = wait_for(lambda: running_job(node), 60, "the job to be sent")
    first = job["owner"].removeprefix("celery:")
    wait_for(lambda: f"task {first}: job" in worker.log(), 60, "the worker to start the task")
    storescu(node, long_series[:1])  # sent again: the series reopens and its job is queued afresh
    wait_for(lambda: f"job {job['id']}: task {first} revoked" in node.log(), 60, "the task to be revoked")
    wait_for(lambda: f"Terminating {first}" in worker.log(), 30, "the worker to end the task")
    uids = delivered_once(destination)
    assert (len(uids["SEG"]), len(uids["SR"])) == (2, 1)
    assert all(count == 1 for count in destination.received_counts().values())
    done = wait_for(lambda: job_is(node, "done"), 60, "the job to be done")
    assert done["attempts"] == 1 and node.log().count("sent as task") == 2
    assert f"task {first}: job {job['id']} done" not in worker.log()
    assert node.metrics()["segnode_celery_tasks_revoked_total"] == 1
