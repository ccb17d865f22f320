"""Normalized scores, computed by bayesmark's own `compute_aggregates`, with a plain formula beside it.

A study's normalized score at iteration t is clip((best-so-far visible loss - opt) / (clip - opt), -1, 1):
0 is the best-known loss, 1 the median random evaluation. A problem's score is the mean over its studies,
a submission's the mean over problems at the last iteration, and the leaderboard shows 100 x (1 - that).

Rounds a cut-off study did not run count as +inf, so its best-so-far stands; a study with no round at all
scores 1 throughout (the random-search median). Losses are lists of rounds of the batch's losses, with
None (or NaN) meaning +inf, as in `StudyResult.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from bayesmark.constants import ITER, METHOD, NORMED_MEAN, PERF_MEAN, SUGGEST, TEST_CASE, TRIAL
from bayesmark.experiment_analysis import compute_aggregates

from baselines.store import Baselines

# The one score scale is the contract's (the store's running score is on it too); re-exported here.
from queue_schema.payloads import leaderboard_score as leaderboard_score

Losses = Sequence[Sequence[float | None]]  # one study: rounds x batch
METHOD_NAME = "submission"


@dataclass(frozen=True)
class ProblemScores:
    problems: dict[str, float]  # per problem: mean over studies of the final normalized score
    curves: dict[str, list[float]]  # per problem: that mean at every iteration
    curve: list[float]  # mean over problems at every iteration
    normalized_mean: float  # curve[-1]: the submission's normalized score
    score: float  # leaderboard_score(normalized_mean)
    studies: int  # studies per problem


def _loss(value: float | None) -> float:
    if value is None:
        return math.inf
    value = float(value)
    return math.inf if math.isnan(value) else value


def _normalize(best: float, clip: float, opt: float) -> float:
    # Written as bayesmark's linear_rescale computes it (slope first), so the two agree to the last bit.
    slope = 1.0 / (clip - opt)
    return min(max(slope * (best - opt) + 0.0, -1.0), 1.0)


def study_normalized_curve(losses: Losses, clip: float, opt: float, rounds: int) -> list[float]:
    """The study's normalized best-so-far score at each of `rounds` iterations."""
    if not clip > opt:
        raise ValueError(f"clip ({clip}) must exceed opt ({opt})")
    if len(losses) > rounds:
        raise ValueError(f"study has {len(losses)} rounds, more than the {rounds} scored")
    curve, best = [], math.inf
    for t in range(rounds):
        if t < len(losses):
            best = min([best, *(_loss(v) for v in losses[t])])
        curve.append(_normalize(best, clip, opt))
    return curve


def _studies_per_problem(problem_studies: Mapping[str, Sequence[Losses]]) -> int:
    if not problem_studies:
        raise ValueError("no problems to score")
    counts = {len(studies) for studies in problem_studies.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every problem needs the same, non-zero number of studies, got {sorted(counts)}")
    return counts.pop()


def _check_rounds(baselines: Baselines, rounds: int) -> None:
    if not 1 <= rounds <= baselines.rounds:
        raise ValueError(f"cannot score {rounds} rounds against baselines of {baselines.rounds} rounds")


def score_problems_formula(
    problem_studies: Mapping[str, Sequence[Losses]], baselines: Baselines, rounds: int
) -> ProblemScores:
    """The scores in plain Python, straight from the definition."""
    n_studies = _studies_per_problem(problem_studies)
    _check_rounds(baselines, rounds)
    curves: dict[str, list[float]] = {}
    for name, studies in problem_studies.items():
        base = baselines.problem(name)
        per_study = [study_normalized_curve(study, base.clip, base.opt, rounds) for study in studies]
        curves[name] = [sum(c[t] for c in per_study) / n_studies for t in range(rounds)]
    return _assemble(curves, rounds, n_studies)


def score_problems(
    problem_studies: Mapping[str, Sequence[Losses]], baselines: Baselines, rounds: int
) -> ProblemScores:
    """The scores as bayesmark's `compute_aggregates` computes them (NORMED_MEAN), from the visible loss."""
    n_studies = _studies_per_problem(problem_studies)
    _check_rounds(baselines, rounds)
    names = list(problem_studies)
    perf = perf_array(problem_studies, baselines, rounds)
    baseline_ds = baselines.dataset(names).sel({ITER: np.arange(rounds)})
    agg, summary = compute_aggregates(perf, baseline_ds)
    normed = agg[NORMED_MEAN].sel({METHOD: METHOD_NAME}, drop=True)
    curves = {
        name: [float(v) for v in normed.sel({TEST_CASE: baselines.problem(name).test_case}).values]
        for name in names
    }
    # summary's PERF_MEAN is bayesmark's mean of NORMED_MEAN over test cases: the leaderboard's quantity.
    curve = [float(v) for v in summary[PERF_MEAN].sel({METHOD: METHOD_NAME}).values]
    return _assemble(curves, rounds, n_studies, curve)


def perf_array(
    problem_studies: Mapping[str, Sequence[Losses]], baselines: Baselines, rounds: int
) -> xr.DataArray:
    """bayesmark's (ITER, SUGGEST, TEST_CASE, METHOD, TRIAL) loss array; unrun slots hold +inf."""
    n_studies = _studies_per_problem(problem_studies)
    names = list(problem_studies)
    batch = max(
        [
            baselines.batch,
            *(len(r) for studies in problem_studies.values() for study in studies for r in study),
        ]
    )
    data = np.full((rounds, batch, len(names), 1, n_studies), np.inf)
    for p, name in enumerate(names):
        for s, study in enumerate(problem_studies[name]):
            if len(study) > rounds:
                raise ValueError(f"a study of {name} has {len(study)} rounds, more than the {rounds} scored")
            for t, row in enumerate(study):
                data[t, : len(row), p, 0, s] = [_loss(v) for v in row]
    coords = {
        ITER: np.arange(rounds),
        SUGGEST: np.arange(batch),
        TEST_CASE: [baselines.problem(name).test_case for name in names],
        METHOD: [METHOD_NAME],
        TRIAL: np.arange(n_studies),
    }
    return xr.DataArray(data, coords=coords, dims=(ITER, SUGGEST, TEST_CASE, METHOD, TRIAL))


def _assemble(
    curves: dict[str, list[float]], rounds: int, n_studies: int, curve: list[float] | None = None
) -> ProblemScores:
    if curve is None:
        curve = [sum(c[t] for c in curves.values()) / len(curves) for t in range(rounds)]
    return ProblemScores(
        problems={name: c[-1] for name, c in curves.items()},
        curves=curves,
        curve=curve,
        normalized_mean=curve[-1],
        score=leaderboard_score(curve[-1]),
        studies=n_studies,
    )
