"""Series assembly: deciding when a series is complete.

A series is complete once no instance of it has arrived for the stable
period. The decision is made from timestamps in the index, so it survives
restarts: a series interrupted by a crash completes after the node is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from node.metrics import NodeMetrics
from node.receive.index import InstanceIndex

LOG = logging.getLogger(__name__)


class SeriesAssembler:
    """A thread that completes series that have been quiet for the stable
    period and hands them over (`hand_over`).

    Nothing passes from one to the other but the index: handover takes every
    series in the complete state from it, so one completed just before a
    crash is handed over after the restart.
    """

    def __init__(
        self,
        index: InstanceIndex,
        metrics: NodeMetrics,
        stable_seconds: float,
        hand_over: Callable[[], object],
    ):
        self._index = index
        self._metrics = metrics
        self.stable_seconds = stable_seconds
        self._hand_over = hand_over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="series-assembler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _complete_due(self) -> None:
        """Complete every series quiet for the stable period."""
        for series in self._index.complete_stable_series(time.time() - self.stable_seconds):
            self._metrics.series_completed.inc()
            self._metrics.series_receive_duration.observe(
                series.last_received - series.first_received
            )
            LOG.info(
                "series %s complete: %d instances, modality %s",
                series.series_instance_uid,
                series.instances,
                series.modality or "unknown",
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._complete_due()
                self._hand_over()
            except Exception:
                LOG.exception("series assembly failed; trying again")
            # Check often enough that completion lags the stable period by
            # at most a quarter of it (and at most a second).
            self._stop.wait(min(1.0, self.stable_seconds / 4))
