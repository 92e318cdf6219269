"""Free space on the storage file system, against the low watermark.

The SCP asks before every association and every C-STORE, and each asks the
file system (one ``statvfs``, microseconds): a sender on loopback stores
hundreds of slices a second, and a cached answer would let them run past the
watermark into a full disk. One measurement per :data:`MEASURE_SECONDS` is
kept for an hour, and the net rate at which free space fell over that hour
gives the time until the file system is full.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MEASURE_SECONDS = 1.0
RATE_WINDOW_SECONDS = 3600.0
# A rate over less than this is noise (one result folder written).
MIN_RATE_SPAN_SECONDS = 60.0


@dataclass(frozen=True)
class SpaceSample:
    """Free bytes at a moment (``time.monotonic`` seconds)."""

    at: float
    free_bytes: int


def seconds_to_full(samples: Sequence[SpaceSample]) -> float:
    """When free space reaches zero at the rate from the first sample to the
    last; infinite when it is not falling or the samples span under a minute.

    The rate is net of what retention freed meanwhile: it is how the disk
    is actually heading.
    """
    if len(samples) < 2:
        return math.inf
    first, last = samples[0], samples[-1]
    span = last.at - first.at
    fallen = first.free_bytes - last.free_bytes
    if span < MIN_RATE_SPAN_SECONDS or fallen <= 0:
        return math.inf
    return last.free_bytes / (fallen / span)


def _available_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write (f_bavail, not f_bfree:
    the blocks reserved for root are not ours)."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


class DiskSpace:
    """Free space of ``storage_dir``'s file system against the low watermark.

    ``became_low`` is set whenever a measurement finds free space under the
    low watermark, so that retention runs at once rather than at its next turn.
    """

    def __init__(self, storage_dir: Path, low_watermark_bytes: int):
        self._path = Path(storage_dir)
        self._lock = threading.Lock()
        self._low_watermark = low_watermark_bytes
        self._samples: deque[SpaceSample] = deque()
        self.became_low = threading.Event()

    def set_low_watermark(self, low_watermark_bytes: int) -> None:
        """A reloaded configuration's watermark, in force from the next check."""
        with self._lock:
            self._low_watermark = low_watermark_bytes
        self.free_bytes()

    def free_bytes(self) -> int:
        """Free bytes now; kept for the rate at most once a second."""
        free = _available_bytes(self._path)
        with self._lock:
            now = time.monotonic()
            if not self._samples or now - self._samples[-1].at >= MEASURE_SECONDS:
                self._samples.append(SpaceSample(now, free))
                while now - self._samples[0].at > RATE_WINDOW_SECONDS:
                    self._samples.popleft()
            low = free < self._low_watermark
        if low:
            self.became_low.set()
        return free

    def is_low(self) -> bool:
        """Whether free space is under the low watermark (instances are then refused)."""
        return self.free_bytes() < self._low_watermark

    def shortfall_bytes(self) -> int:
        """What must be freed to reach the low watermark (0 when above it), measured now."""
        return max(0, self._low_watermark - self.free_bytes())

    def seconds_to_full(self) -> float:
        with self._lock:
            return seconds_to_full(list(self._samples))
