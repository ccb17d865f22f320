"""Normalized scores: the plain formula, bayesmark's compute_aggregates, and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baselines.scoring import (
    leaderboard_score,
    score_problems,
    score_problems_formula,
    study_normalized_curve,
)
from baselines.store import Baselines

INF = math.inf


def synthetic_baselines(rounds: int = 3, batch: int = 2) -> Baselines:
    """Round numbers: DT-iris-acc normalizes over [-1, 0], lasso-diabetes-mae over [40, 60]."""

    def entry(clip: float, opt: float) -> dict:
        span = clip - opt
        mean = [clip - span * (0.3 + 0.1 * t) for t in range(rounds)]
        return {
            "clip": clip,
            "opt": opt,
            "median": mean,
            "mean": mean,
            "mean_normed": [(m - opt) / span for m in mean],
            "strong_best": opt,
            "random_best": mean[-1],
        }

    return Baselines(
        {
            "format": 1,
            "version": "test-0",
            "spec": "test",
            "spec_hash": "0" * 16,
            "rounds": rounds,
            "batch": batch,
            "problems": {"DT-iris-acc": entry(0.0, -1.0), "lasso-diabetes-mae": entry(60.0, 40.0)},
        }
    )


def test_curve_hand_computed():
    # best so far: -0.5, then -0.8, then cut off (stands)
    assert study_normalized_curve([[-0.5, None], [0.2, -0.8]], clip=0.0, opt=-1.0, rounds=3) == pytest.approx(
        [0.5, 0.2, 0.2], abs=1e-12
    )


def test_curve_clips_both_ends():
    # worse than the clip counts 1; far better than opt counts -1
    assert study_normalized_curve([[5.0], [-3.0]], clip=0.0, opt=-1.0, rounds=2) == [1.0, -1.0]


def test_empty_study_scores_one_everywhere():
    assert study_normalized_curve([], clip=60.0, opt=40.0, rounds=4) == [1.0, 1.0, 1.0, 1.0]


def test_nonfinite_losses_count_as_inf():
    curve = study_normalized_curve([[None, float("nan")], [INF, 50.0]], clip=60.0, opt=40.0, rounds=2)
    assert curve == pytest.approx([1.0, 0.5], abs=1e-12)


def test_curve_rejects_bad_input():
    with pytest.raises(ValueError):
        study_normalized_curve([[1.0]], clip=1.0, opt=1.0, rounds=1)
    with pytest.raises(ValueError):
        study_normalized_curve([[1.0], [1.0]], clip=2.0, opt=0.0, rounds=1)


def test_leaderboard_scale():
    assert leaderboard_score(0.0) == 100.0
    assert leaderboard_score(1.0) == 0.0
    assert leaderboard_score(0.084) == pytest.approx(91.6)


def test_score_hand_computed():
    baselines = synthetic_baselines()
    studies = {
        # normalized finals: 0.2 (best -0.8) and 1.0 (no round) -> 0.6
        "DT-iris-acc": [[[-0.5, -0.8]], []],
        # finals: (45-40)/20 = 0.25 and, below opt, -1 -> -0.375
        "lasso-diabetes-mae": [[[50.0, None], [45.0, 70.0], [48.0, 46.0]], [[10.0, 55.0]]],
    }
    expected_problems = {"DT-iris-acc": 0.6, "lasso-diabetes-mae": -0.375}
    for scorer in (score_problems, score_problems_formula):
        scores = scorer(studies, baselines, rounds=3)
        assert scores.problems == pytest.approx(expected_problems, abs=1e-12)
        assert scores.normalized_mean == pytest.approx(0.1125, abs=1e-12)
        assert scores.score == pytest.approx(88.75, abs=1e-9)
        assert scores.curves["DT-iris-acc"] == pytest.approx([0.6, 0.6, 0.6], abs=1e-12)
        assert scores.curves["lasso-diabetes-mae"] == pytest.approx([-0.25, -0.375, -0.375], abs=1e-12)
        assert scores.studies == 2


def _random_studies(
    rng: np.random.RandomState, n_studies: int, rounds: int, batch: int, low: float, high: float
):
    studies = []
    for _ in range(n_studies):
        kept = rng.randint(0, rounds + 1)  # cut-off anywhere, including before the first round
        study = []
        for _ in range(kept):
            row: list[float | None] = list(rng.uniform(low, high, size=batch))
            if rng.rand() < 0.2:
                row[rng.randint(batch)] = None
            if rng.rand() < 0.1:
                row[rng.randint(batch)] = float("nan")
            study.append(row)
        studies.append(study)
    return studies


@pytest.mark.parametrize("seed", range(8))
def test_formula_equals_bayesmark(seed):
    rng = np.random.RandomState(seed)
    baselines = synthetic_baselines(rounds=5, batch=3)
    n_studies = rng.randint(1, 6)
    studies = {
        "DT-iris-acc": _random_studies(rng, n_studies, 5, 3, -1.4, 0.6),
        "lasso-diabetes-mae": _random_studies(rng, n_studies, 5, 3, 30.0, 90.0),
    }
    ours = score_problems_formula(studies, baselines, rounds=5)
    theirs = score_problems(studies, baselines, rounds=5)
    for name in studies:
        assert ours.curves[name] == pytest.approx(theirs.curves[name], abs=1e-9)
    assert ours.curve == pytest.approx(theirs.curve, abs=1e-9)
    assert abs(ours.score - theirs.score) < 1e-9


def test_single_problem_single_study():
    baselines = synthetic_baselines()
    studies = {"DT-iris-acc": [[[-0.25, -0.5]]]}
    assert score_problems(studies, baselines, 3).score == pytest.approx(50.0, abs=1e-9)
    assert score_problems_formula(studies, baselines, 3).score == pytest.approx(50.0, abs=1e-9)


def test_fewer_rounds_than_baseline():
    baselines = synthetic_baselines(rounds=3)
    studies = {"DT-iris-acc": [[[-0.5], [-0.7]]]}
    assert score_problems(studies, baselines, 2).curve == pytest.approx([0.5, 0.3], abs=1e-12)


def test_uneven_or_missing_studies_rejected():
    baselines = synthetic_baselines()
    with pytest.raises(ValueError, match="same"):
        score_problems({"DT-iris-acc": [[]], "lasso-diabetes-mae": [[], []]}, baselines, 3)
    with pytest.raises(ValueError):
        score_problems_formula({}, baselines, 3)
    with pytest.raises(ValueError):
        score_problems({"DT-iris-acc": [[]]}, baselines, 4)  # more rounds than the baseline has
