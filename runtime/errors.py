"""The runtime layer's errors: what runtime modules raise to the layers above, in one place to look.

Defined here: `SpecError` (runtime/spec.py), `ScoreError` (runtime/versions.py) and `RQIncompatible`
(runtime/rq_adapter.py); those modules import them from here, and callers may import them from either.
Re-exported, as the runtime raises them through: `RedisUnavailable` (the store does not answer; the
contract layer's, queue_schema/errors.py) and `BaselineError`/`MissingBaseline` (a spec's baselines are
missing or unreadable; the scoring layer's, baselines/store.py).
"""

from __future__ import annotations

from baselines.store import BaselineError, MissingBaseline
from queue_schema.errors import RedisUnavailable

__all__ = [
    "BaselineError",
    "MissingBaseline",
    "RQIncompatible",
    "RedisUnavailable",
    "ScoreError",
    "SpecError",
]


class SpecError(ValueError):
    """A spec that cannot be used, with a message naming the file and the field."""


class ScoreError(ValueError):
    """A score version that cannot be computed or exported (its submission or spec is not in the store)."""


class RQIncompatible(RuntimeError):
    """The installed RQ is not a version the adapter to its internals (runtime/rq_adapter.py) is tested
    with; the message says which is installed, which are tested, and what to do."""
