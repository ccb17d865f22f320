"""The autoscaler simulator: the seed trace's shape, small replays' figures, the CLI, the full trace."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscaler import simulator, traces
from autoscaler.policy import PolicyConfig
from cli.main import app

# matplotlib 3.9 calls pyparsing's camelCase names, which pyparsing >= 3.3 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:'\\w+' deprecated - use:DeprecationWarning")
runner = CliRunner()
HOUR = 3600.0


def _small(**overrides) -> traces.Trace:
    return traces.load("seed", **({"submissions": 120, "days": 4.0, "teams": 12} | overrides))


def test_seed_trace_is_the_2020_competition() -> None:
    trace = traces.load("seed")
    assert len(trace.arrivals) == 3608
    assert trace.executions == 108_240  # 30 problems a submission
    assert trace.busy_seconds / traces.SECONDS_PER_YEAR == pytest.approx(10.36, rel=1e-6)
    # About 50 minutes an execution, from the measured objective plus a plausible share of the
    # optimizer's budget (not by inflating the models).
    assert trace.busy_seconds / trace.executions == pytest.approx(50 * 60, rel=0.02)
    assert trace.info["objective_scale"] == 1.0 and 0.2 < trace.info["optimizer_budget_share"] < 0.5
    # Jobs as the spec plans them: a few studies each, so no job holds a score back for hours.
    assert trace.jobs == 3608 * len(traces.job_shapes("neurips2020", "feedback")[0])
    assert max(max(a.durations) for a in trace.arrivals) < 50 * 60
    assert len({a.team for a in trace.arrivals}) <= 70
    # Rising toward the deadline: the last month sees more than the first.
    month = 30 * 86400
    first = sum(1 for a in trace.arrivals if a.at < trace.start + month)
    last = sum(1 for a in trace.arrivals if a.at >= trace.end - month)
    assert last > 2 * first
    per_team_day = Counter((a.team, int((a.at - trace.start) // 86400)) for a in trace.arrivals)
    assert max(per_team_day.values()) <= 5
    # Longest jobs first, as dispatch enqueues them (by studies x (objective + budget)); deterministic.
    shapes, budget = traces.job_shapes("neurips2020", "feedback")
    ceilings = [shape.studies * (shape.objective_s + budget) for shape in shapes]
    assert ceilings == sorted(ceilings, reverse=True)
    assert traces.load("seed").arrivals[:50] == trace.arrivals[:50]


def test_a_small_trace_runs_and_reports_sane_figures() -> None:
    trace = _small()
    config = PolicyConfig(max_workers=300, backlog_per_worker=1.5)
    result = simulator.simulate(trace, config, boot_s=120, step_s=30)
    summary = result.summary
    assert summary["submissions"] == summary["scored"] == 120
    assert summary["executions"] == 120 * 30
    assert summary["jobs"] == trace.jobs > summary["executions"]
    assert summary["busy_machine_hours"] == pytest.approx(trace.busy_seconds / HOUR, abs=0.1)
    # A quiet stretch (bursts on an empty fleet, each paying its boots) costs more than the whole trace.
    assert summary["busy_machine_hours"] <= summary["machine_hours"] <= 1.3 * summary["busy_machine_hours"]
    assert 0 < summary["peak_workers"] <= summary["cap"] == 300
    assert summary["p50_time_to_score_s"] <= summary["p95_time_to_score_s"] <= summary["max_time_to_score_s"]
    # Never faster than the submission's longest job; the fleet adds little beyond it (boot, steps).
    assert summary["p95_time_to_score_s"] >= summary["p95_longest_job_s"] - 1
    assert 0 <= summary["p95_delay_s"] <= HOUR
    assert summary["decisions"]["machines_added"] == summary["decisions"]["machines_drained"]
    assert len(result.timeline.t) == len(result.timeline.workers) == len(result.timeline.queued)
    assert max(result.timeline.workers) == summary["peak_workers"]


def test_a_tight_cap_queues_but_never_exceeds_it() -> None:
    trace = _small(submissions=40, days=1.0)
    summary = simulator.simulate(trace, PolicyConfig(max_workers=8), boot_s=60, step_s=30).summary
    roomy = simulator.simulate(trace, PolicyConfig(max_workers=300), boot_s=60, step_s=30).summary
    assert summary["scored"] == 40
    assert summary["peak_workers"] <= 8 < roomy["peak_workers"]
    assert summary["decisions"]["held"] > 0
    assert summary["p95_delay_s"] > roomy["p95_delay_s"]
    assert summary["machine_hours"] >= summary["busy_machine_hours"]


def test_quota_refusals_hold_instead_of_flapping() -> None:
    trace = _small(submissions=40, days=1.0)
    config = PolicyConfig(max_workers=300, error_backoff_s=300)
    summary = simulator.simulate(trace, config, step_s=30, quota=10).summary
    assert summary["scored"] == 40
    assert summary["peak_workers"] <= 10
    refusals = summary["decisions"]["provider_errors"]
    assert refusals > 0
    # At most one refused attempt per backoff period (plus the first), not one per step.
    assert refusals <= summary["simulated_days"] * 86400 / config.error_backoff_s + 2
    assert refusals < summary["decisions"]["held"]


def test_same_trace_same_figures() -> None:
    trace = _small(submissions=30, days=1.0)
    config = PolicyConfig(max_workers=50)
    assert simulator.simulate(trace, config).summary == simulator.simulate(trace, config).summary


def test_cli_simulate_prints_json_and_writes_the_plot(tmp_path: Path, state_dir: Path) -> None:
    plot = tmp_path / "fleet.png"
    args = ["admin", "autoscaler", "simulate", "--submissions", "40", "--days", "2", "--teams", "8"]
    result = runner.invoke(app, [*args, "--cap", "50", "--boot-s", "90", "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in (
        "submissions",
        "p50_time_to_score_s",
        "p95_time_to_score_s",
        "machine_hours",
        "busy_machine_hours",
        "peak_workers",
        "cap",
    ):
        assert key in summary
    assert summary["submissions"] == 40 and summary["cap"] == 50 and summary["peak_workers"] <= 50
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_an_unknown_trace() -> None:
    result = runner.invoke(app, ["admin", "autoscaler", "simulate", "--trace", "nope", "--no-plot"])
    assert result.exit_code == 2
    assert "unknown trace" in result.output


def test_the_default_seed_trace_meets_its_targets() -> None:
    """The full 2020 trace (about 40 s here) with the simulate command's defaults: every target of the
    issue, p95 time to score within the hour, machine-hours within 15% of the busy lower bound, the cap."""
    config = PolicyConfig(max_workers=300, backlog_per_worker=1.5)
    summary = simulator.simulate(traces.load("seed"), config, boot_s=120).summary
    assert summary["submissions"] == summary["scored"] == 3608
    assert summary["peak_workers"] <= summary["cap"] == 300
    assert summary["machine_hours"] <= 1.15 * summary["busy_machine_hours"]
    assert summary["p95_time_to_score_s"] <= HOUR
