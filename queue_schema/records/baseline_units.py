"""A fleet baseline build in the store: its description and progress marks, and its units' losses.

A unit (one random-search study, or a problem's strong run) is stored with HSETNX under its key, so a
unit that runs twice (a worker killed after storing it, before RQ heard of the end) is stored once, and
the build counts it once: units done is the hash's length. The losses go as JSON, which keeps a float
exact (and writes inf as Infinity: a loss bayesmark scores as inf stays inf).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from queue_schema import keys

# What a finished build keeps in the store: its units, so that a rerun of the command rewrites the same
# file without running anything, for this long after the file was written.
UNITS_KEPT_S = 30 * 24 * 3600


@dataclass(frozen=True)
class BuildProgress:
    """One build as the store has it: what the command shows and the console's pipeline row."""

    build_id: str
    spec: str
    total: int
    done: int
    started_at: float
    resumed_at: float  # when a command last (re)started following it: the ETA's rate is since then
    done_at_resume: int
    written_at: float | None
    path: str
    version: str

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the rate since the last (re)start, None until a unit is done since then."""
        if self.complete:
            return 0.0
        gained = self.done - self.done_at_resume
        if gained <= 0:
            return None
        return (now - self.resumed_at) / gained * (self.total - self.done)


def register_build(r: redis.Redis, build_id: str, spec: str, total: int, now: float) -> BuildProgress:
    """Describe the build (once: a resumed build keeps its start) and note a command (re)starting it."""
    key = keys.baseline_build(build_id)
    done = r.hlen(keys.baseline_units(build_id))
    pipe = r.pipeline()
    pipe.hsetnx(key, "spec", spec)
    pipe.hsetnx(key, "total", str(total))
    pipe.hsetnx(key, "started_at", repr(now))
    pipe.hset(key, mapping={"resumed_at": repr(now), "done_at_resume": str(done)})
    pipe.zadd(keys.baseline_builds(), {build_id: now}, nx=True)
    pipe.execute()
    progress = build_progress(r, build_id)
    assert progress is not None
    return progress


def store_unit(r: redis.Redis, build_id: str, unit: str, losses: list[Any]) -> bool:
    """Store a unit's losses unless it is stored already; True when this call stored it."""
    return bool(r.hsetnx(keys.baseline_units(build_id), unit, json.dumps(losses)))


def unit_stored(r: redis.Redis, build_id: str, unit: str) -> bool:
    return bool(r.hexists(keys.baseline_units(build_id), unit))


def stored_units(r: redis.Redis, build_id: str) -> set[str]:
    """The keys of the units stored so far."""
    return set(r.hkeys(keys.baseline_units(build_id)))


def read_units(r: redis.Redis, build_id: str) -> dict[str, list[Any]]:
    """Every stored unit's losses, by unit key."""
    return {unit: json.loads(raw) for unit, raw in r.hgetall(keys.baseline_units(build_id)).items()}


def build_progress(r: redis.Redis, build_id: str) -> BuildProgress | None:
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.baseline_build(build_id))
    pipe.hlen(keys.baseline_units(build_id))
    raw, done = pipe.execute()
    if not raw:
        return None
    return BuildProgress(
        build_id=build_id,
        spec=raw.get("spec", ""),
        total=int(raw.get("total", 0)),
        done=int(done),
        started_at=float(raw.get("started_at", 0)),
        resumed_at=float(raw.get("resumed_at") or raw.get("started_at", 0)),
        done_at_resume=int(raw.get("done_at_resume", 0)),
        written_at=float(raw["written_at"]) if raw.get("written_at") else None,
        path=raw.get("path", ""),
        version=raw.get("version", ""),
    )


def recent_builds(r: redis.Redis, since: float, limit: int = 5) -> list[BuildProgress]:
    """The newest builds first enqueued after `since`, plus any older one still not written."""
    ids = r.zrevrange(keys.baseline_builds(), 0, 50, withscores=True)
    out = []
    for build_id, started in ids:
        progress = build_progress(r, build_id)
        if progress is None:
            continue
        if started >= since or progress.written_at is None:
            out.append(progress)
        if len(out) >= limit:
            break
    return out


def mark_written(r: redis.Redis, build_id: str, path: str, version: str, now: float) -> None:
    """The build's file is written: say where, and keep its units only for UNITS_KEPT_S more."""
    pipe = r.pipeline()
    pipe.hset(
        keys.baseline_build(build_id), mapping={"written_at": repr(now), "path": path, "version": version}
    )
    pipe.expire(keys.baseline_units(build_id), UNITS_KEPT_S)
    pipe.execute()
