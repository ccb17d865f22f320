"""bench/web.py, tiny: 60 submissions of 6 teams, 20 streams, 2-second measurements, run as people run it
(`python -m bench web --json`, a subprocess with a scratch state folder, an embedded Redis and a gateway
process of its own). Checks the figures are there and sane, not their values against the targets."""

from __future__ import annotations

import math

import pytest

from tests.bench_helpers import run_bench

pytestmark = pytest.mark.system  # a served gateway process

FIGURES = (
    "leaderboard_p95_ms",
    "page_kb",
    "live_update_p95_s",
    "status_p99_ms_with_200_streams",
    "status_p99_ms_without_streams",
)


def test_a_tiny_web_bench_reports_sane_figures() -> None:
    figures = run_bench(
        ["bench", "web", "--json", "--submissions", "60", "--teams", "6", "--detailed", "5"]
        + ["--streams", "20", "--seconds", "2", "--rate", "100", "--board-rate", "20", "--samples", "5"]
    )
    for key in FIGURES:
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert set(figures["targets"]) == set(figures["within_targets"]) == set(FIGURES[:4])
    assert set(figures["page_kb_each"]) == {"leaderboard", "competition", "team", "submission"}
    assert figures["page_kb"] == max(figures["page_kb_each"].values())
    assert figures["live_update_samples"] == 5
    assert figures["streams_open_at_end"] == 20  # none of them ended or was refused along the way
    assert figures["status_errors"] == 0 and figures["gateway_tracebacks"] == 0
