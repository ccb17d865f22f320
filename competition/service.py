"""The competition's business rules, one function each: submit, status, list, stop, leaderboard, info.

The gateway, the admin CLI and the console call these; none of them talks to Redis its own way. Errors
are typed exceptions whose messages are safe to show the team they concern. What a team sees of a
submission is `public_view` (the command contract's object): never problem names, logs or per-problem
detail.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import redis

from artifacts.archive import InvalidSubmission
from competition import audit, quotas, release, teams
from competition.quotas import QuotaExceeded
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.payloads import Submission, utc_iso
from queue_schema.records import add_event, load_submission, load_submissions, transition
from queue_schema.states import ACTIVE_STATES, TERMINAL_STATES, FailureCause, SubmissionState
from runtime import lifecycle
from runtime.spec import Spec, SpecError
from runtime.versions import BaselineError

__all__ = [
    "BaselineError",
    "Conflict",
    "Forbidden",
    "InvalidSubmission",
    "NotFound",
    "QuotaExceeded",
    "ServiceError",
    "ServiceUnavailable",
    "SpecError",
    "WindowClosed",
    "admit_upload",
    "info",
    "leaderboard",
    "leaderboard_view",
    "list_submissions",
    "metrics_snapshot",
    "public_view",
    "rescore",
    "select",
    "selection",
    "status",
    "stop",
    "submit",
]

log = logging.getLogger("bbo.service")


class ServiceError(Exception):
    """A refused request; `code` is a stable machine-readable word, the message is for people."""

    code = "error"


class NotFound(ServiceError):
    code = "not_found"


class Forbidden(ServiceError):
    code = "forbidden"


class WindowClosed(Forbidden):
    code = "window_closed"


class Conflict(ServiceError):
    code = "conflict"


class ServiceUnavailable(ServiceError):
    """Our side is not ready (missing baselines, Redis down): not the team's fault, try later."""

    code = "unavailable"


# -- views ------------------------------------------------------------------------------------------


def public_view(sub: Submission) -> dict[str, Any]:
    """The contract's submission object; a running submission also carries its running score."""
    view = sub.public_view()
    if sub.state == SubmissionState.RUNNING and sub.partial_score is not None:
        view["partial_score"] = sub.partial_score
    return view


# -- phase windows ----------------------------------------------------------------------------------


def _when(value: str | None) -> float | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:  # the spec's windows are UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def phase_window(spec: Spec, phase: str, now: float | None = None) -> dict[str, Any]:
    """{"opens", "closes", "open", "leaderboard_freeze"} of one phase (ISO strings in UTC, or null for
    unbounded / no freeze)."""
    now = time.time() if now is None else now
    p = spec.phase(phase)
    opens, closes = _when(p.opens), _when(p.closes)
    is_open = (opens is None or now >= opens) and (closes is None or now < closes)
    freeze = _when(p.leaderboard_freeze)
    return {
        "opens": None if opens is None else utc_iso(opens),
        "closes": None if closes is None else utc_iso(closes),
        "open": is_open,
        "leaderboard_freeze": None if freeze is None else utc_iso(freeze),
    }


def frozen_at(spec: Spec, phase: str, now: float | None = None) -> float | None:
    """The phase's leaderboard freeze time once it has passed (the public board stops there), else None."""
    freeze = _when(spec.phase(phase).leaderboard_freeze)
    now = time.time() if now is None else now
    return freeze if freeze is not None and now >= freeze else None


