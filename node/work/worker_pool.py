"""The node's workers: one process per GPU, one on the CPU where there is none.

The pool starts them, restarts one that dies (after a pause that doubles
while it keeps dying, so that a model that cannot load does not spin), and
hands its running job back to the queue at once rather than after the lease.
At the node's start, jobs still marked running belong to workers of an
earlier run and are queued again the same way.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config import JobSettings
from node.backoff import doubling_delay
from node.queue.job_state import JobState
from node.queue.jobs import JobQueue

LOG = logging.getLogger(__name__)

_CHECK_SECONDS = 0.5
#: Restart pauses start here and double up to the max; a worker alive as
#: long as the max before it died starts over.
_RESTART_PAUSE_SECONDS = 1.0
_RESTART_PAUSE_MAX_SECONDS = 60.0
_STOP_GRACE_SECONDS = 20.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(node_pid: int) -> Callable[[], None]:
    """Run in the child before exec: have Linux SIGKILL the worker when the
    node dies (kill -9 included), so that no orphan keeps a job or a GPU;
    the next node queues the job again. Set before exec, it also covers a
    node killed while the worker is still importing."""

    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except AttributeError:
            pass  # no prctl (not Linux): the worker's lease thread watches its parent instead
        if os.getppid() != node_pid:  # the node died before the signal was armed
            os._exit(1)

    return arm


def worker_devices() -> tuple[str, ...]:
    """``cuda:0``, ``cuda:1``... for each GPU PyTorch sees, else ``cpu``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return tuple(f"cuda:{i}" for i in range(count)) or ("cpu",)


@dataclass
class _Slot:
    name: str
    device: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    start_after: float = 0.0

    @property
    def owner(self) -> str | None:
        return None if self.process is None else f"{self.name}:{self.process.pid}"


class WorkerPool:
    """Worker processes of ``python -m node.work.worker`` supervised by a thread."""

    def __init__(self, config_path: Path, queue: JobQueue, settings: Callable[[], JobSettings],
                 devices: tuple[str, ...]):
        self._config_path = config_path
        self._queue = queue
        self._settings = settings
        self._slots = [_Slot(f"worker-{i}", device) for i, device in enumerate(devices)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)

    def start(self) -> None:
        earlier = tuple(job.owner for job in self._queue.jobs(JobState.RUNNING) if job.owner)
        recovered = self._queue.recover(self._settings(), dead_owners=earlier)
        for job in recovered:
            LOG.warning("job %d was running when segnode stopped: %s again", job.id, job.state.value)
        for slot in self._slots:
            self._spawn(slot)
        self._thread.start()

    def stop(self) -> None:
        """SIGTERM every worker (each gives its job back) and wait for them."""
        self._stop.set()
        self._thread.join()
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for slot in self._slots:
            if slot.process is None:
                continue
            try:
                slot.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOG.error("%s did not stop; killing it", slot.owner)
                slot.process.kill()
                slot.process.wait()

    def _spawn(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen([
            sys.executable, "-m", "node.work.worker", "--config", str(self._config_path),
            "--name", slot.name, "--device", slot.device,
        ], preexec_fn=die_with(os.getpid()))
        slot.started_at = time.monotonic()
        LOG.info("started %s on %s", slot.owner, slot.device)

    def _supervise(self) -> None:
        while not self._stop.wait(_CHECK_SECONDS):
            for slot in self._slots:
                try:
                    self._check(slot)
                except Exception:
                    LOG.exception("supervising %s failed; trying again", slot.name)
            try:
                self._queue.recover(self._settings())  # leases of hung workers
            except Exception:
                LOG.exception("recovering expired jobs failed; trying again")

    def _check(self, slot: _Slot) -> None:
        process = slot.process
        if process is not None:
            code = process.poll()
            if code is None:
                return
            owner = slot.owner
            slot.process = None
            # A worker that ran a while before dying is not crash-looping.
            healthy = time.monotonic() - slot.started_at > _RESTART_PAUSE_MAX_SECONDS
            slot.restarts = 1 if healthy else slot.restarts + 1
            pause = doubling_delay(slot.restarts, _RESTART_PAUSE_SECONDS, _RESTART_PAUSE_MAX_SECONDS)
            slot.start_after = time.monotonic() + pause
            LOG.error("%s exited with status %s; restarting it in %.0f s", owner, code, pause)
            for job in self._queue.recover(self._settings(), dead_owners=(owner,)):
                LOG.warning("job %d of %s is %s again", job.id, owner, job.state.value)
        if time.monotonic() >= slot.start_after:
            self._spawn(slot)
