"""An organizer's objective under the harness, driven by a team's optimizer: where its own raising is the
team's poor point (inf, as bayesmark's models), and where a lost objective process is the platform's,
never charged to the team and never passed off as inf losses."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.spec import Spec, load
from suites import objective_process
from tests.conftest import SUBMISSIONS
from workers.harness import SandboxInfrastructureError, run_one_study
from workers.optimizer_process import OptimizerProcess
from workers.sandbox import select

SPACE = 'api_config = {"x": {"type": "real", "space": "linear", "range": (0.0, 1.0)}}\n'
RAISES = (
    SPACE
    + """

def evaluate(params):
    if params["x"] > 0.5:
        raise ValueError("undefined above one half")
    return params["x"]
"""
)
DIES = (
    SPACE
    + """
import os


def evaluate(params):
    if params["x"] > 0.3:
        os._exit(3)  # the objective process dies under the study
    return params["x"]
"""
)


def spec_of(tmp_path: Path, source: str) -> Spec:
    (tmp_path / "objective.py").write_text(source)
    path = tmp_path / "spec.toml"
    path.write_text(
        """
name = "objective-under-harness"
rounds = 4
batch = 4
suite = "lab"
[suites.lab]
kind = "python"
objectives = { square = "objective.py" }
[phases.feedback]
problems = ["square"]
studies = 1
[limits]
suggest_budget_s = 30.0
call_timeout_s = 10.0
"""
    )
    return load(path)


def study(spec: Spec):
    backend = select("process")
    lines: list[str] = []
    proc = OptimizerProcess(backend.launch(SUBMISSIONS / "random_search", spec.limits), log=lines.append)
    return run_one_study(proc.start(), "lab/square", 0, spec, backend.describe(), lines.append)


@pytest.fixture(autouse=True)
def _processes(state_dir, unsafe_ok):
    yield
    objective_process.close_all()


def test_the_objective_raising_on_a_point_scores_it_inf_and_the_study_goes_on(tmp_path):
    result = study(spec_of(tmp_path, RAISES))
    assert result.state.value == "complete" and len(result.losses) == 4
    points = [p["x"] for r in result.suggestions for p in r]
    losses = [v for r in result.losses for v in r]
    assert any(x > 0.5 for x in points) and any(x <= 0.5 for x in points)
    for x, loss in zip(points, losses, strict=True):
        assert (loss is None) if x > 0.5 else loss == pytest.approx(x)  # None is +inf in the store
    assert result.packages["lab:backend"] == "python"  # what evaluated it, for reproduce


def test_a_lost_objective_process_is_the_platform_s_failure_not_an_inf_loss(tmp_path):
    # bayesmark's study loop would score a raising objective inf and go on: the lost process must leave it
    # as the platform's failure (the job is retried and refunded, the team is not charged).
    with pytest.raises(SandboxInfrastructureError, match="objective process"):
        study(spec_of(tmp_path, DIES))
