"""A submission's convergence curves (competition.scores.convergence), the team's view of its own
submission (public_detail), and random search's reference score on the public board.

The expected curves are computed here from the definition (each study's normalized best-so-far from the
baselines' clip and opt, averaged over a problem's studies, then over problems), not by the code under
test: the console's curves moved into competition/scores.py and must not have changed on the way."""

from __future__ import annotations

import dataclasses

import pytest

from baselines.scoring import leaderboard_score, study_normalized_curve
from competition import scores
from competition.board import random_search_reference
from console.data import ConsoleData
from queue_schema import keys
from queue_schema.payloads import StudyResult
from queue_schema.records import load_submission, read_studies, transition
from queue_schema.states import SubmissionState
from runtime import versions
from tests import console_helpers as fixed
from tests.scoring_helpers import PROBLEM, score_tiny, tiny_spec


def expected_curves(r, sid: str, spec, problems) -> tuple[list[float], list[float]]:
    """The definition, straight from the stored studies and the baseline file."""
    baselines = versions.baselines_for(spec)
    per_problem, randoms = [], []
    for problem in problems:
        found = read_studies(r, sid, 1, problem)
        if not found:
            continue
        base = baselines.problem(problem)
        curves = [
            study_normalized_curve(
                [[StudyResult.decode_loss(v) for v in round_] for round_ in s.losses],
                base.clip,
                base.opt,
                spec.rounds,
            )
            for s in found.values()
        ]
        per_problem.append([sum(c[t] for c in curves) / len(curves) for t in range(spec.rounds)])
        randoms.append(list(base.mean_normed))
    mean = [sum(c[t] for c in per_problem) / len(per_problem) for t in range(spec.rounds)]
    random = [sum(c[t] for c in randoms) / len(randoms) for t in range(spec.rounds)]
    return mean, random


def curves_of(r, sid: str) -> tuple[list[float], list[float]]:
    return scores.convergence(r, load_submission(r, sid), scores.report(r, sid)["problems"])


def test_a_really_scored_submission_converges_to_its_score(r, unsafe_ok):
    sub = score_tiny(r, "alpha")
    assert sub.state == SubmissionState.SCORED, sub
    curve, random = curves_of(r, sub.id)
    want_curve, want_random = expected_curves(r, sub.id, tiny_spec(), [PROBLEM])
    assert curve == pytest.approx(want_curve) and len(curve) == tiny_spec().rounds
    assert random == pytest.approx(want_random)
    # The curve's last point is the score: one study of one problem, so they are the same number.
    assert leaderboard_score(curve[-1]) == pytest.approx(sub.score)
    detail = ConsoleData(r).detail(sub.id)
    assert (detail["curve"], detail["random"]) == (curve, random)  # the console draws this rule's curves


def test_curves_average_studies_then_problems_and_random_over_the_same_problems(r):
    ids = fixed.fixed_competition(r)
    spec = fixed.demo_spec()
    feedback = spec.phase("feedback").problems
    curve, random = curves_of(r, ids["scored_alpha"])
    assert (curve, random) == pytest.approx(expected_curves(r, ids["scored_alpha"], spec, feedback))
    # The running submission has one study of the first problem: random search over that problem only.
    curve, random = curves_of(r, ids["running_gamma"])
    assert (curve, random) == pytest.approx(expected_curves(r, ids["running_gamma"], spec, feedback[:1]))
    assert random == pytest.approx(versions.baselines_for(spec).problem(feedback[0]).mean_normed)


def test_public_detail_names_problems_with_the_reports_scores(r):
    ids = fixed.fixed_competition(r)
    sid = ids["scored_alpha"]
    detail = scores.public_detail(r, load_submission(r, sid))
    assert set(detail) == {"curve", "random", "rounds", "problems"}
    assert (detail["curve"], detail["random"]) == curves_of(r, sid)
    assert detail["rounds"] == fixed.demo_spec().rounds
    report = scores.report(r, sid)["problems"]
    # The scores are the report's (each study's stored normalized score), not recomputed from losses.
    assert detail["problems"] == [{"problem": p["problem"], "score": p["score"]} for p in report]
    assert [p["problem"] for p in detail["problems"]] == list(fixed.demo_spec().phase("feedback").problems)
    assert all(p["score"] == pytest.approx(leaderboard_score(0.1)) for p in detail["problems"])


