"""One submission's status and its stop: the rules the service, the final phase and the faces share."""

from __future__ import annotations

import redis

from competition import audit
from competition.errors import Conflict, Forbidden, NotFound
from queue_schema.payloads import Submission
from queue_schema.records import add_event, load_submission, transition
from queue_schema.states import ACTIVE_STATES, TERMINAL_STATES, SubmissionState
from runtime import lifecycle


def status(r: redis.Redis, team: str | None, sid: str) -> Submission:
    """One submission; a team sees only its own (a foreign id looks exactly like an unknown one).
    `team=None` is the organizers' view."""
    sub = load_submission(r, sid) if isinstance(sid, str) and 0 < len(sid) <= 64 else None
    if sub is None or (team is not None and sub.team != team):
        raise NotFound(f"no submission {sid[:64]!r}" if isinstance(sid, str) else "no such submission")
    return sub


def stop(r: redis.Redis, sid: str, by_team: str | None = None, *, actor: str | None = None) -> Submission:
    """Stop a queued or running submission: the state becomes `stopped` at once (running jobs see it
    within a second and kill their sandboxes), queued jobs are cancelled, finished studies are kept.
    A team may stop only its own (others' look unknown); `by_team=None` is an organizer (`actor`, audited)."""
    sub = status(r, by_team, sid)
    if by_team is not None and sub.source is not None:
        # A final-phase run is the organizers' scoring of the team's pick; the team cannot end it.
        raise Forbidden(f"submission {sid} is the organizers' final-phase run; only they can stop it")
    if sub.state in TERMINAL_STATES:
        raise Conflict(f"submission {sid} is already {sub.state.value}; only queued or running ones stop")
    stopped = transition(r, sid, SubmissionState.STOPPED, version=sub.score_version, only_from=ACTIVE_STATES)
    if stopped is None:
        now = load_submission(r, sid)
        state = now.state.value if now else "gone"
        raise Conflict(f"submission {sid} is already {state}; only queued or running ones stop")
    cancelled = lifecycle.cancel_queued_jobs(r, sid, stopped.score_version)
    add_event(
        r, "stop", sid, by=by_team or "organizers", cancelled_jobs=cancelled, version=stopped.score_version
    )
    if by_team is None:
        audit.record(
            r, "stop", sid, actor=actor, team=sub.team, cancelled=cancelled, version=stopped.score_version
        )
    return load_submission(r, sid) or stopped
