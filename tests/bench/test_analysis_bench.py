"""bench/analysis.py: the spec it derives (fast), its tables (fast), and a tiny end-to-end run (system
tier: demo's feedback problems, 1 study, baselines of 4 random-search studies built on the run's fleet,
four teams through a served gateway and two workers) run as people run it."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.analysis import run_spec
from bench.analysis_report import Scored, markdown, summarize
from runtime.spec import load
from tests.bench_helpers import ROOT, run_bench

KIT_GIT = Path("/work/.mirror/rdturnermtl+bbo_challenge_starter_kit/repo/.git")
OWN = ROOT / "baselines" / "optimizers"


def test_the_run_spec_keeps_the_feedback_phase_with_its_overrides(tmp_path: Path) -> None:
    spec = load(run_spec("analysis2020", tmp_path, 2, 3))
    shipped = load("analysis2020")
    assert list(spec.phases) == ["feedback"]
    assert spec.phases["feedback"].problems == shipped.phases["feedback"].problems
    assert spec.phases["feedback"].studies == 2 and spec.baselines.random_studies == 3
    assert (spec.rounds, spec.batch, spec.obfuscate_names) == (16, 8, True)
    assert spec.limits == shipped.limits and spec.baselines.seed == shipped.baselines.seed
    # Beside the run's own spec file: the fleet build writes there and every command looks there.
    assert spec.baseline_plan().built_paths[0].parent == tmp_path
    demo = load(run_spec("demo", tmp_path, None, None))
    assert list(demo.phases) == ["feedback"] and demo.phases["feedback"].studies == 2


def test_the_summary_ranks_by_score_with_an_interval_around_it() -> None:
    good = Scored("good", "s1", {"a": [0.1, 0.2, 0.0], "b": [0.0, 0.1, 0.1]}, [0.5, 0.1], [0.6, 0.3])
    bad = Scored("bad", "s2", {"a": [0.5, 0.6, 0.4], "b": [0.3, 0.2, 0.4]}, [0.7, 0.4], [0.6, 0.3])
    summary = summarize([bad, good])
    assert list(summary["optimizers"]) == ["good", "bad"]
    for o in summary["optimizers"].values():
        assert o["ci_low"] <= o["score"] <= o["ci_high"]
    assert summary["optimizers"]["good"]["score"] == pytest.approx(100 * (1 - (0.1 + 0.2 / 3) / 2), abs=1e-3)
    assert summary["random_baseline_curve"] == [0.6, 0.3]
    table = markdown(summary, "t")
    assert "| 1 | good |" in table and "| a |" in table


def _starter_kit(tmp_path: Path) -> tuple[Path, str]:
    """The 2020 kit's examples exported where the kit's mirror is on this machine; otherwise folders in
    its layout holding this project's own optimizers (no external code needed)."""
    kit = tmp_path / "kit"
    kit.mkdir()
    if KIT_GIT.is_dir() and shutil.which("git") and shutil.which("tar"):
        archive = subprocess.run(
            ["git", f"--git-dir={KIT_GIT}", "archive", "HEAD", "example_submissions"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(kit)], input=archive, check=True)
        return kit, "the 2020 starter kit"
    for name, own in (
        ("random-search", "random_search"),
        ("skopt", "trust_region"),
        ("hyperopt", "random_search"),
    ):
        (kit / "example_submissions" / name).mkdir(parents=True)
        shutil.copyfile(OWN / own / "optimizer.py", kit / "example_submissions" / name / "optimizer.py")
    return kit, "the project's own optimizers"


@pytest.mark.system
def test_a_tiny_analysis_scores_four_optimizers_and_writes_its_results(tmp_path: Path) -> None:
    kit, source = _starter_kit(tmp_path)
    print(f"optimizers from {source}")
    out = tmp_path / "out"
    figures = run_bench(
        ["bench", "analysis", "--json", "--starter-kit", str(kit), "--spec", "demo"]
        + ["--studies", "1", "--baseline-studies", "4", "--workers", "2", "--out", str(out)],
        timeout=900,
    )
    demo = load("demo")
    assert figures["problems"] == list(demo.phases["feedback"].problems)
    assert figures["baselines"]["units"] == 4 * (4 + 1)  # per problem: 4 random-search studies, 1 strong run
    optimizers = figures["optimizers"]
    assert sorted(optimizers) == ["hyperopt", "random-search", "skopt", "trust-region"]
    assert sorted(o["rank"] for o in optimizers.values()) == [1, 2, 3, 4]
    for name, o in optimizers.items():
        assert math.isfinite(o["score"]) and o["ci_low"] <= o["score"] <= o["ci_high"], name
        assert o["studies"] == 4 and sorted(o["problems"]) == sorted(figures["problems"]), name
        assert len(o["curve"]) == demo.rounds, name
    assert len(figures["random_baseline_curve"]) == demo.rounds
    assert all(len(figures["sources"][name]["optimizer_sha256"]) == 64 for name in optimizers)
    for name in ("results.md", "convergence.png", "results.json", "baselines.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"
