"""The node's retention thread: removes what the policy allows, and keeps
the storage metrics.

It runs a pass every :func:`pass_interval` seconds, at once when the SCP
finds free space under the low watermark, and every second while it stays
there: early removals become possible as deliveries complete.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from config.schema import RetentionSettings, StorageSettings
from node.disk_space import MEASURE_SECONDS, DiskSpace
from node.metrics import NodeMetrics
from node.retention.policy import Removal, RemovalKind, plan
from node.retention.removal import RemovalStore
from node.retention.steps import StepActivity, step_due

LOG = logging.getLogger(__name__)

_MAX_INTERVAL_SECONDS = 60.0
_MIN_INTERVAL_SECONDS = 0.1


def pass_interval(retention: RetentionSettings) -> float:
    """A minute, or a quarter of the shortest period when that is shorter,
    so that nothing outstays its period by more than a quarter of it."""
    shortest = min(retention.instances_hours, retention.results_hours) * 3600.0
    return max(_MIN_INTERVAL_SECONDS, min(_MAX_INTERVAL_SECONDS, shortest / 4))


@dataclass(frozen=True)
class Purged:
    """What one pass removed: instances and results (each a recorded
    removal), and MPPS steps (logged, counted here)."""

    removals: list[Removal]
    steps: int
    step_bytes: int


def purge(store: RemovalStore, disk: DiskSpace, retention: RetentionSettings) -> Purged:
    """One pass: finish interrupted removals, then carry out what the policy
    allows now (early ones too while under the low watermark), MPPS steps
    included; returns what was removed."""
    store.finish_interrupted()
    now = time.time()
    removed = []
    for removal in plan(store.activity(), retention, now, disk.shortfall_bytes()):
        if store.remove(removal, retention, now):
            LOG.info("removed the %s of series %s (study %s): %d files, %d bytes (%s)", removal.kind.value,
                     removal.series_instance_uid, removal.study_instance_uid, removal.files, removal.bytes,
                     removal.reason.value)
            removed.append(removal)
    steps, step_bytes = remove_steps(store, retention, now)
    return Purged(removed, steps, step_bytes)


def steps_due(store: RemovalStore, retention: RetentionSettings, now: float) -> list[StepActivity]:
    """The MPPS steps whose time has come (node/retention/steps.py)."""
    return [step for step in store.steps() if step_due(step, retention, now)]


def remove_steps(store: RemovalStore, retention: RetentionSettings, now: float) -> tuple[int, int]:
    """Delete the step files a kill left, then remove the MPPS steps whose
    time has come; returns how many steps went and the bytes freed.
    Early removal below the watermark leaves them: a step is at most a MB."""
    orphans = store.remove_orphan_steps(now)
    if orphans:
        LOG.info("deleted %d MPPS step file(s) that no step names (left by a crash)", orphans)
    removed = freed_total = 0
    for step in steps_due(store, retention, now):
        freed = store.remove_step(step, retention, now)
        if freed is not None:
            LOG.info("removed MPPS step %s (%s, last updated %.1f h ago) with its promises: %d bytes",
                     step.sop_instance_uid, step.status.value, (now - step.updated) / 3600, freed)
            removed += 1
            freed_total += freed
    return removed, freed_total


class StorageKeeper:
    """The thread; ``settings`` is read at each pass, so a reload applies."""

    def __init__(self, store: RemovalStore, disk: DiskSpace, metrics: NodeMetrics,
                 settings: Callable[[], StorageSettings]):
        self._store = store
        self._disk = disk
        self._metrics = metrics
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storage-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._disk.became_low.set()
        if self._thread.is_alive():
            self._thread.join()
        self._store.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            settings = self._settings()
            try:
                purged = purge(self._store, self._disk, settings.retention)
                for removal in purged.removals:
                    self._metrics.storage_freed_bytes.labels(removal.kind.value).inc(removal.bytes)
                self._metrics.storage_freed_bytes.labels("mpps").inc(purged.step_bytes)
                self._update_gauges()
            except Exception:  # a dead keeper would let the disk fill, silently
                LOG.exception("retention pass failed; trying again")
            self._disk.became_low.clear()
            if self._disk.is_low():
                self._stop.wait(MEASURE_SECONDS)
            else:
                self._disk.became_low.wait(pass_interval(settings.retention))

    def _update_gauges(self) -> None:
        stored = self._store.stored_bytes()
        self._metrics.storage_bytes.labels(RemovalKind.INSTANCES.value).set(stored.instances)
        self._metrics.storage_bytes.labels(RemovalKind.RESULTS.value).set(stored.results)
        self._metrics.storage_free_bytes.set(self._disk.free_bytes())
        self._metrics.storage_seconds_to_full.set(self._disk.seconds_to_full())
        self._metrics.storage_low_space.set(int(self._disk.is_low()))
