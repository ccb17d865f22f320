"""Baselines of suites other than bayesmark's: built locally and on the fleet alike, a known optimum in
place of the strong run, and files that score like bayesmark's."""

from __future__ import annotations

from pathlib import Path

import pytest

from baselines.build import build_baselines, plan_units
from baselines.store import Baselines
from queue_schema.connection import rq_connection
from runtime import baseline_fleet, versions
from runtime.spec import Spec, load
from workers.fair_worker import FairSimpleWorker

KNOWN = """
api_config = {"x": {"type": "real", "space": "linear", "range": (-2.0, 2.0)},
              "k": {"type": "int", "space": "linear", "range": (1, 5)}}
optimum = 0.0


def evaluate(params):
    return (params["x"] - 0.5) ** 2 + (params["k"] - 3) ** 2
"""
UNKNOWN = """
import random

api_config = {"x": {"type": "real", "space": "log", "range": (0.01, 10.0)}}


def evaluate(params):
    return abs(params["x"] - 1.0) + random.random() * 0.01  # seeded by the platform before each call
"""


@pytest.fixture()
def spec(tmp_path: Path) -> Spec:
    (tmp_path / "known.py").write_text(KNOWN)
    (tmp_path / "unknown.py").write_text(UNKNOWN)
    path = tmp_path / "lab.toml"
    path.write_text(
        """
name = "lab-test"
rounds = 3
batch = 2
suite = "lab"
[suites.lab]
kind = "python"
objectives = { known = "known.py", unknown = "unknown.py" }
[phases.feedback]
problems = ["known", "unknown"]
studies = 1
[limits]
suggest_budget_s = 10.0
call_timeout_s = 5.0
[baselines]
random_studies = 3
strong_rounds = 3
"""
    )
    return load(path)


def test_the_known_optimum_stands_in_for_the_strong_run(spec):
    plan = spec.baseline_plan()
    strong = [u.problem for u in plan_units(plan) if u.kind == "strong"]
    assert strong == ["lab/unknown"]  # the file without `optimum` gets the long run
    data = build_baselines(plan, workers=1)
    baselines = Baselines(data)
    known = baselines.problem("lab/known")
    assert known.strong_best == 0.0 and -1e-300 < known.opt <= 0.0  # bayesmark's pad below the optimum
    assert known.clip > known.random_best > known.opt
    unknown = baselines.problem("lab/unknown")
    assert unknown.opt <= unknown.strong_best and unknown.opt <= unknown.random_best
    assert data["provenance"]["suites"]["lab"]["suite"] == "lab"
    # Repeatable: the same seeds give the same file.
    assert build_baselines(plan, workers=1)["problems"] == data["problems"]


def test_the_fleet_build_carries_the_suite_and_equals_the_local_one(r, spec):
    plan = spec.baseline_plan()
    started = baseline_fleet.start(r, plan)
    # The workers run from the payload alone: the organizer's sources travel in it.
    FairSimpleWorker(connection=rq_connection()).work(burst=True, logging_level="WARNING")
    assert baseline_fleet.follow(r, plan, poll_s=0.01).done == started.total
    fleet = baseline_fleet.aggregate(r, plan)
    assert fleet["problems"] == build_baselines(plan, workers=1)["problems"]


def test_shipped_suite_specs_have_baselines_that_fit():
    for name in ("bbob-demo", "custom-demo"):
        spec = load(name)
        baselines = versions.baselines_for(spec, required=spec.all_problems())
        assert baselines.spec_hash == spec.hash
        for problem in spec.all_problems():
            entry = baselines.problem(problem)
            assert entry.clip > entry.opt and 0 < entry.mean_normed[-1] < 1
