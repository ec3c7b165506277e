"""Back-off after failures: a failed piece of work is tried again later, and later still after
each further failure, while the rest goes on."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

BASE_S = 30.0
MAX_S = 900.0


def failure_backoff_s(consecutive_failures: int) -> float:
    """30 s after one failure, doubling to at most 15 minutes."""
    if consecutive_failures <= 0:
        return 0.0
    return min(BASE_S * 2 ** (consecutive_failures - 1), MAX_S)


class Retries:
    """Consecutive failures per piece of work, and when each may be tried again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failures: dict[Hashable, int] = {}
        self._next: dict[Hashable, float] = {}

    def due(self, key: Hashable) -> bool:
        return self.clock() >= self._next.get(key, 0.0)

    def failed(self, key: Hashable) -> float:
        """Count a failure; the seconds until the next try."""
        self.failures[key] = self.failures.get(key, 0) + 1
        wait = failure_backoff_s(self.failures[key])
        self._next[key] = self.clock() + wait
        return wait

    def succeeded(self, key: Hashable) -> None:
        self.failures.pop(key, None)
        self._next.pop(key, None)
