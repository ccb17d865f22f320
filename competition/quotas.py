"""Daily submission quota per team (UTC day), from the spec's `submission.daily_quota` unless an
organizer set that team's own limit (`set_override`, audited).

There is no counter to drift: the quota used today is the number of the team's submissions created this
UTC day whose record is still `charged`. An infrastructure failure clears that flag (lifecycle.fail), so
the refund happens by itself the moment the submission fails that way; `refund` clears it by hand.

Two uploads of one team racing at the quota edge must not both pass, so a check reserves a short-lived
hold (checked and added under WATCH); the hold is released as soon as the submission exists (it then
counts itself) or was refused. A hold left by a crashed gateway expires after HOLD_TTL_S.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from competition import audit, teams
from competition.errors import QuotaExceeded, TeamError, UnknownTeam
from queue_schema import keys
from queue_schema.payloads import utc_day as day_bounds
from queue_schema.payloads import utc_iso
from queue_schema.records import add_event, load_submission, update_record
from runtime.spec import Spec

# A hold spans only the checks and the store of an upload already read (seconds). A hold whose release
# failed (a gateway crash, or the store down at that moment) blocks an upload slot until it expires, so
# this stays short.
HOLD_TTL_S = 60


@dataclass(frozen=True)
class QuotaStatus:
    limit: int
    used: int
    held: int
    resets_at: float

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.held)

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "used": self.used,
            "remaining": self.remaining,
            "resets_at": utc_iso(self.resets_at),
        }


def _charged_today(r: redis.Redis, team: str, now: float) -> int:
    start, end = day_bounds(now)
    ids = r.zrangebyscore(keys.team_submissions(team), start, f"({end}")
    if not ids:
        return 0
    pipe = r.pipeline(transaction=False)
    for sid in ids:
        pipe.hget(keys.submission(sid), "record")
    used = 0
    for raw in pipe.execute():
        if raw is None:
            continue
        try:
            charged = json.loads(raw).get("charged", True)
        except ValueError:
            charged = True  # an unreadable record counts: never hand out free submissions by mistake
        used += bool(charged)
    return used


def _live_holds(r: redis.Redis, team: str, now: float) -> int:
    return int(r.zcount(keys.quota_holds(team), now - HOLD_TTL_S, "+inf"))


# -- per-team override ------------------------------------------------------------------------------


def daily_limit(r: redis.Redis, team: str, spec: Spec) -> int:
    """The team's submissions per UTC day: its organizer-set override, else the spec's."""
    override = r.hget(keys.quota_overrides(), team)
    return spec.submission.daily_quota if override is None else int(override)


def used_today(r: redis.Redis, team: str, now: float | None = None) -> int:
    """Charged submissions of the team this UTC day."""
    return _charged_today(r, team, time.time() if now is None else now)


def overrides(r: redis.Redis) -> dict[str, int]:
    """Every team with its own daily limit."""
    return {team: int(limit) for team, limit in r.hgetall(keys.quota_overrides()).items()}


def set_override(r: redis.Redis, team: str, limit: int | None, *, actor: str | None = None) -> None:
    """Give `team` its own daily limit (0 blocks its uploads); None goes back to the spec's."""
    if not teams.team_exists(r, team):
        raise UnknownTeam(f"no team {team!r}")
    if limit is None:
        r.hdel(keys.quota_overrides(), team)
        audit.record(r, "quota_clear", team, actor=actor)
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise TeamError(f"a daily quota is a whole number of submissions, 0 or more, not {limit!r}")
    r.hset(keys.quota_overrides(), team, str(limit))
    audit.record(r, "quota_override", team, actor=actor, daily_quota=limit)


def remaining(r: redis.Redis, team: str, spec: Spec, now: float | None = None) -> QuotaStatus:
    now = time.time() if now is None else now
    return QuotaStatus(
        limit=daily_limit(r, team, spec),
        used=_charged_today(r, team, now),
        held=_live_holds(r, team, now),
        resets_at=day_bounds(now)[1],
    )


def require_remaining(r: redis.Redis, team: str, spec: Spec, now: float | None = None) -> QuotaStatus:
    """The team's quota today; QuotaExceeded when nothing is left (reads only: the upload's gate before
    its body is read; `check_and_reserve` then takes one for good)."""
    now = time.time() if now is None else now
    left = remaining(r, team, spec, now)
    if left.remaining <= 0:
        raise _exceeded(left.limit, left.used, left.held, now)
    return left


def check_and_reserve(r: redis.Redis, team: str, spec: Spec, now: float | None = None) -> str:
    """Reserve one of today's submissions for `team`; returns a hold id to `release` once the submission
    exists or was refused. Raises QuotaExceeded when none is left."""
    now = time.time() if now is None else now
    limit = daily_limit(r, team, spec)
    holds_key = keys.quota_holds(team)
    with r.pipeline() as pipe:
        while True:
            try:
                # A new submission or another hold of this team makes the EXEC fail, and we count again.
                pipe.watch(holds_key, keys.team_submissions(team))
                used = _charged_today(r, team, now)
                held = int(pipe.zcount(holds_key, now - HOLD_TTL_S, "+inf"))
                if used + held >= limit:
                    pipe.unwatch()
                    raise _exceeded(limit, used, held, now)
                hold = secrets.token_hex(8)
                pipe.multi()
                pipe.zremrangebyscore(holds_key, "-inf", now - HOLD_TTL_S)
                pipe.zadd(holds_key, {hold: now})
                pipe.expire(holds_key, 2 * HOLD_TTL_S)
                pipe.execute()
                return hold
            except redis.WatchError:
                continue


def release(r: redis.Redis, team: str, hold: str) -> None:
    r.zrem(keys.quota_holds(team), hold)


def refund(r: redis.Redis, team: str, sid: str) -> bool:
    """Stop counting a submission against the team's quota; False if it was not charged (or not theirs)."""
    sub = load_submission(r, sid)
    if sub is None or sub.team != team or not sub.charged:
        return False
    update_record(r, sid, charged=False)
    add_event(r, "quota_refund", sid, team=team)
    return True


def _exceeded(limit: int, used: int, held: int, now: float) -> QuotaExceeded:
    resets_at = day_bounds(now)[1]
    wait = max(1, int(resets_at - now + 0.999))
    hours, minutes = divmod((wait + 59) // 60, 60)
    pending = f" (and {held} upload(s) in progress)" if held else ""
    message = (
        f"daily quota reached: {used} of {limit} submissions used today (UTC){pending}; "
        f"it resets at {utc_iso(resets_at)}, in {hours} h {minutes:02d} min"
    )
    return QuotaExceeded(message, resets_at=resets_at, retry_after=wait)
