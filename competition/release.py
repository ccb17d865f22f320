"""The final leaderboard's release gate: organizers see it live, teams only once it is released.

While finalists are being scored the final board changes run by run; shown to teams, it would tell each
how its held-out runs go before the results are announced, and let a team that has not been scored yet
weigh its chances. `bbo admin final release` publishes it; until then teams get "final results pending".
"""

from __future__ import annotations

import time

import redis

from competition import audit
from queue_schema import keys
from queue_schema.records import add_event

PENDING_MESSAGE = "final results pending: the organizers have not released the final leaderboard yet"


def release(r: redis.Redis, spec_name: str, *, actor: str | None = None) -> float:
    """Publish the final leaderboard to teams (audited); releasing again keeps the first time."""
    now = time.time()
    if r.set(keys.final_released(spec_name), repr(now), nx=True):
        audit.record(r, "final_release", spec_name, actor=actor)
        add_event(r, "final_released", spec=spec_name)  # open final boards refresh (live_events)
        return now
    return released_at(r, spec_name) or now


def released_at(r: redis.Redis, spec_name: str) -> float | None:
    """When the final leaderboard of `spec_name` was released to teams, or None."""
    raw = r.get(keys.final_released(spec_name))
    return float(raw) if raw is not None else None
