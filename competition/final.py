"""The final phase: each team's chosen submission scored on the held-out problems, and the final
leaderboard with how sure it is.

- Selection: a team picks one of its scored feedback submissions for the final (`bbo select ID`); a team
  that picks none, or whose pick is no longer usable, enters with its best. Locked once its final runs.
- Launch (`bbo admin final --top N`): the feedback leaderboard's top N teams each get a final-phase
  submission of their chosen artifact, scored on the final problems with the spec's final study count
  (each study in its own sandbox, as always). It is organizer work: priority queue, never charged to a
  team's quota, audited. Running it again reuses what it launched (keyed by team, spec hash and
  artifact), so it never scores a team twice.
- Final leaderboard: per team its final submission (or, for a team that entered the final phase by
  upload, its best there), ranked by score, with a bootstrap over studies (baselines/ranking.py): a 95%
  interval of the score and the probability that the team keeps its rank.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import redis

from baselines import ranking
from competition import audit, board, control
from competition.errors import Conflict, NotFound
from queue_schema import keys
from queue_schema.ids import new_submission_id
from queue_schema.payloads import Submission, utc_iso
from queue_schema.records import (
    add_event,
    best_of_team,
    load_submission,
    load_submissions,
    ranking_key,
    read_studies,
    read_study_scores,
    save_new_submission,
    scored_submissions,
    write_study_scores,
)
from queue_schema.states import ACTIVE_STATES
from runtime import versions
from runtime.enqueue import enqueue_jobs, phase_progress
from runtime.spec import Spec, stored_spec

log = logging.getLogger("bbo.final")

FEEDBACK = "feedback"
FINAL = "final"
LOCK_TTL_S = 600
# A point estimate that differs from the stored score by more than this means the study data changed.
SCORE_TOLERANCE = 1e-6


# -- selection --------------------------------------------------------------------------------------


def select(r: redis.Redis, team: str, sid: str, spec: Spec) -> dict[str, Any]:
    """A team picks one of its scored feedback submissions for the final phase."""
    sub = load_submission(r, sid) if isinstance(sid, str) and 0 < len(sid) <= 64 else None
    if sub is None or sub.team != team:
        raise NotFound(f"no submission {str(sid)[:64]!r}")  # a foreign id looks like an unknown one
    if sub.phase != FEEDBACK or sub.spec_name != spec.name:
        raise Conflict(f"submission {sid} is not a {spec.name} feedback-phase submission; only those enter")
    if sub.last_scored() is None:
        raise Conflict(f"submission {sid} is {sub.state.value}; only a scored submission can be selected")
    if _locked(r, team, spec):
        raise Conflict("the final phase has been launched for your team; the selection is locked")
    r.set(keys.team_selection(team), sid)
    add_event(r, "selected", sid, team=team)
    return selection(r, team, spec)


def selection(r: redis.Redis, team: str, spec: Spec) -> dict[str, Any]:
    """What the team enters the final phase with: {"team", "submission", "selected", "score",
    "score_version", "created_at", "locked"}; `submission` is null while it has nothing scored."""
    chosen, selected = resolve(r, team, spec)
    return {
        "team": team,
        "submission": chosen.id if chosen else None,
        "selected": selected,
        "score": chosen.score if chosen else None,
        "score_version": chosen.score_version if chosen else None,
        "created_at": utc_iso(chosen.created_at) if chosen else None,
        "locked": _locked(r, team, spec),
    }


def resolve(r: redis.Redis, team: str, spec: Spec) -> tuple[Submission | None, bool]:
    """The team's selection if it is still usable (its own, scored, feedback, not disqualified), else its
    best scored feedback submission; with whether it was the team's own pick. Scores as last scored."""
    picked = r.get(keys.team_selection(team))
    if picked:
        sub = load_submission(r, picked)
        shown = _usable(sub, team, spec.name) if sub else None
        if shown is not None:
            return shown, True
    ids = r.zrange(keys.team_submissions(team), 0, -1)
    usable = (_usable(sub, team, spec.name) for sub in load_submissions(r, ids))
    return best_of_team(s for s in usable if s is not None), False


def _usable(sub: Submission, team: str, spec_name: str) -> Submission | None:
    if sub.team != team or sub.phase != FEEDBACK or sub.spec_name != spec_name or sub.disqualified:
        return None
    return sub.last_scored()


def _locked(r: redis.Redis, team: str, spec: Spec) -> bool:
    return bool(r.hexists(keys.final_entries(spec.name), team))


