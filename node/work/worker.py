"""A worker process: takes jobs from the queue and runs them.

Workers are processes of their own, not threads of the node, so that
whatever inference does to a process (a CUDA fault, running out of memory,
a hung native library) leaves the node receiving. Each keeps the models it
loaded warm for the next job. While it runs a job it renews the job's lease;
when its node goes away it stops too, and the node that starts next queues
the job again (node/work/supervisor.py has the kernel kill it with its node).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from config import SegnodeConfig
from config.following import FollowedConfig
from node.queue.courses import CourseStore
from node.queue.jobs import Job, JobQueue, LeaseLostError
from node.receive.index import InstanceIndex
from node.receive.storage import installation_uid
from node.send.outbox import OutboxStore
from node.work.execution import Executor
from node.work.pipeline import PipelineError
from node.work.preparation import prepare
from node.work.recording import record

LOG = logging.getLogger("segnode.worker")

#: A job whose worker has not renewed its lease for this long is taken back.
LEASE_SECONDS = 60.0
_IDLE_POLL_SECONDS = 0.25


class _Stopping(Exception):
    """SIGTERM arrived: give the job back and exit."""


class Worker:
    """One worker: a device, the models loaded on it, the job loop."""

    def __init__(self, config_path: Path, name: str, device: str):
        self.config_path = Path(config_path)
        self.owner = f"{name}:{os.getpid()}"
        self.device = device
        self.followed = FollowedConfig(self.config_path)
        storage = self.config.node.storage_dir
        self.queue = JobQueue(storage)
        self.index = InstanceIndex(storage)
        self.outbox = OutboxStore(storage)
        self.courses = CourseStore(storage)
        self.device_uid = installation_uid(storage)
        self.executor = Executor(device, self.device_uid)
        self._parent = os.getppid()
        self._running: Job | None = None
        self._stopping = False

    @property
    def config(self) -> SegnodeConfig:
        """The configuration in force: the file's, as last read (:meth:`FollowedConfig.current`)."""
        return self.followed.config

    def run(self) -> None:
        threading.Thread(target=self._keep_lease, name="lease", daemon=True).start()
        LOG.info("%s ready on %s", self.owner, self.device)
        while not self._stopping:
            self.followed.current()
            job = self.queue.claim(self.owner, LEASE_SECONDS)
            if job is None:
                time.sleep(_IDLE_POLL_SECONDS)
                continue
            self._run(job)

    def stop(self) -> None:
        """From the SIGTERM handler: leave the current job to another worker."""
        self._stopping = True
        if self._running is not None:
            raise _Stopping

    def _run(self, job: Job) -> None:
        LOG.info("job %d (%s of series %s, route %s): attempt %d", job.id, job.kind.value,
                 job.series_instance_uid, job.route, job.attempts)
        self._running = job
        start = time.monotonic()
        try:
            spec = prepare(job, self.config, self.index, self.queue)
            outcome = self.executor.execute(spec, self.config)
            result = record(job, outcome, self.config, self.outbox, self.courses, self.device_uid)
            self._running = None
            self.queue.succeed(job.id, self.owner, result)
            LOG.info("job %d done in %.1f s: %s", job.id, time.monotonic() - start, result.seconds)
        except _Stopping:
            self._running = None
            self.queue.release(job.id, self.owner)
            LOG.info("job %d given back: the worker is stopping", job.id)
        except LeaseLostError as exc:
            self._running = None
            LOG.warning("job %d: %s; its result is dropped", job.id, exc)
        except Exception as exc:  # any failure of a job is the job's, not the worker's
            self._running = None
            reason = f"{type(exc).__name__}: {exc}"
            LOG.log(logging.WARNING if isinstance(exc, PipelineError) else logging.ERROR,
                    "job %d failed: %s", job.id, reason, exc_info=not isinstance(exc, PipelineError))
            try:
                after = self.queue.fail(job.id, self.owner, reason, self.config.jobs)
                LOG.info("job %d is %s (attempt %d of %d)", job.id, after.state.value, after.attempts,
                         self.config.jobs.max_attempts)
            except LeaseLostError:
                LOG.warning("job %d was taken back meanwhile", job.id)

    def _keep_lease(self) -> None:
        """Renew the running job's lease; end the process when the node is gone."""
        while True:
            time.sleep(LEASE_SECONDS / 6)
            if os.getppid() != self._parent:
                LOG.error("%s: the node is gone; stopping", self.owner)
                os._exit(1)
            job = self._running
            if job is not None:
                try:
                    self.queue.renew(job.id, self.owner, LEASE_SECONDS)
                except LeaseLostError as exc:
                    LOG.warning("%s", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segnode-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s {args.name} %(name)s: %(message)s"
    )
    for chatty in ("pynetdicom", "highdicom"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    worker = Worker(args.config, args.name, args.device)
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.stop())
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
