"""An organizer's objective files as a suite, in the worker's own interpreter (no requirements): problem
names, the baseline rule, and studies through `objective()`."""

from __future__ import annotations

import math

import pytest

from suites import objective_process
from suites.base import BaselineRule, SuiteDef
from suites.errors import ObjectiveFault, ObjectiveRaised, UnknownProblem
from suites.python_objective import PythonSuite, declares_optimum

BOWL = """
import numpy as np

api_config = {
    "x": {"type": "real", "space": "linear", "range": (-2.0, 2.0)},
    "n": {"type": "int", "space": "linear", "range": (1, 5)},
    "kind": {"type": "cat", "values": ["a", "b"]},
}
optimum = 0.0


def evaluate(params):
    if params["n"] == 5:
        raise ArithmeticError("n = 5 is out of the model's reach")
    return params["x"] ** 2 + (params["kind"] == "b") + float(np.random.exponential(0.01))
"""

NO_OPTIMUM = """
api_config = {"y": {"type": "real", "space": "log", "range": (1e-3, 1.0)}}
optimum = None


def evaluate(params):
    return params["y"]
"""


@pytest.fixture(autouse=True)
def _close_processes():
    yield
    objective_process.close_all()


def lab(**objectives: str) -> PythonSuite:
    return PythonSuite(SuiteDef("lab", "python", objectives), call_timeout_s=10.0)


def test_problems_are_the_definitions_files() -> None:
    suite = lab(bowl=BOWL, flat=NO_OPTIMUM)
    assert suite.name == "lab" and suite.catalogue() == ("lab/bowl", "lab/flat")
    suite.check("lab/bowl")
    for unknown in ("lab/other", "bowl", "other/bowl", "lab/"):
        with pytest.raises(UnknownProblem, match="its problems: bowl, flat"):
            suite.check(unknown)
    with pytest.raises(ValueError, match="not 'python'"):
        PythonSuite(SuiteDef("lab", "docker", {"bowl": BOWL}))


def test_the_baseline_rule_is_the_known_optimum_for_each_file_that_declares_one() -> None:
    mixed = lab(bowl=BOWL, flat=NO_OPTIMUM)
    assert mixed.rule_for("lab/bowl") is BaselineRule.KNOWN_OPTIMUM
    assert mixed.rule_for("lab/flat") is BaselineRule.STRONG_RUN
    assert lab(bowl=BOWL).baseline_rule is BaselineRule.KNOWN_OPTIMUM  # the suite's own, for its docs
    assert declares_optimum("optimum: float = -1.5\n") and declares_optimum("optimum = f()\n")
    assert not declares_optimum("def optimum():\n    return 0\n") and not declares_optimum("optimum = (\n")


def test_a_study_evaluates_seeded_records_rounds_and_scores_a_raise_inf() -> None:
    suite = lab(bowl=BOWL, flat=NO_OPTIMUM)
    assert suite.api_config("lab/bowl")["kind"] == {"type": "cat", "values": ["a", "b"]}
    assert suite.known_optimum("lab/bowl") == 0.0 and suite.known_optimum("lab/flat") is None

    def study(number: int) -> tuple[list, list]:
        objective = suite.objective("lab/bowl", study=number, batch=2)
        losses = [objective.evaluate({"x": 0.5, "n": 1, "kind": "a"}) for _ in range(3)]
        with pytest.raises(ObjectiveRaised, match="ArithmeticError: n = 5"):
            objective.evaluate({"x": 0.5, "n": 5, "kind": "a"})
        return losses, objective.rounds()

    losses, rounds = study(0)
    assert len({loss for loss, _ in losses}) == 3  # each slot its own noise
    assert rounds == [losses[0:2], [losses[2], (math.inf, math.inf)]]
    assert study(0) == (losses, rounds)  # the same slots, the same noise
    assert study(1)[0] != losses


def test_the_environment_is_the_workers_own_when_no_requirements_are_given() -> None:
    described = lab(bowl=BOWL).describe()
    assert described["environment"] == "worker" and described["backend"] == "python"
    assert described["numpy"] == "1.23.5"


def test_a_space_the_checker_refuses_is_a_fault_not_the_teams() -> None:
    bad = 'api_config = {"x": {"type": "real", "range": (1.0, 0.0)}}\ndef evaluate(p):\n    return 0.0\n'
    with pytest.raises(ObjectiveFault, match="lab/bad"):
        lab(bad=bad).api_config("lab/bad")


def test_a_file_that_does_not_load_is_a_fault_when_the_suite_is_used() -> None:
    suite = lab(bowl=BOWL, broken="import no_such_module_here\n")
    with pytest.raises(ObjectiveFault, match="loading broken: ModuleNotFoundError"):
        suite.api_config("lab/bowl")
