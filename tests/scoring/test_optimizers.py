"""The reference optimizers: through bayesmark's run_study, in bounds, repeatable, never raising."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from bayesmark.experiment import run_study
from bayesmark.sklearn_funcs import TestFunction
from bayesmark.space import JointSpace

from baselines.build import RANDOM_SEARCH_FILE, STRONG_FILE, load_optimizer_class
from suites.bayesmark_suite import BayesmarkObjective

OPTIMIZERS = {"random_search": RANDOM_SEARCH_FILE, "trust_region": STRONG_FILE}


def _check_types(api_config: dict, points: list[dict]) -> None:
    for point in points:
        assert set(point) == set(api_config)
        for name, value in point.items():
            kind = api_config[name]["type"]
            if kind == "int":
                assert type(value) is int, (name, value)
                low, high = api_config[name]["range"]
                assert low <= value <= high
            elif kind == "real":
                assert type(value) is float, (name, value)
                low, high = api_config[name]["range"]
                assert low <= value <= high
            elif kind == "bool":
                assert type(value) is bool, (name, value)
            else:
                assert value in api_config[name]["values"], (name, value)


@pytest.mark.parametrize("which", OPTIMIZERS)
@pytest.mark.parametrize("problem", ["DT-iris-acc", "lasso-diabetes-mae"])
def test_runs_through_run_study(which, problem):
    opt_class = load_optimizer_class(OPTIMIZERS[which])
    objective = BayesmarkObjective(problem, 0, 4)
    api_config = objective.get_api_config()
    np.random.seed(3)
    optimizer = opt_class(api_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evals, _timing, log = run_study(optimizer, objective, 4, 4, n_obj=2)  # validates bounds itself
    assert evals.shape == (4, 4, 2) and np.all(np.isfinite(evals))
    for points in log:
        JointSpace(api_config).validate(points)
        _check_types(api_config, points)


@pytest.mark.parametrize("which", OPTIMIZERS)
def test_repeatable_under_the_global_seed(which):
    opt_class = load_optimizer_class(OPTIMIZERS[which])
    api_config = BayesmarkObjective("DT-iris-acc", 0, 4).get_api_config()

    def trace() -> list[list[dict]]:
        np.random.seed(11)
        optimizer = opt_class(api_config)
        rng = np.random.RandomState(0)
        out = []
        for _ in range(4):
            points = optimizer.suggest(4)
            optimizer.observe(points, list(rng.uniform(-1, 0, size=4)))
            out.append(points)
        return out

    assert trace() == trace()


class Hostile(TestFunction):
    """Every kind of variable bayesmark knows, and losses that are sometimes inf or NaN."""

    objective_names = ("_visible_to_opt", "generalization")

    def __init__(self, n_real: int = 9) -> None:
        self.n_real = n_real
        self.config = {
            f"x{i}": {"type": "real", "space": "log" if i % 2 else "linear", "range": (1e-3, 10.0)}
            for i in range(n_real)
        }
        self.config |= {
            "n": {"type": "int", "space": "linear", "range": (1, 50)},
            "k": {"type": "int", "space": "log", "range": (1, 1000)},
            "fixed": {"type": "int", "space": "linear", "range": (3, 3)},
            "c": {"type": "cat", "values": ["a", "b", "c"]},
            "o": {"type": "ordinal", "values": ["1", "2", "4"]},
            "b": {"type": "bool"},
        }
        self.rng = np.random.RandomState(0)

    def get_api_config(self) -> dict:
        return self.config

    def evaluate(self, params: dict) -> np.ndarray:
        draw = self.rng.rand()
        if draw < 0.1:
            return np.array([np.inf, np.inf])
        if draw < 0.15:
            return np.array([np.nan, np.nan])
        value = sum((np.log(params[f"x{i}"]) - 0.2 * i) ** 2 for i in range(self.n_real))
        value += (
            (params["c"] != "b") + params["b"] + abs(params["n"] - 17) / 10 + abs(np.log(params["k"]) - 3)
        )
        return np.array([value, value])


def test_trust_region_survives_hostile_problem():
    opt_class = load_optimizer_class(STRONG_FILE)
    problem = Hostile()
    np.random.seed(5)
    optimizer = opt_class(problem.get_api_config())
    evals, _timing, log = run_study(optimizer, problem, 8, 8, n_obj=2)
    assert evals.shape == (8, 8, 2)
    for points in log:
        _check_types(problem.config, points)
    # Garbage observations are dropped, not raised.
    optimizer.observe([{"nope": 1}], [1.0])
    optimizer.observe(log[0], [1.0])  # wrong length
    _check_types(problem.config, optimizer.suggest(8))


def test_trust_region_falls_back_when_the_gp_fails(monkeypatch):
    opt_class = load_optimizer_class(STRONG_FILE)
    api_config = Hostile(2).get_api_config()
    np.random.seed(1)
    optimizer = opt_class(api_config)
    rng = np.random.RandomState(0)
    for _ in range(3):
        points = optimizer.suggest(4)
        optimizer.observe(points, list(rng.uniform(size=4)))

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("not positive definite")

    monkeypatch.setattr(optimizer, "_fit", broken)
    points = optimizer.suggest(4)
    assert len(points) == 4
    _check_types(api_config, points)


def test_trust_region_all_losses_infinite():
    opt_class = load_optimizer_class(STRONG_FILE)
    api_config = Hostile(2).get_api_config()
    np.random.seed(2)
    optimizer = opt_class(api_config)
    for _ in range(4):
        points = optimizer.suggest(4)
        optimizer.observe(points, [np.inf] * 4)
    _check_types(api_config, optimizer.suggest(4))


def test_trust_region_suggest_is_fast():
    """A batch of 8 with 120 observations in 18 warped dimensions: well under a second."""
    opt_class = load_optimizer_class(STRONG_FILE)
    problem = Hostile()
    np.random.seed(4)
    optimizer = opt_class(problem.get_api_config())
    run_study(optimizer, problem, 15, 8, n_obj=2)
    started = time.perf_counter()
    points = optimizer.suggest(8)
    elapsed = time.perf_counter() - started
    assert len(points) == 8
    assert elapsed < 1.0, f"suggest took {elapsed:.2f} s"
