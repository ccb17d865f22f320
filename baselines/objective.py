"""bayesmark's objective with every evaluation seeded from (problem, study, round, suggestion)."""

from __future__ import annotations

import warnings

import numpy as np
from bayesmark.sklearn_funcs import SklearnModel

from baselines.catalogue import parse
from queue_schema.seeds import eval_seed


class SeededProblem:
    """Wraps bayesmark's SklearnModel; run_study evaluates in round order, so a counter gives the index.

    Also records every evaluation, so a study cut off mid-way (by an exception escaping run_study) keeps
    the rounds it completed.
    """

    def __init__(self, problem: str, study: int, batch: int) -> None:
        p = parse(problem)
        self.problem = problem
        self.study = study
        self.batch = batch
        self.model = SklearnModel(p.model, p.dataset, p.metric)
        self._count = 0
        # (visible loss, generalization loss) per evaluation, in call order.
        self.evaluations: list[tuple[float, float]] = []
        self.suggestions: list[dict] = []

    # bayesmark's TestFunction interface
    def get_api_config(self) -> dict:
        return self.model.get_api_config()

    @property
    def objective_names(self) -> tuple[str, ...]:
        return self.model.objective_names

    def evaluate(self, params: dict) -> tuple[float, float]:
        round_, index = divmod(self._count, self.batch)
        self._count += 1
        np.random.seed(eval_seed(self.problem, self.study, round_, index))
        self.suggestions.append(dict(params))
        try:
            # scikit-learn 1.1 warns on almost every evaluation (deprecations, convergence); thousands of
            # identical lines per study would drown the worker's log and cost time.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = self.model.evaluate(params)
        except Exception:
            # run_study turns a raising objective into inf; record it the same way.
            self.evaluations.append((np.inf, np.inf))
            raise
        self.evaluations.append((float(result[0]), float(result[1])))
        return result

    def rounds(self) -> list[list[tuple[float, float]]]:
        """Completed rounds only: a partial round at a cut-off is not part of the study."""
        full = len(self.evaluations) // self.batch * self.batch
        return [self.evaluations[i : i + self.batch] for i in range(0, full, self.batch)]