# -- launch -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    team: str
    source: str  # the feedback submission whose artifact enters
    selected: bool  # the team picked it (else: its best)
    submission: str | None  # the final-phase submission
    created: bool  # launched by this run (False: an earlier run's, reused)
    state: str | None = None  # the final-phase submission's state at the time
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_final(
    r: redis.Redis,
    spec: Spec,
    *,
    top: int | None = None,
    actor: str | None = None,
    backend: str = "auto",
) -> list[Launch]:
    """Launch the final phase for the feedback leaderboard's top `top` teams (all when None).

    Raises SpecError (no final phase), BaselineError (final problems without baselines), Conflict
    (another launch is running), ValueError (top < 1), all before anything is launched."""
    if top is not None and top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    phase = spec.phase(FINAL)
    baseline_version = versions.baselines_for(spec, required=phase.problems).version
    with _launch_lock(r, spec.name):
        ranked = board.phase_leaderboard(r, FEEDBACK, spec.name)  # registered, enabled teams; live
        launches = []
        for row in ranked if top is None else ranked[:top]:
            source, selected = resolve(r, row["team"], spec)
            if source is None:
                continue
            launches.append(_launch(r, spec, source, selected, baseline_version, backend, actor))
    audit.record(
        r,
        "final",
        spec.name,
        actor=actor,
        top=top,
        spec_hash=spec.hash,
        launched={x.team: x.submission for x in launches if x.created},
        reused={x.team: x.submission for x in launches if not x.created and not x.error},
        errors={x.team: x.error for x in launches if x.error},
    )
    return launches


def _launch(
    r: redis.Redis,
    spec: Spec,
    source: Submission,
    selected: bool,
    baseline_version: str,
    backend: str,
    actor: str | None,
) -> Launch:
    team = source.team
    launch_key = f"{team}:{spec.hash}:{source.artifact_sha256}"
    existing = r.hget(keys.final_launches(spec.name), launch_key)
    earlier = load_submission(r, existing) if existing else None
    if earlier is not None:
        _make_entry(r, spec, team, earlier.id, actor)
        return Launch(team, source.id, selected, earlier.id, created=False, state=earlier.state.value)
    if not r.exists(keys.artifact(source.artifact_sha256)):
        return Launch(team, source.id, selected, None, False, error="the artifact is no longer stored")
    sub = Submission(
        id=new_submission_id(),
        team=team,
        artifact_sha256=source.artifact_sha256,
        filename=source.filename,
        spec_name=spec.name,
        spec_hash=spec.hash,
        phase=FINAL,
        baseline_version=baseline_version,
        progress=phase_progress(spec, FINAL),
        charged=False,  # organizer work: never on the team's quota
        source=source.id,
        backend=backend,
    )
    # Not create_submission: the artifact is stored and checked already, and the record must be
    # uncharged from its first moment (a charged instant could refuse a concurrent upload at the quota).
    r.set(keys.spec(spec.hash), spec.to_json())
    save_new_submission(r, sub)
    r.hset(keys.final_launches(spec.name), launch_key, sub.id)
    add_event(
        r,
        "submitted",
        sub.id,
        team=team,
        phase=FINAL,
        spec=spec.name,
        sha256=sub.artifact_sha256,
        source=source.id,
    )
    enqueue_jobs(r, sub, spec, backend=backend, priority=True)
    _make_entry(r, spec, team, sub.id, actor)
    return Launch(team, source.id, selected, sub.id, created=True, state=sub.state.value)


def _make_entry(r: redis.Redis, spec: Spec, team: str, sid: str, actor: str | None) -> None:
    """`sid` becomes the team's final entry; an earlier entry still scoring is stopped (superseded)."""
    before = r.hget(keys.final_entries(spec.name), team)
    r.hset(keys.final_entries(spec.name), team, sid)
    if before and before != sid:
        old = load_submission(r, before)
        if old is not None and old.state in ACTIVE_STATES:
            with contextlib.suppress(Conflict, NotFound):
                control.stop(r, before, actor=actor)


@contextlib.contextmanager
def _launch_lock(r: redis.Redis, spec_name: str) -> Iterator[None]:
    name = keys.lock(f"final:{spec_name}")
    token = secrets.token_hex(8)
    if not r.set(name, token, nx=True, ex=LOCK_TTL_S):
        raise Conflict("another final-phase launch is running; try again when it has finished")
    try:
        yield
    finally:
        # Delete only our own lock (it may have expired and been taken meanwhile).
        r.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end",
            1,
            name,
            token,
        )


