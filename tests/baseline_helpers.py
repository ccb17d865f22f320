"""Helpers for the baseline, scoring and export tests: a tiny spec, real studies on seeded objectives."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from bayesmark.experiment import run_study

from baselines.build import RANDOM_SEARCH_FILE, OwnRandomStreams, load_optimizer_class
from queue_schema.payloads import StudyResult
from runtime.spec import Spec, _build
from suites.bayesmark_suite import BayesmarkObjective

FAST = ("DT-iris-acc", "lasso-diabetes-mae")


def tiny_spec(rounds: int = 3, batch: int = 2, random_studies: int = 2, strong_rounds: int = 6) -> Spec:
    data = {
        "name": "tiny",
        "rounds": rounds,
        "batch": batch,
        "phases": {
            "feedback": {"problems": [FAST[0]], "studies": 2},
            "final": {"problems": [FAST[1]], "studies": 2},
        },
        "limits": {"suggest_budget_s": 10.0, "call_timeout_s": 5.0},
        "baselines": {"random_studies": random_studies, "strong_rounds": strong_rounds, "seed": 7},
    }
    return _build(data, source="tiny.toml")


def write_spec_toml(path: Path, spec: Spec) -> Path:
    """The same spec as a TOML file (for commands that take a path)."""
    phases = "\n".join(
        f"[phases.{name}]\nproblems = {json.dumps(list(p.problems))}\nstudies = {p.studies}\n"
        for name, p in spec.phases.items()
    )
    path.write_text(
        f'name = "{spec.name}"\nrounds = {spec.rounds}\nbatch = {spec.batch}\n{phases}\n'
        f"[limits]\nsuggest_budget_s = {spec.limits.suggest_budget_s}\n"
        f"call_timeout_s = {spec.limits.call_timeout_s}\n"
        f"[baselines]\nrandom_studies = {spec.baselines.random_studies}\n"
        f"strong_rounds = {spec.baselines.strong_rounds}\nseed = {spec.baselines.seed}\n"
    )
    return path


def real_study(
    problem: str, study: int, rounds: int, batch: int, keep_rounds: int | None = None
) -> StudyResult:
    """A real random-search study on the seeded objective, cut off after `keep_rounds` rounds if given."""
    opt_class = load_optimizer_class(RANDOM_SEARCH_FILE)
    objective = BayesmarkObjective(problem, study, batch)
    api_config = objective.get_api_config()
    optimizer = OwnRandomStreams(lambda: opt_class(api_config), 1000 + study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evals, timing, log = run_study(optimizer, objective, rounds, batch, n_obj=2)
    kept = rounds if keep_rounds is None else keep_rounds

    def rows(k: int) -> list[list[float | None]]:
        return [[StudyResult.encode_loss(v) for v in evals[t, :, k]] for t in range(kept)]

    return StudyResult(
        study=study,
        state="complete" if kept == rounds else "cut_off",
        losses=rows(0),
        generalization=rows(1),
        suggestions=[list(log[t]) for t in range(kept)],
        suggest_time_s=float(np.sum(timing[0][:kept])),
        eval_time_s=float(np.sum(timing[1][:kept])),
    )
