"""Web sessions: a team's token exchanged for a session cookie on the web pages.

The cookie holds a random session id (256 bits); the store keeps only its sha256, the team, the hash of
the token it was opened with and a CSRF secret. A session is valid only while that token is still the
team's live token and the team is enabled, so rotating, revoking or disabling ends every session opened
with the old token at once, with nothing to sweep. A session ends SESSION_TTL_S after sign-in (the
cookie's lifetime too: the browser then signs in again) and a team keeps at most MAX_SESSIONS_PER_TEAM:
the oldest ends first.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis

from competition import teams
from queue_schema import keys

SESSION_TTL_S = 12 * 3600
MAX_SESSIONS_PER_TEAM = 20
# A cookie value longer than this is not one of ours: refused before it is hashed or looked up.
MAX_SESSION_ID_LENGTH = 100


@dataclass(frozen=True)
class WebSession:
    team: str
    csrf: str


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def open_session(r: redis.Redis, token: str, now: float | None = None) -> tuple[str, WebSession] | None:
    """Sign in with a team token: the new session's cookie value and the session, or None when the token
    is not a live token of an enabled team (the same refusal as the API's, whatever the reason)."""
    team = teams.authenticate(r, token)
    if team is None:
        return None
    now = time.time() if now is None else now
    session_id = secrets.token_urlsafe(32)
    digest = _digest(session_id)
    session = WebSession(team=team, csrf=secrets.token_urlsafe(32))
    index = keys.team_web_sessions(team)
    with r.pipeline() as pipe:
        pipe.hset(
            keys.web_session(digest),
            mapping={
                "team": team,
                "token_hash": teams.token_hash(token),
                "csrf": session.csrf,
                "created_at": repr(now),
            },
        )
        pipe.expire(keys.web_session(digest), SESSION_TTL_S)
        pipe.zadd(index, {digest: now})
        pipe.expire(index, SESSION_TTL_S)
        pipe.execute()
    _bound(r, team, now)
    return session_id, session


def _bound(r: redis.Redis, team: str, now: float) -> None:
    """Forget expired sessions from the team's index and end the oldest beyond the cap."""
    index = keys.team_web_sessions(team)
    r.zremrangebyscore(index, "-inf", now - SESSION_TTL_S)
    extra = r.zcard(index) - MAX_SESSIONS_PER_TEAM
    if extra > 0:
        oldest = r.zrange(index, 0, extra - 1)
        with r.pipeline() as pipe:
            pipe.delete(*(keys.web_session(d) for d in oldest))
            pipe.zrem(index, *oldest)
            pipe.execute()


def session(r: redis.Redis, session_id: str | None) -> WebSession | None:
    """The live session of a cookie value, or None: unknown, expired, ended, or its token was rotated,
    revoked or its team disabled since it was opened (then it is ended here)."""
    if not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
        return None
    digest = _digest(session_id)
    record = r.hgetall(keys.web_session(digest))
    if not record or "team" not in record:
        return None
    team = record["team"]
    live_hash, disabled = r.hmget(keys.team_record(team), "token_hash", "disabled")
    opened_with = record.get("token_hash", "")
    if not live_hash or disabled == "1" or not hmac.compare_digest(live_hash.encode(), opened_with.encode()):
        _end(r, team, digest)
        return None
    return WebSession(team=team, csrf=record.get("csrf", ""))


def close_session(r: redis.Redis, session_id: str | None) -> None:
    """Sign out: the session ends now (an unknown or already ended one is fine)."""
    if not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
        return
    digest = _digest(session_id)
    team = r.hget(keys.web_session(digest), "team")
    if team is not None:
        _end(r, team, digest)


def _end(r: redis.Redis, team: str, digest: str) -> None:
    with r.pipeline() as pipe:
        pipe.delete(keys.web_session(digest))
        pipe.zrem(keys.team_web_sessions(team), digest)
        pipe.execute()


def csrf_ok(expected: str, sent: str | None) -> bool:
    """A form's CSRF field against the session's secret, in constant time."""
    return bool(expected) and isinstance(sent, str) and hmac.compare_digest(expected.encode(), sent.encode())


def new_form_secret() -> str:
    """A CSRF secret for a form shown before there is a session (the sign-in form's double submit)."""
    return secrets.token_urlsafe(32)
