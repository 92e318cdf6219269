"""Child processes kept running, one per device: the node's embedded workers
(worker_pool.py) and the Celery worker processes of ``segnode worker``
(celery_worker.py) alike.

A child that exits is started again after a pause that doubles while it keeps
dying, so that a model that cannot load or a broker that refuses does not
spin; one that ran longer than the longest pause was healthy, and its pauses
start over. Each child dies with its parent (:func:`die_with`), so that no
orphan keeps a job or a GPU. Stopping signals every child, waits a grace
period and kills what still runs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.backoff import doubling_delay

LOG = logging.getLogger(__name__)

#: How often the owner's loop calls :meth:`ProcessSupervisor.check`.
CHECK_SECONDS = 0.5
#: Restart pauses start here and double up to the max; a child alive as
#: long as the max before it died starts over.
_RESTART_PAUSE_SECONDS = 1.0
_RESTART_PAUSE_MAX_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(parent_pid: int) -> Callable[[], None]:
    """Run in the child before exec: have Linux SIGKILL the child when its
    parent dies (kill -9 included), so that no orphan keeps a job or a GPU;
    the next node queues the job again. Set before exec, it also covers a
    parent killed while the child is still importing."""

    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except AttributeError:
            pass  # no prctl (not Linux): the worker's lease thread watches its parent instead
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def worker_devices() -> tuple[str, ...]:
    """``cuda:0``, ``cuda:1``... for each GPU PyTorch sees, else ``cpu``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return tuple(f"cuda:{i}" for i in range(count)) or ("cpu",)


@dataclass
class ChildSlot:
    """One device's child: its process, or None while it waits out its pause."""

    name: str
    device: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    start_after: float = 0.0

    @property
    def label(self) -> str | None:
        """``name:pid``, the child in the log; an embedded worker owns its jobs
        under the same (worker.py)."""
        return None if self.process is None else f"{self.name}:{self.process.pid}"


class ProcessSupervisor:
    """The children of `slots`, started by `spawn` and stopped by `stop_signal`.

    The owner runs the loop (a thread of the node, the main thread of
    ``segnode worker``) and calls :meth:`check` every :data:`CHECK_SECONDS`;
    :meth:`states` may be called from any thread meanwhile."""

    def __init__(self, slots: list[ChildSlot], spawn: Callable[[ChildSlot], subprocess.Popen],
                 stop_signal: signal.Signals, grace_seconds: float,
                 on_exit: Callable[[str], None] | None = None):
        """`on_exit` gets the label of a child that exited, once it is known dead."""
        self.slots = slots
        self._spawn_process = spawn
        self._stop_signal = stop_signal
        self._grace_seconds = grace_seconds
        self._on_exit = on_exit
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            for slot in self.slots:
                self._spawn(slot)

    def check(self) -> None:
        """Restart what exited, once its pause is over."""
        with self._lock:
            for slot in self.slots:
                try:
                    self._check(slot)
                except Exception:
                    LOG.exception("supervising %s failed; trying again", slot.name)

    def stop(self) -> None:
        """After the last :meth:`check`: signal every child, wait out the grace
        period together, then kill what still runs."""
        running = [s for s in self.slots if s.process is not None and s.process.poll() is None]
        for slot in running:
            slot.process.send_signal(self._stop_signal)
        deadline = time.monotonic() + self._grace_seconds
        for slot in running:
            try:
                slot.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOG.error("%s did not stop in %.0f s; killing it", slot.label, self._grace_seconds)
                slot.process.kill()
                slot.process.wait()

    def states(self) -> list[dict[str, object]]:
        """Each child as /health shows it."""
        with self._lock:
            return [{"name": s.name, "device": s.device, "pid": None if s.process is None else s.process.pid,
                     "running": s.process is not None and s.process.poll() is None,
                     "restarts": s.restarts} for s in self.slots]

    def _spawn(self, slot: ChildSlot) -> None:
        slot.process = self._spawn_process(slot)
        slot.started_at = time.monotonic()
        LOG.info("started %s on %s", slot.label, slot.device)

    def _check(self, slot: ChildSlot) -> None:
        if slot.process is not None:
            code = slot.process.poll()
            if code is None:
                return
            label = slot.label
            slot.process = None
            # A child that ran a while before dying is not crash-looping.
            healthy = time.monotonic() - slot.started_at > _RESTART_PAUSE_MAX_SECONDS
            slot.restarts = 1 if healthy else slot.restarts + 1
            pause = doubling_delay(slot.restarts, _RESTART_PAUSE_SECONDS, _RESTART_PAUSE_MAX_SECONDS)
            slot.start_after = time.monotonic() + pause
            LOG.error("%s exited with status %s; restarting it in %.0f s", label, code, pause)
            if self._on_exit is not None:
                self._on_exit(label)
        if time.monotonic() >= slot.start_after:
            self._spawn(slot)
