"""Teams and their bearer tokens.

A token is random (256 bits), shown once when it is made, and stored only as its sha256: the token key
maps that hash to the team, and the team record keeps the hash so that a lookup is confirmed with a
constant-time comparison. Rotating replaces the token at once; revoking leaves the team without one.
Every change is an event on the global stream and an entry in the organizers' audit log (who did it);
tokens never are.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from competition import audit
from competition.errors import TeamError, TeamExists, UnknownTeam
from queue_schema import keys
from queue_schema.records import add_event

NAME_RE = re.compile(r"^[a-z0-9_-]{2,40}$")
TOKEN_PREFIX = "bbo_"
MAX_TOKEN_LENGTH = 200


@dataclass(frozen=True)
class Team:
    name: str
    created_at: float
    disabled: bool
    has_token: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "team": self.name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at)),
            "disabled": self.disabled,
            "has_token": self.has_token,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TeamError(
            f"team name {name!r} is not allowed: use 2 to 40 characters among a-z, 0-9, '_' and '-'"
        )
    return name


def add_team(r: redis.Redis, name: str, *, actor: str | None = None) -> str:
    """Register a team; returns its token (the only time it is ever visible)."""
    validate_name(name)
    token = new_token()
    digest = token_hash(token)
    now = time.time()
    record = keys.team_record(name)
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(record)
                if pipe.exists(record):
                    pipe.unwatch()
                    raise TeamExists(f"team {name!r} already exists (rotate its token with `rotate`)")
                pipe.multi()
                pipe.hset(
                    record,
                    mapping={
                        "name": name,
                        "token_hash": digest,
                        "created_at": repr(now),
                        "token_created_at": repr(now),
                        "disabled": "0",
                    },
                )
                pipe.set(keys.token(digest), name)
                pipe.zadd(keys.teams_index(), {name: now})
                pipe.execute()
                break
            except redis.WatchError:
                continue
    add_event(r, "team_added", team=name)
    audit.record(r, "team_add", name, actor=actor)
    return token


def authenticate(r: redis.Redis, token: str | None) -> str | None:
    """The team a token belongs to, or None (unknown, revoked, rotated away, or the team is disabled)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    digest = token_hash(token)
    team = r.get(keys.token(digest))
    if team is None:
        return None
    stored, disabled = r.hmget(keys.team_record(team), "token_hash", "disabled")
    if stored is None or not hmac.compare_digest(stored.encode(), digest.encode()):
        return None
    if disabled == "1":
        return None
    return team


def _replace_token(r: redis.Redis, name: str, digest: str | None) -> None:
    record = keys.team_record(name)
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(record)
                if not pipe.exists(record):
                    pipe.unwatch()
                    raise UnknownTeam(f"no team {name!r}")
                old = pipe.hget(record, "token_hash")
                pipe.multi()
                if old:
                    pipe.delete(keys.token(old))
                if digest is None:
                    pipe.hset(record, "token_hash", "")
                else:
                    pipe.hset(record, mapping={"token_hash": digest, "token_created_at": repr(time.time())})
                    pipe.set(keys.token(digest), name)
                pipe.execute()
                return
            except redis.WatchError:
                continue


def rotate_token(r: redis.Redis, name: str, *, actor: str | None = None) -> str:
    """A new token for the team; the old one stops working at once. Returns the new token (shown once)."""
    token = new_token()
    _replace_token(r, name, token_hash(token))
    add_event(r, "token_rotated", team=name)
    audit.record(r, "token_rotate", name, actor=actor)
    return token


def revoke_token(r: redis.Redis, name: str, *, actor: str | None = None) -> None:
    """The team's token stops working; it has none until the next rotate."""
    _replace_token(r, name, None)
    add_event(r, "token_revoked", team=name)
    audit.record(r, "token_revoke", name, actor=actor)


def set_disabled(r: redis.Redis, name: str, disabled: bool, *, actor: str | None = None) -> None:
    """A disabled team cannot authenticate (its token is kept for when it is enabled again)."""
    record = keys.team_record(name)
    if not r.exists(record):
        raise UnknownTeam(f"no team {name!r}")
    r.hset(record, "disabled", "1" if disabled else "0")
    add_event(r, "team_disabled" if disabled else "team_enabled", team=name)
    audit.record(r, "team_disable" if disabled else "team_enable", name, actor=actor)


def get_team(r: redis.Redis, name: str) -> Team | None:
    raw = r.hgetall(keys.team_record(name))
    return _team(raw) if raw else None


def team_exists(r: redis.Redis, name: str) -> bool:
    return bool(r.exists(keys.team_record(name)))


def submission_count(r: redis.Redis, name: str) -> int:
    """How many submissions the team ever made."""
    return int(r.zcard(keys.team_submissions(name)))


def list_teams(r: redis.Redis) -> list[Team]:
    """Every team, oldest first."""
    names = r.zrange(keys.teams_index(), 0, -1)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.team_record(name))
    return [_team(raw) for raw in pipe.execute() if raw]


def _team(raw: dict[str, str]) -> Team:
    return Team(
        name=raw["name"],
        created_at=float(raw.get("created_at", 0) or 0),
        disabled=raw.get("disabled") == "1",
        has_token=bool(raw.get("token_hash")),
    )
