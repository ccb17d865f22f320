"""The gateway's shared cache: one computation at a time per key, the previous value meanwhile."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.cache import SharedCache


def test_many_readers_of_a_missing_value_wait_for_one_computation() -> None:
    calls: list[str] = []

    def compute(key: str) -> str:
        calls.append(key)
        time.sleep(0.2)
        return f"board of {key}"

    cache = SharedCache(compute, lambda: 60.0)
    with ThreadPoolExecutor(16) as pool:
        values = list(pool.map(lambda _: cache.get("feedback"), range(32)))
    assert values == ["board of feedback"] * 32 and calls == ["feedback"]
    assert cache.get("final") == "board of final" and calls == ["feedback", "final"]


def test_readers_of_a_due_value_get_the_previous_one_while_one_recomputes() -> None:
    version = [0]
    computing = threading.Event()
    release = threading.Event()

    def compute(_: str) -> int:
        version[0] += 1
        if version[0] > 1:
            computing.set()
            assert release.wait(10)
        return version[0]

    max_age = [60.0]
    cache = SharedCache(compute, lambda: max_age[0])
    assert cache.get("k") == 1
    max_age[0] = 0.0  # read on every lookup: the value is due now
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(cache.get, "k")
        assert computing.wait(10)
        # Were these readers to wait for the computation, they would wait for ever: it ends only below.
        assert [cache.get("k") for _ in range(5)] == [1] * 5
        release.set()
        assert first.result(10) == 2
    assert version[0] == 2  # the readers meanwhile computed nothing
    max_age[0] = 60.0
    assert cache.get("k") == 2


def test_a_failed_computation_is_the_callers_error_and_the_next_reader_tries_again() -> None:
    attempts = [0]

    def compute(_: str) -> str:
        attempts[0] += 1
        if attempts[0] == 1:
            raise ConnectionError("store away")
        return "ok"

    cache = SharedCache(compute, lambda: 60.0)
    with pytest.raises(ConnectionError):
        cache.get("k")
    assert cache.get("k") == "ok" and attempts[0] == 2
