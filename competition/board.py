"""The feedback-phase leaderboard: each team's best scored submission, read from the store's scored index.

`service.leaderboard` is the faces' entry (it sends the final phase to competition/final.py); the final
phase's launch reads this board too, which is why it lives apart from the service module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from baselines.scoring import leaderboard_score
from competition import teams
from queue_schema.payloads import Submission, utc_iso
from queue_schema.records import best_by_team, ranking_key, scored_submissions, scored_time
from runtime import versions
from runtime.spec import Spec


def allowed_teams(r: redis.Redis, registered_only: bool) -> set[str] | None:
    """The teams a board shows: registered and enabled ones (None: every name, organizer runs too)."""
    return {t.name for t in teams.list_teams(r) if not t.disabled} if registered_only else None


def eligible(sub: Submission, allowed: set[str] | None, scored_before: float | None) -> bool:
    """A (last scored) submission a board may show: not disqualified, of an allowed team, and scored by
    the freeze when there is one."""
    return (
        sub.score is not None
        and sub.disqualified is None
        and (allowed is None or sub.team in allowed)
        and (scored_before is None or scored_time(sub) <= scored_before)
    )


def row(rank: int, sub: Submission) -> dict[str, Any]:
    """The fields every board's row has."""
    return {
        "rank": rank,
        "team": sub.team,
        "score": sub.score,
        "submission": sub.id,
        "score_version": sub.score_version,
        "scored_at": utc_iso(scored_time(sub)),
    }


def rows(ordered: Iterable[Submission]) -> list[dict[str, Any]]:
    return [row(rank, sub) for rank, sub in enumerate(ordered, start=1)]


def phase_leaderboard(
    r: redis.Redis,
    phase: str,
    spec_name: str,
    *,
    registered_only: bool = True,
    scored_before: float | None = None,
) -> list[dict[str, Any]]:
    """Each team's best scored submission of the phase (as last scored), best first; a tie goes to the
    earlier upload. Reads the phase's scored index, never every submission."""
    allowed = allowed_teams(r, registered_only)
    candidates = (s for s in scored_submissions(r, spec_name, phase) if eligible(s, allowed, scored_before))
    return rows(sorted(best_by_team(candidates).values(), key=ranking_key))


def random_search_reference(spec: Spec, phase: str) -> float | None:
    """The score random search gets on the phase's problems, on the leaderboard's scale: the mean over
    the problems of the random-search baseline's mean normalized value at the last round. The public
    board shows it as a reference row, so a team sees what beating random search takes. None when the
    baselines (or one problem's) are missing: better no reference than one over other problems."""
    baselines = versions.baselines_or_none(spec)
    if baselines is None:
        return None
    try:
        finals = [baselines.problem(problem).mean_normed[-1] for problem in spec.phase(phase).problems]
    except versions.BaselineError:
        return None
    return leaderboard_score(sum(finals) / len(finals)) if finals else None
