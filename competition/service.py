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
from autoscaler.daemon import read_status
from competition import board, final, quotas, release, teams
from competition.control import status, stop
from competition.errors import (
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    ServiceError,
    ServiceUnavailable,
    WindowClosed,
)
from competition.final import select, selection
from competition.rescore import rescore
from competition.submit import create_submission
from queue_schema import keys
from queue_schema.payloads import Submission, utc_iso
from queue_schema.records import failure_counts, load_submissions, state_counts, studies_done_total
from queue_schema.states import SubmissionState
from runtime import dispatch, recovery
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


def list_submissions(r: redis.Redis, team: str, limit: int = 100) -> list[Submission]:
    """The team's submissions, newest first."""
    ids = r.zrevrange(keys.team_submissions(team), 0, max(1, limit) - 1)
    return load_submissions(r, ids)


def latest(r: redis.Redis, team: str) -> Submission | None:
    found = list_submissions(r, team, limit=1)
    return found[0] if found else None


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
        return final.final_leaderboard(
            r, spec_name, registered_only=registered_only, scored_before=scored_before
        )
    return board.phase_leaderboard(
        r, phase, spec_name, registered_only=registered_only, scored_before=scored_before
    )


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


# -- stop, rescore and the final phase's selection: competition/control.py, rescore.py and final.py --
# (`status`, `stop`, `rescore`, `select` and `selection` are imported above: the faces call them here.)


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
    workers, teams, studies done, each autoscaler fleet's last step. Counts come from the store's
    indexes (queue_schema/records/indexes.py): no submission or job is scanned."""
    depths = dispatch.queue_depths(r)  # priority, every team's queue, the legacy shared one
    return {
        "queues": depths["per_queue"],
        "jobs": {"queued": depths["queued"], "running": depths["running"]},
        "submissions": state_counts(r),
        "failures": failure_counts(r),
        # Live heartbeats, not RQ's registry: a killed worker stays registered there for minutes.
        "workers": len(recovery.workers(r)),
        "teams": int(r.zcard(keys.teams_index())),
        "studies_done": studies_done_total(r),
        # fleet -> its daemon's last step (read_status); a fleet with no status yet is left out.
        "autoscaler": {
            fleet: step
            for fleet in sorted(r.smembers(keys.autoscaler_fleets()))
            if (step := read_status(r, fleet))
        },
    }
