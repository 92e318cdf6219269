"""``segnode worker``: a host that runs the node's jobs through Celery (``jobs.backend: celery``).

The command is a small supervisor. It starts one Celery worker process per
device (``segnode-<device>@<host>``, a prefork pool of one child, so that a
pool child that dies is noticed at once and its message put back by
``task_reject_on_worker_lost``), restarts one that exits, and serves
``/health`` and ``/metrics``. The pool child keeps an
:class:`~node.work.execution.Executor`, and so its models, warm between jobs.
It touches no database: a job arrives as a spec of paths inside the shared
storage and leaves as an outcome of paths (node/work/job_spec.py); the node
records it.

Metrics: the pool children count jobs in prometheus_client's multiprocess
mode (a folder of memory-mapped files the supervisor reads). A pool child
killed mid-job or replaced keeps what it counted, which reporting to the
parent over a pipe would lose, and nothing is hand-written to merge them.
The jobs running now are a gauge summed over live processes only: the
supervisor tells prometheus_client which children died.

Stopping (SIGTERM or SIGINT to ``segnode worker``): each Celery worker gets
SIGQUIT, Celery's cold shutdown (celery/apps/worker.py ``on_cold_shutdown``,
5.5+): it stops consuming and cancels the running task, which being
late-acknowledged and not acknowledged yet is cancelled without a result
(``Consumer.cancel_active_requests``; ``Request.on_failure`` stores no
FAILURE then), and the message goes back to the queue as the connection
closes (kombu's virtual transport restores unacknowledged messages at
shutdown: "Restoring 1 unacknowledged message(s)"; RabbitMQ requeues them
itself). Another worker runs it; the node sees STARTED, then SUCCESS
(tests/test_celery_worker.py). A warm shutdown
(Celery's SIGTERM) would instead wait for the job, minutes on a CPU, and
soft shutdown (``worker_soft_shutdown_timeout``) is left off: a job cannot
save its progress, so waiting a while before cancelling it only delays the
stop. Under systemd use ``KillMode=mixed``, so that the SIGTERM reaches this
supervisor alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from celery.signals import worker_process_init

from config import ConfigError, SegnodeConfig, load_config
from config.following import FollowedConfig
from node.queue.broker import TASK_NAME, WORKER_PREFIX, JobFailed, celery_app, redacted, worker_tag
from node.work.supervisor import CHECK_SECONDS, ChildSlot, ProcessSupervisor, die_with, worker_devices

LOG = logging.getLogger("segnode.worker")

#: prometheus_client reads this in every process that counts.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A cold shutdown ends the running task at once; this covers the broker round trips.
_STOP_GRACE_SECONDS = 30.0


# The task, in a pool child ---------------------------------------------------


class JobRunner:
    """What a pool child keeps between jobs: the configuration (reread when the
    file changes, as the embedded workers do) and the executor with its models."""

    def __init__(self, config_path: Path, device: str):
        self.followed = FollowedConfig(config_path)
        self.device = device
        self._executor = None
        self._metrics: _JobMetrics | None = None

    def run(self, task_id: str, spec_json: dict) -> dict:
        """Run one job, counted as running meanwhile; any failure becomes
        :class:`JobFailed` with the node's reason."""
        metrics = self._job_metrics()
        with metrics.running.labels(self.device).track_inprogress():
            return self._run(task_id, spec_json, metrics)

    def _run(self, task_id: str, spec_json: dict, metrics: _JobMetrics) -> dict:
        from node.work.job_spec import outcome_to_json, spec_from_json
        from node.work.pipeline import PipelineError

        config = self.followed.current()
        storage = config.node.storage_dir
        kind = str(spec_json.get("kind", "unknown")) if isinstance(spec_json, dict) else "unknown"
        start = time.monotonic()
        try:
            spec = spec_from_json(spec_json, storage)
            LOG.info("task %s: job %d (%s of series %s) on %s", task_id, spec.job_id, spec.kind.value,
                     spec.series_instance_uid, self.device)
            outcome = self._executor_for(storage).execute(spec, config)
            result = outcome_to_json(outcome, storage)
        except Exception as exc:  # any failure of a job is the job's; the node records the attempt
            metrics.finished(kind, "failure", {})
            reason = f"{type(exc).__name__}: {exc}"
            LOG.log(logging.WARNING if isinstance(exc, PipelineError) else logging.ERROR,
                    "task %s: job %s failed: %s", task_id, _job_id(spec_json), reason,
                    exc_info=not isinstance(exc, PipelineError))
            raise JobFailed(reason) from None
        finally:
            metrics.gpu_memory(self.device)
        metrics.finished(kind, "success", outcome.seconds)
        LOG.info("task %s: job %d done in %.1f s: %s", task_id, spec.job_id, time.monotonic() - start,
                 outcome.seconds)
        return result

    def _executor_for(self, storage: Path):
        if self._executor is None:
            from node.receive.storage import installation_uid
            from node.work.execution import Executor

            # The node's installation UID, read from the shared storage: every
            # host writes the same objects for a job.
            self._executor = Executor(self.device, installation_uid(storage))
        return self._executor

    def _job_metrics(self) -> _JobMetrics:
        if self._metrics is None:
            self._metrics = _JobMetrics()
        return self._metrics


