"""Redis clients: one decoding client for our own keys, one raw client for RQ (which stores bytes)."""

from __future__ import annotations

from functools import cache

import redis

from queue_schema.settings import redis_url
from queue_schema.untrusted import redact_url, redact_urls_in


class RedisUnavailable(ConnectionError):
    """Redis did not answer; the message says where we looked."""


def store_refusal(exc: redis.ResponseError) -> str | None:
    """ "MISCONF", "OOM" or "READONLY" when the store refuses every write, for every client: it cannot
    persist (MISCONF: the AOF or a snapshot failed to write, nearly always a full disk), it is full under
    noeviction (OOM), or it is a replica (READONLY: a failover in progress); None for any other error.
    redis-py makes OOM and READONLY classes of their own and leaves MISCONF a plain ResponseError; a
    pipeline or a script puts words before the reason."""
    message = str(exc)
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or "when used memory > 'maxmemory'" in message:
        return "OOM"
    if isinstance(exc, redis.exceptions.ReadOnlyError) or "READONLY" in message:
        return "READONLY"
    return "MISCONF" if "MISCONF" in message else None


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
