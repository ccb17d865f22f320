"""The soak benchmark, shortened: real gateway, real workers, real teams uploading over HTTP for half a
minute. Runs `python -m bench.soak --json` in a subprocess with a state folder of its own (its own embedded
Redis), as people run it, and checks the figures' shape and that nothing accepted was failed or lost.
"""

from __future__ import annotations

import pytest

from tests.bench_helpers import run_bench

pytestmark = pytest.mark.system

PROCESSES = {"gateway", "worker-0", "worker-1", "redis-server"}


def test_a_short_soak_scores_everything_it_accepts():
    figures = run_bench(
        ["bench.soak", "--json", "--minutes", "0.5", "--warmup", "0.25"]
        + ["--teams", "3", "--interval", "10", "--drain", "60", "--sample-s", "2"]
    )
    print(figures)
    for key in (
        "scored_per_hour",
        "p50_time_to_score_s",
        "p95_time_to_score_s",
        "submissions",
        "scored",
        "failed",
        "left_queued",
        "left_running",
        "redis_bytes_per_submission",
        "run_s",
    ):
        assert key in figures, key
    assert set(figures["max_rss_growth_mb"]) == PROCESSES
    assert set(figures["rss_slope_mb_per_min"]) == PROCESSES
    # 3 teams uploading every 10 s for 45 s: each team's first upload falls within its first interval.
    assert figures["submissions"] >= 3
    assert figures["refused"] == figures["failed"] == figures["stopped"] == figures["missing"] == 0
    # Everything accepted is scored or still on its way when the (bounded) drain ends.
    left = figures["left_queued"] + figures["left_running"]
    print(f"left unfinished at the end: {left}")
    assert figures["scored"] + left == figures["submissions"]
    assert figures["scored"] >= 1
    if figures["submissions_in_load"]:
        assert figures["redis_bytes_per_submission"] is not None
