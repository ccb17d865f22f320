"""What the next scoring job will most likely ask a sandbox for, so that a worker with no job to go by can
start one before any job comes (workers/prefork.py).

When a scoring job starts, its worker pre-forks the next job's horse with a warm sandbox of that job's
backend and limits. A worker that has run no scoring job yet (it just booted: the autoscaler's new machine,
the first submission after a deploy) had nothing to go by, so its first job started its sandbox cold: a
third of a second on the process backend, most of a second on docker, on every fresh worker's path. This
hint is what it goes by instead: the backend and limits of the latest score version put on the queues
(runtime/enqueue.py), or of the competition a gateway serves, recorded as the gateway starts. One key,
overwritten, and only ever a guess: a job whose backend or limits differ closes the warm sandbox and starts
its own, as it would without the hint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis

from queue_schema import keys
from runtime.spec import Limits


@dataclass(frozen=True)
class WarmTarget:
    backend: str  # as jobs name it ("auto" included): what a warm sandbox is matched with
    limits: Limits


def record(r: redis.Redis, backend: str, limits: Limits) -> None:
    r.set(keys.warm_hint(), json.dumps({"backend": backend, "limits": asdict(limits)}))


def current(r: redis.Redis) -> WarmTarget | None:
    """The recorded target, or None if there is none (or it is not one this version reads)."""
    raw = r.get(keys.warm_hint())
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return WarmTarget(str(data["backend"]), Limits(**data["limits"]))
    except (ValueError, KeyError, TypeError):
        return None
