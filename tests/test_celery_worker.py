"""``segnode worker``: real worker processes taking jobs from a real Redis.

Tasks are published by hand as the node's dispatcher publishes them
(``segnode.run_job``, ``args=[spec_json]``), so that these tests need no
node: a job's spec names synthetic CT files inside the storage, and what
comes back names files inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from celery.result import AsyncResult

from config.schema import CelerySettings
from node.queue.broker import TASK_NAME, JobFailed, WorkerSeen, celery_app, queue_depth, workers_seen
from node.queue.jobs import JobKind
from node.work.job_spec import JobSpec, outcome_from_json, spec_to_json
from tests.conftest import free_port
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.synthetic import write_ct_series

QUEUE = "segnode-test"
CREATED = 1_700_000_000.0


class WorkerHostProcess:
    """A ``segnode worker`` subprocess with its own config (and so its own metrics port)."""

    def __init__(self, workdir: Path, storage: Path, broker_url: str, host: str):
        self.host = host
        self.name = f"segnode-cpu@{host}"
        self.metrics_port = free_port()
        self.log_path = workdir / f"worker-{host}.log"
        self.config_path = workdir / f"worker-{host}.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "node": {"ae_title": "SEGNODE", "storage_dir": str(storage)},
            "pipelines": {"organs": {"model": "builtin"}},
            "jobs": {"backend": "celery", "celery": {"broker_url": broker_url, "queue": QUEUE}},
            "worker": {"metrics_port": self.metrics_port, "devices": ["cpu"]},
        }))
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerHostProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "worker", "--config", str(self.config_path),
             "--host", self.host],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: f"{self.name} ready." in self.log() or self._exited(), timeout, f"{self.name} ready")
        assert self.proc is not None and self.proc.poll() is None, self.log()

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def close(self) -> None:
        """Stop it if it still runs, and whatever it started (its own session)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def workers(tmp_path: Path, storage: Path,
            redis_server: RedisServer) -> Iterator[dict[str, WorkerHostProcess]]:  # noqa: F811
    """Worker hosts ``a`` and ``b`` (started by each test as it needs them)."""
    hosts = {name: WorkerHostProcess(tmp_path, storage, redis_server.url, f"test-{name}") for name in "ab"}
    yield hosts
    for host in hosts.values():
        host.close()


@pytest.fixture
def app(redis_server: RedisServer):  # noqa: F811
    return celery_app(CelerySettings(broker_url=redis_server.url, queue=QUEUE))


