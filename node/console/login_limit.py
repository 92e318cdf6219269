"""Failed log-ins counted per client address and per user name.

Past ``failures`` failures within ``window_seconds`` for either, log-ins
from that address or for that name are refused without checking the
password until the oldest failure leaves the window, which turns guessing
a password from thousands of tries a second into a few an hour. The memory
is bounded: past ``capacity`` keys the least recently failed is forgotten.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable

FAILURES = 5
WINDOW_SECONDS = 15 * 60.0
CAPACITY = 10_000


class LoginLimiter:
    def __init__(self, failures: int = FAILURES, window_seconds: float = WINDOW_SECONDS,
                 capacity: int = CAPACITY):
        self._failures = failures
        self._window = window_seconds
        self._capacity = capacity
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, keys: Iterable[str], now: float) -> float:
        """Seconds until a log-in under `keys` is allowed again; 0 when it is now."""
        with self._lock:
            waits = [times[0] + self._window - now for key in keys
                     if len(times := self._recent.get(key, ())) == self._failures]
        return max([0.0, *waits])

    def failed(self, keys: Iterable[str], now: float) -> None:
        with self._lock:
            for key in keys:
                times = self._recent.pop(key, None) or deque(maxlen=self._failures)
                times.append(now)
                self._recent[key] = times
            while len(self._recent) > self._capacity:
                self._recent.popitem(last=False)


def limit_keys(address: str, user: str) -> tuple[str, str]:
    """The keys a log-in by `user` from `address` counts under."""
    return f"address:{address}", f"user:{user}"
