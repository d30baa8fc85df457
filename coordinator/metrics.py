"""Process-wide, thread-safe recorders the dashboard's /metrics endpoint reads at scrape time."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

# Upper bounds (seconds) of the push-latency histogram; +Inf is implicit.
PUSH_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PushLatency:
    """A minimal histogram of PushUpdate durations (non-cumulative counts per bucket, plus +Inf)."""

    def __init__(self, buckets: Sequence[float] = PUSH_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(self.buckets, seconds)  # first bound >= seconds (le semantics)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds
            self._count += 1

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """([(upper bound, cumulative count)] ending with +Inf, sum, count), consistent at one instant."""
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        cumulative, acc = [], 0
        for bound, c in zip((*self.buckets, float("inf")), counts):
            acc += c
            cumulative.append((bound, acc))
        return cumulative, total, count

    def reset(self) -> None:
        with self._lock:
            self._counts = [0] * (len(self.buckets) + 1)
            self._sum, self._count = 0.0, 0


PUSH_LATENCY = PushLatency()
