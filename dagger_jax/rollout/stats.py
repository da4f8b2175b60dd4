"""Counters of a collection: episodes, turns by executor, model calls, failures, and rates."""

from __future__ import annotations

import collections
import threading
import time


class CollectorStats:
    """Thread-safe counters (sandbox work runs in threads) with a turns-per-second rate."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.started = time.perf_counter()

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            counts = dict(self._counts)
        seconds = time.perf_counter() - self.started
        return {**counts, "seconds": round(seconds, 3),
                "turns_per_s": round(counts.get("turns", 0) / seconds, 3) if seconds > 0 else 0.0}
