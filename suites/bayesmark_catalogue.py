"""bayesmark's problem catalogue: 9 models x 6 datasets x the metrics of each dataset's task = 108 problems.

Built from bayesmark's own constants, without importing its scikit-learn layer, so that loading a spec
stays fast; a test checks the result against bayesmark's own `get_problem_type`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from bayesmark.constants import DATA_LOADER_NAMES, MODEL_NAMES, SCORERS_CLF, SCORERS_REG

from suites.errors import UnknownProblem

# bayesmark.data.DATA_LOADERS' task of each built-in dataset.
_REGRESSION_DATASETS = frozenset({"boston", "diabetes"})


@dataclass(frozen=True, order=True)
class Problem:
    model: str
    dataset: str
    metric: str

    @property
    def name(self) -> str:
        # bayesmark's SklearnModel.test_case_str joins with ARG_DELIM ("_"); the command contract spells
        # problems MODEL-DATASET-METRIC, which is unambiguous because metrics and datasets hold no dash.
        return f"{self.model}-{self.dataset}-{self.metric}"

    @property
    def test_case(self) -> str:
        """bayesmark's own name for the problem (the `function` coordinate of its data)."""
        return f"{self.model}_{self.dataset}_{self.metric}"

    @property
    def is_regression(self) -> bool:
        return self.dataset in _REGRESSION_DATASETS


# Seconds per evaluation by model, single-threaded, from the per-study timings in DESIGN.md: only used
# for problems that no measured or shipped cost table covers.
_COARSE_SECONDS = {
    "kNN": 2.0,
    "SVM": 1.5,
    "ada": 1.0,
    "MLP-adam": 0.45,
    "MLP-sgd": 0.4,
    "RF": 0.2,
    "DT": 0.02,
    "lasso": 0.02,
    "linear": 0.02,
}


def coarse_seconds(problem: str) -> float:
    parsed = parse(problem)
    seconds = _COARSE_SECONDS.get(parsed.model, 0.2)
    return seconds * (2.0 if parsed.dataset == "digits" else 1.0)


def metrics_for(dataset: str) -> tuple[str, ...]:
    return SCORERS_REG if dataset in _REGRESSION_DATASETS else SCORERS_CLF


@cache
def all_problems() -> tuple[Problem, ...]:
    return tuple(
        sorted(
            Problem(model, dataset, metric)
            for model in MODEL_NAMES
            for dataset in DATA_LOADER_NAMES
            for metric in metrics_for(dataset)
        )
    )


@cache
def by_name() -> dict[str, Problem]:
    return {p.name: p for p in all_problems()}


def parse(name: str) -> Problem:
    """MODEL-DATASET-METRIC -> Problem; models may hold a dash (MLP-adam), so split from the right."""
    problem = by_name().get(name)
    if problem is None:
        raise UnknownProblem(
            f"unknown problem {name!r}: expected MODEL-DATASET-METRIC from bayesmark's catalogue"
        )
    return problem
