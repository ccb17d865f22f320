"""Values that are costly to compute and read by many (the public boards, the metrics text): computed at
most once at a time per key and kept for a short while.

When a value is due, the first request recomputes it; requests arriving meanwhile get the previous value
at once instead of recomputing it too (at the seed's scale a board takes 100-200 ms to compute, and 50
readers a second would otherwise all compute it together). Only the very first computation of a key is
waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedCache(Generic[K, V]):
    def __init__(self, compute: Callable[[K], V], max_age_s: Callable[[], float]) -> None:
        """`max_age_s` is read on every lookup, so a setting changed at run time (tests) applies."""
        self._compute = compute
        self._max_age_s = max_age_s
        self._values: dict[K, tuple[float, V]] = {}
        self._locks: dict[K, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: K) -> V:
        found = self._values.get(key)
        if found is not None and time.monotonic() - found[0] < self._max_age_s():
            return found[1]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        if found is not None and not lock.acquire(blocking=False):
            return found[1]  # being recomputed by another request: the previous value meanwhile
        if found is None:
            lock.acquire()
        try:
            found = self._values.get(key)  # computed while this request waited for the lock?
            if found is not None and time.monotonic() - found[0] < self._max_age_s():
                return found[1]
            value = self._compute(key)
            self._values[key] = (time.monotonic(), value)
            return value
        finally:
            lock.release()
