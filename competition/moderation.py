"""Disqualification: an organizer takes a submission off the leaderboards with a reason, and can undo it.

A disqualification is a ruling, not a scoring outcome: the submission keeps its state and score, the
team sees the reason in its status object, and the leaderboards and the final-phase selection skip it
(`is_disqualified`). Both directions are in the organizers' audit log.
"""

from __future__ import annotations

import redis

from competition import audit
from queue_schema.payloads import Submission
from queue_schema.records import add_event, load_submission, update_record

MAX_REASON_CHARS = 500


class ModerationError(ValueError):
    """A moderation command that cannot be done, with a message for the organizer."""


class UnknownSubmission(ModerationError):
    pass


def _existing(r: redis.Redis, sid: str) -> Submission:
    sub = load_submission(r, sid) if isinstance(sid, str) and 0 < len(sid) <= 64 else None
    if sub is None:
        raise UnknownSubmission(f"no submission {str(sid)[:64]!r}")
    return sub


def disqualify(r: redis.Redis, sid: str, reason: str, *, actor: str | None = None) -> Submission:
    """Take the submission off the leaderboards; the team sees `reason`. Disqualifying again replaces
    the reason."""
    reason = " ".join((reason or "").split())  # one line: it is shown in tables and status lines
    if not reason:
        raise ModerationError("a disqualification needs a reason (the team sees it)")
    if len(reason) > MAX_REASON_CHARS:
        raise ModerationError(f"the reason is {len(reason)} characters; keep it under {MAX_REASON_CHARS}")
    before = _existing(r, sid)
    update_record(r, sid, disqualified=reason)
    add_event(r, "disqualified", sid, reason=reason)
    audit.record(
        r, "disqualify", sid, actor=actor, team=before.team, reason=reason, previous=before.disqualified
    )
    return _existing(r, sid)


def requalify(r: redis.Redis, sid: str, *, reason: str = "", actor: str | None = None) -> Submission:
    """Undo a disqualification: the submission is eligible again."""
    before = _existing(r, sid)
    if before.disqualified is None:
        raise ModerationError(f"submission {sid} is not disqualified")
    update_record(r, sid, disqualified=None)
    add_event(r, "requalified", sid)
    audit.record(
        r, "requalify", sid, actor=actor, team=before.team, reason=reason, previous=before.disqualified
    )
    return _existing(r, sid)


def is_disqualified(r: redis.Redis, sid: str) -> bool:
    """Whether an organizer took this submission off the leaderboards (the final phase skips it too)."""
    sub = load_submission(r, sid)
    return sub is not None and sub.disqualified is not None
