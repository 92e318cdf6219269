"""Series assembly: deciding when a series is complete.

What completes a series is decided by node/assemble/completion.py from the
index (its arrivals, its association's end, the MPPS step that lists it)
and, for what only the running node knows, the series that open
associations are still sending. Everything else is in the index, so the
decision survives restarts: a series interrupted by a crash completes after
the node is back, by its MPPS step or the stable period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from node.assemble.completion import Timing, completion
from node.metrics import NodeMetrics
from node.receive.index import InstanceIndex

LOG = logging.getLogger(__name__)

#: The longest wait between two rounds: the stable period and the MPPS wait
#: are checked at least this often.
_ROUND_SECONDS = 1.0
#: The shortest time between the starts of two rounds: a series whose
#: promised instances arrive 100 a second makes at most ten rounds a second.
_ROUND_SPACING = 0.1


class SeriesAssembler:
    """A thread that completes series and hands them over (`hand_over`).

    It runs a round at least every second (a quarter of the stable period,
    if shorter), and at once when the SCP says a signal is due
    (:meth:`due`): an association's grace period ending, an MPPS step
    ending, an instance that a step promised arriving.

    Nothing passes from it to the handover but the index: handover takes
    every series in the complete state from it, so one completed just before
    a crash is handed over after the restart.
    """

    def __init__(
        self,
        index: InstanceIndex,
        metrics: NodeMetrics,
        timing: Timing,
        held: Callable[[], frozenset[str]],
        hand_over: Callable[[], object],
    ):
        self._index = index
        self._metrics = metrics
        self.timing = timing
        self._held = held
        self._hand_over = hand_over
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._next_due: float | None = None
        self._thread = threading.Thread(target=self._run, name="series-assembler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify()
        self._thread.join()

    def due(self, at: float) -> None:
        """A series may complete at `at` (time.time()): run a round then."""
        with self._wake:
            if self._next_due is None or at < self._next_due:
                self._next_due = at
                self._wake.notify()

    def _complete_due(self) -> None:
        now = time.time()
        held = self._held()
        for progress in self._index.receiving():
            decided = completion(progress, now, self.timing, progress.series_instance_uid in held)
            if decided is None:
                continue
            series = self._index.complete(progress, decided)
            if series is None:
                continue  # an instance arrived meanwhile
            self._metrics.series_completed.labels(decided.signal.value).inc()
            self._metrics.series_receive_duration.observe(series.last_received - series.first_received)
            LOG.log(
                logging.INFO if decided.note is None else logging.WARNING,
                "series %s complete (%s): %d instances, modality %s%s",
                series.series_instance_uid,
                decided.signal.value,
                series.instances,
                series.modality or "unknown",
                "" if decided.note is None else f"; {decided.note}",
            )

    def _wait(self, round_started: float) -> None:
        """Until the next round: the round interval, or sooner when a signal is
        due, but never sooner than _ROUND_SPACING after the last round began
        (every instance an MPPS step promised says a signal is due)."""
        interval = min(_ROUND_SECONDS, self.timing.stable_seconds / 4)
        deadline = time.time() + interval
        earliest = round_started + _ROUND_SPACING
        with self._wake:
            while not self._stop.is_set():
                now = time.time()
                due = self._next_due
                if due is not None and due <= now and now >= earliest:
                    self._next_due = None
                    return
                if now >= deadline:
                    return
                until = deadline if due is None else min(deadline, max(due, earliest))
                self._wake.wait(until - now)

    def _run(self) -> None:
        while not self._stop.is_set():
            round_started = time.time()
            try:
                self._complete_due()
                self._hand_over()
            except Exception:
                LOG.exception("series assembly failed; trying again")
            self._wait(round_started)
