"""The node's workers: one process per GPU, one on the CPU where there is none.

The pool starts them and restarts one that dies (node/work/supervisor.py),
and hands its running job back to the queue at once rather than after the
lease. At the node's start, jobs still marked running belong to workers of
an earlier run and are queued again the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from config import JobSettings
from node.queue.job_state import JobState
from node.queue.jobs import JobQueue
from node.work.supervisor import CHECK_SECONDS, ChildSlot, ProcessSupervisor, die_with

LOG = logging.getLogger(__name__)

#: SIGTERM lets a worker give its job back before it exits.
_STOP_GRACE_SECONDS = 20.0


class WorkerPool:
    """Worker processes of ``python -m node.work.worker`` supervised by a thread."""

    def __init__(self, config_path: Path, queue: JobQueue, settings: Callable[[], JobSettings],
                 devices: tuple[str, ...]):
        self._config_path = config_path
        self._queue = queue
        self._settings = settings
        self._children = ProcessSupervisor(
            [ChildSlot(f"worker-{i}", device) for i, device in enumerate(devices)], self._spawn,
            signal.SIGTERM, _STOP_GRACE_SECONDS, on_exit=self._recover,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)

    def start(self) -> None:
        earlier = tuple(job.owner for job in self._queue.jobs(JobState.RUNNING) if job.owner)
        recovered = self._queue.recover(self._settings(), dead_owners=earlier)
        for job in recovered:
            LOG.warning("job %d was running when segnode stopped: %s again", job.id, job.state.value)
        self._children.start()
        self._thread.start()

    def stop(self) -> None:
        """SIGTERM every worker (each gives its job back) and wait for them."""
        self._stop.set()
        self._thread.join()
        self._children.stop()

    def _spawn(self, slot: ChildSlot) -> subprocess.Popen:
        return subprocess.Popen([
            sys.executable, "-m", "node.work.worker", "--config", str(self._config_path),
            "--name", slot.name, "--device", slot.device,
        ], preexec_fn=die_with(os.getpid()))

    def _recover(self, owner: str) -> None:
        """A dead worker's job is queued again now, not when its lease runs out."""
        for job in self._queue.recover(self._settings(), dead_owners=(owner,)):
            LOG.warning("job %d of %s is %s again", job.id, owner, job.state.value)

    def _supervise(self) -> None:
        while not self._stop.wait(CHECK_SECONDS):
            self._children.check()
            try:
                self._queue.recover(self._settings())  # leases of hung workers
            except Exception:
                LOG.exception("recovering expired jobs failed; trying again")
