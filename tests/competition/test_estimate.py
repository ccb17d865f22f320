"""`bbo admin estimate` end to end on a two-problem spec: it measures, writes the table where dispatch
finds it, and reports CPU-hours per submission and phase."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import admin
from runtime import dispatch

TINY = """
name = "tiny"
rounds = 2
batch = 2

[phases.feedback]
problems = ["DT-iris-acc"]
studies = 2

[phases.final]
problems = ["linear-wine-acc"]
studies = 4
studies_per_job = 2

[limits]
suggest_budget_s = 60.0
call_timeout_s = 20.0
"""
PROBLEMS = {"DT-iris-acc", "linear-wine-acc"}


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("BBO_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def run(*args: str):
    return CliRunner().invoke(admin.app, ["estimate", *args], catch_exceptions=False)


def test_estimate_writes_the_cost_table_and_reports_cpu_hours(tiny, tmp_path):
    out = tmp_path / "shipped.json"
    result = run("--spec", str(tiny), "--evals", "2", "--workers", "2", "--out", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    table = body["table"]
    assert {"spec", "spec_hash", "created_at", "machine", "grid", "seconds_per_eval"} <= set(table)
    assert table["spec"] == "tiny" and table["grid"]["evals_per_problem"] == 2
    assert set(table["seconds_per_eval"]) == PROBLEMS
    assert all(s > 0 for s in table["seconds_per_eval"].values())
    assert table["machine"]["workers"] == 2 and table["machine"]["cpus"] >= 1
    measured = dispatch.measured_path("tiny")
    assert body["paths"] == [str(measured), str(out)]
    assert json.loads(measured.read_text()) == table == json.loads(out.read_text())
    # dispatch now orders this spec's jobs by what was just measured
    assert set(dispatch.costs_for("tiny", sorted(PROBLEMS)).sources.values()) == {str(measured)}

    work = body["workload"]
    feedback, final = work["phases"]["feedback"], work["phases"]["final"]
    s = table["seconds_per_eval"]
    assert feedback["objective_cpu_hours"] == pytest.approx(2 * 2 * 2 * s["DT-iris-acc"] / 3600)
    assert feedback["optimizer_budget_cpu_hours"] == pytest.approx(2 * 60 / 3600)
    assert final["jobs"] == 2 and final["objective_cpu_hours"] == pytest.approx(
        4 * 2 * 2 * s["linear-wine-acc"] / 3600
    )
    assert final["ceiling_cpu_hours"] == pytest.approx(final["objective_cpu_hours"] + 4 * 60 / 3600)
    assert work["final_total"]["finalists"] == 10
    assert work["final_total"]["objective_cpu_hours"] == pytest.approx(10 * final["objective_cpu_hours"])
    assert set(work["basis"]) == {"objective", "optimizer"}


def test_estimate_prints_tables_without_json_and_refuses_an_unknown_spec(tiny):
    result = run("--spec", str(tiny), "--evals", "1", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    assert "CPU-hours per submission" in result.stdout and "DT-iris-acc" in result.stdout
    assert "final phase, 10 finalists" in result.stdout
    bad = run("--spec", "no-such-spec")
    assert bad.exit_code == 2 and "no spec named" in bad.stderr


def test_estimate_fleet_gives_wall_hours_on_the_running_fleets_workers(tiny, r):
    import time

    from tests.console_helpers import heartbeat

    refused = run("--spec", str(tiny), "--no-measure", "--fleet")
    assert refused.exit_code == 2 and "no worker is up" in refused.stderr
    for name in ("w1", "w2"):
        heartbeat(r, name, "idle", None, time.time())
    result = run("--spec", str(tiny), "--no-measure", "--fleet", "--json")
    assert result.exit_code == 0, result.stderr
    workload = json.loads(result.stdout)["workload"]
    baselines, wall = workload["baselines"], workload["fleet"]
    assert baselines["units"] == 2 * (
        20 + 1
    )  # per problem: the spec's default 20 random studies, 1 strong run
    assert wall["workers"] == 2
    assert wall["baselines_wall_hours"] == max(
        baselines["objective_cpu_hours"] / 2, baselines["longest_unit_hours"]
    )
    final = workload["phases"]["final"]
    assert wall["submission_wall_hours"]["final"]["ceiling"] == max(
        final["ceiling_cpu_hours"] / 2, final["longest_job_objective_hours"]
    )
    printed = run("--spec", str(tiny), "--no-measure", "--fleet")
    assert "on the fleet's 2 worker(s)" in printed.stdout and "baseline build:" in printed.stdout
