"""Disqualification: an organizer takes a submission off the leaderboards with a reason, and can undo it.

A disqualification is a ruling, not a scoring outcome: the submission keeps its state and score, the
team sees the reason in its status object, and the leaderboards and the final-phase selection skip it
(`is_disqualified`). Both directions are in the organizers' audit log.
"""

from __future__ import annotations

import redis

from competition import audit
from competition.errors import ModerationError, UnknownSubmission
from queue_schema import keys
from queue_schema.payloads import Submission
from queue_schema.records import add_event, load_submission, load_submissions, update_record
from queue_schema.states import RefundState, SubmissionState

MAX_REASON_CHARS = 500


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


def decide_refund(
    r: redis.Redis, sid: str, grant: bool, *, reason: str = "", actor: str | None = None
) -> Submission:
    """An organizer's ruling on a refund: one the service held (the team was past its automatic refunds
    of the day), or any failed upload the organizers find was not the team's fault after all (a failure
    the service could not tell was ours is charged to the team). Granted, the upload no longer counts
    against the team's quota; denied, it stays counted. A ruling can be changed; an automatic refund is
    not the organizers' to take back."""
    before = _existing(r, sid)
    failed_and_charged = before.state == SubmissionState.FAILED and before.charged and before.refund is None
    if before.refund == RefundState.AUTO or not (failed_and_charged or before.refund is not None):
        raise ModerationError(f"submission {sid} has no refund to decide (only a failed, charged upload)")
    decision = RefundState.GRANTED if grant else RefundState.DENIED
    update_record(r, sid, refund=decision, charged=not grant)
    r.srem(keys.refunds_held(), sid)
    add_event(r, f"refund_{decision.value}", sid, team=before.team, reason=reason)
    audit.record(
        r,
        f"refund_{decision.value}",
        sid,
        actor=actor,
        team=before.team,
        reason=reason,
        previous=before.refund.value if before.refund else None,
    )
    return _existing(r, sid)


def held_refunds(r: redis.Redis, limit: int = 1000) -> list[Submission]:
    """Submissions whose refund waits for an organizer, newest first."""
    ids = list(r.smembers(keys.refunds_held()))[:limit]
    held = [sub for sub in load_submissions(r, ids) if sub.refund == RefundState.HELD]
    return sorted(held, key=lambda sub: sub.created_at, reverse=True)