def test_public_detail_hides_problem_names_when_the_spec_obfuscates_them(r):
    spec = dataclasses.replace(fixed.demo_spec(), obfuscate_names=True)
    sid = "s0000000ddddddddd1"
    fixed.record(r, sid, "delta", fixed.NOW, spec)
    transition(r, sid, SubmissionState.RUNNING)
    for problem in spec.phase("feedback").problems:
        fixed.study(r, sid, problem, 0, spec, [-0.5] * spec.rounds, 0.1)
    detail = scores.public_detail(r, load_submission(r, sid))
    assert detail["problems"] == []
    assert len(detail["curve"]) == spec.rounds and len(detail["random"]) == spec.rounds  # the aggregate
    for problem in spec.phase("feedback").problems:
        assert problem not in repr(detail)


def test_public_detail_of_a_final_phase_submission_names_no_held_out_problem(r):
    spec = fixed.demo_spec()
    sid = "s0000000ddddddddd2"
    fixed.record(r, sid, "delta", fixed.NOW, spec, phase="final")
    transition(r, sid, SubmissionState.RUNNING)
    for problem in spec.phase("final").problems:
        fixed.study(r, sid, problem, 0, spec, [-0.5] * spec.rounds, 0.1)
    detail = scores.public_detail(r, load_submission(r, sid))
    assert detail["problems"] == [] and len(detail["curve"]) == spec.rounds
    for problem in spec.phase("final").problems:
        assert problem not in repr(detail)


def test_public_detail_of_a_queued_submission_has_empty_curves(r):
    ids = fixed.fixed_competition(r)
    detail = scores.public_detail(r, load_submission(r, ids["queued_alpha"]))
    assert detail["curve"] == [] and detail["random"] == []
    assert detail["rounds"] == fixed.demo_spec().rounds
    assert [p["score"] for p in detail["problems"]] == [None] * len(
        fixed.demo_spec().phase("feedback").problems
    )


def test_public_detail_without_baselines_or_spec_still_answers(r):
    ids = fixed.fixed_competition(r)
    # A spec no baseline file was built for: the report cannot score, the page still renders.
    spec = dataclasses.replace(fixed.demo_spec(), name="no-baselines")
    sid = "s0000000eeeeeeeee1"
    fixed.record(r, sid, "alpha", fixed.NOW, spec)
    transition(r, sid, SubmissionState.RUNNING)
    fixed.study(r, sid, spec.phase("feedback").problems[0], 0, spec, [-0.5] * spec.rounds, 0.1)
    assert scores.public_detail(r, load_submission(r, sid)) == {
        "curve": [],
        "random": [],
        "rounds": spec.rounds,
        "problems": [],
    }
    # The submission's spec gone from the store: nothing to say, and no names (the spec decides them).
    sub = load_submission(r, ids["scored_alpha"])
    r.delete(keys.spec(sub.spec_hash))
    assert scores.public_detail(r, sub) == {"curve": [], "random": [], "rounds": 0, "problems": []}


def test_random_search_reference_is_random_searchs_final_score_on_the_phase(r):
    ids = fixed.fixed_competition(r)
    spec = fixed.demo_spec()
    reference = random_search_reference(spec, "feedback")
    # Every feedback problem has studies in this submission: its random curve is the whole phase's.
    _, random = curves_of(r, ids["scored_alpha"])
    assert reference == pytest.approx(leaderboard_score(random[-1]))
    assert 50.0 < reference < 100.0  # random search beats its own median evaluation, short of the best
    assert random_search_reference(spec, "final") != pytest.approx(reference)
    assert random_search_reference(dataclasses.replace(spec, name="no-baselines"), "feedback") is None
