"""Redis clients: one decoding client for our own keys, one raw client for RQ (which stores bytes)."""

from __future__ import annotations

from functools import cache

import redis

from queue_schema.errors import RedisUnavailable, store_refusal
from queue_schema.settings import redis_url
from queue_schema.untrusted import redact_url, redact_urls_in

# Callers import these from here too (queue_schema/errors.py defines them).
__all__ = [
    "RedisUnavailable",
    "connect",
    "ping",
    "reset_clients",
    "rq_connection",
    "store_refusal",
]


def _client(url: str, decode: bool) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry_on_timeout=True,
    )


@cache
def _cached(url: str, decode: bool) -> redis.Redis:
    return _client(url, decode)


def connect(url: str | None = None) -> redis.Redis:
    """A client that returns str: for every bbo key."""
    return _cached(url or redis_url(), True)


def rq_connection(url: str | None = None) -> redis.Redis:
    """A client that returns bytes, as RQ requires."""
    return _cached(url or redis_url(), False)


def reset_clients() -> None:
    """Forget cached clients (after a fork, or when the URL changes in tests)."""
    _cached.cache_clear()


def ping(url: str | None = None) -> None:
    target = url or redis_url()
    try:
        _client(target, True).ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        # Shown on terminals and written to logs: never the password the URL may carry.
        raise RedisUnavailable(
            f"Redis at {redact_url(target)} is not reachable: {redact_urls_in(str(exc))}"
        ) from None
