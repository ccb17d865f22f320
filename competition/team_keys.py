"""Redis key names for teams, tokens and quota holds.

These follow queue_schema/keys.py (same `bbo:` prefix and style) and are meant to move there; until then
nothing else builds these strings by hand.
"""

from __future__ import annotations

from queue_schema.keys import PREFIX


def teams_index() -> str:
    """Sorted set: every team name scored by creation time."""
    return f"{PREFIX}:teams"


def team_record(team: str) -> str:
    """Hash: a team's record (name, token hash, created_at, token_created_at, disabled)."""
    return f"{PREFIX}:team:{team}:record"


def token(token_hash: str) -> str:
    """String: the sha256 of a live token -> its team name (tokens themselves are never stored)."""
    return f"{PREFIX}:token:{token_hash}"


def quota_holds(team: str) -> str:
    """Sorted set: upload reservations in flight (hold id -> time), so two concurrent uploads at the quota
    edge cannot both pass; a hold is released as soon as the submission exists or is refused."""
    return f"{PREFIX}:team:{team}:holds"
