"""Shared fixtures: a real Redis server per test session, state in a temporary folder."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from queue_schema.settings import pin_threads

# Before anything imports numpy: tests, like workers, run numerical code on one thread.
pin_threads()


def _hypothesis_profile() -> None:
    # Hypothesis keeps caches beside the tests unless told otherwise: never in the source tree.
    os.environ.setdefault(
        "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "bbo-arena-hypothesis")
    )
    from hypothesis import settings

    # No example database (it would live in the source tree); in CI the same examples every run, so a
    # red build is reproducible rather than a roll of the dice.
    settings.register_profile("bbo", database=None)
    settings.register_profile("ci", database=None, derandomize=True)
    settings.load_profile("ci" if os.environ.get("CI") else "bbo")


_hypothesis_profile()

SUBMISSIONS = Path(__file__).parent / "submissions"


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    # Short path: the Redis unix socket lives in here.
    path = Path(tempfile.mkdtemp(prefix="bbo-test-"))
    old = os.environ.get("BBO_STATE_DIR")
    os.environ["BBO_STATE_DIR"] = str(path)
    os.environ.pop("BBO_REDIS_URL", None)
    yield path
    if old is None:
        os.environ.pop("BBO_STATE_DIR", None)
    else:
        os.environ["BBO_STATE_DIR"] = old


@pytest.fixture(scope="session")
def redis_server(state_dir: Path) -> Iterator[str]:
    from queue_schema.connection import reset_clients
    from runtime.redis_server import EmbeddedRedis

    server = EmbeddedRedis()
    server.start()
    os.environ["BBO_REDIS_URL"] = server.url
    reset_clients()
    yield server.url
    server.stop()
    os.environ.pop("BBO_REDIS_URL", None)
    reset_clients()


@pytest.fixture()
def r(redis_server: str):
    from queue_schema.connection import connect

    client = connect(redis_server)
    client.flushall()
    return client


@pytest.fixture()
def unsafe_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BBO_ALLOW_UNSAFE_SANDBOX", "1")


@pytest.fixture()
def small_spec():
    """The demo spec cut down to a few quick rounds, for harness tests."""
    from runtime.spec import load

    spec = load("demo")
    limits = dataclasses.replace(spec.limits, suggest_budget_s=30.0, call_timeout_s=10.0)
    return dataclasses.replace(spec, rounds=3, batch=3, limits=limits)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests run only when the -m expression names them: `-m system` is the system tier without
    the slow suites, as the default run is the rest without them."""
    if "slow" in (config.option.markexpr or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
