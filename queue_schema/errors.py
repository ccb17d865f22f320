"""The contract layer's errors: what the store and the shared formats refuse, in one place to look.

Defined here: `RedisUnavailable` and `store_refusal` (the store not answering, or refusing every write).
Re-exported from beside the rule that raises them (each module stays importable on its own):
`IllegalTransition` (queue_schema/states.py), `OutOfSpace` and `SpaceError` (queue_schema/suggestions.py),
and `ProtocolError` (queue_schema/protocol.py, which the sandbox image ships alone, so it must define its
own).
"""

from __future__ import annotations

import redis

from queue_schema.protocol import ProtocolError
from queue_schema.states import IllegalTransition
from queue_schema.suggestions import OutOfSpace, SpaceError

__all__ = [
    "IllegalTransition",
    "OutOfSpace",
    "ProtocolError",
    "RedisUnavailable",
    "SpaceError",
    "store_refusal",
]


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