def wait_for(condition, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def ct_spec(storage: Path, name: str, slices: int, size: int, job_id: int = 7) -> JobSpec:
    series = f"1.2.826.0.1.3680043.10.543.{job_id}"
    files = write_ct_series(storage / "instances" / name, slices=slices, rows=size, columns=size,
                            series_instance_uid=series)
    return JobSpec(job_id=job_id, kind=JobKind.SEGMENT, series_instance_uid=series,
                   route="ct", pipeline="organs", destinations=(), created=CREATED,
                   results=storage / "results" / name, inputs=tuple(files))


def publish(app, spec: JobSpec, storage: Path) -> AsyncResult:
    """As the node's dispatcher does: the spec's JSON, under a task id of its choosing."""
    return app.send_task(TASK_NAME, args=[spec_to_json(spec, storage)], task_id=str(uuid.uuid4()))


def finished(result: AsyncResult, timeout: float) -> AsyncResult:
    """`result` once it ended, checked never to have been FAILURE on the way (a
    requeued task must not be recorded as failed meanwhile)."""
    seen: list[str] = []
    wait_for(lambda: seen.append(result.state) or seen[-1] in ("SUCCESS", "FAILURE"), timeout,
             f"task {result.id}", every=0.05)
    assert "FAILURE" not in seen[:-1], seen
    return result


def running_on(app, task_id: str, names: list[str]) -> tuple[str, int] | None:
    """(worker name, pool child pid) of a worker running `task_id` now."""
    replies = app.control.inspect(destination=names, timeout=0.5).active() or {}
    for name, active in replies.items():
        for request in active:
            if request["id"] == task_id and request.get("worker_pid"):
                return name, request["worker_pid"]
    return None


def mid_job(app, task_id: str, hosts: list[WorkerHostProcess], every: float) -> tuple[str, int]:
    """(worker name, pool child pid) once the job is running there: its pool child
    logged that it started it, so that what follows lands in the pipeline."""
    def started() -> tuple[str, int] | None:
        found = running_on(app, task_id, [h.name for h in hosts])
        if found is None:
            return None
        host = next(h for h in hosts if h.name == found[0])
        return found if f"task {task_id}: job 7 (" in host.log() else None

    return wait_for(started, 30, f"task {task_id} running", every=every)


def running_on_cpu(jobs: int) -> str:
    """The line of /metrics that counts the jobs running now."""
    return f'segnode_worker_jobs_running{{device="cpu"}} {jobs}.0'


def output_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_jobs_run_fail_with_their_reason_and_are_counted(app, workers, storage: Path):
    spec = ct_spec(storage, "small", slices=8, size=64)
    queued = publish(app, spec, storage)
    assert queue_depth(app, QUEUE) == 1  # waiting for a worker
    host = workers["a"].start()
    host.wait_ready()
    done = finished(queued, 60)
    assert done.state == "SUCCESS", done.traceback
    assert done.worker == "segnode-cpu@test-a"
    value = done.get()
    assert not Path(value["segment"]["seg"]).is_absolute()  # paths cross as paths inside the storage
    outcome = outcome_from_json(value, storage)
    for path in (outcome.result.seg, outcome.result.sr, *(o.path for o in outcome.objects)):
        assert path.is_file() and path.is_relative_to(storage.resolve()), path
    assert {o.kind for o in outcome.objects} >= {"seg", "sr"}

    missing = JobSpec(**{**spec.__dict__, "job_id": 8, "inputs": (storage / "instances" / "gone.dcm",),
                         "results": storage / "results" / "gone"})
    failed = finished(publish(app, missing, storage), 30)
    assert failed.state == "FAILURE"
    assert isinstance(failed.result, JobFailed) and "gone.dcm" in str(failed.result), failed.result
    assert queue_depth(app, QUEUE) == 0
    idle = WorkerSeen(name="segnode-cpu@test-a", host="test-a", device="cpu", active=0)
    assert workers_seen(app) == (idle,)

    status, body = host.get("/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok", body
    assert [(w["name"], w["running"]) for w in health["workers"]] == [("segnode-cpu@test-a", True)]
    status, metrics = host.get("/metrics")
    assert status == 200
    assert 'segnode_worker_jobs_total{kind="segment",outcome="success"} 1.0' in metrics, metrics
    assert 'segnode_worker_jobs_total{kind="segment",outcome="failure"} 1.0' in metrics, metrics
    assert 'segnode_worker_stage_seconds_total{kind="segment",stage="segment"}' in metrics, metrics
    assert running_on_cpu(0) in metrics, metrics
    assert host.get("/nothing")[0] == 404


def test_a_killed_pool_child_leaves_the_job_to_run_again_with_the_same_files(app, workers, storage: Path):
    host = workers["a"].start()
    spec = ct_spec(storage, "large", slices=160, size=256)
    host.wait_ready()
    first = finished(publish(app, spec, storage), 90)
    assert first.state == "SUCCESS", first.traceback
    expected = output_hashes(spec.results)
    for path in spec.results.iterdir():
        path.unlink()

    again = publish(app, spec, storage)
    _, pid = mid_job(app, again.id, [host], every=0.05)
    assert running_on_cpu(1) in host.get("/metrics")[1]
    os.kill(pid, signal.SIGKILL)
    assert finished(again, 90).state == "SUCCESS", again.traceback
    # The killed child's job no longer counts as running, nor does the one run again.
    assert running_on_cpu(0) in host.get("/metrics")[1]
    assert again.get()["objects"] == first.get()["objects"]  # the same paths and SOP Instance UIDs
    assert output_hashes(spec.results) == expected
    log = host.log()
    assert log.count(f"task {again.id}: job 7 (") == 2 and log.count(f"task {again.id}: job 7 done") == 1, log
    assert "WorkerLostError" in log


def test_sigterm_gives_the_running_job_back_to_another_worker(app, workers, storage: Path):
    a, b = workers["a"].start(), workers["b"].start()
    spec = ct_spec(storage, "large", slices=200, size=288)  # a few seconds of work: time to look and stop
    a.wait_ready()
    b.wait_ready()
    result = publish(app, spec, storage)
    name, _ = mid_job(app, result.id, [a, b], every=0.05)
    stopped, other = (a, b) if name == a.name else (b, a)
    assert {(w.name, w.active) for w in workers_seen(app, 0.5)} == {(stopped.name, 1), (other.name, 0)}

    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.proc.wait(30) == 0, stopped.log()
    assert finished(result, 90).state == "SUCCESS", (result.traceback, stopped.log())
    assert result.worker == other.name
    assert f"task {result.id}: job 7 done" not in stopped.log()
    assert f"task {result.id}: job 7 done" in other.log()
    assert outcome_from_json(result.get(), storage).result.seg.is_file()
    assert queue_depth(app, QUEUE) == 0  # given back once: no copy left to run again
