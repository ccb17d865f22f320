"""bayesmark's scikit-learn problems as a suite: its catalogue and its seeded SklearnModel, in the worker."""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np

from suites.base import BAYESMARK, BaselineRule, Objective, Suite


class BayesmarkObjective(Objective):
    """bayesmark's SklearnModel with numpy's global random state seeded before every evaluation."""

    def __init__(self, problem: str, study: int, batch: int) -> None:
        from bayesmark.sklearn_funcs import SklearnModel  # scikit-learn's import: seconds, so only here

        from suites.bayesmark_catalogue import parse

        super().__init__(problem, study, batch)
        p = parse(problem)
        self.model = SklearnModel(p.model, p.dataset, p.metric)

    def get_api_config(self) -> dict:
        return self.model.get_api_config()

    @property
    def objective_names(self) -> tuple[str, ...]:
        return self.model.objective_names

    def _evaluate(self, params: dict, seed: int) -> tuple[float, float]:
        np.random.seed(seed)
        # scikit-learn 1.1 warns on almost every evaluation (deprecations, convergence); thousands of
        # identical lines per study would drown the worker's log and cost time.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.model.evaluate(params)


class BayesmarkSuite(Suite):
    name = BAYESMARK
    baseline_rule = BaselineRule.STRONG_RUN
    bayesmark_export = True

    def check(self, problem: str) -> None:
        from suites.bayesmark_catalogue import parse

        parse(problem)

    def catalogue(self) -> tuple[str, ...]:
        from suites.bayesmark_catalogue import all_problems

        return tuple(p.name for p in all_problems())

    def test_case(self, problem: str) -> str:
        from suites.bayesmark_catalogue import parse

        return parse(problem).test_case

    def api_config(self, problem: str) -> dict:
        return _api_config(problem)

    def objective(self, problem: str, study: int, batch: int) -> Objective:
        return BayesmarkObjective(problem, study, batch)

    def coarse_seconds(self, problem: str) -> float:
        from suites.bayesmark_catalogue import coarse_seconds

        return coarse_seconds(problem)

    def describe(self) -> dict:
        from importlib.metadata import version

        return {
            "suite": self.name,
            "bayesmark": version("bayesmark"),
            "scikit-learn": version("scikit-learn"),
        }


@cache
def _api_config(problem: str) -> dict:
    from bayesmark.sklearn_funcs import SklearnModel

    from suites.bayesmark_catalogue import parse

    p = parse(problem)
    return SklearnModel(p.model, p.dataset, p.metric).get_api_config()
