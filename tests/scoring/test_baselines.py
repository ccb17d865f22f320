"""Baseline builds (a tiny real one), the baseline file, loading it back, the shipped demo file, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from bayesmark.constants import PERF_BEST, PERF_CLIP, PERF_MEAN, PERF_MED
from bayesmark.experiment_baseline import compute_baseline
from typer.testing import CliRunner

from baselines.build import (
    _perf_array,
    build_baselines,
    plan_units,
    run_units,
    strong_rounds,
    write_baseline_file,
)
from baselines.store import BaselineError, MissingBaseline, load_baselines, shipped_path
from cli.baselines_cmd import app
from runtime.spec import load
from tests.baseline_helpers import FAST, tiny_spec, write_spec_toml


@pytest.fixture(scope="module")
def spec():
    return tiny_spec(rounds=2, batch=2, random_studies=2, strong_rounds=3)


@pytest.fixture(scope="module")
def built(spec):
    return build_baselines(spec.baseline_plan(), workers=1)


def test_file_fields(spec, built):
    assert built["format"] == 1
    assert built["spec"] == "tiny" and built["spec_hash"] == spec.hash
    assert built["version"].startswith(spec.hash + "-")
    assert (built["rounds"], built["batch"]) == (2, 2)
    assert built["created_at"].endswith("Z")
    provenance = built["provenance"]
    assert {"bayesmark", "numpy", "scikit-learn", "scipy", "python"} <= set(provenance["packages"])
    assert provenance["random_studies"] == 2
    assert provenance["strong_rounds"] == 4  # 3 rounded up to whole studies of 2 rounds
    assert provenance["strong_optimizer"]
    assert set(built["problems"]) == set(FAST)


def test_problem_figures(built):
    for name, entry in built["problems"].items():
        assert entry["clip"] > entry["opt"], name
        # opt is the best loss of any run, padded just below it (bayesmark's PAD_FACTOR)
        best = min(entry["strong_best"], entry["random_best"])
        assert entry["opt"] < best and best - entry["opt"] < 1e-6 * max(1.0, abs(best))
        for curve in ("median", "mean", "mean_normed"):
            assert len(entry[curve]) == 2
            assert np.all(np.diff(entry[curve]) <= 0), (name, curve)
        assert all(0.0 <= v <= 1.0 for v in entry["mean_normed"])
        assert entry["mean"][0] <= entry["clip"]
        assert entry["generalization"]["clip"] > entry["generalization"]["opt"]


def test_strong_rounds_rule(spec):
    assert strong_rounds(spec.baseline_plan()) == 4
    assert strong_rounds(tiny_spec(rounds=3, strong_rounds=0).baseline_plan()) == 12  # 0 means 4 x rounds


def test_build_is_reproducible_and_parallel_safe(spec, built):
    # Same seeds, same noise stream: a rebuild, even across worker processes, gives identical figures.
    again = build_baselines(spec.baseline_plan(), workers=2)
    assert again["problems"] == built["problems"]
    assert again["version"] == built["version"]


def test_dataset_is_bayesmarks_baseline(spec, tmp_path):
    results = run_units(plan_units(spec.baseline_plan()), workers=1)
    expected = compute_baseline(_perf_array(spec.baseline_plan(), results, 0))
    from baselines.build import summarize

    problems, _ = summarize(spec.baseline_plan(), results)
    data = {"format": 1, "version": "v", "spec": spec.name, "spec_hash": spec.hash, "rounds": 2, "batch": 2}
    path = write_baseline_file(data | {"problems": problems}, tmp_path / "b.json")
    dataset = load_baselines(spec.baseline_plan(), path).dataset()
    for var in (PERF_MED, PERF_MEAN, PERF_CLIP, PERF_BEST):
        xr.testing.assert_equal(dataset[var], expected[var].sel({"function": dataset["function"]}))


def test_missing_baseline_messages(spec, built, tmp_path):
    path = write_baseline_file(built, tmp_path / "tiny.json")
    baselines = load_baselines(spec.baseline_plan(), path)
    assert baselines.version == built["version"]
    assert baselines.problem(FAST[0]).clip == built["problems"][FAST[0]]["clip"]
    with pytest.raises(MissingBaseline) as exc:
        baselines.problem("RF-wine-nll")
    assert "RF-wine-nll" in str(exc.value) and "bbo admin baselines build --spec tiny" in str(exc.value)
    with pytest.raises(MissingBaseline, match="bbo admin baselines build --spec tiny"):
        load_baselines(spec.baseline_plan(), tmp_path / "absent.json")
    with pytest.raises(BaselineError, match="rounds"):
        load_baselines(tiny_spec(rounds=5, batch=2, random_studies=2, strong_rounds=3).baseline_plan(), path)


def test_shipped_demo_baselines():
    demo = load("demo")
    assert shipped_path("demo").is_file(), "ship it: bbo admin baselines build --spec demo --out PATH"
    baselines = load_baselines(demo.baseline_plan(), shipped_path("demo"))
    # Built for this spec's problems, study shape and baseline settings; its hash may be an older one of
    # the same spec (quotas, limits and log settings change the hash, not a baseline: check_compatible).
    assert baselines.spec_name == demo.name
    baselines.check_compatible(demo.baseline_plan())
    assert (baselines.rounds, baselines.batch) == (demo.rounds, demo.batch)
    for problem in demo.all_problems():
        entry = baselines.problem(problem)
        assert entry.clip > entry.opt
        assert len(entry.mean_normed) == demo.rounds
    assert baselines.dataset().sizes["function"] == len(demo.all_problems())


runner = CliRunner()


def test_cli_show_demo_json(tmp_path, monkeypatch):
    monkeypatch.setenv("BBO_STATE_DIR", str(tmp_path))  # nothing built: the shipped file is shown
    result = runner.invoke(app, ["show", "--spec", "demo", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["usable"] is True and shown["spec"] == "demo"
    assert shown["path"] == str(shipped_path("demo"))
    assert set(shown["problems"]) == set(load("demo").all_problems())


def test_cli_errors_exit_2():
    result = runner.invoke(app, ["show", "--spec", "no-such-spec"])
    assert result.exit_code == 2
    assert "no spec named" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["build", "--spec", "no-such-spec"])
    assert result.exit_code == 2


def test_cli_build_json(spec, tmp_path):
    toml = write_spec_toml(tmp_path / "tiny.toml", spec)
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["build", "--spec", str(toml), "--workers", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["path"] == str(out) and out.is_file()
    assert json.loads(out.read_text())["version"] == printed["version"]