class _JobMetrics:
    """The pool child's counters, written to the multiprocess folder (created in the
    child, after the fork, so that each child writes files of its own pid)."""

    def __init__(self):
        from prometheus_client import Counter, Gauge

        self.jobs = Counter("segnode_worker_jobs", "Jobs a worker ran, by kind and outcome.",
                            ["kind", "outcome"])
        self.stages = Counter("segnode_worker_stage_seconds", "Seconds spent in each stage of a job.",
                              ["kind", "stage"])
        self.memory = Gauge("segnode_worker_gpu_memory_bytes",
                            "GPU memory PyTorch holds after the worker's latest job, by device.",
                            ["device"], multiprocess_mode="mostrecent")
        # "livesum": the supervisor drops the files of a dead pool child
        # (WorkerHost._forget_dead_children), and with them its job that stopped.
        self.running = Gauge("segnode_worker_jobs_running", "Jobs a worker is running now, by device.",
                             ["device"], multiprocess_mode="livesum")

    def finished(self, kind: str, outcome: str, seconds: dict[str, float]) -> None:
        self.jobs.labels(kind, outcome).inc()
        for stage, value in seconds.items():
            self.stages.labels(kind, stage).inc(max(0.0, float(value)))

    def gpu_memory(self, device: str) -> None:
        """CUDA devices only: a CPU worker exports no series."""
        if not device.startswith("cuda"):
            return
        try:
            import torch

            self.memory.labels(device).set(torch.cuda.memory_allocated(device))
        except Exception as exc:  # a metric must not fail the job
            LOG.warning("GPU memory of %s unknown: %s", device, exc)


def _job_id(spec_json: object) -> object:
    return spec_json.get("job_id", "?") if isinstance(spec_json, dict) else "?"


def _allow_children(**_) -> None:
    """In each new pool child: billiard marks it daemonic, and the standard
    library refuses a daemonic process children, but the pipeline writes its
    DICOM objects in forked builders (dicomio/derived.py) that it joins itself.
    The flag only governs that refusal and what the child reaps at exit;
    billiard supervises the child by its own means. The workaround of
    celery/celery#1709 (Celery offers no setting for it)."""
    import multiprocessing

    multiprocessing.current_process().daemon = False


def serve_device(config_path: Path, device: str, host: str) -> int:
    """One Celery worker on `device` (this process; Celery forks its pool child)."""
    # Imported before Celery forks its pool child, so that a child replacing a dead
    # one starts at once (no CUDA is initialised here: the child does that).
    import node.work.execution  # noqa: F401
    import node.work.job_spec  # noqa: F401

    config = load_config(config_path, check_files=False)
    settings = config.jobs.celery
    app = celery_app(settings)
    runner = JobRunner(config_path, device)

    @app.task(name=TASK_NAME, bind=True)
    def run_job(task, spec_json: dict) -> dict:
        return runner.run(task.request.id, spec_json)

    worker_process_init.connect(_allow_children, weak=False)

    name = f"{WORKER_PREFIX}{worker_tag(device)}@{host}"
    LOG.info("%s taking jobs from queue %s at %s", name, settings.queue, redacted(settings.broker_url))
    app.worker_main([
        "worker", f"--hostname={name}", "--pool=prefork", "--concurrency=1", f"--queues={settings.queue}",
        "--loglevel=INFO", "--without-mingle", "--without-gossip",
    ])
    return 0


