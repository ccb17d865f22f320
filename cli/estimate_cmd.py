"""`bbo admin estimate`: measure each problem's cost on this machine, write the cost table, print the
CPU-hours a submission takes per phase."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from cli.output import emit_json, err, fail


def estimate(
    spec_name: str = typer.Option(
        ..., "--spec", help="Competition spec: a shipped name (demo, neurips2020) or a path."
    ),
    evals: int = typer.Option(8, "--evals", min=1, help="Random evaluations timed per problem."),
    workers: int = typer.Option(
        os.cpu_count() or 1, "--workers", min=1, help="Processes measuring in parallel (default: cores)."
    ),
    finalists: int = typer.Option(
        10, "--finalists", min=1, help="Submissions scored in the final phase, for its total."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Also write the table here (e.g. runtime/costs/SPEC.json to ship it)."
    ),
    max_job_minutes: float | None = typer.Option(
        None,
        "--max-job-minutes",
        min=0.1,
        help="Also propose, per phase, smaller jobs for the problems whose jobs' objective time would "
        "exceed this (the spec's studies_per_job_by_problem).",
    ),
    no_measure: bool = typer.Option(
        False, "--no-measure", help="Use the cost table already known (measured, else shipped): no timing."
    ),
    fleet: bool = typer.Option(
        False,
        "--fleet",
        help="Also the wall time of the baseline build and of one submission per phase on the running "
        "fleet's workers (their count read from the store).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Time a short grid of evaluations of every problem of SPEC, write the cost table that orders jobs
    (to $BBO_STATE_DIR/estimates/SPEC.json), and print CPU-hours per submission and phase."""
    from baselines.build import rich_progress
    from competition.estimate import fleet_wall, measure, workload
    from runtime import dispatch
    from runtime.spec import SpecError, load

    try:
        spec = load(spec_name)
    except SpecError as exc:
        fail(str(exc))
    if no_measure:
        costs = dispatch.costs_for(spec.name, spec.all_problems())
        table = {"seconds_per_eval": costs.seconds_per_eval, "sources": costs.sources, "grid": None}
        paths: list[Path] = []
        err.print(f"cost table from {', '.join(sorted(set(costs.sources.values())))}")
    else:
        with rich_progress(f"estimate {spec.name}") as progress:
            table = measure(spec, evals, workers, progress)
        try:
            paths = [dispatch.save_table(table, dispatch.measured_path(spec.name))]
            if out is not None:
                paths.append(dispatch.save_table(table, out))
        except OSError as exc:
            fail(f"cannot write the cost table: {exc}")
        err.print(f"measured in {table['wall_seconds']:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    summary = workload(spec, table["seconds_per_eval"], finalists, max_job_minutes)
    if fleet:
        summary["fleet"] = fleet_wall(summary, _fleet_workers())
    if as_json:
        emit_json({"paths": [str(p) for p in paths], "table": table, "workload": summary})
        return
    _print(spec, table, summary)


def _fleet_workers() -> int:
    """The live workers of the running fleet (their heartbeats in the store)."""
    from queue_schema.connection import RedisUnavailable, connect, ping
    from runtime import recovery

    try:
        ping()
    except RedisUnavailable as exc:
        fail(f"{exc}; --fleet reads the running fleet's store: start `bbo admin up`, or set BBO_REDIS_URL")
    workers = len(recovery.workers(connect()))
    if workers == 0:
        fail("no worker is up in the fleet: start some (bbo admin worker), or leave out --fleet")
    return workers


def _hours(value: float) -> str:
    # Small specs cost fractions of an hour: keep three significant figures there.
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)  # piped: whole rows


def _print(spec, table: dict[str, Any], summary: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    grid = table["grid"]
    basis = f"{grid['evals_per_problem']} evals each" if grid else "known table"
    problems = Table(title=f"{spec.name}: cost per problem ({basis})")
    for column in ("problem", "phase", "s/eval", "CPU-h per submission"):
        problems.add_column(column, justify="left" if column in ("problem", "phase") else "right")
    rows = [
        (problem, phase, hours)
        for phase, entry in summary["phases"].items()
        for problem, hours in entry["per_problem_cpu_hours"].items()
    ]
    for problem, phase, hours in sorted(rows, key=lambda row: -row[2]):
        problems.add_row(problem, phase, f"{table['seconds_per_eval'][problem]:.3f}", _hours(hours))
    console.print(problems)

    phases = Table(title="CPU-hours per submission")
    for column in ("phase", "jobs", "objective", "+ optimizer budget", "ceiling", "longest job (obj.)"):
        phases.add_column(column, justify="left" if column == "phase" else "right")
    for name, entry in summary["phases"].items():
        phases.add_row(
            name,
            str(entry["jobs"]),
            _hours(entry["objective_cpu_hours"]),
            _hours(entry["optimizer_budget_cpu_hours"]),
            _hours(entry["ceiling_cpu_hours"]),
            f"{entry['longest_job_objective_hours'] * 60:.1f} min",
        )
    console.print(phases)
    if "final_total" in summary:
        total = summary["final_total"]
        console.print(
            f"final phase, {total['finalists']} finalists: {_hours(total['objective_cpu_hours'])} CPU-h "
            f"objective, {_hours(total['ceiling_cpu_hours'])} CPU-h with the whole optimizer budget"
        )
    baselines = summary["baselines"]
    console.print(
        f"baseline build: {_hours(baselines['objective_cpu_hours'])} CPU-h objective in "
        f"{baselines['units']} units, the longest {baselines['longest_unit_hours'] * 60:.1f} min"
    )
    if "fleet" in summary:
        wall = summary["fleet"]
        phases_wall = ", ".join(
            f"{name} {_hours(entry['objective'])}-{_hours(entry['ceiling'])} h"
            for name, entry in wall["submission_wall_hours"].items()
        )
        console.print(
            f"on the fleet's {wall['workers']} worker(s), at least: "
            f"baselines {_hours(wall['baselines_wall_hours'])} h; "
            f"one submission (objective - ceiling) {phases_wall}"
        )
    console.print(f"objective: {summary['basis']['objective']}; optimizer: {summary['basis']['optimizer']}")
    for name, entry in summary["phases"].items():
        proposal = entry.get("proposed_jobs")
        if proposal is None:
            continue
        # TOML to paste into the spec: the sizes are part of the spec (and its hash), not of this table.
        console.print(f"\\[phases.{name}]  # {_jobs(spec, name, proposal)} jobs", highlight=False)
        console.print(f"studies_per_job = {proposal['studies_per_job']}", highlight=False)
        if proposal["studies_per_job_by_problem"]:
            console.print(f"\\[phases.{name}.studies_per_job_by_problem]", highlight=False)
        for problem, size in proposal["studies_per_job_by_problem"].items():
            console.print(f'"{problem}" = {size}', highlight=False, markup=False)


def _jobs(spec, phase_name: str, proposal: dict[str, Any]) -> int:
    import math

    phase = spec.phase(phase_name)
    sizes = proposal["studies_per_job_by_problem"]
    return sum(math.ceil(phase.studies / sizes.get(p, proposal["studies_per_job"])) for p in phase.problems)
