"""Exponential backoff, shared by the job queue, the outbox and the worker pool."""

from __future__ import annotations


def doubling_delay(attempt: int, base_seconds: float, max_seconds: float) -> float:
    """Seconds to wait after the `attempt`-th failure (1, 2, ...): `base_seconds`,
    doubling with each failure, at most `max_seconds`."""
    return min(max_seconds, base_seconds * 2.0 ** min(attempt - 1, 64))