# The supervisor ---------------------------------------------------------------


class WorkerHost:
    """The Celery worker processes of one host, their health and their metrics."""

    def __init__(self, config_path: Path, config: SegnodeConfig, devices: tuple[str, ...], host: str):
        self.config_path = config_path
        self.config = config
        self.host = host
        self.children = ProcessSupervisor(
            [ChildSlot(f"{WORKER_PREFIX}{worker_tag(device)}@{host}", device) for device in devices],
            self._spawn, signal.SIGQUIT, _STOP_GRACE_SECONDS,
        )
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="segnode-worker-metrics-"))
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def run(self) -> int:
        settings = self.config.worker
        try:
            self._server = _health_server(self, settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            LOG.error("cannot serve /health and /metrics on %s:%d: %s", settings.metrics_host,
                      settings.metrics_port, exc)
            return 1
        threading.Thread(target=self._server.serve_forever, name="worker-health", daemon=True).start()
        try:
            self.children.start()
            LOG.info("segnode worker ready: %s on %s, health and metrics on %s:%d",
                     ", ".join(s.device for s in self.children.slots), self.host, settings.metrics_host,
                     settings.metrics_port)
            while not self._stop.wait(CHECK_SECONDS):
                self.children.check()
                self._forget_dead_children()
            # Cold shutdown of each worker: its running job goes back to the broker.
            self.children.stop()
            LOG.info("segnode worker stopped")
            return 0
        finally:
            self._server.shutdown()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def stop(self) -> None:
        """From the signal handler: the loop stops the workers."""
        self._stop.set()

    def _forget_dead_children(self) -> None:
        """prometheus_client keeps a process's live gauges until told it died; a
        pool child killed mid-job (or a worker restarted) would count its job
        as running forever. Its files name its pid."""
        from prometheus_client.multiprocess import mark_process_dead

        for path in self.metrics_dir.glob("gauge_live*_*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            if not _running(pid):
                mark_process_dead(pid, str(self.metrics_dir))

    def _spawn(self, slot: ChildSlot) -> subprocess.Popen:
        env = {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}
        return subprocess.Popen(
            [sys.executable, "-m", "node.work.celery_worker", "--config", str(self.config_path),
             "--device", slot.device, "--host", self.host],
            env=env, preexec_fn=die_with(os.getpid()),
        )


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid is another user's now
        return False
    return True


def _health_server(host: WorkerHost, address: str, port: int) -> ThreadingHTTPServer:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(host.metrics_dir))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                workers = host.children.states()
                ok = all(w["running"] for w in workers)
                body = json.dumps({"status": "ok" if ok else "degraded", "host": host.host,
                                   "workers": workers}).encode()
                self._answer(200 if ok else 503, "application/json", body)
            elif self.path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._answer(404, "text/plain", b"not found\n")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
            pass  # scraped every few seconds; not worth a log line

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    return server


def resolve_devices(config: SegnodeConfig) -> tuple[str, ...]:
    """``worker.devices``; "auto": each GPU PyTorch sees, else the CPU."""
    devices = config.worker.devices
    return worker_devices() if devices == "auto" else tuple(dict.fromkeys(devices))


def run_worker_host(config_path: Path, host: str | None = None) -> int:
    """``segnode worker --config FILE``: until SIGTERM or SIGINT."""
    try:
        config = load_config(config_path, check_files=False)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{exc.source}: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    if config.jobs.backend != "celery":
        LOG.warning("jobs.backend is %r: the node runs its own workers and sends this host nothing",
                    config.jobs.backend)
    worker_host = WorkerHost(config_path, config, resolve_devices(config), host or socket.gethostname())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker_host.stop())
    return worker_host.run()


def main(argv: list[str] | None = None) -> int:
    """One Celery worker process, as the supervisor starts it."""
    parser = argparse.ArgumentParser(prog="segnode-celery-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--host", required=True)
    args = parser.parse_args(argv)
    for chatty in ("pynetdicom", "highdicom"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return serve_device(args.config, args.device, args.host)


if __name__ == "__main__":
    sys.exit(main())