def check_window(spec: Spec, phase: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    window = phase_window(spec, phase, now)
    if window["open"]:
        return
    if window["opens"] and now < _when(window["opens"]):
        raise WindowClosed(f"the {phase} phase is not open yet: submissions open at {window['opens']}")
    raise WindowClosed(f"the {phase} phase closed at {window['closes']}; no more submissions are accepted")


# -- submit -----------------------------------------------------------------------------------------


def admit_upload(
    r: redis.Redis, team: str, spec: Spec, phase: str | None = "feedback", *, now: float | None = None
) -> None:
    """Every refusal of an upload that needs none of its bytes, so the gateway answers it before reading
    the body: the phase exists (SpecError), takes uploads and is open (Forbidden, WindowClosed), the team
    is not disabled (Forbidden), and it has a submission left today (QuotaExceeded). Reads only: `submit`
    calls it again and then reserves the quota atomically. `phase=None` is a phase not known yet (the
    gateway before reading a form that may name one): refused only when no phase taking uploads is open."""
    now = time.time() if now is None else now
    if phase is not None:
        _phase_takes_uploads(spec, phase, now)
    else:
        names = sorted(
            (n for n, p in spec.phases.items() if p.accepts_uploads), key=lambda n: n != "feedback"
        )
        refusals: list[ServiceError] = []
        for name in names:
            try:
                _phase_takes_uploads(spec, name, now)
                break
            except ServiceError as exc:
                refusals.append(exc)
        else:
            raise refusals[0] if refusals else Forbidden("no phase of this competition takes uploads")
    registered = teams.get_team(r, team)  # organizer runs under unregistered names are not refused
    if registered is not None and registered.disabled:
        raise Forbidden(f"team {team} is disabled; ask the organizers")
    quotas.require_remaining(r, team, spec, now)


def _phase_takes_uploads(spec: Spec, phase: str, now: float) -> None:
    if not spec.phase(phase).accepts_uploads:  # SpecError for a phase this competition does not have
        raise Forbidden(
            f"the {phase} phase takes no uploads: the organizers score each team's selected submission "
            "on it (`bbo select ID`; default: your best)"
        )
    check_window(spec, phase, now)


def submit(
    r: redis.Redis,
    team: str,
    data: bytes,
    filename: str,
    spec: Spec,
    phase: str = "feedback",
    backend: str = "auto",
    *,
    now: float | None = None,
) -> Submission:
    """Accept one upload: `admit_upload`'s checks, the quota reserved atomically, then the archive checks
    and the enqueue. A refused upload stores nothing and costs nothing."""
    admit_upload(r, team, spec, phase, now=now)
    hold = quotas.check_and_reserve(r, team, spec, now)
    try:
        return create_submission(
            r, team=team, data=data, spec=spec, phase=phase, filename=filename, backend=backend
        )
    except BaselineError as exc:
        # The organizers' problem, and its message names hidden problems: log it, tell the team less.
        log.error("submission of team %s refused: %s", team, exc)
        raise ServiceUnavailable(
            f"scoring of the {phase} phase is not available yet (baselines missing); "
            "the organizers have been told"
        ) from None
    finally:
        quotas.release(r, team, hold)


# -- read -------------------------------------------------------------------------------------------


def status(r: redis.Redis, team: str | None, sid: str) -> Submission:
    """One submission; a team sees only its own (a foreign id looks exactly like an unknown one).
    `team=None` is the organizers' view."""
    sub = load_submission(r, sid) if isinstance(sid, str) and 0 < len(sid) <= 64 else None
    if sub is None or (team is not None and sub.team != team):
        raise NotFound(f"no submission {sid[:64]!r}" if isinstance(sid, str) else "no such submission")
    return sub


def list_submissions(r: redis.Redis, team: str, limit: int = 100) -> list[Submission]:
    """The team's submissions, newest first."""
    ids = r.zrevrange(keys.team_submissions(team), 0, max(1, limit) - 1)
    return load_submissions(r, ids)


def latest(r: redis.Redis, team: str) -> Submission | None:
    found = list_submissions(r, team, limit=1)
    return found[0] if found else None


# -- stop -------------------------------------------------------------------------------------------


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


# -- leaderboard ------------------------------------------------------------------------------------


def leaderboard(
    r: redis.Redis,
    phase: str,
    spec_name: str,
    *,
    registered_only: bool = True,
    scored_before: float | None = None,
) -> list[dict[str, Any]]:
    """Each team's best scored submission of the phase, best first; a tie goes to the earlier upload.

    By default only registered, enabled teams appear (organizer test runs under other names do not).
    Disqualified submissions never appear; with `scored_before` (a freeze), only what was scored by then.
    A submission being rescored shows its last scored version (the row's `score_version` says which).
    The final phase's board is competition/final.py's: final entries with confidence intervals.
    """
    if phase == "final":
        return _final_leaderboard(r, spec_name, registered_only, scored_before)
    ids = r.zrange(keys.submissions_index(), 0, -1)
    pipe = r.pipeline(transaction=False)
    for sid in ids:
        pipe.hmget(keys.submission(sid), "state", "previous_version")
    found = zip(ids, pipe.execute(), strict=True)
    scored = [sid for sid, (state, previous) in found if state == "scored" or previous]
    allowed: set[str] | None = None
    if registered_only:
        allowed = {t.name for t in teams.list_teams(r) if not t.disabled}
    best: dict[str, Submission] = {}
    for sub in filter(None, (s.last_scored() for s in load_submissions(r, scored))):
        if sub.phase != phase or sub.spec_name != spec_name or sub.score is None:
            continue
        if allowed is not None and sub.team not in allowed:
            continue
        if sub.disqualified is not None or (scored_before is not None and scored_time(sub) > scored_before):
            continue
        current = best.get(sub.team)
        if current is None or (sub.score, -sub.created_at) > (current.score, -current.created_at):
            best[sub.team] = sub
    ordered = sorted(best.values(), key=lambda s: (-s.score, s.created_at))
    return [
        {
            "rank": rank,
            "team": sub.team,
            "score": sub.score,
            "submission": sub.id,
            "score_version": sub.score_version,
            "scored_at": utc_iso(scored_time(sub)),
        }
        for rank, sub in enumerate(ordered, start=1)
    ]


def _final_leaderboard(
    r: redis.Redis, spec_name: str, registered_only: bool, scored_before: float | None
) -> list[dict[str, Any]]:
    from competition import final

    return final.final_leaderboard(r, spec_name, registered_only=registered_only, scored_before=scored_before)


def scored_time(sub: Submission) -> float:
    # Records scored before `scored_at` existed: their last update was the scoring.
    return sub.scored_at if sub.scored_at is not None else sub.updated_at


def leaderboard_view(
    r: redis.Redis, spec: Spec, phase: str, *, organizer: bool = False, now: float | None = None
) -> dict[str, Any]:
    """The leaderboard as teams get it: {"phase", "competition", "frozen", "frozen_at", "rows"}, and for
    the final phase `released` (and `pending`, a message, with no rows while it is not released).

    After the phase's freeze the public board keeps showing what was scored up to the freeze (final
    days of a competition without a live board to probe): `frozen` is true. Organizers keep seeing it
    live (`frozen` false), and `frozen_at` tells them the public board froze. The final board reaches
    teams only once released (competition/release.py); organizers always see it."""
    spec.phase(phase)
    freeze = frozen_at(spec, phase, now)
    view: dict[str, Any] = {
        "phase": phase,
        "competition": spec.name,
        "frozen": freeze is not None and not organizer,
        "frozen_at": None if freeze is None else utc_iso(freeze),
    }
    if phase == "final":
        released = release.released_at(r, spec.name)
        view["released"] = released is not None
        view["released_at"] = None if released is None else utc_iso(released)
        if released is None and not organizer:
            return view | {"pending": release.PENDING_MESSAGE, "rows": []}
    return view | {"rows": leaderboard(r, phase, spec.name, scored_before=None if organizer else freeze)}


# -- rescore and the final phase's selection (competition/rescore.py, competition/final.py) --------


def rescore(
    r: redis.Redis,
    sid: str,
    *,
    actor: str | None = None,
    spec: Spec | None = None,
    reason: str = "",
    backend: str | None = None,
) -> Submission:
    """Organizers: a new score version of a terminal submission's artifact (current spec and baselines
    unless `spec` is given); old versions stay readable. Audited, never charged."""
    from competition import rescore as rescoring

    return rescoring.rescore(r, sid, actor=actor, spec=spec, reason=reason, backend=backend)


def select(r: redis.Redis, team: str, sid: str, spec: Spec) -> dict[str, Any]:
    """A team picks one of its scored feedback submissions for the final phase; returns `selection`."""
    from competition import final

    return final.select(r, team, sid, spec)


def selection(r: redis.Redis, team: str, spec: Spec) -> dict[str, Any]:
    """The submission a team enters the final phase with: its pick if still usable, else its best."""
    from competition import final

    return final.selection(r, team, spec)


# -- info -------------------------------------------------------------------------------------------


def info(r: redis.Redis | None, spec: Spec, team: str | None = None, now: float | None = None) -> dict:
    """The competition's rules and windows; with a team, its remaining quota for today.

    Phases say how many problems they have, never which."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {
        "competition": spec.name,
        "description": spec.description,
        "spec_hash": spec.hash,
        "rounds": spec.rounds,
        "batch": spec.batch,
        "phases": [
            {
                "name": name,
                "problems": len(p.problems),
                "studies": p.studies,
                "team_uploads": p.accepts_uploads,
                **phase_window(spec, name, now),
            }
            for name, p in spec.phases.items()
        ],
        "limits": {
            "suggest_budget_s": spec.limits.suggest_budget_s,
            "call_timeout_s": spec.limits.call_timeout_s,
            "memory_mb": spec.limits.memory_mb,
        },
        "submission": {
            "max_zip_mb": spec.submission.max_zip_mb,
            "max_unpacked_mb": spec.submission.max_unpacked_mb,
            "max_files": spec.submission.max_files,
            "daily_quota": spec.submission.daily_quota,
        },
    }
    if team is not None and r is not None:
        out["team"] = team
        out["quota"] = quotas.remaining(r, team, spec, now).to_dict()
    return out


# -- metrics ----------------------------------------------------------------------------------------


def metrics_snapshot(r: redis.Redis) -> dict[str, Any]:
    """Figures for monitoring: queue depths, running jobs, submissions by state, failures by cause,
    workers, teams, studies done, each autoscaler fleet's last step. One pipelined pass over the
    submission hashes (no job scans)."""
    from autoscaler.daemon import read_status
    from runtime import dispatch, recovery

    depths = dispatch.queue_depths(r)  # priority, every team's queue, the legacy shared one
    ids = r.zrange(keys.submissions_index(), 0, -1)
    pipe = r.pipeline(transaction=False)
    for sid in ids:
        pipe.hmget(keys.submission(sid), "state", "studies_done")
    states = dict.fromkeys((s.value for s in SubmissionState), 0)
    studies_done = 0
    failed = []
    for sid, (state, done) in zip(ids, pipe.execute(), strict=True):
        if state in states:
            states[state] += 1
        studies_done += int(done or 0)
        if state == SubmissionState.FAILED.value:
            failed.append(sid)
    causes = dict.fromkeys((c.value for c in FailureCause), 0)
    for sub in load_submissions(r, failed):
        if sub.failure is not None:
            causes[sub.failure.cause.value] += 1
    return {
        "queues": depths["per_queue"],
        "jobs": {"queued": depths["queued"], "running": depths["running"]},
        "submissions": states,
        "failures": causes,
        # Live heartbeats, not RQ's registry: a killed worker stays registered there for minutes.
        "workers": len(recovery.workers(r)),
        "teams": int(r.zcard(keys.teams_index())),
        "studies_done": studies_done,
        # fleet -> its daemon's last step (read_status); a fleet with no status yet is left out.
        "autoscaler": {
            fleet: status
            for fleet in sorted(r.smembers(keys.autoscaler_fleets()))
            if (status := read_status(r, fleet))
        },
    }
