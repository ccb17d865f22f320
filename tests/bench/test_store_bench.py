"""bench/store.py, tiny: 2 feedback submissions and 1 finalist on 2 problems of each neurips2020 phase (16 x 8
studies, real spaces), run as people run it (`python -m bench store --json`, a subprocess with a scratch
state folder and an embedded Redis of its own). Checks the figures are there and sane, not timings."""

from __future__ import annotations

from tests.bench_helpers import run_bench

FIGURES = (
    "redis_bytes_per_scored_submission",
    "redis_bytes_per_scored_submission_hot",
    "redis_bytes_per_evaluation",
    "redis_bytes_per_evaluation_hot",
    "redis_bytes_by_family_hot",
    "redis_bytes_per_finalist_hot",
    "used_memory_per_submission_laid_bytes",
    "archive_bytes_per_submission",
    "archive_s_per_submission",
    "seed_scale_redis_gb",
    "seed_scale_redis_gb_hot",
    "export_identical",
    "archived",
)


def test_a_tiny_store_bench_reports_sane_figures() -> None:
    figures = run_bench(
        ["bench", "store", "--json", "--submissions", "2", "--finalists", "1"]
        + ["--problems", "2", "--final-studies", "4"]
    )
    print(figures)
    for key in FIGURES:
        assert key in figures, key
    assert figures["feedback_shape"] == "2 problems x 10 studies"
    assert figures["study_shape"] == "16 x 8"
    # Hot, a study of 128 evaluations (points, two losses each, provenance) is stored in Redis.
    hot = figures["redis_bytes_per_scored_submission_hot"]
    assert hot > 0 and figures["redis_bytes_per_evaluation_hot"] == round(hot / (2 * 10 * 128), 2)
    assert {"sub", "studies", "events", "version", "jobs", "done"} <= set(
        figures["redis_bytes_by_family_hot"]
    )
    assert figures["redis_expiring_bytes_by_family_hot"].keys() >= {"log"}  # job logs carry their retention
    assert figures["used_memory_per_submission_laid_bytes"] > 0
    assert figures["redis_bytes_per_finalist_hot"] > 0
    assert figures["seed_scale_redis_gb_hot"] > 0
    if figures["archived"]:
        assert figures["not_archived"] == []
        assert figures["export_identical"] is True
        assert len(figures["export_checked"]) == 2  # one feedback submission, one finalist
        assert figures["archive_bytes_per_submission"] > 0 and figures["archive_s_per_submission"] >= 0
        # The study data left Redis: what stays is smaller, and holds no study hash.
        assert 0 < figures["redis_bytes_per_scored_submission"] < hot
        assert "studies" not in figures["redis_bytes_by_family"]
        assert figures["seed_scale_redis_gb"] < figures["seed_scale_redis_gb_hot"]
    else:
        assert "runtime.archiver" in figures["archive_skipped"]
        assert figures["export_identical"] is None and figures["archive_bytes_per_submission"] is None
        assert figures["redis_bytes_per_scored_submission"] == hot  # nothing leaves Redis today
