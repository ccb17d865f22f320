"""A random search scored through the real path on bbob-demo and custom-demo: the queue, a worker, the
bwrap sandbox and the objective process in the suite's own environment; then what organizers do with
such a submission (export, reproduce, estimate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_score_e2e import RANDOM_SEARCH, bbo
from tests.scoring_helpers import recompute

pytestmark = pytest.mark.system


def score(spec: str, state: Path) -> dict:
    done = bbo(
        "admin", "score", str(RANDOM_SEARCH), "--spec", spec, "--backend", "bwrap", "--workers", "1",
        "--json", state=state, unsafe=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def bbob_scored(tmp_path_factory) -> tuple[Path, dict]:
    state = tmp_path_factory.mktemp("state")
    return state, score("bbob-demo", state)


def test_bbob_demo_scores_through_the_sandbox_and_the_objective_process(bbob_scored):
    _, report = bbob_scored
    assert report["state"] == "scored" and report["failure"] is None
    assert sorted(p["problem"] for p in report["problems"]) == sorted(
        ["bbob/f1-i1-d2", "bbob/f8-i1-d5", "bbob/f15-i1-d10", "bbob/f21-i1-d5"]
    )
    for problem in report["problems"]:
        assert problem["opt"] == pytest.approx(-8.0)  # COCO's final target on the log-precision loss
        for study in problem["studies"]:
            assert study["state"] == "complete" and len(study["losses"]) == 16
    assert abs(report["score"] - recompute(report)) < 1e-9
    # Random search at 16 x 8 in up to 10 dimensions: well short of the optimum, above the median point.
    assert 0 < report["score"] < 60
    assert {s["backend"] for s in report["provenance"]["sandboxes"]} == {"bwrap"}


def test_bbob_exports_json_and_refuses_bayesmark_s_format(bbob_scored, tmp_path):
    state, report = bbob_scored
    refused = bbo("admin", "export", report["id"], str(tmp_path / "b"), "--format", "bayesmark", state=state)
    assert refused.returncode != 0 and "--format json" in refused.stderr
    done = bbo("admin", "export", report["id"], str(tmp_path / "j"), state=state)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "j" / "studies.json").read_text())
    assert data["format"] == "bbo-arena-studies/1" and data["spec"] == "bbob-demo"
    study = data["problems"]["bbob/f1-i1-d2"]["studies"][0]
    assert len(study["losses"]) == 16 and set(study["suggestions"][0][0]) == {"x0", "x1"}
    # The export's curves are the leaderboard's: the mean final normalized score gives the score.
    finals = [s["normalized_curve"][-1] for p in data["problems"].values() for s in p["studies"]]
    assert 100 * (1 - sum(finals) / len(finals)) == pytest.approx(report["score"], abs=1e-9)


def test_a_bbob_study_reproduces_with_the_same_losses(bbob_scored):
    state, report = bbob_scored
    done = bbo("admin", "reproduce", report["id"], "bbob/f8-i1-d5", "1", "--json", state=state)
    assert done.returncode == 0, done.stderr
    rerun = json.loads(done.stdout)
    assert rerun["match"] and rerun["suggestions_match"] and rerun["rounds_compared"] == 16
    assert rerun["environment_differences"] == {}


def test_estimate_times_bbob_problems(bbob_scored):
    state, _ = bbob_scored
    done = bbo("admin", "estimate", "--spec", "bbob-demo", "--json", state=state)
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout)["table"]
    assert set(table["seconds_per_eval"]) >= {"bbob/f1-i1-d2", "bbob/f6-i3-d10"}
    assert max(table["seconds_per_eval"].values()) < 0.01  # microseconds, a round trip to the process


def test_custom_demo_scores_the_organizer_s_objectives_in_their_environment(tmp_path):
    report = score("custom-demo", tmp_path)
    assert report["state"] == "scored"
    assert sorted(p["problem"] for p in report["problems"]) == ["lab/branin", "lab/noisy-quadratic"]
    assert abs(report["score"] - recompute(report)) < 1e-9
    assert 50 < report["score"] < 100
