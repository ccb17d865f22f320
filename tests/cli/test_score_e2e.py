"""`bbo admin score` end to end: the README's main job, through the real queue, workers and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SUBMISSIONS
from tests.scoring_helpers import recompute

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
RANDOM_SEARCH = ROOT / "baselines" / "optimizers" / "random_search"


def bbo(
    *args: str, state: Path, unsafe: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"BBO_REDIS_URL", "BBO_ALLOW_UNSAFE_SANDBOX"}}
    env["BBO_STATE_DIR"] = str(state)
    if unsafe:
        env["BBO_ALLOW_UNSAFE_SANDBOX"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    done = bbo(
        "admin",
        "score",
        str(RANDOM_SEARCH),
        "--spec",
        "demo",
        "--backend",
        "process",
        "--workers",
        "2",
        "--json",
        state=state,
    )
    assert done.returncode == 0, done.stderr
    return state, json.loads(done.stdout), done.stderr


def test_random_search_scores_and_the_score_recomputes_exactly(scored):
    _, report, stderr = scored
    assert report["state"] == "scored" and report["failure"] is None
    assert report["progress"] == {"studies_done": 8, "studies_total": 8}
    assert [p["problem"] for p in sorted(report["problems"], key=lambda p: p["problem"])] == sorted(
        ["DT-iris-acc", "lasso-diabetes-mae", "SVM-wine-nll", "RF-iris-acc"]
    )
    for problem in report["problems"]:
        assert problem["clip"] > problem["opt"]
        assert [s["study"] for s in problem["studies"]] == [0, 1]
        for study in problem["studies"]:
            assert study["state"] == "complete"
            assert len(study["losses"]) == 8 and all(len(r) == 4 for r in study["losses"])
    assert abs(report["score"] - recompute(report)) < 1e-9
    assert 50 < report["score"] < 100  # random search sits near, not at, the best-known values
    assert "studies" in stderr  # the progress bar went to stderr


def test_export_reads_back_in_bayesmark(scored, tmp_path):
    """After the scoring process (and the Redis it owned) exited, the data replays from the AOF."""
    from bayesmark import constants as cc
    from bayesmark.experiment_aggregate import concat_experiments, load_experiments
    from bayesmark.serialize import XRSerializer

    state, report, _ = scored
    done = bbo("admin", "export", report["id"], str(tmp_path / "out"), "--format", "bayesmark", state=state)
    assert done.returncode == 0, done.stderr
    db_root = next(p for p in (tmp_path / "out").rglob("eval") if p.is_dir()).parent.parent
    db = next(p.name for p in db_root.iterdir() if p.is_dir())
    uuids = XRSerializer.get_uuids(str(db_root), db=db, key=cc.EVAL)
    assert len(uuids) == 8
    perf, _, _, _ = concat_experiments(load_experiments(uuids, str(db_root), db))
    assert perf[cc.VISIBLE_TO_OPT].sizes[cc.TEST_CASE] == 4


def test_process_backend_is_refused_without_the_opt_in(tmp_path):
    done = bbo(
        "admin",
        "score",
        str(RANDOM_SEARCH),
        "--spec",
        "demo",
        "--backend",
        "process",
        state=tmp_path,
        unsafe=False,
    )
    assert done.returncode == 2
    assert "BBO_ALLOW_UNSAFE_SANDBOX=1" in done.stderr
    assert not (tmp_path / "redis").exists()  # refused before anything was stored


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spec", "no-such-spec"], "no spec named"),
        (["--spec", "demo", "--phase", "warmup"], "no phase 'warmup'"),
        (["--spec", "demo", "--backend", "vm"], "unknown sandbox backend"),
    ],
)
def test_bad_arguments_get_one_line_errors(tmp_path, args, message):
    done = bbo("admin", "score", str(RANDOM_SEARCH), *args, state=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize(
    ("folder", "message"),
    [("syntax_error", "syntax error in optimizer.py line 3"), ("missing", "does not exist")],
)
def test_bad_submissions_are_rejected_at_intake(tmp_path, folder, message):
    done = bbo(
        "admin", "score", str(SUBMISSIONS / folder), "--spec", "demo", "--backend", "process", state=tmp_path
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "redis").exists()


def test_submission_without_an_optimizer_class_fails_with_a_typed_cause(tmp_path):
    done = bbo(
        "admin",
        "score",
        str(SUBMISSIONS / "no_class"),
        "--spec",
        "demo",
        "--backend",
        "process",
        "--json",
        state=tmp_path,
    )
    assert done.returncode == 0, done.stderr  # the command did its job: it reports a failed submission
    report = json.loads(done.stdout)
    assert report["state"] == "failed" and report["score"] is None
    assert report["failure"]["cause"] == "invalid_submission"
    assert "experiment_main" in report["failure"]["message"]
