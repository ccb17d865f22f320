"""bench/sandbox.py, tiny: two starts per backend and a two-problem overhead comparison on docker, run as
people run it (`python -m bench sandbox --json`). Checks the figures are there and consistent, never a
timing: a backend that cannot run here must be skipped with its reason instead."""

from __future__ import annotations

import pytest

from tests.bench_helpers import run_bench

pytestmark = pytest.mark.system


def test_a_tiny_sandbox_bench_reports_each_backend_or_why_not() -> None:
    figures = run_bench(
        ["bench", "sandbox", "--json", "--starts", "2", "--warm-starts", "1"]
        + ["--problems", "DT-iris-acc,lasso-diabetes-mae"]
        + ["--rounds", "1", "--batch", "2"],
        timeout=600,
    )
    assert figures["starts"] == 2
    for backend in ("docker", "bwrap"):
        if f"{backend}_skipped" in figures:
            assert figures[f"{backend}_skipped"], backend  # a reason, not an empty string
            continue
        p50, p95 = figures[f"{backend}_start_p50_s"], figures[f"{backend}_start_p95_s"]
        assert 0 < p50 <= p95, (backend, p50, p95)
        # The parts of a start add up to no more than the whole (the marker sits between them).
        parts = figures[f"{backend}_launch_p50_s"] + figures[f"{backend}_to_marker_p50_s"]
        assert parts <= p95 + 0.05, figures
        assert figures[f"{backend}_marker_to_hello_p50_s"] > 0
        assert figures[f"{backend}_warm_load_to_hello_p50_s"] > 0
    if "overhead_skipped" in figures:
        assert "docker_skipped" in figures
    else:
        assert figures["identical_losses"] is True
        assert figures["overhead_ratio"] > 0 and figures["overhead_raw_s"] > 0
    assert figures["target_start_p50_s"] == 0.5 and figures["target_overhead_ratio"] == 1.10