def launched(r: redis.Redis, spec_name: str) -> dict[str, str]:
    """team -> its final-phase submission id."""
    return dict(r.hgetall(keys.final_entries(spec_name)))


# -- final leaderboard ------------------------------------------------------------------------------


def final_leaderboard(
    r: redis.Redis,
    spec_name: str,
    *,
    registered_only: bool = True,
    scored_before: float | None = None,
    draws: int = ranking.DRAWS,
    seed: int = ranking.SEED,
) -> list[dict[str, Any]]:
    """Per team its final submission (as last scored), best first, each row with the feedback rows'
    fields plus `source`, `ci_low`, `ci_high` (95%), `rank_stability` and `studies`. Teams whose final
    submission is not scored yet do not appear; with `scored_before` (a freeze), neither do those scored
    after it."""
    entries = launched(r, spec_name)
    chosen: dict[str, Submission] = {}
    for sub in load_submissions(r, entries.values()):
        shown = sub.last_scored()
        if shown is not None and entries.get(sub.team) == sub.id:
            chosen[sub.team] = shown
    # A team that entered the final phase by upload (no launched entry): its best there, from the index.
    uploads: dict[str, list[Submission]] = {}
    for sub in scored_submissions(r, spec_name, FINAL):
        if sub.team not in entries:
            uploads.setdefault(sub.team, []).append(sub)
    for team, found in uploads.items():
        best = best_of_team(found)
        if best is not None:
            chosen[team] = best
    allowed = board.allowed_teams(r, registered_only)
    ordered = sorted(
        (s for s in chosen.values() if board.eligible(s, allowed, scored_before)),
        key=lambda s: (*ranking_key(s), s.team),
    )
    stats = _uncertainty(r, ordered, draws, seed)
    rows = []
    for rank, (sub, stat) in enumerate(zip(ordered, stats, strict=True), start=1):
        if abs(stat.score - sub.score) > SCORE_TOLERANCE:
            log.warning(
                "final: %s v%d scores %.9f, its studies give %.9f",
                sub.id,
                sub.score_version,
                sub.score,
                stat.score,
            )
        rows.append({**board.row(rank, sub), "source": sub.source, **stat.to_dict()})
    return rows


# The bootstrap of one set of (submission, version) entries never changes: keep the last few in memory,
# so a gateway's short leaderboard cache does not redo it (a second at competition scale) every time.
_BOOTSTRAPS: dict[tuple, list[ranking.RankUncertainty]] = {}
_BOOTSTRAPS_KEPT = 8
_BOOTSTRAPS_LOCK = threading.Lock()  # the gateway serves the board from a thread pool


def _uncertainty(
    r: redis.Redis, ordered: list[Submission], draws: int, seed: int
) -> list[ranking.RankUncertainty]:
    memo = (tuple((s.id, s.score_version) for s in ordered), draws, seed)
    with _BOOTSTRAPS_LOCK:
        found = _BOOTSTRAPS.get(memo)
    if found is not None:
        return found
    found = ranking.bootstrap([study_scores(r, sub) for sub in ordered], draws=draws, seed=seed)
    with _BOOTSTRAPS_LOCK:
        while len(_BOOTSTRAPS) >= _BOOTSTRAPS_KEPT:
            _BOOTSTRAPS.pop(next(iter(_BOOTSTRAPS)))
        _BOOTSTRAPS[memo] = found
    return found


def study_scores(r: redis.Redis, sub: Submission) -> dict[str, list[float]]:
    """{problem: normalized score of each study, by study index} of the submission's score version
    (pass `sub.last_scored()`), computed once from its stored studies and kept beside them."""
    cached = read_study_scores(r, sub.id, sub.score_version)
    if cached is not None:
        return cached
    spec = stored_spec(r, sub.spec_hash)
    if spec is None:
        raise versions.ScoreError(f"spec {sub.spec_hash} of submission {sub.id} is not in the store")
    baselines = versions.baselines_for(spec)
    out: dict[str, list[float]] = {}
    for problem in spec.phase(sub.phase).problems:
        found = read_studies(r, sub.id, sub.score_version, problem)
        values = [
            versions.stored_or_computed(baselines, problem, found[i], spec.rounds) for i in sorted(found)
        ]
        if not values or any(v is None for v in values):
            raise versions.ScoreError(
                f"submission {sub.id} v{sub.score_version} has no study scores of {problem}"
            )
        out[problem] = values
    # Only a scored version's studies are final; they are written once, so the cache never goes stale.
    write_study_scores(r, sub.id, sub.score_version, baselines.version, out)
    return out
