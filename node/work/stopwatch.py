"""Seconds per stage of a run, for the job's log line and the metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Stopwatch:
    """Seconds per stage; a stage may run in parts, which add up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, step: Callable[[], T]) -> T:
        """Run `step`, adding its time to `stage`'s."""
        start = time.perf_counter()
        value = step()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 3)
        return value
